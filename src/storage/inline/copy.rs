//! The memory copy: recently read small entries, kept in bounded memory, so a repeated hit costs
//! no storage call.
//!
//! Bounded like [`crate::storage::known`]: two generations of at most `size / 2` bytes each. When
//! the current generation is full it becomes the previous one and the oldest is dropped; an
//! entry found in the previous generation moves back to the current one. That keeps roughly the
//! most recently used entries, with O(1) work per lookup. An entry larger than half the size is
//! not kept.
//!
//! Each kept entry carries the time it was last confirmed against storage and its version tag
//! (the blob's ETag). Entries are immutable, so a kept copy never holds wrong bytes for as long
//! as the entry exists; but an entry can be deleted, and its hash stored again with other bytes.
//! So a copy is served as it is only for [`CONFIRMED_FOR`] after it was confirmed; after that
//! [`MemoryCopy::get`] says it is stale, and the caller checks the version with storage first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::time::Instant;

use crate::storage::CONFIRMED_FOR;
use crate::storage::record::Turbo;

pub struct MemoryCopy {
    half: u64,
    generations: Mutex<Generations>,
}

/// A kept entry.
#[derive(Clone)]
pub struct Kept {
    pub bytes: Bytes,
    /// The version tag storage gave with the bytes; `None`: never confirmed, only re-read.
    pub tag: Option<String>,
    /// Turbo's fields of the entry's record, read with the bytes (a Turborepo artifact's answer
    /// carries them).
    pub turbo: Option<Arc<Turbo>>,
    confirmed: Instant,
}

/// What the copy knows of an entry.
pub enum Lookup {
    /// Confirmed less than [`CONFIRMED_FOR`] ago: serve it (with turbo's fields of its record).
    Fresh(Bytes, Option<Arc<Turbo>>),
    /// Confirmed longer ago: check its version with storage before serving it.
    Stale(Kept),
    Absent,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Kept>,
    current_bytes: u64,
    previous: HashMap<String, Kept>,
    previous_bytes: u64,
}

impl MemoryCopy {
    /// A copy of at most `size` bytes of entries.
    pub fn new(size: u64) -> Self {
        Self {
            half: size / 2,
            generations: Mutex::default(),
        }
    }

    pub fn get(&self, name: &str) -> Lookup {
        self.get_at(name, Instant::now())
    }

    fn get_at(&self, name: &str, now: Instant) -> Lookup {
        let mut generations = self.lock();
        let kept = match generations.current.get(name) {
            Some(kept) => kept.clone(),
            None => match generations.previous.remove(name) {
                Some(kept) => {
                    generations.previous_bytes -= kept.bytes.len() as u64;
                    generations.insert(name.to_owned(), kept.clone(), self.half);
                    kept
                }
                None => return Lookup::Absent,
            },
        };
        if now.saturating_duration_since(kept.confirmed) < CONFIRMED_FOR {
            Lookup::Fresh(kept.bytes, kept.turbo)
        } else {
            Lookup::Stale(kept)
        }
    }

    /// Keeps a copy of `bytes` (its own allocation: the answers that share `bytes` release it
    /// when they end, whatever the copy keeps) as `name`, confirmed now.
    pub fn insert(
        &self,
        name: &str,
        bytes: &Bytes,
        tag: Option<String>,
        turbo: Option<Arc<Turbo>>,
    ) {
        self.insert_at(name, bytes, tag, turbo, Instant::now());
    }

    fn insert_at(
        &self,
        name: &str,
        bytes: &Bytes,
        tag: Option<String>,
        turbo: Option<Arc<Turbo>>,
        now: Instant,
    ) {
        if bytes.len() as u64 > self.half {
            return;
        }
        let kept = Kept {
            bytes: Bytes::copy_from_slice(bytes),
            tag,
            turbo,
            confirmed: now,
        };
        self.lock().insert(name.to_owned(), kept, self.half);
    }

    /// Storage confirmed the kept version of `name` now.
    pub fn confirm(&self, name: &str) {
        if let Some(kept) = self.lock().current.get_mut(name) {
            kept.confirmed = Instant::now();
        }
    }

    /// Forgets `name` (deleted, or replaced in storage).
    pub fn remove(&self, name: &str) {
        let mut generations = self.lock();
        if let Some(kept) = generations.current.remove(name) {
            generations.current_bytes -= kept.bytes.len() as u64;
        }
        if let Some(kept) = generations.previous.remove(name) {
            generations.previous_bytes -= kept.bytes.len() as u64;
        }
    }

    /// (entries, bytes) kept.
    pub fn size(&self) -> (u64, u64) {
        let generations = self.lock();
        (
            (generations.current.len() + generations.previous.len()) as u64,
            generations.current_bytes + generations.previous_bytes,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Generations {
    fn insert(&mut self, name: String, kept: Kept, half: u64) {
        let len = kept.bytes.len() as u64;
        if let Some(old) = self.current.remove(&name) {
            self.current_bytes -= old.bytes.len() as u64;
        }
        if self.current_bytes + len > half {
            self.previous = std::mem::take(&mut self.current);
            self.previous_bytes = std::mem::take(&mut self.current_bytes);
        }
        if let Some(old) = self.previous.remove(&name) {
            self.previous_bytes -= old.bytes.len() as u64;
        }
        self.current_bytes += len;
        self.current.insert(name, kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn stays_within_its_size_and_keeps_what_is_used() {
        let copy = MemoryCopy::new(10_000);
        let now = Instant::now();
        copy.insert_at("hot", &bytes(1000), None, None, now);
        for i in 0..100 {
            copy.insert_at(&format!("cold/{i}"), &bytes(1000), None, None, now);
            assert!(copy.size().1 <= 10_000, "bounded: {:?}", copy.size());
            assert!(matches!(copy.get_at("hot", now), Lookup::Fresh(b, _) if b.len() == 1000));
        }
        assert!(matches!(copy.get_at("cold/0", now), Lookup::Absent));
        assert!(matches!(copy.get_at("cold/99", now), Lookup::Fresh(..)));
        // Larger than half the copy: not kept.
        copy.insert_at("big", &bytes(5001), None, None, now);
        assert!(matches!(copy.get_at("big", now), Lookup::Absent));
        copy.remove("hot");
        assert!(matches!(copy.get_at("hot", now), Lookup::Absent));
        let (entries, kept) = copy.size();
        assert_eq!(kept, entries * 1000, "the byte count follows removals");
    }

    #[test]
    fn a_copy_goes_stale_after_the_bound_until_confirmed() {
        let copy = MemoryCopy::new(1 << 20);
        let then = Instant::now();
        copy.insert_at("org/1", &bytes(10), Some("\"0x1\"".into()), None, then);
        let later = then + CONFIRMED_FOR;
        match copy.get_at("org/1", later) {
            Lookup::Stale(kept) => assert_eq!(kept.tag.as_deref(), Some("\"0x1\"")),
            _ => panic!("stale after the bound"),
        }
        assert!(matches!(
            copy.get_at("org/1", later - std::time::Duration::from_millis(1)),
            Lookup::Fresh(..)
        ));
    }

    #[test]
    fn the_copy_owns_its_bytes() {
        let copy = MemoryCopy::new(1 << 20);
        let read = bytes(100);
        copy.insert("org/1", &read, None, None);
        let Lookup::Fresh(kept, _) = copy.get("org/1") else {
            panic!("kept")
        };
        assert_eq!(kept, read);
        assert_ne!(kept.as_ptr(), read.as_ptr(), "a separate allocation");
    }
}

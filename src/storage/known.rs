//! Entries known to exist, with their sizes (and turbo's fields of their records), in bounded memory.
//!
//! Cache entries are immutable, so once an entry is seen (stored, or found by a check) it can be
//! remembered: a repeated hit then costs no storage call. The memory is bounded by two
//! generations of at most `capacity / 2` names each: when the current generation is full it
//! becomes the previous one and the oldest is dropped; a name found in the previous generation
//! moves back to the current one. That keeps roughly the most recently used `capacity` names,
//! with O(1) work per lookup and no per-entry bookkeeping.
//!
//! But an entry can be deleted behind this instance's back (another instance's purge,
//! retention, the lifecycle policy). So each name carries the time storage last confirmed it,
//! and a name confirmed longer ago than the bound given at creation
//! ([`super::CONFIRMED_FOR`] in the server) is not answered from memory: the caller asks storage
//! again and remembers the answer. A hot entry thus costs one storage call per bound, and a
//! deleted one is redirected to for at most that long (the client's download then gets the
//! storage's 404, which Nx takes as a miss).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::record::Turbo;

pub struct KnownEntries {
    half: usize,
    /// How long a confirmation holds, in whole seconds.
    fresh_for: u32,
    /// Times are kept as seconds since this instant: 4 bytes a name instead of 16.
    epoch: Instant,
    generations: Mutex<Generations>,
}

/// A remembered entry: its size, turbo's fields of its record (a Turborepo artifact's answer
/// carries them), and when storage last confirmed it (seconds since the epoch).
#[derive(Debug, Clone)]
struct Seen {
    size: u64,
    turbo: Option<Arc<Turbo>>,
    at: u32,
}

/// What is remembered of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    pub turbo: Option<Arc<Turbo>>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Seen>,
    previous: HashMap<String, Seen>,
}

impl KnownEntries {
    /// Remembers up to about `capacity` names (at least 2), each for `fresh_for` after storage
    /// confirmed it.
    pub fn new(capacity: usize, fresh_for: Duration) -> Self {
        Self {
            half: (capacity / 2).max(1),
            fresh_for: fresh_for.as_secs().min(u32::MAX as u64) as u32,
            epoch: Instant::now(),
            generations: Mutex::new(Generations::default()),
        }
    }

    /// The size (and turbo's fields) of `name`, if storage confirmed it exists within the bound.
    pub fn get(&self, name: &str) -> Option<Known> {
        self.get_at(name, Instant::now())
    }

    /// [`Self::get`] at a given time. A name confirmed too long ago is forgotten.
    pub fn get_at(&self, name: &str, now: Instant) -> Option<Known> {
        let now = self.seconds(now);
        let fresh = |seen: &Seen| now.saturating_sub(seen.at) < self.fresh_for;
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = generations.current.get(name) {
            if fresh(seen) {
                return Some(seen.known());
            }
            generations.current.remove(name);
            return None;
        }
        let seen = generations.previous.remove(name)?;
        if !fresh(&seen) {
            return None;
        }
        let known = seen.known();
        generations.insert(name.to_owned(), seen, self.half);
        Some(known)
    }

    /// Remembers that storage confirmed just now that `name` exists with `size` bytes (and
    /// `turbo`'s fields).
    pub fn insert(&self, name: &str, size: u64, turbo: Option<Arc<Turbo>>) {
        self.insert_at(name, size, turbo, Instant::now());
    }

    /// [`Self::insert`] at a given time.
    pub fn insert_at(&self, name: &str, size: u64, turbo: Option<Arc<Turbo>>, now: Instant) {
        let seen = Seen {
            size,
            turbo,
            at: self.seconds(now),
        };
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.insert(name.to_owned(), seen, self.half);
    }

    fn seconds(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }

    /// Forgets `name` (it was deleted).
    pub fn remove(&self, name: &str) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.current.remove(name);
        generations.previous.remove(name);
    }

    /// How many names are remembered.
    pub fn len(&self) -> usize {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.current.len() + generations.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seen {
    fn known(&self) -> Known {
        Known {
            size: self.size,
            turbo: self.turbo.clone(),
        }
    }
}

impl Generations {
    fn insert(&mut self, name: String, seen: Seen, half: usize) {
        if self.current.len() >= half && !self.current.contains_key(&name) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name, seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    #[test]
    fn remembers_what_was_seen_within_its_bound() {
        let known = KnownEntries::new(4, BOUND);
        for i in 0..100 {
            known.insert(&format!("org/{i}"), i, None);
            assert!(known.len() <= 4, "bounded: {}", known.len());
        }
        assert_eq!(known.get("org/99").map(|k| k.size), Some(99));
        assert_eq!(known.get("org/98").map(|k| k.size), Some(98));
        assert_eq!(known.get("org/0"), None, "the oldest are forgotten");
    }

    #[test]
    fn what_is_used_stays() {
        let known = KnownEntries::new(4, BOUND);
        known.insert("hot", 1, None);
        for i in 0..50 {
            known.insert(&format!("cold/{i}"), i, None);
            // Read often enough, the hot entry keeps coming back to the current generation.
            assert_eq!(
                known.get("hot").map(|k| k.size),
                Some(1),
                "after {i} inserts"
            );
        }
        known.remove("hot");
        assert_eq!(known.get("hot"), None);
    }

    #[test]
    fn a_confirmation_holds_for_the_bound_only() {
        let known = KnownEntries::new(100, BOUND);
        let start = Instant::now();
        known.insert_at("org/1", 7, None, start);
        known.insert_at("org/2", 8, None, start);
        let almost = start + BOUND - Duration::from_secs(1);
        assert_eq!(
            known.get_at("org/1", almost).map(|k| k.size),
            Some(7),
            "within the bound"
        );
        // Past the bound the caller must ask storage again, however often it was read.
        assert_eq!(known.get_at("org/1", start + BOUND), None);
        assert_eq!(known.get_at("org/1", start), None, "and it was forgotten");
        // A fresh confirmation starts a new bound.
        known.insert_at("org/2", 8, None, start + BOUND);
        assert_eq!(
            known
                .get_at("org/2", start + BOUND + BOUND / 2)
                .map(|k| k.size),
            Some(8)
        );
        // Moving back from the previous generation keeps the time of the confirmation.
        let small = KnownEntries::new(2, BOUND);
        let start = Instant::now();
        small.insert_at("a", 1, None, start);
        small.insert_at("b", 2, None, start);
        assert_eq!(small.get_at("a", start + BOUND), None);
    }
}

//! Entries known to exist, with their sizes, in bounded memory.
//!
//! Cache entries are immutable, so once an entry is seen (stored, or found by a check) it can be
//! remembered: a repeated hit then costs no storage call. The memory is bounded by two
//! generations of at most `capacity / 2` names each: when the current generation is full it
//! becomes the previous one and the oldest is dropped; a name found in the previous generation
//! moves back to the current one. That keeps roughly the most recently used `capacity` names,
//! with O(1) work per lookup and no per-entry bookkeeping.
//!
//! A remembered entry that retention has since deleted costs nothing worse than the storage's
//! own 404 on the client's redirected download, which Nx takes as a miss.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct KnownEntries {
    half: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
}

impl KnownEntries {
    /// Remembers up to about `capacity` names (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            generations: Mutex::new(Generations::default()),
        }
    }

    /// The size of `name`, if it is known to exist.
    pub fn get(&self, name: &str) -> Option<u64> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(size) = generations.current.get(name) {
            return Some(*size);
        }
        let size = generations.previous.remove(name)?;
        generations.insert(name.to_owned(), size, self.half);
        Some(size)
    }

    /// Remembers that `name` exists with `size` bytes.
    pub fn insert(&self, name: &str, size: u64) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.insert(name.to_owned(), size, self.half);
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

impl Generations {
    fn insert(&mut self, name: String, size: u64, half: usize) {
        if self.current.len() >= half && !self.current.contains_key(&name) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_was_seen_within_its_bound() {
        let known = KnownEntries::new(4);
        for i in 0..100 {
            known.insert(&format!("org/{i}"), i);
            assert!(known.len() <= 4, "bounded: {}", known.len());
        }
        assert_eq!(known.get("org/99"), Some(99));
        assert_eq!(known.get("org/98"), Some(98));
        assert_eq!(known.get("org/0"), None, "the oldest are forgotten");
    }

    #[test]
    fn what_is_used_stays() {
        let known = KnownEntries::new(4);
        known.insert("hot", 1);
        for i in 0..50 {
            known.insert(&format!("cold/{i}"), i);
            // Read often enough, the hot entry keeps coming back to the current generation.
            assert_eq!(known.get("hot"), Some(1), "after {i} inserts");
        }
        known.remove("hot");
        assert_eq!(known.get("hot"), None);
    }
}

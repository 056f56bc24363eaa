//! Small entries answered with their bytes (`NX_CACHE_DOWNLOAD=auto`, the default on Azure, and
//! `proxy`), and what makes reading them safe to repeat.
//!
//! Why: Nx never retries a GET and aborts the whole run on any answer but 200 or 404. A
//! redirected download is read by the client from storage, so it is one storage hiccup (503
//! Server Busy, 500 Operation Timeout, a reset) away from a red build; and a hot entry that many
//! CI jobs restore at once puts all of its load on one storage partition. For a small entry the
//! redirect buys little (a second request and a new TLS connection to another host, to fetch a
//! few KiB), so the handler reads it itself:
//!
//! - **By size.** An entry of at most `max` bytes is read whole; a larger one is redirected
//!   (streamed in proxy mode, where a body cut short can still reach the client). The
//!   size comes from the exact hit check or from what the instance remembers: no storage call of
//!   its own.
//! - **All or nothing.** The whole entry is in memory before the answer starts. Transient
//!   failures are retried with exponential backoff ([`retry`]) within a budget of a few seconds;
//!   past it, or as soon as the health watch has found storage down, the GET is a miss (an error
//!   the API answers `404` and logs as `storage-error`), never a `200` with a short body.
//! - **Single flight.** Concurrent GETs of one entry share one storage read ([`flight`]).
//! - **A memory copy** of recently read small entries ([`copy`]) answers repeated hits without a
//!   storage call, even while storage is down. A copy confirmed longer than [`CONFIRMED_FOR`]
//!   ago is checked against storage (its version tag, one HEAD) before it is served again, so an
//!   entry deleted or replaced in storage stops being served within that bound.
//! - **Bounded memory.** Bytes read from storage count against `memory` from the moment their
//!   read is decided until every answer that shares them has been sent (the count travels with
//!   the buffer: [`Counted`]); the copy keeps its own copy, bounded by its own size. Past
//!   `memory`, a small entry is answered like a large one: the handler takes on nothing more,
//!   and the client still gets its hit (a miss would cost it the task's whole run), with the risk
//!   every large entry takes.
//!
//! The backend supplies single attempts at its storage calls ([`Source`]); everything above them
//! is here, so a backend gets it by implementing them, and every front door renders the result
//! ([`Found`]) alike.
//!
//! [`CONFIRMED_FOR`]: super::CONFIRMED_FOR

pub mod copy;
pub mod flight;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use self::copy::{Kept, Lookup, MemoryCopy};
use self::flight::{Flights, Role};
use super::record::Turbo;
use super::{Health, StoreError};
use crate::config::Inline;
use crate::metrics::Figure;

/// A failed attempt at a storage call, and whether trying again may succeed.
#[derive(Debug)]
pub struct Failure {
    pub error: StoreError,
    /// 5xx, 408, 429, a timeout, a reset, a body cut short: worth another attempt.
    pub transient: bool,
}

impl Failure {
    pub fn transient(error: StoreError) -> Self {
        Self {
            error,
            transient: true,
        }
    }

    pub fn permanent(error: StoreError) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

/// What the backend knows of an entry's size (and turbo's fields of its record, which come
/// with it: the same storage answer).
pub enum Size {
    Missing,
    Known(u64, Option<Arc<Turbo>>),
    /// Not remembered, and not to be asked (`NX_CACHE_HIT_CHECK=none`): redirect unchecked.
    Unchecked,
}

/// An entry's size and version tag, as storage gives them now (with turbo's fields of its
/// record, from the same answer).
pub struct Version {
    pub len: u64,
    pub tag: Option<String>,
    pub turbo: Option<Arc<Turbo>>,
}

/// A whole entry as read from storage.
pub struct Whole {
    pub bytes: Vec<u8>,
    pub tag: Option<String>,
    /// Turbo's fields of its record, from the same answer.
    pub turbo: Option<Arc<Turbo>>,
}

/// Single attempts at the storage calls the reads need; [`InlineReads`] retries them.
#[async_trait]
pub trait Source: Send + Sync {
    /// The entry's size: remembered, or asked of storage (the exact hit check). With `exact`,
    /// asked even where hits are not checked (`NX_CACHE_HIT_CHECK=none`): the answer depends on
    /// the entry's record (a Turborepo artifact with a tag is never redirected).
    async fn size(&self, name: &str, exact: bool) -> Result<Size, Failure>;
    /// The entry's size and version tag now, asked of storage (`None`: it is gone).
    async fn version(&self, name: &str) -> Result<Option<Version>, Failure>;
    /// The whole entry, which is `len` bytes (`None`: it is gone).
    async fn read(&self, name: &str, len: u64) -> Result<Option<Whole>, Failure>;
    /// Storage said the entry does not exist: forget whatever is remembered of it.
    fn forget(&self, name: &str);
    /// The store's health: read before reading, woken on every failure.
    fn health(&self) -> &Health;
}

/// How a hit reaches the client, with turbo's fields of the entry's record where storage gave
/// them.
#[derive(Clone)]
pub enum Found {
    Missing,
    /// The whole entry, to answer with.
    Whole(Bytes, Option<Arc<Turbo>>),
    /// Too large to answer inline (or past the memory bound): redirect, with the size when known
    /// (unless turbo's fields hold a tag: [`super::must_carry_tag`]).
    Large(Option<u64>, Option<Arc<Turbo>>),
}

/// Where an inline answer's bytes came from, for the counters.
#[derive(Clone, Copy)]
enum Origin {
    Storage,
    /// A stale copy that storage confirmed unchanged.
    Confirmed,
    Nowhere,
}

/// The inline reads of one store: the settings, the memory copy, the runs in flight, the memory
/// bound and the counters.
pub struct InlineReads {
    max: u64,
    budget: Duration,
    /// Permits of 1 KiB: bytes read from storage and held outside the copy.
    memory: Arc<Semaphore>,
    memory_kib: usize,
    copy: Option<MemoryCopy>,
    flights: Flights<Result<(Found, Origin), String>>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    from_memory: AtomicU64,
    from_storage: AtomicU64,
    confirmed: AtomicU64,
    coalesced: AtomicU64,
    retries: AtomicU64,
    over_memory: AtomicU64,
}

impl InlineReads {
    pub fn new(settings: Inline) -> Self {
        let memory_kib = kib(settings.memory);
        Self {
            max: settings.max,
            budget: settings.budget,
            memory: Arc::new(Semaphore::new(memory_kib)),
            memory_kib,
            copy: (settings.copy > 0).then(|| MemoryCopy::new(settings.copy)),
            flights: Flights::default(),
            counts: Counts::default(),
        }
    }

    /// How the entry `name` reaches the client. An error means storage failed within the budget
    /// (or the health watch says it is down): the caller answers a miss. `exact`: its size is
    /// asked of storage even where hits are not checked ([`Source::size`]).
    pub async fn fetch(
        &self,
        source: &dyn Source,
        name: &str,
        exact: bool,
    ) -> Result<Found, StoreError> {
        let stale = match self.copy.as_ref().map(|copy| copy.get(name)) {
            Some(Lookup::Fresh(bytes, turbo)) => {
                self.counts.from_memory.fetch_add(1, Ordering::Relaxed);
                return Ok(Found::Whole(bytes, turbo));
            }
            Some(Lookup::Stale(kept)) => Some(kept),
            Some(Lookup::Absent) | None => None,
        };
        if !source.health().is_healthy() {
            return Err(StoreError::Backend(
                "storage is unavailable (health watch)".into(),
            ));
        }
        let (landed, role) = self
            .flights
            .run(name, || self.load(source, name, stale, exact))
            .await;
        let (found, origin) = landed.map_err(StoreError::Backend)?;
        if let Found::Whole(..) = found {
            let counter = match (role, origin) {
                (Role::Followed, _) => &self.counts.coalesced,
                (Role::Led, Origin::Confirmed) => &self.counts.confirmed,
                (Role::Led, _) => &self.counts.from_storage,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(found)
    }

    /// One run for `name` (single flight): the size (or a stale copy's version), the decision,
    /// and the read, all within one budget.
    async fn load(
        &self,
        source: &dyn Source,
        name: &str,
        stale: Option<Kept>,
        exact: bool,
    ) -> Result<(Found, Origin), String> {
        let deadline = Instant::now() + self.budget;
        let (len, turbo) = match stale {
            Some(kept) => {
                let version = self
                    .retry(deadline, source, || source.version(name))
                    .await
                    .map_err(|e| format!("checking the kept copy of {name}: {e}"))?;
                match version {
                    None => {
                        self.forget(source, name);
                        return Ok((Found::Missing, Origin::Nowhere));
                    }
                    Some(now) if kept.tag.is_some() && now.tag == kept.tag => {
                        if let Some(copy) = &self.copy {
                            copy.confirm(name);
                        }
                        return Ok((Found::Whole(kept.bytes, kept.turbo), Origin::Confirmed));
                    }
                    Some(now) => {
                        // Replaced in storage since it was kept: what was learnt of it is stale,
                        // turbo's fields too (the read below brings the new ones).
                        self.forget(source, name);
                        (now.len, now.turbo)
                    }
                }
            }
            None => match self
                .retry(deadline, source, || source.size(name, exact))
                .await
                .map_err(|e| format!("checking {name}: {e}"))?
            {
                Size::Missing => return Ok((Found::Missing, Origin::Nowhere)),
                Size::Unchecked => return Ok((Found::Large(None, None), Origin::Nowhere)),
                Size::Known(len, turbo) => (len, turbo),
            },
        };
        if len > self.max {
            return Ok((Found::Large(Some(len), turbo), Origin::Nowhere));
        }
        let Some(permit) = self.reserve(len) else {
            self.counts.over_memory.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                name,
                len,
                "NX_CACHE_INLINE_MEMORY reached: answering a small entry as a large one"
            );
            return Ok((Found::Large(Some(len), turbo), Origin::Nowhere));
        };
        let read = self
            .retry(deadline, source, || source.read(name, len))
            .await
            .map_err(|e| format!("reading {name}: {e}"))?;
        let Some(whole) = read else {
            self.forget(source, name);
            return Ok((Found::Missing, Origin::Nowhere));
        };
        let bytes = Bytes::from_owner(Counted {
            bytes: whole.bytes,
            _permit: permit,
        });
        // Turbo's fields as the read gave them (the same answer as the bytes).
        let turbo = whole.turbo.or(turbo);
        if let Some(copy) = &self.copy {
            copy.insert(name, &bytes, whole.tag, turbo.clone());
        }
        Ok((Found::Whole(bytes, turbo), Origin::Storage))
    }

    async fn retry<T, F, Fut>(
        &self,
        deadline: Instant,
        source: &dyn Source,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        retry::within(deadline, source.health(), &self.counts.retries, attempt).await
    }

    /// Runs `attempt`, a storage call of the backend's own (the start of a streamed download),
    /// with the retries of inline reads, within one read budget.
    pub async fn retried<T, F, Fut>(&self, health: &Health, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.budget;
        retry::within(deadline, health, &self.counts.retries, attempt).await
    }

    /// Holds `len` bytes of the memory bound, or `None` when it is reached.
    fn reserve(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(kib(len)).ok()?;
        self.memory.clone().try_acquire_many_owned(kib).ok()
    }

    /// Drops the memory copy of `name`, if one is kept: the instance has just learnt that the
    /// entry is gone from storage, or has stored it anew (a hash purged and stored again may
    /// carry other bytes, e.g. a poisoned entry replaced by a good one). Other instances learn
    /// it within [`CONFIRMED_FOR`](super::CONFIRMED_FOR).
    pub fn discard(&self, name: &str) {
        if let Some(copy) = &self.copy {
            copy.remove(name);
        }
    }

    fn forget(&self, source: &dyn Source, name: &str) {
        if let Some(copy) = &self.copy {
            copy.remove(name);
        }
        source.forget(name);
    }

    /// The counters and gauges for `/metrics`.
    pub fn figures(&self) -> Vec<Figure> {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (entries, bytes) = self.copy.as_ref().map_or((0, 0), MemoryCopy::size);
        let held = (self.memory_kib - self.memory.available_permits()) as u64 * 1024;
        vec![
            Figure {
                name: "nx_cache_inline_hits_memory_total",
                help: "hits answered with their bytes from the memory copy (no storage call)",
                kind: "counter",
                value: count(&self.counts.from_memory),
            },
            Figure {
                name: "nx_cache_inline_hits_storage_total",
                help: "hits answered with their bytes read from storage for them",
                kind: "counter",
                value: count(&self.counts.from_storage),
            },
            Figure {
                name: "nx_cache_inline_hits_confirmed_total",
                help: "hits answered from a memory copy older than the bound, after storage confirmed its version",
                kind: "counter",
                value: count(&self.counts.confirmed),
            },
            Figure {
                name: "nx_cache_inline_hits_coalesced_total",
                help: "hits answered with bytes another request's storage read fetched (single flight)",
                kind: "counter",
                value: count(&self.counts.coalesced),
            },
            Figure {
                name: "nx_cache_inline_retries_total",
                help: "storage calls of inline reads, and starts of streamed downloads, tried again after a transient failure",
                kind: "counter",
                value: count(&self.counts.retries),
            },
            Figure {
                name: "nx_cache_inline_over_memory_total",
                help: "small entries answered as large ones (redirected, or streamed in proxy mode) because NX_CACHE_INLINE_MEMORY was reached",
                kind: "counter",
                value: count(&self.counts.over_memory),
            },
            Figure {
                name: "nx_cache_inline_memory_bytes",
                help: "bytes of small entries read from storage and held outside the memory copy",
                kind: "gauge",
                value: held,
            },
            Figure {
                name: "nx_cache_memory_copy_entries",
                help: "entries in the memory copy",
                kind: "gauge",
                value: entries,
            },
            Figure {
                name: "nx_cache_memory_copy_bytes",
                help: "bytes in the memory copy",
                kind: "gauge",
                value: bytes,
            },
        ]
    }
}

/// Bytes read from storage, holding their share of the memory bound until the last answer that
/// shares them is dropped.
struct Counted {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `bytes` in whole KiB, rounded up.
fn kib(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory bound travels with the bytes: held while any answer shares them, released
    /// when the last one is dropped.
    #[test]
    fn counted_bytes_hold_their_share_until_the_last_answer_ends() {
        let reads = InlineReads::new(Inline {
            memory: 100 << 10,
            max: 64 << 10,
            ..Inline::default()
        });
        let held = |reads: &InlineReads| reads.memory_kib - reads.memory.available_permits();
        let permit = reads.reserve(60 << 10).expect("within the bound");
        assert!(reads.reserve(60 << 10).is_none(), "past the bound");
        let bytes = Bytes::from_owner(Counted {
            bytes: vec![1; 60 << 10],
            _permit: permit,
        });
        let answers: Vec<Bytes> = (0..10).map(|_| bytes.clone()).collect();
        drop(bytes);
        assert_eq!(held(&reads), 60);
        drop(answers);
        assert_eq!(held(&reads), 0);
        assert!(reads.reserve(100 << 10).is_some());
    }
}

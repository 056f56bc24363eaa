//! Retention for the embedded store: `NX_CACHE_MAX_SIZE` and `NX_CACHE_MAX_AGE`, both off by
//! default.
//!
//! - **What was read recently stays.** An index of every entry (its size and when it was last
//!   read or written) is built from the directory in the background at startup, then kept up
//!   to date by uploads and hits. When the store grows over the size limit, entries are evicted
//!   least recently used first until it is under a low-water mark (90% of the limit); entries
//!   not used for `NX_CACHE_MAX_AGE` are evicted too. Eviction runs in a background task:
//!   requests never wait for it.
//! - **It survives restarts.** A hit sets the entry file's modification time to now (entries are
//!   never modified otherwise), so the index a restart rebuilds from the directory orders
//!   entries as the last run did.
//! - **It follows deletions by others.** `handler purge` may delete entries while the server
//!   runs on the same directory. A read that finds its entry gone drops it from the index, and
//!   before a pass evicts anything for size (and at least every [`MAX_AGE_CHECK_EVERY`]) the
//!   index drops every entry whose file is gone, so phantom bytes never make it evict live ones.
//! - **Both clients' entries count.** Nx entries and Turborepo artifacts share the one size
//!   limit and the one least-recently-used order: the index is built from every namespace
//!   folder of both ([`super::namespace_folders`]).
//! - **Records go with their entries.** An entry's record file (who wrote it) is removed with it;
//!   the startup scan removes records whose entry is gone (left by a crash).
//! - **Nothing being read is lost.** A read registers its entry before opening it, and eviction
//!   skips registered entries; an entry claimed for deletion is a miss for new readers. So no
//!   entry is deleted while a download of it is in flight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::metrics::Figure;

/// After an eviction pass the store holds at most this share of the size limit.
const LOW_WATER_PERCENT: u64 = 90;
/// The longest pause between two age checks.
const MAX_AGE_CHECK_EVERY: Duration = Duration::from_secs(600);

pub use crate::config::RetentionConfig;

/// One entry of the index.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: u64,
    /// Seconds since the Unix epoch, with sub-second precision kept as nanoseconds.
    last_used: u128,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Meta>,
    total: u64,
    /// Downloads in flight, by entry name.
    reading: HashMap<String, usize>,
    /// Entries claimed by an eviction pass and not yet unlinked.
    deleting: std::collections::HashSet<String>,
}

impl Index {
    fn upsert(&mut self, name: &str, size: u64, last_used: u128) {
        match self.entries.get_mut(name) {
            Some(meta) => {
                meta.last_used = meta.last_used.max(last_used);
                // Purged and stored again with other bytes since the index learnt of it.
                self.total = self.total - meta.size + size;
                meta.size = size;
            }
            None => {
                self.entries
                    .insert(name.to_owned(), Meta { size, last_used });
                self.total += size;
            }
        }
    }
}

pub struct Retention {
    config: RetentionConfig,
    index: Mutex<Index>,
    wake: Notify,
    /// The startup scan is done: eviction may run.
    ready: AtomicBool,
    passes: AtomicU64,
    evicted_entries: AtomicU64,
    evicted_bytes: AtomicU64,
    /// When the index last dropped entries deleted by others ([`Retention::reconcile`]).
    reconciled: Mutex<Option<std::time::Instant>>,
}

/// A download in flight: its entry is not evicted until this is dropped.
pub struct Reading {
    retention: Arc<Retention>,
    name: String,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut index = self.retention.lock();
        if let Some(count) = index.reading.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                index.reading.remove(&self.name);
            }
        }
    }
}

impl Retention {
    pub fn new(config: RetentionConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            index: Mutex::new(Index::default()),
            wake: Notify::new(),
            ready: AtomicBool::new(false),
            passes: AtomicU64::new(0),
            evicted_entries: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            reconciled: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a download of `name` before it is opened; `None` when the entry is being
    /// evicted (a miss).
    pub fn begin_read(self: &Arc<Self>, name: &str) -> Option<Reading> {
        let mut index = self.lock();
        if index.deleting.contains(name) {
            return None;
        }
        *index.reading.entry(name.to_owned()).or_default() += 1;
        Some(Reading {
            retention: self.clone(),
            name: name.to_owned(),
        })
    }

    /// A hit on `name` (of `size` bytes): it is now the most recently used.
    pub fn used(&self, name: &str, size: u64) {
        self.lock().upsert(name, size, now());
    }

    /// A new entry: counted, and eviction woken when the store went over its limit.
    pub fn stored(&self, name: &str, size: u64) {
        let total = {
            let mut index = self.lock();
            index.upsert(name, size, now());
            index.total
        };
        if self.config.max_size.is_some_and(|max| total > max) {
            self.wake.notify_one();
        }
    }

    /// `name` was found deleted by someone else (`handler purge`): no longer counted.
    pub fn vanished(&self, name: &str) {
        let mut index = self.lock();
        if let Some(meta) = index.entries.remove(name) {
            index.total -= meta.size;
        }
    }

    /// Drops every indexed entry whose file is gone (deleted by another process). The files are
    /// looked at without the lock held.
    fn reconcile(&self, root: &Path) {
        *self.reconciled.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        let names: Vec<String> = self.lock().entries.keys().cloned().collect();
        let mut gone = 0u64;
        for name in names {
            if matches!(std::fs::symlink_metadata(root.join(&name)), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            {
                self.vanished(&name);
                gone += 1;
            }
        }
        if gone > 0 {
            tracing::info!(
                entries = gone,
                size_after = self.total(),
                "entries deleted by another process dropped from the retention index"
            );
        }
    }

    /// Whether the periodic reconciliation is due.
    fn reconcile_due(&self) -> bool {
        self.reconciled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= MAX_AGE_CHECK_EVERY)
    }

    /// Bytes the index holds.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// The store's size and the eviction counters, for `/metrics`.
    pub fn figures(&self) -> Vec<Figure> {
        let (bytes, entries) = {
            let index = self.lock();
            (index.total, index.entries.len() as u64)
        };
        vec![
            Figure {
                name: "nx_cache_store_bytes",
                help: "bytes of the entries in the embedded store",
                kind: "gauge",
                value: bytes,
            },
            Figure {
                name: "nx_cache_store_entries",
                help: "entries in the embedded store",
                kind: "gauge",
                value: entries,
            },
            Figure {
                name: "nx_cache_eviction_passes_total",
                help: "eviction passes that deleted something",
                kind: "counter",
                value: self.passes.load(Ordering::Relaxed),
            },
            Figure {
                name: "nx_cache_evicted_entries_total",
                help: "entries deleted by retention (NX_CACHE_MAX_SIZE, NX_CACHE_MAX_AGE)",
                kind: "counter",
                value: self.evicted_entries.load(Ordering::Relaxed),
            },
            Figure {
                name: "nx_cache_evicted_bytes_total",
                help: "bytes deleted by retention",
                kind: "counter",
                value: self.evicted_bytes.load(Ordering::Relaxed),
            },
        ]
    }

    /// Scans the store in the background, then evicts whenever it is woken (the store went over
    /// its size limit) or an age check is due, for as long as the store exists.
    pub fn spawn(self: &Arc<Self>, root: PathBuf) {
        let weak = Arc::downgrade(self);
        let age_check = self
            .config
            .max_age
            .map(|age| (age / 4).clamp(Duration::from_secs(1), MAX_AGE_CHECK_EVERY));
        tokio::spawn(async move {
            {
                let Some(retention) = weak.upgrade() else {
                    return;
                };
                let scanning = retention.clone();
                let scan_root = root.clone();
                match tokio::task::spawn_blocking(move || scanning.scan(&scan_root)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot index the cache directory; retention is off")
                    }
                    Err(e) => tracing::error!(error = %e, "indexing the cache directory failed"),
                }
                retention.ready.store(true, Ordering::Relaxed);
                let index = retention.lock();
                tracing::info!(
                    entries = index.entries.len(),
                    bytes = index.total,
                    "cache directory indexed for retention"
                );
            }
            let Some(retention) = weak.upgrade() else {
                return;
            };
            loop {
                let evicting = retention.clone();
                let pass_root = root.clone();
                let _ = tokio::task::spawn_blocking(move || evicting.pass(&pass_root)).await;
                let woken = retention.wake.notified();
                // At least every MAX_AGE_CHECK_EVERY, so the index follows deletions by others.
                let every = age_check.unwrap_or(MAX_AGE_CHECK_EVERY);
                let _ = tokio::time::timeout(every, woken).await;
                // The store is gone: only this task still holds the retention.
                if Arc::strong_count(&retention) == 1 {
                    return;
                }
            }
        });
    }

    /// Adds every entry of the directory to the index, with its modification time as its last
    /// use. Entries the index already has (stored or read since startup) keep what it knows.
    fn scan(&self, root: &Path) -> std::io::Result<()> {
        for (client, namespace) in super::namespace_folders(root, &[])? {
            let prefix = crate::key::folder_of(client, &namespace);
            let folder = root.join(&prefix);
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if !super::is_entry_name(&file_name) {
                    remove_orphan_record(&folder, &file_name);
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let name = format!("{prefix}/{file_name}");
                let last_used = meta.modified().map(nanos).unwrap_or(0);
                let mut index = self.lock();
                if !index.entries.contains_key(&name) {
                    index.upsert(&name, meta.len(), last_used);
                }
            }
        }
        Ok(())
    }

    /// One eviction pass: entries too old, then the least recently used until the store is under
    /// the low-water mark. Skips entries being read. Logs and counts what it deleted.
    fn pass(&self, root: &Path) {
        if !self.ready.load(Ordering::Relaxed) {
            return;
        }
        let now = now();
        let oldest_kept = self
            .config
            .max_age
            .map(|age| now.saturating_sub(age.as_nanos()));
        let over = self
            .config
            .max_size
            .is_some_and(|max| self.lock().total > max);
        if over || self.reconcile_due() {
            self.reconcile(root);
        }
        let mut size_target = None;
        let mut candidates: Vec<(u128, String, u64)> = {
            let index = self.lock();
            // Over the limit: down to the low-water mark.
            if let Some(max) = self.config.max_size.filter(|max| index.total > *max) {
                size_target = Some(max / 100 * LOW_WATER_PERCENT);
            }
            if size_target.is_none() && oldest_kept.is_none() {
                return;
            }
            index
                .entries
                .iter()
                .filter(|(name, _)| !index.reading.contains_key(*name))
                .map(|(name, meta)| (meta.last_used, name.clone(), meta.size))
                .collect()
        };
        candidates.sort();
        let (mut entries, mut bytes) = (0u64, 0u64);
        for (last_used, name, size) in candidates {
            let too_old = oldest_kept.is_some_and(|oldest| last_used < oldest);
            {
                let mut index = self.lock();
                let too_big = size_target.is_some_and(|low| index.total > low);
                if !too_old && !too_big {
                    break;
                }
                // A download may have started since the candidates were taken.
                if index.reading.contains_key(&name) || index.entries.remove(&name).is_none() {
                    continue;
                }
                index.total -= size;
                index.deleting.insert(name.clone());
            }
            let path = root.join(&name);
            let inode = std::fs::symlink_metadata(&path).map(|meta| super::inode(&meta));
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if let Ok(inode) = inode {
                        super::remove_record(&path, inode);
                    }
                    entries += 1;
                    bytes += size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(entry = %name, error = %e, "cannot evict an entry"),
            }
            self.lock().deleting.remove(&name);
        }
        if entries > 0 {
            self.passes.fetch_add(1, Ordering::Relaxed);
            self.evicted_entries.fetch_add(entries, Ordering::Relaxed);
            self.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
            tracing::info!(entries, bytes, size_after = self.total(), "eviction pass");
        }
    }
}

/// A record younger than this is never taken for an orphan: an upload writes its record just
/// before it publishes the entry.
const ORPHAN_AFTER: Duration = Duration::from_secs(600);

/// Removes `file_name` from `folder` when it is a record (`{hash}.{inode}.record`) whose entry
/// is gone or is another file now, and has been for a while: left by a crash between deleting an
/// entry and its record, or between writing a record and publishing its entry.
fn remove_orphan_record(folder: &Path, file_name: &str) {
    let Some((hash, inode)) = file_name
        .strip_suffix(".record")
        .and_then(|rest| rest.split_once('.'))
    else {
        return;
    };
    let Ok(inode) = inode.parse::<u64>() else {
        return;
    };
    let entry = folder.join(hash);
    let orphan = match std::fs::symlink_metadata(&entry) {
        Ok(meta) => super::inode(&meta) != inode,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let path = folder.join(file_name);
    let old = std::fs::symlink_metadata(&path)
        .and_then(|meta| meta.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= ORPHAN_AFTER));
    if orphan && old {
        let _ = std::fs::remove_file(path);
    }
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn now() -> u128 {
    nanos(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, name: &str, size: usize) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![0u8; size]).unwrap();
    }

    fn retention(root: &Path, max_size: Option<u64>, max_age: Option<Duration>) -> Arc<Retention> {
        let retention = Retention::new(RetentionConfig { max_size, max_age });
        retention.scan(root).unwrap();
        retention.ready.store(true, Ordering::Relaxed);
        retention
    }

    #[test]
    fn least_recently_used_go_first_down_to_the_low_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let r = retention(root, Some(1000), None);
        for i in 0..10 {
            write(root, &format!("org/{i}"), 150);
            r.stored(&format!("org/{i}"), 150);
        }
        r.used("org/0", 150);
        r.pass(root);
        assert!(r.total() <= 900, "{}", r.total());
        assert!(root.join("org/0").exists(), "recently read");
        assert!(root.join("org/9").exists(), "recently written");
        assert!(!root.join("org/1").exists(), "least recently used");
        assert_eq!(r.evicted_entries.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn entries_being_read_are_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let r = retention(root, Some(100), None);
        write(root, "org/1", 80);
        r.stored("org/1", 80);
        write(root, "org/2", 80);
        r.stored("org/2", 80);
        let reading = r.begin_read("org/1").unwrap();
        r.pass(root);
        assert!(root.join("org/1").exists(), "being read");
        assert!(!root.join("org/2").exists(), "evicted instead");
        drop(reading);
        write(root, "org/3", 80);
        r.stored("org/3", 80);
        r.pass(root);
        assert!(!root.join("org/1").exists(), "evicted once its read ended");
    }

    #[test]
    fn old_entries_go_and_the_scan_orders_by_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "org/old", 10);
        write(root, "teams/web/new", 10);
        let old = std::fs::File::options()
            .write(true)
            .open(root.join("org/old"))
            .unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let r = retention(root, None, Some(Duration::from_secs(600)));
        assert_eq!(r.total(), 20);
        r.pass(root);
        assert!(!root.join("org/old").exists());
        assert!(root.join("teams/web/new").exists());
        assert_eq!(r.figures()[0].value, 10);
    }

    /// Turborepo artifacts are indexed by the scan and count against the one size limit, in one
    /// least-recently-used order with Nx entries; their records go with them.
    #[test]
    fn turbo_artifacts_share_the_size_limit_and_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let aged = |name: &str, ago: u64| {
            write(root, name, 100);
            std::fs::File::options()
                .write(true)
                .open(root.join(name))
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(ago))
                .unwrap();
        };
        aged("turbo/teams/web/00000000000000aa", 400);
        aged("org/1", 300);
        aged("turbo/org/00000000000000bb", 200);
        aged("teams/web/2", 100);
        let entry = root.join("turbo/teams/web/00000000000000aa");
        let inode = super::super::inode(&std::fs::metadata(&entry).unwrap());
        let record = super::super::record_path(&entry, inode);
        std::fs::write(&record, b"{\"v\":1}").unwrap();
        let r = retention(root, Some(350), None);
        assert_eq!(r.total(), 400, "the scan indexed both clients' entries");
        r.pass(root);
        assert!(
            !entry.exists() && !record.exists(),
            "least recently used, with its record"
        );
        assert!(!root.join("org/1").exists(), "next least recently used");
        assert!(root.join("turbo/org/00000000000000bb").exists());
        assert!(root.join("teams/web/2").exists());
        assert_eq!(r.total(), 200);
    }

    /// Entries deleted by another process (`handler purge`) are dropped from the index before a
    /// pass evicts for size: their bytes never make it evict live entries.
    #[test]
    fn entries_deleted_by_others_never_cost_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let r = retention(root, Some(1000), None);
        for i in 0..6 {
            write(root, &format!("org/{i}"), 150);
            r.stored(&format!("org/{i}"), 150);
        }
        // The most recently used entries are purged behind the index's back.
        for i in 3..6 {
            std::fs::remove_file(root.join(format!("org/{i}"))).unwrap();
        }
        write(root, "org/6", 150);
        r.stored("org/6", 150);
        write(root, "org/7", 150);
        r.stored("org/7", 150);
        assert_eq!(r.total(), 1200, "over the limit, with 450 phantom bytes");
        r.pass(root);
        assert_eq!(r.total(), 750);
        for live in ["org/0", "org/1", "org/2", "org/6", "org/7"] {
            assert!(
                root.join(live).exists(),
                "{live} kept: the store is within its limit"
            );
        }
        assert_eq!(r.evicted_entries.load(Ordering::Relaxed), 0);
        r.vanished("org/7");
        assert_eq!(r.total(), 600);
    }

    #[test]
    fn records_go_with_their_entries_and_orphans_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "org/1", 100);
        let inode = super::super::inode(&std::fs::metadata(root.join("org/1")).unwrap());
        let record = super::super::record_path(&root.join("org/1"), inode);
        std::fs::write(&record, b"{}").unwrap();
        // An old record whose entry is gone, and a fresh one (an upload about to publish).
        let orphan = root.join("org/2.77.record");
        std::fs::write(&orphan, b"{}").unwrap();
        let old = SystemTime::now() - ORPHAN_AFTER - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let fresh = root.join("org/3.78.record");
        std::fs::write(&fresh, b"{}").unwrap();
        let r = retention(root, Some(50), None);
        assert_eq!(r.total(), 100, "records are not entries");
        assert!(!orphan.exists() && fresh.exists() && record.exists());
        r.pass(root);
        assert!(
            !root.join("org/1").exists() && !record.exists(),
            "evicted with its record"
        );
    }
}

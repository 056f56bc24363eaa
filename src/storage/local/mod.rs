//! The embedded default backend: a directory on local disk.
//!
//! Layout under the root (`NX_CACHE_DIR`): Nx entries at `org/{hash}` and `teams/{team}/{hash}`,
//! Turborepo artifacts at the same names under `turbo/` ([`CacheKey::object_name`]), uploads in
//! progress under `.tmp/`. Every walk of the store (listing, usage, retention's index) goes
//! through [`namespace_folders`], so it sees both clients' entries. An upload is written to a temporary file, flushed to disk,
//! then published with `link(2)`, which fails if the name exists: publishing is atomic and never
//! overwrites, so of two concurrent uploads of one hash exactly one wins, and a reader never sees
//! a partial entry.
//!
//! What an entry records ([`Record`]: who wrote it, turbo's fields) is kept in a file beside it,
//! `{hash}.{inode}.record`, named
//! by the inode of the entry file it describes: it is written before the entry is published, so
//! no entry is ever visible without its record, and of two concurrent uploads of one hash each
//! writes its own (their temporary files have different inodes) and the loser removes its own.
//! It goes with the entry (retention, `handler purge`), and it is not an entry: names with a `.`
//! are no hash, so usage and retention's index skip them. The record is not flushed to disk on
//! its own (that would double the cost of a small upload): a machine crash right after an upload
//! can leave it unreadable, and the entry is then listed without a writer. A read of a Turborepo
//! artifact reads its record too (turbo's answer carries its duration and tag): one more small
//! file read from the page cache.
//!
//! Retention (`NX_CACHE_MAX_SIZE`, `NX_CACHE_MAX_AGE`; off by default) is in [`retention`].

pub mod retention;

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use self::retention::{Retention, RetentionConfig};
use super::record::Record;
use super::usage::Usage;
use super::{
    ByteStream, DOWNLOAD_CHUNK, Deleted, Entry, Fetched, Head, Health, Hit, Store, StoreError,
    Stored,
};
use crate::key::{CacheKey, Client, Namespace, TeamName, folder_of};
use crate::metrics::Figure;

/// Write buffer size: large enough to keep syscalls few for multi-MiB artifacts.
const WRITE_BUFFER: usize = 256 * 1024;
/// Folders are private to the server's user: entries of every team live here.
const DIR_MODE: u32 = 0o700;
/// Entries and temporary files likewise.
const FILE_MODE: u32 = 0o600;

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    health: Health,
    /// `None` when retention is off (the default): no index, nothing evicted.
    retention: Option<Arc<Retention>>,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`, private to this user (folders 0700,
    /// files 0600). Leftover temporary files from a previous run that died mid-upload are removed.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let store = Self::open_shared(root)?;
        for entry in std::fs::read_dir(&store.tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(store)
    }

    /// Opens the store for an operator's command (`handler usage`, `entries`, `purge`) while a
    /// server may run on the same directory: its uploads in progress are left alone.
    pub fn open_shared(root: &Path) -> std::io::Result<Self> {
        let tmp = root.join(".tmp");
        private_dirs().create(&tmp)?;
        restrict_to_owner(root)?;
        Ok(Self {
            root: root.to_owned(),
            tmp,
            health: Health::default(),
            retention: None,
        })
    }

    /// Opens the store with retention; the index is built and kept, and eviction runs, in the
    /// background (call from within the runtime).
    pub fn open_with_retention(root: &Path, config: RetentionConfig) -> std::io::Result<Self> {
        let mut store = Self::open(root)?;
        if config.is_on() {
            let retention = Retention::new(config);
            retention.spawn(root.to_owned());
            store.retention = Some(retention);
        }
        Ok(store)
    }

    fn path_for(&self, key: &CacheKey) -> PathBuf {
        // `object_name` is built from validated segments only: no `..`, no separators inside.
        self.root.join(key.object_name())
    }
}

/// A builder that creates missing folders (and their parents) with [`DIR_MODE`].
fn private_dirs() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder
}

/// Takes group and other permissions off the data folder if it already existed with them.
fn restrict_to_owner(root: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(DIR_MODE))?;
            tracing::info!(dir = %root.display(), was = format!("{:o}", mode & 0o777),
                "restricted the cache directory to its owner (0700)");
        }
    }
    Ok(())
}

/// Opens an entry and reads its length and inode. With `touch`, its modification time becomes
/// now: with retention on, a file's modification time is its last use, which survives a
/// restart.
fn open_for_reading(path: &Path, touch: bool) -> std::io::Result<(std::fs::File, u64, u64)> {
    let file = std::fs::File::open(path)?;
    if touch && let Err(e) = file.set_modified(std::time::SystemTime::now()) {
        // Not fatal: only the order of eviction after a restart depends on it.
        tracing::debug!(path = %path.display(), error = %e, "cannot record the entry's last use");
    }
    let meta = file.metadata()?;
    Ok((file, meta.len(), inode(&meta)))
}

/// Turbo's fields of the entry at `path` (file `inode`), for a Turborepo key; `None` for an Nx
/// key, whose record is not read on this path.
fn turbo_fields(key: &CacheKey, path: &Path, inode: u64) -> Option<Arc<super::record::Turbo>> {
    match key.client {
        Client::Nx => None,
        Client::Turbo => read_record(path, inode).turbo.map(Arc::new),
    }
}

/// A temporary file that is deleted when dropped, so every failure path cleans up after itself.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The record file of the entry at `entry` whose file has inode `inode`.
pub(crate) fn record_path(entry: &Path, inode: u64) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(format!(".{inode}.record"));
    PathBuf::from(name)
}

/// Whether a file name in a namespace folder is an entry (a hash), not a record or a stray.
pub(crate) fn is_entry_name(name: &str) -> bool {
    crate::key::Hash::parse(name).is_ok()
}

/// The file's inode: what names its record, and the version a purge deletes.
pub(crate) fn inode(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::ino(meta)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// Which file an entry is (a purge deletes the version it listed): its inode and, where the
/// file system keeps it, its birth time, since a freed inode is soon given to a new file.
fn version_of(meta: &std::fs::Metadata) -> String {
    match meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        Some(born) => format!("{}.{}", inode(meta), born.as_nanos()),
        None => inode(meta).to_string(),
    }
}

/// Writes `record` for the entry file that will have inode `inode`. On the worker thread: a
/// small write to the page cache costs less than a hand-off to the blocking pool.
fn write_record(target: &Path, inode: u64, record: &Record) -> std::io::Result<PathBuf> {
    let path = record_path(target, inode);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    std::io::Write::write_all(&mut options.open(&path)?, &record.to_sidecar())?;
    Ok(path)
}

/// Removes an entry's record, once the entry is gone (a missing record is no error).
pub(crate) fn remove_record(entry: &Path, inode: u64) {
    match std::fs::remove_file(record_path(entry, inode)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(entry = %entry.display(), error = %e, "cannot remove an entry's record")
        }
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, StoreError> {
        let name = key.object_name();
        // With retention, the read is registered before the file is opened, so eviction cannot
        // delete it midway; an entry being evicted is a miss.
        let reading = match &self.retention {
            Some(retention) => match retention.begin_read(&name) {
                Some(reading) => Some(reading),
                None => return Ok(None),
            },
            None => None,
        };
        let path = self.path_for(key);
        let touch = self.retention.is_some();
        // Opened on the worker thread, not the blocking pool: a file-system lookup (and, below,
        // a small read from the page cache) takes microseconds, a hand-off to another thread and
        // back takes more than the whole request (nginx reads files in its event loop too).
        let (mut file, len, inode) = match open_for_reading(&path, touch) {
            Ok(opened) => opened,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Deleted by another process (`handler purge`): the index learns of it.
                if let Some(retention) = &self.retention {
                    retention.vanished(&name);
                }
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(retention) = &self.retention {
            retention.used(&name, len);
        }
        let turbo = turbo_fields(key, &path, inode);
        // A small entry is read at once: one chunk, no stream over the blocking pool.
        if len <= DOWNLOAD_CHUNK as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            (&mut file).take(len).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != len {
                return Err(StoreError::Backend(format!(
                    "entry {name} is {} bytes, its metadata says {len}",
                    bytes.len()
                )));
            }
            let body = futures_util::stream::once(async move {
                let _registered_until_the_body_ends = &reading;
                Ok(bytes::Bytes::from(bytes))
            });
            let fetched = Fetched::Stream {
                len,
                body: Box::pin(body),
            };
            return Ok(Some(Hit { fetched, turbo }));
        }
        let body = ReaderStream::with_capacity(tokio::fs::File::from_std(file), DOWNLOAD_CHUNK)
            .map(move |chunk| {
                let _registered_until_the_body_ends = &reading;
                chunk
            });
        let fetched = Fetched::Stream {
            len,
            body: Box::pin(body),
        };
        Ok(Some(Hit { fetched, turbo }))
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool, StoreError> {
        // On the worker thread, as `get` opens: a lookup costs less than a thread hand-off.
        Ok(std::fs::exists(self.path_for(key))?)
    }

    async fn head(&self, key: &CacheKey) -> Result<Option<Head>, StoreError> {
        let path = self.path_for(key);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Head {
            len: meta.len(),
            turbo: turbo_fields(key, &path, inode(&meta)),
        }))
    }

    async fn put_if_absent(
        &self,
        key: &CacheKey,
        len: u64,
        mut body: ByteStream,
        record: &Record,
    ) -> Result<Stored, StoreError> {
        let temp = TempFile(self.tmp.join(uuid::Uuid::new_v4().simple().to_string()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
        // Created on the worker thread, as `get` opens: creating a file and reading its inode
        // take microseconds, a hand-off to the blocking pool and back takes more.
        let file = options.open(&temp.0)?;
        let inode = inode(&file.metadata()?);
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            received += chunk.len() as u64;
            if received > len {
                break;
            }
            writer.write_all(&chunk).await?;
        }
        if received != len {
            return Err(StoreError::Incomplete {
                expected: len,
                received,
            });
        }
        writer.flush().await?;

        let target = self.path_for(key);
        if let Some(parent) = target.parent()
            && !tokio::fs::try_exists(parent).await?
        {
            let parent = parent.to_owned();
            tokio::task::spawn_blocking(move || private_dirs().create(parent))
                .await
                .map_err(std::io::Error::other)??;
        }
        // Durable before visible: a crash after publishing must not leave a truncated entry.
        // The record is written (on this thread) while the blocking pool flushes the entry, so
        // it costs next to nothing where flushing costs something; it is in place before the
        // entry is published, so once the entry is visible, so is its writer.
        let (synced, written) = tokio::join!(writer.get_mut().sync_data(), async {
            match record.is_empty() {
                false => write_record(&target, inode, record).map(Some),
                true => Ok(None),
            }
        });
        drop(writer);
        let written = written?;
        if let Err(e) = synced {
            if let Some(path) = written {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
        let published = tokio::fs::hard_link(&temp.0, &target).await;
        if published.is_err()
            && let Some(path) = written
        {
            let _ = std::fs::remove_file(path);
        }
        match published {
            Ok(()) => {
                if let Some(retention) = &self.retention {
                    retention.stored(&key.object_name(), len);
                }
                Ok(Stored::Created)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Stored::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(
        &self,
        clients: &[Client],
        namespaces: &[Namespace],
        each: &mut (dyn FnMut(Entry) + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let folders = match namespaces {
            [] => namespace_folders(&self.root, clients)?,
            chosen => Client::chosen(clients)
                .into_iter()
                .flat_map(|client| chosen.iter().map(move |n| (client, n.clone())))
                .collect(),
        };
        let mut listed = 0u64;
        for (client, namespace) in folders {
            let root = self.root.clone();
            // One folder at a time on the blocking pool; a folder's entries are passed on in
            // batches, so memory stays bounded by a batch, not by the folder.
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<Entry>>(2);
            let walking = tokio::task::spawn_blocking(move || {
                list_folder(&root, client, &namespace, &mut |batch| {
                    sender.blocking_send(batch).is_ok()
                })
            });
            while let Some(batch) = receiver.recv().await {
                listed += batch.len() as u64;
                batch.into_iter().for_each(&mut *each);
                progress(listed);
            }
            walking
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))??;
        }
        Ok(())
    }

    async fn delete(&self, entry: &Entry) -> Result<Deleted, StoreError> {
        let name = entry.key.object_name();
        let path = self.path_for(&entry.key);
        let aside = self
            .tmp
            .join(format!("purge-{}", uuid::Uuid::new_v4().simple()));
        let listed = entry.version.clone();
        let deleted = tokio::task::spawn_blocking(move || delete_version(&path, &aside, &listed))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        if deleted == Deleted::Deleted
            && let Some(retention) = &self.retention
        {
            retention.vanished(&name);
        }
        Ok(deleted)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(&self.tmp).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Backend(format!(
                "{} is not a directory",
                self.tmp.display()
            ))),
            Err(e) => Err(StoreError::Backend(format!("{}: {e}", self.tmp.display()))),
        }
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn figures(&self) -> Vec<Figure> {
        self.retention
            .as_ref()
            .map(|retention| retention.figures())
            .unwrap_or_default()
    }

    async fn usage(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<Usage, StoreError> {
        let root = self.root.clone();
        let usage = tokio::task::spawn_blocking(move || local_usage(&root))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        progress(usage.total().entries + usage.skipped);
        Ok(usage)
    }
}

/// Walks every namespace folder of both clients: each entry's size, and its modification time
/// (when it was written, or last read when retention is on). Files that are neither an entry
/// nor a record are counted as skipped.
fn local_usage(root: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    for (client, namespace) in namespace_folders(root, &[])? {
        let prefix = folder_of(client, &namespace);
        let entries = match std::fs::read_dir(root.join(&prefix)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !is_entry_name(&file_name) && file_name.ends_with(".record") {
                continue;
            }
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = format!("{prefix}/{file_name}");
            let time = meta.modified().ok().map(time::OffsetDateTime::from);
            usage.add(&name, meta.len(), time);
        }
    }
    Ok(usage)
}

/// Every namespace folder of the store of `clients` (both when empty), whether or not it exists
/// yet: for each client, `org`, then each team's that exists. Folders whose name is no team
/// name are no namespace of this cache.
pub(crate) fn namespace_folders(
    root: &Path,
    clients: &[Client],
) -> std::io::Result<Vec<(Client, Namespace)>> {
    let mut namespaces = Vec::new();
    for client in Client::chosen(clients) {
        namespaces.push((client, Namespace::Org));
        match std::fs::read_dir(root.join(client.root()).join("teams")) {
            Ok(teams) => {
                for team in teams {
                    let team = team?;
                    let name = team.file_name().to_string_lossy().into_owned();
                    if team.file_type()?.is_dir()
                        && let Ok(team) = TeamName::parse(&name)
                    {
                        namespaces.push((client, Namespace::Team(team)));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(namespaces)
}

/// Entries handed on per batch while a folder is listed.
const LIST_BATCH: usize = 1000;

/// Lists one namespace folder: each entry with its size, time and record, in batches to `send`
/// (which says whether to go on).
fn list_folder(
    root: &Path,
    client: Client,
    namespace: &Namespace,
    send: &mut dyn FnMut(Vec<Entry>) -> bool,
) -> std::io::Result<()> {
    let folder = root.join(folder_of(client, namespace));
    let files = match std::fs::read_dir(&folder) {
        Ok(files) => files,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut batch = Vec::with_capacity(LIST_BATCH);
    for file in files {
        let file = file?;
        let name = file.file_name().to_string_lossy().into_owned();
        let Ok(hash) = crate::key::Hash::parse(&name) else {
            continue;
        };
        // Gone since the folder was read (evicted, purged): not listed.
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let inode = inode(&meta);
        let record = read_record(&file.path(), inode);
        let created = record
            .writer
            .as_ref()
            .map(|w| w.stored)
            .or_else(|| meta.created().or(meta.modified()).ok().map(Into::into));
        batch.push(Entry {
            key: CacheKey {
                client,
                namespace: namespace.clone(),
                hash,
            },
            bytes: meta.len(),
            created,
            record,
            version: version_of(&meta),
        });
        if batch.len() == LIST_BATCH && !send(std::mem::take(&mut batch)) {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        send(batch);
    }
    Ok(())
}

/// The record of the entry file at `entry` with inode `inode`: none when it has no record file,
/// or one that cannot be read as a record (logged).
fn read_record(entry: &Path, inode: u64) -> Record {
    let path = record_path(entry, inode);
    match std::fs::read(&path) {
        Ok(bytes) => Record::from_sidecar(&bytes).unwrap_or_else(|| {
            tracing::warn!(record = %path.display(), "an entry's record cannot be read; listed without a writer");
            Record::default()
        }),
        Err(_) => Record::default(),
    }
}

/// Deletes the entry at `path` if its file is still the `listed` version. The file is first
/// renamed aside (atomically: whatever is at the name now is taken), then checked: one stored
/// again since the listing is put back, never deleted.
fn delete_version(path: &Path, aside: &Path, listed: &str) -> std::io::Result<Deleted> {
    match std::fs::rename(path, aside) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Deleted::Gone),
        Err(e) => return Err(e),
    }
    let _aside = TempFile(aside.to_owned());
    let meta = std::fs::symlink_metadata(aside)?;
    if version_of(&meta) != listed {
        // Back under its name, unless yet another upload stored one there meanwhile.
        match std::fs::hard_link(aside, path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        return Ok(Deleted::Changed);
    }
    remove_record(path, inode(&meta));
    Ok(Deleted::Deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn no_record() -> Record {
        Record::default()
    }

    fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    async fn read_all(store: &LocalStore, key: &CacheKey) -> Option<Vec<u8>> {
        match store.get(key).await.unwrap()?.fetched {
            Fetched::Stream { body, .. } => {
                let chunks: Vec<_> = body.collect().await;
                Some(
                    chunks
                        .into_iter()
                        .flat_map(|c| c.unwrap().to_vec())
                        .collect(),
                )
            }
            Fetched::Bytes(_) | Fetched::Redirect { .. } => {
                panic!("the local store streams every entry")
            }
        }
    }

    fn leftover_temp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(".tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn put_then_get_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let key = CacheKey::parse(Some("web"), "123").unwrap();
        assert!(read_all(&store, &key).await.is_none());
        assert!(!store.exists(&key).await.unwrap());
        let first = store
            .put_if_absent(&key, 6, body(vec![b"abc", b"def"]), &no_record())
            .await;
        assert_eq!(first.unwrap(), Stored::Created);
        let second = store
            .put_if_absent(&key, 3, body(vec![b"xyz"]), &no_record())
            .await;
        assert_eq!(second.unwrap(), Stored::AlreadyExists);
        assert_eq!(read_all(&store, &key).await.unwrap(), b"abcdef");
        assert!(dir.path().join("teams/web/123").is_file());
        assert_eq!(leftover_temp_files(dir.path()), 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn folders_and_entries_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("data");
        let store = LocalStore::open(&root).unwrap();
        let key = CacheKey::parse(Some("web"), "1").unwrap();
        store
            .put_if_absent(&key, 3, body(vec![b"abc"]), &no_record())
            .await
            .unwrap();
        for dir in ["", ".tmp", "teams", "teams/web"] {
            assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
        }
        assert_eq!(mode(&root.join("teams/web/1")), 0o600);

        // A data folder that exists with wider permissions is restricted.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        LocalStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[tokio::test]
    async fn short_long_or_broken_bodies_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let key = CacheKey::parse(None, "9").unwrap();
        let short = store
            .put_if_absent(&key, 10, body(vec![b"abc"]), &no_record())
            .await;
        assert!(matches!(
            short,
            Err(StoreError::Incomplete {
                expected: 10,
                received: 3
            })
        ));
        let long = store
            .put_if_absent(&key, 2, body(vec![b"abc"]), &no_record())
            .await;
        assert!(matches!(long, Err(StoreError::Incomplete { .. })));
        let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::new(ErrorKind::ConnectionReset, "gone")),
        ]));
        assert!(matches!(
            store.put_if_absent(&key, 4, broken, &no_record()).await,
            Err(StoreError::Body(_))
        ));
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(leftover_temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_hash_store_exactly_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
        let key = CacheKey::parse(None, "77").unwrap();
        let bodies: Vec<&'static [u8]> = vec![b"aaaaaaaa", b"bbbbbbbb", b"cccccccc", b"dddddddd"];
        let tasks: Vec<_> = bodies
            .iter()
            .map(|b| {
                let (store, key, b) = (store.clone(), key.clone(), *b);
                tokio::spawn(async move {
                    store
                        .put_if_absent(&key, 8, body(vec![b]), &no_record())
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() == Stored::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        let stored = read_all(&store, &key).await.unwrap();
        assert!(bodies.contains(&stored.as_slice()));
    }

    fn written_by(subject: &str) -> Record {
        Record {
            turbo: None,
            writer: Some(crate::storage::record::Writer {
                token_id: format!("id-{subject}"),
                subject: subject.into(),
                kind: crate::storage::record::WriterKind::Issued,
                rule: None,
                issuer: None,
                claims: Default::default(),
                stored: time::OffsetDateTime::now_utc(),
            }),
        }
    }

    async fn list_all(store: &LocalStore) -> Vec<Entry> {
        let mut entries = Vec::new();
        store
            .list(&[], &[], &mut |entry| entries.push(entry), &|_| {})
            .await
            .unwrap();
        entries.sort_by_key(|e| e.key.object_name());
        entries
    }

    /// Of concurrent uploads of one hash, the entry listed carries the record of the upload
    /// that won, and the losers leave no record behind.
    #[tokio::test]
    async fn the_winner_of_concurrent_uploads_is_its_entry_s_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
        for round in 0..20 {
            let key = CacheKey::parse(Some("web"), &format!("{round}")).unwrap();
            let tasks: Vec<_> = ["aaaa", "bbbb", "cccc", "dddd"]
                .into_iter()
                .map(|b| {
                    let (store, key) = (store.clone(), key.clone());
                    tokio::spawn(async move {
                        let body = body(vec![b.as_bytes()]);
                        store.put_if_absent(&key, 4, body, &written_by(b)).await
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            let content = String::from_utf8(read_all(&store, &key).await.unwrap()).unwrap();
            let entries = list_all(&store).await;
            let entry = entries.iter().find(|e| e.key == key).unwrap();
            assert_eq!(entry.record.writer.as_ref().unwrap().subject, content);
        }
        let records = std::fs::read_dir(dir.path().join("teams/web"))
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".record")
            })
            .count();
        assert_eq!(records, 20, "one record per entry, none left by the losers");
        let usage = store.usage(&|_| {}).await.unwrap();
        assert_eq!(usage.total().entries, 20);
        assert_eq!(usage.skipped, 0, "records are neither entries nor strays");
    }

    /// A Turborepo artifact and an Nx entry of the same hash and namespace are two entries:
    /// neither reads the other. The artifact's record (writer and turbo's fields) comes back on
    /// its read, its head and its listing; walks of the store see both, told apart.
    #[tokio::test]
    async fn turbo_artifacts_are_entries_of_their_own_with_their_fields() {
        use crate::storage::record::Turbo;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let hash = "1234567890123456";
        let nx = CacheKey::parse(None, hash).unwrap();
        let turbo = CacheKey::parse_for(Client::Turbo, None, hash).unwrap();
        let fields = Turbo {
            duration_ms: Some(1500),
            sha: Some("abc123".into()),
            tag: Some("dGFn".into()),
        };
        let mut record = written_by("turbo-ci");
        record.turbo = Some(fields.clone());
        store
            .put_if_absent(&nx, 2, body(vec![b"nx"]), &written_by("nx-ci"))
            .await
            .unwrap();
        assert!(
            !store.exists(&turbo).await.unwrap(),
            "an Nx entry is no artifact"
        );
        assert!(store.head(&turbo).await.unwrap().is_none());
        assert!(store.get(&turbo).await.unwrap().is_none());
        store
            .put_if_absent(&turbo, 5, body(vec![b"turbo"]), &record)
            .await
            .unwrap();
        assert_eq!(read_all(&store, &nx).await.unwrap(), b"nx");
        assert_eq!(read_all(&store, &turbo).await.unwrap(), b"turbo");
        assert!(dir.path().join("turbo/org").join(hash).is_file());
        let hit = store.get(&turbo).await.unwrap().unwrap();
        assert_eq!(hit.turbo.as_deref(), Some(&fields));
        assert!(store.get(&nx).await.unwrap().unwrap().turbo.is_none());
        let head = store.head(&turbo).await.unwrap().unwrap();
        assert_eq!((head.len, head.turbo.as_deref()), (5, Some(&fields)));
        assert_eq!(store.head(&nx).await.unwrap().unwrap().len, 2);

        let listed = |clients: Vec<Client>| {
            let store = &store;
            async move {
                let mut entries = Vec::new();
                store
                    .list(&clients, &[], &mut |e| entries.push(e), &|_| {})
                    .await
                    .unwrap();
                entries
            }
        };
        let turbo_only = listed(vec![Client::Turbo]).await;
        assert_eq!(turbo_only.len(), 1);
        assert_eq!(turbo_only[0].key, turbo);
        assert_eq!(turbo_only[0].record.turbo, Some(fields));
        assert_eq!(
            turbo_only[0].record.writer.as_ref().unwrap().subject,
            "turbo-ci"
        );
        let nx_only = listed(vec![Client::Nx]).await;
        assert_eq!(nx_only.len(), 1);
        assert_eq!(nx_only[0].key, nx);
        assert_eq!(listed(vec![]).await.len(), 2);
        let mut chosen = Vec::new();
        store
            .list(
                &[Client::Turbo],
                &[Namespace::Org],
                &mut |e| chosen.push(e),
                &|_| {},
            )
            .await
            .unwrap();
        assert_eq!(chosen.len(), 1);

        let usage = store.usage(&|_| {}).await.unwrap();
        assert_eq!(usage.namespaces["org"].bytes, 2);
        assert_eq!(usage.namespaces["turbo:org"].bytes, 5);
        assert_eq!(usage.skipped, 0, "records are neither entries nor strays");

        assert_eq!(
            store.delete(&turbo_only[0]).await.unwrap(),
            Deleted::Deleted
        );
        assert!(store.get(&turbo).await.unwrap().is_none());
        assert_eq!(read_all(&store, &nx).await.unwrap(), b"nx");
        let left: Vec<String> = std::fs::read_dir(dir.path().join("turbo/org"))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.is_empty(),
            "the artifact's record went with it: {left:?}"
        );
    }

    #[tokio::test]
    async fn a_delete_removes_the_listed_version_with_its_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let key = CacheKey::parse(None, "5").unwrap();
        store
            .put_if_absent(&key, 3, body(vec![b"one"]), &written_by("first"))
            .await
            .unwrap();
        // Without a writer (as before records existed): no record file.
        let bare = CacheKey::parse(None, "6").unwrap();
        store
            .put_if_absent(&bare, 3, body(vec![b"two"]), &no_record())
            .await
            .unwrap();
        let listed = list_all(&store).await;
        assert_eq!(listed.len(), 2);
        assert!(listed[1].record.writer.is_none());
        let first = listed[0].clone();
        assert_eq!(store.delete(&first).await.unwrap(), Deleted::Deleted);
        assert_eq!(store.delete(&first).await.unwrap(), Deleted::Gone);
        // Stored again after the listing: that entry is not the one listed.
        store
            .put_if_absent(&key, 3, body(vec![b"new"]), &written_by("second"))
            .await
            .unwrap();
        assert_eq!(store.delete(&first).await.unwrap(), Deleted::Changed);
        assert_eq!(read_all(&store, &key).await.unwrap(), b"new");
        let now = list_all(&store).await;
        assert_eq!(now[0].record.writer.as_ref().unwrap().subject, "second");
        assert_eq!(store.delete(&now[0]).await.unwrap(), Deleted::Deleted);
        let left: Vec<String> = std::fs::read_dir(dir.path().join("org"))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["6"],
            "entries and records gone, the bare entry kept"
        );
        assert_eq!(leftover_temp_files(dir.path()), 0);
    }
}

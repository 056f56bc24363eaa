//! The embedded default backend: a directory on local disk.
//!
//! Layout under the root (`NX_CACHE_DIR`): entries at `org/{hash}` and `teams/{team}/{hash}`,
//! uploads in progress under `.tmp/`. An upload is written to a temporary file, flushed to disk,
//! then published with `link(2)`, which fails if the name exists: publishing is atomic and never
//! overwrites, so of two concurrent uploads of one hash exactly one wins, and a reader never sees
//! a partial entry.
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
use super::usage::Usage;
use super::{ByteStream, DOWNLOAD_CHUNK, Fetched, Health, Store, StoreError, Stored};
use crate::key::CacheKey;
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
        let tmp = root.join(".tmp");
        private_dirs().create(&tmp)?;
        restrict_to_owner(root)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
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

/// Opens an entry and reads its length. With `touch`, its modification time becomes now: with
/// retention on, a file's modification time is its last use, which survives a restart.
fn open_for_reading(path: &Path, touch: bool) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path)?;
    if touch && let Err(e) = file.set_modified(std::time::SystemTime::now()) {
        // Not fatal: only the order of eviction after a restart depends on it.
        tracing::debug!(path = %path.display(), error = %e, "cannot record the entry's last use");
    }
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// A temporary file that is deleted when dropped, so every failure path cleans up after itself.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Fetched>, StoreError> {
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
        let (mut file, len) = match open_for_reading(&path, touch) {
            Ok(opened) => opened,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(retention) = &self.retention {
            retention.used(&name, len);
        }
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
            return Ok(Some(Fetched::Stream {
                len,
                body: Box::pin(body),
            }));
        }
        let body = ReaderStream::with_capacity(tokio::fs::File::from_std(file), DOWNLOAD_CHUNK)
            .map(move |chunk| {
                let _registered_until_the_body_ends = &reading;
                chunk
            });
        Ok(Some(Fetched::Stream {
            len,
            body: Box::pin(body),
        }))
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool, StoreError> {
        // On the worker thread, as `get` opens: a lookup costs less than a thread hand-off.
        Ok(std::fs::exists(self.path_for(key))?)
    }

    async fn put_if_absent(
        &self,
        key: &CacheKey,
        len: u64,
        mut body: ByteStream,
    ) -> Result<Stored, StoreError> {
        let temp = TempFile(self.tmp.join(uuid::Uuid::new_v4().simple().to_string()));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(FILE_MODE);
        let file = options.open(&temp.0).await?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
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
        // Durable before visible: a crash after publishing must not leave a truncated entry.
        writer.get_mut().sync_data().await?;
        drop(writer);

        let target = self.path_for(key);
        if let Some(parent) = target.parent()
            && !tokio::fs::try_exists(parent).await?
        {
            let parent = parent.to_owned();
            tokio::task::spawn_blocking(move || private_dirs().create(parent))
                .await
                .map_err(std::io::Error::other)??;
        }
        match tokio::fs::hard_link(&temp.0, &target).await {
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

/// Walks `org/` and `teams/*/`: each file's size, and its modification time (when it was
/// written, or last read when retention is on).
fn local_usage(root: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    let mut folders = vec![(root.join("org"), "org".to_string())];
    match std::fs::read_dir(root.join("teams")) {
        Ok(teams) => {
            for team in teams {
                let team = team?;
                if team.file_type()?.is_dir() {
                    let name = team.file_name().to_string_lossy().into_owned();
                    folders.push((team.path(), format!("teams/{name}")));
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for (folder, prefix) in folders {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
            let time = meta.modified().ok().map(time::OffsetDateTime::from);
            usage.add(&name, meta.len(), time);
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    async fn read_all(store: &LocalStore, key: &CacheKey) -> Option<Vec<u8>> {
        match store.get(key).await.unwrap()? {
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
            .put_if_absent(&key, 6, body(vec![b"abc", b"def"]))
            .await;
        assert_eq!(first.unwrap(), Stored::Created);
        let second = store.put_if_absent(&key, 3, body(vec![b"xyz"])).await;
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
            .put_if_absent(&key, 3, body(vec![b"abc"]))
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
        let short = store.put_if_absent(&key, 10, body(vec![b"abc"])).await;
        assert!(matches!(
            short,
            Err(StoreError::Incomplete {
                expected: 10,
                received: 3
            })
        ));
        let long = store.put_if_absent(&key, 2, body(vec![b"abc"])).await;
        assert!(matches!(long, Err(StoreError::Incomplete { .. })));
        let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::new(ErrorKind::ConnectionReset, "gone")),
        ]));
        assert!(matches!(
            store.put_if_absent(&key, 4, broken).await,
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
                tokio::spawn(async move { store.put_if_absent(&key, 8, body(vec![b])).await })
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
}

//! The one storage interface, and the backends behind it.
//!
//! The HTTP layer only ever talks to [`Store`]; a backend is added without touching it. The
//! interface is shaped by what a cache needs and by the Nx contract:
//! - reads are streams, a redirect the client follows on its own, or (for small entries) the
//!   whole entry already in memory: how a hit reaches the client is decided here, below the
//!   front doors, so every client API answers it alike (see [`inline`]). A Turborepo artifact's
//!   read brings turbo's fields of its record along ([`Hit::turbo`]), from the same storage
//!   answer, and an artifact with a signature tag is never redirected: turbo must find the tag
//!   in the answer's headers, and a redirect to storage cannot carry it;
//! - writes are *put-if-absent* from a stream: an entry is written once and never overwritten,
//!   and it becomes visible only when complete;
//! - `exists` lets the API refuse a duplicate upload before reading its body;
//! - every entry records who wrote it ([`record::Record`]), and entries can be listed with that
//!   record and deleted one by one, only in the version that was listed (`handler entries`,
//!   `handler purge`: [`entries`]).
//!
//! An entry can be deleted by someone else at any time (retention, the Azure lifecycle policy,
//! `handler purge` from another machine). Whatever remembers that an entry exists (a backend's
//! exact hit checks, a copy of a hot entry) asks storage again once that knowledge is older than
//! [`CONFIRMED_FOR`], so a deleted entry never sticks in a running instance.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::key::{CacheKey, Client, Namespace};

pub mod azure;
pub mod entries;
pub mod health;
pub mod inline;
pub mod known;
pub mod local;
pub mod record;
pub mod usage;

pub use health::Health;

/// Size of the chunks a backend streams a download in. Small, because a client that stops
/// reading leaves up to a chunk or two (plus the connection's write buffer) held in memory.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;

pub use crate::limits::ByteStream;

/// How long anything in this process may answer from memory that an entry exists (a backend's
/// remembered entries, an in-memory copy of a hot entry) before it asks storage again. An entry
/// deleted behind this instance's back (another instance's purge, retention, the lifecycle
/// policy, someone in the portal) is thus redirected to or served for at most this long; an
/// upload is answered `409 exists` only after storage confirmed the entry just now. README and
/// docs/security.md promise this bound (30 s, well within the 60 s users were told to expect):
/// anything that wraps a backend and remembers entries or their bytes must keep to it.
pub const CONFIRMED_FOR: Duration = Duration::from_secs(30);

/// A found entry, in one of three shapes:
/// - `Bytes`: the whole entry, read before the answer starts (all or nothing: a read that fails
///   is a miss, never a `200` with a short body);
/// - `Stream`: bytes to stream to the client as they are read;
/// - `Redirect`: a URL the client fetches directly, with the entry's size when the backend
///   checked that it exists (`None` when it redirects unchecked).
pub enum Fetched {
    Bytes(Bytes),
    Stream { len: u64, body: ByteStream },
    Redirect { url: String, len: Option<u64> },
}

/// A found entry: how it reaches the client, and turbo's fields of its record for a Turborepo
/// artifact (`None` for an Nx entry, whose answer carries none).
pub struct Hit {
    pub fetched: Fetched,
    pub turbo: Option<Arc<record::Turbo>>,
}

impl Hit {
    /// An entry without turbo's fields.
    pub fn bare(fetched: Fetched) -> Self {
        Self {
            fetched,
            turbo: None,
        }
    }
}

/// An entry's size and turbo's fields of its record, without its bytes (`HEAD`, a dry run's
/// query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    pub turbo: Option<Arc<record::Turbo>>,
}

/// Whether an entry is a Turborepo artifact with a signature tag: its answer must carry the
/// tag, so it is served through the handler whatever its size, never redirected.
pub fn must_carry_tag(turbo: Option<&record::Turbo>) -> bool {
    turbo.is_some_and(|t| t.tag.is_some())
}

/// The result of a put-if-absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    AlreadyExists,
}

/// One entry as a listing sees it, with what it records.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: CacheKey,
    pub bytes: u64,
    /// When it was stored: the writer's time, else what storage says (creation time, or the
    /// file's).
    pub created: Option<time::OffsetDateTime>,
    pub record: record::Record,
    /// The version that was listed (Azure: the blob's ETag; embedded: the file's inode and birth
    /// time): a
    /// delete removes this version only, never an entry stored again since.
    pub version: String,
}

/// What became of one delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// The entry was stored again since it was listed: the new one was left.
    Changed,
    /// It was gone already.
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The client's body ended before its declared length: nothing was stored.
    #[error("upload incomplete: {received} of {expected} bytes received; nothing stored")]
    Incomplete { expected: u64, received: u64 },
    /// Reading the client's body failed (disconnect, timeout): nothing was stored.
    #[error("reading the upload failed: {0}; nothing stored")]
    Body(io::Error),
    /// The backend itself failed.
    #[error("{0}")]
    Backend(String),
    /// The backend refused the operation for want of a right; the message names the role.
    #[error("{0}")]
    Forbidden(String),
}

impl StoreError {
    /// True when the fault is the client's (its body), not the storage's.
    pub fn is_client_fault(&self) -> bool {
        matches!(self, StoreError::Incomplete { .. } | StoreError::Body(_))
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short description for the startup log (never containing credentials).
    fn describe(&self) -> String;

    /// Fetches an entry, or `None` when it does not exist. For a Turborepo key the hit carries
    /// turbo's fields of the record, and an artifact with a tag is never redirected.
    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, StoreError>;

    /// Whether an entry exists.
    async fn exists(&self, key: &CacheKey) -> Result<bool, StoreError>;

    /// An entry's size and, for a Turborepo key, turbo's fields of its record, without its
    /// bytes; `None` when it does not exist.
    async fn head(&self, key: &CacheKey) -> Result<Option<Head>, StoreError>;

    /// Stores `body` under `key` unless an entry is already there, with `record` (who wrote it)
    /// visible together with the entry, never after it. `len` is the declared length: a body
    /// that ends early (or runs long) stores nothing and gives [`StoreError::Incomplete`].
    async fn put_if_absent(
        &self,
        key: &CacheKey,
        len: u64,
        body: ByteStream,
        record: &record::Record,
    ) -> Result<Stored, StoreError>;

    /// Probes whether the backend can serve requests now; the error says why not. Called at
    /// startup, by `handler doctor` and by the health watch, never per request.
    async fn ready(&self) -> Result<(), StoreError>;

    /// The last known health, kept by the health watch ([`health::watch`]).
    fn health(&self) -> &Health;

    /// Adds up what the store holds per namespace (`handler usage`), calling `progress` with
    /// the number of objects listed so far now and then. Lists page by page: memory does not
    /// grow with the number of entries.
    async fn usage(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<usage::Usage, StoreError>;

    /// Lists the entries of `clients` (both when empty) in `namespaces` (every namespace when
    /// empty) with their records, calling `each` per entry and `progress` with the number listed
    /// so far now and then. Lists page by page: memory does not grow with the number of entries.
    async fn list(
        &self,
        clients: &[Client],
        namespaces: &[Namespace],
        each: &mut (dyn FnMut(Entry) + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), StoreError>;

    /// Deletes a listed entry with its record, only in the version that was listed.
    async fn delete(&self, entry: &Entry) -> Result<Deleted, StoreError>;

    /// Figures the backend reports about itself for `/metrics` (size, evictions).
    fn figures(&self) -> Vec<crate::metrics::Figure> {
        Vec::new()
    }
}

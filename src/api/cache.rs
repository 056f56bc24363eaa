//! What every front door does with a cache entry, in no client's terms: admission (the key, then
//! the token), the read, the checks an upload must pass before its body is read, the upload
//! itself, and the drain of a refused upload's body. Each front door ([`super::nx`],
//! [`super::turbo`]) turns its client's request into these calls and their results
//! ([`Read`], [`Refused`]) into its client's answers; neither knows the other.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{AppState, WithOutcome};
use crate::auth::Grant;
use crate::auth::exchange::Exchange;
use crate::config::Mode;
use crate::key::{CacheKey, Namespace};
use crate::limits::Drain;
use crate::metrics::Outcome;
use crate::storage::record::{Record, Writer, WriterKind};
use crate::storage::{Fetched, Hit, StoreError, Stored};

/// Why a request was not served as asked. The message is for the user (never a token or a
/// signature); the front door picks the status its client understands.
#[derive(Debug)]
pub(super) struct Refused {
    pub why: Why,
    pub message: String,
    pub outcome: Outcome,
}

/// The kinds of refusal, each of which a client contract answers in its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// A malformed key, request or body.
    BadRequest,
    /// No valid token.
    Unauthorized,
    /// The token (or the server's mode) does not allow this: expired, read-only, another
    /// namespace.
    Forbidden,
    /// An upload without a `Content-Length`.
    NoLength,
    /// An upload over `NX_CACHE_MAX_ARTIFACT_SIZE`.
    TooLarge,
    /// The entry exists, and entries are never overwritten.
    Exists,
    /// Storage failed.
    Unavailable,
}

impl Refused {
    pub fn new(why: Why, message: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            why,
            message: message.into(),
            outcome,
        }
    }
}

/// The token of a request, verified; an exchanged token as its trust rule allows it now.
pub(super) fn verify(state: &AppState, headers: &HeaderMap) -> Result<Grant, Refused> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let grant = state.tokens.verify_header(authorization).map_err(|e| {
        tracing::info!(reason = %e, "token refused");
        Refused::new(Why::Unauthorized, e.to_string(), Outcome::Unauthorized)
    })?;
    let policy = state.exchange.as_deref().map(Exchange::policy);
    Ok(grant.under_policy(policy))
}

/// Validates the key and the token, in that order (a malformed key is refused before any token
/// work).
pub(super) fn admit(
    state: &AppState,
    key: Result<CacheKey, String>,
    headers: &HeaderMap,
) -> Result<(CacheKey, Grant), Refused> {
    let key = key.map_err(|e| Refused::new(Why::BadRequest, e, Outcome::BadRequest))?;
    let grant = verify(state, headers)?;
    Ok((key, grant))
}

/// What a read found, before any client's terms.
pub(super) enum Read {
    Hit(Hit),
    /// A miss, or a read that is answered as one: no access, an expired token, storage trouble.
    Miss(Outcome),
    /// Storage failed and `NX_CACHE_STRICT_STORAGE` asks to say so (503) rather than miss.
    Unavailable,
}

/// Whether `grant` may read `namespace` now: `Err` with the outcome of the miss the read is
/// answered with, and why in words.
pub(super) fn may_read(
    state: &AppState,
    namespace: &Namespace,
    grant: &Grant,
) -> Result<(), (Outcome, &'static str)> {
    if grant.expired {
        // Expired during the build: no access, but no 401 (it would abort an Nx build).
        warn_expired(grant);
        return Err((
            Outcome::Expired,
            "the access token has expired; ask for a new one",
        ));
    }
    if !grant.covers(namespace) {
        // A miss, not an error: any non-404 GET failure aborts an Nx build, and a miss does not
        // reveal whether the other namespace holds the entry.
        tracing::warn!(subject = %grant.subject, token_id = %grant.token_id,
            namespace = %namespace, "token has no access to this namespace; answering a miss");
        return Err((Outcome::Denied, "this token has no access to this cache"));
    }
    if state.mode == Mode::NoCache {
        return Err((
            Outcome::Miss,
            "this cache server answers every read with a miss (NX_CACHE_MODE=no-cache)",
        ));
    }
    Ok(())
}

/// A read whose key and token are valid: the entry, or why it is a miss.
pub(super) async fn read(state: &AppState, key: &CacheKey, grant: &Grant) -> Read {
    if let Err((outcome, _)) = may_read(state, &key.namespace, grant) {
        return Read::Miss(outcome);
    }
    match state.store.get(key).await {
        Ok(Some(hit)) => Read::Hit(hit),
        Ok(None) => Read::Miss(Outcome::Miss),
        Err(e) => {
            tracing::error!(error = %e, namespace = %key.namespace, hash = key.hash.as_str(),
                "storage read failed");
            if state.strict_storage {
                Read::Unavailable
            } else {
                Read::Miss(Outcome::StorageError)
            }
        }
    }
}

/// A found entry as a `200` with its bytes (whole or streamed) or a `307` to storage: how it
/// reaches the client was decided by the store, the same for every front door. `Err` is the
/// outcome of a hit that must be answered as a miss instead (too many downloads streaming).
pub(super) fn render_hit(
    state: &AppState,
    key: &CacheKey,
    fetched: Fetched,
) -> Result<Response, Outcome> {
    match fetched {
        Fetched::Bytes(bytes) => {
            // Already whole in memory (bounded by the store): no download permit needed.
            let len = bytes.len() as u64;
            Ok(hit_with_bytes(Body::from(bytes), len))
        }
        Fetched::Stream { len, body } => {
            // Each streamed download holds a connection and some buffers until its client has
            // read it: a bounded number at once, and a miss (not an error) past the bound.
            let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
                tracing::warn!(namespace = %key.namespace, hash = key.hash.as_str(),
                    "too many downloads in flight (NX_CACHE_MAX_DOWNLOADS); answering a miss");
                return Err(Outcome::Busy);
            };
            let body = body.map(move |chunk| {
                let _held_until_the_body_ends = &permit;
                chunk
            });
            Ok(hit_with_bytes(Body::from_stream(body), len))
        }
        Fetched::Redirect { url, len } => match HeaderValue::try_from(url) {
            Ok(location) => {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                Ok(response.with(match len {
                    Some(bytes) => Outcome::Hit {
                        bytes,
                        redirected: true,
                    },
                    None => Outcome::Redirect,
                }))
            }
            Err(_) => {
                tracing::error!(namespace = %key.namespace, "backend produced an invalid redirect URL");
                Err(Outcome::StorageError)
            }
        },
    }
}

/// `200` with an entry's `len` bytes in `body`.
fn hit_with_bytes(body: Body, len: u64) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response.with(Outcome::Hit {
        bytes: len,
        redirected: false,
    })
}

/// Every check an upload must pass before its body is read: its declared length, or the
/// refusal and how much of the body to read away.
pub(super) async fn check_upload(
    state: &AppState,
    key: &CacheKey,
    grant: &Grant,
    headers: &HeaderMap,
) -> Result<u64, (Refused, Drain)> {
    may_write(state, key, grant).map_err(|refused| (refused, Drain::Full))?;
    let Some(len) = declared_length(headers) else {
        let refused = Refused::new(
            Why::NoLength,
            "a Content-Length header is required",
            Outcome::BadRequest,
        );
        return Err((refused, Drain::Brief));
    };
    if len > state.max_artifact_bytes {
        tracing::warn!(namespace = %key.namespace, hash = key.hash.as_str(), bytes = len,
            limit = state.max_artifact_bytes, "artifact over the size limit; not stored");
        let message = format!(
            "not stored: the artifact is {len} bytes, over this cache's limit of {} bytes (NX_CACHE_MAX_ARTIFACT_SIZE)",
            state.max_artifact_bytes
        );
        return Err((
            Refused::new(Why::TooLarge, message, Outcome::TooLarge),
            Drain::Full,
        ));
    }
    match state.store.exists(key).await {
        Ok(false) => Ok(len),
        Ok(true) => Err((exists(key), Drain::Full)),
        Err(e) => Err((storage_failed(key, e), Drain::Full)),
    }
}

/// Streams an admitted upload of `len` bytes to storage, held to the body pace, with `record`
/// written by the same storage request: the bytes stored, or why nothing was.
pub(super) async fn upload(
    state: &AppState,
    key: &CacheKey,
    len: u64,
    body: Body,
    record: &Record,
) -> Result<u64, Refused> {
    let stream = state.bodies.paced(body);
    match state.store.put_if_absent(key, len, stream, record).await {
        Ok(Stored::Created) => Ok(len),
        Ok(Stored::AlreadyExists) => Err(exists(key)),
        Err(e) if e.is_client_fault() => {
            tracing::warn!(error = %e, namespace = %key.namespace, hash = key.hash.as_str(),
                "upload did not complete");
            Err(Refused::new(
                Why::BadRequest,
                e.to_string(),
                Outcome::BadRequest,
            ))
        }
        Err(e) => Err(storage_failed(key, e)),
    }
}

/// A small request body (JSON), read whole: at most `limit` bytes, held to the body pace. Past
/// the limit the rest is not read (dropping the body closes the connection after the answer).
pub(super) async fn read_body(
    state: &AppState,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Refused> {
    let mut stream = state.bodies.paced(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refused::new(
                Why::BadRequest,
                format!("reading the body failed: {e}"),
                Outcome::BadRequest,
            )
        })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > limit {
            return Err(Refused::new(
                Why::TooLarge,
                format!("the request body is limited to {limit} bytes"),
                Outcome::BadRequest,
            ));
        }
    }
    Ok(bytes)
}

/// What an entry stored with `grant` records: its writer, now.
pub(super) fn record_of(grant: &Grant) -> Record {
    let origin = grant.origin.as_ref();
    let writer = Writer {
        token_id: grant.token_id.clone(),
        subject: grant.subject.clone(),
        kind: match grant.rule {
            Some(_) => WriterKind::Exchanged,
            None => WriterKind::Issued,
        },
        rule: grant.rule.clone(),
        issuer: origin.map(|o| o.iss.clone()),
        claims: origin.map(|o| o.claims.clone()).unwrap_or_default(),
        stored: time::OffsetDateTime::now_utc(),
    };
    Record {
        writer: Some(writer.bounded()),
        turbo: None,
    }
}

/// Answers a refused upload now, and reads its body away in the background: closing a socket
/// with unread data makes the kernel reset it, and a client that sees a reset before it reads
/// the answer retries (Nx: 6 times, then the task fails). `wanted` is [`Drain::Full`] when the
/// client holds a valid token, [`Drain::Brief`] otherwise; a brief drain closes the connection.
pub(super) fn refuse_upload(
    state: &AppState,
    body: Body,
    mut refusal: Response,
    wanted: Drain,
) -> Response {
    if state.bodies.drain(body, wanted) == Drain::Brief {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

/// The token's freshness, the server mode, then the token's write right on this namespace.
fn may_write(state: &AppState, key: &CacheKey, grant: &Grant) -> Result<(), Refused> {
    if grant.expired {
        warn_expired(grant);
        return Err(Refused::new(
            Why::Forbidden,
            "not stored: the access token has expired; ask for a new one",
            Outcome::Expired,
        ));
    }
    let refusal = if state.mode != Mode::ReadWrite {
        "not stored: this cache server is read-only"
    } else if !grant.covers(&key.namespace) {
        match key.namespace {
            Namespace::Org => "not stored: this token has no access to the org-wide cache",
            Namespace::Team(_) => "not stored: this token has no access to this team's cache",
        }
    } else if !grant.can_write(&key.namespace) {
        "not stored: this token is read-only"
    } else {
        return Ok(());
    };
    Err(Refused::new(Why::Forbidden, refusal, Outcome::Denied))
}

/// A token that expired during a build: logged (by subject, never the token) on every request it
/// makes, so the operator sees which client needs a fresh one.
pub(super) fn warn_expired(grant: &Grant) {
    tracing::warn!(subject = %grant.subject, token_id = %grant.token_id,
        "the access token has expired (within NX_CACHE_EXPIRED_GRACE): no access, answered without 401");
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn exists(key: &CacheKey) -> Refused {
    tracing::debug!(namespace = %key.namespace, hash = key.hash.as_str(),
        "upload of an entry that exists; not overwritten");
    Refused::new(
        Why::Exists,
        "not stored: this entry exists and cache entries are never overwritten",
        Outcome::Conflict,
    )
}

fn storage_failed(key: &CacheKey, error: StoreError) -> Refused {
    tracing::error!(error = %error, namespace = %key.namespace, hash = key.hash.as_str(),
        "storage write failed");
    Refused::new(
        Why::Unavailable,
        "not stored: the cache storage is unavailable",
        Outcome::StorageError,
    )
}

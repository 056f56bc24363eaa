//! The HTTP API: routes, handlers, and the answers the Nx client understands.
//!
//! This is the only module that knows the Nx contract's status codes:
//! - GET: 200 with the bytes (or 307 to a URL the client fetches itself; which one is the
//!   store's decision, see [`crate::storage::inline`]), 404 for a miss. Any
//!   other GET answer aborts the user's whole build, so storage trouble and namespaces a token may
//!   not read are answered as misses; only a bad token gets 401 (`text/plain`, exactly).
//! - PUT: 200 stored, 409 exists, 403 not stored (read-only token or server, too large, storage
//!   trouble). The client ignores 403 and 409 silently and fails the task on anything else.
//!
//! A PUT that will be refused is answered before its body is read; the body is then read away
//! in the background ([`crate::limits::Bodies`]).
//!
//! `POST /token` (keyless access: an identity token in, a cache token out) is in [`token`];
//! what the handler answers when its configuration was refused under the Functions host is in
//! [`degraded`].

pub mod degraded;
mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::auth::exchange::Exchange;
use crate::auth::{Grant, TokenAuthority};
use crate::config::Mode;
use crate::key::{CacheKey, Namespace};
use crate::limits::{Bodies, Drain};
use crate::metrics::Metrics;
use crate::metrics::Outcome;
use crate::storage::record::{Record, Writer, WriterKind};
use crate::storage::{Fetched, Store, StoreError, Stored};
use crate::telemetry::{self, Caller};

/// Shared state of every handler: one cheap `Clone`.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenAuthority>,
    /// `POST /token`, when a trust policy is configured.
    pub exchange: Option<Arc<Exchange>>,
    pub mode: Mode,
    pub max_artifact_bytes: u64,
    /// Storage failures answer 503 instead of a miss / not stored (`NX_CACHE_STRICT_STORAGE`).
    pub strict_storage: bool,
    /// The pace uploads are held to, and the drains of refused ones.
    pub bodies: Arc<Bodies>,
    /// Permits for downloads streamed through the handler (`NX_CACHE_MAX_DOWNLOADS`).
    pub downloads: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// The bearer token `/metrics` requires; `None`: the endpoint answers 404.
    pub metrics_token: Option<Arc<str>>,
}

/// The org-wide cache.
pub const ORG_ROUTE: &str = "/v1/cache/{hash}";
/// A team's cache: Nx appends `/v1/cache/{hash}` to `https://host/teams/{team}`.
pub const TEAM_ROUTE: &str = "/teams/{team}/v1/cache/{hash}";
/// Readiness.
pub const HEALTH_ROUTE: &str = "/health";
/// Counters in Prometheus text format (off unless `NX_CACHE_METRICS_TOKEN` is set).
pub const METRICS_ROUTE: &str = "/metrics";
/// Token exchange: an identity token in, a short-lived cache token out.
pub const TOKEN_ROUTE: &str = "/token";

/// Every route with its methods, apart from `GET /` (liveness), which the Functions host calls
/// on the handler directly. `function-configs/*/function.json` must declare exactly these; the
/// packaging test checks that the two agree.
pub const ROUTES: [(&str, &[&str]); 5] = [
    (ORG_ROUTE, &["GET", "PUT"]),
    (TEAM_ROUTE, &["GET", "PUT"]),
    (HEALTH_ROUTE, &["GET"]),
    (METRICS_ROUTE, &["GET"]),
    (TOKEN_ROUTE, &["POST"]),
];

/// The router: org-wide cache, per-team caches, liveness and readiness.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(alive))
        .route(HEALTH_ROUTE, get(health))
        .route(METRICS_ROUTE, get(metrics))
        .route(TOKEN_ROUTE, post(token::exchange))
        .route(ORG_ROUTE, get(get_org).put(put_org))
        .route(TEAM_ROUTE, get(get_team).put(put_team))
        // Bodies are streamed to storage with our own size check, never buffered by axum.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            telemetry::log_request,
        ))
        .with_state(state)
}

/// `GET /`: the Functions host polls it until the handler is up.
async fn alive() -> &'static str {
    "ok"
}

/// `GET /health`: 200 when the store can serve, 503 otherwise, as the health watch last saw
/// it (never a storage call per request). The answer is unauthenticated, so it does not name the
/// account, container or endpoint: the reason is in the log and in `handler doctor`.
async fn health(State(state): State<AppState>) -> Response {
    if state.store.health().is_healthy() {
        text(StatusCode::OK, "ok".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the cache storage is unavailable (the handler's log says why; `handler doctor` checks it)".into(),
        )
    }
}

/// `GET /metrics`: the counters, for the holder of `NX_CACHE_METRICS_TOKEN` only.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut figures = state.store.figures();
    figures.extend(telemetry::figures());
    metrics_answer(
        &state.metrics,
        state.metrics_token.as_deref(),
        &headers,
        &figures,
    )
}

/// The `/metrics` answer: 404 when no token is set, 401 for a missing or wrong one, else the
/// counters and `figures` in Prometheus text format.
fn metrics_answer(
    metrics: &Metrics,
    expected: Option<&str>,
    headers: &HeaderMap,
    figures: &[crate::metrics::Figure],
) -> Response {
    let Some(expected) = expected else {
        return text(
            StatusCode::NOT_FOUND,
            "metrics are off (set NX_CACHE_METRICS_TOKEN)".into(),
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::metrics::token_matches(presented, expected) {
        return text(
            StatusCode::UNAUTHORIZED,
            "the metrics token is missing or wrong".into(),
        );
    }
    let mut response = metrics.prometheus(figures).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn get_org(state: State<AppState>, Path(hash): Path<String>, headers: HeaderMap) -> Response {
    read_entry(state, None, &hash, &headers).await
}

async fn get_team(
    state: State<AppState>,
    Path((team, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    read_entry(state, Some(&team), &hash, &headers).await
}

async fn put_org(
    state: State<AppState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write_entry(state, None, &hash, &headers, body).await
}

async fn put_team(
    state: State<AppState>,
    Path((team, hash)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write_entry(state, Some(&team), &hash, &headers, body).await
}

/// Validates the key and the token, in that order; the error is the finished answer.
fn admit(
    state: &AppState,
    team: Option<&str>,
    hash: &str,
    headers: &HeaderMap,
) -> Result<(CacheKey, Grant), Refusal> {
    let key = CacheKey::parse(team, hash)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string(), Outcome::BadRequest))?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let grant = state.tokens.verify_header(authorization).map_err(|e| {
        tracing::info!(reason = %e, namespace = %key.namespace, "token refused");
        Refusal(
            StatusCode::UNAUTHORIZED,
            e.to_string(),
            Outcome::Unauthorized,
        )
    })?;
    // An exchanged token gets what its trust rule grants now, not when it was issued.
    let policy = state.exchange.as_deref().map(Exchange::policy);
    Ok((key, grant.under_policy(policy)))
}

async fn read_entry(
    State(state): State<AppState>,
    team: Option<&str>,
    hash: &str,
    headers: &HeaderMap,
) -> Response {
    let (key, grant) = match admit(&state, team, hash, headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let mut response = read_admitted(&state, &key, &grant).await;
    response.extensions_mut().insert(Caller::of(&grant));
    response
}

/// A GET whose key and token are valid: the entry, or a miss.
async fn read_admitted(state: &AppState, key: &CacheKey, grant: &Grant) -> Response {
    if grant.expired {
        // Expired during the build: no access, but no 401 (it would abort the build).
        warn_expired(grant);
        return miss(Outcome::Expired);
    }
    if state.mode == Mode::NoCache {
        return miss(Outcome::Miss);
    }
    if !grant.covers(&key.namespace) {
        // A miss, not an error: any non-404 GET failure aborts the user's build, and a miss
        // does not reveal whether the other namespace holds the entry.
        tracing::warn!(subject = %grant.subject, token_id = %grant.token_id,
            namespace = %key.namespace, "token has no access to this namespace; answering a miss");
        return miss(Outcome::Denied);
    }
    match state.store.get(key).await {
        Ok(Some(fetched)) => render_hit(state, key, fetched),
        Ok(None) => miss(Outcome::Miss),
        Err(e) => {
            tracing::error!(error = %e, namespace = %key.namespace, hash = key.hash.as_str(),
                "storage read failed");
            if state.strict_storage {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cache storage unavailable".into(),
                )
                .with(Outcome::StorageError);
            }
            miss(Outcome::StorageError)
        }
    }
}

/// A found entry in the Nx contract's terms. How it reaches the client was decided by the store
/// (the same for every front door); this only renders it: `200` with the whole entry, `200`
/// streamed, or `307` to storage.
fn render_hit(state: &AppState, key: &CacheKey, fetched: Fetched) -> Response {
    match fetched {
        Fetched::Bytes(bytes) => {
            // Already whole in memory (bounded by the store): no download permit needed.
            let len = bytes.len() as u64;
            hit_with_bytes(Body::from(bytes), len)
        }
        Fetched::Stream { len, body } => {
            // Each streamed download holds a connection and some buffers until its client has
            // read it: a bounded number at once, and a miss (not an error) past the bound.
            let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
                tracing::warn!(namespace = %key.namespace, hash = key.hash.as_str(),
                    "too many downloads in flight (NX_CACHE_MAX_DOWNLOADS); answering a miss");
                return miss(Outcome::Busy);
            };
            let body = body.map(move |chunk| {
                let _held_until_the_body_ends = &permit;
                chunk
            });
            hit_with_bytes(Body::from_stream(body), len)
        }
        Fetched::Redirect { url, len } => match HeaderValue::try_from(url) {
            Ok(location) => {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response.with(match len {
                    Some(bytes) => Outcome::Hit {
                        bytes,
                        redirected: true,
                    },
                    None => Outcome::Redirect,
                })
            }
            Err(_) => {
                tracing::error!(namespace = %key.namespace, "backend produced an invalid redirect URL");
                miss(Outcome::StorageError)
            }
        },
    }
}

/// `200` with an entry's `len` bytes in `body`.
fn hit_with_bytes(body: Body, len: u64) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, octet_stream());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response.with(Outcome::Hit {
        bytes: len,
        redirected: false,
    })
}

async fn write_entry(
    State(state): State<AppState>,
    team: Option<&str>,
    hash: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let (key, grant) = match admit(&state, team, hash, headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse_upload(&state, body, refusal.into_response(), Drain::Brief),
    };
    let mut response = write_admitted(&state, &key, &grant, headers, body).await;
    response.extensions_mut().insert(Caller::of(&grant));
    response
}

/// A PUT whose key and token are valid: the checks, then the upload. A refusal is answered
/// before the body is read, and the body is read away (in full for a valid token: Nx with a
/// read-only token PUTs every artifact).
async fn write_admitted(
    state: &AppState,
    key: &CacheKey,
    grant: &Grant,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let len = match check_upload(state, key, grant, headers).await {
        Ok(len) => len,
        Err((refusal, drain)) => return refuse_upload(state, body, refusal, drain),
    };
    let stream = state.bodies.paced(body);
    match state
        .store
        .put_if_absent(key, len, stream, &record_of(grant))
        .await
    {
        Ok(Stored::Created) => {
            text(StatusCode::OK, "stored".into()).with(Outcome::Stored { bytes: len })
        }
        Ok(Stored::AlreadyExists) => conflict(),
        Err(e) if e.is_client_fault() => {
            tracing::warn!(error = %e, namespace = %key.namespace, hash = key.hash.as_str(),
                "upload did not complete");
            text(StatusCode::BAD_REQUEST, e.to_string()).with(Outcome::BadRequest)
        }
        Err(e) => not_stored_storage_error(state, key, e),
    }
}

/// What an entry stored with `grant` records: its writer, now.
fn record_of(grant: &Grant) -> Record {
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
    }
}

/// Every check an upload must pass before its body is read: its declared length, or the
/// finished refusal and how much of the body to read away.
async fn check_upload(
    state: &AppState,
    key: &CacheKey,
    grant: &Grant,
    headers: &HeaderMap,
) -> Result<u64, (Response, Drain)> {
    may_write(state, key, grant).map_err(|refusal| (refusal.into_response(), Drain::Full))?;
    let Some(len) = declared_length(headers) else {
        let message = "a Content-Length header is required".to_string();
        let refusal = text(StatusCode::LENGTH_REQUIRED, message).with(Outcome::BadRequest);
        return Err((refusal, Drain::Brief));
    };
    if len > state.max_artifact_bytes {
        tracing::warn!(namespace = %key.namespace, hash = key.hash.as_str(), bytes = len,
            limit = state.max_artifact_bytes, "artifact over the size limit; not stored");
        let message = format!(
            "not stored: the artifact is {len} bytes, over this cache's limit of {} bytes (NX_CACHE_MAX_ARTIFACT_SIZE)",
            state.max_artifact_bytes
        );
        let refusal = text(StatusCode::FORBIDDEN, message).with(Outcome::TooLarge);
        return Err((refusal, Drain::Full));
    }
    match state.store.exists(key).await {
        Ok(false) => Ok(len),
        Ok(true) => Err((conflict(), Drain::Full)),
        Err(e) => Err((not_stored_storage_error(state, key, e), Drain::Full)),
    }
}

/// Answers a refused upload now, and reads its body away in the background: closing a socket
/// with unread data makes the kernel reset it, and a client that sees a reset before it reads
/// the answer retries (Nx: 6 times, then the task fails). `wanted` is [`Drain::Full`] when the
/// client holds a valid token, [`Drain::Brief`] otherwise; a brief drain closes the connection.
fn refuse_upload(state: &AppState, body: Body, mut refusal: Response, wanted: Drain) -> Response {
    if state.bodies.drain(body, wanted) == Drain::Brief {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

/// The token's freshness, the server mode, then the token's write right on this namespace.
fn may_write(state: &AppState, key: &CacheKey, grant: &Grant) -> Result<(), Refusal> {
    if grant.expired {
        warn_expired(grant);
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "not stored: the access token has expired; ask for a new one".into(),
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
    Err(Refusal(
        StatusCode::FORBIDDEN,
        refusal.into(),
        Outcome::Denied,
    ))
}

/// A token that expired during a build: logged (by subject, never the token) on every request it
/// makes, so the operator sees which client needs a fresh one.
fn warn_expired(grant: &Grant) {
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

fn miss(outcome: Outcome) -> Response {
    text(StatusCode::NOT_FOUND, "not found".into()).with(outcome)
}

fn conflict() -> Response {
    text(
        StatusCode::CONFLICT,
        "not stored: this entry exists and cache entries are never overwritten".into(),
    )
    .with(Outcome::Conflict)
}

fn not_stored_storage_error(state: &AppState, key: &CacheKey, error: StoreError) -> Response {
    tracing::error!(error = %error, namespace = %key.namespace, hash = key.hash.as_str(),
        "storage write failed");
    let status = if state.strict_storage {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::FORBIDDEN
    };
    text(
        status,
        "not stored: the cache storage is unavailable".into(),
    )
    .with(Outcome::StorageError)
}

fn octet_stream() -> HeaderValue {
    HeaderValue::from_static("application/octet-stream")
}

/// A `text/plain` answer. The Nx client shows a 401's body only when the content type is
/// exactly `text/plain`, without a charset.
fn text(status: StatusCode, message: String) -> Response {
    let mut response = (status, message).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A request turned away before any storage work: status, message for the user, outcome.
struct Refusal(StatusCode, String, Outcome);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.0, self.1).with(self.2)
    }
}

/// Attaches the request's outcome for the log line.
trait WithOutcome {
    fn with(self, outcome: Outcome) -> Response;
}

impl WithOutcome for Response {
    fn with(mut self, outcome: Outcome) -> Response {
        self.extensions_mut().insert(outcome);
        self
    }
}

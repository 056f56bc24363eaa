//! Nx's front door: `/v1/cache/{hash}` (the org-wide cache) and `/teams/{team}/v1/cache/{hash}`
//! (a team's), in the answers the Nx client understands (`docs/` and the shared client
//! contract):
//! - GET: 200 with the bytes (or 307 to a URL the client fetches itself; which one is the
//!   store's decision, see [`crate::storage::inline`]), 404 for a miss. Any other GET answer
//!   aborts the user's whole build, so storage trouble and namespaces a token may not read are
//!   answered as misses; only a bad token gets 401 (`text/plain`, exactly).
//! - PUT: 200 stored, 409 exists, 403 not stored (read-only token or server, too large, storage
//!   trouble). The client ignores 403 and 409 silently and fails the task on anything else.
//!
//! A PUT that will be refused is answered before its body is read; the body is then read away
//! in the background ([`crate::limits::Bodies`]).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::cache::{self, Read, Refused, Why};
use super::{AppState, WithOutcome, text};
use crate::key::CacheKey;
use crate::limits::Drain;
use crate::metrics::Outcome;
use crate::telemetry::Caller;

/// The org-wide cache.
pub const ORG_ROUTE: &str = "/v1/cache/{hash}";
/// A team's cache: Nx appends `/v1/cache/{hash}` to `https://host/teams/{team}`.
pub const TEAM_ROUTE: &str = "/teams/{team}/v1/cache/{hash}";

/// The routes with their methods (for `function-configs/`, see [`super::ROUTES`]).
pub const ROUTES: [(&str, &[&str]); 2] =
    [(ORG_ROUTE, &["GET", "PUT"]), (TEAM_ROUTE, &["GET", "PUT"])];

/// Nx's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(ORG_ROUTE, get(get_org).put(put_org))
        .route(TEAM_ROUTE, get(get_team).put(put_team))
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

/// The key a request names.
fn key_of(team: Option<&str>, hash: &str) -> Result<CacheKey, String> {
    CacheKey::parse(team, hash).map_err(|e| e.to_string())
}

async fn read_entry(
    State(state): State<AppState>,
    team: Option<&str>,
    hash: &str,
    headers: &HeaderMap,
) -> Response {
    let (key, grant) = match cache::admit(&state, key_of(team, hash), headers) {
        Ok(admitted) => admitted,
        Err(refused) => return answer(refused),
    };
    let mut response = match cache::read(&state, &key, &grant).await {
        Read::Hit(hit) => cache::render_hit(&state, &key, hit.fetched).unwrap_or_else(miss),
        Read::Miss(outcome) => miss(outcome),
        Read::Unavailable => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache storage unavailable".into(),
        )
        .with(Outcome::StorageError),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response
}

async fn write_entry(
    State(state): State<AppState>,
    team: Option<&str>,
    hash: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let (key, grant) = match cache::admit(&state, key_of(team, hash), headers) {
        Ok(admitted) => admitted,
        Err(refused) => return cache::refuse_upload(&state, body, answer(refused), Drain::Brief),
    };
    let len = match cache::check_upload(&state, &key, &grant, headers).await {
        Ok(len) => len,
        Err((refused, drain)) => {
            let mut response =
                cache::refuse_upload(&state, body, not_stored(&state, refused), drain);
            response.extensions_mut().insert(Caller::of(&grant));
            return response;
        }
    };
    let mut response = match cache::upload(&state, &key, len, body, &cache::record_of(&grant)).await
    {
        Ok(bytes) => text(StatusCode::OK, "stored".into()).with(Outcome::Stored { bytes }),
        Err(refused) => not_stored(&state, refused),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response
}

/// A refusal in Nx's terms. A 401 must be exactly `text/plain` for Nx to show its message.
fn answer(refused: Refused) -> Response {
    let status = match refused.why {
        Why::BadRequest => StatusCode::BAD_REQUEST,
        Why::Unauthorized => StatusCode::UNAUTHORIZED,
        Why::Forbidden | Why::TooLarge | Why::Unavailable => StatusCode::FORBIDDEN,
        Why::NoLength => StatusCode::LENGTH_REQUIRED,
        Why::Exists => StatusCode::CONFLICT,
    };
    text(status, refused.message).with(refused.outcome)
}

/// A refused upload: as [`answer`], but storage trouble is a 503 when `NX_CACHE_STRICT_STORAGE`
/// asks for it (Nx then fails the task; without it, a 403 it ignores).
fn not_stored(state: &AppState, refused: Refused) -> Response {
    if refused.why == Why::Unavailable && state.strict_storage {
        return text(StatusCode::SERVICE_UNAVAILABLE, refused.message).with(refused.outcome);
    }
    answer(refused)
}

fn miss(outcome: Outcome) -> Response {
    text(StatusCode::NOT_FOUND, "not found".into()).with(outcome)
}

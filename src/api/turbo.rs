//! Turborepo's front door: the remote cache API turbo speaks (`TURBO_API`, `TURBO_TOKEN`,
//! `TURBO_TEAM`), on the same store, tokens and trust rules as Nx's, in the answers turbo
//! understands (`shared/docs/turbo-client-contract.md`). No remote cache answer ever fails a
//! turbo build; what each answer makes turbo do:
//! - `GET /v8/artifacts/status`: `{"status": "enabled"}`, or `"disabled"` (turbo's banner says
//!   "Disabled for this team") when the token cannot read the team's cache, with a `message`
//!   saying why; 401 for no valid token ("Authentication failed").
//! - `GET /v8/artifacts/{hash}`: 200 with the artifact and `x-artifact-duration` (turbo's "time
//!   saved") and `x-artifact-tag` (signature mode), or a 307 to storage for a large artifact
//!   without a tag (turbo follows it and drops its token on the way); 404 a miss, as for Nx:
//!   no access, an expired token and storage trouble are misses too.
//! - `HEAD /v8/artifacts/{hash}` and `POST /v8/artifacts` (`--dry` runs): the size and turbo's
//!   fields without the bytes. A query over [`MAX_QUERY_HASHES`] hashes (or
//!   [`MAX_QUERY_BODY`] bytes) is refused with 413, and turbo falls back to one `HEAD` per hash;
//!   its storage checks run [`QUERY_CHECKS`] at a time per query, and at most
//!   [`CHECKS_AT_ONCE`] at once across all queries ([`crate::limits::Gate`]).
//! - `PUT /v8/artifacts/{hash}`: 200 stored. An artifact that exists is not overwritten and is
//!   answered 200 too (logged as `conflict`): turbo prints a warning for every non-2xx upload,
//!   and `turbo --force` uploads every task. A token that may not write (read-only, another
//!   team, expired, none valid) gets a 403 with `{"error": {"code", "message"}}` naming its
//!   access: turbo then skips the run's other uploads and keeps reading. Uploads are never
//!   redirected (turbo does not follow a redirect on PUT): they stream through the handler with
//!   Nx's limits, pace and drains.
//! - `POST /v8/artifacts/events`: the hits and misses turbo reports, and the time its remote
//!   hits saved, added up per namespace in `/metrics` and logged (one `turbo events` line per
//!   request, which the workbook reads). Bounded: [`MAX_EVENTS_BODY`] bytes,
//!   [`MAX_EVENTS`] events.
//! - `OPTIONS` (turbo's `--preflight`): the headers turbo may send, with `Authorization`.
//!
//! **Namespaces.** turbo sends its team as `?slug=TEAM` (`TURBO_TEAM`) or `?teamId=TEAM`
//! (`TURBO_TEAMID`) on every request: either selects the team's namespace, with the same grants
//! as `/teams/TEAM/` for Nx. [`ORG_SLUG`] (`_org`, which is no team name) selects the org-wide
//! cache. A request that names no team, or names two different ones, is refused with 400 (a
//! silent miss for turbo, a warning on upload; the status answers "disabled" and the log says
//! why). Turbo's entries have names of their own ([`crate::key::Client`]): a turbo hash never
//! reads an Nx entry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;

use super::cache::{self, Read, Refused, Why};
use super::{AppState, WithOutcome};
use crate::auth::Grant;
use crate::key::{CacheKey, Client, Hash, Namespace, TeamName, label_of};
use crate::limits::Drain;
use crate::metrics::{Outcome, TurboEvents};
use crate::storage::Head;
use crate::storage::record::Turbo;
use crate::telemetry::{Caller, Target};

/// Remote caching status of a team.
pub const STATUS_ROUTE: &str = "/v8/artifacts/status";
/// Cache events turbo reports.
pub const EVENTS_ROUTE: &str = "/v8/artifacts/events";
/// Which of a list of artifacts exist (`--dry` runs).
pub const QUERY_ROUTE: &str = "/v8/artifacts";
/// One artifact.
pub const ARTIFACT_ROUTE: &str = "/v8/artifacts/{hash}";

/// The routes with their methods (for `function-configs/`, see [`super::ROUTES`]).
pub const ROUTES: [(&str, &[&str]); 4] = [
    (STATUS_ROUTE, &["GET"]),
    (EVENTS_ROUTE, &["POST", "OPTIONS"]),
    (QUERY_ROUTE, &["POST", "OPTIONS"]),
    (ARTIFACT_ROUTE, &["GET", "HEAD", "PUT", "OPTIONS"]),
];

/// The `TURBO_TEAM` of the org-wide cache. Team names are `[a-z0-9][a-z0-9-]*`, so no team can
/// ever be named this.
pub const ORG_SLUG: &str = "_org";

/// Most hashes one dry-run query may ask about (turbo asks about every task of the run in one
/// query; past this it falls back to one `HEAD` per hash).
pub const MAX_QUERY_HASHES: usize = 2000;
/// Largest query body read: room for [`MAX_QUERY_HASHES`] hashes of turbo's 16 characters.
pub const MAX_QUERY_BODY: usize = 64 * 1024;
/// Storage checks one query runs at once.
pub const QUERY_CHECKS: usize = 16;
/// Storage checks all queries run at once (the [`crate::limits::Gate`] in [`AppState`]).
pub const CHECKS_AT_ONCE: usize = 32;
/// Largest events body read (turbo sends 10 events at a time, about 1.5 KiB).
pub const MAX_EVENTS_BODY: usize = 64 * 1024;
/// Most events one request may report.
pub const MAX_EVENTS: usize = 500;
/// Longest task duration an event may report (a day): a larger one is counted as a hit without
/// time saved, so no client can make the figure absurd with one event.
pub const MAX_EVENT_DURATION_MS: u64 = 24 * 3600 * 1000;

/// The headers turbo may send, for its `--preflight` requests.
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, User-Agent, x-artifact-duration, x-artifact-sha, x-artifact-dirty-hash, x-artifact-tag, x-artifact-client-ci, x-artifact-client-interactive";

const DURATION: HeaderName = HeaderName::from_static("x-artifact-duration");
const SHA: HeaderName = HeaderName::from_static("x-artifact-sha");
const TAG: HeaderName = HeaderName::from_static("x-artifact-tag");

/// turbo's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(STATUS_ROUTE, get(status))
        .route(EVENTS_ROUTE, post(events).options(preflight))
        .route(QUERY_ROUTE, post(query).options(preflight))
        .route(
            ARTIFACT_ROUTE,
            get(get_artifact)
                .head(head_artifact)
                .put(put_artifact)
                .options(preflight),
        )
}

/// The query string's pairs (`Err`: it is not a query string).
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The namespace a request's `?slug=` / `?teamId=` names; the error says what to set.
fn namespace_of(pairs: &Pairs) -> Result<Namespace, String> {
    let Ok(Query(pairs)) = pairs else {
        return Err("the query string is malformed".into());
    };
    let mut named: Vec<(&str, Namespace)> = Vec::new();
    for (name, value) in pairs {
        if name != "slug" && name != "teamId" {
            continue;
        }
        let namespace = if value == ORG_SLUG {
            Namespace::Org
        } else {
            Namespace::Team(TeamName::parse(value).map_err(|e| {
                format!(
                    "?{name}={}: {e}; set TURBO_TEAM to a team of this cache, or to {ORG_SLUG} for the org-wide cache",
                    shown(value)
                )
            })?)
        };
        named.push((name, namespace));
    }
    let Some((_, first)) = named.first() else {
        return Err(format!(
            "no team: set TURBO_TEAM (sent as ?slug=) to a team of this cache, or to {ORG_SLUG} for the org-wide cache"
        ));
    };
    if let Some((name, other)) = named.iter().find(|(_, n)| n != first) {
        return Err(format!(
            "?{} and ?{name} name two caches ({first} and {other}); set TURBO_TEAM or TURBO_TEAMID, not both to different teams",
            named[0].0
        ));
    }
    Ok(first.clone())
}

/// A client's value as it may appear in a message: printable ASCII, at most 64 characters.
fn shown(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The key a request for one artifact names.
fn key_of(pairs: &Pairs, hash: &str) -> Result<CacheKey, String> {
    let namespace = namespace_of(pairs)?;
    let hash = Hash::parse(hash).map_err(|e| e.to_string())?;
    Ok(CacheKey {
        client: Client::Turbo,
        namespace,
        hash,
    })
}

/// `GET /v8/artifacts/status`.
async fn status(State(state): State<AppState>, pairs: Pairs, headers: HeaderMap) -> Response {
    let grant = match cache::verify(&state, &headers) {
        Ok(grant) => grant,
        Err(refused) => return answer(refused),
    };
    let namespace = namespace_of(&pairs);
    let (status, why) = match &namespace {
        Err(problem) => {
            tracing::warn!(subject = %grant.subject, %problem, "turbo named no team this cache has");
            ("disabled", Some(problem.clone()))
        }
        Ok(namespace) => match cache::may_read(&state, namespace, &grant) {
            Ok(()) => ("enabled", None),
            Err((_, why)) => ("disabled", Some(format!("{why} ({})", access_of(&grant)))),
        },
    };
    let mut body = serde_json::json!({ "status": status });
    if let Some(why) = why {
        body["message"] = why.into();
    }
    let mut response = json(StatusCode::OK, &body);
    response.extensions_mut().insert(Caller::of(&grant));
    if let Ok(namespace) = &namespace {
        response.extensions_mut().insert(team_target(namespace));
    }
    response
}

/// `GET /v8/artifacts/{hash}`.
async fn get_artifact(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    pairs: Pairs,
    headers: HeaderMap,
) -> Response {
    let (key, grant) = match cache::admit(&state, key_of(&pairs, &hash), &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return answer(refused),
    };
    let mut saved = None;
    let mut response = match cache::read(&state, &key, &grant).await {
        Read::Hit(hit) => match cache::render_hit(&state, &key, hit.fetched) {
            Ok(mut response) => {
                // A redirect's answer comes from storage; it carries none of these (and an
                // artifact with a tag is never redirected). The log line has the time saved
                // either way.
                if response.status() == StatusCode::OK {
                    add_fields(response.headers_mut(), hit.turbo.as_deref());
                }
                saved = hit.turbo.as_deref().and_then(|t| t.duration_ms);
                response
            }
            Err(outcome) => miss(outcome),
        },
        Read::Miss(outcome) => miss(outcome),
        Read::Unavailable => unavailable(),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response.extensions_mut().insert(Target {
        time_saved_ms: saved,
        ..target(&key)
    });
    response
}

/// `HEAD /v8/artifacts/{hash}`: the artifact's size and turbo's fields, without its bytes.
async fn head_artifact(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    pairs: Pairs,
    headers: HeaderMap,
) -> Response {
    let (key, grant) = match cache::admit(&state, key_of(&pairs, &hash), &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return answer(refused),
    };
    let mut response = match head_of(&state, &key, &grant).await {
        Ok(Some(head)) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(head.len));
            add_fields(headers, head.turbo.as_deref());
            response
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(()) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response.extensions_mut().insert(target(&key));
    response
}

/// An artifact's size and fields for a token that may read it; `None` for a miss (no access
/// is one), `Err` for storage trouble with `NX_CACHE_STRICT_STORAGE`.
async fn head_of(state: &AppState, key: &CacheKey, grant: &Grant) -> Result<Option<Head>, ()> {
    if cache::may_read(state, &key.namespace, grant).is_err() {
        return Ok(None);
    }
    match state.store.head(key).await {
        Ok(head) => Ok(head),
        Err(e) => {
            tracing::error!(error = %e, namespace = %key.label(), hash = key.hash.as_str(),
                "storage check failed");
            if state.strict_storage {
                Err(())
            } else {
                Ok(None)
            }
        }
    }
}

/// `PUT /v8/artifacts/{hash}`.
async fn put_artifact(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    pairs: Pairs,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (key, grant) = match cache::admit(&state, key_of(&pairs, &hash), &headers) {
        Ok(admitted) => admitted,
        Err(refused) => {
            return cache::refuse_upload(&state, body, not_stored(refused, None), Drain::Brief);
        }
    };
    let mut response = match upload(&state, &key, &grant, &headers, body).await {
        Ok(response) => response,
        Err((refused, body, drain)) => {
            let refusal = not_stored(refused, Some(&grant));
            cache::refuse_upload(&state, body, refusal, drain)
        }
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response.extensions_mut().insert(target(&key));
    response
}

/// An admitted upload: turbo's headers, the checks, then the upload. A refusal before the body
/// is read gives the body back, to be drained.
async fn upload(
    state: &AppState,
    key: &CacheKey,
    grant: &Grant,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, (Refused, Body, Drain)> {
    let fields = match fields_of(headers) {
        Ok(fields) => fields,
        Err(problem) => {
            let refused = Refused::new(Why::BadRequest, problem, Outcome::BadRequest);
            return Err((refused, body, Drain::Full));
        }
    };
    let len = match cache::check_upload(state, key, grant, headers).await {
        Ok(len) => len,
        Err((refused, drain)) => return Err((refused, body, drain)),
    };
    let mut record = cache::record_of(grant);
    record.turbo = Some(fields).filter(|f| *f != Turbo::default());
    match cache::upload(state, key, len, body, &record).await {
        Ok(bytes) => {
            Ok(json(StatusCode::OK, &serde_json::json!({})).with(Outcome::Stored { bytes }))
        }
        // The body was read (to its end or its failure): nothing is left to drain.
        Err(refused) => Ok(not_stored(refused, Some(grant))),
    }
}

/// turbo's fields from an upload's headers, checked before anything is stored.
fn fields_of(headers: &HeaderMap) -> Result<Turbo, String> {
    let text = |name: &HeaderName| -> Result<Option<&str>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| format!("{name} must be printable ASCII"))
            })
            .transpose()
    };
    Turbo::parse(text(&DURATION)?, text(&SHA)?, text(&TAG)?)
}

/// The body of a dry run's query.
#[derive(Deserialize)]
struct Asked {
    hashes: Vec<String>,
}

/// `POST /v8/artifacts`: which of the hashes exist, each with its size and turbo's fields, or
/// `null`.
async fn query(
    State(state): State<AppState>,
    pairs: Pairs,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (namespace, grant) = match admit_team(&state, &pairs, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return cache::refuse_upload(&state, body, answer(refused), Drain::Brief),
    };
    let mut response = match asked_hashes(&state, body).await {
        Ok(hashes) => {
            let found = existing(&state, &namespace, &grant, &hashes).await;
            json(StatusCode::OK, &serde_json::Value::Object(found))
        }
        Err(refused) => closing(answer(refused)),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response.extensions_mut().insert(team_target(&namespace));
    response
}

/// The key-less requests' admission: the token, then the team (a bad team is the caller's
/// error once it holds a valid token).
fn admit_team(
    state: &AppState,
    pairs: &Pairs,
    headers: &HeaderMap,
) -> Result<(Namespace, Grant), Refused> {
    let grant = cache::verify(state, headers)?;
    let namespace = namespace_of(pairs)
        .map_err(|problem| Refused::new(Why::BadRequest, problem, Outcome::BadRequest))?;
    Ok((namespace, grant))
}

/// The hashes a query asks about, checked and without duplicates.
async fn asked_hashes(state: &AppState, body: Body) -> Result<BTreeSet<Hash>, Refused> {
    let bytes = cache::read_body(state, body, MAX_QUERY_BODY).await?;
    let asked: Asked = serde_json::from_slice(&bytes).map_err(|e| {
        Refused::new(
            Why::BadRequest,
            format!("the body must be JSON such as {{\"hashes\": [\"0123456789abcdef\"]}} ({e})"),
            Outcome::BadRequest,
        )
    })?;
    if asked.hashes.len() > MAX_QUERY_HASHES {
        return Err(Refused::new(
            Why::TooLarge,
            format!(
                "at most {MAX_QUERY_HASHES} hashes per query ({} asked); turbo asks about the rest one by one",
                asked.hashes.len()
            ),
            Outcome::BadRequest,
        ));
    }
    asked
        .hashes
        .iter()
        .map(|h| {
            Hash::parse(h).map_err(|e| {
                Refused::new(
                    Why::BadRequest,
                    format!("{}: {e}", shown(h)),
                    Outcome::BadRequest,
                )
            })
        })
        .collect()
}

/// Each hash with its size and turbo's fields, or `null` (a miss, no access, storage trouble).
/// The checks run [`QUERY_CHECKS`] at a time, within the gate shared by all queries.
async fn existing(
    state: &AppState,
    namespace: &Namespace,
    grant: &Grant,
    hashes: &BTreeSet<Hash>,
) -> serde_json::Map<String, serde_json::Value> {
    let readable = cache::may_read(state, namespace, grant).is_ok();
    let checks = futures_util::stream::iter(hashes.iter().cloned())
        .map(|hash| async move {
            let key = CacheKey {
                client: Client::Turbo,
                namespace: namespace.clone(),
                hash,
            };
            if !readable {
                return (key, None);
            }
            let _passed = state.checks.pass().await;
            let head = match state.store.head(&key).await {
                Ok(head) => head,
                Err(e) => {
                    tracing::warn!(error = %e, namespace = %key.label(), hash = key.hash.as_str(),
                        "storage check failed; answered as a miss");
                    None
                }
            };
            (key, head)
        })
        .buffer_unordered(QUERY_CHECKS);
    let found: BTreeMap<String, serde_json::Value> = checks
        .map(|(key, head)| {
            let value = match head {
                Some(head) => {
                    let turbo = head.turbo.as_deref().cloned().unwrap_or_default();
                    serde_json::json!({
                        "size": head.len,
                        "taskDurationMs": turbo.duration_ms.unwrap_or(0),
                        "tag": turbo.tag,
                    })
                }
                None => serde_json::Value::Null,
            };
            (key.hash.as_str().to_owned(), value)
        })
        .collect()
        .await;
    found.into_iter().collect()
}

/// One event as turbo reports it (`sessionId` and `hash` are not kept).
#[derive(Deserialize)]
struct Event {
    source: String,
    event: String,
    #[serde(default)]
    duration: u64,
}

/// `POST /v8/artifacts/events`: added up per namespace (a namespace the token may read) in
/// `/metrics`, and logged in one line. turbo ignores the answer.
async fn events(
    State(state): State<AppState>,
    pairs: Pairs,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (namespace, grant) = match admit_team(&state, &pairs, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return cache::refuse_upload(&state, body, answer(refused), Drain::Brief),
    };
    let label = label_of(Client::Turbo, &namespace);
    let mut response = match reported(&state, &namespace, &grant, body).await {
        Ok(events) => {
            state.metrics.turbo_events(&label, &events);
            tracing::info!(namespace = label.as_str(), subject = %grant.subject,
                remote_hits = events.remote_hits, remote_misses = events.remote_misses,
                local_hits = events.local_hits, local_misses = events.local_misses,
                time_saved_ms = events.time_saved_ms, "turbo events");
            json(StatusCode::OK, &serde_json::json!({}))
        }
        Err(refused) => closing(answer(refused)),
    };
    response.extensions_mut().insert(Caller::of(&grant));
    response.extensions_mut().insert(team_target(&namespace));
    response
}

/// The events of a request, added up; refused for a token that may not read the namespace
/// (its events would be about reads it cannot make), before the body is read.
async fn reported(
    state: &AppState,
    namespace: &Namespace,
    grant: &Grant,
    body: Body,
) -> Result<TurboEvents, Refused> {
    if let Err((outcome, why)) = cache::may_read(state, namespace, grant) {
        state.bodies.drain(body, Drain::Brief);
        let message = format!("events not counted: {why} ({})", access_of(grant));
        return Err(Refused::new(Why::Forbidden, message, outcome));
    }
    let bytes = cache::read_body(state, body, MAX_EVENTS_BODY).await?;
    let events: Vec<Event> = serde_json::from_slice(&bytes).map_err(|e| {
        Refused::new(
            Why::BadRequest,
            format!("the body must be a JSON array of turbo's events ({e})"),
            Outcome::BadRequest,
        )
    })?;
    if events.len() > MAX_EVENTS {
        return Err(Refused::new(
            Why::TooLarge,
            format!("at most {MAX_EVENTS} events per request"),
            Outcome::BadRequest,
        ));
    }
    let mut counts = TurboEvents::default();
    for event in &events {
        match (event.source.as_str(), event.event.as_str()) {
            ("REMOTE", "HIT") => {
                counts.remote_hits += 1;
                if event.duration <= MAX_EVENT_DURATION_MS {
                    counts.time_saved_ms += event.duration;
                }
            }
            ("REMOTE", "MISS") => counts.remote_misses += 1,
            ("LOCAL", "HIT") => counts.local_hits += 1,
            ("LOCAL", "MISS") => counts.local_misses += 1,
            _ => {}
        }
    }
    Ok(counts)
}

/// `OPTIONS` (turbo's `--preflight`): the same URL, with `Authorization` allowed.
async fn preflight() -> Response {
    preflight_answer()
}

/// The answer to a preflight request (also under a refused configuration).
pub(super) fn preflight_answer() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    response
}

/// `x-artifact-duration` and `x-artifact-tag`, where turbo sent them with the artifact.
fn add_fields(headers: &mut HeaderMap, turbo: Option<&Turbo>) {
    let Some(turbo) = turbo else { return };
    if let Some(duration) = turbo.duration_ms {
        headers.insert(DURATION, HeaderValue::from(duration));
    }
    // Checked base64 on the way in and when read back: always a valid header value.
    if let Some(tag) = turbo
        .tag
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(TAG, tag);
    }
}

/// What a token may do, in words, for the messages of refusals: `read-only token for team web`.
fn access_of(grant: &Grant) -> String {
    if grant.expired {
        return "an expired token".into();
    }
    let mut places = Vec::new();
    if grant.org {
        places.push(format!("the org-wide cache ({ORG_SLUG})"));
    }
    places.extend(grant.teams.iter().map(|team| format!("team {team}")));
    let scope = match places.is_empty() {
        true => "no cache".to_owned(),
        false => places.join(", "),
    };
    format!("a {} token for {scope}", grant.access.as_str())
}

/// A refusal of a read or a query in turbo's terms: a JSON error, as Vercel's API answers.
fn answer(refused: Refused) -> Response {
    let (status, code) = match refused.why {
        Why::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        Why::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Why::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        Why::NoLength => (StatusCode::LENGTH_REQUIRED, "length_required"),
        Why::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Why::Exists => (StatusCode::CONFLICT, "exists"),
        Why::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    error(status, code, &refused.message).with(refused.outcome)
}

/// A refused upload in turbo's terms. An artifact that exists is a 200 (turbo warns on any other
/// answer, and `--force` uploads every task); a token that may not write, or none valid, a 403
/// naming its access, after which turbo uploads nothing more this run.
fn not_stored(refused: Refused, grant: Option<&Grant>) -> Response {
    match refused.why {
        Why::Exists => json(
            StatusCode::OK,
            &serde_json::json!({ "stored": false, "message": refused.message }),
        )
        .with(refused.outcome),
        Why::Forbidden | Why::Unauthorized => {
            let access = grant.map_or_else(|| "no valid token".to_owned(), access_of);
            let message = format!("{} ({access})", refused.message);
            error(StatusCode::FORBIDDEN, "forbidden", &message).with(refused.outcome)
        }
        _ => answer(refused),
    }
}

/// A miss: 404, whatever the reason (logged with its outcome).
fn miss(outcome: Outcome) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "artifact not found").with(outcome)
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the cache storage is unavailable",
    )
    .with(Outcome::StorageError)
}

/// `{"error": {"code", "message"}}` with `status`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An answer after which the connection is closed (its body was not read to the end).
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn target(key: &CacheKey) -> Target {
    Target {
        namespace: key.label(),
        hash: Some(key.hash.as_str().to_owned()),
        time_saved_ms: None,
    }
}

fn team_target(namespace: &Namespace) -> Target {
    Target {
        namespace: label_of(Client::Turbo, namespace),
        hash: None,
        time_saved_ms: None,
    }
}

/// The state's gate, shared by every query ([`CHECKS_AT_ONCE`]).
pub fn checks_gate() -> Arc<crate::limits::Gate> {
    Arc::new(crate::limits::Gate::new(CHECKS_AT_ONCE))
}

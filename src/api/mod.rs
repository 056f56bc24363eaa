//! The HTTP API: the router, the state every handler shares, and the front doors.
//!
//! A request travels: route -> front door (the client's request in this cache's terms) ->
//! [`cache`] (admission: the key, then the token; the read; the upload's checks, the upload, the
//! drain of a refused body) -> storage -> the front door again (the result in the client's
//! terms). Each client API is one front door, and neither knows the other:
//! - [`nx`]: Nx's `/v1/cache/{hash}` and `/teams/{team}/v1/cache/{hash}`;
//! - [`turbo`]: Turborepo's `/v8/artifacts/...`, the team named by `?slug=` / `?teamId=`.
//!
//! `POST /token` (keyless access: an identity token in, a cache token out) is in [`token`];
//! what the handler answers when its configuration was refused under the Functions host is in
//! [`degraded`]; `/health` and `/metrics` are here.

mod cache;
pub mod degraded;
pub mod nx;
mod token;
pub mod turbo;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::auth::TokenAuthority;
use crate::auth::exchange::Exchange;
use crate::config::Mode;
use crate::limits::{Bodies, Gate};
use crate::metrics::{Metrics, Outcome};
use crate::storage::Store;
use crate::telemetry;

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
    /// The storage checks of turbo's dry-run queries, a bounded number at once
    /// ([`turbo::checks_gate`]).
    pub checks: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    /// The bearer token `/metrics` requires; `None`: the endpoint answers 404.
    pub metrics_token: Option<Arc<str>>,
}

/// Readiness.
pub const HEALTH_ROUTE: &str = "/health";
/// Counters in Prometheus text format (off unless `NX_CACHE_METRICS_TOKEN` is set).
pub const METRICS_ROUTE: &str = "/metrics";
/// Token exchange: an identity token in, a short-lived cache token out.
pub const TOKEN_ROUTE: &str = "/token";

/// Every route with its methods, apart from `GET /` (liveness), which the Functions host calls
/// on the handler directly. `function-configs/*/function.json` must declare exactly these; the
/// packaging test checks that the two agree.
pub const ROUTES: [(&str, &[&str]); 9] = [
    nx::ROUTES[0],
    nx::ROUTES[1],
    turbo::ROUTES[0],
    turbo::ROUTES[1],
    turbo::ROUTES[2],
    turbo::ROUTES[3],
    (HEALTH_ROUTE, &["GET"]),
    (METRICS_ROUTE, &["GET"]),
    (TOKEN_ROUTE, &["POST"]),
];

/// The router: the front doors, token exchange, liveness, readiness and metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(alive))
        .route(HEALTH_ROUTE, get(health))
        .route(METRICS_ROUTE, get(metrics))
        .route(TOKEN_ROUTE, post(token::exchange))
        .merge(nx::routes())
        .merge(turbo::routes())
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
    figures.push(crate::metrics::Figure {
        name: "nx_cache_turbo_query_checks_peak",
        help: "the most storage checks turbo's dry-run queries ran at once (bounded by the handler)",
        kind: "gauge",
        value: state.checks.peak() as u64,
    });
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

/// A `text/plain` answer. The Nx client shows a 401's body only when the content type is
/// exactly `text/plain`, without a charset.
fn text(status: StatusCode, message: String) -> Response {
    let mut response = (status, message).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
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

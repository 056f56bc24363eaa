//! The API without a configuration: what the handler answers under the Azure Functions host when
//! its configuration was refused at startup (a trust rule the checks refuse, a malformed
//! setting, a Key Vault reference that did not resolve).
//!
//! Exiting would make the host answer every request with an error, and any GET answer but 200
//! or 404 aborts the Nx build that sent it: one wrong app setting would stop every build of the
//! organisation. So the handler keeps listening, trusts no token and touches no entry:
//! - `GET /` answers, so the host keeps the handler;
//! - every cache GET is a miss (404), every PUT is refused (403, its body read away so Nx sees
//!   no reset), `POST /token` is 503 (the snippets then turn the remote cache off);
//! - for turbo: the status is `disabled` (its banner says so), `GET`/`HEAD` and the dry-run
//!   query miss (404; turbo then asks one `HEAD` at a time), an upload gets the 403 after which
//!   turbo uploads nothing more this run, events are ignored;
//! - `GET /health` is 503, and `/metrics` (when its own setting parsed) reports
//!   `nx_cache_configuration_refused 1`.
//!
//! The reason is in the log at startup and every minute; `handler check` checks the settings.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::nx::{ORG_ROUTE, TEAM_ROUTE};
use super::turbo::{ARTIFACT_ROUTE, EVENTS_ROUTE, QUERY_ROUTE, STATUS_ROUTE};
use super::{HEALTH_ROUTE, METRICS_ROUTE, TOKEN_ROUTE, WithOutcome, text};
use crate::limits::{Bodies, Drain};
use crate::metrics::{Metrics, Outcome};
use crate::telemetry;

/// What the degraded handlers share.
#[derive(Clone)]
pub struct DegradedState {
    /// Refused uploads are read away at the pace, as for a valid token: the client's token may
    /// well be valid, and a reset upload fails the Nx task.
    pub bodies: Arc<Bodies>,
    pub metrics: Arc<Metrics>,
    /// `/metrics`' token, when `NX_CACHE_METRICS_TOKEN` itself parsed.
    pub metrics_token: Option<Arc<str>>,
}

/// The degraded router: the same routes, answers that never abort a build.
pub fn router(state: DegradedState) -> Router {
    state.metrics.set_configuration_refused();
    Router::new()
        .route("/", get(super::alive))
        .route(HEALTH_ROUTE, get(health))
        .route(METRICS_ROUTE, get(metrics))
        .route(TOKEN_ROUTE, post(token))
        .route(ORG_ROUTE, get(miss).put(refuse))
        .route(TEAM_ROUTE, get(miss).put(refuse))
        .route(STATUS_ROUTE, get(turbo_status))
        .route(
            ARTIFACT_ROUTE,
            get(turbo_miss)
                .head(turbo_miss)
                .put(turbo_refuse)
                .options(turbo_preflight),
        )
        .route(QUERY_ROUTE, post(turbo_query).options(turbo_preflight))
        .route(EVENTS_ROUTE, post(turbo_events).options(turbo_preflight))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            telemetry::log_request,
        ))
        .with_state(state)
}

async fn health() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready: the configuration was refused (the handler's log says why; `handler check` checks the settings)".into(),
    )
}

async fn miss() -> Response {
    text(StatusCode::NOT_FOUND, "not found".into()).with(Outcome::Unconfigured)
}

async fn refuse(State(state): State<DegradedState>, body: Body) -> Response {
    let response = text(
        StatusCode::FORBIDDEN,
        "not stored: this cache server's configuration was refused; its operator must fix it"
            .into(),
    )
    .with(Outcome::Unconfigured);
    drained(&state, body, response)
}

/// The message of every turbo answer while the configuration is refused.
const TURBO_REFUSED: &str =
    "this cache server's configuration was refused; its operator must fix it";

async fn turbo_status() -> Response {
    super::turbo::json(
        StatusCode::OK,
        &serde_json::json!({ "status": "disabled", "message": TURBO_REFUSED }),
    )
}

async fn turbo_miss() -> Response {
    super::turbo::error(StatusCode::NOT_FOUND, "not_found", TURBO_REFUSED)
        .with(Outcome::Unconfigured)
}

async fn turbo_refuse(State(state): State<DegradedState>, body: Body) -> Response {
    let message = format!("not stored: {TURBO_REFUSED}");
    let response = super::turbo::error(StatusCode::FORBIDDEN, "forbidden", &message);
    drained(&state, body, response.with(Outcome::Unconfigured))
}

/// The query: a miss (turbo then asks one `HEAD` at a time, each a miss).
async fn turbo_query(State(state): State<DegradedState>, body: Body) -> Response {
    state.bodies.drain(body, Drain::Brief);
    let mut response = turbo_miss().await;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn turbo_events(State(state): State<DegradedState>, body: Body) -> Response {
    state.bodies.drain(body, Drain::Brief);
    let mut response = super::turbo::json(StatusCode::OK, &serde_json::json!({}));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn turbo_preflight() -> Response {
    super::turbo::preflight_answer()
}

/// `response`, with `body` read away (as for a valid token), and the connection closed when the
/// drain had to be brief.
fn drained(state: &DegradedState, body: Body, mut response: Response) -> Response {
    if state.bodies.drain(body, Drain::Full) == Drain::Brief {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn token(State(state): State<DegradedState>, body: Body) -> Response {
    // Nothing in the body is wanted: a brief drain, then the connection is closed.
    state.bodies.drain(body, Drain::Brief);
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "token exchange unavailable: this cache server's configuration was refused".into(),
    )
    .with(Outcome::Unconfigured);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn metrics(State(state): State<DegradedState>, headers: HeaderMap) -> Response {
    super::metrics_answer(
        &state.metrics,
        state.metrics_token.as_deref(),
        &headers,
        &telemetry::figures(),
    )
    .into_response()
}

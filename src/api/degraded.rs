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
    let mut response = text(
        StatusCode::FORBIDDEN,
        "not stored: this cache server's configuration was refused; its operator must fix it"
            .into(),
    )
    .with(Outcome::Unconfigured);
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

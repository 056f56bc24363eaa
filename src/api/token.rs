//! `POST /token`: keyless access. The caller sends `Authorization: Bearer <identity token>` (an
//! OIDC ID token of its CI system, or an Entra ID access token) and, optionally, a JSON body
//! asking for less than its rule grants: `{"org": false, "teams": ["web"], "access": "read-only"}`.
//!
//! - 200: the token alone as `text/plain` (so `$(curl ...)` works), or, with
//!   `Accept: application/json`, `{"token", "expires_at", "subject", "org", "teams", "access",
//!   "rule"}`.
//! - 400 malformed body, 401 identity token missing or not valid, 403 valid but no rule matches
//!   (or more was asked than the rule grants), 503 the issuer's keys cannot be fetched. Always
//!   `text/plain`, saying what to fix, never echoing the token. Cache requests are never affected
//!   by an issuer's trouble.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AppState, WithOutcome, text};
use crate::auth::exchange::{Exchanged, Refusal};
use crate::auth::policy::Ask;
use crate::limits::Drain;
use crate::metrics::Outcome;
use crate::telemetry::Caller;

/// Largest request body read (a JSON object of a few fields).
const MAX_BODY: usize = 4 * 1024;

pub(super) async fn exchange(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(exchange) = state.exchange.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "token exchange is off on this server (set NX_CACHE_TRUST_POLICY)".into(),
        );
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    // The identity first: a caller without a valid one is answered before its body is read, and
    // the body (read away briefly) cannot hold the connection.
    let verified = match exchange.verify(authorization).await {
        Ok(verified) => verified,
        Err(refusal) => {
            let response = refuse(&state, refusal);
            // A request without a body keeps its connection; any body is read away briefly
            // and the connection closed, so trickling one holds nothing.
            if axum::body::HttpBody::size_hint(&body).exact() == Some(0) {
                return response;
            }
            return super::cache::refuse_upload(&state, body, response, Drain::Brief);
        }
    };
    let ask = match read_ask(&state, body).await {
        Ok(ask) => ask,
        Err(refusal) => {
            let mut response = refuse(&state, refusal);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    match exchange.grant(verified, &ask) {
        Ok(exchanged) => {
            state.metrics.exchanged(&exchanged.rule);
            tracing::info!(subject = %exchanged.subject, rule = %exchanged.rule,
                token_id = %exchanged.issued.token_id, access = exchanged.scope.access.as_str(),
                expires_at = exchanged.issued.expires_at, "token exchanged");
            let mut response = granted(&exchanged, wants_json(&headers));
            response.extensions_mut().insert(Caller {
                subject: exchanged.subject,
                rule: Some(exchanged.rule),
            });
            response
        }
        Err(refusal) => refuse(&state, refusal),
    }
}

/// Counts, logs and answers a refused exchange. A 401 (no identity, a bad or expired token)
/// is logged at debug level: its answer tells the caller what is wrong, `/metrics` counts it
/// by reason, and an unauthenticated flood must not double the log. What an operator must see
/// (no rule matches, more asked than granted, an issuer down) is logged at info.
fn refuse(state: &AppState, refusal: Refusal) -> Response {
    state.metrics.exchange_refused(refusal.reason);
    if refusal.status == 401 {
        tracing::debug!(reason = refusal.reason.as_str(), status = refusal.status,
            problem = %refusal.message, "token exchange refused");
    } else {
        tracing::info!(reason = refusal.reason.as_str(), status = refusal.status,
            problem = %refusal.message, "token exchange refused");
    }
    refused(refusal)
}

/// The optional body: at most [`MAX_BODY`] bytes of JSON, held to the body pace.
async fn read_ask(state: &AppState, body: Body) -> Result<Ask, Refusal> {
    let bytes = super::cache::read_body(state, body, MAX_BODY)
        .await
        .map_err(|refused| Refusal::bad_request(refused.message))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Ask::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Refusal::bad_request(format!(
            "the request body must be JSON such as {{\"teams\": [\"web\"], \"access\": \"read-only\"}} ({e})"
        ))
    })
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn granted(exchanged: &Exchanged, json: bool) -> Response {
    let mut response = if json {
        let expires_at = OffsetDateTime::from_unix_timestamp(exchanged.issued.expires_at as i64)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let body = serde_json::json!({
            "token": exchanged.issued.token,
            "expires_at": expires_at,
            "subject": exchanged.subject,
            "org": exchanged.scope.org,
            "teams": exchanged.scope.teams.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "access": exchanged.scope.access.as_str(),
            "rule": exchanged.rule,
        });
        let mut response = (StatusCode::OK, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    } else {
        text(StatusCode::OK, exchanged.issued.token.clone())
    };
    // A token is in the body: no cache on the way may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.with(Outcome::Exchanged)
}

fn refused(refusal: Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
    text(status, refusal.message).with(Outcome::ExchangeRefused)
}

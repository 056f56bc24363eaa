//! Logging: subscriber setup and one structured line per request.
//!
//! The per-request line carries the request id (the Functions host's
//! `X-Azure-Functions-InvocationId` when present), method, path, status, outcome, bytes and
//! duration. Headers are never logged: the `Authorization` header holds a token.

use std::time::Instant;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::metrics::{Metrics, Outcome};

/// Header the Azure Functions host adds to every forwarded request.
pub const INVOCATION_ID: &str = "x-azure-functions-invocationid";
/// Header echoing the request id, so a user can quote it when reporting a problem.
pub const REQUEST_ID: &str = "x-request-id";

/// Who made a request, for its log line: the token's subject and, for an exchanged token, the
/// trust rule it was exchanged under. Never the token itself.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub rule: Option<String>,
}

impl Caller {
    pub fn of(grant: &crate::auth::Grant) -> Self {
        Self {
            subject: grant.subject.clone(),
            rule: grant.rule.clone(),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(format: LogFormat) {
    // The Azure SDK logs every failed storage call at info; the handler logs what matters itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,typespec_client_core=warn,azure_core=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    // A second init (tests start several servers in one process) keeps the first subscriber.
    let _ = result;
}

/// Middleware: gives each request an id and logs one line when its answer is ready.
pub async fn log_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get(INVOCATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", id = %request_id);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let outcome = response.extensions().get::<Outcome>().copied();
    let (namespace, hash) = cache_key_of(&path);
    if let Some(outcome) = outcome {
        metrics.record(outcome, (namespace != "-").then_some(namespace.as_str()));
    }
    let caller = response.extensions_mut().remove::<Caller>();
    let subject = caller.as_ref().map(|c| c.subject.as_str()).unwrap_or("-");
    let rule = caller
        .as_ref()
        .and_then(|c| c.rule.as_deref())
        .unwrap_or("-");
    span.in_scope(|| {
        tracing::info!(
            %method,
            path = %path,
            namespace = namespace.as_str(),
            hash,
            status = response.status().as_u16(),
            outcome = outcome.map(|o| o.name()).unwrap_or("-"),
            subject,
            rule,
            bytes = outcome.map(|o| o.bytes()).unwrap_or(0),
            redirected = matches!(
                outcome,
                Some(Outcome::Hit { redirected: true, .. } | Outcome::Redirect)
            ),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The namespace (`org`, `team:NAME`) and hash a cache path names, for the log line and the
/// per-namespace counters (`-` when it names none). The values are logged as they came; the
/// handler validates them separately, and only outcomes of validated requests are counted per
/// namespace.
fn cache_key_of(path: &str) -> (String, &str) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "cache", hash] => ("org".into(), hash),
        ["teams", team, "v1", "cache", hash] => (format!("team:{team}"), hash),
        _ => ("-".into(), "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::cache_key_of;

    #[test]
    fn log_lines_name_the_namespace_and_hash() {
        assert_eq!(cache_key_of("/v1/cache/42"), ("org".into(), "42"));
        assert_eq!(
            cache_key_of("/teams/web/v1/cache/42"),
            ("team:web".into(), "42")
        );
        assert_eq!(cache_key_of("/health"), ("-".into(), "-"));
        assert_eq!(cache_key_of("/teams/web/v1/cache/42/x"), ("-".into(), "-"));
    }
}

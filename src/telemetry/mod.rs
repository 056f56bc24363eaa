//! Logging: subscriber setup and one structured line per request.
//!
//! The per-request line carries the request id (the Functions host's
//! `X-Azure-Functions-InvocationId` when present), method, path, the client API (`nx`, `turbo`),
//! the namespace and hash, status, outcome, bytes, duration and, for a Turborepo hit, the time it
//! saved (`time_saved_ms`: the task's duration turbo stored with the artifact). Headers and query
//! strings are never logged: the `Authorization` header holds a token.
//!
//! **Serving never waits on logging.** Lines go through a bounded in-memory queue to a writer
//! thread ([`queue`]); when the queue is full the line is dropped, never waited for,
//! so a log reader that falls behind (under Azure Functions the host reads the handler's pipes
//! and forwards them to Application Insights) cannot stall a request. Drops are counted
//! (`nx_cache_log_lines_dropped_total` in `/metrics`) and reported in one warning once the
//! writer has caught up. Dropping the [`LogGuard`] at shutdown writes what is queued.
//!
//! **Severity by stream.** The Functions host logs every stdout line of a custom handler as
//! Information and every stderr line as Error unless it contains "warn" (azure-functions-host,
//! `WorkerProcess.ParseErrorMessageAndLog`, `UseStdErrorStreamForErrorsOnly`). So info and more
//! verbose lines go to stdout, warnings and errors to stderr, where their level word (`WARN`,
//! `ERROR`) makes the host classify them right.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, Level};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

pub mod queue;

use queue::{LogQueue, QueueGuard, Stream};

use crate::config::LogFormat;
use crate::metrics::{Figure, Metrics, Outcome};

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

/// The namespace label and hash a request named, for a client API whose path does not carry
/// them (turbo names its team in the query string): attached by the front door once it has
/// validated them, and used by the request line and the per-namespace counters instead of the
/// path.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub hash: Option<String>,
    /// For a hit of an artifact stored with the task's duration: that duration, in milliseconds
    /// (the time the hit saved, whether it was answered or redirected).
    pub time_saved_ms: Option<u64>,
}

/// How often the drop counters are looked at for the one-line report.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(2);

/// The queue, once logging is set up: its drop counter.
static QUEUE: OnceLock<LogQueue> = OnceLock::new();

/// Keeps the log writer running; dropping it (at shutdown) writes what is queued, waiting
/// about a second at most for a reader that does not read.
pub struct LogGuard {
    _queue: QueueGuard,
}

/// Installs the global subscriber: `queue` lines at most wait for the log writer.
/// `RUST_LOG` overrides the default level (`info`). Returns `None` when a subscriber is already
/// installed (the first one is kept).
pub fn init(format: LogFormat, queue: usize) -> Option<LogGuard> {
    // The Azure SDK logs every failed storage call at info; the handler logs what matters itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,typespec_client_core=warn,azure_core=warn"));
    let (lines, guard) = LogQueue::start(std::io::stdout(), std::io::stderr(), queue).ok()?;
    let writer = lines
        .writer(Stream::Err)
        .with_max_level(Level::WARN)
        .or_else(lines.writer(Stream::Out));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    if installed.is_err() {
        return None;
    }
    if QUEUE.set(lines).is_ok() {
        std::thread::Builder::new()
            .name("log-drops".into())
            .spawn(report_drops)
            .ok()?;
    }
    Some(LogGuard { _queue: guard })
}

/// Log lines dropped so far because the log queue was full.
pub fn dropped_lines() -> u64 {
    QUEUE.get().map(LogQueue::dropped).unwrap_or(0)
}

/// What logging reports about itself in `/metrics`.
pub fn figures() -> Vec<Figure> {
    vec![Figure {
        name: "nx_cache_log_lines_dropped_total",
        help: "log lines dropped because the log's reader fell behind (serving never waits on logging)",
        kind: "counter",
        value: dropped_lines(),
    }]
}

/// Reports drops in one warning once they stop, i.e. once the writer has caught up (a report
/// while the queue is still full would be dropped too).
fn report_drops() {
    let (mut reported, mut last) = (0, 0);
    loop {
        std::thread::sleep(DROP_REPORT_EVERY);
        let now = dropped_lines();
        if now > reported && now == last {
            tracing::warn!(
                dropped = now - reported,
                total = now,
                "log lines were dropped because the log's reader fell behind; requests were served without waiting for it"
            );
            reported = now;
        }
        last = now;
    }
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
    let (namespace, hash, time_saved_ms) = match response.extensions_mut().remove::<Target>() {
        Some(target) => (
            target.namespace,
            target.hash.unwrap_or_else(|| "-".into()),
            target.time_saved_ms.unwrap_or(0),
        ),
        None => {
            let (namespace, hash) = cache_key_of(&path);
            (namespace, hash.to_owned(), 0)
        }
    };
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
            client = client_of(&path),
            namespace = namespace.as_str(),
            hash = hash.as_str(),
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
            time_saved_ms,
            "request"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client API a path belongs to: `nx`, `turbo`, or `-` (health, metrics, tokens).
fn client_of(path: &str) -> &'static str {
    if path == "/v8/artifacts" || path.starts_with("/v8/artifacts/") {
        "turbo"
    } else if path.starts_with("/v1/cache/") || path.starts_with("/teams/") {
        "nx"
    } else {
        "-"
    }
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
    use super::{cache_key_of, client_of};

    #[test]
    fn log_lines_name_the_client() {
        assert_eq!(client_of("/v1/cache/42"), "nx");
        assert_eq!(client_of("/teams/web/v1/cache/42"), "nx");
        assert_eq!(client_of("/v8/artifacts/abc"), "turbo");
        assert_eq!(client_of("/v8/artifacts"), "turbo");
        assert_eq!(client_of("/v8/artifactsx"), "-");
        assert_eq!(client_of("/health"), "-");
    }

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

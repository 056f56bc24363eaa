//! A plain-http front for Azurite that fails blob reads the way Azure documents them: a partition
//! at its limit answers `503 ServerBusy` or `500 OperationTimedOut`, a connection can close
//! without an answer, or break off after the headers and part of the body; and an outage answers
//! `503` to every request. The handler (and any client it redirects) reaches storage through it:
//! its blob endpoint is [`FaultyStorage::endpoint`]. Every request it sees is recorded.
//!
//! A blob read is a `GET` of a blob in a container (a listing, the probe's `HEAD` and the
//! uploads pass through untouched, unless an outage is on).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// How a failed blob read fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503` with `x-ms-error-code: ServerBusy`.
    ServerBusy,
    /// `500` with `x-ms-error-code: OperationTimedOut`.
    OperationTimedOut,
    /// The connection is closed without an answer.
    Closed,
    /// `200` with the blob's headers (its full length) and half of its body, then the
    /// connection is closed.
    HalfBody,
    /// `403 AuthenticationFailed`: a refusal, which no retry cures.
    Refused,
}

#[derive(Default)]
struct Plan {
    /// Reads of each blob fail this way, this many times per blob (then pass).
    reads: Option<(Fault, usize)>,
    failed: HashMap<String, usize>,
    /// Every request answered 503 ServerBusy.
    outage: bool,
    /// Blob paths whose reads wait until released.
    held: HashSet<String>,
    /// Faults injected so far.
    injected: usize,
    /// Every request seen: `METHOD /path?query`.
    seen: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    plan: Arc<Mutex<Plan>>,
    released: watch::Sender<u64>,
}

pub struct FaultyStorage {
    pub port: u16,
    shared: Shared,
    _server: tokio::task::JoinHandle<()>,
}

impl FaultyStorage {
    /// Listens on an ephemeral loopback port and forwards to Azurite at `azurite_port`.
    pub async fn start(azurite_port: u16) -> FaultyStorage {
        let shared = Shared {
            upstream: format!("http://127.0.0.1:{azurite_port}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            plan: Arc::default(),
            released: watch::channel(0).0,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serving = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // An error ends the connection: that is how `Closed` and `HalfBody` fail.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultyStorage {
            port,
            shared,
            _server: server,
        }
    }

    /// The blob endpoint to give the handler (the dev account, plain http).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// The connection string of the dev account at this front.
    pub fn connection_string(&self) -> String {
        use nx_azure_cache::storage::azure::connection_string::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={};",
            self.endpoint()
        )
    }

    /// From now on, the first `times` reads of each blob fail with `fault` (counted afresh).
    pub fn fail_reads(&self, fault: Fault, times: usize) {
        let mut plan = self.plan();
        plan.reads = Some((fault, times));
        plan.failed.clear();
    }

    /// Every request from now on is answered `503 ServerBusy` (or passes again, with `false`).
    pub fn outage(&self, on: bool) {
        self.plan().outage = on;
    }

    /// Reads pass again.
    pub fn heal(&self) {
        let mut plan = self.plan();
        plan.reads = None;
        plan.outage = false;
    }

    /// Reads of `blob` (`container/name`) wait from now on until [`FaultyStorage::release`].
    pub fn hold(&self, blob: &str) {
        self.plan().held.insert(format!("/devstoreaccount1/{blob}"));
    }

    /// Lets every held read go on.
    pub fn release(&self) {
        self.plan().held.clear();
        self.shared.released.send_modify(|n| *n += 1);
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.plan().injected
    }

    /// Requests seen so far whose `METHOD /path` starts with `prefix`, e.g.
    /// `GET /devstoreaccount1/nx-cache/org/1`.
    pub fn seen(&self, prefix: &str) -> usize {
        self.plan()
            .seen
            .iter()
            .filter(|line| line.starts_with(prefix))
            .count()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.shared.plan.lock().unwrap()
    }
}

type Answer = Result<hyper::Response<Body>, std::io::Error>;

async fn handle(shared: Shared, request: hyper::Request<hyper::body::Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    let line = format!(
        "{} {}",
        request.method(),
        request.uri().path_and_query().map_or("/", |pq| pq.as_str())
    );
    let is_read = request.method() == hyper::Method::GET
        && path.matches('/').count() >= 3
        && !request.uri().query().unwrap_or("").contains("restype=");
    let mut released = shared.released.subscribe();
    let (outage, fault, held) = {
        let mut plan = shared.plan.lock().unwrap();
        plan.seen.push(line);
        let fault = match plan.reads {
            Some((fault, times)) if is_read => {
                let failed = plan.failed.entry(path.clone()).or_insert(0);
                (*failed < times).then(|| {
                    *failed += 1;
                    fault
                })
            }
            _ => None,
        };
        if plan.outage || fault.is_some() {
            plan.injected += 1;
        }
        (plan.outage, fault, is_read && plan.held.contains(&path))
    };
    if outage {
        return Ok(error(503, "ServerBusy"));
    }
    if held {
        let _ = released.changed().await;
    }
    match fault {
        None => Ok(forward(&shared, request).await),
        Some(Fault::ServerBusy) => Ok(error(503, "ServerBusy")),
        Some(Fault::OperationTimedOut) => Ok(error(500, "OperationTimedOut")),
        Some(Fault::Refused) => Ok(error(403, "AuthenticationFailed")),
        Some(Fault::Closed) => Err(std::io::Error::other("closed without an answer")),
        Some(Fault::HalfBody) => {
            let whole = forward(&shared, request).await;
            let (parts, body) = whole.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let half = bytes.slice(..bytes.len() / 2);
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(half),
                Err(std::io::Error::other("broken off after half the body")),
            ];
            Ok(hyper::Response::from_parts(
                parts,
                Body::from_stream(futures_util::stream::iter(chunks)),
            ))
        }
    }
}

async fn forward(
    shared: &Shared,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    super::front::forward(&shared.client, &shared.upstream, request.map(Body::new)).await
}

/// An Azure error answer with its code, as the service sends it.
fn error(status: u16, code: &str) -> hyper::Response<Body> {
    let body = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>injected by the test's storage front</Message></Error>"
    );
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("x-ms-error-code", code)
        .body(Body::from(body))
        .unwrap()
}

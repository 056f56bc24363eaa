//! Serving never waits on logging, and each log line lands where the Azure Functions host gives
//! it the right severity.
//!
//! The host reads a custom handler's stdout and stderr through pipes and forwards every line to
//! Application Insights. A pipe whose reader falls behind must not stall the cache: lines wait in
//! a bounded queue and are dropped (and counted) when it is full. The host logs a stdout line as
//! Information and a stderr line as Error unless it contains "warn" (azure-functions-host,
//! `WorkerProcess.ParseErrorMessageAndLog` with `UseStdErrorStreamForErrorsOnly`, the default for
//! custom handlers); that rule is [`host_severity`] here.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Handler, TEST_SECRET, issue_token, metric_value, metrics_text};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// A handler whose stdout and stderr are pipes that nobody reads once it has said where it
/// listens: the pipes stay open (a closed pipe would fail writes instead of filling up).
struct Unread {
    child: Child,
    base_url: String,
    _pipes: Vec<Box<dyn Read + Send>>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_unread(data: &Path, extra: &[(&str, &str)]) -> Unread {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["--port", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NX_CACHE_DIR", data)
        .env("NX_CACHE_JWT_SECRET", TEST_SECRET)
        .env("NX_CACHE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each stream is read until the "listening" line shows on one of them; then both readers
    // stop reading and hand their pipe back, still open.
    let (found_tx, found_rx) = mpsc::channel::<String>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let (pipe_tx, pipe_rx) = mpsc::channel::<Box<dyn Read + Send>>();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let (found_tx, pipe_tx, stop_rx) = (found_tx.clone(), pipe_tx.clone(), stop_rx.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "listening"
                {
                    let _ = found_tx.send(value["addr"].as_str().unwrap().to_owned());
                    break;
                }
                // The other stream found it: stop here, without reading further.
                if stop_rx.lock().unwrap().try_recv().is_ok() {
                    break;
                }
            }
            let _ = pipe_tx.send(Box::new(reader.into_inner()));
        });
    }
    let addr = found_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the handler says where it listens");
    let _ = stop_tx.send(());
    // The pipes are kept open, unread, for as long as the handler runs.
    let mut pipes = Vec::new();
    if let Ok(pipe) = pipe_rx.recv_timeout(Duration::from_secs(5)) {
        pipes.push(pipe);
    }
    Unread {
        child,
        base_url: format!("http://{addr}"),
        _pipes: pipes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_never_stalls_serving() {
    let data = tempfile::tempdir().unwrap();
    let handler = start_unread(
        data.path(),
        &[
            ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
            // A short queue, so that this test's lines overflow it.
            ("NX_CACHE_LOG_QUEUE", "64"),
        ],
    );
    let token = issue_token(&["--org"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let stored = client
        .put(format!("{}/v1/cache/1", handler.base_url))
        .bearer_auth(&token)
        .body(vec![7u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    // 3,000 requests, each logged: a few hundred lines fill a pipe's 64 KiB.
    for i in 0..3000 {
        let hash = if i % 2 == 0 {
            "1".to_owned()
        } else {
            format!("{}", 1000 + i)
        };
        let response = client
            .get(format!("{}/v1/cache/{hash}", handler.base_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} was not answered: {e}"));
        let expected = if i % 2 == 0 { 200 } else { 404 };
        assert_eq!(response.status(), expected, "request {i}");
        response.bytes().await.unwrap();
    }
    let metrics = metrics_text(&handler.base_url, METRICS_TOKEN).await;
    let dropped = metric_value(&metrics, "nx_cache_log_lines_dropped_total").unwrap();
    assert!(dropped > 0, "the lines that did not fit are counted");
    assert_eq!(metric_value(&metrics, "nx_cache_hits_total"), Some(1500));
}

/// What the Functions host makes of a line: stdout is Information; stderr is Warning when the
/// line contains "warn" (any case), else Error.
fn host_severity(stream: &str, line: &str) -> &'static str {
    match stream {
        "stdout" => "Information",
        _ if line.to_ascii_lowercase().contains("warn") => "Warning",
        _ => "Error",
    }
}

/// Runs `handler` until `stop` says so, collecting (stream, line) pairs.
fn lines_of(mut child: Child) -> mpsc::Receiver<(&'static str, String)> {
    let (tx, rx) = mpsc::channel();
    let streams: [(&'static str, Box<dyn Read + Send>); 2] = [
        ("stdout", Box::new(child.stdout.take().unwrap())),
        ("stderr", Box::new(child.stderr.take().unwrap())),
    ];
    for (name, stream) in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send((name, line));
            }
        });
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_are_information_warnings_warning_and_errors_error() {
    // A served handler: request lines (info) and a warning (a token reading another team).
    let handler = Handler::start(&[]);
    let token = issue_token(&["--team", "web"]);
    let denied = reqwest::Client::new()
        .get(format!("{}/teams/api/v1/cache/1", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 404);
    // The warning goes to stderr and the request line to stdout. Handler::start reads both
    // through one pipe, and the handler's one log writer keeps the order it logged them in:
    // the warning (logged while the request is served) comes before the request line.
    let warning = handler
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("token has no access to this namespace")
        })
        .expect("the warning is logged");
    let request = handler
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("\"message\":\"request\"") && l.contains("/teams/api/v1/cache/1")
        })
        .expect("the request is logged after the warning");
    drop(handler);

    // The same, with each stream kept apart: a handler started as above, and one whose
    // configuration is refused under Functions (an error at startup).
    let data = tempfile::tempdir().unwrap();
    let served = Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["--port", "0"])
        .env_clear()
        .env("NX_CACHE_DIR", data.path())
        .env("NX_CACHE_JWT_SECRET", TEST_SECRET)
        .env("NX_CACHE_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = served.id();
    let served_lines = lines_of(served);
    let mut seen: Vec<(&'static str, String)> = Vec::new();
    let addr = loop {
        let (stream, line) = served_lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the handler says where it listens");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if value["message"] == "listening" {
            assert_eq!(stream, "stdout", "{line}");
            break value["addr"].as_str().unwrap().to_owned();
        }
        seen.push((stream, line));
    };
    let denied = reqwest::Client::new()
        .get(format!("http://{addr}/teams/api/v1/cache/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 404);
    let has = |seen: &[(&str, String)], stream: &str, text: &str| {
        seen.iter().any(|(s, l)| *s == stream && l.contains(text))
    };
    while !(has(&seen, "stdout", "\"message\":\"request\"")
        && has(&seen, "stderr", "\"level\":\"WARN\""))
    {
        seen.push(
            served_lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the warning and the request line"),
        );
    }
    unsafe_kill(pid);
    let degraded = Command::new(env!("CARGO_BIN_EXE_handler"))
        .env_clear()
        .env("NX_CACHE_DIR", data.path())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = degraded.id();
    let degraded_lines = lines_of(degraded);
    let error = loop {
        let (stream, line) = degraded_lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the refusal is logged");
        if line.contains("\"level\":\"ERROR\"") {
            break (stream, line);
        }
    };
    unsafe_kill(pid);

    for (stream, line) in seen
        .iter()
        .map(|(s, l)| (*s, l.as_str()))
        .chain([(error.0, error.1.as_str())])
    {
        let level = serde_json::from_str::<serde_json::Value>(line).unwrap()["level"]
            .as_str()
            .unwrap()
            .to_owned();
        let expected = match level.as_str() {
            "ERROR" => "Error",
            "WARN" => "Warning",
            _ => "Information",
        };
        assert_eq!(host_severity(stream, line), expected, "{stream}: {line}");
    }
    // The first handler's lines, read from both streams by the test helper, were the same kinds.
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(request.contains("\"level\":\"INFO\""), "{request}");
}

/// Stops a child process by pid (the handler ends on SIGTERM).
fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

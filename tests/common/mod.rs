//! Helpers shared by the integration tests: start the real `handler` binary on a loopback port,
//! issue tokens with it, install the pinned npm tools, run Azurite (and fronts that fail it).
#![allow(dead_code)]

pub mod azurite;
pub mod faulty_storage;
pub mod front;
pub mod nx;
pub mod oidc;
pub mod revoking_proxy;
pub mod turbo;

use std::io::Write;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

/// A secret the tests use so that no development secret or banner is involved.
pub const TEST_SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

/// How long a test waits for the server to report its address before failing.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// `tests/e2e`: the pinned npm packages (nx, turbo, azurite) and the workspace templates.
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Installs the pinned npm packages once (`npm ci`), unless already installed.
pub fn ensure_npm_tools() {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = e2e_dir().join("node_modules/.bin");
    if bin.join("nx").exists() && bin.join("turbo").exists() && bin.join("azurite-blob").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(e2e_dir())
        .status()
        .expect("npm must be installed to run the end-to-end tests");
    assert!(status.success(), "npm ci failed in tests/e2e");
}

/// A running `handler` process; killed when dropped.
pub struct Handler {
    child: Child,
    pub base_url: String,
    pub data_dir: PathBuf,
    /// Log lines as they arrive (for waiting on one), and all of them so far.
    log_lines: mpsc::Receiver<String>,
    history: Arc<(Mutex<Vec<String>>, Condvar)>,
    _data: Option<tempfile::TempDir>,
}

impl Handler {
    /// Starts `handler` on an ephemeral port with a fresh data directory and `extra` env vars.
    pub fn start(extra: &[(&str, &str)]) -> Handler {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_owned();
        let mut handler = Self::start_in(&data_dir, extra);
        handler._data = Some(data);
        handler
    }

    /// [`Handler::start`] with owned settings (such as a backend's) followed by `extra`.
    pub fn start_with(env: &[(&str, String)], extra: &[(&str, &str)]) -> Handler {
        let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.extend_from_slice(extra);
        Self::start(&vars)
    }

    /// Starts `handler` with the given data directory. The port is chosen by the OS (`--port 0`)
    /// and read back from the JSON "listening" log line: no fixed ports, no sleeps.
    pub fn start_in(data_dir: &Path, extra: &[(&str, &str)]) -> Handler {
        Self::launch(
            Path::new(env!("CARGO_BIN_EXE_handler")),
            &["--port", "0"],
            data_dir,
            extra,
        )
    }

    /// Starts a given `handler` executable with `args`, as the Functions host does (no args,
    /// `FUNCTIONS_CUSTOMHANDLER_PORT` in `extra`).
    pub fn launch(
        binary: &Path,
        args: &[&str],
        data_dir: &Path,
        extra: &[(&str, &str)],
    ) -> Handler {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NX_CACHE_DIR", data_dir)
            .env("NX_CACHE_JWT_SECRET", TEST_SECRET)
            .env("NX_CACHE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (key, value) in extra {
            command.env(key, value);
        }
        // Info lines come on stdout, warnings and errors on stderr (as the Functions host
        // classifies them). Both go into one pipe, like `2>&1`: the handler writes its lines in
        // the order it logged them, so they are read in that order.
        let (reader, writer) = std::io::pipe().expect("a pipe for the handler's log");
        command
            .stdout(writer.try_clone().expect("a pipe for the handler's log"))
            .stderr(writer);
        let mut child = command.spawn().expect("start handler");
        // The parent's copies of the write end are closed, so the pipe ends with the handler.
        drop(command);
        let (line_tx, line_rx) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        let history = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let kept = history.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = addr_tx.send(addr);
                }
                kept.0.lock().unwrap().push(line.clone());
                kept.1.notify_all();
                let _ = line_tx.send(line);
            }
        });
        let addr = match addr_rx.recv_timeout(STARTUP_LIMIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "handler did not start; its log:\n{}",
                    history.0.lock().unwrap().join("\n")
                );
            }
        };
        Handler {
            child,
            base_url: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            log_lines: line_rx,
            history,
            _data: None,
        }
    }

    /// Issues a token with `handler token issue ARGS`, signed with the test secret.
    pub fn token(&self, args: &[&str]) -> String {
        issue_token(args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Every log line written so far. The handler writes a request's line before its answer,
    /// but the line reaches this process through a pipe and a reader thread, so a test that got
    /// its answer could look too early. So first a `GET /` with a fresh request id: once its own
    /// line is in, so is every line written before it (the pipe keeps order). A handler that is
    /// gone or does not answer within a few seconds gets what has arrived.
    pub fn logs(&self) -> Vec<String> {
        const SYNC_LIMIT: Duration = Duration::from_secs(5);
        static SYNCS: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "log-sync-{}-{}",
            std::process::id(),
            SYNCS.fetch_add(1, Ordering::Relaxed)
        );
        let synced = self.request_root(&id, SYNC_LIMIT).is_ok();
        let marker = format!("\"id\":\"{id}\"");
        let (lines, arrived) = &*self.history;
        let (lines, _) = arrived
            .wait_timeout_while(lines.lock().unwrap(), SYNC_LIMIT, |lines| {
                synced && !lines.iter().rev().any(|l| l.contains(&marker))
            })
            .unwrap();
        lines.clone()
    }

    /// `GET /` with request id `id`, read to its end.
    fn request_root(&self, id: &str, limit: Duration) -> std::io::Result<()> {
        let addr = self.base_url.trim_start_matches("http://").parse().unwrap();
        let mut stream = std::net::TcpStream::connect_timeout(&addr, limit)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nhost: x\r\nx-azure-functions-invocationid: {id}\r\nconnection: close\r\n\r\n"
        )?;
        std::io::copy(&mut stream, &mut std::io::sink()).map(drop)
    }

    /// Waits until a log line satisfies `matches` (bounded by `limit`); returns it.
    pub fn wait_for_log(&self, limit: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.log_lines.recv_timeout(left).ok()?;
            if matches(&line) {
                return Some(line);
            }
        }
    }

    /// Number of entries stored under `prefix` (`org`, `teams/web`) in the data directory (not
    /// their writer records, `{hash}.{inode}.record`).
    pub fn entries(&self, prefix: &str) -> usize {
        match std::fs::read_dir(self.data_dir.join(prefix)) {
            Ok(dir) => dir
                .map(|e| e.unwrap())
                .filter(|e| e.path().is_file() && !e.file_name().to_string_lossy().contains('.'))
                .count(),
            Err(_) => 0,
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that does not follow redirects: a test sees the handler's `307` itself.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The text of `GET /metrics` with the metrics token `token`.
pub async fn metrics_text(base_url: &str, token: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base_url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one line of `/metrics` text, e.g. `nx_cache_hits_total` or
/// `nx_cache_token_exchanges_total{rule="web-main"}`.
pub fn metric_value(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map(|v| v.parse().unwrap())
}

/// (namespace, entries, bytes) of each row of `handler usage --json`.
pub fn usage_rows(usage: &serde_json::Value) -> Vec<(String, u64, u64)> {
    usage["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["namespace"].as_str().unwrap().to_owned(),
                r["entries"].as_u64().unwrap(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `handler token issue ARGS` with the test secret; returns the printed token.
pub fn issue_token(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["token", "issue"])
        .args(args)
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", TEST_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "token issue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn listening_addr(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some(value.get("addr")?.as_str()?.to_owned())
}

//! What an unauthenticated flood costs the server: the handler's CPU time per refused
//! `POST /token` whose identity token names a trusted issuer and a published key id but carries
//! a bad signature (the most expensive refusal: the signature is checked), sent back to back on
//! one keep-alive connection. Run for RSA-2048 and RSA-4096 issuer keys.
//!
//! The handler is the real binary (the release build `cargo bench` makes, or the executable in
//! `NX_CACHE_HANDLER`, to measure another build) with its production logging (`info`, JSON);
//! the issuer is the tests' stand-in on loopback. CPU time is the handler process's user and
//! system time (`/proc/PID/stat`), read before and after; the sender's CPU is not counted.
//!
//! Run: `cargo bench --bench refusals` (`REFUSALS=N` requests per key size, default 20,000).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let count: usize = std::env::var("REFUSALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let binary = std::env::var_os("NX_CACHE_HANDLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_handler")));
    println!("handler: {}", binary.display());
    println!("| request | count | handler CPU per request | wall time per request |");
    println!("|---|---|---|---|");
    for (label, bits) in [
        ("`GET /` (the HTTP floor, same connection)", 0),
        ("refused exchange, RSA-2048", 2048),
        ("refused exchange, RSA-4096", 4096),
    ] {
        let (cpu, wall) = runtime.block_on(measure(&binary, bits.max(2048), bits == 0, count));
        println!(
            "| {label} | {count} | {:.1} µs | {:.1} µs |",
            cpu.as_secs_f64() * 1e6 / count as f64,
            wall.as_secs_f64() * 1e6 / count as f64
        );
    }
}

/// CPU and wall time of `count` refused exchanges (or `GET /`s, for `floor`) on one connection.
async fn measure(
    binary: &std::path::Path,
    bits: usize,
    floor: bool,
    count: usize,
) -> (Duration, Duration) {
    let issuer = harness::oidc::Issuer::start_with_bits("", bits).await;
    let policy = serde_json::json!({"rules": [
        {"name": "web-prs", "issuer": issuer.issuer(), "audience": "nx-cache",
         "claims": {"repository": "acme/web"},
         "grant": {"teams": ["web"], "access": "read-only"}}
    ]})
    .to_string();
    let data = tempfile::tempdir().unwrap();
    // TOKIO_WORKER_THREADS passes through, to compare runtime sizes.
    let workers = std::env::var("TOKIO_WORKER_THREADS").unwrap_or_default();
    let mut env = vec![("NX_CACHE_TRUST_POLICY", policy.as_str())];
    if !workers.is_empty() {
        env.push(("TOKIO_WORKER_THREADS", workers.as_str()));
    }
    let handler = harness::Handler::launch(binary, &["--port", "0"], data.path(), &env);
    let addr = handler.base_url.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    // A valid exchange first: the issuer's keys are fetched and cached.
    let claims = issuer.claims(
        "nx-cache",
        serde_json::json!({"repository": "acme/web", "ref": "refs/pull/1/merge"}),
    );
    let good = issuer.sign(&claims);
    assert_eq!(post(&mut sender, &good).await, 200, "the warm-up exchange");
    // The same token with its signature's last bytes flipped: a trusted issuer, a published
    // kid. Only the low-order bytes change, so the signature stays below the key's modulus and
    // the full RSA operation runs, as an attacker would arrange it. (Flipping every byte could
    // give a number above the modulus, which is refused before any arithmetic: a cheaper refusal
    // that depended on the key generated for the run.)
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = b64.decode(signature).unwrap();
    let len = raw.len();
    for byte in raw[len - 8..].iter_mut() {
        *byte ^= 0x5a;
    }
    let bad = format!("{signed}.{}", b64.encode(raw));
    assert_eq!(post(&mut sender, &bad).await, 401, "a bad signature");

    let before = cpu_time(handler.pid());
    let started = Instant::now();
    for _ in 0..count {
        if floor {
            assert_eq!(get_root(&mut sender).await, 200);
        } else {
            assert_eq!(post(&mut sender, &bad).await, 401);
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_time(handler.pid()) - before;
    (cpu, wall)
}

/// `GET /` on the one connection; the status.
async fn get_root(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    send(sender, Request::get("/")).await
}

/// `POST /token` with `token`, on the one connection; the status.
async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    token: &str,
) -> u16 {
    let request = Request::post("/token").header("authorization", format!("Bearer {token}"));
    send(sender, request).await
}

/// Sends `request` (no body) on the one connection and reads its answer whole; the status.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    request: hyper::http::request::Builder,
) -> u16 {
    let request = request
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

/// The process's CPU time so far (user + system, `/proc/PID/stat`), threads that have ended
/// included. Clock ticks (10 ms here): the run is long enough that a tick is under 1% of it.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = 100; // USER_HZ on Linux
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

//! What an unauthenticated flood costs the server: the handler's CPU time per refused
//! `POST /token` whose identity token names a trusted issuer and a published key id but carries
//! a bad signature (the most expensive refusal: the signature is checked), sent back to back on
//! one keep-alive connection. Run for RSA-2048 and RSA-4096 issuer keys.
//!
//! The handler is the real binary (the release build `cargo bench` makes, or the executable in
//! `NX_CACHE_HANDLER`, to measure another build) with its production logging (`info`, JSON);
//! the issuer is the tests' stand-in on loopback. CPU time is the sum of the handler's threads'
//! on-CPU time (`/proc/PID/task/*/schedstat`), read before and after; the sender's CPU is not
//! counted.
//!
//! Run: `cargo bench --bench refusals` (`REFUSALS=N` requests per key size, default 5,000).

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
        .unwrap_or(5_000);
    let binary = std::env::var_os("NX_CACHE_HANDLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_handler")));
    println!("handler: {}", binary.display());
    println!("| issuer key | refusals | handler CPU per refusal | wall time per refusal |");
    println!("|---|---|---|---|");
    for bits in [2048, 4096] {
        let (cpu, wall) = runtime.block_on(measure(&binary, bits, count));
        println!(
            "| RSA-{bits} | {count} | {:.1} µs | {:.1} µs |",
            cpu.as_secs_f64() * 1e6 / count as f64,
            wall.as_secs_f64() * 1e6 / count as f64
        );
    }
}

async fn measure(binary: &std::path::Path, bits: usize, count: usize) -> (Duration, Duration) {
    let issuer = harness::oidc::Issuer::start_with_bits("", bits).await;
    let policy = serde_json::json!({"rules": [
        {"name": "web-prs", "issuer": issuer.issuer(), "audience": "nx-cache",
         "claims": {"repository": "acme/web"},
         "grant": {"teams": ["web"], "access": "read-only"}}
    ]})
    .to_string();
    let data = tempfile::tempdir().unwrap();
    let handler = harness::Handler::launch(
        binary,
        &["--port", "0"],
        data.path(),
        &[("NX_CACHE_TRUST_POLICY", &policy)],
    );
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
    // The same token with its signature's bytes flipped: a trusted issuer, a published kid.
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = b64.decode(signature).unwrap();
    for byte in raw.iter_mut() {
        *byte ^= 0x5a;
    }
    let bad = format!("{signed}.{}", b64.encode(raw));
    assert_eq!(post(&mut sender, &bad).await, 401, "a bad signature");

    let before = cpu_time(handler.pid());
    let started = Instant::now();
    for _ in 0..count {
        assert_eq!(post(&mut sender, &bad).await, 401);
    }
    let wall = started.elapsed();
    let cpu = cpu_time(handler.pid()) - before;
    (cpu, wall)
}

/// `POST /token` with `token`, on the one connection; the status.
async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    token: &str,
) -> u16 {
    let request = Request::post("/token")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

/// The process's on-CPU time so far: the sum over its threads of `/proc/PID/task/TID/schedstat`'s
/// first field (nanoseconds).
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

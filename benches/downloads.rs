//! Downloads by size (issue 28; docs/benchmarks.md, "Downloads by size"): what a client waits
//! for a hit, and what it costs the handler, when the hit is redirected to storage against when
//! the handler answers it with its bytes; and hits from the handler's memory copy against the
//! embedded store. Then what loopback cannot show: the TLS handshake a redirected client makes
//! with a second host, measured with rustls on loopback.
//!
//! Four release handlers on one Azurite container (account key), each with production logging
//! (`info`, JSON), and one on the embedded store:
//! - `redirect`: `NX_CACHE_DOWNLOAD=redirect`. A fetch is the GET to the handler, then the
//!   redirect followed on a new connection to storage (as separate CI jobs do), the body read
//!   whole.
//! - `inline`: auto mode with `NX_CACHE_INLINE_MAX=4M` (every size below is answered inline) and
//!   the memory copy off: every hit is read from storage by the handler.
//! - `memory`: the same with a memory copy that holds every entry: hits from memory.
//! - `embedded`: the embedded store (its files in the page cache).
//!
//! For each size (1 KiB, 64 KiB, 256 KiB, 1 MiB, 4 MiB; 16 entries each, requested in turn) and
//! each handler, in alternating rounds (all four handlers, then again): one client fetching back
//! to back (the time a client waits: p50 and p99), then `DOWNLOADS_CLIENTS` clients (req/s, p99,
//! and the handler's and Azurite's CPU time per hit, from `/proc/PID/stat`). Each figure is the
//! median of the rounds. Every answer is checked: a `200` of the entry's length, or a `307`
//! whose target answers one; a warm-up fetch of each entry compares the bytes.
//!
//! Run: `cargo bench --bench downloads`. `DOWNLOADS_SECONDS` per run (default 3),
//! `DOWNLOADS_ROUNDS` (default 3), `DOWNLOADS_CLIENTS` (default 8), `DOWNLOADS_HANDSHAKES` per
//! TLS case (default 2000).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use harness::Handler;
use harness::azurite::Azurite;

const SIZES: [(&str, usize); 5] = [
    ("1 KiB", 1 << 10),
    ("64 KiB", 64 << 10),
    ("256 KiB", 256 << 10),
    ("1 MiB", 1 << 20),
    ("4 MiB", 4 << 20),
];
const ENTRIES: usize = 16;
const METRICS: &str = "metrics-token-0123456789";
const WORKLOADS: [&str; 4] = ["redirect", "inline", "memory", "embedded"];

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(downloads());
    runtime.block_on(handshakes(setting("DOWNLOADS_HANDSHAKES", 2000)));
}

/// One handler under test and how to read its CPU time.
struct Server {
    name: &'static str,
    handler: Handler,
}

async fn downloads() {
    let seconds = setting("DOWNLOADS_SECONDS", 3) as u64;
    let rounds = setting("DOWNLOADS_ROUNDS", 3);
    let clients = setting("DOWNLOADS_CLIENTS", 8);
    let azurite = Azurite::start();
    azurite.create_container("nx-cache", None).await;
    let storage = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                azurite.connection_string(),
            ),
            ("AZURE_STORAGE_CONTAINER", "nx-cache".to_string()),
            ("NX_CACHE_METRICS_TOKEN", METRICS.to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        Handler::start_with(&env, &[])
    };
    let servers = [
        Server {
            name: "redirect",
            handler: storage(&[("NX_CACHE_DOWNLOAD", "redirect")]),
        },
        Server {
            name: "inline",
            handler: storage(&[
                ("NX_CACHE_INLINE_MAX", "4M"),
                ("NX_CACHE_INLINE_MEMORY", "256M"),
                ("NX_CACHE_MEMORY_COPY", "0"),
            ]),
        },
        Server {
            name: "memory",
            handler: storage(&[
                ("NX_CACHE_INLINE_MAX", "4M"),
                ("NX_CACHE_INLINE_MEMORY", "256M"),
                ("NX_CACHE_MEMORY_COPY", "512M"),
            ]),
        },
        Server {
            name: "embedded",
            handler: Handler::start(&[("NX_CACHE_METRICS_TOKEN", METRICS)]),
        },
    ];
    let token = harness::issue_token(&["--org"]);
    println!(
        "machine: {} CPUs, {}; {rounds} rounds of {seconds} s per run; {clients} clients for throughput",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut latency_rows = Vec::new();
    let mut load_rows = Vec::new();
    for (index, (label, size)) in SIZES.iter().enumerate() {
        let entries: Vec<(String, Bytes)> = (0..ENTRIES)
            .map(|i| {
                let hash = format!("{}{:04}", index + 1, i);
                (
                    hash,
                    Bytes::from(pattern(*size, (index * ENTRIES + i) as u32)),
                )
            })
            .collect();
        for (hash, body) in &entries {
            for server in [&servers[0], &servers[3]] {
                put(&server.handler.base_url, hash, &token, body.clone()).await;
            }
        }
        let entries = Arc::new(entries);
        for server in &servers {
            warm_up(&server.handler.base_url, &token, &entries).await;
        }
        let mut waits: Vec<Vec<Run>> = vec![Vec::new(); WORKLOADS.len()];
        let mut loads: Vec<Vec<Run>> = vec![Vec::new(); WORKLOADS.len()];
        for _ in 0..rounds {
            for (slot, server) in servers.iter().enumerate() {
                waits[slot].push(measure(server, &azurite, &token, &entries, 1, seconds).await);
            }
            for (slot, server) in servers.iter().enumerate() {
                loads[slot]
                    .push(measure(server, &azurite, &token, &entries, clients, seconds).await);
            }
        }
        for (slot, server) in servers.iter().enumerate() {
            let (wait, load) = (&waits[slot], &loads[slot]);
            latency_rows.push(format!(
                "| {label} | {} | {} | {} | {} | {} |",
                server.name,
                ms(median(wait.iter().map(|r| r.p50))),
                ms(median(wait.iter().map(|r| r.p99))),
                count(median(wait.iter().map(|r| r.per_second))),
                wait.iter().map(|r| r.fetches).sum::<usize>(),
            ));
            load_rows.push(format!(
                "| {label} | {} | {} ({}–{}) | {} | {} | {} | {} | {} |",
                server.name,
                count(median(load.iter().map(|r| r.per_second))),
                count(min(load.iter().map(|r| r.per_second))),
                count(max(load.iter().map(|r| r.per_second))),
                ms(median(load.iter().map(|r| r.p99))),
                us(median(load.iter().map(|r| r.handler_cpu))),
                us(median(load.iter().map(|r| r.storage_cpu))),
                load.iter().map(|r| r.storage_reads).sum::<u64>(),
                load.iter().map(|r| r.fetches).sum::<usize>(),
            ));
        }
    }
    println!(
        "\nThe time one client waits for a hit (fetches back to back; medians of the rounds)\n"
    );
    println!("| size | handler | p50 | p99 | fetches/s | fetches |");
    println!("|---|---|---:|---:|---:|---:|");
    println!("{}", latency_rows.join("\n"));
    println!(
        "\nThroughput with {clients} clients (medians of the rounds; CPU per hit = process CPU time / hits)\n"
    );
    println!(
        "| size | handler | req/s (min–max) | p99 | handler CPU per hit | Azurite CPU per hit | storage reads by the handler | fetches |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", load_rows.join("\n"));
}

/// What one measured run found.
#[derive(Clone, Default)]
struct Run {
    fetches: usize,
    per_second: f64,
    p50: f64,
    p99: f64,
    /// Microseconds of CPU per hit.
    handler_cpu: f64,
    storage_cpu: f64,
    /// Blob reads the handler made (inline reads from storage), from its `/metrics`.
    storage_reads: u64,
}

async fn measure(
    server: &Server,
    azurite: &Azurite,
    token: &str,
    entries: &Arc<Vec<(String, Bytes)>>,
    clients: usize,
    seconds: u64,
) -> Run {
    let base = &server.handler.base_url;
    let reads_before = storage_reads(base).await;
    let handler_before = cpu_time(server.handler.pid());
    let storage_before = cpu_time(azurite.pid());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (base, token, entries) = (base.clone(), token.to_owned(), entries.clone());
            tokio::spawn(
                async move { fetch_until(&base, &token, &entries, client, deadline).await },
            )
        })
        .collect();
    let mut waits = Vec::new();
    for task in tasks {
        waits.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let handler_cpu = cpu_time(server.handler.pid()) - handler_before;
    let storage_cpu = cpu_time(azurite.pid()) - storage_before;
    waits.sort();
    let fetches = waits.len();
    assert!(fetches > 0, "{}: no fetch finished", server.name);
    let percentile = |p: f64| {
        let index = ((fetches as f64 * p).ceil() as usize).clamp(1, fetches) - 1;
        waits[index].as_secs_f64() * 1e3
    };
    Run {
        fetches,
        per_second: fetches as f64 / elapsed,
        p50: percentile(0.50),
        p99: percentile(0.99),
        handler_cpu: handler_cpu.as_secs_f64() * 1e6 / fetches as f64,
        storage_cpu: storage_cpu.as_secs_f64() * 1e6 / fetches as f64,
        storage_reads: storage_reads(base).await - reads_before,
    }
}

/// One client's fetches until `deadline`, each checked; their durations.
async fn fetch_until(
    base: &str,
    token: &str,
    entries: &[(String, Bytes)],
    client: usize,
    deadline: Instant,
) -> Vec<Duration> {
    let mut handler = connect(base.trim_start_matches("http://")).await;
    let mut waits = Vec::new();
    let mut next = client * 5;
    while Instant::now() < deadline {
        let (hash, body) = &entries[next % entries.len()];
        next += 1;
        let started = Instant::now();
        let got = fetch(&mut handler, hash, token).await;
        waits.push(started.elapsed());
        assert_eq!(got.len(), body.len(), "entry {hash}: a whole body");
    }
    waits
}

/// GETs an entry through the handler on its kept connection, following a redirect on a new
/// connection to storage, as the Nx client of a fresh CI job does. Panics on any other answer.
async fn fetch(handler: &mut SendRequest<Empty<Bytes>>, hash: &str, token: &str) -> Bytes {
    let request = Request::get(format!("/v1/cache/{hash}"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    handler.ready().await.unwrap();
    let response = handler.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    match (status, location) {
        (200, None) => body,
        (307, Some(location)) => {
            let uri: hyper::Uri = location.parse().unwrap();
            let mut storage = connect(uri.authority().unwrap().as_str()).await;
            let request = Request::get(uri.path_and_query().unwrap().as_str())
                .header("host", uri.authority().unwrap().as_str())
                .body(Empty::new())
                .unwrap();
            let response = storage.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200, "storage's answer to the redirect");
            response.into_body().collect().await.unwrap().to_bytes()
        }
        (status, _) => panic!("GET {hash}: unexpected {status}"),
    }
}

/// An HTTP/1.1 connection to `authority` (`127.0.0.1:PORT`).
async fn connect(authority: &str) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Fetches each entry once through `base` and compares its bytes; the entries are then known
/// (and, for the memory copy, kept) as they will be during the measurement.
async fn warm_up(base: &str, token: &str, entries: &[(String, Bytes)]) {
    let mut handler = connect(base.trim_start_matches("http://")).await;
    for (hash, body) in entries {
        let got = fetch(&mut handler, hash, token).await;
        assert!(got == *body, "{base}: entry {hash} differs");
    }
}

async fn put(base: &str, hash: &str, token: &str, body: Bytes) {
    let status = reqwest::Client::new()
        .put(format!("{base}/v1/cache/{hash}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "PUT {hash}");
}

async fn storage_reads(base: &str) -> u64 {
    let metrics = harness::metrics_text(base, METRICS).await;
    harness::metric_value(&metrics, "nx_cache_inline_hits_storage_total").unwrap_or(0)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

/// A process's CPU time so far (user + system, `/proc/PID/stat`), in clock ticks of 10 ms.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn min(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

fn max(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max)
}

fn ms(value: f64) -> String {
    format!("{value:.2} ms")
}

fn us(value: f64) -> String {
    format!("{value:.0} µs")
}

/// A count with thousands separators.
fn count(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a redirected client pays that loopback does not show: a new TLS connection to the
/// storage host. Full handshakes (no session resumption: a fresh CI job has no session to
/// resume) between a rustls client and server in this process on loopback, for TLS 1.3 and 1.2,
/// with an ECDSA P-256 and an RSA-2048 certificate. The wall time per handshake is what both
/// ends compute (the loopback round trips are microseconds); the process's CPU time per
/// handshake counts both ends.
async fn handshakes(count: usize) {
    use rsa::pkcs8::EncodePrivateKey;
    use tokio_rustls::rustls;

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let rsa_pem = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let keys = [
        ("ECDSA P-256", rcgen::KeyPair::generate().unwrap()),
        ("RSA-2048", rcgen::KeyPair::from_pem(&rsa_pem).unwrap()),
    ];
    println!(
        "\nA new TLS connection on loopback ({count} full handshakes per case, no resumption, rustls 0.23 with aws-lc-rs, client and server in one process)\n"
    );
    println!("| certificate | TLS | p50 wall | p99 wall | CPU per handshake (both ends) |");
    println!("|---|---|---:|---:|---:|");
    for (label, key) in &keys {
        let cert = rcgen::CertificateParams::new(vec!["storage.test".into()])
            .unwrap()
            .self_signed(key)
            .unwrap();
        for (version, versions) in [
            ("1.3", &[&rustls::version::TLS13][..]),
            ("1.2", &[&rustls::version::TLS12][..]),
        ] {
            let server = rustls::ServerConfig::builder_with_protocol_versions(versions)
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            let mut client = rustls::ClientConfig::builder_with_protocol_versions(versions)
                .with_root_certificates(roots)
                .with_no_client_auth();
            client.resumption = rustls::client::Resumption::disabled();
            let (walls, cpu) = handshake_run(server, client, count).await;
            println!(
                "| {label} | {version} | {} | {} | {} |",
                ms(walls[walls.len() / 2].as_secs_f64() * 1e3),
                ms(walls[walls.len() * 99 / 100].as_secs_f64() * 1e3),
                us(cpu.as_secs_f64() * 1e6 / count as f64),
            );
        }
    }
}

/// `count` connections with full handshakes; (sorted wall times, process CPU time).
async fn handshake_run(
    server: tokio_rustls::rustls::ServerConfig,
    client: tokio_rustls::rustls::ClientConfig,
    count: usize,
) -> (Vec<Duration>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"x").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("storage.test").unwrap();
    let before = cpu_time(std::process::id());
    let mut walls = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut tls = connector.connect(name.clone(), stream).await.unwrap();
        // The server's first byte: the handshake is done on both ends.
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        walls.push(started.elapsed());
    }
    let cpu = cpu_time(std::process::id()) - before;
    serving.abort();
    walls.sort();
    (walls, cpu)
}

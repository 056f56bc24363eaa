//! What issue 25 costs on the request path: recording an entry's writer on an embedded upload
//! (1 KiB, with and without the record, side by side), the age check of a remembered entry on
//! an exact hit, and the size of an exchanged token with and without the build claims it now
//! carries (Nx sends it with every request).
//!
//! Run: `cargo bench --bench entries`. The token sizes and the upload rates are printed first:
//! the uploads with and without a record alternate one by one (`PUT_ROUNDS` each), so both
//! variants see the same phases of a busy machine; once in the target directory (on disk, with
//! its `fsync`) and once in `/dev/shm` (memory: what the record itself costs in CPU and system
//! calls).

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use nx_azure_cache::auth::{Access, Origin, TokenRequest};
use nx_azure_cache::key::{CacheKey, TeamName};
use nx_azure_cache::storage::known::KnownEntries;
use nx_azure_cache::storage::local::LocalStore;
use nx_azure_cache::storage::record::{Record, Writer, WriterKind};
use nx_azure_cache::storage::{CONFIRMED_FOR, Store};

/// The build claims of a GitHub Actions push to main, as an exchange puts them in the token.
fn github_origin() -> Origin {
    let claims = [
        ("repository", "acme/web"),
        ("ref", "refs/heads/main"),
        ("sha", "95d18d66afd2c0609f6c41bd537a827beb698e64"),
        ("run_id", "12345678901"),
        ("run_attempt", "1"),
        (
            "workflow_ref",
            "acme/web/.github/workflows/build.yml@refs/heads/main",
        ),
        ("event_name", "push"),
        ("actor", "octocat"),
    ];
    Origin {
        iss: "https://token.actions.githubusercontent.com".into(),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn token_sizes() {
    let authority = common::authority();
    let request = |origin: Option<Origin>| TokenRequest {
        org: false,
        teams: vec![TeamName::parse("web").unwrap()],
        access: Access::ReadWrite,
        expires_in: Duration::from_secs(3600),
        subject: "github:acme/web:refs/heads/main".into(),
        rule: Some("web-main".into()),
        // As an exchange writes it: 16 hex digits of the rule's conditions (issue 24).
        rule_digest: Some("0123456789abcdef".into()),
        origin,
    };
    let before = authority.issue(&request(None)).unwrap().token.len();
    let after = authority
        .issue(&request(Some(github_origin())))
        .unwrap()
        .token
        .len();
    println!(
        "exchanged token (GitHub push to main, rule web-main): {before} bytes without the build claims, {after} bytes with them (+{})",
        after - before
    );
}

fn writer() -> Record {
    let origin = github_origin();
    Record {
        writer: Some(
            Writer {
                token_id: uuid::Uuid::new_v4().simple().to_string(),
                subject: "github:acme/web:refs/heads/main".into(),
                kind: WriterKind::Exchanged,
                rule: Some("web-main".into()),
                issuer: Some(origin.iss),
                claims: origin.claims,
                stored: time::OffsetDateTime::now_utc(),
            }
            .bounded(),
        ),
        turbo: None,
    }
}

/// Uploads per variant in the interleaved run.
const PUT_ROUNDS: usize = 3000;

/// Alternates 1 KiB uploads without and with a writer record into two stores under `base`,
/// and prints each variant's median time and mean rate.
fn put_rates(runtime: &tokio::runtime::Runtime, base: &std::path::Path, label: &str) {
    let _ = std::fs::remove_dir_all(base);
    let variants = [
        ("without record", Record::default()),
        ("with record", writer()),
    ];
    let stores: Vec<Arc<LocalStore>> = variants
        .iter()
        .map(|(name, _)| Arc::new(LocalStore::open(&base.join(name.replace(' ', "-"))).unwrap()))
        .collect();
    let body = bytes::Bytes::from(vec![7u8; 1024]);
    let mut times: Vec<Vec<Duration>> = (0..2).map(|_| Vec::with_capacity(PUT_ROUNDS)).collect();
    for round in 0..PUT_ROUNDS + 200 {
        for (i, (_, record)) in variants.iter().enumerate() {
            let key = CacheKey::parse(None, &round.to_string()).unwrap();
            let chunk = body.clone();
            let stream = Box::pin(futures_util::stream::once(async move { Ok(chunk) }));
            let start = Instant::now();
            runtime
                .block_on(stores[i].put_if_absent(&key, 1024, stream, record))
                .unwrap();
            // The first 200 rounds warm up (allocator, folders, page cache).
            if round >= 200 {
                times[i].push(start.elapsed());
            }
        }
    }
    let mut summary = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let total: Duration = times[i].iter().sum();
        times[i].sort();
        let median = times[i][times[i].len() / 2];
        let rate = PUT_ROUNDS as f64 / total.as_secs_f64();
        summary.push((median, rate));
        println!(
            "embedded PUT 1 KiB, {label}, {name}: median {:.1} µs, {rate:.0} uploads/s (mean)",
            median.as_secs_f64() * 1e6
        );
    }
    println!(
        "embedded PUT 1 KiB, {label}: with record {:+.1}% median time, {:+.1}% rate",
        (summary[1].0.as_secs_f64() / summary[0].0.as_secs_f64() - 1.0) * 100.0,
        (summary[1].1 / summary[0].1 - 1.0) * 100.0
    );
    let _ = std::fs::remove_dir_all(base);
}

fn entries(c: &mut Criterion) {
    token_sizes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let disk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-entries");
    put_rates(&runtime, &disk, "data directory on disk");
    let memory = std::path::Path::new("/dev/shm");
    if memory.is_dir() {
        let dir = memory.join(format!("bench-entries-{}", std::process::id()));
        put_rates(&runtime, &dir, "data directory in /dev/shm");
    }

    // A hot entry on an exact hit check: remembered, its confirmation younger than the bound.
    let known = KnownEntries::new(50_000, CONFIRMED_FOR);
    for i in 0..50_000 {
        known.insert(&format!("teams/web/{i}"), 1024, None);
    }
    c.bench_function("remembered entry lookup (with its age check)", |b| {
        b.iter(|| known.get(std::hint::black_box("teams/web/4242")).unwrap())
    });
    c.bench_function("clock read (Instant::now, what the age check adds)", |b| {
        b.iter(Instant::now)
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = entries
}
criterion_main!(benches);

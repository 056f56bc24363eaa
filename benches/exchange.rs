//! Latency of `POST /token` with warm keys: the whole server-side handling of an exchange
//! (router, body, identity-token verification with RS256, trust-policy decision, signing the
//! cache token, the answer), without a socket, 10,000 times; prints p50/p90/p99/max and checks
//! that no request reaches the issuer once its keys are cached.
//!
//! Run: `cargo bench --bench exchange`. The issuer is the tests' stand-in (discovery + JWKS on
//! loopback, an RS256 key generated here: RSA-2048, as real issuers use, then RSA-4096).

#[path = "../tests/common/oidc.rs"]
#[allow(dead_code)]
mod oidc;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use nx_azure_cache::api::router;
use nx_azure_cache::auth::exchange::Exchange;
use nx_azure_cache::auth::policy::TrustPolicy;
use nx_azure_cache::storage::local::LocalStore;
use tower::ServiceExt;

const ROUNDS: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Real issuers sign with RSA-2048 (GitHub, GitLab, Entra ID); RSA-4096 for comparison.
    for bits in [2048, 4096] {
        runtime.block_on(run(bits));
    }
}

async fn run(bits: usize) {
    let issuer = oidc::Issuer::start_with_bits("", bits).await;
    let policy = serde_json::json!({"rules": [
        {"name": "web-main", "issuer": issuer.issuer(), "kind": "github", "audience": "nx-cache",
         "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"},
         "grant": {"teams": ["web"], "access": "read-write"}},
        {"name": "web-prs", "issuer": issuer.issuer(), "kind": "github", "audience": "nx-cache",
         "claims": {"repository": "acme/web"},
         "grant": {"org": true, "teams": ["web"], "access": "read-only"}}
    ]})
    .to_string();
    let policy = TrustPolicy::parse(&policy, Duration::from_secs(12 * 3600)).unwrap();
    let tokens = Arc::new(common::authority());
    let data = tempfile::tempdir().unwrap();
    let state = common::state(
        Arc::new(LocalStore::open(data.path()).unwrap()),
        tokens.clone(),
        Some(Arc::new(Exchange::new(policy, tokens).unwrap())),
    );
    let app = router(state);
    // A pull request's identity: the second rule decides, after the first was tried.
    let identity = issuer.sign(&issuer.claims(
        "nx-cache",
        serde_json::json!({"repository": "acme/web", "ref": "refs/pull/7/merge",
                           "sub": "repo:acme/web:pull_request", "repository_owner": "acme"}),
    ));
    let bearer = format!("Bearer {identity}");
    let exchange = || {
        let request = Request::post("/token")
            .header("authorization", bearer.as_str())
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };
    // Warm up: the first exchange fetches the issuer's keys.
    for _ in 0..200 {
        assert_eq!(exchange().await.unwrap().status(), StatusCode::OK);
    }
    let fetched = issuer.key_requests();
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let response = exchange().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        times.push(elapsed);
    }
    assert_eq!(
        issuer.key_requests(),
        fetched,
        "no issuer request per exchange once keys are cached"
    );
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "POST /token with warm RSA-{bits} keys, {ROUNDS} exchanges (router, RS256 verification, policy, HS256 signing; no socket):"
    );
    println!(
        "  p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs; issuer requests during the run: {}",
        micros(at(0.50)),
        micros(at(0.90)),
        micros(at(0.99)),
        micros(*times.last().unwrap()),
        issuer.key_requests() - fetched
    );
}

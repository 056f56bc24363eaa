//! Micro-benchmarks of the per-request hot path (issue 6): token verification, the namespace
//! check, SAS signing, and the whole decision for a redirected GET through the router (key
//! mode, so no network is involved: a redirect needs no storage call).
//!
//! Run: `cargo bench --bench hot_path`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use nx_azure_cache::api::router;
use nx_azure_cache::auth::{Access, TokenAuthority, TokenRequest};
use nx_azure_cache::config::{AzureAuth, AzureConfig, Download, HitCheck};
use nx_azure_cache::key::{CacheKey, TeamName};
use nx_azure_cache::storage::azure::AzureStore;
use nx_azure_cache::storage::azure::connection_string::ConnectionString;
use nx_azure_cache::storage::azure::sas::{BlobSas, Protocols, SAS_VERSION};
use tower::ServiceExt;

fn token(authority: &TokenAuthority) -> String {
    authority
        .issue(&TokenRequest {
            org: true,
            teams: vec![TeamName::parse("web").unwrap()],
            access: Access::ReadOnly,
            expires_in: Duration::from_secs(3600),
            subject: "bench".into(),
            rule: None,
            rule_digest: None,
            origin: None,
        })
        .unwrap()
        .token
}

fn hot_path(c: &mut Criterion) {
    let authority = common::authority();
    let bearer = format!("Bearer {}", token(&authority));
    // A token seen for the first time: its HS256 signature is checked (a fresh token per
    // iteration, issued outside the timing).
    c.bench_function("token verification, first use (HS256)", |b| {
        b.iter_batched(
            || format!("Bearer {}", token(&authority)),
            |bearer| authority.verify_header(Some(&bearer)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    // The same token again, as every request of a build sends it: remembered, only its
    // lifetime and revocation checked.
    c.bench_function("token verification, remembered token", |b| {
        b.iter(|| {
            authority
                .verify_header(Some(std::hint::black_box(&bearer)))
                .unwrap()
        })
    });

    let grant = authority.verify_header(Some(&bearer)).unwrap();
    c.bench_function("key parse + namespace check", |b| {
        b.iter(|| {
            let key = CacheKey::parse(
                Some(std::hint::black_box("web")),
                std::hint::black_box("4809188201876735999"),
            )
            .unwrap();
            grant.covers(&key.namespace)
        })
    });

    let connection = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
    c.bench_function("service SAS signing (one blob, read)", |b| {
        b.iter(|| {
            let now = time::OffsetDateTime::now_utc();
            BlobSas {
                account: "devstoreaccount1",
                container: "nx-cache",
                blob: std::hint::black_box("teams/web/4809188201876735999"),
                permissions: "r",
                start: now - Duration::from_secs(300),
                expiry: now + Duration::from_secs(300),
                protocols: Protocols::HttpsOnly,
                version: SAS_VERSION,
            }
            .service_query(&connection.key)
        })
    });

    let now = time::OffsetDateTime::now_utc();
    let delegation_key = azure_storage_common::models::UserDelegationKey {
        signed_oid: Some("0b5f2e9c-6d8a-4c1e-9f3b-2a7d4e6c8b10".into()),
        signed_tid: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
        signed_start: Some(now - Duration::from_secs(60)),
        signed_expiry: Some(now + Duration::from_secs(86_400)),
        signed_service: Some("b".into()),
        signed_version: Some("2026-04-06".into()),
        value: Some(vec![7u8; 32]),
        ..Default::default()
    };
    c.bench_function("user-delegation SAS signing (cached key)", |b| {
        b.iter(|| {
            let now = time::OffsetDateTime::now_utc();
            azure_storage_sas::SasBuilder::new(
                "acct",
                &delegation_key,
                now + Duration::from_secs(300),
            )
            .unwrap()
            .start(now - Duration::from_secs(300))
            .protocol(azure_storage_sas::SasProtocol::Https)
            .blob(
                "nx-cache",
                std::hint::black_box("teams/web/4809188201876735999"),
            )
            .read()
            .build()
        })
    });

    // The whole decision for a redirected GET, through the router, without a socket.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = AzureStore::new(AzureConfig {
        account: connection.account.clone(),
        endpoint: "https://devstoreaccount1.blob.core.windows.net".into(),
        container: "nx-cache".into(),
        auth: AzureAuth::Key(connection.clone()),
        prefix: String::new(),
        download: Download::Redirect,
        inline: Default::default(),
        // No storage call on this path (an exact check is measured by scripts/bench-load).
        hit_check: HitCheck::None,
        sas_ttl: Duration::from_secs(300),
        timeout: Duration::from_secs(10),
        strict: false,
    })
    .unwrap();
    let state = common::state(Arc::new(store), Arc::new(authority), None);
    let app = router(state);
    c.bench_function("redirected GET decision (router, key mode)", |b| {
        b.iter(|| {
            let request = Request::get("/teams/web/v1/cache/4809188201876735999")
                .header("authorization", bearer.as_str())
                .body(Body::empty())
                .unwrap();
            let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
            assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hot_path
}
criterion_main!(benches);

//! Downloads by size on Azurite (`NX_CACHE_DOWNLOAD=auto`, the default): small entries are read
//! by the handler and answered whole, large ones are redirected (streamed in proxy mode); a failed storage read is retried
//! within the budget and otherwise a miss, never a short `200`; a hot entry is read from storage
//! once; the memory stays within its bound; a storage error wakes the health watch; a kept copy
//! follows storage within the bound. Storage faults are played by a front in front of Azurite
//! (`common::faulty_storage`) that fails blob reads the way Azure documents them.

mod common;

use std::time::{Duration, Instant};

use common::azurite::Azurite;
use common::faulty_storage::{Fault, FaultyStorage};
use common::{Handler, issue_token, metric_value, metrics_text, no_redirects};
use reqwest::StatusCode;

const CONTAINER: &str = "nx-cache";
const METRICS: &str = "metrics-token-0123456789";

/// The settings of a handler that reaches storage at `connection_string`.
fn storage_env(connection_string: String) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_STORAGE_CONNECTION_STRING", connection_string),
        ("AZURE_STORAGE_CONTAINER", CONTAINER.to_string()),
        ("NX_CACHE_METRICS_TOKEN", METRICS.to_string()),
    ]
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

async fn put(base: &str, hash: u32, token: &str, body: &[u8]) {
    let status = no_redirects()
        .put(format!("{base}/v1/cache/{hash}"))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK, "PUT {hash}");
}

/// A GET through the handler, redirects not followed: (status, Location, body).
async fn get(base: &str, hash: u32, token: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = no_redirects()
        .get(format!("{base}/v1/cache/{hash}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, location, response.bytes().await.unwrap().to_vec())
}

/// Stores entry `hash` (`len` bytes), makes its first two storage reads fail with `fault`, and
/// GETs it: answered `200` with its exact bytes (not redirected), after exactly three reads.
async fn whole_after_two_failed_reads(
    front: &FaultyStorage,
    base: &str,
    token: &str,
    (hash, len): (u32, usize),
    fault: Fault,
) {
    let body = pattern(len, hash);
    put(base, hash, token, &body).await;
    front.fail_reads(fault, 2);
    let (status, location, bytes) = get(base, hash, token).await;
    assert_eq!((status, location), (StatusCode::OK, None), "{fault:?}");
    assert!(bytes == body, "{fault:?}: exact bytes");
    assert_eq!(
        front.seen(&format!("GET /devstoreaccount1/{CONTAINER}/org/{hash}?")),
        3,
        "{fault:?}: two failed reads, then a whole one"
    );
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn metric(base: &str, name: &str) -> u64 {
    metric_value(&metrics_text(base, METRICS).await, name).unwrap_or_else(|| panic!("{name}"))
}

/// Waits (bounded) until `ready` holds, checking ten times a second.
async fn until(limit: Duration, what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The issue's burst: 200 concurrent GETs of one 100 KB entry that this instance has never seen
/// (stored by another). Every one gets the exact bytes; storage sees one existence check and one
/// read, not 200 (single flight, then the memory copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_gets_of_a_hot_entry_make_one_storage_read() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let body = pattern(100_000, 1);
    let client = azurite.http_client();
    azurite
        .put_blob(&client, CONTAINER, "org/4242", body.clone())
        .await;
    let handler = Handler::start_with(&storage_env(azurite.connection_string()), &[]);
    let token = issue_token(&["--org"]);
    let client = no_redirects();
    let gets: Vec<_> = (0..200)
        .map(|_| {
            let (client, token) = (client.clone(), token.clone());
            let url = format!("{}/v1/cache/4242", handler.base_url);
            tokio::spawn(async move {
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                let location = response.headers().contains_key("location");
                (response.status(), location, response.bytes().await.unwrap())
            })
        })
        .collect();
    for get in gets {
        let (status, location, bytes) = get.await.unwrap();
        assert_eq!((status, location), (StatusCode::OK, false));
        assert!(bytes.as_ref() == body.as_slice(), "exact bytes");
    }
    azurite.settle(None).await;
    let reads = azurite.requests_matching(&format!("\"GET /devstoreaccount1/{CONTAINER}/org/4242"));
    let checks =
        azurite.requests_matching(&format!("\"HEAD /devstoreaccount1/{CONTAINER}/org/4242"));
    assert!((1..=10).contains(&reads), "{reads} storage reads");
    assert!(checks <= 10, "{checks} existence checks");
    let base = &handler.base_url;
    let storage = metric(base, "nx_cache_inline_hits_storage_total").await;
    let shared = metric(base, "nx_cache_inline_hits_coalesced_total").await
        + metric(base, "nx_cache_inline_hits_memory_total").await;
    assert_eq!(storage, reads as u64, "each read answered one GET");
    assert_eq!(
        storage + shared,
        200,
        "the others shared a read or the copy"
    );
}

/// Large entries keep the redirect to a read-only SAS URL; small ones (up to the limit, 1 MiB)
/// are answered with their bytes; `NX_CACHE_DOWNLOAD=redirect` redirects every hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_are_redirected_and_small_ones_answered_whole() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&storage_env(azurite.connection_string()), &[]);
    let token = issue_token(&["--org"]);
    let base = &handler.base_url;
    let entries = [
        (1, pattern(1000, 1)),
        (2, pattern(1 << 20, 2)),
        (3, pattern((1 << 20) + 1, 3)),
        (4, pattern(20_000_000, 4)),
    ];
    for (hash, body) in &entries {
        put(base, *hash, &token, body).await;
    }
    for (hash, body) in &entries[..2] {
        let (status, location, bytes) = get(base, *hash, &token).await;
        assert_eq!((status, location), (StatusCode::OK, None), "entry {hash}");
        assert!(&bytes == body, "entry {hash}: exact bytes");
    }
    for (hash, body) in &entries[2..] {
        let bytes = follow_redirect(base, *hash, &token).await;
        assert!(&bytes == body, "entry {hash}: exact bytes");
    }
    // Every GET is a hit in the log, redirected or not.
    let hits: Vec<bool> = handler
        .logs()
        .iter()
        .filter(|l| l.contains("\"method\":\"GET\"") && l.contains("\"outcome\":\"hit\""))
        .map(|l| l.contains("\"redirected\":true"))
        .collect();
    assert_eq!(hits, [false, false, true, true]);

    let redirecting = Handler::start_with(
        &storage_env(azurite.connection_string()),
        &[("NX_CACHE_DOWNLOAD", "redirect")],
    );
    let bytes = follow_redirect(&redirecting.base_url, 1, &token).await;
    assert!(bytes == entries[0].1);
}

/// A GET that must be a `307` to a read-only SAS URL for one blob; the bytes found there.
async fn follow_redirect(base: &str, hash: u32, token: &str) -> Vec<u8> {
    let (status, location, _) = get(base, hash, token).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "entry {hash}");
    let location = location.unwrap();
    assert_eq!(query_param(&location, "sp").as_deref(), Some("r"));
    assert_eq!(query_param(&location, "sr").as_deref(), Some("b"));
    let response = reqwest::get(&location).await.unwrap();
    response.bytes().await.unwrap().to_vec()
}

/// Blob reads that fail as Azure documents (503 ServerBusy, 500 OperationTimedOut, a closed
/// connection, half a body) twice in a row: the handler retries and answers the whole entry.
/// A read that never succeeds is a miss logged `storage-error` once the budget is spent, never a
/// `200` with a short body; a refusal is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reads_are_retried_and_a_read_that_cannot_finish_is_a_miss() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let front = FaultyStorage::start(azurite.port).await;
    let handler = Handler::start_with(&storage_env(front.connection_string()), &[]);
    let token = issue_token(&["--org"]);
    let base = &handler.base_url;
    let faults = [
        Fault::ServerBusy,
        Fault::OperationTimedOut,
        Fault::Closed,
        Fault::HalfBody,
    ];
    for (hash, fault) in (10..).zip(faults) {
        whole_after_two_failed_reads(&front, base, &token, (hash, 300_000), fault).await;
    }
    assert_eq!(front.injected(), 8);
    assert!(metric(base, "nx_cache_inline_retries_total").await >= 8);

    // Never whole: a miss after the budget (5 s), counted as a storage error.
    front.fail_reads(Fault::HalfBody, usize::MAX);
    put(base, 20, &token, &pattern(300_000, 20)).await;
    let started = Instant::now();
    let (status, location, _) = get(base, 20, &token).await;
    assert_eq!((status, location), (StatusCode::NOT_FOUND, None));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(front.seen(&format!("GET /devstoreaccount1/{CONTAINER}/org/20?")) >= 3);
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("\"outcome\":\"storage-error\"") && l.contains("/v1/cache/20"))
    );

    // A refusal: one attempt, then a miss.
    front.fail_reads(Fault::Refused, usize::MAX);
    put(base, 21, &token, &pattern(1000, 21)).await;
    assert_eq!(get(base, 21, &token).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        front.seen(&format!("GET /devstoreaccount1/{CONTAINER}/org/21?")),
        1
    );
}

/// Proxy mode (clients that cannot reach storage) reads small entries whole in the same way:
/// half a body twice, then the whole entry, never a short `200`; a large entry is streamed
/// through the handler, never redirected: a failure before its body is retried, and a body that
/// breaks off goes on from where it stopped (a bounded number of times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_reads_small_entries_whole_and_streams_large_ones() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let front = FaultyStorage::start(azurite.port).await;
    let handler = Handler::start_with(
        &storage_env(front.connection_string()),
        &[("NX_CACHE_DOWNLOAD", "proxy")],
    );
    let token = issue_token(&["--org"]);
    let base = &handler.base_url;
    whole_after_two_failed_reads(&front, base, &token, (41, 300_000), Fault::HalfBody).await;
    assert_eq!(metric(base, "nx_cache_inline_hits_storage_total").await, 1);

    // A large entry's reads break off twice (the first GET and the first resumption).
    whole_after_two_failed_reads(&front, base, &token, (42, 3 << 20), Fault::HalfBody).await;
    assert_eq!(metric(base, "nx_cache_download_resumes_total").await, 2);
    assert_eq!(metric(base, "nx_cache_inline_hits_storage_total").await, 1);
    let (status, _, bytes) = get(base, 41, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == pattern(300_000, 41));
    assert_eq!(metric(base, "nx_cache_inline_hits_memory_total").await, 1);

    // Failures before the body are retried: the client has had nothing yet.
    for (hash, fault) in [(44, Fault::ServerBusy), (45, Fault::Closed)] {
        whole_after_two_failed_reads(&front, base, &token, (hash, 3 << 20), fault).await;
    }

    // Storage that never finishes a read: the body ends cut short after the last resumption,
    // within seconds.
    front.fail_reads(Fault::HalfBody, usize::MAX);
    put(base, 43, &token, &pattern(3 << 20, 43)).await;
    let started = Instant::now();
    let response = no_redirects()
        .get(format!("{base}/v1/cache/43"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.is_err(), "the body is cut short");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        front.seen(&format!("GET /devstoreaccount1/{CONTAINER}/org/43?")),
        7,
        "one GET, six resumptions (MAX_RESUMES)"
    );
}

/// Past `NX_CACHE_INLINE_MEMORY`, a small entry is redirected (the handler holds no more, the
/// client still gets its hit); once the bytes held are sent, small entries are inline again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_inline_memory_a_small_entry_is_redirected() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let front = FaultyStorage::start(azurite.port).await;
    let handler = Handler::start_with(
        &storage_env(front.connection_string()),
        &[
            ("NX_CACHE_INLINE_MAX", "256K"),
            ("NX_CACHE_INLINE_MEMORY", "300K"),
        ],
    );
    let token = issue_token(&["--org"]);
    let base = handler.base_url.clone();
    let (held, other) = (pattern(200_000, 31), pattern(200_000, 32));
    put(&base, 31, &token, &held).await;
    put(&base, 32, &token, &other).await;

    front.hold(&format!("{CONTAINER}/org/31"));
    let reading = {
        let (base, token) = (base.clone(), token.clone());
        tokio::spawn(async move { get(&base, 31, &token).await })
    };
    let read = format!("GET /devstoreaccount1/{CONTAINER}/org/31?");
    until(Duration::from_secs(10), "the held read", async || {
        front.seen(&read) == 1
    })
    .await;
    let (status, location, _) = get(&base, 32, &token).await;
    assert_eq!(
        status,
        StatusCode::TEMPORARY_REDIRECT,
        "200 KB held, 200 more would pass 300K"
    );
    let bytes = reqwest::get(location.unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.as_ref() == other.as_slice());
    assert_eq!(metric(&base, "nx_cache_inline_over_memory_total").await, 1);

    front.release();
    let (status, _, bytes) = reading.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == held);
    until(
        Duration::from_secs(10),
        "the held bytes released",
        async || metric(&base, "nx_cache_inline_memory_bytes").await == 0,
    )
    .await;
    let (status, location, bytes) = get(&base, 32, &token).await;
    assert_eq!((status, location), (StatusCode::OK, None));
    assert!(bytes == other);
}

/// A storage error seen by a request wakes the health watch: with a probe every 5 minutes, an
/// outage is still confirmed within seconds of the first failed read, and from then on even a
/// large entry the instance knows is a miss, not a redirect into the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_on_the_request_path_wakes_the_health_watch() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let front = FaultyStorage::start(azurite.port).await;
    let handler = Handler::start_with(
        &storage_env(front.connection_string()),
        &[("NX_CACHE_HEALTH_INTERVAL", "5m")],
    );
    handler
        .wait_for_log(Duration::from_secs(30), |l| l.contains("storage ready"))
        .expect("ready");
    let token = issue_token(&["--org"]);
    let base = &handler.base_url;
    put(base, 41, &token, &pattern(1000, 41)).await;
    put(base, 42, &token, &pattern(2 << 20, 42)).await;
    let probe = format!("HEAD /devstoreaccount1/{CONTAINER}/.nx-cache-probe");
    let probes_before = front.seen(&probe);

    front.outage(true);
    let started = Instant::now();
    let (status, _, _) = get(base, 41, &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    handler
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("storage unavailable")
        })
        .unwrap_or_else(|| panic!("not noticed:\n{}", handler.logs().join("\n")));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "noticed within seconds, not at the next probe in 5 minutes"
    );
    assert!(front.seen(&probe) > probes_before, "the watch probed");
    let (status, location, _) = get(base, 42, &token).await;
    assert_eq!(
        (status, location),
        (StatusCode::NOT_FOUND, None),
        "no redirect into the outage"
    );
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// The memory copy follows storage within the bound (`CONFIRMED_FOR`, 30 s): an entry deleted
/// behind the instance's back stops being served, a replaced one is served with its new bytes,
/// and an unchanged one is confirmed with one existence check, not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_follows_storage_within_the_bound() {
    const BOUND: Duration = nx_azure_cache::storage::CONFIRMED_FOR;
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&storage_env(azurite.connection_string()), &[]);
    let token = issue_token(&["--org"]);
    let base = &handler.base_url;
    for hash in [51, 52, 53] {
        let body = pattern(10_000, hash);
        put(base, hash, &token, &body).await;
        assert_eq!(get(base, hash, &token).await.2, body, "read and kept");
    }
    let client = azurite.http_client();
    azurite.delete_blob(&client, CONTAINER, "org/51").await;
    azurite.delete_blob(&client, CONTAINER, "org/52").await;
    let replaced = pattern(12_345, 99);
    azurite
        .put_blob(&client, CONTAINER, "org/52", replaced.clone())
        .await;
    let changed = Instant::now();
    // Within the bound the kept copy is served (no storage call).
    let memory_before = metric(base, "nx_cache_inline_hits_memory_total").await;
    assert_eq!(get(base, 51, &token).await.0, StatusCode::OK);
    assert_eq!(
        metric(base, "nx_cache_inline_hits_memory_total").await,
        memory_before + 1
    );
    let unchanged = pattern(10_000, 53);
    until(
        BOUND + Duration::from_secs(15),
        "storage's state served",
        async || {
            let deleted = get(base, 51, &token).await.0 == StatusCode::NOT_FOUND;
            let new_bytes = get(base, 52, &token).await.2 == replaced;
            assert_eq!(get(base, 53, &token).await.2, unchanged);
            let confirmed = metric(base, "nx_cache_inline_hits_confirmed_total").await >= 1;
            deleted && new_bytes && confirmed
        },
    )
    .await;
    assert!(changed.elapsed() <= BOUND + Duration::from_secs(15));
    azurite.settle(None).await;
    assert_eq!(
        azurite.requests_matching(&format!("\"GET /devstoreaccount1/{CONTAINER}/org/53")),
        1,
        "the unchanged entry was read once"
    );
}

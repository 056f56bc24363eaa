//! Retention of the embedded store (`NX_CACHE_MAX_SIZE`) over real HTTP: under a write load
//! twice the limit the store is back within the limit plus one artifact as soon as the background
//! eviction has caught up with each upload, keeps what was read most
//! recently (also across a restart), and never deletes an entry while it is being read.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{Handler, issue_token};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Bytes of every entry file under the data directory (what the store holds; the record files
/// beside the entries, who wrote each, are not entries and `NX_CACHE_MAX_SIZE` does not count
/// them).
fn store_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for folder in ["org", "teams"] {
        total += folder_bytes(&dir.join(folder));
    }
    total
}

/// How long eviction may take to catch up with an upload before the test calls the bound broken.
const SETTLE: Duration = Duration::from_secs(10);

/// What the store holds once eviction has caught up: eviction runs in the background, woken by
/// the upload that went over the limit, so right after that upload's answer the store may still
/// hold it (on a loaded machine, the next upload's too). Waits until the store is within `bound`,
/// for at most [`SETTLE`], and returns what it holds then.
async fn settled_bytes(dir: &Path, bound: u64) -> u64 {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let now = store_bytes(dir);
        if now <= bound || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    // Entries may be evicted while this walks: a vanished one counts for nothing.
    entries
        .flatten()
        .map(|e| {
            let Ok(meta) = e.metadata() else { return 0 };
            if meta.is_dir() {
                folder_bytes(&e.path())
            } else if e.file_name().to_string_lossy().ends_with(".record") {
                0
            } else {
                meta.len()
            }
        })
        .sum()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn put(client: &reqwest::Client, base: &str, token: &str, hash: &str, body: Vec<u8>) {
    let response = client
        .put(format!("{base}/v1/cache/{hash}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "PUT {hash}");
}

async fn get(client: &reqwest::Client, base: &str, token: &str, hash: &str) -> Option<Vec<u8>> {
    let response = client
        .get(format!("{base}/v1/cache/{hash}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Some(response.bytes().await.unwrap().to_vec()),
        404 => None,
        other => panic!("GET {hash}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_twice_its_limit_the_store_keeps_its_bound_what_was_read_and_what_is_being_read() {
    let max = 32 * MIB;
    let artifact = 512 * KIB;
    let handler = Handler::start(&[
        ("NX_CACHE_MAX_SIZE", "32M"),
        ("NX_CACHE_SEND_TIMEOUT", "5m"),
        ("NX_CACHE_METRICS_TOKEN", "metrics-token-0123456789"),
    ]);
    let base = handler.base_url.clone();
    let token = issue_token(&["--org"]);
    let client = reqwest::Client::new();

    // Four entries that will be read throughout, then a big one a client starts to download
    // and stalls on: the least recently used entry, but being read.
    for h in 0..4 {
        put(
            &client,
            &base,
            &token,
            &format!("hot{h}"),
            pattern(artifact, h),
        )
        .await;
    }
    let big = pattern(12 * MIB, 99);
    put(&client, &base, &token, "big", big.clone()).await;
    let mut slow = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    slow.write_all(
        format!("GET /v1/cache/big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = slow.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // A write load of twice the limit, with hot entries read in between.
    let mut largest = 0;
    for i in 0..(2 * max / artifact) {
        put(
            &client,
            &base,
            &token,
            &format!("cold{i}"),
            pattern(artifact, i as u8),
        )
        .await;
        let hot = format!("hot{}", i % 4);
        assert!(
            get(&client, &base, &token, &hot).await.is_some(),
            "{hot} kept"
        );
        let now = settled_bytes(&handler.data_dir, (max + artifact) as u64).await;
        largest = largest.max(now);
        assert!(
            now <= (max + artifact) as u64,
            "after {i} uploads the store holds {now} bytes, over {max} + one artifact, and eviction did not bring it back within {SETTLE:?}"
        );
    }
    handler
        .wait_for_log(Duration::from_secs(10), |l| l.contains("eviction pass"))
        .expect("evictions are logged");
    assert!(
        largest > (max * 8 / 10) as u64,
        "the load reached the limit: {largest}"
    );
    assert!(
        get(&client, &base, &token, "cold0").await.is_none(),
        "the oldest unread are gone"
    );
    assert!(
        handler.data_dir.join("org/big").exists(),
        "never deleted while being read"
    );

    // The stalled download finishes with every byte.
    let mut received = head[..n].to_vec();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; MIB];
    let body_start = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = slow.read(&mut buf).unwrap();
        received.extend_from_slice(&buf[..n]);
    };
    while received.len() - body_start < big.len() {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "the download ended early");
        received.extend_from_slice(&buf[..n]);
    }
    assert!(
        received[body_start..] == big[..],
        "the bytes read are the entry's"
    );

    let metrics = common::metrics_text(&base, "metrics-token-0123456789").await;
    let evicted = common::metric_value(&metrics, "nx_cache_evicted_entries_total").unwrap();
    assert!(evicted > 0, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("nx_cache_store_bytes ")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_read_before_a_restart_still_counts_after_it() {
    let artifact = 256 * KIB;
    let data = tempfile::tempdir().unwrap();
    let token = issue_token(&["--org"]);
    let client = reqwest::Client::new();
    {
        let handler = Handler::start_in(data.path(), &[("NX_CACHE_MAX_SIZE", "4M")]);
        // 3 MiB, under the limit: nothing is evicted yet. The first four are read last.
        for i in 0..12 {
            put(
                &client,
                &handler.base_url,
                &token,
                &format!("e{i}"),
                pattern(artifact, i),
            )
            .await;
        }
        for i in 0..4 {
            assert!(
                get(&client, &handler.base_url, &token, &format!("e{i}"))
                    .await
                    .is_some()
            );
        }
    }
    // A new process indexes the directory, then a load pushes the store over its limit: 4.5 MiB,
    // evicted down to the low-water mark (3.6 MiB) by removing 1 MiB of the least recently used.
    let handler = Handler::start_in(data.path(), &[("NX_CACHE_MAX_SIZE", "4M")]);
    for i in 12..18 {
        put(
            &client,
            &handler.base_url,
            &token,
            &format!("e{i}"),
            pattern(artifact, i),
        )
        .await;
    }
    handler
        .wait_for_log(Duration::from_secs(10), |l| l.contains("eviction pass"))
        .expect("an eviction pass");
    for i in 0..4 {
        assert!(
            data.path().join(format!("org/e{i}")).exists(),
            "e{i} was read before the restart"
        );
    }
    let evicted_unread = (4..12)
        .filter(|i| !data.path().join(format!("org/e{i}")).exists())
        .count();
    assert!(evicted_unread > 0, "the unread ones went first");
    assert!(store_bytes(data.path()) <= (4 * MIB + artifact) as u64);
}

/// `handler purge` on the directory of a running server with retention: the entries go with
/// their records, and the server's size accounting follows (what it counts is what is there),
/// so eviction is not set off by bytes that are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_beside_a_running_server_keeps_its_size_accounting_right() {
    const METRICS: &str = "metrics-token-0123456789";
    let data = tempfile::tempdir().unwrap();
    let handler = Handler::start_in(
        data.path(),
        &[
            ("NX_CACHE_MAX_SIZE", "1G"),
            ("NX_CACHE_METRICS_TOKEN", METRICS),
        ],
    );
    let base = handler.base_url.clone();
    let client = reqwest::Client::new();
    let good = issue_token(&["--org", "--subject", "good"]);
    let bad = issue_token(&["--org", "--subject", "leaked"]);
    for i in 0..6 {
        let token = if i % 2 == 0 { &good } else { &bad };
        put(
            &client,
            &base,
            token,
            &format!("{i}"),
            pattern(10 * KIB, i as u8),
        )
        .await;
    }
    let bytes = || async {
        let text = common::metrics_text(&base, METRICS).await;
        common::metric_value(&text, "nx_cache_store_bytes").unwrap()
    };
    assert_eq!(bytes().await, 60 * KIB as u64);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["purge", "--subject", "leaked", "--yes"])
        .env_clear()
        .env("NX_CACHE_DIR", data.path())
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(data.path().join("org"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".record"))
        .collect();
    assert_eq!(left.len(), 3);
    let records = std::fs::read_dir(data.path().join("org")).unwrap().count() - left.len();
    assert_eq!(records, 3, "the purged entries' records went with them");
    // Reads of the purged entries miss, and the server stops counting them.
    for i in [1, 3, 5] {
        assert_eq!(get(&client, &base, &good, &format!("{i}")).await, None);
    }
    assert_eq!(bytes().await, 30 * KIB as u64);
    // Stored again: counted again, once.
    put(&client, &base, &good, "1", pattern(5 * KIB, 9)).await;
    assert_eq!(bytes().await, 35 * KIB as u64);
}

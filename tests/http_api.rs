//! The HTTP contract over real loopback HTTP against the `handler` binary on its embedded store.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Handler, issue_token};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn put(base: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = client().put(format!("{base}{path}")).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn get(base: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn root_and_health_answer_200() {
    let server = Handler::start(&[]);
    for path in ["/", "/health"] {
        assert_eq!(
            get(&server.base_url, path, None).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn put_then_get_and_entries_are_never_overwritten() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let base = &server.base_url;
    assert_eq!(
        get(base, "/v1/cache/42", Some(&token)).await.status(),
        StatusCode::NOT_FOUND
    );

    let stored = put(base, "/v1/cache/42", Some(&token), b"first".to_vec()).await;
    assert_eq!(stored.status(), StatusCode::OK);
    let hit = get(base, "/v1/cache/42", Some(&token)).await;
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(content_type(&hit), "application/octet-stream");
    assert_eq!(hit.bytes().await.unwrap().as_ref(), b"first");

    let overwrite = put(base, "/v1/cache/42", Some(&token), b"poison".to_vec()).await;
    assert_eq!(overwrite.status(), StatusCode::CONFLICT);
    let again = get(base, "/v1/cache/42", Some(&token)).await;
    assert_eq!(again.bytes().await.unwrap().as_ref(), b"first");
}

#[tokio::test]
async fn large_artifacts_round_trip_byte_for_byte() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let body: Vec<u8> = (0..24 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let stored = put(&server.base_url, "/v1/cache/7", Some(&token), body.clone()).await;
    assert_eq!(stored.status(), StatusCode::OK);
    let hit = get(&server.base_url, "/v1/cache/7", Some(&token)).await;
    assert_eq!(hit.content_length(), Some(body.len() as u64));
    assert!(hit.bytes().await.unwrap().as_ref() == body.as_slice());
}

#[tokio::test]
async fn bad_tokens_get_401_plain_text_and_touch_nothing() {
    let server = Handler::start(&[]);
    let base = &server.base_url;
    let good = issue_token(&["--org"]);
    assert_eq!(
        put(base, "/v1/cache/1", Some(&good), b"x".to_vec())
            .await
            .status(),
        StatusCode::OK
    );

    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("empty", Some(String::new())),
        ("garbage", Some("garbage".into())),
        ("tampered signature", Some(tampered)),
    ];
    for (name, token) in cases {
        let mut request = client().get(format!("{base}/v1/cache/1"));
        if let Some(token) = &token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            content_type(&response),
            "text/plain",
            "{name}: Nx needs exactly text/plain"
        );
        let message = response.text().await.unwrap();
        assert!(
            message.contains("token"),
            "{name}: message should say what to fix: {message}"
        );

        let mut request = client().put(format!("{base}/v1/cache/2")).body("y");
        if let Some(token) = &token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
    assert_eq!(
        server.entries("org"),
        1,
        "no refused PUT may store anything"
    );
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let server = Handler::start(&[]);
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["token", "issue", "--org"])
        .env_clear()
        .env(
            "NX_CACHE_JWT_SECRET",
            "another-secret-that-is-long-enough-0123456789",
        )
        .output()
        .unwrap();
    let token = String::from_utf8(other.stdout).unwrap().trim().to_owned();
    let response = get(&server.base_url, "/v1/cache/1", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let token = issue_token(&["--org"]);
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let jti = claims["jti"].as_str().unwrap();
    let server = Handler::start(&[("NX_CACHE_REVOKED_TOKENS", &format!("other,{jti}"))]);
    let response = get(&server.base_url, "/v1/cache/1", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.unwrap().contains("revoked"));
    let fresh = issue_token(&["--org"]);
    assert_eq!(
        get(&server.base_url, "/v1/cache/1", Some(&fresh))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn read_only_tokens_read_but_never_write() {
    let server = Handler::start(&[]);
    let base = &server.base_url;
    let writer = issue_token(&["--org"]);
    let reader = issue_token(&["--org", "--read-only"]);
    put(base, "/v1/cache/10", Some(&writer), b"built".to_vec()).await;

    let refused = put(base, "/v1/cache/11", Some(&reader), b"x".to_vec()).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(content_type(&refused), "text/plain");
    assert!(refused.text().await.unwrap().contains("read-only"));
    assert_eq!(
        get(base, "/v1/cache/11", Some(&writer)).await.status(),
        StatusCode::NOT_FOUND
    );
    let hit = get(base, "/v1/cache/10", Some(&reader)).await;
    assert_eq!(hit.bytes().await.unwrap().as_ref(), b"built");
}

#[tokio::test]
async fn teams_cannot_read_or_write_each_other() {
    let server = Handler::start(&[]);
    let base = &server.base_url;
    let web = issue_token(&["--team", "web"]);
    let api = issue_token(&["--team", "api"]);
    let org = issue_token(&["--org"]);
    assert_eq!(
        put(
            base,
            "/teams/api/v1/cache/5",
            Some(&api),
            b"api-entry".to_vec()
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        put(base, "/v1/cache/5", Some(&org), b"org-entry".to_vec())
            .await
            .status(),
        StatusCode::OK
    );

    // Reads outside a token's scope are misses (a GET error would abort the user's build).
    assert_eq!(
        get(base, "/teams/api/v1/cache/5", Some(&web))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(base, "/teams/api/v1/cache/5", Some(&org))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(base, "/v1/cache/5", Some(&web)).await.status(),
        StatusCode::NOT_FOUND
    );
    // Writes outside a token's scope are refused before anything is stored.
    let poison = put(
        base,
        "/teams/api/v1/cache/6",
        Some(&web),
        b"poison".to_vec(),
    )
    .await;
    assert_eq!(poison.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        put(base, "/v1/cache/6", Some(&web), b"p".to_vec())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(server.entries("teams/api"), 1);
    assert_eq!(server.entries("teams/web"), 0);
    assert_eq!(server.entries("org"), 1);
    // Same hash, separate namespaces.
    let own = get(base, "/teams/api/v1/cache/5", Some(&api)).await;
    assert_eq!(own.bytes().await.unwrap().as_ref(), b"api-entry");

    let both = issue_token(&["--team", "web", "--team", "api"]);
    assert_eq!(
        get(base, "/teams/api/v1/cache/5", Some(&both))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_hashes_and_team_names_get_400() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org", "--team", "web"]);
    let long = "1".repeat(129);
    let paths = [
        "/v1/cache/12.3".to_string(),
        "/v1/cache/a%2Fb".to_string(),
        "/v1/cache/%C3%A9".to_string(),
        format!("/v1/cache/{long}"),
        "/teams/Web/v1/cache/1".to_string(),
        "/teams/..%2Forg/v1/cache/1".to_string(),
        "/teams/-x/v1/cache/1".to_string(),
    ];
    for path in &paths {
        let got = get(&server.base_url, path, Some(&token)).await;
        assert_eq!(got.status(), StatusCode::BAD_REQUEST, "GET {path}");
        let put = put(&server.base_url, path, Some(&token), b"x".to_vec()).await;
        assert_eq!(put.status(), StatusCode::BAD_REQUEST, "PUT {path}");
    }
    // Dot segments are sent raw: an HTTP client library would normalise them away.
    for path in [
        "/v1/cache/..",
        "/v1/cache/%2e%2e",
        "/teams/../v1/cache/1",
        "/teams/%2E%2E/v1/cache/1",
    ] {
        let addr = server.base_url.trim_start_matches("http://").to_owned();
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
        let status = tokio::task::spawn_blocking(move || {
            raw_exchange(&addr, request.as_bytes(), false, Duration::from_secs(20))
        })
        .await
        .unwrap();
        assert!(status.contains("400"), "GET {path}: {status}");
    }
    assert_eq!(server.entries("org"), 0);
}

#[tokio::test]
async fn put_without_content_length_gets_411() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"abc"),
    )]);
    let response = client()
        .put(format!("{}/v1/cache/3", server.base_url))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::LENGTH_REQUIRED);
    assert_eq!(server.entries("org"), 0);
}

#[tokio::test]
async fn oversized_artifacts_are_not_stored_with_a_message_naming_the_limit() {
    let server = Handler::start(&[("NX_CACHE_MAX_ARTIFACT_SIZE", "1K")]);
    let token = issue_token(&["--org"]);
    let response = put(
        &server.base_url,
        "/v1/cache/8",
        Some(&token),
        vec![0u8; 1025],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(content_type(&response), "text/plain");
    assert!(response.text().await.unwrap().contains("1024 bytes"));
    let fits = put(
        &server.base_url,
        "/v1/cache/9",
        Some(&token),
        vec![0u8; 1024],
    )
    .await;
    assert_eq!(fits.status(), StatusCode::OK);
    assert_eq!(server.entries("org"), 1);
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("over the size limit"))
    );
}

#[tokio::test]
async fn server_modes_override_tokens() {
    let data = tempfile::tempdir().unwrap();
    let token = issue_token(&["--org"]);
    {
        let server = Handler::start_in(data.path(), &[]);
        assert_eq!(
            put(&server.base_url, "/v1/cache/1", Some(&token), b"a".to_vec())
                .await
                .status(),
            StatusCode::OK
        );
    }
    {
        let server = Handler::start_in(data.path(), &[("NX_CACHE_MODE", "read-only")]);
        assert_eq!(
            get(&server.base_url, "/v1/cache/1", Some(&token))
                .await
                .status(),
            StatusCode::OK
        );
        let refused = put(&server.base_url, "/v1/cache/2", Some(&token), b"b".to_vec()).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.text().await.unwrap().contains("read-only"));
    }
    {
        let server = Handler::start_in(data.path(), &[("NX_CACHE_MODE", "no-cache")]);
        assert_eq!(
            get(&server.base_url, "/v1/cache/1", Some(&token))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        let refused = put(&server.base_url, "/v1/cache/2", Some(&token), b"b".to_vec()).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    assert!(!data.path().join("org/2").exists());
}

/// Sends raw bytes and returns the status line, failing (not hanging) after `limit`.
fn raw_exchange(addr: &str, request: &[u8], close_write: bool, limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = [0u8; 512];
    let n = stream
        .read(&mut buf)
        .expect("the server must answer before the read timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_stores_nothing_and_a_retry_succeeds() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let addr = server.base_url.trim_start_matches("http://").to_owned();
    let request = format!(
        "PUT /v1/cache/77 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 1000\r\n\r\n0123456789"
    );
    let status = tokio::task::spawn_blocking(move || {
        raw_exchange(&addr, request.as_bytes(), true, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(
        !status.contains("200"),
        "a cut-off upload must not be acknowledged: {status}"
    );
    assert_eq!(server.entries("org"), 0);
    assert_eq!(
        std::fs::read_dir(server.data_dir.join(".tmp"))
            .unwrap()
            .count(),
        0
    );
    let retry = put(
        &server.base_url,
        "/v1/cache/77",
        Some(&token),
        vec![1u8; 1000],
    )
    .await;
    assert_eq!(retry.status(), StatusCode::OK);
}

#[tokio::test]
async fn refused_puts_are_answered_before_the_body_is_sent() {
    let server = Handler::start(&[]);
    let writer = issue_token(&["--org"]);
    let reader = issue_token(&["--org", "--read-only"]);
    put(
        &server.base_url,
        "/v1/cache/55",
        Some(&writer),
        b"x".to_vec(),
    )
    .await;
    let cases = [
        (
            "read-only token",
            "56",
            format!("authorization: Bearer {reader}\r\n"),
            "403",
        ),
        ("no token", "56", String::new(), "401"),
        (
            "existing entry",
            "55",
            format!("authorization: Bearer {writer}\r\n"),
            "409",
        ),
    ];
    for (name, hash, auth, expected) in cases {
        let addr = server.base_url.trim_start_matches("http://").to_owned();
        // Headers announce 500 MB, and not one byte of body follows: the answer must come anyway.
        let request = format!(
            "PUT /v1/cache/{hash} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 500000000\r\n\r\n"
        );
        let status = tokio::task::spawn_blocking(move || {
            raw_exchange(&addr, request.as_bytes(), false, Duration::from_secs(20))
        })
        .await
        .unwrap();
        assert!(status.contains(expected), "{name}: got {status:?}");
    }
}

#[tokio::test]
async fn concurrent_puts_of_one_hash_store_exactly_one_intact_entry() {
    let server = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let bodies: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 256 * 1024]).collect();
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let (base, token) = (server.base_url.clone(), token.clone());
            tokio::spawn(async move {
                put(&base, "/v1/cache/999", Some(&token), body)
                    .await
                    .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let stored = get(&server.base_url, "/v1/cache/999", Some(&token))
        .await
        .bytes()
        .await
        .unwrap();
    assert!(
        bodies.iter().any(|b| b.as_slice() == stored.as_ref()),
        "the entry must be one whole body"
    );
}

#[tokio::test]
async fn metrics_are_off_by_default_and_protected_when_on() {
    let off = Handler::start(&[]);
    assert_eq!(
        get(&off.base_url, "/metrics", None).await.status(),
        StatusCode::NOT_FOUND
    );

    let metrics_token = "metrics-token-0123456789";
    let server = Handler::start(&[("NX_CACHE_METRICS_TOKEN", metrics_token)]);
    let base = &server.base_url;
    let token = issue_token(&["--org"]);
    put(base, "/v1/cache/1", Some(&token), b"12345".to_vec()).await;
    get(base, "/v1/cache/1", Some(&token))
        .await
        .bytes()
        .await
        .unwrap();
    get(base, "/v1/cache/2", Some(&token)).await;
    put(base, "/v1/cache/1", Some(&token), b"x".to_vec()).await;
    get(base, "/v1/cache/1", None).await;

    assert_eq!(
        get(base, "/metrics", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(base, "/metrics", Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED,
        "a cache token is not the metrics token"
    );
    let response = get(base, "/metrics", Some(metrics_token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for line in [
        "nx_cache_stores_total 1",
        "nx_cache_hits_total 1",
        "nx_cache_misses_total 1",
        "nx_cache_conflicts_total 1",
        "nx_cache_unauthorized_total 1",
        "nx_cache_bytes_served_total 5",
        "nx_cache_bytes_stored_total 5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

/// A refused upload is answered at once, and its body is read away, so the client never sees a
/// connection reset (which Nx would retry, then count as a failed task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_refused_uploads_get_clean_answers_never_resets() {
    let server = Handler::start(&[("NX_CACHE_MAX_ARTIFACT_SIZE", "4M")]);
    let reader = issue_token(&["--org", "--read-only"]);
    let writer = issue_token(&["--org"]);
    put(
        &server.base_url,
        "/v1/cache/1",
        Some(&writer),
        vec![1u8; 1000],
    )
    .await;
    let cases = [
        (
            Some(reader.clone()),
            "/v1/cache/2",
            8 << 20,
            StatusCode::FORBIDDEN,
        ),
        // Without a token only a brief drain is owed (Nx never sends a large PUT without one:
        // its GET already got the 401 that stops the run).
        (None, "/v1/cache/3", 4 << 10, StatusCode::UNAUTHORIZED),
        (
            Some(writer.clone()),
            "/v1/cache/1",
            3 << 20,
            StatusCode::CONFLICT,
        ),
        (
            Some(writer.clone()),
            "/v1/cache/4",
            6 << 20,
            StatusCode::FORBIDDEN,
        ),
    ];
    let mut tasks = Vec::new();
    for round in 0..5 {
        for (token, path, len, expected) in cases.clone() {
            let base = server.base_url.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut request = client
                    .put(format!("{base}{path}"))
                    .body(vec![round as u8; len]);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.map_err(|e| format!("{path}: {e:?}"))?;
                if response.status() != expected {
                    return Err(format!(
                        "{path}: {} instead of {expected}",
                        response.status()
                    ));
                }
                Ok(())
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.entries("org"), 1);
}

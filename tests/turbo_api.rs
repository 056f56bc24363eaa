//! Turborepo's remote cache API (`/v8/artifacts`) over real loopback HTTP against the `handler`
//! binary: every route and answer of the turbo client contract, on the embedded store and on
//! Azurite (metadata, redirects, tagged artifacts streamed, no extra storage round trip), the
//! namespaces `?slug=` and `?teamId=` select, and the bounds of what a client with a read-only
//! token can make the server do (query and events bodies, storage checks at once).

mod common;

use std::time::Duration;

use common::azurite::Azurite;
use common::{Handler, issue_token, metric_value, metrics_text, no_redirects};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const METRICS: &str = "metrics-token-0123456789";
const CONTAINER: &str = "turbo-cache";
/// A tag as turbo sends it in signature mode (base64 of an HMAC-SHA256).
const TAG: &str = "kP0XVq5Hn1h9Yc9DaeSQq0H0yq5pC7ZbZ6t1x0Yh0mA=";
const SHA: &str = "5a4da53a169cb32458e42e7c65f20e4664bc7cfa";

/// turbo's requests to one server, as one token and one `TURBO_TEAM` make them.
struct Turbo {
    base: String,
    token: String,
    /// The query string turbo appends to every request (`slug=web`).
    team: String,
}

impl Turbo {
    fn new(base: &str, token: &str, team: &str) -> Turbo {
        Turbo {
            base: base.to_owned(),
            token: token.to_owned(),
            team: team.to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v8/artifacts{path}?{}", self.base, self.team)
    }

    async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        no_redirects()
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// A PUT with turbo's headers: the duration, the commit and, in signature mode, the tag.
    async fn put(&self, hash: &str, body: &[u8], tag: Option<&str>) -> reqwest::Response {
        let mut request = no_redirects()
            .put(self.url(&format!("/{hash}")))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .header("x-artifact-duration", "1234")
            .header("x-artifact-sha", SHA)
            .body(body.to_vec());
        if let Some(tag) = tag {
            request = request.header("x-artifact-tag", tag);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, hash: &str) -> reqwest::Response {
        self.send(Method::GET, &format!("/{hash}")).await
    }

    async fn status(&self) -> Value {
        let response = self.send(Method::GET, "/status").await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        no_redirects()
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn query(&self, hashes: &[&str]) -> (StatusCode, Value) {
        let body = json!({ "hashes": hashes }).to_string().into_bytes();
        let response = self.post("", body).await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn events(&self, events: Value) -> StatusCode {
        self.post("/events", events.to_string().into_bytes())
            .await
            .status()
    }
}

/// `{"error": {"code", "message"}}`: the code and the message.
async fn error_of(response: reqwest::Response) -> (String, String) {
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "turbo's errors are JSON"
    );
    let body = json_of(response).await;
    (
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn request_lines(handler: &Handler) -> Vec<Value> {
    handler
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "request" && v["path"] != "/")
        .collect()
}

#[tokio::test]
async fn artifacts_are_stored_and_read_back_with_turbo_s_headers() {
    let handler = Handler::start(&[("NX_CACHE_METRICS_TOKEN", METRICS)]);
    let token = issue_token(&["--team", "web"]);
    let turbo = Turbo::new(&handler.base_url, &token, "slug=web");
    let hash = "d4b6abd95c64c706";

    assert_eq!(turbo.status().await, json!({"status": "enabled"}));
    let miss = turbo.get(hash).await;
    assert_eq!(miss.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(miss).await.0, "not_found");
    assert_eq!(
        turbo.send(Method::HEAD, &format!("/{hash}")).await.status(),
        StatusCode::NOT_FOUND
    );

    let stored = turbo.put(hash, b"zstd tar bytes", Some(TAG)).await;
    assert_eq!(stored.status(), StatusCode::OK);

    let hit = turbo.get(hash).await;
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(header(&hit, "x-artifact-duration").as_deref(), Some("1234"));
    assert_eq!(header(&hit, "x-artifact-tag").as_deref(), Some(TAG));
    assert_eq!(hit.bytes().await.unwrap().as_ref(), b"zstd tar bytes");

    let head = turbo.send(Method::HEAD, &format!("/{hash}")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length").as_deref(), Some("14"));
    assert_eq!(
        header(&head, "x-artifact-duration").as_deref(),
        Some("1234")
    );
    assert_eq!(header(&head, "x-artifact-tag").as_deref(), Some(TAG));
    assert!(head.bytes().await.unwrap().is_empty());

    // Never overwritten, and answered 200 so that `turbo --force` prints no warning.
    let again = turbo.put(hash, b"other bytes", None).await;
    assert_eq!(again.status(), StatusCode::OK);
    let body = json_of(again).await;
    assert_eq!(body["stored"], false);
    let hit = turbo.get(hash).await;
    assert_eq!(header(&hit, "x-artifact-tag").as_deref(), Some(TAG));
    assert_eq!(hit.bytes().await.unwrap().as_ref(), b"zstd tar bytes");

    // The record keeps the commit too (handler entries shows it).
    assert_eq!(handler.entries("turbo/teams/web"), 1);
    assert_eq!(handler.entries("teams/web"), 0, "no Nx entry was made");

    // The request lines name the client, the team's turbo namespace, the hash and outcome.
    let lines = request_lines(&handler);
    let conflict = lines
        .iter()
        .find(|l| l["method"] == "PUT" && l["outcome"] == "conflict")
        .expect("the second upload is logged as a conflict");
    assert_eq!(conflict["status"], 200);
    assert_eq!(conflict["client"], "turbo");
    assert_eq!(conflict["namespace"], "turbo:team:web");
    assert_eq!(conflict["hash"], hash);
    assert!(
        lines
            .iter()
            .all(|l| !l["path"].as_str().unwrap().contains('?')),
        "query strings are not logged"
    );
    let hit = lines
        .iter()
        .find(|l| l["method"] == "GET" && l["outcome"] == "hit")
        .unwrap();
    assert_eq!(hit["time_saved_ms"], 1234, "the time the hit saved: {hit}");
    assert!(
        lines
            .iter()
            .filter(|l| l["outcome"] != "hit")
            .all(|l| l["time_saved_ms"] == 0),
        "only hits save time"
    );
    let metrics = metrics_text(&handler.base_url, METRICS).await;
    assert_eq!(
        metric_value(
            &metrics,
            "nx_cache_namespace_hits_total{namespace=\"turbo:team:web\"}"
        ),
        Some(2)
    );
    assert_eq!(metric_value(&metrics, "nx_cache_conflicts_total"), Some(1));
}

/// `?slug=` and `?teamId=` name a team's namespace with the grants of `/teams/TEAM/`, `_org` the
/// org-wide one; a request naming none, two different ones, or no team name is refused. turbo's
/// entries and Nx's never read each other, even for a hash both could send.
#[tokio::test]
async fn teams_select_namespaces_and_turbo_never_reads_nx() {
    let handler = Handler::start(&[]);
    let token = issue_token(&["--org", "--team", "web"]);
    let base = &handler.base_url;
    let hash = "1234567890123456";
    let by_slug = Turbo::new(base, &token, "slug=web");
    let by_id = Turbo::new(base, &token, "teamId=web");
    let both = Turbo::new(base, &token, "teamId=web&slug=web");
    let org = Turbo::new(base, &token, "slug=_org");

    assert_eq!(
        by_slug.put(hash, b"web", None).await.status(),
        StatusCode::OK
    );
    for same in [&by_id, &both] {
        let hit = same.get(hash).await;
        assert_eq!(hit.status(), StatusCode::OK);
        assert_eq!(hit.bytes().await.unwrap().as_ref(), b"web");
    }
    assert_eq!(org.get(hash).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(org.put(hash, b"org", None).await.status(), StatusCode::OK);
    assert_eq!(org.get(hash).await.bytes().await.unwrap().as_ref(), b"org");
    assert_eq!(handler.entries("turbo/org"), 1);

    // An Nx entry of the same hash and namespace is another entry.
    let nx = reqwest::Client::new();
    let nx_url = format!("{base}/teams/web/v1/cache/{hash}");
    assert_eq!(
        nx.get(&nx_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "Nx never reads turbo's artifact"
    );
    let stored = nx
        .put(&nx_url)
        .bearer_auth(&token)
        .body("nx")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    assert_eq!(
        by_slug.get(hash).await.bytes().await.unwrap().as_ref(),
        b"web",
        "turbo never reads Nx's entry"
    );

    for (team, problem) in [
        ("", "no team"),
        ("slug=web&teamId=api", "name two caches"),
        ("slug=team_web", "malformed team name"),
        ("slug=Web", "malformed team name"),
        ("other=web", "no team"),
    ] {
        let turbo = Turbo::new(base, &token, team);
        let response = turbo.get(hash).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{team}");
        let (code, message) = error_of(response).await;
        assert_eq!(code, "bad_request");
        assert!(message.contains(problem), "{team}: {message}");
        // The status tells turbo's banner the cache is off for this team, and why.
        let status = turbo.status().await;
        assert_eq!(status["status"], "disabled", "{team}");
        assert!(
            status["message"].as_str().unwrap().contains(problem),
            "{status}"
        );
        assert_eq!(
            turbo.put(hash, b"x", None).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
}

/// A token that may not write gets the 403 turbo stops uploading on, naming its access; one
/// without access to the team gets misses and a status that says so; no valid token: 401 on
/// reads, the 403 on uploads. Nothing is stored by any of them.
#[tokio::test]
async fn tokens_that_may_not_write_get_turbo_s_403_and_misses() {
    let handler = Handler::start(&[]);
    let base = &handler.base_url;
    let writer = issue_token(&["--team", "web"]);
    let hash = "0000000000000abc";
    let web = Turbo::new(base, &writer, "slug=web");
    assert_eq!(
        web.put(hash, b"stored", None).await.status(),
        StatusCode::OK
    );

    let reader = Turbo::new(
        base,
        &issue_token(&["--team", "web", "--read-only"]),
        "slug=web",
    );
    assert_eq!(reader.status().await, json!({"status": "enabled"}));
    assert_eq!(reader.get(hash).await.status(), StatusCode::OK);
    let refused = reader.put("0000000000000def", b"x", None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (code, message) = error_of(refused).await;
    assert_eq!(code, "forbidden");
    assert!(
        message.contains("read-only") && message.contains("team web"),
        "{message}"
    );

    let stranger = Turbo::new(base, &issue_token(&["--team", "api"]), "slug=web");
    let status = stranger.status().await;
    assert_eq!(status["status"], "disabled");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("no access to this cache (a read-write token for team api)"),
        "{status}"
    );
    assert_eq!(stranger.get(hash).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        stranger
            .send(Method::HEAD, &format!("/{hash}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let (status, found) = stranger.query(&[hash]).await;
    assert_eq!((status, &found[hash]), (StatusCode::OK, &Value::Null));
    let refused = stranger.put("0000000000000def", b"x", None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (_, message) = error_of(refused).await;
    assert!(message.contains("team api"), "{message}");

    let nobody = Turbo::new(base, "not-a-token", "slug=web");
    let response = nobody.send(Method::GET, "/status").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(response).await.0, "unauthorized");
    assert_eq!(nobody.get(hash).await.status(), StatusCode::UNAUTHORIZED);
    let refused = nobody.put("0000000000000def", b"x", None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (_, message) = error_of(refused).await;
    assert!(message.contains("no valid token"), "{message}");

    assert_eq!(handler.entries("turbo/teams/web"), 1, "only the writer's");
}

/// What turbo sends with an artifact is checked before anything is stored.
#[tokio::test]
async fn malformed_turbo_headers_are_refused_before_storage() {
    let handler = Handler::start(&[]);
    let token = issue_token(&["--team", "web"]);
    let url = format!(
        "{}/v8/artifacts/00000000000000aa?slug=web",
        handler.base_url
    );
    for (name, value, wanted) in [
        ("x-artifact-duration", "12.5", "x-artifact-duration"),
        ("x-artifact-duration", "-3", "x-artifact-duration"),
        ("x-artifact-sha", "not-hex", "x-artifact-sha"),
        ("x-artifact-tag", "a b", "x-artifact-tag"),
        ("x-artifact-tag", &"A".repeat(300), "x-artifact-tag"),
    ] {
        let response = reqwest::Client::new()
            .put(&url)
            .bearer_auth(&token)
            .header(name, value)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{name}: {value}"
        );
        let (_, message) = error_of(response).await;
        assert!(message.starts_with(wanted), "{message}");
    }
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v8/artifacts/not%2Fa%2Fhash?slug=web",
            handler.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(handler.entries("turbo/teams/web"), 0);
}

/// `--dry` runs: the query answers each hash with its size, duration and tag, or null; a query
/// over the bound is refused with 413 (turbo then asks one HEAD at a time).
#[tokio::test]
async fn dry_run_queries_answer_each_hash() {
    let handler = Handler::start(&[]);
    let token = issue_token(&["--team", "web"]);
    let turbo = Turbo::new(&handler.base_url, &token, "slug=web");
    turbo.put("00000000000000a1", b"12345", Some(TAG)).await;
    turbo.put("00000000000000a2", b"123", None).await;
    let (status, found) = turbo
        .query(&[
            "00000000000000a1",
            "00000000000000a2",
            "00000000000000a3",
            "00000000000000a1",
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        json!({
            "00000000000000a1": {"size": 5, "taskDurationMs": 1234, "tag": TAG},
            "00000000000000a2": {"size": 3, "taskDurationMs": 1234, "tag": null},
            "00000000000000a3": null,
        })
    );

    let too_many: Vec<String> = (0..2001).map(|i| format!("{i:016x}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let (status, body) = turbo.query(&too_many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "too_large");
    for bad in [
        b"{\"hashes\": 3}".to_vec(),
        b"[".to_vec(),
        b"{\"hashes\":[\"a/b\"]}".to_vec(),
    ] {
        let response = turbo.post("", bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let response = turbo.post("", vec![b' '; 70 * 1024]).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&response, "connection").as_deref(), Some("close"));
}

/// Events feed per-namespace counters and the time remote hits saved, for namespaces the token
/// covers only; their bodies are bounded.
#[tokio::test]
async fn events_count_hits_and_time_saved_for_covered_teams_only() {
    let handler = Handler::start(&[("NX_CACHE_METRICS_TOKEN", METRICS)]);
    let token = issue_token(&["--team", "web", "--read-only"]);
    let turbo = Turbo::new(&handler.base_url, &token, "slug=web");
    let event = |source: &str, kind: &str, duration: u64| {
        json!({"sessionId": "544d664c", "source": source, "event": kind,
               "hash": "76a8e2575fc5b52a", "duration": duration})
    };
    let batch = json!([
        event("REMOTE", "HIT", 300),
        event("REMOTE", "HIT", 392),
        event("REMOTE", "MISS", 0),
        event("LOCAL", "MISS", 0),
        event("LOCAL", "HIT", 50),
        // A day and more: counted as a hit, not as time saved.
        event("REMOTE", "HIT", 90_000_000),
    ]);
    assert_eq!(turbo.events(batch.clone()).await, StatusCode::OK);
    assert_eq!(turbo.events(batch).await, StatusCode::OK);
    let metrics = metrics_text(&handler.base_url, METRICS).await;
    let value = |labels: &str| {
        metric_value(
            &metrics,
            &format!("nx_cache_turbo_events_total{{{labels}}}"),
        )
    };
    assert_eq!(
        value("namespace=\"turbo:team:web\",source=\"remote\",event=\"hit\""),
        Some(6)
    );
    assert_eq!(
        value("namespace=\"turbo:team:web\",source=\"local\",event=\"miss\""),
        Some(2)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "nx_cache_turbo_time_saved_ms_total{namespace=\"turbo:team:web\"}"
        ),
        Some(2 * 692)
    );
    let logged = handler
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "turbo events")
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[0]["namespace"], "turbo:team:web");
    assert_eq!(logged[0]["time_saved_ms"], 692);
    assert_eq!(logged[0]["remote_hits"], 3);

    // Another team's events are refused and make no label.
    let other = Turbo::new(&handler.base_url, &token, "slug=api");
    assert_eq!(
        other.events(json!([event("REMOTE", "HIT", 5)])).await,
        StatusCode::FORBIDDEN
    );
    // Bounded: the body, and the number of events.
    let many: Vec<Value> = (0..501).map(|_| event("LOCAL", "HIT", 1)).collect();
    assert_eq!(
        turbo.events(Value::Array(many)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let response = turbo.post("/events", vec![b' '; 70 * 1024]).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        turbo.events(json!({"not": "a list"})).await,
        StatusCode::BAD_REQUEST
    );
    let metrics = metrics_text(&handler.base_url, METRICS).await;
    assert!(!metrics.contains("turbo:team:api"), "{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "nx_cache_turbo_events_total{namespace=\"turbo:team:web\",source=\"local\",event=\"hit\"}"
        ),
        Some(2),
        "refused bodies count nothing"
    );
}

/// turbo's `--preflight`: the same URL, with `Authorization` among the allowed headers.
#[tokio::test]
async fn preflight_requests_allow_the_authorization_header() {
    let handler = Handler::start(&[]);
    for path in [
        "/v8/artifacts/0123456789abcdef",
        "/v8/artifacts",
        "/v8/artifacts/events",
    ] {
        let response = reqwest::Client::new()
            .request(
                Method::OPTIONS,
                format!("{}{path}?slug=web", handler.base_url),
            )
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                "Authorization, x-artifact-tag",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let allowed = header(&response, "access-control-allow-headers").unwrap();
        assert!(allowed.contains("Authorization"), "{allowed}");
        assert!(allowed.contains("x-artifact-tag"), "{allowed}");
        assert!(header(&response, "location").is_none());
    }
}

/// Azure: turbo's fields are blob metadata, read back from the answer storage gives anyway (no
/// call of their own); a large artifact is redirected to a SAS URL unless it has a tag, which
/// must reach turbo: then it is streamed through the handler. With unchecked hits
/// (`NX_CACHE_HIT_CHECK=none`) an artifact is still checked, for its tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_fields_come_with_the_blob_and_tagged_artifacts_are_never_redirected() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    for hit_check in ["exact", "none"] {
        let handler = Handler::start_with(
            &azurite.key_env(CONTAINER),
            &[
                ("NX_CACHE_INLINE_MAX", "256K"),
                ("NX_CACHE_HIT_CHECK", hit_check),
            ],
        );
        let token = issue_token(&["--team", hit_check]);
        let turbo = Turbo::new(&handler.base_url, &token, &format!("slug={hit_check}"));
        let large: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(
            turbo
                .put("00000000000000b1", &large, Some(TAG))
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            turbo.put("00000000000000b2", &large, None).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            turbo
                .put("00000000000000b3", b"small", Some(TAG))
                .await
                .status(),
            StatusCode::OK
        );

        let tagged = turbo.get("00000000000000b1").await;
        assert_eq!(
            tagged.status(),
            StatusCode::OK,
            "{hit_check}: streamed, not redirected"
        );
        assert_eq!(header(&tagged, "x-artifact-tag").as_deref(), Some(TAG));
        assert_eq!(
            header(&tagged, "x-artifact-duration").as_deref(),
            Some("1234")
        );
        assert_eq!(tagged.bytes().await.unwrap().as_ref(), &large[..]);

        let untagged = turbo.get("00000000000000b2").await;
        assert_eq!(
            untagged.status(),
            StatusCode::TEMPORARY_REDIRECT,
            "{hit_check}"
        );
        let location = header(&untagged, "location").unwrap();
        let from_storage = reqwest::get(&location).await.unwrap();
        assert_eq!(from_storage.status(), StatusCode::OK);
        assert_eq!(from_storage.bytes().await.unwrap().as_ref(), &large[..]);

        let small = turbo.get("00000000000000b3").await;
        assert_eq!(small.status(), StatusCode::OK);
        assert_eq!(header(&small, "x-artifact-tag").as_deref(), Some(TAG));
        assert_eq!(small.bytes().await.unwrap().as_ref(), b"small");

        let (_, found) = turbo
            .query(&["00000000000000b1", "00000000000000b2", "00000000000000b9"])
            .await;
        assert_eq!(found["00000000000000b1"]["tag"], TAG);
        assert_eq!(found["00000000000000b2"]["size"], 300_000);
        assert_eq!(found["00000000000000b2"]["taskDurationMs"], 1234);
        assert_eq!(found["00000000000000b9"], Value::Null);
    }
    let names = azurite.list_blobs(CONTAINER, None).await;
    assert!(
        names.iter().all(|n| n.starts_with("turbo/teams/")),
        "artifacts live under turbo/: {names:?}"
    );
}

/// A fresh artifact's GET costs one storage read on Azure and its HEAD none: what was stored
/// (its size and turbo's fields) is remembered, and what the read returns carries the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_reading_an_artifact_s_fields_adds_no_storage_call() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&azurite.key_env(CONTAINER), &[]);
    let token = issue_token(&["--team", "web"]);
    let turbo = Turbo::new(&handler.base_url, &token, "slug=web");
    let hash = "00000000000000c1";
    assert_eq!(
        turbo.put(hash, b"artifact", Some(TAG)).await.status(),
        StatusCode::OK
    );
    azurite.settle(None).await;
    let blob = format!("{CONTAINER}/turbo/teams/web/{hash}");
    let calls = || azurite.requests_matching(&blob);
    let before = calls();
    let head = turbo.send(Method::HEAD, &format!("/{hash}")).await;
    assert_eq!(header(&head, "x-artifact-tag").as_deref(), Some(TAG));
    azurite.settle(None).await;
    assert_eq!(calls(), before, "HEAD answered from what the upload left");
    let hit = turbo.get(hash).await;
    assert_eq!(header(&hit, "x-artifact-duration").as_deref(), Some("1234"));
    assert_eq!(header(&hit, "x-artifact-tag").as_deref(), Some(TAG));
    assert_eq!(hit.bytes().await.unwrap().as_ref(), b"artifact");
    azurite.settle(None).await;
    assert_eq!(
        calls(),
        before + 1,
        "one read: the bytes and the fields together"
    );
    let again = turbo.get(hash).await;
    assert_eq!(header(&again, "x-artifact-tag").as_deref(), Some(TAG));
    azurite.settle(None).await;
    assert_eq!(
        calls(),
        before + 1,
        "the memory copy keeps the fields with the bytes"
    );
}

/// A client with a read-only token asking many large queries at once gets its checks run at
/// most `CHECKS_AT_ONCE` at a time across all queries, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_checks_are_bounded_and_other_clients_are_served() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(
        &azurite.key_env(CONTAINER),
        &[("NX_CACHE_METRICS_TOKEN", METRICS)],
    );
    let writer = Turbo::new(
        &handler.base_url,
        &issue_token(&["--team", "web"]),
        "slug=web",
    );
    assert_eq!(
        writer
            .put("00000000000000d1", b"served", None)
            .await
            .status(),
        StatusCode::OK
    );
    let reader = issue_token(&["--team", "web", "--read-only"]);
    const FLOODS: usize = 6;
    let floods: Vec<_> = (0..FLOODS)
        .map(|flood| {
            let turbo = Turbo::new(&handler.base_url, &reader, "slug=web");
            tokio::spawn(async move {
                let hashes: Vec<String> =
                    (0..2000).map(|i| format!("{flood:04x}{i:012x}")).collect();
                let hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
                let (status, found) = turbo.query(&hashes).await;
                assert_eq!(status, StatusCode::OK);
                found.as_object().unwrap().len()
            })
        })
        .collect();
    // Wait until the floods are under way, then be served while they run.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = metrics_text(&handler.base_url, METRICS).await;
        if metric_value(&metrics, "nx_cache_turbo_query_checks_peak").unwrap() > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the floods never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let hit = writer.get("00000000000000d1").await;
        assert_eq!(hit.status(), StatusCode::OK);
        assert_eq!(hit.bytes().await.unwrap().as_ref(), b"served");
    }
    assert!(
        floods.iter().any(|f| !f.is_finished()),
        "the other client was served while the queries were still running"
    );
    for flood in floods {
        assert_eq!(flood.await.unwrap(), 2000);
    }
    let metrics = metrics_text(&handler.base_url, METRICS).await;
    assert_eq!(
        metric_value(&metrics, "nx_cache_turbo_query_checks_peak"),
        Some(nx_azure_cache::api::turbo::CHECKS_AT_ONCE as u64),
        "as many checks as the bound ran at once (the floods asked for {}), never more",
        FLOODS * nx_azure_cache::api::turbo::QUERY_CHECKS
    );
}

/// `handler ARGS` with the store settings `env` (as the server has them): its stdout.
fn handler_cli(env: &[(&str, String)], args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(args)
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "handler {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `namespace/hash` of each entry `handler entries --json ARGS` lists, sorted.
fn entry_names(env: &[(&str, String)], args: &[&str]) -> Vec<String> {
    let mut all = vec!["entries", "--json"];
    all.extend_from_slice(args);
    let mut names: Vec<String> = handler_cli(env, &all)
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            format!(
                "{}/{}",
                entry["namespace"].as_str().unwrap(),
                entry["hash"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

/// The operations that walk the store see turbo's artifacts as what they are, on both
/// backends: `handler entries` lists them apart (`--turbo`, `--nx`) with turbo's fields,
/// `handler usage` counts them in rows of their own and never as `@nx/azure-cache` entries
/// (their 16-digit hashes look like Nx's), and `handler purge --turbo` deletes them only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_usage_and_purge_tell_artifacts_apart() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let data = tempfile::tempdir().unwrap();
    let azure = azurite.key_env(CONTAINER);
    let embedded = vec![("NX_CACHE_DIR", data.path().to_string_lossy().into_owned())];
    for env in [embedded, azure] {
        let handler = match env[0].0 {
            "NX_CACHE_DIR" => Handler::start_in(data.path(), &[]),
            _ => Handler::start_with(&env, &[]),
        };
        let token = issue_token(&["--org", "--team", "web"]);
        let hash = "1234567890123456";
        let turbo = Turbo::new(&handler.base_url, &token, "slug=web");
        assert_eq!(
            turbo.put(hash, b"artifact", Some(TAG)).await.status(),
            StatusCode::OK
        );
        let org = Turbo::new(&handler.base_url, &token, "slug=_org");
        assert_eq!(
            org.put(hash, b"org artifact", None).await.status(),
            StatusCode::OK
        );
        for path in [
            format!("/teams/web/v1/cache/{hash}"),
            format!("/v1/cache/{hash}"),
        ] {
            let stored = reqwest::Client::new()
                .put(format!("{}{path}", handler.base_url))
                .bearer_auth(&token)
                .body("nx")
                .send()
                .await
                .unwrap();
            assert_eq!(stored.status(), StatusCode::OK);
        }

        assert_eq!(
            entry_names(&env, &["--turbo"]),
            [
                format!("turbo/org/{hash}"),
                format!("turbo/teams/web/{hash}")
            ]
        );
        assert_eq!(
            entry_names(&env, &["--nx"]),
            [format!("org/{hash}"), format!("teams/web/{hash}")]
        );
        assert_eq!(
            entry_names(&env, &["--turbo", "--team", "web"]),
            [format!("turbo/teams/web/{hash}")]
        );
        assert_eq!(entry_names(&env, &["--team", "web"]).len(), 2);
        let listed: Value = serde_json::from_str(
            handler_cli(&env, &["entries", "--json", "--turbo", "--team", "web"]).trim(),
        )
        .unwrap();
        assert_eq!(listed["client"], "turbo");
        assert_eq!(
            listed["turbo"],
            json!({"duration_ms": 1234, "sha": SHA, "tag": TAG})
        );
        assert_eq!(listed["writer"]["kind"], "issued");

        let usage: Value = serde_json::from_str(&handler_cli(&env, &["usage", "--json"])).unwrap();
        let rows = common::usage_rows(&usage);
        for (namespace, bytes) in [
            ("org", 2),
            ("team:web", 2),
            ("turbo:org", 12),
            ("turbo:team:web", 8),
        ] {
            assert!(
                rows.contains(&(namespace.to_owned(), 1, bytes)),
                "{namespace}: {rows:?}"
            );
        }
        assert_eq!(
            usage["legacy"]["entries"], 0,
            "artifacts are not legacy entries"
        );
        assert_eq!(usage["total"]["entries"], 4);
        if env[0].0 != "NX_CACHE_DIR" {
            // handler doctor's look for @nx/azure-cache entries at the container root.
            let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
                .arg("doctor")
                .env_clear()
                .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&doctor.stdout).into_owned()
                + &String::from_utf8_lossy(&doctor.stderr);
            assert!(
                report.contains("no @nx/azure-cache entries at the container root"),
                "{report}"
            );
        }

        let purged = handler_cli(&env, &["purge", "--turbo", "--yes"]);
        assert!(purged.contains("deleted 2 of 2"), "{purged}");
        assert!(entry_names(&env, &["--turbo"]).is_empty());
        assert_eq!(entry_names(&env, &["--nx"]).len(), 2, "Nx's entries stay");
        assert_eq!(turbo.get(hash).await.status(), StatusCode::NOT_FOUND);
        // Clean for the next backend's round.
        handler_cli(&env, &["purge", "--all", "--yes"]);
    }
}

//! A configuration mistake never becomes a build outage. Under the Azure Functions host, a
//! handler whose configuration is refused keeps answering: `GET /` (so the host keeps it), every
//! cache GET a miss, every PUT refused, `POST /token` 503, `/health` 503, the reason in the log
//! and a gauge in `/metrics`. A real Nx build against it succeeds with zero hits and stores
//! nothing. Outside Functions the same configuration stops the handler, as it always did.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nx::{Workspace, remote_hits};
use common::{Handler, issue_token, metric_value, metrics_text};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// The rule the docs used to show, which the write-access checks now refuse: on GitHub a
/// `pull_request_target` run carries `refs/heads/main` too.
fn refused_policy() -> String {
    serde_json::json!({"rules": [{"name": "web-main",
        "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",
        "claims": {"repository": "acme/web", "ref": "refs/heads/main"},
        "grant": {"org": true, "access": "read-write"}}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_under_functions_answers_misses_and_every_build_goes_on() {
    common::ensure_npm_tools();
    let data = tempfile::tempdir().unwrap();
    let policy = refused_policy();
    // As the Functions host starts it: no arguments, the port in FUNCTIONS_CUSTOMHANDLER_PORT.
    let handler = Handler::launch(
        Path::new(env!("CARGO_BIN_EXE_handler")),
        &[],
        data.path(),
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "0"),
            ("NX_CACHE_TRUST_POLICY", &policy),
            ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let base = handler.base_url.clone();
    let client = reqwest::Client::new();

    // The host keeps it; readiness says no; no token is exchanged.
    let alive = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(
        health
            .text()
            .await
            .unwrap()
            .contains("configuration was refused"),
        "/health names the cause"
    );
    let token = client
        .post(format!("{base}/token"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 503);
    let metrics = metrics_text(&base, METRICS_TOKEN).await;
    assert_eq!(
        metric_value(&metrics, "nx_cache_configuration_refused"),
        Some(1)
    );

    // The log names the refused rule, at error level.
    let refused = handler.wait_for_log(Duration::from_secs(10), |line| {
        line.contains("\"level\":\"ERROR\"")
            && line.contains("rule 'web-main'")
            && line.contains("pull_request_target")
    });
    assert!(refused.is_some(), "{:#?}", handler.logs());

    // A real build with a token that was valid before the mistake: it succeeds twice with
    // zero hits, every cache GET a 404, every PUT refused, nothing stored.
    let token = issue_token(&["--org"]);
    let workspace = Workspace::new();
    let server = base.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let first = workspace.build(&server, Some(&token));
        workspace.forget_local_results(&server);
        let second = workspace.build(&server, Some(&token));
        (first, second)
    })
    .await
    .unwrap();
    for (ok, output) in [&first, &second] {
        assert!(ok, "the build must succeed:\n{output}");
        assert_eq!(remote_hits(output), 0, "{output}");
    }
    let cache_lines: Vec<String> = handler
        .logs()
        .into_iter()
        .filter(|line| line.contains("\"path\":\"/v1/cache/"))
        .collect();
    let gets: Vec<&String> = cache_lines
        .iter()
        .filter(|l| l.contains("\"method\":\"GET\""))
        .collect();
    let puts: Vec<&String> = cache_lines
        .iter()
        .filter(|l| l.contains("\"method\":\"PUT\""))
        .collect();
    assert!(!gets.is_empty() && !puts.is_empty(), "{cache_lines:#?}");
    assert!(
        gets.iter().all(|l| l.contains("\"status\":404")),
        "{gets:#?}"
    );
    assert!(
        puts.iter().all(|l| l.contains("\"status\":403")),
        "{puts:#?}"
    );
    assert_eq!(handler.entries("org"), 0, "nothing is stored");
    let metrics = metrics_text(&base, METRICS_TOKEN).await;
    // Every cache request, and the one POST /token above.
    assert_eq!(
        metric_value(&metrics, "nx_cache_unconfigured_total"),
        Some((gets.len() + puts.len() + 1) as u64)
    );
    assert_eq!(metric_value(&metrics, "nx_cache_hits_total"), Some(0));

    // turbo's API: the status says the cache is off (turbo's banner shows it), reads miss, an
    // upload gets the 403 after which turbo uploads nothing more, events are taken and ignored.
    let token = issue_token(&["--team", "web"]);
    let turbo = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}/v8/artifacts{path}?slug=web"))
            .bearer_auth(&token)
    };
    let status = turbo(reqwest::Method::GET, "/status").send().await.unwrap();
    assert_eq!(status.status(), 200);
    let status: serde_json::Value = serde_json::from_slice(&status.bytes().await.unwrap()).unwrap();
    assert_eq!(status["status"], "disabled");
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let miss = turbo(method.clone(), "/0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(miss.status(), 404, "{method}");
    }
    let upload = turbo(reqwest::Method::PUT, "/0123456789abcdef")
        .body("artifact")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 403);
    let body: serde_json::Value = serde_json::from_slice(&upload.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let query = turbo(reqwest::Method::POST, "")
        .body(r#"{"hashes": ["0123456789abcdef"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 404, "turbo then asks one HEAD at a time");
    let events = turbo(reqwest::Method::POST, "/events")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let preflight = turbo(reqwest::Method::OPTIONS, "/0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(handler.entries("turbo/teams/web"), 0, "nothing is stored");
}

#[test]
fn the_same_configuration_outside_functions_stops_the_handler() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["--port", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NX_CACHE_DIR", data.path())
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .env("NX_CACHE_TRUST_POLICY", refused_policy())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .starts_with("handler: configuration error: NX_CACHE_TRUST_POLICY: rule 'web-main': "),
        "{stderr}"
    );
}

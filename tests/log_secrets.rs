//! Captures every log line of full runs, at debug level, on both backends and both Azure
//! credential kinds, and fails if a token, a secret, an account key or a SAS signature (of a
//! redirect, or of the handler's own reads of small entries) appears in any of them, or in an
//! error body.

mod common;

use common::azurite::{Azurite, IdentityEndpoint, Tls};
use common::{Handler, TEST_SECRET, issue_token, no_redirects};
use nx_azure_cache::storage::azure::connection_string::DEV_ACCOUNT_KEY;
use reqwest::StatusCode;

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// Values that must never be logged, with a name for the failure message.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, name: &str, value: &str) {
        assert!(value.len() >= 8, "{name} is too short to search for");
        self.0.push((name.to_owned(), value.to_owned()));
        // Also the URL-encoded form, as it would appear in a logged URL.
        let encoded =
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        if encoded != value {
            self.0.push((format!("{name} (URL-encoded)"), encoded));
        }
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for (name, value) in &self.0 {
            assert!(
                !text.contains(value.as_str()),
                "{name} appears in {what}:\n{text}"
            );
        }
    }
}

fn sig_of(location: &str) -> String {
    let url = reqwest::Url::parse(location).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.into_owned())
        .expect("a signed URL")
}

/// Drives every kind of request and returns (log text, error bodies, signatures handed out).
async fn exercise(handler: &Handler, secrets: &mut Secrets) -> Vec<String> {
    let client = no_redirects();
    let base = &handler.base_url;
    let writer = issue_token(&["--org", "--team", "web"]);
    let reader = issue_token(&["--org", "--read-only"]);
    let mut tampered = writer.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    secrets.add("read-write token", &writer);
    secrets.add("read-only token", &reader);
    secrets.add("tampered token", &tampered);
    let mut bodies = Vec::new();
    for (token, path) in [
        (&writer, "/v1/cache/1"),
        (&writer, "/teams/web/v1/cache/2"),
        (&writer, "/v1/cache/1"),
        (&reader, "/v1/cache/3"),
        (&tampered, "/v1/cache/4"),
    ] {
        let response = client
            .put(format!("{base}{path}"))
            .bearer_auth(token)
            .body(vec![5u8; 3000])
            .send()
            .await
            .unwrap();
        bodies.push(response.text().await.unwrap());
    }
    // A large entry: on Azure its GET is a redirect, whose signature is then searched for.
    let stored = client
        .put(format!("{base}/v1/cache/5"))
        .bearer_auth(&writer)
        .body(vec![6u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    // On Azure the small entry is read by the handler itself, through a signed URL of its own.
    for (token, hash) in [(&writer, 1), (&reader, 1), (&tampered, 1), (&writer, 5)] {
        let response = client
            .get(format!("{base}/v1/cache/{hash}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if let Some(location) = response.headers().get("location") {
            secrets.add("SAS signature", &sig_of(location.to_str().unwrap()));
        }
        bodies.push(response.text().await.unwrap());
    }
    let no_scheme = client
        .get(format!("{base}/v1/cache/1"))
        .header("authorization", writer.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(no_scheme.status(), StatusCode::UNAUTHORIZED);
    bodies.push(no_scheme.text().await.unwrap());
    for token in [METRICS_TOKEN, "wrong-metrics-token-000"] {
        let response = client
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        bodies.push(response.text().await.unwrap());
    }
    bodies.push(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    bodies
}

fn check(handler: &Handler, bodies: &[String], secrets: &Secrets) {
    let logs = handler.logs().join("\n");
    assert!(
        logs.lines().count() > 10,
        "the run must have logged something:\n{logs}"
    );
    secrets.assert_absent("the logs", &logs);
    // Nor any other signature: the URLs the handler signs for its own reads are never handed out,
    // so they are recognised by their parameter (the SDK logs its URLs with `sig=REDACTED`).
    for parameter in ["sig=", "sig%3D"] {
        for (at, _) in logs.match_indices(parameter) {
            let value = &logs[at + parameter.len()..];
            assert!(
                value.starts_with("REDACTED"),
                "a signature in the logs: {}",
                &logs[at..(at + 80).min(logs.len())]
            );
        }
    }
    for body in bodies {
        secrets.assert_absent("an answer body", body);
    }
}

fn base_secrets() -> Secrets {
    let mut secrets = Secrets(Vec::new());
    secrets.add("token secret", TEST_SECRET);
    secrets.add("metrics token", METRICS_TOKEN);
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_with_the_local_store() {
    let handler = Handler::start(&[
        ("RUST_LOG", "debug"),
        ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
    ]);
    let mut secrets = base_secrets();
    let bodies = exercise(&handler, &mut secrets).await;
    check(&handler, &bodies, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_with_an_account_key() {
    let azurite = Azurite::start();
    azurite.create_container("nx-cache", None).await;
    let connection_string = azurite.connection_string();
    let handler = Handler::start(&[
        ("RUST_LOG", "debug"),
        ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
        ("AZURE_STORAGE_CONNECTION_STRING", &connection_string),
        ("AZURE_STORAGE_CONTAINER", "nx-cache"),
    ]);
    let mut secrets = base_secrets();
    secrets.add("account key", DEV_ACCOUNT_KEY);
    let bodies = exercise(&handler, &mut secrets).await;
    assert!(
        secrets.0.iter().any(|(name, _)| name == "SAS signature"),
        "redirects were signed"
    );
    check(&handler, &bodies, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_with_managed_identity() {
    let tls = Tls::generate();
    let azurite = Azurite::start_oauth(&tls);
    azurite.create_container("nx-cache", Some(&tls)).await;
    let identity = IdentityEndpoint::start().await;
    let handler = Handler::start_with(
        &identity.handler_env(azurite.endpoint(), "nx-cache", &tls),
        &[
            ("RUST_LOG", "debug"),
            ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let mut secrets = base_secrets();
    secrets.add("identity header secret", &identity.secret);
    let bodies = exercise(&handler, &mut secrets).await;
    let issued = identity.issued.lock().unwrap().clone();
    assert!(!issued.is_empty(), "the managed identity was used");
    for token in &issued {
        // The signature part alone is enough to recognise the token.
        secrets.add("Entra access token", token);
    }
    assert!(
        secrets.0.iter().any(|(name, _)| name == "SAS signature"),
        "redirects were signed"
    );
    check(&handler, &bodies, &secrets);
}

/// Keyless access: the identity tokens sent to `POST /token` (accepted or refused) and the cache
/// tokens it answers with never reach a log line; refusals never echo them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_with_token_exchange() {
    let issuer = common::oidc::Issuer::start("").await;
    let policy = serde_json::json!({"rules": [{
        "name": "ci", "issuer": issuer.issuer(), "audience": "nx-cache",
        "claims": {"repository": "acme/web"},
        "grant": {"org": true, "access": "read-write"}
    }]})
    .to_string();
    let handler = Handler::start(&[
        ("RUST_LOG", "debug"),
        ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
        ("NX_CACHE_TRUST_POLICY", &policy),
    ]);
    let mut secrets = base_secrets();
    let mut bodies = exercise(&handler, &mut secrets).await;
    let client = reqwest::Client::new();
    let identities = [
        (
            "accepted identity token",
            serde_json::json!({"repository": "acme/web", "sub": "repo:acme/web:ref:refs/heads/main"}),
        ),
        (
            "refused identity token",
            serde_json::json!({"repository": "acme/api", "sub": "repo:acme/api:ref:refs/heads/main"}),
        ),
    ];
    for (name, claims) in identities {
        let identity = issuer.sign(&issuer.claims("nx-cache", claims));
        secrets.add(name, &identity);
        let answer = client
            .post(format!("{}/token", handler.base_url))
            .bearer_auth(&identity)
            .send()
            .await
            .unwrap();
        let ok = answer.status() == StatusCode::OK;
        let text = answer.text().await.unwrap();
        if ok {
            secrets.add("exchanged cache token", &text);
            let put = client
                .put(format!("{}/v1/cache/4242", handler.base_url))
                .bearer_auth(&text)
                .body("artifact")
                .send()
                .await
                .unwrap();
            assert_eq!(put.status(), StatusCode::OK);
        } else {
            bodies.push(text);
        }
    }
    check(&handler, &bodies, &secrets);
}

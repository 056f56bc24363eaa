//! The Azure Blob backend against Azurite over real loopback HTTP: the connection-string path
//! (plain http, account key, service SAS) and the managed-identity path (https, `--oauth basic`,
//! the real `azure_identity` managed-identity credential, user delegation key, user-delegation
//! SAS), redirects a real client follows, uploads, and storage outages.

mod common;

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;

use common::azurite::{Azurite, IdentityEndpoint, Tls};
use common::{Handler, issue_token, no_redirects};
use reqwest::StatusCode;

const CONTAINER: &str = "nx-cache";

fn key_mode_env(azurite: &Azurite) -> Vec<(&'static str, String)> {
    azurite.key_env(CONTAINER)
}

async fn put(base: &str, path: &str, token: &str, body: Vec<u8>) -> StatusCode {
    no_redirects()
        .put(format!("{base}{path}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// GET through the handler, expecting a redirect; returns the Location.
async fn redirect_location(base: &str, path: &str, token: &str) -> String {
    let response = no_redirects()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::TEMPORARY_REDIRECT,
        "GET {path}"
    );
    response.headers()["location"].to_str().unwrap().to_owned()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn sas_lifetime(url: &str) -> (time::OffsetDateTime, time::OffsetDateTime) {
    use time::format_description::well_known::Rfc3339;
    let start = time::OffsetDateTime::parse(&query_param(url, "st").unwrap(), &Rfc3339).unwrap();
    let expiry = time::OffsetDateTime::parse(&query_param(url, "se").unwrap(), &Rfc3339).unwrap();
    (start, expiry)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

#[tokio::test]
async fn connection_string_mode_stores_blobs_and_redirects_to_read_only_single_blob_sas() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    // Every hit redirected, the small one too (by default it would be answered inline).
    let handler = Handler::start_with(
        &key_mode_env(&azurite),
        &[
            ("NX_CACHE_SAS_TTL", "2m"),
            ("NX_CACHE_DOWNLOAD", "redirect"),
        ],
    );
    let org = issue_token(&["--org"]);
    let web = issue_token(&["--team", "web"]);
    let base = &handler.base_url;

    let small = pattern(1000, 1);
    let large = pattern(10 * 1024 * 1024 + 123, 2); // several staged blocks
    assert_eq!(
        put(base, "/v1/cache/111", &org, small.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        put(base, "/teams/web/v1/cache/222", &web, large.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        put(base, "/v1/cache/111", &org, b"poison".to_vec()).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        put(base, "/teams/web/v1/cache/222", &web, pattern(5 << 20, 9)).await,
        StatusCode::CONFLICT
    );
    let mut blobs = azurite.list_blobs(CONTAINER, None).await;
    blobs.sort();
    assert_eq!(blobs, vec!["org/111", "teams/web/222"]);

    for (path, expected) in [
        ("/v1/cache/111", &small),
        ("/teams/web/v1/cache/222", &large),
    ] {
        let token = if path.starts_with("/teams") {
            &web
        } else {
            &org
        };
        let location = redirect_location(base, path, token).await;
        assert_eq!(
            query_param(&location, "sp").as_deref(),
            Some("r"),
            "read permission only"
        );
        assert_eq!(
            query_param(&location, "sr").as_deref(),
            Some("b"),
            "one blob only"
        );
        let (start, expiry) = sas_lifetime(&location);
        let now = time::OffsetDateTime::now_utc();
        assert!(
            start < now - Duration::from_secs(60),
            "start is backdated for clock skew"
        );
        assert!(
            expiry > now && expiry <= now + Duration::from_secs(121),
            "expiry follows NX_CACHE_SAS_TTL"
        );
        // A real client follows the redirect and gets the bytes straight from storage.
        let bytes = reqwest::get(&location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            bytes.as_ref() == expected.as_slice(),
            "{path}: bytes differ"
        );
        // The URL cannot be bent to another blob, nor used to write.
        let other = location.replacen("/org/111", "/org/112", 1).replacen(
            "/teams/web/222",
            "/teams/web/223",
            1,
        );
        assert_eq!(
            reqwest::get(&other).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
        let write = reqwest::Client::new()
            .put(&location)
            .header("x-ms-blob-type", "BlockBlob")
            .body("overwrite")
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), StatusCode::FORBIDDEN);
    }
    // A miss is the handler's own 404, without a redirect (exact hit checks, the default).
    let miss = no_redirects()
        .get(format!("{base}/v1/cache/404404"))
        .bearer_auth(&org)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), StatusCode::NOT_FOUND);
    assert!(miss.headers().get("location").is_none());
    // No redirect ever leaks another team's blob.
    let denied = no_redirects()
        .get(format!("{base}/teams/web/v1/cache/222"))
        .bearer_auth(&org)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::NOT_FOUND);
    assert!(denied.headers().get("location").is_none());
}

#[tokio::test]
async fn proxy_mode_streams_blobs_through_the_handler() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&key_mode_env(&azurite), &[("NX_CACHE_DOWNLOAD", "proxy")]);
    let token = issue_token(&["--org"]);
    let body = pattern(9 * 1024 * 1024, 3);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/5", &token, body.clone()).await,
        StatusCode::OK
    );
    let response = no_redirects()
        .get(format!("{}/v1/cache/5", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(body.len() as u64));
    assert!(response.bytes().await.unwrap().as_ref() == body.as_slice());
    let miss = no_redirects()
        .get(format!("{}/v1/cache/6", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_upload_cut_off_midway_leaves_no_blob_and_a_retry_succeeds() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&key_mode_env(&azurite), &[]);
    let token = issue_token(&["--org"]);
    let addr = handler.base_url.trim_start_matches("http://").to_owned();
    let declared = 12 * 1024 * 1024;
    let sent = pattern(6 * 1024 * 1024, 4);
    let header = format!(
        "PUT /v1/cache/31 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {declared}\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(header.as_bytes()).unwrap();
        stream.write_all(&sent).unwrap();
        // Dropping the socket cuts the upload off halfway.
    })
    .await
    .unwrap();
    let line = handler.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("upload did not complete")
    });
    assert!(line.is_some(), "the handler notices the cut-off upload");
    assert!(
        azurite.list_blobs(CONTAINER, None).await.is_empty(),
        "nothing visible"
    );
    let full = pattern(declared, 5);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/31", &token, full).await,
        StatusCode::OK
    );
    assert_eq!(azurite.list_blobs(CONTAINER, None).await, vec!["org/31"]);
}

#[tokio::test]
async fn a_missing_container_is_one_clear_line_and_health_says_why() {
    let azurite = Azurite::start();
    let env = key_mode_env(&azurite);
    let handler = Handler::start_with(&env, &[]);
    let line = handler
        .wait_for_log(Duration::from_secs(30), |l| l.contains("storage not ready"))
        .expect("a startup error line");
    assert!(
        line.contains("container 'nx-cache' in storage account 'devstoreaccount1' does not exist"),
        "{line}"
    );
    let health = reqwest::get(format!("{}/health", handler.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(health.text().await.unwrap().contains("not ready"));
    // Builds go on: uploads are "not stored", and nothing is created.
    let token = issue_token(&["--org"]);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/1", &token, b"x".to_vec()).await,
        StatusCode::FORBIDDEN
    );

    // Strict mode refuses to start instead.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["--port", "0"])
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite.connection_string(),
        )
        .env("AZURE_STORAGE_CONTAINER", CONTAINER)
        .env("NX_CACHE_STRICT_STORAGE", "true")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("handler: storage not ready: "),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("container 'nx-cache' in storage account 'devstoreaccount1' does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn storage_outages_degrade_to_misses_and_not_stored_then_recover() {
    let mut azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(
        &key_mode_env(&azurite),
        &[
            ("NX_CACHE_DOWNLOAD", "proxy"),
            ("NX_CACHE_STORAGE_TIMEOUT", "2s"),
        ],
    );
    let token = issue_token(&["--org"]);
    let base = handler.base_url.clone();
    assert_eq!(
        put(&base, "/v1/cache/1", &token, b"kept".to_vec()).await,
        StatusCode::OK
    );
    let get = |hash: &'static str| {
        let (base, token) = (base.clone(), token.clone());
        async move {
            let started = std::time::Instant::now();
            let response = no_redirects()
                .get(format!("{base}/v1/cache/{hash}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            (response.status(), started.elapsed())
        }
    };

    // Frozen storage: answers stay bounded by the storage timeout and degrade.
    azurite.pause();
    let (status, took) = get("1").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a frozen store is a miss, never an error"
    );
    assert!(took < Duration::from_secs(20), "bounded: {took:?}");
    assert_eq!(
        put(&base, "/v1/cache/2", &token, b"x".to_vec()).await,
        StatusCode::FORBIDDEN
    );
    azurite.resume();
    until_healthy(&base).await;
    assert_eq!(get("1").await.0, StatusCode::OK, "recovers by itself");
    assert_eq!(
        put(&base, "/v1/cache/5", &token, b"never read".to_vec()).await,
        StatusCode::OK
    );

    // Storage gone: an entry never read is a miss; one just read is still answered from the
    // memory copy (confirmed well within CONFIRMED_FOR, 30 s); it recovers when storage comes
    // back.
    azurite.stop();
    assert_eq!(get("5").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get("1").await.0, StatusCode::OK, "kept in the memory copy");
    assert_eq!(
        put(&base, "/v1/cache/3", &token, b"x".to_vec()).await,
        StatusCode::FORBIDDEN
    );
    azurite.restart();
    until_healthy(&base).await;
    assert_eq!(
        get("5").await.0,
        StatusCode::OK,
        "nothing already stored was lost"
    );
    assert_eq!(
        put(&base, "/v1/cache/4", &token, b"back".to_vec()).await,
        StatusCode::OK
    );
    assert_eq!(get("4").await.0, StatusCode::OK);
    let logs = handler.logs();
    assert!(
        logs.iter().any(|l| l.contains("storage-error")),
        "failures are logged"
    );
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("storage available again"))
            .count(),
        2,
        "each recovery is logged once"
    );
}

/// Waits (bounded) until the health watch says storage is available: it confirms a recovery at
/// its next probe, and until then a GET is a miss.
async fn until_healthy(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(std::time::Instant::now() < deadline, "recovery not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Multi-threaded: the identity endpoint runs on this runtime while the test blocks on logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_path_uses_a_user_delegation_sas() {
    let tls = Tls::generate();
    let azurite = Azurite::start_oauth(&tls);
    azurite.create_container(CONTAINER, Some(&tls)).await;
    let identity = IdentityEndpoint::start().await;
    let env = identity.handler_env(azurite.endpoint(), CONTAINER, &tls);
    let handler = Handler::start_with(&env, &[]);
    let ready = handler.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("storage ready") || l.contains("storage not ready")
    });
    assert!(
        ready
            .as_deref()
            .is_some_and(|l| l.contains("storage ready")),
        "{ready:?}\n{}\nidentity requests: {}",
        handler.logs().join("\n"),
        identity.requests.load(std::sync::atomic::Ordering::SeqCst)
    );
    let token = issue_token(&["--org"]);
    let body = pattern(5 * 1024 * 1024, 6);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/77", &token, body.clone()).await,
        StatusCode::OK
    );

    let trusting = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    for _ in 0..20 {
        let location = redirect_location(&handler.base_url, "/v1/cache/77", &token).await;
        assert!(location.starts_with("https://"), "{location}");
        assert_eq!(
            query_param(&location, "spr").as_deref(),
            Some("https"),
            "HTTPS only"
        );
        assert_eq!(query_param(&location, "sp").as_deref(), Some("r"));
        assert!(
            query_param(&location, "skoid").is_some(),
            "a user-delegation SAS names the key's object id"
        );
        let bytes = trusting
            .get(&location)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(bytes.as_ref() == body.as_slice());
    }
    // The delegation key and the Entra token are cached, not fetched per request.
    azurite.settle(Some(&tls)).await;
    let key_requests = azurite.requests_matching("comp=userdelegationkey");
    assert!(
        (1..=2).contains(&key_requests),
        "user delegation key fetched {key_requests} times"
    );
    let token_requests = identity.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&token_requests),
        "Entra token fetched {token_requests} times"
    );
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("managed identity")),
        "the credential used is logged"
    );
}

fn doctor(env: &[(&str, String)]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("doctor")
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_tells_the_operator_what_to_fix() {
    let azurite = Azurite::start();
    let env = key_mode_env(&azurite);
    let (ok, text) = doctor(&env);
    assert!(!ok, "{text}");
    assert!(text.contains("PROBLEM  storage: container 'nx-cache' in storage account 'devstoreaccount1' does not exist; create it"), "{text}");

    azurite.create_container(CONTAINER, None).await;
    let (ok, text) = doctor(&env);
    assert!(ok, "{text}");
    assert!(
        text.contains("ok       storage: Azure Blob container 'nx-cache'"),
        "{text}"
    );
    assert!(text.contains("All checks passed."), "{text}");
    assert!(
        text.contains("ok       write permission: a probe blob was written and deleted"),
        "{text}"
    );
    assert!(
        azurite.list_blobs(CONTAINER, None).await.is_empty(),
        "the probe blob is deleted"
    );

    // Managed identity with an identity endpoint that refuses: the credential is the problem.
    let tls = Tls::generate();
    let oauth = Azurite::start_oauth(&tls);
    oauth.create_container(CONTAINER, Some(&tls)).await;
    let identity = IdentityEndpoint::start().await;
    let mut mi_env: Vec<(&str, String)> = vec![
        ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1".into()),
        ("AZURE_STORAGE_BLOB_ENDPOINT", oauth.endpoint()),
        ("AZURE_STORAGE_CONTAINER", CONTAINER.into()),
        ("IDENTITY_ENDPOINT", identity.url.clone()),
        ("IDENTITY_HEADER", "wrong-secret".into()),
        ("SSL_CERT_FILE", tls.ca_file().display().to_string()),
        ("NX_CACHE_STORAGE_TIMEOUT", "5s".into()),
    ];
    let (ok, text) = doctor(&mi_env);
    assert!(!ok, "{text}");
    assert!(
        text.contains("PROBLEM  Azure credential: no credential got a token"),
        "{text}"
    );
    // No credential got a token: the fix is the credential (named, with its error), not a role.
    assert!(
        text.contains("1. managed identity (system-assigned): ManagedIdentityCredential"),
        "the source and its own error are named: {text}"
    );
    assert!(!text.contains("grant"), "no role is the fix: {text}");
    assert!(
        text.contains("PROBLEM  storage: not checked: no Azure credential got a token"),
        "{text}"
    );
    mi_env[4].1 = identity.secret.clone();
    let (ok, text) = doctor(&mi_env);
    assert!(ok, "{text}");
    assert!(
        text.contains("ok       Azure credential: managed identity (system-assigned) got a token"),
        "{text}"
    );
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service principal in the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
/// `AZURE_CLIENT_SECRET`) and no network to its login host: `handler doctor` names every
/// credential source it asked, in order, each with its own error (the client secret's is the
/// failed request to the login host), suggests no role (storage never saw a token), and does not
/// check storage. With the login host up but refusing the secret, the refusal is named instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_credential_it_tried_and_no_role_without_a_token() {
    use common::azurite::{
        ClientProof, EntraTokenEndpoint, SERVICE_PRINCIPAL_CLIENT_ID, SERVICE_PRINCIPAL_TENANT,
    };

    const SECRET: &str = "sp-secret-0123456789";
    let unreachable = closed_port();
    // The managed-identity endpoint of App Service is unreachable too (and keeps the Azure CLI
    // out of the chain, as on Azure).
    let env = |authority: String, secret: &str| -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1".into()),
            (
                "AZURE_STORAGE_BLOB_ENDPOINT",
                format!("https://127.0.0.1:{unreachable}/devstoreaccount1"),
            ),
            ("AZURE_STORAGE_CONTAINER", CONTAINER.into()),
            ("AZURE_TENANT_ID", SERVICE_PRINCIPAL_TENANT.into()),
            ("AZURE_CLIENT_ID", SERVICE_PRINCIPAL_CLIENT_ID.into()),
            ("AZURE_CLIENT_SECRET", secret.into()),
            ("AZURE_AUTHORITY_HOST", authority),
            (
                "IDENTITY_ENDPOINT",
                format!("http://127.0.0.1:{unreachable}/msi/token"),
            ),
            ("IDENTITY_HEADER", "identity-header-secret".into()),
            ("NX_CACHE_STORAGE_TIMEOUT", "5s".into()),
        ]
    };
    let no_role = |text: &str| {
        for role in ["grant", "Delegator", "Storage Blob Data"] {
            assert!(
                !text.contains(role),
                "no role is suggested ({role}): {text}"
            );
        }
    };

    let (ok, text) = doctor(&env(format!("https://127.0.0.1:{unreachable}"), SECRET));
    assert!(!ok, "{text}");
    assert!(
        text.contains("PROBLEM  Azure credential: no credential got a token"),
        "{text}"
    );
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line `{prefix}`:\n{text}"))
            .to_owned()
    };
    let secret_line = line("1. environment (client secret): ");
    assert!(
        secret_line.contains("ClientSecretCredential")
            && secret_line.contains(&format!(
                "https://127.0.0.1:{unreachable}/{SERVICE_PRINCIPAL_TENANT}/oauth2/v2.0/token"
            )),
        "the client secret's own error, its request to the login host: {secret_line}"
    );
    assert!(
        text.contains("AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"),
        "what the environment credential is built from: {text}"
    );
    let identity_line = line("2. managed identity (user-assigned): ");
    assert!(
        identity_line.contains("ManagedIdentityCredential"),
        "{identity_line}"
    );
    assert!(
        !text.contains("3. "),
        "the Azure CLI is not asked on Azure: {text}"
    );
    no_role(&text);
    assert!(
        text.contains("PROBLEM  storage: not checked: no Azure credential got a token"),
        "{text}"
    );
    assert!(
        !text.contains(SECRET),
        "the secret is never printed: {text}"
    );

    // The login host answers, and refuses the secret: Entra ID's refusal is the error named.
    let tls = Tls::generate();
    let entra = EntraTokenEndpoint::start(&tls, ClientProof::Secret(SECRET.into())).await;
    let mut refused = env(entra.authority.clone(), "not-the-secret");
    refused.push(("SSL_CERT_FILE", tls.ca_file().display().to_string()));
    let text = tokio::task::spawn_blocking(move || doctor(&refused).1)
        .await
        .unwrap();
    let secret_line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("1. environment (client secret): ")
        })
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();
    assert!(
        secret_line.contains("wrong client_secret"),
        "Entra ID's answer to the secret (its error_description): {secret_line}"
    );
    assert_eq!(entra.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    no_role(&text);
    assert!(!text.contains("not-the-secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_hash_store_exactly_one_whole_body() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&key_mode_env(&azurite), &[("NX_CACHE_DOWNLOAD", "proxy")]);
    let token = issue_token(&["--org"]);
    // Small bodies race on Put Blob, large ones on Put Block List.
    for (hash, len) in [("600", 200 * 1024), ("601", 9 * 1024 * 1024)] {
        let bodies: Vec<Vec<u8>> = (0..6u32).map(|i| pattern(len, i * 7 + 1)).collect();
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|body| {
                let (base, token) = (handler.base_url.clone(), token.clone());
                let path = format!("/v1/cache/{hash}");
                tokio::spawn(async move { put(&base, &path, &token, body).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        let stored = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(stored, 1, "{hash}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
            "{statuses:?}"
        );
        for _ in 0..3 {
            let got = no_redirects()
                .get(format!("{}/v1/cache/{hash}", handler.base_url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert!(
                bodies.iter().any(|b| b.as_slice() == got.as_ref()),
                "{hash}: one whole body"
            );
        }
    }
}

#[tokio::test]
async fn strict_mode_answers_503_when_storage_fails() {
    let mut azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(
        &key_mode_env(&azurite),
        &[
            ("NX_CACHE_STRICT_STORAGE", "true"),
            ("NX_CACHE_DOWNLOAD", "proxy"),
            ("NX_CACHE_STORAGE_TIMEOUT", "2s"),
        ],
    );
    let token = issue_token(&["--org"]);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/1", &token, b"x".to_vec()).await,
        StatusCode::OK
    );
    azurite.stop();
    let got = no_redirects()
        .get(format!("{}/v1/cache/1", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/2", &token, b"x".to_vec()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// After `revoke-delegation-keys`, storage refuses every URL signed with an older user
/// delegation key. The health watch signs its probe with the current key: on a refusal it gets
/// a new key at once, and GETs are misses (never a redirect to a refused URL) until a URL signed
/// with the new key is accepted. A loopback proxy in front of Azurite plays the revocation,
/// which Azurite does not implement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_delegation_key_is_replaced_within_one_health_interval() {
    use common::revoking_proxy::RevokingProxy;
    let tls = Tls::generate();
    let azurite = Azurite::start_oauth(&tls);
    azurite.create_container(CONTAINER, Some(&tls)).await;
    let identity = IdentityEndpoint::start().await;
    let upstream = format!("https://127.0.0.1:{}", azurite.port);
    let proxy = RevokingProxy::start(&tls, &upstream).await;
    let env = identity.handler_env(proxy.endpoint(), CONTAINER, &tls);
    // Redirect mode: the entry below is small, and the test is about the URLs clients get.
    let handler = Handler::start_with(
        &env,
        &[
            ("NX_CACHE_HEALTH_INTERVAL", "1s"),
            ("NX_CACHE_DOWNLOAD", "redirect"),
        ],
    );
    handler
        .wait_for_log(Duration::from_secs(30), |l| l.contains("storage ready"))
        .unwrap_or_else(|| panic!("{}", handler.logs().join("\n")));
    let token = issue_token(&["--org"]);
    let body = pattern(100_000, 3);
    assert_eq!(
        put(&handler.base_url, "/v1/cache/5", &token, body.clone()).await,
        StatusCode::OK
    );
    let trusting = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let old_url = redirect_location(&handler.base_url, "/v1/cache/5", &token).await;
    let fetched = trusting.get(&old_url).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(proxy.keys_seen(), 1);

    azurite.settle(Some(&tls)).await;
    let key_fetches = azurite.requests_matching("comp=userdelegationkey");
    proxy.revoke_all_keys();
    let revoked_at = std::time::Instant::now();
    assert_eq!(
        trusting.get(&old_url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "the proxy refuses URLs signed with the revoked key"
    );
    handler
        .wait_for_log(Duration::from_secs(30), |l| {
            l.contains("new user delegation key are accepted")
        })
        .unwrap_or_else(|| panic!("no new key:\n{}", handler.logs().join("\n")));
    let replaced_after = revoked_at.elapsed();
    assert!(
        replaced_after < Duration::from_secs(10),
        "replaced after {replaced_after:?}; the watch probes every second"
    );
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("storage refused a download URL")),
        "the refusal is logged"
    );
    azurite.settle(Some(&tls)).await;
    assert!(azurite.requests_matching("comp=userdelegationkey") > key_fetches);

    // Redirects are signed with the new key, and storage accepts them.
    let new_url = redirect_location(&handler.base_url, "/v1/cache/5", &token).await;
    assert_ne!(query_param(&new_url, "skt"), query_param(&old_url, "skt"));
    let fetched = trusting.get(&new_url).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(fetched.bytes().await.unwrap().as_ref() == body.as_slice());
}

/// `GET /health` answers from the health watch: a flood of it makes no storage traffic, and the
/// unauthenticated answer names no account, container or endpoint.
#[tokio::test]
async fn health_answers_from_the_watch_and_names_nothing() {
    let azurite = Azurite::start();
    let handler = Handler::start_with(
        &key_mode_env(&azurite),
        &[("NX_CACHE_HEALTH_INTERVAL", "5m")],
    );
    handler
        .wait_for_log(Duration::from_secs(30), |l| l.contains("storage not ready"))
        .expect("the container does not exist yet");
    azurite.settle(None).await;
    let probes_before = azurite.requests_matching(".nx-cache-probe");
    assert!(probes_before >= 1, "the startup probe reached storage");
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let health = client
            .get(format!("{}/health", handler.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = health.text().await.unwrap();
        for name in [CONTAINER, "devstoreaccount1", "127.0.0.1"] {
            assert!(!text.contains(name), "{name} in {text:?}");
        }
    }
    azurite.settle(None).await;
    assert_eq!(
        azurite.requests_matching(".nx-cache-probe"),
        probes_before,
        "no storage call per /health"
    );
}

/// Exact hit checks (the default) in redirect mode: a miss is the handler's 404, a hit a 307,
/// each counted as such in the log and per namespace in `/metrics`; what is known to exist is
/// remembered, so a repeated hit costs no storage call. Frozen storage is a miss within the
/// storage timeout, before the health watch has noticed. `NX_CACHE_HIT_CHECK=none` keeps zero
/// storage calls per GET.
#[tokio::test]
async fn exact_hit_checks_tell_hits_from_misses_and_none_makes_no_storage_call() {
    const METRICS: &str = "metrics-token-0123456789";
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(
        &key_mode_env(&azurite),
        &[
            ("NX_CACHE_DOWNLOAD", "redirect"),
            ("NX_CACHE_STORAGE_TIMEOUT", "2s"),
            // The watch probes rarely: the frozen-storage miss below is the GET's own doing.
            ("NX_CACHE_HEALTH_INTERVAL", "5m"),
            ("NX_CACHE_METRICS_TOKEN", METRICS),
        ],
    );
    let web = issue_token(&["--team", "web"]);
    let base = &handler.base_url;
    let get = |path: &'static str| {
        let (base, web) = (base.clone(), web.clone());
        async move {
            let started = std::time::Instant::now();
            let response = no_redirects()
                .get(format!("{base}{path}"))
                .bearer_auth(&web)
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.headers().contains_key("location"),
                started.elapsed(),
            )
        }
    };
    assert_eq!(
        put(base, "/teams/web/v1/cache/1", &web, pattern(3000, 1)).await,
        StatusCode::OK
    );
    // Stored through this handler: known at once, no storage call for its hits.
    let heads = |name: &str| {
        azurite.requests_matching(&format!("\"HEAD /devstoreaccount1/{CONTAINER}/{name}"))
    };
    for _ in 0..3 {
        assert_eq!(
            get("/teams/web/v1/cache/1").await.0,
            StatusCode::TEMPORARY_REDIRECT
        );
    }
    azurite.settle(None).await;
    assert_eq!(
        heads("teams/web/1"),
        1,
        "only the upload's own existence check"
    );
    // A miss asks storage each time (an entry may appear), and is the handler's 404.
    for _ in 0..2 {
        let (status, location, _) = get("/teams/web/v1/cache/2").await;
        assert_eq!((status, location), (StatusCode::NOT_FOUND, false));
    }
    azurite.settle(None).await;
    assert_eq!(heads("teams/web/2"), 2);
    // Counted exactly, per namespace.
    let metrics = common::metrics_text(base, METRICS).await;
    for line in [
        "nx_cache_namespace_hits_total{namespace=\"team:web\"} 3",
        "nx_cache_namespace_misses_total{namespace=\"team:web\"} 2",
        "nx_cache_namespace_bytes_stored_total{namespace=\"team:web\"} 3000",
        "nx_cache_redirects_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let outcomes: Vec<String> = handler
        .logs()
        .iter()
        .filter(|l| l.contains("\"method\":\"GET\"") && l.contains("/v1/cache/"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            format!(
                "{} {}",
                v["outcome"].as_str().unwrap(),
                v["namespace"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "hit team:web",
            "hit team:web",
            "hit team:web",
            "miss team:web",
            "miss team:web"
        ]
    );

    // Frozen storage: a GET that must ask storage is a miss within the storage timeout, while
    // the health watch still says healthy.
    let health = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .status();
    assert_eq!(health, StatusCode::OK);
    azurite.pause();
    let (status, location, took) = get("/teams/web/v1/cache/3").await;
    azurite.resume();
    assert_eq!((status, location), (StatusCode::NOT_FOUND, false));
    assert!(
        took < Duration::from_secs(5),
        "within the 2 s storage timeout: {took:?}"
    );
    assert!(handler.logs().iter().any(|l| l.contains("storage-error")));

    // Zero storage calls per GET on request: every GET redirects, counted as a redirect.
    let blind = Handler::start_with(&key_mode_env(&azurite), &[("NX_CACHE_HIT_CHECK", "none")]);
    azurite.settle(None).await;
    let before = heads("teams/web/4");
    let response = no_redirects()
        .get(format!("{}/teams/web/v1/cache/4", blind.base_url))
        .bearer_auth(&web)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        reqwest::get(&location).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    azurite.settle(None).await;
    assert_eq!(heads("teams/web/4"), before, "no storage call for the GET");
    assert!(
        blind
            .logs()
            .iter()
            .any(|l| l.contains("\"outcome\":\"redirect\""))
    );
}

/// `handler usage` on a container: one row per namespace with its entries, bytes, oldest and
/// newest, read page by page (more than one page of 5000 here), and the probe blob skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_every_namespace_of_a_container() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let client = azurite.http_client();
    let (org, web, api) = (3000u64, 2500u64, 700u64);
    let names: Vec<(String, usize)> = (0..org)
        .map(|i| (format!("org/{i}"), 10))
        .chain((0..web).map(|i| (format!("teams/web/{i}"), 20)))
        .chain((0..api).map(|i| (format!("teams/api/{i}"), 30)))
        .chain(std::iter::once((".nx-cache-probe".to_string(), 1)))
        .collect();
    futures_util::stream::iter(names)
        .for_each_concurrent(16, |(name, len)| {
            let (azurite, client) = (&azurite, &client);
            async move {
                azurite
                    .put_blob(client, CONTAINER, &name, vec![7u8; len])
                    .await
            }
        })
        .await;
    let env = key_mode_env(&azurite);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
            .args(["usage", "--json"])
            .env_clear()
            .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("listed 5000 objects"),
        "progress per page: {stderr}"
    );
    let usage: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = common::usage_rows(&usage);
    assert_eq!(
        rows,
        vec![
            ("org".to_string(), org, org * 10),
            ("team:api".to_string(), api, api * 30),
            ("team:web".to_string(), web, web * 20),
        ]
    );
    assert_eq!(usage["total"]["entries"], org + web + api);
    assert_eq!(usage["skipped"], 1, "the probe blob is no entry");
    assert!(
        usage["total"]["oldest"].as_str().unwrap() <= usage["total"]["newest"].as_str().unwrap()
    );
}

/// Entries of the deprecated `@nx/azure-cache` plugin (bare Nx hashes at the container root)
/// are in view: `handler usage` counts them in a row of their own, outside the total, and
/// `handler doctor` warns about them, naming the migration guide. Nothing serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_plugin_entries_are_counted_and_reported_never_served() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let client = azurite.http_client();
    let legacy = ["4809188201876735999", "12345678901234567890", "7"];
    for name in legacy {
        azurite
            .put_blob(&client, CONTAINER, name, vec![1u8; 100])
            .await;
    }
    // Not the plugin's: a folder, and a name that only starts with a digit.
    azurite
        .put_blob(&client, CONTAINER, "0backup/readme", vec![1u8; 5])
        .await;
    azurite
        .put_blob(&client, CONTAINER, "org/4809188201876735999", vec![2u8; 10])
        .await;
    let env = key_mode_env(&azurite);
    let run = |args: &'static [&'static str]| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
                .args(args)
                .env_clear()
                .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .output()
                .unwrap()
        })
    };
    let output = run(&["usage", "--json"]).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let usage: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(usage["legacy"]["entries"], 3);
    assert_eq!(usage["legacy"]["bytes"], 300);
    assert_eq!(
        usage["total"]["entries"], 1,
        "the plugin's entries are not this cache's"
    );
    let output = run(&["usage"]).await.unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("legacy @nx/azure-cache") && l.contains(" 3 ")),
        "{table}"
    );

    let output = run(&["doctor"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("WARNING  legacy entries: at least 3 @nx/azure-cache entries")
            && stdout.contains("docs/migrate-from-nx-azure-cache.md"),
        "{stdout}"
    );
    assert!(
        output.status.success(),
        "a warning is not a problem: {stdout}"
    );

    // The plugin's entry under the same hash is never served: the org namespace has its own.
    let handler = Handler::start_with(&env, &[]);
    let token = handler.token(&["--org"]);
    let client = no_redirects();
    let miss = client
        .get(format!("{}/teams/web/v1/cache/7", handler.base_url))
        .bearer_auth(handler.token(&["--team", "web"]))
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 404);
    let hit = client
        .get(format!("{}/v1/cache/4809188201876735999", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(
        hit.bytes().await.unwrap().as_ref(),
        [2u8; 10],
        "the org namespace's entry, not the plugin's blob"
    );
    let miss = client
        .get(format!("{}/v1/cache/7", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        miss.status(),
        404,
        "the plugin's blob 7 is no entry of this cache"
    );
}

/// The environment credential the `@nx/azure-cache` plugin accepted, for a handler run outside
/// Azure: a service principal with a client secret, then with a PEM certificate. The real
/// `azure_identity` credentials ask a stand-in Entra ID token endpoint (https, the test CA),
/// which checks the secret or the signed assertion; the handler then stores and redirects
/// through a user-delegation SAS. The log and `handler doctor` name the credential in use and
/// the order of the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_principal_from_the_environment_reaches_storage() {
    use common::azurite::{ClientProof, EntraTokenEndpoint};
    use rsa::pkcs8::EncodePrivateKey;

    let tls = Tls::generate();
    let azurite = Azurite::start_oauth(&tls);
    azurite.create_container(CONTAINER, Some(&tls)).await;
    let certificate_dir = tempfile::tempdir().unwrap();
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key_pem = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["nx-cache-sp".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem_path = certificate_dir.path().join("service-principal.pem");
    std::fs::write(
        &pem_path,
        format!("{}{}", certificate.pem(), key_pem.as_str()),
    )
    .unwrap();

    let cases = [
        (
            "environment (client secret)",
            ClientProof::Secret("sp-secret-0123456789".into()),
            ("AZURE_CLIENT_SECRET", "sp-secret-0123456789".to_string()),
        ),
        (
            "environment (client certificate)",
            ClientProof::Certificate {
                public_key: rsa::RsaPublicKey::from(&rsa_key),
                certificate_der: certificate.der().to_vec(),
            },
            (
                "AZURE_CLIENT_CERTIFICATE_PATH",
                pem_path.display().to_string(),
            ),
        ),
    ];
    for (index, (name, proof, setting)) in cases.into_iter().enumerate() {
        let entra = EntraTokenEndpoint::start(&tls, proof).await;
        let env = entra.handler_env(azurite.endpoint(), CONTAINER, &tls, setting);
        // Redirect mode: the test follows a user-delegation SAS for a small entry.
        let handler = Handler::start_with(&env, &[("NX_CACHE_DOWNLOAD", "redirect")]);
        let ready = handler.wait_for_log(Duration::from_secs(30), |l| {
            l.contains("storage ready") || l.contains("storage not ready")
        });
        assert!(
            ready
                .as_deref()
                .is_some_and(|l| l.contains("storage ready")),
            "{name}: {ready:?}\nrefused by the stand-in: {:?}",
            entra.refused.lock().unwrap()
        );
        // Both are logged before "storage ready".
        let logs = handler.logs();
        assert!(
            logs.iter()
                .any(|l| l.contains("Azure credential acquired a token") && l.contains(name)),
            "{name}: {logs:#?}"
        );
        let order = logs
            .iter()
            .find(|l| l.contains("Azure credentials, tried in this order"));
        assert!(
            order.is_some_and(|l| l.contains(&format!("[\\\"{name}\\\", "))),
            "the environment credential comes first: {order:?}"
        );
        assert!(entra.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(
            !logs.iter().any(|l| l.contains("sp-secret-0123456789")),
            "the client secret never reaches the log"
        );

        let token = issue_token(&["--org"]);
        let path = format!("/v1/cache/{}", 900 + index);
        let body = pattern(64 * 1024, index as u32);
        assert_eq!(
            put(&handler.base_url, &path, &token, body.clone()).await,
            StatusCode::OK
        );
        let location = redirect_location(&handler.base_url, &path, &token).await;
        assert!(query_param(&location, "skoid").is_some(), "{location}");
        let trusting = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let bytes = trusting
            .get(&location)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(bytes.as_ref() == body.as_slice(), "{name}");
        drop(handler);

        let output = tokio::task::spawn_blocking({
            let env = env.clone();
            move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
                    .arg("doctor")
                    .env_clear()
                    .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!(
                "ok       Azure credential: {name} got a token (tried in order: {name}, "
            )),
            "{stdout}"
        );
    }

    // A wrong secret is refused by Entra ID; the handler names the credential that failed.
    let entra = EntraTokenEndpoint::start(&tls, ClientProof::Secret("right".into())).await;
    let env = entra.handler_env(
        azurite.endpoint(),
        CONTAINER,
        &tls,
        ("AZURE_CLIENT_SECRET", "wrong".into()),
    );
    let handler = Handler::start_with(&env, &[]);
    let not_ready =
        handler.wait_for_log(Duration::from_secs(60), |l| l.contains("storage not ready"));
    assert!(
        not_ready
            .as_deref()
            .is_some_and(|l| l.contains("environment (client secret)")),
        "{not_ready:?}"
    );
    assert!(!entra.refused.lock().unwrap().is_empty());
}

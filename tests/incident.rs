//! Incident response end to end (issue 25), against the embedded store and Azurite: entries
//! record who wrote them (an issued token, and a token exchanged with a GitHub-shaped identity
//! token from a stand-in issuer on loopback), `handler entries` lists and filters them,
//! `handler purge` deletes exactly a selection (a dry run nothing), bad input exits 2 deleting
//! nothing, and a running instance stores a deleted entry again.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::azurite::Azurite;
use common::oidc::Issuer;
use common::{Handler, TEST_SECRET, issue_token, no_redirects};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONTAINER: &str = "nx-cache";
const AUDIENCE: &str = "nx-cache";

/// The rule the exchanged token is issued under: pushes to main of acme/web write team web.
fn policy(github: &Issuer) -> String {
    json!({"rules": [{
        "name": "web-main", "issuer": github.issuer(), "kind": "github", "audience": AUDIENCE,
        "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"},
        "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "1h"
    }]})
    .to_string()
}

/// GitHub Actions ID-token claims of a push to main (github/docs example token).
fn github_claims() -> Value {
    let sha = "95d18d66afd2c0609f6c41bd537a827beb698e64";
    json!({
        "sub": "repo:acme/web:ref:refs/heads/main", "ref": "refs/heads/main", "sha": sha,
        "repository": "acme/web", "repository_owner": "acme", "run_id": "12345678901",
        "run_number": "10", "run_attempt": "2", "actor": "octocat", "workflow": "build",
        "workflow_ref": "acme/web/.github/workflows/build.yml@refs/heads/main",
        "event_name": "push", "ref_type": "branch", "runner_environment": "github-hosted",
    })
}

/// A token exchanged at `POST /token` for a GitHub identity token.
async fn exchanged_token(handler: &Handler, github: &Issuer) -> String {
    let identity = github.sign(&github.claims(AUDIENCE, github_claims()));
    let response = reqwest::Client::new()
        .post(format!("{}/token", handler.base_url))
        .bearer_auth(identity)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

async fn put(handler: &Handler, path: &str, token: &str, body: &[u8]) -> StatusCode {
    no_redirects()
        .put(format!("{}{path}", handler.base_url))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// A GET as Nx makes it: a redirect is followed, and the final status is what counts.
async fn get(handler: &Handler, path: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}{path}", handler.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// `handler ARGS` with the store settings `env` (as the server has them).
fn run(env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(args)
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", TEST_SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// The entries `handler entries --json ARGS` lists, by `namespace/hash`, sorted.
fn listed(env: &[(&str, String)], args: &[&str]) -> Vec<Value> {
    let mut all = vec!["entries", "--json"];
    all.extend_from_slice(args);
    let output = run(env, &all);
    assert!(
        output.status.success(),
        "entries {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut entries: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    entries.sort_by_key(name);
    entries
}

fn name(entry: &Value) -> String {
    format!(
        "{}/{}",
        entry["namespace"].as_str().unwrap(),
        entry["hash"].as_str().unwrap()
    )
}

fn names(env: &[(&str, String)], args: &[&str]) -> Vec<String> {
    listed(env, args).iter().map(name).collect()
}

/// The token id (`jti`) inside one of this cache's tokens.
fn token_id(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// Everything the issue asks of `entries` and `purge`, on the store `env` names, with `handler`
/// serving it. The entry `teams/web/301` was stored without a writer by the caller.
async fn entries_and_purge(handler: &Handler, env: &[(&str, String)], github: &Issuer) {
    let issued = issue_token(&["--org", "--subject", "ci-org"]);
    let exchanged = exchanged_token(handler, github).await;
    for hash in ["101", "102"] {
        assert_eq!(
            put(handler, &format!("/v1/cache/{hash}"), &issued, b"org").await,
            200
        );
    }
    for hash in ["201", "202"] {
        let path = format!("/teams/web/v1/cache/{hash}");
        assert_eq!(put(handler, &path, &exchanged, b"web-bytes").await, 200);
    }

    // Each writer as it was.
    let all = listed(env, &[]);
    let all_names: Vec<String> = all.iter().map(name).collect();
    assert_eq!(
        all_names,
        [
            "org/101",
            "org/102",
            "teams/web/201",
            "teams/web/202",
            "teams/web/301"
        ]
    );
    let issued_writer = &all[0]["writer"];
    assert_eq!(issued_writer["token_id"], token_id(&issued));
    assert_eq!(issued_writer["subject"], "ci-org");
    assert_eq!(issued_writer["kind"], "issued");
    assert!(issued_writer["rule"].is_null());
    assert_eq!(all[0]["bytes"], 3);
    assert!(all[0]["created"].as_str().unwrap().ends_with('Z'));
    let exchanged_writer = &all[2]["writer"];
    assert_eq!(exchanged_writer["token_id"], token_id(&exchanged));
    assert_eq!(
        exchanged_writer["subject"],
        "github:acme/web:refs/heads/main"
    );
    assert_eq!(exchanged_writer["kind"], "exchanged");
    assert_eq!(exchanged_writer["rule"], "web-main");
    assert_eq!(exchanged_writer["issuer"], github.issuer());
    assert_eq!(
        exchanged_writer["claims"],
        json!({
            "repository": "acme/web", "ref": "refs/heads/main",
            "sha": "95d18d66afd2c0609f6c41bd537a827beb698e64", "run_id": "12345678901",
            "run_attempt": "2", "actor": "octocat", "event_name": "push",
            "workflow_ref": "acme/web/.github/workflows/build.yml@refs/heads/main",
        })
    );
    assert!(all[4]["writer"].is_null(), "stored without a record");

    // Each filter selects exactly what it says.
    let issued_id = token_id(&issued);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--org"], vec!["org/101", "org/102"]),
        (
            vec!["--team", "web"],
            vec!["teams/web/201", "teams/web/202", "teams/web/301"],
        ),
        (vec!["--team", "api"], vec![]),
        (vec!["--hash", "201"], vec!["teams/web/201"]),
        (vec!["--org", "--hash", "201"], vec![]),
        (vec!["--token-id", &issued_id], vec!["org/101", "org/102"]),
        (vec!["--subject", "ci-org"], vec!["org/101", "org/102"]),
        (
            vec!["--rule", "web-main"],
            vec!["teams/web/201", "teams/web/202"],
        ),
        (
            vec!["--claim", "repository=acme/*"],
            vec!["teams/web/201", "teams/web/202"],
        ),
        (
            vec!["--claim", "repository=acme/*", "--claim", "actor=nobody"],
            vec![],
        ),
        (vec!["--no-writer"], vec!["teams/web/301"]),
        (vec!["--until", "1h"], vec![]),
        (vec!["--since", "1h", "--org"], vec!["org/101", "org/102"]),
        (vec!["--since", "2999-01-01T00:00:00Z"], vec![]),
    ];
    for (args, expected) in cases {
        assert_eq!(names(env, &args), expected, "entries {args:?}");
    }
    // The table for people names the writer too.
    let table = run(env, &["entries", "--rule", "web-main"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.lines().next().unwrap().starts_with("namespace"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .filter(|l| l.contains("github:acme/web:refs/heads/main"))
            .count()
            == 2,
        "{table}"
    );

    // Bad input exits 2 with a message and deletes nothing.
    for args in [
        vec!["purge", "--rule", "web-main", "--yes", "--bogus"],
        vec!["purge", "--claim", "repository", "--yes"],
        vec!["purge", "--since", "last tuesday", "--yes"],
        vec!["purge", "--no-writer", "--rule", "web-main", "--yes"],
        vec!["purge", "--team", "Web", "--yes"],
        vec!["purge", "--yes"],
        vec!["entries", "--until", "soon"],
    ] {
        let output = run(env, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    let no_filter = run(env, &["purge", "--yes"]);
    assert!(String::from_utf8_lossy(&no_filter.stderr).contains("--all"));
    assert_eq!(names(env, &[]).len(), 5, "nothing deleted");

    // A dry run lists and deletes nothing.
    let dry = run(env, &["purge", "--rule", "web-main"]);
    assert!(dry.status.success());
    let stdout = String::from_utf8(dry.stdout).unwrap();
    assert!(
        stdout.contains("would delete 2 entries (18 bytes)"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("would delete teams/web "))
            .count(),
        2
    );
    let dry_json = run(env, &["purge", "--rule", "web-main", "--json"]);
    let lines: Vec<Value> = String::from_utf8(dry_json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two entries and the summary");
    assert_eq!(lines[2]["dry_run"], true);
    assert_eq!(lines[2]["deleted"], 0);
    assert_eq!(names(env, &[]).len(), 5, "a dry run deletes nothing");

    // --yes deletes exactly the selection, one audit line each.
    let purge = run(env, &["purge", "--rule", "web-main", "--yes"]);
    let stderr = String::from_utf8_lossy(&purge.stderr);
    assert!(purge.status.success(), "{stderr}");
    let audit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("purged teams/web/"))
        .collect();
    assert_eq!(audit.len(), 2, "{stderr}");
    for line in audit {
        assert!(line.contains(&token_id(&exchanged)), "{line}");
        assert!(line.contains("github:acme/web:refs/heads/main") && line.contains("web-main"));
    }
    assert!(
        String::from_utf8_lossy(&purge.stdout)
            .contains("deleted 2 of 2 selected entries (18 bytes)")
    );
    assert_eq!(names(env, &[]), ["org/101", "org/102", "teams/web/301"]);

    // The purged entries miss, and store again (with their new writer).
    for hash in ["201", "202"] {
        let path = format!("/teams/web/v1/cache/{hash}");
        assert_eq!(get(handler, &path, &exchanged).await, 404, "{path}");
    }
    let path = "/teams/web/v1/cache/201";
    assert_eq!(put(handler, path, &exchanged, b"clean").await, 200);
    assert_eq!(get(handler, path, &exchanged).await, 200);
    assert_eq!(names(env, &["--hash", "201"]), ["teams/web/201"]);

    // The entry without a writer is purged by --no-writer alone.
    let purge = run(env, &["purge", "--no-writer", "--yes"]);
    assert!(purge.status.success());
    assert!(String::from_utf8_lossy(&purge.stderr).contains("writer unknown"));
    assert_eq!(names(env, &[]), ["org/101", "org/102", "teams/web/201"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_entries_record_their_writer_and_purge_deletes_a_selection() {
    let github = Issuer::start("").await;
    let data = tempfile::tempdir().unwrap();
    let policy = policy(&github);
    let handler = Handler::start_in(data.path(), &[("NX_CACHE_TRUST_POLICY", &policy)]);
    let bare = data.path().join("teams/web/301");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    std::fs::write(&bare, b"old").unwrap();
    let env = vec![("NX_CACHE_DIR", data.path().display().to_string())];
    entries_and_purge(&handler, &env, &github).await;
    // Records went with their entries: one per entry left with a writer.
    let records = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".record")
            })
            .count()
    };
    assert_eq!(records(&data.path().join("org")), 2);
    assert_eq!(records(&data.path().join("teams/web")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_entries_record_their_writer_in_metadata_and_purge_deletes_a_selection() {
    let github = Issuer::start("").await;
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let env = azurite.key_env(CONTAINER);
    let policy = policy(&github);
    let handler = Handler::start_with(&env, &[("NX_CACHE_TRUST_POLICY", &policy)]);
    let client = azurite.http_client();
    azurite
        .put_blob(&client, CONTAINER, "teams/web/301", b"old".to_vec())
        .await;
    // Not an entry of this cache: never listed, never purged.
    azurite
        .put_blob(&client, CONTAINER, ".nx-cache-probe", b"p".to_vec())
        .await;
    entries_and_purge(&handler, &env, &github).await;
    let mut blobs = azurite.list_blobs(CONTAINER, None).await;
    blobs.sort();
    assert_eq!(
        blobs,
        [".nx-cache-probe", "org/101", "org/102", "teams/web/201"]
    );
}

/// A blob deleted behind a running instance's back (exact hit checks remember it) is stored
/// again by the next upload at once: a `409 exists` is answered only after storage confirmed it.
/// With redirects, the GET between the deletion and the new upload follows the redirect to
/// storage's 404 (a miss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_deleted_behind_a_running_instance_is_stored_again() {
    deleted_behind_the_instance("redirect", "4242").await;
}

/// The same with downloads by size (the default): the entry was answered with its bytes and kept
/// in the memory copy; the upload that stores it again also drops the copy, so the next GET
/// answers the new bytes at once (a purged poisoned entry replaced by a good one is not served
/// from memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_deleted_behind_a_running_instance_is_stored_and_served_again_inline() {
    deleted_behind_the_instance("auto", "4343").await;
}

async fn deleted_behind_the_instance(download: &str, hash: &str) {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let env = azurite.key_env(CONTAINER);
    let handler = Handler::start_with(&env, &[("NX_CACHE_DOWNLOAD", download)]);
    let token = issue_token(&["--org"]);
    let path = format!("/v1/cache/{hash}");
    let path = path.as_str();
    assert_eq!(put(&handler, path, &token, b"first").await, 200);
    let hit = no_redirects()
        .get(format!("{}{path}", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    if download == "redirect" {
        assert_eq!(hit.status(), StatusCode::TEMPORARY_REDIRECT);
    } else {
        assert_eq!(hit.status(), StatusCode::OK);
        assert_eq!(hit.bytes().await.unwrap().as_ref(), b"first");
    }
    assert_eq!(
        put(&handler, path, &token, b"again").await,
        409,
        "it exists"
    );

    azurite
        .delete_blob(&azurite.http_client(), CONTAINER, &format!("org/{hash}"))
        .await;
    if download == "redirect" {
        // Nx follows the redirect it may still get (within the bound) to storage's 404: a miss.
        assert_eq!(get(&handler, path, &token).await, 404);
    }
    assert_eq!(
        put(&handler, path, &token, b"second").await,
        200,
        "stored again"
    );
    let bytes = reqwest::Client::new()
        .get(format!("{}{path}", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), b"second");
}

/// The managed-identity path (a token credential, Azurite with OAuth): the writer is recorded
/// on a single Put Blob and on a Commit Block List (an upload over one block), listed with the
/// handler's credential, and purged with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_managed_identity_writers_are_recorded_listed_and_purged() {
    use common::azurite::{IdentityEndpoint, Tls};
    let tls = Tls::generate();
    let azurite = Azurite::start_oauth(&tls);
    azurite.create_container(CONTAINER, Some(&tls)).await;
    let identity = IdentityEndpoint::start().await;
    let env = identity.handler_env(azurite.endpoint(), CONTAINER, &tls);
    let handler = Handler::start_with(&env, &[]);
    let token = issue_token(&["--team", "web", "--subject", "pipeline-7"]);
    assert_eq!(
        put(&handler, "/teams/web/v1/cache/1", &token, b"small").await,
        200
    );
    let large = vec![5u8; 5 * 1024 * 1024 + 1];
    assert_eq!(
        put(&handler, "/teams/web/v1/cache/2", &token, &large).await,
        200
    );

    let cli = |args: &'static [&'static str]| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || run(&env, args))
    };
    let output = cli(&["entries", "--json", "--subject", "pipeline-7"])
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        assert_eq!(entry["writer"]["token_id"], token_id(&token));
        assert_eq!(entry["writer"]["kind"], "issued");
    }
    let output = cli(&["purge", "--hash", "2", "--yes"]).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        azurite.list_blobs(CONTAINER, Some(&tls)).await,
        ["teams/web/1"]
    );
}

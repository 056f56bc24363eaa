//! The `handler` executable as a user meets it: first run, configuration errors, token issuing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn handler() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// Runs `handler` expecting a configuration failure; returns its stderr.
fn config_failure(vars: &[(&str, &str)]) -> String {
    config_failure_with(&[], vars)
}

/// The same, with extra command-line arguments.
fn config_failure_with(args: &[&str], vars: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = handler()
        .args(["--port", "0"])
        .args(args)
        .env("NX_CACHE_DIR", dir.path())
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts instead of failing would never exit: bound the wait.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        let _ = tx.send(text);
    });
    let text = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(text) => text,
        Err(_) => {
            let _ = child.kill();
            panic!("{vars:?}: handler started instead of refusing the configuration");
        }
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "{vars:?} must fail");
    text
}

#[test]
fn each_configuration_mistake_is_one_line_naming_the_setting() {
    let cases = [
        ("NX_CACHE_MODE", "sometimes"),
        ("NX_CACHE_JWT_SECRET", "too-short"),
        ("NX_CACHE_MAX_ARTIFACT_SIZE", "big"),
        ("PORT", "eighty"),
    ];
    for (name, value) in cases {
        let stderr = config_failure(&[(name, value)]);
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("configuration error: {name}:")),
            "{stderr}"
        );
    }
}

#[test]
fn settings_that_would_weaken_security_are_refused_at_startup() {
    /// Arguments, environment, the setting the one-line error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        // 32 bytes is too short for HS512 (RFC 7518: at least the hash size, 64 bytes).
        (
            &[],
            &[
                ("NX_CACHE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
                ("NX_CACHE_JWT_ALGORITHM", "HS512"),
            ],
            "NX_CACHE_JWT_SECRET",
        ),
        // An account key over plain http to a real account.
        (
            &[],
            &[
                (
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "DefaultEndpointsProtocol=http;AccountName=acme;AccountKey=a2V5a2V5;EndpointSuffix=core.windows.net",
                ),
                ("AZURE_STORAGE_CONTAINER", "nx-cache"),
            ],
            "AZURE_STORAGE_CONNECTION_STRING",
        ),
        // The development secret (and the read-write token printed with it) off loopback.
        (&["--bind", "0.0.0.0"], &[], "NX_CACHE_JWT_SECRET"),
    ];
    for (args, vars, setting) in cases {
        let stderr = config_failure_with(args, vars);
        assert_eq!(stderr.lines().count(), 1, "{args:?} {vars:?}: {stderr}");
        assert!(
            stderr.contains(&format!("configuration error: {setting}:")),
            "{stderr}"
        );
    }
}

/// Under the Functions host a missing secret (an unresolved Key Vault reference, say) does not
/// take the cache down: the handler answers misses, `/health` says 503 and the log says why.
/// Outside Functions it is a startup error.
#[tokio::test]
async fn a_missing_secret_is_a_startup_error_outside_functions_and_misses_under_it() {
    let stderr = config_failure_with(&["--bind", "0.0.0.0"], &[]);
    assert!(stderr.contains("NX_CACHE_JWT_SECRET"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let data = tempfile::tempdir().unwrap();
    let handler = common::Handler::launch(
        std::path::Path::new(env!("CARGO_BIN_EXE_handler")),
        &[],
        data.path(),
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "0"),
            ("NX_CACHE_JWT_SECRET", ""),
        ],
    );
    let health = reqwest::get(format!("{}/health", handler.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let miss = reqwest::get(format!("{}/v1/cache/42", handler.base_url))
        .await
        .unwrap();
    assert_eq!(miss.status(), 404);
    let why = handler.wait_for_log(Duration::from_secs(10), |line| {
        line.contains("\"level\":\"ERROR\"") && line.contains("NX_CACHE_JWT_SECRET: not set")
    });
    assert!(why.is_some(), "{:#?}", handler.logs());
}

#[tokio::test]
async fn first_run_creates_a_dev_secret_and_prints_working_exports() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = handler()
        .args(["--port", "0"])
        .env("NX_CACHE_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Every `export NAME=VALUE` line of the banner, until Turborepo's team (its last line).
    let mut exports = std::collections::HashMap::new();
    while !exports.contains_key("TURBO_TEAM") {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the banner must be printed");
        if let Some((name, value)) = line
            .strip_prefix("export ")
            .and_then(|rest| rest.split_once('='))
        {
            exports.insert(name.to_owned(), value.to_owned());
        }
    }
    let server = exports["NX_SELF_HOSTED_REMOTE_CACHE_SERVER"].clone();
    let token = exports["NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"].clone();
    assert!(dir.path().join(".dev-jwt-secret").is_file());

    let client = reqwest::Client::new();
    let url = format!("{server}/v1/cache/123");
    let stored = client
        .put(&url)
        .bearer_auth(&token)
        .body("artifact")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let hit = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(hit.text().await.unwrap(), "artifact");
    // Turborepo's three variables reach the org-wide cache through turbo's API.
    let turbo = format!(
        "{}/v8/artifacts/0123456789abcdef?slug={}",
        exports["TURBO_API"], exports["TURBO_TEAM"]
    );
    let stored = client
        .put(&turbo)
        .bearer_auth(&exports["TURBO_TOKEN"])
        .body("turbo artifact")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let hit = client
        .get(&turbo)
        .bearer_auth(&exports["TURBO_TOKEN"])
        .send()
        .await
        .unwrap();
    assert_eq!(hit.text().await.unwrap(), "turbo artifact");
    child.kill().unwrap();
    child.wait().unwrap();

    // Tokens issued later with the same data directory are signed with the same secret.
    let issued = handler()
        .args(["token", "issue", "--org", "--read-only"])
        .env("NX_CACHE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(issued.status.success());
    let secret_before = std::fs::read(dir.path().join(".dev-jwt-secret")).unwrap();
    let again = handler()
        .args(["token", "issue", "--org"])
        .env("NX_CACHE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(dir.path().join(".dev-jwt-secret")).unwrap(),
        secret_before
    );
}

#[test]
fn token_issue_prints_only_the_token() {
    let output = handler()
        .args([
            "token",
            "issue",
            "--team",
            "web",
            "--read-only",
            "--expires-in",
            "12h",
            "--subject",
            "dev",
        ])
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let token = stdout.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["teams"], serde_json::json!(["web"]));
    assert_eq!(claims["org"], false);
    assert_eq!(claims["access"], "read-only");
    assert_eq!(claims["sub"], "dev");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 12 * 3600);
    assert!(!claims["jti"].as_str().unwrap().is_empty());
}

#[test]
fn token_issue_refuses_bad_requests() {
    let cases: [&[&str]; 4] = [
        &[],
        &["--team", "Not_A_Team"],
        &["--org", "--expires-in", "forever"],
        // Longer than NX_CACHE_MAX_TOKEN_LIFETIME (90 days by default).
        &["--org", "--expires-in", "500000years"],
    ];
    for args in cases {
        let output = handler()
            .args(["token", "issue"])
            .args(args)
            .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(
            !output.stderr.is_empty(),
            "{args:?}: an explanation on stderr"
        );
    }
    let output = handler()
        .args(["token", "issue", "--org", "--expires-in", "91d"])
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NX_CACHE_MAX_TOKEN_LIFETIME"), "{stderr}");
}

#[tokio::test]
async fn usage_lists_every_namespace_of_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = common::Handler::start_in(dir.path(), &[]);
        let token = common::issue_token(&["--org", "--team", "web", "--team", "api"]);
        let client = reqwest::Client::new();
        for (path, len) in [
            ("/v1/cache/1", 100),
            ("/v1/cache/2", 50),
            ("/teams/web/v1/cache/3", 7),
            ("/teams/api/v1/cache/4", 1),
        ] {
            let stored = client
                .put(format!("{}{path}", server.base_url))
                .bearer_auth(&token)
                .body(vec![1u8; len])
                .send()
                .await
                .unwrap();
            assert_eq!(stored.status(), 200);
        }
    }
    let run = |json: bool| {
        let mut command = handler();
        command
            .arg("usage")
            .env("NX_CACHE_DIR", dir.path())
            .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let usage: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let rows = common::usage_rows(&usage);
    assert_eq!(
        rows,
        vec![
            ("org".to_string(), 2, 150),
            ("team:api".to_string(), 1, 1),
            ("team:web".to_string(), 1, 7),
        ]
    );
    assert_eq!(usage["total"]["entries"], 4);
    assert_eq!(usage["total"]["bytes"], 158);
    let table = run(false);
    assert!(table.starts_with("namespace"), "{table}");
    let total = table.lines().last().unwrap();
    assert!(
        total.starts_with("total") && total.contains(" 4 ") && total.contains(" 158 "),
        "{table}"
    );
}

/// Trust rules that do not mean what they say stop the server, one line naming the rule and the
/// reason. Each was accepted before the write-access checks (0.1.0), or before 0.3.0.
#[test]
fn trust_rules_that_would_hand_out_more_than_they_say_stop_the_server() {
    let github = "https://token.actions.githubusercontent.com";
    let rule = |issuer: &str, claims: serde_json::Value, access: &str| {
        serde_json::json!({"rules": [{"name": "r1", "issuer": issuer, "audience": "nx-cache",
            "claims": claims, "grant": {"teams": ["web"], "access": access}}]})
        .to_string()
    };
    let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let cases = [
        (
            rule(
                github,
                serde_json::json!({"repository": "acme/web", "ref": "refs/heads/main"}),
                "read-write",
            ),
            "pull_request_target",
        ),
        (
            rule(
                github,
                serde_json::json!({"sub": "environment:production"}),
                "read-only",
            ),
            "every GitHub repository",
        ),
        (
            rule(
                github,
                serde_json::json!({"job_workflow_ref": "acme/shared/.github/workflows/build.yml@refs/heads/main"}),
                "read-only",
            ),
            "every GitHub repository",
        ),
        (
            rule(
                "https://gitlab.com",
                serde_json::json!({"project_path": "acme/web", "ref": "main"}),
                "read-write",
            ),
            "ref_protected",
        ),
        (
            rule(
                &format!("https://login.microsoftonline.us/{tid}/v2.0"),
                serde_json::json!({"scp": "user_impersonation"}),
                "read-only",
            ),
            "tid",
        ),
        (
            rule(
                "https://GITLAB.com:443",
                serde_json::json!({"project_path": "acme/web"}),
                "read-only",
            ),
            "write \"https://gitlab.com\"",
        ),
        // Accepted by 0.2.0, refused since: a write rule names one repository or project...
        (
            rule(
                github,
                serde_json::json!({"repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"}),
                "read-write",
            ),
            "write \"repository\": \"acme/REPO\"",
        ),
        (
            rule(
                github,
                serde_json::json!({"repository": "acme/*", "ref": "refs/heads/main", "event_name": "push"}),
                "read-write",
            ),
            "one repository",
        ),
        (
            rule(
                github,
                serde_json::json!({"sub": "repo:acme/*", "ref": "refs/heads/main", "event_name": "push"}),
                "read-write",
            ),
            "one repository",
        ),
        (
            rule(
                "https://gitlab.com",
                serde_json::json!({"namespace_path": "acme", "ref_protected": "true"}),
                "read-write",
            ),
            "write \"project_path\": \"GROUP/PROJECT\"",
        ),
        // ... a GitHub one always names the branch, a wildcard only after a '/' ...
        (
            rule(
                github,
                serde_json::json!({"repository": "acme/web", "environment": "production", "event_name": "workflow_dispatch"}),
                "read-write",
            ),
            "\"ref\": \"refs/heads/main\"",
        ),
        (
            rule(
                github,
                serde_json::json!({"repository": "acme/web", "ref": "refs/heads/m*", "event_name": "push"}),
                "read-write",
            ),
            "a '*' only directly after a '/'",
        ),
        // ... every GitHub issuer gets the GitHub checks; another needs a literal pin ...
        (
            rule(
                "https://token.actions.acme.ghe.com",
                serde_json::json!({"repository": "acme/web", "ref": "refs/heads/main"}),
                "read-write",
            ),
            "pull_request_target",
        ),
        (
            rule(
                "https://ci.example.com",
                serde_json::json!({"sub": "*:*"}),
                "read-only",
            ),
            "no identity condition",
        ),
        // ... a GitLab one excludes protected tags ...
        (
            rule(
                "https://gitlab.com",
                serde_json::json!({"project_path": "acme/web", "ref_protected": "true"}),
                "read-write",
            ),
            "\"ref_type\": \"branch\"",
        ),
        // ... an Entra one pins an application, and ids are GUIDs.
        (
            rule(
                &format!("https://sts.windows.net/{tid}/"),
                serde_json::json!({"tid": tid, "groups": "anything"}),
                "read-write",
            ),
            "read-write needs an exact \"oid\"",
        ),
        (
            rule(
                &format!("https://sts.windows.net/{tid}/"),
                serde_json::json!({"tid": tid, "oid": "o-1"}),
                "read-only",
            ),
            "oid 'o-1' is not a GUID",
        ),
        (
            rule(
                "https://sts.windows.net/TENANT_ID/",
                serde_json::json!({"tid": tid, "oid": "11111111-1111-1111-1111-111111111111"}),
                "read-only",
            ),
            "the tenant 'TENANT_ID' in issuer",
        ),
    ];
    for (policy, reason) in cases {
        let stderr = config_failure(&[
            ("NX_CACHE_JWT_SECRET", common::TEST_SECRET),
            ("NX_CACHE_TRUST_POLICY", &policy),
        ]);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("handler: configuration error: NX_CACHE_TRUST_POLICY: rule 'r1': "),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}

/// The rule shapes 0.3.0 asks for start the server: a GitHub write rule on one repository with
/// its event and branch (`refs/heads/release/*` too), an owner-wide read-only rule, a
/// data-residency GitHub issuer, a GitLab write rule on a protected branch of one project, an
/// Entra write rule on a tenant and an object id.
#[tokio::test]
async fn the_rule_shapes_0_3_0_asks_for_start_the_server() {
    let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let rule = |name: &str, issuer: &str, claims: serde_json::Value, access: &str| {
        serde_json::json!({"name": name, "issuer": issuer,
            "audience": "https://acme-nx-cache.azurewebsites.net",
            "claims": claims, "grant": {"teams": ["web"], "access": access}})
    };
    let github = "https://token.actions.githubusercontent.com";
    let policy = serde_json::json!({"rules": [
        rule("web-main", github, serde_json::json!({"repository": "acme/web",
            "ref": ["refs/heads/main", "refs/heads/release/*"], "event_name": "push"}), "read-write"),
        rule("acme-read", github, serde_json::json!({"repository_owner": "acme"}), "read-only"),
        rule("residency", "https://token.actions.acme.ghe.com", serde_json::json!({
            "repository": "acme/web", "ref": "refs/heads/main", "event_name": "push",
            "environment": "production"}), "read-write"),
        rule("gitlab", "https://gitlab.com", serde_json::json!({"project_path": "acme/web",
            "ref_protected": "true", "ref_type": "branch"}), "read-write"),
        rule("pipeline", &format!("https://sts.windows.net/{tid}/"), serde_json::json!({
            "tid": tid, "oid": "0f0e0d0c-aaaa-bbbb-cccc-111122223333"}), "read-write"),
    ]})
    .to_string();
    let handler = common::Handler::start(&[("NX_CACHE_TRUST_POLICY", &policy)]);
    // Serving, with the exchange on: POST /token without an identity is a 401, not a 404.
    let response = reqwest::Client::new()
        .post(format!("{}/token", handler.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let logs = handler.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("token exchange on") && l.contains("\"rules\":5")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("\"level\":\"WARN\"")),
        "no placeholder in these values: {logs:#?}"
    );
    drop(handler);

    // A value that looks like a placeholder left from the docs starts the server too (real
    // names can look like that), with a warning naming the rule.
    let policy = serde_json::json!({"rules": [
        rule("prs", github, serde_json::json!({"repository": "OWNER/REPO"}), "read-only"),
    ]})
    .to_string();
    let handler = common::Handler::start(&[("NX_CACHE_TRUST_POLICY", &policy)]);
    let warning = handler.wait_for_log(Duration::from_secs(10), |line| {
        line.contains("\"level\":\"WARN\"")
            && line.contains("rule 'prs': the condition on repository")
    });
    assert!(
        warning.is_some_and(|w| w.contains("OWNER")),
        "{:#?}",
        handler.logs()
    );
}

//! Keyless access end to end: `POST /token` against stand-in identity issuers on loopback
//! (discovery, a JWKS of RS256 keys generated here, rotated mid-test), the real `nx` CLI using
//! the exchanged tokens, and every client snippet of `docs/keyless.md` run as written there (the
//! Turborepo ones with the real `turbo` CLI).
//!
//! The identity tokens have the shapes their vendors document:
//! - GitHub Actions: github/docs `content/actions/reference/security/oidc.md` (claims, all strings;
//!   `sub` formats) and `content/actions/concepts/security/openid-connect.md` (example token);
//!   the runner's request endpoint answers `{"value": ...}` (actions/toolkit `oidc-utils.ts`).
//! - GitLab CI `id_tokens`: gitlab `doc/ci/secrets/id_token_authentication.md` (claims; strings
//!   except `runner_id`; `sub` = `project_path:...:ref_type:...:ref:...`).
//! - Microsoft Entra ID access tokens, v1 and v2: entra-docs
//!   `docs/identity-platform/access-token-claims-reference.md` (v1 `iss`
//!   `https://sts.windows.net/{tid}/` with `appid`, `upn`, `unique_name`; v2 `iss`
//!   `.../{tid}/v2.0` with `azp`, `aud` = client id; `roles`, `groups` arrays; app-only tokens
//!   have `oid == sub`, `idtyp: app`).

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::nx::{PROJECTS, Workspace, remote_hits};
use common::oidc::{Issuer, RUNNER_REQUEST_TOKEN};
use common::turbo::{PACKAGES as TURBO_PACKAGES, Run as TurboRun, Workspace as TurboWorkspace};
use common::{Handler, issue_token};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The audience of the tests' GitHub and GitLab rules, as the docs recommend: the cache's URL.
const AUDIENCE: &str = "https://acme-nx-cache.azurewebsites.net";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CACHE_APP_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const PIPELINE_OID: &str = "0f0e0d0c-aaaa-bbbb-cccc-111122223333";
const DEVELOPERS: &str = "5b7c1e2a-3d4f-4a6b-8c9d-0e1f2a3b4c5d";
const AZURE_CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

fn cache_app_uri() -> String {
    format!("api://{CACHE_APP_ID}")
}

/// The issuers of one test: GitHub-, GitLab- and Entra-shaped (v1 and v2), all on loopback. Their
/// rules declare the issuer's `kind`, so each gets its issuer's checks as a public issuer would.
struct Issuers {
    github: Issuer,
    gitlab: Issuer,
    entra_v1: Issuer,
    entra_v2: Issuer,
}

impl Issuers {
    async fn start() -> Issuers {
        Issuers {
            github: Issuer::start("").await,
            gitlab: Issuer::start("/gitlab").await,
            entra_v1: Issuer::start(&format!("/{TENANT}/")).await,
            entra_v2: Issuer::start(&format!("/{TENANT}/v2.0")).await,
        }
    }

    /// The trust policy of the tests, written as text so the rules' claim order is kept.
    fn policy(&self) -> String {
        let (github, gitlab) = (self.github.issuer(), self.gitlab.issuer());
        let (v1, v2) = (self.entra_v1.issuer(), self.entra_v2.issuer());
        let app = cache_app_uri();
        format!(
            r#"{{"rules": [
  {{"name": "web-main", "issuer": "{github}", "kind": "github", "audience": "{AUDIENCE}",
   "claims": {{"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}},
   "grant": {{"teams": ["web"], "access": "read-write"}}, "ttl": "2h"}},
  {{"name": "web-prs", "issuer": "{github}", "kind": "github", "audience": "{AUDIENCE}",
   "claims": {{"repository": "acme/web"}},
   "grant": {{"org": true, "teams": ["web"], "access": "read-only"}}}},
  {{"name": "gitlab-protected", "issuer": "{gitlab}", "kind": "gitlab", "audience": "{AUDIENCE}",
   "claims": {{"project_path": "acme/web", "ref_protected": "true", "ref_type": "branch"}},
   "grant": {{"teams": ["web"], "access": "read-write"}}}},
  {{"name": "web-pipeline", "issuer": "{v1}", "kind": "entra", "audience": "{app}",
   "claims": {{"tid": "{TENANT}", "oid": "{PIPELINE_OID}"}},
   "grant": {{"teams": ["web"], "access": "read-write"}}}},
  {{"name": "developers", "issuer": "{v1}", "kind": "entra", "audience": "{app}",
   "claims": {{"tid": "{TENANT}", "groups": "{DEVELOPERS}"}},
   "grant": {{"org": true, "teams": ["web", "api"], "access": "read-only"}}, "ttl": "12h"}},
  {{"name": "developers-v2", "issuer": "{v2}", "kind": "entra", "audience": "{CACHE_APP_ID}",
   "claims": {{"tid": "{TENANT}", "groups": "{DEVELOPERS}"}},
   "grant": {{"org": true, "access": "read-only"}}}}
]}}"#
        )
    }

    fn handler(&self, extra: &[(&str, &str)]) -> Handler {
        let policy = self.policy();
        let mut vars = vec![("NX_CACHE_TRUST_POLICY", policy.as_str())];
        vars.extend_from_slice(extra);
        Handler::start(&vars)
    }
}

/// GitHub Actions ID-token claims for a push to `git_ref`, or a pull request when `git_ref` is
/// `refs/pull/N/merge` (github/docs example token; every custom claim is a string).
fn github_claims(repository: &str, git_ref: &str) -> Value {
    let owner = repository.split('/').next().unwrap();
    let pull = git_ref.starts_with("refs/pull/");
    let sha = "95d18d66afd2c0609f6c41bd537a827beb698e64";
    let workflow_ref = format!("{repository}/.github/workflows/build.yml@{git_ref}");
    json!({
        "sub": if pull { format!("repo:{repository}:pull_request") } else { format!("repo:{repository}:ref:{git_ref}") },
        "ref": git_ref,
        "sha": sha,
        "repository": repository,
        "repository_owner": owner,
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "12345678901",
        "run_number": "10",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "build",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "head_ref": if pull { "feature" } else { "" },
        "base_ref": if pull { "main" } else { "" },
        "event_name": if pull { "pull_request" } else { "push" },
        "ref_type": "branch",
    })
}

/// GitLab CI `id_tokens` claims (gitlab docs example; strings except `runner_id`).
fn gitlab_claims(project: &str, branch: &str, protected: bool) -> Value {
    let namespace = project.split('/').next().unwrap();
    json!({
        "namespace_id": "72",
        "namespace_path": namespace,
        "project_id": "20",
        "project_path": project,
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": branch,
        "ref_type": "branch",
        "ref_path": format!("refs/heads/{branch}"),
        "ref_protected": protected.to_string(),
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private",
        "ci_config_ref_uri": format!("gitlab.com/{project}//.gitlab-ci.yml@refs/heads/{branch}"),
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "sub": format!("project_path:{project}:ref_type:branch:ref:{branch}"),
    })
}

/// An Entra ID v1 app-only access token of a pipeline's service connection (`oid == sub`).
fn entra_pipeline_claims(issuer: &str) -> Value {
    json!({
        "aio": "E2RgYDj8qP3+oJmbhj4vlxuJwBwA",
        "appid": "a1b2c3d4-1111-2222-3333-444455556666",
        "appidacr": "2",
        "idp": issuer,
        "idtyp": "app",
        "oid": PIPELINE_OID,
        "rh": "1.AXQAv4j5cvGGr0GRqy180BHbRw.",
        "roles": ["Cache.Write"],
        "sub": PIPELINE_OID,
        "tid": TENANT,
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "1.0",
    })
}

/// An Entra ID v1 delegated access token of a developer signed in with the Azure CLI.
fn entra_developer_claims(groups: &[&str]) -> Value {
    json!({
        "acr": "1",
        "aio": "AVQAq/8TAAAA",
        "amr": ["pwd", "mfa"],
        "appid": AZURE_CLI,
        "appidacr": "0",
        "family_name": "Dev",
        "given_name": "Ada",
        "groups": groups,
        "ipaddr": "203.0.113.7",
        "name": "Ada Dev",
        "oid": "6f9d2e8a-1b3c-4d5e-8f70-112233445566",
        "rh": "0.AXQAv4j5cvGGr0GRqy180BHbRw.",
        "scp": "user_impersonation",
        "sub": "l3_roISQU222bULS9yi2k0XpqpOiMz5H3ZACo1GeXA",
        "tid": TENANT,
        "unique_name": "ada@acme.example",
        "upn": "ada@acme.example",
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "1.0",
    })
}

/// POSTs to `/token` with `identity` as the bearer token; returns (status, content type, body).
async fn exchange(
    handler: &Handler,
    identity: Option<&str>,
    body: Option<&str>,
    json_answer: bool,
) -> (StatusCode, String, String) {
    let mut request = reqwest::Client::new().post(format!("{}/token", handler.base_url));
    if let Some(identity) = identity {
        request = request.bearer_auth(identity);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    if json_answer {
        request = request.header("accept", "application/json");
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The claims of one of this cache's tokens (not verified: the server does that).
fn cache_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The value of a metrics line, e.g. `nx_cache_token_exchanges_total{rule="web-main"}`.
async fn metric(handler: &Handler, name: &str) -> u64 {
    let text = common::metrics_text(&handler.base_url, METRICS_TOKEN).await;
    common::metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

const METRICS_TOKEN: &str = "metrics-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_token_gets_exactly_its_answer() {
    let issuers = Issuers::start().await;
    let stranger = Issuer::start("").await;
    let handler = issuers.handler(&[("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN)]);
    let github = &issuers.github;
    let main = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    let pull =
        github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/pull/7/merge")));

    // A main-branch build: read-write for team web, as plain text, usable at once.
    let (status, content_type, token) = exchange(&handler, Some(&main), None, false).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(content_type, "text/plain");
    let claims = cache_claims(&token);
    assert_eq!(claims["sub"], "github:acme/web:refs/heads/main");
    assert_eq!(claims["teams"], json!(["web"]));
    assert_eq!(claims["org"], false);
    assert_eq!(claims["access"], "read-write");
    assert_eq!(claims["rule"], "web-main");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 2 * 3600, "the rule's ttl");
    let client = reqwest::Client::new();
    let stored = client
        .put(format!("{}/teams/web/v1/cache/1", handler.base_url))
        .bearer_auth(&token)
        .body("artifact")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);

    // A pull request of the same repository: read-only, org and web, as JSON on request.
    let (status, content_type, body) = exchange(&handler, Some(&pull), None, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["access"], "read-only");
    assert_eq!(answer["org"], true);
    assert_eq!(answer["teams"], json!(["web"]));
    assert_eq!(answer["rule"], "web-prs");
    assert_eq!(answer["subject"], "github:acme/web:refs/pull/7/merge");
    let expires_at = time::OffsetDateTime::parse(
        answer["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let in_an_hour = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert!((expires_at - in_an_hour).abs() < time::Duration::minutes(1));
    let refused = client
        .put(format!("{}/teams/web/v1/cache/2", handler.base_url))
        .bearer_auth(answer["token"].as_str().unwrap())
        .body("poison")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "a pull request cannot write"
    );

    // Least privilege: less than the rule grants is given, more is refused by name.
    let (status, _, token) = exchange(
        &handler,
        Some(&main),
        Some(r#"{"access": "read-only"}"#),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache_claims(&token)["access"], "read-only");
    let (status, content_type, message) = exchange(
        &handler,
        Some(&pull),
        Some(r#"{"access": "read-write", "teams": ["web", "api"]}"#),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(content_type, "text/plain");
    assert_eq!(
        message,
        "rule 'web-prs' grants read-only access to org, team web; refused: team api, read-write"
    );
    let (status, _, message) = exchange(&handler, Some(&main), Some("{not json"), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");

    // Refusals, each with its status, as plain text, never echoing the token.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let another_repository =
        github.sign(&github.claims(AUDIENCE, github_claims("acme/api", "refs/heads/main")));
    let another_audience =
        github.sign(&github.claims("someone-else", github_claims("acme/web", "refs/heads/main")));
    let mut expired_claims = github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main"));
    expired_claims["iat"] = (now - 3900).into();
    expired_claims["nbf"] = (now - 4500).into();
    expired_claims["exp"] = (now - 3600).into();
    let expired = github.sign(&expired_claims);
    let main_claims = github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main"));
    let kid = github.public_jwk()["kid"].as_str().unwrap().to_owned();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(main_claims.to_string().as_bytes())
    );
    let confused = {
        // HS256 "signed" with the issuer's public key, the classic algorithm confusion.
        use hmac::{Hmac, Mac};
        let input = format!(
            "{}.{}",
            b64(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#).as_bytes()),
            b64(main_claims.to_string().as_bytes())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&github.public_key_der()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    // One character in the middle of the signature changed.
    let mut tampered = main.clone().into_bytes();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign =
        stranger.sign(&stranger.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    let expected_audience = format!("audience {AUDIENCE}");
    let cases: Vec<(&str, Option<&str>, StatusCode, &str)> = vec![
        (
            "no identity token",
            None,
            StatusCode::UNAUTHORIZED,
            "no identity token",
        ),
        (
            "not a JWT",
            Some("not-a-jwt"),
            StatusCode::UNAUTHORIZED,
            "not a JWT",
        ),
        (
            "another repository",
            Some(&another_repository),
            StatusCode::FORBIDDEN,
            "no trust rule matches this identity: repository=acme/api ref=refs/heads/main event_name=push",
        ),
        (
            "another audience",
            Some(&another_audience),
            StatusCode::UNAUTHORIZED,
            &expected_audience,
        ),
        (
            "expired",
            Some(&expired),
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            "alg none",
            Some(&none),
            StatusCode::UNAUTHORIZED,
            "not a JWT",
        ),
        (
            "HS256 with the public key",
            Some(&confused),
            StatusCode::UNAUTHORIZED,
            "asymmetric",
        ),
        (
            "bad signature",
            Some(&tampered),
            StatusCode::UNAUTHORIZED,
            "signature",
        ),
        (
            "unknown issuer",
            Some(&foreign),
            StatusCode::UNAUTHORIZED,
            "issuer",
        ),
    ];
    for (name, identity, expected, message) in &cases {
        let (status, content_type, body) = exchange(&handler, *identity, None, false).await;
        assert_eq!(status, *expected, "{name}: {body}");
        assert_eq!(content_type, "text/plain", "{name}");
        assert!(body.contains(message), "{name}: {body:?} lacks {message:?}");
        if let Some(identity) = identity {
            assert!(!body.contains(identity), "{name}: the token is echoed");
        }
    }
    assert_eq!(
        stranger.key_requests(),
        0,
        "an issuer no rule names is never contacted"
    );

    // Keys are fetched once (discovery + JWKS), then no issuer request per exchange.
    let fetched = github.key_requests();
    assert_eq!(fetched, 2, "one discovery and one JWKS request so far");
    for _ in 0..20 {
        let (status, _, _) = exchange(&handler, Some(&main), None, false).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        github.key_requests(),
        fetched,
        "warm keys: no issuer request"
    );

    // The issuer rotates its key: the unknown kid makes the server fetch again, then succeed.
    let new_kid = github.rotate();
    let refetched_at = std::time::Instant::now();
    let rotated =
        github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    assert_eq!(
        jsonwebtoken::decode_header(&rotated)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    // The keys were fetched moments ago, and an unknown kid makes the server fetch again at most
    // once every 10 s: the new key is picked up within that interval, by a single re-fetch.
    let mut waited_out = 0;
    loop {
        let (status, _, body) = exchange(&handler, Some(&rotated), None, false).await;
        if status == StatusCode::OK {
            break;
        }
        waited_out += 1;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            refetched_at.elapsed() < std::time::Duration::from_secs(20),
            "the rotated key is not picked up: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        github.key_requests(),
        fetched + 2,
        "fetched again exactly once"
    );
    let refetched_at = std::time::Instant::now();

    // Junk tokens naming unknown keys cannot make the server hammer the issuer: within the
    // refresh interval, not one more fetch.
    for i in 0..20 {
        let junk = format!(
            "{}.{}.{}",
            b64(format!(r#"{{"alg":"RS256","kid":"junk-{i}"}}"#).as_bytes()),
            b64(main_claims.to_string().as_bytes()),
            b64(b"not a signature")
        );
        let (status, _, body) = exchange(&handler, Some(&junk), None, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("key its issuer does not publish"), "{body}");
    }
    // At most one fetch per 10 s: none at all unless this loop outlasted the interval.
    let allowed = 2 * (refetched_at.elapsed().as_secs() / 10) as usize;
    assert!(
        github.key_requests() <= fetched + 2 + allowed,
        "junk kids cause no fetch: {} requests",
        github.key_requests()
    );

    // Entra ID v2 and GitLab shapes, straight to the exchange.
    let v2 = &issuers.entra_v2;
    let mut developer = entra_developer_claims(&[DEVELOPERS]);
    let object = developer.as_object_mut().unwrap();
    for v1_only in [
        "appid",
        "appidacr",
        "upn",
        "unique_name",
        "ipaddr",
        "family_name",
        "given_name",
        "amr",
        "acr",
    ] {
        object.remove(v1_only);
    }
    object.insert("azp".into(), AZURE_CLI.into());
    object.insert("azpacr".into(), "0".into());
    object.insert("preferred_username".into(), "ada@acme.example".into());
    object.insert("ver".into(), "2.0".into());
    let v2_token = v2.sign(&v2.claims(CACHE_APP_ID, developer));
    let (status, _, token) = exchange(&handler, Some(&v2_token), None, false).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let claims = cache_claims(&token);
    assert_eq!(claims["rule"], "developers-v2");
    assert_eq!(
        claims["sub"],
        "entra:ada@acme.example:6f9d2e8a-1b3c-4d5e-8f70-112233445566"
    );
    let gitlab = &issuers.gitlab;
    let unprotected =
        gitlab.sign(&gitlab.claims(AUDIENCE, gitlab_claims("acme/web", "feature", false)));
    let (status, _, body) = exchange(&handler, Some(&unprotected), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "no trust rule matches this identity: project_path=acme/web ref_protected=false ref_type=branch"
    );

    // The metrics count exchanges by rule and refusals by reason; the log names rule and subject.
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchanges_total{rule="web-main"}"#
        )
        .await,
        23
    );
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchanges_total{rule="web-prs"}"#
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchange_refusals_total{reason="no-rule"}"#
        )
        .await,
        2
    );
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchange_refusals_total{reason="scope"}"#
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchange_refusals_total{reason="unknown-issuer"}"#
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &handler,
            r#"nx_cache_token_exchange_refusals_total{reason="signature"}"#
        )
        .await,
        1 + 20 + waited_out
    );
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("\"message\":\"request\"")
                && l.contains("\"path\":\"/token\"")
                && l.contains("\"rule\":\"web-main\"")
                && l.contains("\"subject\":\"github:acme/web:refs/heads/main\""))
    );
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("\"path\":\"/teams/web/v1/cache/1\"")
                && l.contains("\"rule\":\"web-main\""))
    );
    for line in handler.logs() {
        for token in [&main, &pull, &rotated] {
            assert!(
                !line.contains(token.as_str()),
                "an identity token in the log: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_cannot_be_reached_gets_503_and_the_cache_goes_on() {
    let issuers = Issuers::start().await;
    let handler = issuers.handler(&[]);
    let github = &issuers.github;
    github.set_down(true);
    let main = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    let (status, content_type, body) = exchange(&handler, Some(&main), None, false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(content_type, "text/plain");
    assert!(body.contains("cannot be fetched"), "{body}");
    // Cache requests do not depend on any issuer.
    let token = issue_token(&["--team", "web"]);
    let client = reqwest::Client::new();
    let url = format!("{}/teams/web/v1/cache/9", handler.base_url);
    let put = client
        .put(&url)
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let get = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    // The issuer comes back: the next exchange past the refresh interval works. (The interval
    // keeps a failing issuer from being asked more than once every 10 s.)
    github.set_down(false);
    let (status, _, _) = exchange(&handler, Some(&main), None, false).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "within the refresh interval"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, _, body) = exchange(&handler, Some(&main), None, false).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[test]
fn a_main_branch_build_stores_and_hits_and_a_pull_request_build_only_reads() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let github = &issuers.github;
    let web = format!("{}/teams/web", handler.base_url);
    let token_for = |git_ref: &str| {
        let identity = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", git_ref)));
        let (status, _, token) = runtime.block_on(exchange(&handler, Some(&identity), None, false));
        assert_eq!(status, StatusCode::OK, "{token}");
        token
    };
    let writer = token_for("refs/heads/main");
    let workspace = Workspace::new();
    let (ok, first) = workspace.build(&web, Some(&writer));
    assert!(ok, "{first}");
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "the main build stores"
    );
    workspace.forget_local_results(&web);
    let (ok, second) = workspace.build(&web, Some(&writer));
    assert!(ok, "{second}");
    assert_eq!(remote_hits(&second), PROJECTS.len(), "{second}");

    let reader = token_for("refs/pull/7/merge");
    workspace.forget_local_results(&web);
    let (ok, hits) = workspace.build(&web, Some(&reader));
    assert!(ok, "{hits}");
    assert_eq!(
        remote_hits(&hits),
        PROJECTS.len(),
        "a pull request reads: {hits}"
    );
    workspace.touch_sources("changed in the pull request");
    let (ok, changed) = workspace.build(&web, Some(&reader));
    assert!(ok, "a read-only token never fails the build: {changed}");
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "a pull request stores nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// The client snippets of docs/keyless.md, run as written there.

/// The fenced block of docs/keyless.md whose info string is `info`.
fn doc_snippet(info: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keyless.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let mut found = None;
    while let Some(line) = lines.next() {
        if line.trim_end() == format!("```{info}") {
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim_end() != "```")
                .collect();
            assert!(found.is_none(), "two ```{info} blocks in docs/keyless.md");
            found = Some(block.join("\n") + "\n");
        }
    }
    found.unwrap_or_else(|| panic!("no ```{info} block in docs/keyless.md"))
}

/// The literal block scalar (`key: |`) that follows the line `after` (or the first `key: |`),
/// dedented: a script as the CI system would run it.
fn block_scalar(yaml: &str, after: Option<&str>, key: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = match after {
        Some(marker) => lines.iter().position(|l| l.contains(marker)).expect(marker),
        None => 0,
    };
    let opening = lines[start..]
        .iter()
        .position(|l| l.trim_end().ends_with(&format!("{key} |")))
        .map(|i| i + start)
        .unwrap_or_else(|| panic!("no `{key} |` after {after:?}"));
    let key_indent = lines[opening].len() - lines[opening].trim_start().len();
    let body: Vec<&str> = lines[opening + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .copied()
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    body.iter()
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Runs `program args...` with exactly `env` (and `PATH`); returns (success, stdout, stderr).
fn run(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    path_front: Option<&Path>,
) -> (bool, String, String) {
    run_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        program,
        args,
        env,
        path_front,
    )
}

/// [`run`] in the directory `dir` (the checkout of the workspace a CI job runs in).
fn run_in(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    path_front: Option<&Path>,
) -> (bool, String, String) {
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(front) = path_front {
        path = format!("{}:{path}", front.display());
    }
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a GitLab job's `before_script` and then `probe` in one `shell` (as GitLab runs
/// before_script and script), asserting that it never fails the job; its output, and the
/// variables with names starting with `prefix` that the probe printed as `NAME=VALUE`.
fn gitlab_before_script(
    shell: &str,
    before_script: &str,
    probe: &str,
    env: &[(String, String)],
    prefix: &str,
) -> (String, Vec<(String, String)>) {
    let script = format!("{before_script}{probe}");
    let (ok, stdout, stderr) = run(shell, &["-e", "-c", &script], env, None);
    assert!(
        ok,
        "before_script must never fail the job:\n{stdout}\n{stderr}"
    );
    let exported: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (stdout, exported)
}

/// Runs a GitHub Actions `run:` step's script (as the runner does: bash without profile or rc
/// files, `-eo pipefail`), asserting that it never fails the job; its output, and the variables
/// it exported through `$GITHUB_ENV` (`github_env_file`, which `env` names).
fn github_actions_step(
    script_file: &Path,
    env: &[(String, String)],
    github_env_file: &Path,
) -> (String, Vec<(String, String)>) {
    let (ok, stdout, stderr) = run(
        "bash",
        &[
            "--noprofile",
            "--norc",
            "-eo",
            "pipefail",
            script_file.to_str().unwrap(),
        ],
        env,
        None,
    );
    assert!(ok, "the step must never fail the job:\n{stdout}\n{stderr}");
    (stdout, github_env(github_env_file))
}

/// Runs an Azure Pipelines bash step's `script` (as the agent does: bash without profile or
/// rc files), with `bin` first on the PATH (the stand-in `az`), asserting that it never fails
/// the job; its output, where the `##vso[...]` commands are.
fn azure_pipelines_step(script: &str, env: &[(String, String)], bin: &Path) -> String {
    let (ok, stdout, stderr) = run(
        "bash",
        &["--noprofile", "--norc", "-c", script],
        env,
        Some(bin),
    );
    assert!(ok, "the step must never fail the job:\n{stdout}\n{stderr}");
    stdout
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The environment variables the GitHub Actions step exported through `$GITHUB_ENV`.
fn github_env(file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn value_of<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Builds with `env` after the local cache is forgotten; returns nx's output, which must show a
/// successful build.
fn build_with(workspace: &Workspace, env: &[(String, String)], server: &str) -> String {
    workspace.forget_local_results(server);
    let (ok, output) = workspace.build_env(env);
    assert!(ok, "the build must succeed:\n{output}");
    output
}

/// A job whose snippet turned the remote cache off: the build runs, contacts no cache.
fn assert_cache_off(
    workspace: &Workspace,
    env: &[(String, String)],
    handler: &Handler,
    server: &str,
) {
    assert_eq!(
        value_of(env, "NX_SKIP_REMOTE_CACHE"),
        Some("true"),
        "{env:?}"
    );
    assert!(
        value_of(env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN")
            .is_none_or(|t| t.starts_with("$("))
    );
    let requests_before = handler
        .logs()
        .iter()
        .filter(|l| l.contains("/v1/cache/"))
        .count();
    // Even with the server URL set by the job's own configuration, nothing reaches the cache.
    let mut env = env.to_vec();
    env.push(("NX_SELF_HOSTED_REMOTE_CACHE_SERVER".into(), server.into()));
    let output = build_with(workspace, &env, server);
    assert_eq!(remote_hits(&output), 0);
    let requests_after = handler
        .logs()
        .iter()
        .filter(|l| l.contains("/v1/cache/"))
        .count();
    assert_eq!(
        requests_before, requests_after,
        "no cache request with the cache off"
    );
}

#[test]
fn the_github_actions_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let workflow = doc_snippet("yaml github-workflow");
    let script = block_scalar(&workflow, Some("name: Nx remote cache token"), "run:");
    let dir = tempfile::tempdir().unwrap();
    let script_file = dir.path().join("step.sh");
    std::fs::write(&script_file, &script).unwrap();
    let web = format!("{}/teams/web", handler.base_url);
    // What the runner gives the step: its `env:` (the values a user sets) and the ID token
    // request variables (`permissions: id-token: write`), GitHub's default bash flags.
    // A loopback port nobody listens on: GitHub's token service, or the cache, being down.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let token_url = format!("{}/token", handler.base_url);
    let request_url = format!("{}/github/token?api-version=2.0", issuers.github.base);
    let run_with = |github_env_file: &Path, request_url: Option<&str>, token_url: &str| {
        let mut env = vars(&[
            ("NX_CACHE_URL", &web),
            ("NX_CACHE_TOKEN_URL", token_url),
            ("NX_CACHE_AUDIENCE", AUDIENCE),
            ("GITHUB_ENV", github_env_file.to_str().unwrap()),
        ]);
        if let Some(request_url) = request_url {
            env.extend(vars(&[
                ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url),
                ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_REQUEST_TOKEN),
            ]));
        }
        github_actions_step(&script_file, &env, github_env_file)
    };
    let run_step = |github_env_file: &Path, with_id_token: bool| {
        run_with(
            github_env_file,
            with_id_token.then_some(request_url.as_str()),
            &token_url,
        )
    };

    // A push to main: read-write; nx stores, then hits.
    issuers
        .github
        .set_ci_claims(github_claims("acme/web", "refs/heads/main"));
    let (stdout, env) = run_step(&dir.path().join("env-main"), true);
    let token = value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN").expect("a token");
    assert!(
        stdout.contains(&format!("::add-mask::{token}")),
        "the token is masked"
    );
    assert_eq!(
        value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
        Some(web.as_str())
    );
    let workspace = Workspace::new();
    build_with(&workspace, &env, &web);
    assert_eq!(handler.entries("teams/web"), PROJECTS.len());
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");

    // A pull request: read-only; hits, stores nothing new.
    issuers
        .github
        .set_ci_claims(github_claims("acme/web", "refs/pull/7/merge"));
    let (_, env) = run_step(&dir.path().join("env-pr"), true);
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");
    workspace.touch_sources("pull request change");
    build_with(&workspace, &env, &web);
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "nothing stored"
    );

    // A pull request from a fork gets no ID token: the cache is off, the job goes on.
    let (stdout, env) = run_step(&dir.path().join("env-fork"), false);
    assert!(
        stdout.contains("::warning::Nx remote cache is off"),
        "{stdout}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);

    // GitHub's token service is down, or the cache is: the cache is off, the job goes on.
    let unreachable_github = format!("{dead}/github/token?api-version=2.0");
    let (stdout, env) = run_with(
        &dir.path().join("env-github-down"),
        Some(&unreachable_github),
        &token_url,
    );
    assert!(
        stdout.contains("::warning::Nx remote cache is off"),
        "{stdout}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);
    let (stdout, env) = run_with(
        &dir.path().join("env-cache-down"),
        Some(&request_url),
        &format!("{dead}/token"),
    );
    assert!(
        stdout.contains("::warning::Nx remote cache is off"),
        "{stdout}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);

    // Another repository's workflow: refused (403), said so, and the cache is off.
    issuers
        .github
        .set_ci_claims(github_claims("acme/api", "refs/heads/main"));
    let (stdout, env) = run_step(&dir.path().join("env-other"), true);
    assert!(
        stdout.contains("token exchange refused: no trust rule matches"),
        "{stdout}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);
}

#[test]
fn the_gitlab_ci_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let pipeline = doc_snippet("yaml gitlab-ci");
    let before_script = block_scalar(&pipeline, Some("before_script:"), "-");
    let web = format!("{}/teams/web", handler.base_url);
    let gitlab = &issuers.gitlab;
    // GitLab runs before_script and script in one shell: the exports reach nx. The probe prints
    // what a later `script` line would see.
    let probe = "\nfor v in NX_SELF_HOSTED_REMOTE_CACHE_SERVER NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN NX_SKIP_REMOTE_CACHE; do\n  eval \"x=\\${$v-}\"; if [ -n \"$x\" ]; then echo \"$v=$x\"; fi\ndone\n";
    let job = |identity: Option<String>, shell: &str| {
        let mut env = vars(&[
            ("NX_CACHE_URL", &web),
            ("NX_CACHE_TOKEN_URL", &format!("{}/token", handler.base_url)),
        ]);
        if let Some(identity) = identity {
            env.push(("NX_CACHE_ID_TOKEN".into(), identity));
        }
        gitlab_before_script(shell, &before_script, probe, &env, "NX_")
    };
    let protected = gitlab.sign(&gitlab.claims(AUDIENCE, gitlab_claims("acme/web", "main", true)));
    let workspace = Workspace::new();
    for shell in ["bash", "sh"] {
        let (_, env) = job(Some(protected.clone()), shell);
        assert!(
            value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN").is_some(),
            "{shell}: {env:?}"
        );
        assert_eq!(
            value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
            Some(web.as_str())
        );
    }
    let (_, env) = job(Some(protected), "bash");
    build_with(&workspace, &env, &web);
    assert_eq!(handler.entries("teams/web"), PROJECTS.len());
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");

    // An unprotected branch: no rule, said so, cache off, the build goes on.
    let feature =
        gitlab.sign(&gitlab.claims(AUDIENCE, gitlab_claims("acme/web", "feature", false)));
    let (stdout, env) = job(Some(feature), "bash");
    assert!(
        stdout.contains("token exchange refused: no trust rule matches"),
        "{stdout}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);
    // No ID token at all.
    let (_, env) = job(None, "sh");
    assert_cache_off(&workspace, &env, &handler, &web);
}

/// The variables an Azure Pipelines step set with `##vso[task.setvariable ...]`, as the next
/// step's environment gets them, and the `env:` mapping of the nx step (`$(NX_CACHE_TOKEN)`
/// stays literal when the variable was never set, as Azure Pipelines leaves unknown macros).
fn azure_next_step_env(stdout: &str) -> Vec<(String, String)> {
    let mut variables = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("##vso[task.setvariable variable=") else {
            continue;
        };
        let (properties, value) = rest.split_once(']').unwrap();
        let name = properties.split(';').next().unwrap();
        let secret = properties.contains("issecret=true");
        variables.push((name.to_owned(), value.to_owned(), secret));
    }
    let mut env: Vec<(String, String)> = variables
        .iter()
        .filter(|(_, _, secret)| !secret)
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let token = variables
        .iter()
        .find(|(k, _, _)| k == "NX_CACHE_TOKEN")
        .map(|(_, v, _)| v.clone())
        .unwrap_or_else(|| "$(NX_CACHE_TOKEN)".into());
    env.push(("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN".into(), token));
    env
}

#[test]
fn the_azure_pipelines_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let pipeline = doc_snippet("yaml azure-pipelines");
    let script = block_scalar(&pipeline, Some("task: AzureCLI@2"), "inlineScript:");
    let bin = tempfile::tempdir().unwrap();
    let v1 = &issuers.entra_v1;
    v1.install_az(bin.path());
    v1.set_ci_claims(entra_pipeline_claims(&v1.issuer()));
    let web = format!("{}/teams/web", handler.base_url);
    let step = |extra: &[(&str, &str)]| {
        let mut env = vars(&[
            ("NX_CACHE_URL", &web),
            ("NX_CACHE_TOKEN_URL", &format!("{}/token", handler.base_url)),
            ("NX_CACHE_APP_ID_URI", &cache_app_uri()),
        ]);
        env.extend(vars(extra));
        azure_pipelines_step(&script, &env, bin.path())
    };
    let stdout = step(&[]);
    assert!(
        stdout.contains("##vso[task.setvariable variable=NX_CACHE_TOKEN;issecret=true]"),
        "{stdout}"
    );
    let env = azure_next_step_env(&stdout);
    let workspace = Workspace::new();
    build_with(&workspace, &env, &web);
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "the pipeline writes"
    );
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");
    let subject = cache_claims(value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN").unwrap())
        ["sub"]
        .clone();
    assert_eq!(
        subject,
        format!("entra:a1b2c3d4-1111-2222-3333-444455556666:{PIPELINE_OID}")
    );

    // The service connection cannot sign in: a warning, the cache off, the job goes on.
    let stdout = step(&[("AZ_STANDIN_LOGGED_OUT", "1")]);
    assert!(
        stdout.contains("##vso[task.logissue type=warning]Nx remote cache is off"),
        "{stdout}"
    );
    let env = azure_next_step_env(&stdout);
    assert_cache_off(&workspace, &env, &handler, &web);
}

#[test]
fn the_developer_laptop_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let snippet = doc_snippet("sh nx-cache-login");
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.sh");
    // The profile lines as documented, except the two values every organisation sets.
    let profile_text = snippet
        .replace("https://acme-nx-cache.azurewebsites.net", &handler.base_url)
        .replace(
            "api://00000000-0000-0000-0000-000000000000",
            &cache_app_uri(),
        );
    std::fs::write(&profile, profile_text).unwrap();
    let v1 = &issuers.entra_v1;
    v1.install_az(dir.path());
    let login = |team: &str, extra: &[(&str, &str)]| {
        let command = format!(
            "source {}; nx_cache_login {team}; env | grep -E '^NX_(SELF_HOSTED|SKIP)' || true",
            profile.display()
        );
        let (ok, stdout, stderr) = run(
            "bash",
            &["--noprofile", "--norc", "-c", &command],
            &vars(extra),
            Some(dir.path()),
        );
        assert!(ok, "{stdout}\n{stderr}");
        let env: Vec<(String, String)> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (env, stderr)
    };
    // The cache holds team web's entries, built by CI.
    let web = format!("{}/teams/web", handler.base_url);
    let writer = issue_token(&["--team", "web"]);
    let workspace = Workspace::new();
    let (ok, first) = workspace.build(&web, Some(&writer));
    assert!(ok, "{first}");

    // A developer of the group: a read-only token for team web; nx hits, stores nothing.
    v1.set_ci_claims(entra_developer_claims(&[
        "00000000-0000-0000-0000-000000000001",
        DEVELOPERS,
    ]));
    let (env, _) = login("web", &[]);
    assert_eq!(
        value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
        Some(web.as_str())
    );
    let token = value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN").unwrap();
    let claims = cache_claims(token);
    assert_eq!(claims["access"], "read-only");
    assert_eq!(claims["rule"], "developers");
    assert_eq!(
        claims["sub"],
        "entra:ada@acme.example:6f9d2e8a-1b3c-4d5e-8f70-112233445566"
    );
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");
    workspace.touch_sources("local change");
    build_with(&workspace, &env, &web);
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "a laptop stores nothing"
    );

    // Not in the group: refused with the reason, the remote cache off in that shell.
    v1.set_ci_claims(entra_developer_claims(&[
        "00000000-0000-0000-0000-000000000001",
    ]));
    let (env, stderr) = login("web", &[]);
    assert!(
        stderr.contains("no trust rule matches this identity"),
        "{stderr}"
    );
    assert_cache_off(&workspace, &env, &handler, &web);
    // Not signed in.
    let (env, stderr) = login("web", &[("AZ_STANDIN_LOGGED_OUT", "1")]);
    assert!(stderr.contains("az login"), "{stderr}");
    assert_cache_off(&workspace, &env, &handler, &web);
}

/// `nx_cache_login` reads what the exchanged token grants (the server's JSON answer) and sets the
/// URL it covers: without a team, the one team a token grants, or the org-wide cache; a URL the
/// token does not cover (the org-wide cache for a two-team token, a team it does not grant) is
/// set but warned about, naming what the token grants, since every read there would be a
/// silent miss. Outside an Nx workspace it says that it checked no workspace; inside one it says
/// what Nx does with an installed `@nx/azure-cache`, with and without an Nx key.
#[test]
fn nx_cache_login_sets_the_url_its_token_covers_or_warns() {
    const ONE_TEAM: &str = "1b1b1b1b-0000-4000-8000-000000000001";
    const TWO_TEAMS: &str = "2b2b2b2b-0000-4000-8000-000000000002";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let v1 = runtime.block_on(Issuer::start(&format!("/{TENANT}/")));
    let (issuer, app) = (v1.issuer(), cache_app_uri());
    let rule = |name: &str, group: &str, grant: &str| {
        format!(
            r#"{{"name": "{name}", "issuer": "{issuer}", "kind": "entra", "audience": "{app}",
   "claims": {{"tid": "{TENANT}", "groups": "{group}"}}, "grant": {grant}}}"#
        )
    };
    let policy = format!(
        r#"{{"rules": [{}, {}, {}]}}"#,
        rule(
            "one-team",
            ONE_TEAM,
            r#"{"teams": ["web"], "access": "read-only"}"#
        ),
        rule(
            "two-teams",
            TWO_TEAMS,
            r#"{"teams": ["web", "api"], "access": "read-only"}"#
        ),
        rule(
            "developers",
            DEVELOPERS,
            r#"{"org": true, "teams": ["web", "api"], "access": "read-only"}"#
        ),
    );
    let handler = Handler::start(&[("NX_CACHE_TRUST_POLICY", policy.as_str())]);
    let base = handler.base_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.sh");
    std::fs::write(
        &profile,
        doc_snippet("sh nx-cache-login")
            .replace("https://acme-nx-cache.azurewebsites.net", &base)
            .replace("api://00000000-0000-0000-0000-000000000000", &app),
    )
    .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    v1.install_az(&bin);
    // (the server URL it set, stdout, stderr)
    let login = |cwd: &Path, group: &str, team: &str, extra: &[(&str, &str)]| {
        v1.set_ci_claims(entra_developer_claims(&[group]));
        let command = format!(
            "source {}; nx_cache_login {team}; echo \"SERVER=$NX_SELF_HOSTED_REMOTE_CACHE_SERVER\"",
            profile.display()
        );
        let (ok, stdout, stderr) = run_in(
            cwd,
            "bash",
            &["--noprofile", "--norc", "-c", &command],
            &vars(extra),
            Some(&bin),
        );
        assert!(ok, "{stdout}\n{stderr}");
        let server = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SERVER="))
            .unwrap()
            .to_owned();
        (server, stdout, stderr)
    };
    let not_granted = |url: &str, grants: &str| {
        format!(
            "Nx remote cache: this token does not grant {url}, so every read there is a miss; it grants {grants}"
        )
    };
    let outside = tempfile::tempdir().unwrap();
    let home = outside.path();

    // One team: plain `nx_cache_login` sets that team's URL.
    let (server, stdout, stderr) = login(home, ONE_TEAM, "", &[]);
    assert_eq!(server, format!("{base}/teams/web"), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("Nx remote cache: {base}/teams/web")));
    assert!(!stderr.contains("does not grant"), "{stderr}");
    // Run outside a workspace: it says the workspace check did not run, and where to run it.
    assert!(
        stderr.contains("Nx remote cache: not in an Nx workspace here")
            && stderr.contains("run nx_cache_login in the workspace"),
        "{stderr}"
    );
    // Another team than the one it grants: set, and warned about.
    let (server, _, stderr) = login(home, ONE_TEAM, "api", &[]);
    assert_eq!(server, format!("{base}/teams/api"));
    assert!(
        stderr.contains(&not_granted(
            &format!("{base}/teams/api"),
            "team(s) web (nx_cache_login TEAM)"
        )),
        "{stderr}"
    );

    // Two teams and no org-wide access: plain `nx_cache_login` cannot choose, and warns.
    let (server, _, stderr) = login(home, TWO_TEAMS, "", &[]);
    assert_eq!(server, base);
    assert!(
        stderr.contains(&not_granted(
            &base,
            "team(s) web, api (nx_cache_login TEAM)"
        )),
        "{stderr}"
    );
    let (server, _, stderr) = login(home, TWO_TEAMS, "api", &[]);
    assert_eq!(server, format!("{base}/teams/api"));
    assert!(!stderr.contains("does not grant"), "{stderr}");

    // The org-wide cache and two teams: the org-wide URL, no warning; a third team is warned.
    let (server, _, stderr) = login(home, DEVELOPERS, "", &[]);
    assert_eq!(server, base);
    assert!(!stderr.contains("does not grant"), "{stderr}");
    let (_, _, stderr) = login(home, DEVELOPERS, "ops", &[]);
    assert!(
        stderr.contains(&not_granted(
            &format!("{base}/teams/ops"),
            "the org-wide cache (nx_cache_login) and team(s) web, api (nx_cache_login TEAM)"
        )),
        "{stderr}"
    );

    // What it fixes: team web's entries, built by CI, are hits with plain `nx_cache_login`.
    let web = format!("{base}/teams/web");
    let workspace = Workspace::new();
    let (ok, first) = workspace.build(&web, Some(&issue_token(&["--team", "web"])));
    assert!(ok, "{first}");
    let (server, stdout, stderr) = login(workspace.root(), ONE_TEAM, "", &[]);
    assert_eq!(server, web);
    assert!(
        !stderr.contains("not in an Nx workspace"),
        "in a workspace: {stderr}"
    );
    let command = format!(
        "source {}; nx_cache_login >/dev/null 2>&1; env | grep -E '^NX_(SELF_HOSTED|SKIP)' || true",
        profile.display()
    );
    v1.set_ci_claims(entra_developer_claims(&[ONE_TEAM]));
    let (_, exported, _) = run_in(
        workspace.root(),
        "bash",
        &["--noprofile", "--norc", "-c", &command],
        &[],
        Some(&bin),
    );
    let env: Vec<(String, String)> = exported
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let output = build_with(&workspace, &env, &web);
    assert_eq!(
        remote_hits(&output),
        PROJECTS.len(),
        "{stdout}{stderr}{output}"
    );

    // In a workspace with @nx/azure-cache installed: what Nx does with it, with the Nx key in
    // this shell and without it.
    let plugin = tempfile::tempdir().unwrap();
    std::fs::write(plugin.path().join("nx.json"), NX_JSON_WITH_BUCKETS).unwrap();
    common::nx::write_package(
        &plugin.path().join("node_modules/@nx/azure-cache"),
        "@nx/azure-cache",
        Some(ACTIVE_BUCKET_CACHE),
    );
    let (_, _, stderr) = login(plugin.path(), ONE_TEAM, "", &[("NX_KEY", NX_KEY)]);
    assert_eq!(bucket_warnings(&stderr).len(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Nx remote cache: @nx/azure-cache is installed: {USED}"
        )),
        "{stderr}"
    );
    let (_, _, stderr) = login(plugin.path(), ONE_TEAM, "", &[]);
    assert!(
        stderr.contains(&format!(
            "Nx remote cache: @nx/azure-cache is installed: {NO_KEY}"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_trust_policy_and_each_issuer() {
    let issuers = Issuers::start().await;
    issuers.gitlab.set_down(true);
    let data = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking({
        // web-main with the generic audience of earlier docs.
        let policy = issuers.policy().replacen(
            &format!("\"audience\": \"{AUDIENCE}\""),
            "\"audience\": \"nx-cache\"",
            1,
        );
        let data = data.path().to_owned();
        move || {
            Command::new(env!("CARGO_BIN_EXE_handler"))
                .arg("doctor")
                .env_clear()
                .env("NX_CACHE_DIR", &data)
                .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
                .env("NX_CACHE_TRUST_POLICY", policy)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "an unreachable issuer is a problem:\n{stdout}"
    );
    // Each rule in words, in order.
    assert!(
        stdout.contains("ok       trust policy: POST /token on, 6 rule(s), tried in this order:"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "ok       trust rule: web-main: read-write to team web for pushes to refs/heads/main of acme/web (GitHub)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "ok       trust rule: gitlab-protected: read-write to team web for pipelines for protected branches of acme/web (GitLab)\n"
        ),
        "{stdout}"
    );
    // The generic audience: any other cache expecting it would take the same identity tokens.
    assert!(
        stdout
            .contains("WARNING  trust rule: rule 'web-main': the audience \"nx-cache\" is generic"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("WARNING  trust rule:").count(),
        1,
        "only web-main's audience is generic: {stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "ok       trust rule: web-pipeline: read-write to team web for object {PIPELINE_OID} of tenant {TENANT} (Entra ID)\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "ok       identity issuer: {}: 1 signing key(s)",
            issuers.github.issuer()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "PROBLEM  identity issuer: {}: cannot fetch its keys",
            issuers.gitlab.issuer()
        )),
        "{stdout}"
    );
}

/// A policy of two GitHub rules for `acme/web`, with `web-main` as given (or absent).
fn github_policy(github: &Issuer, web_main: Option<(&str, &str)>) -> String {
    let issuer = github.issuer();
    let mut rules = Vec::new();
    if let Some((team, access)) = web_main {
        rules.push(
            json!({"name": "web-main", "issuer": issuer, "kind": "github",
            "audience": AUDIENCE,
            "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"},
            "grant": {"teams": [team], "access": access}, "ttl": "2h"}),
        );
    }
    rules.push(
        json!({"name": "web-prs", "issuer": issuer, "kind": "github",
        "audience": AUDIENCE, "claims": {"repository": "acme/web"},
        "grant": {"teams": ["web"], "access": "read-only"}}),
    );
    json!({ "rules": rules }).to_string()
}

/// Status of a GET and of a PUT (a fresh hash) on team `team`'s cache with `token`.
async fn read_and_write(handler: &Handler, token: &str, team: &str, hash: &str) -> (u16, u16) {
    let client = reqwest::Client::new();
    let url = |hash: &str| format!("{}/teams/{team}/v1/cache/{hash}", handler.base_url);
    let got = client
        .get(url(hash))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let fresh = format!("{hash}{}", rand_suffix());
    let put = client
        .put(url(&fresh))
        .bearer_auth(token)
        .body("artifact")
        .send()
        .await
        .unwrap();
    (got.status().as_u16(), put.status().as_u16())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A token keeps what its rule grants now: the rule made read-only, moved to another team and
/// removed reach a token exchanged before, on the next request after a restart, while a token
/// from `handler token issue` is unchanged throughout. Never a 401 (it would abort the build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_tokens_already_issued() {
    let github = Issuer::start("").await;
    let data = tempfile::tempdir().unwrap();
    let start = |policy: Option<String>| {
        let mut vars = Vec::new();
        if let Some(policy) = &policy {
            vars.push(("NX_CACHE_TRUST_POLICY", policy.as_str()));
        }
        Handler::start_in(data.path(), &vars)
    };
    let handler = start(Some(github_policy(&github, Some(("web", "read-write")))));
    let main = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    let (status, _, token) = exchange(&handler, Some(&main), None, false).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let issued = issue_token(&["--team", "web"]);
    assert_eq!(
        read_and_write(&handler, &token, "web", "1").await,
        (404, 200)
    );
    let stored = reqwest::Client::new()
        .put(format!("{}/teams/web/v1/cache/42", handler.base_url))
        .bearer_auth(&token)
        .body("main build")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    drop(handler);

    // The rule made read-only: the token still reads, no longer writes.
    let handler = start(Some(github_policy(&github, Some(("web", "read-only")))));
    assert_eq!(
        read_and_write(&handler, &token, "web", "42").await,
        (200, 403)
    );
    assert_eq!(
        read_and_write(&handler, &issued, "web", "42").await,
        (200, 200)
    );
    drop(handler);

    // Moved to team api: nothing of team web any more (a miss, never a 401), nor of api (the
    // token never named it).
    let handler = start(Some(github_policy(&github, Some(("api", "read-write")))));
    assert_eq!(
        read_and_write(&handler, &token, "web", "42").await,
        (404, 403)
    );
    assert_eq!(
        read_and_write(&handler, &token, "api", "42").await,
        (404, 403)
    );
    assert_eq!(
        read_and_write(&handler, &issued, "web", "42").await,
        (200, 200)
    );
    drop(handler);

    // Removed: no access, a warning naming the rule and the subject.
    for policy in [Some(github_policy(&github, None)), None] {
        let handler = start(policy);
        assert_eq!(
            read_and_write(&handler, &token, "web", "42").await,
            (404, 403)
        );
        assert_eq!(
            read_and_write(&handler, &issued, "web", "42").await,
            (200, 200)
        );
        let warning = handler.wait_for_log(std::time::Duration::from_secs(10), |line| {
            line.contains("no longer exists")
                && line.contains("\"rule\":\"web-main\"")
                && line.contains("github:acme/web:refs/heads/main")
        });
        assert!(warning.is_some(), "{:#?}", handler.logs());
    }
}

/// A token follows its rule's conditions, not only its grant: a token exchanged from `dev`
/// while the rule admitted `main` and `dev` stores; once the rule (same name, same grant) admits
/// only `main`, that token gets misses and 403s, and a warning names the rule. Never a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_rule_takes_access_from_tokens_exchanged_under_its_old_conditions() {
    let github = Issuer::start("").await;
    let data = tempfile::tempdir().unwrap();
    let policy = |refs: Value| {
        json!({"rules": [{"name": "web-main", "issuer": github.issuer(), "kind": "github",
            "audience": AUDIENCE,
            "claims": {"repository": "acme/web", "ref": refs, "event_name": "push"},
            "grant": {"teams": ["web"], "access": "read-write"}, "ttl": "2h"}]})
        .to_string()
    };
    let start =
        |policy: String| Handler::start_in(data.path(), &[("NX_CACHE_TRUST_POLICY", &policy)]);
    let handler = start(policy(json!(["refs/heads/main", "refs/heads/dev"])));
    let dev = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/dev")));
    let (status, _, token) = exchange(&handler, Some(&dev), None, false).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    // The digest of the rule's conditions rides in the token; the token stays small (Nx sends
    // it with every request).
    let digest = cache_claims(&token)["rcd"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 16);
    assert!(token.len() < 2048, "{} bytes", token.len());
    let client = reqwest::Client::new();
    let stored = client
        .put(format!("{}/teams/web/v1/cache/77", handler.base_url))
        .bearer_auth(&token)
        .body("dev build")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    assert_eq!(
        read_and_write(&handler, &token, "web", "77").await,
        (200, 200)
    );
    drop(handler);

    // The same rule name and grant, narrower conditions: the dev token gets nothing from it.
    let handler = start(policy(json!("refs/heads/main")));
    assert_eq!(
        read_and_write(&handler, &token, "web", "77").await,
        (404, 403)
    );
    let warning = handler.wait_for_log(std::time::Duration::from_secs(10), |line| {
        line.contains("conditions of the trust rule")
            && line.contains("\"rule\":\"web-main\"")
            && line.contains("github:acme/web:refs/heads/dev")
    });
    assert!(warning.is_some(), "{:#?}", handler.logs());
    // A dev build is refused a new token; a main build gets one under the new conditions, and
    // the entry the dev token stored is still there for it.
    let (status, _, message) = exchange(&handler, Some(&dev), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    let main = github.sign(&github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main")));
    let (status, _, fresh) = exchange(&handler, Some(&main), None, false).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_ne!(cache_claims(&fresh)["rcd"], json!(digest));
    assert_eq!(
        read_and_write(&handler, &fresh, "web", "77").await,
        (200, 200)
    );
    drop(handler);

    // Back to the old conditions: the old token's digest matches its rule again.
    let handler = start(policy(json!(["refs/heads/dev", "refs/heads/main"])));
    assert_eq!(
        read_and_write(&handler, &token, "web", "77").await,
        (200, 200)
    );
}

/// A pinned claim must be one string: a token whose `repository` is a list, or appears twice in
/// its payload (the JSON parser would keep the last value), matches no rule on it; a repeated
/// registered claim refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_claims_count_only_as_one_string() {
    let github = Issuer::start("").await;
    let handler = Handler::start(&[(
        "NX_CACHE_TRUST_POLICY",
        &github_policy(&github, Some(("web", "read-write"))),
    )]);
    let main = github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main"));
    // The real shape first, so the refusals below are the shapes' doing.
    let (status, _, token) = exchange(&handler, Some(&github.sign(&main)), None, false).await;
    assert_eq!(status, StatusCode::OK, "{token}");

    let mut listed = main.clone();
    listed["repository"] = json!(["acme/web"]);
    let mut numbered = main.clone();
    numbered["repository_id"] = json!(74);
    let repository_id_rule = json!({"rules": [{"name": "by-id", "issuer": github.issuer(),
        "kind": "github", "audience": AUDIENCE, "claims": {"repository_id": "74"},
        "grant": {"teams": ["web"], "access": "read-only"}}]})
    .to_string();
    let (status, _, message) = exchange(&handler, Some(&github.sign(&listed)), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains("no trust rule matches"), "{message}");

    // The payload names `repository` twice, another repository's first: whichever one a
    // reader takes, the cache takes neither.
    let object = main.as_object().unwrap();
    let mut members: Vec<String> = object
        .iter()
        .map(|(name, value)| format!("{}:{value}", json!(name)))
        .collect();
    members.insert(0, r#""repository":"acme/api""#.to_owned());
    let repeated = format!("{{{}}}", members.join(","));
    let (status, _, message) =
        exchange(&handler, Some(&github.sign_payload(&repeated)), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains("repository=(absent)"), "{message}");
    // A repeated `exp` (or iss, aud, nbf, iat) refuses the token.
    let far = time::OffsetDateTime::now_utc().unix_timestamp() + 24 * 3600;
    let twice = format!("{{{},\"exp\":{far}}}", members[1..].join(","));
    let (status, _, message) =
        exchange(&handler, Some(&github.sign_payload(&twice)), None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(message.contains("more than once"), "{message}");
    drop(handler);

    // A number where GitHub sends a string is not that string either.
    let handler = Handler::start(&[("NX_CACHE_TRUST_POLICY", &repository_id_rule)]);
    let (status, _, message) = exchange(&handler, Some(&github.sign(&numbered)), None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    let (status, _, message) = exchange(&handler, Some(&github.sign(&main)), None, false).await;
    assert_eq!(status, StatusCode::OK, "{message}");
}

/// Identity tokens that name a critical header extension, or give a time claim as anything
/// but an integer, are refused with 401 even when their signature is good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_with_critical_extensions_or_loose_times_are_refused() {
    let github = Issuer::start("").await;
    let handler = Handler::start(&[(
        "NX_CACHE_TRUST_POLICY",
        &github_policy(&github, Some(("web", "read-write"))),
    )]);
    let claims = github.claims(AUDIENCE, github_claims("acme/web", "refs/heads/main"));
    let good = github.sign(&claims);
    assert_eq!(
        exchange(&handler, Some(&good), None, false).await.0,
        StatusCode::OK
    );

    let crit = github.sign_with_header(&claims, |header| {
        header.crit = Some(vec!["exp-with-tz".into()]);
    });
    let (status, _, body) = exchange(&handler, Some(&crit), None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("crit"), "{body}");

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (name, value) in [
        ("iat", json!((now + 24 * 3600).to_string())),
        ("iat", json!(now as f64 + 0.5)),
        ("exp", json!(now as f64 + 300.0)),
        ("nbf", json!((now - 600).to_string())),
    ] {
        let mut loose = claims.clone();
        loose[name] = value.clone();
        let (status, _, body) = exchange(&handler, Some(&github.sign(&loose)), None, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}={value}: {body}");
        assert!(body.contains("must be integers"), "{body}");
    }
}

/// `POST /token` answers a caller without a (valid) identity token before reading its body: a
/// body trickled at a byte a second cannot hold the connection, and other clients are served.
#[test]
fn a_caller_without_an_identity_is_answered_before_its_body_is_read() {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let github = runtime.block_on(Issuer::start(""));
    let handler = Handler::start(&[(
        "NX_CACHE_TRUST_POLICY",
        &github_policy(&github, Some(("web", "read-write"))),
    )]);
    let addr = handler.base_url.trim_start_matches("http://").to_owned();
    for authorization in ["", "Authorization: Bearer not-a-jwt\r\n"] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        write!(
            stream,
            "POST /token HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: 4000\r\n\r\n"
        )
        .unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let mut closed = false;
        // One byte a second, as an attacker would; read whatever comes back meanwhile.
        for _ in 0..30 {
            let mut buffer = [0u8; 4096];
            match stream.read(&mut buffer) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if stream.write_all(b"x").is_err() {
                closed = true;
                break;
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{authorization:?}: {answer}"
        );
        assert!(
            closed,
            "{authorization:?}: the connection was held for 30 s"
        );
        // The brief drain is 2 s; 10 s leaves a busy machine room.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{authorization:?}: held for {:?}",
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bucket cache packages: every snippet warns when one is installed.
//
// Nx (20.8 to 24.0, `DbCache._getRemoteCache` in nx's `tasks-runner/cache.js`) asks
// `@nx/s3-cache`, `@nx/powerpack-s3-cache`, `@nx/shared-fs-cache`,
// `@nx/powerpack-shared-fs-cache`, `@nx/gcs-cache`, `@nx/powerpack-gcs-cache`,
// `@nx/azure-cache`, `@nx/powerpack-azure-cache` before the self-hosted cache: it resolves each
// from the working directory, calls its `getRemoteCache()`, and the first that answers a cache
// object is THE remote cache (`NX_SELF_HOSTED_REMOTE_CACHE_SERVER` is ignored); `null` lets Nx
// ask the next. A package without a main file is skipped.

/// A stand-in for `@nx/azure-cache` 5.0.7 as it behaves with an Nx key and an `azure` section in
/// nx.json: the remote cache (here one that never hits and stores nothing), unless
/// `NX_POWERPACK_CACHE_MODE=no-cache`, which makes it step aside.
/// A stand-in of `@nx/azure-cache` 5.0.7's `getRemoteCache`, in its order: no Nx key (`NX_KEY`,
/// `.nx/key/key.ini`), it steps aside with a warning; a key and no `azure` object in nx.json, it
/// throws (every run fails); `NX_POWERPACK_CACHE_MODE=no-cache`, it steps aside; otherwise it is
/// the remote cache (one that never hits nor stores).
const ACTIVE_BUCKET_CACHE: &str = r#"const fs = require("fs"), path = require("path");
exports.getRemoteCache = async () => {
  if (!process.env.NX_KEY && !fs.existsSync(path.join(process.cwd(), ".nx/key/key.ini"))) {
    console.warn("No self-hosted cache key found. Azure cache will not be used.");
    return null;
  }
  const { azure } = JSON.parse(fs.readFileSync(path.join(process.cwd(), "nx.json"), "utf8"));
  azure.localMode ??= "read-write";
  if (process.env.NX_POWERPACK_CACHE_MODE === "no-cache") return null;
  return { retrieve: async () => null, store: async () => false };
};
"#;

/// Packages a test workspace has installed: (name, the text of its `index.js`, or `None`).
type Installed<'a> = &'a [(&'a str, Option<&'a str>)];
/// Environment variables of a snippet's run: (name, value).
type Extra<'a> = &'a [(&'a str, &'a str)];
/// The package a warning names and what it says Nx does with it.
type Named<'a> = Option<(&'a str, &'a str)>;

/// The lines of a snippet's output that warn about a bucket cache package.
fn bucket_warnings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.contains("Nx remote cache: @nx/") && l.contains(" is installed"))
        .collect()
}

/// What the snippets say of an installed bucket cache package that Nx uses.
const USED: &str = "Nx uses it, not the self-hosted cache, until it is removed";
/// ... that finds no Nx key, and so steps aside.
const NO_KEY: &str = "it finds no Nx key (NX_KEY, .nx/key/key.ini) and steps aside, so Nx uses the self-hosted cache";
/// ... when the job or shell has no remote cache at all.
const OFF: &str = "the remote cache is off here (NX_SKIP_REMOTE_CACHE), but where it is on, ";
/// An Nx key as the bucket cache packages read it (`NX_KEY`); the stand-ins only look for one.
const NX_KEY: &str = "stand-in-nx-key";

/// An `nx.json` for a workspace that used the bucket cache packages: each one's object.
const NX_JSON_WITH_BUCKETS: &str =
    r#"{"s3": {"bucket": "acme"}, "gcs": {"bucket": "acme"}, "azure": {"container": "nx-cache"}}"#;

/// The four client snippets of docs/keyless.md, each run as its CI system (or shell) would run
/// it (in CI, with the variable that tells Nx so), in `dir`, with no identity token, so with the
/// remote cache turned off: (snippet, stdout and stderr).
fn snippets_in(dir: &Path, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let scratch = tempfile::tempdir().unwrap();
    // `az` is not signed in (Azure Pipelines, the laptop): the cache is off, the check still runs.
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let az = bin.join("az");
    std::fs::write(&az, "#!/bin/sh\necho 'Please run az login' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&az, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dead = "http://127.0.0.1:9/token";
    let common = |more: &[(&str, &str)]| {
        let mut env = vars(&[
            ("NX_CACHE_URL", "http://127.0.0.1:9/teams/web"),
            ("NX_CACHE_TOKEN_URL", dead),
        ]);
        env.extend(vars(more));
        env.extend(vars(extra));
        env
    };
    let mut outputs = Vec::new();

    let workflow = doc_snippet("yaml github-workflow");
    let step = scratch.path().join("step.sh");
    std::fs::write(
        &step,
        block_scalar(&workflow, Some("name: Nx remote cache token"), "run:"),
    )
    .unwrap();
    let github_env = scratch.path().join("github-env");
    let env = common(&[
        ("NX_CACHE_AUDIENCE", AUDIENCE),
        ("GITHUB_ENV", github_env.to_str().unwrap()),
        ("CI", "true"),
    ]);
    let step = step.to_str().unwrap();
    let (ok, stdout, stderr) = run_in(
        dir,
        "bash",
        &["--noprofile", "--norc", "-eo", "pipefail", step],
        &env,
        None,
    );
    assert!(
        ok,
        "github: the step must never fail the job:\n{stdout}\n{stderr}"
    );
    outputs.push(("github", format!("{stdout}{stderr}")));

    let before_script = block_scalar(&doc_snippet("yaml gitlab-ci"), Some("before_script:"), "-");
    let gitlab_env = common(&[("CI", "true")]);
    let (ok, stdout, stderr) = run_in(dir, "sh", &["-e", "-c", &before_script], &gitlab_env, None);
    assert!(
        ok,
        "gitlab: before_script must never fail the job:\n{stdout}\n{stderr}"
    );
    outputs.push(("gitlab", format!("{stdout}{stderr}")));

    let inline = block_scalar(
        &doc_snippet("yaml azure-pipelines"),
        Some("task: AzureCLI@2"),
        "inlineScript:",
    );
    let env = common(&[
        ("NX_CACHE_APP_ID_URI", &cache_app_uri()),
        ("TF_BUILD", "True"),
    ]);
    let (ok, stdout, stderr) = run_in(
        dir,
        "bash",
        &["--noprofile", "--norc", "-c", &inline],
        &env,
        Some(&bin),
    );
    assert!(
        ok,
        "azure: the step must never fail the job:\n{stdout}\n{stderr}"
    );
    outputs.push(("azure", format!("{stdout}{stderr}")));

    let profile = scratch.path().join("profile.sh");
    std::fs::write(&profile, doc_snippet("sh nx-cache-login")).unwrap();
    let command = format!("source {}; nx_cache_login web", profile.display());
    let (ok, stdout, stderr) = run_in(
        dir,
        "bash",
        &["--noprofile", "--norc", "-c", &command],
        &common(&[]),
        Some(&bin),
    );
    assert!(
        ok,
        "laptop: nx_cache_login must not fail:\n{stdout}\n{stderr}"
    );
    outputs.push(("laptop", format!("{stdout}{stderr}")));
    outputs
}

#[test]
fn every_snippet_warns_once_about_an_installed_bucket_cache_package() {
    let step_aside = "exports.getRemoteCache = async () => null;\n";
    // (what the workspace has installed, its environment, the package the warning names and
    // what it says Nx does with it, past "where it is on, ": no identity token, so every snippet
    // has turned the remote cache off, and says so)
    let with_key = [("NX_KEY", NX_KEY)];
    let no_cache = [("NX_KEY", NX_KEY), ("NX_POWERPACK_CACHE_MODE", "no-cache")];
    let cases: [(Installed, Extra, Named); 9] = [
        (&[], &with_key, None),
        (
            &[("@nx/azure-cache", Some(ACTIVE_BUCKET_CACHE))],
            &with_key,
            Some(("@nx/azure-cache", USED)),
        ),
        // Without an Nx key every bucket package steps aside: Nx uses this cache.
        (
            &[("@nx/azure-cache", Some(ACTIVE_BUCKET_CACHE))],
            &[],
            Some(("@nx/azure-cache", NO_KEY)),
        ),
        // The one Nx asks first: S3 before Azure.
        (
            &[
                ("@nx/azure-cache", Some(step_aside)),
                ("@nx/s3-cache", Some(step_aside)),
            ],
            &with_key,
            Some(("@nx/s3-cache", USED)),
        ),
        (
            &[("@nx/powerpack-gcs-cache", Some(step_aside))],
            &with_key,
            Some(("@nx/powerpack-gcs-cache", USED)),
        ),
        // The transition aid: @nx/azure-cache steps aside, and nothing else is installed.
        (
            &[("@nx/azure-cache", Some(ACTIVE_BUCKET_CACHE))],
            &no_cache,
            None,
        ),
        // ... but with S3's too, Nx asks S3 first and S3 steps aside as well.
        (
            &[
                ("@nx/azure-cache", Some(ACTIVE_BUCKET_CACHE)),
                ("@nx/s3-cache", Some(step_aside)),
            ],
            &no_cache,
            None,
        ),
        // @nx/shared-fs-cache (5.0.4) ignores NX_POWERPACK_CACHE_MODE, and is the cache in CI only.
        (
            &[("@nx/shared-fs-cache", Some(step_aside))],
            &no_cache,
            Some(("@nx/shared-fs-cache", "")),
        ),
        // No main file: Nx cannot load it and skips it, and so does the check.
        (&[("@nx/azure-cache", None)], &with_key, None),
    ];
    for (installed, extra, named) in cases {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("nx.json"), NX_JSON_WITH_BUCKETS).unwrap();
        for (name, main) in installed {
            common::nx::write_package(
                &workspace.path().join("node_modules").join(name),
                name,
                *main,
            );
        }
        for (snippet, output) in snippets_in(workspace.path(), extra) {
            let warnings = bucket_warnings(&output);
            let what = format!("{snippet} with {installed:?}, {extra:?}");
            let Some((name, says)) = named else {
                assert!(
                    warnings.is_empty(),
                    "{what}: no warning expected:\n{output}"
                );
                continue;
            };
            assert_eq!(warnings.len(), 1, "{what}: one warning expected:\n{output}");
            let warning = warnings[0];
            let prefix = match snippet {
                "github" => "::warning::",
                "azure" => "##vso[task.logissue type=warning]",
                _ => "",
            };
            let says = match (name, snippet) {
                // Outside CI (the laptop), @nx/shared-fs-cache steps aside.
                ("@nx/shared-fs-cache", "laptop") => {
                    "Nx uses it in CI (here it steps aside), not the self-hosted cache, until it is removed"
                }
                ("@nx/shared-fs-cache", _) => USED,
                _ => says,
            };
            assert!(
                warning.starts_with(&format!(
                    "{prefix}Nx remote cache: {name} is installed; {OFF}{says}"
                )),
                "{what}: {warning}"
            );
            // The way out it names: removing the package, and NX_POWERPACK_CACHE_MODE where the
            // package honours it (and is used).
            assert!(warning.contains("remove"), "{what}: {warning}");
            assert_eq!(
                warning.contains("NX_POWERPACK_CACHE_MODE=no-cache"),
                says == USED && !name.contains("shared-fs"),
                "{what}: {warning}"
            );
        }
    }
    // Installed in a parent folder's node_modules: Node's resolution, and so Nx's, finds it there.
    let parent = tempfile::tempdir().unwrap();
    common::nx::write_package(
        &parent.path().join("node_modules/@nx/azure-cache"),
        "@nx/azure-cache",
        Some(ACTIVE_BUCKET_CACHE),
    );
    let checkout = parent.path().join("repo");
    std::fs::create_dir(&checkout).unwrap();
    std::fs::write(checkout.join("nx.json"), NX_JSON_WITH_BUCKETS).unwrap();
    for (snippet, output) in snippets_in(&checkout, &with_key) {
        assert_eq!(bucket_warnings(&output).len(), 1, "{snippet}:\n{output}");
    }
    // An Nx key in the workspace's key file counts as one; an nx.json without the package's
    // object means every Nx run fails, which is what the warning then says.
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("nx.json"), r#"{"s3": {}}"#).unwrap();
    std::fs::create_dir_all(workspace.path().join(".nx/key")).unwrap();
    std::fs::write(workspace.path().join(".nx/key/key.ini"), "stand-in").unwrap();
    common::nx::write_package(
        &workspace.path().join("node_modules/@nx/azure-cache"),
        "@nx/azure-cache",
        Some(ACTIVE_BUCKET_CACHE),
    );
    for (snippet, output) in snippets_in(workspace.path(), &[]) {
        let warnings = bucket_warnings(&output);
        assert_eq!(warnings.len(), 1, "{snippet}:\n{output}");
        assert!(
            warnings[0].contains(&format!(
                "{OFF}every Nx run fails: it finds an Nx key and no \"azure\" object in nx.json; remove it"
            )),
            "{snippet}: {}",
            warnings[0]
        );
    }
}

/// With a bucket cache package active, the real Nx never asks this cache, even with a token
/// (what the warning says); `NX_POWERPACK_CACHE_MODE=no-cache` makes it step aside, and Nx
/// stores to this cache, with no warning. Then the guide's steps in the order a user might take
/// them: the Nx key gone first (the warning says the package steps aside, and Nx does use this
/// cache), the `azure` object gone with the package still installed (the warning says every run
/// fails, and the run does), and both gone (no warning; this cache serves).
#[test]
fn a_bucket_cache_package_keeps_nx_off_this_cache_until_it_steps_aside() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let workflow = doc_snippet("yaml github-workflow");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("step.sh");
    std::fs::write(
        &script,
        block_scalar(&workflow, Some("name: Nx remote cache token"), "run:"),
    )
    .unwrap();
    let web = format!("{}/teams/web", handler.base_url);
    let request_url = format!("{}/github/token?api-version=2.0", issuers.github.base);
    issuers
        .github
        .set_ci_claims(github_claims("acme/web", "refs/heads/main"));
    let workspace = Workspace::with_packages(&[("@nx/azure-cache", Some(ACTIVE_BUCKET_CACHE))]);
    // The plugin's configuration, as a workspace that used it has it.
    let nx_json_path = workspace.root().join("nx.json");
    let mut nx_json: Value =
        serde_json::from_str(&std::fs::read_to_string(&nx_json_path).unwrap()).unwrap();
    nx_json["azure"] = json!({"accountName": "acmenxcache", "container": "nx-cache"});
    std::fs::write(&nx_json_path, nx_json.to_string()).unwrap();
    let step = |env_file: &Path, extra: &[(&str, &str)]| {
        let mut env = vars(&[
            ("NX_CACHE_URL", &web),
            ("NX_CACHE_TOKEN_URL", &format!("{}/token", handler.base_url)),
            ("NX_CACHE_AUDIENCE", AUDIENCE),
            ("GITHUB_ENV", env_file.to_str().unwrap()),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_REQUEST_TOKEN),
            ("CI", "true"),
        ]);
        env.extend(vars(extra));
        let script = script.to_str().unwrap();
        let (ok, stdout, stderr) = run_in(
            workspace.root(),
            "bash",
            &["--noprofile", "--norc", "-eo", "pipefail", script],
            &env,
            None,
        );
        assert!(ok, "the step must never fail the job:\n{stdout}\n{stderr}");
        let mut exported = github_env(env_file);
        exported.extend(vars(extra));
        (stdout, exported)
    };
    let cache_requests = || {
        handler
            .logs()
            .iter()
            .filter(|l| l.contains("/v1/cache/"))
            .count()
    };
    let one_warning = |stdout: &str, says: &str| {
        let warnings = bucket_warnings(stdout);
        assert_eq!(warnings.len(), 1, "{stdout}");
        assert!(
            warnings[0].starts_with(&format!(
                "::warning::Nx remote cache: @nx/azure-cache is installed: {says}"
            )),
            "{stdout}"
        );
    };

    // A main-branch build gets its token, and the warning; Nx uses the package, not this cache.
    let key = [("NX_KEY", NX_KEY)];
    let (stdout, env) = step(&dir.path().join("env-active"), &key);
    assert!(
        value_of(&env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN").is_some(),
        "{stdout}"
    );
    one_warning(&stdout, USED);
    let before = cache_requests();
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), 0, "{output}");
    assert_eq!(
        cache_requests(),
        before,
        "Nx asked this cache despite the package:\n{output}"
    );
    assert_eq!(handler.entries("teams/web"), 0);

    // The transition aid: no warning, and Nx falls through to this cache.
    let aside = [("NX_KEY", NX_KEY), ("NX_POWERPACK_CACHE_MODE", "no-cache")];
    let (stdout, env) = step(&dir.path().join("env-no-cache"), &aside);
    assert!(bucket_warnings(&stdout).is_empty(), "{stdout}");
    build_with(&workspace, &env, &web);
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "Nx stores to this cache"
    );
    let output = build_with(&workspace, &env, &web);
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");

    // The Nx key gone (the CI change of step 3), the package still installed: the warning says
    // it steps aside and Nx uses this cache, and so it does.
    let (stdout, env) = step(&dir.path().join("env-no-key"), &[]);
    one_warning(&stdout, NO_KEY);
    let output = build_with(&workspace, &env, &web);
    assert_eq!(
        remote_hits(&output),
        PROJECTS.len(),
        "every task from this cache:\n{output}"
    );

    // The `azure` object gone while the package and a key are still there: the warning says
    // every Nx run fails, and the run does.
    nx_json.as_object_mut().unwrap().remove("azure");
    std::fs::write(&nx_json_path, nx_json.to_string()).unwrap();
    let (stdout, env) = step(&dir.path().join("env-no-object"), &key);
    one_warning(
        &stdout,
        "every Nx run fails: it finds an Nx key and no \"azure\" object in nx.json",
    );
    workspace.forget_local_results(&web);
    let (ok, output) = workspace.build_env(&env);
    assert!(!ok, "the run fails as the warning says:\n{output}");

    // The guide's way off: the package removed, and the `azure` object with it. No warning;
    // this cache serves the build, hit after hit.
    std::fs::remove_dir_all(workspace.root().join("node_modules/@nx/azure-cache")).unwrap();
    let (stdout, env) = step(&dir.path().join("env-removed"), &key);
    assert!(bucket_warnings(&stdout).is_empty(), "{stdout}");
    let before = cache_requests();
    build_with(&workspace, &env, &web);
    let output = build_with(&workspace, &env, &web);
    assert_eq!(
        remote_hits(&output),
        PROJECTS.len(),
        "every task from this cache:\n{output}"
    );
    assert!(cache_requests() > before);
}

// The Turborepo snippets of docs/keyless.md, run as written there, then the real turbo CLI with
// what they exported.

/// A clean turbo run with `env`; it must succeed.
fn turbo_build(workspace: &TurboWorkspace, env: &[(String, String)]) -> TurboRun {
    workspace.clean();
    let run = workspace.build(&[], env);
    assert!(run.ok, "the turbo build must succeed:\n{}", run.output);
    run
}

/// What a snippet exported gives turbo a working remote cache: the first run stores, a second
/// clean one restores every task from it.
fn assert_turbo_stores_and_hits(
    workspace: &TurboWorkspace,
    env: &[(String, String)],
    handler: &Handler,
) {
    turbo_build(workspace, env);
    assert_eq!(handler.entries("turbo/teams/web"), TURBO_PACKAGES.len());
    let run = turbo_build(workspace, env);
    assert_eq!(run.remote_hits(), TURBO_PACKAGES.len(), "{}", run.output);
}

/// A job whose snippet turned turbo's remote cache off: even with `TURBO_API` and `TURBO_TEAM`
/// set by the job's own configuration, turbo builds and sends the cache nothing.
fn assert_turbo_off(workspace: &TurboWorkspace, exported: &[(String, String)], handler: &Handler) {
    let mut env = vars(&[("TURBO_API", &handler.base_url), ("TURBO_TEAM", "web")]);
    env.extend_from_slice(exported);
    let before = handler.logs().iter().filter(|l| l.contains("/v8/")).count();
    let run = turbo_build(workspace, &env);
    assert!(
        run.output.contains("Remote caching disabled"),
        "{}",
        run.output
    );
    assert_eq!(run.remote_hits(), 0);
    let after = handler.logs().iter().filter(|l| l.contains("/v8/")).count();
    assert_eq!(before, after, "no cache request with the cache off");
}

#[test]
fn the_github_actions_turbo_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let workflow = doc_snippet("yaml github-workflow-turbo");
    let script = block_scalar(
        &workflow,
        Some("name: Turborepo remote cache token"),
        "run:",
    );
    let dir = tempfile::tempdir().unwrap();
    let script_file = dir.path().join("step.sh");
    std::fs::write(&script_file, &script).unwrap();
    let request_url = format!("{}/github/token?api-version=2.0", issuers.github.base);
    let step = |name: &str, with_id_token: bool| {
        let github_env_file = dir.path().join(name);
        let mut env = vars(&[
            ("REMOTE_CACHE_URL", &handler.base_url),
            ("REMOTE_CACHE_TEAM", "web"),
            (
                "REMOTE_CACHE_TOKEN_URL",
                &format!("{}/token", handler.base_url),
            ),
            ("REMOTE_CACHE_AUDIENCE", AUDIENCE),
            ("GITHUB_ENV", github_env_file.to_str().unwrap()),
        ]);
        if with_id_token {
            env.extend(vars(&[
                ("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url),
                ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_REQUEST_TOKEN),
            ]));
        }
        github_actions_step(&script_file, &env, &github_env_file)
    };
    let workspace = TurboWorkspace::new(false);

    // A push to main: read-write; turbo stores, then restores every task.
    issuers
        .github
        .set_ci_claims(github_claims("acme/web", "refs/heads/main"));
    let (stdout, env) = step("env-main", true);
    let token = value_of(&env, "TURBO_TOKEN").expect("a token");
    assert!(
        stdout.contains(&format!("::add-mask::{token}")),
        "the token is masked"
    );
    assert_eq!(value_of(&env, "TURBO_API"), Some(handler.base_url.as_str()));
    assert_eq!(value_of(&env, "TURBO_TEAM"), Some("web"));
    assert_turbo_stores_and_hits(&workspace, &env, &handler);

    // A pull request: read-only; every task restored, uploads of new ones refused, green.
    issuers
        .github
        .set_ci_claims(github_claims("acme/web", "refs/pull/7/merge"));
    let (_, env) = step("env-pr", true);
    let run = turbo_build(&workspace, &env);
    assert_eq!(run.remote_hits(), TURBO_PACKAGES.len(), "{}", run.output);
    let mut changed = env.clone();
    changed.push(("BUILD_BYTES".into(), "2048".into()));
    turbo_build(&workspace, &changed);
    assert_eq!(
        handler.entries("turbo/teams/web"),
        TURBO_PACKAGES.len(),
        "nothing stored"
    );

    // A pull request from a fork gets no identity token: the cache is off, the job goes on.
    let (stdout, env) = step("env-fork", false);
    assert!(
        stdout.contains("::warning::Turborepo remote cache is off"),
        "{stdout}"
    );
    assert_eq!(value_of(&env, "TURBO_TOKEN"), Some(""));
    assert_turbo_off(&workspace, &env, &handler);
}

#[test]
fn the_gitlab_ci_turbo_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let pipeline = doc_snippet("yaml gitlab-ci-turbo");
    let before_script = block_scalar(&pipeline, Some("before_script:"), "-");
    let gitlab = &issuers.gitlab;
    // GitLab runs before_script and script in one shell: the exports reach turbo. The probe
    // prints what a later `script` line would see (an empty value too).
    let probe = "\nfor v in TURBO_API TURBO_TEAM TURBO_TOKEN; do\n  if eval \"[ -n \\\"\\${$v+set}\\\" ]\"; then eval \"echo \\\"$v=\\${$v}\\\"\"; fi\ndone\n";
    let job = |identity: Option<String>, shell: &str| {
        let mut env = vars(&[
            ("REMOTE_CACHE_URL", &handler.base_url),
            ("REMOTE_CACHE_TEAM", "web"),
            (
                "REMOTE_CACHE_TOKEN_URL",
                &format!("{}/token", handler.base_url),
            ),
        ]);
        if let Some(identity) = identity {
            env.push(("REMOTE_CACHE_ID_TOKEN".into(), identity));
        }
        gitlab_before_script(shell, &before_script, probe, &env, "TURBO_")
    };
    let protected = gitlab.sign(&gitlab.claims(AUDIENCE, gitlab_claims("acme/web", "main", true)));
    for shell in ["bash", "sh"] {
        let (_, env) = job(Some(protected.clone()), shell);
        assert!(
            value_of(&env, "TURBO_TOKEN").is_some_and(|t| !t.is_empty()),
            "{shell}: {env:?}"
        );
        assert_eq!(value_of(&env, "TURBO_TEAM"), Some("web"));
    }
    let workspace = TurboWorkspace::new(false);
    let (_, env) = job(Some(protected), "bash");
    assert_turbo_stores_and_hits(&workspace, &env, &handler);

    // An unprotected branch: no rule, said so, the cache off, the build goes on.
    let feature =
        gitlab.sign(&gitlab.claims(AUDIENCE, gitlab_claims("acme/web", "feature", false)));
    let (stdout, env) = job(Some(feature), "bash");
    assert!(
        stdout.contains("token exchange refused: no trust rule matches"),
        "{stdout}"
    );
    assert_turbo_off(&workspace, &env, &handler);
    let (_, env) = job(None, "sh");
    assert_turbo_off(&workspace, &env, &handler);
}

/// The variables an Azure Pipelines step set, as the build step's environment gets them, with
/// its `env:` mapping of the secret (`$(REMOTE_CACHE_TOKEN)` stays literal when it was never
/// set, as Azure Pipelines leaves unknown macros).
fn azure_turbo_step_env(stdout: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut token = "$(REMOTE_CACHE_TOKEN)".to_owned();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("##vso[task.setvariable variable=") else {
            continue;
        };
        let (properties, value) = rest.split_once(']').unwrap();
        let name = properties.split(';').next().unwrap();
        if properties.contains("issecret=true") {
            if name == "REMOTE_CACHE_TOKEN" {
                token = value.to_owned();
            }
        } else {
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    env.push(("TURBO_TOKEN".into(), token));
    env
}

#[test]
fn the_azure_pipelines_turbo_snippet_works_as_documented() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuers = runtime.block_on(Issuers::start());
    let handler = issuers.handler(&[]);
    let pipeline = doc_snippet("yaml azure-pipelines-turbo");
    let script = block_scalar(&pipeline, Some("task: AzureCLI@2"), "inlineScript:");
    let bin = tempfile::tempdir().unwrap();
    let v1 = &issuers.entra_v1;
    v1.install_az(bin.path());
    v1.set_ci_claims(entra_pipeline_claims(&v1.issuer()));
    let step = |extra: &[(&str, &str)]| {
        let mut env = vars(&[
            ("REMOTE_CACHE_URL", &handler.base_url),
            ("REMOTE_CACHE_TEAM", "web"),
            (
                "REMOTE_CACHE_TOKEN_URL",
                &format!("{}/token", handler.base_url),
            ),
            ("REMOTE_CACHE_APP_ID_URI", &cache_app_uri()),
        ]);
        env.extend(vars(extra));
        azure_pipelines_step(&script, &env, bin.path())
    };
    let stdout = step(&[]);
    assert!(
        stdout.contains("##vso[task.setvariable variable=REMOTE_CACHE_TOKEN;issecret=true]"),
        "{stdout}"
    );
    let env = azure_turbo_step_env(&stdout);
    assert_eq!(value_of(&env, "TURBO_TEAM"), Some("web"));
    let workspace = TurboWorkspace::new(false);
    assert_turbo_stores_and_hits(&workspace, &env, &handler);

    // The service connection cannot sign in: a warning, the cache off, the job goes on.
    let stdout = step(&[("AZ_STANDIN_LOGGED_OUT", "1")]);
    assert!(
        stdout.contains("##vso[task.logissue type=warning]Turborepo remote cache is off"),
        "{stdout}"
    );
    let env = azure_turbo_step_env(&stdout);
    assert_eq!(value_of(&env, "TURBO_TOKEN"), Some("$(REMOTE_CACHE_TOKEN)"));
    assert_eq!(value_of(&env, "TURBO_TEAM"), Some(""));
    assert_turbo_off(&workspace, &env, &handler);
}

//! Every kind of bad or insufficient token, over HTTP against the real server: each gets the
//! documented answer, and none of them reads or writes an entry.

mod common;

use base64::Engine;
use common::{Handler, TEST_SECRET, issue_token};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;

const ENTRY: &[u8] = b"the stored artifact";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A JWT with the given header and claims, HMAC-SHA256-signed with `key`.
fn forge(header: &str, claims: &serde_json::Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

fn claims(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = serde_json::json!({
        "iss": "nx-azure-cache", "aud": "nx-remote-cache", "sub": "suite", "jti": "suite-id",
        "iat": now, "nbf": now, "exp": now + 600, "org": true, "teams": ["web"], "access": "read-write"
    });
    edit(&mut claims);
    claims
}

#[tokio::test]
async fn bad_tokens_neither_read_nor_write() {
    let server = Handler::start(&[("NX_CACHE_REVOKED_TOKENS", "revoked-id")]);
    let base = &server.base_url;
    let client = reqwest::Client::new();
    let writer = issue_token(&["--org", "--team", "web"]);
    for path in ["/v1/cache/100", "/teams/web/v1/cache/100"] {
        let stored = client
            .put(format!("{base}{path}"))
            .bearer_auth(&writer)
            .body(ENTRY)
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), StatusCode::OK);
    }
    let key = TEST_SECRET.as_bytes();
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let valid = forge(hs256, &claims(|_| {}), key);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("empty bearer", Some(String::new())),
        ("malformed", Some("not.a.jwt".into())),
        (
            "wrong signature",
            Some(forge(
                hs256,
                &claims(|_| {}),
                b"another-secret-another-secret-xx",
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(claims(|_| {}).to_string().as_bytes())
            )),
        ),
        (
            "another algorithm",
            Some({
                let input = format!(
                    "{}.{}",
                    b64(br#"{"alg":"HS512"}"#),
                    b64(claims(|_| {}).to_string().as_bytes())
                );
                let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
                mac.update(input.as_bytes());
                format!("{input}.{}", b64(&mac.finalize().into_bytes()))
            }),
        ),
        (
            "expired longer ago than NX_CACHE_EXPIRED_GRACE (12h)",
            Some(forge(
                hs256,
                &claims(|c| {
                    c["exp"] = (now - 13 * 3600).into();
                    c["nbf"] = (now - 14 * 3600).into();
                    c["iat"] = (now - 14 * 3600).into();
                }),
                key,
            )),
        ),
        (
            "signed with a secret this cache does not have, naming its key",
            Some(forge(
                r#"{"alg":"HS256","kid":"0123456789abcdef"}"#,
                &claims(|_| {}),
                key,
            )),
        ),
        (
            "not yet valid",
            Some(forge(
                hs256,
                &claims(|c| {
                    c["nbf"] = (now + 3600).into();
                    c["exp"] = (now + 7200).into();
                }),
                key,
            )),
        ),
        (
            "wrong issuer",
            Some(forge(
                hs256,
                &claims(|c| c["iss"] = "someone-else".into()),
                key,
            )),
        ),
        (
            "wrong audience",
            Some(forge(
                hs256,
                &claims(|c| c["aud"] = "someone-else".into()),
                key,
            )),
        ),
        (
            "no expiry",
            Some(forge(
                hs256,
                &claims(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                key,
            )),
        ),
        (
            "revoked",
            Some(forge(
                hs256,
                &claims(|c| c["jti"] = "revoked-id".into()),
                key,
            )),
        ),
        (
            "lifetime over NX_CACHE_MAX_TOKEN_LIFETIME (500000 years)",
            Some(forge(
                hs256,
                &claims(|c| c["exp"] = (now + 500_000 * 365 * 24 * 3600).into()),
                key,
            )),
        ),
        (
            "no issued-at",
            Some(forge(
                hs256,
                &claims(|c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                key,
            )),
        ),
    ];
    // The forged baseline is accepted, so every refusal below is for the stated reason.
    let ok = client
        .get(format!("{base}/v1/cache/100"))
        .bearer_auth(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    for (name, token) in &cases {
        for path in ["/v1/cache/100", "/teams/web/v1/cache/100"] {
            let mut get = client.get(format!("{base}{path}"));
            let mut put = client.put(format!("{base}{path}0")).body("poison");
            if let Some(token) = token {
                get = get.header("authorization", format!("Bearer {token}"));
                put = put.header("authorization", format!("Bearer {token}"));
            }
            let got = get.send().await.unwrap();
            assert_eq!(got.status(), StatusCode::UNAUTHORIZED, "{name}: GET {path}");
            assert_eq!(got.headers()["content-type"], "text/plain", "{name}");
            assert_ne!(
                got.bytes().await.unwrap().as_ref(),
                ENTRY,
                "{name}: no entry read"
            );
            let put = put.send().await.unwrap();
            assert_eq!(
                put.status(),
                StatusCode::UNAUTHORIZED,
                "{name}: PUT {path}0"
            );
        }
    }
    assert_eq!(server.entries("org"), 1, "nothing written");
    assert_eq!(server.entries("teams/web"), 1, "nothing written");
}

#[tokio::test]
async fn insufficient_tokens_neither_read_nor_write_outside_their_scope() {
    let server = Handler::start(&[]);
    let base = &server.base_url;
    let client = reqwest::Client::new();
    let writer = issue_token(&["--org", "--team", "web"]);
    client
        .put(format!("{base}/teams/web/v1/cache/7"))
        .bearer_auth(&writer)
        .body(ENTRY)
        .send()
        .await
        .unwrap();
    client
        .put(format!("{base}/v1/cache/7"))
        .bearer_auth(&writer)
        .body(ENTRY)
        .send()
        .await
        .unwrap();

    let api = issue_token(&["--team", "api"]);
    let web_reader = issue_token(&["--team", "web", "--read-only"]);
    // Another team's token: a miss on read (no error that would abort the build), 403 on write.
    for path in ["/teams/web/v1/cache/7", "/v1/cache/7"] {
        let got = client
            .get(format!("{base}{path}"))
            .bearer_auth(&api)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::NOT_FOUND, "{path}");
        assert_ne!(got.bytes().await.unwrap().as_ref(), ENTRY);
        let put = client
            .put(format!("{base}{path}7"))
            .bearer_auth(&api)
            .body("poison")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::FORBIDDEN, "{path}7");
    }
    // Read-only on PUT: 403, nothing written; reads work.
    let put = client
        .put(format!("{base}/teams/web/v1/cache/8"))
        .bearer_auth(&web_reader)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    let got = client
        .get(format!("{base}/teams/web/v1/cache/7"))
        .bearer_auth(&web_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), ENTRY);
    assert_eq!(server.entries("teams/web"), 1);
    assert_eq!(server.entries("teams/api"), 0);
    assert_eq!(server.entries("org"), 1);
}

/// A token that expired less than `NX_CACHE_EXPIRED_GRACE` ago (a build that outlived its
/// token) reads and writes nothing, but gets the no-access answers Nx takes in its stride
/// (GET 404, PUT 403) instead of the 401 that would abort the build; the log names its subject.
/// Past the grace period it is a 401 again.
#[tokio::test]
async fn a_token_that_expired_during_a_build_gets_no_access_but_no_401() {
    let server = Handler::start(&[("NX_CACHE_EXPIRED_GRACE", "1h")]);
    let base = &server.base_url;
    let client = reqwest::Client::new();
    let writer = issue_token(&["--org"]);
    client
        .put(format!("{base}/v1/cache/5"))
        .bearer_auth(&writer)
        .body(ENTRY)
        .send()
        .await
        .unwrap();
    let key = TEST_SECRET.as_bytes();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = |ago: i64| {
        forge(
            r#"{"alg":"HS256"}"#,
            &claims(|c| {
                c["sub"] = "ci-web-main".into();
                c["iat"] = (now - ago - 600).into();
                c["nbf"] = (now - ago - 600).into();
                c["exp"] = (now - ago).into();
            }),
            key,
        )
    };
    let recent = expired(20 * 60);
    let got = client
        .get(format!("{base}/v1/cache/5"))
        .bearer_auth(&recent)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND, "a miss, not the entry");
    assert_ne!(got.bytes().await.unwrap().as_ref(), ENTRY);
    let put = client
        .put(format!("{base}/v1/cache/6"))
        .bearer_auth(&recent)
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    assert!(put.text().await.unwrap().contains("expired"));
    assert_eq!(server.entries("org"), 1, "nothing written");
    let warned = server.wait_for_log(std::time::Duration::from_secs(10), |l| {
        l.contains("\"level\":\"WARN\"") && l.contains("expired") && l.contains("ci-web-main")
    });
    assert!(warned.is_some(), "a warning names the subject");

    let stale = expired(2 * 3600);
    let got = client
        .get(format!("{base}/v1/cache/5"))
        .bearer_auth(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status(),
        StatusCode::UNAUTHORIZED,
        "past the grace period"
    );
    assert_eq!(got.headers()["content-type"], "text/plain");
}

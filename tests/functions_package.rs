//! The packaged Functions app (`dist/functionapp.zip`, made by `scripts/package`) run the way the
//! Azure Functions host runs a custom handler: unpacked, `handler` started from the package with
//! no arguments and `FUNCTIONS_CUSTOMHANDLER_PORT`, `GET /` awaited, then every route that a
//! `function.json` declares is called. `host.json`, the function folders and the handler must
//! agree: a route the handler serves that no function declares, or the reverse, fails.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Handler, issue_token};
use reqwest::StatusCode;

const METRICS_TOKEN: &str = "metrics-token-0123456789";

fn package() -> PathBuf {
    let path = std::env::var_os("NX_CACHE_PACKAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/functionapp.zip"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/package first (scripts/test does)",
        path.display()
    );
    path
}

/// Unpacks the zip, restoring Unix modes; returns the mode of `handler` as stored in the zip.
fn unpack(zip_path: &Path, into: &Path) -> u32 {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    let mut handler_mode = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let out = into.join(entry.enclosed_name().expect("no path escapes the package"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut file = std::fs::File::create(&out).unwrap();
        std::io::copy(&mut entry, &mut file).unwrap();
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o7777)).unwrap();
            if entry.name().is_ok_and(|name| name == "handler") {
                handler_mode = mode;
            }
        }
    }
    handler_mode
}

/// (route, method) pairs declared by the function folders at the package root.
fn declared_routes(root: &Path) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path().join("function.json");
        if !path.is_file() {
            continue;
        }
        let function: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let bindings = function["bindings"].as_array().unwrap();
        let trigger = bindings
            .iter()
            .find(|b| b["type"] == "httpTrigger")
            .expect("an httpTrigger");
        assert_eq!(
            trigger["authLevel"],
            "anonymous",
            "{}: the handler does its own auth",
            path.display()
        );
        assert!(
            bindings
                .iter()
                .any(|b| b["type"] == "http" && b["direction"] == "out"),
            "{}",
            path.display()
        );
        let route = format!("/{}", trigger["route"].as_str().unwrap());
        for method in trigger["methods"].as_array().unwrap() {
            routes.insert((route.clone(), method.as_str().unwrap().to_uppercase()));
        }
    }
    routes
}

fn served_routes() -> BTreeSet<(String, String)> {
    nx_azure_cache::api::ROUTES
        .iter()
        .flat_map(|(route, methods)| {
            methods
                .iter()
                .map(move |m| (route.to_string(), m.to_string()))
        })
        .collect()
}

/// A concrete path for a route template (turbo's routes name their team in the query).
fn concrete(route: &str) -> String {
    let path = route
        .replace("{hash}", "4809188201876735999")
        .replace("{team}", "web");
    match route.starts_with("/v8/") {
        true => format!("{path}?slug=web"),
        false => path,
    }
}

/// The body a route is called with: turbo's query and events are JSON.
fn body_for(route: &str) -> &'static str {
    match route {
        "/v8/artifacts" => r#"{"hashes": ["4809188201876735999"]}"#,
        "/v8/artifacts/events" => {
            r#"[{"sessionId": "s", "source": "REMOTE", "event": "HIT", "hash": "4809188201876735999", "duration": 5}]"#
        }
        _ => "artifact",
    }
}

/// The functions (folder names) whose route template and methods match a request, as the
/// Functions host matches them: literal segments without regard to case, `{name}` one segment.
fn matching_functions(root: &Path, path: &str, method: &str) -> Vec<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read(dir.join("function.json")) else {
            continue;
        };
        let function: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let trigger = &function["bindings"][0];
        let template: Vec<&str> = trigger["route"].as_str().unwrap().split('/').collect();
        let methods = trigger["methods"].as_array().unwrap();
        let same_path = template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| {
                (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
                    || t.eq_ignore_ascii_case(s)
            });
        if same_path
            && methods
                .iter()
                .any(|m| m.as_str().unwrap().eq_ignore_ascii_case(method))
        {
            found.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_serves_exactly_what_its_functions_declare() {
    let unpacked = tempfile::tempdir().unwrap();
    let mode = unpack(&package(), unpacked.path());
    assert_eq!(
        mode & 0o111,
        0o111,
        "the handler keeps its run bit in the zip ({mode:o})"
    );

    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.path().join("host.json")).unwrap()).unwrap();
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "handler"
    );
    assert_eq!(
        host["customHandler"]["enableProxyingHttpRequest"], true,
        "streaming bodies"
    );
    assert_eq!(
        host["extensions"]["http"]["routePrefix"], "",
        "no /api prefix: Nx builds the paths"
    );

    let declared = declared_routes(unpacked.path());
    let served = served_routes();
    let undeclared: Vec<_> = served.difference(&declared).collect();
    let unserved: Vec<_> = declared.difference(&served).collect();
    assert!(
        undeclared.is_empty(),
        "served by the handler but declared by no function: {undeclared:?}"
    );
    assert!(
        unserved.is_empty(),
        "declared by a function but not served: {unserved:?}"
    );

    // Start it as the host does: no arguments, the port in FUNCTIONS_CUSTOMHANDLER_PORT. A
    // stand-in identity issuer makes POST /token answer too.
    let issuer = common::oidc::Issuer::start("").await;
    let policy = serde_json::json!({"rules": [{
        "name": "ci", "issuer": issuer.issuer(), "audience": "nx-cache",
        "claims": {"repository": "acme/web"},
        "grant": {"teams": ["web"], "access": "read-only"}
    }]})
    .to_string();
    let identity = issuer.sign(&issuer.claims(
        "nx-cache",
        serde_json::json!({"repository": "acme/web", "sub": "repo:acme/web:ref:refs/heads/main"}),
    ));
    let data = tempfile::tempdir().unwrap();
    let handler = Handler::launch(
        &unpacked.path().join("handler"),
        &[],
        data.path(),
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "0"),
            ("NX_CACHE_LOG_FORMAT", ""),
            ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
            ("NX_CACHE_TRUST_POLICY", &policy),
        ],
    );
    let client = reqwest::Client::new();
    let alive = client
        .get(format!("{}/", handler.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        alive.status(),
        StatusCode::OK,
        "the host polls GET / until it answers"
    );

    let token = issue_token(&["--org", "--team", "web"]);
    // Uploads first, so that every GET of a cache route is a hit.
    let mut calls: Vec<_> = declared.iter().collect();
    calls.sort_by_key(|(_, method)| method != "PUT");
    for (route, method) in calls {
        let url = format!("{}{}", handler.base_url, concrete(route));
        let token = match route.as_str() {
            "/metrics" => METRICS_TOKEN,
            "/token" => identity.as_str(),
            _ => token.as_str(),
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client.request(method.clone(), &url).bearer_auth(token);
        if matches!(method.as_str(), "PUT" | "POST") && route != "/token" {
            request = request.body(body_for(route));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(status.is_success(), "{method} {route}: {status}");
        if method == reqwest::Method::GET && route.contains("{hash}") {
            let body = response.bytes().await.unwrap();
            assert_eq!(body.as_ref(), b"artifact", "GET {route} is a hit");
        }
        // A method no function declares is not served either.
        let delete = client.delete(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(
            delete.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE {route}"
        );
    }

    // The host tries functions in an order of its own (by function name; literal segments are not
    // preferred: azure-functions-host#3153, #9876), so turbo's `status` and `events` also match
    // the `{hash}` function. With enableProxyingHttpRequest every function forwards the request
    // unchanged to this one handler, which routes by its path: whichever function the host
    // picks, the request gets the same answer. Each request turbo makes is matched by at least
    // one function, and answered as what it is.
    for (path, method, wanted) in [
        ("/v8/artifacts/status", "GET", "turbo-status"),
        ("/v8/artifacts/events", "POST", "turbo-events"),
        ("/v8/artifacts", "POST", "turbo-query"),
        ("/v8/artifacts/0123456789abcdef", "HEAD", "turbo-artifact"),
        ("/v1/cache/42", "GET", "cache-org"),
    ] {
        let matched = matching_functions(unpacked.path(), path, method);
        assert!(
            matched.contains(&wanted.to_string()),
            "{method} {path}: {matched:?}"
        );
    }
    assert_eq!(
        matching_functions(unpacked.path(), "/v8/artifacts/status", "GET"),
        ["turbo-artifact", "turbo-status"],
        "the host may hand turbo's status to either function"
    );
    let status = client
        .get(format!("{}/v8/artifacts/status?slug=web", handler.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(
        status["status"], "enabled",
        "the status, not an artifact named status"
    );

    // The host's invocation id becomes the request id of the log line (JSON under Functions).
    let response = client
        .get(format!("{}/v1/cache/4809188201876735999", handler.base_url))
        .bearer_auth(&token)
        .header(
            "X-Azure-Functions-InvocationId",
            "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    );
    let line = handler.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b") && l.contains("\"status\":200")
    });
    let line = line.expect("a JSON request line carrying the invocation id");
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON logs under Functions");
    assert_eq!(
        parsed["span"]["id"], "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b",
        "{line}"
    );
}

//! The Azure Monitor workbook (`infra/workbook.json`) reads the handler's request log lines:
//! every field its queries use must be a field the handler actually writes. The queries parse
//! each line into `e` and name fields only as `e.FIELD` (a convention of the workbook, checked
//! by tests/infra too); this test collects those names and compares them with the fields of
//! real JSON request lines.

mod common;

use std::collections::BTreeSet;

use common::{Handler, issue_token};

/// Every string under a `"query"` key, anywhere in the workbook.
fn queries(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("query", serde_json::Value::String(query)) => into.push(query.clone()),
                    _ => queries(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, into)),
        _ => {}
    }
}

/// `e.FIELD` names in a query.
fn fields(query: &str) -> BTreeSet<String> {
    let bytes = query.as_bytes();
    let mut found = BTreeSet::new();
    for (at, _) in query.match_indices("e.") {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            continue;
        }
        let name: String = query[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[tokio::test]
async fn every_field_the_workbook_queries_is_a_field_of_the_request_log_line() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/workbook.json");
    let workbook: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut all = Vec::new();
    queries(&workbook, &mut all);
    assert!(
        all.len() >= 5,
        "the workbook has its queries: {}",
        all.len()
    );
    let used: BTreeSet<String> = all.iter().flat_map(|q| fields(q)).collect();
    for wanted in ["outcome", "namespace", "subject", "bytes"] {
        assert!(used.contains(wanted), "no query uses e.{wanted}: {used:?}");
    }

    // Real request lines: stored, hit, miss, denied, unauthorized, on the embedded store.
    let handler = Handler::start(&[]);
    let client = reqwest::Client::new();
    let token = issue_token(&["--team", "web"]);
    let url = |path: &str| format!("{}{path}", handler.base_url);
    client
        .put(url("/teams/web/v1/cache/1"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    client
        .get(url("/teams/web/v1/cache/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client
        .get(url("/teams/web/v1/cache/2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client
        .get(url("/v1/cache/3"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client.get(url("/v1/cache/3")).send().await.unwrap();
    // turbo's: a stored artifact and its hit (the time it saved).
    let artifact = url("/v8/artifacts/0123456789abcdef?slug=web");
    client
        .put(&artifact)
        .bearer_auth(&token)
        .header("x-artifact-duration", "1500")
        .body("x")
        .send()
        .await
        .unwrap();
    client
        .get(&artifact)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = handler
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        // Not `GET /`: `logs()` makes one to know every earlier line is in.
        .filter(|v| v["message"] == "request" && v["path"] != "/")
        .collect();
    assert_eq!(lines.len(), 7, "one line per request");
    let turbo_hit = lines
        .iter()
        .find(|l| l["client"] == "turbo" && l["outcome"] == "hit")
        .expect("turbo's hit");
    assert_eq!(turbo_hit["namespace"], "turbo:team:web");
    assert_eq!(turbo_hit["time_saved_ms"], 1500);
    let written: BTreeSet<String> = lines
        .iter()
        .flat_map(|v| v.as_object().unwrap().keys().cloned())
        .collect();
    let unknown: Vec<&String> = used.difference(&written).collect();
    assert!(
        unknown.is_empty(),
        "the workbook queries fields the handler never writes: {unknown:?} (it writes {written:?})"
    );
}

#[test]
fn field_names_are_read_from_queries() {
    let q = "traces | extend e = parse_json(message) | where tostring(e.message) == 'request' | summarize hits = countif(e.outcome == 'hit') by ns = tostring(e.namespace), bin(timestamp, 1h) | extend rate = todouble(hits) / 2.0 | project the.e.x";
    let names: Vec<String> = fields(q).into_iter().collect();
    assert_eq!(names, ["message", "namespace", "outcome"]);
}

//! docs/deploy.md against the real `handler`: the `/health` answers that step 5 documents (and the
//! troubleshooting table quotes) are the ones the server gives, healthy and not ready, and the log
//! line the docs send the operator to is there and says why.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::Handler;

/// Azurite's well-known development account and key (public; the handler accepts plain http only
/// for an endpoint on loopback).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The `curl` of step 5 prints the body, then ` (HTTP STATUS)`: the comments under it show that.
const CURL_FORMAT: &str = r#"-w ' (HTTP %{http_code})\n'"#;

fn deploy_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced code blocks of a Markdown text (``` fences at the start of a line).
fn fenced_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        if fence {
            match current.take() {
                Some(lines) => blocks.push(lines.join("\n")),
                None => current = Some(Vec::new()),
            }
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    blocks
}

/// One answer documented under step 5's `curl`: a comment line `# LABEL: BODY (HTTP STATUS)`.
#[derive(Debug)]
struct Documented {
    body: String,
    status: u16,
}

/// The answers documented in the one code block that queries `"$URL/health"`.
fn documented_health_answers(markdown: &str) -> Vec<Documented> {
    let blocks: Vec<String> = fenced_blocks(markdown)
        .into_iter()
        .filter(|b| b.contains("\"$URL/health\""))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "docs/deploy.md: expected one code block that queries \"$URL/health\", found {blocks:?}"
    );
    let block = &blocks[0];
    let command = block
        .lines()
        .find(|l| l.contains("\"$URL/health\""))
        .unwrap();
    assert!(
        command.contains(CURL_FORMAT),
        "the documented command must print the body and the status as its comments show ({CURL_FORMAT}): {command}"
    );
    assert!(
        !command
            .split_whitespace()
            .any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('f')),
        "curl -f prints no body for a 503, which is the part the docs explain: {command}"
    );
    block
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|comment| {
            let (_label, rest) = comment.split_once(": ")?;
            let (body, status) = rest.rsplit_once(" (HTTP ")?;
            let status = status.strip_suffix(')')?.parse().ok()?;
            Some(Documented {
                body: body.to_owned(),
                status,
            })
        })
        .collect()
}

async fn health(base_url: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base_url}/health")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_health_answers_in_the_deploy_guide_are_the_servers() {
    let doc = deploy_md();
    let documented = documented_health_answers(&doc);
    let statuses: Vec<u16> = documented.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        vec![200, 503, 503],
        "step 5 documents the healthy, the not-ready and the refused-settings answer: {documented:?}"
    );
    let (healthy, not_ready, refused) = (&documented[0], &documented[1], &documented[2]);

    // Refused settings under the Functions host: the handler keeps answering, /health 503.
    let data = tempfile::tempdir().unwrap();
    let handler = Handler::launch(
        Path::new(env!("CARGO_BIN_EXE_handler")),
        &[],
        data.path(),
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "0"),
            ("NX_CACHE_MODE", "sometimes"),
        ],
    );
    assert_eq!(health(&handler.base_url).await, (503, refused.body.clone()));
    let line = handler
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("the configuration was refused")
        })
        .expect("the refusal is logged");
    assert!(
        line.contains("configuration error: NX_CACHE_MODE: "),
        "{line}"
    );
    assert!(
        doc.contains("`the configuration was refused`"),
        "the guide names the log line"
    );
    drop(handler);

    // Healthy: the embedded store is ready at once.
    let handler = Handler::start(&[]);
    assert_eq!(health(&handler.base_url).await, (200, healthy.body.clone()));
    drop(handler);

    // Not ready: Azure Blob storage that cannot be reached (a closed loopback port).
    let connection_string = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:{}/{DEV_ACCOUNT};",
        closed_port()
    );
    let handler = Handler::start(&[
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string.as_str(),
        ),
        ("AZURE_STORAGE_CONTAINER", "nx-cache"),
        ("NX_CACHE_STORAGE_TIMEOUT", "2s"),
    ]);
    assert_eq!(
        health(&handler.base_url).await,
        (503, not_ready.body.clone())
    );
    // The reason is where the docs say it is: the log line `storage not ready: ...`, and it is
    // one of the reasons the troubleshooting table lists (`cannot reach container ...`).
    let line = handler
        .wait_for_log(Duration::from_secs(30), |l| {
            l.contains("storage not ready: ")
        })
        .expect("a `storage not ready` log line");
    assert!(
        line.contains("cannot reach container 'nx-cache' in storage account 'devstoreaccount1'"),
        "{line}"
    );
    assert!(
        doc.contains("`storage not ready: …`") && doc.contains("`… cannot reach container …`"),
        "the troubleshooting table points to the log line and quotes its reason"
    );

    // Everywhere else the guide quotes the 503 (the troubleshooting table), it is the same text;
    // `storage not ready:` is the log line, not the answer.
    let mut quoted = 0;
    for (at, _) in doc.match_indices("not ready: ") {
        if doc[..at].ends_with("storage ") {
            continue;
        }
        quoted += 1;
        assert!(
            doc[at..].starts_with(&not_ready.body) || doc[at..].starts_with(&refused.body),
            "docs/deploy.md quotes another /health answer than the server's ({:?}): {:?}",
            not_ready.body,
            &doc[at..(at + not_ready.body.len()).min(doc.len())]
        );
    }
    assert!(
        quoted >= 2,
        "step 5 and the troubleshooting table quote the 503"
    );
}

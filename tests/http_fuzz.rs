//! Hostile request lines and headers against the real server over loopback: every answer is a
//! clean 4xx (or 200 for the paths that exist), never a 5xx, a hang or a dropped connection, and
//! nothing is stored. Case count: `PROPTEST_CASES` (default 1,000).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Handler, issue_token};
use proptest::prelude::*;

/// Sends one raw request and returns the status code.
fn status_of(addr: &str, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).expect("an answer, not a hang");
        assert!(n > 0, "the connection closed without an answer");
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line")
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]{1,20}",
        "(%2[eEfF]|%00|%C3%A9|%FF|\\.\\.|\\.|~|-|_|[a-z0-9]){1,12}",
        "[0-9]{100,140}",
        Just(String::new()),
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    (path_segment(), path_segment(), 0..4u8).prop_map(|(team, hash, shape)| match shape {
        0 => format!("/v1/cache/{hash}"),
        1 => format!("/teams/{team}/v1/cache/{hash}"),
        2 => format!("/{team}/{hash}"),
        _ => format!("/teams/{team}/v1/cache/{hash}/{team}"),
    })
}

#[test]
fn hostile_paths_and_headers_get_clean_answers() {
    let handler = Handler::start(&[]);
    let addr = handler.base_url.trim_start_matches("http://").to_owned();
    let token = issue_token(&["--org", "--team", "web"]);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let strategy = (
        request_path(),
        prop::sample::select(vec!["GET", "PUT", "DELETE", "POST", "HEAD"]),
        prop_oneof![
            Just(format!("Bearer {token}")),
            Just(String::new()),
            "[ -~]{0,200}",
            "Bearer [A-Za-z0-9._-]{0,300}",
        ],
        prop_oneof![Just(None), (0u64..5).prop_map(Some), Just(Some(u64::MAX))],
    );
    runner
        .run(&strategy, |(path, method, authorization, length)| {
            let mut request =
                format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
            if !authorization.is_empty() {
                request.push_str(&format!("authorization: {authorization}\r\n"));
            }
            if let Some(length) = length {
                request.push_str(&format!("content-length: {length}\r\n"));
            }
            request.push_str("\r\n");
            if let Some(length) = length.filter(|l| *l < 5) {
                request.push_str(&"x".repeat(length as usize));
            }
            let status = status_of(&addr, request.as_bytes());
            prop_assert!((200..500).contains(&status), "{method} {path} -> {status}");
            Ok(())
        })
        .unwrap();
    // The server is still healthy after all of that.
    assert_eq!(
        status_of(
            &addr,
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        ),
        200
    );
}

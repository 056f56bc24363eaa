//! Connection limits and shutdown over real loopback TCP: slow or stalled clients are cut off,
//! oversized headers refused, concurrency capped with backpressure, and SIGTERM drains in-flight
//! requests before the process exits.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Handler, issue_token};

fn connect(handler: &Handler) -> TcpStream {
    let stream = TcpStream::connect(handler.base_url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until the peer closes or a response head arrives; returns what was read.
fn read_some(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let handler = Handler::start(&[("NX_CACHE_HEADER_TIMEOUT", "1s")]);
    let mut stream = connect(&handler);
    stream
        .write_all(b"GET /v1/cache/1 HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let answer =
        read_some(&mut stream).expect("the server closes (or answers) instead of waiting forever");
    assert!(!answer.contains("200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut off after the header timeout"
    );
}

#[test]
fn an_upload_that_stalls_is_cut_off_and_stores_nothing() {
    let handler = Handler::start(&[("NX_CACHE_BODY_TIMEOUT", "1s")]);
    let token = issue_token(&["--org"]);
    let mut stream = connect(&handler);
    let head = format!(
        "PUT /v1/cache/5 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[7u8; 10]).unwrap();
    let answer = read_some(&mut stream).expect("an answer despite the stalled body");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("no body bytes"), "{answer}");
    assert_eq!(handler.entries("org"), 0);
    assert_eq!(
        std::fs::read_dir(handler.data_dir.join(".tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn oversized_headers_are_refused() {
    let handler = Handler::start(&[]);
    let mut stream = connect(&handler);
    let huge = "a".repeat(100 * 1024);
    let request = format!("GET /v1/cache/1 HTTP/1.1\r\nhost: x\r\nx-padding: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let answer = read_some(&mut stream).unwrap_or_default();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
}

#[test]
fn connections_over_the_cap_wait_instead_of_queueing_in_the_process() {
    let handler = Handler::start(&[("NX_CACHE_MAX_CONNECTIONS", "2")]);
    // Two keep-alive connections hold both slots.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect(&handler);
            stream
                .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            assert!(read_some(&mut stream).unwrap().starts_with("HTTP/1.1 200"));
            stream
        })
        .collect();
    let mut third = connect(&handler);
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let waiting = read_some(&mut third);
    assert!(
        waiting.is_err(),
        "the third connection must wait for a slot: {waiting:?}"
    );
    // A slot frees up: the waiting request is served.
    held.pop();
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(read_some(&mut third).unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn sigterm_lets_an_in_flight_upload_finish_then_exits() {
    let mut handler = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let mut stream = connect(&handler);
    let body = vec![3u8; 2 * 1024 * 1024];
    let head = format!(
        "PUT /v1/cache/9 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &handler.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    handler
        .wait_for_log(Duration::from_secs(10), |l| l.contains("shutting down"))
        .expect("the handler starts draining");
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let answer = read_some(&mut stream).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the in-flight upload completes: {answer}"
    );
    drop(stream);
    let exit = handler
        .wait_exit(Duration::from_secs(30))
        .expect("the handler exits after draining");
    assert!(exit.success(), "{exit:?}");
    assert_eq!(handler.entries("org"), 1);
}

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

// ---------------------------------------------------------------------------------------------
// Hostile clients: trickled bodies, drains, stalled downloads (issue 10).

/// What became of a connection that kept sending.
struct Trickled {
    /// Everything the server sent.
    answer: String,
    /// When the server closed the connection, counted from the first byte of the request.
    closed_after: Option<Duration>,
    /// Body bytes the server accepted before closing (or before the client gave up).
    sent: u64,
}

/// How a test client sends its upload: a PUT head announcing `declared` bytes, then `chunk`
/// bytes every `every`.
#[derive(Clone, Copy)]
struct Trickle<'a> {
    path: &'a str,
    token: Option<&'a str>,
    declared: u64,
    chunk: usize,
    every: Duration,
}

/// Sends `upload` until the server closes the connection, the whole body is sent, or `give_up`
/// passes. `answered` gets the answer's status line as soon as it arrives.
fn trickle_put(
    addr: &str,
    upload: Trickle,
    give_up: Duration,
    answered: Option<std::sync::mpsc::Sender<String>>,
) -> Trickled {
    let Trickle {
        path,
        token,
        declared,
        chunk,
        every,
    } = upload;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(every)).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head =
        format!("PUT {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: {declared}\r\n\r\n");
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut sent = 0u64;
    let mut answered = answered;
    let closed = |answer: Vec<u8>, sent| Trickled {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed_after: Some(started.elapsed()),
        sent,
    };
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        match stream.read(&mut buf) {
            Ok(0) => return closed(answer, sent),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if let Some(tx) = answered.take() {
                    let text = String::from_utf8_lossy(&answer);
                    let _ = tx.send(text.lines().next().unwrap_or("").to_owned());
                }
                continue;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return closed(answer, sent),
        }
        if sent < declared {
            let n = chunk.min((declared - sent) as usize);
            if stream.write_all(&vec![b'x'; n]).is_err() {
                return closed(answer, sent);
            }
            sent += n as u64;
        }
    }
    Trickled {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed_after: None,
        sent,
    }
}

/// `GET /health` on a new connection; the status line, or an error if no answer came in `limit`.
fn health_within(addr: &str, limit: Duration) -> Result<String, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(limit)).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = stream
        .read(&mut buf)
        .map_err(|e| format!("no answer after {:?}: {e}", started.elapsed()))?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

fn addr_of(handler: &Handler) -> String {
    handler.base_url.trim_start_matches("http://").to_owned()
}

/// Three attackers hold the only three connection slots by trickling refused uploads; once
/// each has had its answer, another client must still get `/health` answered.
fn attackers_cannot_starve_health(
    handler: &Handler,
    token: Option<String>,
    expected: &str,
    cut_within: Duration,
) {
    let addr = addr_of(handler);
    let (tx, rx) = std::sync::mpsc::channel();
    let attackers: Vec<_> = (0..3)
        .map(|i| {
            let (addr, token, tx) = (addr.clone(), token.clone(), tx.clone());
            std::thread::spawn(move || {
                let path = format!("/v1/cache/{}", 100 + i);
                let upload = Trickle {
                    path: &path,
                    token: token.as_deref(),
                    declared: 1_000_000_000_000,
                    chunk: 1,
                    every: Duration::from_millis(200),
                };
                trickle_put(&addr, upload, Duration::from_secs(40), Some(tx))
            })
        })
        .collect();
    for _ in 0..3 {
        let status = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every attacker gets its answer at once");
        assert!(status.contains(expected), "{status}");
    }
    let health = health_within(&addr, Duration::from_secs(20));
    assert_eq!(
        health.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "another client is served while the attackers trickle"
    );
    for attacker in attackers {
        let trickled = attacker.join().unwrap();
        let closed_after = trickled.closed_after.unwrap_or_else(|| {
            panic!(
                "the server never closed a trickling upload: {}",
                trickled.answer
            )
        });
        assert!(
            closed_after < cut_within,
            "cut after {closed_after:?}, expected within {cut_within:?}"
        );
    }
}

#[test]
fn uploads_trickled_without_a_token_are_cut_within_seconds() {
    let handler = Handler::start(&[("NX_CACHE_MAX_CONNECTIONS", "3")]);
    // The brief drain of a request without a valid token lasts 2 s at most.
    attackers_cannot_starve_health(&handler, None, "401", Duration::from_secs(8));
}

#[test]
fn uploads_trickled_with_a_read_only_token_are_cut_within_the_rate_window() {
    let handler = Handler::start(&[
        ("NX_CACHE_MAX_CONNECTIONS", "3"),
        ("NX_CACHE_BODY_RATE_WINDOW", "3s"),
    ]);
    let reader = issue_token(&["--org", "--read-only"]);
    attackers_cannot_starve_health(&handler, Some(reader), "403", Duration::from_secs(10));
}

#[test]
fn a_slow_but_steady_refused_upload_is_drained_to_its_end_and_the_connection_kept() {
    let handler = Handler::start(&[
        ("NX_CACHE_BODY_RATE_WINDOW", "2s"),
        ("NX_CACHE_MIN_BODY_RATE", "64K"),
    ]);
    let reader = issue_token(&["--org", "--read-only"]);
    // 1200 KiB at about 400 KiB/s: slow, but well above the floor, for about three windows.
    let declared = 1200 * 1024;
    let mut stream = TcpStream::connect(addr_of(&handler)).unwrap();
    let head = format!(
        "PUT /v1/cache/7 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\ncontent-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let answer = read_some(&mut stream).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let piece = vec![b'y'; 40 * 1024];
    for _ in 0..30 {
        stream.write_all(&piece).expect("the drain keeps reading");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same connection serves the next request: the body was read to its end.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let next = read_some(&mut stream).unwrap();
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
}

#[test]
fn an_accepted_upload_slower_than_the_floor_is_cut_and_stores_nothing() {
    let handler = Handler::start(&[
        ("NX_CACHE_BODY_RATE_WINDOW", "2s"),
        ("NX_CACHE_MIN_BODY_RATE", "64K"),
    ]);
    let writer = issue_token(&["--org"]);
    let upload = Trickle {
        path: "/v1/cache/8",
        token: Some(&writer),
        declared: 100_000,
        chunk: 10,
        every: Duration::from_millis(100),
    };
    let trickled = trickle_put(&addr_of(&handler), upload, Duration::from_secs(30), None);
    assert!(
        trickled.answer.starts_with("HTTP/1.1 400"),
        "{}",
        trickled.answer
    );
    assert!(
        trickled.answer.contains("slower than"),
        "{}",
        trickled.answer
    );
    assert!(trickled.closed_after.unwrap() < Duration::from_secs(10));
    assert_eq!(handler.entries("org"), 0);
}

#[test]
fn drains_over_the_cap_close_their_connection_and_the_others_go_on() {
    let handler = Handler::start(&[
        ("NX_CACHE_MAX_DRAINS", "1"),
        ("NX_CACHE_BODY_RATE_WINDOW", "2s"),
        ("NX_CACHE_MIN_BODY_RATE", "16K"),
    ]);
    let reader = issue_token(&["--org", "--read-only"]);
    let addr = addr_of(&handler);
    // The first refused upload takes the only drain: about 100 KiB/s for 5 s.
    let (tx, rx) = std::sync::mpsc::channel();
    let first = {
        let (addr, reader) = (addr.clone(), reader.clone());
        std::thread::spawn(move || {
            let upload = Trickle {
                path: "/v1/cache/1",
                token: Some(&reader),
                declared: 500 * 1024,
                chunk: 10 * 1024,
                every: Duration::from_millis(100),
            };
            trickle_put(&addr, upload, Duration::from_secs(30), Some(tx))
        })
    };
    let status = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.contains("403"), "{status}");
    // The second finds no drain free: answered, then its connection is closed.
    let upload = Trickle {
        path: "/v1/cache/2",
        token: Some(&reader),
        declared: 250 * 1024,
        chunk: 5 * 1024,
        every: Duration::from_millis(100),
    };
    let second = trickle_put(&addr, upload, Duration::from_secs(30), None);
    assert!(
        second.answer.starts_with("HTTP/1.1 403"),
        "{}",
        second.answer
    );
    assert!(
        second
            .answer
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        second.answer
    );
    assert!(second.closed_after.unwrap() < Duration::from_secs(8));
    assert!(second.sent < 250 * 1024);
    // The first was drained to its end without being cut.
    let first = first.join().unwrap();
    assert_eq!(first.sent, 500 * 1024, "{}", first.answer);
}

/// Stores a 40 MiB entry and returns its path.
fn store_big_entry(handler: &Handler, hash: &str) -> (String, usize) {
    let writer = issue_token(&["--org"]);
    let len = 40 * 1024 * 1024;
    let mut stream = connect(handler);
    let head = format!(
        "PUT /v1/cache/{hash} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {writer}\r\ncontent-length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![5u8; len]).unwrap();
    let answer = read_some(&mut stream).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (format!("/v1/cache/{hash}"), len)
}

/// Sends a GET and reads only the response head (the first few KiB), then nothing more.
fn stalled_get(handler: &Handler, path: &str, token: &str) -> (TcpStream, String) {
    let mut stream = connect(handler);
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_some(&mut stream).unwrap();
    (stream, head)
}

#[test]
fn a_client_that_stops_reading_its_download_is_cut_off() {
    let handler = Handler::start(&[("NX_CACHE_SEND_TIMEOUT", "2s")]);
    let (path, len) = store_big_entry(&handler, "40");
    let reader = issue_token(&["--org", "--read-only"]);
    let (mut stream, head) = stalled_get(&handler, &path, &reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    handler
        .wait_for_log(Duration::from_secs(30), |l| {
            l.contains("read nothing of its answer")
        })
        .expect("the stalled download is cut off");
    // What was in flight can still be read, then the connection ends short of the entry.
    let mut received = head.len();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(
        received < len,
        "{received} of {len} bytes: the download was not cut"
    );
}

#[test]
fn downloads_over_the_cap_are_misses_and_others_are_still_served() {
    let handler = Handler::start(&[
        ("NX_CACHE_MAX_DOWNLOADS", "2"),
        ("NX_CACHE_SEND_TIMEOUT", "60s"),
    ]);
    let (path, _) = store_big_entry(&handler, "41");
    let reader = issue_token(&["--org", "--read-only"]);
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let (stream, head) = stalled_get(&handler, &path, &reader);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            stream
        })
        .collect();
    // A third download finds no permit: a miss (the build goes on), at once.
    let (_, head) = stalled_get(&handler, &path, &reader);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        handler
            .logs()
            .iter()
            .any(|l| l.contains("\"outcome\":\"busy\""))
    );
    // Other requests are still answered.
    assert_eq!(
        health_within(&addr_of(&handler), Duration::from_secs(10)).as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    // When the stalled clients go away, their permits come back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, head) = stalled_get(&handler, &path, &reader);
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "permits never came back: {head}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

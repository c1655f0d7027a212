//! Limits and timeouts: a slow or silent client cannot hold a connection forever, and the
//! server answers over its limits with clear errors while it keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{raw_get_status, read_response, trickle, trickle_until_closed, Server};

fn addr(server: &Server) -> String {
    server.base.strip_prefix("http://").unwrap().to_owned()
}

#[test]
fn a_silent_client_is_disconnected_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_CONNECTION_IDLE_TIMEOUT_MS", "1000")]);
    let mut silent = TcpStream::connect(addr(&server)).unwrap();
    silent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap(); // never finished
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    // Meanwhile everyone else is served.
    assert_eq!(raw_get_status(&server.base, "/healthz"), Some(200));
    let mut buf = [0u8; 64];
    // Closed is end of file, or a reset; the read timeout (WouldBlock or TimedOut) means the
    // server kept the connection open.
    let n = match silent.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!(
            "the stalled connection was not closed within {:?}: {e}",
            started.elapsed()
        ),
    };
    assert_eq!(n, 0, "the server closed the stalled connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

#[test]
fn headers_that_trickle_in_are_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A byte arrives every 100 ms, so the idle timeout alone would never fire.
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_REQUEST_HEADER_TIMEOUT_MS", "1000"),
            ("MAPQ_CONNECTION_IDLE_TIMEOUT_MS", "2500"),
        ],
    );
    let header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let slow_byte = |i: usize| header.get(i).copied().unwrap_or(b'a');
    // A first request trickled from the connection's start: cut at the header timeout.
    let started = Instant::now();
    let first = TcpStream::connect(addr(&server)).unwrap();
    let first = std::thread::spawn(move || trickle(first, started, slow_byte));
    // A second request trickled after a complete first one on the same connection: cut at
    // the keep-alive limit (the idle timeout) counted from the first response.
    let mut second = TcpStream::connect(addr(&server)).unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 12];
    second.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let answered = Instant::now();
    let second = std::thread::spawn(move || trickle(second, answered, slow_byte));
    // Meanwhile everyone else is served.
    assert_eq!(raw_get_status(&server.base, "/healthz"), Some(200));
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    assert!(
        first >= Duration::from_millis(900) && first < Duration::from_secs(8),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_millis(1500) && second < Duration::from_secs(8),
        "{second:?}"
    );
}

#[test]
fn a_kept_alive_connection_outlives_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_REQUEST_HEADER_TIMEOUT_MS", "1000"),
            ("MAPQ_CONNECTION_IDLE_TIMEOUT_MS", "5000"),
        ],
    );
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut s), 200);
    // Idle past the header timeout (1 s), within the idle timeout (5 s).
    std::thread::sleep(Duration::from_millis(2000));
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut s), 200, "the idle connection was kept");
}

#[test]
fn connections_beyond_the_limit_get_503_and_the_slot_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_CONNECTIONS", "2")]);
    // Two connections that hold the two slots, each proven by an answered request (kept
    // alive): the start-up readiness probe's connection may hold a slot for a moment after
    // its answer, so a connection that got a 503 meanwhile tries again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = || loop {
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut status = [0u8; 12];
        let answered = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .and_then(|()| s.read_exact(&mut status));
        if answered.is_ok() && &status[9..12] == b"200" {
            return s;
        }
        // Refused (a 503, and the connection closed): the slot was not free yet.
        assert!(Instant::now() < deadline, "the slots never came free");
        std::thread::sleep(Duration::from_millis(10));
    };
    let a = holder();
    let b = holder();
    let mut c = TcpStream::connect(addr(&server)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer}"
    );
    drop((a, b));
    // Once the idle connections go, requests are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_get_status(&server.base, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "the slots never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_body_that_trickles_in_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    // A body byte arrives every 100 ms, so a timeout per read (or the idle timeout) would
    // never fire: only a deadline over the whole body does.
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_REQUEST_BODY_TIMEOUT_MS", "500"),
            ("MAPQ_CONNECTION_IDLE_TIMEOUT_MS", "5000"),
        ],
    );
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(
        b"POST /v1/topics/slow/records HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let t = trickle_until_closed(s, started, |_| b'a');
    let text = String::from_utf8_lossy(&t.answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let answered = t.answered.unwrap();
    assert!(
        answered >= Duration::from_millis(450) && answered < Duration::from_secs(8),
        "answered after {answered:?}"
    );
    assert!(
        !dir.path().join("slow").exists(),
        "nothing was created for the refused request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_beyond_max_topics_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_TOPICS", "2")]);
    let http = reqwest::Client::new();
    for (name, want) in [("a", 201), ("b", 201), ("c", 429)] {
        let r = http
            .post(format!("{}/v1/topics", server.base))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{name}");
    }
    // Auto-creation hits the same limit; existing topics still take records.
    let r = http
        .post(format!("{}/v1/topics/d/records", server.base))
        .json(&serde_json::json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let r = http
        .post(format!("{}/v1/topics/a/records", server.base))
        .json(&serde_json::json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

//! What a new user trips over on a first try: start-up messages, environment variables
//! meant for the CLI, names instead of addresses, error messages. Real processes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::server::{wait_with_deadline, Server};

fn mapq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapq"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MAPQ_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `mapq ARGS` to its end (at most 20 s): (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_with_deadline(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_refuses_before_it_says_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start(dir.path(), &[]);
    let (code, out, err) = run(mapq()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path()));
    assert_ne!(code, 0);
    assert!(err.contains("is in use by another mapq server"), "{err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn the_clients_variables_do_not_stop_the_server_and_typos_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_TOKEN", "a-client-token"),
            ("MAPQ_CACERT", "/nonexistent/ca.pem"),
            ("MAPQ_SERVER", "http://127.0.0.1:1"),
            ("MAPQ_RETENTON_MS", "1000"),
        ],
    );
    assert!(
        server.log_contains(
            "environment variable MAPQ_RETENTON_MS ignored: no setting `retenton_ms`; did you mean MAPQ_RETENTION_MS?"
        ),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(!log.contains("MAPQ_TOKEN"), "{log}");
    // The settings in effect, as key = value, not a Rust structure.
    assert!(log.contains("effective configuration: "), "{log}");
    assert!(log.contains("retention_ms = 604800000"), "{log}");
    assert!(!log.contains("Config {"), "{log}");
}

#[test]
fn listen_takes_a_host_name_and_the_cli_a_server_without_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = mapq()
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("mapq listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let bare = base.strip_prefix("http://").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, out, err) = loop {
        let r = run(mapq().args(["topics", "list", "--server", bare]));
        if r.0 == 0 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TOPIC"), "{out}");
}

#[test]
fn errors_name_what_the_user_wrote_not_rust_types() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(&config, "# mine\nretention_ms = null\n").unwrap();
    let (code, _, err) = run(mapq().args(["serve", "--config"]).arg(&config));
    assert_eq!(code, 2);
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("TOML has no null"), "{err}");

    let server = Server::start(&dir.path().join("data"), &[]);
    let http = reqwest::blocking_free_post(&server, "application/x-ndjson", "\"just a string\"\n");
    assert!(http.contains("line 1"), "{http}");
    assert!(http.contains("a record object"), "{http}");
    assert!(!http.contains("RecordIn"), "{http}");
    let http = reqwest::blocking_free_post(&server, "application/json", "\"x\"");
    assert!(!http.contains("ProduceRequest"), "{http}");
    assert!(http.contains("\\\"records\\\""), "{http}");
}

/// A tiny HTTP/1.1 client for one POST, so these tests need no async runtime.
mod reqwest {
    use std::io::{Read, Write};

    pub fn blocking_free_post(server: &super::Server, content_type: &str, body: &str) -> String {
        let addr = server.base.strip_prefix("http://").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /v1/topics/t/records HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }
}

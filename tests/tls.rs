//! TLS with a certificate generated here: HTTPS round trips over HTTP/1.1 and HTTP/2 (by
//! ALPN), the CLI trusting the certificate with `--cacert`, plain HTTP refused on the TLS
//! port, a handshake that trickles in cut at the header timeout; and HTTP/2 by prior
//! knowledge on a cleartext server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{output_with_deadline, trickle, Server};
use common::tls_setup;
use serde_json::{json, Value};

async fn wait_ready(http: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(server.url("/readyz")).send().await {
            if resp.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces three records and reads them back, checking the protocol version of each answer.
async fn round_trip(http: &reqwest::Client, server: &Server, version: reqwest::Version) {
    let resp = http
        .post(server.url("/v1/topics/secure/records"))
        .json(&json!({"records": [{"value": "a"}, {"value": "b"}, {"value": "c"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
    let offsets: Value = resp.json().await.unwrap();
    let last = offsets["offsets"][2]["offset"].as_u64().unwrap();
    let resp = http
        .get(server.url(&format!(
            "/v1/topics/secure/partitions/0/records?offset={}",
            last - 2
        )))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
    let body: Value = resp.json().await.unwrap();
    let values: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_round_trips_over_http1_and_http2() {
    let tls = tls_setup("");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(data.path(), &tls.config);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    let h2 = reqwest::Client::builder()
        .add_root_certificate(tls.ca.clone())
        .build()
        .unwrap();
    wait_ready(&h2, &server).await;
    round_trip(&h2, &server, reqwest::Version::HTTP_2).await;

    let h1 = reqwest::Client::builder()
        .add_root_certificate(tls.ca.clone())
        .http1_only()
        .build()
        .unwrap();
    round_trip(&h1, &server, reqwest::Version::HTTP_11).await;

    // A client that does not trust the certificate does not get through.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let err = untrusting
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let addr = server.base.strip_prefix("https://").unwrap();
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // The server must close the connection (end of file, or a reset after an alert); the
    // read timeout (WouldBlock or TimedOut) means it hung, and fails here.
    match plain.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("plain HTTP on the TLS port: the server neither answered nor closed: {e}"),
    }
    // Nothing, or a TLS alert record (content type 21): never an HTTP answer.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // The CLI says why it cannot connect without --cacert, and reaches it with it.
    let out = output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["topics", "list", "--server", &server.base])
            .env_remove("MAPQ_CACERT"),
        b"",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("certificate"), "{stderr}");
    // Plain http:// to the TLS port: the CLI says the server speaks TLS.
    let plain_url = server.base.replacen("https://", "http://", 1);
    let out = output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq")).args(["topics", "list", "--server", &plain_url]),
        b"",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("use an https:// --server"), "{stderr}");
    let out = output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args([
                "topics",
                "list",
                "--json",
                "--server",
                &server.base,
                "--cacert",
            ])
            .arg(&tls.ca_pem),
        b"",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["topics"][0]["name"], "secure", "{listed}");
}

#[test]
fn a_tls_handshake_that_trickles_in_is_cut_at_the_header_timeout() {
    let tls = tls_setup("request_header_timeout_ms = 1000\n");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(data.path(), &tls.config);
    let addr = server.base.strip_prefix("https://").unwrap();
    let started = Instant::now();
    let closed_after = trickle(TcpStream::connect(addr).unwrap(), started, |i| {
        // A TLS record header announcing a large ClientHello, then its body a byte at a time.
        [0x16, 0x03, 0x01, 0x40, 0x00, 0x01][..]
            .get(i)
            .copied()
            .unwrap_or(0)
    });
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(8),
        "{closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_by_prior_knowledge() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    round_trip(&h2c, &server, reqwest::Version::HTTP_2).await;
}

#[test]
fn over_tls_a_connection_beyond_the_limit_is_closed_without_plaintext() {
    // A long header timeout: an admitted connection would stay open, silent.
    let tls = tls_setup("max_connections = 1\nrequest_header_timeout_ms = 30000\n");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(data.path(), &tls.config);
    let addr = server.base.strip_prefix("https://").unwrap();
    // Connections are accepted in order: the first takes the only slot.
    let _held = TcpStream::connect(addr).unwrap();
    let mut refused = TcpStream::connect(addr).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    refused
        .read_to_end(&mut answer)
        .expect("closed by the server, not timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_against_tls_with_tokens() {
    // A server with TLS and tokens: `mapq bench` reaches it with --cacert and --token, as
    // every client command does.
    let tokens = common::tokens_toml(&[(
        "bench",
        "s3cret-bench",
        "*",
        &["admin", "produce", "consume"],
    )]);
    let tls = tls_setup(&tokens);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(data.path(), &tls.config);
    let http = reqwest::Client::builder()
        .add_root_certificate(tls.ca.clone())
        .build()
        .unwrap();
    wait_ready(&http, &server).await;
    let bench = |token: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapq"));
        cmd.args([
            "bench",
            "--server",
            &server.base,
            "--token",
            token,
            "--records",
            "400",
            "--batch",
            "50",
            "--connections",
            "2",
            "--cacert",
        ])
        .arg(&tls.ca_pem);
        output_with_deadline(&mut cmd, b"", Duration::from_secs(60))
    };
    let out = bench("s3cret-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for phase in ["produce_frames", "consume_binary", "consume_json"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("RESULT {phase}")) && l.contains("records_per_s=")),
            "no {phase} result: {stdout}"
        );
    }
    // A wrong token: refused, with the server's reason.
    let out = bench("wrong");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

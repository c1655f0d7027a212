//! What a new user trips over on a first try: start-up messages, environment variables
//! meant for the CLI, names instead of addresses, error messages. Real processes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::server::{serve_command, wait_with_deadline, Server};

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
    let (code, out, err) = run(serve_command("127.0.0.1:0", "127.0.0.1:0")
        .arg("--data-dir")
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
    let mut child = serve_command("localhost:0", "localhost:0")
        .arg("--data-dir")
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
    let http = post(
        &server.base,
        "/v1/topics/t/records",
        "application/x-ndjson",
        "\"just a string\"\n",
    );
    assert!(http.contains("line 1"), "{http}");
    assert!(http.contains("a record object"), "{http}");
    assert!(!http.contains("RecordIn"), "{http}");
    let http = post(
        &server.base,
        "/v1/topics/t/records",
        "application/json",
        "\"x\"",
    );
    assert!(!http.contains("ProduceRequest"), "{http}");
    assert!(http.contains("\\\"records\\\""), "{http}");
}

/// One HTTP/1.1 POST without a client library, so these tests need no async runtime:
/// the whole answer, head and body.
fn post(base: &str, path: &str, content_type: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// Runs `mapq ARGS --server BASE` with `stdin`: (exit code, stdout, stderr).
fn client(base: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = mapq()
        .args(args)
        .args(["--server", base])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let code = wait_with_deadline(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort_by_key(|l| l.parse::<u64>().unwrap_or(u64::MAX));
    lines
}

#[test]
fn consume_and_tail_read_every_partition_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.base.clone();
    let (code, _, err) = client(&base, &["topics", "create", "p4", "--partitions", "4"], "");
    assert_eq!(code, 0, "{err}");
    let input: String = (1..=100).map(|i| format!("{i}\n")).collect();
    let (code, _, err) = client(&base, &["produce", "p4"], &input);
    assert_eq!(code, 0, "{err}");
    let want: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let (code, out, err) = client(&base, &["consume", "p4"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sorted_lines(&out),
        want,
        "mapq consume reads all four partitions"
    );
    let (code, out, err) = client(&base, &["consume", "p4", "--count", "30"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 30);
    let (code, out, _) = client(&base, &["consume", "p4", "--partition", "2"], "");
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 25, "{out}");
    // A group commits each partition's position: the next run has nothing left.
    let group = ["consume", "p4", "--group", "all", "--commit"];
    let (_, out, _) = client(&base, &group, "");
    assert_eq!(out.lines().count(), 100);
    let (_, out, _) = client(&base, &group, "");
    assert_eq!(out, "");
    // What cannot apply to several partitions is refused, loudly.
    let (code, _, err) = client(&base, &["consume", "p4", "--from", "3"], "");
    assert_eq!(code, 1);
    assert!(err.contains("--from OFFSET needs --partition"), "{err}");
    let (code, _, err) = client(&base, &["consume", "p4", "--format", "raw"], "");
    assert_eq!(code, 1);
    assert!(err.contains("--format raw needs --partition"), "{err}");

    let tail = |args: &[&str]| {
        run(mapq()
            .args(["tail", "--data-dir"])
            .arg(dir.path())
            .args(args))
    };
    let (code, out, err) = tail(&["p4", "--format", "value"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sorted_lines(&out),
        want,
        "mapq tail reads all four partitions"
    );
    let (code, out, err) = tail(&["p4", "--format", "value", "--follow", "--count", "100"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted_lines(&out), want, "following all four partitions");
    let (code, out, _) = tail(&["p4", "--partition", "3", "--format", "value"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 25);
    // JSON lines say which partition each record came from.
    let per_partition = |out: &str| {
        let mut counts = [0; 4];
        for line in out.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            counts[r["partition"].as_u64().unwrap() as usize] += 1;
        }
        counts
    };
    let (_, out, _) = tail(&["p4"]);
    assert_eq!(per_partition(&out), [25; 4], "{out}");
    let (_, out, _) = client(&base, &["consume", "p4", "--format", "json"], "");
    assert_eq!(per_partition(&out), [25; 4], "{out}");
    let (code, _, err) = tail(&["p4", "--format", "raw"]);
    assert_eq!(code, 1);
    assert!(err.contains("--format raw needs --partition"), "{err}");
}

#[test]
fn consume_prints_values_as_a_shell_user_expects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.base.clone();
    let answer = post(
        &base,
        "/v1/topics/v/records",
        "application/json",
        r#"{"records": [{"value": null}, {"value": {"a": 1}}, {"value": "text"},
            {"value_b64": "aGk="}, {"key": "k", "value_b64": "/w=="}]}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (code, out, err) = client(&base, &["consume", "v"], "");
    assert_eq!(code, 0, "{err}");
    let mut expected = b"null\n{\"a\":1}\ntext\nhi\n".to_vec();
    expected.extend([0xff, b'\n']);
    assert_eq!(
        out.as_bytes(),
        String::from_utf8_lossy(&expected).as_bytes()
    );
    let (_, out, _) = client(
        &base,
        &["consume", "v", "--format", "json", "--count", "1"],
        "",
    );
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["offset"], 0);
    assert!(record["value"].is_null());
    let raw = mapq()
        .args(["consume", "v", "--format", "raw", "--server", &base])
        .output()
        .unwrap();
    assert!(raw.status.success(), "{raw:?}");
    let mut at = 0;
    let mut offsets = Vec::new();
    while at < raw.stdout.len() {
        let f = mapq::log::format::decode_frame(&raw.stdout[at..]).expect("raw output is frames");
        offsets.push(f.offset);
        at += f.padded_len;
    }
    assert_eq!(offsets, [0, 1, 2, 3, 4]);

    // produce --key and --key-separator; keys pick partitions by hash.
    let (code, _, err) = client(&base, &["topics", "create", "k", "--partitions", "4"], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = client(&base, &["produce", "k", "--key", "user-1"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = client(
        &base,
        &["produce", "k", "--key-separator", ":"],
        "user-1:c\nuser-1:d\n",
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = client(&base, &["consume", "k", "--format", "json"], "");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{out}");
    assert!(records.iter().all(|r| r["key"] == "user-1"), "{out}");
    let values: Vec<&str> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        ["a", "b", "c", "d"],
        "one key, one partition, in order"
    );
}

#[test]
fn token_recipes_give_what_the_configuration_takes() {
    let (code, out, _) = run(mapq().args(["token", "new"]));
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (secret, hash) = (lines[0], lines[1]);
    assert_eq!(secret.len(), 64);
    assert_ne!(secret, hash);
    let mut child = mapq()
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{secret}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash);
    // The hash, and sha256sum's `HASH  -`, both work in the configuration.
    for pasted in [hash.to_owned(), format!("{hash}  -")] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mapq.toml");
        std::fs::write(
            &config,
            format!(
                "[[tokens]]\nname = \"app\"\nsha256 = \"{pasted}\"\ngrants = [{{ topics = \"*\", allow = [\"consume\"] }}]\n"
            ),
        )
        .unwrap();
        let server = Server::start_with_config(&dir.path().join("data"), &config);
        let (code, _, err) = client(&server.base, &["topics", "list"], "");
        assert_eq!(code, 1, "refused without the token");
        assert!(err.contains("unauthorized"), "{err}");
        let mut cmd = mapq();
        cmd.args(["topics", "list", "--server", &server.base])
            .env("MAPQ_TOKEN", secret);
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("TOPIC"), "{out}");
    }
}

#[test]
fn bench_cleans_up_its_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (code, _, err) = run(mapq().args([
        "bench",
        "--server",
        &server.base,
        "--records",
        "2000",
        "--connections",
        "2",
    ]));
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = client(&server.base, &["topics", "list"], "");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "TOPIC  PARTITIONS", "bench left a topic behind");
}

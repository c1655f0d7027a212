//! The admin and client commands against a real server, as a user runs them.

mod common;

use std::process::Command;
use std::time::Duration;

use common::server::{output_with_deadline, Server};
use serde_json::Value;

fn mapq(server: &Server, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let out = output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(args)
            .args(["--server", &server.base]),
        stdin.unwrap_or("").as_bytes(),
        Duration::from_secs(30),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`mapq`] for a command that must succeed: its exit code is checked (with its stderr in
/// the message); returns its stdout.
fn mapq_ok(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = mapq(server, args, stdin);
    assert_eq!(code, 0, "mapq {args:?} failed: {err}");
    out
}

#[test]
fn topics_produce_consume_and_groups_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (code, out, err) = mapq(
        &server,
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "2",
            "--config",
            "retention_ms=null",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("topic orders  partitions 2") && out.contains("retention_ms=null"),
        "{out}"
    );
    let out = mapq_ok(&server, &["topics", "list", "--json"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["topics"][0]["name"], "orders");
    let out = mapq_ok(&server, &["topics", "list"], None);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["TOPIC   PARTITIONS", "orders  2"]
    );

    // 1200 lines in batches of 500: three requests.
    let input: String = (0..1200).map(|i| format!("line {i}\n")).collect();
    let (code, _, err) = mapq(
        &server,
        &["produce", "orders", "--partition", "1"],
        Some(&input),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1200 records sent"), "{err}");
    let (code, out, err) = mapq(&server, &["consume", "orders", "--partition", "1"], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1200);
    assert_eq!(lines[1199], "line 1199");

    // A group reads 10, commits, and the next run starts after them.
    let group = [
        "consume",
        "orders",
        "--partition",
        "1",
        "--group",
        "g",
        "--commit",
        "--count",
        "10",
    ];
    let out = mapq_ok(&server, &group, None);
    assert_eq!(out.lines().last(), Some("line 9"));
    let out = mapq_ok(&server, &group, None);
    assert_eq!(out.lines().next(), Some("line 10"));
    let out = mapq_ok(
        &server,
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--from",
            "5",
            "--count",
            "1",
            "--json",
        ],
        None,
    );
    let record: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (record["offset"].as_u64(), record["value"].as_str()),
        (Some(5), Some("line 5"))
    );

    let out = mapq_ok(&server, &["topics", "describe", "orders", "--json"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partition_stats"][1]["end_offset"], 1200);
    let (code, _, err) = mapq(&server, &["topics", "describe", "nope"], None);
    assert_eq!(code, 1);
    assert!(err.contains("topic_not_found"), "{err}");
    let (code, out, err) = mapq(&server, &["topics", "delete", "orders"], None);
    assert_eq!((code, out.trim()), (0, "deleted topic orders"), "{err}");
}

#[test]
fn tailing_a_topic_that_does_not_exist_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["tail", "nosuch", "--data-dir"])
            .arg(dir.path()),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no topic \"nosuch\""), "{err}");
}

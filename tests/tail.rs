//! `mapq tail` as a separate process reading the files of a running server: rolls,
//! retention, waking at `latest`, a kill -9 of the writer, read-only access, topic deletion.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lines::LineProcess;
use common::server::{
    create_topic, delete_topic, get_json, get_text, post_json, signal, wait_for_blocked_tailer,
    Server,
};
use mapq::log::format::{get_u32, segment_header as sh};
use reqwest::Client;
use serde_json::{json, Value};

/// A running `mapq tail` whose stdout lines arrive on a channel.
type Tail = LineProcess;

/// Starts `mapq tail`; as user nobody (from a copy of the binary that user can reach) if
/// `as_nobody`.
fn start_tail(data_dir: &Path, args: &[&str], as_nobody: bool) -> Tail {
    let mut cmd = if as_nobody {
        common::nobody::mapq()
    } else {
        Command::new(env!("CARGO_BIN_EXE_mapq"))
    };
    cmd.arg("tail").arg("--data-dir").arg(data_dir).args(args);
    LineProcess::spawn(&mut cmd)
}

async fn produce(http: &Client, base: &str, topic: &str, from: u64, n: u64) {
    let records: Vec<Value> = (from..from + n)
        .map(|i| json!({"value": {"seq": i, "pad": "x".repeat(500)}, "partition": 0}))
        .collect();
    let r = post_json(
        http,
        format!("{base}/v1/topics/{topic}/records"),
        &json!({ "records": records }),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

async fn create(http: &Client, base: &str, topic: &str) {
    create_topic(http, base, json!({"name": topic})).await;
}

fn check_sequence(records: &[Value], first: u64) {
    for (i, r) in records.iter().enumerate() {
        let want = first + i as u64;
        assert_eq!(r["offset"], want, "no gap, no duplicate");
        assert_eq!(r["value"]["seq"], want, "the record's own content");
    }
}

/// The number of segments of partition 0 of `topic`, as the server describes it.
async fn segments(http: &Client, base: &str, topic: &str) -> u64 {
    let d: Value = get_json(http, format!("{base}/v1/topics/{topic}")).await;
    d["partition_stats"][0]["segments"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_in_order_across_rolls_and_a_retention_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_SEGMENT_BYTES", "65536"),
            ("MAPQ_RETENTION_MS", "1000"),
            ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
        ],
    );
    let http = Client::new();
    let base = &server.base;
    create(&http, base, "roll").await;
    let total = 1200u64;
    let mut tail = start_tail(dir.path(), &["roll", "--follow", "--count", "1200"], false);
    // The tailer reads into the first segment, then stops (SIGSTOP) with part of it unread.
    produce(&http, base, "roll", 0, 40).await;
    check_sequence(&tail.records(40, Duration::from_secs(10)), 0);
    signal(&tail.child, libc::SIGSTOP);
    // Meanwhile the first segment fills, rolls, and retention deletes it: the stopped tailer
    // still has it mapped, with records it has not read.
    let mut sent = 40;
    while segments(&http, base, "roll").await < 2 {
        produce(&http, base, "roll", sent, 10).await;
        sent += 10;
        assert!(sent < 400, "the first segment never rolled");
    }
    let first = dir.path().join("roll/0/00000000000000000000.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while first.exists() {
        assert!(
            Instant::now() < deadline,
            "retention never deleted the first segment"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&tail.child, libc::SIGCONT);
    check_sequence(
        &tail.records(sent as usize - 40, Duration::from_secs(10)),
        40,
    );
    // Then across more rolls, in step with the tailer: however slow the machine, it never
    // lags behind retention (1 s) by more than a batch.
    while sent < total {
        let n = (total - sent).min(40);
        produce(&http, base, "roll", sent, n).await;
        check_sequence(&tail.records(n as usize, Duration::from_secs(10)), sent);
        sent += n;
    }
    assert_eq!(
        tail.exit_code(Duration::from_secs(10)),
        0,
        "stopped at the count"
    );
    let m = get_text(&http, format!("{base}/metrics")).await;
    let sample = |series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        sample(r#"mapq_segments_rolled_total{partition="0",topic="roll"}"#) >= 5,
        "{m}"
    );
    assert!(
        sample(r#"mapq_segments_deleted_total{partition="0",reason="age",topic="roll"}"#) >= 1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailer_at_latest_on_a_quiet_partition_wakes_on_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create(&http, &server.base, "quiet").await;
    produce(&http, &server.base, "quiet", 0, 3).await;
    let mut tail = start_tail(
        dir.path(),
        &[
            "quiet", "--from", "latest", "--follow", "--count", "1", "--wait", "block",
        ],
        false,
    );
    wait_for_blocked_tailer(&dir.path().join("quiet/0/00000000000000000000.log"));
    produce(&http, &server.base, "quiet", 3, 1).await;
    let got = tail.records(1, Duration::from_secs(5));
    check_sequence(&got, 3);
    assert_eq!(tail.exit_code(Duration::from_secs(5)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tailer_survives_a_kill_9_of_the_writer_and_continues_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("MAPQ_SEGMENT_BYTES", "65536")];
    let server = Server::start(dir.path(), &env);
    let http = Client::new();
    create(&http, &server.base, "k").await;
    let mut tail = start_tail(dir.path(), &["k", "--follow", "--count", "600"], false);
    produce(&http, &server.base, "k", 0, 300).await;
    let first = tail.records(300, Duration::from_secs(10));
    check_sequence(&first, 0);
    server.kill();
    let server = Server::start(dir.path(), &env);
    for from in (300..600).step_by(50) {
        produce(&http, &server.base, "k", from, 50).await;
    }
    let rest = tail.records(300, Duration::from_secs(10));
    check_sequence(&rest, 300);
    // More records exist than the count: the tailer stops at 600 all the same.
    produce(&http, &server.base, "k", 600, 50).await;
    assert_eq!(tail.exit_code(Duration::from_secs(10)), 0);
    tail.expect_no_more_lines("nothing after the count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tailer_needs_no_write_permission() {
    // As root the tailer runs as nobody, who must reach the data directory.
    let dir = common::nobody::shared_dir();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create(&http, &server.base, "ro").await;
    produce(&http, &server.base, "ro", 0, 20).await;
    let as_root = euid() == 0;
    use std::os::unix::fs::PermissionsExt;
    // Readable by everyone, writable by nobody else: the tailer gets read access only.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if !as_root {
        for f in std::fs::read_dir(dir.path().join("ro/0")).unwrap() {
            let p = f.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
    }
    // Root ignores permissions: run the tailer as user nobody instead.
    let mut tail = start_tail(dir.path(), &["ro"], as_root);
    check_sequence(&tail.records(20, Duration::from_secs(5)), 0);
    assert_eq!(
        tail.exit_code(Duration::from_secs(5)),
        0,
        "{}",
        tail.stderr.lock().unwrap()
    );
    // Following works too (it polls, since it cannot register as a waiter). The server
    // keeps its writable mappings, so it still appends to the read-only files.
    let tail = start_tail(dir.path(), &["ro", "--from", "20", "--follow"], as_root);
    produce(&http, &server.base, "ro", 20, 5).await;
    check_sequence(&tail.records(5, Duration::from_secs(5)), 20);
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_topic_stops_the_tailer_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create(&http, &server.base, "gone").await;
    produce(&http, &server.base, "gone", 0, 10).await;
    let mut tail = start_tail(dir.path(), &["gone", "--follow"], false);
    check_sequence(&tail.records(10, Duration::from_secs(5)), 0);
    delete_topic(&http, &server.base, "gone").await;
    // The topic comes back with other records: the tailer must not read them as its own.
    create(&http, &server.base, "gone").await;
    produce(&http, &server.base, "gone", 1000, 10).await;
    assert_eq!(tail.exit_code(Duration::from_secs(10)), 1);
    assert!(
        tail.stderr.lock().unwrap().contains("topic was deleted"),
        "{}",
        tail.stderr.lock().unwrap()
    );
    tail.expect_no_more_lines("no record of the new topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_deleted_by_retention_is_reported_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_SEGMENT_BYTES", "65536"),
            ("MAPQ_RETENTION_MS", "200"),
            ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "50"),
        ],
    );
    let http = Client::new();
    create(&http, &server.base, "old").await;
    for from in (0..400).step_by(40) {
        produce(&http, &server.base, "old", from, 40).await;
    }
    // Wait until retention has deleted the first segment, then stop the server: the tailers
    // read the files directly, and retention must not move the start between them.
    let first = dir.path().join("old/0/00000000000000000000.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.exists() {
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let mut tail = start_tail(dir.path(), &["old", "--from", "0"], false);
    assert_eq!(tail.exit_code(Duration::from_secs(5)), 1);
    let err = tail.stderr.lock().unwrap().clone();
    assert!(
        err.contains("was deleted by retention") && err.contains("--skip-deleted"),
        "{err}"
    );
    let tail = start_tail(
        dir.path(),
        &["old", "--from", "earliest", "--count", "1"],
        false,
    );
    let earliest = tail.records(1, Duration::from_secs(5))[0]["offset"]
        .as_u64()
        .unwrap();
    assert!(earliest > 0);
    let tail = start_tail(
        dir.path(),
        &["old", "--from", "0", "--skip-deleted", "--count", "1"],
        false,
    );
    let jumped = tail.records(1, Duration::from_secs(5))[0]["offset"]
        .as_u64()
        .unwrap();
    assert_eq!(
        jumped, earliest,
        "--skip-deleted jumps to the earliest record left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_group_can_tail_and_nobody_else_can_write() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Others may cross this directory, nothing more (nobody must reach the data in it).
    let dir = common::nobody::shared_dir();
    let as_root = euid() == 0;
    let group = if as_root {
        common::nobody::ids().1
    } else {
        egid()
    };
    let data = dir.path().join("data");
    let gid = group.to_string();
    let server = Server::start(&data, &[("MAPQ_DATA_GROUP", gid.as_str())]);
    let http = Client::new();
    create(&http, &server.base, "grp").await;
    produce(&http, &server.base, "grp", 0, 10).await;
    for path in [
        data.clone(),
        data.join("grp"),
        data.join("grp/0"),
        data.join("grp/topic.json"),
        data.join("grp/0/00000000000000000000.log"),
        data.join("grp/0/00000000000000000000.index"),
    ] {
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            m.gid(),
            group,
            "{} belongs to the data group",
            path.display()
        );
        let mode = m.permissions().mode();
        assert_eq!(
            mode & 0o007,
            0,
            "{}: no access for others ({mode:o})",
            path.display()
        );
        assert_eq!(
            mode & 0o020,
            0,
            "{}: the group cannot write ({mode:o})",
            path.display()
        );
        assert_ne!(
            mode & 0o040,
            0,
            "{}: the group can read ({mode:o})",
            path.display()
        );
    }
    // A member of the group tails it with read access only: as root, nobody (whose group
    // it is). Otherwise the test's own user, whose group it is too (it also owns the files,
    // so that half shows less).
    let mut tail = start_tail(&data, &["grp"], as_root);
    check_sequence(&tail.records(10, Duration::from_secs(5)), 0);
    assert_eq!(
        tail.exit_code(Duration::from_secs(5)),
        0,
        "{}",
        tail.stderr.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_the_tailer_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create(&http, &server.base, "piped").await;
    // About 1 MB of JSON lines: far more than the pipe and the tailer's buffer hold.
    for from in (0..2000).step_by(500) {
        produce(&http, &server.base, "piped", from, 500).await;
    }
    for format in ["json", "value", "raw"] {
        // `mapq tail ... | head -c 100`: the reader closes the pipe early.
        let mut child = Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["tail", "--data-dir"])
            .arg(dir.path())
            .args(["piped", "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        // A tailer that ignores the closed pipe would run forever: fail after 10 s instead.
        let code = common::server::wait_with_deadline(&mut child, Duration::from_secs(10));
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(code, 0, "{format}: {stderr}");
        assert!(stderr.is_empty(), "{format}: {stderr}");
    }
}

/// The segment header's count of tailers registered in a futex wait.
fn waiters(segment: &Path) -> u32 {
    use std::io::Read;
    let mut header = vec![0u8; sh::SIZE];
    std::fs::File::open(segment)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    get_u32(&header, sh::WAITERS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_by_a_signal_leaves_no_waiter_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create(&http, &server.base, "sig").await;
    produce(&http, &server.base, "sig", 0, 5).await;
    let segment = dir.path().join("sig/0/00000000000000000000.log");
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let mut tail = start_tail(dir.path(), &["sig", "--follow"], false);
        check_sequence(&tail.records(5, Duration::from_secs(5)), 0);
        wait_for_blocked_tailer(&segment);
        signal(&tail.child, sig);
        assert_eq!(tail.exit_code(Duration::from_secs(5)), code, "signal {sig}");
        // Ctrl-C (or a service manager's stop) must not leave a phantom waiter: the writer
        // would make a wake-up call on every publish for good, and the metric would lie.
        assert_eq!(waiters(&segment), 0, "after signal {sig}");
    }
    let metrics = get_text(&http, format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains(r#"mapq_tail_waiters{partition="0",topic="sig"} 0"#),
        "{metrics}"
    );
}

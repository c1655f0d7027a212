//! What idempotent produce costs (issue 16's goals: keys cost under 5 % of produce
//! throughput; rebuilding 1 million remembered keys at start-up takes under 1 s).
//!
//! 1. Produce throughput with and without an `Idempotency-Key` on every request: `mapq
//!    bench --produce-only` of 1 KiB records in batches of 100 over 4 connections (binary
//!    frames, the default, and JSON), against one server, runs alternating without and with
//!    keys, three rounds; medians and the ratio.
//! 2. The rebuild: 1 million keyed batches are written into a topic's partition with the
//!    engine (the server stopped), then the server starts on it; the time its topic took to
//!    read the keys back is `mapq_idempotency_rebuild_milliseconds`, and
//!    `mapq_idempotency_keys` must say 1,000,000.
//!
//! `cargo bench --bench idempotency` (`MAPQ_BENCH_KEYS` sets the number of keys).

#[path = "common/server.rs"]
mod server;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mapq::log::format::{BatchHead, Record, RequestTag};
use mapq::log::{now_ms, LogConfig, PartitionLog};
use server::Server;

/// Records per second of one `mapq bench --produce-only` run.
fn produce(server: &Server, format: &str, keys: bool, records: u64) -> f64 {
    let records = records.to_string();
    let mut args = vec![
        "--batch",
        "100",
        "--record-bytes",
        "1024",
        "--connections",
        "4",
        "--records",
        &records,
        "--produce-format",
        format,
    ];
    if keys {
        args.push("--idempotency-keys");
    }
    server::produce_figures(server, &args)["records_per_s"]
}

/// A metric's value for topic `topic` from the server's `/metrics`, once the server has
/// opened its topics (it answers `503 not_ready` before), within a minute.
fn metric(base: &str, name: &str, topic: &str) -> f64 {
    let prefix = format!("{name}{{topic=\"{topic}\"}} ");
    for _ in 0..600 {
        let text = Command::new("curl")
            .args(["-s", &format!("{base}/metrics")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
        {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no {prefix} in /metrics within a minute")
}

/// Writes `n` batches of one 100 B record, each with its own idempotency key, into the
/// partition directory `dir` (a topic's partition 0, its server stopped).
fn write_keys(dir: &Path, n: u64) {
    let (log, _) = PartitionLog::open(dir, LogConfig::default()).expect("open the partition");
    let value = [7u8; 100];
    let now = now_ms();
    for i in 0..n {
        let key = format!("order-{i:012}");
        let mut record = Record::value(&value, now);
        record.batch = Some(BatchHead {
            record_count: 1,
            appended_ms: now,
            request: Some(RequestTag {
                key: key.as_bytes(),
                digest: [(i % 251) as u8; 16],
                records: 1,
                positions: None,
            }),
            ..BatchHead::default()
        });
        log.append(&[record]).expect("append");
    }
    log.flush().expect("flush");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = server::env_u64("MAPQ_BENCH_RECORDS", 200_000);
    let keys = server::env_u64("MAPQ_BENCH_KEYS", 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");

    // 1. Throughput with and without keys (MAPQ_BENCH_REBUILD_ONLY=1 skips it).
    let server = Server::start(dir.path(), &[]);
    let formats: &[&str] = if std::env::var_os("MAPQ_BENCH_REBUILD_ONLY").is_some() {
        &[]
    } else {
        &["frames", "json"]
    };
    for &format in formats {
        let (mut plain, mut keyed) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            plain.push(produce(&server, format, false, records));
            keyed.push(produce(&server, format, true, records));
        }
        let (p, k) = (server::median(plain.clone()), server::median(keyed.clone()));
        println!(
            "RESULT produce_{format}_1KiB_batch100_4conns without_keys_records_per_s={p:.0} with_keys_records_per_s={k:.0} ratio={:.3} runs_without={plain:.0?} runs_with={keyed:.0?}",
            k / p
        );
    }

    // 2. The rebuild of `keys` remembered keys.
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST"])
        .arg(format!("{}/v1/topics", server.base))
        .args(["-H", "content-type: application/json"])
        .args(["-d", r#"{"name": "keys", "partitions": 1}"#])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "201",
        "create the topic"
    );
    drop(server);
    let t = Instant::now();
    write_keys(&dir.path().join("keys").join("0"), keys);
    eprintln!("wrote {keys} keyed batches in {:?}", t.elapsed());
    let started = Instant::now();
    let server = Server::start(dir.path(), &[]);
    let ready = started.elapsed();
    let remembered = metric(&server.base, "mapq_idempotency_keys", "keys");
    let rebuild_ms = metric(
        &server.base,
        "mapq_idempotency_rebuild_milliseconds",
        "keys",
    );
    assert_eq!(remembered as u64, keys, "every key is remembered");
    println!(
        "RESULT idempotency_rebuild keys={keys} rebuild_ms={rebuild_ms:.0} server_listening_after_ms={} vs_goal_1000ms={:.2}",
        ready.as_millis(),
        rebuild_ms / 1000.0
    );
}

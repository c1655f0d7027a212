//! A crowd of durable producers beside a consumer: 1,000 connections each producing one
//! 100 B record per request with `durability=fsync` to one partition, while a consume probe
//! (a plain consume request every 10 ms, on a connection and a thread of its own) measures
//! what a reader waits meanwhile.
//!
//! `cargo bench --bench fsync_load` (about a minute). It runs a real `mapq serve` of this
//! build and `mapq bench --produce-only --probe-ms 10` against it, three times: with
//! `max_fsync_in_flight` at 32, at its default (128) and with no bound (1,000,000), and measures the disk's own
//! limit in the same run: one thread doing `write` + `fdatasync` of a 100 B record in a loop.
//! It prints records/s, the producers' latency, the probe's p50/p99 idle and under load, and
//! `RESULT` lines. Set `MAPQ_BENCH_RECORDS` (default 200,000) and `MAPQ_BENCH_DIR` (default:
//! the system temp dir).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "common/server.rs"]
mod server;
use server::Server;
use std::time::{Duration, Instant};

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// `RESULT` figures of one line: name, records/s, p50 and p99 in µs.
struct Figures {
    name: String,
    records_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

fn parse(line: &str) -> Option<Figures> {
    let mut words = line.strip_prefix("RESULT ")?.split_whitespace();
    let name = words.next()?.to_owned();
    let mut f = Figures {
        name,
        records_per_s: 0.0,
        p50_us: 0,
        p99_us: 0,
    };
    for w in words {
        let (k, v) = w.split_once('=')?;
        match k {
            "records_per_s" => f.records_per_s = v.parse().ok()?,
            "p50_us" => f.p50_us = v.parse().ok()?,
            "p99_us" => f.p99_us = v.parse().ok()?,
            _ => {}
        }
    }
    Some(f)
}

/// The load against a fresh server with `max_fsync_in_flight`: produce, probe idle, probe
/// under load.
fn run(max_fsync_in_flight: u64, records: u64) -> Vec<Figures> {
    let dir = tempfile::tempdir_in(bench_dir()).expect("a data directory");
    let bound = max_fsync_in_flight.to_string();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_FSYNC_IN_FLIGHT", &bound)]);
    let out = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["bench", "--server", &server.base])
        .args([
            "--connections",
            "1000",
            "--batch",
            "1",
            "--record-bytes",
            "100",
        ])
        .args([
            "--durability",
            "fsync",
            "--partitions",
            "1",
            "--produce-only",
        ])
        .args(["--probe-ms", "10", "--records", &records.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run mapq bench");
    assert!(
        out.status.success(),
        "mapq bench failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse)
        .collect()
}

/// write + fdatasync of one 100 B record at a time: the disk's rate of durable writes.
fn fdatasync_rate() -> f64 {
    let path = bench_dir().join(format!("mapq-bench-fdatasync-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("create the baseline file");
    let record = [0x5au8; 100];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("fsync_load: benchmark");
        return;
    }
    let records: u64 = std::env::var("MAPQ_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let disk = fdatasync_rate();
    println!("baseline write+fdatasync of 100 B: {disk:.0} /s");
    println!("RESULT fdatasync_baseline_100B records_per_s={disk:.0}");
    for (label, bound) in [
        ("bounded32", 32),
        ("default128", 128),
        ("unbounded", 1_000_000),
    ] {
        let figures = run(bound, records);
        let produce = figures
            .iter()
            .find(|f| f.name.starts_with("produce"))
            .expect("a produce result");
        let probe = |which: &str| {
            figures
                .iter()
                .find(|f| f.name.starts_with(which))
                .unwrap_or_else(|| panic!("no {which} result"))
        };
        let (idle, busy) = (probe("probe_idle"), probe("probe_under_load"));
        println!(
            "{label:<10} 1000 fsync producers: {:>7.0} records/s ({:.1}x the disk's fdatasync rate), ack p50 {:.1} ms p99 {:.1} ms; consume probe idle p50 {:.2} ms p99 {:.2} ms, under load p50 {:.2} ms p99 {:.2} ms",
            produce.records_per_s,
            produce.records_per_s / disk,
            produce.p50_us as f64 / 1e3,
            produce.p99_us as f64 / 1e3,
            idle.p50_us as f64 / 1e3,
            idle.p99_us as f64 / 1e3,
            busy.p50_us as f64 / 1e3,
            busy.p99_us as f64 / 1e3,
        );
        println!(
            "RESULT fsync_load_{label} records_per_s={:.0} vs_fdatasync={:.2} p50_us={} p99_us={} probe_idle_p50_us={} probe_idle_p99_us={} probe_p50_us={} probe_p99_us={}",
            produce.records_per_s,
            produce.records_per_s / disk,
            produce.p50_us,
            produce.p99_us,
            idle.p50_us,
            idle.p99_us,
            busy.p50_us,
            busy.p99_us
        );
    }
}

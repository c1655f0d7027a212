//! Local tail latency and throughput: a writer process appends 100 B records at a fixed
//! rate, a tailer in another process reads them from the files; each record carries its
//! send time (CLOCK_MONOTONIC, shared by both processes) and the tailer records the one-way
//! latency. Measured for spin and block waits, then the tailer's maximum throughput over a
//! pre-written log, then the CPU an idle blocking tailer uses.
//!
//! `cargo bench --bench tail_latency` (under a minute). The bench re-runs its own binary as
//! the writer and the tailer (`MAPQ_TAIL_ROLE`). Ends with `RESULT` lines. (Pinning the two
//! processes to their own CPUs made the tail worse on the 2-core VM, so they are not pinned.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mapq::log::tailer::{StartAt, TailOptions, Tailer, WaitMode};
use mapq::log::{FileWorker, LogConfig, PartitionLog, Record};

const VALUE_BYTES: usize = 100;
const LATENCY_RECORDS: u64 = 100_000;
/// 50 000 records a second.
const INTERVAL: Duration = Duration::from_micros(20);
const THROUGHPUT_RECORDS: u64 = 6_000_000;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn open_log(dir: &Path, prefaulter: &FileWorker) -> PartitionLog {
    let config = LogConfig {
        worker: Some(prefaulter.handle()),
        ..LogConfig::default()
    };
    PartitionLog::open(dir, config).expect("open log").0
}

/// Writer role: waits for a line on stdin, then appends `n` records, one per `interval`.
fn writer(dir: &Path, n: u64, interval: Duration) {
    let prefaulter = FileWorker::spawn().expect("prefaulter");
    let log = open_log(dir, &prefaulter);
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let mut value = [0u8; VALUE_BYTES];
    // The writer sleeps between records (with a 1 ns timer slack) rather than spinning, so
    // that on a 2-core machine the tailer has a core to itself.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let start_ns = monotonic_ns();
    for i in 0..n {
        let due = start_ns + interval.as_nanos() as u64 * i;
        let ts = libc::timespec {
            tv_sec: (due / 1_000_000_000) as libc::time_t,
            tv_nsec: (due % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: clock_nanosleep reads the timespec we pass and writes nothing (no
        // remainder pointer with TIMER_ABSTIME).
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        value[..8].copy_from_slice(&monotonic_ns().to_le_bytes());
        log.append(&[Record::value(&value, 0)]).expect("append");
    }
}

/// Tailer role: reads `n` records following from `latest`, prints latency percentiles.
fn tailer(dir: &Path, n: u64, wait: WaitMode) {
    let options = TailOptions {
        from: StartAt::Latest,
        follow: true,
        wait,
        ..TailOptions::default()
    };
    let mut t = Tailer::open_dir(dir, options).expect("open tailer");
    println!("ready");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for _ in 0..n {
        let f = t
            .next_record()
            .expect("read")
            .expect("following never ends");
        let now = monotonic_ns();
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&f.value().unwrap_or_default()[..8]);
        hist.record(now.saturating_sub(u64::from_le_bytes(sent)).max(1))
            .expect("record");
    }
    println!(
        "{} {} {} {}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}

/// Throughput role: reads the whole log once, without following; prints records and ns.
fn reader(dir: &Path) {
    let mut t = Tailer::open_dir(dir, TailOptions::default()).expect("open tailer");
    let start = Instant::now();
    let mut n = 0u64;
    let mut sum = 0u64;
    while let Some(f) = t.next_record().expect("read") {
        sum = sum.wrapping_add(u64::from(f.value().unwrap_or_default()[0]));
        n += 1;
    }
    std::hint::black_box(sum);
    println!("{n} {}", start.elapsed().as_nanos());
}

fn child(role: &str, dir: &Path, extra: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("own path"))
        .env("MAPQ_TAIL_ROLE", role)
        .env("MAPQ_TAIL_DIR", dir)
        .env("MAPQ_TAIL_ARG", extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn read_line(c: &mut std::process::Child) -> String {
    let out = c.stdout.as_mut().expect("stdout");
    let mut line = String::new();
    // One byte at a time: the child's later output must stay in the pipe for later reads.
    let mut byte = [0u8; 1];
    while std::io::Read::read(out, &mut byte).expect("read child") == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    line
}

fn latency_run(wait: &str, records: u64, interval: Duration) -> Vec<u64> {
    let dir = tempfile::Builder::new()
        .prefix("mapq-bench-tail-")
        .tempdir_in(bench_dir())
        .expect("temp dir");
    let mut w = child(
        "writer",
        dir.path(),
        &format!("{records} {}", interval.as_nanos()),
    );
    assert_eq!(read_line(&mut w), "ready");
    let mut t = child("tailer", dir.path(), &format!("{wait} {records}"));
    assert_eq!(read_line(&mut t), "ready");
    writeln!(w.stdin.as_mut().expect("stdin")).expect("go");
    let line = read_line(&mut t);
    let status = w.wait().expect("writer");
    assert!(status.success(), "the writer failed: {status}");
    let status = t.wait().expect("tailer");
    assert!(status.success(), "the tailer failed: {status}");
    line.split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect()
}

/// The CPU time (user + system, in clock ticks) of a running process. Panics when its
/// `/proc` entry cannot be read or parsed, rather than report 0.
fn cpu_ticks(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let (_, rest) = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("{path}: no command name: {stat:?}"));
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: field {} is not a number: {stat:?}", i + 3))
    };
    get(11) + get(12)
}

fn main() {
    if let Ok(role) = std::env::var("MAPQ_TAIL_ROLE") {
        let dir = PathBuf::from(std::env::var_os("MAPQ_TAIL_DIR").expect("dir"));
        let arg = std::env::var("MAPQ_TAIL_ARG").unwrap_or_default();
        match role.as_str() {
            "writer" => {
                let mut it = arg
                    .split_whitespace()
                    .map(|v| v.parse::<u64>().expect("number"));
                let (n, ns) = (it.next().expect("count"), it.next().expect("interval"));
                writer(&dir, n, Duration::from_nanos(ns))
            }
            "tailer" => {
                let mut it = arg.split_whitespace();
                let wait = if it.next() == Some("spin") {
                    WaitMode::Spin
                } else {
                    WaitMode::Block
                };
                tailer(
                    &dir,
                    it.next().expect("count").parse().expect("count"),
                    wait,
                )
            }
            "reader" => reader(&dir),
            "idle" => {
                let options = TailOptions {
                    from: StartAt::Latest,
                    follow: true,
                    wait: WaitMode::Block,
                    ..TailOptions::default()
                };
                let mut t = Tailer::open_dir(&dir, options).expect("open tailer");
                println!("ready");
                let _ = t.next_record();
            }
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let mut lines = Vec::new();
    // 50 000 records/s for both waits, then a slow 2 000 records/s for the blocking wait,
    // where the tailer really sleeps between records (its short spin cannot bridge 500 µs).
    for (wait, records, interval) in [
        ("spin", LATENCY_RECORDS, INTERVAL),
        ("block", LATENCY_RECORDS, INTERVAL),
        ("block", 5_000, Duration::from_micros(500)),
    ] {
        let v = latency_run(wait, records, interval);
        let rate = 1_000_000_000 / interval.as_nanos();
        let line = format!(
            "RESULT tail_latency_{wait}_100B_{rate}_per_s records={records} p50_ns={} p99_ns={} p999_ns={} max_ns={}",
            v[0], v[1], v[2], v[3]
        );
        println!("{line}");
        lines.push(line);
    }

    // Throughput: write a log in this process, read it in another.
    let dir = tempfile::Builder::new()
        .prefix("mapq-bench-tail-")
        .tempdir_in(bench_dir())
        .expect("temp dir");
    {
        let prefaulter = FileWorker::spawn().expect("prefaulter");
        let log = open_log(dir.path(), &prefaulter);
        let value = [7u8; VALUE_BYTES];
        let batch: Vec<Record<'_>> = (0..1000).map(|_| Record::value(&value, 1)).collect();
        for _ in 0..THROUGHPUT_RECORDS / 1000 {
            log.append(&batch).expect("append");
        }
    }
    let mut r = child("reader", dir.path(), "");
    let line = read_line(&mut r);
    let status = r.wait().expect("reader");
    assert!(status.success(), "the reader failed: {status}");
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    let rps = v[0] as f64 / (v[1] as f64 / 1e9);
    // Bytes per record in the log: the frame of one record, padding included.
    let frame_bytes = Record::value(&[0u8; VALUE_BYTES], 1)
        .padded_len()
        .expect("a 100 B record fits a frame");
    let line = format!(
        "RESULT tail_throughput_100B records={} records_per_s={rps:.0} mb_per_s={:.1}",
        v[0],
        rps * frame_bytes as f64 / 1e6
    );
    println!("{line}");
    lines.push(line);

    // An idle blocking tailer: CPU over two seconds.
    let mut idle = child("idle", dir.path(), "");
    assert_eq!(read_line(&mut idle), "ready");
    let pid = idle.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - before;
    // A tailer that had already exited would use no CPU: its figure would mean nothing.
    if let Some(status) = idle.try_wait().expect("idle tailer status") {
        panic!("the idle tailer exited during the measurement: {status}");
    }
    idle.kill().expect("kill the idle tailer");
    let status = idle.wait().expect("idle tailer");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the idle tailer ended by our kill: {status}"
    );
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let line = format!(
        "RESULT tail_idle_block cpu_percent={:.2}",
        ticks as f64 / hz / 2.0 * 100.0
    );
    println!("{line}");
    lines.push(line);
    println!();
    for l in lines {
        println!("{l}");
    }
}

//! Durability and roll latency of the storage engine, against the disk's own limit measured
//! in the same run.
//!
//! `cargo bench --bench durability` (about a minute). Two parts:
//!
//! 1. fsync-acknowledged appends: P producer threads (1, 8, 32) each append a batch of
//!    16 records of 1 KiB and wait until a flush (msync) has covered it, as
//!    `durability=fsync` produce requests do (group commit: whoever holds the flush lock
//!    flushes everything published so far, the others find their records already durable).
//!    Baseline: one thread writing the same batch bytes with `write` + `fdatasync` in a loop
//!    into a preallocated file, one fdatasync per batch.
//! 2. Append latency across rolls: single appends of 1 KiB at 100 000 appends/s into
//!    segments of 1 MiB (a roll every ~980 appends, ~100 rolls a second) against segments of
//!    1 GiB (no roll), p99.9 of each.
//!
//! Ends with `RESULT` lines.
//!
//! Set `MAPQ_BENCH_DIR` to run on another file system (default: the system temp dir).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mapq::log::{FileWorker, LogConfig, PartitionLog, Record};

const RECORD_BYTES: usize = 1024;
const BATCH: usize = 16;
const RUN: Duration = Duration::from_secs(4);
/// Pace of the append-latency runs: 100 000 appends of 1 KiB per second.
const APPEND_INTERVAL: Duration = Duration::from_micros(10);

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

struct Outcome {
    batches: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn records_per_s(&self) -> f64 {
        (self.batches * BATCH as u64) as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self, frame_bytes: usize) -> f64 {
        (self.batches as usize * BATCH * frame_bytes) as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

fn frame_bytes() -> usize {
    Record::value(&[0; RECORD_BYTES], 0)
        .padded_len()
        .expect("fits")
}

/// write + fdatasync of one batch of frames at a time, into a preallocated file.
fn fdatasync_baseline() -> Outcome {
    let path = bench_dir().join(format!("mapq-bench-fdatasync-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("baseline file");
    let size: usize = 1 << 30;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    assert_eq!(rc, 0, "fallocate");
    let batch = vec![0x5Au8; BATCH * frame_bytes()];
    let mut hist = histogram();
    let mut batches = 0;
    let mut written = 0;
    let start = Instant::now();
    while start.elapsed() < RUN && written + batch.len() < size {
        let t = Instant::now();
        file.write_all(&batch).expect("write");
        file.sync_data().expect("fdatasync");
        hist.record(t.elapsed().as_micros().max(1) as u64)
            .expect("record");
        written += batch.len();
        batches += 1;
    }
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&path);
    Outcome {
        batches,
        elapsed,
        latency_us: hist,
    }
}

fn fresh_log(segment_bytes: u64, prefaulter: &FileWorker) -> (tempfile::TempDir, PartitionLog) {
    let dir = tempfile::Builder::new()
        .prefix("mapq-bench-durability-")
        .tempdir_in(bench_dir())
        .expect("temp dir");
    let config = LogConfig {
        segment_bytes,
        worker: Some(prefaulter.handle()),
        ..LogConfig::default()
    };
    let (log, _) = PartitionLog::open(dir.path(), config).expect("open");
    (dir, log)
}

/// `producers` threads: append a batch, wait until it is durable, repeat.
fn fsync_producers(producers: usize, prefaulter: &FileWorker) -> Outcome {
    let (_dir, log) = fresh_log(1 << 30, prefaulter);
    let log = Arc::new(log);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|_| {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                let value = vec![0x5Au8; RECORD_BYTES];
                let batch: Vec<Record<'_>> = (0..BATCH)
                    .map(|_| Record::value(&value, 1_764_201_600_000))
                    .collect();
                let mut hist = histogram();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let a = log.append(&batch).expect("append");
                    log.flush_until(a.first_offset + a.count).expect("flush");
                    hist.record(t.elapsed().as_micros().max(1) as u64)
                        .expect("record");
                    n += 1;
                }
                (n, hist)
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        batches: 0,
        elapsed: Duration::ZERO,
        latency_us: histogram(),
    };
    for h in handles {
        let (n, hist) = h.join().expect("producer thread");
        out.batches += n;
        out.latency_us.add(hist).expect("merge");
    }
    out.elapsed = start.elapsed();
    out
}

/// Single appends of one 1 KiB record at a steady `APPEND_INTERVAL` (100 MB/s), like a busy
/// producer rather than a loop that does nothing but append; latency of each.
fn append_latency(
    segment_bytes: u64,
    appends: u64,
    prefaulter: &FileWorker,
) -> (Histogram<u64>, usize) {
    let (_dir, log) = fresh_log(segment_bytes, prefaulter);
    let value = vec![7u8; RECORD_BYTES];
    let mut hist = histogram();
    let start = Instant::now();
    for i in 0..appends {
        let due = start + APPEND_INTERVAL * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        log.append(&[Record::value(&value, 1)]).expect("append");
        hist.record(t.elapsed().as_nanos().max(1) as u64)
            .expect("record");
    }
    (hist, log.segment_count())
}

fn main() {
    println!("durability bench in {}", bench_dir().display());
    let prefaulter = FileWorker::spawn().expect("prefault thread");
    let frame = frame_bytes();
    let base = fdatasync_baseline();
    let base_rps = base.records_per_s();
    println!(
        "baseline write+fdatasync of {BATCH} x {frame} B: {:.0} batches/s, {:.1} MB/s, latency p50 {} µs p99 {} µs",
        base.batches as f64 / base.elapsed.as_secs_f64(),
        base.mb_per_s(frame),
        base.latency_us.value_at_quantile(0.5),
        base.latency_us.value_at_quantile(0.99),
    );
    let mut lines = vec![format!(
        "RESULT fdatasync_baseline_batch{BATCH} records_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={} p999_us={}",
        base_rps,
        base.mb_per_s(frame),
        base.latency_us.value_at_quantile(0.5),
        base.latency_us.value_at_quantile(0.99),
        base.latency_us.value_at_quantile(0.999),
    )];
    for producers in [1, 8, 32] {
        let o = fsync_producers(producers, &prefaulter);
        let line = format!(
            "RESULT fsync_append_batch{BATCH}_p{producers} records_per_s={:.0} mb_per_s={:.1} vs_fdatasync={:.2} p50_us={} p99_us={} p999_us={}",
            o.records_per_s(),
            o.mb_per_s(frame),
            o.records_per_s() / base_rps,
            o.latency_us.value_at_quantile(0.5),
            o.latency_us.value_at_quantile(0.99),
            o.latency_us.value_at_quantile(0.999),
        );
        println!("{line}");
        lines.push(line);
    }
    let appends = 200_000;
    let (steady, steady_segments) = append_latency(1 << 30, appends, &prefaulter);
    let (rolling, rolling_segments) = append_latency(1 << 20, appends, &prefaulter);
    for (name, h, segments) in [
        ("append_latency_no_rolls", &steady, steady_segments),
        ("append_latency_rolls", &rolling, rolling_segments),
    ] {
        let line = format!(
            "RESULT {name} appends={appends} segments={segments} p50_ns={} p99_ns={} p999_ns={} max_ns={}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        );
        println!("{line}");
        lines.push(line);
    }
    lines.push(format!(
        "RESULT roll_p999_ratio value={:.2}",
        rolling.value_at_quantile(0.999) as f64 / steady.value_at_quantile(0.999).max(1) as f64
    ));
    println!();
    for l in lines {
        println!("{l}");
    }
}

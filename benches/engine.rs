//! Storage engine throughput: append and read, against two baselines measured in the same run.
//!
//! `cargo bench --bench engine` (about a minute). Baselines:
//! - `memcpy_heap`: the same bytes copied into warm (already touched) heap memory;
//! - `raw_mmap`: the same bytes copied into a fresh, fallocated, shared mapping of a file, with
//!   no framing: each fresh page costs a page fault, which makes this the real limit for an
//!   engine that writes through a mapping.
//!
//! Ends with one line per scenario:
//! `RESULT <scenario> records_per_s=<n> mb_per_s=<n> vs_memcpy=<ratio> vs_raw_mmap=<ratio>`
//! where MB are 10^6 bytes of frames (what lands in the segment).
//!
//! Set `MAPQ_BENCH_DIR` to run on another file system (default: the system temp dir).

use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mapq::log::{FileWorker, LogConfig, PartitionLog, Record};

/// Bytes written per append scenario (and per baseline run).
const TOTAL_BYTES: usize = 256 << 20;
/// Runs per measurement; the median is reported.
const RUNS: usize = 3;

struct Scenario {
    name: String,
    value_bytes: usize,
    batch: usize,
}

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Copies `src` into `dst` in pieces of `piece` bytes, as an engine copies record by record.
fn copy_in_pieces(dst: &mut [u8], src: &[u8], piece: usize) {
    let mut at = 0;
    while at < dst.len() {
        let n = piece.min(dst.len() - at);
        dst[at..at + n].copy_from_slice(&src[..n]);
        at += n;
    }
    black_box(&dst);
}

fn memcpy_heap(bytes: usize, piece: usize, src: &[u8]) -> Duration {
    let mut dst = vec![1u8; bytes]; // touched: warm
    let runs = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            copy_in_pieces(&mut dst, src, piece);
            t.elapsed()
        })
        .collect();
    median(runs)
}

/// Maps a fresh, fallocated file of `bytes` and copies into it; optionally pre-faults with
/// MADV_POPULATE_WRITE first (included in the time).
fn raw_mmap(bytes: usize, piece: usize, src: &[u8], populate: bool) -> Duration {
    let runs = (0..RUNS)
        .map(|i| {
            let path = bench_dir().join(format!("mapq-bench-raw-{}-{i}", std::process::id()));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("create baseline file");
            file.set_len(bytes as u64).expect("size baseline file");
            // SAFETY: plain syscall on an fd we own.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
            assert_eq!(rc, 0, "fallocate failed");
            // SAFETY: the file is private to this benchmark and not resized while mapped.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map");
            let t = Instant::now();
            if populate {
                map.advise(memmap2::Advice::PopulateWrite)
                    .expect("populate");
            }
            copy_in_pieces(&mut map, src, piece);
            let elapsed = t.elapsed();
            drop(map);
            let _ = std::fs::remove_file(&path);
            elapsed
        })
        .collect();
    median(runs)
}

fn frame_bytes(value_bytes: usize) -> usize {
    Record::value(&vec![0; value_bytes], 0)
        .padded_len()
        .unwrap()
}

fn fresh_log(tag: &str, prefaulter: &FileWorker) -> (tempfile::TempDir, PartitionLog) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mapq-bench-{tag}-"))
        .tempdir_in(bench_dir())
        .expect("temp dir");
    let config = LogConfig {
        worker: Some(prefaulter.handle()),
        ..LogConfig::default()
    };
    let (log, _) = PartitionLog::open(dir.path(), config).expect("open log");
    (dir, log)
}

/// Appends `TOTAL_BYTES` worth of records into a fresh log; returns the elapsed time and the
/// number of records.
fn append_run(
    s: &Scenario,
    prefaulter: &FileWorker,
) -> (Duration, u64, tempfile::TempDir, PartitionLog) {
    let (dir, log) = fresh_log(&s.name, prefaulter);
    let records_total =
        (TOTAL_BYTES / frame_bytes(s.value_bytes)) as u64 / s.batch as u64 * s.batch as u64;
    let values: Vec<Vec<u8>> = (0..s.batch)
        .map(|i| vec![(i % 251) as u8; s.value_bytes])
        .collect();
    let t = Instant::now();
    let mut written = 0;
    while written < records_total {
        let batch: Vec<Record<'_>> = values
            .iter()
            .map(|v| Record::value(v, 1_764_201_600_000))
            .collect();
        log.append(&batch).expect("append");
        written += s.batch as u64;
    }
    (t.elapsed(), written, dir, log)
}

/// Reads every record back, checking every CRC (the read path validates each frame) and
/// touching every value.
fn read_all(log: &PartitionLog) -> (Duration, u64) {
    let t = Instant::now();
    let mut next = log.start_offset();
    let mut n = 0u64;
    let mut checksum = 0u64;
    loop {
        let batch = log.read(next, 10_000, 4 << 20).expect("read");
        if batch.record_count == 0 {
            break;
        }
        for f in batch.frames() {
            let value = f.value().unwrap_or_default();
            checksum = checksum.wrapping_add(value.len() as u64 + value[0] as u64);
            n += 1;
        }
        next = batch.next_offset;
    }
    black_box(checksum);
    (t.elapsed(), n)
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = bench_dir();
    println!(
        "engine bench in {} ({} MiB per run, median of {RUNS})",
        dir.display(),
        TOTAL_BYTES >> 20
    );
    let src = vec![0x5Au8; 1 << 20];
    let prefaulter = FileWorker::spawn().expect("prefault thread");

    let mut results = Vec::new();
    for (value_bytes, label) in [(100usize, "100B"), (1024, "1KiB")] {
        let frame = frame_bytes(value_bytes);
        let heap = memcpy_heap(TOTAL_BYTES, frame, &src);
        let raw = raw_mmap(TOTAL_BYTES, frame, &src, false);
        let raw_pop = raw_mmap(TOTAL_BYTES, frame, &src, true);
        println!(
            "BASELINE {label}: memcpy_heap {:.0} MB/s, raw_mmap {:.0} MB/s ({:.2} of heap), raw_mmap pre-faulted with MADV_POPULATE_WRITE {:.0} MB/s",
            mb_per_s(TOTAL_BYTES, heap),
            mb_per_s(TOTAL_BYTES, raw),
            heap.as_secs_f64() / raw.as_secs_f64(),
            mb_per_s(TOTAL_BYTES, raw_pop),
        );
        let heap_bps = TOTAL_BYTES as f64 / heap.as_secs_f64();
        let raw_bps = TOTAL_BYTES as f64 / raw.as_secs_f64();
        for batch in [1usize, 64] {
            let s = Scenario {
                name: format!("append_{label}_batch{batch}"),
                value_bytes,
                batch,
            };
            let mut runs = Vec::new();
            let mut last = None;
            for _ in 0..RUNS {
                let (d, n, dir, log) = append_run(&s, &prefaulter);
                runs.push((d, n));
                last = Some((dir, log));
            }
            runs.sort();
            let (d, n) = runs[runs.len() / 2];
            results.push((s.name.clone(), n, n as usize * frame, d, heap_bps, raw_bps));
            if batch == 64 {
                let (_dir, log) = last.expect("at least one run");
                let mut reads: Vec<(Duration, u64)> = (0..RUNS).map(|_| read_all(&log)).collect();
                reads.sort();
                let (rd, rn) = reads[reads.len() / 2];
                assert_eq!(rn, n, "read back every record");
                results.push((
                    format!("read_{label}"),
                    rn,
                    rn as usize * frame,
                    rd,
                    heap_bps,
                    raw_bps,
                ));
            }
        }
    }
    for (name, n, bytes, d, heap_bps, raw_bps) in results {
        let bps = bytes as f64 / d.as_secs_f64();
        println!(
            "RESULT {name} records_per_s={:.0} mb_per_s={:.1} vs_memcpy={:.3} vs_raw_mmap={:.3}",
            n as f64 / d.as_secs_f64(),
            bps / 1e6,
            bps / heap_bps,
            bps / raw_bps,
        );
    }
}

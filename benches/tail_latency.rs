//! Local tail latency and throughput: a writer process appends 100 B records at a fixed
//! rate, a tailer in another process reads them from the files; each record carries its
//! send time (CLOCK_MONOTONIC, shared by both processes) and the tailer records the one-way
//! latency. Measured for spin and block waits, then the tailer's maximum throughput over a
//! pre-written log, then the CPU an idle blocking tailer uses.
//!
//! The same runs are made with the C tailer (`benches/tail_c.c` on `libmapq_tail.so`, built
//! here with cargo and gcc) and the Python one (`benches/tail_py.py` on the package in
//! `src/capi/python`, installed here with pip), against the Rust tailer in the same run.
//!
//! `cargo bench --bench tail_latency` (a few minutes). The bench re-runs its own binary as
//! the writer and the Rust tailer (`MAPQ_TAIL_ROLE`). Ends with `RESULT` lines. (Pinning the
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

/// The partition inside a bench's data directory (`t/0`, as the server lays it out, with
/// the `@lock` file that marks a data directory: the C and Python tailers open it by name).
fn partition_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("t").join("0")
}

fn new_data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mapq-bench-tail-")
        .tempdir_in(bench_dir())
        .expect("temp dir");
    std::fs::write(dir.path().join(mapq::broker::LOCK_FILE), b"").expect("@lock");
    std::fs::create_dir_all(partition_dir(dir.path())).expect("partition dir");
    dir
}

/// The C tailer program, the Python package's directory and the library, built for this
/// run; `None` (with the reason printed) when a tool is missing.
struct Foreign {
    c: PathBuf,
    python_path: PathBuf,
    library: PathBuf,
}

fn build_foreign(work: &Path) -> Result<Foreign, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "mapq-tail",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo: {e}"))?;
    if !out.status.success() {
        return Err("cargo build --release -p mapq-tail failed".into());
    }
    let library = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mapq_tail")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .ok_or("cargo built no libmapq_tail.so")?;
    let libdir = library.parent().expect("a directory");
    let c = work.join("tail_c");
    let status = Command::new("gcc")
        .args(["-std=c11", "-O2", "-Wall", "-Werror"])
        .arg("-I")
        .arg(root.join("src/capi/include"))
        .arg(root.join("benches/tail_c.c"))
        .arg("-o")
        .arg(&c)
        .arg("-L")
        .arg(libdir)
        .arg("-lmapq_tail")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !status.success() {
        return Err("gcc failed on benches/tail_c.c".into());
    }
    // pip writes build files next to the sources: it gets a copy.
    let source = work.join("python-source");
    std::fs::create_dir_all(source.join("mapq_tail")).map_err(|e| e.to_string())?;
    for file in ["pyproject.toml", "mapq_tail/__init__.py"] {
        std::fs::copy(root.join("src/capi/python").join(file), source.join(file))
            .map_err(|e| e.to_string())?;
    }
    let python_path = work.join("python");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&python_path)
        .arg(&source)
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !status.success() {
        return Err("pip install src/capi/python failed".into());
    }
    Ok(Foreign {
        c,
        python_path,
        library,
    })
}

/// A foreign tailer process: `lang` "c" or "python", with `args`.
fn foreign_child(f: &Foreign, lang: &str, args: &[&str]) -> std::process::Child {
    let mut cmd = match lang {
        "c" => Command::new(&f.c),
        _ => {
            let mut c = Command::new("python3");
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tail_py.py"))
                .env("PYTHONPATH", &f.python_path)
                .env("MAPQ_TAIL_LIBRARY", &f.library);
            c
        }
    };
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a foreign tailer")
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

/// One latency run with the tailer in `lang` ("rust", "c" or "python").
fn latency_run(
    lang: &str,
    foreign: Option<&Foreign>,
    wait: &str,
    records: u64,
    interval: Duration,
) -> Vec<u64> {
    let dir = new_data_dir();
    let part = partition_dir(dir.path());
    let mut w = child(
        "writer",
        &part,
        &format!("{records} {}", interval.as_nanos()),
    );
    assert_eq!(read_line(&mut w), "ready");
    let data = dir.path().to_str().expect("a UTF-8 path");
    let n = records.to_string();
    let mut t = match (lang, foreign) {
        ("rust", _) => child("tailer", &part, &format!("{wait} {records}")),
        (_, Some(f)) => foreign_child(f, lang, &["latency", wait, data, &n]),
        _ => unreachable!("a foreign tailer without its build"),
    };
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
    let work = tempfile::tempdir().expect("temp dir");
    let foreign = build_foreign(work.path())
        .map_err(|e| println!("the C and Python tailers are not measured: {e}"))
        .ok();
    let langs: &[&str] = if foreign.is_some() {
        &["rust", "c", "python"]
    } else {
        &["rust"]
    };
    // 50 000 records/s for both waits, then a slow 2 000 records/s for the blocking wait,
    // where the tailer really sleeps between records (its short spin cannot bridge 500 µs).
    let mut p99 = std::collections::BTreeMap::new();
    for (wait, records, interval) in [
        ("spin", LATENCY_RECORDS, INTERVAL),
        ("block", LATENCY_RECORDS, INTERVAL),
        ("block", 5_000, Duration::from_micros(500)),
    ] {
        for &lang in langs {
            let v = latency_run(lang, foreign.as_ref(), wait, records, interval);
            let rate = 1_000_000_000 / interval.as_nanos();
            let name = if lang == "rust" {
                String::new()
            } else {
                format!("{lang}_")
            };
            let line = format!(
                "RESULT tail_latency_{name}{wait}_100B_{rate}_per_s records={records} p50_ns={} p99_ns={} p999_ns={} max_ns={}",
                v[0], v[1], v[2], v[3]
            );
            println!("{line}");
            lines.push(line);
            p99.insert((lang, wait, rate), (v[0], v[1]));
        }
    }
    for &lang in langs.iter().filter(|l| **l != "rust") {
        for (wait, rate) in [("spin", 50_000), ("block", 50_000)] {
            let (Some(r), Some(o)) = (p99.get(&("rust", wait, rate)), p99.get(&(lang, wait, rate)))
            else {
                continue;
            };
            let line = format!(
                "RESULT tail_latency_{lang}_vs_rust_{wait}_50000_per_s p50_ratio={:.2} p99_ratio={:.2}",
                o.0 as f64 / r.0.max(1) as f64,
                o.1 as f64 / r.1.max(1) as f64
            );
            println!("{line}");
            lines.push(line);
        }
    }

    // Throughput: write a log in this process, read it in another.
    let dir = new_data_dir();
    let part = partition_dir(dir.path());
    {
        let prefaulter = FileWorker::spawn().expect("prefaulter");
        let log = open_log(&part, &prefaulter);
        let value = [7u8; VALUE_BYTES];
        let batch: Vec<Record<'_>> = (0..1000).map(|_| Record::value(&value, 1)).collect();
        for _ in 0..THROUGHPUT_RECORDS / 1000 {
            log.append(&batch).expect("append");
        }
    }
    // Bytes per record in the log: the frame of one record, padding included.
    let frame_bytes = Record::value(&[0u8; VALUE_BYTES], 1)
        .padded_len()
        .expect("a 100 B record fits a frame");
    let mut rates = Vec::new();
    // Python twice: records as objects (`for record in tailer`), and `Tailer.values()`.
    let readers: Vec<(&str, &str)> = langs
        .iter()
        .map(|&l| (l, "records"))
        .chain(foreign.as_ref().map(|_| ("python", "values")))
        .collect();
    for (lang, api) in readers {
        let data = dir.path().to_str().expect("a UTF-8 path");
        let mut r = match (lang, foreign.as_ref()) {
            ("rust", _) => child("reader", &part, ""),
            (_, Some(f)) => {
                let mut c = foreign_child(f, lang, &["throughput", data, api]);
                assert_eq!(read_line(&mut c), "ready");
                c
            }
            _ => unreachable!("a foreign tailer without its build"),
        };
        let line = read_line(&mut r);
        let status = r.wait().expect("reader");
        assert!(status.success(), "the {lang} reader failed: {status}");
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|v| v.parse().expect("number"))
            .collect();
        assert_eq!(
            v[0], THROUGHPUT_RECORDS,
            "the {lang} reader read {} records",
            v[0]
        );
        let rps = v[0] as f64 / (v[1] as f64 / 1e9);
        rates.push(rps);
        let name = match (lang, api) {
            ("rust", _) => String::new(),
            ("python", "values") => "python_values_".into(),
            _ => format!("{lang}_"),
        };
        let line = format!(
            "RESULT tail_{name}throughput_100B records={} records_per_s={rps:.0} mb_per_s={:.1} vs_rust={:.2}",
            v[0],
            rps * frame_bytes as f64 / 1e6,
            rps / rates[0]
        );
        println!("{line}");
        lines.push(line);
    }

    // An idle blocking tailer: CPU over two seconds.
    let mut idle = child("idle", &part, "");
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

//! Produce at the machine's speed (issue 14): each workload against a real `mapq serve` of
//! this build, beside the baseline it is judged against, measured in the same run.
//!
//! `cargo bench --bench produce` (about two minutes). Rows:
//! - one 100 B record per request, 100 and 1,000 connections, from `wrk` (a C load generator,
//!   so that the client's cost does not hide the server's): `durability=memory` against the
//!   same server's `GET /healthz` under the same load (HTTP's own rate here), and
//!   `durability=fsync` against Redis `XADD` with `appendfsync always` (and `memory` against
//!   `appendfsync everysec`) from `redis-benchmark` with as many clients;
//! - batches of 1,000 records of 1 KiB as binary frames, one connection and four (one
//!   partition each), from `mapq bench`: against loopback TCP (one connection streaming
//!   1 MiB writes) and against copying into a fresh memory-mapped file (1 MiB at a time), the
//!   two limits a produce of big batches is made of.
//!
//! It prints a table with the ratios, and `RESULT` lines. wrk and Redis (redis-benchmark and
//! the server binary) come from Debian's wrk and redis-tools packages
//! (`benches/install-tools.sh`, run first, installs them when missing). `MAPQ_BENCH_SECS` sets each wrk/redis run's length
//! (default 5); `MAPQ_BENCH_DIR` the directory for data (default: the system temp dir).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/server.rs"]
mod server;
use server::Server;

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// One measured workload: rate (records or requests per second) and latency percentiles.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `1.23ms`, `456.78us`, `1.5s` from wrk, in µs.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

/// Runs wrk for `secs` with `connections` against `url`; `body` makes it a POST of an
/// `application/octet-stream` body. Every answer must be a 2xx.
fn wrk(url: &str, connections: u32, secs: u64, body: Option<&[u8]>) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "--latency", "--timeout", "10s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"));
    let script;
    if let Some(body) = body {
        let path = bench_dir().join(format!("mapq-bench-produce-{}.lua", std::process::id()));
        let escaped: String = body.iter().map(|b| format!("\\{b}")).collect();
        std::fs::write(
            &path,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\nwrk.body = \"{escaped}\"\n"
            ),
        )
        .expect("write the wrk script");
        cmd.arg("-s").arg(&path);
        script = Some(path);
    } else {
        script = None;
    }
    let out = cmd.arg(url).output().expect("run wrk");
    if let Some(path) = script {
        let _ = std::fs::remove_file(path);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "answers other than 2xx, or socket errors, from {url}:\n{text}"
    );
    let mut run = Run::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => {
                run.per_s = n
                    .parse()
                    .unwrap_or_else(|_| panic!("wrk's rate {n:?} in:\n{text}"))
            }
            ["50%", d] => {
                run.p50_us =
                    wrk_duration_us(d).unwrap_or_else(|| panic!("wrk's p50 {d:?} in:\n{text}"))
            }
            ["99%", d] => {
                run.p99_us =
                    wrk_duration_us(d).unwrap_or_else(|| panic!("wrk's p99 {d:?} in:\n{text}"))
            }
            _ => {}
        }
    }
    assert!(run.per_s > 0.0, "no rate in wrk's output:\n{text}");
    run
}

/// A private redis-server on a free loopback port, with its data in a directory of its own;
/// stopped (by its pid) when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The Redis server binary of Debian's redis-tools: `redis-check-rdb`, which runs as the
/// server when called by the name `redis-server` (a link in `dir`).
fn redis_server_in(dir: &Path) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let check_rdb = std::env::split_paths(&path)
        .map(|d| d.join("redis-check-rdb"))
        .find(|p| p.exists())
        .expect("redis-check-rdb on PATH (Debian's redis-tools)");
    let link = dir.join("redis-server");
    std::os::unix::fs::symlink(check_rdb, &link).expect("link redis-server");
    link
}

impl Redis {
    fn start(appendfsync: &str) -> Redis {
        let dir = tempfile::tempdir_in(bench_dir()).expect("a Redis directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(redis_server_in(dir.path()))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", appendfsync])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        // Owned before the wait, so that a server that never listens is still stopped.
        let mut redis = Redis {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `XADD` of one 100 B field value per request, from `clients` connections.
    fn xadd(&self, clients: u32, requests: u64) -> Run {
        let value = "x".repeat(100);
        let out = Command::new("redis-benchmark")
            .args(["-p", &self.port.to_string(), "-c", &clients.to_string()])
            .args(["-n", &requests.to_string(), "--csv"])
            .args(["XADD", "bench", "*", "f", &value])
            .output()
            .expect("run redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "redis-benchmark failed: {text}");
        // A header row ("test","rps",...,"p50_latency_ms",...) and one row per command.
        let cells = |line: &str| -> Vec<String> {
            line.split(',')
                .map(|c| c.trim_matches('"').to_owned())
                .collect()
        };
        let mut lines = text.lines();
        let header = cells(lines.next().unwrap_or_default());
        let row = lines
            .map(cells)
            .find(|r| r.first().is_some_and(|t| t.starts_with("XADD")))
            .unwrap_or_else(|| panic!("no XADD row in redis-benchmark's output:\n{text}"));
        let column = |name: &str| -> f64 {
            let i = header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("no {name} column in redis-benchmark's output:\n{text}"));
            row[i]
                .parse()
                .unwrap_or_else(|_| panic!("{name} is not a number in:\n{text}"))
        };
        Run {
            per_s: column("rps"),
            p50_us: column("p50_latency_ms") * 1e3,
            p99_us: column("p99_latency_ms") * 1e3,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mapq bench --produce-only` of `records` 1 KiB records in batches of 1,000 over
/// `connections` (one partition each).
fn big_batches(server: &Server, connections: u32, records: u64) -> Run {
    let (connections, records) = (connections.to_string(), records.to_string());
    let figures = server::produce_figures(
        server,
        &[
            "--batch",
            "1000",
            "--record-bytes",
            "1024",
            "--connections",
            &connections,
            "--records",
            &records,
        ],
    );
    let figure = |name: &str| {
        *figures
            .get(name)
            .unwrap_or_else(|| panic!("no {name} from mapq bench: {figures:?}"))
    };
    let run = Run {
        per_s: figure("mb_per_s") * 1e6,
        p50_us: figure("p50_us"),
        p99_us: figure("p99_us"),
    };
    assert!(
        run.per_s > 0.0,
        "no throughput from mapq bench: {figures:?}"
    );
    run
}

/// Bytes per second through one loopback TCP connection, 1 MiB writes, for `secs`.
fn loopback_rate(secs: f64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        s.write_all(&chunk).expect("write");
    }
    drop(s);
    let total = reader.join().expect("the reader");
    total as f64 / started.elapsed().as_secs_f64()
}

/// Bytes per second copied 1 MiB at a time into a fresh memory-mapped file of `bytes`
/// (allocated ahead with fallocate, as mapq's segments are): the page cache's own limit for
/// new data, page faults included.
fn mapped_copy_rate(dir: &Path, bytes: usize) -> f64 {
    let path = dir.join(format!("mapq-bench-copy-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the copy file");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: a plain system call on a file this function owns.
    let rc = unsafe { libc::posix_fallocate(fd, 0, bytes as libc::off_t) };
    assert_eq!(rc, 0, "fallocate");
    // SAFETY: the file is this function's own and nobody else maps or truncates it.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map the copy file");
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for at in (0..bytes).step_by(chunk.len()) {
        map[at..at + chunk.len()].copy_from_slice(&chunk);
    }
    let rate = bytes as f64 / started.elapsed().as_secs_f64();
    drop(map);
    let _ = std::fs::remove_file(&path);
    rate
}

fn ensure_tools() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/install-tools.sh");
    let status = Command::new("bash")
        .arg(script)
        .status()
        .expect("run benches/install-tools.sh");
    assert!(status.success(), "benches/install-tools.sh failed");
}

fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.0} MB/s", per_s / 1e6)
    } else {
        format!("{:.1} k/s", per_s / 1e3)
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// Prints one row and its `RESULT` line: mapq's run beside its baseline.
fn row(name: &str, mapq: Run, baseline_name: &str, baseline: Run) {
    let ratio = mapq.per_s / baseline.per_s;
    println!(
        "{name:<34} mapq {:>10}  p50 {:>8}  p99 {:>8} | {baseline_name:<34} {:>10}  p50 {:>8} | {ratio:.2}x",
        fmt_rate(mapq.per_s),
        fmt_us(mapq.p50_us),
        fmt_us(mapq.p99_us),
        fmt_rate(baseline.per_s),
        fmt_us(baseline.p50_us),
    );
    println!(
        "RESULT {name} per_s={:.0} p50_us={:.0} p99_us={:.0} baseline={baseline_name} baseline_per_s={:.0} baseline_p50_us={:.0} ratio={ratio:.3}",
        mapq.per_s, mapq.p50_us, mapq.p99_us, baseline.per_s, baseline.p50_us
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("produce: benchmark");
        return;
    }
    ensure_tools();
    let secs: u64 = std::env::var("MAPQ_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir_in(bench_dir()).expect("a data directory");
    let server = Server::start(dir.path(), &[("MAPQ_MAX_CONNECTIONS", "4000")]);
    let base = &server.base;
    let record = [b'x'; 100];
    let produce = |topic: &str, durability: &str, connections: u32| {
        let url = format!("{base}/v1/topics/{topic}/records?durability={durability}");
        wrk(&url, connections, secs, Some(&record))
    };
    let healthz = |connections: u32| wrk(&format!("{base}/healthz"), connections, secs, None);

    // A first run on a fresh server pays for the VM's cold memory and the runtime's first
    // growth (it measured 0.53 of /healthz where the same load later gave 0.72): warm up.
    wrk(
        &format!("{base}/v1/topics/warm-up/records?durability=memory"),
        1000,
        2,
        Some(&record),
    );
    wrk(&format!("{base}/healthz"), 1000, 1, None);
    println!("one 100 B record per request (wrk, 2 threads, {secs} s each, after a warm-up):");
    for c in [100, 1000] {
        let h = healthz(c);
        let m = produce(&format!("memory-c{c}"), "memory", c);
        row(&format!("small_memory_c{c}"), m, "healthz (same server)", h);
    }
    let always = Redis::start("always");
    let everysec = Redis::start("everysec");
    // As many requests as mapq's wrk runs answered, about.
    let requests = |r: Run| ((r.per_s * secs as f64) as u64).max(50_000);
    for c in [100, 1000] {
        let m = produce(&format!("fsync-c{c}"), "fsync", c);
        let r = always.xadd(c, requests(m).max(200_000));
        row(
            &format!("small_fsync_c{c}"),
            m,
            "redis XADD appendfsync always",
            r,
        );
    }
    let m = produce("memory-redis-c100", "memory", 100);
    let r = everysec.xadd(100, requests(m).max(300_000));
    row(
        "small_memory_c100_vs_redis",
        m,
        "redis XADD appendfsync everysec",
        r,
    );
    drop((always, everysec));

    println!("batches of 1000 x 1 KiB records (mapq bench, binary frames):");
    let copy_dir = tempfile::tempdir_in(bench_dir()).expect("a directory for the copy");
    let copy_before = mapped_copy_rate(copy_dir.path(), 600 << 20);
    let loopback = loopback_rate(2.0);
    let one = big_batches(&server, 1, 600_000);
    let four = big_batches(&server, 4, 1_000_000);
    let copy_after = mapped_copy_rate(copy_dir.path(), 600 << 20);
    let copy = Run {
        per_s: copy_before.min(copy_after),
        ..Run::default()
    };
    println!(
        "baselines: loopback TCP {}, copy into a fresh mapped file {} then {}",
        fmt_rate(loopback),
        fmt_rate(copy_before),
        fmt_rate(copy_after)
    );
    let lo = Run {
        per_s: loopback,
        ..Run::default()
    };
    row(
        "batch1000_1KiB_c1_vs_loopback",
        one,
        "loopback TCP, 1 connection",
        lo,
    );
    row(
        "batch1000_1KiB_c1_vs_mapped_copy",
        one,
        "copy into a fresh mapping (min)",
        copy,
    );
    row(
        "batch1000_1KiB_c4_vs_loopback",
        four,
        "loopback TCP, 1 connection",
        lo,
    );
    // Again, on memory the kernel has handed out before: each `mapq bench` deletes its
    // topic, so these runs reuse the page cache pages the runs above freed. On this VM a
    // first touch of guest memory is what the cold runs wait for (the fresh-mapping copy
    // runs at a tenth of its second run's speed); the warm runs show the server's own cost.
    let one_warm = big_batches(&server, 1, 600_000);
    let four_warm = big_batches(&server, 4, 1_000_000);
    let copy_warm = Run {
        per_s: copy_after,
        ..Run::default()
    };
    row(
        "batch1000_1KiB_c1_warm_vs_mapped_copy_warm",
        one_warm,
        "copy into a reused mapping",
        copy_warm,
    );
    row(
        "batch1000_1KiB_c4_warm_vs_mapped_copy_warm",
        four_warm,
        "copy into a reused mapping",
        copy_warm,
    );
    println!(
        "warm: batch1000_1KiB_c1 p99/p50 {:.1}; c4 p99/p50 {:.1}",
        one_warm.p99_us / one_warm.p50_us,
        four_warm.p99_us / four_warm.p50_us
    );
    println!(
        "batch1000_1KiB_c1 p99/p50 {:.1}; c4 p99/p50 {:.1}",
        one.p99_us / one.p50_us,
        four.p99_us / four.p50_us
    );
}

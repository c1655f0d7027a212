//! The fixed cost of a partition: a real server with N topics of one partition, each
//! holding one 100 B record.
//!
//! `cargo bench --bench partitions` (about a minute; N = 1,000 and 10,000, or the list in
//! `MAPQ_BENCH_PARTITIONS`, e.g. `MAPQ_BENCH_PARTITIONS=200`). For each N it reports:
//! - creation: topics created a second by 16 concurrent clients (each creation is durable
//!   before its answer);
//! - disk: the blocks the data directory holds (`st_blocks`), in all and per partition;
//! - memory: the server's resident memory, file-backed and anonymous (`/proc/PID/status`);
//! - open files and mappings of the server (`/proc/PID/fd`, `/proc/PID/maps`), a second
//!   after the records and once the partitions are idle (the figures above are idle ones:
//!   the server runs housekeeping every second and calls a partition idle after 3 s);
//! - produce over all partitions at a low rate each: 16 clients, one 100 B record per
//!   request, walking the partitions round-robin for 5 s;
//! - restart: from `kill -9` and a new `mapq serve` to `/readyz` answering 200.
//!
//! Set `MAPQ_BENCH_DIR` to run on another file system (default: the system temp dir).

#[path = "common/server.rs"]
mod server;

use server::Server;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
/// The server's settings: many topics; housekeeping every second and idle after three, so
/// that the run sees idle partitions give up their mappings within seconds (the defaults
/// are 30 s and 60 s).
const SETTINGS: &[(&str, &str)] = &[
    ("MAPQ_MAX_TOPICS", "100000"),
    ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "1000"),
    ("MAPQ_SEGMENT_IDLE_CLOSE_MS", "3000"),
];
/// How long the partitions are left alone before the idle figures are taken.
const IDLE_FOR: Duration = Duration::from_secs(6);
const PRODUCE_FOR: Duration = Duration::from_secs(5);

fn bench_dir() -> PathBuf {
    std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the server never got ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `f(i)` for `i` in `0..n` on [`CLIENTS`] concurrent tasks.
async fn each<F, Fut>(n: usize, f: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, f) = (Arc::clone(&next), f.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return;
                    }
                    f(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client task failed");
    }
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let entry = entry.expect("a directory entry");
        let meta = entry.metadata().expect("metadata");
        total += meta.blocks() * 512;
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        }
    }
    total
}

/// `(file-backed, anonymous)` resident bytes of a process.
fn resident(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            * 1024
    };
    (kib("RssFile:"), kib("RssAnon:"))
}

fn count_entries(path: String) -> usize {
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .count()
}

fn mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .lines()
        .count()
}

async fn run(n: usize) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("a temporary directory");
    let data = dir.path().join("data");
    let server = Server::start(&data, SETTINGS);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    wait_ready(&http, &server.base).await;
    let (pid, base) = (server.pid(), server.base.clone());
    let (idle_file, idle_anon) = resident(pid);
    let idle_fds = count_entries(format!("/proc/{pid}/fd"));

    let started = Instant::now();
    // The first refusal, if any (say the server ran out of open files): reported, not a
    // panic, and the run for this N stops there.
    let refused = Arc::new(std::sync::Mutex::new(None::<String>));
    let done = Arc::new(AtomicU64::new(0));
    {
        let (http, base) = (http.clone(), base.clone());
        let (refused, done) = (Arc::clone(&refused), Arc::clone(&done));
        each(n, move |i| {
            let (http, base) = (http.clone(), base.clone());
            let (refused, done) = (Arc::clone(&refused), Arc::clone(&done));
            async move {
                if refused.lock().unwrap().is_some() {
                    return;
                }
                let r = http
                    .post(format!("{base}/v1/topics"))
                    .json(&serde_json::json!({"name": format!("p{i}"), "partitions": 1}))
                    .send()
                    .await
                    .expect("create a topic");
                if r.status() == 201 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    let why = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
                    refused.lock().unwrap().get_or_insert(why);
                }
            }
        })
        .await;
    }
    let created = started.elapsed();
    if let Some(why) = refused.lock().unwrap().take() {
        let fds = count_entries(format!("/proc/{pid}/fd"));
        println!(
            "partitions={n}: creation refused after {} partitions ({fds} open files): {why}",
            done.load(Ordering::Relaxed)
        );
        println!(
            "RESULT partitions={n} refused_after={}",
            done.load(Ordering::Relaxed)
        );
        return;
    }
    let value = "v".repeat(100);
    let produce_one = {
        let (http, base, value) = (http.clone(), base.clone(), value.clone());
        move |i: usize| {
            let (http, base, value) = (http.clone(), base.clone(), value.clone());
            async move {
                let r = http
                    .post(format!("{base}/v1/topics/p{i}/records"))
                    .header("content-type", "application/octet-stream")
                    .body(value)
                    .send()
                    .await
                    .expect("produce");
                assert_eq!(r.status(), 200, "producing to p{i}");
            }
        }
    };
    each(n, produce_one.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_maps = mappings(pid);
    // Left alone, the partitions go idle: their writers park (the active segments unmap).
    tokio::time::sleep(IDLE_FOR).await;
    let disk = disk_bytes(&data);
    let (file, anon) = resident(pid);
    let fds = count_entries(format!("/proc/{pid}/fd"));
    let maps = mappings(pid);

    // A low rate on each partition: the clients walk all of them, round after round.
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (produce_one, sent) = (produce_one.clone(), Arc::clone(&sent));
            tokio::spawn(async move {
                let mut i = c;
                while started.elapsed() < PRODUCE_FOR {
                    produce_one(i % n).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += CLIENTS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a producer failed");
    }
    let produce_rate = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    server.kill();
    let started = Instant::now();
    let server = Server::start(&data, SETTINGS);
    wait_ready(&http, &server.base).await;
    let restart = started.elapsed();
    let topics: serde_json::Value = http
        .get(format!("{}/v1/topics", server.base))
        .send()
        .await
        .expect("list topics")
        .json()
        .await
        .expect("a topic list");
    assert_eq!(
        topics["topics"].as_array().map(Vec::len),
        Some(n),
        "every topic is back after the restart"
    );
    drop(server);

    let per = |v: u64| v as f64 / n as f64 / 1024.0;
    println!("partitions={n}");
    println!(
        "  creation: {:.0} partitions/s ({:.1} s for {n})",
        n as f64 / created.as_secs_f64(),
        created.as_secs_f64()
    );
    println!(
        "  disk: {:.1} MB ({:.1} KiB a partition)",
        disk as f64 / 1e6,
        per(disk)
    );
    println!(
        "  resident: {:.1} MB file-backed ({:.1} KiB a partition), {:.1} MB anonymous ({:.1} KiB a partition); an empty server: {:.1} MB and {:.1} MB",
        file as f64 / 1e6,
        per(file.saturating_sub(idle_file)),
        anon as f64 / 1e6,
        per(anon.saturating_sub(idle_anon)),
        idle_file as f64 / 1e6,
        idle_anon as f64 / 1e6
    );
    println!(
        "  open files: {fds} (an empty server: {idle_fds}); mappings: {busy_maps} a second after the records, {maps} once idle"
    );
    println!("  produce, one 100 B record a request over all partitions, {CLIENTS} clients: {produce_rate:.0} records/s");
    println!(
        "  restart after kill -9: ready in {:.2} s",
        restart.as_secs_f64()
    );
    println!(
        "RESULT partitions={n} create_per_s={:.0} disk_mb={:.1} rss_file_mb={:.1} rss_anon_mb={:.1} fds={fds} maps_busy={busy_maps} maps={maps} produce_per_s={produce_rate:.0} restart_s={:.2}",
        n as f64 / created.as_secs_f64(),
        disk as f64 / 1e6,
        file as f64 / 1e6,
        anon as f64 / 1e6,
        restart.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let counts: Vec<usize> = std::env::var("MAPQ_BENCH_PARTITIONS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("MAPQ_BENCH_PARTITIONS: numbers, comma separated")
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in counts {
        runtime.block_on(run(n));
    }
}

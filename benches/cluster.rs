//! Replicated produce against single-node produce, in one run: `cargo bench --bench cluster`.
//!
//! A single-node server and a three-node cluster (with its etcd) of this build run side by
//! side on this machine. The same load (`mapq bench --produce-only`: 1 KiB records in
//! batches of 100 as binary frames, four connections, one partition) goes to the
//! single node, then to the leader of a partition replicated three times with
//! `min_insync_replicas` 2, where each answer waits for every in-sync replica (acks=all).
//! Both durabilities. The ratio is cluster / single node; the goal is at least 0.6 with
//! acks=all. All four servers and the load share this machine's cores: the cluster does
//! three times the copying and fsyncing of the single node on the same CPUs and disk.
//!
//! The same again with 16 connections: a replicated write waits a round trip of the
//! followers' fetches, so more producers in flight keep the followers' fetches full.
//!
//! Knobs: `MAPQ_BENCH_RECORDS` (default 200000; fsync runs use a fifth), `MAPQ_BENCH_RUNS`
//! (default 3; the median run is reported).

#[path = "common/server.rs"]
mod server;

#[path = "../tests/common/etcd.rs"]
mod etcd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use server::{env_u64, produce_figures, Server};

/// One producer run: records/s and MB/s, and the latency percentiles of its requests (and
/// `cpu_ms_per_k`: the servers' CPU time per 1,000 records).
type Figures = BTreeMap<String, f64>;

/// CPU time (user and system) a process has used, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (in parentheses): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz.max(1.0)
}

fn cpu_of(servers: &[&Server]) -> f64 {
    servers.iter().map(|s| cpu_ms(s.pid())).sum()
}

fn median(mut runs: Vec<Figures>) -> Figures {
    runs.sort_by(|a, b| a["records_per_s"].total_cmp(&b["records_per_s"]));
    runs.swap_remove(runs.len() / 2)
}

/// `GET url` with a plain HTTP/1.1 request: the body.
fn get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// `POST url` of a JSON body: the status line.
fn post(url: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

fn run(server: &Server, topic: &str, durability: &str, records: u64, connections: u32) -> Figures {
    produce_figures(
        server,
        &[
            "--topic",
            topic,
            "--partitions",
            "1",
            "--records",
            &records.to_string(),
            "--durability",
            durability,
            "--connections",
            &connections.to_string(),
        ],
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env_u64("MAPQ_BENCH_RECORDS", 200_000);
    let runs = env_u64("MAPQ_BENCH_RUNS", 3) as usize;
    let etcd = etcd::Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let single = Server::start(dirs[0].path(), &[]);
    let nodes: Vec<Server> = (1..4)
        .map(|i| {
            let id = format!("n{i}");
            Server::start(
                dirs[i].path(),
                &[
                    ("MAPQ_CLUSTER", "true"),
                    ("MAPQ_ETCD_ENDPOINTS", &etcd.url),
                    ("MAPQ_NODE_ID", &id),
                ],
            )
        })
        .collect();
    // Every node registered before the topic is placed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c: serde_json::Value =
            serde_json::from_str(&get(&format!("{}/v1/cluster", nodes[0].base)))
                .unwrap_or_default();
        if c["nodes"].as_array().is_some_and(|n| n.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not form: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }

    println!("1 KiB records, batches of 100 (binary frames), 1 partition; median of {runs} runs");
    println!(
        "{:<50} {:>12} {:>9} {:>9} {:>9} {:>7} {:>12}",
        "", "records/s", "MB/s", "p50 ms", "p99 ms", "ratio", "CPU ms/1k"
    );
    for (durability, n, connections) in [
        ("memory", records, 4),
        ("memory", records, 16),
        ("fsync", records / 5, 4),
        ("fsync", records / 5, 16),
    ] {
        let mut singles = Vec::new();
        let mut clustered = Vec::new();
        for r in 0..runs {
            // A fresh topic per run, on each side.
            let topic = format!("b-{durability}-{connections}-{r}");
            let status = post(
                &format!("{}/v1/topics", single.base),
                &format!(r#"{{"name":"{topic}","partitions":1}}"#),
            );
            assert!(status.contains("201"), "{status}");
            let before = cpu_of(&[&single]);
            let mut f = run(&single, &topic, durability, n, connections);
            f.insert(
                "cpu_ms_per_k".into(),
                (cpu_of(&[&single]) - before) * 1000.0 / n as f64,
            );
            singles.push(f);
            let status = post(
                &format!("{}/v1/topics", nodes[0].base),
                &format!(
                    r#"{{"name":"{topic}","partitions":1,"replication_factor":3,"min_insync_replicas":2}}"#
                ),
            );
            assert!(status.contains("201"), "{status}");
            let c: serde_json::Value =
                serde_json::from_str(&get(&format!("{}/v1/cluster", nodes[0].base))).unwrap();
            let leader = c["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["topic"] == topic.as_str())
                .and_then(|p| p["leader"].as_str())
                .expect("a leader")
                .to_owned();
            let i: usize = leader[1..].parse::<usize>().unwrap() - 1;
            // The leader has taken up its role and its followers theirs once a write is
            // acknowledged by all three.
            let probe = format!("{}/v1/topics/{topic}/records", nodes[i].base);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !post(&probe, r#"{"records":[{"value":"probe","partition":0}]}"#).contains("200")
            {
                assert!(
                    Instant::now() < deadline,
                    "no write acknowledged on {topic}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let all: Vec<&Server> = nodes.iter().collect();
            let before = cpu_of(&all);
            let mut f = run(&nodes[i], &topic, durability, n, connections);
            f.insert(
                "cpu_ms_per_k".into(),
                (cpu_of(&all) - before) * 1000.0 / n as f64,
            );
            clustered.push(f);
        }
        let (s, c) = (median(singles), median(clustered));
        let ratio = c["records_per_s"] / s["records_per_s"];
        let row = |name: &str, f: &Figures, ratio: Option<f64>| {
            println!(
                "{:<50} {:>12.0} {:>9.1} {:>9.2} {:>9.2} {:>7} {:>12.2}",
                name,
                f["records_per_s"],
                f["mb_per_s"],
                f["p50_us"] / 1000.0,
                f["p99_us"] / 1000.0,
                ratio.map_or("1.00".to_owned(), |r| format!("{r:.2}")),
                f["cpu_ms_per_k"]
            );
        };
        row(
            &format!("single node, {durability}, {connections} connections"),
            &s,
            None,
        );
        row(
            &format!("3 replicas acks=all, {durability}, {connections} conn."),
            &c,
            Some(ratio),
        );
        println!("RESULT cluster_{durability}_c{connections} ratio={ratio:.3}");
    }
    drop(nodes);
    drop(single);
    drop(etcd);
}

//! Consumer groups with members (issue 17), against a real server:
//!
//! 1. Fetch throughput of 4 members of a group sharing a 4-partition topic (each fetching
//!    the records of the partition it owns through `GET /v1/groups/{g}/members/{m}/records`)
//!    against 4 plain partition consumers (`GET .../partitions/{p}/records`) reading the
//!    same records, in the same run: binary (octet-stream) and JSON, alternating, three
//!    rounds; medians and the ratio members / plain.
//! 2. Rebalance time: 4 members with long-polling heartbeats own 12 partitions; a fifth
//!    joins (then leaves); the time from its join (or leave) call until every member owns
//!    exactly its new share, seen by polling `GET /v1/groups/{g}` every millisecond, and the
//!    server's own `mapq_group_last_reconcile_milliseconds`. Ten joins and ten leaves;
//!    median and maximum.
//!
//! `cargo bench --bench groups` (`MAPQ_BENCH_RECORDS`, default 200,000 records of 1 KiB).

#[path = "common/server.rs"]
mod server;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{json, Value};
use server::Server;

const PARTITIONS: u64 = 4;

/// Reads everything a fetcher is given, until `records` records; returns the bytes read.
/// `url` is a partition's records (with `offset=` appended) or a member's records.
async fn drain(
    http: &Client,
    url: &str,
    partition_offsets: bool,
    records: u64,
    octets: bool,
) -> u64 {
    let (mut got, mut bytes, mut next) = (0u64, 0u64, 0u64);
    while got < records {
        let u = if partition_offsets {
            format!("{url}?offset={next}&max_records=5000&max_bytes=4194304")
        } else {
            format!("{url}?max_records=5000&max_bytes=4194304")
        };
        let mut req = http.get(u);
        if octets {
            req = req.header("accept", "application/octet-stream");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        if octets {
            // An empty member answer names no partition and no next offset: no progress.
            let Some(n) = r
                .headers()
                .get("x-mapq-next-offset")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            else {
                continue;
            };
            let body = r.bytes().await.unwrap();
            bytes += body.len() as u64;
            got += n - next;
            next = n;
        } else {
            let body = r.bytes().await.unwrap();
            bytes += body.len() as u64;
            let v: Value = serde_json::from_slice(&body).unwrap();
            let n = v["records"].as_array().unwrap().len() as u64;
            got += n;
            if let Some(nx) = v["next_offset"].as_u64() {
                next = nx;
            }
        }
    }
    bytes
}

/// MB/s of 4 concurrent fetchers, each draining `per` records from its URL.
async fn fetch_rate(urls: Vec<(String, bool)>, per: u64, octets: bool) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|(url, offsets)| {
            tokio::spawn(async move { drain(&Client::new(), &url, offsets, per, octets).await })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

async fn put(http: &Client, url: String, body: Value) -> Value {
    let r = http.put(url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

/// Joins `members` to `group` on `topic` and heartbeats until every one owns its share.
async fn settle(http: &Client, base: &str, group: &str, topic: &str, members: &[String]) {
    let mut state: Vec<(u64, Vec<Value>)> = vec![(0, Vec::new()); members.len()];
    for _ in 0..10 {
        for (m, (epoch, owned)) in members.iter().zip(state.iter_mut()) {
            let a = put(
                http,
                format!("{base}/v1/groups/{group}/members/{m}"),
                json!({"topics": [topic], "member_epoch": *epoch, "owned": owned}),
            )
            .await;
            *epoch = a["member_epoch"].as_u64().unwrap();
            *owned = a["assignment"].as_array().unwrap().clone();
        }
    }
}

/// A member that heartbeats with long-polls, lets go of what it must revoke at once, until
/// `stop` (it does not leave).
fn member_loop(
    base: String,
    group: String,
    topic: String,
    id: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = Client::new();
        let (mut epoch, mut owned) = (0u64, Vec::<Value>::new());
        while !stop.load(Ordering::Relaxed) {
            let r = http
                .put(format!("{base}/v1/groups/{group}/members/{id}"))
                .json(&json!({"topics": [topic], "member_epoch": epoch, "owned": owned, "wait_ms": 500}))
                .send()
                .await;
            let Ok(r) = r else { continue };
            if !r.status().is_success() {
                epoch = 0;
                owned.clear();
                continue;
            }
            // A task nobody awaits: an answer that does not parse starts the member over
            // instead of a panic that would be lost.
            let a: Value = r.json().await.unwrap_or_default();
            match (a["member_epoch"].as_u64(), a["assignment"].as_array()) {
                (Some(e), Some(assignment)) => (epoch, owned) = (e, assignment.clone()),
                _ => (epoch, owned) = (0, Vec::new()),
            }
        }
    })
}

/// Whether every one of `members` members owns its share of 12 partitions.
fn settled(d: &Value, members: usize) -> bool {
    // Not there yet (404 before the first join).
    let Some(ms) = d["members"].as_array() else {
        return false;
    };
    let sizes: Vec<usize> = ms
        .iter()
        .map(|m| m["assignment"].as_array().unwrap().len())
        .collect();
    ms.len() == members
        && sizes.iter().sum::<usize>() == 12
        && sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1
        && ms
            .iter()
            .all(|m| m["revoking"].as_array().unwrap().is_empty())
}

async fn until_settled(http: &Client, base: &str, members: usize) -> Duration {
    let started = Instant::now();
    loop {
        let d: Value = http
            .get(format!("{base}/v1/groups/rebalance"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if settled(&d, members) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never settled: {d}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn last_reconcile_ms(http: &Client, base: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("mapq_group_last_reconcile_milliseconds{group=\"rebalance\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = server::env_u64("MAPQ_BENCH_RECORDS", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.base.clone();
    let http = Client::new();
    let status = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args([
            "bench",
            "--server",
            &base,
            "--topic",
            "t",
            "--keep-topic",
            "--produce-only",
        ])
        .args(["--partitions", "4", "--connections", "4", "--batch", "1000"])
        .args(["--records", &records.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let per = records / PARTITIONS;
    println!("groups bench: {records} records of 1 KiB in 4 partitions, 4 fetchers");

    // 1. Fetch throughput, members against plain partition consumers.
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("binary (octet-stream)", Vec::new(), Vec::new()),
        ("JSON", Vec::new(), Vec::new()),
    ];
    for round in 0..3 {
        for (octets, row) in [true, false].into_iter().zip(rows.iter_mut()) {
            let plain: Vec<(String, bool)> = (0..PARTITIONS)
                .map(|p| (format!("{base}/v1/topics/t/partitions/{p}/records"), true))
                .collect();
            row.1.push(fetch_rate(plain, per, octets).await);
            // A fresh group each time: its members start at the earliest record.
            let group = format!("fetch-{round}-{octets}");
            let members: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
            settle(&http, &base, &group, "t", &members).await;
            let urls = members
                .iter()
                .map(|m| {
                    (
                        format!("{base}/v1/groups/{group}/members/{m}/records"),
                        false,
                    )
                })
                .collect();
            row.2.push(fetch_rate(urls, per, octets).await);
        }
    }
    println!("| fetch, 4 fetchers | plain partition consume MB/s | 4 group members MB/s | members / plain |");
    println!("|---|---|---|---|");
    for (what, plain, members) in rows {
        let (p, m) = (server::median(plain), server::median(members));
        println!("| {what} | {p:.0} | {m:.0} | {:.2} |", m / p);
    }

    // 2. Rebalance time: a fifth member joins 4 that own 12 partitions, then leaves.
    let create = http
        .post(format!("{base}/v1/topics"))
        .json(&json!({"name": "r", "partitions": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 201);
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..4 {
        member_loop(
            base.clone(),
            "rebalance".into(),
            "r".into(),
            format!("m{i}"),
            Arc::clone(&stop),
        );
    }
    until_settled(&http, &base, 4).await;
    let (mut joins, mut leaves, mut server_joins, mut server_leaves) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let fifth = Arc::new(AtomicBool::new(false));
        let id = format!("new{round}");
        let t0 = Instant::now();
        let task = member_loop(
            base.clone(),
            "rebalance".into(),
            "r".into(),
            id.clone(),
            Arc::clone(&fifth),
        );
        until_settled(&http, &base, 5).await;
        joins.push(t0.elapsed().as_secs_f64() * 1e3);
        server_joins.push(last_reconcile_ms(&http, &base).await);
        fifth.store(true, Ordering::Relaxed);
        task.await.unwrap();
        let t0 = Instant::now();
        let r = http
            .delete(format!("{base}/v1/groups/rebalance/members/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        until_settled(&http, &base, 4).await;
        leaves.push(t0.elapsed().as_secs_f64() * 1e3);
        server_leaves.push(last_reconcile_ms(&http, &base).await);
    }
    stop.store(true, Ordering::Relaxed);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "| rebalance, 12 partitions | median ms | max ms | server's reconcile time, median ms |"
    );
    println!("|---|---|---|---|");
    println!(
        "| a 5th member joins 4 | {:.1} | {:.1} | {:.1} |",
        server::median(joins.clone()),
        max(&joins),
        server::median(server_joins)
    );
    println!(
        "| the 5th leaves | {:.1} | {:.1} | {:.1} |",
        server::median(leaves.clone()),
        max(&leaves),
        server::median(server_leaves)
    );
    drop(server);
}

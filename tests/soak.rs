//! A kill -9 soak: a server under load from producers in both durability modes, a consumer
//! committing group offsets and a local tailer, killed with SIGKILL at random moments, cycle
//! after cycle. After each restart: every acknowledged record is there exactly once and in
//! order, committed group offsets never went backwards, and the tailer lost nothing.
//!
//! The normal test run does a few short cycles. For a long soak:
//!   MAPQ_SOAK_CYCLES=20 MAPQ_SOAK_MS=2000 cargo test --release --test soak -- --nocapture
//! It reports records acknowledged, cycles survived, recovery time per restart and the
//! server's resident memory over time. `MAPQ_SOAK_SEED` picks the kill moments (the seed is
//! printed at the start), so a failing run can be repeated.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, Server};
use reqwest::Client;
use serde_json::{json, Value};

/// Resident anonymous memory (heap, stacks), without the mapped segment pages the kernel
/// also counts as resident: that is what must not grow with the data.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no RssAnon in /proc/{pid}/status:\n{status}"))
}

/// Tiny xorshift, seeded: random kill moments that a failure report can reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_soak() {
    let cycles = common::env_u64("MAPQ_SOAK_CYCLES", 3);
    let cycle_ms = common::env_u64("MAPQ_SOAK_MS", 1200);
    let seed = common::env_u64("MAPQ_SOAK_SEED", 0x5eed_1234_abcd_0001);
    println!("soak: {cycles} cycles of ~{cycle_ms} ms, seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let env = [("MAPQ_SEGMENT_BYTES", "131072")];
    let http = Client::new();
    let server = Server::start(dir.path(), &env);
    create_topic(
        &http,
        &server.base,
        json!({"name": "soak", "partitions": 2}),
    )
    .await;

    // The local tailer runs through every cycle, from the first record on.
    let mut tailer = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["tail", "--data-dir"])
        .arg(dir.path())
        .args(["soak", "--partition", "0", "--follow", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tailed: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
    {
        let out = tailer.stdout.take().unwrap();
        let tailed = tailed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap();
                let value = v["value"].as_i64().unwrap();
                tailed
                    .lock()
                    .unwrap()
                    .push((v["offset"].as_u64().unwrap(), value));
            }
        });
    }

    // Acknowledged records: (partition, offset) -> value. Values are unique.
    let acked: Arc<Mutex<BTreeMap<(u32, u64), i64>>> = Arc::default();
    let mut committed_floor = 0u64;
    let mut next_value = 0i64;
    let mut server = Some(server);
    let mut recoveries = Vec::new();
    let mut rss = Vec::new();
    let mut stored = BTreeMap::new();
    for cycle in 0..cycles {
        let base = server.as_ref().unwrap().base.clone();
        let stop = Instant::now() + Duration::from_millis(cycle_ms / 2 + rng.next(cycle_ms));
        let kill_at = stop - Duration::from_millis(rng.next(cycle_ms / 4));
        // Set just before the kill: an error before it fails the test, after it ends the load.
        let killed = Arc::new(AtomicBool::new(false));
        let acked_before = acked.lock().unwrap().len();
        let mut tasks = Vec::new();
        for (producer, durability) in [(0, "memory"), (1, "memory"), (2, "fsync")] {
            let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
            let killed = killed.clone();
            let first = next_value + producer * 10_000_000;
            tasks.push(tokio::spawn(async move {
                let mut value = first;
                let mut batches = 0u64;
                while Instant::now() < stop {
                    let records: Vec<Value> = (0..20)
                        .map(|i| json!({"value": value + i, "partition": (value / 20 % 2) as u32}))
                        .collect();
                    let answer = async {
                        let r = http
                            .post(format!(
                                "{base}/v1/topics/soak/records?durability={durability}"
                            ))
                            .json(&json!({ "records": records }))
                            .send()
                            .await?;
                        Ok::<_, reqwest::Error>((r.status(), r.text().await?))
                    }
                    .await;
                    let text = match answer {
                        Ok((status, text)) => {
                            // Only a running server answers: a refusal is one, kill or not.
                            assert_eq!(status, 200, "{durability} produce refused: {text}");
                            text
                        }
                        // The kill ends the load: a request or answer cut by it is not
                        // acknowledged.
                        Err(_) if killed.load(Ordering::SeqCst) => break,
                        Err(e) => panic!("{durability} produce failed before the kill: {e}"),
                    };
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let offsets = v["offsets"].as_array().expect("offsets");
                    assert_eq!(offsets.len(), 20, "{v}");
                    let mut acked = acked.lock().unwrap();
                    for (i, o) in offsets.iter().enumerate() {
                        let key = (
                            o["partition"].as_u64().unwrap() as u32,
                            o["offset"].as_u64().unwrap(),
                        );
                        acked.insert(key, value + i as i64);
                    }
                    value += 20;
                    batches += 1;
                }
                batches
            }));
        }
        // A consumer committing its position on partition 1 as it goes.
        let committer = {
            let (http, base, killed) = (http.clone(), base.clone(), killed.clone());
            tokio::spawn(async move {
                let mut last_ok = None;
                let mut commits = 0u64;
                while Instant::now() < stop {
                    let answer = async {
                        let r = http
                            .get(format!(
                                "{base}/v1/topics/soak/partitions/1/records?offset=latest"
                            ))
                            .send()
                            .await?;
                        assert_eq!(r.status(), 200, "consume refused");
                        let v = r.json::<Value>().await?;
                        let hwm = v["high_watermark"].as_u64().expect("high_watermark");
                        let body =
                            json!({"offsets": [{"topic": "soak", "partition": 1, "offset": hwm}]});
                        let r = http
                            .put(format!("{base}/v1/groups/c/offsets"))
                            .json(&body)
                            .send()
                            .await?;
                        Ok::<_, reqwest::Error>((hwm, r.status(), r.text().await?))
                    }
                    .await;
                    match answer {
                        Ok((hwm, status, text)) => {
                            assert_eq!(status, 204, "commit of {hwm} refused: {text}");
                            last_ok = Some(hwm);
                            commits += 1;
                        }
                        Err(_) if killed.load(Ordering::SeqCst) => break,
                        Err(e) => panic!("commit failed before the kill: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (commits, last_ok)
            })
        };
        tokio::time::sleep_until(kill_at.into()).await;
        let mut s = server.take().unwrap();
        s.assert_alive("before the kill");
        rss.push(rss_kib(s.child.id()));
        killed.store(true, Ordering::SeqCst);
        s.kill();
        for (producer, t) in tasks.into_iter().enumerate() {
            let batches = t.await.unwrap();
            assert!(
                batches > 0,
                "cycle {cycle}: producer {producer} got no acknowledgement"
            );
        }
        let (commits, last_ok) = committer.await.unwrap();
        assert!(commits > 0, "cycle {cycle}: no group commit landed");
        committed_floor = committed_floor.max(last_ok.unwrap());
        next_value += 100_000_000;

        let started = Instant::now();
        let s = Server::start(dir.path(), &env);
        recoveries.push(started.elapsed());

        // Every acknowledged record, exactly where it was acknowledged.
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            acked_now.len() > acked_before,
            "cycle {cycle}: nothing new was acknowledged"
        );
        stored.clear();
        for partition in 0..2u32 {
            let mut offset = 0;
            loop {
                let v = get_json(
                    &http,
                    format!(
                        "{}/v1/topics/soak/partitions/{partition}/records?offset={offset}&max_records=10000&max_bytes=16000000",
                        s.base
                    ),
                )
                .await;
                let recs = v["records"].as_array().unwrap();
                if recs.is_empty() {
                    break;
                }
                for r in recs {
                    stored.insert(
                        (partition, r["offset"].as_u64().unwrap()),
                        r["value"].as_i64().unwrap(),
                    );
                }
                offset = v["next_offset"].as_u64().unwrap();
            }
        }
        for (key, value) in &acked_now {
            assert_eq!(
                stored.get(key),
                Some(value),
                "cycle {cycle}: acknowledged record {key:?} lost"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for value in stored.values() {
            assert!(
                seen.insert(*value),
                "cycle {cycle}: value {value} stored twice"
            );
        }
        // Group offsets never go backwards.
        let g = get_json(&http, format!("{}/v1/groups/c/offsets", s.base)).await;
        let committed = g["offsets"][0]["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("cycle {cycle}: no committed offset: {g}"));
        assert!(
            committed >= committed_floor,
            "cycle {cycle}: group offset went back"
        );
        committed_floor = committed;
        println!(
            "cycle {cycle}: {} records acknowledged so far, recovery {:?}, server anonymous RSS before the kill {} KiB",
            acked_now.len(),
            recoveries.last().unwrap(),
            rss.last().unwrap()
        );
        server = Some(s);
    }

    // The tailer saw partition 0 exactly as stored: no gap, no duplicate, same values.
    let s = server.unwrap();
    let end = get_json(&http, format!("{}/v1/topics/soak", s.base)).await["partition_stats"][0]
        ["end_offset"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (tailed.lock().unwrap().len() as u64) < end {
        assert!(
            Instant::now() < deadline,
            "the tailer fell behind or stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tailed = tailed.lock().unwrap().clone();
    assert_eq!(tailed.len() as u64, end, "the tailer went past the end");
    for (i, (offset, value)) in tailed.iter().enumerate() {
        assert_eq!(*offset, i as u64, "tailer: gap or duplicate at {i}");
        assert_eq!(
            stored.get(&(0, *offset)),
            Some(value),
            "tailer: not the stored record at {offset}"
        );
    }
    let _ = tailer.kill();
    let _ = tailer.wait();
    let acked = acked.lock().unwrap().len();
    println!(
        "soak: {cycles} cycles survived, {acked} records acknowledged, recovery times {recoveries:?}, anonymous RSS KiB {rss:?}"
    );
    assert!(acked > 0);
    assert!(committed_floor > 0, "no group commit ever landed");
    // The server's own memory does not grow with the data it has stored. Each cycle is a new
    // process whose heap varies with the load of the moment (a few MiB in a short run), so
    // the bound is 2x the first cycle or 64 MiB, whichever is larger: a long soak stores far
    // more than that, and a server that kept it in memory would cross it.
    let (first, last) = (rss[0], *rss.last().unwrap());
    assert!(
        last <= (2 * first).max(64 << 10),
        "anonymous RSS grew from {first} KiB to {last} KiB: {rss:?}"
    );
}

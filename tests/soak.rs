//! A kill -9 soak: a server under load from producers in both durability modes, a consumer
//! committing group offsets and a local tailer, killed with SIGKILL at random moments, cycle
//! after cycle. After each restart: every acknowledged record is there exactly once and in
//! order, committed group offsets never went backwards, and the tailer lost nothing.
//!
//! The normal test run does a few short cycles. For a long soak:
//!   MAPQ_SOAK_CYCLES=50 MAPQ_SOAK_MS=3000 cargo test --release --test soak -- --nocapture
//! It reports records acknowledged, cycles survived, recovery time per restart and the
//! server's resident memory over time.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, Server};
use reqwest::Client;
use serde_json::{json, Value};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident anonymous memory (heap, stacks), without the mapped segment pages the kernel
/// also counts as resident: that is what must not grow with the data.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
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
    let cycles = env_u64("MAPQ_SOAK_CYCLES", 3);
    let cycle_ms = env_u64("MAPQ_SOAK_MS", 1200);
    let seed = env_u64("MAPQ_SOAK_SEED", 0x5eed_1234_abcd_0001);
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
    for cycle in 0..cycles {
        let base = server.as_ref().unwrap().base.clone();
        let stop = Instant::now() + Duration::from_millis(cycle_ms / 2 + rng.next(cycle_ms));
        let mut tasks = Vec::new();
        for (producer, durability) in [(0, "memory"), (1, "memory"), (2, "fsync")] {
            let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
            let first = next_value + producer * 10_000_000;
            tasks.push(tokio::spawn(async move {
                let mut value = first;
                while Instant::now() < stop {
                    let records: Vec<Value> = (0..20)
                        .map(|i| json!({"value": value + i, "partition": (value / 20 % 2) as u32}))
                        .collect();
                    let r = http
                        .post(format!(
                            "{base}/v1/topics/soak/records?durability={durability}"
                        ))
                        .json(&json!({ "records": records }))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    let Ok(v) = r.json::<Value>().await else {
                        return;
                    };
                    let Some(offsets) = v["offsets"].as_array() else {
                        return;
                    };
                    let mut acked = acked.lock().unwrap();
                    for (i, o) in offsets.iter().enumerate() {
                        let key = (
                            o["partition"].as_u64().unwrap() as u32,
                            o["offset"].as_u64().unwrap(),
                        );
                        acked.insert(key, value + i as i64);
                    }
                    value += 20;
                }
            }));
        }
        // A consumer committing its position on partition 1 as it goes.
        let committer = {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut last_ok = None;
                while Instant::now() < stop {
                    let Ok(r) = http
                        .get(format!(
                            "{base}/v1/topics/soak/partitions/1/records?offset=latest"
                        ))
                        .send()
                        .await
                    else {
                        break;
                    };
                    let Ok(v) = r.json::<Value>().await else {
                        break;
                    };
                    let hwm = v["high_watermark"].as_u64().unwrap_or(0);
                    let body =
                        json!({"offsets": [{"topic": "soak", "partition": 1, "offset": hwm}]});
                    match http
                        .put(format!("{base}/v1/groups/c/offsets"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 204 => last_ok = Some(hwm),
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                last_ok
            })
        };
        tokio::time::sleep_until((stop - Duration::from_millis(rng.next(cycle_ms / 4))).into())
            .await;
        let s = server.take().unwrap();
        rss.push(rss_kib(s.child.id()));
        s.kill();
        for t in tasks {
            let _ = t.await;
        }
        if let Ok(Some(c)) = committer.await {
            committed_floor = committed_floor.max(c);
        }
        next_value += 100_000_000;

        let started = Instant::now();
        let s = Server::start(dir.path(), &env);
        recoveries.push(started.elapsed());

        // Every acknowledged record, exactly where it was acknowledged.
        let acked_now = acked.lock().unwrap().clone();
        let mut stored = BTreeMap::new();
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
        let committed = g["offsets"][0]["offset"].as_u64().unwrap_or(0);
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
    for (i, (offset, value)) in tailed.iter().enumerate() {
        assert_eq!(*offset, i as u64, "tailer: gap or duplicate at {i}");
        if let Some(v) = acked.lock().unwrap().get(&(0, *offset)) {
            assert_eq!(v, value, "tailer: wrong record at {offset}");
        }
    }
    let _ = tailer.kill();
    let _ = tailer.wait();
    let acked = acked.lock().unwrap().len();
    println!(
        "soak: {cycles} cycles survived, {acked} records acknowledged, recovery times {recoveries:?}, anonymous RSS KiB {rss:?}"
    );
    assert!(acked > 0);
    assert!(committed_floor > 0, "no group commit ever landed");
}

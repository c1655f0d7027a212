//! Clusters, end to end, with real processes on loopback: an etcd (Debian's, started here)
//! and three `mapq serve --cluster` nodes.
//!
//! The chaos test: a topic of 6 partitions, replication factor 3, `min_insync_replicas` 2;
//! four producers with acks=all (two with `durability=memory`, two with `fsync`) record
//! every acknowledged (producer, sequence) with its offset, while the leader of a
//! partition is killed with SIGKILL and restarted, cycle after cycle, and then a leader is
//! frozen with SIGSTOP past its lease and resumed. Then: every acknowledged record is in
//! the log exactly once at its acknowledged offset on every replica; the replicas are
//! byte-identical up to the high watermark; `mapq verify` finds every data directory
//! clean; a `--replicated-only` tailer saw nothing that is not in the final log; the frozen
//! leader acknowledged nothing sent after its lease ended. It reports the failover times
//! (kill to the first acknowledgement by the new leader).
//!
//! The normal run does 5 kill cycles; a long one:
//!   MAPQ_CLUSTER_CYCLES=50 cargo test --release --test cluster -- --nocapture

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::start_node;
use common::etcd::Etcd;
use common::prom::{scrape, value};
use common::server::{get_json, signal, Server};
use serde_json::{json, Value};

/// The default lease (`cluster_lease_ms`).
const LEASE: Duration = Duration::from_millis(3000);
const PARTITIONS: u32 = 6;

/// Three nodes of one cluster, each restartable on its port and data directory.
struct Nodes {
    etcd: String,
    ids: Vec<String>,
    ports: Vec<u16>,
    /// Kafka listeners' ports, when the nodes have them.
    kafka: Option<Vec<u16>>,
    dirs: Vec<tempfile::TempDir>,
    servers: Vec<Option<Server>>,
    /// More `MAPQ_*` settings of every node.
    env: Vec<(String, String)>,
}

impl Nodes {
    fn start(etcd: &Etcd, n: usize) -> Nodes {
        Self::start_with(etcd, n, false)
    }

    fn start_with(etcd: &Etcd, n: usize, kafka: bool) -> Nodes {
        Self::start_env(etcd, n, kafka, &[])
    }

    fn start_env(etcd: &Etcd, n: usize, kafka: bool, env: &[(&str, &str)]) -> Nodes {
        let mut nodes = Nodes {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            etcd: etcd.url.clone(),
            ids: (1..=n).map(|i| format!("n{i}")).collect(),
            ports: (0..n).map(|_| common::etcd::free_port()).collect(),
            kafka: kafka.then(|| (0..n).map(|_| common::etcd::free_port()).collect()),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            servers: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            nodes.restart(i);
        }
        nodes
    }

    fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "node {i} is running");
        let kafka = self
            .kafka
            .as_ref()
            .map_or(String::new(), |k| format!("127.0.0.1:{}", k[i]));
        let mut env: Vec<(&str, &str)> = vec![("MAPQ_KAFKA_LISTEN", &kafka)];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.servers[i] = Some(start_node(
            self.dirs[i].path(),
            self.ports[i],
            &self.etcd,
            &self.ids[i],
            &env,
        ));
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn index_of(&self, node_id: &str) -> usize {
        self.ids.iter().position(|n| n == node_id).unwrap()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.servers[i].is_some())
            .collect()
    }

    fn kill(&mut self, i: usize) {
        self.servers[i].take().expect("running").kill();
    }
}

/// `GET /v1/cluster` from the first running node that answers.
async fn cluster_state(http: &reqwest::Client, nodes: &Nodes) -> Value {
    for i in nodes.running() {
        if let Ok(r) = http
            .get(format!("{}/v1/cluster", nodes.url(i)))
            .send()
            .await
        {
            if let Ok(v) = r.json::<Value>().await {
                return v;
            }
        }
    }
    panic!("no node answers GET /v1/cluster");
}

fn leader_of(state: &Value, topic: &str, partition: u32) -> Option<String> {
    state["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)?["leader"]
        .as_str()
        .map(str::to_owned)
}

/// Waits until every partition of `topic` (of [`PARTITIONS`]) has a leader and its full
/// replica set in sync.
async fn wait_all_in_sync(http: &reqwest::Client, nodes: &Nodes, topic: &str, limit: Duration) {
    wait_all_in_sync_of(http, nodes, topic, PARTITIONS as usize, limit).await
}

/// Waits until the node at `base` holds `topic` (created in etcd, then on each node).
async fn wait_for_topic(http: &reqwest::Client, base: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{base}/v1/topics/{topic}")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never got topic {topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A record the tailer printed: partition, offset, producer, sequence.
type Tailed = (u32, u64, u64, u64);

/// An acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    producer: u64,
    seq: u64,
    partition: u32,
    offset: u64,
    /// The node that answered, and when the request was sent and answered.
    node: String,
    sent: Instant,
    answered: Instant,
}

/// A producer: one record per request to an explicit partition (spread over all six), to
/// the node it believes leads it; follows 307s (nothing was appended) and retries a
/// request that could not connect (nothing was sent); any other failure leaves that
/// sequence number unacknowledged (its fate unknown) and goes on with the next.
async fn produce(
    http: reqwest::Client,
    producer: u64,
    durability: &'static str,
    urls: Vec<String>,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut leaders: HashMap<u32, String> = HashMap::new();
    let mut seq = 0u64;
    let mut failed = 0u64;
    let mut turn = producer as usize;
    while !stop.load(Ordering::Relaxed) {
        let partition = ((seq + producer) % u64::from(PARTITIONS)) as u32;
        let body =
            json!({"records": [{"value": {"p": producer, "s": seq}, "partition": partition}]});
        let mut hops = 0;
        loop {
            let base = leaders
                .get(&partition)
                .cloned()
                .unwrap_or_else(|| urls[turn % urls.len()].clone());
            let sent = Instant::now();
            let r = http
                .post(format!(
                    "{base}/v1/topics/chaos/records?durability={durability}"
                ))
                .json(&body)
                .send()
                .await;
            hops += 1;
            match r {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    let node = base.clone();
                    acks.lock().unwrap().push(Ack {
                        producer,
                        seq,
                        partition,
                        offset: v["offsets"][0]["offset"].as_u64().unwrap(),
                        node,
                        sent,
                        answered: Instant::now(),
                    });
                    break;
                }
                Ok(r) if r.status() == 307 && hops < 50 => {
                    let location = r.headers()["location"].to_str().unwrap().to_owned();
                    let node = location.split("/v1/").next().unwrap().to_owned();
                    leaders.insert(partition, node);
                }
                Err(e) if e.is_connect() && hops < 50 => {
                    leaders.remove(&partition);
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    // 503 (no leader yet, lease lapsed, too few replicas), a timeout, a
                    // reset: the record's fate is unknown; it is not acknowledged.
                    failed += 1;
                    leaders.remove(&partition);
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
        seq += 1;
    }
    failed
}

/// Every frame of a partition below `hw`, as a node stores them (binary consume).
async fn frames_below(http: &reqwest::Client, base: &str, partition: u32, hw: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < hw {
        let r = http
            .get(format!(
                "{base}/v1/topics/chaos/partitions/{partition}/records?offset={offset}&max_records={}",
                hw - offset
            ))
            .header("accept", "application/octet-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let next: u64 = r.headers()["x-mapq-next-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        out.extend_from_slice(&r.bytes().await.unwrap());
        assert!(
            next > offset,
            "no progress reading {base} partition {partition}"
        );
        offset = next;
    }
    out
}

/// Every record of a partition below `hw` as `offset -> (producer, seq)`.
async fn records_below(
    http: &reqwest::Client,
    base: &str,
    partition: u32,
    hw: u64,
) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    while offset < hw {
        let v: Value = get_json(http, format!(
                "{base}/v1/topics/chaos/partitions/{partition}/records?offset={offset}&max_records=1000"
            )).await;
        for r in v["records"].as_array().unwrap() {
            out.insert(
                r["offset"].as_u64().unwrap(),
                (
                    r["value"]["p"].as_u64().unwrap(),
                    r["value"]["s"].as_u64().unwrap(),
                ),
            );
        }
        offset = v["next_offset"].as_u64().unwrap();
    }
    out
}

/// The high watermark every node reports for `partition` once all are equal to the
/// leader's end (all caught up, nothing being produced).
async fn settled_hw(http: &reqwest::Client, nodes: &Nodes, partition: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut hws = Vec::new();
        let mut ends = Vec::new();
        for i in 0..nodes.ids.len() {
            let s: Value = get_json(http, format!("{}/v1/cluster", nodes.url(i))).await;
            let p = s["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["topic"] == "chaos" && p["partition"] == partition)
                .unwrap()
                .clone();
            hws.push(p["high_watermark"].as_u64().unwrap_or(0));
            let t: Value = get_json(http, format!("{}/v1/topics/chaos", nodes.url(i))).await;
            ends.push(
                t["partition_stats"][partition as usize]["end_offset"]
                    .as_u64()
                    .unwrap(),
            );
        }
        if hws.iter().all(|h| *h == hws[0]) && ends.iter().all(|e| *e == hws[0]) {
            return hws[0];
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} did not settle: high watermarks {hws:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_leader_kills_and_a_frozen_leader() {
    let cycles = common::env_u64("MAPQ_CLUSTER_CYCLES", 5);
    let etcd = Etcd::start();
    let mut nodes = Nodes::start(&etcd, 3);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/v1/topics", nodes.url(0)))
        .json(&json!({"name": "chaos", "partitions": PARTITIONS, "replication_factor": 3, "min_insync_replicas": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    wait_all_in_sync(&http, &nodes, "chaos", Duration::from_secs(20)).await;
    for i in 0..3 {
        wait_for_topic(&http, &nodes.url(i), "chaos").await;
    }

    // A local tailer of node 3's files that shows only what no failover can remove.
    let mut tailer = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["tail", "--data-dir"])
        .arg(nodes.dirs[2].path())
        .args(["chaos", "--follow", "--replicated-only", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tailer_log: Arc<Mutex<String>> = Arc::default();
    {
        let err = tailer.stderr.take().unwrap();
        let log = tailer_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let tailed: Arc<Mutex<Vec<Tailed>>> = Arc::default();
    {
        let out = tailer.stdout.take().unwrap();
        let tailed = tailed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap();
                tailed.lock().unwrap().push((
                    v["partition"].as_u64().unwrap() as u32,
                    v["offset"].as_u64().unwrap(),
                    v["value"]["p"].as_u64().unwrap(),
                    v["value"]["s"].as_u64().unwrap(),
                ));
            }
        });
    }

    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| nodes.url(i)).collect();
    let producers: Vec<_> = [(0, "memory"), (1, "memory"), (2, "fsync"), (3, "fsync")]
        .into_iter()
        .map(|(p, durability)| {
            tokio::spawn(produce(
                http.clone(),
                p,
                durability,
                urls.clone(),
                acks.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut failovers = Vec::new();
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let partition = (cycle % u64::from(PARTITIONS)) as u32;
        let state = cluster_state(&http, &nodes).await;
        let leader = leader_of(&state, "chaos", partition).expect("a leader");
        let victim = nodes.index_of(&leader);
        let killed_url = nodes.url(victim);
        let killed_at = Instant::now();
        nodes.kill(victim);
        // Failover: the first acknowledgement for the partition by another node.
        let deadline = killed_at + Duration::from_secs(30);
        let failover = loop {
            let first = acks
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.partition == partition && a.sent > killed_at && a.node != killed_url)
                .map(|a| a.answered)
                .min();
            if let Some(t) = first {
                break t - killed_at;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no acknowledgement for partition {partition} within 30 s of killing its leader {leader}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        failovers.push(failover);
        println!("cycle {cycle}: killed {leader} (leader of partition {partition}); failover {failover:?}");
        nodes.restart(victim);
        wait_all_in_sync(&http, &nodes, "chaos", Duration::from_secs(30)).await;
    }

    // A leader frozen past its lease, then resumed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = cluster_state(&http, &nodes).await;
    let frozen_id = leader_of(&state, "chaos", 0).expect("a leader");
    let frozen = nodes.index_of(&frozen_id);
    let frozen_url = nodes.url(frozen);
    let frozen_at = Instant::now();
    signal(
        &nodes.servers[frozen].as_ref().unwrap().child,
        libc::SIGSTOP,
    );
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    signal(
        &nodes.servers[frozen].as_ref().unwrap().child,
        libc::SIGCONT,
    );
    println!(
        "froze {frozen_id} (leader of partition 0) for {:?}",
        frozen_at.elapsed()
    );
    wait_all_in_sync(&http, &nodes, "chaos", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    stop.store(true, Ordering::Relaxed);
    let mut unknown = 0;
    for p in producers {
        unknown += p.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert!(
        acks.len() > 100,
        "too few acknowledgements to mean anything: {}",
        acks.len()
    );

    // The frozen leader acknowledged nothing sent after its lease ended.
    let lease_end = frozen_at + LEASE;
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| {
            a.node == frozen_url
                && a.sent > lease_end
                && a.sent < frozen_at + LEASE + Duration::from_secs(2)
        })
        .collect();
    assert!(
        late.is_empty(),
        "the frozen leader acknowledged requests sent after its lease ended: {late:?}"
    );

    // Every replica holds the same bytes up to the high watermark, and every acknowledged
    // record is there exactly once, at its offset.
    let mut finals: HashMap<u32, BTreeMap<u64, (u64, u64)>> = HashMap::new();
    for partition in 0..PARTITIONS {
        let hw = settled_hw(&http, &nodes, partition).await;
        let reference = frames_below(&http, &nodes.url(0), partition, hw).await;
        for i in 1..3 {
            let other = frames_below(&http, &nodes.url(i), partition, hw).await;
            assert!(
                other == reference,
                "partition {partition}: node {} differs from node {} below the high watermark {hw}",
                nodes.ids[i],
                nodes.ids[0]
            );
        }
        let records = records_below(&http, &nodes.url(0), partition, hw).await;
        assert_eq!(records.len() as u64, hw, "partition {partition}: a gap");
        finals.insert(partition, records);
    }
    let mut where_is: HashMap<(u64, u64), Vec<(u32, u64)>> = HashMap::new();
    for (&partition, records) in &finals {
        for (&offset, &ps) in records {
            where_is.entry(ps).or_default().push((partition, offset));
        }
    }
    for a in &acks {
        let found = where_is
            .get(&(a.producer, a.seq))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            found,
            vec![(a.partition, a.offset)],
            "acknowledged record (producer {}, seq {}) at partition {} offset {} (answered by {}) is stored at {found:?}",
            a.producer,
            a.seq,
            a.partition,
            a.offset,
            a.node
        );
    }

    // The replicated-only tailer saw nothing that is not in the final log, once it has
    // read up to the high watermarks (all of it: they are node 3's replicated ends).
    let total: usize = finals.values().map(BTreeMap::len).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tailed.lock().unwrap().len() < total {
        assert!(
            Instant::now() < deadline,
            "the tailer printed {} of the {total} replicated records: {}",
            tailed.lock().unwrap().len(),
            tailer_log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tailer.try_wait().unwrap().is_none(),
        "the tailer stopped: {}",
        tailer_log.lock().unwrap()
    );
    let _ = tailer.kill();
    let _ = tailer.wait();
    let tailed = tailed.lock().unwrap().clone();
    assert!(!tailed.is_empty(), "the tailer printed nothing");
    for (partition, offset, p, s) in &tailed {
        assert_eq!(
            finals[partition].get(offset),
            Some(&(*p, *s)),
            "the --replicated-only tailer printed (producer {p}, seq {s}) at partition {partition} offset {offset}, which the final log does not hold there"
        );
    }

    // Every data directory is clean.
    for i in 0..3 {
        let code = nodes.servers[i].take().unwrap().terminate();
        assert_eq!(code, 0, "node {} did not stop cleanly", nodes.ids[i]);
        let out = Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["verify", "--data-dir"])
            .arg(nodes.dirs[i].path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mapq verify on {}: {}{}",
            nodes.ids[i],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    failovers.sort();
    println!(
        "{} acknowledged, {} of unknown fate; {} tailed; failover (kill to first ack by the new leader) median {:?}, max {:?}",
        acks.len(),
        unknown,
        tailed.len(),
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );
    drop(etcd);
}

/// Posts one record to partition 0 of `topic` on `base`: the status and the body.
async fn produce_one(
    http: &reqwest::Client,
    base: &str,
    topic: &str,
) -> (u16, Value, Option<String>) {
    let r = http
        .post(format!("{base}/v1/topics/{topic}/records"))
        .json(&json!({"records": [{"value": "x", "partition": 0}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), location)
}

/// The end offset of partition 0 of `topic` on `base`.
async fn end_offset(http: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let t: Value = get_json(http, format!("{base}/v1/topics/{topic}")).await;
    t["partition_stats"][0]["end_offset"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_get_clear_answers_and_lose_nothing() {
    let mut etcd = Etcd::start();
    let mut nodes = Nodes::start(&etcd, 3);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // A topic in etcd that no node can create (written there by hand, bypassing the
    // checks): the nodes say so in their logs, and take up every other role all the same.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let put = http
        .post(format!("{}/v3/kv/put", etcd.url))
        .json(&json!({
            "key": b64("/mapq/topics/bad"),
            "value": b64(r#"{"partitions":1,"replication_factor":1,"min_insync_replicas":1,"overrides":{"segment_bytes":1}}"#),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let r = http
        .post(format!("{}/v1/topics", nodes.url(0)))
        .json(&json!({"name": "f", "partitions": 1, "replication_factor": 3, "min_insync_replicas": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..3 {
        wait_for_topic(&http, &nodes.url(i), "f").await;
    }
    let state = cluster_state(&http, &nodes).await;
    assert_eq!(state["nodes"].as_array().unwrap().len(), 3, "{state}");
    assert!(state["controller"].is_string(), "{state}");
    let leader_id = leader_of(&state, "f", 0).unwrap();
    let leader = nodes.index_of(&leader_id);
    let follower = (leader + 1) % 3;

    // The leader's metrics, read by a Prometheus parser: the partition fully replicated;
    // every metric the cluster alerts use is exported.
    let m = scrape(&http, &nodes.url(leader)).await;
    let f0 = [("topic", "f"), ("partition", "0")];
    assert_eq!(value(&m, "mapq_cluster_isr_size", &f0), 3.0);
    assert_eq!(value(&m, "mapq_cluster_replicas", &f0), 3.0);
    assert_eq!(
        value(&m, "mapq_cluster_under_replicated_partitions", &[]),
        0.0
    );
    assert_eq!(value(&m, "mapq_cluster_etcd_session_up", &[]), 1.0);
    assert_eq!(value(&m, "mapq_cluster_nodes_alive", &[]), 3.0);
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/prometheus/cluster-alerts.yml"),
    )
    .unwrap();
    let used: std::collections::BTreeSet<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mapq_cluster_"))
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    for name in used {
        assert!(
            m.families.contains_key(name),
            "{name} is used by cluster-alerts.yml but not exported"
        );
    }

    // A write to a follower: 307 to the leader, naming it; nothing appended there.
    let (status, body, location) = produce_one(&http, &nodes.url(follower), "f").await;
    assert_eq!(status, 307, "{body}");
    assert_eq!(body["error"]["code"], "not_leader");
    assert_eq!(body["error"]["leader"], leader_id.as_str());
    assert_eq!(
        location.as_deref(),
        Some(format!("{}/v1/topics/f/records", nodes.url(leader)).as_str())
    );
    let (status, body, _) = produce_one(&http, &nodes.url(leader), "f").await;
    assert_eq!(status, 200, "{body}");

    // A group is served by one node, its coordinator; the others send its requests there.
    let mut coordinators = Vec::new();
    for i in 0..3 {
        let r = http
            .put(format!("{}/v1/groups/hg/members/m1", nodes.url(i)))
            .json(&json!({"topics": ["f"], "member_epoch": 0}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => coordinators.push(i),
            307 => {
                let location = r.headers()["location"].to_str().unwrap().to_owned();
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "not_leader", "{body}");
                let to = nodes.index_of(body["error"]["leader"].as_str().unwrap());
                assert_eq!(
                    location,
                    format!("{}/v1/groups/hg/members/m1", nodes.url(to))
                );
            }
            other => panic!("{other}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!(
        coordinators.len(),
        1,
        "group hg answered by {coordinators:?}"
    );

    // The leader killed and restarted before its lease ran out: it leads again, under a
    // new epoch, and what it acknowledged is still there.
    let epoch_of = |s: &Value| {
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "f")
            .unwrap()["leader_epoch"]
            .as_u64()
            .unwrap()
    };
    let before_epoch = epoch_of(&cluster_state(&http, &nodes).await);
    let end_before = end_offset(&http, &nodes.url(leader), "f").await;
    nodes.kill(leader);
    nodes.restart(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cluster_state(&http, &nodes).await;
        if epoch_of(&s) > before_epoch && leader_of(&s, "f", 0).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new epoch after a quick restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_all_in_sync_of(&http, &nodes, "f", 1, Duration::from_secs(20)).await;
    let state = cluster_state(&http, &nodes).await;
    let leader_id = leader_of(&state, "f", 0).unwrap();
    let leader = nodes.index_of(&leader_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body, _) = produce_one(&http, &nodes.url(leader), "f").await;
        if status == 200 {
            assert_eq!(
                body["offsets"][0]["offset"].as_u64().unwrap(),
                end_before,
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // acks=leader answers once the leader has the records; acks=all waits for the in-sync
    // followers, here frozen (still in the set, their lag not yet over replica_lag_ms).
    wait_all_in_sync_of(&http, &nodes, "f", 1, Duration::from_secs(20)).await;
    let frozen: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &frozen {
        signal(&nodes.servers[i].as_ref().unwrap().child, libc::SIGSTOP);
    }
    let produce_acks = |acks: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/topics/f/records?acks={acks}", nodes.url(leader));
        async move {
            let sent = Instant::now();
            let r = http
                .post(url)
                .timeout(Duration::from_millis(1500))
                .json(&json!({"records": [{"value": acks, "partition": 0}]}))
                .send()
                .await;
            (r.map(|r| r.status().as_u16()).ok(), sent.elapsed())
        }
    };
    let (status, took) = produce_acks("leader").await;
    assert_eq!(status, Some(200), "acks=leader with frozen followers");
    assert!(
        took < Duration::from_millis(1000),
        "acks=leader took {took:?}"
    );
    let (status, _) = produce_acks("all").await;
    assert_eq!(
        status, None,
        "acks=all answered while every follower was frozen"
    );
    for &i in &frozen {
        signal(&nodes.servers[i].as_ref().unwrap().child, libc::SIGCONT);
    }
    wait_all_in_sync_of(&http, &nodes, "f", 1, Duration::from_secs(30)).await;

    // A partition with one replica: the other nodes send its reads to it.
    let r = http
        .post(format!("{}/v1/topics", nodes.url(0)))
        .json(&json!({"name": "one", "partitions": 1, "replication_factor": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let state = cluster_state(&http, &nodes).await;
    let holder = nodes.index_of(&leader_of(&state, "one", 0).unwrap());
    for i in (0..3).filter(|&i| i != holder) {
        wait_for_topic(&http, &nodes.url(i), "one").await;
        let r = http
            .get(format!(
                "{}/v1/topics/one/partitions/0/records?offset=0",
                nodes.url(i)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307, "a read on a node without a replica");
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!(
                "{}/v1/topics/one/partitions/0/records?offset=0",
                nodes.url(holder)
            )
        );
    }

    // A second node under an id in use: refused, and it says why.
    let other = tempfile::tempdir().unwrap();
    let env = common::cluster::node_env(&nodes.etcd, &leader_id, &[]);
    let (code, stderr) = refused_start(other.path(), env);
    assert_ne!(code, 0, "a second {leader_id} started");
    assert!(
        stderr.contains(&format!("node_id \"{leader_id}\" is in use by a live node")),
        "{stderr}"
    );

    // Too few in-sync replicas: both followers gone, the write is refused, nothing appended.
    let before = end_offset(&http, &nodes.url(leader), "f").await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        nodes.kill(i);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body, _) = produce_one(&http, &nodes.url(leader), "f").await;
        if status == 503 && body["error"]["code"] == "not_enough_replicas" {
            break body;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("min_insync_replicas"),
        "{body}"
    );
    let (status, _, _) = produce_one(&http, &nodes.url(leader), "f").await;
    assert_eq!(status, 503);
    let m = scrape(&http, &nodes.url(leader)).await;
    assert_eq!(value(&m, "mapq_cluster_isr_size", &f0), 1.0);
    assert_eq!(
        value(&m, "mapq_cluster_under_replicated_partitions", &[]),
        1.0
    );
    assert_eq!(value(&m, "mapq_cluster_under_min_isr_partitions", &[]), 1.0);
    let after = end_offset(&http, &nodes.url(leader), "f").await;
    assert!(
        after <= before + 1,
        "refused writes appended records: end {before} -> {after}"
    );
    // A data directory of another node is refused.
    let stale = followers[0];
    let env = common::cluster::node_env(&nodes.etcd, "intruder", &[]);
    let (code, stderr) = refused_start(nodes.dirs[stale].path(), env);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("belongs to node \"{}\"", nodes.ids[stale])),
        "{stderr}"
    );
    // The followers come back (with their stale data) and catch up.
    for &i in &followers {
        nodes.restart(i);
    }
    wait_all_in_sync_of(&http, &nodes, "f", 1, Duration::from_secs(30)).await;
    let (status, body, _) = produce_one(&http, &nodes.url(leader), "f").await;
    assert_eq!(status, 200, "{body}");

    // etcd unreachable: once its lease may have lapsed, the leader acknowledges nothing,
    // with a clear error; nobody takes its leadership.
    let acked_before = end_offset(&http, &nodes.url(leader), "f").await;
    etcd.kill();
    let killed = Instant::now();
    let refused = loop {
        let (status, body, _) = produce_one(&http, &nodes.url(leader), "f").await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            killed.elapsed() < LEASE + Duration::from_secs(2),
            "still acknowledging {:?} after etcd went away",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        killed.elapsed() <= LEASE + Duration::from_secs(2),
        "acknowledged for {:?} without etcd",
        killed.elapsed()
    );
    assert_eq!(
        refused["error"]["code"], "leader_not_available",
        "{refused}"
    );
    let m = scrape(&http, &nodes.url(leader)).await;
    assert_eq!(value(&m, "mapq_cluster_etcd_session_up", &[]), 0.0);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("etcd"),
        "{refused}"
    );
    // etcd back: the nodes register again and writes are acknowledged again, with every
    // record acknowledged before still there.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body, location) = produce_one(&http, &nodes.url(leader), "f").await;
        if status == 200 {
            break;
        }
        if status == 307 {
            let (s2, b2, _) =
                produce_one(&http, location.unwrap().split("/v1/").next().unwrap(), "f").await;
            if s2 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no write accepted after etcd came back: {s2} {b2}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "no write accepted after etcd came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = cluster_state(&http, &nodes).await;
    let leader_now = nodes.index_of(&leader_of(&state, "f", 0).unwrap());
    assert!(end_offset(&http, &nodes.url(leader_now), "f").await > acked_before);
    drop(etcd);
}

/// Runs `mapq serve` on `dir` with `env`, expecting it to stop by itself: its exit code
/// and standard error.
fn refused_start(dir: &std::path::Path, env: Vec<(String, String)>) -> (i32, String) {
    let mut cmd = common::server::serve_command("127.0.0.1:0", "");
    cmd.arg("--data-dir").arg(dir).envs(env);
    let out = common::server::output_with_deadline(&mut cmd, b"", Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`wait_all_in_sync`] for a topic of `partitions` partitions.
async fn wait_all_in_sync_of(
    http: &reqwest::Client,
    nodes: &Nodes,
    topic: &str,
    partitions: usize,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let s = cluster_state(http, nodes).await;
        let parts: Vec<&Value> = s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["topic"] == topic)
            .collect();
        let ok = parts.len() == partitions
            && parts.iter().all(|p| {
                !p["leader"].is_null()
                    && p["isr"].as_array().map(Vec::len) == p["replicas"].as_array().map(Vec::len)
            });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} not in sync within {limit:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_find_each_partitions_leader() {
    use common::kafka::{batch, KafkaClient};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{MetadataRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let etcd = Etcd::start();
    let nodes = Nodes::start_with(&etcd, 3, true);
    let kafka: Vec<String> = nodes
        .kafka
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/topics", nodes.url(0)))
        .json(&json!({"name": "k", "partitions": 3, "replication_factor": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..3 {
        wait_for_topic(&http, &nodes.url(i), "k").await;
    }
    wait_all_in_sync_of(&http, &nodes, "k", 3, Duration::from_secs(20)).await;
    let state = cluster_state(&http, &nodes).await;

    // Metadata, from any node: every node as a broker, each partition's leader and epoch.
    let mut c = KafkaClient::connect(&kafka[2]);
    let mut all = MetadataRequest::default();
    all.topics = None;
    let meta = c.call(9, &all);
    assert_eq!(meta.brokers.len(), 3);
    for (i, id) in nodes.ids.iter().enumerate() {
        let b = meta
            .brokers
            .iter()
            .find(|b| b.node_id.0 == mapq::cluster::kafka_broker_id(id))
            .unwrap_or_else(|| panic!("{id} is not among the brokers"));
        assert_eq!(format!("{}:{}", b.host, b.port), kafka[i]);
    }
    let topic = meta
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "k"))
        .unwrap();
    for p in &topic.partitions {
        let leader = leader_of(&state, "k", p.partition_index as u32).unwrap();
        assert_eq!(p.leader_id.0, mapq::cluster::kafka_broker_id(&leader));
        assert_eq!(p.replica_nodes.len(), 3);
        assert_eq!(p.isr_nodes.len(), 3);
    }

    // A produce to a follower: NOT_LEADER_OR_FOLLOWER, nothing appended; to the leader: stored.
    let produce = |index: i32| {
        let mut p = PartitionProduceData::default();
        p.index = index;
        p.records = Some(batch(0, 2, None));
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str("k"));
        t.partition_data = vec![p];
        let mut r = ProduceRequest::default();
        r.acks = -1;
        r.timeout_ms = 10_000;
        r.topic_data = vec![t];
        r
    };
    let leader = nodes.index_of(&leader_of(&state, "k", 0).unwrap());
    let follower = (leader + 1) % 3;
    let mut f = KafkaClient::connect(&kafka[follower]);
    let r = f.call(9, &produce(0));
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        kafka_protocol::ResponseError::NotLeaderOrFollower.code()
    );
    let mut l = KafkaClient::connect(&kafka[leader]);
    let r = l.call(9, &produce(0));
    let p = &r.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));

    // A real client (librdkafka) bootstrapped from one node produces with acks=all to
    // every partition's leader, and reads everything back from another.
    common::kafka::clients();
    // (One partition per run: each run's writes go to that partition's leader.)
    for partition in 0..3 {
        let lines: String = (0..10).map(|i| format!("m{partition}-{i}\n")).collect();
        let mut kcat = Command::new("kcat");
        kcat.args([
            "-b",
            &kafka[0],
            "-P",
            "-t",
            "k",
            "-p",
            &partition.to_string(),
        ])
        .args(["-X", "acks=all", "-X", "socket.timeout.ms=10000"]);
        let out = common::server::output_with_deadline(
            &mut kcat,
            lines.as_bytes(),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "kcat -P: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut kcat = Command::new("kcat");
    kcat.args([
        "-b",
        &kafka[1],
        "-C",
        "-t",
        "k",
        "-e",
        "-q",
        "-f",
        "%p:%s\n",
        "-X",
        "socket.timeout.ms=10000",
    ]);
    let out = common::server::output_with_deadline(&mut kcat, b"", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "kcat -C: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut got: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(_, v)| v))
        .filter(|v| v.starts_with('m'))
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..10).map(move |i| format!("m{p}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "{text}");
    // Each record in the partition it was sent to.
    assert!(
        text.lines()
            .filter(|l| l.contains(":m"))
            .all(|l| l[..1] == l[3..4]),
        "{text}"
    );

    // A consumer group (librdkafka) commits; its offsets outlive its coordinator.
    let confluent = |bootstrap: &str, args: &[&str]| {
        let mut c = Command::new(common::python());
        c.arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/kafka_confluent.py"),
        )
        .args(["consume", bootstrap, "k", "kg"])
        .args(args);
        let out = common::server::output_with_deadline(&mut c, b"", Duration::from_secs(90));
        assert!(
            out.status.success(),
            "confluent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<Value>>()
    };
    let first = confluent(&kafka[0], &["10", "10"]);
    let last = first.last().unwrap();
    let (cp, co) = (
        last["partition"].as_u64().unwrap(),
        last["offset"].as_u64().unwrap() + 1,
    );
    // Every node serves the commit (it is in etcd).
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v: Value = get_json(&http, format!("{}/v1/groups/kg/offsets", nodes.url(i))).await;
            let seen = v["offsets"]
                .as_array()
                .is_some_and(|o| o.iter().any(|e| e["partition"] == cp && e["offset"] == co));
            if seen {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not show the commit: {v}",
                nodes.ids[i]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The coordinator, as FindCoordinator names it, dies.
    let mut find = kafka_protocol::messages::FindCoordinatorRequest::default();
    find.key = StrBytes::from_static_str("kg");
    let coordinator = KafkaClient::connect(&kafka[0]).call(2, &find).node_id.0;
    let dead = (0..3)
        .find(|&i| mapq::cluster::kafka_broker_id(&nodes.ids[i]) == coordinator)
        .expect("the coordinator is a node");
    let mut nodes = nodes;
    nodes.kill(dead);
    let survivor = (dead + 1) % 3;
    // The group goes on from its commit on another coordinator.
    let second = confluent(&kafka[survivor], &["40"]);
    for r in &second {
        let (p, o) = (
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        );
        assert!(
            p != cp || o >= co,
            "after its coordinator died the group read partition {p} offset {o} again, below its commit {co}"
        );
    }
    assert!(
        !second.is_empty(),
        "the group read nothing after its coordinator died"
    );
    drop(etcd);
}

/// Sends a JSON request to the node `nodes.url(i)` first, following 307s to the node named
/// in `Location`, and trying the other running nodes and again (up to 30 s) while the
/// answer is a 503 or no answer: the status and body of the first other answer.
async fn call(
    http: &reqwest::Client,
    nodes: &Nodes,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut turn = 0;
    loop {
        let running = nodes.running();
        let mut url = format!("{}{path}", nodes.url(running[turn % running.len()]));
        turn += 1;
        for _ in 0..3 {
            let mut req = http.request(method.clone(), &url);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let Ok(r) = req.send().await else {
                break;
            };
            let status = r.status().as_u16();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            match (status, location) {
                (307, Some(to)) => url = to,
                (503, _) => break,
                _ => return (status, body),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path}: no node answered but with 503 or nothing for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first offset of the queue group journal's replica in a node's data directory.
fn journal_start(data_dir: &std::path::Path, group: &str) -> u64 {
    let dir = data_dir.join("@queues").join(group).join("cluster-journal");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse::<u64>().ok()
                })
                .min()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A leased record: partition, offset, lease token, delivery.
type Leased = (u32, u64, String, u64);

async fn lease(http: &reqwest::Client, nodes: &Nodes, group: &str, max: usize) -> Vec<Leased> {
    let (status, body) = call(
        http,
        nodes,
        reqwest::Method::POST,
        &format!("/v1/groups/{group}/leases"),
        Some(json!({"member": "w", "max_records": max, "wait_ms": 500})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap() as u32,
                r["offset"].as_u64().unwrap(),
                r["lease"].as_str().unwrap().to_owned(),
                r["delivery"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Acks `leases` with `kind`: each one's status.
async fn ack(
    http: &reqwest::Client,
    nodes: &Nodes,
    group: &str,
    leases: &[&Leased],
    kind: &str,
) -> Vec<String> {
    let acks: Vec<Value> = leases
        .iter()
        .map(|l| json!({"lease": l.2, "type": kind}))
        .collect();
    let (status, body) = call(
        http,
        nodes,
        reqwest::Method::POST,
        &format!("/v1/groups/{group}/acks"),
        Some(json!({ "acks": acks })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Groups outlive the node that coordinates them: a queue group's journal is replicated
/// and its next leader takes the group up (leases granted before the kill can still be
/// acked, accepted records never come back, delivery counts go on), and a group with
/// members keeps its settings, members and epochs in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_outlive_their_coordinators() {
    let etcd = Etcd::start();
    // Journals compacted every 20 events: compaction and its following on the replicas run
    // through the failover too.
    let mut nodes = Nodes::start_env(&etcd, 3, false, &[("MAPQ_QUEUE_SNAPSHOT_EVERY", "20")]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (status, body) = call(
        &http,
        &nodes,
        reqwest::Method::POST,
        "/v1/topics",
        Some(json!({"name": "jobs", "partitions": 2, "replication_factor": 3, "min_insync_replicas": 2})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for i in 0..3 {
        wait_for_topic(&http, &nodes.url(i), "jobs").await;
    }
    for partition in 0..2u32 {
        let records: Vec<Value> = (0..50)
            .map(|k| json!({"value": format!("job {partition}/{k}"), "partition": partition}))
            .collect();
        let (status, body) = call(
            &http,
            &nodes,
            reqwest::Method::POST,
            "/v1/topics/jobs/records",
            Some(json!({ "records": records })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // A queue group, and a group with members with a long session.
    let settings =
        json!({"type": "queue", "topics": ["jobs"], "lease_ms": 60000, "max_deliveries": 5});
    let (status, body) = call(
        &http,
        &nodes,
        reqwest::Method::PUT,
        "/v1/groups/q",
        Some(settings),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &http,
        &nodes,
        reqwest::Method::PUT,
        "/v1/groups/m",
        Some(json!({"type": "partitioned", "session_timeout_ms": 60000})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, joined) = call(
        &http,
        &nodes,
        reqwest::Method::PUT,
        "/v1/groups/m/members/w1",
        Some(json!({"topics": ["jobs"], "member_epoch": 0})),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    let epoch = joined["member_epoch"].as_u64().unwrap();

    // Dead letters go to the dead-letter partition's leader, once each, whichever node
    // coordinates the group.
    let (status, body) = call(
        &http,
        &nodes,
        reqwest::Method::PUT,
        "/v1/groups/d",
        Some(json!({"type": "queue", "topics": ["jobs"], "lease_ms": 200, "max_deliveries": 1, "dead_letter_topic": "jobs.dlq"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(lease(&http, &nodes, "d", 3).await.len(), 3);
    let dead_letters = || async {
        let (_, dlq) = call(
            &http,
            &nodes,
            reqwest::Method::GET,
            "/v1/topics/jobs.dlq/partitions/0/records?offset=0",
            None,
        )
        .await;
        dlq["records"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let records = dead_letters().await;
        if records.len() >= 3 {
            break records;
        }
        assert!(Instant::now() < deadline, "dead letters: {records:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // And no more (each once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dead_letters().await.len(), 3);
    let origins: std::collections::BTreeSet<(String, String)> = dead
        .iter()
        .map(|r| {
            assert_eq!(r["headers"]["dlq.group"], "d", "{r}");
            assert_eq!(r["headers"]["dlq.reason"], "max_deliveries", "{r}");
            (
                r["headers"]["dlq.partition"].as_str().unwrap().to_owned(),
                r["headers"]["dlq.offset"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(origins.len(), 3, "{dead:?}");
    let (_, d) = call(&http, &nodes, reqwest::Method::GET, "/v1/groups/d", None).await;
    assert_eq!(d["dead_lettered"], 3, "{d}");

    // The queue group's journal is replicated on all three nodes before the kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    let coordinator = loop {
        let state = cluster_state(&http, &nodes).await;
        let journal = state["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "@queue.q")
            .cloned();
        if let Some(j) = journal.filter(|j| j["isr"].as_array().unwrap().len() == 3) {
            break j["leader"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the journal never had 3 in-sync replicas: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // 40 leased, 30 of them accepted; 10 in flight when the coordinator dies.
    let mut leased = Vec::new();
    while leased.len() < 40 {
        leased.extend(lease(&http, &nodes, "q", 40 - leased.len()).await);
    }
    assert!(leased.iter().all(|l| l.3 == 1), "{leased:?}");
    let (accepted, in_flight) = leased.split_at(30);
    let accepted: Vec<&Leased> = accepted.iter().collect();
    assert!(ack(&http, &nodes, "q", &accepted, "accept")
        .await
        .iter()
        .all(|s| s == "ok"));

    nodes.kill(nodes.index_of(&coordinator));

    // The next coordinator honours the leases granted before the kill: five accepted,
    // five released (due again at once, on their second delivery).
    let (to_accept, to_release) = in_flight.split_at(5);
    let to_accept: Vec<&Leased> = to_accept.iter().collect();
    let to_release: Vec<&Leased> = to_release.iter().collect();
    assert_eq!(
        ack(&http, &nodes, "q", &to_accept, "accept").await,
        vec!["ok"; 5]
    );
    assert_eq!(
        ack(&http, &nodes, "q", &to_release, "release").await,
        vec!["ok"; 5]
    );
    let state = cluster_state(&http, &nodes).await;
    assert_ne!(
        leader_of(&state, "@queue.q", 0).as_deref(),
        Some(coordinator.as_str())
    );

    // What is left: the 60 never leased (first delivery), the 5 released (second); never
    // an accepted one.
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rest.len() < 65 {
        rest.extend(lease(&http, &nodes, "q", 65 - rest.len()).await);
        assert!(
            Instant::now() < deadline,
            "only {} records came back",
            rest.len()
        );
    }
    assert!(
        lease(&http, &nodes, "q", 10).await.is_empty(),
        "more than the 65 left"
    );
    let done: std::collections::BTreeSet<(u32, u64)> = accepted
        .iter()
        .chain(&to_accept)
        .map(|l| (l.0, l.1))
        .collect();
    let released: std::collections::BTreeSet<(u32, u64)> =
        to_release.iter().map(|l| (l.0, l.1)).collect();
    let mut seen = std::collections::BTreeSet::new();
    for (partition, offset, _, delivery) in &rest {
        assert!(
            !done.contains(&(*partition, *offset)),
            "accepted {partition}/{offset} came back"
        );
        assert!(
            seen.insert((*partition, *offset)),
            "{partition}/{offset} leased twice"
        );
        let expected = if released.contains(&(*partition, *offset)) {
            2
        } else {
            1
        };
        assert_eq!(*delivery, expected, "{partition}/{offset}");
    }
    assert_eq!(seen.len() + done.len(), 100);
    let (status, q) = call(&http, &nodes, reqwest::Method::GET, "/v1/groups/q", None).await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["settings"]["lease_ms"], 60000, "{q}");
    assert_eq!(q["in_flight"], 65, "{q}");

    // The group with members: its coordinator killed too (the first node back first),
    // then its settings, its member and its epoch are the next coordinator's; the
    // member's heartbeat at its epoch is answered, not fenced.
    nodes.restart(nodes.index_of(&coordinator));
    // The journal was compacted while the first coordinator was away: its leader deleted
    // what the snapshots replaced, and the returning node, whose journal ended before the
    // leader's start, started its replica again there and caught up (all three in sync).
    let returning = nodes.index_of(&coordinator);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = cluster_state(&http, &nodes).await;
        let leader = leader_of(&state, "@queue.q", 0).map(|l| nodes.index_of(&l));
        let isr = state["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "@queue.q")
            .map_or(0, |p| p["isr"].as_array().unwrap().len());
        let starts: Vec<u64> = (0..3)
            .map(|i| journal_start(nodes.dirs[i].path(), "q"))
            .collect();
        if isr == 3 && leader.is_some_and(|l| starts[l] > 0) && starts[returning] > 0 {
            break;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes
                .servers
                .iter()
                .flatten()
                .map(|s| {
                    s.log_text()
                        .lines()
                        .filter(|l| l.contains("queue") || l.contains("journal"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "journal starts {starts:?} (leader {leader:?}, returning {returning}, {isr} in sync); logs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, q) = call(&http, &nodes, reqwest::Method::GET, "/v1/groups/q", None).await;
    assert_eq!((status, &q["in_flight"]), (200, &json!(65)), "{q}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let m_coordinator = loop {
        let mut answering = Vec::new();
        for i in nodes.running() {
            let r = http
                .get(format!("{}/v1/groups/m", nodes.url(i)))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                answering.push(i);
            }
        }
        if let [i] = answering[..] {
            if nodes.running().len() == 3 {
                break i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single coordinator of group m: {answering:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    nodes.kill(m_coordinator);
    let (status, m) = call(&http, &nodes, reqwest::Method::GET, "/v1/groups/m", None).await;
    assert_eq!(status, 200, "{m}");
    let members = m["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{m}");
    assert_eq!(members[0]["member"], "w1", "{m}");
    let (status, beat) = call(
        &http,
        &nodes,
        reqwest::Method::PUT,
        "/v1/groups/m/members/w1",
        Some(json!({"topics": ["jobs"], "member_epoch": epoch, "owned": joined["assignment"].as_array().unwrap().iter().map(|a| json!({"topic": a["topic"], "partition": a["partition"]})).collect::<Vec<_>>()})),
    )
    .await;
    assert_eq!(status, 200, "{beat}");
    assert_eq!(beat["session_timeout_ms"], 60000, "{beat}");
    assert_eq!(beat["assignment"].as_array().unwrap().len(), 2, "{beat}");
    // The queue group, wherever it is led now (perhaps by the replica that started again
    // at a snapshot), still holds its 65 leases.
    let (status, q) = call(&http, &nodes, reqwest::Method::GET, "/v1/groups/q", None).await;
    assert_eq!((status, &q["in_flight"]), (200, &json!(65)), "{q}");
    drop(etcd);
}

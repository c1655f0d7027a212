//! The engine's failure paths, end to end: a real server whose msync, fallocate or rename
//! fails on demand (the `failpoints` feature, which the crate turns on for its own tests;
//! see `src/log/failpoint.rs`). What a user must see: a clear error for the request that hit
//! the fault, and nothing acknowledged lost, before or after a restart.

mod common;

use common::server::{get_json, Server};
use reqwest::Client;
use serde_json::{json, Value};

/// A data directory, a failpoint directory and a client: what each test starts a server on.
struct Rig {
    data: tempfile::TempDir,
    faults: tempfile::TempDir,
    http: Client,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            data: tempfile::tempdir().unwrap(),
            faults: tempfile::tempdir().unwrap(),
            http: Client::new(),
        }
    }

    /// A server on the data directory, with the failpoints and `extra` settings.
    fn start(&self, extra: &[(&str, &str)]) -> Server {
        let mut env = vec![
            ("MAPQ_FAILPOINTS_DIR", self.faults.path().to_str().unwrap()),
            ("MAPQ_DEFAULT_PARTITIONS", "1"),
        ];
        env.extend_from_slice(extra);
        Server::start(self.data.path(), &env)
    }

    /// Arms failpoint `name` (the next calls fail) or disarms it.
    fn arm(&self, name: &str, on: bool) {
        let path = self.faults.path().join(name);
        if on {
            std::fs::write(&path, b"").unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// Produces `values` to topic `t` with `durability`; the status and the JSON answer.
async fn produce(
    http: &Client,
    server: &Server,
    durability: &str,
    values: &[Value],
) -> (u16, Value) {
    let records: Vec<Value> = values.iter().map(|v| json!({ "value": v })).collect();
    let r = http
        .post(server.url(&format!("/v1/topics/t/records?durability={durability}")))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every record of partition 0, in order: (offset, value).
async fn all_records(http: &Client, server: &Server) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = get_json(
            http,
            server.url(&format!(
                "/v1/topics/t/partitions/0/records?offset={offset}&max_records=1000"
            )),
        )
        .await;
        let recs = r["records"].as_array().expect("a records array").clone();
        if recs.is_empty() {
            return out;
        }
        for rec in recs {
            offset = rec["offset"].as_u64().unwrap() + 1;
            out.push((offset - 1, rec["value"].clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_msync_stops_the_partition_and_loses_nothing_acknowledged() {
    let rig = Rig::new();
    let http = &rig.http;
    let server = rig.start(&[]);
    let (status, _) = produce(http, &server, "fsync", &[json!(0), json!(1), json!(2)]).await;
    assert_eq!(status, 200);

    rig.arm("msync", true);
    let (status, body) = produce(http, &server, "fsync", &[json!(3)]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "partition_unavailable", "{body}");
    // The partition stays stopped, for every durability, even once the disk works again:
    // a write it cannot make durable is never acknowledged.
    rig.arm("msync", false);
    for durability in ["memory", "fsync"] {
        let (status, body) = produce(http, &server, durability, &[json!(4)]).await;
        assert_eq!(status, 503, "{durability}: {body}");
    }
    assert!(server.log_contains("flush failed; partition stopped"));
    // Reads go on, and hold every acknowledged record.
    let seen = all_records(http, &server).await;
    assert_eq!(seen[..3], [(0, json!(0)), (1, json!(1)), (2, json!(2))]);
    // The final flush cannot cover the stopped partition: the exit status says so.
    assert_eq!(server.terminate(), 1);

    // A restart reopens the partition: the acknowledged records are there, writes resume.
    let server = rig.start(&[]);
    let seen = all_records(http, &server).await;
    assert_eq!(seen[..3], [(0, json!(0)), (1, json!(1)), (2, json!(2))]);
    let (status, body) = produce(http, &server, "fsync", &[json!(5)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offsets"][0]["offset"], seen.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fallocate_refuses_the_batch_whole_and_appends_resume() {
    let rig = Rig::new();
    let http = &rig.http;
    let server = rig.start(&[]);
    let (status, _) = produce(http, &server, "fsync", &[json!("first")]).await;
    assert_eq!(status, 200);

    rig.arm("fallocate", true);
    // 256 KiB: more than the blocks reserved ahead of a fresh segment's writer.
    let big: Vec<Value> = (0..4)
        .map(|i| json!(format!("{i}{}", "x".repeat(64 << 10))))
        .collect();
    let (status, body) = produce(http, &server, "memory", &big).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert_eq!(all_records(http, &server).await, [(0, json!("first"))]);

    rig.arm("fallocate", false);
    let (status, body) = produce(http, &server, "fsync", &big).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offsets"][0]["offset"], 1, "no offset was used up");
    let seen = all_records(http, &server).await;
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[4], (4, big[3].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rename_during_rolls_is_never_acknowledged_as_durable() {
    let rig = Rig::new();
    let http = &rig.http;
    let server = rig.start(&[("MAPQ_SEGMENT_BYTES", "65536")]);
    let value = |i: usize| json!(format!("{i:06}{}", "r".repeat(4000)));
    let (status, _) = produce(http, &server, "fsync", &[value(0)]).await;
    assert_eq!(status, 200);

    // Enough 4 KB records for several rolls of 64 KiB segments, each batch acknowledged
    // only once durable. A roll must rename files; with renames failing, no fsync produce
    // may succeed (a durable record needs durable file names), and none may be refused as
    // the client's fault.
    rig.arm("rename", true);
    let mut acked = vec![value(0)];
    let mut refused = 0;
    for i in 1..60 {
        let (status, body) = produce(http, &server, "fsync", &[value(i)]).await;
        match status {
            200 => acked.push(value(i)),
            500..=599 => refused += 1,
            other => panic!("status {other} for a server-side fault: {body}"),
        }
    }
    assert!(refused > 0, "no produce met the failing rename");

    // Once renames work, the next durable produce gets its flush, which finishes the rolls
    // (a failure before it started is not its own).
    rig.arm("rename", false);
    let (status, body) = produce(http, &server, "fsync", &[json!("after")]).await;
    assert_eq!(status, 200, "{body}");
    let end = body["offsets"][0]["offset"].as_u64().unwrap();
    server.kill();

    // After kill -9: every acknowledged record is there, in order, and nothing else is lost.
    let server = rig.start(&[("MAPQ_SEGMENT_BYTES", "65536")]);
    let seen = all_records(http, &server).await;
    assert_eq!(
        seen.len() as u64,
        end + 1,
        "records up to the last fsync survive"
    );
    let values: Vec<&Value> = seen.iter().map(|(_, v)| v).collect();
    let mut at = 0;
    for v in &acked {
        at += values[at..]
            .iter()
            .position(|x| *x == v)
            .unwrap_or_else(|| panic!("acknowledged record {v} lost"));
    }
    assert_eq!(seen.last().unwrap().1, json!("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_directory_sync_is_retried_before_anything_is_acknowledged_as_durable() {
    let rig = Rig::new();
    let http = &rig.http;
    // No periodic flush: only the fsync produces below sync anything.
    let server = rig.start(&[("MAPQ_FLUSH_INTERVAL_MS", "600000")]);
    // A memory produce creates the topic: its first segment's name is not durable yet, and
    // the first flush must sync the partition's directory before it acknowledges a record.
    let (status, _) = produce(http, &server, "memory", &[json!("first")]).await;
    assert_eq!(status, 200);
    rig.arm("dirsync", true);
    // Twice: a flush whose directory sync failed must not forget it, or the next flush would
    // acknowledge records in a file whose name may not survive a power loss.
    for attempt in 0..2 {
        let (status, body) = produce(http, &server, "fsync", &[json!(attempt)]).await;
        assert!(
            status >= 500,
            "attempt {attempt}: {status} {body}: acknowledged as durable without a durable name"
        );
    }
    rig.arm("dirsync", false);
    let (status, body) = produce(http, &server, "fsync", &[json!("after")]).await;
    assert_eq!(status, 200, "{body}");
}

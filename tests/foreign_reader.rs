//! A reader in another language, written from `src/log/FORMAT.md` alone
//! (`tests/tools/format_reader.py`, Python's standard library only), follows a live server's
//! partition through rolls, retention, `kill -9` restarts and the topic's deletion, beside
//! `mapq tail`.
//! Every record each reads must be exactly what HTTP consume returns (offset, timestamp, key,
//! value, headers), and both must stop with "topic deleted" when the topic goes. It fails whenever the document and the
//! code disagree. `MAPQ_FOREIGN_ROLLS` (default 200) sets how many rolls it follows.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::lines::LineProcess;
use common::server::{create_topic, delete_topic, get_json, post_json, Server};
use reqwest::Client;
use serde_json::{json, Value};

/// A reader process: the Python one or `mapq tail`.
type Reader = LineProcess;

/// The Python reader, following one partition directory.
fn python_reader(partition_dir: &Path) -> Reader {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/format_reader.py");
    LineProcess::spawn(
        Command::new(common::python())
            .arg(script)
            .arg(partition_dir)
            .arg("--follow"),
    )
}

/// `mapq tail --follow` of one partition, beside it.
fn mapq_tail(data_dir: &Path, topic: &str) -> Reader {
    LineProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["tail", "--partition", "0", "--follow", "--data-dir"])
            .arg(data_dir)
            .arg(topic),
    )
}

/// Record `seq` as produced: keys on even records, headers on every third (one of them null
/// on every fifth), a null value on every eleventh, a binary value on every seventh, JSON
/// (about 1 KiB) otherwise.
fn record(seq: u64) -> Value {
    let mut r = json!({"partition": 0});
    if seq.is_multiple_of(2) {
        r["key"] = json!(format!("key-{seq}"));
    }
    if seq.is_multiple_of(3) {
        r["headers"] = json!({"trace": format!("t{seq}"), "n": "3"});
        if seq.is_multiple_of(5) {
            r["headers"]["gone"] = Value::Null;
        }
    }
    if seq.is_multiple_of(11) {
        // Neither `value` nor `value_b64`: a null value.
    } else if seq.is_multiple_of(7) {
        let bytes: Vec<u8> = (0..64).map(|i| (seq as u8).wrapping_add(i)).collect();
        r["value_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    } else {
        r["value"] = json!({"seq": seq, "pad": "p".repeat(1000)});
    }
    r
}

fn decode(b64: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("base64 text"))
        .expect("valid base64")
}

/// What the reader printed for a record, as HTTP consume shows it.
fn as_consumed(r: &Value) -> Value {
    let key = match &r["key_b64"] {
        Value::Null => Value::Null,
        k => json!(String::from_utf8(decode(k)).expect("UTF-8 keys here")),
    };
    let mut out = json!({
        "offset": r["offset"],
        "timestamp_ms": r["timestamp_ms"],
        "key": key,
        "headers": r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let text = |v: &Value| String::from_utf8(decode(v)).unwrap();
                let value = match &h[1] {
                    Value::Null => Value::Null,
                    v => json!(text(v)),
                };
                (text(&h[0]), value)
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    if r["value_b64"].is_null() {
        // A null value: HTTP consume shows neither `value` nor `value_b64`.
        return out;
    }
    let value = decode(&r["value_b64"]);
    if r["value_json"] == json!(true) {
        out["value"] = serde_json::from_slice(&value).expect("a JSON value");
    } else {
        match String::from_utf8(value) {
            Ok(text) => out["value"] = json!(text),
            Err(_) => out["value_b64"] = r["value_b64"].clone(),
        }
    }
    out
}

/// The base offsets of the partition's segment files, oldest first.
fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?;
            (base.len() == 20).then(|| base.parse().ok())?
        })
        .collect();
    bases.sort_unstable();
    bases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_written_from_the_format_document_reads_what_http_consumers_read() {
    let rolls: usize = std::env::var("MAPQ_FOREIGN_ROLLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let restarts = 5;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAPQ_SEGMENT_BYTES", "65536"),
        ("MAPQ_RETENTION_BYTES", "1048576"),
        ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "200"),
    ];
    let mut server = Server::start(dir.path(), &env);
    let http = Client::new();
    create_topic(&http, &server.base, json!({"name": "py"})).await;
    let partition = dir.path().join("py").join("0");
    let reader = python_reader(&partition);
    let tail = mapq_tail(dir.path(), "py");

    // Batches of 20 records (about 20 KiB) into 64 KiB segments: a roll every few requests,
    // retention deleting the oldest segments all along (it keeps about 1 MiB), and a kill -9
    // of the server every so often. Each batch is read back over HTTP before retention can
    // take it, and both readers must have read the same records meanwhile.
    let mut next = 0u64;
    let mut restarted = 0;
    let mut bases_seen = std::collections::BTreeSet::new();
    while bases_seen.len() <= rolls {
        let batch: Vec<Value> = (next..next + 20).map(record).collect();
        let r = post_json(
            &http,
            format!("{}/v1/topics/py/records", server.base),
            &json!({ "records": batch }),
        )
        .await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let consumed = get_json(
            &http,
            format!(
                "{}/v1/topics/py/partitions/0/records?offset={next}&max_records=20",
                server.base
            ),
        )
        .await["records"]
            .as_array()
            .expect("records")
            .clone();
        assert_eq!(consumed.len(), 20, "a batch read back over HTTP");
        let read = reader.records(20, Duration::from_secs(30));
        let tailed = tail.records(20, Duration::from_secs(30));
        for ((got, mut tailed), want) in read.iter().zip(tailed).zip(&consumed) {
            let at = &want["offset"];
            assert_eq!(
                &as_consumed(got),
                want,
                "record {at}: the Python reader and HTTP consume disagree"
            );
            // `mapq tail` prints consume's record objects, with the partition first.
            assert_eq!(tailed["partition"], 0);
            tailed.as_object_mut().unwrap().remove("partition");
            assert_eq!(
                &tailed, want,
                "record {at}: mapq tail and HTTP consume disagree"
            );
        }
        next += 20;
        bases_seen.extend(segment_bases(&partition));
        let due = bases_seen.len() * (restarts + 1) / (rolls + 1);
        if restarted < restarts && due > restarted {
            server.kill();
            server = Server::start(dir.path(), &env);
            restarted += 1;
        }
    }
    assert_eq!(restarted, restarts);
    let oldest = segment_bases(&partition)[0];
    assert!(oldest > 0, "retention never deleted a segment");

    // The topic goes: the reader stops, saying so.
    delete_topic(&http, &server.base, "py").await;
    let (mut reader, mut tail) = (reader, tail);
    assert_eq!(reader.exit_code(Duration::from_secs(10)), 3);
    assert!(
        reader.stderr.lock().unwrap().contains("topic deleted"),
        "{}",
        reader.stderr.lock().unwrap()
    );
    assert_eq!(tail.exit_code(Duration::from_secs(10)), 1);
    assert!(
        tail.stderr.lock().unwrap().contains("topic was deleted"),
        "{}",
        tail.stderr.lock().unwrap()
    );
}

/// The reader decodes the checked-in golden partitions of both format versions (null
/// values, null header values, batch heads) exactly as the engine reads them.
#[test]
fn the_reader_reads_both_golden_versions_as_the_engine_does() {
    use mapq::log::{LogConfig, PartitionLog};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for version in [1, 2] {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/v{version}"));
        let out = Command::new(common::python())
            .arg("tests/tools/format_reader.py")
            .arg(&golden)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&golden).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        let config = LogConfig {
            segment_bytes: 8192,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(copy.path(), config).unwrap();
        let batch = log.read(0, 1000, 1 << 20).unwrap();
        let want: Vec<Value> = batch
            .records()
            .map(|r| {
                let batch = r.batch().map(|h| {
                    let request = h.request;
                    json!({
                        "record_count": h.record_count,
                        "leader_epoch": h.leader_epoch,
                        "appended_ms": h.appended_ms,
                        "producer_id": h.producer.map_or(-1, |p| p.id),
                        "producer_epoch": h.producer.map_or(-1, |p| p.epoch),
                        "base_sequence": h.producer.map_or(-1, |p| p.base_sequence),
                        "key_b64": request.map(|r| b64(r.key)),
                        "request_records": request.map_or(0, |r| r.records),
                        "digest_b64": b64(&request.map_or([0; 16], |r| r.digest)),
                        "positions": h.positions(),
                    })
                });
                json!({
                    "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms,
                    "key_b64": r.key.as_deref().map(b64),
                    "value_b64": r.value.as_deref().map(b64),
                    "value_json": r.value_is_json(),
                    "headers": r.headers().map(|(n, v)| json!([b64(n), v.map(b64)])).collect::<Vec<_>>(),
                    "batch": batch,
                })
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(printed, want, "version {version}");
    }
}

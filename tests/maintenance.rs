//! Background maintenance against the real server, with tiny segments and short retention:
//! rolls, retention by age and by size, the disk quota, fsync acknowledgements, restarts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, get_text, post_json, Server};
use reqwest::Client;
use serde_json::{json, Value};

const SEGMENT: &str = "65536";

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                mapq::log::format::parse_file_name(&name, "log")
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

async fn produce(
    http: &Client,
    base: &str,
    topic: &str,
    n: usize,
    bytes: usize,
) -> reqwest::Response {
    let value = "x".repeat(bytes);
    let records: Vec<Value> = (0..n).map(|_| json!({ "value": value })).collect();
    post_json(
        http,
        format!("{base}/v1/topics/{topic}/records"),
        &json!({ "records": records }),
    )
    .await
}

async fn describe(http: &Client, base: &str, topic: &str) -> Value {
    get_json(http, format!("{base}/v1/topics/{topic}")).await
}

/// The value of one sample (metric name with its labels, as printed) in a scrape.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// Polls `check` until it holds, failing after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_at_segment_size_and_retention_deletes_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAPQ_SEGMENT_BYTES", SEGMENT),
        ("MAPQ_RETENTION_MS", "1500"),
        ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = Client::new();
    let base = server.base.clone();
    // 1 KiB values: a frame is 1064 bytes, a batch of 30 is 31920 bytes; a 64 KiB segment
    // has 61440 bytes after its header, so it holds one batch and the next one rolls.
    for _ in 0..10 {
        assert_eq!(produce(&http, &base, "aged", 30, 1024).await.status(), 200);
    }
    let pdir = dir.path().join("aged/0");
    // A roll per batch: segments at 0, 30, ..., 270. A rolled segment gets its final file
    // name right after the roll, on the prefaulter thread; on a slow machine retention may
    // already have taken the oldest. So: a run of names, one per batch, ending at 270.
    let run_ending_at_270 = |files: &[u64]| {
        let first = files.first().copied().unwrap_or(0);
        files
            == (first / 30..10)
                .map(|i| i * 30)
                .collect::<Vec<u64>>()
                .as_slice()
    };
    eventually(Duration::from_secs(10), "a segment per batch", || async {
        run_ending_at_270(&segment_files(&pdir))
    })
    .await;
    let files = segment_files(&pdir);
    let mut sized = 0;
    for f in &files {
        // (Retention may delete a file between the listing and this look.)
        if let Ok(m) = std::fs::metadata(pdir.join(format!("{f:020}.log"))) {
            assert_eq!(m.len(), 65536, "segment files are sized up front");
            sized += 1;
        }
    }
    assert!(
        sized > 0,
        "the active segment at least was looked at: {files:?}"
    );

    // After the retention period every sealed segment goes; the active one stays.
    eventually(
        Duration::from_secs(15),
        "sealed segments deleted by age",
        || async { segment_files(&pdir).len() == 1 },
    )
    .await;
    let d = describe(&http, &base, "aged").await;
    let stats = &d["partition_stats"][0];
    assert_eq!(stats["end_offset"], 300);
    let start = stats["start_offset"].as_u64().unwrap();
    assert_eq!(
        start,
        *segment_files(&pdir).first().unwrap(),
        "start offset moved to the active segment"
    );
    let r = http
        .get(format!(
            "{base}/v1/topics/aged/partitions/0/records?offset=0"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "offset_out_of_range");
    assert_eq!(e["error"]["earliest"], start);
    // What is left still reads.
    let r: Value = get_json(
        &http,
        format!("{base}/v1/topics/aged/partitions/0/records?offset={start}"),
    )
    .await;
    assert_eq!(r["records"].as_array().unwrap().len() as u64, 300 - start);
    let m = get_text(&http, format!("{base}/metrics")).await;
    assert!(
        m.contains(r#"mapq_segments_deleted_total{partition="0",reason="age",topic="aged"} 9"#),
        "{m}"
    );
    assert!(
        m.contains(r#"mapq_segments_rolled_total{partition="0",topic="aged"} 9"#),
        "{m}"
    );

    // Survives kill -9 and a restart with the same state.
    server.kill();
    let server = Server::start(dir.path(), &env);
    let d = describe(&http, &server.base, "aged").await;
    assert_eq!(d["partition_stats"][0]["start_offset"], start);
    assert_eq!(d["partition_stats"][0]["end_offset"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
            ("MAPQ_RETENTION_MS", "null"),
        ],
    );
    let http = Client::new();
    let base = server.base.clone();
    create_topic(
        &http,
        &base,
        json!({"name": "sized", "config": {"segment_bytes": 65536, "retention_bytes": 150000}}),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(produce(&http, &base, "sized", 30, 1024).await.status(), 200);
    }
    let pdir = dir.path().join("sized/0");
    eventually(
        Duration::from_secs(15),
        "oldest segments deleted by size",
        || async {
            let d = describe(&http, &base, "sized").await;
            d["partition_stats"][0]["size_bytes"].as_u64().unwrap() <= 150_000
        },
    )
    .await;
    let d = describe(&http, &base, "sized").await;
    let stats = &d["partition_stats"][0];
    // 300 records in batches of 30 of 1064-byte frames: segments of 30 + 30 + ... records.
    assert!(
        stats["size_bytes"].as_u64().unwrap() > 150_000 - 65_536,
        "no more than needed went: {d}"
    );
    // The files on disk say the same (a rolled segment's file gets its final name just
    // after the roll, on the prefaulter thread).
    let segments = stats["segments"].as_u64().unwrap() as usize;
    eventually(Duration::from_secs(10), "one file per segment", || async {
        segment_files(&pdir).len() == segments
    })
    .await;
    assert_eq!(
        stats["start_offset"].as_u64(),
        segment_files(&pdir).first().copied()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_answers_507_then_recovers_when_retention_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAPQ_SEGMENT_BYTES", SEGMENT),
        ("MAPQ_RESERVE_CHUNK_BYTES", "16384"),
        ("MAPQ_PREFAULT_BYTES", "16384"),
        ("MAPQ_MAX_DISK_BYTES", "400000"),
        ("MAPQ_RETENTION_MS", "2000"),
        ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = Client::new();
    let base = server.base.clone();
    let mut acked = 0u64;
    let mut status = 200;
    for _ in 0..100 {
        let r = produce(&http, &base, "full", 10, 1024).await;
        status = r.status().as_u16();
        if status != 200 {
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "insufficient_storage");
            break;
        }
        acked += 10;
    }
    assert_eq!(status, 507, "the quota was reached");
    let end = describe(&http, &base, "full").await["partition_stats"][0]["end_offset"]
        .as_u64()
        .unwrap();
    assert_eq!(
        end, acked,
        "nothing partial was appended by the refused request"
    );
    assert!(server.log_contains("disk full"), "{}", server.log_text());
    let m = get_text(&http, format!("{base}/metrics")).await;
    assert!(m.contains("mapq_disk_limit_bytes 400000"), "{m}");

    // Retention frees the old segments; writes resume by themselves.
    eventually(
        Duration::from_secs(20),
        "produce accepted again",
        || async { produce(&http, &base, "full", 10, 1024).await.status() == 200 },
    )
    .await;
    let r: Value = get_json(
        &http,
        format!("{base}/v1/topics/full/partitions/0/records?offset=latest"),
    )
    .await;
    assert_eq!(r["high_watermark"].as_u64().unwrap(), acked + 10);
}

/// The segment header's committed and durable ends (byte positions in the file), and the end
/// of the frame of record `offset` (if it is below the committed end), read from the file.
fn durable_state(segment: &Path, offset: u64) -> (u64, u64, Option<u64>) {
    use mapq::log::format::{decode_frame, get_u64, segment_header as sh};
    use std::io::Read;
    // Only the header and the committed bytes: the file itself is a whole (sparse) segment.
    let mut file = std::fs::File::open(segment).unwrap();
    let mut bytes = vec![0; sh::SIZE];
    file.read_exact(&mut bytes).unwrap();
    let committed = get_u64(&bytes, sh::COMMITTED_END);
    let durable = get_u64(&bytes, sh::DURABLE_END);
    bytes.resize(committed as usize, 0);
    file.read_exact(&mut bytes[sh::SIZE..]).unwrap();
    let mut at = sh::SIZE;
    let mut frame_end = None;
    while at < committed as usize {
        let f = decode_frame(&bytes[at..committed as usize]).expect("a committed frame");
        at += f.padded_len;
        if f.offset == offset {
            frame_end = Some(at as u64);
            break;
        }
    }
    (committed, durable, frame_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_produce_answers_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    // No timer flush during the test: only the fsync requests themselves flush.
    let server = Server::start(dir.path(), &[("MAPQ_FLUSH_INTERVAL_MS", "3600000")]);
    let http = Client::new();
    let base = server.base.clone();
    let r = produce(&http, &base, "d", 5, 100).await;
    assert_eq!(r.status(), 200);
    let seg = dir.path().join("d/0/00000000000000000000.log");
    let (committed, durable, _) = durable_state(&seg, 0);
    assert!(
        durable < committed,
        "memory acknowledgements do not wait for msync"
    );

    // Each answer is checked the moment it arrives: its record is already below the durable
    // end. (A server that answered first and flushed just after would fail here.)
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, base, seg) = (http.clone(), base.clone(), seg.clone());
        tasks.push(tokio::spawn(async move {
            let r = post_json(
                &http,
                format!("{base}/v1/topics/d/records?durability=fsync"),
                &json!({"records": [{"value": "sure"}]}),
            )
            .await;
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            let offset = v["offsets"][0]["offset"].as_u64().unwrap();
            let (_, durable, frame_end) = durable_state(&seg, offset);
            let frame_end = frame_end.expect("the acknowledged record is in the segment");
            assert!(
                durable >= frame_end,
                "record {offset} (ends at byte {frame_end}) was acknowledged before it was \
                 durable (durable end {durable})"
            );
            offset
        }));
    }
    let mut max_offset = 0;
    for t in tasks {
        max_offset = max_offset.max(t.await.unwrap());
    }
    let (committed, durable, _) = durable_state(&seg, 0);
    assert_eq!(
        durable, committed,
        "every acknowledged fsync record is below the durable end"
    );
    let m = get_text(&http, format!("{base}/metrics")).await;
    let durable_offset = sample(&m, r#"mapq_log_durable_offset{partition="0",topic="d"}"#);
    assert!(durable_offset > max_offset, "{m}");
    // At least one flush, at most one per request (concurrent requests may share one; that
    // sharing is tested deterministically in tests/engine.rs).
    let flushes = sample(&m, r#"mapq_flushes_total{partition="0",topic="d"}"#);
    assert!((1..=8).contains(&flushes), "{flushes} flushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_messages_and_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_FLUSH_INTERVAL_MS", "3600000"),
            ("MAPQ_FLUSH_MESSAGES", "50"),
            ("MAPQ_SEGMENT_MS", "500"),
            ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
        ],
    );
    let http = Client::new();
    let base = server.base.clone();
    assert_eq!(produce(&http, &base, "f", 60, 10).await.status(), 200);
    eventually(
        Duration::from_secs(10),
        "a flush after 50 messages",
        || async {
            let d = get_text(&http, format!("{base}/metrics")).await;
            d.contains(r#"mapq_log_durable_offset{partition="0",topic="f"} 60"#)
        },
    )
    .await;
    eventually(Duration::from_secs(10), "a roll by age", || async {
        describe(&http, &base, "f").await["partition_stats"][0]["segments"] == 2
    })
    .await;
    assert_eq!(produce(&http, &base, "f", 1, 10).await.status(), 200);
    // (The rolled-in segment gets its final file name on the prefaulter thread.)
    eventually(
        Duration::from_secs(10),
        "the new segment starts at the next offset",
        || async { segment_files(&dir.path().join("f/0")) == [0, 60] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_segments_stay_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_SEGMENT_BYTES", SEGMENT),
            ("MAPQ_MAX_OPEN_SEGMENTS", "4"),
            ("MAPQ_FLUSH_INTERVAL_MS", "100"),
            ("MAPQ_RETENTION_CHECK_INTERVAL_MS", "100"),
        ],
    );
    let http = Client::new();
    let base = server.base.clone();
    for topic in ["a", "b"] {
        for _ in 0..8 {
            assert_eq!(produce(&http, &base, topic, 30, 1024).await.status(), 200);
        }
    }
    let pid = server.child.id();
    // The bound is checked on what the kernel says the server has mapped, and the gauge must
    // agree with it (read between two identical looks at the mappings).
    let bounded = || async {
        let before = mapped_segment_files(pid);
        let m = get_text(&http, format!("{base}/metrics")).await;
        let gauge = sample(&m, "mapq_open_segments");
        let after = mapped_segment_files(pid);
        before == after && before.len() <= 4 && gauge == before.len() as u64
    };
    eventually(
        Duration::from_secs(10),
        "at most 4 segments mapped, as the gauge says",
        bounded,
    )
    .await;
    // Everything still reads, from the oldest offset on.
    for topic in ["a", "b"] {
        let r: Value = get_json(&http, format!("{base}/v1/topics/{topic}/partitions/0/records?offset=0&max_records=1000&max_bytes=10000000")).await;
        assert_eq!(r["records"].as_array().unwrap().len(), 240, "{topic}");
    }
    eventually(
        Duration::from_secs(10),
        "closed again after the reads",
        bounded,
    )
    .await;
}

/// The segment files (`*.log`) process `pid` has mapped, from `/proc/<pid>/maps`.
fn mapped_segment_files(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.ends_with(".log"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_two_partitions_refused_for_space_appends_to_neither() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAPQ_SEGMENT_BYTES", SEGMENT),
        ("MAPQ_RESERVE_CHUNK_BYTES", "16384"),
        ("MAPQ_PREFAULT_BYTES", "16384"),
        ("MAPQ_MAX_DISK_BYTES", "300000"),
        ("MAPQ_RETENTION_MS", "null"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = Client::new();
    let base = server.base.clone();
    create_topic(&http, &base, json!({"name": "two", "partitions": 2})).await;
    let value = "y".repeat(1024);
    let mut acked = 0;
    for round in 0..200 {
        // Partition 0 gets one record, partition 1 a batch of ten.
        let mut records = vec![json!({"value": value, "partition": 0})];
        records.extend((0..10).map(|_| json!({"value": value, "partition": 1})));
        let r = post_json(
            &http,
            format!("{base}/v1/topics/two/records"),
            &json!({ "records": records }),
        )
        .await;
        if r.status() == 507 {
            acked = round;
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert!(acked > 0, "the quota was reached");
    let d = describe(&http, &base, "two").await;
    let ends: Vec<u64> = d["partition_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ends,
        [acked, acked * 10],
        "the refused request appended to neither partition"
    );
}

//! The Kafka listener against HTTP binary produce of the same server (issue 19's target:
//! within 20 %), measured in the same run.
//!
//! `cargo bench --bench kafka` (about a minute). Rows, 1 KiB records in batches of 1,000,
//! `durability=memory`, one connection:
//! - Kafka Produce (v9, acks=1, uncompressed) from a bare client of this benchmark (the
//!   `kafka-protocol` crate's encoder, each request encoded once and sent again), one request
//!   in flight, against `mapq bench --produce-only` (HTTP binary frames) with one in flight;
//! - the same Kafka client with five requests in flight (librdkafka's default for an
//!   idempotent producer), against the same HTTP figure;
//! - Kafka Fetch of everything produced, 8 MiB per fetch, against `mapq bench`'s binary
//!   consume (HTTP, frames sent from the mapping) of as many records;
//! - `kcat -P` (librdkafka, Debian) producing 1 KiB lines from a file, against the bare
//!   client: what a real client gets, when kcat is installed (root, or already there).
//!
//! Each pair runs `MAPQ_BENCH_ROUNDS` times (default 3), each run after a `sync` (so that
//! none pays for the write-back of the one before), and the medians are reported;
//! `MAPQ_BENCH_RECORDS` (default 200,000) records each. It prints a table with the ratios,
//! and `RESULT` lines. `MAPQ_BENCH_DIR` sets the directory for data (default: the system
//! temp dir).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

#[path = "../tests/common/kafka.rs"]
mod kafka_client;
use kafka_client::KafkaClient;

#[path = "common/server.rs"]
mod server;
use server::{bench_figures, env_u64, median, Server};

const BATCH: usize = 1000;
const RECORD_BYTES: usize = 1024;

/// Rate in records per second, and request latency percentiles.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Writes back the dirty pages of the runs before: a run that starts while the kernel
/// throttles writers for an earlier run's hundreds of megabytes measures that instead.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(300));
}

fn median_run(runs: &[Run]) -> Run {
    Run {
        per_s: median(runs.iter().map(|r| r.per_s).collect()),
        p50_us: median(runs.iter().map(|r| r.p50_us).collect()),
        p99_us: median(runs.iter().map(|r| r.p99_us).collect()),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// One Produce request body of `BATCH` records for `topic`, encoded once.
fn produce_body(topic: &str) -> Vec<u8> {
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let records: Vec<_> = (0..BATCH)
        .map(|i| kafka_client::bare_record(i as i64, None, Some(value.clone())))
        .collect();
    let mut p = PartitionProduceData::default();
    p.records = Some(kafka_client::encode_batch(&records));
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = 1;
    r.timeout_ms = 30_000;
    r.topic_data = vec![t];
    let mut body = BytesMut::new();
    r.encode(&mut body, 9).unwrap();
    body.to_vec()
}

/// Produces `records` records to `topic` with `in_flight` requests outstanding.
fn kafka_produce(addr: &str, topic: &str, records: u64, in_flight: usize) -> Run {
    let body = produce_body(topic);
    let mut c = KafkaClient::connect(addr);
    c.stream.set_nodelay(true).unwrap();
    let requests = records.div_ceil(BATCH as u64) as usize;
    let mut sent_at = std::collections::VecDeque::new();
    let mut latencies = Vec::with_capacity(requests);
    let started = Instant::now();
    let mut send = |c: &mut KafkaClient| {
        c.send_encoded(ApiKey::Produce, 9, &body);
        sent_at.push_back(Instant::now());
    };
    let mut sent = 0;
    while sent < requests.min(in_flight) {
        send(&mut c);
        sent += 1;
    }
    let mut answered = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (_, r) = c.recv::<ProduceRequest>(9);
        answered.push(Instant::now());
        let code = r.responses[0].partition_responses[0].error_code;
        assert_eq!(code, 0, "Kafka produce error {code}");
        if sent < requests {
            send(&mut c);
            sent += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (asked, got) in sent_at.iter().zip(&answered) {
        latencies.push(got.duration_since(*asked).as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    Run {
        per_s: (requests * BATCH) as f64 / elapsed,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    }
}

/// Fetches `records` records of `topic` from offset 0, 8 MiB a fetch.
fn kafka_fetch(addr: &str, topic: &str, records: u64) -> Run {
    let mut c = KafkaClient::connect(addr);
    c.stream.set_nodelay(true).unwrap();
    let mut offset = 0i64;
    let mut latencies = Vec::new();
    let started = Instant::now();
    while (offset as u64) < records {
        let mut p = FetchPartition::default();
        p.fetch_offset = offset;
        p.partition_max_bytes = 8 << 20;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partitions = vec![p];
        let mut r = FetchRequest::default();
        r.max_wait_ms = 500;
        r.min_bytes = 1;
        r.max_bytes = 8 << 20;
        r.topics = vec![t];
        let asked = Instant::now();
        let mut r = c.call(11, &r);
        latencies.push(asked.elapsed().as_secs_f64() * 1e6);
        let part = r.responses.remove(0).partitions.remove(0);
        assert_eq!(part.error_code, 0, "Kafka fetch error");
        let mut records = part.records.expect("records");
        let sets =
            kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut records).unwrap();
        let last = sets.last().expect("a batch");
        offset = last.min_offset + i64::from(last.record_count);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Run {
        per_s: records as f64 / elapsed,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    }
}

/// `kcat -P` of `records` lines of 1 KiB (1023 bytes and the newline) from a file, timed
/// whole (start-up included); `None` without kcat.
fn kcat_produce(addr: &str, topic: &str, file: &Path, records: u64) -> Option<Run> {
    let started = Instant::now();
    let status = Command::new("kcat")
        .args(["-b", addr, "-P", "-t", topic, "-X", "linger.ms=5"])
        .args(["-X", "batch.num.messages=1000", "-X", "acks=1", "-l"])
        .arg(file)
        .stdout(Stdio::null())
        .status()
        .ok()?;
    assert!(status.success(), "kcat -P failed");
    Some(Run {
        per_s: records as f64 / started.elapsed().as_secs_f64(),
        ..Run::default()
    })
}

/// kcat from Debian, through the test suite's installer; `false` when it cannot be had.
fn ensure_kcat() -> bool {
    if Command::new("kcat").arg("-V").output().is_ok() {
        return true;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/install-kafka-clients.sh"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/kafka-clients");
    Command::new("bash")
        .arg(script)
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn fmt_rate(per_s: f64) -> String {
    format!(
        "{:.0} k rec/s {:.0} MB/s",
        per_s / 1e3,
        per_s * RECORD_BYTES as f64 / 1e6
    )
}

fn row(name: &str, run: Run, baseline_name: &str, baseline: Run) {
    let ratio = run.per_s / baseline.per_s;
    println!(
        "{name:<30} {:>24}  p50 {:>7.0} µs  p99 {:>7.0} µs | {baseline_name:<30} {:>24} | {ratio:.2}x",
        fmt_rate(run.per_s),
        run.p50_us,
        run.p99_us,
        fmt_rate(baseline.per_s),
    );
    println!(
        "RESULT {name} records_per_s={:.0} p50_us={:.0} p99_us={:.0} baseline={baseline_name} baseline_records_per_s={:.0} ratio={ratio:.3}",
        run.per_s, run.p50_us, run.p99_us, baseline.per_s
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("kafka: benchmark");
        return;
    }
    let rounds = env_u64("MAPQ_BENCH_ROUNDS", 3) as usize;
    let records = env_u64("MAPQ_BENCH_RECORDS", 200_000);
    let base_dir = std::env::var_os("MAPQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base_dir).expect("a data directory");
    let server = Server::start(dir.path(), &[]);
    let mut http = Vec::new();
    let mut http_consume = Vec::new();
    let mut one = Vec::new();
    let mut five = Vec::new();
    let mut fetch = Vec::new();
    let records_arg = records.to_string();
    for round in 0..rounds {
        settle();
        let figures = bench_figures(
            &server,
            &[
                "--batch",
                "1000",
                "--record-bytes",
                "1024",
                "--connections",
                "1",
                "--records",
                &records_arg,
            ],
        );
        let run = |scenario: &str| {
            let f = &figures[scenario];
            Run {
                per_s: f["records_per_s"],
                p50_us: f["p50_us"],
                p99_us: f["p99_us"],
            }
        };
        http.push(run("produce"));
        http_consume.push(run("consume_binary"));
        let topic = format!("kafka-{round}");
        settle();
        one.push(kafka_produce(&server.kafka, &topic, records, 1));
        settle();
        five.push(kafka_produce(
            &server.kafka,
            &format!("kafka5-{round}"),
            records,
            5,
        ));
        settle();
        fetch.push(kafka_fetch(&server.kafka, &topic, records));
    }
    let (http, http_consume, one, five, fetch) = (
        median_run(&http),
        median_run(&http_consume),
        median_run(&one),
        median_run(&five),
        median_run(&fetch),
    );
    println!(
        "1 KiB records, batches of {BATCH}, one connection, durability=memory; medians of {rounds} rounds of {records} records:"
    );
    row(
        "kafka_produce_1_in_flight",
        one,
        "http_binary_produce",
        http,
    );
    row(
        "kafka_produce_5_in_flight",
        five,
        "http_binary_produce",
        http,
    );
    row(
        "kafka_fetch_8MiB",
        fetch,
        "http_binary_consume",
        http_consume,
    );
    if ensure_kcat() {
        let file = dir.path().join("lines");
        let mut line = vec![b'x'; RECORD_BYTES - 1];
        line.push(b'\n');
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for _ in 0..records {
            f.write_all(&line).unwrap();
        }
        f.flush().unwrap();
        drop(f);
        let runs: Vec<Run> = (0..rounds)
            .filter_map(|r| {
                settle();
                kcat_produce(&server.kafka, &format!("kcat-{r}"), &file, records)
            })
            .collect();
        if !runs.is_empty() {
            row(
                "kcat_produce",
                median_run(&runs),
                "kafka_produce_5_in_flight",
                five,
            );
        }
    } else {
        println!("kcat: not installed (run as root, or install kcat), row skipped");
    }
}

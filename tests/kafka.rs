//! Kafka clients nobody on the team wrote, against a real server's Kafka listener: kcat and
//! confluent-kafka (librdkafka, Debian), kafka-python and aiokafka (PyPI) and kafkajs (npm), installed
//! by `tests/tools/install-kafka-clients.sh`. Records cross protocols: what Kafka clients
//! produce reads identically over HTTP and `mapq tail`, and the reverse.
//!
//! `MAPQ_KAFKA_KILL_ROUNDS` (default 1) sets how many kill -9 rounds the crash test runs
//! under a producer's load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::server::{output_with_deadline, Server};
use serde_json::{json, Value};

fn clients() -> &'static Path {
    common::kafka::clients()
}

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(name)
}

/// Runs `cmd` with `stdin`, failing the test after `secs`.
fn run(cmd: &mut Command, stdin: &[u8], secs: u64) -> Output {
    output_with_deadline(cmd, stdin, Duration::from_secs(secs))
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn kcat(kafka: &str) -> Command {
    clients();
    let mut c = Command::new("kcat");
    c.args(["-b", kafka, "-X", "socket.timeout.ms=10000"]);
    c
}

fn confluent(args: &[&str]) -> Command {
    clients();
    let mut c = Command::new(common::python());
    c.arg(tool("kafka_confluent.py")).args(args);
    c
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Every record of a partition over HTTP JSON, page after page.
async fn http_records(server: &Server, topic: &str, partition: u32) -> Vec<Value> {
    let mut records = Vec::new();
    loop {
        let url = server.url(&format!(
            "/v1/topics/{topic}/partitions/{partition}/records?offset={}",
            records.len()
        ));
        let v = common::server::get_json(&http(), url).await;
        let page = v["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return records;
        }
        records.extend(page);
    }
}

/// A port free now, for a server that must come back on the same one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_round_trips_bytes_keys_headers_and_nulls_under_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kafka = server.kafka_addr();
    // Every byte but the two delimiters, in keys and values; UTF-8 beyond ASCII; an empty
    // key and value (distinct from null: -Z sends an empty field as null).
    let all_bytes: Vec<u8> = (1..=255u8).filter(|b| *b != b'\t' && *b != b'\n').collect();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let mut input = Vec::new();
        input.extend_from_slice(&all_bytes);
        input.push(b'\t');
        input.extend_from_slice("é€😀 = , value".as_bytes());
        input.push(b'\n');
        input.extend_from_slice(b"null-value\t\n\tnull-key\nplain\tv\n");
        ok(
            run(
                kcat(&kafka)
                    .args(["-P", "-t", &topic, "-K", "\t", "-z", codec, "-Z"])
                    .args(["-H", "h=1", "-H", "nul", "-H", "empty="]),
                &input,
                30,
            ),
            "kcat -P",
        );
        // Lengths first: -1 is null, and a null prints nothing.
        let out = ok(
            run(
                kcat(&kafka).args(["-C", "-t", &topic, "-e", "-f", "%K %S %k\t%s|%h\n"]),
                b"",
                30,
            ),
            "kcat -C",
        );
        let mut expected = Vec::new();
        let line = |k: &[u8], v: &[u8], kl: i64, vl: i64| {
            let mut l = format!("{kl} {vl} ").into_bytes();
            l.extend_from_slice(k);
            l.push(b'\t');
            l.extend_from_slice(v);
            l.extend_from_slice(b"|h=1,nul=NULL,empty=\n");
            l
        };
        let value = "é€😀 = , value".as_bytes();
        expected.extend(line(
            &all_bytes,
            value,
            all_bytes.len() as i64,
            value.len() as i64,
        ));
        expected.extend(line(b"null-value", b"", 10, -1));
        expected.extend(line(b"", b"null-key", -1, 8));
        expected.extend(line(b"plain", b"v", 5, 1));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "codec {codec}"
        );
        // The same records over HTTP, nulls as nulls.
        let records = http_records(&server, &topic, 0).await;
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(records[1]["key"], "null-value");
        assert!(records[1].get("value").is_none(), "{:?}", records[1]);
        assert_eq!(records[2]["key"], Value::Null);
        assert_eq!(records[2]["value"], "null-key");
        assert_eq!(
            records[3]["headers"],
            json!({"h": "1", "nul": null, "empty": ""})
        );
    }

    // -L lists the topics with their partitions, on this node.
    let listed = String::from_utf8(ok(run(kcat(&kafka).arg("-L"), b"", 30), "kcat -L")).unwrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        assert!(
            listed.contains(&format!("topic \"kcat-{codec}\" with 1 partitions")),
            "{listed}"
        );
    }
    assert!(listed.contains(&format!("broker 1 at {kafka}")), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_seeks_to_beginning_end_relative_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kafka = server.kafka_addr();
    // Ten records with timestamps 1000 ms apart, over HTTP (JSON values: stored as their
    // JSON text, which Kafka clients get as the value's bytes).
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"value": format!("r{i}"), "timestamp_ms": 1_700_000_000_000i64 + i * 1000}))
        .collect();
    let r = common::server::post_json(
        &http(),
        server.url("/v1/topics/seek/records"),
        &json!({"records": records}),
    )
    .await;
    assert!(r.status().is_success());
    let consume = |from: &str| {
        let out = ok(
            run(
                kcat(&kafka).args(["-C", "-t", "seek", "-e", "-o", from, "-f", "%o %s %T\n"]),
                b"",
                30,
            ),
            "kcat -C -o",
        );
        String::from_utf8(out).unwrap()
    };
    let beginning = consume("beginning");
    assert_eq!(beginning.lines().count(), 10, "{beginning}");
    assert!(
        beginning.starts_with("0 \"r0\" 1700000000000\n"),
        "{beginning}"
    );
    assert_eq!(consume("end"), "");
    assert_eq!(
        consume("-3"),
        "7 \"r7\" 1700000007000\n8 \"r8\" 1700000008000\n9 \"r9\" 1700000009000\n"
    );
    assert_eq!(consume("4").lines().next(), Some("4 \"r4\" 1700000004000"));
    // The first record at or after the timestamp (between two records: the later one).
    assert_eq!(
        consume("s@1700000005500").lines().next(),
        Some("6 \"r6\" 1700000006000")
    );
    assert_eq!(
        consume("s@1700000005000").lines().next(),
        Some("5 \"r5\" 1700000005000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_group_of_two_members_rebalances_and_commits_what_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kafka = server.kafka_addr();
    common::server::create_topic(
        &http(),
        &server.base,
        json!({"name": "shared", "partitions": 4}),
    )
    .await;
    let produce = |from: usize, to: usize| {
        let input: String = (from..to).map(|i| format!("k{i}\tm{i}\n")).collect();
        ok(
            run(
                kcat(&kafka).args(["-P", "-t", "shared", "-K", "\t"]),
                input.as_bytes(),
                30,
            ),
            "kcat -P",
        );
    };
    produce(0, 40);
    let member = |name: &str| {
        kcat(&kafka)
            .args(["-G", "kgroup", "shared", "-o", "beginning", "-f"])
            .arg(format!("{name} %p %o %s\n"))
            .args([
                "-X",
                "auto.commit.interval.ms=200",
                "-X",
                "session.timeout.ms=6000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kcat -G")
    };
    let a = member("A");
    // A reads everything alone first.
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = |server: &Server| {
        let server_url = server.url("/v1/groups/kgroup/offsets");
        async move {
            let v: Value = match http().get(server_url).send().await {
                Ok(r) if r.status() == 200 => r.json().await.unwrap(),
                _ => return 0,
            };
            v["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["offset"].as_u64().unwrap())
                .sum::<u64>()
        }
    };
    while committed(&server).await < 40 {
        assert!(
            Instant::now() < deadline,
            "A never committed all 40 records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B joins: the group rebalances (both members hold partitions once it is stable), and
    // the next records go to both.
    let b = member("B");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if kafka_group(&kafka, "kgroup") == "Stable 2" {
            break;
        }
        assert!(Instant::now() < deadline, "B never joined the group");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce(40, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&server).await < 200 {
        assert!(
            Instant::now() < deadline,
            "the group never committed all 200 records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = |child: std::process::Child| {
        common::server::signal(&child, libc::SIGTERM);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (a_out, b_out) = (stop(a), stop(b));
    let late = |out: &str| {
        out.lines()
            .filter_map(|l| {
                l.rsplit_once(" m")
                    .and_then(|(_, n)| n.parse::<usize>().ok())
            })
            .filter(|n| *n >= 40)
            .collect::<BTreeSet<usize>>()
    };
    let (a_late, b_late) = (late(&a_out), late(&b_out));
    assert!(
        !a_late.is_empty() && !b_late.is_empty(),
        "after the rebalance both members read: A {a_late:?} B {b_late:?}"
    );
    let all: BTreeSet<usize> = a_late.union(&b_late).copied().collect();
    assert_eq!(
        all,
        (40..200).collect(),
        "every record after the rebalance was read by a member"
    );
}

/// The Kafka group's state and how many of its members hold an assignment, as
/// DescribeGroups reports them to librdkafka's admin client.
fn kafka_group(kafka: &str, group: &str) -> String {
    let script = format!(
        "from confluent_kafka.admin import AdminClient\n\
         import os\n\
         a = AdminClient({{'bootstrap.servers': '{kafka}'}})\n\
         g = a.list_groups('{group}', timeout=10)\n\
         print(g[0].state, sum(1 for m in g[0].members if m.assignment) if g else '')\n\
         os._exit(0)\n"
    );
    clients();
    let out = run(
        Command::new(common::python()).args(["-c", &script]),
        b"",
        30,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_idempotent_producer_and_a_group_that_resumes_where_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_port = free_port();
    let kafka_listen = format!("127.0.0.1:{kafka_port}");
    let server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka_listen)]);
    let kafka = server.kafka_addr();
    let delivered = json_lines(&ok(
        run(
            &mut confluent(&["produce", &kafka, "ck", "500", "zstd"]),
            b"",
            60,
        ),
        "confluent produce",
    ));
    assert_eq!(delivered.len(), 500);
    let offsets: BTreeSet<u64> = delivered
        .iter()
        .map(|d| d["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..500).collect(),
        "acks=all deliveries, each at its own offset"
    );
    // The batches carry the producer's id, epoch and sequence on disk (format v2).
    let records = http_records(&server, "ck", 0).await;
    assert_eq!(records.len(), 500);
    assert_eq!(records[7]["key"], "k7");
    assert_eq!(records[7]["value"], "value 7");
    assert_eq!(records[7]["headers"], json!({"i": "7"}));

    // A member reads 200 and commits; the commit is the group's, over HTTP too.
    let first = json_lines(&ok(
        run(
            &mut confluent(&["consume", &kafka, "ck", "cg", "1000", "200"]),
            b"",
            60,
        ),
        "confluent consume",
    ));
    assert_eq!(first.len(), 200);
    let v = common::server::get_json(&http(), server.url("/v1/groups/cg/offsets")).await;
    assert_eq!(v["offsets"][0]["offset"], 200, "{v}");

    // The server restarts; a new member resumes at the committed offset.
    assert_eq!(server.terminate(), 0);
    let server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka_listen)]);
    let rest = json_lines(&ok(
        run(
            &mut confluent(&["consume", &kafka, "ck", "cg", "300"]),
            b"",
            60,
        ),
        "confluent consume after the restart",
    ));
    assert_eq!(rest.len(), 300);
    assert_eq!(rest[0]["offset"], 200, "resumed where it committed");
    assert_eq!(rest[299]["offset"], 499);
    // A new producer after the restart continues the log.
    let more = json_lines(&ok(
        run(
            &mut confluent(&["produce", &kafka, "ck", "10", "lz4"]),
            b"",
            60,
        ),
        "confluent produce after the restart",
    ));
    assert_eq!(
        more.iter().map(|d| d["offset"].as_u64().unwrap()).min(),
        Some(500)
    );
    drop(server);
}

/// Runs `script`, a Python client from PyPI (`library`, installed by the installer under
/// its name): it produces `count` records to the topic named like the library, consumes
/// them in the group `<library>-group` and commits. Checks the offsets produced, the
/// records consumed, and the commit over HTTP.
async fn python_client_in_a_group(server: &Server, library: &str, script: &str, count: u64) {
    let group = format!("{library}-group");
    let out = ok(
        run(
            Command::new(common::python())
                .env("PYTHONPATH", clients().join(library))
                .arg(tool(script))
                .args([&server.kafka_addr(), library, &group, &count.to_string()]),
            b"",
            120,
        ),
        library,
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    let produced: Vec<u64> = v["produced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .collect();
    assert_eq!(produced, (0..count).collect::<Vec<_>>(), "{library}");
    let consumed = v["consumed"].as_array().unwrap();
    assert_eq!(consumed.len() as u64, count, "{library}");
    let last = count - 1;
    assert_eq!(
        consumed[last as usize],
        json!({"partition": 0, "offset": last, "key": format!("k{last}"), "value": format!("v{last}"), "headers": [["i", last.to_string()]]}),
        "{library}"
    );
    let g =
        common::server::get_json(&http(), server.url(&format!("/v1/groups/{group}/offsets"))).await;
    assert_eq!(g["offsets"][0]["offset"], count, "{library}: {g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_and_kafkajs_produce_and_consume_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kafka = server.kafka_addr();

    python_client_in_a_group(&server, "kafka-python", "kafka_python_client.py", 100).await;

    let out = ok(
        run(
            Command::new("node")
                .env("NODE_PATH", clients().join("kafkajs/node_modules"))
                .arg(tool("kafkajs_client.js"))
                .args([&kafka, "kj", "kjg", "100"]),
            b"",
            120,
        ),
        "kafkajs",
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(
        v["topics"].as_array().unwrap().contains(&json!("kj")),
        "{v}"
    );
    let consumed = v["consumed"].as_array().unwrap();
    let keys: BTreeSet<String> = consumed
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, (0..100).map(|i| format!("k{i}")).collect());
    // Two partitions, created by kafkajs' admin client; the group committed both ends.
    let g = common::server::get_json(&http(), server.url("/v1/groups/kjg/offsets")).await;
    let total: u64 = g["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100, "{g}");
    assert_eq!(g["offsets"].as_array().unwrap().len(), 2, "{g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiokafka_produces_idempotently_and_consumes_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    python_client_in_a_group(&server, "aiokafka", "aiokafka_client.py", 60).await;
    // Its batches carried a producer id: the records are there once each.
    assert_eq!(http_records(&server, "aiokafka", 0).await.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_protocols_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kafka = server.kafka_addr();
    // Kafka in: HTTP JSON, binary-free `mapq tail` out.
    ok(
        run(
            kcat(&kafka).args(["-P", "-t", "cross", "-K", "\t", "-Z", "-H", "trace=abc"]),
            b"k1\t{\"n\": 1}\nk2\t\n",
            30,
        ),
        "kcat -P",
    );
    let records = http_records(&server, "cross", 0).await;
    assert_eq!(records[0]["key"], "k1");
    assert_eq!(
        records[0]["value"], "{\"n\": 1}",
        "Kafka values are bytes, not JSON"
    );
    assert_eq!(records[0]["headers"], json!({"trace": "abc"}));
    assert!(records[1].get("value").is_none());
    let tail = ok(
        run(
            Command::new(env!("CARGO_BIN_EXE_mapq"))
                .args(["tail", "cross", "--data-dir"])
                .arg(&server.data_dir),
            b"",
            30,
        ),
        "mapq tail",
    );
    let tailed = json_lines(&tail);
    assert_eq!(tailed.len(), 2);
    assert_eq!(tailed[0]["key"], "k1");
    assert_eq!(tailed[0]["value"], records[0]["value"]);
    assert_eq!(tailed[0]["headers"], records[0]["headers"]);
    assert_eq!(tailed[1].get("value"), None);

    // HTTP in (JSON, bytes, nulls), Kafka out.
    let r = common::server::post_json(
        &http(),
        server.url("/v1/topics/back/records"),
        &json!({"records": [
            {"key": "j", "value": {"a": [1, 2]}, "headers": {"h": "x", "n": null}},
            {"key_b64": "AAEC", "value_b64": "/wA="},
            {"value": "text"},
            {"key": "tombstone"}
        ]}),
    )
    .await;
    assert!(r.status().is_success());
    let out = ok(
        run(
            kcat(&kafka).args(["-C", "-t", "back", "-e", "-f", "%K %S %k|%s|%h\n"]),
            b"",
            30,
        ),
        "kcat -C",
    );
    let mut expected = b"1 11 j|{\"a\":[1,2]}|h=x,n=NULL\n3 2 ".to_vec();
    expected.extend_from_slice(&[0, 1, 2, b'|', 0xff, 0, b'|', b'\n']);
    expected.extend_from_slice(b"-1 6 |\"text\"|\n9 -1 tombstone||\n");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_an_idempotent_acks_all_producer_loses_and_duplicates_nothing() {
    let rounds = common::env_u64("MAPQ_KAFKA_KILL_ROUNDS", 1);
    let dir = tempfile::tempdir().unwrap();
    let kafka_listen = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka_listen)]);
    let kafka = server.kafka_addr();
    let stopfile = dir.path().join("stop");
    let mut producer = confluent(&["load", &kafka, "load", stopfile.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the producer");
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let acks = acks.clone();
        let stdout = producer.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                acks.lock().unwrap().push(line);
            }
        })
    };
    let acked = |acks: &std::sync::Mutex<Vec<String>>| {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("ack "))
            .count()
    };
    for round in 0..rounds {
        let before = acked(&acks);
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked(&acks) < before + 2000 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the producer stalled at {} acks",
                acked(&acks)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka_listen)]);
    }
    let before = acked(&acks);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(&acks) < before + 1000 {
        assert!(
            Instant::now() < deadline,
            "the producer did not go on after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&stopfile, b"").unwrap();
    let status = common::server::wait_with_deadline(&mut producer, Duration::from_secs(90));
    reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut producer.stderr.take().unwrap(), &mut err).unwrap();
    let lines = acks.lock().unwrap().clone();
    assert_eq!(
        status,
        0,
        "the producer failed: {err}\n{:?}",
        lines.iter().rev().take(5).collect::<Vec<_>>()
    );

    // Every acknowledged record is there exactly once, at its acknowledged offset; and no
    // record is there twice (the retries after each kill were deduplicated).
    let records = http_records(&server, "load", 0).await;
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &records {
        by_key
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(r["offset"].as_u64().unwrap());
    }
    let duplicated: Vec<_> = by_key.iter().filter(|(_, o)| o.len() > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "records stored twice: {duplicated:?}"
    );
    let mut checked = 0;
    for line in lines.iter().filter(|l| l.starts_with("ack ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        let (key, offset) = (parts[1], parts[3].parse::<u64>().unwrap());
        assert_eq!(
            by_key.get(key),
            Some(&vec![offset]),
            "acknowledged {line}; {} records stored; around it: {:?}",
            records.len(),
            records
                .get(offset.saturating_sub(2) as usize..(offset as usize + 3).min(records.len()))
        );
        checked += 1;
    }
    assert!(
        checked >= 2000 * rounds as usize + 1000,
        "{checked} acknowledgements checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_over_tls_maps_onto_tokens_and_their_grants() {
    let dir = tempfile::tempdir().unwrap();
    let tls = common::tls_setup(&common::tokens_toml(&[(
        "alice",
        "alice-secret",
        "a*",
        &["produce", "consume"],
    )]));
    let cert_file = &tls.ca_pem;
    let server = Server::start_with_config(&dir.path().join("data"), &tls.config);
    let kafka = server.kafka_addr();
    let secure = |user: &str, password: &str| {
        let mut c = kcat(&kafka);
        c.args([
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanisms=PLAIN",
        ])
        .arg("-X")
        .arg(format!("sasl.username={user}"))
        .arg("-X")
        .arg(format!("sasl.password={password}"))
        .arg("-X")
        .arg(format!("ssl.ca.location={}", cert_file.display()));
        c
    };
    ok(
        run(
            secure("alice", "alice-secret").args(["-P", "-t", "apples"]),
            b"one\ntwo\n",
            30,
        ),
        "kcat -P with SASL/PLAIN over TLS",
    );
    let out = ok(
        run(
            secure("alice", "alice-secret").args(["-C", "-t", "apples", "-e", "-f", "%s\n"]),
            b"",
            30,
        ),
        "kcat -C with SASL/PLAIN over TLS",
    );
    assert_eq!(String::from_utf8_lossy(&out), "one\ntwo\n");

    // Outside the token's grant: refused per topic, the connection kept.
    let out = run(
        secure("alice", "alice-secret").args(["-P", "-t", "bananas"]),
        b"x\n",
        30,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uthorization"), "{err}");

    // A wrong password, or no SASL at all: nothing is answered but the handshake.
    let out = run(secure("alice", "wrong").args(["-L", "-m", "2"]), b"", 30);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uthentication"),
        "{out:?}"
    );
    let out = run(
        kcat(&kafka)
            .args(["-X", "security.protocol=SSL", "-L", "-m", "2"])
            .arg("-X")
            .arg(format!("ssl.ca.location={}", cert_file.display())),
        b"",
        30,
    );
    assert!(!out.status.success(), "{out:?}");
    // Plain TCP on a TLS listener gets nowhere either.
    let out = run(kcat(&kafka).args(["-L", "-m", "2"]), b"", 30);
    assert!(!out.status.success(), "{out:?}");
    // The records over HTTPS, with the same token.
    let https = reqwest::Client::builder()
        .add_root_certificate(tls.ca.clone())
        .build()
        .unwrap();
    let v: Value = https
        .get(server.url("/v1/topics/apples/partitions/0/records?offset=0"))
        .bearer_auth("alice-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["records"][1]["value"], "two", "{v}");
}

//! Concurrency and restarts against the real server: many producers at once, a graceful stop
//! (SIGTERM), and a kill -9 under load.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{
    commit_offset, create_topic, get_json, output_with_deadline, post_json, Server,
};
use mapq::broker::partitioner::partition_for_key;
use reqwest::Client;
use serde_json::{json, Value};

async fn consume_all(http: &Client, base: &str, topic: &str, partition: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let v: Value = get_json(http, format!(
                "{base}/v1/topics/{topic}/partitions/{partition}/records?offset={next}&max_records=5000"
            )).await;
        let recs = v["records"].as_array().unwrap();
        if recs.is_empty() {
            return out;
        }
        next = v["next_offset"].as_u64().unwrap();
        out.extend(recs.iter().cloned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_every_record_exactly_once_in_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    let base = server.base.clone();
    create_topic(&http, &base, json!({"name": "load", "partitions": 4})).await;
    let mut tasks = Vec::new();
    for producer in 0..8 {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..20 {
                let records: Vec<Value> = (0..50)
                    .map(|i| {
                        let seq = batch * 50 + i;
                        json!({"key": format!("k{}", seq % 13), "value": {"p": producer, "seq": seq}})
                    })
                    .collect();
                let r = post_json(&http, format!("{base}/v1/topics/load/records"), &json!({"records": records})).await;
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = HashSet::new();
    for partition in 0..4 {
        let records = consume_all(&http, &base, "load", partition).await;
        let mut last_seq: BTreeMap<u64, i64> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["offset"], i as u64, "offsets are dense");
            let key = r["key"].as_str().unwrap();
            assert_eq!(
                partition_for_key(key.as_bytes(), 4),
                partition,
                "keys stay in their partition"
            );
            let p = r["value"]["p"].as_u64().unwrap();
            let seq = r["value"]["seq"].as_i64().unwrap();
            assert!(seen.insert((p, seq)), "record ({p}, {seq}) consumed twice");
            // Each producer's records of one partition keep their order.
            let prev = last_seq.insert(p, seq).unwrap_or(-1);
            assert!(seq > prev, "producer {p}: {seq} after {prev}");
        }
    }
    assert_eq!(seen.len(), 8 * 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_everything_and_a_restart_has_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_FLUSH_INTERVAL_MS", "3600000")]);
    let http = Client::new();
    let base = server.base.clone();
    for i in 0..10 {
        let records: Vec<Value> = (0..100).map(|j| json!({"value": i * 100 + j})).collect();
        let r = post_json(
            &http,
            format!("{base}/v1/topics/keep/records"),
            &json!({"records": records}),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    commit_offset(&http, &base, "g1", ("keep", 0, 400)).await;
    let verify = || {
        let out = output_with_deadline(
            std::process::Command::new(env!("CARGO_BIN_EXE_mapq"))
                .args(["verify", "--data-dir"])
                .arg(dir.path()),
            b"",
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        text
    };
    // Before the stop the records are not flushed (no timer flush), and verify says so.
    let text = verify();
    assert!(text.contains("note:"), "unflushed data is noted: {text}");
    assert_eq!(server.terminate(), 0, "graceful stop exits 0");

    // Nothing was left unflushed or torn: every byte is below the durable end.
    let text = verify();
    assert!(
        !text.contains("note:"),
        "unflushed data after a graceful stop: {text}"
    );

    let server = Server::start(dir.path(), &[]);
    // Recovery logs before "ready": once that line is in, so would be any cut.
    assert!(
        server.log_contains("ready elapsed_ms="),
        "{}",
        server.log_text()
    );
    assert!(
        !server.log_text().contains("recovery cut"),
        "{}",
        server.log_text()
    );
    let records = consume_all(&http, &server.base, "keep", 0).await;
    let values: Vec<i64> = records
        .iter()
        .map(|r| r["value"].as_i64().unwrap())
        .collect();
    assert_eq!(values, (0..1000).collect::<Vec<_>>());
    let g: Value = get_json(&http, format!("{}/v1/groups/g1/offsets", server.base)).await;
    assert_eq!(g["offsets"][0]["offset"], 400);
    assert_eq!(g["offsets"][0]["lag"], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("MAPQ_SEGMENT_BYTES", "65536")]);
    let http = Client::new();
    let base = server.base.clone();
    create_topic(&http, &base, json!({"name": "hard", "partitions": 2})).await;
    let acked: Arc<Mutex<Vec<(u32, u64, i64)>>> = Arc::default();
    let committed: Arc<Mutex<Option<u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for producer in 0..4i64 {
        let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let value = producer * 1_000_000 + n;
                let resp = http
                    .post(format!("{base}/v1/topics/hard/records"))
                    .json(&json!({"records": [{"value": value, "partition": (value % 2) as u32}]}))
                    .send()
                    .await;
                // The kill ends the load: a request or answer cut by it is not acknowledged.
                let Ok(resp) = resp else { return };
                assert_eq!(resp.status(), 200, "produce refused before the kill");
                let Ok(v) = resp.json::<Value>().await else {
                    return;
                };
                let o = &v["offsets"][0];
                acked.lock().unwrap().push((
                    o["partition"].as_u64().unwrap() as u32,
                    o["offset"].as_u64().unwrap(),
                    value,
                ));
            }
        }));
    }
    {
        let (http, base, committed) = (http.clone(), base.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let mut offset = 1;
            loop {
                let r = http
                    .put(format!("{base}/v1/groups/c/offsets"))
                    .json(
                        &json!({"offsets": [{"topic": "hard", "partition": 0, "offset": offset}]}),
                    )
                    .send()
                    .await;
                // The kill ends the commits: a request or answer cut by it is no failure.
                let Ok(r) = r else { return };
                if r.status() == 204 {
                    *committed.lock().unwrap() = Some(offset);
                    offset += 1;
                    continue;
                }
                // Beyond the records produced so far: try the same offset again. Any other
                // answer is a failure.
                let status = r.status();
                let Ok(e) = r.json::<Value>().await else {
                    return;
                };
                assert!(
                    status == 400
                        && e["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("is beyond the end")),
                    "commit refused: {status} {e}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Let the load run until plenty is acknowledged (several segments), then kill -9.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 3000 {
        server.assert_alive("under load");
        assert!(std::time::Instant::now() < deadline, "load too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let committed = committed.lock().unwrap().expect("some commit succeeded");

    let server = Server::start(dir.path(), &[("MAPQ_SEGMENT_BYTES", "65536")]);
    let mut stored = BTreeMap::new();
    for partition in 0..2 {
        for r in consume_all(&http, &server.base, "hard", partition).await {
            stored.insert(
                (partition, r["offset"].as_u64().unwrap()),
                r["value"].as_i64().unwrap(),
            );
        }
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(value),
            "acknowledged record lost"
        );
    }
    let g: Value = get_json(&http, format!("{}/v1/groups/c/offsets", server.base)).await;
    assert!(
        g["offsets"][0]["offset"].as_u64().unwrap() >= committed,
        "{g}"
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &[]);
    // If the directory lock regressed, this server would run forever: a deadline fails it.
    let out = output_with_deadline(
        common::server::serve_command("127.0.0.1:0", "127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path()),
        b"",
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = first.child.id().to_string();
    assert!(
        err.contains("is in use by another mapq server") && err.contains(&pid),
        "{err}"
    );
    // Once the first one stops, the directory is free again.
    assert_eq!(first.terminate(), 0);
    let again = Server::start(dir.path(), &[]);
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_files_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let http = Client::new();
    let server = Server::start(data, &[]);
    let records = json!({"records": [{"value": "a"}, {"value": "b"}]});
    let r = post_json(&http, server.url("/v1/topics/t/records"), &records).await;
    assert_eq!(r.status(), 200);
    assert_eq!(server.terminate(), 0);

    // Files nobody expects, at every level; one looks like a temporary file but is not
    // one of mapq's.
    let strays = [
        data.join("notes.txt"),
        data.join("Not A Topic"),
        data.join("t/notes.txt"),
        data.join("t/7"),
        data.join("t/0/notes.txt"),
        data.join("t/0/backup.new"),
    ];
    for path in &strays {
        std::fs::write(path, b"mine").unwrap();
    }
    let server = Server::start(data, &[]);
    for path in &strays {
        let shown = path.display().to_string();
        assert!(
            server.log_contains(&shown),
            "{shown} not reported: {}",
            server.log_text()
        );
        assert_eq!(std::fs::read(path).unwrap(), b"mine", "{shown} was touched");
    }
    let values: Vec<Value> = consume_all(&http, &server.base, "t", 0)
        .await
        .into_iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, [json!("a"), json!("b")]);
}

/// A server holding about 40 MB in topic `big`, and a connection that asked for all of it
/// and reads nothing, so the server's write of the answer stalls.
async fn server_with_a_stalled_reader(
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (Server, std::net::TcpStream) {
    let server = Server::start(data, env);
    let http = Client::new();
    let value = vec![b'v'; 900 << 10];
    for _ in 0..44 {
        let r = http
            .post(server.url("/v1/topics/big/records"))
            .header("content-type", "application/octet-stream")
            .body(value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"GET /v1/topics/big/partitions/0/records?max_bytes=67108864 HTTP/1.1\r\nHost: x\r\naccept: application/octet-stream\r\n\r\n",
    )
    .unwrap();
    // The answer has started (the rest, tens of MB, fills the socket buffers and blocks).
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut stalled, &mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    (server, stalled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_reader_ends_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _stalled) =
        server_with_a_stalled_reader(dir.path(), &[("MAPQ_SHUTDOWN_GRACE_MS", "1000")]).await;
    let started = std::time::Instant::now();
    let log = server.log.clone();
    assert_eq!(server.terminate(), 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The log is read by a background thread: wait for its last lines.
    for line in ["closing them", "all partitions flushed"] {
        assert!(
            common::server::log_contains(&log, line),
            "{line}: {}",
            log.lock().unwrap().join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _stalled) =
        server_with_a_stalled_reader(dir.path(), &[("MAPQ_SHUTDOWN_GRACE_MS", "600000")]).await;
    common::server::signal(&server.child, libc::SIGTERM);
    assert!(server.log_contains("shutting down"));
    let started = std::time::Instant::now();
    common::server::signal(&server.child, libc::SIGINT);
    let code = common::server::wait_with_deadline(&mut server.child, Duration::from_secs(10));
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.log_contains("second signal"));
}

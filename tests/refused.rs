//! A refused produce request changes nothing: not even the topic it would have created when
//! `auto_create_topics` is on. Against the real server.

mod common;

use common::server::{get_json, Server};
use mapq::log::format::{encode_frame, Record};
use reqwest::Client;
use serde_json::{json, Value};

fn frame(value: &[u8]) -> Vec<u8> {
    let r = Record::value(value, 0);
    let mut buf = vec![0; r.padded_len().unwrap()];
    encode_frame(&mut buf, 0, &r);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_produce_creates_no_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("MAPQ_MAX_REQUEST_BYTES", "4096"),
            ("MAPQ_MAX_RECORD_BYTES", "1024"),
            ("MAPQ_DEFAULT_PARTITIONS", "2"),
        ],
    );
    let http = Client::new();
    let mut bad_crc = frame(b"bad");
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 1;
    let json_body = |v: Value| v.to_string().into_bytes();
    // (query, content type, body, status, code)
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "",
            "application/json",
            json_body(json!({"records": [{"value": 1}, {"value_b64": "A".repeat(1500)}]})),
            413,
            "payload_too_large",
        ),
        (
            "",
            "application/json",
            vec![b' '; 5000],
            413,
            "payload_too_large",
        ),
        (
            "",
            "application/json",
            json_body(json!({"records": [{"value": 1}, {"value": 1, "value_b64": "AA=="}]})),
            400,
            "bad_request",
        ),
        (
            "",
            "application/json",
            b"{oops".to_vec(),
            400,
            "bad_request",
        ),
        (
            "",
            "application/json",
            json_body(
                json!({"records": [{"value": 1, "partition": 0}, {"value": 1, "partition": 2}]}),
            ),
            404,
            "partition_not_found",
        ),
        (
            "",
            "application/x-ndjson",
            b"{\"value\":1}\n{oops\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "",
            "application/octet-stream",
            vec![1; 2000],
            413,
            "payload_too_large",
        ),
        (
            "?partition=5",
            "application/octet-stream",
            b"x".to_vec(),
            404,
            "partition_not_found",
        ),
        (
            "",
            "application/vnd.mapq.frames",
            [frame(b"ok"), bad_crc].concat(),
            400,
            "bad_request",
        ),
        (
            "?partition=2",
            "application/vnd.mapq.frames",
            frame(b"ok"),
            404,
            "partition_not_found",
        ),
        (
            "",
            "text/plain",
            b"hi".to_vec(),
            415,
            "unsupported_media_type",
        ),
        // A request with no record does nothing, so it creates nothing either.
        (
            "",
            "application/json",
            json_body(json!({"records": []})),
            400,
            "bad_request",
        ),
        (
            "",
            "application/x-ndjson",
            b"\n\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "",
            "application/vnd.mapq.frames",
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "?durability=maybe",
            "application/octet-stream",
            b"x".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (i, (query, content_type, body, status, code)) in cases.into_iter().enumerate() {
        let topic = format!("t{i}");
        let r = http
            .post(server.url(&format!("/v1/topics/{topic}/records{query}")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "case {i} ({content_type}{query})"
        );
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "case {i}: {e}");
        let r = http
            .get(server.url(&format!("/v1/topics/{topic}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "case {i} created its topic");
        assert!(!dir.path().join(&topic).exists(), "case {i} left files");
    }
    // The same requests, valid, create the topic.
    let r = http
        .post(server.url("/v1/topics/ok/records?partition=1"))
        .header("content-type", "application/vnd.mapq.frames")
        .body(frame(b"ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = get_json(&http, server.url("/v1/topics/ok")).await;
    assert_eq!(v["partitions"], 2);
    assert_eq!(v["partition_stats"][1]["end_offset"], 1);
}

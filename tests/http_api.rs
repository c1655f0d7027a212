//! The HTTP contract (`../shared/API.md`), route by route and error code by error code,
//! against the real binary on a port chosen by the OS.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use mapq::log::format::{decode_frame, encode_frame, Record};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

struct Api {
    server: Server,
    http: Client,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start(env: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), env);
        Api {
            server,
            http: Client::new(),
            _dir: dir,
        }
    }

    /// Waits (bounded) until the server counts one long-poll waiter in its metrics.
    async fn await_one_waiter(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .get("/metrics")
            .await
            .text()
            .await
            .unwrap()
            .contains("mapq_long_poll_waiters 1")
        {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn post_json(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A binary consume's frames.
    async fn frames(&self, path: &str) -> bytes::Bytes {
        self.http
            .get(self.url(path))
            .header("accept", "application/octet-stream")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        self.http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn create(&self, name: &str, partitions: u32) {
        let r = self
            .post_json(
                "/v1/topics",
                json!({"name": name, "partitions": partitions}),
            )
            .await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }

    /// The end offsets of every partition of a topic.
    async fn ends(&self, topic: &str) -> Vec<u64> {
        let v: Value = self
            .get(&format!("/v1/topics/{topic}"))
            .await
            .json()
            .await
            .unwrap();
        v["partition_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["end_offset"].as_u64().unwrap())
            .collect()
    }

    async fn produce(&self, topic: &str, records: Value) -> Value {
        let r = self
            .post_json(
                &format!("/v1/topics/{topic}/records"),
                json!({ "records": records }),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// Asserts an error answer's status and stable code; returns its body.
async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_list_describe_delete() {
    let api = Api::start(&[]);
    let r = api
        .post_json(
            "/v1/topics",
            json!({"name": "orders", "partitions": 3, "config": {"retention_ms": null, "segment_bytes": 1048576}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partitions"], 3);
    assert_eq!(created["config"]["retention_ms"], Value::Null);
    assert_eq!(created["config"]["segment_bytes"], 1_048_576);
    assert_eq!(
        created["config"]["segment_ms"], 604_800_000,
        "defaults fill the rest"
    );
    assert_eq!(created["partition_stats"].as_array().unwrap().len(), 3);
    let described: Value = api.get("/v1/topics/orders").await.json().await.unwrap();
    assert_eq!(described, created, "201 returns the topic as GET does");

    api.create("audit.log-1_x", 1).await;
    let list: Value = api.get("/v1/topics").await.json().await.unwrap();
    assert_eq!(
        list,
        json!({"topics": [{"name": "audit.log-1_x", "partitions": 1}, {"name": "orders", "partitions": 3}]})
    );

    // Errors.
    expect_error(
        api.post_json("/v1/topics", json!({"name": "orders"})).await,
        409,
        "topic_exists",
    )
    .await;
    for bad in [
        "",
        ".",
        "..",
        "has space",
        "slash/",
        "ünïcode",
        &"x".repeat(201),
    ] {
        expect_error(
            api.post_json("/v1/topics", json!({"name": bad})).await,
            400,
            "invalid_name",
        )
        .await;
    }
    expect_error(
        api.post_json(
            "/v1/topics",
            json!({"name": "t", "config": {"retention_msec": 1}}),
        )
        .await,
        400,
        "invalid_config",
    )
    .await;
    // Too small, and too large to map (schemathesis found a 500 for the second).
    for segment_bytes in [100, i64::MAX as u64 - 1] {
        expect_error(
            api.post_json(
                "/v1/topics",
                json!({"name": "t", "config": {"segment_bytes": segment_bytes}}),
            )
            .await,
            400,
            "invalid_config",
        )
        .await;
    }
    expect_error(
        api.post_json(
            "/v1/topics",
            json!({"name": "t", "config": {"retention_ms": u64::MAX}}),
        )
        .await,
        400,
        "invalid_config",
    )
    .await;
    expect_error(
        api.post_json("/v1/topics", json!({"name": "t", "partitions": 0}))
            .await,
        400,
        "invalid_config",
    )
    .await;
    expect_error(
        api.post_raw("/v1/topics", "application/json", b"{not json".to_vec())
            .await,
        400,
        "bad_request",
    )
    .await;
    // Administrative bodies are JSON whatever the Content-Type says.
    let r = api
        .post_raw("/v1/topics", "text/plain", br#"{"name": "plain"}"#.to_vec())
        .await;
    assert_eq!(r.status(), 201);
    assert!(
        !api.server.data_dir.join("t").exists(),
        "rejected creates touch nothing"
    );
    expect_error(api.get("/v1/topics/missing").await, 404, "topic_not_found").await;
    expect_error(api.get("/v1/topics/bad%20name").await, 400, "invalid_name").await;

    // Delete removes the files.
    assert!(api.server.data_dir.join("orders/2").is_dir());
    let r = api
        .http
        .delete(api.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!api.server.data_dir.join("orders").exists());
    expect_error(api.get("/v1/topics/orders").await, 404, "topic_not_found").await;
    let r = api
        .http
        .delete(api.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "topic_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_in_every_format_and_consume_as_json() {
    let api = Api::start(&[]);
    api.create("orders", 2).await;
    let resp = api
        .produce(
            "orders",
            json!([
                {"key": "user-1", "value": {"any": "json", "n": [1, 2.5, null]}, "headers": {"source": "web"}},
                {"key_b64": "/w8=", "value_b64": "aGVsbG8=", "partition": 1, "timestamp_ms": 1_764_201_600_000_i64},
                {"value": "a JSON string", "partition": 1},
                {"value_b64": "/w==", "partition": 1},
            ]),
        )
        .await;
    let key_partition = mapq::broker::partitioner::partition_for_key(b"user-1", 2);
    assert_eq!(
        key_partition, 0,
        "the checks below assume user-1 goes to partition 0"
    );
    assert_eq!(
        resp,
        json!({"offsets": [
            {"partition": 0, "offset": 0},
            {"partition": 1, "offset": 0},
            {"partition": 1, "offset": 1},
            {"partition": 1, "offset": 2},
        ]})
    );

    // NDJSON and a raw value.
    let nd =
        b"{\"value\": 1, \"partition\": 0}\n\n{\"value\": [true], \"partition\": 0}\n".to_vec();
    let r = api
        .post_raw("/v1/topics/orders/records", "application/x-ndjson", nd)
        .await;
    assert_eq!(r.status(), 200);
    let r = api
        .post_raw(
            "/v1/topics/orders/records?key=k%201&partition=0",
            "application/octet-stream",
            vec![0, 159, 146, 150],
        )
        .await;
    assert_eq!(r.status(), 200);
    let off = r.json::<Value>().await.unwrap()["offsets"][0].clone();
    assert_eq!(off["partition"], 0);
    assert_eq!(
        off["offset"], 3,
        "after user-1's record and the two NDJSON ones"
    );

    let p1: Value = api
        .get("/v1/topics/orders/partitions/1/records")
        .await
        .json()
        .await
        .unwrap();
    let recs = p1["records"].as_array().unwrap();
    assert_eq!(
        recs.len(),
        3,
        "partition 1 holds the three records sent to it"
    );
    assert_eq!(
        recs[0]["key_b64"], "/w8=",
        "non-UTF-8 keys come back as base64"
    );
    assert_eq!(
        recs[0]["value"], "hello",
        "UTF-8 bytes come back as a string"
    );
    assert_eq!(recs[0]["timestamp_ms"], 1_764_201_600_000_i64);
    assert_eq!(recs[1]["value"], "a JSON string");
    assert_eq!(
        recs[2]["value_b64"], "/w==",
        "non-UTF-8 bytes come back as base64"
    );
    assert_eq!(recs[2]["key"], Value::Null);
    assert_eq!(p1["next_offset"], 3);
    assert_eq!(p1["high_watermark"], 3);

    let p0: Value = api
        .get("/v1/topics/orders/partitions/0/records?offset=earliest&max_records=100")
        .await
        .json()
        .await
        .unwrap();
    let values: Vec<&Value> = p0["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["value"])
        .collect();
    let tail: Vec<Value> = values[values.len() - 2..]
        .iter()
        .map(|v| (*v).clone())
        .collect();
    assert_eq!(tail[0], json!([true]));
    // All of partition 0: the keyed record, the two NDJSON values (the blank line between
    // them is skipped, not a record and not an error), then the raw value (base64, so no
    // `value`).
    assert_eq!(
        values,
        [
            &json!({"any": "json", "n": [1, 2.5, null]}),
            &json!(1),
            &json!([true]),
            &Value::Null,
        ],
        "partition 0's values, in order"
    );
    let last = p0["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["key"], "k 1");
    assert_eq!(last["value_b64"], "AJ+Slg==");
    let first = &p0["records"][0];
    assert_eq!(first["value"], json!({"any": "json", "n": [1, 2.5, null]}));
    assert_eq!(first["headers"], json!({"source": "web"}));
    assert_eq!(first["key"], "user-1");
}

/// Null values and null header values (format version 2) stay null, distinct from empty
/// ones: a record with neither `value` nor `value_b64` comes back with neither, one with an
/// empty value with `"value": ""`, and a null header value as `null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_values_and_null_headers_stay_null() {
    let api = Api::start(&[]);
    api.create("tombstones", 1).await;
    api.produce(
        "tombstones",
        json!([
            {"key": "user-1", "headers": {"gone": null, "empty": ""}},
            {"key": "user-2", "value_b64": ""},
            {"key": "user-3", "value": null},
        ]),
    )
    .await;
    let got: Value = api
        .get("/v1/topics/tombstones/partitions/0/records")
        .await
        .json()
        .await
        .unwrap();
    let recs = got["records"].as_array().unwrap();
    assert_eq!(recs.len(), 3);
    let null = recs[0].as_object().unwrap();
    assert!(
        !null.contains_key("value") && !null.contains_key("value_b64"),
        "a null value has neither field: {null:?}"
    );
    assert_eq!(recs[0]["headers"], json!({"gone": null, "empty": ""}));
    assert_eq!(recs[1]["value"], "", "an empty value is not null");
    assert_eq!(
        recs[2]["value"],
        Value::Null,
        "the JSON value null is a value"
    );
    assert!(recs[2].as_object().unwrap().contains_key("value"));

    // The frames as stored: the null value's flag, the empty value's length.
    let bytes = api
        .frames("/v1/topics/tombstones/partitions/0/records")
        .await;
    let first = decode_frame(&bytes).unwrap();
    assert_eq!(first.value(), None);
    let gone: Vec<_> = first.headers().collect();
    assert!(gone.contains(&(&b"gone"[..], None)));
    assert!(gone.contains(&(&b"empty"[..], Some(&b""[..]))));
    let second = decode_frame(&bytes[first.padded_len..]).unwrap();
    assert_eq!(second.value(), Some(&b""[..]));

    // Frames with batch heads (copied from a binary consume of a topic whose batches have
    // them) are taken without their heads: only the server writes heads (a client could
    // otherwise forge another producer's idempotency key).
    let mut headed = Record::value(b"v", 0);
    headed.batch = Some(mapq::log::format::BatchHead {
        record_count: 1,
        leader_epoch: 7,
        ..Default::default()
    });
    let mut frames = vec![0; headed.padded_len().unwrap()];
    encode_frame(&mut frames, 0, &headed);
    frames.extend_from_slice(&bytes[..first.padded_len]);
    let r = api
        .post_raw(
            "/v1/topics/tombstones/records",
            "application/vnd.mapq.frames",
            frames,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(api.ends("tombstones").await, [5]);
    let stored = api
        .frames("/v1/topics/tombstones/partitions/0/records?offset=3")
        .await;
    let copy = decode_frame(&stored).unwrap();
    assert_eq!(copy.value(), Some(&b"v"[..]));
    assert!(
        copy.batch().is_none(),
        "the client's batch head is not stored"
    );
    let second = decode_frame(&stored[copy.padded_len..]).unwrap();
    assert_eq!(second.value(), None, "the null value copied as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_produce_requests_append_nothing() {
    let api = Api::start(&[
        ("MAPQ_MAX_REQUEST_BYTES", "4096"),
        ("MAPQ_MAX_RECORD_BYTES", "1024"),
        ("MAPQ_AUTO_CREATE_TOPICS", "false"),
    ]);
    api.create("t", 2).await;
    api.produce(
        "t",
        json!([{"value": 1, "partition": 0}, {"value": 2, "partition": 1}]),
    )
    .await;
    let before = api.ends("t").await;
    let path = "/v1/topics/t/records";
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"records": [{"value": 1}, {"value": 1, "value_b64": "AA=="}]}),
            400,
            "bad_request",
        ),
        (
            json!({"records": [{"value": 1}, {"key": "a", "key_b64": "AA==", "value": 1}]}),
            400,
            "bad_request",
        ),
        (
            json!({"records": [{"value": 1}, {"value_b64": "not base64!"}]}),
            400,
            "bad_request",
        ),
        (
            json!({"records": [{"value": 1}, {"value": 1, "headers": {"a": 1}}]}),
            400,
            "bad_request",
        ),
        (
            json!({"records": [{"value": 1}, {"value": 1, "vaule": 2}]}),
            400,
            "bad_request",
        ),
        (json!({"recs": []}), 400, "bad_request"),
        (
            json!({"records": [{"value": 1, "partition": 0}, {"value": 1, "partition": 7}]}),
            404,
            "partition_not_found",
        ),
        (
            json!({"records": [{"value": 1}, {"value_b64": "A".repeat(1500)}]}),
            413,
            "payload_too_large",
        ),
        (
            json!({"records": [{"value": 1}, {"value": 1, "timestamp_ms": -5}]}),
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in cases {
        expect_error(api.post_json(path, body).await, status, code).await;
    }
    // A frame with a bad CRC rejects the whole binary request.
    let mut frames = frame(b"ok", 0);
    let mut bad = frame(b"bad", 0);
    let n = bad.len();
    bad[n - 8] ^= 1;
    frames.extend(bad);
    let json_body = |v: Value| v.to_string().into_bytes();
    let one_record = || json_body(json!({"records": [{"value": 1}]}));
    // (path, content type, body, status, code)
    let raw_cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            path,
            "application/octet-stream",
            vec![b'x'; 5000],
            413,
            "payload_too_large",
        ),
        (
            path,
            "application/octet-stream",
            vec![1; 2000],
            413,
            "payload_too_large",
        ),
        (
            path,
            "text/plain",
            b"hi".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            path,
            "application/x-ndjson",
            b"{\"value\":1}\n{oops\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            path,
            "application/vnd.mapq.frames",
            frames,
            400,
            "bad_request",
        ),
        (
            "/v1/topics/t/records?partition=9",
            "application/octet-stream",
            b"x".to_vec(),
            404,
            "partition_not_found",
        ),
        (
            "/v1/topics/t/records?durability=maybe",
            "application/octet-stream",
            b"x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "/v1/topics/t/records?partition=1",
            "application/json",
            one_record(),
            400,
            "bad_request",
        ),
        // Auto-creation is off here.
        (
            "/v1/topics/nope/records",
            "application/json",
            one_record(),
            404,
            "topic_not_found",
        ),
        (
            "/v1/topics/no%20pe/records",
            "application/json",
            one_record(),
            400,
            "invalid_name",
        ),
    ];
    for (path, content_type, body, status, code) in raw_cases {
        expect_error(api.post_raw(path, content_type, body).await, status, code).await;
    }
    assert_eq!(
        api.ends("t").await,
        before,
        "nothing was appended by any rejected request"
    );
    assert!(!api.server.data_dir.join("nope").exists());
}

fn frame(value: &[u8], ts: i64) -> Vec<u8> {
    let r = Record::value(value, ts);
    let mut buf = vec![0; r.padded_len().unwrap()];
    encode_frame(&mut buf, 0, &r);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_produce_and_consume_round_trip_frames() {
    let api = Api::start(&[]);
    // Auto-created on produce, with the defaults.
    let mut body = Vec::new();
    for i in 0..50u8 {
        body.extend(frame(
            &[i; 100],
            if i == 0 { 0 } else { 1_000 + i64::from(i) },
        ));
    }
    let r = api
        .post_raw(
            "/v1/topics/bin/records?partition=0&durability=fsync",
            "application/vnd.mapq.frames",
            body,
        )
        .await;
    assert_eq!(r.status(), 200);
    let offsets: Value = r.json().await.unwrap();
    assert_eq!(offsets["offsets"].as_array().unwrap().len(), 50);
    assert_eq!(
        offsets["offsets"][49],
        json!({"partition": 0, "offset": 49})
    );

    let r = api
        .http
        .get(api.url("/v1/topics/bin/partitions/0/records?offset=10&max_records=20"))
        .header("accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["x-mapq-next-offset"], "30");
    assert_eq!(r.headers()["x-mapq-high-watermark"], "50");
    let bytes = r.bytes().await.unwrap();
    let mut at = 0;
    let mut expect = 10u64;
    while at < bytes.len() {
        let f = decode_frame(&bytes[at..]).expect("the body is valid frames");
        assert_eq!(f.offset, expect);
        assert_eq!(f.value(), Some(&[expect as u8; 100][..]));
        assert_eq!(f.timestamp_ms, 1_000 + expect as i64);
        at += f.padded_len;
        expect += 1;
    }
    assert_eq!(expect, 30);
    // Timestamp 0 got the server's clock.
    let first: Value = api
        .get("/v1/topics/bin/partitions/0/records?max_records=1")
        .await
        .json()
        .await
        .unwrap();
    assert!(first["records"][0]["timestamp_ms"].as_i64().unwrap() > 1_700_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_offsets_timestamps_budgets_and_errors() {
    let api = Api::start(&[]);
    api.create("c", 1).await;
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"value": i, "timestamp_ms": 1000 + 10 * i}))
        .collect();
    api.produce("c", Value::Array(records)).await;
    let get = |q: &str| {
        let url = api.url(&format!("/v1/topics/c/partitions/0/records{q}"));
        api.http.get(url).send()
    };
    let v: Value = get("?offset=5&max_records=3")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offs: Vec<u64> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, [5, 6, 7]);
    assert_eq!(v["next_offset"], 8);
    assert_eq!(v["high_watermark"], 20);
    let v: Value = get("?timestamp_ms=1055")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["records"][0]["offset"], 6);
    let v: Value = get("?timestamp_ms=99999")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["records"], json!([]));
    assert_eq!(v["next_offset"], 20);
    let v: Value = get("?offset=latest").await.unwrap().json().await.unwrap();
    assert_eq!(
        (v["records"].as_array().unwrap().len(), &v["next_offset"]),
        (0, &json!(20))
    );
    let v: Value = get("?max_bytes=1").await.unwrap().json().await.unwrap();
    assert_eq!(
        v["records"].as_array().unwrap().len(),
        1,
        "at least one record"
    );
    let v: Value = get("?max_bytes=200").await.unwrap().json().await.unwrap();
    assert_eq!(
        v["records"].as_array().unwrap().len(),
        4,
        "48-byte frames, 200 bytes"
    );

    let e = expect_error(get("?offset=21").await.unwrap(), 416, "offset_out_of_range").await;
    assert_eq!(
        (
            e["error"]["earliest"].as_u64(),
            e["error"]["latest"].as_u64()
        ),
        (Some(0), Some(20))
    );
    expect_error(get("?offset=soon").await.unwrap(), 400, "bad_request").await;
    expect_error(
        get("?offset=1&timestamp_ms=5").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(get("?max_records=0").await.unwrap(), 400, "bad_request").await;
    expect_error(get("?wait_ms=30001").await.unwrap(), 400, "bad_request").await;
    expect_error(get("?colour=blue").await.unwrap(), 400, "bad_request").await;
    expect_error(
        api.get("/v1/topics/c/partitions/1/records").await,
        404,
        "partition_not_found",
    )
    .await;
    expect_error(
        api.get("/v1/topics/c/partitions/x/records").await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        api.get("/v1/topics/none/partitions/0/records").await,
        404,
        "topic_not_found",
    )
    .await;
    expect_error(api.get("/v2/nothing").await, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_woken_by_the_append() {
    let api = Api::start(&[]);
    api.create("lp", 1).await;
    let url = api.url("/v1/topics/lp/partitions/0/records?offset=0&wait_ms=20000");
    let started = Instant::now();
    let waiter = tokio::spawn({
        let http = api.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    // Produce once the consumer is waiting (the server counts its waiters).
    api.await_one_waiter("the consumer never waited").await;
    api.produce("lp", json!([{"value": "wake"}])).await;
    let v = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["records"][0]["value"], "wake");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered by the append, not the timeout"
    );

    // With nothing produced the wait ends empty after wait_ms.
    let started = Instant::now();
    let v: Value = api
        .get("/v1/topics/lp/partitions/0/records?offset=1&wait_ms=300")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["records"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_delivers_records_and_resumes_from_last_event_id() {
    use futures_util::StreamExt;
    let api = Api::start(&[]);
    api.create("s", 1).await;
    api.produce("s", json!([{"value": "a"}, {"value": "b"}]))
        .await;
    let read_events = |resp: Response, n: usize| async move {
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while text.matches("\ndata:").count() + usize::from(text.starts_with("data:")) < n {
            let chunk = tokio::time::timeout_at(deadline.into(), stream.next())
                .await
                .expect("events in time")
                .expect("stream open")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    };
    let resp = api
        .get("/v1/topics/s/partitions/0/stream?offset=earliest")
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let reader = tokio::spawn(read_events(resp, 3));
    api.produce("s", json!([{"value": "c"}])).await;
    let text = reader.await.unwrap();
    for (id, v) in [(0, "a"), (1, "b"), (2, "c")] {
        assert!(
            text.contains(&format!("id: {id}")) || text.contains(&format!("id:{id}")),
            "{text}"
        );
        assert!(text.contains(&format!("\"value\":\"{v}\"")), "{text}");
    }
    let resp = api
        .http
        .get(api.url("/v1/topics/s/partitions/0/stream"))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let text = read_events(resp, 1).await;
    assert!(
        text.contains("\"offset\":2"),
        "resumes after event 1: {text}"
    );
    assert!(!text.contains("\"offset\":1"), "{text}");
    let r = api
        .http
        .get(api.url("/v1/topics/s/partitions/0/stream"))
        .header("last-event-id", u64::MAX.to_string())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
    expect_error(
        api.get("/v1/topics/s/partitions/0/stream?offset=9").await,
        416,
        "offset_out_of_range",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_commit_read_and_lag() {
    let api = Api::start(&[]);
    api.create("g", 2).await;
    api.produce("g", json!([{"value": 1, "partition": 0}, {"value": 2, "partition": 0}, {"value": 3, "partition": 1}])).await;
    let put = |group: &str, body: Value| {
        api.http
            .put(api.url(&format!("/v1/groups/{group}/offsets")))
            .json(&body)
            .send()
    };
    let r = put("billing", json!({"offsets": [{"topic": "g", "partition": 0, "offset": 1}, {"topic": "g", "partition": 1, "offset": 1}]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let v: Value = api
        .get("/v1/groups/billing/offsets")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"offsets": [
            {"topic": "g", "partition": 0, "offset": 1, "lag": 1},
            {"topic": "g", "partition": 1, "offset": 1, "lag": 0},
        ]})
    );
    let v: Value = api
        .get("/v1/groups/billing/offsets?topic=other")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"offsets": []}));
    let v: Value = api.get("/v1/groups").await.json().await.unwrap();
    assert_eq!(v, json!({"groups": ["billing"]}));
    expect_error(
        api.get("/v1/groups/nobody/offsets").await,
        404,
        "group_not_found",
    )
    .await;
    expect_error(
        api.get("/v1/groups/no%20body/offsets").await,
        400,
        "invalid_name",
    )
    .await;
    let refused = [
        (
            "x",
            json!({"offsets": [{"topic": "zz", "partition": 0, "offset": 0}]}),
            404,
            "topic_not_found",
        ),
        (
            "x",
            json!({"offsets": [{"topic": "g", "partition": 5, "offset": 0}]}),
            404,
            "partition_not_found",
        ),
        (
            "x",
            json!({"offsets": [{"topic": "g", "partition": 0, "offset": 99}]}),
            400,
            "bad_request",
        ),
        ("x", json!({"offsets": "all"}), 400, "bad_request"),
        ("b d", json!({"offsets": []}), 400, "invalid_name"),
    ];
    for (group, body, status, code) in refused {
        expect_error(put(group, body).await.unwrap(), status, code).await;
    }
    expect_error(
        api.get("/v1/groups/x/offsets").await,
        404,
        "group_not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes() {
    let api = Api::start(&[]);
    assert_eq!(api.get("/healthz").await.status(), 200);
    let r = api.get("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ready"}));
    api.create("m", 1).await;
    let m = api.get("/metrics").await.text().await.unwrap();
    assert!(
        m.contains(r#"mapq_http_requests_total{method="POST",route="/v1/topics",status="201"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"mapq_log_end_offset{partition="0",topic="m"} 0"#),
        "{m}"
    );
    let doc: Value = api.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/v1/topics", vec!["get", "post"]),
        ("/v1/topics/{topic}", vec!["delete", "get"]),
        ("/v1/topics/{topic}/records", vec!["post"]),
        (
            "/v1/topics/{topic}/partitions/{partition}/records",
            vec!["get"],
        ),
        (
            "/v1/topics/{topic}/partitions/{partition}/stream",
            vec!["get"],
        ),
        ("/v1/groups/{group}/offsets", vec!["get", "put"]),
        ("/v1/groups", vec!["get"]),
        ("/v1/groups/{group}", vec!["get", "put"]),
        ("/v1/groups/{group}/members/{member}", vec!["delete", "put"]),
        ("/v1/groups/{group}/members/{member}/records", vec!["get"]),
        ("/v1/groups/{group}/leases", vec!["post"]),
        ("/v1/groups/{group}/acks", vec!["post"]),
        ("/metrics", vec!["get"]),
        ("/healthz", vec!["get"]),
        ("/readyz", vec!["get"]),
        ("/openapi.json", vec!["get"]),
        ("/v1/cluster", vec!["get"]),
        ("/v1/internal/replicate/{topic}/{partition}", vec!["get"]),
        ("/v1/internal/epoch-end/{topic}/{partition}", vec!["get"]),
    ];
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
        let mut got: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        got.retain(|k| ["get", "post", "put", "delete"].contains(k));
        got.sort();
        assert_eq!(got, methods, "{path}");
    }
    // A record's value may be any JSON (a string, an array, a number...): its schema must not
    // restrict the type (schemathesis found an `"[]"` value refused by an object-only schema).
    for schema in ["RecordIn", "RecordOut"] {
        let value = &doc["components"]["schemas"][schema]["properties"]["value"];
        assert!(value.is_object(), "{schema}: {value}");
        assert!(value.get("type").is_none(), "{schema}: {value}");
    }
    // Every reference in the document resolves (a client generator would choke otherwise).
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("local schema reference");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    let topic_param = &doc["paths"]["/v1/topics/{topic}"]["get"]["parameters"][0];
    assert_eq!(topic_param["schema"]["pattern"], "^[A-Za-z0-9._-]{1,200}$");
    let r = api.http.patch(api.url("/v1/topics")).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_bounded() {
    let api = Api::start(&[("MAPQ_MAX_LONG_POLL_WAITERS", "1")]);
    api.create("w", 1).await;
    let url = api.url("/v1/topics/w/partitions/0/records?wait_ms=20000");
    let first = tokio::spawn({
        let http = api.http.clone();
        async move { http.get(url).send().await.unwrap().status() }
    });
    api.await_one_waiter("the first consumer never waited")
        .await;
    expect_error(
        api.get("/v1/topics/w/partitions/0/records?wait_ms=1000")
            .await,
        429,
        "too_many_waiters",
    )
    .await;
    // Without a wait, others are served as usual.
    assert_eq!(
        api.get("/v1/topics/w/partitions/0/records").await.status(),
        200
    );
    api.produce("w", json!([{"value": 1}])).await;
    assert_eq!(first.await.unwrap(), 200);
}

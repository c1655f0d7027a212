//! `GET /metrics` as Prometheus reads it: a known workload, scraped and parsed with a real
//! Prometheus text-format parser, must show exactly that workload.

mod common;

use common::prom::{samples, scrape, value};
use common::server::{commit_offset, create_topic, get_json, post_json, Server};
use mapq::log::format::Record;
use reqwest::Client;
use serde_json::{json, Value as Json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_workload_and_gauges_match_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    let base = server.base.clone();
    create_topic(&http, &base, json!({"name": "m", "partitions": 2})).await;
    // 3 requests x 10 records of the JSON value 12345 into partition 0, 1 fsync request
    // of 5 records into partition 1.
    for _ in 0..3 {
        let records: Vec<Json> = (0..10)
            .map(|_| json!({"value": 12345, "partition": 0}))
            .collect();
        let r = post_json(
            &http,
            format!("{base}/v1/topics/m/records"),
            &json!({ "records": records }),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let records: Vec<Json> = (0..5)
        .map(|_| json!({"value": 12345, "partition": 1}))
        .collect();
    let r = post_json(
        &http,
        format!("{base}/v1/topics/m/records?durability=fsync"),
        &json!({ "records": records }),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Read 7 records of partition 0, commit a group offset.
    let r = http
        .get(format!(
            "{base}/v1/topics/m/partitions/0/records?offset=0&max_records=7"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    commit_offset(&http, &base, "g", ("m", 0, 7)).await;
    let r = http
        .get(format!("{base}/v1/topics/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let s = scrape(&http, &base).await;
    let frame = Record {
        value_is_json: true,
        ..Record::value(b"12345", 0)
    }
    .padded_len()
    .unwrap() as f64;
    let p0 = [("topic", "m"), ("partition", "0")];
    let p1 = [("topic", "m"), ("partition", "1")];
    assert_eq!(value(&s, "mapq_records_appended_total", &p0), 30.0);
    assert_eq!(value(&s, "mapq_records_appended_total", &p1), 5.0);
    assert_eq!(value(&s, "mapq_bytes_appended_total", &p0), 30.0 * frame);
    assert_eq!(value(&s, "mapq_records_read_total", &p0), 7.0);
    assert_eq!(value(&s, "mapq_bytes_read_total", &p0), 7.0 * frame);
    assert_eq!(
        value(
            &s,
            "mapq_produce_duration_seconds",
            &[("durability", "memory")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "mapq_produce_duration_seconds",
            &[("durability", "fsync")]
        ),
        1.0
    );
    let g = [("group", "g"), ("topic", "m"), ("partition", "0")];
    assert_eq!(value(&s, "mapq_consumer_group_offset", &g), 7.0);
    assert_eq!(value(&s, "mapq_consumer_group_lag", &g), 23.0);
    assert!(
        value(&s, "mapq_log_durable_offset", &p1) >= 5.0,
        "fsync made partition 1 durable"
    );
    assert!(value(&s, "mapq_flushes_total", &p1) >= 1.0);
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);

    // The log gauges say what GET /v1/topics/m says.
    let d: Json = get_json(&http, format!("{base}/v1/topics/m")).await;
    let partition_stats = d["partition_stats"].as_array().unwrap();
    assert_eq!(partition_stats.len(), 2, "topic m has two partitions: {d}");
    for stats in partition_stats {
        let p = stats["partition"].to_string();
        let l = [("topic", "m"), ("partition", p.as_str())];
        assert_eq!(
            value(&s, "mapq_log_start_offset", &l),
            stats["start_offset"].as_f64().unwrap()
        );
        assert_eq!(
            value(&s, "mapq_log_end_offset", &l),
            stats["end_offset"].as_f64().unwrap()
        );
        assert_eq!(
            value(&s, "mapq_log_size_bytes", &l),
            stats["size_bytes"].as_f64().unwrap()
        );
        assert_eq!(
            value(&s, "mapq_log_segments", &l),
            stats["segments"].as_f64().unwrap()
        );
    }

    // Routes are templates, never raw paths.
    let routes: Vec<String> = samples(&s, "mapq_http_requests_total")
        .into_iter()
        .flat_map(|(pairs, _)| {
            pairs
                .into_iter()
                .filter(|(k, _)| k == "route")
                .map(|(_, v)| v)
        })
        .collect();
    assert!(
        routes.iter().any(|r| r == "/v1/topics/{topic}/records"),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r == "/v1/topics/{topic}"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .all(|r| !r.contains("/m/") && !r.ends_with("/m") && !r.contains("nope")),
        "{routes:?}"
    );
    assert_eq!(
        value(
            &s,
            "mapq_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/topics/{topic}/records"),
                ("status", "200")
            ]
        ),
        4.0
    );

    // Deleting the topic removes its series.
    let r = http
        .delete(format!("{base}/v1/topics/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let s = scrape(&http, &base).await;
    assert!(
        !s.families.is_empty() && s.families.contains_key("mapq_http_requests_total"),
        "the scrape after the delete has metric families: {:?}",
        s.families.keys().collect::<Vec<_>>()
    );
    for name in s.families.keys() {
        let left = samples(&s, name)
            .into_iter()
            .any(|(pairs, _)| pairs.iter().any(|(k, v)| k == "topic" && v == "m"));
        assert!(!left, "series of the deleted topic remain in {name}");
    }
    // No quota configured: the quota's gauges are absent, not a misleading 0
    // (tests/maintenance.rs checks them with a quota).
    for name in ["mapq_disk_used_bytes", "mapq_disk_limit_bytes"] {
        assert!(!s.families.contains_key(name), "{name} without a quota");
    }
}

/// Idempotent produce shows in its series: the keys remembered, the retries answered from the
/// log, the refusals by code, and how long the rebuild at start-up took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_series_count_keys_replays_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    let base = server.base.clone();
    create_topic(&http, &base, json!({"name": "idem", "partitions": 1})).await;
    let send = |key: &'static str, value: i64| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/topics/idem/records"))
                .header("idempotency-key", key)
                .json(&json!({"records": [{"value": value}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("a", 1).await, 200);
    assert_eq!(send("a", 1).await, 200, "a replay");
    assert_eq!(send("a", 1).await, 200, "another replay");
    assert_eq!(send("a", 2).await, 422, "another request under the key");
    assert_eq!(send("b", 1).await, 200);
    let s = scrape(&http, &base).await;
    let topic = [("topic", "idem")];
    assert_eq!(value(&s, "mapq_idempotency_keys", &topic), 2.0);
    assert_eq!(value(&s, "mapq_idempotent_replays_total", &topic), 2.0);
    let conflicts = |code: &str| {
        value(
            &s,
            "mapq_idempotency_conflicts_total",
            &[("topic", "idem"), ("code", code)],
        )
    };
    assert_eq!(conflicts("idempotency_key_mismatch"), 1.0);
    assert_eq!(conflicts("idempotency_key_in_flight"), 0.0);
    assert!(
        !samples(&s, "mapq_idempotency_rebuild_milliseconds").is_empty(),
        "the rebuild time is exported"
    );
    assert_eq!(
        value(
            &s,
            "mapq_records_appended_total",
            &[("topic", "idem"), ("partition", "0")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_requests_errors_latency_and_connections_are_counted() {
    use common::kafka::{batch, KafkaClient};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiVersionsRequest, MetadataRequest, ProduceRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    let produce = |records: bytes::Bytes| {
        let mut p = PartitionProduceData::default();
        p.records = Some(records);
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str("km"));
        t.partition_data = vec![p];
        let mut r = ProduceRequest::default();
        r.acks = -1;
        r.timeout_ms = 5000;
        r.topic_data = vec![t];
        r
    };
    let mut c = KafkaClient::connect(&server.kafka_addr());
    c.call(3, &ApiVersionsRequest::default());
    c.call(3, &ApiVersionsRequest::default());
    c.call(1, &MetadataRequest::default());
    for i in 0..3 {
        let r = c.call(9, &produce(batch(i, 2, None)));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let mut bad = batch(9, 1, None).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = c.call(9, &produce(bad.into()));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);

    let s = scrape(&http, &server.base).await;
    fn api(name: &str) -> [(&str, &str); 1] {
        [("api", name)]
    }
    assert_eq!(
        value(&s, "mapq_kafka_requests_total", &api("ApiVersions")),
        2.0
    );
    assert_eq!(
        value(&s, "mapq_kafka_requests_total", &api("Metadata")),
        1.0
    );
    assert_eq!(value(&s, "mapq_kafka_requests_total", &api("Produce")), 4.0);
    assert_eq!(
        value(
            &s,
            "mapq_kafka_request_errors_total",
            &[("api", "Produce"), ("error", "CorruptMessage")]
        ),
        1.0
    );
    assert_eq!(samples(&s, "mapq_kafka_request_errors_total").len(), 1);
    assert_eq!(
        value(&s, "mapq_kafka_request_duration_seconds", &api("Produce")),
        4.0
    );
    assert_eq!(value(&s, "mapq_kafka_connections", &[]), 1.0);
    assert_eq!(value(&s, "mapq_kafka_connections_total", &[]), 1.0);
    // The records the good produces appended, as the HTTP side counts them.
    let t = get_json(&http, server.url("/v1/topics/km")).await;
    assert_eq!(t["partition_stats"][0]["end_offset"], 6);

    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = scrape(&http, &server.base).await;
        if value(&s, "mapq_kafka_connections", &[]) == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection is still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

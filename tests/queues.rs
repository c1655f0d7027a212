//! Queue groups against the real server: every kind of ack, tokens that stop working once
//! their record is leased again, dead letters with their headers, leases that survive a
//! `kill -9`, a full in-flight window reported, bad input refused with nothing changed; and
//! the journal, cut at every byte of its tail, recovering a prefix of its events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Queue {
    http: Client,
    base: String,
    group: String,
}

impl Queue {
    fn new(base: &str, group: &str) -> Self {
        Queue {
            http: Client::new(),
            base: base.to_owned(),
            group: group.to_owned(),
        }
    }

    async fn put(&self, settings: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .put(format!("{}/v1/groups/{}", self.base, self.group))
            .json(&settings)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn lease(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/groups/{}/leases", self.base, self.group))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Leases that must succeed: the records.
    async fn take(&self, max: u64) -> Vec<Value> {
        let (status, body) = self.lease(json!({"member": "t", "max_records": max})).await;
        assert_eq!(status, 200, "{body}");
        body["records"].as_array().unwrap().clone()
    }

    /// Leases (up to 10 at a time) until at least `n` records came back, each lease
    /// long-polling until one is due (a lease expires, a delay ends), for at most 10 s.
    async fn take_waiting(&self, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && std::time::Instant::now() < deadline {
            let (status, body) = self
                .lease(json!({"member": "t", "max_records": 10, "wait_ms": 5000}))
                .await;
            assert_eq!(status, 200, "{body}");
            got.extend(body["records"].as_array().unwrap().iter().cloned());
        }
        got
    }

    async fn ack_raw(&self, acks: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/groups/{}/acks", self.base, self.group))
            .json(&json!({ "acks": acks }))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Acks that must be answered: `(status, repeat)` of each.
    async fn ack(&self, acks: Value) -> Vec<(String, bool)> {
        let (status, body) = self.ack_raw(acks).await;
        assert_eq!(status, 200, "{body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["status"].as_str().unwrap().to_owned(),
                    r["repeat"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    async fn describe(&self) -> Value {
        get_json(
            &self.http,
            format!("{}/v1/groups/{}", self.base, self.group),
        )
        .await
    }
}

async fn produce(base: &str, topic: &str, values: &[&str]) {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"value": v, "partition": 0}))
        .collect();
    let r = Client::new()
        .post(format!("{base}/v1/topics/{topic}/records"))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn by_value(records: &[Value]) -> BTreeMap<String, Value> {
    records
        .iter()
        .map(|r| (r["value"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

fn ok(repeat: bool) -> (String, bool) {
    ("ok".to_owned(), repeat)
}

fn lost() -> (String, bool) {
    ("lease_lost".to_owned(), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_ack_and_tokens_that_stop_once_their_record_is_leased_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create_topic(&http, &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["a", "b", "c", "d"]).await;
    let q = Queue::new(&server.base, "work");
    let settings = json!({"type": "queue", "topics": ["jobs"], "lease_ms": 600, "max_deliveries": 3, "dead_letter_topic": "jobs.dlq"});
    let (status, body) = q.put(settings.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["max_in_flight"], 10000);
    assert_eq!(
        q.put(settings).await.0,
        StatusCode::OK,
        "the same settings again"
    );

    let got = by_value(&q.take(10).await);
    assert_eq!(got.len(), 4);
    let token = |v: &str| got[v]["lease"].clone();
    assert!(got
        .values()
        .all(|r| r["delivery"] == 1 && r["topic"] == "jobs"));
    // Nothing more while all four are leased.
    assert!(q.take(10).await.is_empty());
    let results = q
        .ack(json!([
            {"lease": token("a"), "type": "accept"},
            {"lease": token("a"), "type": "accept"},
            {"lease": token("b"), "type": "release", "delay_ms": 300},
            {"lease": token("c"), "type": "extend", "lease_ms": 5000},
            {"lease": token("d"), "type": "reject"},
        ]))
        .await;
    assert_eq!(
        results,
        [ok(false), ok(true), ok(false), ok(false), ok(false)]
    );
    let released_at = Instant::now();
    // b comes back after its delay, as delivery 2; c stays leased past its first lease.
    let mut again = Vec::new();
    while again.is_empty() {
        assert!(
            released_at.elapsed() < Duration::from_secs(10),
            "b never came back"
        );
        let (status, body) = q.lease(json!({"max_records": 10, "wait_ms": 2000})).await;
        assert_eq!(status, 200, "{body}");
        again = body["records"].as_array().unwrap().clone();
    }
    assert!(
        released_at.elapsed() >= Duration::from_millis(250),
        "b came back early"
    );
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (&again[0]["value"], &again[0]["delivery"]),
        (&json!("b"), &json!(2))
    );
    // b's first token acts on nothing now; a's accepted token stays harmless.
    let results = q
        .ack(json!([
            {"lease": token("b"), "type": "accept"},
            {"lease": token("a"), "type": "release"},
        ]))
        .await;
    assert_eq!(results, [lost(), lost()]);
    // b's lease expires (delivery 2), comes back as delivery 3, is released: its last
    // delivery failed, so it goes to the dead letters.
    let third = q.take_waiting(1).await;
    assert_eq!(
        third.len(),
        1,
        "only b: c is still leased after its extend: {third:?}"
    );
    assert_eq!(
        (&third[0]["value"], &third[0]["delivery"]),
        (&json!("b"), &json!(3)),
        "{third:?}"
    );
    let results = q
        .ack(json!([{"lease": third[0]["lease"], "type": "release"}]))
        .await;
    assert_eq!(results, [ok(false)]);
    // The dead letters: d rejected at its first delivery, b after three.
    let dlq = get_json(
        &http,
        format!("{}/v1/topics/jobs.dlq/partitions/0/records", server.base),
    )
    .await;
    let dead = by_value(dlq["records"].as_array().unwrap());
    assert_eq!(dead.len(), 2, "{dlq}");
    let h = &dead["d"]["headers"];
    assert_eq!(
        (
            &h["dlq.group"],
            &h["dlq.topic"],
            &h["dlq.partition"],
            &h["dlq.offset"],
            &h["dlq.deliveries"],
            &h["dlq.reason"]
        ),
        (
            &json!("work"),
            &json!("jobs"),
            &json!("0"),
            &json!("3"),
            &json!("1"),
            &json!("rejected")
        )
    );
    let h = &dead["b"]["headers"];
    assert_eq!(
        (&h["dlq.deliveries"], &h["dlq.reason"]),
        (&json!("3"), &json!("max_deliveries"))
    );
    // c is the only one in flight; a, b, d settled.
    let d = q.describe().await;
    assert_eq!(
        (
            &d["type"],
            &d["backlog"],
            &d["in_flight"],
            &d["dead_lettered"]
        ),
        (&json!("queue"), &json!(0), &json!(1), &json!(2)),
        "{d}"
    );
    let results = q
        .ack(json!([{"lease": token("c"), "type": "accept"}]))
        .await;
    assert_eq!(results, [ok(false)]);
    let d = q.describe().await;
    assert_eq!(
        (&d["in_flight"], &d["oldest_unacked_age_ms"]),
        (&json!(0), &json!(0)),
        "{d}"
    );
    let metrics = common::server::get_text(&http, format!("{}/metrics", server.base)).await;
    for line in [
        r#"mapq_queue_acks_total{group="work",type="accept"} 2"#,
        r#"mapq_queue_deliveries_total{group="work",kind="retry"} 2"#,
        r#"mapq_queue_dead_letters_total{group="work"} 2"#,
        r#"mapq_queue_lost_leases_total{group="work"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

/// The binary lease answer (`Accept: application/vnd.mapq.leases`): a 4-byte length, the
/// JSON answer without keys, values and headers, then each record's frame as on disk; its
/// tokens ack as the JSON answer's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_lease_answer_holds_the_json_leases_then_the_frames() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_topic(
        &Client::new(),
        &server.base,
        json!({"name": "jobs", "partitions": 2}),
    )
    .await;
    let values: Vec<String> = (0..6).map(|i| format!("job-{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    produce(&server.base, "jobs", &refs).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q
        .put(json!({"type": "queue", "topics": ["jobs"], "lease_ms": 60000}))
        .await;
    assert_eq!(status, 201, "{body}");
    let r = q
        .http
        .post(format!("{}/v1/groups/work/leases", q.base))
        .header("accept", "application/vnd.mapq.leases")
        .json(&json!({"max_records": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.mapq.leases");
    let bytes = r.bytes().await.unwrap();
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let prelude: Value = serde_json::from_slice(&bytes[4..4 + len]).unwrap();
    assert_eq!(prelude["window_full"], false, "{prelude}");
    let leases = prelude["records"].as_array().unwrap();
    assert_eq!(leases.len(), 6, "{prelude}");
    // Each lease in the JSON answer's fields, then the frames in the same order.
    let mut frames = &bytes[4 + len..];
    let mut seen = BTreeSet::new();
    for l in leases {
        let fields: BTreeSet<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "topic",
                "partition",
                "offset",
                "timestamp_ms",
                "lease",
                "delivery",
                "lease_expires_ms"
            ]),
            "{l}"
        );
        let (p, o) = (
            l["partition"].as_u64().unwrap(),
            l["offset"].as_u64().unwrap(),
        );
        assert_eq!(l["topic"], "jobs");
        assert_eq!(l["delivery"], 1);
        assert_eq!(l["lease"], format!("1.{p}.{o}.jobs"), "{l}");
        assert!(l["lease_expires_ms"].as_i64().unwrap() > l["timestamp_ms"].as_i64().unwrap());
        let f = mapq::log::format::decode_frame(frames).unwrap();
        assert_eq!(f.offset, o, "{l}");
        seen.insert(String::from_utf8(f.value().unwrap().to_vec()).unwrap());
        frames = &frames[f.padded_len..];
    }
    assert!(frames.is_empty());
    // (JSON records' values are kept as their JSON text.)
    assert_eq!(seen, values.iter().map(|v| format!("{v:?}")).collect());
    let acks: Vec<Value> = leases
        .iter()
        .map(|l| json!({"lease": l["lease"], "type": "accept"}))
        .collect();
    assert_eq!(q.ack(Value::from(acks)).await, vec![ok(false); 6]);
}

/// Leases granted before a `kill -9` are acked after it, and delivery counts survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_delivery_counts_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_topic(&Client::new(), &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["a", "b", "c"]).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q
        .put(json!({"type": "queue", "topics": ["jobs"], "lease_ms": 1000}))
        .await;

    assert_eq!(status, 201, "{body}");
    let first = by_value(&q.take(10).await);
    // b is released and leased again (delivery 2) before the kill.
    q.ack(json!([{"lease": first["b"]["lease"], "type": "release"}]))
        .await;
    let b2 = q.take(10).await;
    assert_eq!(b2[0]["delivery"], 2);
    server.kill();
    let server = Server::start(dir.path(), &[]);
    let q = Queue::new(&server.base, "work");
    let results = q
        .ack(json!([
            {"lease": first["a"]["lease"], "type": "accept"},
            {"lease": first["b"]["lease"], "type": "accept"},
            {"lease": b2[0]["lease"], "type": "release"},
        ]))
        .await;
    assert_eq!(results, [ok(false), lost(), ok(false)]);
    // c's lease (delivery 1) expires; b comes back as delivery 3, c as 2: nothing reset.
    let again = by_value(&q.take_waiting(2).await);
    assert_eq!(
        (&again["b"]["delivery"], &again["c"]["delivery"]),
        (&json!(3), &json!(2)),
        "{again:?}"
    );
    assert!(!again.contains_key("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_in_flight_window_is_reported_not_a_silent_stall() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_topic(&Client::new(), &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["a", "b", "c", "d", "e"]).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q
        .put(json!({"type": "queue", "topics": ["jobs"], "max_in_flight": 2}))
        .await;

    assert_eq!(status, 201, "{body}");
    let (_, body) = q.lease(json!({"max_records": 5})).await;
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    assert_eq!(body["window_full"], true);
    let (_, body) = q.lease(json!({"max_records": 5})).await;
    assert_eq!(
        (
            body["records"].as_array().unwrap().len(),
            &body["window_full"]
        ),
        (0, &json!(true))
    );
    let d = q.describe().await;
    assert_eq!(
        (&d["window_full"], &d["backlog"], &d["in_flight"]),
        (&json!(true), &json!(3), &json!(2)),
        "{d}"
    );
    let metrics = common::server::get_text(&q.http, format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains(r#"mapq_queue_window_full_total{group="work"} 2"#),
        "{metrics}"
    );
}

/// Bad input: clear 4xx (or per-item `lease_lost`), and the group as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create_topic(&http, &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["a", "b"]).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q
        .put(json!({"type": "queue", "topics": ["jobs"], "dead_letter_topic": "dead"}))
        .await;

    assert_eq!(status, 201, "{body}");
    let leased = q.take(1).await;
    let token = leased[0]["lease"].clone();
    let before = q.describe().await;
    let code = |b: &Value| b["error"]["code"].as_str().unwrap_or("").to_owned();
    let cases: Vec<(&str, (StatusCode, Value), u16, &str)> = vec![
        (
            "a malformed token",
            q.ack_raw(json!([{"lease": "nonsense", "type": "accept"}]))
                .await,
            400,
            "bad_request",
        ),
        (
            "an unknown ack type",
            q.ack_raw(json!([{"lease": token, "type": "nack"}])).await,
            400,
            "bad_request",
        ),
        (
            "extend beyond the longest lease",
            q.ack_raw(json!([{"lease": token, "type": "extend", "lease_ms": 43_200_001u64}]))
                .await,
            400,
            "bad_request",
        ),
        (
            "a delay on an accept",
            q.ack_raw(json!([{"lease": token, "type": "accept", "delay_ms": 5}]))
                .await,
            400,
            "bad_request",
        ),
        (
            "a good ack before a bad one",
            q.ack_raw(
                json!([{"lease": token, "type": "accept"}, {"lease": "1.x", "type": "accept"}]),
            )
            .await,
            400,
            "bad_request",
        ),
        ("no acks", q.ack_raw(json!([])).await, 400, "bad_request"),
        (
            "max_records 0",
            q.lease(json!({"max_records": 0})).await,
            400,
            "bad_request",
        ),
        (
            "wait_ms over the cap",
            q.lease(json!({"wait_ms": 30_001})).await,
            400,
            "bad_request",
        ),
        (
            "a dead-letter topic that is a source",
            Queue::new(&server.base, "other")
                .put(json!({"type": "queue", "topics": ["jobs"], "dead_letter_topic": "jobs"}))
                .await,
            400,
            "invalid_config",
        ),
        (
            "no topics",
            Queue::new(&server.base, "other")
                .put(json!({"type": "queue", "topics": []}))
                .await,
            400,
            "invalid_config",
        ),
        (
            "a missing topic",
            Queue::new(&server.base, "other")
                .put(json!({"type": "queue", "topics": ["nope"]}))
                .await,
            404,
            "topic_not_found",
        ),
        (
            "other settings for the group",
            q.put(json!({"type": "queue", "topics": ["jobs"], "lease_ms": 1000}))
                .await,
            409,
            "group_exists",
        ),
        (
            "a partitioned group of the same name",
            q.put(json!({"type": "partitioned"})).await,
            409,
            "group_exists",
        ),
        (
            "a member joining it",
            {
                let r = http
                    .put(format!("{}/v1/groups/work/members/m", server.base))
                    .json(&json!({"topics": ["jobs"]}))
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.json().await.unwrap())
            },
            409,
            "group_exists",
        ),
        (
            "an unknown group",
            Queue::new(&server.base, "nope").lease(json!({})).await,
            404,
            "group_not_found",
        ),
        (
            "a lease from a group with members",
            {
                let pg = Queue::new(&server.base, "pg");
                assert_eq!(pg.put(json!({"type": "partitioned"})).await.0, 201);
                pg.lease(json!({})).await
            },
            409,
            "group_exists",
        ),
        (
            "an unknown setting",
            Queue::new(&server.base, "other")
                .put(json!({"type": "queue", "topics": ["jobs"], "lease": 5}))
                .await,
            400,
            "bad_request",
        ),
    ];
    for (what, (status, body), want, want_code) in cases {
        assert_eq!(
            (status.as_u16(), code(&body)),
            (want, want_code.to_owned()),
            "{what}: {body}"
        );
    }
    // A well-formed token of a record never leased: lease_lost, per item.
    assert_eq!(q.ack(json!([{"lease": "1.0.1.jobs", "type": "accept"}, {"lease": "1.3.0.jobs", "type": "accept"}])).await, [lost(), lost()]);
    let mut after = q.describe().await;
    // Ages move with the clock; everything else is as it was.
    after["oldest_unacked_age_ms"] = before["oldest_unacked_age_ms"].clone();
    after["partitions"][0]["oldest_unacked_age_ms"] =
        before["partitions"][0]["oldest_unacked_age_ms"].clone();
    assert_eq!(after, before);
    assert_eq!(
        q.ack(json!([{"lease": token, "type": "accept"}])).await,
        [ok(false)]
    );
}

/// The settings of the journal tests' group `work`, on topic `jobs`.
fn journal_test_settings() -> mapq::broker::queues::QueueSettings {
    mapq::broker::queues::QueueSettings {
        topics: vec!["jobs".into()],
        lease_ms: 1000,
        max_deliveries: 3,
        dead_letter_topic: None,
        max_in_flight: 100,
    }
}

/// A first delivery of `jobs`/0 at `o`, leased until 10 s.
fn lease(o: u64) -> mapq::broker::queue::Event {
    mapq::broker::queue::Event::Lease {
        t: "jobs".into(),
        p: 0,
        o,
        d: 1,
        exp: 10_000,
    }
}

/// `jobs`/0 at `o` accepted.
fn accept(o: u64) -> mapq::broker::queue::Event {
    mapq::broker::queue::Event::Accept {
        t: "jobs".into(),
        p: 0,
        o,
    }
}

/// The journal cut at every byte of its last records (a torn write): the group opens, with
/// exactly the state of the records wholly before the cut. A commit of several events is
/// one record (all of them or none).
#[test]
fn a_journal_cut_at_every_byte_of_its_tail_recovers_a_prefix() {
    use mapq::broker::queue::{Event, QueueState};
    use mapq::broker::queues::QueueGroups;
    use mapq::log::format::decode_frame;
    let dir = tempfile::tempdir().unwrap();
    let settings = journal_test_settings();
    let mut events = Vec::new();
    for o in 0..6u64 {
        events.push(lease(o));
    }
    events.push(accept(0));
    events.push(Event::Release {
        t: "jobs".into(),
        p: 0,
        o: 1,
        at: 5,
    });
    events.push(Event::Extend {
        t: "jobs".into(),
        p: 0,
        o: 2,
        exp: 20_000,
    });
    events.push(accept(3));
    // The leases in two commits of three, then the acks one by one, then two together.
    let commits: Vec<&[Event]> = vec![
        &events[0..3],
        &events[3..6],
        &events[6..7],
        &events[7..8],
        &events[8..10],
    ];
    {
        let groups = QueueGroups::open(dir.path(), false).unwrap();
        groups.create("work", settings).unwrap();
        let g = groups.get("work").unwrap();
        for c in &commits {
            g.lock().commit(c.iter().cloned()).unwrap();
        }
    }
    let prefix: Vec<QueueState> = (0..=commits.len())
        .map(|k| {
            let mut s = QueueState::default();
            commits[..k]
                .iter()
                .flat_map(|c| c.iter())
                .for_each(|e| s.apply(e));
            s
        })
        .collect();
    let journal = dir.path().join("work/journal");
    let segment = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("the journal's segment");
    let pristine = std::fs::read(&segment).unwrap();
    // Where each event's frame ends (its padding aside: the CRC does not cover it).
    let mut ends = Vec::new();
    let mut at = mapq::log::DATA_START;
    while let Ok(f) = decode_frame(&pristine[at..]) {
        let len = mapq::log::format::get_u32(f.bytes, mapq::log::format::frame::LENGTH);
        ends.push(at + len as usize);
        at += f.padded_len;
    }
    assert_eq!(ends.len(), commits.len());
    let data_end = at;
    let tail_from = ends[ends.len() - 3];
    for cut in tail_from..data_end {
        let mut bytes = pristine.clone();
        bytes[cut..data_end].fill(0);
        std::fs::write(&segment, &bytes).unwrap();
        let groups = QueueGroups::open(dir.path(), false)
            .unwrap_or_else(|e| panic!("cut at byte {cut}: {e}"));
        let kept = ends.iter().filter(|&&e| e <= cut).count();
        let state = groups.get("work").unwrap().lock().state.clone();
        assert_eq!(
            state, prefix[kept],
            "cut at byte {cut}: {kept} records kept"
        );
    }
}

/// `mapq queue work` runs a command per record and acks by its exit status; Ctrl-C stops it
/// cleanly; `mapq groups describe` shows the queue group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapq_queue_work_acks_by_exit_status() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    create_topic(
        &Client::new(),
        &server.base,
        json!({"name": "jobs", "partitions": 2}),
    )
    .await;
    let values: Vec<String> = (0..30)
        .map(|i| match i % 10 {
            3 => format!("flaky-{i}"),
            7 => format!("bad-{i}"),
            _ => format!("ok-{i}"),
        })
        .collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    produce(&server.base, "jobs", &refs).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q.put(json!({"type": "queue", "topics": ["jobs"], "max_deliveries": 2, "dead_letter_topic": "dead"})).await;

    assert_eq!(status, 201, "{body}");
    let out = dir.path().join("done.txt");
    let script = format!(
        r#"v=$(cat); case "$v" in ok-*) echo "$v $MAPQ_TOPIC $MAPQ_DELIVERY" >> {}; exit 0;; bad-*) exit 100;; *) exit 1;; esac"#,
        out.display()
    );
    let mut worker = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args([
            "queue",
            "work",
            "work",
            "--server",
            &server.base,
            "--retry-delay-ms",
            "0",
        ])
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let d = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = q.describe().await;
            if d["backlog"] == 0 && d["in_flight"] == 0 && d["dead_lettered"] == 6 {
                break d;
            }
            assert!(Instant::now() < deadline, "not settled: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    common::server::signal(&worker, libc::SIGINT);
    assert!(worker.wait().unwrap().success(), "{d}");
    let done = std::fs::read_to_string(&out).unwrap();
    let mut lines: Vec<&str> = done.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 24, "{done}");
    assert!(lines.iter().all(|l| l.ends_with(" jobs 1")), "{done}");
    let described = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["groups", "describe", "work", "--server", &server.base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.starts_with("group work  type queue  backlog 0  in flight 0"),
        "{text}"
    );
    assert!(text.contains("dead-lettered 6"), "{text}");
    // The group's journal, read from its files as the README shows: the JSON events of
    // each request (an object, or an array of several), the 24 accepts among them.
    let journal = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["tail", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["@queues/work/journal", "--format", "value"])
        .output()
        .unwrap();
    assert!(journal.status.success(), "{journal:?}");
    let accepts: usize = String::from_utf8_lossy(&journal.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let events = v.as_array().cloned().unwrap_or_else(|| vec![v]);
            events.iter().filter(|e| e["e"] == "accept").count()
        })
        .sum();
    assert_eq!(accepts, 24, "{}", String::from_utf8_lossy(&journal.stdout));
}

/// A journal compacted into snapshots: the old segments go, and the group opens again with
/// the same state.
#[test]
fn a_compacted_journal_keeps_the_state_and_drops_its_old_segments() {
    use mapq::broker::queues::QueueGroups;
    let dir = tempfile::tempdir().unwrap();
    let settings = journal_test_settings();
    let state = {
        let groups = QueueGroups::open_compacting(dir.path(), false, 50, None).unwrap();
        groups.create("work", settings).unwrap();
        let g = groups.get("work").unwrap();
        let mut inner = g.lock();
        for o in 0..200u64 {
            inner.commit([lease(o)]).unwrap();
            if o % 3 != 0 {
                inner.commit([accept(o)]).unwrap();
            }
        }
        inner.state.clone()
    };
    let journal =
        mapq::log::PartitionLog::open(&dir.path().join("work/journal"), Default::default())
            .unwrap()
            .0;
    assert!(
        journal.start_offset() > 0,
        "the events before the last snapshot are gone"
    );
    assert!(journal.end_offset() - journal.start_offset() < 60);
    drop(journal);
    let groups = QueueGroups::open(dir.path(), false).unwrap();
    assert_eq!(groups.get("work").unwrap().lock().state, state);
}

/// A topic deleted and created again: the queue group starts it afresh (no error, no stale
/// state from the old records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_is_worked_off_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create_topic(&http, &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["a", "b", "c"]).await;
    let q = Queue::new(&server.base, "work");
    let (status, body) = q.put(json!({"type": "queue", "topics": ["jobs"]})).await;

    assert_eq!(status, 201, "{body}");
    let got = q.take(2).await;
    q.ack(json!([{"lease": got[0]["lease"], "type": "accept"}]))
        .await;
    common::server::delete_topic(&http, &server.base, "jobs").await;
    create_topic(&http, &server.base, json!({"name": "jobs"})).await;
    produce(&server.base, "jobs", &["x"]).await;
    let again = q.take(10).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (
            &again[0]["value"],
            &again[0]["offset"],
            &again[0]["delivery"]
        ),
        (&json!("x"), &json!(0), &json!(1))
    );
    let d = q.describe().await;
    assert_eq!(
        (&d["backlog"], &d["in_flight"]),
        (&json!(0), &json!(1)),
        "{d}"
    );
}

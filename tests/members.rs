//! Consumer groups with members over HTTP, against the real server: a partition moves in
//! two steps and never to two fetchers, long-polls wake on the change, silent members are
//! removed, a server `kill -9` moves nothing, lag outlives the members, and bad input gets
//! the contract's codes and changes nothing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, Server};
use mapq::log::format::decode_frame;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// A member as a well-behaved client would be: its id, epoch and owned partitions.
#[derive(Debug, Clone)]
struct Member {
    id: String,
    epoch: u64,
    owned: BTreeSet<(String, u64)>,
}

struct Group {
    http: Client,
    base: String,
    name: String,
}

impl Group {
    fn new(base: &str, name: &str) -> Self {
        Group {
            http: Client::new(),
            base: base.to_owned(),
            name: name.to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/groups/{}{path}", self.base, self.name)
    }

    /// A heartbeat of `m` as it is; returns the status and the answer.
    async fn beat_raw(&self, m: &Member, wait_ms: u64) -> (StatusCode, Value) {
        let owned: Vec<Value> = m
            .owned
            .iter()
            .map(|(t, p)| json!({"topic": t, "partition": p}))
            .collect();
        let body = json!({"topics": ["orders"], "member_epoch": m.epoch, "owned": owned, "wait_ms": wait_ms});
        let r = self
            .http
            .put(self.url(&format!("/members/{}", m.id)))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// A heartbeat that must succeed: the member takes its answer (owns what it is
    /// assigned, lets go of what it must revoke in the next one). Returns the answer.
    async fn beat(&self, m: &mut Member, wait_ms: u64) -> Value {
        let (status, a) = self.beat_raw(m, wait_ms).await;
        assert_eq!(status, 200, "{} heartbeat: {a}", m.id);
        m.epoch = a["member_epoch"].as_u64().unwrap();
        m.owned = parts(&a["assignment"]);
        a
    }

    async fn fetch(&self, member: &str, query: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/members/{member}/records?{query}")))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn commit(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .put(self.url("/offsets"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn describe(&self) -> Value {
        get_json(&self.http, self.url("")).await
    }
}

fn member(id: &str) -> Member {
    Member {
        id: id.to_owned(),
        epoch: 0,
        owned: BTreeSet::new(),
    }
}

/// The `(topic, partition)` pairs of a list of `{"topic", "partition"}` objects.
fn parts(list: &Value) -> BTreeSet<(String, u64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["topic"].as_str().unwrap().to_owned(),
                x["partition"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A topic `orders` with `partitions` partitions of `per_partition` records each (values
/// `"p<partition>-<n>"`).
async fn orders(base: &str, partitions: u32, per_partition: u32) {
    let http = Client::new();
    create_topic(
        &http,
        base,
        json!({"name": "orders", "partitions": partitions}),
    )
    .await;
    for p in 0..partitions {
        let records: Vec<Value> = (0..per_partition)
            .map(|n| json!({"value": format!("p{p}-{n}"), "partition": p}))
            .collect();
        let r = http
            .post(format!("{base}/v1/topics/orders/records"))
            .json(&json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

async fn put_group(base: &str, group: &str, settings: Value) -> (StatusCode, Value) {
    let r = Client::new()
        .put(format!("{base}/v1/groups/{group}"))
        .json(&settings)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_in_two_steps_and_its_new_owner_resumes_at_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 4, 10).await;
    let (status, body) = put_group(&server.base, "g", json!({"type": "partitioned"})).await;
    assert_eq!(
        (status, &body["session_timeout_ms"]),
        (StatusCode::CREATED, &json!(30000))
    );
    let (status, _) = put_group(&server.base, "g", json!({"type": "partitioned"})).await;
    assert_eq!(status, StatusCode::OK, "it exists now");
    let g = Group::new(&server.base, "g");

    let mut a = member("a");
    let answer = g.beat(&mut a, 0).await;
    assert_eq!(a.owned.len(), 4, "{answer}");
    assert_eq!(answer["heartbeat_interval_ms"], 10000);
    assert!(answer["assignment"][0]["committed"].is_null());
    // a reads everything, in turns across its partitions.
    let (status, got) = g.fetch("a", "max_records=100").await;
    assert_eq!(status, 200);
    let records = got["records"].as_array().unwrap();
    assert_eq!(records.len(), 40, "{got}");
    let r0 = &records[0];
    assert_eq!(
        r0["value"],
        format!("p{}-{}", r0["partition"], r0["offset"]),
        "each record names its topic, partition and offset: {r0}"
    );
    assert_eq!(r0["topic"], "orders");
    // Nothing more: the positions moved past what was returned.
    let (_, again) = g.fetch("a", "max_records=100").await;
    assert_eq!(again["records"].as_array().unwrap().len(), 0, "{again}");

    // b joins: a still holds everything, so b gets nothing yet and long-polls.
    let mut b = member("b");
    g.beat(&mut b, 0).await;
    assert!(b.owned.is_empty());
    let b_wait = {
        let (g2, mut b2) = (Group::new(&server.base, "g"), b.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            g2.beat(&mut b2, 10_000).await;
            (b2, started.elapsed(), Instant::now())
        })
    };
    // b's long-poll is waiting by the time a lets go (below).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // a learns to let go of two partitions: it no longer fetches them, but may commit them.
    let hb = g.beat(&mut a, 0).await;
    let revoked = parts(&hb["revoke"]);
    assert_eq!((a.owned.len(), revoked.len()), (2, 2), "{hb}");
    for (t, p) in &revoked {
        let (status, body) = g
            .commit(json!({"offsets": [{"topic": t, "partition": p, "offset": 4}], "member": "a", "member_epoch": a.epoch}))
            .await;
        assert_eq!(status, 204, "a still holds {t}/{p}: {body}");
    }
    let appended = Client::new()
        .post(format!("{}/v1/topics/orders/records", server.base))
        .json(&json!({"records": (0..40).map(|i| json!({"key": format!("k{i}"), "value": i})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 200);
    let (_, got) = g.fetch("a", "max_records=1000").await;
    let fetched = got["records"].as_array().unwrap();
    assert!(
        !fetched.is_empty(),
        "a fetches the new records of what it keeps: {got}"
    );
    for r in fetched {
        let tp = (
            r["topic"].as_str().unwrap().to_owned(),
            r["partition"].as_u64().unwrap(),
        );
        assert!(
            a.owned.contains(&tp),
            "a fetched {tp:?}, which it is letting go of"
        );
    }
    // a lets go (its heartbeat leaves them out): b's long-poll answers with them.
    let let_go = Instant::now();
    g.beat(&mut a, 0).await;
    let (b, waited, answered) = b_wait.await.unwrap();
    assert!(answered >= let_go, "b's long-poll answered before a let go");
    assert_eq!(b.owned, revoked, "b gets exactly what a let go of");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "the long-poll waited, and woke on the change: {waited:?}"
    );
    // a's commit of a partition it let go of is refused; b starts at the committed offset.
    let (t, p) = revoked.iter().next().unwrap();
    let (status, body) = g
        .commit(json!({"offsets": [{"topic": t, "partition": p, "offset": 9}], "member": "a", "member_epoch": a.epoch}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "partition_not_owned")
    );
    let (_, got) = g.fetch("b", "max_records=1000").await;
    let mut firsts = std::collections::BTreeMap::new();
    for r in got["records"].as_array().unwrap() {
        firsts
            .entry(r["partition"].as_u64().unwrap())
            .or_insert(r["offset"].as_u64().unwrap());
    }
    for (_, p) in &revoked {
        assert_eq!(
            firsts.get(p),
            Some(&4),
            "b resumes {p} at the commit: {got}"
        );
    }

    // The description shows both members, their assignment and the lag of every partition.
    let d = g.describe().await;
    assert_eq!(d["type"], "partitioned");
    let members: Vec<&str> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["a", "b"]);
    assert_eq!(parts(&d["members"][1]["assignment"]), revoked);
    assert_eq!(d["offsets"].as_array().unwrap().len(), 4, "{d}");

    // A leave frees its partitions at once: a's next long-poll gets them.
    let r = g.http.delete(g.url("/members/b")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    g.beat(&mut a, 0).await;
    assert_eq!(a.owned.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_removed_and_told_it_was_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 4, 1).await;
    let (status, body) = put_group(
        &server.base,
        "g",
        json!({"type": "partitioned", "session_timeout_ms": 1000}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let g = Group::new(&server.base, "g");
    let (mut a, mut b) = (member("a"), member("b"));
    for _ in 0..3 {
        g.beat(&mut a, 0).await;
        g.beat(&mut b, 0).await;
    }
    assert_eq!((a.owned.len(), b.owned.len()), (2, 2));
    // b falls silent after one more heartbeat; a keeps heartbeating and gets b's
    // partitions after the session timeout (and the maintenance tick).
    let silent = Instant::now();
    g.beat(&mut b, 0).await;
    while a.owned.len() < 4 {
        assert!(silent.elapsed() < Duration::from_secs(5), "b never removed");
        g.beat(&mut a, 200).await;
    }
    let took = silent.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "removed early: {took:?}"
    );
    // b's calls: fenced (it was a member), and it may join again.
    let (status, body) = g.beat_raw(&b, 0).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "fenced_member")
    );
    let (status, body) = g.fetch("b", "").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "fenced_member")
    );
    let (status, body) = g
        .commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 1}], "member": "b", "member_epoch": b.epoch}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "fenced_member"),
        "{body}"
    );
    let mut b = member("b");
    g.beat(&mut b, 0).await;
    let metrics = common::server::get_text(&g.http, format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains(r#"mapq_group_rebalances_total{group="g",reason="session_timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_kill_moves_no_partition_and_fences_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 6, 3).await;
    let g = Group::new(&server.base, "g");
    let (mut a, mut b, mut c) = (member("a"), member("b"), member("c"));
    for _ in 0..3 {
        for m in [&mut a, &mut b, &mut c] {
            g.beat(m, 0).await;
        }
    }
    // c is told to give one partition back... and a fourth member joins mid-rebalance.
    let mut d = member("d");
    g.beat(&mut d, 0).await;
    g.beat(&mut a, 0).await;
    let before = g.describe().await;
    let (ea, eb, ec) = (a.epoch, b.epoch, c.epoch);
    server.kill();

    let server = Server::start(dir.path(), &[]);
    let g = Group::new(&server.base, "g");
    let after = g.describe().await;
    assert_eq!(before["members"].as_array().unwrap().len(), 4);
    assert_eq!(after["members"].as_array().unwrap().len(), 4, "{after}");
    for (x, y) in before["members"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["members"].as_array().unwrap())
    {
        assert_eq!(x["member"], y["member"]);
        assert_eq!(x["assignment"], y["assignment"], "nothing moved: {x} {y}");
        assert_eq!(x["revoking"], y["revoking"]);
        assert_eq!(x["member_epoch"], y["member_epoch"]);
    }
    // Every member carries on with the epoch it had: nobody fenced.
    for m in [&mut a, &mut b, &mut c, &mut d] {
        g.beat(m, 0).await;
    }
    assert_eq!(
        (a.epoch, b.epoch, c.epoch),
        (ea, eb, ec),
        "the members with their share were given nothing new"
    );
    for _ in 0..3 {
        for m in [&mut a, &mut b, &mut c, &mut d] {
            g.beat(m, 0).await;
        }
    }
    let sizes: Vec<usize> = [&a, &b, &c, &d].iter().map(|m| m.owned.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 6, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n == 1 || n == 2), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_from_commits_whether_or_not_members_are_alive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 2, 10).await;
    let g = Group::new(&server.base, "g");
    let mut a = member("a");
    g.beat(&mut a, 0).await;
    let (status, body) = g
        .commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 7}], "member": "a", "member_epoch": a.epoch}))
        .await;
    assert_eq!(status, 204, "{body}");
    let r = g.http.delete(g.url("/members/a")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let d = g.describe().await;
    assert_eq!(d["members"], json!([]));
    assert_eq!(
        d["offsets"],
        json!([
            {"topic": "orders", "partition": 0, "offset": 7, "lag": 3},
            {"topic": "orders", "partition": 1, "offset": null, "lag": 10}
        ])
    );
    assert_eq!(d["lag"], 13);
    let list = get_json(&g.http, format!("{}/v1/groups", server.base)).await;
    assert_eq!(list["groups"], json!(["g"]));
    // With no members left, the v1 commit (no member) is accepted again.
    let (status, _) = g
        .commit(json!({"offsets": [{"topic": "orders", "partition": 1, "offset": 10}]}))
        .await;
    assert_eq!(status, 204);
    let metrics = common::server::get_text(&g.http, format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains(r#"mapq_consumer_group_lag{group="g",partition="0",topic="orders"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_member_fetch_is_one_partitions_frames_named_in_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 3, 5).await;
    let g = Group::new(&server.base, "g");
    let mut a = member("a");
    g.beat(&mut a, 0).await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = g
            .http
            .get(g.url("/members/a/records"))
            .header("accept", "application/octet-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let Some(p) = h.get("x-mapq-partition") else {
            assert!(bytes.is_empty(), "no partition named, no frames");
            continue;
        };
        let p: u64 = p.to_str().unwrap().parse().unwrap();
        assert_eq!(h["x-mapq-topic"], "orders");
        assert_eq!(h["x-mapq-next-offset"], "5");
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let f = decode_frame(&bytes[at..]).unwrap();
            assert_eq!(f.value().unwrap(), format!("\"p{p}-{n}\"").as_bytes());
            at += f.padded_len;
            n += 1;
        }
        assert_eq!(n, 5);
        assert!(seen.insert(p), "partition {p} served twice");
    }
    assert_eq!(seen.len(), 3);
}

/// Bad input: the contract's codes, and the group as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contracts_codes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 2, 4).await;
    let base = server.base.clone();
    let g = Group::new(&base, "g");
    let mut a = member("a");
    g.beat(&mut a, 0).await;
    let (status, _) = g
        .commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 2}], "member": "a", "member_epoch": a.epoch}))
        .await;
    assert_eq!(status, 204);
    let before = g.describe().await;
    let http = Client::new();

    let put = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.put(path).json(&body).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cases: Vec<(&str, (StatusCode, Value), StatusCode, &str)> = vec![
        (
            "unknown member's fetch",
            g.fetch("nobody", "").await,
            StatusCode::NOT_FOUND,
            "unknown_member",
        ),
        (
            "fetch with wait_ms over the cap",
            g.fetch("a", "wait_ms=30001").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "fetch with max_records=0",
            g.fetch("a", "max_records=0").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a heartbeat with an epoch the member never had",
            g.beat_raw(&Member { epoch: a.epoch + 5, ..a.clone() }, 0).await,
            StatusCode::CONFLICT,
            "fenced_member",
        ),
        (
            "commit with an epoch older than the assignment",
            g.commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 3}], "member": "a", "member_epoch": a.epoch - 1})).await,
            StatusCode::CONFLICT,
            "stale_member_epoch",
        ),
        (
            "commit by a member that is not one",
            g.commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 3}], "member": "zed", "member_epoch": 1})).await,
            StatusCode::NOT_FOUND,
            "unknown_member",
        ),
        (
            "commit without a member while the group has members",
            g.commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 3}]})).await,
            StatusCode::CONFLICT,
            "partition_not_owned",
        ),
        (
            "commit with a member but no epoch",
            g.commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 3}], "member": "a"})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "join with no topics",
            put(g.url("/members/c"), json!({"topics": []})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "join with a misspelled field",
            put(g.url("/members/c"), json!({"topic": ["orders"]})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "join of a missing topic",
            put(g.url("/members/c"), json!({"topics": ["nope"]})).await,
            StatusCode::NOT_FOUND,
            "topic_not_found",
        ),
        (
            "member id that breaks the name rules",
            put(g.url("/members/a%20b"), json!({"topics": ["orders"]})).await,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "group name that breaks the name rules",
            put(format!("{base}/v1/groups/bad%24name/members/c"), json!({"topics": ["orders"]})).await,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "settings out of range",
            put(g.url(""), json!({"type": "partitioned", "session_timeout_ms": 5})).await,
            StatusCode::BAD_REQUEST,
            "invalid_config",
        ),
        (
            "settings without a type",
            put(g.url(""), json!({"session_timeout_ms": 5000})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "malformed JSON",
            {
                let r = http.put(g.url("/members/c")).header("content-type", "application/json").body("{\"topics\": [").send().await.unwrap();
                (r.status(), r.json().await.unwrap())
            },
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, (status, body), want_status, want_code) in cases {
        assert_eq!(
            (status, code(&body)),
            (want_status, want_code),
            "{what}: {body}"
        );
    }
    let r = http.delete(g.url("/members/zed")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/v1/groups/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Nothing changed: the same members, epoch, assignment, settings and offsets.
    assert_eq!(g.describe().await, before);
}

/// `mapq consume --group` processes share a topic: each record printed by exactly one of
/// them, and one stopped with Ctrl-C (SIGINT) leaves at once, its partitions taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapq_consume_group_members_share_a_topic_and_leave_on_ctrl_c() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    create_topic(
        &http,
        &server.base,
        json!({"name": "orders", "partitions": 4}),
    )
    .await;
    let produce = |from: u32, to: u32| {
        let http = http.clone();
        let base = server.base.clone();
        async move {
            let records: Vec<Value> = (from..to).map(|i| json!({"value": i})).collect();
            let r = http
                .post(format!("{base}/v1/topics/orders/records"))
                .json(&json!({ "records": records }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    produce(0, 100).await;
    let out = |name: &str| dir.path().join(format!("{name}.out"));
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args([
                "consume", "orders", "--group", "w", "--follow", "--member", name,
            ])
            .args(["--server", &server.base])
            .stdout(std::fs::File::create(out(name)).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let g = Group::new(&server.base, "w");
    let members_now = |n: usize| {
        let g = &g;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let d = g.describe().await;
                let owned: usize = d["members"]
                    .as_array()
                    .map(|ms| {
                        ms.iter()
                            .map(|m| m["assignment"].as_array().unwrap().len())
                            .sum()
                    })
                    .unwrap_or(0);
                if d["members"].as_array().map(Vec::len) == Some(n) && owned == 4 {
                    return d;
                }
                assert!(
                    Instant::now() < deadline,
                    "not {n} members owning 4 partitions: {d}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut c1 = spawn("c1");
    members_now(1).await;
    let mut c2 = spawn("c2");
    let d = members_now(2).await;
    for m in d["members"].as_array().unwrap() {
        assert_eq!(m["assignment"].as_array().unwrap().len(), 2, "{d}");
    }
    produce(100, 200).await;
    // Ctrl-C: c1 leaves (its partitions freed at once, long before a session timeout).
    let stopped = Instant::now();
    common::server::signal(&c1, libc::SIGINT);
    let status = c1.wait().unwrap();
    assert!(status.success(), "c1 ended with {status}");
    members_now(1).await;
    assert!(stopped.elapsed() < Duration::from_secs(10));
    produce(200, 300).await;
    // c2 prints everything left; then stop it too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = g.describe().await;
        if d["lag"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "lag never reached 0: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::server::signal(&c2, libc::SIGTERM);
    assert!(c2.wait().unwrap().success());
    let mut seen = std::collections::BTreeMap::new();
    for name in ["c1", "c2"] {
        let text = std::fs::read_to_string(out(name)).unwrap();
        assert!(!text.is_empty(), "{name} printed nothing");
        for line in text.lines() {
            *seen.entry(line.parse::<u32>().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 300, "every record printed");
    assert!(seen.values().all(|&n| n == 1), "a record printed twice");
    assert_eq!(g.describe().await["members"], json!([]), "both left");
}

/// Members with different subscriptions: each gets partitions of its own topics only, and
/// heartbeats of one do not disturb the other's (no rebalance churn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_different_topics_settle_and_stay_settled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 2, 1).await;
    let http = Client::new();
    create_topic(
        &http,
        &server.base,
        json!({"name": "audit", "partitions": 2}),
    )
    .await;
    let g = Group::new(&server.base, "g");
    let beat = |m: &Member, topics: Value| {
        let g = &g;
        let owned: Vec<Value> = m
            .owned
            .iter()
            .map(|(t, p)| json!({"topic": t, "partition": p}))
            .collect();
        let body = json!({"topics": topics, "member_epoch": m.epoch, "owned": owned});
        let url = g.url(&format!("/members/{}", m.id));
        async move {
            let r = g.http.put(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let (mut a, mut b) = (member("a"), member("b"));
    for _ in 0..4 {
        for (m, topics) in [
            (&mut a, json!(["orders", "audit"])),
            (&mut b, json!(["orders"])),
        ] {
            let answer = beat(m, topics).await;
            m.epoch = answer["member_epoch"].as_u64().unwrap();
            m.owned = parts(&answer["assignment"]);
        }
    }
    let audit: BTreeSet<_> = a.owned.iter().filter(|(t, _)| t == "audit").collect();
    assert_eq!(audit.len(), 2, "only a subscribes to audit: {:?}", a.owned);
    assert!(b.owned.iter().all(|(t, _)| t == "orders"), "{:?}", b.owned);
    assert_eq!(a.owned.len() + b.owned.len(), 4);
    let settled = g.describe().await["epoch"].clone();
    for _ in 0..5 {
        beat(&b, json!(["orders"])).await;
        beat(&a, json!(["orders", "audit"])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        g.describe().await["epoch"],
        settled,
        "heartbeats rebalanced a settled group"
    );
}

/// After a fetch whose answer was lost, `from=committed` serves again what was not
/// committed; `max_bytes=0` still brings one record; a bad `from` is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_can_restart_from_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    orders(&server.base, 1, 10).await;
    let g = Group::new(&server.base, "g");
    let mut a = member("a");
    g.beat(&mut a, 0).await;
    let (_, first) = g.fetch("a", "max_records=4").await;
    assert_eq!(first["records"].as_array().unwrap().len(), 4);
    let (status, _) = g
        .commit(json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 2}], "member": "a", "member_epoch": a.epoch}))
        .await;
    assert_eq!(status, 204);
    // Say the answer to the first fetch was lost after offset 1: start again at the commit.
    let (_, again) = g.fetch("a", "max_records=3&from=committed").await;
    let offsets: Vec<u64> = again["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    let (_, one) = g.fetch("a", "max_bytes=0").await;
    let one = one["records"].as_array().unwrap();
    assert_eq!((one.len(), &one[0]["offset"]), (1, &json!(5)));
    let (status, body) = g.fetch("a", "from=latest").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

/// With tokens: a join needs `consume` on its topics; managing a group (settings, removing
/// a member) needs `consume` on every topic of the group; the description is shown only to
/// a token that may consume one of its topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_who_joins_manages_and_sees_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(
        &config,
        common::tokens_toml(&[
            ("ops", "ops", "*", &["produce", "consume", "admin"]),
            ("worker", "worker", "orders*", &["consume"]),
            ("auditor", "auditor", "audit", &["consume"]),
        ]),
    )
    .unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let http = Client::new();
    let base = server.base.clone();
    for name in ["orders", "audit"] {
        let r = http
            .post(format!("{base}/v1/topics"))
            .bearer_auth("ops")
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        http.request(method, format!("{base}/v1/groups/g{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    use reqwest::Method;
    let join = json!({"topics": ["orders"]});
    let r = call(Method::PUT, "/members/w", "auditor", join.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "auditor may not consume orders");
    let r = call(Method::PUT, "/members/w", "worker", join)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let settings = json!({"type": "partitioned", "session_timeout_ms": 500});
    let r = call(Method::PUT, "", "auditor", settings.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "auditor may not change a group of orders");
    let r = call(Method::DELETE, "/members/w", "auditor", Value::Null)
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "auditor may not remove worker's member");
    let r = call(Method::GET, "", "auditor", Value::Null).await.unwrap();
    assert_eq!(r.status(), 404, "auditor does not see the group");
    let r = call(Method::GET, "", "worker", Value::Null).await.unwrap();
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        d["members"][0]["member"], "w",
        "nothing the refused calls did stuck: {d}"
    );
    assert_eq!(d["settings"]["session_timeout_ms"], 30000);
    let r = call(Method::DELETE, "/members/w", "worker", Value::Null)
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

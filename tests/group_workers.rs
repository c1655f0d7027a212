//! Workers sharing a topic through a consumer group with members, as real processes: 12
//! partitions, 120,000 records, 4 workers (`tests/tools/group_worker.py`, written against
//! API.md alone) each copying every record to an output topic with an idempotency key and
//! committing every 100. One worker is killed with SIGKILL at 30 %, the server with SIGKILL
//! at 50 %, one worker stopped (SIGSTOP) for longer than the session timeout at 60 %, and a
//! fifth joins at 80 %. Only the killed worker's partitions move, the server kill moves
//! nothing and fences nobody, the stopped worker's next commit is refused and it rejoins,
//! the output holds each record exactly once, and the lag ends at 0.
//!
//! `MAPQ_GROUP_E2E_PACE_MS` (default 60) is each worker's pause between copying a chunk
//! and committing it: larger runs longer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{create_topic, get_json, signal, Server};
use reqwest::Client;
use serde_json::{json, Value};

const PARTITIONS: u64 = 12;
const RECORDS: u64 = 120_000;
const SESSION_MS: u64 = 2_000;

struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(dir: &Path, base: &str, name: &str, pace_ms: &str) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/group_worker.py");
        let child = Command::new(common::python())
            .arg(script)
            .args([base, "workers", name, "in", "out", pace_ms])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python worker");
        Worker {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The events it printed so far.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "worker {} ended with {status}: {:?}",
                self.name,
                self.events().last()
            );
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Member -> the partitions it owns, from the group's description.
fn assignment(d: &Value) -> BTreeMap<String, BTreeSet<u64>> {
    d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let parts = m["assignment"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["partition"].as_u64().unwrap())
                .collect();
            (m["member"].as_str().unwrap().to_owned(), parts)
        })
        .collect()
}

/// Records committed so far, over all partitions.
fn committed(d: &Value) -> u64 {
    d["offsets"]
        .as_array()
        .map(|o| o.iter().filter_map(|x| x["offset"].as_u64()).sum())
        .unwrap_or(0)
}

struct Run {
    http: Client,
    base: String,
}

impl Run {
    async fn describe(&self) -> Value {
        get_json(&self.http, format!("{}/v1/groups/workers", self.base)).await
    }

    /// Waits until `done` holds of the group's description (checking the workers run).
    async fn until(
        &self,
        what: &str,
        limit: Duration,
        workers: &mut [Worker],
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let d = self.describe().await;
            if done(&d) {
                return d;
            }
            for w in workers.iter_mut() {
                w.assert_running();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}: {d}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every partition owned, by `members` members, none owning more than one more than another.
fn settled(d: &Value, members: usize) -> bool {
    let a = assignment(d);
    let sizes: Vec<usize> = a.values().map(BTreeSet::len).collect();
    a.len() == members
        && sizes.iter().sum::<usize>() == PARTITIONS as usize
        && sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1
        && d["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["revoking"].as_array().unwrap().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_topic_through_kills_a_stop_and_a_join_copying_each_record_once() {
    let pace = std::env::var("MAPQ_GROUP_E2E_PACE_MS").unwrap_or_else(|_| "60".into());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let run = Run {
        http: Client::new(),
        base: server.base.clone(),
    };
    create_topic(
        &run.http,
        &run.base,
        json!({"name": "in", "partitions": PARTITIONS}),
    )
    .await;
    create_topic(
        &run.http,
        &run.base,
        json!({"name": "out", "partitions": 4}),
    )
    .await;
    for batch in 0..RECORDS / 6000 {
        let records: Vec<Value> = (batch * 6000..(batch + 1) * 6000)
            .map(|n| json!({"value": format!("id-{n}"), "partition": n % PARTITIONS}))
            .collect();
        let r = run
            .http
            .post(format!("{}/v1/topics/in/records", run.base))
            .json(&json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = run
        .http
        .put(format!("{}/v1/groups/workers", run.base))
        .json(&json!({"type": "partitioned", "session_timeout_ms": SESSION_MS, "rebalance_timeout_ms": 4000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut workers: Vec<Worker> = (1..=4)
        .map(|i| Worker::start(dir.path(), &run.base, &format!("w{i}"), &pace))
        .collect();
    run.until(
        "4 workers share 12 partitions",
        Duration::from_secs(20),
        &mut workers,
        |d| settled(d, 4),
    )
    .await;

    // 30 %: w1 is killed. Only its partitions move, within the session timeout + 1 s.
    let before = run
        .until(
            "30 % committed",
            Duration::from_secs(120),
            &mut workers,
            |d| committed(d) >= RECORDS * 30 / 100,
        )
        .await;
    let before = assignment(&before);
    let mut w1 = workers.remove(0);
    let killed = Instant::now();
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    let after = run
        .until(
            "w1's partitions moved",
            Duration::from_secs(10),
            &mut workers,
            |d| settled(d, 3),
        )
        .await;
    let moved_in = killed.elapsed();
    assert!(
        moved_in <= Duration::from_millis(SESSION_MS + 1000),
        "w1's partitions moved after {moved_in:?}"
    );
    eprintln!("w1's partitions moved {moved_in:?} after its kill");
    let after = assignment(&after);
    let mut gained = BTreeSet::new();
    for (m, parts) in &after {
        assert!(
            parts.is_superset(&before[m]),
            "{m} lost a partition: {before:?} -> {after:?}"
        );
        gained.extend(parts.difference(&before[m]).copied());
    }
    assert_eq!(gained, before["w1"], "only w1's partitions moved");

    // 50 %: the server is killed and restarted: nothing moves, nobody is fenced.
    let before = run
        .until(
            "50 % committed",
            Duration::from_secs(120),
            &mut workers,
            |d| committed(d) >= RECORDS / 2,
        )
        .await;
    let server_killed_at = now_s();
    server.kill();
    server = Server::start_at(&data, &addr);
    let after = run.describe().await;
    assert_eq!(
        assignment(&after),
        assignment(&before),
        "the restart moved a partition"
    );
    let epochs = |d: &Value| -> Vec<Value> {
        d["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["member_epoch"].clone())
            .collect()
    };
    assert_eq!(epochs(&after), epochs(&before));

    // 60 %: w2 is stopped between copying a chunk and committing it, for longer than the
    // session timeout; its next commit is refused, and it joins again.
    run.until(
        "60 % committed",
        Duration::from_secs(120),
        &mut workers,
        |d| committed(d) >= RECORDS * 60 / 100,
    )
    .await;
    for w in &workers {
        let fenced = w
            .events()
            .into_iter()
            .filter(|e| e["event"] == "refused" && e["t"].as_f64().unwrap() >= server_killed_at)
            .count();
        assert_eq!(fenced, 0, "{} was fenced after the server restart", w.name);
    }
    let w2 = 0;
    let stopped_events = stop_between_copy_and_commit(&mut workers[w2]);
    tokio::time::sleep(Duration::from_millis(SESSION_MS + 1500)).await;
    let d = run.describe().await;
    assert!(
        !assignment(&d).contains_key("w2"),
        "w2 still a member after its session: {d}"
    );
    signal(&workers[w2].child, libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = workers[w2].events();
        let since: Vec<&Value> = events[stopped_events..]
            .iter()
            .filter(|e| e["event"] != "committing")
            .collect();
        if since.iter().any(|e| e["event"] == "joined") {
            let first = since[0];
            assert_eq!(
                (&first["event"], &first["call"], &first["code"]),
                (&json!("refused"), &json!("commit"), &json!("fenced_member")),
                "w2's first call after the stop: {since:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "w2 never rejoined: {since:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 80 %: a fifth worker joins and gets its share.
    run.until(
        "80 % committed",
        Duration::from_secs(120),
        &mut workers,
        |d| committed(d) >= RECORDS * 80 / 100,
    )
    .await;
    workers.push(Worker::start(dir.path(), &run.base, "w5", &pace));
    let d = run
        .until(
            "w5 gets its share",
            Duration::from_secs(20),
            &mut workers,
            // The workers stay in the group once everything is copied: w5's share comes
            // whether or not the copying is over.
            |d| settled(d, 4),
        )
        .await;
    assert_eq!(assignment(&d)["w5"].len(), 3, "{d}");

    // The end: every record committed, the lag 0, each id in the output exactly once.
    let d = run
        .until(
            "everything committed",
            Duration::from_secs(180),
            &mut workers,
            |d| committed(d) == RECORDS,
        )
        .await;
    assert_eq!(d["lag"], 0, "{d}");
    for w in &mut workers {
        signal(&w.child, libc::SIGTERM);
        w.child.wait().unwrap();
        let events = w.events();
        let count = |what: &str| events.iter().filter(|e| e["event"] == what).count();
        let replayed = events.iter().filter(|e| e["replayed"] == true).count();
        eprintln!(
            "{}: {} chunks committed, {replayed} copies answered from an earlier one, {} refusals, {} joins",
            w.name,
            count("committed"),
            count("refused"),
            count("joined")
        );
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for p in 0..4 {
        let mut next = 0u64;
        loop {
            let v = get_json(
                &run.http,
                format!(
                    "{}/v1/topics/out/partitions/{p}/records?offset={next}&max_records=10000",
                    run.base
                ),
            )
            .await;
            let records = v["records"].as_array().unwrap();
            if records.is_empty() {
                break;
            }
            for r in records {
                *seen
                    .entry(r["value"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            next = v["next_offset"].as_u64().unwrap();
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "copied more than once: {twice:?}");
    assert_eq!(seen.len() as u64, RECORDS, "every record copied");
    assert!((0..RECORDS).all(|n| seen.contains_key(&format!("id-{n}"))));
    drop(server);
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never stopped: {stat}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops `w` (SIGSTOP) right after it copied a chunk and before it began committing it;
/// returns how many events it had printed then.
fn stop_between_copy_and_commit(w: &mut Worker) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        w.assert_running();
        let events = w.events();
        if events.last().is_some_and(|e| e["event"] == "produced") {
            signal(&w.child, libc::SIGSTOP);
            // Once it is stopped, whatever it printed before is in the file.
            wait_stopped(w.child.id());
            let after = w.events();
            if after.len() == events.len() {
                return after.len();
            }
            // It went on before the stop landed: let it run and try the next chunk.
            signal(&w.child, libc::SIGCONT);
        }
        assert!(
            Instant::now() < deadline,
            "never caught w2 between copy and commit"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

//! Topic creation and deletion from many clients at once: different names proceed together,
//! the same name is created once, auto-creating producers all succeed, and `max_topics`
//! holds exactly; and what partitions cost in open files. Against the real server.

mod common;

use common::server::{get_json, Server};
use reqwest::Client;
use serde_json::json;

/// How many answers had each status.
fn tally(statuses: Vec<u16>) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_and_deletions_keep_their_promises() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_TOPICS", "40")]);
    let http = Client::new();
    let base = server.base.clone();
    let spawn_all = |reqs: Vec<reqwest::RequestBuilder>| async move {
        let tasks: Vec<_> = reqs
            .into_iter()
            .map(|r| tokio::spawn(async move { r.send().await.unwrap().status().as_u16() }))
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort();
        statuses
    };
    // The same name, 16 times at once: one creation, 15 conflicts.
    let same: Vec<_> = (0..16)
        .map(|_| {
            http.post(format!("{base}/v1/topics"))
                .json(&json!({"name": "same", "partitions": 2}))
        })
        .collect();
    assert_eq!(tally(spawn_all(same).await), [(201, 1), (409, 15)].into());
    // 16 producers to one missing topic: every one is served, into one topic.
    let produce: Vec<_> = (0..16)
        .map(|i| {
            http.post(format!("{base}/v1/topics/auto/records"))
                .json(&json!({"records": [{"value": i}]}))
        })
        .collect();
    assert_eq!(spawn_all(produce).await, vec![200; 16]);
    let auto: serde_json::Value = get_json(&http, format!("{base}/v1/topics/auto")).await;
    assert_eq!(auto["partition_stats"][0]["end_offset"], 16);
    // 60 different names against a limit of 40 topics (2 exist): exactly 38 created.
    let many: Vec<_> = (0..60)
        .map(|i| {
            http.post(format!("{base}/v1/topics"))
                .json(&json!({"name": format!("t{i}")}))
        })
        .collect();
    assert_eq!(tally(spawn_all(many).await), [(201, 38), (429, 22)].into());
    // Deleting and re-creating one name at once from many clients never leaves it broken:
    // afterwards it either exists and takes records, or does not exist.
    let mixed: Vec<_> = (0..24)
        .map(|i| {
            if i % 2 == 0 {
                http.delete(format!("{base}/v1/topics/same"))
            } else {
                http.post(format!("{base}/v1/topics"))
                    .json(&json!({"name": "same"}))
            }
        })
        .collect();
    for s in spawn_all(mixed).await {
        assert!([201, 204, 404, 409].contains(&s), "{s}");
    }
    let r = http
        .get(format!("{base}/v1/topics/same"))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        let r = http
            .post(format!("{base}/v1/topics/same/records"))
            .json(&json!({"records": [{"value": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    } else {
        assert_eq!(r.status(), 404);
        assert!(!dir.path().join("same").exists());
    }
    // Everything listed is on disk and comes back after a restart.
    let listed = |v: serde_json::Value| {
        let mut names: Vec<String> = v["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let before = listed(get_json(&http, format!("{base}/v1/topics")).await);
    server.kill();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_TOPICS", "40")]);
    let after = listed(get_json(&http, format!("{}/v1/topics", server.base)).await);
    assert_eq!(before, after);
}

/// Starts `mapq serve` from bash after `setup` (a `ulimit`, say), data in `dir/data`;
/// returns the process and the address it listens on.
fn serve_after(setup: &str, dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{setup} && exec {} serve --listen 127.0.0.1:0 --data-dir {}",
            env!("CARGO_BIN_EXE_mapq"),
            dir.join("data").display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("mapq listening on ")
        .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
        .to_owned();
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_hold_no_open_files() {
    let dir = tempfile::tempdir().unwrap();
    // A limit of 64 open files: when each partition kept its three files open, about
    // fifteen fitted; now the count does not grow with the partitions.
    let (mut child, base) = serve_after("ulimit -n 64", dir.path());
    let http = Client::new();
    for i in 0..150 {
        let r = http
            .post(format!("{base}/v1/topics/t{i}/records?durability=fsync"))
            .json(&json!({"records": [{"value": i}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "produce to t{i}: {}",
            r.text().await.unwrap()
        );
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .count();
    // Reads still work: each reopens nothing (the mappings stay).
    let r = http
        .get(format!("{base}/v1/topics/t7/partitions/0/records"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v["records"][0]["value"], 7, "{v}");
    assert!(fds < 40, "150 partitions hold {fds} open files");
}

#[test]
fn the_server_raises_its_soft_limit_of_open_files_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = serve_after("ulimit -Sn 256", dir.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files.len(), 2, "{limits}");
    assert_eq!(
        open_files[0], open_files[1],
        "soft limit raised to the hard one: {limits}"
    );
    assert_ne!(open_files[0], "256", "{limits}");
}

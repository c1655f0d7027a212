//! Consumer group offsets: what deleting a topic does to them, and who may commit and read
//! them when tokens are configured. Against the real server.

mod common;

use common::server::{commit_offset, create_topic, get_json, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_forgets_its_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = Client::new();
    let base = server.base.clone();
    for t in ["t1", "t2"] {
        create_topic(&http, &base, json!({"name": t})).await;
        let r = http
            .post(format!("{base}/v1/topics/{t}/records"))
            .json(&json!({"records": [{"value": 1}, {"value": 2}, {"value": 3}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    commit_offset(&http, &base, "g", ("t1", 0, 3)).await;
    commit_offset(&http, &base, "both", ("t1", 0, 2)).await;
    commit_offset(&http, &base, "both", ("t2", 0, 1)).await;
    let r = http
        .delete(format!("{base}/v1/topics/t1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Re-created under the same name, with new records: no group resumes past them.
    create_topic(&http, &base, json!({"name": "t1"})).await;
    let r = http
        .get(format!("{base}/v1/groups/g/offsets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a group left with no offset is gone");
    let both = get_json(&http, format!("{base}/v1/groups/both/offsets")).await;
    assert_eq!(
        both,
        json!({"offsets": [{"topic": "t2", "partition": 0, "offset": 1, "lag": 2}]})
    );
    assert_eq!(
        get_json(&http, format!("{base}/v1/groups")).await,
        json!({"groups": ["both"]})
    );
    // `mapq consume t1 --group g` starts at the new topic's first record.
    let r = http
        .post(format!("{base}/v1/topics/t1/records"))
        .json(&json!({"records": [{"value": "new-0"}, {"value": "new-1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args([
            "consume", "t1", "--group", "g", "--commit", "--server", &base,
        ])
        .env_remove("MAPQ_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "new-0\nnew-1\n");

    // Offsets of a topic that vanished while the server was down (a crash in the middle of
    // a deletion) are forgotten at start-up, durably.
    commit_offset(&http, &base, "both", ("t1", 0, 2)).await;
    drop(server);
    std::fs::remove_dir_all(dir.path().join("t2")).unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.base.clone();
    assert_eq!(
        get_json(&http, format!("{base}/v1/groups/both/offsets")).await,
        json!({"offsets": [{"topic": "t1", "partition": 0, "offset": 2, "lag": 0}]})
    );
    let file = std::fs::read_to_string(dir.path().join("@groups/both.json")).unwrap();
    assert!(!file.contains("\"t2\""), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_commit_and_read_offsets_of_the_topics_they_may_consume() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(
        &config,
        common::tokens_toml(&[
            ("ops", "ops", "*", &["produce", "consume", "admin"]),
            ("worker", "worker", "orders*", &["produce", "consume"]),
            ("writer", "writer", "orders*", &["produce"]),
        ]),
    )
    .unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let http = Client::new();
    let base = server.base.clone();
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    for name in ["orders", "orders.eu", "audit"] {
        let r = call(
            Method::POST,
            "/v1/topics",
            "ops",
            Some(json!({"name": name})),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = call(
            Method::POST,
            &format!("/v1/topics/{name}/records"),
            "ops",
            Some(json!({"records": [{"value": 1}, {"value": 2}]})),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let commit = |topic: &str, offset: u64| json!({"offsets": [{"topic": topic, "partition": 0, "offset": offset}]});
    // (token, method, path, body, status): in order.
    let cases: Vec<(&str, Method, &str, Option<Value>, StatusCode)> = vec![
        // A worker with produce and consume commits its group on orders*, without admin.
        (
            "worker",
            Method::PUT,
            "/v1/groups/w/offsets",
            Some(commit("orders", 1)),
            StatusCode::NO_CONTENT,
        ),
        // Not on a topic it may not consume; nothing of that request is kept.
        (
            "worker",
            Method::PUT,
            "/v1/groups/w/offsets",
            Some(json!({"offsets": [
                {"topic": "orders.eu", "partition": 0, "offset": 2},
                {"topic": "audit", "partition": 0, "offset": 2}]})),
            StatusCode::FORBIDDEN,
        ),
        // A producer without consume may not commit at all.
        (
            "writer",
            Method::PUT,
            "/v1/groups/p/offsets",
            Some(commit("orders", 1)),
            StatusCode::FORBIDDEN,
        ),
        (
            "ops",
            Method::PUT,
            "/v1/groups/w/offsets",
            Some(commit("audit", 2)),
            StatusCode::NO_CONTENT,
        ),
        (
            "ops",
            Method::PUT,
            "/v1/groups/secret/offsets",
            Some(commit("audit", 1)),
            StatusCode::NO_CONTENT,
        ),
        (
            "worker",
            Method::GET,
            "/v1/groups/w/offsets?topic=audit",
            None,
            StatusCode::FORBIDDEN,
        ),
        // A group that committed only on topics the token may not consume is not shown.
        (
            "worker",
            Method::GET,
            "/v1/groups/secret/offsets",
            None,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (token, method, path, body, want) in cases {
        let r = call(method.clone(), path, token, body).await.unwrap();
        assert_eq!(r.status(), want, "{method} {path} with {token}");
    }
    // GET `path` with `token`, as JSON.
    let get = |path: &str, token: &str| {
        let req = call(Method::GET, path, token, None);
        async move { req.await.unwrap().json::<Value>().await.unwrap() }
    };
    // The worker sees its own offsets on orders*, not the admin's on audit.
    let v = get("/v1/groups/w/offsets", "worker").await;
    assert_eq!(
        v,
        json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 1, "lag": 1}]})
    );
    let v = get("/v1/groups/w/offsets", "ops").await;
    assert_eq!(
        v["offsets"].as_array().unwrap().len(),
        2,
        "the refused commit kept nothing: {v}"
    );
    let v = get("/v1/groups", "worker").await;
    assert_eq!(v, json!({"groups": ["w"]}));
    let v = get("/v1/groups", "ops").await;
    assert_eq!(v, json!({"groups": ["secret", "w"]}));
    // The topic list shows each token the topics it holds a permission on.
    for (token, want) in [
        ("ops", json!(["audit", "orders", "orders.eu"])),
        ("worker", json!(["orders", "orders.eu"])),
        ("writer", json!(["orders", "orders.eu"])),
    ] {
        let v = get("/v1/topics", token).await;
        let names: Vec<&Value> = v["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["name"])
            .collect();
        assert_eq!(json!(names), want, "{token}");
    }
}

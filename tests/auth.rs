//! Bearer tokens and per-topic permissions against the real server.

mod common;

use common::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_permissions_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(
        &config,
        common::tokens_toml(&[
            ("ops", "ops-secret", "*", &["produce", "consume", "admin"]),
            ("writer", "writer-secret", "orders*", &["produce"]),
            ("reader", "reader-secret", "orders*", &["consume"]),
        ]),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_config(&data, &config);
    let http = Client::new();
    let base = &server.base;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut req = http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    use reqwest::Method as M;
    let code = |r: reqwest::Response| r.status();

    // Open routes stay open.
    assert_eq!(
        code(call(M::GET, "/healthz", None, None).await.unwrap()),
        StatusCode::OK
    );
    assert_eq!(
        code(call(M::GET, "/metrics", None, None).await.unwrap()),
        StatusCode::OK
    );
    // No token, a wrong token: 401 with the contract's error shape.
    let r = call(M::GET, "/v1/topics", None, None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unauthorized");
    let r = call(M::GET, "/v1/topics", Some("guess"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Without a token nobody learns which routes exist: an unknown route or method is 401
    // too; with one it is 404 or 405.
    for (method, path, with_token) in [
        (M::GET, "/v1/nowhere", StatusCode::NOT_FOUND),
        (M::PATCH, "/v1/topics", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let r = call(method.clone(), path, None, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let r = call(method.clone(), path, Some("reader-secret"), None);
        assert_eq!(code(r.await.unwrap()), with_token, "{method} {path}");
    }

    // Admin creates topics; the writer may not.
    let create = |name: &str| json!({"name": name});
    let r = call(
        M::POST,
        "/v1/topics",
        Some("writer-secret"),
        Some(create("orders")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "forbidden");
    for name in ["orders", "audit"] {
        let r = call(
            M::POST,
            "/v1/topics",
            Some("ops-secret"),
            Some(create(name)),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let records = json!({"records": [{"value": 1}]});
    let commit = json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 1}]});
    let read = "/v1/topics/orders/partitions/0/records";
    // (method, path, token, body, expected status), in order: each permission allowed and
    // refused, per token.
    let cases: Vec<(M, &str, &str, Option<Value>, StatusCode)> = vec![
        // The writer produces to orders*, not to audit, and cannot read.
        (
            M::POST,
            "/v1/topics/orders/records",
            "writer-secret",
            Some(records.clone()),
            StatusCode::OK,
        ),
        (
            M::POST,
            "/v1/topics/audit/records",
            "writer-secret",
            Some(records.clone()),
            StatusCode::FORBIDDEN,
        ),
        (M::GET, read, "writer-secret", None, StatusCode::FORBIDDEN),
        // A name is checked as written: an encoded one (here "ordersA") is refused before
        // a pattern could match its encoding.
        (
            M::POST,
            "/v1/topics/orders%41/records",
            "writer-secret",
            Some(records.clone()),
            StatusCode::BAD_REQUEST,
        ),
        // The reader reads orders* and commits its group's offsets there; it cannot produce,
        // touch audit or delete.
        (M::GET, read, "reader-secret", None, StatusCode::OK),
        (
            M::POST,
            "/v1/topics/orders/records",
            "reader-secret",
            Some(records),
            StatusCode::FORBIDDEN,
        ),
        (
            M::GET,
            "/v1/topics/audit",
            "reader-secret",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            M::DELETE,
            "/v1/topics/orders",
            "reader-secret",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            M::PUT,
            "/v1/groups/g/offsets",
            "reader-secret",
            Some(commit.clone()),
            StatusCode::NO_CONTENT,
        ),
        // The admin may do both.
        (
            M::PUT,
            "/v1/groups/g/offsets",
            "ops-secret",
            Some(commit),
            StatusCode::NO_CONTENT,
        ),
        // The reader commits to a group of its own, for a topic it has no grant on at all
        // (whatever permission commits need, it has none there).
        (
            M::PUT,
            "/v1/groups/g2/offsets",
            "reader-secret",
            Some(json!({"offsets": [{"topic": "audit", "partition": 0, "offset": 0}]})),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, token, body, want) in cases {
        let r = call(method.clone(), path, Some(token), body).await.unwrap();
        assert_eq!(r.status(), want, "{method} {path} with {token}");
        if method == M::GET && path == read && want == StatusCode::OK {
            let v: Value = r.json().await.unwrap();
            assert_eq!(
                v["records"][0]["value"], 1,
                "the reader sees the writer's record"
            );
        }
    }

    // The refused requests had no effect: nothing was appended to audit (nor a second record
    // to orders), group g2 was never created, orders was not deleted.
    let admin_get = |path: &str| call(M::GET, path, Some("ops-secret"), None);
    let end_offset = |v: &Value| v["partition_stats"][0]["end_offset"].as_u64();
    let audit: Value = admin_get("/v1/topics/audit")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(end_offset(&audit), Some(0), "{audit}");
    let r = admin_get("/v1/groups/g2/offsets").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{:?}", r.text().await);
    let r = call(M::DELETE, "/v1/topics/audit", Some("ops-secret"), None)
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "the admin deletes audit"
    );
    let orders: Value = admin_get("/v1/topics/orders")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(end_offset(&orders), Some(1), "{orders}");

    // The CLI sends its token: refused without it, served with it (from MAPQ_TOKEN too).
    let cli = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mapq"));
        cmd.args(["topics", "list", "--json", "--server", base])
            .env_remove("MAPQ_TOKEN");
        if let Some(t) = token {
            cmd.env("MAPQ_TOKEN", t);
        }
        common::server::output_with_deadline(&mut cmd, b"", std::time::Duration::from_secs(30))
    };
    let refused = cli(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{refused:?}"
    );
    let listed = cli(Some("reader-secret"));
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["topics"][0]["name"], "orders", "{listed}");
}

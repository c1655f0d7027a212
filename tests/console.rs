//! The web console in a real browser: headless Chromium driven by Selenium
//! (`tests/tools/console_test.py`, with Debian's `chromium`, `chromium-driver` and
//! `python3-selenium`, installed by `tests/tools/install-browser.sh` when missing), against
//! a real server filled with data here. Screenshots of every page are saved under
//! `target/tmp/console-screenshots/` (not committed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::server::{get_json, Server};
use serde_json::{json, Value};

/// Installs the browser and Selenium (once per test binary).
fn install_browser() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/install-browser.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run tests/tools/install-browser.sh");
        assert!(status.success(), "tests/tools/install-browser.sh failed");
    });
}

fn shots(mode: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console-screenshots")
        .join(mode)
}

/// Runs the Selenium script in `mode` against `base`: its measurements (its last line).
async fn drive(mode: &str, base: &str, extra: &[&str]) -> Value {
    install_browser();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/console_test.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(mode)
        .arg(base)
        .arg(shots(mode))
        .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run console_test.py"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "console_test.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("measurements")
}

/// Sends `body` with `method` to `path`: the JSON answer (the call must succeed).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    path: &str,
    body: Value,
) -> Value {
    let r = http
        .request(method, format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    send(http, reqwest::Method::POST, base, path, body).await
}

async fn put(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    send(http, reqwest::Method::PUT, base, path, body).await
}

/// Topics with JSON, text, binary and markup records; a group with a member; a queue group
/// with a dead letter.
async fn fill(http: &reqwest::Client, base: &str) {
    post(
        http,
        base,
        "/v1/topics",
        json!({"name": "orders", "partitions": 2}),
    )
    .await;
    let bin = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 0xfe, 0xff, b'A']);
    post(
        http,
        base,
        "/v1/topics/orders/records",
        json!({"records": [
            {"partition": 0, "key": "o-1", "value": {"total": 7, "nested": {"n": 1}}, "headers": {"source": "web"}},
            {"partition": 0, "value": "plain text"},
            {"partition": 0, "key_b64": bin, "value_b64": bin},
            {"partition": 0, "key": "<script>window.__xss=2</script>", "value": "<img src=x onerror=\"window.__xss=1\">",
             "headers": {"<i>h</i>": "<b>v</b>"}},
            {"partition": 1, "value": {"total": 9}},
        ]}),
    )
    .await;
    post(
        http,
        base,
        "/v1/topics",
        json!({"name": "jobs", "partitions": 1}),
    )
    .await;
    post(
        http,
        base,
        "/v1/topics/jobs/records",
        json!({"records": [{"value": "job 1"}, {"value": "job 2"}, {"value": "job 3"}]}),
    )
    .await;
    put(
        http,
        base,
        "/v1/groups/workers",
        json!({"type": "queue", "topics": ["jobs"], "lease_ms": 100, "max_deliveries": 1, "dead_letter_topic": "jobs.dlq"}),
    )
    .await;
    post(
        http,
        base,
        "/v1/groups/workers/leases",
        json!({"member": "w", "max_records": 1}),
    )
    .await;
    // The lease expires after its last delivery: the record goes to the dead-letter topic.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = get_json(http, format!("{base}/v1/groups/workers")).await;
        if g["dead_lettered"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    put(
        http,
        base,
        "/v1/groups/billing/members/w-1",
        json!({"topics": ["orders"], "member_epoch": 0}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_works_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // Long sessions: the member stays while the browser looks.
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    put(
        &http,
        &server.base,
        "/v1/groups/billing",
        json!({"type": "partitioned", "session_timeout_ms": 600000}),
    )
    .await;
    fill(&http, &server.base).await;
    // A steady producer while the browser looks, so that the charts have something to show.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (http, base, stop) = (http.clone(), server.base.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let records: Vec<Value> = (0..50)
                    .map(|i| json!({"partition": 1, "value": {"tick": i}}))
                    .collect();
                post(
                    &http,
                    &base,
                    "/v1/topics/orders/records",
                    json!({ "records": records }),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let m = drive("open", &server.base, &[]).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    println!(
        "console first load: {} bytes (document {} + scripts and styles {}), then {} bytes of API answers; first contentful paint {:.0} ms; live tail {} ms from produce to row",
        m["first_load_bytes"], m["document_bytes"], m["assets_bytes"], m["api_bytes"],
        m["first_contentful_paint_ms"].as_f64().unwrap_or(f64::NAN),
        m["tail_ms"]
    );
    // Gzip: the first load stays small.
    let first = m["first_load_bytes"].as_u64().unwrap();
    assert!(first > 0 && first < 40_000, "first load {first} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limit_what_the_console_shows_and_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(
        &config,
        common::tokens_toml(&[
            (
                "admin",
                "admin-secret",
                "*",
                &["produce", "consume", "admin"],
            ),
            ("reader", "reader-secret", "*", &["consume"]),
        ]),
    )
    .unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                "Bearer admin-secret".parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    post(
        &http,
        &server.base,
        "/v1/topics",
        json!({"name": "orders", "partitions": 1}),
    )
    .await;
    drive("tokens", &server.base, &["reader-secret", "admin-secret"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_a_cluster() {
    let etcd = common::etcd::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::etcd::free_port();
    let server = common::cluster::start_node(dir.path(), port, &etcd.url, "n1", &[]);
    let http = reqwest::Client::new();
    post(
        &http,
        &server.base,
        "/v1/topics",
        json!({"name": "orders", "partitions": 2}),
    )
    .await;
    drive("cluster", &server.base, &[]).await;
    drop(server);
    drop(etcd);
}

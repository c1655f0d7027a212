//! The local tailer from C and Python (`src/capi`): the test builds `libmapq_tail.so`
//! (cargo), compiles `tests/tools/tail_c.c` against the generated header with gcc, installs
//! the Python package with pip (into `target/`), and runs both, as processes of their own,
//! on a live server's files: following a partition through segment rolls and a `kill -9`
//! of the server, they must print exactly the records HTTP consume returns, in order. Then
//! the bad inputs: a path that is no data directory, a topic or partition that does not
//! exist, an offset past the end, a topic deleted while followed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::server::{get_json, Server};
use serde_json::{json, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the C library (once per test binary): the path of `libmapq_tail.so`.
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "mapq-tail",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(root())
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build -p mapq-tail");
        assert!(out.status.success(), "cargo build -p mapq-tail failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mapq_tail")
            .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(PathBuf::from))
            .find(|f| f.extension().is_some_and(|e| e == "so"))
            .expect("cargo built no libmapq_tail.so")
    })
}

fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("tail-ffi")
}

/// Compiles the C program against the header and the library (once).
fn c_program() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let lib = library();
        std::fs::create_dir_all(work_dir()).unwrap();
        let bin = work_dir().join("tail_c");
        let status = Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
            .arg("-I")
            .arg(root().join("src/capi/include"))
            .arg(root().join("tests/tools/tail_c.c"))
            .arg("-o")
            .arg(&bin)
            .arg("-L")
            .arg(lib.parent().unwrap())
            .arg("-lmapq_tail")
            .arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()))
            .status()
            .expect("run gcc");
        assert!(status.success(), "gcc failed on tests/tools/tail_c.c");
        bin
    })
}

/// Installs the Python package with pip into `target/` (once): the directory to put on
/// `PYTHONPATH`.
fn python_package() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = work_dir().join("python");
        let _ = std::fs::remove_dir_all(&dir);
        // pip writes its build files next to the sources: it gets a copy of them.
        let source = work_dir().join("python-source");
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(source.join("mapq_tail")).unwrap();
        for file in ["pyproject.toml", "mapq_tail/__init__.py"] {
            std::fs::copy(root().join("src/capi/python").join(file), source.join(file)).unwrap();
        }
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&dir)
            .arg(&source)
            .output()
            .expect("run python3 -m pip");
        assert!(
            out.status.success(),
            "pip install src/capi/python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A C or Python tailer process.
fn tailer(lang: &str, args: &[&str]) -> std::process::Child {
    let mut cmd = match lang {
        "c" => Command::new(c_program()),
        _ => {
            let mut c = Command::new("python3");
            c.arg(root().join("tests/tools/tail_py.py"))
                .env("PYTHONPATH", python_package())
                .env("MAPQ_TAIL_LIBRARY", library());
            c
        }
    };
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {lang} tailer: {e}"))
}

/// What a tailer process printed, line by line, once it exited (it must succeed).
fn output_lines(child: std::process::Child, what: &str) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {what} tailer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn hexed(b64: Option<&str>, text: Option<&str>) -> String {
    match (b64, text) {
        (Some(b), _) => format!(
            "x{}",
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        (None, Some(t)) => format!(
            "x{}",
            t.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        (None, None) => "-".into(),
    }
}

/// Every record of partition 0 of `topic`, over HTTP, as the tailers print them.
async fn consumed(http: &reqwest::Client, base: &str, topic: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut offset = 0;
    loop {
        let r = get_json(
            http,
            format!(
                "{base}/v1/topics/{topic}/partitions/0/records?offset={offset}&max_records=1000"
            ),
        )
        .await;
        let records = r["records"].as_array().unwrap();
        if records.is_empty() {
            return lines;
        }
        for rec in records {
            // Produced as JSON (`value`): stored as its JSON text, flagged (`j`); produced as
            // bytes (`value_b64`, none of them UTF-8 here): stored as they are.
            let value = match &rec["value"] {
                Value::Null => None,
                json => Some(format!("j{}", hexed(None, Some(&json.to_string())))),
            };
            let headers: Vec<String> = rec["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{}={}", hexed(None, Some(k)), hexed(None, v.as_str())))
                .collect();
            lines.push(format!(
                "{} {} {} {} {}",
                rec["offset"],
                rec["timestamp_ms"],
                hexed(rec["key_b64"].as_str(), rec["key"].as_str()),
                value.unwrap_or_else(|| hexed(rec["value_b64"].as_str(), None)),
                headers.join(",")
            ));
        }
        offset = r["next_offset"].as_u64().unwrap();
    }
}

async fn produce(http: &reqwest::Client, base: &str, from: usize, n: usize) {
    let bin = base64::engine::general_purpose::STANDARD.encode([0u8, 0xff, 7]);
    let records: Vec<Value> = (from..from + n)
        .map(|i| match i % 4 {
            0 => json!({"key": format!("k{i}"), "value": "v".repeat(i % 700), "headers": {"n": i.to_string()}}),
            1 => json!({"value": {"i": i}}),
            2 => json!({"key_b64": bin, "value_b64": bin, "headers": {"a": "1", "b": "2"}}),
            _ => json!({"key": "tombstone"}),
        })
        .collect();
    let r = http
        .post(format!("{base}/v1/topics/t/records"))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_and_python_tailers_read_what_http_consume_returns_through_rolls_and_a_kill() {
    // Built first (they take a while), so that the tailers start at once.
    c_program();
    python_package();
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the records roll over many of them.
    let env = [("MAPQ_SEGMENT_BYTES", "65536")];
    let server = Server::start(dir.path(), &env);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/topics", server.base))
        .json(&json!({"name": "t", "partitions": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    const FIRST: usize = 1500;
    const TOTAL: usize = 3000;
    let data = dir.path().to_str().unwrap().to_owned();
    let count = TOTAL.to_string();
    let c = tailer("c", &["follow", &data, "t", "0", &count]);
    let py = tailer("python", &["follow", &data, "t", "0", &count]);
    for batch in 0..FIRST / 100 {
        produce(&http, &server.base, batch * 100, 100).await;
    }
    // kill -9, and a new server on the same files: the tailers go on reading.
    server.kill();
    let server = Server::start(dir.path(), &env);
    for batch in FIRST / 100..TOTAL / 100 {
        produce(&http, &server.base, batch * 100, 100).await;
    }
    let expected = consumed(&http, &server.base, "t").await;
    assert_eq!(expected.len(), TOTAL);
    let segments = std::fs::read_dir(dir.path().join("t/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        segments > 5,
        "only {segments} segments: no rolls to read through"
    );
    for (lang, child) in [("C", c), ("Python", py)] {
        let got = tokio::task::spawn_blocking(move || output_lines(child, lang))
            .await
            .unwrap();
        assert_eq!(
            got.len(),
            TOTAL,
            "the {lang} tailer printed {} records",
            got.len()
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(
                g, e,
                "record {i} as the {lang} tailer read it, and as HTTP consume returns it"
            );
        }
    }
    // Python's fast path, Tailer.values(): the same offsets and values.
    let got = output_lines(
        tailer("python", &["values", &data, "t", "0"]),
        "Python values()",
    );
    let want: Vec<String> = expected
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            format!("{} {}", w[0], w[3].trim_start_matches('j'))
        })
        .collect();
    assert_eq!(got, want, "Tailer.values() and HTTP consume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_error_codes() {
    c_program();
    python_package();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    for name in ["t", "doomed"] {
        let r = http
            .post(format!("{}/v1/topics", server.base))
            .json(&json!({"name": name, "partitions": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    produce(&http, &server.base, 0, 4).await;
    let data = dir.path().to_str().unwrap().to_owned();
    for lang in ["c", "python"] {
        let out = tailer(lang, &["errors", &data, "t"])
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = |what: &str| -> i32 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{what} ")))
                .unwrap_or_else(|| panic!("{lang}: no {what} line in {text}"));
            line.split(' ').nth(1).unwrap().parse().unwrap()
        };
        assert_eq!(code("not_a_data_dir"), -2, "{lang}: {text}");
        assert_eq!(code("no_topic"), -3, "{lang}: {text}");
        assert_eq!(code("no_partition"), -4, "{lang}: {text}");
        assert_eq!(code("beyond_end"), -6, "{lang}: {text}");
        assert!(
            text.contains("is not a mapq data directory"),
            "{lang}: {text}"
        );
        if lang == "c" {
            assert_eq!(code("null_topic"), -1, "{text}");
            assert_eq!(code("bad_option"), -1, "{text}");
            assert_eq!(code("null_tailer"), -1, "{text}");
            // From offset 2 of 4, in batches: 2 records, then MAPQ_TAIL_END (1).
            assert!(text.contains("from_offset_batches 1 2 2\n"), "{text}");
            // Following from the end, no wait: MAPQ_TAIL_TIMEOUT (2), at offset 4.
            assert!(text.contains("latest_no_wait 2 4\n"), "{text}");
        } else {
            assert!(text.contains("from_offset 2 2\n"), "{text}");
            assert!(text.contains("latest_no_wait True 4\n"), "{text}");
            assert!(text.contains("stale_record refused\n"), "{text}");
            // A view held by something else stops the tailer until it is let go; then it
            // goes on with the next record (offset 1).
            assert!(text.contains("held_view refused 1\n"), "{text}");
            // A slice of record 2's value (of 3 bytes) kept: record 3 is read, then the
            // end of the batch is refused until it is dropped; then the end.
            assert!(text.contains("derived_view refused [3] 2 None\n"), "{text}");
            // The same for memoryview(view); and close() refuses while such a view lives.
            assert!(text.contains("wrapped_view refused None\n"), "{text}");
            assert!(text.contains("close_with_view refused\n"), "{text}");
            // From another thread: refused, and the tailer still works in its own.
            assert!(
                text.contains("other_thread refused refused refused True\n"),
                "{text}"
            );
            assert!(text.contains("closed refused\n"), "{text}");
        }
    }
    // A topic deleted while followed: both tailers stop with TOPIC_DELETED.
    let mut followers = Vec::new();
    for lang in ["c", "python"] {
        let mut child = tailer(lang, &["deleted", &data, "doomed"]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready", "{lang}");
        followers.push((lang, child, lines));
    }
    let r = http
        .delete(format!("{}/v1/topics/doomed", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (lang, mut child, mut lines) in followers {
        let line = lines.next().unwrap().unwrap();
        assert!(line.starts_with("deleted -7 "), "{lang}: {line}");
        assert!(child.wait().unwrap().success(), "{lang}");
        assert!(Instant::now() < deadline);
    }
}

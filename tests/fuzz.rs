//! Mutation fuzzing on the stable toolchain (no coverage guidance): frame decoding, segment
//! recovery from arbitrary bytes, and request body parsing through the real router. Inputs
//! come from valid seeds mutated by a seeded generator (bit flips, byte changes, inserts,
//! deletions, splices). The property is the same everywhere: no panic, no 5xx, and after
//! recovery a partition verifies clean.
//!
//! Each target runs for `MAPQ_FUZZ_SECONDS` (default 1) in the normal test run; for a long
//! run: `MAPQ_FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture`. A failing
//! input is printed in hex; add it to the target's regression list.

mod common;

use std::time::{Duration, Instant};

use mapq::log::format::{decode_frame, encode_frame, Record};
use mapq::log::{verify, LogConfig, PartitionLog};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0, 0xFF, 0x7F, 0x80, 1][rng.below(5)];
            }
            2 => {
                let i = rng.below(data.len() + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = rng.below(data.len() - i).max(1);
                data.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                let i = rng.below(data.len() + 1);
                let j = rng.below(other.len());
                let n = rng.below(other.len() - j) + 1;
                data.splice(i..i, other[j..j + n].iter().copied());
            }
            _ if data.len() >= 8 => {
                // An interesting little-endian integer somewhere.
                let i = rng.below(data.len() - 7);
                let v: u64 = [0, 1, 40, 4096, u32::MAX as u64, u64::MAX, 1 << 31][rng.below(7)];
                data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    data
}

fn budget() -> Duration {
    let secs = std::env::var("MAPQ_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `target` on mutated seeds until the budget is spent; reports the input that panics.
fn fuzz(name: &str, seeds: &[Vec<u8>], regressions: &[&str], target: impl Fn(&[u8])) {
    for r in regressions {
        let bytes: Vec<u8> = (0..r.len() / 2)
            .map(|i| u8::from_str_radix(&r[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        target(&bytes);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, other);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if result.is_err() {
            panic!("{name}: input {} panicked", hex(&input));
        }
        runs += 1;
    }
    println!("{name}: {runs} inputs in {:?}", budget());
}

fn frame(r: &Record<'_>) -> Vec<u8> {
    let mut buf = vec![0; r.padded_len().unwrap()];
    encode_frame(&mut buf, 7, r);
    buf
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let headers: &[(&[u8], &[u8])] = &[(b"source", b"web")];
    vec![
        frame(&Record::value(b"hello", 1)),
        frame(&Record {
            key: Some(b"k"),
            value: b"{\"a\":1}",
            headers,
            timestamp_ms: 1_764_201_600_000,
            value_is_json: true,
        }),
        [
            frame(&Record::value(b"", 0)),
            frame(&Record::value(&[0xFF; 100], 2)),
        ]
        .concat(),
    ]
}

#[test]
fn fuzz_frame_decoding() {
    fuzz("frame decoding", &frame_seeds(), &[], |data| {
        if let Ok(f) = decode_frame(data) {
            // Whatever decodes is self-consistent.
            assert!(f.padded_len <= data.len());
            let _ = f.headers().count();
            let _ = (f.key(), f.value());
        }
        let _ = mapq::log::partition::validate_frames(data);
    });
}

#[test]
fn fuzz_segment_recovery() {
    // Seeds: the data area of a real segment. The target writes a segment whose header is
    // valid and whose frames and committed end come from the input, then opens it.
    let seed_dir = tempfile::tempdir().unwrap();
    let config = || LogConfig {
        segment_bytes: 65536,
        index_interval_bytes: 256,
        ..common::small_config(65536)
    };
    {
        let (log, _) = PartitionLog::open(seed_dir.path(), config()).unwrap();
        common::append_range(&log, 0, 40);
        log.flush().unwrap();
    }
    let seg_path = seed_dir.path().join("00000000000000000000.log");
    let original = std::fs::read(&seg_path).unwrap();
    let data_seed = original[4096..4096 + 8192].to_vec();
    let committed = u64::from_le_bytes(original[64..72].try_into().unwrap());
    let mut seed = committed.to_le_bytes().to_vec();
    seed.extend(&data_seed);
    fuzz("segment recovery", &[seed], &[], |input| {
        let dir = tempfile::tempdir().unwrap();
        let mut file = original.clone();
        if input.len() >= 8 {
            // The committed end, then the bytes of the data area.
            file[64..72].copy_from_slice(&input[..8]);
            let body = &input[8..];
            let n = body.len().min(file.len() - 4096);
            file[4096..4096 + n].copy_from_slice(&body[..n]);
        }
        std::fs::write(dir.path().join("00000000000000000000.log"), &file).unwrap();
        // Index files are left out: recovery rebuilds them.
        if let Ok((log, _)) = PartitionLog::open(dir.path(), config()) {
            let end = log.end_offset();
            let mut next = log.start_offset();
            while next < end {
                let b = log.read(next, 100, 1 << 20).unwrap();
                assert!(b.record_count > 0, "a recovered record below the end reads");
                next = b.next_offset;
            }
            drop(log);
            let summary = verify::verify_partition(dir.path());
            assert!(
                summary.is_ok(),
                "recovered partition does not verify: {summary}"
            );
        }
    });
}

#[test]
fn fuzz_request_bodies() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mapq::config::Config::defaults();
    config.data_dir = dir.path().to_owned();
    config.max_request_bytes = 65536;
    config.max_record_bytes = 4096;
    let config = std::sync::Arc::new(config);
    let state = mapq::server::AppState::new(config.clone(), mapq::metrics::Metrics::new().unwrap());
    state.set_broker(std::sync::Arc::new(
        mapq::broker::Broker::open(config).unwrap(),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"records":[{"key":"a","value":{"x":[1,2]},"headers":{"h":"v"}},{"value_b64":"AAE=","partition":0,"timestamp_ms":5}]}"#.to_vec(),
        b"{\"value\":1}\n{\"key_b64\":\"/w==\",\"value\":\"s\"}\n".to_vec(),
        frame_seeds().concat(),
        br#"{"name":"t","partitions":2,"config":{"retention_ms":null,"segment_bytes":1048576}}"#.to_vec(),
        br#"{"offsets":[{"topic":"t","partition":0,"offset":0}]}"#.to_vec(),
    ];
    let routes = [
        ("POST", "/v1/topics/t/records", "application/json"),
        ("POST", "/v1/topics/t/records", "application/x-ndjson"),
        (
            "POST",
            "/v1/topics/t/records?partition=0",
            "application/vnd.mapq.frames",
        ),
        (
            "POST",
            "/v1/topics/t/records?key=k",
            "application/octet-stream",
        ),
        ("POST", "/v1/topics", "application/json"),
        ("PUT", "/v1/groups/g/offsets", "application/json"),
    ];
    let counter = std::cell::Cell::new(0usize);
    fuzz("request bodies", &seeds, &[], |body| {
        let (method, uri, content_type) = routes[counter.get() % routes.len()];
        counter.set(counter.get() + 1);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(Body::from(body.to_vec()))
            .unwrap();
        let app = mapq::server::router(state.clone());
        let status = runtime.block_on(app.oneshot(req)).unwrap().status();
        assert!(!status.is_server_error(), "{method} {uri}: {status}");
    });
}

//! The fuzz targets' properties, shared by the libFuzzer targets in `tests/cargo-fuzz/` and
//! by `tests/fuzz.rs`, which replays the seed corpus and every input a fuzzer ever found
//! failing. Everywhere: no panic, no 5xx, and a recovered partition verifies clean.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use mapq::log::format::decode_frame;
use mapq::log::{verify, LogConfig, PartitionLog, Record};
use tower::ServiceExt;

/// The fuzz crate's directory: seeds in `seeds/<target>/`, failing inputs kept as
/// regressions in `regressions/<target>/`.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cargo-fuzz")
}

/// Frame decoding and validation of arbitrary bytes: no panic, and whatever decodes is
/// self-consistent.
pub fn frame_decoding(data: &[u8]) {
    if let Ok(f) = decode_frame(data) {
        assert!(f.padded_len <= data.len());
        let _ = f.headers().count();
        let _ = (f.key(), f.value());
    }
    let _ = mapq::log::partition::validate_frames(data);
}

/// Opening a partition whose one segment has a valid header, and a committed end (the
/// input's first 8 bytes) and data area (the rest) from the input.
pub struct SegmentRecovery {
    original: Vec<u8>,
}

fn recovery_config() -> LogConfig {
    LogConfig {
        segment_bytes: 65536,
        index_interval_bytes: 256,
        reserve_chunk_bytes: 65536,
        prefault_bytes: 0,
        ..LogConfig::default()
    }
}

const SEGMENT: &str = "00000000000000000000.log";

impl SegmentRecovery {
    /// Writes a real segment of 40 records to start from.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = PartitionLog::open(dir.path(), recovery_config()).unwrap();
            for i in 0..40u32 {
                let value = format!("record {i}");
                let headers: &[(&[u8], &[u8])] = &[(b"h", b"v")];
                let record = Record {
                    key: (i % 3 != 0).then_some(b"key".as_slice()),
                    value: value.as_bytes(),
                    headers: if i % 2 == 0 { headers } else { &[] },
                    timestamp_ms: 1_000 + i as i64,
                    value_is_json: false,
                };
                log.append(&[record]).unwrap();
            }
            log.flush().unwrap();
        }
        SegmentRecovery {
            original: std::fs::read(dir.path().join(SEGMENT)).unwrap(),
        }
    }

    /// The real segment's committed end and its first 8 KiB of data.
    pub fn seed(&self) -> Vec<u8> {
        let mut seed = self.original[64..72].to_vec();
        seed.extend(&self.original[4096..4096 + 8192]);
        seed
    }

    pub fn check(&self, input: &[u8]) {
        self.recover(input);
    }

    /// Recovers the segment made from `input`; the number of records it then holds, or
    /// `None` when the partition refuses to open.
    pub fn recover(&self, input: &[u8]) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let mut file = self.original.clone();
        if input.len() >= 8 {
            file[64..72].copy_from_slice(&input[..8]);
            let body = &input[8..];
            let n = body.len().min(file.len() - 4096);
            file[4096..4096 + n].copy_from_slice(&body[..n]);
        }
        std::fs::write(dir.path().join(SEGMENT), &file).unwrap();
        // Index files are left out: recovery rebuilds them.
        let (log, _) = PartitionLog::open(dir.path(), recovery_config()).ok()?;
        let end = log.end_offset();
        let mut next = log.start_offset();
        let mut records = 0;
        while next < end {
            let b = log.read(next, 100, 1 << 20).unwrap();
            assert!(b.record_count > 0, "a recovered record below the end reads");
            records += b.record_count as u64;
            next = b.next_offset;
        }
        drop(log);
        let summary = verify::verify_partition(dir.path());
        assert!(
            summary.is_ok(),
            "recovered partition does not verify: {summary}"
        );
        Some(records)
    }
}

/// Request bodies through the real router: the input's first byte picks the route and
/// content type, the rest is the body. No answer may be a 5xx. The broker is shared by all
/// inputs (a fresh one per input would be too slow), so an input may meet topics and offsets
/// left by earlier ones.
pub struct RequestBodies {
    _dir: tempfile::TempDir,
    state: mapq::server::AppState,
    runtime: tokio::runtime::Runtime,
}

pub const ROUTES: [(&str, &str, &str); 6] = [
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

impl RequestBodies {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Small limits, so that inputs creating topics and partitions stay cheap, and bodies
        // can go over max_request_bytes (the fuzzer's inputs reach 64 KiB).
        let mut config = mapq::config::Config::defaults();
        config.data_dir = dir.path().to_owned();
        config.max_request_bytes = 16384;
        config.max_record_bytes = 4096;
        config.segment_bytes = 65536;
        config.reserve_chunk_bytes = 65536;
        config.prefault_bytes = 0;
        config.max_partitions_per_topic = 8;
        config.default_partitions = 1;
        config.max_topics = 64;
        let config = Arc::new(config);
        let state =
            mapq::server::AppState::new(config.clone(), mapq::metrics::Metrics::new().unwrap());
        state.set_broker(Arc::new(mapq::broker::Broker::open(config).unwrap()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        RequestBodies {
            _dir: dir,
            state,
            runtime,
        }
    }

    pub fn check(&self, input: &[u8]) {
        let Some((&route, body)) = input.split_first() else {
            return;
        };
        let (method, uri, content_type) = ROUTES[route as usize % ROUTES.len()];
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(Body::from(body.to_vec()))
            .unwrap();
        let app = mapq::server::router(self.state.clone());
        let status = self.runtime.block_on(app.oneshot(req)).unwrap().status();
        assert!(!status.is_server_error(), "{method} {uri}: {status}");
    }
}

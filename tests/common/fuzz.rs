//! The fuzz targets' properties, shared by the libFuzzer targets in `tests/cargo-fuzz/` and
//! by `tests/fuzz.rs`, which replays the seed corpus and every input a fuzzer ever found
//! failing. Everywhere: no panic, no 5xx, and a recovered partition verifies clean.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use mapq::log::format::{decode_frame, encode_frame, get_u64, segment_header as sh};
use mapq::log::{verify, LogConfig, PartitionLog, Record};
use tower::ServiceExt;

/// The fuzz crate's directory: seeds in `seeds/<target>/`, failing inputs kept as
/// regressions in `regressions/<target>/`.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cargo-fuzz")
}

/// Frame decoding and validation of arbitrary bytes: no panic; whatever decodes encodes
/// back to the same bytes (so nothing is accepted that the encoder would not write, and
/// nothing read differs from what was written); and the whole-buffer validation agrees with
/// the decoder on the first frame.
pub fn frame_decoding(data: &[u8]) {
    use mapq::log::ValidFrames;
    let validate_frames = |b: &[u8]| ValidFrames::check(b, u64::MAX).map(|f| f.count());
    match decode_frame(data) {
        Ok(f) => {
            assert!(f.padded_len <= data.len());
            let headers: Vec<mapq::log::format::Header<'_>> = f.headers().collect();
            assert_eq!(headers.len(), f.header_count as usize, "header count");
            let head = f.batch();
            assert_eq!(head.is_some(), f.batch_range().is_some(), "batch head");
            let positions = head.and_then(|h| h.positions());
            let record = Record {
                batch: head.map(|h| h.to_head(positions.as_deref())),
                ..f.record(&headers)
            };
            assert_eq!(record.padded_len(), Some(f.padded_len), "frame length");
            let mut encoded = vec![0u8; f.padded_len];
            encode_frame(&mut encoded, f.offset, &record);
            assert!(
                encoded == data[..f.padded_len],
                "a decoded frame encodes back to other bytes"
            );
            // Clients may not send batch heads: the server writes them.
            assert_eq!(
                validate_frames(&data[..f.padded_len]).ok(),
                f.batch_range().is_none().then_some(1),
                "ValidFrames::check accepts the one frame decode_frame accepted, unless it has a batch head"
            );
        }
        Err(_) => assert!(
            data.is_empty() || validate_frames(data).is_err(),
            "ValidFrames::check accepts bytes whose first frame does not decode"
        ),
    }
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
                let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h", Some(b"v"))];
                let record = Record {
                    key: (i % 3 != 0).then_some(b"key".as_slice()),
                    value: Some(value.as_bytes()),
                    headers: if i % 2 == 0 { headers } else { &[] },
                    timestamp_ms: 1_000 + i as i64,
                    value_is_json: false,
                    batch: None,
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
        let mut seed = self.original[sh::COMMITTED_END..sh::COMMITTED_END + 8].to_vec();
        seed.extend(&self.original[sh::SIZE..sh::SIZE + 8192]);
        seed
    }

    pub fn check(&self, input: &[u8]) {
        self.recover(input);
    }

    /// Recovers the segment made from `input`; the number of records it then holds, or
    /// `None` when the partition refuses to open. Opening must refuse exactly the committed
    /// ends outside the data area or not frame-aligned; and recovery must keep every original
    /// frame of the longest run, from the first, that the input left unchanged and wholly
    /// below its committed end (it may cut damaged frames, never good ones before them).
    pub fn recover(&self, input: &[u8]) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let mut file = self.original.clone();
        if input.len() >= 8 {
            file[sh::COMMITTED_END..sh::COMMITTED_END + 8].copy_from_slice(&input[..8]);
            let body = &input[8..];
            let n = body.len().min(file.len() - sh::SIZE);
            file[sh::SIZE..sh::SIZE + n].copy_from_slice(&body[..n]);
        }
        std::fs::write(dir.path().join(SEGMENT), &file).unwrap();
        let committed = get_u64(&file, sh::COMMITTED_END);
        let capacity = get_u64(&file, sh::CAPACITY_BYTES);
        let valid_end = (sh::SIZE as u64..=capacity).contains(&committed)
            && committed.is_multiple_of(mapq::log::format::FRAME_ALIGN as u64);
        let kept = self
            .original_frames()
            .take_while(|r| {
                r.end as u64 <= committed && file[r.clone()] == self.original[r.clone()]
            })
            .count() as u64;
        // Index files are left out: recovery rebuilds them.
        let opened = PartitionLog::open(dir.path(), recovery_config());
        assert_eq!(
            opened.is_ok(),
            valid_end,
            "committed end {committed}: {:?}",
            opened.as_ref().err()
        );
        let (log, _) = opened.ok()?;
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
        assert!(
            records >= kept,
            "recovery kept {records} records, but the first {kept} were intact"
        );
        let summary = verify::verify_partition(dir.path());
        assert!(
            summary.is_ok(),
            "recovered partition does not verify: {summary}"
        );
        Some(records)
    }

    /// The byte ranges of the original segment's frames, in order.
    fn original_frames(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let committed = get_u64(&self.original, sh::COMMITTED_END) as usize;
        let mut at = sh::SIZE;
        std::iter::from_fn(move || {
            let f = decode_frame(&self.original[at..committed]).ok()?;
            let range = at..at + f.padded_len;
            at = range.end;
            Some(range)
        })
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
        let state = mapq::server::AppState::new(
            config.clone(),
            mapq::server::metrics::Metrics::new().unwrap(),
        );
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
        if let Some(status) = self.status(input) {
            assert!(!status.is_server_error(), "{status} for {input:?}");
        }
    }

    /// The router's answer to `input` (`None` for an empty input, which picks no route).
    pub fn status(&self, input: &[u8]) -> Option<axum::http::StatusCode> {
        let (&route, body) = input.split_first()?;
        let (method, uri, content_type) = ROUTES[route as usize % ROUTES.len()];
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(Body::from(body.to_vec()))
            .unwrap();
        let app = mapq::server::router(self.state.clone());
        Some(self.runtime.block_on(app.oneshot(req)).unwrap().status())
    }
}

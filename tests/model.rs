//! Model-based test: random sequences of operations against a partition log and against a
//! plain `Vec` of records, which must agree after every step.

mod common;

use std::path::Path;

use common::small_config;
use mapq::log::format::{BatchHead, Header, ProducerStamp, RequestTag};
use mapq::log::{verify, FileWorker, LogConfig, LogError, PartitionLog, ReadBatch, Record};
use proptest::prelude::*;
use proptest::sample::Index;

/// Bytes described by a length and a seed, so that proptest shrinks lengths instead of
/// thousands of individual bytes.
#[derive(Debug, Clone, Copy)]
struct BytesSpec {
    len: usize,
    seed: u64,
}

impl BytesSpec {
    fn bytes(self) -> Vec<u8> {
        let mut state = self.seed;
        (0..self.len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect()
    }
}

fn bytes_spec(max_len: usize) -> impl Strategy<Value = BytesSpec> {
    (0..max_len, any::<u64>()).prop_map(|(len, seed)| BytesSpec { len, seed })
}

/// One record of the model: everything a reader gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    timestamp_ms: i64,
    value_is_json: bool,
    /// A batch head: on the first record of a batch only, counting the batch.
    head: Option<ModelHead>,
}

/// A batch head of the model (format v2).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelHead {
    record_count: u32,
    leader_epoch: u32,
    appended_ms: i64,
    producer: Option<ProducerStamp>,
    request: Option<(Vec<u8>, [u8; 16], u32)>,
    /// The request positions of the batch's records, when they are spread out.
    positions: Option<Vec<u32>>,
}

impl ModelHead {
    fn as_head(&self) -> BatchHead<'_> {
        BatchHead {
            record_count: self.record_count,
            leader_epoch: self.leader_epoch,
            appended_ms: self.appended_ms,
            producer: self.producer,
            request: self
                .request
                .as_ref()
                .map(|(key, digest, extra)| RequestTag {
                    key,
                    digest: *digest,
                    records: 2 * self.record_count + extra,
                    positions: self.positions.as_deref(),
                }),
        }
    }
}

fn model_head() -> impl Strategy<Value = ModelHead> {
    (
        (any::<u32>(), any::<i64>()),
        proptest::option::of((0..i64::MAX, 0..i16::MAX, 0..i32::MAX)),
        proptest::option::of((bytes_spec(40), any::<[u8; 16]>(), 0..5u32)),
        any::<bool>(),
    )
        .prop_map(
            |((leader_epoch, appended_ms), producer, request, spread)| ModelHead {
                record_count: 0,
                appended_ms,
                // Filled in with the batch's size (every other position of the request).
                positions: (spread && request.is_some()).then(Vec::new),
                leader_epoch,
                producer: producer.map(|(id, epoch, base_sequence)| ProducerStamp {
                    id,
                    epoch,
                    base_sequence,
                }),
                request: request.map(|(key, digest, extra)| {
                    let mut key = key.bytes();
                    key.push(b'k');
                    (key, digest, extra)
                }),
            },
        )
}

/// A batch of records, with a batch head on its first record now and then.
fn model_batch() -> impl Strategy<Value = Vec<ModelRecord>> {
    (
        proptest::collection::vec(model_record(), 1..20),
        proptest::option::weighted(0.3, model_head()),
    )
        .prop_map(|(mut batch, head)| {
            let n = batch.len() as u32;
            batch[0].head = head.map(|h| ModelHead {
                record_count: n,
                positions: h
                    .positions
                    .as_ref()
                    .map(|_| (0..n).map(|i| 2 * i + 1).collect()),
                ..h
            });
            batch
        })
}

impl ModelRecord {
    /// Bytes the record's frame takes in a segment, padding included.
    fn padded_len(&self) -> usize {
        let headers: Vec<Header<'_>> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_deref()))
            .collect();
        self.as_record(&headers)
            .padded_len()
            .expect("test records are small")
    }

    fn as_record<'a>(&'a self, headers: &'a [Header<'a>]) -> Record<'a> {
        Record {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers,
            timestamp_ms: self.timestamp_ms,
            value_is_json: self.value_is_json && self.value.is_some(),
            batch: self.head.as_ref().map(ModelHead::as_head),
        }
    }
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        20 => -50i64..1_000,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
}

fn model_record() -> impl Strategy<Value = ModelRecord> {
    (
        proptest::option::of(bytes_spec(24)),
        proptest::option::weighted(0.9, bytes_spec(2000)),
        proptest::collection::vec(
            (
                bytes_spec(12),
                proptest::option::weighted(0.8, bytes_spec(40)),
            ),
            0..3,
        ),
        timestamp(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(key, value, headers, timestamp_ms, value_is_json)| ModelRecord {
                key: key.map(BytesSpec::bytes),
                value_is_json: value_is_json && value.is_some(),
                value: value.map(BytesSpec::bytes),
                headers: headers
                    .into_iter()
                    .map(|(n, v)| (n.bytes(), v.map(BytesSpec::bytes)))
                    .collect(),
                timestamp_ms,
                head: None,
            },
        )
}

/// Where a read starts, relative to the log's range when the operation runs.
#[derive(Debug, Clone)]
enum ReadAt {
    /// Some offset in `[start, end]` (the end included).
    Within(Index),
    /// `end + n`: past the end.
    PastEnd(u64),
    /// Exactly the end.
    End,
    /// The first offset.
    Start,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<ModelRecord>),
    Read {
        at: ReadAt,
        max_records: usize,
        max_bytes: usize,
    },
    Roll,
    Flush,
    Reopen,
    OffsetForTimestamp(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let read_at = prop_oneof![
        8 => any::<Index>().prop_map(ReadAt::Within),
        1 => (1u64..5).prop_map(ReadAt::PastEnd),
        1 => Just(ReadAt::End),
        1 => Just(ReadAt::Start),
    ];
    let max_records = prop_oneof![
        1 => Just(0usize),
        4 => 1usize..5,
        4 => 1usize..300,
        1 => Just(usize::MAX),
    ];
    let max_bytes = prop_oneof![
        2 => 0usize..200,
        3 => 0usize..10_000,
        3 => 0usize..200_000,
        1 => Just(usize::MAX),
    ];
    let query_ts = prop_oneof![
        10 => -60i64..1_010,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ];
    prop_oneof![
        10 => model_batch().prop_map(Op::Append),
        8 => (read_at, max_records, max_bytes).prop_map(|(at, max_records, max_bytes)| Op::Read {
            at,
            max_records,
            max_bytes,
        }),
        2 => Just(Op::Roll),
        1 => Just(Op::Flush),
        2 => Just(Op::Reopen),
        3 => query_ts.prop_map(Op::OffsetForTimestamp),
    ]
}

fn append(log: &PartitionLog, batch: &[ModelRecord]) -> Result<u64, LogError> {
    let headers: Vec<Vec<Header<'_>>> = batch
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_deref()))
                .collect()
        })
        .collect();
    let records: Vec<Record<'_>> = batch
        .iter()
        .zip(&headers)
        .map(|(r, h)| r.as_record(h))
        .collect();
    let appended = log.append(&records)?;
    assert_eq!(appended.count, batch.len() as u64, "count of the batch");
    Ok(appended.first_offset)
}

/// The records a read must return: from `offset`, at most `max_records`, and frames of at
/// most `max_bytes` in total except that the first record always comes.
fn expected_read(
    model: &[ModelRecord],
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> &[ModelRecord] {
    let from = offset as usize;
    let mut n = 0;
    let mut bytes = 0usize;
    for r in &model[from..] {
        if n == max_records {
            break;
        }
        let len = r.padded_len();
        if n > 0 && bytes + len > max_bytes {
            break;
        }
        bytes += len;
        n += 1;
    }
    &model[from..from + n]
}

fn check_batch(batch: &ReadBatch, offset: u64, expected: &[ModelRecord], end: u64) {
    assert_eq!(
        batch.record_count,
        expected.len(),
        "number of records read from {offset}"
    );
    assert_eq!(batch.next_offset, offset + expected.len() as u64);
    assert_eq!(batch.high_watermark, end);
    let expected_bytes: usize = expected.iter().map(ModelRecord::padded_len).sum();
    assert_eq!(batch.byte_len(), expected_bytes, "bytes of frames read");
    let mut got = 0;
    for (i, (r, want)) in batch.records().zip(expected).enumerate() {
        let at = offset + i as u64;
        assert_eq!(r.offset, at);
        assert_eq!(r.timestamp_ms, want.timestamp_ms, "timestamp of {at}");
        assert_eq!(r.key.as_deref(), want.key.as_deref(), "key of {at}");
        assert_eq!(r.value.as_deref(), want.value.as_deref(), "value of {at}");
        assert_eq!(r.value_is_json(), want.value_is_json, "json flag of {at}");
        let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = r
            .headers()
            .map(|(n, v)| (n.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(headers, want.headers, "headers of {at}");
        let head = want.head.as_ref().map(ModelHead::as_head);
        let positions = r.batch().and_then(|b| b.positions());
        assert_eq!(
            r.batch().map(|b| b.to_head(positions.as_deref())),
            head,
            "batch head of {at}"
        );
        got += 1;
    }
    assert_eq!(got, expected.len(), "records() yields every record counted");
}

fn open(dir: &Path, config: &LogConfig) -> PartitionLog {
    let (log, report) = PartitionLog::open(dir, config.clone()).expect("open");
    assert_eq!(
        report.truncated_bytes, 0,
        "a clean close leaves nothing to cut: {report:?}"
    );
    assert!(report.removed_segments.is_empty(), "{report:?}");
    log
}

/// Runs `ops` on a new log and on the model; with `prefault`, a prefaulter thread reserves
/// and pre-faults ahead of the writer.
fn run(segment_bytes: u64, prefault: bool, ops: &[Op]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefaulter = prefault.then(|| FileWorker::spawn().expect("spawn the prefaulter"));
    let config = LogConfig {
        worker: prefaulter.as_ref().map(FileWorker::handle),
        ..small_config(segment_bytes)
    };
    let mut log = open(dir.path(), &config);
    let mut model: Vec<ModelRecord> = Vec::new();
    for op in ops {
        let end = model.len() as u64;
        match op {
            Op::Append(batch) => {
                let first = append(&log, batch).expect("append");
                assert_eq!(first, end, "a batch starts at the end");
                model.extend(batch.iter().cloned());
                assert_eq!(log.end_offset(), model.len() as u64);
            }
            Op::Read {
                at,
                max_records,
                max_bytes,
            } => {
                let offset = match at {
                    ReadAt::Within(i) => i.index(end as usize + 1) as u64,
                    ReadAt::PastEnd(n) => end + n,
                    ReadAt::End => end,
                    ReadAt::Start => 0,
                };
                match log.read(offset, *max_records, *max_bytes) {
                    Ok(batch) => {
                        assert!(
                            offset <= end,
                            "read at {offset} past the end {end} succeeded"
                        );
                        let want = expected_read(&model, offset, *max_records, *max_bytes);
                        check_batch(&batch, offset, want, end);
                    }
                    Err(LogError::OffsetOutOfRange {
                        offset: o,
                        earliest,
                        latest,
                    }) => {
                        assert!(offset > end, "read at {offset} in [0, {end}] refused");
                        assert_eq!((o, earliest, latest), (offset, 0, end));
                    }
                    Err(e) => panic!("read at {offset}: {e}"),
                }
            }
            Op::Roll => {
                let before = log.segments();
                let last_base = before.last().expect("a log has a segment").base_offset();
                log.roll().expect("roll");
                let after = log.segments();
                let active = after.last().expect("a log has a segment");
                if last_base < end {
                    assert_eq!(after.len(), before.len() + 1, "a roll adds a segment");
                    assert_eq!(
                        active.base_offset(),
                        end,
                        "the new segment starts at the end"
                    );
                } else {
                    assert_eq!(after.len(), before.len(), "an empty segment is not rolled");
                }
                assert!(!active.is_sealed());
                assert_eq!(log.end_offset(), end);
            }
            Op::Flush => {
                assert_eq!(log.flush().expect("flush"), end);
                assert_eq!(log.durable_offset(), end);
            }
            Op::Reopen => {
                drop(log);
                log = open(dir.path(), &config);
                assert_eq!(log.end_offset(), end, "reopen keeps every record");
                assert_eq!(log.start_offset(), 0);
            }
            Op::OffsetForTimestamp(ts) => {
                let want = model
                    .iter()
                    .position(|r| r.timestamp_ms >= *ts)
                    .map(|i| i as u64);
                assert_eq!(
                    log.offset_for_timestamp(*ts).expect("timestamp lookup"),
                    want,
                    "first record with a timestamp at or after {ts}"
                );
            }
        }
    }
    // Everything, in one pass of reads, and the files as `mapq verify` sees them.
    let mut next = 0;
    while next < model.len() as u64 {
        let batch = log.read(next, 1000, 1 << 20).expect("read");
        let want = expected_read(&model, next, 1000, 1 << 20);
        check_batch(&batch, next, want, model.len() as u64);
        next = batch.next_offset;
    }
    drop(log);
    let summary = verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, model.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_a_vec_of_records(
        segment_kib in 16u64..=64,
        prefault in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(segment_kib << 10, prefault, &ops);
    }
}

/// A fixed sequence covering the paths the random one reaches only now and then: a batch
/// larger than a segment right after a roll (the empty active segment is replaced), a reopen
/// on an empty active segment, and lookups at the extremes of the timestamp range.
#[test]
fn fixed_sequence_through_rare_paths() {
    let rec = |len: usize, ts: i64| ModelRecord {
        key: Some(vec![1; len % 7]),
        value: Some(vec![(len % 251) as u8; len]),
        headers: vec![(b"h".to_vec(), Some(vec![2; len % 5]))],
        timestamp_ms: ts,
        value_is_json: false,
        head: None,
    };
    let big: Vec<ModelRecord> = (0..19).map(|i| rec(1999, 100 + i)).collect();
    let ops = vec![
        Op::Append(vec![rec(10, 5), rec(20, i64::MIN)]),
        Op::Roll,
        Op::Reopen,
        Op::Append(big.clone()),
        Op::OffsetForTimestamp(i64::MIN),
        Op::OffsetForTimestamp(6),
        Op::Roll,
        Op::Roll,
        Op::Append(big),
        Op::Flush,
        Op::Append(vec![rec(0, i64::MAX)]),
        Op::Reopen,
        Op::OffsetForTimestamp(i64::MAX),
        Op::OffsetForTimestamp(119),
        Op::Read {
            at: ReadAt::Start,
            max_records: usize::MAX,
            max_bytes: 0,
        },
        Op::Read {
            at: ReadAt::PastEnd(1),
            max_records: 1,
            max_bytes: 1,
        },
    ];
    run(16 << 10, false, &ops.clone());
    run(16 << 10, true, &ops);
}

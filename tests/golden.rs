//! The format cannot drift unnoticed. A partition written by the code of format version 1
//! is checked in under `tests/golden/v1/`: it must keep reading record for record, and
//! opening it must go on in a version 2 segment without touching its records. One written
//! by version 2 is under `tests/golden/v2/`, and today's writer must still produce its
//! bytes.
//!
//! To regenerate the version 2 files after a deliberate format change (with a version bump
//! and a line in the version history of FORMAT.md): `MAPQ_WRITE_GOLDEN=1 cargo test --test
//! golden`, which rewrites them and then fails on purpose; the next run without the variable
//! checks them. The version 1 files are never regenerated: no writer of version 1 is left.

use std::path::{Path, PathBuf};

use mapq::log::format::{
    segment_header as sh, BatchHead, Header, ProducerStamp, RequestTag, FORMAT_VERSION,
};
use mapq::log::{verify, LogConfig, PartitionLog, Record};

const TS: i64 = 1_764_201_600_000;

fn golden_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/v{version}"))
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 64,
        reserve_chunk_bytes: 4096,
        prefault_bytes: 4096,
        ..LogConfig::default()
    }
}

/// A record of a golden partition.
struct Expected {
    key: Option<&'static [u8]>,
    value: Option<&'static [u8]>,
    headers: &'static [Header<'static>],
    timestamp_ms: i64,
    json: bool,
}

impl Expected {
    fn record(&self) -> Record<'static> {
        Record {
            key: self.key,
            value: self.value,
            headers: self.headers,
            timestamp_ms: self.timestamp_ms,
            value_is_json: self.json,
            batch: None,
        }
    }
}

/// The version 1 partition's records: every feature of the version 1 frame.
const RECORDS_V1: &[Expected] = &[
    Expected {
        key: Some(b"user-1"),
        value: Some(br#"{"any":"json"}"#),
        headers: &[(b"source", Some(b"web"))],
        timestamp_ms: TS,
        json: true,
    },
    Expected {
        key: None,
        value: Some(&[0, 1, 2, 255]),
        headers: &[],
        timestamp_ms: TS + 1,
        json: false,
    },
    Expected {
        key: Some(b""),
        value: Some(b"hello"),
        headers: &[(b"a", Some(b"1")), (b"", Some(b""))],
        timestamp_ms: TS - 5,
        json: false,
    },
    Expected {
        key: Some(b"k"),
        value: Some(b""),
        headers: &[],
        timestamp_ms: TS + 2,
        json: false,
    },
];

/// Version 2 adds null values and null header values: the version 1 records, then those.
const RECORDS_V2_EXTRA: &[Expected] = &[
    Expected {
        key: Some(b"gone"),
        value: None,
        headers: &[(b"null", None), (b"empty", Some(b""))],
        timestamp_ms: TS + 3,
        json: false,
    },
    Expected {
        key: None,
        value: Some(b""),
        headers: &[(b"n", None)],
        timestamp_ms: TS + 4,
        json: false,
    },
];

fn records_v2() -> Vec<&'static Expected> {
    RECORDS_V1.iter().chain(RECORDS_V2_EXTRA).collect()
}

/// The batch heads of the version 2 partition: one with everything (a producer, an
/// idempotency key with request positions), one with only a leader epoch.
const POSITIONS: &[u32] = &[1, 2, 4, 5, 7, 8];

fn full_head(count: u32) -> BatchHead<'static> {
    BatchHead {
        record_count: count,
        leader_epoch: 3,
        appended_ms: TS + 100,
        producer: Some(ProducerStamp {
            id: 1000,
            epoch: 2,
            base_sequence: 41,
        }),
        request: Some(RequestTag {
            key: b"order-7781",
            digest: *b"0123456789abcdef",
            records: 9,
            positions: Some(&POSITIONS[..count as usize]),
        }),
    }
}

fn epoch_head(count: u32) -> BatchHead<'static> {
    BatchHead {
        record_count: count,
        leader_epoch: 4,
        appended_ms: TS + 200,
        ..BatchHead::default()
    }
}

/// Version 2: a batch of every record with a full head, two records without a head, a
/// roll, then every record again with a leader-epoch head.
fn write_v2(dir: &Path) {
    let (log, _) = PartitionLog::open(dir, config()).unwrap();
    let mut batch: Vec<Record<'_>> = records_v2().iter().map(|e| e.record()).collect();
    batch[0].batch = Some(full_head(batch.len() as u32));
    log.append(&batch).unwrap();
    batch[0].batch = None;
    log.append(&batch[..2]).unwrap();
    log.roll().unwrap();
    batch[0].batch = Some(epoch_head(batch.len() as u32));
    log.append(&batch).unwrap();
    log.flush().unwrap();
}

/// Where each offset of the version 2 partition comes from, and its head.
fn expected_v2(offset: u64) -> (&'static Expected, Option<BatchHead<'static>>) {
    let all = records_v2();
    let n = all.len() as u64;
    match offset {
        o if o < n => (all[o as usize], (o == 0).then(|| full_head(n as u32))),
        o if o < n + 2 => (all[(o - n) as usize], None),
        o => (
            all[(o - n - 2) as usize],
            (o == n + 2).then(|| epoch_head(n as u32)),
        ),
    }
}

fn expected_v1(offset: u64) -> &'static Expected {
    // Offsets 0..4 and 6..10 are the whole list; 4 and 5 its first two.
    let i = match offset {
        0..=3 => offset,
        4 | 5 => offset - 4,
        _ => offset - 6,
    };
    &RECORDS_V1[i as usize]
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for name in file_names(from) {
        std::fs::copy(from.join(&name), copy.path().join(&name)).unwrap();
    }
    copy
}

fn segment_names(bases: &[u64]) -> Vec<String> {
    let mut names: Vec<String> = bases
        .iter()
        .flat_map(|b| ["index", "log", "timeindex"].map(|ext| format!("{b:020}.{ext}")))
        .collect();
    names.sort();
    names
}

fn check_record(r: &mapq::log::StoredRecord, e: &Expected) {
    assert_eq!(r.key.as_deref(), e.key, "key of {}", r.offset);
    assert_eq!(r.value.as_deref(), e.value, "value of {}", r.offset);
    assert_eq!(r.timestamp_ms, e.timestamp_ms);
    assert_eq!(r.value_is_json(), e.json);
    assert_eq!(r.headers().collect::<Vec<_>>(), e.headers.to_vec());
}

fn version_of(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[sh::VERSION..sh::VERSION + 4].try_into().unwrap())
}

#[test]
fn golden_v1_partition_reads_and_opens_into_a_v2_segment() {
    let golden = golden_dir(1);
    assert_eq!(file_names(&golden), segment_names(&[0, 6]));

    // 1. The checked-in files pass a full verification, read-only.
    let summary = verify::verify_partition(&golden);
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, 10);

    // 2. Opened by today's engine (on a copy: opening may repair), every record reads back;
    //    the version 1 active segment is sealed, not appended to, and new records go to a
    //    version 2 segment after it. Its records' bytes are not touched.
    let copy = copy_dir(&golden);
    let (log, report) = PartitionLog::open(copy.path(), config()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!((log.start_offset(), log.end_offset()), (0, 10));
    let batch = log.read(0, 100, 1 << 20).unwrap();
    assert_eq!(batch.record_count, 10);
    for r in batch.records() {
        check_record(&r, expected_v1(r.offset));
        assert!(r.batch().is_none());
    }
    assert_eq!(log.offset_for_timestamp(TS - 5).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(TS + 2).unwrap(), Some(3));
    let mut extra = RECORDS_V2_EXTRA[0].record();
    extra.batch = Some(epoch_head(1));
    assert_eq!(log.append(&[extra]).unwrap().first_offset, 10);
    log.flush().unwrap();
    drop(log);
    assert_eq!(file_names(copy.path()), segment_names(&[0, 6, 10]));
    let seg = |base: u64| copy.path().join(format!("{base:020}.log"));
    assert_eq!(
        version_of(&seg(6)),
        1,
        "the version 1 segment keeps its version"
    );
    assert_eq!(version_of(&seg(10)), FORMAT_VERSION);
    let old = std::fs::read(seg(6)).unwrap();
    let want = std::fs::read(golden.join("00000000000000000006.log")).unwrap();
    let sealed = sh::SEALED..sh::SEALED + 4;
    assert_eq!(old[sealed.clone()], 1u32.to_le_bytes(), "sealed on open");
    assert_eq!(
        old[..sealed.start],
        want[..sealed.start],
        "header before the seal word"
    );
    let end = u64::from_le_bytes(
        want[sh::COMMITTED_END..sh::COMMITTED_END + 8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        old[sh::SIZE..end as usize],
        want[sh::SIZE..end as usize],
        "the version 1 records are untouched"
    );

    // 3. Reopened, the mixed partition verifies and reads back, heads and null values too.
    let summary = verify::verify_partition(copy.path());
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, 11);
    let (log, report) = PartitionLog::open(copy.path(), config()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    let batch = log.read(9, 100, 1 << 20).unwrap();
    let last = batch.records().last().unwrap();
    check_record(&last, &RECORDS_V2_EXTRA[0]);
    assert_eq!(last.batch().map(|b| b.to_head(None)), Some(epoch_head(1)));
}

#[test]
fn golden_v2_partition_reads_and_today_writes_the_same_bytes() {
    let golden = golden_dir(2);
    if std::env::var_os("MAPQ_WRITE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        write_v2(&golden);
        // Compared with the code that just wrote them, they could not fail: this run checks
        // nothing, and says so, so that a variable left set cannot pass as a check.
        panic!(
            "golden files regenerated in {}; unset MAPQ_WRITE_GOLDEN, review and commit them",
            golden.display()
        );
    }
    let n = records_v2().len() as u64;
    assert_eq!(file_names(&golden), segment_names(&[0, n + 2]));

    // 1. The checked-in files pass a full verification, read-only.
    let summary = verify::verify_partition(&golden);
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, 2 * n + 2);

    // 2. Opened by today's engine, every record and every batch head reads back.
    let copy = copy_dir(&golden);
    let (log, report) = PartitionLog::open(copy.path(), config()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!((log.start_offset(), log.end_offset()), (0, 2 * n + 2));
    let batch = log.read(0, 100, 1 << 20).unwrap();
    assert_eq!(batch.record_count as u64, 2 * n + 2);
    for r in batch.records() {
        let (e, head) = expected_v2(r.offset);
        check_record(&r, e);
        let positions = r.batch().and_then(|b| b.positions());
        assert_eq!(
            r.batch().map(|b| b.to_head(positions.as_deref())),
            head,
            "batch head of {}",
            r.offset
        );
    }

    // 3. Today's writer produces the same bytes, but for the creation time in each header
    //    (CREATED_MS) and the header checksum that covers it (HEADER_CRC).
    let fresh = tempfile::tempdir().unwrap();
    write_v2(fresh.path());
    assert_eq!(file_names(fresh.path()), file_names(&golden));
    for name in file_names(&golden) {
        let mut want = std::fs::read(golden.join(&name)).unwrap();
        let mut got = std::fs::read(fresh.path().join(&name)).unwrap();
        assert_eq!(got.len(), want.len(), "length of {name}");
        if name.ends_with(".log") {
            assert_eq!(version_of(&golden.join(&name)), FORMAT_VERSION);
            for b in [&mut want, &mut got] {
                b[sh::CREATED_MS..sh::CREATED_MS + 8].fill(0);
                b[sh::HEADER_CRC..sh::HEADER_CRC + 4].fill(0);
            }
        }
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!(
                "{name} differs at byte {i}: golden {:#04x}, today {:#04x}",
                want[i], got[i]
            );
        }
    }
}

/// A version 1 partition whose active segment is empty (an idle topic after a roll) opens
/// too: the empty version 1 file is replaced under its name by a version 2 one, as a roll
/// replaces an empty segment, and the partition lists it once.
#[test]
fn a_v1_partition_with_an_empty_active_segment_opens() {
    let golden = golden_dir(1);
    let copy = copy_dir(&golden);
    // Make segment 6 sealed, and an empty version 1 segment 10 after it, from its bytes.
    let seg = |base: u64, ext: &str| copy.path().join(format!("{base:020}.{ext}"));
    let mut six = std::fs::read(seg(6, "log")).unwrap();
    six[sh::SEALED..sh::SEALED + 4].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(seg(6, "log"), &six).unwrap();
    let mut ten = six.clone();
    ten[sh::BASE_OFFSET..sh::BASE_OFFSET + 8].copy_from_slice(&10u64.to_le_bytes());
    let crc = crc32c::crc32c(&ten[..sh::HEADER_CRC]);
    ten[sh::HEADER_CRC..sh::HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    for at in [sh::COMMITTED_END, sh::DURABLE_END] {
        ten[at..at + 8].copy_from_slice(&(sh::SIZE as u64).to_le_bytes());
    }
    ten[sh::SEALED..sh::SEALED + 4].fill(0);
    ten[sh::SIZE..].fill(0);
    std::fs::write(seg(10, "log"), &ten).unwrap();
    for ext in ["index", "timeindex"] {
        // Index header: base offset at 16, CRC of [0, 32) at 32, count at 64.
        let mut index = std::fs::read(seg(6, ext)).unwrap();
        index[16..24].copy_from_slice(&10u64.to_le_bytes());
        let crc = crc32c::crc32c(&index[..32]);
        index[32..36].copy_from_slice(&crc.to_le_bytes());
        index[64..72].fill(0);
        index[128..].fill(0);
        std::fs::write(seg(10, ext), &index).unwrap();
    }
    let summary = verify::verify_partition(copy.path());
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(version_of(&seg(10, "log")), 1);

    let (log, _) = PartitionLog::open(copy.path(), config()).unwrap();
    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset()).collect();
    assert_eq!(bases, [0, 6, 10], "each segment listed once");
    assert_eq!(
        version_of(&seg(10, "log")),
        FORMAT_VERSION,
        "replaced under its name"
    );
    assert_eq!(
        log.append(&[RECORDS_V2_EXTRA[0].record()])
            .unwrap()
            .first_offset,
        10
    );
    log.flush().unwrap();
    drop(log);
    assert_eq!(file_names(copy.path()), segment_names(&[0, 6, 10]));
    let summary = verify::verify_partition(copy.path());
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, 11);
    let (log, _) = PartitionLog::open(copy.path(), config()).unwrap();
    let batch = log.read(0, 100, 1 << 20).unwrap();
    assert_eq!(batch.record_count, 11);
    check_record(&batch.records().last().unwrap(), &RECORDS_V2_EXTRA[0]);
}

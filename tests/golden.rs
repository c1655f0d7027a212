//! The format cannot drift unnoticed: a partition written by the code of format version 1 is
//! checked in under `tests/golden/v1/`, and must keep reading record for record, and today's
//! writer must still produce the same bytes.
//!
//! To regenerate after a deliberate format change (with a version bump and a line in the
//! version history of FORMAT.md): `MAPQ_WRITE_GOLDEN=1 cargo test --test golden`, which
//! rewrites them and then fails on purpose; the next run without the variable checks them.

use std::path::{Path, PathBuf};

use mapq::log::format::segment_header as sh;
use mapq::log::{verify, LogConfig, PartitionLog, Record};

const TS: i64 = 1_764_201_600_000;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 64,
        reserve_chunk_bytes: 4096,
        prefault_bytes: 4096,
        worker: None,
        quota: None,
    }
}

/// The records of the golden partition: every feature of the frame.
struct Expected {
    key: Option<&'static [u8]>,
    value: &'static [u8],
    headers: &'static [(&'static [u8], &'static [u8])],
    timestamp_ms: i64,
    json: bool,
}

const RECORDS: &[Expected] = &[
    Expected {
        key: Some(b"user-1"),
        value: br#"{"any":"json"}"#,
        headers: &[(b"source", b"web")],
        timestamp_ms: TS,
        json: true,
    },
    Expected {
        key: None,
        value: &[0, 1, 2, 255],
        headers: &[],
        timestamp_ms: TS + 1,
        json: false,
    },
    Expected {
        key: Some(b""),
        value: b"hello",
        headers: &[(b"a", b"1"), (b"", b"")],
        timestamp_ms: TS - 5,
        json: false,
    },
    Expected {
        key: Some(b"k"),
        value: b"",
        headers: &[],
        timestamp_ms: TS + 2,
        json: false,
    },
];

/// Records written per segment batch; the writer rolls between the two batches.
fn write(dir: &Path) {
    let (log, _) = PartitionLog::open(dir, config()).unwrap();
    let batch: Vec<Record<'_>> = RECORDS
        .iter()
        .map(|e| Record {
            key: e.key,
            value: e.value,
            headers: e.headers,
            timestamp_ms: e.timestamp_ms,
            value_is_json: e.json,
        })
        .collect();
    log.append(&batch).unwrap();
    log.append(&batch[..2]).unwrap();
    log.roll().unwrap();
    log.append(&batch).unwrap();
    log.flush().unwrap();
}

fn expected_at(offset: u64) -> &'static Expected {
    // Offsets 0..4 and 6..10 are the whole list; 4 and 5 its first two.
    let i = match offset {
        0..=3 => offset,
        4 | 5 => offset - 4,
        _ => offset - 6,
    };
    &RECORDS[i as usize]
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn golden_partition_still_reads_and_today_writes_the_same_bytes() {
    let golden = golden_dir();
    if std::env::var_os("MAPQ_WRITE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        write(&golden);
        // Compared with the code that just wrote them, they could not fail: this run checks
        // nothing, and says so, so that a variable left set cannot pass as a check.
        panic!(
            "golden files regenerated in {}; unset MAPQ_WRITE_GOLDEN, review and commit them",
            golden.display()
        );
    }
    assert_eq!(
        file_names(&golden),
        [
            "00000000000000000000.index",
            "00000000000000000000.log",
            "00000000000000000000.timeindex",
            "00000000000000000006.index",
            "00000000000000000006.log",
            "00000000000000000006.timeindex",
        ]
    );

    // 1. The checked-in files pass a full verification, read-only.
    let summary = verify::verify_partition(&golden);
    assert!(summary.is_ok(), "{summary}");
    assert_eq!(summary.records, 10);

    // 2. Opened by today's engine (on a copy: opening may repair), every record reads back.
    let copy = tempfile::tempdir().unwrap();
    for name in file_names(&golden) {
        std::fs::copy(golden.join(&name), copy.path().join(&name)).unwrap();
    }
    let (log, report) = PartitionLog::open(copy.path(), config()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!((log.start_offset(), log.end_offset()), (0, 10));
    let batch = log.read(0, 100, 1 << 20).unwrap();
    assert_eq!(batch.record_count, 10);
    for r in batch.records() {
        let e = expected_at(r.offset);
        assert_eq!(r.key.as_deref(), e.key, "key of {}", r.offset);
        assert_eq!(r.value.as_ref(), e.value);
        assert_eq!(r.timestamp_ms, e.timestamp_ms);
        assert_eq!(r.value_is_json(), e.json);
        assert_eq!(r.headers().collect::<Vec<_>>(), e.headers.to_vec());
    }
    assert_eq!(log.offset_for_timestamp(TS - 5).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(TS + 2).unwrap(), Some(3));

    // 3. Today's writer produces the same bytes, but for the creation time in each header
    //    (CREATED_MS) and the header checksum that covers it (HEADER_CRC).
    let fresh = tempfile::tempdir().unwrap();
    write(fresh.path());
    assert_eq!(file_names(fresh.path()), file_names(&golden));
    for name in file_names(&golden) {
        let mut want = std::fs::read(golden.join(&name)).unwrap();
        let mut got = std::fs::read(fresh.path().join(&name)).unwrap();
        assert_eq!(got.len(), want.len(), "length of {name}");
        if name.ends_with(".log") {
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

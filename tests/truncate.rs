//! Truncation back to an offset (`PartitionLog::truncate_to`) and the replicated end
//! (`advance_replicated`): what a cluster follower needs. Readers survive both: a tailer
//! that had read past the cut is told which records are gone and goes on from the new end;
//! one that had not goes on as if nothing happened; `replicated_only` readers stop at the
//! replicated end.

mod common;

use common::{append_range, check_all, small_config, value_for};
use mapq::log::format::{segment_header as sh, BatchHead, Record};
use mapq::log::tailer::{TailError, TailOptions, Tailer};
use mapq::log::{verify, LogConfig, LogError, PartitionLog};

const SEGMENT_BYTES: u64 = 8 << 10;

/// The tests of this file run one at a time: one of them arms the engine's `rename`
/// failpoint, which would fail the others' renames meanwhile. Also points the failpoints at
/// this process's own directory (read once, at the first failpoint check).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static FAILPOINTS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    FAILPOINTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("MAPQ_FAILPOINTS_DIR", dir.path());
        dir
    });
    guard
}

fn failpoint_dir() -> std::path::PathBuf {
    std::env::var_os("MAPQ_FAILPOINTS_DIR").unwrap().into()
}

/// Appends `[from, to)` ten records at a time, so that the log rolls every few batches.
fn append_in_batches(log: &PartitionLog, from: u64, to: u64) {
    for start in (from..to).step_by(10) {
        append_range(log, start, (start + 10).min(to));
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Appends `[from, to)` with values that differ from [`value_for`]'s: records written after
/// a truncation, so that a reader still serving a removed record is caught.
fn append_new_generation(log: &PartitionLog, from: u64, to: u64) {
    let values: Vec<Vec<u8>> = (from..to).map(new_value).collect();
    let records: Vec<Record<'_>> = values.iter().map(|v| Record::value(v, 7)).collect();
    assert_eq!(log.append(&records).unwrap().first_offset, from);
}

fn new_value(offset: u64) -> Vec<u8> {
    format!("second generation {offset}").into_bytes()
}

fn next_offsets(t: &mut Tailer, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let f = t.next_record().unwrap().expect("a record");
            assert_eq!(f.value(), Some(value_for(f.offset).as_slice()));
            f.offset
        })
        .collect()
}

#[test]
fn truncation_cuts_back_across_segments_and_appends_reuse_the_offsets() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 200);
    let before = segment_files(dir.path());
    assert!(
        before.len() >= 4,
        "the test needs several segments: {before:?}"
    );
    let cut = before[1] + 3;
    let t = log.truncate_to(cut).unwrap();
    assert_eq!((t.old_end, t.new_end), (200, cut));
    assert_eq!(t.removed_segments, before[2..].to_vec());
    assert_eq!(log.end_offset(), cut);
    assert_eq!(segment_files(dir.path()), before[..2].to_vec());
    assert_eq!(check_all(&log, 0), cut);
    // The next appends get the offsets again.
    append_in_batches(&log, cut, 260);
    assert_eq!(check_all(&log, 0), 260);
    log.flush().unwrap();
    drop(log);
    let summary = verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "{summary}");
    let (log, report) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(check_all(&log, 0), 260);

    // At a segment's base offset: the segment is kept, empty; at the end: nothing happens.
    let bases = segment_files(dir.path());
    let last = *bases.last().unwrap();
    log.truncate_to(last).unwrap();
    assert_eq!(check_all(&log, 0), last);
    assert_eq!(
        log.truncate_to(last).unwrap().removed_segments,
        Vec::<u64>::new()
    );
    assert!(matches!(
        log.truncate_to(last + 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    append_in_batches(&log, last, last + 10);
    assert_eq!(check_all(&log, 0), last + 10);
}

#[test]
fn a_cut_inside_a_batch_with_a_head_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 5);
    let values: Vec<Vec<u8>> = (5..10).map(value_for).collect();
    let mut batch: Vec<Record<'_>> = values.iter().map(|v| Record::value(v, 1)).collect();
    batch[0].batch = Some(BatchHead {
        record_count: 5,
        leader_epoch: 2,
        ..BatchHead::default()
    });
    log.append(&batch).unwrap();
    for inside in 6..10 {
        assert!(
            matches!(
                log.truncate_to(inside),
                Err(LogError::InsideBatch { batch_start: 5, .. })
            ),
            "offset {inside}"
        );
    }
    assert_eq!(log.end_offset(), 10, "a refused truncation changes nothing");
    log.truncate_to(5).unwrap();
    assert_eq!(log.end_offset(), 5);
}

#[test]
fn tailers_see_the_end_move_back() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 120);
    let open = || {
        let opts = TailOptions {
            follow: true,
            ..TailOptions::default()
        };
        Tailer::open_dir(dir.path(), opts).unwrap()
    };
    let (mut ahead, mut behind) = (open(), open());
    assert_eq!(next_offsets(&mut ahead, 120), (0..120).collect::<Vec<_>>());
    assert_eq!(next_offsets(&mut behind, 30), (0..30).collect::<Vec<_>>());

    log.truncate_to(70).unwrap();
    append_new_generation(&log, 70, 90);
    // The tailer that had read past the cut is told which records are gone, once, then
    // reads the new records at those offsets.
    match ahead.next_record() {
        Err(TailError::Truncated { to, read_up_to }) => assert_eq!((to, read_up_to), (70, 120)),
        other => panic!(
            "expected a truncation report, got {:?}",
            other.map(|f| f.map(|f| f.offset))
        ),
    }
    let new_records = |t: &mut Tailer| -> Vec<u64> {
        (70..90)
            .map(|_| {
                let f = t.next_record().unwrap().expect("a record");
                let want = new_value(f.offset);
                assert_eq!(f.value(), Some(want.as_slice()), "offset {}", f.offset);
                f.offset
            })
            .collect()
    };
    assert_eq!(new_records(&mut ahead), (70..90).collect::<Vec<_>>());
    // The one that had not reads on, into the new records, without a report.
    assert_eq!(next_offsets(&mut behind, 40), (30..70).collect::<Vec<_>>());
    assert_eq!(new_records(&mut behind), (70..90).collect::<Vec<_>>());
}

#[test]
fn replicated_readers_stop_at_the_replicated_end_and_truncation_never_goes_below_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        replicated: true,
        ..small_config(SEGMENT_BYTES)
    };
    let (log, _) = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_in_batches(&log, 0, 100);
    let read_replicated = |from: u64| {
        let opts = TailOptions {
            from: mapq::log::tailer::StartAt::Offset(from),
            replicated_only: true,
            ..TailOptions::default()
        };
        let mut t = Tailer::open_dir(dir.path(), opts).unwrap();
        let mut n = from;
        while let Some(f) = t.next_record().unwrap() {
            assert_eq!(f.offset, n);
            n += 1;
        }
        n
    };
    assert_eq!(log.replicated_offset(), 0);
    assert_eq!(read_replicated(0), 0, "nothing is replicated yet");
    log.advance_replicated(12).unwrap();
    assert_eq!(read_replicated(0), 12);
    log.advance_replicated(85).unwrap();
    assert_eq!(read_replicated(0), 85, "across segments");
    log.advance_replicated(40).unwrap();
    assert_eq!(log.replicated_offset(), 85, "never lowered");
    assert!(matches!(
        log.advance_replicated(101),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.truncate_to(84),
        Err(LogError::BelowReplicated { replicated: 85, .. })
    ));
    log.truncate_to(90).unwrap();
    assert_eq!(read_replicated(0), 85, "the copy keeps the replicated end");
    append_in_batches(&log, 90, 95);
    log.flush().unwrap();
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(
        log.replicated_offset(),
        85,
        "the replicated offset survives a restart"
    );
    log.advance_replicated(95).unwrap();
    assert_eq!(read_replicated(80), 95);

    // Not replicated: the word stays 0 and readers read everything.
    let plain = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(plain.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 10);
    assert!(matches!(
        log.advance_replicated(5),
        Err(LogError::NotReplicated)
    ));
    let opts = TailOptions {
        replicated_only: true,
        ..TailOptions::default()
    };
    let mut t = Tailer::open_dir(plain.path(), opts).unwrap();
    let mut n = 0;
    while t.next_record().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
}

/// A truncation that a crash interrupted leaves files marked `truncated`; the next open
/// clears the marks (the files are the partition's again) and every record reads.
#[test]
fn an_interrupted_truncation_leaves_a_partition_that_opens() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
        append_in_batches(&log, 0, 50);
        log.flush().unwrap();
    }
    let bases = segment_files(dir.path());
    let path = dir
        .path()
        .join(format!("{:020}.log", bases.last().unwrap()));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[sh::TRUNCATED_TO..sh::TRUNCATED_TO + 8].copy_from_slice(&10u64.to_le_bytes());
    bytes[sh::TRUNCATED..sh::TRUNCATED + 4].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    assert_eq!(check_all(&log, 0), 50);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes[sh::TRUNCATED..sh::TRUNCATED + 4],
        [0; 4],
        "the mark is cleared"
    );
    let mut t = Tailer::open_dir(dir.path(), TailOptions::default()).unwrap();
    assert_eq!(next_offsets(&mut t, 50).len(), 50);
}

/// The reader written from FORMAT.md alone (Python, a separate process) follows a partition
/// through a truncation: it reports the records it printed that are gone, then prints the
/// new records at those offsets.
#[test]
fn the_format_document_reader_follows_a_truncation() {
    let _serial = serial();
    use base64::Engine;
    use std::process::Command;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 60);
    let reader = common::lines::LineProcess::spawn(
        Command::new(common::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/format_reader.py"
            ))
            .arg(dir.path())
            .arg("--follow"),
    );
    let offsets = |records: Vec<serde_json::Value>| -> Vec<u64> {
        records
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect()
    };
    let limit = Duration::from_secs(10);
    assert_eq!(
        offsets(reader.records(60, limit)),
        (0..60).collect::<Vec<_>>()
    );
    log.truncate_to(25).unwrap();
    append_new_generation(&log, 25, 40);
    let again = reader.records(15, limit);
    for r in &again {
        let offset = r["offset"].as_u64().unwrap();
        let value = base64::engine::general_purpose::STANDARD
            .decode(r["value_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(value, new_value(offset), "the record now at {offset}");
    }
    assert_eq!(offsets(again), (25..40).collect::<Vec<_>>());
    let stderr = reader.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("truncated to 25: records 25 to 59 are gone"),
        "{stderr}"
    );
}

/// A truncation whose rename fails half-way (the `rename` failpoint) stops the partition
/// (it cannot go on with those files) and leaves files that the next open repairs: the old
/// cut segment, its mark cleared, no copy left behind, no gap, every record there.
#[test]
fn a_truncation_that_fails_half_way_leaves_a_partition_that_opens() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    append_in_batches(&log, 0, 100);
    log.flush().unwrap();
    let before = segment_files(dir.path());
    let cut = before[1] + 2;
    let cut_segment_end = before[2];
    let armed = failpoint_dir().join("rename");
    std::fs::write(&armed, b"").unwrap();
    let failed = log.truncate_to(cut);
    std::fs::remove_file(&armed).unwrap();
    assert!(failed.is_err(), "the rename failpoint fired");
    assert!(
        matches!(
            log.append(&[Record::value(b"x", 1)]),
            Err(LogError::Stopped(_))
        ),
        "the partition stops"
    );
    drop(log);
    let (log, report) = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    assert!(
        report
            .removed_temp_files
            .iter()
            .any(|p| p.to_string_lossy().contains("spare-")),
        "the unfinished copy is removed: {report:?}"
    );
    assert_eq!(segment_files(dir.path())[..2], before[..2]);
    assert_eq!(
        check_all(&log, 0),
        cut_segment_end,
        "the cut segment is whole again"
    );
    let bytes = std::fs::read(dir.path().join(format!("{:020}.log", before[1]))).unwrap();
    assert_eq!(
        bytes[sh::TRUNCATED..sh::TRUNCATED + 4],
        [0; 4],
        "its mark is cleared"
    );
    // And the truncation, asked again, works.
    log.truncate_to(cut).unwrap();
    assert_eq!(check_all(&log, 0), cut);
    drop(log);
    let summary = verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "{summary}");
}

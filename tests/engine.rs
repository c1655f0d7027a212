//! Behaviour of the partition log through its public API.

mod common;

use common::*;
use mapq::log::{LogConfig, LogError, PartitionLog, Record};

#[test]
fn append_then_read_back_across_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(64 << 10);
    {
        let (log, report) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(report.segments, 0, "a new partition has nothing to recover");
        let mut next = 0;
        while next < 3000 {
            let n = 1 + next % 17;
            assert_eq!(append_range(&log, next, next + n), next);
            next += n;
        }
        assert_eq!(log.end_offset(), next);
        assert!(
            log.segment_count() > 5,
            "rolled {} times",
            log.segment_count()
        );
        assert_eq!(check_all(&log, 0), next);
        log.flush().unwrap();
    }
    let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        report.rebuilt_checkpoints, 0,
        "a clean reopen rebuilds nothing"
    );
    let end = log.end_offset();
    assert_eq!(check_all(&log, 0), end);
    // Appends continue where the log ended.
    assert_eq!(append_range(&log, end, end + 10), end);
    assert_eq!(check_all(&log, 0), end + 10);
}

#[test]
fn reads_honour_record_and_byte_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(1 << 20)).unwrap();
    let big = vec![7u8; 10_000];
    let small = vec![1u8; 10];
    let recs: Vec<Record<'_>> = [&big, &small, &small, &small]
        .iter()
        .map(|v| Record::value(v, 5))
        .collect();
    log.append(&recs).unwrap();
    // One record even when it alone is over the byte budget.
    let b = log.read(0, 100, 100).unwrap();
    assert_eq!(b.record_count, 1);
    assert_eq!(b.next_offset, 1);
    let b = log.read(1, 2, 1 << 20).unwrap();
    assert_eq!(b.record_count, 2);
    let b = log.read(1, 100, 130).unwrap();
    assert_eq!(
        b.record_count, 2,
        "two 56-byte frames fit in 130 bytes, three do not"
    );
    assert_eq!(b.byte_len(), 112);
    assert_eq!(b.high_watermark, 4);
}

#[test]
fn out_of_range_offsets_report_earliest_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(1 << 20)).unwrap();
    append_range(&log, 0, 5);
    match log.read(6, 10, 1000) {
        Err(LogError::OffsetOutOfRange {
            offset: 6,
            earliest: 0,
            latest: 5,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    let at_end = log.read(5, 10, 1000).unwrap();
    assert_eq!(at_end.record_count, 0);
    assert_eq!(at_end.next_offset, 5);
}

#[test]
fn reads_are_zero_copy_views_of_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(1 << 20)).unwrap();
    append_range(&log, 0, 50);
    let a = log.read(10, 5, 1 << 20).unwrap();
    let b = log.read(10, 5, 1 << 20).unwrap();
    // Two reads of the same records hand out the same memory: the mapping, not copies.
    assert_eq!(a.chunks[0].as_ptr(), b.chunks[0].as_ptr());
    let rec = a.records().next().unwrap();
    let chunk = a.chunks[0].as_ptr_range();
    assert!(
        chunk.contains(&rec.value.as_deref().expect("a value").as_ptr()),
        "the value is a slice of the frame bytes"
    );
    // The views stay valid after the log itself is gone.
    drop(log);
    assert_eq!(
        a.records().next().unwrap().value.as_deref(),
        Some(value_for(10).as_slice())
    );
}

#[test]
fn timestamp_lookup_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(32 << 10)).unwrap();
    // Timestamps rise by 10 per record, with one record out of order.
    let v = vec![0u8; 100];
    for i in 0..2000i64 {
        let ts = if i == 500 { 5 } else { 10 * i };
        log.append(&[Record::value(&v, ts)]).unwrap();
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(i64::MIN).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(4_995).unwrap(), Some(501));
    assert_eq!(log.offset_for_timestamp(12_340).unwrap(), Some(1234));
    assert_eq!(log.offset_for_timestamp(19_990).unwrap(), Some(1999));
    assert_eq!(log.offset_for_timestamp(19_991).unwrap(), None);
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    append_range(&log, 0, 3);
    let big = vec![9u8; 200 << 10];
    let first = log.append(&[Record::value(&big, 1)]).unwrap().first_offset;
    assert_eq!(first, 3);
    append_range(&log, 4, 8);
    let b = log.read(3, 1, 1).unwrap();
    assert_eq!(
        b.records().next().unwrap().value.map(|v| v.len()),
        Some(200 << 10)
    );
    // The big batch starts a segment sized to fit it (rounded up to a page), not the usual
    // 64 KiB, and has it to itself: the records after it start the next one.
    let layout = |log: &PartitionLog| -> Vec<(u64, usize)> {
        log.segments()
            .iter()
            .map(|s| (s.base_offset(), s.capacity()))
            .collect()
    };
    use mapq::log::format::{align_up, frame, segment_header};
    let fitted =
        (segment_header::SIZE + align_up(frame::FIXED_SIZE + (200 << 10))).next_multiple_of(4096);
    let before = layout(&log);
    assert_eq!(
        before,
        [(0, 64 << 10), (3, fitted), (4, 64 << 10)],
        "{before:?}"
    );
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    assert_eq!(log.end_offset(), 8);
    assert_eq!(layout(&log), before, "the same segments after a reopen");
}

#[test]
fn an_empty_active_segment_too_small_for_a_batch_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(64 << 10);
    let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let big = vec![9u8; 100 << 10];
    assert_eq!(
        log.append(&[Record::value(&big, 1)]).unwrap().first_offset,
        0
    );
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.end_offset(), 1);
    assert_eq!(
        log.read(0, 1, 1)
            .unwrap()
            .records()
            .next()
            .unwrap()
            .value
            .map(|v| v.len()),
        Some(100 << 10)
    );
}

#[test]
fn client_built_frames_are_appended_without_reencoding() {
    use mapq::log::format::{encode_frame, Record as R};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append_range(&log, 0, 2);
    let mut frames = Vec::new();
    for (i, ts) in [(0u8, 0i64), (1, 1234)] {
        let value = [i; 20];
        let r = R::value(&value, ts);
        let mut buf = vec![0; r.padded_len().unwrap()];
        encode_frame(&mut buf, 999, &r);
        frames.extend(buf);
    }
    let appended = log
        .append_frames(mapq::log::ValidFrames::check(&frames, u64::MAX).unwrap())
        .unwrap();
    assert_eq!((appended.first_offset, appended.count), (2, 2));
    let b = log.read(2, 10, 1 << 20).unwrap();
    let recs: Vec<_> = b.records().collect();
    assert_eq!(recs[0].offset, 2);
    assert!(
        recs[0].timestamp_ms > 1_700_000_000_000,
        "timestamp 0 gets the server's clock"
    );
    assert_eq!(recs[1].offset, 3);
    assert_eq!(recs[1].timestamp_ms, 1234);
    // A damaged frame rejects the whole request, and an oversized record too: neither can
    // be appended.
    let mut bad = frames.clone();
    let last = bad.len() - 9;
    bad[last] ^= 0xFF;
    assert!(matches!(
        mapq::log::ValidFrames::check(&bad, u64::MAX),
        Err(LogError::InvalidFrame { .. })
    ));
    assert!(matches!(
        mapq::log::ValidFrames::check(&frames, 19),
        Err(LogError::RecordTooLarge(_))
    ));
    assert_eq!(log.end_offset(), 4);
}

#[test]
fn flush_advances_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    append_range(&log, 0, 500);
    assert_eq!(log.durable_offset(), 0);
    assert_eq!(log.flush().unwrap(), 500);
    assert_eq!(log.durable_offset(), 500);
    for seg in log.segments().iter() {
        assert_eq!(seg.durable_end(), seg.committed_end());
    }
}

#[test]
fn concurrent_fsync_producers_return_only_once_their_records_are_flushed() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: flushes race with rolls.
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    let requests = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (log, requests) = (&log, &requests);
            s.spawn(move || {
                for i in 0..150 {
                    let from = (t * 1000 + i) * 8;
                    let end = append_range(log, from, from + 8) + 8;
                    let durable = log.flush_until(end).unwrap();
                    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    assert!(durable >= end, "{durable} < {end}");
                    assert!(log.durable_offset() >= end);
                    // Every segment wholly below `end` is flushed to its last byte.
                    let segments = log.segments();
                    for pair in segments.windows(2) {
                        if pair[1].base_offset() <= end {
                            assert_eq!(pair[0].durable_end(), pair[0].committed_end());
                        }
                    }
                }
            });
        }
    });
    assert_eq!(log.durable_offset(), 4 * 150 * 8);
    assert!(log.segments().len() > 5, "the test rolled segments");
    let flushes = log
        .stats()
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed);
    let requests = requests.into_inner();
    // Sharing itself depends on scheduling here; the next test shows it deterministically.
    assert!(
        flushes <= requests,
        "at most a flush per request: {flushes} flushes for {requests} requests"
    );
}

#[test]
fn fsync_producers_waiting_together_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    let flushes = || {
        log.stats()
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (threads, rounds) = (4u64, 20u64);
    let barrier = std::sync::Barrier::new(threads as usize);
    let before = flushes();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (log, barrier) = (&log, &barrier);
            s.spawn(move || {
                for round in 0..rounds {
                    let from = (round * threads + t) * 4;
                    let end = append_range(log, from, from + 4) + 4;
                    // Every thread has appended: the first flush covers all four batches,
                    // and the others find their records durable without an msync.
                    barrier.wait();
                    assert!(log.flush_until(end).unwrap() >= end);
                    barrier.wait();
                }
            });
        }
    });
    assert_eq!(
        flushes() - before,
        rounds,
        "one flush per round of {threads} waiting producers"
    );
}

#[test]
fn concurrent_readers_see_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(64 << 10)).unwrap();
    let log = std::sync::Arc::new(log);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let log = &log;
            s.spawn(move || {
                // A read that yields nothing would otherwise spin here forever.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let mut next = 0;
                while next < 5000 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the reader is stuck at {next}"
                    );
                    let b = log.read(next, 100, 1 << 20).unwrap();
                    let mut yielded = 0;
                    for r in b.records() {
                        assert_eq!(r.offset, next);
                        assert_eq!(r.value.as_deref(), Some(value_for(next).as_slice()));
                        next += 1;
                        yielded += 1;
                    }
                    assert_eq!(yielded, b.record_count, "every record of the batch decodes");
                    assert_eq!(b.next_offset, next, "the batch ends where its records end");
                }
            });
        }
        let mut next = 0;
        while next < 5000 {
            append_range(&log, next, next + 10);
            next += 10;
        }
    });
}

#[test]
fn a_prefaulter_reserves_ahead_of_the_writer() {
    let prefaulter = mapq::log::FileWorker::spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        worker: Some(prefaulter.handle()),
        ..small_config(256 << 10)
    };
    let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
    let mut next = 0;
    while next < 4000 {
        append_range(&log, next, next + 20);
        next += 20;
    }
    assert!(log.segment_count() > 3);
    assert_eq!(check_all(&log, 0), next);
    let active = log.segments().last().cloned().unwrap();
    assert!(active.allocated_end() >= active.committed_end());
    // The prefaulter works ahead of the writer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while active.prefaulted_end() <= active.committed_end()
        && active.prefaulted_end() < active.capacity()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefaulter never got ahead of the writer"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Stopping the prefaulter leaves writers working: they reserve for themselves.
    drop(prefaulter);
    append_range(&log, next, next + 2000);
    assert_eq!(check_all(&log, 0), next + 2000);
}

#[test]
fn idle_sealed_segments_unmap_and_reopen_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), small_config(32 << 10)).unwrap();
    let mut next = 0;
    while next < 2000 {
        append_range(&log, next, next + 20);
        next += 20;
    }
    let segments = log.segment_count();
    assert!(segments > 5);
    // Unflushed segments stay mapped: their data is not durable yet.
    assert_eq!(log.close_idle(i64::MAX), 0);
    log.flush().unwrap();
    assert_eq!(
        log.close_idle(i64::MAX),
        segments,
        "every sealed segment closes, and the idle, durable writer parks"
    );
    assert_eq!(log.open_segment_count(), 0, "no segment stays mapped");
    let size = log.size_bytes();
    assert!(size > 2000 * 40, "closed segments still count: {size}");
    // Reads, timestamp lookups and the start offset work on closed segments, reopening them.
    assert_eq!(log.offset_for_timestamp(1_000 + 777).unwrap(), Some(777));
    assert_eq!(check_all(&log, 0), next);
    assert_eq!(log.open_segment_count(), segments);
    // Appends and a reopen of the partition are unaffected.
    log.close_idle(i64::MAX);
    append_range(&log, next, next + 5);
    drop(log);
    let (log, report) = PartitionLog::open(dir.path(), small_config(32 << 10)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(check_all(&log, 0), next + 5);
}

#[test]
fn an_append_that_needs_no_file_work_is_told_apart_from_one_that_does() {
    // What the server's async path relies on: `try_lock` never waits, and `ready_for` says
    // whether an append is a mere copy (no roll, blocks reserved).
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    let value = [7u8; 100];
    log.append(&[Record::value(&value, 0)]).unwrap();
    {
        let held = log.lock().unwrap();
        assert!(log.try_lock().unwrap().is_none(), "the writer is busy");
        drop(held);
    }
    let guard = log.try_lock().unwrap().expect("the writer is free");
    assert!(guard.ready_for(128), "a small record in reserved blocks");
    assert!(
        !guard.ready_for(1 << 20),
        "beyond the segment: a roll is file work"
    );
    drop(guard);
    // What it said ready went through without rolling.
    let mut guard = log.try_lock().unwrap().unwrap();
    assert!(guard.ready_for(128));
    guard.append(&[Record::value(&value, 0)]).unwrap();
    drop(guard);
    assert_eq!((log.end_offset(), log.segment_count()), (2, 1));
}

#[test]
fn an_idle_writer_parks_its_mappings_and_maps_them_again_to_append() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    common::append_range(&log, 0, 3);
    // Not durable yet: an idle writer with unflushed records keeps its files.
    let later = i64::MAX;
    assert_eq!(log.close_idle(later), 0);
    assert_eq!(log.open_segment_count(), 1);
    log.flush().unwrap();
    assert_eq!(log.close_idle(later), 1, "the durable, idle writer parks");
    assert_eq!(log.open_segment_count(), 0, "no mapping left");
    // Readers map it again, read-only, and it closes again once idle.
    assert_eq!(common::check_all(&log, 0), 3);
    assert_eq!(log.open_segment_count(), 1);
    assert_eq!(
        log.close_idle(later),
        1,
        "parked already: the reader's mapping closes"
    );
    assert_eq!(log.open_segment_count(), 0);
    // The next append maps the files writable again; nothing is lost, offsets go on.
    for from in (3..400).step_by(50) {
        assert_eq!(common::append_range(&log, from, (from + 50).min(400)), from);
    }
    log.flush().unwrap();
    assert!(
        log.segment_count() > 1,
        "the appends rolled (a parked writer seals on roll)"
    );
    assert_eq!(common::check_all(&log, 0), 400);
    let summary = mapq::log::verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "{summary}");
    drop(log);
    let (log, report) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    assert_eq!((log.end_offset(), report.truncated_bytes), (400, 0));
}

#[test]
fn a_partition_is_opened_for_writing_once_per_process() {
    // Two logs over the same files would write them through two mappings: refused.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), common::small_config(64 << 10)),
        Err(LogError::AlreadyOpen(_))
    ));
    // Once marked deleted (its topic going), or dropped, the claim is gone.
    log.mark_deleted();
    let (again, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    drop((log, again));
    assert!(PartitionLog::open(dir.path(), common::small_config(64 << 10)).is_ok());
}

#[test]
fn a_first_segment_that_a_crash_left_without_its_header_is_created_anew() {
    // A new partition's first segment is made durable by its first flush, not when it is
    // created: a crash before that can leave its data file with an all-zero header, or
    // shorter than a header. It held no durable record, so opening replaces it.
    let config = || common::small_config(64 << 10);
    let name = "00000000000000000000.log";
    for leftover in [vec![0u8; 8192], vec![0u8; 100], Vec::new()] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), &leftover).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config()).expect("open");
        assert_eq!(report.removed_segments, vec![0]);
        assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
        append_range(&log, 0, 10);
        log.flush_until(u64::MAX).unwrap();
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), config()).expect("reopen");
        assert!(report.removed_segments.is_empty());
        assert_eq!(check_all(&log, 0), 10);
    }
}

#[test]
fn a_zeroed_header_is_damage_anywhere_but_in_a_new_partition() {
    // Only a partition's first segment, alone, is created without a durable header; a
    // later segment with a zeroed header is damage, and opening refuses it rather than
    // starting the offsets again.
    let config = || common::small_config(16 << 10);
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config()).unwrap();
    append_range(&log, 0, 100);
    log.roll().unwrap();
    append_range(&log, 100, 200);
    log.flush_until(u64::MAX).unwrap();
    let mut data_files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    data_files.sort();
    assert!(data_files.len() >= 2, "the records span several segments");
    drop(log);
    let last = data_files.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes[..4096].fill(0);
    std::fs::write(last, &bytes).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), config()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn deleting_a_partition_stops_its_followers_while_its_files_remain() {
    // Nothing else tells a follower in another process: the files are still there (they
    // are removed afterwards, and a reader may hold them open), so the active segment's
    // header says so, and blocked followers are woken.
    use mapq::log::tailer::{TailError, TailOptions, Tailer, WaitMode};
    for wait in [WaitMode::Block, WaitMode::Spin] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
        append_range(&log, 0, 5);
        let opts = TailOptions {
            follow: true,
            wait,
            ..TailOptions::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        let follower = std::thread::spawn(move || {
            let mut tailer = Tailer::open_dir(&path, opts).unwrap();
            let mut read = 0;
            let outcome = loop {
                match tailer.next_record() {
                    Ok(Some(_)) => {
                        read += 1;
                        if read == 5 {
                            tx.send(()).unwrap();
                        }
                    }
                    Ok(None) => break Ok(read),
                    Err(e) => break Err((read, e)),
                }
            };
            outcome
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the follower read the records");
        match wait {
            // The deletion must wake it from its futex wait.
            WaitMode::Block => common::server::wait_for_blocked_tailer(
                &dir.path().join("00000000000000000000.log"),
            ),
            // A spinning follower shows nothing: it reads the word on its next look.
            WaitMode::Spin => {}
        }
        log.mark_deleted();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !follower.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the follower still waits after the deletion ({wait:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match follower.join().unwrap() {
            Err((5, TailError::TopicDeleted)) => {}
            other => panic!("{wait:?}: {other:?}"),
        }
        assert!(
            dir.path().read_dir().unwrap().count() > 0,
            "the files remain"
        );
    }
}

#[test]
fn a_file_tailer_sees_the_records_of_a_new_segment_as_soon_as_they_are_appended() {
    // Rolls adopt a spare segment prepared by the file worker; its files get their final
    // names at the roll, not later on the worker, so that a reader of the files sees each
    // record as early as an HTTP consumer does. The worker is kept busy here so that it
    // cannot do the renames in time.
    use mapq::log::tailer::{TailOptions, Tailer};
    use mapq::log::FileWorker;
    let worker = FileWorker::spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        worker: Some(worker.handle()),
        ..common::small_config(16 << 10)
    };
    let (log, _) = PartitionLog::open(dir.path(), config).unwrap();
    let segments = |log: &PartitionLog| log.segments().len();
    // Past half the first segment: the worker prepares a spare; wait until it has run.
    let mut end = 0;
    while log.segments()[0].committed_end() < 10 << 10 {
        append_range(&log, end, end + 10);
        end += 10;
    }
    let (ran, done) = std::sync::mpsc::channel();
    worker.handle().submit(move || ran.send(()).unwrap());
    done.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    // Keep the worker busy, then append until the roll.
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    worker.handle().submit(move || {
        let _ = blocked.recv_timeout(std::time::Duration::from_secs(30));
    });
    while segments(&log) == 1 {
        append_range(&log, end, end + 10);
        end += 10;
    }
    append_range(&log, end, end + 5);
    end += 5;
    let mut tailer = Tailer::open_dir(dir.path(), TailOptions::default()).unwrap();
    let mut read = 0;
    while let Some(f) = tailer.next_record().unwrap() {
        assert_eq!(f.offset, read);
        read += 1;
    }
    release.send(()).unwrap();
    assert_eq!(
        read, end,
        "the file tailer stopped before the records of the new segment"
    );
}

#[test]
fn a_deletion_interrupted_by_a_crash_leaves_no_deleted_mark_behind() {
    // The topic's files were marked, then the server died before removing them: the topic
    // is still there at the next start, and its readers must not stop at the old mark.
    use mapq::log::tailer::{TailOptions, Tailer};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    append_range(&log, 0, 5);
    log.mark_deleted();
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), common::small_config(64 << 10)).unwrap();
    append_range(&log, 5, 8);
    let mut tailer = Tailer::open_dir(dir.path(), TailOptions::default()).unwrap();
    let mut read = 0;
    while let Some(f) = tailer.next_record().expect("no 'topic deleted'") {
        assert_eq!(f.offset, read);
        read += 1;
    }
    assert_eq!(read, 8);
}

#[test]
fn an_empty_partition_can_start_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let cfg = small_config(64 << 10);
    PartitionLog::create_empty_at(&path, &cfg, 1000).unwrap();
    assert!(
        PartitionLog::create_empty_at(&path, &cfg, 5).is_err(),
        "an existing directory is never replaced"
    );
    {
        let (log, _) = PartitionLog::open(&path, cfg.clone()).unwrap();
        assert_eq!((log.start_offset(), log.end_offset()), (1000, 1000));
        assert!(matches!(
            log.read(999, 10, 1 << 20),
            Err(LogError::OffsetOutOfRange { earliest: 1000, .. })
        ));
        assert_eq!(append_range(&log, 1000, 1500), 1000);
        log.flush().unwrap();
    }
    // Reopened (recovered): it keeps its start, and its records at their offsets.
    let (log, _) = PartitionLog::open(&path, cfg).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (1000, 1500));
    assert_eq!(check_all(&log, 1000), 1500);
}

//! Disk blocks and pre-faulted pages ahead of a writer grow with the data: an idle
//! partition holds a few pages, a busy one reaches the configured distances, and a full
//! disk (here: the quota) is still an error at reservation time, never a fault.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use mapq::log::{DiskQuota, LogConfig, LogError, PartitionLog};

/// Bytes of disk blocks held by the files of a partition directory.
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 30,
        reserve_chunk_bytes: 16 << 20,
        prefault_bytes: 4 << 20,
        ..LogConfig::default()
    }
}

#[test]
fn an_idle_partition_holds_a_few_pages_and_a_busy_one_grows() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config()).unwrap();
    common::append_range(&log, 0, 1);
    let idle = allocated_bytes(dir.path());
    // The data file's header page and 16 KiB ahead, one block per index file.
    assert!(
        idle <= 32 << 10,
        "one record holds {idle} bytes of disk (the limit: 32 KiB)"
    );
    // 8 MiB of records: what is allocated follows the data, at most doubling it.
    let mut next = 1;
    while log.end_offset() < 60_000 {
        common::append_range(&log, next, next + 500);
        next += 500;
    }
    let data = next * 180; // generated records average about 180 bytes in frames
    let busy = allocated_bytes(dir.path());
    assert!(busy > data / 2, "{busy} bytes allocated for about {data}");
    assert!(
        busy <= 2 * data + (16 << 20),
        "{busy} bytes allocated for about {data}: more than twice the data plus one chunk"
    );
    // Reopened, everything is still there.
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(common::check_all(&log, 0), next);
}

#[test]
fn the_quota_refuses_at_reservation_while_indexes_and_data_grow() {
    // A quota just above what the first records need: as the writer's reservations grow
    // (data and index), one of them is refused, with NoSpace, and nothing is lost.
    let dir = tempfile::tempdir().unwrap();
    let quota = Arc::new(DiskQuota::new(1 << 20));
    let cfg = LogConfig {
        quota: Some(Arc::clone(&quota)),
        index_interval_bytes: 256,
        ..config()
    };
    let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let mut next = 0;
    let refused = loop {
        match common::try_append_range(&log, next, next + 50) {
            Ok(_) => next += 50,
            Err(e) => break e,
        }
        assert!(next < 1_000_000, "the quota never refused");
    };
    assert!(matches!(refused, LogError::NoSpace { .. }), "{refused:?}");
    assert!(quota.used_bytes() <= quota.limit_bytes());
    assert!(
        allocated_bytes(dir.path()) <= quota.limit_bytes() + (64 << 10),
        "the files hold more than the quota allows"
    );
    assert_eq!(
        common::check_all(&log, 0),
        next,
        "every acknowledged record reads"
    );
    drop(log);
    let quota = Arc::new(DiskQuota::new(1 << 20));
    let (log, _) = PartitionLog::open(
        dir.path(),
        LogConfig {
            quota: Some(quota),
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(common::check_all(&log, 0), next, "and after a reopen");
}

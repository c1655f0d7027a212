//! A partition's log: an ordered run of segments with one writer and lock-free readers.
//!
//! - [`append`]: the writer lock, appends, and all-or-nothing appends across partitions;
//! - [`read`]: zero-copy reads of published records;
//! - [`roll`]: moving to a new segment, with spares prepared off the append path;
//! - [`flush`]: msync with group commit;
//! - [`retention`]: deleting old segments and closing idle ones.
//!
//! Opening a partition (recovery) is in [`crate::log::recovery`].

mod append;
mod flush;
mod read;
mod retention;
mod roll;
mod truncate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;

pub use append::{batch_bytes, AppendGuard, Appended, ReplicaFrames, ValidFrames};
pub use read::{ReadBatch, StoredRecord};
pub use retention::{DeleteReason, DeletedSegment};
pub(crate) use roll::{new_header, RollState};
pub use truncate::Truncation;

use super::config::LogConfig;
use super::error::{LogError, Result};
use super::segment::{Segment, SegmentWriter};

/// How often [`PartitionLog::try_lock_writer`] tries a busy writer lock before it gives up.
const TRY_LOCK_SPINS: u32 = 64;

/// A partition's log. Appends are serialized by one writer lock; reads never take it.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// The segments, oldest first. Replaced whole (copy on write) by the writer on roll;
    /// readers load a snapshot without waiting.
    segments: ArcSwap<Vec<Arc<Segment>>>,
    /// The offset the next record will get (the high watermark). Stored (Release) by the
    /// writer after each publish and after a new segment is in `segments`.
    end_offset: AtomicU64,
    /// Every record below this offset has been made durable by a flush.
    durable_offset: AtomicU64,
    /// Below this offset every in-sync replica holds the records (0 when not replicated).
    replicated_offset: AtomicU64,
    /// The single writer: the active segment. Lock order: `writer`, then `flush_running`.
    writer: Mutex<SegmentWriter>,
    /// Whether a flush is running: flushes run one at a time (never under this lock, and
    /// never against appends); callers wait on `flush_done` instead of queueing on a lock,
    /// so that everyone a flush covered returns as soon as it ends.
    flush_running: Mutex<bool>,
    flush_done: Condvar,
    /// Set when a flush failed: the partition then refuses appends.
    stopped: OnceLock<String>,
    /// Counters of the engine's own work, for metrics.
    stats: LogStats,
    rolls: Arc<RollState>,
    /// The last append failed for lack of space (for logging the transitions only).
    out_of_space: AtomicBool,
    /// This process's claim on the directory: released when the log drops, or once it is
    /// marked deleted (it does no file work after that, and the directory's inode may be
    /// reused by a new topic's partition).
    claim: Mutex<Option<crate::log::recovery::OpenPartition>>,
}

/// Counters of work a partition log did since it was opened.
#[derive(Debug, Default)]
pub struct LogStats {
    pub segments_rolled: AtomicU64,
    pub segments_deleted_by_age: AtomicU64,
    pub segments_deleted_by_size: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_errors: AtomicU64,
}

impl PartitionLog {
    /// A partition log over recovered (or new) segments; `writer` holds the newest.
    pub(crate) fn from_parts(
        dir: &std::path::Path,
        config: LogConfig,
        segments: Vec<Arc<Segment>>,
        writer: SegmentWriter,
        claim: crate::log::recovery::OpenPartition,
    ) -> Self {
        let rolls = Arc::new(RollState::new(dir, &config));
        let replicated = truncate::stored_replicated_offset(&segments);
        PartitionLog {
            dir: dir.to_owned(),
            end_offset: AtomicU64::new(writer.next_offset()),
            config,
            segments: ArcSwap::from_pointee(segments),
            durable_offset: AtomicU64::new(0),
            replicated_offset: AtomicU64::new(replicated),
            writer: Mutex::new(writer),
            flush_running: Mutex::new(false),
            flush_done: Condvar::new(),
            stopped: OnceLock::new(),
            stats: LogStats::default(),
            out_of_space: AtomicBool::new(false),
            rolls,
            claim: Mutex::new(Some(claim)),
        }
    }

    /// The partition's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
    /// Whether the partition is replicated (its segments keep a replicated end).
    pub fn is_replicated(&self) -> bool {
        self.config.replicated
    }
    /// A snapshot of the segments, oldest first.
    pub fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments.load_full()
    }
    /// The earliest offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.segments.load().first().map_or(0, |s| s.base_offset())
    }
    /// The offset the next record will get (the high watermark).
    pub fn end_offset(&self) -> u64 {
        // Acquire: pairs with the writer's Release; records below are published.
        self.end_offset.load(Ordering::Acquire)
    }
    /// Why the partition stopped accepting writes (a flush failed), if it did.
    pub fn stopped_reason(&self) -> Option<String> {
        self.stopped.get().cloned()
    }

    /// Whether the partition's topic was deleted (nothing is appended or flushed any more).
    pub fn is_deleted(&self) -> bool {
        self.rolls.deleted.load(Ordering::Acquire)
    }

    /// Every record below this offset survives power loss.
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset.load(Ordering::Acquire)
    }
    /// Bytes of frames stored.
    pub fn size_bytes(&self) -> u64 {
        self.segments.load().iter().map(|s| s.size_bytes()).sum()
    }
    /// Counters of rolls, deletions and flushes since open.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }
    /// Segments mapped right now (the active one always is).
    pub fn open_segment_count(&self) -> usize {
        self.segments.load().iter().filter(|s| s.is_open()).count()
    }
    /// Tailers (in any process) blocked on a futex word of this partition's segments.
    pub fn tail_waiters(&self) -> u64 {
        self.segments
            .load()
            .iter()
            .map(|s| u64::from(s.tail_waiters()))
            .sum()
    }

    /// Whether every segment holding records from `offset` on is mapped now, so that a
    /// read from there opens no file ([`Segment::map_or_reopen`] reopens a segment closed
    /// while idle). A segment mapped now was read or written lately: its pages are likely
    /// in memory too.
    pub fn is_mapped_from(&self, offset: u64) -> bool {
        let segs = self.segments.load();
        let first = segs
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        segs[first..].iter().all(|s| s.mapping_if_open().is_some())
    }

    pub fn segment_count(&self) -> usize {
        self.segments.load().len()
    }
    /// The writer, if it is free now or within [`TRY_LOCK_SPINS`] tries.
    pub(super) fn try_lock_writer(&self) -> Result<Option<MutexGuard<'_, SegmentWriter>>> {
        if let Some(reason) = self.stopped.get() {
            return Err(LogError::Stopped(reason.clone()));
        }
        // Another thread's append holds the lock for a microsecond or two: a few tries are
        // cheaper for an async caller than its hand-off to the blocking pool. A writer busy
        // for longer (a roll, file work) is left to that hand-off.
        let mut tries = 0;
        let w = loop {
            match self.writer.try_lock() {
                Ok(w) => break w,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if tries < TRY_LOCK_SPINS => {
                    tries += 1;
                    std::hint::spin_loop();
                }
                Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            }
        };
        if self.rolls.deleted.load(Ordering::Acquire) {
            return Err(LogError::Deleted);
        }
        Ok(Some(w))
    }

    pub(super) fn lock_writer(&self) -> Result<MutexGuard<'_, SegmentWriter>> {
        if let Some(reason) = self.stopped.get() {
            return Err(LogError::Stopped(reason.clone()));
        }
        // A panic while holding the lock leaves the writer consistent (the publish is the
        // last step of an append), so a poisoned lock is still usable.
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.rolls.deleted.load(Ordering::Acquire) {
            return Err(LogError::Deleted);
        }
        Ok(w)
    }
    /// Logs running out of space once when it starts, and once when writes succeed again,
    /// rather than once per refused append.
    pub(super) fn note_space<T>(&self, result: &Result<T>) {
        let full = matches!(result, Err(LogError::NoSpace { .. }));
        if full == self.out_of_space.load(Ordering::Relaxed) || result.is_err() && !full {
            return;
        }
        if self.out_of_space.swap(full, Ordering::Relaxed) == full {
            return;
        }
        if full {
            tracing::warn!(
                partition = %self.dir.display(),
                "disk full (or over max_disk_bytes): appends refused until space returns"
            );
        } else {
            tracing::info!(partition = %self.dir.display(), "space available again: appends resumed");
        }
    }
    /// Marks the partition deleted, and waits for any append or file work in progress:
    /// afterwards nothing creates, renames or removes a file of this partition, so its
    /// directory can go (and its name be reused by a new topic).
    pub fn mark_deleted(&self) {
        self.rolls.deleted.store(true, Ordering::Release);
        {
            // Waits for the append in flight; none starts afterwards. Then tells the local
            // tailers, through the active segment's header, that nothing more will come (a
            // parked writer maps its files again for that; if it cannot, tailers find the
            // files gone at their next check instead).
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.unpark().is_ok() {
                w.segment().mark_deleted();
            }
        }
        drop(self.rolls.file_work());
        drop(
            self.rolls
                .finishing
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.claim.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    /// Gives back every byte this partition charged to the disk quota (its files are being
    /// deleted with its topic).
    pub fn release_quota(&self) {
        for seg in self.segments.load().iter() {
            seg.release_quota();
        }
        self.rolls.release_quota();
    }
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Leave final names and seals behind, so a clean stop has nothing to repair.
        if let Err(e) = self.rolls.finish_pending() {
            tracing::warn!(partition = %self.dir.display(), error = %e, "could not finish a roll");
        }
    }
}

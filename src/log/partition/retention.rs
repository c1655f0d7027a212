//! Retention: deleting whole sealed segments by age and size, and closing (unmapping) idle
//! ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::PartitionLog;
use crate::log::error::Result;
use crate::log::segment;
use crate::log::util::sync_dir;

/// Why retention deleted a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its newest record is older than `retention_ms`.
    Age,
    /// The partition is larger than `retention_bytes`.
    Size,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Age => "age",
            DeleteReason::Size => "size",
        }
    }
}

/// A segment removed by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub reason: DeleteReason,
}

impl PartitionLog {
    /// Deletes whole sealed segments from the oldest on: those whose newest record is older
    /// than `retention_ms` before `now_ms`, then the oldest while the partition is larger than
    /// `retention_bytes`. Never the active segment. Readers (and tailers in other processes)
    /// that still map a deleted segment keep reading it; the start offset moves on. Blocks
    /// (unlinks files).
    pub fn apply_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<Vec<DeletedSegment>> {
        let segs = self.segments.load_full();
        let mut total: u64 = segs.iter().map(|s| s.size_bytes()).sum();
        let mut doomed = Vec::new();
        // Everything but the newest segment is sealed (the newest is the active one).
        for seg in segs.iter().take(segs.len().saturating_sub(1)) {
            if !seg.is_sealed() {
                break;
            }
            let expired = retention_ms.is_some_and(|ms| {
                let newest = seg.max_timestamp_ms();
                newest != i64::MIN && now_ms.saturating_sub(newest) > ms as i64
            });
            let oversized = retention_bytes.is_some_and(|max| total > max);
            let reason = if expired {
                DeleteReason::Age
            } else if oversized {
                DeleteReason::Size
            } else {
                break;
            };
            total -= seg.size_bytes();
            doomed.push((Arc::clone(seg), reason));
        }
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let _files = self.rolls.file_work();
        if self.rolls.deleted.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        // A truncation (which holds the file work too) may have replaced segments since the
        // list was loaded: delete only segments that are still the partition's.
        let current = self.segments.load_full();
        doomed.retain(|(seg, _)| current.iter().any(|c| Arc::ptr_eq(c, seg)));
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let gone: Vec<u64> = doomed.iter().map(|(s, _)| s.base_offset()).collect();
        // Readers see the new start before any file disappears.
        self.segments.rcu(|segs| {
            segs.iter()
                .filter(|s| !gone.contains(&s.base_offset()))
                .cloned()
                .collect::<Vec<_>>()
        });
        let mut deleted = Vec::with_capacity(doomed.len());
        for (seg, reason) in doomed {
            segment::remove(&self.dir, seg.base_offset());
            seg.release_quota();
            let counter = match reason {
                DeleteReason::Age => &self.stats.segments_deleted_by_age,
                DeleteReason::Size => &self.stats.segments_deleted_by_size,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let d = DeletedSegment {
                base_offset: seg.base_offset(),
                next_offset: seg.next_offset(),
                size_bytes: seg.size_bytes(),
                reason,
            };
            tracing::info!(
                segment = %seg.path().display(),
                reason = reason.as_str(),
                offsets = ?(d.base_offset..d.next_offset),
                size_bytes = d.size_bytes,
                "retention deleted segment"
            );
            deleted.push(d);
        }
        let _ = sync_dir(&self.dir);
        Ok(deleted)
    }
    /// Deletes the sealed segments whose records all lie below `offset` (a journal compacted
    /// into a snapshot at `offset`). Never the active segment. Returns how many. Blocks.
    pub fn delete_segments_below(&self, offset: u64) -> Result<usize> {
        let _files = self.rolls.file_work();
        if self.rolls.deleted.load(Ordering::Acquire) {
            return Ok(0);
        }
        let segs = self.segments.load_full();
        let doomed: Vec<Arc<segment::Segment>> = segs
            .iter()
            .take(segs.len().saturating_sub(1))
            .take_while(|s| s.is_sealed() && s.next_offset() <= offset)
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let gone: Vec<u64> = doomed.iter().map(|s| s.base_offset()).collect();
        self.segments.rcu(|segs| {
            segs.iter()
                .filter(|s| !gone.contains(&s.base_offset()))
                .cloned()
                .collect::<Vec<_>>()
        });
        for seg in &doomed {
            segment::remove(&self.dir, seg.base_offset());
            seg.release_quota();
        }
        let _ = sync_dir(&self.dir);
        Ok(doomed.len())
    }

    /// Unmaps sealed, durable segments no reader used since `idle_since_ms`, and parks the
    /// writer if the active segment is idle too (durable, neither written nor read since):
    /// they map again on demand. Returns how many closed.
    pub fn close_idle(&self, idle_since_ms: i64) -> usize {
        let segs = self.segments.load();
        // The newest segment is the active one: its writer parks instead.
        let sealed = segs.len().saturating_sub(1);
        let closed = segs
            .iter()
            .take(sealed)
            .filter(|s| s.close_if_idle(idle_since_ms))
            .count();
        closed + usize::from(self.park_writer(idle_since_ms))
    }

    /// Parks the writer (see `close_idle`) if it is idle since `idle_since_ms` and nobody
    /// holds its lock right now. Returns whether it parked.
    pub fn park_writer(&self, idle_since_ms: i64) -> bool {
        match self.try_lock_writer() {
            Ok(Some(mut w)) => {
                let was_open = self.segments.load().last().is_some_and(|s| s.is_open());
                w.park_if_idle(idle_since_ms) && was_open
            }
            _ => false,
        }
    }
}

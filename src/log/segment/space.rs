//! Disk space of a segment: blocks allocated (`fallocate`) ahead of the writer so that a
//! write through the mapping never faults for lack of space, the disk quota they are
//! charged to, pages pre-faulted ahead of the writer, and blocks given back on seal.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Mapped, Segment, DATA_START};
use crate::log::error::{LogError, Result};
use crate::log::failpoint;
use crate::log::quota::DiskQuota;

/// Pre-faulting proceeds in steps of this many bytes (a multiple of the page size).
pub const PREFAULT_STEP_BYTES: usize = 256 << 10;

/// Data a segment holds before the kernel may read ahead in it (see
/// `Segment::enable_read_ahead`).
pub const READ_AHEAD_AFTER_BYTES: usize = 1 << 20;

/// The smallest distance a writer allocates disk blocks ahead of itself (the largest is the
/// configured `chunk_bytes`).
pub const MIN_RESERVE_AHEAD_BYTES: usize = 16 << 10;
/// The smallest distance a writer pre-faults pages ahead of itself (the largest is the
/// configured `prefault_bytes`): one page.
pub const MIN_PREFAULT_AHEAD_BYTES: usize = 4 << 10;

/// How far ahead of `position` to reserve or pre-fault, from `min_bytes` to `max_bytes`: as
/// much as the segment already holds, so that an idle partition holds a few pages beyond
/// its data and a busy one quickly reaches the configured distance (the allocation at least
/// doubles each time).
pub fn ahead_bytes(position: usize, min_bytes: usize, max_bytes: usize) -> usize {
    let max_bytes = max_bytes.max(4096);
    (position - DATA_START.min(position))
        .next_power_of_two()
        .clamp(min_bytes.min(max_bytes), max_bytes)
}

/// Bytes charged to the quota, given back when dropped unless [kept](Self::keep).
pub(super) struct QuotaCharge<'a> {
    quota: Option<&'a Arc<DiskQuota>>,
    bytes: u64,
}

impl<'a> QuotaCharge<'a> {
    /// Charges `bytes` to the quota, if there is one; over it, the error a full disk gives.
    pub(super) fn take(quota: Option<&'a Arc<DiskQuota>>, bytes: u64, path: &Path) -> Result<Self> {
        match quota {
            Some(q) if !q.try_take(bytes) => Err(LogError::NoSpace {
                path: path.to_owned(),
                needed_bytes: bytes,
            }),
            _ => Ok(QuotaCharge { quota, bytes }),
        }
    }

    /// The bytes stay charged (the blocks exist): returns how many.
    pub(super) fn keep(mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for QuotaCharge<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.quota {
            q.give_back(self.bytes);
        }
    }
}

impl Segment {
    /// Position below which disk blocks are allocated.
    pub fn allocated_end(&self) -> usize {
        // Acquire: pairs with the Release in `allocate_to`.
        self.allocated_end.load(Ordering::Acquire)
    }

    /// Allocates disk blocks (`fallocate`) below `end`, at least `chunk_bytes` at a time, so
    /// that writes through the mapping below it cannot fail: a full disk is an error here,
    /// never a SIGBUS later.
    pub fn allocate_to(&self, end: usize, chunk_bytes: usize) -> Result<()> {
        if self.allocated_end() >= end {
            return Ok(());
        }
        let _guard = self.allocate_lock.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.allocated_end();
        if start >= end {
            return Ok(());
        }
        let new_end = end
            .max(start + chunk_bytes)
            .next_multiple_of(4096)
            .min(self.capacity());
        let bytes = (new_end - start) as u64;
        let charge = QuotaCharge::take(self.quota.as_ref(), bytes, &self.path)?;
        let Some(m) = self.mapping_if_open() else {
            return Ok(());
        };
        failpoint::check("fallocate")
            .and_then(|()| m.data.reserve(start..new_end))
            .map_err(|e| LogError::reserve(&self.path, (end - start) as u64, e))?;
        self.charged_bytes
            .fetch_add(charge.keep(), Ordering::Relaxed);
        // Release: a writer that sees the new end sees the allocation done.
        self.allocated_end.store(new_end, Ordering::Release);
        Ok(())
    }

    /// Allocates index blocks of mapping `m` so that `entries` checkpoints can be written,
    /// charging the quota: a full disk is an error here, before the append, never a fault
    /// later.
    pub(crate) fn allocate_index(&self, m: &Mapped, entries: usize) -> Result<()> {
        for index in [&m.offset_index, &m.time_index] {
            if index.allocation_for(entries).is_none() {
                continue;
            }
            let _guard = self.allocate_lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(range) = index.allocation_for(entries) else {
                continue;
            };
            let bytes = range.len() as u64;
            let charge = QuotaCharge::take(self.quota.as_ref(), bytes, index.path())?;
            failpoint::check("fallocate")
                .and_then(|()| index.allocate(range))
                .map_err(|e| LogError::reserve(index.path(), bytes, e))?;
            self.charged_bytes
                .fetch_add(charge.keep(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Returns `bytes` of this segment's charge to the quota.
    pub(crate) fn give_back(&self, bytes: u64) {
        let _ = self
            .charged_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(bytes))
            });
        if let Some(q) = &self.quota {
            q.give_back(bytes);
        }
    }

    /// Bytes this segment has charged to the quota.
    pub(crate) fn charged_bytes(&self) -> u64 {
        self.charged_bytes.load(Ordering::Relaxed)
    }

    /// Returns everything this segment charged to the quota (its files are being deleted).
    pub fn release_quota(&self) {
        let all = self.charged_bytes.swap(0, Ordering::Relaxed);
        if let Some(q) = &self.quota {
            q.give_back(all);
        }
    }

    /// Position below which pages were pre-faulted.
    pub fn prefaulted_end(&self) -> usize {
        self.prefaulted_end.load(Ordering::Acquire)
    }

    /// Allocates blocks below `end` and pre-faults their pages for writing
    /// (`MADV_POPULATE_WRITE`), a step at a time, so that the writer's copies take no page
    /// faults. Needs no lock against the writer: pre-faulting changes no byte, so it may
    /// overlap pages the writer is filling.
    pub fn prefault_to(&self, end: usize, chunk_bytes: usize) -> Result<()> {
        let end = end.next_multiple_of(4096).min(self.capacity());
        loop {
            let start = self
                .prefaulted_end()
                .max(self.committed_end() & !(4096 - 1));
            if start >= end || self.is_sealed() {
                return Ok(());
            }
            let step_end = end.min(start + PREFAULT_STEP_BYTES);
            self.allocate_to(step_end, chunk_bytes)?;
            let Some(m) = self.mapping_if_open() else {
                return Ok(());
            };
            m.data.populate_write(start..step_end);
            self.prefaulted_end.fetch_max(step_end, Ordering::AcqRel);
        }
    }

    /// A file-worker job: pre-faults `segment` up to `ahead_bytes` past its committed end,
    /// if it still exists and is not sealed.
    pub(super) fn prefault_job(
        segment: std::sync::Weak<Segment>,
        ahead_bytes: usize,
        chunk_bytes: usize,
    ) {
        let Some(seg) = segment.upgrade() else {
            return;
        };
        seg.prefault_requested.store(false, Ordering::Relaxed);
        if seg.is_sealed() {
            return;
        }
        let target = (seg.committed_end() + ahead_bytes).min(seg.capacity());
        if let Err(e) = seg.prefault_to(target, chunk_bytes) {
            // The writer meets the same error synchronously and reports it.
            tracing::debug!(segment = %seg.path().display(), error = %e, "pre-fault failed");
        }
    }

    /// Releases the blocks reserved past the committed end of a sealed segment, and the unused
    /// tail of its indexes. The file keeps its length, so mappings stay valid. Done once its
    /// writer is gone (while one lives, nothing is released).
    pub(crate) fn release_unused(&self) {
        let Some(m) = self.mapping_if_open() else {
            return;
        };
        let committed = m.committed_end();
        let allocated = self.allocated_end();
        if m.data.punch_unpublished(committed..self.capacity()).is_ok() {
            let kept = committed.next_multiple_of(4096);
            self.give_back(allocated.saturating_sub(kept) as u64);
        }
        let count = m.checkpoint_count();
        let freed = m.offset_index.release_unused(count) + m.time_index.release_unused(count);
        self.give_back(freed);
    }
}

//! Reading a segment: locating an offset or a timestamp through the index checkpoints, then
//! walking published frames. Everything here reads below the committed end, loaded with
//! Acquire, and never waits for the writer.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{Mapped, Segment, DATA_START};
use crate::log::error::{LogError, Result};
use crate::log::format::{
    self, decode_frame, decode_frame_unchecked_crc, segment_header as sh, FrameView,
};
use crate::log::mmap::{futex_wake_all, MappedFile};

/// Maps an i64 timestamp to a u64 with the same order, for binary searches.
fn ordered(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

/// One index checkpoint: the frame at byte `position` holds record `offset`, and every
/// record of the segment before it has a timestamp of at most `max_timestamp_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: u64,
    pub position: u64,
    pub max_timestamp_before: i64,
}

/// Frames read from one segment.
#[derive(Debug, Clone)]
pub struct SegmentRead {
    /// The frames, zero-copy: the `Bytes` keeps the mapping alive.
    pub frames: Bytes,
    pub count: usize,
    /// The offset after the last frame read.
    pub next_offset: u64,
    /// The read stopped at the committed end it loaded.
    pub at_end: bool,
}

impl Segment {
    /// The published checkpoints; none when the files cannot be mapped.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.map_or_reopen()
            .map(|m| m.checkpoints())
            .unwrap_or_default()
    }

    /// The first published record of this segment with a timestamp at or after
    /// `timestamp_ms`: its offset and position.
    pub fn find_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, usize)>> {
        if self.max_timestamp_ms() < timestamp_ms {
            return Ok(None);
        }
        self.map_or_reopen()?.find_timestamp(timestamp_ms)
    }

    /// Reads frames from the one at `offset` (if published here) within the budgets. With
    /// `force_one`, the first frame is taken even when it alone exceeds `max_bytes`.
    pub fn read_from(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        force_one: bool,
    ) -> Result<Option<SegmentRead>> {
        let m = self.map_or_reopen()?;
        let committed = m.committed_end();
        let Some(pos) = m.locate(offset, committed)? else {
            return Ok(None);
        };
        let (stop, count, next_offset) =
            m.scan_for_read(pos, committed, max_records, max_bytes, force_one)?;
        Ok(Some(SegmentRead {
            frames: m.published_bytes(pos, stop),
            count,
            next_offset,
            at_end: stop == committed,
        }))
    }
}

impl Mapped {
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The committed end, clamped into the data area so that a damaged header can never send
    /// a reader out of bounds.
    pub fn committed_end(&self) -> usize {
        // Acquire (in `published_end`): pairs with the writer's Release store in
        // `finish_batch`; every frame below the loaded value is complete and visible.
        self.data.published_end()
    }

    /// The committed end as stored, checked against the format (in `[4096, capacity]`, a
    /// multiple of 8): an error naming the file and the value when it is not, for readers
    /// that must stop on a damaged header rather than read a clamped end.
    pub fn checked_committed_end(&self) -> Result<usize> {
        let raw = self.data.frontier();
        match usize::try_from(raw) {
            Ok(end)
                if (DATA_START..=self.capacity()).contains(&end)
                    && end.is_multiple_of(format::FRAME_ALIGN) =>
            {
                Ok(end)
            }
            _ => Err(LogError::corrupt(
                &self.path,
                format!(
                    "at byte {}: committed end {raw} is outside the data area [{DATA_START}, {}] or not a multiple of 8",
                    sh::COMMITTED_END,
                    self.capacity()
                ),
            )),
        }
    }

    pub fn durable_end(&self) -> usize {
        let end = self
            .data
            .atomic_u64(sh::DURABLE_END)
            .load(Ordering::Acquire);
        (end as usize).clamp(DATA_START, self.committed_end())
    }

    pub fn is_sealed(&self) -> bool {
        // Acquire: a reader that sees the seal sees the final committed end.
        self.data.atomic_u32(sh::SEALED).load(Ordering::Acquire) != 0
    }

    /// Whether the partition's topic was deleted: nothing follows this segment.
    pub fn is_deleted(&self) -> bool {
        self.data.atomic_u32(sh::DELETED).load(Ordering::Acquire) != 0
    }

    /// After a truncation took records of this file away (or the whole file): the
    /// partition's end offset right after it. `None` while the file is whole.
    pub fn truncated_to(&self) -> Option<u64> {
        // Acquire: pairs with the Release store of the flag, made after the offset's.
        (self.data.atomic_u32(sh::TRUNCATED).load(Ordering::Acquire) != 0).then(|| {
            self.data
                .atomic_u64(sh::TRUNCATED_TO)
                .load(Ordering::Acquire)
        })
    }

    /// The replicated end: `None` when the partition is not replicated (the word is 0),
    /// else the position up to which every in-sync replica holds the records, at most the
    /// committed end.
    pub fn replicated_end(&self) -> Option<usize> {
        let end = self
            .data
            .atomic_u64(sh::REPLICATED_END)
            .load(Ordering::Acquire);
        (end != 0).then(|| (end as usize).clamp(DATA_START, self.committed_end()))
    }

    /// The published bytes `[from, to)`, cut at the committed end (a caller holding an end
    /// loaded earlier gets fewer bytes, never unpublished ones, should recovery after a power
    /// loss have moved the end back).
    pub fn published(&self, from: usize, to: usize) -> &[u8] {
        self.data.published(from..to.max(from))
    }

    /// The published bytes `[from, to)` as a `Bytes` that keeps the mapping alive: the
    /// zero-copy handle for consumers.
    pub fn published_bytes(&self, from: usize, to: usize) -> Bytes {
        assert!(DATA_START <= from && from <= to && to <= self.committed_end());
        Bytes::from_owner(PublishedSlice {
            data: Arc::clone(&self.data),
            from,
            to,
        })
    }

    /// Whether both index files have blocks for `entries` checkpoints.
    pub(crate) fn index_allocated_for(&self, entries: usize) -> bool {
        self.offset_index.allocation_for(entries).is_none()
            && self.time_index.allocation_for(entries).is_none()
    }

    /// Number of index checkpoints readable in both index files.
    pub(crate) fn checkpoint_count(&self) -> usize {
        self.offset_index.count().min(self.time_index.count())
    }

    /// Checkpoint `i` (below `checkpoint_count()`), as the two index files describe it, and
    /// the offset the time index gives it (equal to `offset` in a sound segment).
    pub(crate) fn checkpoint(&self, i: usize) -> (Checkpoint, u64) {
        let (offset, position) = self.offset_index.entry(i);
        let (ts, time_offset) = self.time_index.entry(i);
        (
            Checkpoint {
                offset,
                position,
                max_timestamp_before: ts as i64,
            },
            time_offset,
        )
    }

    /// The published checkpoints.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        (0..self.checkpoint_count())
            .map(|i| self.checkpoint(i).0)
            .collect()
    }

    /// The time index's offset of checkpoint `i`, to check it matches the offset index.
    pub fn time_checkpoint_offset(&self, i: usize) -> u64 {
        self.checkpoint(i).1
    }

    /// The start position of the scan for `offset`: the last checkpoint at or before it.
    fn checkpoint_for_offset(&self, offset: u64, committed: usize) -> usize {
        let count = self.checkpoint_count();
        match self
            .offset_index
            .last_at_or_below(count, offset, |(o, _)| o)
        {
            Some(i) => {
                let pos = self.offset_index.entry(i).1 as usize;
                if (DATA_START..committed).contains(&pos) && pos.is_multiple_of(format::FRAME_ALIGN)
                {
                    pos
                } else {
                    DATA_START
                }
            }
            None => DATA_START,
        }
    }

    /// Walks published frames from `pos` up to `end`, checking structure (not the CRC).
    pub(crate) fn walk<'a>(
        &'a self,
        pos: usize,
        end: usize,
    ) -> impl Iterator<Item = Result<(usize, FrameView<'a>)>> + 'a {
        let mut at = pos;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let buf = self.published(at, end);
            Some(match decode_frame_unchecked_crc(buf) {
                Ok(f) => {
                    let here = at;
                    at += f.padded_len;
                    Ok((here, f))
                }
                Err(e) => {
                    let err = LogError::corrupt(&self.path, format!("at byte {at}: {e}"));
                    at = end;
                    Err(err)
                }
            })
        })
    }

    /// Position of the frame holding `offset`, or `None` when it is not published here.
    pub fn locate(&self, offset: u64, committed: usize) -> Result<Option<usize>> {
        let start = self.checkpoint_for_offset(offset, committed);
        for item in self.walk(start, committed) {
            let (pos, f) = item?;
            if f.offset == offset {
                return Ok(Some(pos));
            }
            if f.offset > offset {
                return Err(LogError::corrupt(
                    &self.path,
                    format!("offset {offset} missing: found {} at byte {pos}", f.offset),
                ));
            }
        }
        Ok(None)
    }

    /// The first published record with a timestamp at or after `timestamp_ms`: its offset
    /// and position.
    pub fn find_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, usize)>> {
        let committed = self.committed_end();
        let count = self.checkpoint_count();
        // The last checkpoint whose records before it are all older than the target.
        let start = match timestamp_ms.checked_sub(1) {
            Some(below) => self
                .time_index
                .last_at_or_below(count, ordered(below), |(t, _)| ordered(t as i64))
                .map(|i| self.offset_index.entry(i).1 as usize)
                .filter(|p| {
                    (DATA_START..committed).contains(p) && p.is_multiple_of(format::FRAME_ALIGN)
                })
                .unwrap_or(DATA_START),
            None => DATA_START,
        };
        for item in self.walk(start, committed) {
            let (pos, f) = item?;
            if f.timestamp_ms >= timestamp_ms {
                return Ok(Some((f.offset, pos)));
            }
        }
        Ok(None)
    }

    /// Reads frames starting at `pos` (which must be a frame start below `committed`),
    /// checking each CRC, until `max_records` or `max_bytes` or the end; with `force_one`, the
    /// first frame is taken even when it alone exceeds `max_bytes`. Returns the end
    /// position, the number of frames and the offset after the last one.
    pub fn scan_for_read(
        &self,
        pos: usize,
        committed: usize,
        max_records: usize,
        max_bytes: usize,
        force_one: bool,
    ) -> Result<(usize, usize, u64)> {
        let mut at = pos;
        let mut n = 0;
        let mut next = 0;
        while at < committed && n < max_records {
            let f = decode_frame(self.published(at, committed))
                .map_err(|e| LogError::corrupt(&self.path, format!("at byte {at}: {e}")))?;
            if (n > 0 || !force_one) && at - pos + f.padded_len > max_bytes {
                break;
            }
            at += f.padded_len;
            n += 1;
            next = f.offset.saturating_add(1);
        }
        Ok((at, n, next))
    }

    /// The offset after the last record below `limit` (a frame boundary at or below the
    /// committed end), found from the last checkpoint before it.
    pub fn offset_at(&self, base_offset: u64, limit: usize) -> Result<u64> {
        let count = self.checkpoint_count();
        let mut next = base_offset;
        let mut at = DATA_START;
        for i in (0..count).rev() {
            let (offset, pos) = self.offset_index.entry(i);
            if (pos as usize) < limit && pos as usize >= DATA_START {
                (next, at) = (offset, pos as usize);
                break;
            }
        }
        for item in self.walk(at, limit) {
            let (_, f) = item?;
            next = f.offset.saturating_add(1);
        }
        Ok(next)
    }

    /// Maps the pages of `range` into this process ahead of reading them.
    pub fn populate_read(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.capacity());
        self.data.populate_read(range.start.min(end)..end);
    }

    /// The futex word tailers wait on (section 5.1 of FORMAT.md).
    pub fn wake_seq(&self) -> &AtomicU32 {
        self.data.atomic_u32(sh::WAKE_SEQ)
    }

    /// Wakes tailers blocked on this segment's futex word, if any are registered.
    pub(crate) fn wake_tailers(&self) {
        wake_waiters(&self.data);
    }
}

/// Wakes the tailers blocked on the futex word of a segment file's header (mapped whole, or
/// only its header page), if any are registered.
pub(crate) fn wake_waiters(header: &MappedFile) {
    // SeqCst fence: orders the store the waiters look for (a publish, a seal, a mark) before
    // the waiter-count load below, pairing with the tailer's SeqCst increment of WAITERS
    // before it re-checks the words (the two sides of a Dekker handshake), so a wake is
    // never lost.
    fence(Ordering::SeqCst);
    if header.atomic_u32(sh::WAITERS).load(Ordering::Relaxed) != 0 {
        let seq: &AtomicU32 = header.atomic_u32(sh::WAKE_SEQ);
        seq.fetch_add(1, Ordering::SeqCst);
        futex_wake_all(seq);
    }
}

/// A published range of a segment, owned by a `Bytes`.
struct PublishedSlice {
    data: Arc<MappedFile>,
    from: usize,
    to: usize,
}

impl AsRef<[u8]> for PublishedSlice {
    fn as_ref(&self) -> &[u8] {
        // Built only for a range below a committed end: published bytes, never rewritten.
        self.data.published(self.from..self.to)
    }
}

//! Appending to a partition: one batch under the writer lock, or several partitions' batches
//! that must all succeed or none ([`AppendGuard`]).

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use super::PartitionLog;
use crate::log::error::{LogError, Result};
use crate::log::format::{self, decode_frame, Record};
use crate::log::segment::SegmentWriter;
use crate::log::util::now_ms;

/// Offsets given to an appended batch: `first_offset .. first_offset + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_offset: u64,
    pub count: u64,
}

/// Bytes of frames a batch of records needs. Checks the batch head too: only the first
/// record may carry one, and it must count the batch's records.
pub fn batch_bytes(records: &[Record<'_>]) -> Result<usize> {
    let mut total = 0usize;
    for (i, r) in records.iter().enumerate() {
        if let Some(head) = &r.batch {
            if i > 0 {
                return Err(LogError::InvalidBatchHead(
                    "only the first record of a batch carries its head",
                ));
            }
            head.check(records.len())
                .map_err(LogError::InvalidBatchHead)?;
        }
        let len = r
            .padded_len()
            .ok_or_else(|| LogError::RecordTooLarge("record over 4 GiB".into()))?;
        total = total
            .checked_add(len)
            .ok_or_else(|| LogError::RecordTooLarge("batch size overflows".into()))?;
    }
    Ok(total)
}

/// The writer lock of one partition, for appends that must succeed together across
/// partitions: lock every partition involved (in a fixed order, e.g. by partition number),
/// [`reserve`](Self::reserve) room in each, and only then append to each. Once every
/// reservation succeeded, the appends cannot fail for lack of space.
pub struct AppendGuard<'a> {
    log: &'a PartitionLog,
    w: MutexGuard<'a, SegmentWriter>,
}

impl AppendGuard<'_> {
    /// Makes room for `bytes` of frames: rolls if they do not fit, and allocates the disk
    /// blocks. Appends of at most that many bytes then cannot fail with `NoSpace`.
    pub fn reserve(&mut self, bytes: usize) -> Result<()> {
        let result = self.log.make_room(&mut self.w, bytes).and_then(|()| {
            let end = self.w.position() + bytes;
            self.w.reserve(end)
        });
        self.log.note_space(&result);
        result
    }

    /// Whether `bytes` of frames can be appended without any file work: they fit in the
    /// active segment (no roll), and its disk blocks and index blocks are reserved already.
    /// Then the append is a copy into the mapping and one store: quick enough for a caller
    /// that must not block.
    pub fn ready_for(&self, bytes: usize) -> bool {
        !self.log.needs_roll(&self.w, bytes) && self.w.reserved_for(self.w.position() + bytes)
    }

    /// Appends a batch, published with one atomic store.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<Appended> {
        let total = batch_bytes(records)?;
        self.append_with(total, records.len() as u64, |w| w.append(records, total))
    }

    /// Appends checked client-built frames without re-encoding them: assigns offsets, and
    /// the current time where a timestamp is 0.
    pub fn append_frames(&mut self, frames: ValidFrames<'_>) -> Result<Appended> {
        let count = frames.count();
        self.append_with(frames.len(), count, |w| {
            w.append_frame_parts(&[frames.head, frames.bytes], count, Some(now_ms()))
        })
    }

    /// Appends frames a cluster follower fetched from its leader, byte for byte: the
    /// offsets are the leader's (checked by [`ReplicaFrames::check`] against this log's
    /// end), the timestamps and batch heads stay as they were.
    pub fn append_replica(&mut self, frames: ReplicaFrames<'_>) -> Result<Appended> {
        if frames.first_offset != self.w.next_offset() {
            return Err(LogError::OffsetOutOfRange {
                offset: frames.first_offset,
                earliest: self.w.next_offset(),
                latest: self.w.next_offset(),
            });
        }
        self.append_with(frames.bytes.len(), frames.count, |w| {
            w.append_frames(frames.bytes, frames.count, None)
        })
    }

    /// Makes room for `bytes` of `count` records, runs `write` (which appends and publishes
    /// them), and moves the partition's end.
    fn append_with(
        &mut self,
        bytes: usize,
        count: u64,
        write: impl FnOnce(&mut SegmentWriter) -> Result<u64>,
    ) -> Result<Appended> {
        if count == 0 {
            return Ok(Appended {
                first_offset: self.w.next_offset(),
                count: 0,
            });
        }
        let result = self
            .log
            .make_room(&mut self.w, bytes)
            .and_then(|()| write(&mut self.w));
        self.log.note_space(&result);
        let first_offset = result?;
        self.log
            .end_offset
            .store(self.w.next_offset(), Ordering::Release);
        self.log.want_spare(&self.w);
        Ok(Appended {
            first_offset,
            count,
        })
    }
}

/// Client-built frames (binary produce) that passed [`ValidFrames::check`]: every frame
/// whole, valid, CRC-correct and within the record size limit. Appending them needs no
/// second look.
#[derive(Debug, Clone, Copy)]
pub struct ValidFrames<'a> {
    /// A frame the server built to go first (the client's first frame with a batch head),
    /// or nothing.
    head: &'a [u8],
    bytes: &'a [u8],
    count: u64,
}

impl<'a> ValidFrames<'a> {
    /// Checks every frame of `frames`, and that no record's key, value and headers add up
    /// to more than `max_record_bytes`.
    pub fn check(frames: &'a [u8], max_record_bytes: u64) -> Result<Self> {
        let mut at = 0;
        let mut count = 0;
        while at < frames.len() {
            let f = decode_frame(&frames[at..]).map_err(|source| LogError::InvalidFrame {
                position: at,
                source,
            })?;
            if f.batch_range().is_some() {
                // Batch heads carry producer ids and idempotency keys, which the broker
                // checks and writes itself.
                return Err(LogError::InvalidFrame {
                    position: at,
                    source: format::FrameError::BadBatchHead(format::CLIENT_BATCH_HEAD),
                });
            }
            let payload = (f.headers_range.end - format::frame::FIXED_SIZE) as u64;
            if payload > max_record_bytes {
                return Err(LogError::RecordTooLarge(format!(
                    "a record of {payload} bytes is over max_record_bytes ({max_record_bytes})"
                )));
            }
            at += f.padded_len;
            count += 1;
        }
        Ok(ValidFrames {
            head: &[],
            bytes: frames,
            count,
        })
    }

    /// Checked client frames whose first one the server built again with a batch head (an
    /// idempotency key): `head` goes first, then `rest`, the client's other frames as they
    /// were checked; `count` frames in all.
    pub(crate) fn with_head(head: &'a [u8], rest: &'a [u8], count: u64) -> Self {
        ValidFrames {
            head,
            bytes: rest,
            count,
        }
    }

    /// Bytes of all the frames.
    pub fn len(&self) -> usize {
        self.head.len() + self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many frames.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Frames fetched from a cluster leader, checked: whole batches of whole, CRC-correct
/// frames at consecutive offsets from `first_offset`.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaFrames<'a> {
    first_offset: u64,
    bytes: &'a [u8],
    count: u64,
}

impl<'a> ReplicaFrames<'a> {
    /// Checks frames read from a leader from `first_offset` on, and keeps the longest part
    /// that ends between batches (a batch with a head is appended whole; the rest is
    /// fetched again). A frame at the wrong offset, or damaged, is an error.
    pub fn check(bytes: &'a [u8], first_offset: u64) -> Result<Self> {
        let (mut at, mut count) = (0, 0u64);
        let (mut whole_bytes, mut whole_count) = (0, 0);
        let mut batch_end: Option<u64> = None;
        while at < bytes.len() {
            let f = decode_frame(&bytes[at..]).map_err(|source| LogError::InvalidFrame {
                position: at,
                source,
            })?;
            if f.offset != first_offset + count {
                return Err(LogError::ReplicaMismatch(format!(
                    "frame {count} fetched from offset {first_offset} holds offset {}",
                    f.offset
                )));
            }
            if let Some(head) = f.batch() {
                batch_end = Some(f.offset + u64::from(head.record_count));
            }
            at += f.padded_len;
            count += 1;
            if batch_end.is_none_or(|end| f.offset + 1 >= end) {
                batch_end = None;
                (whole_bytes, whole_count) = (at, count);
            }
        }
        Ok(ReplicaFrames {
            first_offset,
            bytes: &bytes[..whole_bytes],
            count: whole_count,
        })
    }

    /// How many frames (records).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of all the frames.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl PartitionLog {
    /// Appends frames fetched from a cluster leader (see [`AppendGuard::append_replica`]).
    pub fn append_replica(&self, frames: ReplicaFrames<'_>) -> Result<Appended> {
        self.lock()?.append_replica(frames)
    }

    /// Locks the writer for a group of appends that must all happen or none: see
    /// [`AppendGuard`].
    pub fn lock(&self) -> Result<AppendGuard<'_>> {
        Ok(AppendGuard {
            log: self,
            w: self.lock_writer()?,
        })
    }

    /// The writer lock, if it is free right now: for a caller that must not wait (an async
    /// task), which then checks [`AppendGuard::ready_for`] before appending.
    pub fn try_lock(&self) -> Result<Option<AppendGuard<'_>>> {
        Ok(self
            .try_lock_writer()?
            .map(|w| AppendGuard { log: self, w }))
    }
    /// Appends a batch and publishes it to readers with one atomic store. All or nothing:
    /// on error no record of the batch is visible.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Appended> {
        let mut guard = self.lock()?;
        guard.append(records)
    }
    /// Appends frames built by a client (binary produce) without re-encoding them: checks
    /// every frame, assigns offsets, and the current time where a timestamp is 0.
    pub fn append_frames(&self, frames: ValidFrames<'_>) -> Result<Appended> {
        self.lock()?.append_frames(frames)
    }
    /// Rolls to a new segment if `bytes` do not fit in the active one, or if the active one
    /// is larger than `segment_bytes` (made to fit one big batch, which keeps it to itself;
    /// or made under a larger setting) and holds records.
    pub(super) fn make_room(&self, w: &mut SegmentWriter, bytes: usize) -> Result<()> {
        if self.needs_roll(w, bytes) {
            self.roll_locked(w, bytes)?;
        }
        Ok(())
    }

    /// Whether appending `bytes` needs a roll first (see `make_room`).
    fn needs_roll(&self, w: &SegmentWriter, bytes: usize) -> bool {
        let oversized = w.segment().capacity() as u64 > self.config.segment_bytes;
        bytes > w.remaining() || (oversized && !w.is_empty())
    }
}

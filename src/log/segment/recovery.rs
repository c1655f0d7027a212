//! Recovering one segment after an unclean stop: keep the index checkpoints that agree with
//! the data, validate the frames after them, cut a torn tail, and hand the segment to a
//! writer. Runs on a segment owned by value, before anyone else can read it: the only time
//! published bytes may change.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::writer::WriterState;
use super::{ReservePolicy, Segment, SegmentWriter, DATA_START};
use crate::log::error::{LogError, Result};
use crate::log::format::{self, decode_frame, segment_header as sh, FrameError};

/// Where and why the frames of a segment stop making sense before its committed end: what
/// a crash in the middle of writing leaves behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at_byte}: {cause}")]
pub struct TornTail {
    pub at_byte: usize,
    pub cause: TornCause,
}

/// What is wrong at a torn tail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TornCause {
    #[error("{0}")]
    Frame(FrameError),
    #[error("offset {found} where {expected} was expected")]
    OffsetGap { expected: u64, found: u64 },
    #[error("offset u64::MAX")]
    LastOffset,
    /// A batch head announced more records than follow it: the batch was not published
    /// whole, so none of it is kept (FORMAT.md §6).
    #[error("a batch of {announced} records has only {found}")]
    IncompleteBatch { announced: u32, found: u32 },
}

/// What recovery found in a segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentRecovery {
    /// Bytes discarded from a torn tail (between the last valid frame and the old end).
    pub truncated_bytes: u64,
    /// Index checkpoints rebuilt from the data.
    pub rebuilt_checkpoints: usize,
    /// Where the scan stopped early, if it did.
    pub torn: Option<TornTail>,
}

impl Segment {
    /// Validates the segment from its last trustworthy checkpoint (at or below `trust_end`)
    /// to its committed end, rebuilding index entries on the way. With `repair`, a torn tail
    /// is cut off: the committed end moves back to the last whole, valid frame and everything
    /// after it is zeroed. Without, a bad frame is an error. Needs a writable mapping; the
    /// segment is owned by value, so no reader exists yet.
    pub(crate) fn recover(
        mut self,
        trust_end: usize,
        repair: bool,
        reserve: ReservePolicy,
    ) -> Result<(SegmentWriter, SegmentRecovery)> {
        let mut m = self.take_mapping()?;
        if !m.data.is_writable() {
            // Recovery stores into the header and indexes.
            return Err(LogError::corrupt(
                &self.path,
                "a segment opened read-only cannot be recovered",
            ));
        }
        let committed = m.committed_end();
        let trust_end = trust_end.clamp(DATA_START, committed);
        let base = self.base_offset();
        let interval = self.index_interval();
        let capacity = m.offset_index.capacity();
        // Room for every checkpoint the scan below may rebuild, before it writes any.
        self.allocate_index(&m, (committed - DATA_START) / interval + 1)?;
        // The last checkpoint that is consistent and lies in trusted data.
        let count = m.checkpoint_count();
        let mut state = WriterState::empty(base);
        let mut prev_pos = DATA_START as u64;
        while state.checkpoints < count {
            let (c, time_offset) = m.checkpoint(state.checkpoints);
            let ok = c.position > prev_pos
                && (c.position as usize) < trust_end
                && c.position.is_multiple_of(format::FRAME_ALIGN as u64)
                && c.offset > state.next_offset
                && time_offset == c.offset
                && c.max_timestamp_before >= state.max_timestamp_ms
                && decode_frame(m.published(c.position as usize, committed))
                    .map(|f| f.offset == c.offset)
                    .unwrap_or(false);
            if !ok {
                break;
            }
            prev_pos = c.position;
            state = WriterState {
                position: c.position as usize,
                next_offset: c.offset,
                max_timestamp_ms: c.max_timestamp_before,
                last_checkpoint_pos: c.position as usize,
                checkpoints: state.checkpoints + 1,
            };
        }
        // The writer starts from the kept checkpoint (or the data start) with every entry
        // after it dropped.
        m.offset_index.truncate(state.checkpoints)?;
        m.time_index.truncate(state.checkpoints)?;
        let mut report = SegmentRecovery::default();
        let mut rebuilt = Vec::new();
        // The batch whose head the scan saw last and whose records are not all seen yet:
        // the state before its head, the checkpoints rebuilt before it, its count and how
        // many of its records were seen.
        let mut open_batch: Option<(WriterState, usize, u32, u32)> = None;
        while state.position < committed {
            let at = state.position;
            let torn = |cause| Some(TornTail { at_byte: at, cause });
            let f = match decode_frame(m.published(at, committed)) {
                Ok(f) if f.offset == u64::MAX => {
                    report.torn = torn(TornCause::LastOffset);
                    break;
                }
                Ok(f) if f.offset == state.next_offset => f,
                Ok(f) => {
                    report.torn = torn(TornCause::OffsetGap {
                        expected: state.next_offset,
                        found: f.offset,
                    });
                    break;
                }
                Err(e) => {
                    report.torn = torn(TornCause::Frame(e));
                    break;
                }
            };
            if let Some(head) = f.batch() {
                if let Some((_, _, announced, found)) = open_batch {
                    report.torn = torn(TornCause::IncompleteBatch { announced, found });
                    break;
                }
                open_batch = Some((state, rebuilt.len(), head.record_count, 0));
            }
            if state.checkpoint_due(at, interval, capacity) {
                rebuilt.push((at, f.offset, state.max_timestamp_ms));
                state.checkpoints += 1;
                state.last_checkpoint_pos = at;
            }
            state.position += f.padded_len;
            state.next_offset += 1;
            state.max_timestamp_ms = state.max_timestamp_ms.max(f.timestamp_ms);
            if let Some((_, _, announced, found)) = &mut open_batch {
                *found += 1;
                if found == announced {
                    open_batch = None;
                }
            }
        }
        if let Some((before, rebuilt_before, announced, found)) = open_batch {
            // A batch is published whole or not at all: cut back to its head.
            if report.torn.is_none() {
                report.torn = Some(TornTail {
                    at_byte: state.position,
                    cause: TornCause::IncompleteBatch { announced, found },
                });
            }
            state = before;
            rebuilt.truncate(rebuilt_before);
        }
        report.rebuilt_checkpoints = rebuilt.len();
        if let Some(torn) = &report.torn {
            if !repair {
                return Err(LogError::corrupt(&self.path, torn.to_string()));
            }
            report.truncated_bytes = (committed - state.position) as u64;
        }
        if repair {
            self.cut_tail(&mut m, state.position)?;
        }
        self.put_mapping(m);
        let w = SegmentWriter::resume(Arc::new(self), state, &rebuilt, reserve)?;
        Ok((w, report))
    }

    /// Moves the committed end back to `end` (and the durable end with it), then zeroes
    /// everything after it, including any frames written but never published before a
    /// crash, releasing blocks where the file system can.
    fn cut_tail(&self, m: &mut super::Mapped, end: usize) -> Result<()> {
        let data = Arc::get_mut(&mut m.data)
            .ok_or_else(|| LogError::corrupt(&self.path, "recovering a segment in use"))?;
        data.set_frontier(end as u64);
        data.atomic_u64(sh::DURABLE_END)
            .fetch_min(end as u64, Ordering::AcqRel);
        // What was cut was not replicated either (0, not replicated, stays 0).
        let replicated = data.atomic_u64(sh::REPLICATED_END);
        if replicated.load(Ordering::Acquire) > end as u64 {
            replicated.store(end as u64, Ordering::Release);
        }
        let capacity = self.capacity();
        if data.punch_hole_mut(end..capacity).is_ok() {
            // Blocks past the kept page are free again; the writer will re-allocate.
            let kept = end.next_multiple_of(4096) as u64;
            let indexes = m.offset_index.allocated_bytes() + m.time_index.allocated_bytes();
            self.give_back(self.charged_bytes().saturating_sub(kept + indexes));
            return Ok(());
        }
        // No hole punching here: write zeros, a page at a time, over pages that hold data.
        let mut at = end;
        while at < capacity {
            let page_end = (at + 1).next_multiple_of(4096).min(capacity);
            let page = data.bytes_mut(at..page_end);
            if page.iter().all(|&b| b == 0) && at > end + (1 << 20) {
                break;
            }
            page.fill(0);
            at = page_end;
        }
        Ok(())
    }
}

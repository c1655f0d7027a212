//! The single writer of the active segment: it reserves space ahead of itself, encodes or
//! copies frames above the committed end, writes index checkpoints, and publishes a batch
//! with one Release store of the committed end (`FORMAT.md` §3).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::space::{ahead_bytes, MIN_PREFAULT_AHEAD_BYTES, MIN_RESERVE_AHEAD_BYTES};
use super::{Mapped, Segment, DATA_START, READ_AHEAD_AFTER_BYTES};
use crate::log::error::{LogError, Result};
use crate::log::format::{self, get_u32, get_u64, Record};
use crate::log::index::IndexWriter;
use crate::log::mmap::Appender;
use crate::log::worker::WorkerHandle;

/// The writer's view of the active segment. There is exactly one per segment: it holds the
/// segment's appenders, of which there is one per file, while its files are open. An idle
/// writer parks: it gives up its mappings (see [`SegmentWriter::park_if_idle`]), and maps
/// the files again for its next append.
#[derive(Debug)]
pub struct SegmentWriter {
    seg: Arc<Segment>,
    /// The mapped files and their appenders; `None` while parked.
    files: Option<WriterFiles>,
    state: WriterState,
    reserve: ReservePolicy,
}

/// The active segment's mapping and the appenders of its three files.
#[derive(Debug)]
struct WriterFiles {
    m: Arc<Mapped>,
    data: Appender,
    checkpoints: CheckpointWriter,
}

/// The writer's files, mapped again if the writer was parked (blocks then: opens and maps).
fn open_files<'a>(
    files: &'a mut Option<WriterFiles>,
    seg: &Arc<Segment>,
) -> Result<&'a mut WriterFiles> {
    match files {
        Some(open) => Ok(open),
        None => {
            let m = seg.reopen_for_writer()?;
            Ok(files.insert(WriterFiles::take(seg, m)?))
        }
    }
}

impl WriterFiles {
    /// The appenders of mapping `m` of `seg`.
    fn take(seg: &Segment, m: Arc<Mapped>) -> Result<Self> {
        let no_writer = |what: &str| {
            LogError::corrupt(
                seg.path(),
                format!("{what}: the segment is read-only or has a writer already"),
            )
        };
        let data = m.data.appender().ok_or_else(|| no_writer("data file"))?;
        let offset = m
            .offset_index
            .writer()
            .ok_or_else(|| no_writer("offset index"))?;
        let time = m
            .time_index
            .writer()
            .ok_or_else(|| no_writer("time index"))?;
        let checkpoints = CheckpointWriter {
            offset,
            time,
            interval: seg.index_interval(),
            capacity: m.offset_index.capacity(),
        };
        Ok(WriterFiles {
            m,
            data,
            checkpoints,
        })
    }
}

/// How a writer reserves disk blocks and pre-faults pages ahead of itself.
#[derive(Debug, Clone)]
pub struct ReservePolicy {
    /// Blocks are allocated this many bytes at a time.
    pub chunk_bytes: usize,
    /// Pages are pre-faulted up to this far ahead of the writer.
    pub prefault_bytes: usize,
    /// When set, the next chunk is reserved and pre-faulted on the file worker's thread
    /// before the writer needs it; otherwise the writer does it itself when it gets there.
    pub worker: Option<WorkerHandle>,
}

/// Where a writer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterState {
    /// Equal to the published committed end.
    pub position: usize,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub last_checkpoint_pos: usize,
    /// Checkpoints written (and published with the last batch).
    pub checkpoints: usize,
}

impl WriterState {
    /// An empty segment's.
    pub(crate) fn empty(base_offset: u64) -> Self {
        WriterState {
            position: DATA_START,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            last_checkpoint_pos: DATA_START,
            checkpoints: 0,
        }
    }

    /// Whether a checkpoint is due for the frame at `pos`, given the index interval and
    /// capacity. The writer and recovery apply this same rule frame by frame, so recovery
    /// rebuilds exactly the checkpoints the writer would have written.
    pub(crate) fn checkpoint_due(&self, pos: usize, interval: usize, capacity: usize) -> bool {
        pos - self.last_checkpoint_pos >= interval && self.checkpoints < capacity
    }
}

/// The two index files' writers.
#[derive(Debug)]
struct CheckpointWriter {
    offset: IndexWriter,
    time: IndexWriter,
    interval: usize,
    capacity: usize,
}

impl CheckpointWriter {
    /// Writes (does not publish) a checkpoint for the frame at `pos` holding `offset`, if
    /// one is due there; `max_ts_before` is the largest timestamp of the records before it.
    fn write_if_due(
        &mut self,
        state: &mut WriterState,
        pos: usize,
        offset: u64,
        max_ts_before: i64,
    ) -> bool {
        if !state.checkpoint_due(pos, self.interval, self.capacity) {
            return false;
        }
        self.write(state.checkpoints, pos, offset, max_ts_before) && {
            state.checkpoints += 1;
            state.last_checkpoint_pos = pos;
            true
        }
    }

    fn write(&mut self, i: usize, pos: usize, offset: u64, max_ts_before: i64) -> bool {
        self.offset.write_entry(i, offset, pos as u64)
            && self.time.write_entry(i, max_ts_before as u64, offset)
    }

    fn publish(&mut self, count: usize) {
        self.offset.publish(count);
        self.time.publish(count);
    }
}

impl SegmentWriter {
    /// A writer for a freshly created (or adopted) segment.
    pub fn new(seg: Arc<Segment>, reserve: ReservePolicy) -> Result<Self> {
        let state = WriterState::empty(seg.base_offset());
        let w = Self::with_state(seg, state, reserve)?;
        w.request_prefault();
        Ok(w)
    }

    /// A writer that goes on from `state`, where recovery left the segment, first writing
    /// and publishing the checkpoints recovery found missing: `(position, offset,
    /// max_timestamp_before)` of each, the last ones of `state.checkpoints`.
    pub(crate) fn resume(
        seg: Arc<Segment>,
        state: WriterState,
        rebuilt: &[(usize, u64, i64)],
        reserve: ReservePolicy,
    ) -> Result<Self> {
        let mut w = Self::with_state(seg, state, reserve)?;
        let first = state.checkpoints - rebuilt.len();
        let files = open_files(&mut w.files, &w.seg)?;
        for (i, &(pos, offset, ts)) in rebuilt.iter().enumerate() {
            files.checkpoints.write(first + i, pos, offset, ts);
        }
        files.checkpoints.publish(state.checkpoints);
        w.seg
            .next_offset
            .store(state.next_offset, Ordering::Release);
        w.seg
            .max_timestamp_ms
            .store(state.max_timestamp_ms, Ordering::Release);
        // The block holding the committed end is allocated; everything after it was released.
        let reserved = state.position.next_multiple_of(4096).min(w.seg.capacity());
        w.seg.allocated_end.store(reserved, Ordering::Release);
        w.seg.prefaulted_end.store(reserved, Ordering::Release);
        Ok(w)
    }

    fn with_state(seg: Arc<Segment>, state: WriterState, reserve: ReservePolicy) -> Result<Self> {
        let m = seg
            .mapping_if_open()
            .ok_or_else(|| LogError::corrupt(seg.path(), "a new writer's segment is not mapped"))?;
        let files = WriterFiles::take(&seg, m)?;
        Ok(SegmentWriter {
            seg,
            files: Some(files),
            state,
            reserve,
        })
    }

    /// Gives up the mappings of an idle segment: when nothing was appended or read since
    /// `idle_since_ms` and everything is durable (a parked segment needs no flush). The
    /// next append maps the files again. Returns whether it parked (or was parked).
    pub(crate) fn park_if_idle(&mut self, idle_since_ms: i64) -> bool {
        let Some(files) = &self.files else {
            // Parked already; a reader may have mapped the segment again since.
            return self.seg.close_parked(idle_since_ms);
        };
        if self.seg.last_used_ms() > idle_since_ms || files.m.durable_end() < self.state.position {
            return false;
        }
        self.files = None;
        self.seg.park(self.state.position);
        true
    }

    /// Maps the files again if the writer was parked (blocks then).
    pub(crate) fn unpark(&mut self) -> Result<()> {
        open_files(&mut self.files, &self.seg).map(|_| ())
    }

    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    pub fn position(&self) -> usize {
        self.state.position
    }

    pub fn next_offset(&self) -> u64 {
        self.state.next_offset
    }

    pub fn is_empty(&self) -> bool {
        self.state.position == DATA_START
    }

    /// Bytes still free for frames.
    pub fn remaining(&self) -> usize {
        self.seg.capacity() - self.state.position
    }

    /// How far ahead the writer keeps disk blocks and pre-faulted pages: it grows with the
    /// data (see [`ahead_bytes`]) up to the configured distances.
    fn ahead(&self) -> (usize, usize) {
        (
            ahead_bytes(
                self.state.position,
                MIN_RESERVE_AHEAD_BYTES,
                self.reserve.chunk_bytes,
            ),
            ahead_bytes(
                self.state.position,
                MIN_PREFAULT_AHEAD_BYTES,
                self.reserve.prefault_bytes,
            ),
        )
    }

    /// Makes sure disk blocks exist below `end` (and index blocks for its checkpoints)
    /// before the copy. With a file worker the pages are usually pre-faulted already (and if
    /// it lags, the copy takes the faults itself); without one the writer pre-faults ahead
    /// of itself.
    pub(crate) fn reserve(&mut self, end: usize) -> Result<()> {
        if end >= DATA_START + READ_AHEAD_AFTER_BYTES {
            self.seg.enable_read_ahead();
        }
        let entries = self.checkpoints_for(end);
        let files = open_files(&mut self.files, &self.seg)?;
        self.seg.allocate_index(&files.m, entries)?;
        let (chunk, prefault) = self.ahead();
        match self.reserve.worker {
            Some(_) => self.seg.allocate_to(end, chunk),
            None if end > self.seg.prefaulted_end() => self
                .seg
                .prefault_to(end.max(self.state.position + prefault), chunk),
            None => Ok(()),
        }
    }

    /// Whether everything an append up to `end` needs is reserved already: disk blocks below
    /// `end`, and index blocks for its checkpoints. Then [`SegmentWriter::reserve`] does no
    /// file work.
    pub(crate) fn reserved_for(&self, end: usize) -> bool {
        self.files
            .as_ref()
            .is_some_and(|f| f.m.index_allocated_for(self.checkpoints_for(end)))
            && self.seg.allocated_end() >= end
            // Pre-faulted too: a first touch of a fresh page would go through the file
            // system's page_mkwrite (a journal start) on the caller's thread.
            && self.seg.prefaulted_end() >= end
            // And no read-ahead to switch on: `reserve` would madvise the whole segment.
            && (end < DATA_START + READ_AHEAD_AFTER_BYTES || self.seg.read_ahead_enabled())
    }

    /// Checkpoints the index must have room for once the writer reaches `end`: at most one
    /// per interval of data, and one more where the batch starts.
    fn checkpoints_for(&self, end: usize) -> usize {
        self.state.checkpoints
            + end.saturating_sub(self.state.last_checkpoint_pos) / self.seg.index_interval()
            + 1
    }

    /// Keeps the file worker busy while less than the pre-fault distance is ready ahead of
    /// the writer: at most one job per segment is queued.
    fn request_prefault(&self) {
        let Some(worker) = &self.reserve.worker else {
            return;
        };
        let (chunk, prefault) = self.ahead();
        let ready = self.seg.prefaulted_end();
        if ready < self.state.position + prefault / 2
            && ready < self.seg.capacity()
            && !self.seg.prefault_requested.swap(true, Ordering::Relaxed)
        {
            let seg = Arc::downgrade(&self.seg);
            worker.submit(move || Segment::prefault_job(seg, prefault, chunk));
        }
    }

    /// Appends records whose padded lengths sum to `total_bytes` (which must fit in
    /// `remaining()`), then publishes them. Returns the first offset.
    pub fn append(&mut self, records: &[Record<'_>], total_bytes: usize) -> Result<u64> {
        let start = self.state.position;
        let end = start + total_bytes;
        self.reserve(end)?;
        let first = self.state.next_offset;
        let files = open_files(&mut self.files, &self.seg)?;
        let buf = files.data.unpublished_mut(start..end);
        let mut at = 0;
        let mut max_ts = self.state.max_timestamp_ms;
        for (i, r) in records.iter().enumerate() {
            let len = r.padded_len().expect("caller checked frame sizes");
            let offset = first + i as u64;
            files
                .checkpoints
                .write_if_due(&mut self.state, start + at, offset, max_ts);
            format::encode_frame(&mut buf[at..at + len], offset, r);
            max_ts = max_ts.max(r.timestamp_ms);
            at += len;
        }
        debug_assert_eq!(at, total_bytes);
        self.finish_batch(end, records.len() as u64, max_ts)?;
        Ok(first)
    }

    /// Appends already-encoded, already-validated frames (binary produce): assigns their
    /// offsets, and the server's time `now_ms` to frames whose timestamp is 0 (with `None`,
    /// timestamps stay as they are: a copy of stored frames), then publishes.
    pub fn append_frames(&mut self, frames: &[u8], count: u64, now_ms: Option<i64>) -> Result<u64> {
        self.append_frame_parts(&[frames], count, now_ms)
    }

    /// [`SegmentWriter::append_frames`] of frames given in consecutive parts (a frame the
    /// server built, then a client's): each is copied once, into the mapping.
    pub fn append_frame_parts(
        &mut self,
        parts: &[&[u8]],
        count: u64,
        now_ms: Option<i64>,
    ) -> Result<u64> {
        let start = self.state.position;
        let end = start + parts.iter().map(|p| p.len()).sum::<usize>();
        self.reserve(end)?;
        let first = self.state.next_offset;
        let files = open_files(&mut self.files, &self.seg)?;
        let buf = files.data.unpublished_mut(start..end);
        let mut filled = 0;
        for part in parts {
            buf[filled..filled + part.len()].copy_from_slice(part);
            filled += part.len();
        }
        let mut at = 0;
        let mut max_ts = self.state.max_timestamp_ms;
        for i in 0..count {
            let len = get_u32(&buf[at..], format::frame::LENGTH) as usize;
            let padded = format::align_up(len);
            files
                .checkpoints
                .write_if_due(&mut self.state, start + at, first + i, max_ts);
            let frame = &mut buf[at..at + padded];
            format::set_frame_offset(frame, first + i);
            let mut ts = get_u64(frame, format::frame::TIMESTAMP_MS) as i64;
            if let (0, Some(now_ms)) = (ts, now_ms) {
                format::set_frame_timestamp(frame, now_ms);
                ts = now_ms;
            }
            max_ts = max_ts.max(ts);
            at += padded;
        }
        self.finish_batch(end, count, max_ts)?;
        Ok(first)
    }

    /// Publishes the batch written from the current position up to `end`.
    fn finish_batch(&mut self, end: usize, count: u64, max_ts: i64) -> Result<()> {
        self.state.position = end;
        self.state.next_offset += count;
        self.state.max_timestamp_ms = max_ts;
        // Release (in the appender): the frames written above happen-before any Acquire load
        // that sees this committed end, in this process or any other mapping the file. This
        // single store is the publication of the whole batch.
        self.seg.touch();
        // Mapped already: the append that wrote the batch mapped them.
        let files = open_files(&mut self.files, &self.seg)?;
        files.data.publish(end as u64);
        files.checkpoints.publish(self.state.checkpoints);
        let seg = &self.seg;
        seg.max_timestamp_ms.store(max_ts, Ordering::Release);
        seg.next_offset
            .store(self.state.next_offset, Ordering::Release);
        files.m.wake_tailers();
        self.request_prefault();
        Ok(())
    }

    /// Gives up the segment without sealing it (its roll finishes in the background).
    pub fn into_segment(self) -> Arc<Segment> {
        self.seg
    }

    /// Seals the segment (after the next one exists) and releases its unused blocks, once
    /// the appenders are gone. A parked writer maps its files again for it (blocks).
    pub fn seal(mut self) -> Result<()> {
        self.unpark()?;
        let seg = self.into_segment();
        seg.seal();
        seg.release_unused();
        Ok(())
    }

    /// Seals an empty segment whose file a new one just replaced under the same name: the
    /// seal reaches whoever still maps the old file; its blocks are not released (that goes
    /// through the path, which names the new file now).
    pub(crate) fn seal_replaced(mut self) -> Result<()> {
        self.unpark()?;
        self.into_segment().seal();
        Ok(())
    }
}

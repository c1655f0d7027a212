//! A partition's log: an ordered run of segments with one writer and lock-free readers.

use crate::log::segment::now_ms;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::error::{LogError, Result};
use super::format::{
    self, decode_frame, decode_frame_unchecked_crc, FrameView, HeaderIter, Record,
};
use super::prefault::PrefaultHandle;
use super::quota::DiskQuota;
use super::segment::{
    spare_path, ReservePolicy, Segment, SegmentHeader, SegmentWriter, DATA_START, SPARE_BASE_OFFSET,
};

/// The largest `segment_bytes`: 64 GiB. A segment is mapped whole, and its index files are
/// sized from it.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 36;

/// Tunables of a partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Size of a new segment file; the active segment rolls when a batch does not fit. A
    /// single batch larger than this gets a segment of its own, sized to fit it.
    pub segment_bytes: u64,
    /// Bytes of frames between two index checkpoints.
    pub index_interval_bytes: u32,
    /// Disk blocks are allocated (`fallocate`) ahead of the writer this much at a time: at
    /// most this much disk is allocated but unused per active segment. Larger chunks mean
    /// fewer, larger extents and cheaper page faults.
    pub reserve_chunk_bytes: u64,
    /// Pages are pre-faulted for writing up to this far ahead of the writer: at most this
    /// much memory holds zeroed pages waiting for data, per active segment.
    pub prefault_bytes: u64,
    /// Pre-fault on this prefaulter's thread, off the append path (see
    /// [`super::prefault`]). Without one, the writer pre-faults itself when it gets there.
    pub prefaulter: Option<PrefaultHandle>,
    /// A disk quota shared with other partitions (`max_disk_bytes`).
    pub quota: Option<Arc<DiskQuota>>,
}

impl LogConfig {
    fn reserve_policy(&self) -> ReservePolicy {
        ReservePolicy {
            chunk_bytes: self.reserve_chunk_bytes as usize,
            prefault_bytes: self.prefault_bytes as usize,
            prefaulter: self.prefaulter.clone(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            reserve_chunk_bytes: 16 << 20,
            prefault_bytes: 4 << 20,
            prefaulter: None,
            quota: None,
        }
    }
}

/// Offsets given to an appended batch: `first_offset .. first_offset + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_offset: u64,
    pub count: u64,
}

/// Bytes of frames a batch of records needs.
pub fn batch_bytes(records: &[Record<'_>]) -> Result<usize> {
    let mut total = 0usize;
    for r in records {
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

    /// Appends a batch, published with one atomic store.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<Appended> {
        let total = batch_bytes(records)?;
        if records.is_empty() {
            return Ok(Appended {
                first_offset: self.w.next_offset(),
                count: 0,
            });
        }
        let result = self
            .log
            .make_room(&mut self.w, total)
            .and_then(|()| self.w.append(records, total));
        self.log.note_space(&result);
        let first_offset = result?;
        self.log
            .end_offset
            .store(self.w.next_offset(), Ordering::Release);
        self.log.want_spare(&self.w);
        Ok(Appended {
            first_offset,
            count: records.len() as u64,
        })
    }
}

/// What opening a partition found and did.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Bytes cut from torn tails.
    pub truncated_bytes: u64,
    /// Index checkpoints rebuilt from the data.
    pub rebuilt_checkpoints: usize,
    /// Segments removed because they lay beyond a truncated (torn) segment.
    pub removed_segments: Vec<u64>,
    /// Leftovers of an interrupted segment creation, removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Files that are not part of the format: reported, left alone.
    pub stray_files: Vec<PathBuf>,
}

/// Records read from a partition: zero-copy views of the mappings.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    /// The frames as they lie in the segments, one chunk per segment touched. Each `Bytes`
    /// points into a mapping and keeps it alive.
    pub chunks: Vec<Bytes>,
    pub record_count: usize,
    /// The offset to read next.
    pub next_offset: u64,
    /// The partition's end offset when the read happened.
    pub high_watermark: u64,
}

/// One record of a [`ReadBatch`], its parts sliced (not copied) from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub attributes: u32,
    pub key: Option<Bytes>,
    pub value: Bytes,
    headers: Bytes,
}

impl StoredRecord {
    pub fn value_is_json(&self) -> bool {
        self.attributes & format::attributes::VALUE_JSON != 0
    }

    /// The `(name, value)` headers.
    pub fn headers(&self) -> HeaderIter<'_> {
        HeaderIter::new_validated(&self.headers)
    }
}

impl ReadBatch {
    /// Total bytes of frames.
    pub fn byte_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// The frames, borrowed. The read already checked each one.
    pub fn frames(&self) -> impl Iterator<Item = FrameView<'_>> {
        self.chunks.iter().flat_map(|chunk| frames_of(chunk))
    }

    /// The records as owned, zero-copy `Bytes` slices.
    pub fn records(&self) -> impl Iterator<Item = StoredRecord> + '_ {
        self.chunks.iter().flat_map(|chunk| {
            frames_of(chunk).map(move |f| {
                let base = f.bytes.as_ptr() as usize - chunk.as_ptr() as usize;
                let slice = |r: std::ops::Range<usize>| chunk.slice(base + r.start..base + r.end);
                StoredRecord {
                    offset: f.offset,
                    timestamp_ms: f.timestamp_ms,
                    attributes: f.attributes,
                    key: f.key_range.clone().map(slice),
                    value: slice(f.value_range.clone()),
                    headers: slice(f.headers_range.clone()),
                }
            })
        })
    }
}

/// Walks the frames of a chunk that was validated when it was read.
fn frames_of(chunk: &[u8]) -> impl Iterator<Item = FrameView<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let f = decode_frame_unchecked_crc(chunk.get(at..)?).ok()?;
        at += f.padded_len;
        Some(f)
    })
}

/// Checks a buffer of client-built frames (binary produce): every frame whole, valid and
/// CRC-correct. Returns the number of frames.
pub fn validate_frames(frames: &[u8]) -> Result<u64> {
    let mut at = 0;
    let mut count = 0;
    while at < frames.len() {
        let f = decode_frame(&frames[at..]).map_err(|source| LogError::InvalidFrame {
            position: at,
            source,
        })?;
        at += f.padded_len;
        count += 1;
    }
    Ok(count)
}

/// A roll to finish: (old segment, new segment, the new one's temporary file name).
type PendingRoll = (Arc<Segment>, Arc<Segment>, String);

/// Rolls prepared and finished off the append path: a spare segment created ahead of time,
/// and rolls whose new segment still has temporary file names and whose old segment is not
/// sealed yet. Shared (weakly) with the prefaulter thread, which does that work.
#[derive(Debug)]
pub struct Rolls {
    dir: PathBuf,
    capacity_bytes: u64,
    index_interval_bytes: u32,
    quota: Option<Arc<DiskQuota>>,
    /// A spare segment and its temporary name, ready to be adopted.
    spare: Mutex<Option<(Segment, String)>>,
    spare_requested: AtomicBool,
    next_spare: AtomicU64,
    /// Rolls to finish, oldest first: (old segment, new segment, its temporary name). Held
    /// only to queue or take entries. Lock order: `writer`, then `finishing`, then this.
    pending: Mutex<Vec<PendingRoll>>,
    /// Serializes finishing, so rolls finish in order.
    finishing: Mutex<()>,
    /// A file was created or renamed since the directory was last fsynced.
    dir_dirty: AtomicBool,
    /// Set when the partition's topic is deleted: from then on no file is created, renamed
    /// or removed for it (the name may already belong to a new topic).
    deleted: AtomicBool,
    /// Held around file work done outside the writer lock (spares, finishing rolls,
    /// retention) and by `mark_deleted`, so that none is half done when the files go.
    file_work: Mutex<()>,
}

impl Rolls {
    /// Creates the spare segment if there is none (blocks: creates files).
    pub fn prepare_spare(&self) -> Result<()> {
        let _clear = ClearOnDrop(&self.spare_requested);
        let _files = self.file_work();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        if self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let name = format!("spare-{}", self.next_spare.fetch_add(1, Ordering::Relaxed));
        let seg = Segment::create_spare(
            &self.dir,
            &name,
            self.capacity_bytes,
            self.index_interval_bytes,
            self.quota.as_ref(),
        )?;
        seg.prefault_to(DATA_START + (1 << 20), 1 << 20)?;
        self.dir_dirty.store(true, Ordering::Release);
        *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some((seg, name));
        Ok(())
    }

    /// Takes the spare if it can hold `capacity` bytes.
    fn take_spare(&self, capacity: usize) -> Option<(Segment, String)> {
        let mut slot = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((seg, _)) if seg.capacity() >= capacity => slot.take(),
            _ => None,
        }
    }

    /// Finishes pending rolls, oldest first: renames the new segment's files to their final
    /// names, fsyncs the directory, then seals the old segment, so a tailer that sees the
    /// seal finds the next file. Blocks.
    pub fn finish_pending(&self) -> Result<()> {
        let _one_at_a_time = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing to finish (every flush asks): do not wait for other file work.
        if self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        let _files = self.file_work();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        // Take the batch out, so the writer can queue more rolls meanwhile.
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let renamed = batch.iter().try_for_each(|(_, new, name)| {
            if spare_path(&self.dir, name, format::SEGMENT_EXT).exists() {
                Segment::rename_spare_files(&self.dir, name, new.base_offset())?;
            }
            // The files have their final names: their descriptors can go.
            new.release_files();
            Ok(())
        });
        if let Err(e) = renamed.and_then(|()| super::segment::sync_dir(&self.dir)) {
            // Put the batch back in front; renames already done are skipped next time.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let later = std::mem::replace(&mut *pending, batch);
            pending.extend(later);
            return Err(e);
        }
        self.dir_dirty.store(false, Ordering::Release);
        for (old, _, _) in batch {
            old.seal();
            old.release_unused();
        }
        Ok(())
    }

    fn file_work(&self) -> MutexGuard<'_, ()> {
        self.file_work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every segment file name durable (before an fsync acknowledgement).
    fn sync_names(&self) -> Result<()> {
        self.finish_pending()?;
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            super::segment::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn release_quota(&self) {
        if let Some((seg, _)) = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take() {
            seg.release_quota();
        }
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

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
    rolls: Arc<Rolls>,
    /// The last append failed for lack of space (for logging the transitions only).
    out_of_space: AtomicBool,
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
    /// Opens the partition in `dir` (creating it, with a first segment at offset 0, if it
    /// does not exist), recovering from an unclean stop.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport)> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut report = RecoveryReport::default();
        let bases = scan_dir(dir, &mut report)?;
        let chunk = config.reserve_policy();
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len() + 1);
        let mut writer = None;
        for (i, &base) in bases.iter().enumerate() {
            let seg = Arc::new(Segment::open(dir, base, true, config.quota.as_ref())?);
            if let Some(prev) = segments.last() {
                if prev.next_offset() != base {
                    return Err(LogError::corrupt(
                        seg.path(),
                        format!(
                            "gap: the previous segment ends at offset {}, this one starts at {base}",
                            prev.next_offset()
                        ),
                    ));
                }
            }
            let last = i + 1 == bases.len();
            // Sealed and durable segments are trusted up to their end; anything else is
            // validated from its last durable checkpoint and repaired.
            let repair = last || !seg.is_sealed() || seg.durable_end() < seg.committed_end();
            let trust_end = if repair {
                seg.durable_end()
            } else {
                seg.committed_end()
            };
            let (w, rec) =
                SegmentWriter::recover(Arc::clone(&seg), trust_end, repair, chunk.clone())?;
            report.rebuilt_checkpoints += rec.rebuilt_checkpoints;
            if let Some(reason) = &rec.stopped_by {
                report.truncated_bytes += rec.truncated_bytes;
                tracing::warn!(
                    segment = %seg.path().display(),
                    truncated_bytes = rec.truncated_bytes,
                    end_offset = w.next_offset(),
                    reason = %reason,
                    "recovery cut a torn tail"
                );
            }
            segments.push(seg);
            if rec.stopped_by.is_some() && !last {
                // The log has a hole here: later segments cannot follow it.
                for &later in &bases[i + 1..] {
                    remove_segment_files(dir, later);
                    report.removed_segments.push(later);
                }
                tracing::error!(
                    partition = %dir.display(),
                    removed = ?report.removed_segments,
                    "segments after a torn segment were removed"
                );
            }
            if last || rec.stopped_by.is_some() {
                writer = Some(w);
                break;
            }
            if !w.segment().is_sealed() {
                // A crash after the next segment was created but before this one was sealed.
                w.seal();
            }
        }
        report.segments = segments.len();
        let log_config = config.clone();
        let writer = match writer {
            Some(w) if !w.segment().is_sealed() => w,
            other => {
                // Empty directory, or the newest segment is sealed: start a new active one.
                let base = other.map_or(0, |w| w.next_offset());
                let seg = Arc::new(Segment::create(
                    dir,
                    new_header(&log_config, base, 0),
                    log_config.quota.as_ref(),
                )?);
                segments.push(Arc::clone(&seg));
                SegmentWriter::new(seg, chunk)
            }
        };
        let end = writer.next_offset();
        if report.truncated_bytes > 0
            || report.rebuilt_checkpoints > 0
            || !report.removed_temp_files.is_empty()
        {
            tracing::info!(
                partition = %dir.display(),
                segments = segments.len(),
                end_offset = end,
                truncated_bytes = report.truncated_bytes,
                rebuilt_checkpoints = report.rebuilt_checkpoints,
                "partition recovered"
            );
        }
        Ok((
            PartitionLog {
                dir: dir.to_owned(),
                config,
                segments: ArcSwap::from_pointee(segments),
                end_offset: AtomicU64::new(end),
                durable_offset: AtomicU64::new(0),
                writer: Mutex::new(writer),
                flush_running: Mutex::new(false),
                flush_done: Condvar::new(),
                stopped: OnceLock::new(),
                stats: LogStats::default(),
                out_of_space: AtomicBool::new(false),
                rolls: Arc::new(Rolls {
                    dir: dir.to_owned(),
                    capacity_bytes: new_header(&log_config, 0, 0).capacity_bytes,
                    index_interval_bytes: new_header(&log_config, 0, 0).index_interval_bytes,
                    quota: log_config.quota.clone(),
                    spare: Mutex::new(None),
                    spare_requested: AtomicBool::new(false),
                    next_spare: AtomicU64::new(0),
                    pending: Mutex::new(Vec::new()),
                    finishing: Mutex::new(()),
                    dir_dirty: AtomicBool::new(false),
                    deleted: AtomicBool::new(false),
                    file_work: Mutex::new(()),
                }),
            },
            report,
        ))
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

    /// Every record below this offset survives power loss.
    /// Whether the partition's topic was deleted (nothing is appended or flushed any more).
    pub fn is_deleted(&self) -> bool {
        self.rolls.deleted.load(Ordering::Acquire)
    }

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

    /// Unmaps sealed, durable segments no reader used since `idle_since_ms`; they reopen on
    /// demand. Returns how many closed.
    pub fn close_idle(&self, idle_since_ms: i64) -> usize {
        let segs = self.segments.load();
        // Never the newest segment: it is the active one.
        let sealed = segs.len().saturating_sub(1);
        segs.iter()
            .take(sealed)
            .filter(|s| s.close_if_idle(idle_since_ms))
            .count()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.load().len()
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, SegmentWriter>> {
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
    fn note_space<T>(&self, result: &Result<T>) {
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
        drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()));
        drop(self.rolls.file_work());
        drop(
            self.rolls
                .finishing
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    /// Locks the writer for a group of appends that must all happen or none: see
    /// [`AppendGuard`].
    pub fn lock(&self) -> Result<AppendGuard<'_>> {
        Ok(AppendGuard {
            log: self,
            w: self.lock_writer()?,
        })
    }

    /// Appends a batch and publishes it to readers with one atomic store. All or nothing:
    /// on error no record of the batch is visible.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Appended> {
        let mut guard = self.lock()?;
        guard.append(records)
    }

    /// Appends frames built by a client (binary produce) without re-encoding them: checks
    /// every frame, assigns offsets, and the current time where a timestamp is 0.
    pub fn append_frames(&self, frames: &[u8]) -> Result<Appended> {
        let count = validate_frames(frames)?;
        let mut w = self.lock_writer()?;
        if count == 0 {
            return Ok(Appended {
                first_offset: w.next_offset(),
                count: 0,
            });
        }
        let result = self
            .make_room(&mut w, frames.len())
            .and_then(|()| w.append_frames(frames, count, now_ms()));
        self.note_space(&result);
        let first_offset = result?;
        self.end_offset.store(w.next_offset(), Ordering::Release);
        self.want_spare(&w);
        Ok(Appended {
            first_offset,
            count,
        })
    }

    /// Rolls to a new segment if `bytes` do not fit in the active one, or if the active one
    /// is larger than `segment_bytes` (made to fit one big batch, which keeps it to itself;
    /// or made under a larger setting) and holds records.
    fn make_room(&self, w: &mut SegmentWriter, bytes: usize) -> Result<()> {
        let oversized = w.segment().capacity() as u64 > self.config.segment_bytes;
        if bytes > w.remaining() || (oversized && !w.is_empty()) {
            self.roll_locked(w, bytes)?;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one, if the active one holds any record.
    pub fn roll(&self) -> Result<()> {
        let mut w = self.lock_writer()?;
        if !w.is_empty() {
            self.roll_locked(&mut w, 0)?;
        }
        Ok(())
    }

    /// Rolls the active segment if it holds records and was created at least `max_age_ms`
    /// before `now_ms`. Returns whether it rolled.
    pub fn roll_if_older(&self, now_ms: i64, max_age_ms: u64) -> Result<bool> {
        let mut w = self.lock_writer()?;
        let created = w.segment().header().created_ms;
        if w.is_empty() || now_ms.saturating_sub(created) < max_age_ms as i64 {
            return Ok(false);
        }
        self.roll_locked(&mut w, 0)?;
        Ok(true)
    }

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
            remove_segment_files(&self.dir, seg.base_offset());
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
        let _ = super::segment::sync_dir(&self.dir);
        Ok(deleted)
    }

    /// Gives back every byte this partition charged to the disk quota (its files are being
    /// deleted with its topic).
    pub fn release_quota(&self) {
        for seg in self.segments.load().iter() {
            seg.release_quota();
        }
        self.rolls.release_quota();
    }

    /// Once the active segment is half full, asks the prefaulter for a spare segment.
    fn want_spare(&self, w: &SegmentWriter) {
        let Some(p) = &self.config.prefaulter else {
            return;
        };
        if w.position() > w.segment().capacity() / 2
            && !self.rolls.spare_requested.swap(true, Ordering::AcqRel)
        {
            p.request_spare(&self.rolls);
        }
    }

    fn roll_locked(&self, w: &mut SegmentWriter, need_bytes: usize) -> Result<()> {
        let base = w.next_offset();
        let header = new_header(&self.config, base, need_bytes);
        let replaces_empty = w.is_empty();
        if !replaces_empty {
            if let Some((spare, name)) = self.rolls.take_spare(header.capacity_bytes as usize) {
                // The fast path: no file is created here. The spare becomes the active
                // segment at once; its files are renamed and the old segment sealed by the
                // prefaulter thread right after (or by the next flush).
                let seg = Arc::new(spare.adopt(&self.dir, base, now_ms()));
                let new_writer = SegmentWriter::new(Arc::clone(&seg), self.config.reserve_policy());
                let old = std::mem::replace(w, new_writer).into_segment();
                self.segments.rcu(|segs| {
                    let mut next: Vec<Arc<Segment>> = segs.as_ref().clone();
                    next.push(Arc::clone(&seg));
                    next
                });
                self.rolls
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((old, seg, name));
                self.rolls.dir_dirty.store(true, Ordering::Release);
                match &self.config.prefaulter {
                    Some(p) => p.request_finish(&self.rolls),
                    None => self.rolls.finish_pending()?,
                }
                self.stats.segments_rolled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(base_offset = base, partition = %self.dir.display(), "rolled segment (prepared spare)");
                return Ok(());
            }
        }
        // Earlier rolls finish first, so names appear and seals happen in order.
        self.rolls.finish_pending()?;
        // The new file exists before the old one is sealed, so a tailer that sees the seal
        // finds its successor.
        let seg = Arc::new(Segment::create(
            &self.dir,
            header,
            self.config.quota.as_ref(),
        )?);
        let new_writer = SegmentWriter::new(Arc::clone(&seg), self.config.reserve_policy());
        let old = std::mem::replace(w, new_writer);
        let old_path = old.segment().path().to_owned();
        old.seal();
        self.segments.rcu(|segs| {
            let mut next: Vec<Arc<Segment>> = segs.as_ref().clone();
            if replaces_empty {
                // An empty segment too small for the batch: replaced under the same name.
                next.pop();
            }
            next.push(Arc::clone(&seg));
            next
        });
        self.stats.segments_rolled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            sealed = %old_path.display(),
            base_offset = base,
            capacity_bytes = header.capacity_bytes,
            "rolled segment"
        );
        Ok(())
    }

    /// Reads from `offset`: at most `max_records` records and `max_bytes` bytes of frames,
    /// but always at least one record when one exists. Never waits for the writer.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        // The end first, then the segments: every record below the loaded end lies in a
        // segment that was in the list before the end was stored.
        let end = self.end_offset();
        let segs = self.segments.load_full();
        let start = segs.first().map_or(end, |s| s.base_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                earliest: start,
                latest: end,
            });
        }
        let mut batch = ReadBatch {
            next_offset: offset,
            high_watermark: end,
            ..ReadBatch::default()
        };
        if offset == end || max_records == 0 {
            return Ok(batch);
        }
        let mut i = segs.partition_point(|s| s.base_offset() <= offset) - 1;
        let mut bytes = 0;
        while i < segs.len() && batch.record_count < max_records {
            let seg = &segs[i];
            let budget = if batch.record_count == 0 {
                max_bytes
            } else {
                max_bytes.saturating_sub(bytes)
            };
            let read = seg.read_from(
                batch.next_offset,
                max_records - batch.record_count,
                budget,
                batch.record_count == 0,
            );
            let read = match read {
                // A closed segment deleted by retention since we loaded the list.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && batch.record_count == 0 =>
                {
                    return Err(LogError::OffsetOutOfRange {
                        offset,
                        earliest: self.start_offset(),
                        latest: self.end_offset(),
                    });
                }
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    break;
                }
                other => other?,
            };
            let Some((chunk, n, next, at_end)) = read else {
                break;
            };
            if n == 0 {
                break;
            }
            bytes += chunk.len();
            batch.chunks.push(chunk);
            batch.record_count += n;
            batch.next_offset = next;
            // Go on to the next segment when this one is fully read and a newer one exists:
            // the writer moved on before the newer segment entered the list we loaded, so the
            // committed end we loaded is this segment's last.
            if !at_end || i + 1 >= segs.len() {
                break;
            }
            i += 1;
        }
        batch.high_watermark = end.max(batch.next_offset);
        Ok(batch)
    }

    /// The offset of the first record with a timestamp at or after `timestamp_ms`, or `None`
    /// when there is none yet.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let end = self.end_offset();
        for seg in self.segments.load().iter() {
            if let Some((offset, _)) = seg.find_timestamp(timestamp_ms)? {
                return Ok((offset < end).then_some(offset));
            }
        }
        Ok(None)
    }

    /// Makes every record published so far durable (msync), and advances the durable offset.
    /// A failure stops the partition: later appends fail with [`LogError::Stopped`].
    pub fn flush(&self) -> Result<u64> {
        self.flush_until(u64::MAX)
    }

    /// Makes records below `offset` durable, sharing flushes between callers (group
    /// commit): whoever waits for the flush lock finds, once it has it, that the flush that
    /// held it may already have covered its records, and then returns without an msync.
    /// Returns the durable offset.
    pub fn flush_until(&self, offset: u64) -> Result<u64> {
        let mut running = self.flush_running.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = self.stopped.get() {
                return Err(LogError::Stopped(reason.clone()));
            }
            if self.rolls.deleted.load(Ordering::Acquire) {
                return Err(LogError::Deleted);
            }
            let durable = self.durable_offset();
            if durable >= offset.min(self.end_offset()) {
                return Ok(durable);
            }
            if !*running {
                break;
            }
            // Someone is flushing: wait for it, then look again. Waiters that it covered
            // return without an msync of their own: that is the group commit.
            running = self
                .flush_done
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
        *running = true;
        drop(running);
        let result = self.flush_published();
        *self.flush_running.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.flush_done.notify_all();
        result
    }

    /// msyncs every segment with data above its durable end; only one runs at a time.
    fn flush_published(&self) -> Result<u64> {
        let end = self.end_offset();
        // Durable records need durable file names.
        self.rolls.sync_names()?;
        for seg in self.segments.load().iter() {
            if seg.durable_end() < seg.committed_end() {
                if let Err(e) = seg.flush() {
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    let reason = e.to_string();
                    tracing::error!(partition = %self.dir.display(), error = %reason, "flush failed; partition stopped");
                    let _ = self.stopped.set(reason);
                    return Err(e);
                }
            }
        }
        self.durable_offset.fetch_max(end, Ordering::AcqRel);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(end)
    }
}

fn new_header(config: &LogConfig, base_offset: u64, need_bytes: usize) -> SegmentHeader {
    let min = (DATA_START + need_bytes).next_multiple_of(4096) as u64;
    SegmentHeader {
        base_offset,
        capacity_bytes: config.segment_bytes.max(min).max(DATA_START as u64 + 4096),
        created_ms: now_ms(),
        index_interval_bytes: config.index_interval_bytes.max(format::FRAME_ALIGN as u32),
    }
}

fn remove_segment_files(dir: &Path, base: u64) {
    for ext in [
        format::SEGMENT_EXT,
        format::OFFSET_INDEX_EXT,
        format::TIME_INDEX_EXT,
    ] {
        let _ = fs::remove_file(super::segment::segment_path(dir, base, ext));
    }
}

/// The first page of a file (its header) and the file's length.
fn read_header(path: &Path) -> Option<(Vec<u8>, u64)> {
    use std::io::Read;
    let mut f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut bytes = vec![0u8; DATA_START];
    f.read_exact(&mut bytes).ok()?;
    Some((bytes, len))
}

/// Lists the segment base offsets in `dir`, oldest first; removes leftovers of interrupted
/// segment creation; reports stray files without touching them.
fn scan_dir(dir: &Path, report: &mut RecoveryReport) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut index_bases = Vec::new();
    let mut spares = Vec::new();
    let mut spare_parts = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            report.stray_files.push(path);
            continue;
        };
        if let Some(base) = format::parse_file_name(&name, format::SEGMENT_EXT) {
            bases.push(base);
        } else if let Some(spare) = name
            .strip_suffix(&format!(
                ".{}.{}",
                format::SEGMENT_EXT,
                format::CREATING_SUFFIX
            ))
            .filter(|n| n.starts_with("spare-"))
        {
            spares.push((spare.to_owned(), path));
        } else if let Some(base) = format::parse_file_name(&name, format::OFFSET_INDEX_EXT)
            .or_else(|| format::parse_file_name(&name, format::TIME_INDEX_EXT))
        {
            index_bases.push((base, path));
        } else if let Some(created) = name.strip_suffix(&format!(".{}", format::CREATING_SUFFIX)) {
            if name.starts_with("spare-") {
                // A spare's index file: handled with its data file below.
                spare_parts.push(path);
                continue;
            }
            let ours = [
                format::SEGMENT_EXT,
                format::OFFSET_INDEX_EXT,
                format::TIME_INDEX_EXT,
            ]
            .iter()
            .any(|ext| format::parse_file_name(created, ext).is_some());
            if ours {
                // A file mapq was creating when it stopped.
                let _ = fs::remove_file(&path);
                report.removed_temp_files.push(path);
            } else {
                report.stray_files.push(path);
            }
        } else {
            report.stray_files.push(path);
        }
    }
    for (name, path) in spares {
        // A spare adopted by a roll whose files were not renamed before a crash holds
        // records: finish its renaming. Any other spare is a leftover.
        let adopted = read_header(&path).and_then(|(bytes, len)| {
            let h = SegmentHeader::decode(&bytes, &path, len).ok()?;
            (h.base_offset != SPARE_BASE_OFFSET).then_some(h.base_offset)
        });
        match adopted {
            Some(base) if !bases.contains(&base) => {
                for ext in [format::OFFSET_INDEX_EXT, format::TIME_INDEX_EXT] {
                    let from = spare_path(dir, &name, ext);
                    if from.exists() {
                        let _ = fs::rename(&from, super::segment::segment_path(dir, base, ext));
                    }
                }
                let to = super::segment::segment_path(dir, base, format::SEGMENT_EXT);
                fs::rename(&path, &to).map_err(|e| LogError::io(&path, e))?;
                tracing::info!(segment = %to.display(), "finished renaming a rolled segment");
                bases.push(base);
            }
            _ => {
                for ext in [
                    format::SEGMENT_EXT,
                    format::OFFSET_INDEX_EXT,
                    format::TIME_INDEX_EXT,
                ] {
                    let p = spare_path(dir, &name, ext);
                    if fs::remove_file(&p).is_ok() {
                        report.removed_temp_files.push(p);
                    }
                }
            }
        }
    }
    for path in spare_parts {
        // Index files of a spare whose data file never appeared, or was removed above.
        if fs::remove_file(&path).is_ok() {
            report.removed_temp_files.push(path);
        }
    }
    bases.sort_unstable();
    for (base, path) in index_bases {
        if bases.binary_search(&base).is_err() {
            // Index files of a segment whose data file was never renamed into place.
            let _ = fs::remove_file(&path);
            report.removed_temp_files.push(path);
        }
    }
    for path in &report.stray_files {
        tracing::warn!(path = %path.display(), "unexpected file in partition directory; left alone");
    }
    Ok(bases)
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Leave final names and seals behind, so a clean stop has nothing to repair.
        if let Err(e) = self.rolls.finish_pending() {
            tracing::warn!(partition = %self.dir.display(), error = %e, "could not finish a roll");
        }
    }
}

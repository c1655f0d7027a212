//! Truncation: cutting a partition back to an offset (a cluster follower whose last records
//! were never committed by the new leader drops them), and the replicated end, which no
//! truncation goes below. Readers survive both: `FORMAT.md` §5.2 and §5.3.
//!
//! A truncation never changes a byte below a file's committed end, so a reader that maps a
//! file never sees its frames change under it: the segment holding the cut is copied up to
//! the cut into a new file, under a temporary name and made durable; every file that loses
//! records is marked `truncated` (with the new end) and its waiters woken; the newer files
//! are removed, newest first; and the copy takes the cut segment's name. A crash at any
//! point leaves a partition that opens: before the rename, the old files (their marks
//! cleared by recovery) and no gap; after it, the copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{new_header, PartitionLog};
use crate::log::error::{LogError, Result};
use crate::log::format::{self, SEGMENT_FILE_EXTS};
use crate::log::segment::{self, spare_path, Mapped, Segment, SegmentWriter, DATA_START};
use crate::log::util::{now_ms, sync_dir};

/// What [`PartitionLog::truncate_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The end offset before.
    pub old_end: u64,
    /// The end offset now.
    pub new_end: u64,
    /// Base offsets of the segments removed whole.
    pub removed_segments: Vec<u64>,
}

impl PartitionLog {
    /// Cuts the log back so that `offset` becomes its end: records at `offset` and after
    /// are removed, and the next append gets `offset`. The cut must fall between batches
    /// published together (a batch with a head is kept or removed whole), and, in a
    /// replicated partition, not below the replicated offset. Live readers and tailers see
    /// the end move back (`FORMAT.md` §5.3). Blocks appends and flushes while it copies the
    /// kept part of the segment holding the cut.
    pub fn truncate_to(&self, offset: u64) -> Result<Truncation> {
        let mut w = self.lock_writer()?;
        let _flush = self.flush_turn();
        self.rolls.finish_pending()?;
        let _files = self.rolls.file_work();
        if self.rolls.deleted.load(Ordering::Acquire) {
            return Err(LogError::Deleted);
        }
        let old_end = w.next_offset();
        let segs = self.segments.load_full();
        let start = segs.first().map_or(old_end, |s| s.base_offset());
        if offset < start || offset > old_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                earliest: start,
                latest: old_end,
            });
        }
        let replicated = self.replicated_offset();
        if self.config.replicated && offset < replicated {
            return Err(LogError::BelowReplicated { offset, replicated });
        }
        if offset == old_end {
            return Ok(Truncation {
                old_end,
                new_end: offset,
                removed_segments: Vec::new(),
            });
        }
        let k = segs.partition_point(|s| s.base_offset() <= offset) - 1;
        let cut = &segs[k];
        let base = cut.base_offset();
        if let Some(old) = segs[k..]
            .iter()
            .find(|s| s.header().version < format::FORMAT_VERSION)
        {
            // Its readers may not know the `truncated` word.
            return Err(LogError::OldFormat {
                base_offset: old.base_offset(),
                version: old.header().version,
            });
        }
        let m = cut.map_or_reopen()?;
        let committed = m.committed_end();
        let cut_pos = m.locate(offset, committed)?.unwrap_or(committed);
        check_between_batches(&m, cut_pos, offset)?;

        // The copy, complete and durable under a temporary name.
        let name = self.rolls.spare_name();
        let (copy, writer) = self
            .copy_head(&m, base, cut_pos, offset - base, replicated, &name)
            .inspect_err(|_| remove_spare(&self.dir, &name))?;
        drop(m);

        // Readers learn: each file that loses records is marked, the in-process end moves.
        let doomed = &segs[k..];
        let marked = doomed.iter().try_for_each(|seg| seg.mark_truncated(offset));
        if let Err(e) = marked {
            for seg in doomed {
                let _ = seg.unmark_truncated();
            }
            copy.release_quota();
            remove_spare(&self.dir, &name);
            return Err(e);
        }
        self.end_offset.store(offset, Ordering::Release);
        // Newest first, so that a crash leaves no gap; then the copy takes the name.
        let removed: Vec<u64> = doomed[1..].iter().map(|s| s.base_offset()).collect();
        let renamed = removed
            .iter()
            .rev()
            .try_for_each(|&b| remove_segment_files(&self.dir, b))
            .and_then(|()| Segment::rename_spare_files(&self.dir, &name, base))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = renamed {
            // The files are as a crash here would leave them, which the next open repairs;
            // this process cannot go on with them.
            let reason = format!("truncation to offset {offset} failed half-way: {e}");
            tracing::error!(partition = %self.dir.display(), error = %reason, "partition stopped");
            let _ = self.stopped.set(reason);
            return Err(e);
        }
        copy.release_files();
        drop(std::mem::replace(&mut *w, writer));
        let mut kept: Vec<Arc<Segment>> = segs[..k].to_vec();
        kept.push(Arc::clone(&copy));
        self.segments.store(Arc::new(kept));
        self.durable_offset.fetch_min(offset, Ordering::AcqRel);
        for seg in doomed {
            seg.release_quota();
        }
        tracing::warn!(
            partition = %self.dir.display(),
            old_end,
            new_end = offset,
            removed_segments = ?removed,
            "truncated the partition"
        );
        Ok(Truncation {
            old_end,
            new_end: offset,
            removed_segments: removed,
        })
    }

    /// Writes the frames of `m` below `cut_pos` (`count` records from `base`) into a new
    /// segment under the spare name `name`, with a writer after them, and makes it durable.
    fn copy_head(
        &self,
        m: &Mapped,
        base: u64,
        cut_pos: usize,
        count: u64,
        replicated: u64,
        name: &str,
    ) -> Result<(Arc<Segment>, SegmentWriter)> {
        let header = new_header(&self.config, base, cut_pos - DATA_START);
        let spare = Segment::create_spare(
            &self.dir,
            name,
            header.capacity_bytes,
            header.index_interval_bytes,
            self.config.replicated,
            self.config.quota.as_ref(),
        )?;
        let seg = Arc::new(spare.adopt(&self.dir, base, now_ms())?);
        let copied = (|| {
            let mut writer = SegmentWriter::new(Arc::clone(&seg), self.config.reserve_policy())?;
            if count > 0 {
                // The same frames at the same positions: the offsets, timestamps and index
                // checkpoints come out the same.
                writer.append_frames(m.published(DATA_START, cut_pos), count, None)?;
            }
            if self.config.replicated && replicated > base {
                let at = m.locate(replicated, cut_pos)?.unwrap_or(cut_pos);
                seg.raise_replicated_end(at)?;
            }
            seg.make_header_durable()?;
            seg.flush()?;
            Ok(writer)
        })();
        match copied {
            Ok(writer) => Ok((seg, writer)),
            Err(e) => {
                seg.release_quota();
                Err(e)
            }
        }
    }

    /// The offset below which every in-sync replica holds the records: 0 in a partition
    /// that is not replicated.
    pub fn replicated_offset(&self) -> u64 {
        self.replicated_offset.load(Ordering::Acquire)
    }

    /// Raises the replicated offset (the high watermark of a replicated partition) to
    /// `offset`, at most the end offset, storing the matching `replicated_end` in every
    /// segment it reaches and waking their waiters: readers with `replicated_only` then read
    /// up to it. Never lowers it.
    pub fn advance_replicated(&self, offset: u64) -> Result<()> {
        if !self.config.replicated {
            return Err(LogError::NotReplicated);
        }
        let _w = self.lock_writer()?;
        let end = self.end_offset();
        if offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                earliest: self.start_offset(),
                latest: end,
            });
        }
        if offset <= self.replicated_offset() {
            return Ok(());
        }
        for seg in self.segments.load().iter().rev() {
            if seg.base_offset() >= offset {
                continue;
            }
            let m = seg.map_or_reopen()?;
            let committed = m.committed_end();
            let pos = if offset >= seg.next_offset() {
                committed
            } else {
                m.locate(offset, committed)?.unwrap_or(committed)
            };
            // A segment without the word (written before the partition was replicated, or
            // by format version 1) ends the walk, as does one already there.
            match m.replicated_end() {
                Some(end) if end < pos => {}
                _ => break,
            }
            seg.raise_replicated_end(pos)?;
        }
        self.replicated_offset.store(offset, Ordering::Release);
        Ok(())
    }
}

/// The replicated offset stored in a partition's files: from the newest segment that has
/// replicated records. 0 when it is not replicated.
pub(super) fn stored_replicated_offset(segs: &[Arc<Segment>]) -> u64 {
    for seg in segs.iter().rev() {
        let Ok(m) = seg.map_or_reopen() else {
            continue;
        };
        match m.replicated_end() {
            None => return 0,
            Some(DATA_START) => continue,
            Some(pos) if pos >= m.committed_end() => return seg.next_offset(),
            Some(pos) => return m.offset_at(seg.base_offset(), pos).unwrap_or(0),
        }
    }
    segs.first().map_or(0, |s| s.base_offset())
}

/// Refuses a cut at `cut_pos` (the frame of `offset`) that would split a batch with a head.
fn check_between_batches(m: &Mapped, cut_pos: usize, offset: u64) -> Result<()> {
    let mut open: Option<(u64, u32)> = None;
    for item in m.walk(DATA_START, cut_pos) {
        let (_, f) = item?;
        if let Some(head) = f.batch() {
            open = Some((f.offset, head.record_count));
        }
        if let Some((first, count)) = open {
            if f.offset + 1 >= first + u64::from(count) {
                open = None;
            }
        }
    }
    match open {
        Some((batch_start, _)) => Err(LogError::InsideBatch {
            offset,
            batch_start,
        }),
        None => Ok(()),
    }
}

/// Removes a segment's three files; a file already gone is fine, any other failure is an
/// error (a newer segment left behind would lie beyond the copy's end: a gap).
fn remove_segment_files(dir: &std::path::Path, base: u64) -> Result<()> {
    for ext in SEGMENT_FILE_EXTS {
        let path = segment::path(dir, base, ext);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LogError::io(path, e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes a spare's files (a copy that was not finished).
fn remove_spare(dir: &std::path::Path, name: &str) {
    for ext in SEGMENT_FILE_EXTS {
        let _ = std::fs::remove_file(spare_path(dir, name, ext));
    }
}

//! Rolling: sealing the active segment and starting the next. A spare segment is created
//! ahead of time on the file worker, so a roll on the append path only adopts it; the
//! renames and the seal then finish on the worker (or at the next flush).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::PartitionLog;
use crate::log::config::LogConfig;
use crate::log::error::Result;
use crate::log::format;
use crate::log::quota::DiskQuota;
use crate::log::segment::{spare_path, Segment, SegmentHeader, SegmentWriter, DATA_START};
use crate::log::util::{now_ms, sync_dir};

/// A roll to finish: (old segment, new segment, the new one's temporary file name).
type PendingRoll = (Arc<Segment>, Arc<Segment>, String);

/// Rolls prepared and finished off the append path: a spare segment created ahead of time,
/// and rolls whose new segment still has temporary file names and whose old segment is not
/// sealed yet. Shared (weakly) with the prefaulter thread, which does that work.
#[derive(Debug)]
pub(crate) struct RollState {
    pub(super) dir: PathBuf,
    pub(super) capacity_bytes: u64,
    pub(super) index_interval_bytes: u32,
    pub(super) quota: Option<Arc<DiskQuota>>,
    pub(super) replicated: bool,
    /// A spare segment and its temporary name, ready to be adopted.
    pub(super) spare: Mutex<Option<(Segment, String)>>,
    pub(super) spare_requested: AtomicBool,
    pub(super) next_spare: AtomicU64,
    /// Rolls to finish, oldest first: (old segment, new segment, its temporary name). Held
    /// only to queue or take entries. Lock order: `writer`, then `finishing`, then this.
    pub(super) pending: Mutex<Vec<PendingRoll>>,
    /// Serializes finishing, so rolls finish in order.
    pub(super) finishing: Mutex<()>,
    /// A file was created or renamed since the directory was last fsynced.
    pub(super) dir_dirty: AtomicBool,
    /// Set when the partition's topic is deleted: from then on no file is created, renamed
    /// or removed for it (the name may already belong to a new topic).
    pub(super) deleted: AtomicBool,
    /// Held around file work done outside the writer lock (spares, finishing rolls,
    /// retention) and by `mark_deleted`, so that none is half done when the files go.
    pub(super) file_work: Mutex<()>,
}

impl RollState {
    pub(crate) fn new(dir: &std::path::Path, config: &LogConfig) -> Self {
        let header = new_header(config, 0, 0);
        RollState {
            dir: dir.to_owned(),
            capacity_bytes: header.capacity_bytes,
            index_interval_bytes: header.index_interval_bytes,
            quota: config.quota.clone(),
            replicated: config.replicated,
            spare: Mutex::new(None),
            spare_requested: AtomicBool::new(false),
            next_spare: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            finishing: Mutex::new(()),
            dir_dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            file_work: Mutex::new(()),
        }
    }

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
        let name = self.spare_name();
        let seg = Segment::create_spare(
            &self.dir,
            &name,
            self.capacity_bytes,
            self.index_interval_bytes,
            self.replicated,
            self.quota.as_ref(),
        )?;
        seg.prefault_to(DATA_START + (1 << 20), 1 << 20)?;
        self.dir_dirty.store(true, Ordering::Release);
        *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some((seg, name));
        Ok(())
    }

    /// A fresh name for a segment made under a temporary name (a spare, a truncation's copy).
    pub(super) fn spare_name(&self) -> String {
        format!("spare-{}", self.next_spare.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes the spare if it can hold `capacity` bytes.
    pub(super) fn take_spare(&self, capacity: usize) -> Option<(Segment, String)> {
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
            // Its name becomes durable below: its header first.
            new.make_header_durable()?;
            // Skips the files an earlier call renamed (the roll itself, usually).
            Segment::rename_spare_files(&self.dir, name, new.base_offset())?;
            // The files have their final names: their descriptors can go.
            new.release_files();
            Ok(())
        });
        if let Err(e) = renamed.and_then(|()| sync_dir(&self.dir)) {
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

    pub(super) fn file_work(&self) -> MutexGuard<'_, ()> {
        self.file_work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every segment file name durable (before an fsync acknowledgement).
    pub(super) fn sync_names(&self) -> Result<()> {
        self.finish_pending()?;
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = sync_dir(&self.dir) {
                // Still to do: the next flush tries again before it acknowledges anything.
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) fn release_quota(&self) {
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

impl PartitionLog {
    /// Marks the partition's directory as naming a file not yet durably: the next flush
    /// syncs it before it makes any record durable.
    pub(in crate::log) fn mark_dir_unsynced(&self) {
        self.rolls.dir_dirty.store(true, Ordering::Release);
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
    /// Once the active segment is half full, asks the prefaulter for a spare segment.
    pub(super) fn want_spare(&self, w: &SegmentWriter) {
        let Some(worker) = &self.config.worker else {
            return;
        };
        if w.position() > w.segment().capacity() / 2
            && !self.rolls.spare_requested.swap(true, Ordering::AcqRel)
        {
            let rolls = Arc::downgrade(&self.rolls);
            worker.submit(move || {
                if let Some(r) = rolls.upgrade() {
                    if let Err(e) = r.prepare_spare() {
                        tracing::debug!(error = %e, "spare segment not prepared");
                    }
                }
            });
        }
    }
    pub(super) fn roll_locked(&self, w: &mut SegmentWriter, need_bytes: usize) -> Result<()> {
        // A parked writer's segment is sealed through its files: map them first, so that
        // nothing below can fail half-way for that.
        w.unpark()?;
        // A roll syncs the directory (here or on the file worker): the active segment's name
        // must not become durable before its header (a new partition's first segment).
        w.segment().make_header_durable()?;
        let base = w.next_offset();
        let header = new_header(&self.config, base, need_bytes);
        let replaces_empty = w.is_empty();
        if !replaces_empty {
            if let Some((spare, name)) = self.rolls.take_spare(header.capacity_bytes as usize) {
                // The fast path: no file is created here. The spare becomes the active segment at once, under its final names (three
                // renames; the directory is synced by the prefaulter thread right after, or
                // by the next flush), so that a file tailer sees its records as early as an
                // HTTP consumer does; then the old segment is sealed, so that a tailer that
                // sees the seal finds its successor. Should a rename fail, the records still
                // go to the new segment, and the rename and the seal are retried with the
                // directory's sync; names appear in order, so none is renamed here while an
                // earlier roll's rename waits for that retry.
                let seg = Arc::new(spare.adopt(&self.dir, base, now_ms())?);
                let new_writer =
                    SegmentWriter::new(Arc::clone(&seg), self.config.reserve_policy())?;
                let earlier_unnamed = self
                    .rolls
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|(_, _, n)| spare_path(&self.dir, n, format::SEGMENT_EXT).exists());
                let renamed =
                    (!earlier_unnamed).then(|| Segment::rename_spare_files(&self.dir, &name, base));
                let old = std::mem::replace(w, new_writer).into_segment();
                match renamed {
                    Some(Ok(())) => old.seal(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, partition = %self.dir.display(), "renaming a new segment failed; retried before the next flush")
                    }
                    None => {}
                }
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
                match &self.config.worker {
                    Some(worker) => {
                        let rolls = Arc::downgrade(&self.rolls);
                        worker.submit(move || {
                            if let Some(r) = rolls.upgrade() {
                                if let Err(e) = r.finish_pending() {
                                    tracing::warn!(error = %e, "finishing a roll failed; the next flush retries");
                                }
                            }
                        });
                    }
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
            true,
        )?);
        let new_writer = SegmentWriter::new(Arc::clone(&seg), self.config.reserve_policy())?;
        let old = std::mem::replace(w, new_writer);
        let old_path = old.segment().path().to_owned();
        // Cannot fail: the writer is not parked (see above).
        if replaces_empty {
            old.seal_replaced()?;
        } else {
            old.seal()?;
        }
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
}

pub(crate) fn new_header(config: &LogConfig, base_offset: u64, need_bytes: usize) -> SegmentHeader {
    let min = (DATA_START + need_bytes).next_multiple_of(4096) as u64;
    SegmentHeader {
        version: format::FORMAT_VERSION,
        base_offset,
        capacity_bytes: config.segment_bytes.max(min).max(DATA_START as u64 + 4096),
        created_ms: now_ms(),
        index_interval_bytes: config.index_interval_bytes.max(format::FRAME_ALIGN as u32),
        replicated: config.replicated,
    }
}

//! Opening a partition after any stop, clean or not (like raft-engine's `pipe_builder`):
//! list its files, finish or remove what an interrupted roll left, recover each segment
//! (`Segment::recover`: keep valid checkpoints, cut a torn tail), remove segments that
//! cannot follow a torn one, and start the writer.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::LogConfig;
use super::error::{LogError, Result};
use super::format::{self, SEGMENT_FILE_EXTS};
use super::partition::{new_header, PartitionLog};
use super::segment::{
    self, spare_path, Segment, SegmentHeader, SegmentWriter, DATA_START, SPARE_BASE_OFFSET,
};

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

impl PartitionLog {
    /// Opens the partition in `dir` (creating it, with a first segment at offset 0, if it
    /// does not exist), recovering from an unclean stop.
    ///
    /// # Soundness
    /// The partition's files are mapped shared and written through the mappings: no other
    /// program may write, truncate or map them writable while the partition is open, and a
    /// process opens a partition once (the broker's data-directory lock sees to both for
    /// mapq's server). Tailers, which map read-only, are fine. Opening a partition that is
    /// open already in this process fails with [`LogError::AlreadyOpen`].
    /// Creates, in `dir` (which must not exist), an empty partition whose first record
    /// will get `base_offset`: the replica of a leader whose log starts there (its older
    /// segments deleted). Durable when it returns; [`PartitionLog::open`] opens it. Blocks.
    pub fn create_empty_at(dir: &Path, config: &LogConfig, base_offset: u64) -> Result<()> {
        if dir.exists() {
            return Err(LogError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the directory exists"),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let seg = Segment::create(
            dir,
            new_header(config, base_offset, 0),
            config.quota.as_ref(),
            true,
        )?;
        seg.release_files();
        drop(seg);
        crate::log::util::sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            crate::log::util::sync_dir(parent)?;
        }
        Ok(())
    }

    pub fn open(dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport)> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let claim = OpenPartition::claim(dir)?;
        let mut report = RecoveryReport::default();
        let mut bases = scan_dir(dir, &mut report)?;
        if bases == [0] && segment::never_durable(dir, 0) {
            // A new partition's first segment, from a creation that a crash interrupted
            // before any record was flushed: it held nothing durable, and a new one replaces
            // it below (any other damage to a header stays an error).
            segment::remove(dir, 0);
            report.removed_segments.push(0);
            bases.clear();
            tracing::warn!(partition = %dir.display(), "removed a first segment that was never made durable");
        }
        let chunk = config.reserve_policy();
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len() + 1);
        let mut writer = None;
        for (i, &base) in bases.iter().enumerate() {
            let seg = Segment::open(dir, base, true, config.quota.as_ref())?;
            seg.clear_interrupted_marks();
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
            let (w, rec) = seg.recover(trust_end, repair, chunk.clone())?;
            let seg = Arc::clone(w.segment());
            report.rebuilt_checkpoints += rec.rebuilt_checkpoints;
            if let Some(reason) = &rec.torn {
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
            if rec.torn.is_some() && !last {
                // The log has a hole here: later segments cannot follow it.
                for &later in &bases[i + 1..] {
                    segment::remove(dir, later);
                    report.removed_segments.push(later);
                }
                tracing::error!(
                    partition = %dir.display(),
                    removed = ?report.removed_segments,
                    "segments after a torn segment were removed"
                );
            }
            if last || rec.torn.is_some() {
                writer = Some(w);
                break;
            }
            if !w.segment().is_sealed() {
                // A crash after the next segment was created but before this one was sealed.
                w.seal()?;
            }
        }
        report.segments = segments.len();
        let log_config = config.clone();
        let mut new_dir_unsynced = false;
        let writer = match writer {
            Some(w) if w.segment().header().version < format::FORMAT_VERSION => {
                // A segment an earlier release wrote is read as it is, never appended to
                // (its readers may not know this version's frames): seal it, and go on in
                // a new segment of this version.
                if !w.segment().is_sealed() {
                    tracing::info!(
                        segment = %w.segment().path().display(),
                        version = w.segment().header().version,
                        "sealed a segment of an earlier format version; new records go to a new segment"
                    );
                }
                // The next file first: a reader that sees the seal finds it (FORMAT.md §3).
                // An empty one is replaced under its name, as at a roll (FORMAT.md §3).
                let replaces_empty = w.is_empty();
                let seg = Arc::new(Segment::create(
                    dir,
                    new_header(&log_config, w.next_offset(), 0),
                    log_config.quota.as_ref(),
                    true,
                )?);
                if replaces_empty {
                    w.seal_replaced()?;
                    segments.pop();
                } else {
                    w.seal()?;
                }
                segments.push(Arc::clone(&seg));
                SegmentWriter::new(seg, chunk)?
            }
            Some(w) if !w.segment().is_sealed() => w,
            other => {
                // Empty directory, or the newest segment is sealed: start a new active one.
                // A new partition's first segment is made durable by its first flush (which
                // waits for nothing else), not here: creating a partition then costs no
                // sync of its own.
                let first = other.is_none();
                let base = other.map_or(0, |w| w.next_offset());
                let seg = Arc::new(Segment::create(
                    dir,
                    new_header(&log_config, base, 0),
                    log_config.quota.as_ref(),
                    !first,
                )?);
                new_dir_unsynced = first;
                segments.push(Arc::clone(&seg));
                SegmentWriter::new(seg, chunk)?
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
        let log = PartitionLog::from_parts(dir, config, segments, writer, claim);
        if new_dir_unsynced {
            log.mark_dir_unsynced();
        }
        Ok((log, report))
    }
}

/// A partition directory open for writing in this process: at most one at a time, so that
/// two logs never write (or recover) the same files through two mappings. Released when
/// the log drops.
#[derive(Debug)]
pub(crate) struct OpenPartition((u64, u64));

/// The (device, inode) of every partition directory open for writing in this process.
static OPEN_PARTITIONS: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

impl OpenPartition {
    fn claim(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(dir).map_err(|e| LogError::io(dir, e))?;
        let id = (meta.dev(), meta.ino());
        let mut open = OPEN_PARTITIONS.lock().unwrap_or_else(|p| p.into_inner());
        if open.contains(&id) {
            return Err(LogError::AlreadyOpen(dir.to_owned()));
        }
        open.push(id);
        Ok(OpenPartition(id))
    }
}

impl Drop for OpenPartition {
    fn drop(&mut self) {
        OPEN_PARTITIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| *id != self.0);
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
        if name == format::LEADER_EPOCHS_FILE || name == format::LEADER_EPOCHS_TMP {
            // The cluster layer's, beside the log.
            continue;
        }
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
            let ours = SEGMENT_FILE_EXTS
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
                        let _ = fs::rename(&from, segment::path(dir, base, ext));
                    }
                }
                let to = segment::path(dir, base, format::SEGMENT_EXT);
                fs::rename(&path, &to).map_err(|e| LogError::io(&path, e))?;
                tracing::info!(segment = %to.display(), "finished renaming a rolled segment");
                bases.push(base);
            }
            _ => {
                for ext in SEGMENT_FILE_EXTS {
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

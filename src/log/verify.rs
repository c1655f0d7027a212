//! `mapq verify`: a full, read-only check of every byte the format defines.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::format::{attributes, decode_frame};
use super::segment::list_bases as segment_bases;
use super::segment::{Segment, DATA_START};

/// The result of checking one partition directory.
#[derive(Debug, Default, Clone)]
pub struct PartitionSummary {
    pub dir: PathBuf,
    pub segments: usize,
    pub records: u64,
    pub start_offset: Option<u64>,
    pub end_offset: Option<u64>,
    pub bytes: u64,
    /// Corruption: anything here makes `verify` fail.
    pub problems: Vec<String>,
    /// Traces of an unclean stop that recovery will repair on the next open.
    pub notes: Vec<String>,
}

impl PartitionSummary {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for PartitionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.start_offset, self.end_offset) {
            (Some(s), Some(e)) => format!("offsets {s}..{e}"),
            _ => "no segments".to_owned(),
        };
        write!(
            f,
            "{}: {} — {} segments, {} records, {} bytes, {range}",
            self.dir.display(),
            if self.is_ok() { "OK" } else { "CORRUPT" },
            self.segments,
            self.records,
            self.bytes,
        )?;
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        for p in &self.problems {
            write!(f, "\n  error: {p}")?;
        }
        Ok(())
    }
}

/// Checks every partition under `data_dir` (`<data_dir>/<topic>/<partition>/`), under one
/// topic's directory, or `data_dir` itself when it is a partition directory.
pub fn verify_data_dir(data_dir: &Path) -> std::io::Result<Vec<PartitionSummary>> {
    let mut out = Vec::new();
    if has_segments(data_dir)? {
        out.push(verify_partition(data_dir));
        return Ok(out);
    }
    // A topic directory (it holds the topic's metadata): its partitions.
    if data_dir.join("topic.json").is_file() {
        for partition in sorted_dirs(data_dir)? {
            out.push(verify_partition(&partition));
        }
        return Ok(out);
    }
    for topic in sorted_dirs(data_dir)? {
        for partition in sorted_dirs(&topic)? {
            out.push(verify_partition(&partition));
        }
    }
    Ok(out)
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn has_segments(dir: &Path) -> std::io::Result<bool> {
    Ok(!segment_bases(dir)?.is_empty())
}

/// Checks one partition directory: headers, every frame and CRC, offset continuity, and
/// every index checkpoint. Never writes.
pub fn verify_partition(dir: &Path) -> PartitionSummary {
    let mut s = PartitionSummary {
        dir: dir.to_owned(),
        ..Default::default()
    };
    let bases = match segment_bases(dir) {
        Ok(b) => b,
        Err(e) => {
            s.problems.push(format!("cannot list: {e}"));
            return s;
        }
    };
    s.segments = bases.len();
    let mut expected: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let seg = match Segment::open(dir, base, false, None) {
            Ok(seg) => seg,
            Err(e) => {
                s.problems.push(e.to_string());
                expected = None;
                continue;
            }
        };
        if s.start_offset.is_none() {
            s.start_offset = Some(base);
        }
        if let Some(exp) = expected {
            if exp != base {
                s.problems.push(format!(
                    "segment {base} does not follow the previous one, which ends at {exp}"
                ));
            }
        }
        let last = i + 1 == bases.len();
        if !last && !seg.is_sealed() {
            s.notes.push(format!(
                "segment {base} is not sealed though a newer one exists"
            ));
        }
        let end = check_segment(&seg, &mut s);
        expected = Some(end);
        s.end_offset = Some(end);
    }
    s
}

/// Checks one segment's frames and checkpoints; returns its end offset.
fn check_segment(seg: &Segment, s: &mut PartitionSummary) -> u64 {
    let base = seg.base_offset();
    let name = seg.path().display().to_string();
    let committed = seg.committed_end();
    let durable = seg.durable_end();
    if durable < committed {
        s.notes.push(format!(
            "{name}: {} bytes above the durable end (not flushed yet)",
            committed - durable
        ));
    }
    let m = match seg.map_or_reopen() {
        Ok(m) => m,
        Err(e) => {
            s.problems.push(e.to_string());
            return base;
        }
    };
    let version = seg.header().version;
    if version < crate::log::format::FORMAT_VERSION {
        s.notes.push(format!(
            "{name}: format version {version}, read as it is (never appended to)"
        ));
    }
    let checkpoints = m.checkpoints();
    // Records still due in the batch whose head was seen last.
    let mut batch_due: Option<(usize, u32, u32)> = None;
    let mut next_cp = 0;
    let mut at = DATA_START;
    let mut next_offset = base;
    let mut max_ts = i64::MIN;
    while at < committed {
        while next_cp < checkpoints.len() && (checkpoints[next_cp].position as usize) < at {
            s.problems.push(format!(
                "{name}: checkpoint {next_cp} points at byte {}, not a frame start",
                checkpoints[next_cp].position
            ));
            next_cp += 1;
        }
        let f = match decode_frame(m.published(at, committed)) {
            Ok(f) => f,
            Err(e) => {
                s.problems.push(format!("{name}: at byte {at}: {e}"));
                return next_offset;
            }
        };
        if f.offset != next_offset {
            s.problems.push(format!(
                "{name}: at byte {at}: offset {} where {next_offset} was expected",
                f.offset
            ));
        }
        let v2_only =
            f.attributes & !attributes::KNOWN_V1 != 0 || f.headers().any(|(_, v)| v.is_none());
        if version < 2 && v2_only {
            s.problems.push(format!(
                "{name}: at byte {at}: a version {version} segment holds a frame with version 2 fields"
            ));
        }
        if let Some(head) = f.batch() {
            if let Some((head_at, count, seen)) = batch_due {
                s.problems.push(format!(
                    "{name}: the batch at byte {head_at} has {seen} of its {count} records"
                ));
            }
            batch_due = Some((at, head.record_count, 0));
        }
        if let Some((_, count, seen)) = &mut batch_due {
            *seen += 1;
            if seen == count {
                batch_due = None;
            }
        }
        if next_cp < checkpoints.len() && checkpoints[next_cp].position as usize == at {
            let (cp_offset, cp_ts) = (
                checkpoints[next_cp].offset,
                checkpoints[next_cp].max_timestamp_before,
            );
            if cp_offset != f.offset || m.time_checkpoint_offset(next_cp) != f.offset {
                s.problems.push(format!(
                    "{name}: checkpoint {next_cp} says offset {cp_offset}, the frame holds {}",
                    f.offset
                ));
            }
            if cp_ts != max_ts {
                s.problems.push(format!(
                    "{name}: checkpoint {next_cp} says max timestamp {cp_ts}, records before it have {max_ts}"
                ));
            }
            next_cp += 1;
        }
        max_ts = max_ts.max(f.timestamp_ms);
        next_offset = f.offset.saturating_add(1);
        at += f.padded_len;
        s.records += 1;
        s.bytes += f.padded_len as u64;
    }
    if let Some((head_at, count, seen)) = batch_due {
        s.problems.push(format!(
            "{name}: the batch at byte {head_at} has {seen} of its {count} records"
        ));
    }
    if next_cp < checkpoints.len() {
        s.problems.push(format!(
            "{name}: {} checkpoints point past the committed end",
            checkpoints.len() - next_cp
        ));
    }
    next_offset
}

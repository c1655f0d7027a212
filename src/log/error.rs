//! Errors of the storage engine, as variants a caller can act on.

use std::io;
use std::path::PathBuf;

use super::format::FrameError;

/// Everything the storage engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk (or a quota) has no room for the blocks the append needs. Nothing of the
    /// batch was written; appends succeed again once space returns.
    #[error("no space left to reserve {needed_bytes} bytes in {path}")]
    NoSpace { path: PathBuf, needed_bytes: u64 },

    /// A read asked for an offset outside `[earliest, latest]`.
    #[error("offset {offset} is out of range [{earliest}, {latest}]")]
    OffsetOutOfRange {
        offset: u64,
        earliest: u64,
        latest: u64,
    },

    /// A record or batch that cannot be stored at all (e.g. larger than the 32-bit length).
    #[error("record too large: {0}")]
    RecordTooLarge(String),

    /// A batch head that does not describe its batch (wrong count, not on the first
    /// record, inconsistent fields).
    #[error("invalid batch head: {0}")]
    InvalidBatchHead(&'static str),

    /// A truncation below the replicated offset: those records are held by every in-sync
    /// replica, and no failover may remove them.
    #[error("cannot truncate to offset {offset}: records below {replicated} are replicated")]
    BelowReplicated { offset: u64, replicated: u64 },

    /// A truncation inside a batch published together (one with a batch head).
    #[error(
        "cannot truncate to offset {offset}: it is inside the batch that starts at {batch_start}"
    )]
    InsideBatch { offset: u64, batch_start: u64 },

    /// A truncation into a segment of an older format version, whose readers may not know
    /// the `truncated` word.
    #[error("cannot truncate into segment {base_offset}: it is format version {version}")]
    OldFormat { base_offset: u64, version: u32 },

    /// A replication operation on a partition that is not replicated.
    #[error("the partition is not replicated")]
    NotReplicated,
    /// Frames fetched from a cluster leader that do not continue this log.
    #[error("replicated frames do not continue the log: {0}")]
    ReplicaMismatch(String),

    /// Frames handed to `append_frames` are not valid frames.
    #[error("invalid frame at byte {position}: {source}")]
    InvalidFrame { position: usize, source: FrameError },

    /// Bytes on disk are not what the format says they must be, beyond what recovery may
    /// repair (recovery repairs only the unsealed tail).
    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// The file was written by a format version this build does not read.
    #[error("{path} has format version {found}; this build reads versions up to {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A previous flush failed: the partition refuses writes rather than pretend they are
    /// durable. Reopen the partition to clear it.
    #[error("partition stopped after a failed flush: {0}")]
    Stopped(String),

    /// The partition is open already in this process (two logs must never write the same
    /// files).
    #[error("the partition {0} is open already in this process")]
    AlreadyOpen(PathBuf),

    /// The partition's topic was deleted: no more file work is done for it.
    #[error("the partition was deleted")]
    Deleted,

    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl LogError {
    /// Wraps an `io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// A failed block reservation (`fallocate`) of `needed_bytes` on `path`: `NoSpace` when
    /// the disk or a quota is full, else `Io`.
    pub fn reserve(path: impl Into<PathBuf>, needed_bytes: u64, source: io::Error) -> Self {
        if is_no_space(&source) {
            LogError::NoSpace {
                path: path.into(),
                needed_bytes,
            }
        } else {
            LogError::io(path, source)
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LogError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Whether an `io::Error` means the disk or a quota is full.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

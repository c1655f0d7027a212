#![doc = include_str!("FORMAT.md")]
//!
//! # The engine's modules
//!
//! - [`format`](mod@format): the byte layouts above as constants and pure encode/decode functions;
//! - [`mmap`]: the only place with `unsafe` mapping access (reserve, pre-fault, msync, futex);
//! - [`index`]: the offset and time index files;
//! - [`segment`]: one segment, its shared read side and its single writer, and recovery;
//! - [`partition`]: a partition's run of segments: append, read, roll, flush, open;
//! - [`prefault`]: reserving and pre-faulting disk blocks ahead of writers, off the append path;
//! - [`tailer`]: reading a partition from its files in another process (`mapq tail`);
//! - [`verify`]: the full read-only check behind `mapq verify`.

pub mod error;
pub mod format;
pub mod index;
pub mod mmap;
pub mod partition;
pub mod prefault;
pub mod quota;
pub mod segment;
pub mod tailer;
pub mod verify;

pub use error::LogError;
pub use format::{FrameView, Record};
pub use partition::{
    batch_bytes, AppendGuard, Appended, DeleteReason, DeletedSegment, LogConfig, LogStats,
    PartitionLog, ReadBatch, RecoveryReport, StoredRecord, MAX_SEGMENT_BYTES,
};
pub use prefault::Prefaulter;
pub use quota::DiskQuota;

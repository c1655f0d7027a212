#![doc = include_str!("FORMAT.md")]
//!
//! # The engine's modules
//!
//! In the order data flows through them:
//!
//! - [`format`](mod@format): the byte layouts above as constants and pure encode/decode
//!   functions;
//! - `mmap`: mapped files and the rules that make sharing them sound (with [`sys`], the
//!   only place with `unsafe`);
//! - `index`: the offset and time index files;
//! - `segment`: one segment: its header, files, space, reader, writer and recovery;
//! - `partition`: a partition's run of segments: append, read, roll, flush, retention;
//! - `recovery`: opening a partition after any stop;
//! - `worker`: the background file worker (pre-faulting, spare segments, finishing rolls);
//! - [`tailer`]: reading a partition from its files in another process (`mapq tail`);
//! - [`verify`]: the full read-only check behind `mapq verify`;
//! - [`sys`]: the other system calls of the process (group lookup, the directory lock,
//!   the open-file limit, stop signals).
//!
//! The modules are private; what servers, tools and tailers use is re-exported here.

mod config;
mod error;
mod failpoint;
pub mod format;
mod index;
mod mmap;
mod partition;
mod quota;
mod recovery;
mod segment;
pub mod sys;
pub mod tailer;
mod util;
pub mod verify;
mod worker;

pub use config::{LogConfig, MAX_SEGMENT_BYTES};
pub use error::LogError;
pub use format::{FrameView, Record};
pub use partition::{
    batch_bytes, AppendGuard, Appended, DeleteReason, DeletedSegment, LogStats, PartitionLog,
    ReadBatch, ReplicaFrames, StoredRecord, Truncation, ValidFrames,
};
pub use quota::DiskQuota;
pub use recovery::RecoveryReport;
pub use segment::DATA_START;
pub use util::{now_ms, sync_dir};
pub use worker::{FileWorker, WorkerHandle};

//! The tunables of a partition log. The server derives them from its configuration
//! (`config/mapq.toml` documents each); the defaults here serve tests and embedders.

use std::sync::Arc;

use super::quota::DiskQuota;
use super::segment::ReservePolicy;
use super::worker::WorkerHandle;

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
    /// Pre-fault, create spare segments and finish rolls on this file worker's thread, off
    /// the append path (see [`super::FileWorker`]). Without one, the writer does that work
    /// itself when it gets there.
    pub worker: Option<WorkerHandle>,
    /// A disk quota shared with other partitions (`max_disk_bytes`).
    pub quota: Option<Arc<DiskQuota>>,
    /// The partition is replicated: its segments keep a replicated end
    /// ([`super::PartitionLog::advance_replicated`]), which `replicated_only` readers
    /// stop at, and no truncation goes below it.
    pub replicated: bool,
}

impl LogConfig {
    pub(crate) fn reserve_policy(&self) -> ReservePolicy {
        ReservePolicy {
            chunk_bytes: self.reserve_chunk_bytes as usize,
            prefault_bytes: self.prefault_bytes as usize,
            worker: self.worker.clone(),
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
            worker: None,
            quota: None,
            replicated: false,
        }
    }
}

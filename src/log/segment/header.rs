//! The segment header: its static fields, encoded once when the file is made, and the first
//! bytes of a new segment file. The dynamic fields (committed and durable ends, seal, futex
//! words) are atomics of the mapping; their publication protocol is in `FORMAT.md` §3 and
//! in [`super::writer`].

use std::path::Path;

use super::DATA_START;
use crate::log::error::{LogError, Result};
use crate::log::format::{
    self, get_u32, get_u64, segment_header as sh, FORMAT_VERSION, OLDEST_READABLE_VERSION,
};

/// The static header fields of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version of the file: [`FORMAT_VERSION`] for every file this build creates;
    /// an older one for a file an earlier release wrote (read, never appended to).
    pub version: u32,
    pub base_offset: u64,
    pub capacity_bytes: u64,
    pub created_ms: i64,
    pub index_interval_bytes: u32,
    /// For a file being created: the partition is replicated, so the file starts with a
    /// replicated end of [`DATA_START`] (nothing replicated yet) instead of 0 (not
    /// replicated). Not stored in the static header: a decoded header says `false`; read
    /// the `replicated_end` word ([`super::Mapped::replicated_end`]) to know.
    pub replicated: bool,
}

impl SegmentHeader {
    pub(super) fn encode(&self) -> [u8; sh::STATIC_END] {
        let mut h = [0u8; sh::STATIC_END];
        h[sh::MAGIC..sh::MAGIC + 8].copy_from_slice(&format::SEGMENT_MAGIC);
        h[sh::VERSION..sh::VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        h[sh::HEADER_BYTES..sh::HEADER_BYTES + 4].copy_from_slice(&(sh::SIZE as u32).to_le_bytes());
        h[sh::BASE_OFFSET..sh::BASE_OFFSET + 8].copy_from_slice(&self.base_offset.to_le_bytes());
        h[sh::CAPACITY_BYTES..sh::CAPACITY_BYTES + 8]
            .copy_from_slice(&self.capacity_bytes.to_le_bytes());
        h[sh::CREATED_MS..sh::CREATED_MS + 8].copy_from_slice(&self.created_ms.to_le_bytes());
        h[sh::INDEX_INTERVAL_BYTES..sh::INDEX_INTERVAL_BYTES + 4]
            .copy_from_slice(&self.index_interval_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&h[..sh::HEADER_CRC]);
        h[sh::HEADER_CRC..sh::HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks a header read from `path` against the format; `file_len` is the file's length.
    pub fn decode(h: &[u8], path: &Path, file_len: u64) -> Result<Self> {
        let bad = |reason: &str| LogError::corrupt(path, reason.to_owned());
        if h.len() < sh::STATIC_END || h[..8] != format::SEGMENT_MAGIC {
            return Err(bad("bad segment magic"));
        }
        if crc32c::crc32c(&h[..sh::HEADER_CRC]) != get_u32(h, sh::HEADER_CRC) {
            return Err(bad("segment header checksum mismatch"));
        }
        let version = get_u32(h, sh::VERSION);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(LogError::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if get_u32(h, sh::HEADER_BYTES) as usize != sh::SIZE {
            return Err(bad("unexpected header size"));
        }
        let header = SegmentHeader {
            version,
            base_offset: get_u64(h, sh::BASE_OFFSET),
            capacity_bytes: get_u64(h, sh::CAPACITY_BYTES),
            created_ms: get_u64(h, sh::CREATED_MS) as i64,
            index_interval_bytes: get_u32(h, sh::INDEX_INTERVAL_BYTES),
            replicated: false,
        };
        if header.capacity_bytes != file_len || file_len < DATA_START as u64 {
            return Err(bad("capacity does not match the file length"));
        }
        if header.index_interval_bytes == 0 {
            return Err(bad("index interval is zero"));
        }
        Ok(header)
    }

    /// The start of a new segment's file: its static header, then the committed and durable
    /// ends (both at the data start) and, when replicated, the replicated end (there too),
    /// zeros between them.
    pub(super) fn new_head(&self) -> [u8; sh::REPLICATED_END + 8] {
        let mut head = [0u8; sh::REPLICATED_END + 8];
        if self.replicated {
            head[sh::REPLICATED_END..sh::REPLICATED_END + 8]
                .copy_from_slice(&(DATA_START as u64).to_le_bytes());
        }
        head[..sh::STATIC_END].copy_from_slice(&self.encode());
        head[sh::COMMITTED_END..sh::COMMITTED_END + 8]
            .copy_from_slice(&(DATA_START as u64).to_le_bytes());
        head[sh::DURABLE_END..sh::DURABLE_END + 8]
            .copy_from_slice(&(DATA_START as u64).to_le_bytes());
        head
    }

    /// Capacity of each index file: one entry per full interval of data at most.
    pub(super) fn index_capacity(&self) -> usize {
        (self.capacity_bytes as usize - DATA_START) / self.index_interval_bytes as usize + 1
    }
}

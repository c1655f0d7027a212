//! Offset and time index files: mapped arrays of checkpoints.
//!
//! Entry `k` of both files of a segment describes the same checkpoint: the frame at byte
//! `position` holds record `offset`, and every record of the segment before `offset` has a
//! timestamp of at most `max_timestamp_before`. See `FORMAT.md`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::{LogError, Result};
use super::format::{self, get_u32, get_u64, index_header as ih, INDEX_VERSION};
use super::mmap::{Appender, Frontier, Layout, MappedFile};

/// Where an index file's header, published entries and entry count lie.
const LAYOUT: Layout = Layout {
    static_end: ih::HEADER_CRC + 4,
    published_from: ih::SIZE,
    frontier: Some(Frontier {
        word: ih::COUNT,
        base: ih::SIZE,
        unit: ih::ENTRY_SIZE,
    }),
};

/// Which of the two index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Entries `(offset, position)`.
    Offset,
    /// Entries `(max_timestamp_before as i64, offset)`.
    Time,
}

impl IndexKind {
    pub fn magic(self) -> [u8; 8] {
        match self {
            IndexKind::Offset => format::OFFSET_INDEX_MAGIC,
            IndexKind::Time => format::TIME_INDEX_MAGIC,
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            IndexKind::Offset => format::OFFSET_INDEX_EXT,
            IndexKind::Time => format::TIME_INDEX_EXT,
        }
    }
}

/// One mapped index file.
#[derive(Debug)]
pub struct Index {
    map: Arc<MappedFile>,
    path: PathBuf,
    capacity: usize,
    /// Disk blocks are allocated below this byte position: entries below it can be written
    /// without a page fault that could fail for lack of space. Grows as the segment fills
    /// (see [`Index::allocation_for`]), so an idle partition's index holds one block.
    allocated_end: AtomicUsize,
}

/// Bytes of an index file holding `capacity` entries.
pub fn file_len(capacity: usize) -> u64 {
    (ih::SIZE + capacity * ih::ENTRY_SIZE) as u64
}

/// Bytes allocated when an index file is created: its header and the first entries.
pub const INITIAL_ALLOCATION_BYTES: usize = 4096;

impl Index {
    /// Creates the index file at `path` (replacing any file there through a rename), with
    /// its first block reserved; the writer reserves more ahead of its entries (see
    /// [`Index::allocation_for`]), so that writing an entry never faults for lack of space.
    pub fn create(path: &Path, kind: IndexKind, base_offset: u64, capacity: usize) -> Result<Self> {
        let tmp = path.with_extension(format!("{}.{}", kind.ext(), format::CREATING_SUFFIX));
        let mut index = Self::create_at(&tmp, kind, base_offset, capacity)?;
        std::fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
        index.path = path.to_owned();
        index.release_file();
        Ok(index)
    }

    /// Creates the index file at exactly `path` (replacing any file there), blocks reserved.
    pub fn create_at(
        path: &Path,
        kind: IndexKind,
        base_offset: u64,
        capacity: usize,
    ) -> Result<Self> {
        let tmp = path.to_owned();
        let _ = std::fs::remove_file(&tmp);
        let len = file_len(capacity);
        let mut header = [0u8; ih::HEADER_CRC + 4];
        header[ih::MAGIC..ih::MAGIC + 8].copy_from_slice(&kind.magic());
        header[ih::VERSION..ih::VERSION + 4].copy_from_slice(&INDEX_VERSION.to_le_bytes());
        header[ih::ENTRY_BYTES..ih::ENTRY_BYTES + 4]
            .copy_from_slice(&(ih::ENTRY_SIZE as u32).to_le_bytes());
        header[ih::BASE_OFFSET..ih::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
        header[ih::CAPACITY_ENTRIES..ih::CAPACITY_ENTRIES + 8]
            .copy_from_slice(&(capacity as u64).to_le_bytes());
        let crc = crc32c::crc32c(&header[..ih::HEADER_CRC]);
        header[ih::HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        let initial = INITIAL_ALLOCATION_BYTES.min(len as usize);
        let map =
            MappedFile::create_with_head(&tmp, len, initial, &header, LAYOUT).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                LogError::reserve(&tmp, initial as u64, e)
            })?;
        Ok(Index {
            map: Arc::new(map),
            path: tmp,
            capacity,
            allocated_end: AtomicUsize::new(initial),
        })
    }

    /// Rewrites the base offset in the header (and its CRC), and the path the index will
    /// have once renamed. For a spare index nobody else maps yet: owned by value, and its
    /// file still has a temporary name.
    pub fn adopt(&mut self, base_offset: u64, path: PathBuf) -> Result<()> {
        let map = Arc::get_mut(&mut self.map)
            .ok_or_else(|| LogError::corrupt(&self.path, "adopting an index in use"))?;
        let header = map.bytes_mut(0..ih::HEADER_CRC + 4);
        header[ih::BASE_OFFSET..ih::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
        let crc = crc32c::crc32c(&header[..ih::HEADER_CRC]);
        header[ih::HEADER_CRC..ih::HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        self.path = path;
        Ok(())
    }

    /// Opens and checks an existing index file.
    pub fn open(path: &Path, kind: IndexKind, base_offset: u64, writable: bool) -> Result<Self> {
        let bad = |reason: String| LogError::corrupt(path, reason);
        let map = MappedFile::open(path, writable, LAYOUT).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => bad(format!("index file too short: {e}")),
            _ => LogError::io(path, e),
        })?;
        let header = map.static_header();
        if header[..8] != kind.magic() {
            return Err(bad("bad magic".into()));
        }
        let crc = crc32c::crc32c(&header[..ih::HEADER_CRC]);
        if crc != get_u32(header, ih::HEADER_CRC) {
            return Err(bad("header checksum mismatch".into()));
        }
        let version = get_u32(header, ih::VERSION);
        if version != INDEX_VERSION {
            return Err(LogError::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: INDEX_VERSION,
            });
        }
        if get_u32(header, ih::ENTRY_BYTES) as usize != ih::ENTRY_SIZE {
            return Err(bad("unexpected entry size".into()));
        }
        if get_u64(header, ih::BASE_OFFSET) != base_offset {
            return Err(bad("base offset does not match the file name".into()));
        }
        let capacity = get_u64(header, ih::CAPACITY_ENTRIES);
        if capacity
            .checked_mul(ih::ENTRY_SIZE as u64)
            .and_then(|b| b.checked_add(file_len(0)))
            .is_none_or(|total| total > map.len() as u64)
        {
            return Err(bad(format!("capacity {capacity} exceeds the file")));
        }
        // What is allocated is not recorded: take the blocks the file holds (allocated from
        // its start, as this module does), less a margin, and never less than what holds the
        // published entries. Re-allocating a block that exists costs nothing.
        let blocks = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0) as usize;
        let count = (map.frontier() as usize).min(capacity as usize);
        let written = ih::SIZE + count * ih::ENTRY_SIZE;
        let allocated = (blocks.saturating_sub(2 * 4096) & !(4096 - 1)).max(written);
        let index = Index {
            allocated_end: AtomicUsize::new(allocated.min(map.len())),
            map: Arc::new(map),
            path: path.to_owned(),
            capacity: capacity as usize,
        };
        index.release_file();
        Ok(index)
    }

    /// Closes the index's file descriptor once the file has its final name (the mapping
    /// stays; a later allocation reopens the file for the call). An idle partition's two
    /// index files then cost no descriptor.
    pub fn release_file(&self) {
        self.map.release_file(&self.path);
    }

    /// Bytes allocated on disk for this file (as far as this process knows).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_end.load(Ordering::Acquire) as u64
    }

    /// The byte range to allocate so that the first `entries` entries can be written, or
    /// `None` when they can already. It grows the allocation geometrically (at least
    /// doubling it), so a busy segment allocates its index a few times, an idle one never.
    pub fn allocation_for(&self, entries: usize) -> Option<Range<usize>> {
        let have = self.allocated_end.load(Ordering::Acquire);
        let need = (ih::SIZE + entries.min(self.capacity) * ih::ENTRY_SIZE)
            .next_multiple_of(4096)
            .min(self.map.len());
        (need > have).then(|| {
            let end = need
                .max(2 * have)
                .next_multiple_of(4096)
                .min(self.map.len());
            have..end
        })
    }

    /// Allocates the disk blocks of `range` (from [`Index::allocation_for`]).
    pub fn allocate(&self, range: Range<usize>) -> std::io::Result<()> {
        self.map.reserve(range.clone())?;
        // Release: a writer that sees the new end sees the allocation done.
        self.allocated_end.fetch_max(range.end, Ordering::AcqRel);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of published entries, clamped to the capacity so that a corrupt count can never
    /// send a reader out of bounds.
    pub fn count(&self) -> usize {
        // Acquire (in `frontier`): pairs with the writer's Release, so the entries below are
        // visible.
        (self.map.frontier() as usize).min(self.capacity)
    }

    /// Entry `i`, which must be below `count()` (zeros otherwise).
    pub fn entry(&self, i: usize) -> (u64, u64) {
        let at = ih::SIZE + i * ih::ENTRY_SIZE;
        let bytes = self.map.published(at..at + ih::ENTRY_SIZE);
        if bytes.len() < ih::ENTRY_SIZE {
            debug_assert!(false, "index entry {i} read above the published count");
            return (0, 0);
        }
        (get_u64(bytes, 0), get_u64(bytes, 8))
    }

    /// The index of the last entry among the first `count` whose key (given by `key`) is at
    /// most `target`, if any. Keys must be non-decreasing.
    pub fn last_at_or_below(
        &self,
        count: usize,
        target: u64,
        key: impl Fn((u64, u64)) -> u64,
    ) -> Option<usize> {
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(self.entry(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// The index's single writer (see [`IndexWriter`]): `None` if it was taken before or the
    /// index is read-only.
    pub fn writer(&self) -> Option<IndexWriter> {
        Some(IndexWriter {
            appender: self.map.appender()?,
            capacity: self.capacity,
        })
    }

    /// Drops every entry from `count` on and zeroes them, on an index nobody else in this
    /// process uses (recovery, before the segment is shared).
    pub fn truncate(&mut self, count: usize) -> Result<()> {
        let old = self.count();
        let map = Arc::get_mut(&mut self.map)
            .ok_or_else(|| LogError::corrupt(&self.path, "truncating an index in use"))?;
        let count = count.min(old);
        // Always: a stored count beyond the capacity (a damaged file) is brought back too.
        map.set_frontier(count as u64);
        map.bytes_mut(ih::SIZE + count * ih::ENTRY_SIZE..ih::SIZE + old * ih::ENTRY_SIZE)
            .fill(0);
        Ok(())
    }

    /// Releases the disk blocks past the first `count` entries (on seal). Returns the bytes
    /// released that had been allocated.
    pub fn release_unused(&self, count: usize) -> u64 {
        let start = ih::SIZE + count.min(self.capacity) * ih::ENTRY_SIZE;
        let start = start.next_multiple_of(4096).min(self.map.len());
        match self.map.punch_unpublished(start..self.map.len()) {
            Ok(()) => {
                let before = self.allocated_end.swap(start, Ordering::AcqRel);
                before.saturating_sub(start) as u64
            }
            Err(_) => 0,
        }
    }
}

/// The single writer of an index: writes entries above the published count and publishes
/// them. Owned by the segment's writer.
#[derive(Debug)]
pub struct IndexWriter {
    appender: Appender,
    capacity: usize,
}

impl IndexWriter {
    /// Writes entry `i`, at or above the published count, without publishing it. Returns
    /// false when the index is full.
    pub fn write_entry(&mut self, i: usize, a: u64, b: u64) -> bool {
        if i >= self.capacity {
            return false;
        }
        let at = ih::SIZE + i * ih::ENTRY_SIZE;
        let slot = self.appender.unpublished_mut(at..at + ih::ENTRY_SIZE);
        slot[..8].copy_from_slice(&a.to_le_bytes());
        slot[8..].copy_from_slice(&b.to_le_bytes());
        true
    }

    /// Publishes entries up to `count` (Release, in the appender).
    pub fn publish(&mut self, count: usize) {
        self.appender.publish(count as u64);
    }
}

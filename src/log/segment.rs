//! One segment: a mapped data file of frames plus its two index files.
//!
//! [`Segment`] is the shared, read side: any number of threads read it without locks.
//! [`SegmentWriter`] is the single writer of the active segment; it owns the bytes above the
//! committed end and publishes them with one Release store.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use super::error::{LogError, Result};
use super::format::{
    self, decode_frame, decode_frame_unchecked_crc, get_u32, get_u64, segment_header as sh,
    FrameView, Record, FORMAT_VERSION,
};
use super::index::{Index, IndexKind};
use super::mmap::{futex_wake_all, MappedFile};
use super::prefault::PrefaultHandle;
use super::quota::DiskQuota;

/// Position of the first frame in every segment file.
pub const DATA_START: usize = sh::SIZE;

/// Pre-faulting proceeds in steps of this many bytes (a multiple of the page size).
pub const PREFAULT_STEP_BYTES: usize = 256 << 10;

/// Maps an i64 timestamp to a u64 with the same order, for binary searches.
fn ordered(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

/// Base offset written in a spare segment's header until it is adopted.
pub const SPARE_BASE_OFFSET: u64 = u64::MAX;

/// Path of a spare segment's file of the given extension: `<name>.<ext>.new`.
pub fn spare_path(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}.{}", format::CREATING_SUFFIX))
}

/// Path of a segment's file of the given extension.
pub fn segment_path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(format::file_name(base_offset, ext))
}

/// The static header fields of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base_offset: u64,
    pub capacity_bytes: u64,
    pub created_ms: i64,
    pub index_interval_bytes: u32,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; sh::STATIC_END] {
        let mut h = [0u8; sh::STATIC_END];
        h[sh::MAGIC..sh::MAGIC + 8].copy_from_slice(&format::SEGMENT_MAGIC);
        h[sh::VERSION..sh::VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if version != FORMAT_VERSION {
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
            base_offset: get_u64(h, sh::BASE_OFFSET),
            capacity_bytes: get_u64(h, sh::CAPACITY_BYTES),
            created_ms: get_u64(h, sh::CREATED_MS) as i64,
            index_interval_bytes: get_u32(h, sh::INDEX_INTERVAL_BYTES),
        };
        if header.capacity_bytes != file_len || file_len < DATA_START as u64 {
            return Err(bad("capacity does not match the file length"));
        }
        if header.index_interval_bytes == 0 {
            return Err(bad("index interval is zero"));
        }
        Ok(header)
    }
}

/// A segment, shared by the writer and every reader.
#[derive(Debug)]
pub struct Segment {
    header: SegmentHeader,
    path: PathBuf,
    /// The mapped files; `None` once closed while idle (sealed, durable segments only),
    /// reopened on demand. Readers hold an `Arc<Mapped>` while they use it.
    mapped: ArcSwapOption<Mapped>,
    /// The committed end, remembered when the segment is closed.
    closed_end: AtomicUsize,
    /// When a reader last asked for the mapping (ms since the Unix epoch).
    last_used_ms: AtomicI64,
    /// Serializes reopening.
    reopen_lock: Mutex<()>,
    /// The offset after the last published record. Written by the writer after each
    /// publish (Release), so in-process readers know a segment's last offset without a scan.
    next_offset: AtomicU64,
    /// Largest timestamp of any published record (`i64::MIN` while empty), for retention
    /// and timestamp lookups.
    max_timestamp_ms: AtomicI64,
    /// Disk blocks are allocated (`fallocate`) below this position, so writes below it cannot
    /// fault for lack of space. Grows only, under `allocate_lock`.
    allocated_end: AtomicUsize,
    /// Serializes allocations of this segment (quick: `fallocate` of unwritten extents).
    allocate_lock: Mutex<()>,
    /// Pages are pre-faulted for writing below this position (a hint: the writer does not
    /// depend on it). Advanced by whoever pre-faults.
    prefaulted_end: AtomicUsize,
    /// A prefault request for this segment is queued.
    pub(super) prefault_requested: AtomicBool,
    /// The kernel may read ahead around faults in the data (see `enable_read_ahead`).
    read_ahead: AtomicBool,
    /// The data directory's disk quota, if any, and the bytes this segment has charged to it.
    quota: Option<Arc<DiskQuota>>,
    charged_bytes: AtomicU64,
}

/// A segment's mapped files.
#[derive(Debug)]
pub struct Mapped {
    path: PathBuf,
    data: Arc<MappedFile>,
    offset_index: Index,
    time_index: Index,
}

/// The base offsets of the segment files in a partition directory, oldest first.
pub(crate) fn list_bases(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut bases: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            format::parse_file_name(name.to_str()?, format::SEGMENT_EXT)
        })
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A segment's offset and time index files, made by `create` (which names them).
fn create_indexes(create: impl Fn(IndexKind) -> Result<Index>) -> Result<(Index, Index)> {
    Ok((create(IndexKind::Offset)?, create(IndexKind::Time)?))
}

/// Charges `bytes` to the quota, if there is one; over it, the error a full disk gives.
fn charge_quota(
    quota: Option<&Arc<DiskQuota>>,
    bytes: u64,
    path: impl FnOnce() -> PathBuf,
) -> Result<()> {
    match quota {
        Some(q) if !q.try_take(bytes) => Err(LogError::NoSpace {
            path: path(),
            needed_bytes: bytes,
        }),
        _ => Ok(()),
    }
}

/// Bytes allocated when a segment is created: the data file's header page and each index
/// file's first block.
fn initial_charge(index_cap: usize) -> u64 {
    let index =
        (super::index::INITIAL_ALLOCATION_BYTES as u64).min(super::index::file_len(index_cap));
    2 * index + DATA_START as u64
}

/// Data a segment holds before the kernel may read ahead in it (see
/// `Segment::enable_read_ahead`).
pub const READ_AHEAD_AFTER_BYTES: usize = 1 << 20;

/// The smallest distance a writer allocates disk blocks ahead of itself (the largest is the
/// configured `chunk_bytes`).
pub const MIN_RESERVE_AHEAD_BYTES: usize = 16 << 10;
/// The smallest distance a writer pre-faults pages ahead of itself (the largest is the
/// configured `prefault_bytes`): one page.
pub const MIN_PREFAULT_AHEAD_BYTES: usize = 4 << 10;

/// How far ahead of `position` to reserve or pre-fault, from `min_bytes` to `max_bytes`: as
/// much as the segment already holds, so that an idle partition holds a few pages beyond
/// its data and a busy one quickly reaches the configured distance (the allocation at least
/// doubles each time).
pub fn ahead_bytes(position: usize, min_bytes: usize, max_bytes: usize) -> usize {
    let max_bytes = max_bytes.max(4096);
    (position - DATA_START.min(position))
        .next_power_of_two()
        .clamp(min_bytes.min(max_bytes), max_bytes)
}

/// The start of a new segment's file: its static header, then the committed and durable
/// ends (both at the data start), zeros between them.
fn new_head(header: &SegmentHeader) -> [u8; sh::DURABLE_END + 8] {
    let mut head = [0u8; sh::DURABLE_END + 8];
    head[..sh::STATIC_END].copy_from_slice(&header.encode());
    head[sh::COMMITTED_END..sh::COMMITTED_END + 8]
        .copy_from_slice(&(DATA_START as u64).to_le_bytes());
    head[sh::DURABLE_END..sh::DURABLE_END + 8].copy_from_slice(&(DATA_START as u64).to_le_bytes());
    head
}

/// Capacity of each index file for a segment of `capacity` bytes: one entry per full
/// interval of data at most.
fn index_capacity(capacity: usize, interval: usize) -> usize {
    (capacity - DATA_START) / interval + 1
}

impl Segment {
    /// Creates a new segment in `dir`: its index files first, then the data file under a
    /// temporary name, made durable and renamed into place, so a `.log` file always has a
    /// whole header. Replaces an existing (empty) segment with the same base offset.
    pub fn create(
        dir: &Path,
        header: SegmentHeader,
        quota: Option<&Arc<DiskQuota>>,
    ) -> Result<Self> {
        let base = header.base_offset;
        let capacity = header.capacity_bytes as usize;
        let interval = header.index_interval_bytes as usize;
        let index_cap = index_capacity(capacity, interval);
        // The index files and the data file get their first blocks; the writer allocates
        // more ahead of itself as it fills them.
        let charge = initial_charge(index_cap);
        charge_quota(quota, charge, || {
            segment_path(dir, base, format::SEGMENT_EXT)
        })?;
        let created = Self::create_files(dir, header, index_cap, quota, charge);
        if created.is_err() {
            if let Some(q) = quota {
                q.give_back(charge);
            }
        }
        created
    }

    fn create_files(
        dir: &Path,
        header: SegmentHeader,
        index_cap: usize,
        quota: Option<&Arc<DiskQuota>>,
        charged: u64,
    ) -> Result<Self> {
        let base = header.base_offset;
        let capacity = header.capacity_bytes as usize;
        let (offset_index, time_index) = create_indexes(|kind| {
            Index::create(&segment_path(dir, base, kind.ext()), kind, base, index_cap)
        })?;
        let path = segment_path(dir, base, format::SEGMENT_EXT);
        let tmp = path.with_extension(format!(
            "{}.{}",
            format::SEGMENT_EXT,
            format::CREATING_SUFFIX
        ));
        let _ = fs::remove_file(&tmp);
        let cleanup = |e: std::io::Error| {
            let _ = fs::remove_file(&tmp);
            LogError::reserve(&tmp, DATA_START as u64, e)
        };
        let data =
            MappedFile::create_with_head(&tmp, capacity as u64, DATA_START, &new_head(&header))
                .map_err(cleanup)?;
        let seg = Self::assemble(
            header,
            path.clone(),
            data,
            offset_index,
            time_index,
            quota,
            charged,
        );
        seg.live()
            .expect("a new segment is mapped")
            .data
            .flush(0..DATA_START)
            .map_err(cleanup)?;
        fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
        sync_dir(dir)?;
        seg.release_files();
        Ok(seg)
    }

    /// Creates a spare segment for a future roll, under temporary names
    /// (`<name>.log.new` and its index files), with a placeholder base offset: the writer
    /// adopts it when the active segment fills, and the files get their final names shortly
    /// after (see [`Segment::rename_spare_files`]). Creating it, the slow part of a roll, thus
    /// happens off the append path.
    pub fn create_spare(
        dir: &Path,
        name: &str,
        capacity_bytes: u64,
        index_interval_bytes: u32,
        quota: Option<&Arc<DiskQuota>>,
    ) -> Result<Self> {
        let header = SegmentHeader {
            base_offset: SPARE_BASE_OFFSET,
            capacity_bytes,
            created_ms: 0,
            index_interval_bytes,
        };
        let index_cap = index_capacity(capacity_bytes as usize, index_interval_bytes as usize);
        let charge = initial_charge(index_cap);
        let path = spare_path(dir, name, format::SEGMENT_EXT);
        charge_quota(quota, charge, || path.clone())?;
        let created = (|| {
            let (offset_index, time_index) = create_indexes(|kind| {
                let path = spare_path(dir, name, kind.ext());
                Index::create_at(&path, kind, SPARE_BASE_OFFSET, index_cap)
            })?;
            let _ = fs::remove_file(&path);
            let data =
                MappedFile::create_with_head(&path, capacity_bytes, DATA_START, &new_head(&header))
                    .map_err(|e| LogError::reserve(&path, DATA_START as u64, e))?;
            Ok(Self::assemble(
                header,
                path.clone(),
                data,
                offset_index,
                time_index,
                quota,
                charge,
            ))
        })();
        if created.is_err() {
            if let Some(q) = quota {
                q.give_back(charge);
            }
            for ext in [
                format::SEGMENT_EXT,
                format::OFFSET_INDEX_EXT,
                format::TIME_INDEX_EXT,
            ] {
                let _ = fs::remove_file(spare_path(dir, name, ext));
            }
        }
        created
    }

    /// Makes a spare the segment with `base_offset`: writes its real header (base offset,
    /// creation time, checksum) and the index headers. The files keep their temporary names
    /// until [`Segment::rename_spare_files`]. Only on a spare owned by value (shared with no
    /// one).
    pub fn adopt(mut self, dir: &Path, base_offset: u64, created_ms: i64) -> Self {
        self.header.base_offset = base_offset;
        self.header.created_ms = created_ms;
        self.rewrite_header();
        self.path = segment_path(dir, base_offset, format::SEGMENT_EXT);
        if let Some(m) = self.mapped.swap(None) {
            // Owned by value and never shared: the writer holds the only reference.
            match Arc::try_unwrap(m) {
                Ok(mut m) => {
                    m.path = self.path.clone();
                    m.offset_index.adopt(
                        base_offset,
                        segment_path(dir, base_offset, format::OFFSET_INDEX_EXT),
                    );
                    m.time_index.adopt(
                        base_offset,
                        segment_path(dir, base_offset, format::TIME_INDEX_EXT),
                    );
                    self.mapped.store(Some(Arc::new(m)));
                }
                Err(m) => self.mapped.store(Some(m)),
            }
        }
        self.next_offset = AtomicU64::new(base_offset);
        self
    }

    /// Rewrites the static header of an adopted spare through the mapping: its page was
    /// written at creation, so it is in memory and the write cannot fail.
    fn rewrite_header(&self) {
        let Some(m) = self.live() else { return };
        // SAFETY: only called on a spare owned by value (shared with no one) whose file has a
        // temporary name: nobody else reads the static header.
        unsafe { m.data.writable(0..sh::STATIC_END) }.copy_from_slice(&self.header.encode());
    }

    /// Gives an adopted spare's files their final names: the index files first, the data
    /// file last, so a `.log` file always comes with its indexes.
    pub fn rename_spare_files(dir: &Path, name: &str, base_offset: u64) -> Result<()> {
        for ext in [
            format::OFFSET_INDEX_EXT,
            format::TIME_INDEX_EXT,
            format::SEGMENT_EXT,
        ] {
            let from = spare_path(dir, name, ext);
            let to = segment_path(dir, base_offset, ext);
            fs::rename(&from, &to).map_err(|e| LogError::io(&from, e))?;
        }
        Ok(())
    }

    fn assemble(
        header: SegmentHeader,
        path: PathBuf,
        data: MappedFile,
        offset_index: Index,
        time_index: Index,
        quota: Option<&Arc<DiskQuota>>,
        charged: u64,
    ) -> Self {
        Segment {
            header,
            mapped: ArcSwapOption::from_pointee(Mapped {
                path: path.clone(),
                data: Arc::new(data),
                offset_index,
                time_index,
            }),
            path,
            closed_end: AtomicUsize::new(0),
            last_used_ms: AtomicI64::new(now_ms()),
            reopen_lock: Mutex::new(()),
            next_offset: AtomicU64::new(header.base_offset),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            allocated_end: AtomicUsize::new(DATA_START),
            allocate_lock: Mutex::new(()),
            prefaulted_end: AtomicUsize::new(DATA_START),
            prefault_requested: AtomicBool::new(false),
            read_ahead: AtomicBool::new(false),
            quota: quota.cloned(),
            charged_bytes: AtomicU64::new(charged),
        }
    }

    /// Closes the descriptors of the segment's three files, which must have their final
    /// names: the mappings stay, and the rare calls that need a file (block allocation,
    /// releasing blocks on seal) reopen it for the call. So an idle partition holds no file
    /// descriptor. For a spare adopted by a roll: once its files are renamed.
    pub(super) fn release_files(&self) {
        if let Some(m) = self.live() {
            m.data.release_file(&m.path);
            m.offset_index.release_file();
            m.time_index.release_file();
        }
    }

    /// Lets the kernel read ahead around faults in this segment's data, once it holds
    /// [`READ_AHEAD_AFTER_BYTES`]. Until then faults map single pages: around a fault in a
    /// hole, read-ahead zeroes a whole window nobody asked for, which made creating and
    /// opening idle partitions slow (measured); past it, read-ahead's large pages make a busy
    /// writer's faults several times cheaper (also measured), and readers mostly read in
    /// order.
    fn enable_read_ahead(&self) {
        if !self.read_ahead.load(Ordering::Relaxed)
            && !self.read_ahead.swap(true, Ordering::Relaxed)
        {
            if let Some(m) = self.live() {
                m.data.read_ahead(0..m.data.len());
            }
        }
    }

    /// Opens an existing segment. With `writable`, index files that are missing or damaged
    /// are recreated empty (recovery refills them); read-only, they are an error.
    pub fn open(
        dir: &Path,
        base_offset: u64,
        writable: bool,
        quota: Option<&Arc<DiskQuota>>,
    ) -> Result<Self> {
        let path = segment_path(dir, base_offset, format::SEGMENT_EXT);
        let data = MappedFile::open(&path, writable).map_err(|e| LogError::io(&path, e))?;
        data.release_file(&path);
        if data.len() < DATA_START {
            return Err(LogError::corrupt(
                &path,
                "file shorter than a segment header",
            ));
        }
        // SAFETY: the static header is written once, before the file gets its final name.
        let header_bytes = unsafe { data.frozen(0..sh::STATIC_END) };
        let header = SegmentHeader::decode(header_bytes, &path, data.len() as u64)?;
        if header.base_offset != base_offset {
            return Err(LogError::corrupt(
                &path,
                "base offset does not match the file name",
            ));
        }
        let committed = data.atomic_u64(sh::COMMITTED_END).load(Ordering::Acquire);
        if committed < DATA_START as u64
            || committed > header.capacity_bytes
            || !committed.is_multiple_of(format::FRAME_ALIGN as u64)
        {
            return Err(LogError::corrupt(
                &path,
                format!("committed end {committed} outside the data area"),
            ));
        }
        let index_cap = index_capacity(data.len(), header.index_interval_bytes as usize);
        let open_index = |kind: IndexKind| -> Result<Index> {
            let p = segment_path(dir, base_offset, kind.ext());
            match Index::open(&p, kind, base_offset, writable) {
                Ok(ix) if !writable || ix.capacity() >= index_cap => Ok(ix),
                Err(e) if !writable => Err(e),
                _ => {
                    tracing::warn!(path = %p.display(), "index file missing or damaged; rebuilding it");
                    Index::create(&p, kind, base_offset, index_cap)
                }
            }
        };
        let offset_index = open_index(IndexKind::Offset)?;
        let time_index = open_index(IndexKind::Time)?;
        // Blocks that exist are charged whatever the limit.
        let charged: u64 = [path.as_path(), offset_index.path(), time_index.path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        if let Some(q) = quota {
            q.take(charged);
        }
        let seg = Segment {
            header,
            mapped: ArcSwapOption::from_pointee(Mapped {
                path: path.clone(),
                data: Arc::new(data),
                offset_index,
                time_index,
            }),
            path,
            closed_end: AtomicUsize::new(0),
            last_used_ms: AtomicI64::new(now_ms()),
            reopen_lock: Mutex::new(()),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            // Recovery sets the real value; until then nothing counts as reserved.
            allocated_end: AtomicUsize::new(DATA_START),
            allocate_lock: Mutex::new(()),
            prefaulted_end: AtomicUsize::new(DATA_START),
            prefault_requested: AtomicBool::new(false),
            read_ahead: AtomicBool::new(false),
            quota: quota.cloned(),
            charged_bytes: AtomicU64::new(charged),
        };
        if committed as usize >= DATA_START + READ_AHEAD_AFTER_BYTES {
            seg.enable_read_ahead();
        }
        Ok(seg)
    }

    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> usize {
        self.header.capacity_bytes as usize
    }

    /// The mapping if the segment is open, without reopening it.
    pub fn live(&self) -> Option<Arc<Mapped>> {
        self.mapped.load_full()
    }

    /// The mapping, reopened (read-only) if the segment was closed while idle. Blocks then.
    pub fn mapped(&self) -> Result<Arc<Mapped>> {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        if let Some(m) = self.live() {
            return Ok(m);
        }
        let _one = self.reopen_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.live() {
            return Ok(m);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let base = self.base_offset();
        let data = MappedFile::open(&self.path, false).map_err(|e| LogError::io(&self.path, e))?;
        data.release_file(&self.path);
        if data.len() != self.capacity() {
            return Err(LogError::corrupt(&self.path, "segment file changed size"));
        }
        // Sealed: its data is all below the committed end, read in order.
        data.read_ahead(0..data.len());
        let index =
            |kind: IndexKind| Index::open(&segment_path(dir, base, kind.ext()), kind, base, false);
        let m = Arc::new(Mapped {
            path: self.path.clone(),
            data: Arc::new(data),
            offset_index: index(IndexKind::Offset)?,
            time_index: index(IndexKind::Time)?,
        });
        self.mapped.store(Some(Arc::clone(&m)));
        Ok(m)
    }

    /// Unmaps the segment and closes its files if it is sealed, fully durable and was not
    /// used since `idle_since_ms`. It reopens on demand; readers still holding the mapping
    /// keep it until they are done. Returns whether it closed.
    pub fn close_if_idle(&self, idle_since_ms: i64) -> bool {
        let Some(m) = self.live() else { return false };
        if self.last_used_ms.load(Ordering::Relaxed) > idle_since_ms
            || !m.is_sealed()
            || m.durable_end() < m.committed_end()
        {
            return false;
        }
        self.closed_end.store(m.committed_end(), Ordering::Release);
        self.mapped.store(None);
        true
    }

    /// Tailers (in any process) registered as blocked on this segment's futex word.
    pub fn tail_waiters(&self) -> u32 {
        self.live().map_or(0, |m| {
            m.data.atomic_u32(sh::WAITERS).load(Ordering::Relaxed)
        })
    }

    /// Whether the segment is mapped now.
    pub fn is_open(&self) -> bool {
        self.live().is_some()
    }

    /// When a reader last used the segment (ms since the Unix epoch).
    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// The offset the next record appended to this segment would get (for a sealed segment:
    /// one past its last record).
    pub fn next_offset(&self) -> u64 {
        // Acquire: pairs with the writer's Release after publishing.
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms.load(Ordering::Acquire)
    }

    /// The committed end (of a closed segment: the one it had when closed).
    pub fn committed_end(&self) -> usize {
        match self.live() {
            Some(m) => m.committed_end(),
            None => self.closed_end.load(Ordering::Acquire),
        }
    }

    pub fn durable_end(&self) -> usize {
        match self.live() {
            Some(m) => m.durable_end(),
            None => self.closed_end.load(Ordering::Acquire),
        }
    }

    /// Whether the segment is sealed (a closed segment always is).
    pub fn is_sealed(&self) -> bool {
        self.live().is_none_or(|m| m.is_sealed())
    }

    /// Bytes of data published in this segment (frames only, header excluded).
    pub fn size_bytes(&self) -> u64 {
        (self.committed_end().saturating_sub(DATA_START)) as u64
    }

    /// The published checkpoints `(offset, position, max_timestamp_before)`; none when the
    /// files cannot be mapped.
    pub fn checkpoints(&self) -> Vec<(u64, u64, i64)> {
        self.mapped().map(|m| m.checkpoints()).unwrap_or_default()
    }

    /// The first published record of this segment with a timestamp at or after
    /// `timestamp_ms`: its offset and position.
    pub fn find_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, usize)>> {
        if self.max_timestamp_ms() < timestamp_ms {
            return Ok(None);
        }
        self.mapped()?.find_timestamp(timestamp_ms)
    }

    /// Reads frames from the one at `offset` (if published here) within the budgets: the
    /// frames as zero-copy `Bytes`, their count and the offset after the last one. With
    /// `force_one`, the first frame is taken even when it alone exceeds `max_bytes`.
    pub fn read_from(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        force_one: bool,
    ) -> Result<Option<(Bytes, usize, u64, bool)>> {
        let m = self.mapped()?;
        let committed = m.committed_end();
        let Some(pos) = m.locate(offset, committed)? else {
            return Ok(None);
        };
        let (stop, n, next) = m.scan_for_read(pos, committed, max_records, max_bytes, force_one)?;
        Ok(Some((
            m.published_bytes(pos, stop),
            n,
            next,
            stop == committed,
        )))
    }

    /// Makes everything published so far durable with one msync over the header and the new
    /// data, then records the new durable end (which itself reaches the disk with the next
    /// flush). Index files are left to the kernel's writeback: recovery checks every
    /// checkpoint it keeps against the data and rebuilds the rest. Returns the durable end.
    pub fn flush(&self) -> Result<usize> {
        let Some(m) = self.live() else {
            // Only sealed, durable segments are closed.
            return Ok(self.committed_end());
        };
        let committed = m.committed_end();
        if committed <= m.durable_end() || !m.data.is_writable() {
            return Ok(committed);
        }
        m.data
            .flush(0..committed)
            .map_err(|e| LogError::io(&self.path, e))?;
        // Release: a tailer that reads only durable data sees the frames below it.
        m.data
            .atomic_u64(sh::DURABLE_END)
            .fetch_max(committed as u64, Ordering::Release);
        m.wake_tailers();
        Ok(committed)
    }

    /// Position below which disk blocks are allocated.
    pub fn allocated_end(&self) -> usize {
        // Acquire: pairs with the Release in `allocate_to`.
        self.allocated_end.load(Ordering::Acquire)
    }

    /// Allocates disk blocks (`fallocate`) below `end`, at least `chunk_bytes` at a time, so
    /// that writes through the mapping below it cannot fail: a full disk is an error here,
    /// never a SIGBUS later.
    pub fn allocate_to(&self, end: usize, chunk_bytes: usize) -> Result<()> {
        if self.allocated_end() >= end {
            return Ok(());
        }
        let _guard = self.allocate_lock.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.allocated_end();
        if start >= end {
            return Ok(());
        }
        let new_end = end
            .max(start + chunk_bytes)
            .next_multiple_of(4096)
            .min(self.capacity());
        let bytes = (new_end - start) as u64;
        charge_quota(self.quota.as_ref(), bytes, || self.path.clone())?;
        self.charged_bytes.fetch_add(bytes, Ordering::Relaxed);
        let Some(m) = self.live() else {
            self.give_back(bytes);
            return Ok(());
        };
        m.data.reserve(start..new_end).map_err(|e| {
            self.give_back(bytes);
            LogError::reserve(&self.path, (end - start) as u64, e)
        })?;
        // Release: a writer that sees the new end sees the allocation done.
        self.allocated_end.store(new_end, Ordering::Release);
        Ok(())
    }

    /// Allocates index blocks so that `entries` checkpoints can be written, charging the
    /// quota: a full disk is an error here, before the append, never a fault later.
    pub fn allocate_index(&self, entries: usize) -> Result<()> {
        let Some(m) = self.live() else { return Ok(()) };
        for index in [&m.offset_index, &m.time_index] {
            if index.allocation_for(entries).is_none() {
                continue;
            }
            let _guard = self.allocate_lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(range) = index.allocation_for(entries) else {
                continue;
            };
            let bytes = range.len() as u64;
            charge_quota(self.quota.as_ref(), bytes, || index.path().to_owned())?;
            self.charged_bytes.fetch_add(bytes, Ordering::Relaxed);
            index.allocate(range).map_err(|e| {
                self.give_back(bytes);
                LogError::reserve(index.path(), bytes, e)
            })?;
        }
        Ok(())
    }

    /// Returns `bytes` of this segment's charge to the quota.
    fn give_back(&self, bytes: u64) {
        let _ = self
            .charged_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(bytes))
            });
        if let Some(q) = &self.quota {
            q.give_back(bytes);
        }
    }

    /// Returns everything this segment charged to the quota (its files are being deleted).
    pub fn release_quota(&self) {
        let all = self.charged_bytes.swap(0, Ordering::Relaxed);
        if let Some(q) = &self.quota {
            q.give_back(all);
        }
    }

    /// Position below which pages were pre-faulted.
    pub fn prefaulted_end(&self) -> usize {
        self.prefaulted_end.load(Ordering::Acquire)
    }

    /// Allocates blocks below `end` and pre-faults their pages for writing
    /// (`MADV_POPULATE_WRITE`), a step at a time, so that the writer's copies take no page
    /// faults. Needs no lock against the writer: pre-faulting changes no byte, so it may
    /// overlap pages the writer is filling.
    pub fn prefault_to(&self, end: usize, chunk_bytes: usize) -> Result<()> {
        let end = end.next_multiple_of(4096).min(self.capacity());
        loop {
            let start = self
                .prefaulted_end()
                .max(self.committed_end() & !(4096 - 1));
            if start >= end || self.is_sealed() {
                return Ok(());
            }
            let step_end = end.min(start + PREFAULT_STEP_BYTES);
            self.allocate_to(step_end, chunk_bytes)?;
            let Some(m) = self.live() else { return Ok(()) };
            m.data.populate_write(start..step_end);
            self.prefaulted_end.fetch_max(step_end, Ordering::AcqRel);
        }
    }

    /// Marks the segment sealed: no record will ever be added. Called by the writer after
    /// its last publish and after the next segment's file exists.
    pub(super) fn seal(&self) {
        if let Some(m) = self.live().filter(|m| m.data.is_writable()) {
            // Release: whoever sees the seal sees the final committed end.
            m.data.atomic_u32(sh::SEALED).store(1, Ordering::Release);
            m.wake_tailers();
        }
    }

    /// Releases the blocks reserved past the committed end of a sealed segment, and the unused
    /// tail of its indexes. The file keeps its length, so mappings stay valid.
    pub(super) fn release_unused(&self) {
        let Some(m) = self.live() else { return };
        let committed = m.committed_end();
        let allocated = self.allocated_end();
        if m.data.punch_hole(committed..self.capacity()).is_ok() {
            let kept = committed.next_multiple_of(4096);
            self.give_back(allocated.saturating_sub(kept) as u64);
        }
        let count = m.checkpoint_count();
        let freed = m.offset_index.release_unused(count) + m.time_index.release_unused(count);
        self.give_back(freed);
    }
}

impl Mapped {
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The committed end, clamped into the data area so that a damaged header can never send
    /// a reader out of bounds.
    pub fn committed_end(&self) -> usize {
        // Acquire: pairs with the writer's Release store in `finish_batch`; every frame below
        // the loaded value is complete and visible.
        let end = self
            .data
            .atomic_u64(sh::COMMITTED_END)
            .load(Ordering::Acquire);
        (end as usize).clamp(DATA_START, self.capacity())
    }

    pub fn durable_end(&self) -> usize {
        let end = self
            .data
            .atomic_u64(sh::DURABLE_END)
            .load(Ordering::Acquire);
        (end as usize).clamp(DATA_START, self.committed_end())
    }

    pub fn is_sealed(&self) -> bool {
        // Acquire: a reader that sees the seal sees the final committed end.
        self.data.atomic_u32(sh::SEALED).load(Ordering::Acquire) != 0
    }

    /// The published bytes `[from, to)`, cut at the committed end (a caller holding an end
    /// loaded earlier gets fewer bytes, never unpublished ones, should recovery after a power
    /// loss have moved the end back).
    pub fn published(&self, from: usize, to: usize) -> &[u8] {
        let to = to.min(self.committed_end());
        let from = from.clamp(DATA_START, to.max(DATA_START));
        // SAFETY: the range lies below the committed end, and in this process bytes there
        // never change (only a recovery, which runs before any reader exists, rewrites them).
        unsafe { self.data.frozen(from..to.max(from)) }
    }

    /// The published bytes `[from, to)` as a `Bytes` that keeps the mapping alive: the
    /// zero-copy handle for consumers.
    pub fn published_bytes(&self, from: usize, to: usize) -> Bytes {
        assert!(DATA_START <= from && from <= to && to <= self.committed_end());
        Bytes::from_owner(PublishedSlice {
            data: Arc::clone(&self.data),
            from,
            to,
        })
    }

    /// Number of index checkpoints readable in both index files.
    fn checkpoint_count(&self) -> usize {
        self.offset_index.count().min(self.time_index.count())
    }

    /// The published checkpoints `(offset, position, max_timestamp_before)`.
    pub fn checkpoints(&self) -> Vec<(u64, u64, i64)> {
        (0..self.checkpoint_count())
            .map(|i| {
                let (offset, pos) = self.offset_index.entry(i);
                let (ts, _) = self.time_index.entry(i);
                (offset, pos, ts as i64)
            })
            .collect()
    }

    /// The time index's offset of checkpoint `i`, to check it matches the offset index.
    pub fn time_checkpoint_offset(&self, i: usize) -> u64 {
        self.time_index.entry(i).1
    }

    /// The start position of the scan for `offset`: the last checkpoint at or before it.
    fn checkpoint_for_offset(&self, offset: u64, committed: usize) -> usize {
        let count = self.checkpoint_count();
        match self
            .offset_index
            .last_at_or_below(count, offset, |(o, _)| o)
        {
            Some(i) => {
                let pos = self.offset_index.entry(i).1 as usize;
                if (DATA_START..committed).contains(&pos) && pos.is_multiple_of(format::FRAME_ALIGN)
                {
                    pos
                } else {
                    DATA_START
                }
            }
            None => DATA_START,
        }
    }

    /// Walks published frames from `pos` up to `end`, checking structure (not the CRC).
    fn walk<'a>(
        &'a self,
        pos: usize,
        end: usize,
    ) -> impl Iterator<Item = Result<(usize, FrameView<'a>)>> + 'a {
        let mut at = pos;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let buf = self.published(at, end);
            Some(match decode_frame_unchecked_crc(buf) {
                Ok(f) => {
                    let here = at;
                    at += f.padded_len;
                    Ok((here, f))
                }
                Err(e) => {
                    let err = LogError::corrupt(&self.path, format!("at byte {at}: {e}"));
                    at = end;
                    Err(err)
                }
            })
        })
    }

    /// Position of the frame holding `offset`, or `None` when it is not published here.
    pub fn locate(&self, offset: u64, committed: usize) -> Result<Option<usize>> {
        let start = self.checkpoint_for_offset(offset, committed);
        for item in self.walk(start, committed) {
            let (pos, f) = item?;
            if f.offset == offset {
                return Ok(Some(pos));
            }
            if f.offset > offset {
                return Err(LogError::corrupt(
                    &self.path,
                    format!("offset {offset} missing: found {} at byte {pos}", f.offset),
                ));
            }
        }
        Ok(None)
    }

    /// The first published record with a timestamp at or after `timestamp_ms`: its offset
    /// and position.
    pub fn find_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, usize)>> {
        let committed = self.committed_end();
        let count = self.checkpoint_count();
        // The last checkpoint whose records before it are all older than the target.
        let start = match timestamp_ms.checked_sub(1) {
            Some(below) => self
                .time_index
                .last_at_or_below(count, ordered(below), |(t, _)| ordered(t as i64))
                .map(|i| self.offset_index.entry(i).1 as usize)
                .filter(|p| {
                    (DATA_START..committed).contains(p) && p.is_multiple_of(format::FRAME_ALIGN)
                })
                .unwrap_or(DATA_START),
            None => DATA_START,
        };
        for item in self.walk(start, committed) {
            let (pos, f) = item?;
            if f.timestamp_ms >= timestamp_ms {
                return Ok(Some((f.offset, pos)));
            }
        }
        Ok(None)
    }

    /// Reads frames starting at `pos` (which must be a frame start below `committed`),
    /// checking each CRC, until `max_records` or `max_bytes` or the end; with `force_one`, the
    /// first frame is taken even when it alone exceeds `max_bytes`. Returns the end
    /// position, the number of frames and the offset after the last one.
    pub fn scan_for_read(
        &self,
        pos: usize,
        committed: usize,
        max_records: usize,
        max_bytes: usize,
        force_one: bool,
    ) -> Result<(usize, usize, u64)> {
        let mut at = pos;
        let mut n = 0;
        let mut next = 0;
        while at < committed && n < max_records {
            let f = decode_frame(self.published(at, committed))
                .map_err(|e| LogError::corrupt(&self.path, format!("at byte {at}: {e}")))?;
            if (n > 0 || !force_one) && at - pos + f.padded_len > max_bytes {
                break;
            }
            at += f.padded_len;
            n += 1;
            next = f.offset.saturating_add(1);
        }
        Ok((at, n, next))
    }

    /// The offset after the last record below `limit` (a frame boundary at or below the
    /// committed end), found from the last checkpoint before it.
    pub fn offset_at(&self, base_offset: u64, limit: usize) -> Result<u64> {
        let count = self.checkpoint_count();
        let mut next = base_offset;
        let mut at = DATA_START;
        for i in (0..count).rev() {
            let (offset, pos) = self.offset_index.entry(i);
            if (pos as usize) < limit && pos as usize >= DATA_START {
                (next, at) = (offset, pos as usize);
                break;
            }
        }
        for item in self.walk(at, limit) {
            let (_, f) = item?;
            next = f.offset.saturating_add(1);
        }
        Ok(next)
    }

    /// Maps the pages of `range` into this process ahead of reading them.
    pub fn populate_read(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.capacity());
        self.data.populate_read(range.start.min(end)..end);
    }

    /// The futex word tailers wait on (section 5.1 of FORMAT.md).
    pub fn wake_seq(&self) -> &AtomicU32 {
        self.data.atomic_u32(sh::WAKE_SEQ)
    }

    /// Wakes tailers blocked on this segment's futex word, if any are registered.
    fn wake_tailers(&self) {
        // SeqCst fence: orders the publish above before the waiter-count load below, pairing
        // with the tailer's SeqCst increment of WAITERS before it re-checks the committed end
        // (the two sides of a Dekker handshake), so a wake is never lost.
        fence(Ordering::SeqCst);
        if self.data.atomic_u32(sh::WAITERS).load(Ordering::Relaxed) != 0 {
            let seq: &AtomicU32 = self.data.atomic_u32(sh::WAKE_SEQ);
            seq.fetch_add(1, Ordering::SeqCst);
            futex_wake_all(seq);
        }
    }
}

/// A published range of a segment, owned by a `Bytes`.
struct PublishedSlice {
    data: Arc<MappedFile>,
    from: usize,
    to: usize,
}

impl AsRef<[u8]> for PublishedSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: built only by `Segment::published_bytes` for a range below a committed end;
        // those bytes never change while the file (kept mapped by the Arc) exists.
        unsafe { self.data.frozen(self.from..self.to) }
    }
}

/// fsyncs a directory so that entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// The writer's view of the active segment. There is exactly one per partition.
#[derive(Debug)]
pub struct SegmentWriter {
    seg: Arc<Segment>,
    /// The active segment's mapping (an unsealed segment is never closed).
    m: Arc<Mapped>,
    /// Equal to the published committed end.
    position: usize,
    next_offset: u64,
    max_timestamp_ms: i64,
    last_checkpoint_pos: usize,
    checkpoints: usize,
    reserve: ReservePolicy,
}

/// How a writer reserves disk blocks and pre-faults pages ahead of itself.
#[derive(Debug, Clone)]
pub struct ReservePolicy {
    /// Blocks are allocated this many bytes at a time.
    pub chunk_bytes: usize,
    /// Pages are pre-faulted up to this far ahead of the writer.
    pub prefault_bytes: usize,
    /// When set, the next chunk is reserved on the prefaulter's thread before the writer
    /// needs it; otherwise the writer reserves it itself when it gets there.
    pub prefaulter: Option<PrefaultHandle>,
}

/// What recovery found in a segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentRecovery {
    /// Bytes discarded from a torn tail (between the last valid frame and the old end).
    pub truncated_bytes: u64,
    /// Index checkpoints rebuilt from the data.
    pub rebuilt_checkpoints: usize,
    /// Why the scan stopped early, if it did.
    pub stopped_by: Option<String>,
}

impl SegmentWriter {
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn is_empty(&self) -> bool {
        self.position == DATA_START
    }

    /// Bytes still free for frames.
    pub fn remaining(&self) -> usize {
        self.seg.capacity() - self.position
    }

    /// A writer for a freshly created segment.
    pub fn new(seg: Arc<Segment>, reserve: ReservePolicy) -> Self {
        let base = seg.base_offset();
        let m = seg.live().expect("a new or recovered segment is mapped");
        let w = SegmentWriter {
            seg,
            m,
            position: DATA_START,
            next_offset: base,
            max_timestamp_ms: i64::MIN,
            last_checkpoint_pos: DATA_START,
            checkpoints: 0,
            reserve,
        };
        w.request_prefault();
        w
    }

    /// Validates the segment from its last trustworthy checkpoint (at or below `trust_end`)
    /// to its committed end, rebuilding index entries on the way. With `repair`, a torn tail
    /// is cut off: the committed end moves back to the last whole, valid frame and everything
    /// after it is zeroed. Without, a bad frame is an error. Needs a writable mapping and
    /// must run before the segment is shared with readers.
    pub fn recover(
        seg: Arc<Segment>,
        trust_end: usize,
        repair: bool,
        reserve: ReservePolicy,
    ) -> Result<(Self, SegmentRecovery)> {
        let m = seg
            .live()
            .ok_or_else(|| LogError::corrupt(seg.path(), "segment not mapped for recovery"))?;
        if !m.data.is_writable() {
            // Recovery stores into the header and indexes.
            return Err(LogError::corrupt(
                seg.path(),
                "a segment opened read-only cannot be recovered",
            ));
        }
        let committed = m.committed_end();
        let trust_end = trust_end.clamp(DATA_START, committed);
        let base = seg.base_offset();
        // Room for every checkpoint the scan below may rebuild, before it writes any.
        let interval = seg.header.index_interval_bytes as usize;
        seg.allocate_index((committed - DATA_START) / interval + 1)?;
        // The last checkpoint that is consistent and lies in trusted data.
        let count = m.checkpoint_count();
        let mut keep = 0;
        let (mut prev_pos, mut prev_off, mut prev_ts) = (DATA_START as u64, base, i64::MIN);
        while keep < count {
            let (off, pos) = m.offset_index.entry(keep);
            let (ts, toff) = m.time_index.entry(keep);
            let ts = ts as i64;
            let ok = pos > prev_pos
                && (pos as usize) < trust_end
                && pos.is_multiple_of(format::FRAME_ALIGN as u64)
                && off > prev_off
                && toff == off
                && ts >= prev_ts
                && decode_frame(m.published(pos as usize, committed))
                    .map(|f| f.offset == off)
                    .unwrap_or(false);
            if !ok {
                break;
            }
            (prev_pos, prev_off, prev_ts) = (pos, off, ts);
            keep += 1;
        }
        m.offset_index.truncate(keep);
        m.time_index.truncate(keep);
        let mut w = SegmentWriter {
            position: prev_pos as usize,
            next_offset: prev_off,
            max_timestamp_ms: prev_ts,
            last_checkpoint_pos: prev_pos as usize,
            checkpoints: keep,
            reserve,
            m: Arc::clone(&m),
            seg,
        };
        let mut report = SegmentRecovery::default();
        let seg = Arc::clone(&w.seg);
        while w.position < committed {
            let at = w.position;
            let frame = decode_frame(m.published(at, committed));
            let f = match frame {
                Ok(f) if f.offset == u64::MAX => {
                    report.stopped_by = Some(format!("at byte {at}: offset u64::MAX"));
                    break;
                }
                Ok(f) if f.offset == w.next_offset => f,
                Ok(f) => {
                    report.stopped_by = Some(format!(
                        "at byte {at}: offset {} where {} was expected",
                        f.offset, w.next_offset
                    ));
                    break;
                }
                Err(e) => {
                    report.stopped_by = Some(format!("at byte {at}: {e}"));
                    break;
                }
            };
            if w.checkpoint(at, f.offset, w.max_timestamp_ms) {
                report.rebuilt_checkpoints += 1;
            }
            w.position += f.padded_len;
            w.next_offset += 1;
            w.max_timestamp_ms = w.max_timestamp_ms.max(f.timestamp_ms);
        }
        if let Some(reason) = &report.stopped_by {
            if !repair {
                return Err(LogError::corrupt(seg.path(), reason.clone()));
            }
            report.truncated_bytes = (committed - w.position) as u64;
        }
        if repair {
            // Cut the tail: move the committed end back, then zero everything after it
            // (including any frames written but never published before a crash).
            m.data
                .atomic_u64(sh::COMMITTED_END)
                .store(w.position as u64, Ordering::Release);
            let durable = m.data.atomic_u64(sh::DURABLE_END);
            durable.fetch_min(w.position as u64, Ordering::AcqRel);
            w.zero_tail()?;
        }
        w.publish_checkpoints();
        seg.next_offset.store(w.next_offset, Ordering::Release);
        seg.max_timestamp_ms
            .store(w.max_timestamp_ms, Ordering::Release);
        // The block holding the committed end is allocated; everything after it was released.
        let reserved = w.position.next_multiple_of(4096).min(seg.capacity());
        seg.allocated_end.store(reserved, Ordering::Release);
        seg.prefaulted_end.store(reserved, Ordering::Release);
        Ok((w, report))
    }

    /// Zeroes everything after the committed end, releasing its blocks where the file
    /// system can.
    fn zero_tail(&self) -> Result<()> {
        let seg = &self.seg;
        let end = seg.capacity();
        if self.m.data.punch_hole(self.position..end).is_ok() {
            // Blocks past the kept page are free again; the writer will re-allocate.
            let kept = self.position.next_multiple_of(4096) as u64;
            let on_disk = seg.charged_bytes.load(Ordering::Relaxed);
            let indexes =
                self.m.offset_index.allocated_bytes() + self.m.time_index.allocated_bytes();
            seg.give_back(on_disk.saturating_sub(kept + indexes));
            return Ok(());
        }
        // No hole punching here: write zeros, a page at a time, over pages that hold data.
        let mut at = self.position;
        while at < end {
            let page_end = (at + 1).next_multiple_of(4096).min(end);
            // SAFETY: above the committed end, before the segment is shared: only this
            // (recovering) writer touches these bytes.
            let page = unsafe { self.m.data.writable(at..page_end) };
            if page.iter().all(|&b| b == 0) && at > self.position + (1 << 20) {
                break;
            }
            page.fill(0);
            at = page_end;
        }
        Ok(())
    }

    fn checkpoint_due(&self, pos: usize) -> bool {
        pos - self.last_checkpoint_pos >= self.seg.header.index_interval_bytes as usize
            && self.checkpoints < self.m.offset_index.capacity()
    }

    /// Writes (does not publish) a checkpoint for the frame at `pos` holding `offset`, if
    /// one is due there; `max_ts_before` is the largest timestamp of the records before it.
    /// The writer and recovery apply this same rule frame by frame, so recovery rebuilds
    /// exactly the checkpoints the writer would have written.
    fn checkpoint(&mut self, pos: usize, offset: u64, max_ts_before: i64) -> bool {
        if !self.checkpoint_due(pos) {
            return false;
        }
        let i = self.checkpoints;
        if self.m.offset_index.write_entry(i, offset, pos as u64)
            && self
                .m
                .time_index
                .write_entry(i, max_ts_before as u64, offset)
        {
            self.checkpoints += 1;
            self.last_checkpoint_pos = pos;
            return true;
        }
        false
    }

    fn publish_checkpoints(&self) {
        self.m.offset_index.publish(self.checkpoints);
        self.m.time_index.publish(self.checkpoints);
    }

    /// Makes sure disk blocks exist below `end` before the copy. With a prefaulter the pages
    /// are usually pre-faulted already (and if it lags, the copy takes the faults itself);
    /// without one the writer pre-faults `prefault_bytes` ahead of itself.
    /// How far ahead the writer keeps disk blocks and pre-faulted pages: it grows with the
    /// data (see [`ahead_bytes`]) up to the configured distances.
    fn ahead(&self) -> (usize, usize) {
        (
            ahead_bytes(
                self.position,
                MIN_RESERVE_AHEAD_BYTES,
                self.reserve.chunk_bytes,
            ),
            ahead_bytes(
                self.position,
                MIN_PREFAULT_AHEAD_BYTES,
                self.reserve.prefault_bytes,
            ),
        )
    }

    pub(super) fn reserve(&mut self, end: usize) -> Result<()> {
        if end >= DATA_START + READ_AHEAD_AFTER_BYTES {
            self.seg.enable_read_ahead();
        }
        // At most one checkpoint per interval of data, and one more where the batch starts.
        let interval = self.seg.header.index_interval_bytes as usize;
        let entries =
            self.checkpoints + end.saturating_sub(self.last_checkpoint_pos) / interval + 1;
        self.seg.allocate_index(entries)?;
        let (chunk, prefault) = self.ahead();
        match self.reserve.prefaulter {
            Some(_) => self.seg.allocate_to(end, chunk),
            None if end > self.seg.prefaulted_end() => self
                .seg
                .prefault_to(end.max(self.position + prefault), chunk),
            None => Ok(()),
        }
    }

    /// Keeps the prefaulter busy while less than the pre-fault distance is ready ahead of
    /// the writer.
    fn request_prefault(&self) {
        if let Some(p) = &self.reserve.prefaulter {
            let (chunk, prefault) = self.ahead();
            let ready = self.seg.prefaulted_end();
            if ready < self.position + prefault / 2 && ready < self.seg.capacity() {
                p.request(&self.seg, prefault, chunk);
            }
        }
    }

    /// Appends records whose padded lengths sum to `total_bytes` (which must fit in
    /// `remaining()`), then publishes them. Returns the first offset.
    pub fn append(&mut self, records: &[Record<'_>], total_bytes: usize) -> Result<u64> {
        let start = self.position;
        let end = start + total_bytes;
        self.reserve(end)?;
        let first = self.next_offset;
        let data = Arc::clone(&self.m.data);
        // SAFETY: `[start, end)` lies above the published committed end, which only this
        // single writer advances; no reader looks there until `finish_batch` publishes it.
        let buf = unsafe { data.writable(start..end) };
        let mut at = 0;
        let mut max_ts = self.max_timestamp_ms;
        for (i, r) in records.iter().enumerate() {
            let len = r.padded_len().expect("caller checked frame sizes");
            let offset = first + i as u64;
            self.checkpoint(start + at, offset, max_ts);
            format::encode_frame(&mut buf[at..at + len], offset, r);
            max_ts = max_ts.max(r.timestamp_ms);
            at += len;
        }
        debug_assert_eq!(at, total_bytes);
        self.finish_batch(end, records.len() as u64, max_ts);
        Ok(first)
    }

    /// Appends already-encoded, already-validated frames (binary produce): assigns their
    /// offsets, and the server's time `now_ms` to frames whose timestamp is 0, then publishes.
    pub fn append_frames(&mut self, frames: &[u8], count: u64, now_ms: i64) -> Result<u64> {
        let start = self.position;
        let end = start + frames.len();
        self.reserve(end)?;
        let first = self.next_offset;
        let data = Arc::clone(&self.m.data);
        // SAFETY: as in `append`: above the committed end, single writer.
        let buf = unsafe { data.writable(start..end) };
        buf.copy_from_slice(frames);
        let mut at = 0;
        let mut max_ts = self.max_timestamp_ms;
        for i in 0..count {
            let len = get_u32(&buf[at..], format::frame::LENGTH) as usize;
            let padded = format::align_up(len);
            self.checkpoint(start + at, first + i, max_ts);
            let frame = &mut buf[at..at + padded];
            format::set_frame_offset(frame, first + i);
            let mut ts = get_u64(frame, format::frame::TIMESTAMP_MS) as i64;
            if ts == 0 {
                format::set_frame_timestamp(frame, now_ms);
                ts = now_ms;
            }
            max_ts = max_ts.max(ts);
            at += padded;
        }
        self.finish_batch(end, count, max_ts);
        Ok(first)
    }

    /// Publishes the batch written from the current position up to `end`.
    fn finish_batch(&mut self, end: usize, count: u64, max_ts: i64) {
        self.position = end;
        self.next_offset += count;
        self.max_timestamp_ms = max_ts;
        let seg = &self.seg;
        // Release: the frames written above happen-before any Acquire load that sees this
        // committed end, in this process or any other mapping the file. This single store is
        // the publication of the whole batch.
        self.m
            .data
            .atomic_u64(sh::COMMITTED_END)
            .store(end as u64, Ordering::Release);
        self.publish_checkpoints();
        seg.max_timestamp_ms.store(max_ts, Ordering::Release);
        seg.next_offset.store(self.next_offset, Ordering::Release);
        self.m.wake_tailers();
        self.request_prefault();
    }

    /// Gives up the segment without sealing it (its roll finishes in the background).
    pub fn into_segment(self) -> Arc<Segment> {
        self.seg
    }

    /// Seals the segment (after the next one exists) and releases its unused blocks.
    pub fn seal(self) {
        self.seg.seal();
        self.seg.release_unused();
    }
}

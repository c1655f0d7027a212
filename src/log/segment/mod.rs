//! One segment: a mapped data file of frames plus its two index files.
//!
//! [`Segment`] is the shared side: any number of threads read it without locks, through the
//! [`Mapped`] files it keeps open (or reopens after closing them while idle). The
//! [`SegmentWriter`] is the single writer of the active segment; it owns the bytes above the
//! committed end and publishes them with one Release store.
//!
//! - [`header`]: the static header and a new file's first bytes;
//! - [`files`]: creating, adopting, renaming and opening the files;
//! - [`space`]: disk blocks, the quota and pre-faulting ahead of the writer;
//! - [`read`]: locating and reading published frames;
//! - [`writer`]: appending, checkpoints and publication;
//! - [`recovery`]: validating a segment after an unclean stop and cutting a torn tail.

mod files;
mod header;
mod read;
mod recovery;
mod space;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

pub use files::{list_bases, never_durable, path, remove, spare_path, SPARE_BASE_OFFSET};
pub use header::SegmentHeader;
pub use space::READ_AHEAD_AFTER_BYTES;
pub use writer::{ReservePolicy, SegmentWriter};

use super::error::{LogError, Result};
use super::format::segment_header as sh;
use super::index::{Index, IndexKind};
use super::mmap::{Frontier, Layout, MappedFile};
use super::quota::DiskQuota;
use super::util::now_ms;

/// Position of the first frame in every segment file.
pub const DATA_START: usize = sh::SIZE;

/// Where a segment file's static header, frames and committed end lie.
pub(crate) const LAYOUT: Layout = Layout {
    static_end: sh::STATIC_END,
    published_from: DATA_START,
    frontier: Some(Frontier {
        word: sh::COMMITTED_END,
        base: 0,
        unit: 1,
    }),
};

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
    /// Whether the segment was sealed when it was closed (an idle active segment is closed
    /// unsealed: its writer parked). Written before the mapping is dropped, read after
    /// finding none (Acquire/Release).
    closed_sealed: AtomicBool,
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
    /// A pre-fault job for this segment is queued on the file worker. Relaxed is enough: it
    /// only keeps the queue from holding two jobs for one segment, and a job that runs finds
    /// its work from the segment's own (Acquire) ends.
    prefault_requested: AtomicBool,
    /// The kernel may read ahead around faults in the data (see `enable_read_ahead`).
    /// Relaxed: an advice, set once.
    read_ahead: AtomicBool,
    /// The header (bytes `[0, 4096)`) is known to be on disk. False for a new partition's
    /// first segment until its first flush, and for an adopted spare until its header is
    /// synced: no directory sync may make such a file's name durable before its header
    /// (see [`Segment::make_header_durable`]).
    header_durable: AtomicBool,
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

impl Segment {
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

    /// Bytes of data between two index checkpoints.
    pub(crate) fn index_interval(&self) -> usize {
        self.header.index_interval_bytes as usize
    }

    /// The mapping if the segment is open, without reopening it.
    pub fn mapping_if_open(&self) -> Option<Arc<Mapped>> {
        self.mapped.load_full()
    }

    /// The writer's mapping, if open (a reader's reopened mapping is read-only).
    fn writable_mapping(&self) -> Option<Arc<Mapped>> {
        self.mapping_if_open().filter(|m| m.data.is_writable())
    }

    /// The mapping, reopened (read-only) if the segment was closed while idle. Blocks then.
    pub fn map_or_reopen(&self) -> Result<Arc<Mapped>> {
        self.touch();
        if let Some(m) = self.mapping_if_open() {
            return Ok(m);
        }
        let _one = self.reopen_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.mapping_if_open() {
            return Ok(m);
        }
        let m = self.map_files(false)?;
        // Sealed: its data is all below the committed end, read in order.
        m.data.read_ahead(0..m.data.len());
        let m = Arc::new(m);
        self.mapped.store(Some(Arc::clone(&m)));
        Ok(m)
    }

    /// Maps the segment's three files again (their descriptors closed once mapped).
    fn map_files(&self, writable: bool) -> Result<Mapped> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let base = self.base_offset();
        let data = MappedFile::open(&self.path, writable, LAYOUT)
            .map_err(|e| LogError::io(&self.path, e))?;
        data.release_file(&self.path);
        if data.len() != self.capacity() {
            return Err(LogError::corrupt(&self.path, "segment file changed size"));
        }
        // (An opened index closes its descriptor itself.)
        let index = |kind: IndexKind| {
            Index::open(&files::path(dir, base, kind.ext()), kind, base, writable)
        };
        Ok(Mapped {
            path: self.path.clone(),
            data: Arc::new(data),
            offset_index: index(IndexKind::Offset)?,
            time_index: index(IndexKind::Time)?,
        })
    }

    /// Unmaps the segment and closes its files if it is sealed, fully durable and was not
    /// used since `idle_since_ms`. It reopens on demand; readers still holding the mapping
    /// keep it until they are done. Returns whether it closed.
    pub fn close_if_idle(&self, idle_since_ms: i64) -> bool {
        let Some(m) = self.mapping_if_open() else {
            return false;
        };
        if self.last_used_ms.load(Ordering::Relaxed) > idle_since_ms
            || !m.is_sealed()
            || m.durable_end() < m.committed_end()
        {
            return false;
        }
        self.closed_end.store(m.committed_end(), Ordering::Release);
        self.closed_sealed.store(true, Ordering::Release);
        self.mapped.store(None);
        true
    }

    /// Closes the active segment of a writer that parks: `committed` is its end, all of it
    /// durable. Readers still holding the mapping keep it until they are done.
    pub(crate) fn park(&self, committed: usize) {
        self.closed_end.store(committed, Ordering::Release);
        self.closed_sealed.store(false, Ordering::Release);
        self.mapped.store(None);
    }

    /// For a parked writer's segment that a reader mapped again: closes it once no reader
    /// used it since `idle_since_ms`. Returns whether it is closed.
    pub(crate) fn close_parked(&self, idle_since_ms: i64) -> bool {
        if self.mapping_if_open().is_none() {
            return true;
        }
        if self.last_used_ms.load(Ordering::Relaxed) > idle_since_ms {
            return false;
        }
        self.closed_sealed.store(false, Ordering::Release);
        self.mapped.store(None);
        true
    }

    /// Maps the files writable again for a writer that parked: the data file and both
    /// index files, replacing any read-only mapping a reader made meanwhile (readers that
    /// hold it keep it; the page cache is shared, so they see the same bytes).
    pub(crate) fn reopen_for_writer(&self) -> Result<Arc<Mapped>> {
        let _one = self.reopen_lock.lock().unwrap_or_else(|p| p.into_inner());
        let m = Arc::new(self.map_files(true)?);
        // The new mapping has no pages of this process yet, and starts without read-ahead.
        self.prefaulted_end
            .store(m.committed_end().next_multiple_of(4096), Ordering::Release);
        self.read_ahead.store(false, Ordering::Relaxed);
        self.mapped.store(Some(Arc::clone(&m)));
        if m.committed_end() >= DATA_START + READ_AHEAD_AFTER_BYTES {
            self.enable_read_ahead();
        }
        self.touch();
        Ok(m)
    }

    /// Tailers (in any process) registered as blocked on this segment's futex word.
    pub fn tail_waiters(&self) -> u32 {
        self.mapping_if_open().map_or(0, |m| {
            m.data.atomic_u32(sh::WAITERS).load(Ordering::Relaxed)
        })
    }

    /// Whether the segment is mapped now.
    pub fn is_open(&self) -> bool {
        self.mapping_if_open().is_some()
    }

    /// Notes a use now (an append; reads note theirs when they map the segment).
    pub(crate) fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When a reader or the writer last used the segment (ms since the Unix epoch).
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
        match self.mapping_if_open() {
            Some(m) => m.committed_end(),
            None => self.closed_end.load(Ordering::Acquire),
        }
    }

    pub fn durable_end(&self) -> usize {
        match self.mapping_if_open() {
            Some(m) => m.durable_end(),
            None => self.closed_end.load(Ordering::Acquire),
        }
    }

    /// Whether the segment is sealed (a closed one: whether it was when closed).
    pub fn is_sealed(&self) -> bool {
        match self.mapping_if_open() {
            Some(m) => m.is_sealed(),
            None => self.closed_sealed.load(Ordering::Acquire),
        }
    }

    /// Bytes of data published in this segment (frames only, header excluded).
    pub fn size_bytes(&self) -> u64 {
        (self.committed_end().saturating_sub(DATA_START)) as u64
    }

    /// Makes everything published so far durable with one msync over the header and the new
    /// data, then records the new durable end (which itself reaches the disk with the next
    /// flush). Index files are left to the kernel's writeback: recovery checks every
    /// checkpoint it keeps against the data and rebuilds the rest. Returns the durable end.
    pub fn flush(&self) -> Result<usize> {
        let Some(m) = self.mapping_if_open() else {
            // Only durable segments are closed (sealed ones, and parked writers' ones).
            return Ok(self.committed_end());
        };
        let committed = m.committed_end();
        if committed <= m.durable_end() || !m.data.is_writable() {
            return Ok(committed);
        }
        crate::log::failpoint::check("msync")
            .and_then(|()| m.data.flush(0..committed))
            .map_err(|e| LogError::io(&self.path, e))?;
        self.header_durable.store(true, Ordering::Release);
        // Release: a tailer that reads only durable data sees the frames below it.
        m.data
            .atomic_u64(sh::DURABLE_END)
            .fetch_max(committed as u64, Ordering::Release);
        m.wake_tailers();
        Ok(committed)
    }

    /// msyncs the header if it is not known to be on disk: called before any sync of the
    /// directory that may make the file's name durable, so that recovery never finds a
    /// durable name over a header that is not (see [`Segment::create`] without `durable`).
    pub(crate) fn make_header_durable(&self) -> Result<()> {
        if self.header_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(m) = self.writable_mapping() {
            crate::log::failpoint::check("msync")
                .and_then(|()| m.data.flush(0..DATA_START))
                .map_err(|e| LogError::io(&self.path, e))?;
        }
        self.header_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks the segment as its deleted topic's last (`deleted`, not `sealed`: a reader that
    /// does not know the word must not move on to a file of a topic created again under the
    /// same name) and wakes the tailers blocked on it, which stop. Needs the writer's
    /// mapping.
    pub(crate) fn mark_deleted(&self) {
        if let Some(m) = self.writable_mapping() {
            // Release: a reader that sees the word sees the final committed end.
            m.data.atomic_u32(sh::DELETED).store(1, Ordering::Release);
            m.wake_tailers();
        }
    }

    /// Clears the `deleted` and `truncated` words that a deletion or a truncation
    /// interrupted by a crash left behind: the topic is being opened, so it exists, and the
    /// file is still the segment's. Recovery only (writable mapping).
    pub(crate) fn clear_interrupted_marks(&self) {
        if let Some(m) = self.writable_mapping() {
            for at in [sh::DELETED, sh::TRUNCATED] {
                let word = m.data.atomic_u32(at);
                if word.load(Ordering::Acquire) != 0 {
                    word.store(0, Ordering::Release);
                }
            }
        }
    }

    /// Runs `f` on a writable mapping of the file's header: the writer's mapping when it is
    /// open, else the header page mapped for the call (a sealed segment closed while idle,
    /// or one mapped read-only by a reader).
    fn with_writable_header<T>(&self, f: impl FnOnce(&MappedFile) -> T) -> Result<T> {
        if let Some(m) = self.writable_mapping() {
            return Ok(f(&m.data));
        }
        let header = MappedFile::open_prefix_rw(&self.path, sh::SIZE)
            .map_err(|e| LogError::io(&self.path, e))?;
        Ok(f(&header))
    }

    /// Marks the file as taken away (in part or whole) by a truncation to `to`, and wakes
    /// its waiters: its readers find their offset again from the directory. The file is
    /// never written again.
    pub(crate) fn mark_truncated(&self, to: u64) -> Result<()> {
        self.with_writable_header(|h| {
            h.atomic_u64(sh::TRUNCATED_TO).store(to, Ordering::Release);
            // Release: a reader that sees the flag sees the offset.
            h.atomic_u32(sh::TRUNCATED).store(1, Ordering::Release);
            read::wake_waiters(h);
        })
    }

    /// Undoes [`Segment::mark_truncated`] for a truncation that failed before the file
    /// was replaced.
    pub(crate) fn unmark_truncated(&self) -> Result<()> {
        self.with_writable_header(|h| {
            h.atomic_u32(sh::TRUNCATED).store(0, Ordering::Release);
            read::wake_waiters(h);
        })
    }

    /// Raises the replicated end to `position` (never lowers it) and wakes the waiters.
    pub(crate) fn raise_replicated_end(&self, position: usize) -> Result<()> {
        self.with_writable_header(|h| {
            // Release: a reader that sees the new end sees the frames below it.
            h.atomic_u64(sh::REPLICATED_END)
                .fetch_max(position as u64, Ordering::Release);
            read::wake_waiters(h);
        })
    }

    /// Marks the segment sealed: no record will ever be added. Called after its writer's
    /// last publish and after the next segment's file exists.
    pub(crate) fn seal(&self) {
        if let Some(m) = self.writable_mapping() {
            // Release: whoever sees the seal sees the final committed end.
            m.data.atomic_u32(sh::SEALED).store(1, Ordering::Release);
            m.wake_tailers();
        }
    }
}

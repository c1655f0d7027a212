//! The mapped files, and the rules that make sharing them sound. The engine's `unsafe`
//! primitives live here (with `log::sys` for the calls outside mappings); their callers (the
//! segment writer, the reader, the index) use the safe methods below, which enforce the
//! rules by their types.
//!
//! A [`MappedFile`] is a file mapped once, whole, with `MAP_SHARED`. Other processes (tailers)
//! map the same file, so the kernel, not Rust, owns the bytes; Rust's aliasing rules are kept
//! by the publication protocol of the format, which a file's [`Layout`] describes:
//!
//! * the *static header* (`[0, static_end)`) is written before the file is shared and then
//!   changes only through `&mut MappedFile` ([`MappedFile::bytes_mut`]), which no reader can
//!   hold at the same time;
//! * the *published* bytes (`[published_from, published end)`, the end read from the
//!   frontier word) are frozen: nobody writes them while the file is mapped, so
//!   [`MappedFile::published`] hands out shared slices of them. The frontier only moves
//!   forward, through the file's one [`Appender`], except through `&mut MappedFile` (recovery,
//!   before the file is shared);
//! * bytes at or above the published end are written by the file's single [`Appender`] only,
//!   and nobody reads them; releasing their blocks ([`MappedFile::punch_unpublished`]) is
//!   refused while an appender lives;
//! * the other header words are only ever accessed as atomics ([`MappedFile::atomic_u64`]).
//!
//! # Soundness across processes
//!
//! These rules hold inside this process by construction. Across processes they rest on a
//! contract: no other program writes, truncates or maps writable the files of a partition
//! that a mapq server owns (a second server is kept out by the data directory's lock; tailers
//! map data read-only and only touch the waiter words of the header). The file is never
//! truncated below its mapped length while mapped (the format forbids shrinking a segment),
//! so no access here can raise SIGBUS; disk blocks are reserved with `fallocate` before the
//! writer touches a page, so a full disk is an error, not a SIGBUS.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Advice, MmapOptions, MmapRaw};

/// A whole file, mapped shared, read-write or read-only.
#[derive(Debug)]
pub struct MappedFile {
    map: MmapRaw,
    /// The open file, for `fallocate` and `pwrite`, until [`MappedFile::release_file`]
    /// closes it (the mapping does not need it): then those reopen the file at the path
    /// given there, for each call. They are rare (allocation grows geometrically), so an
    /// idle partition's files cost no file descriptor.
    file: std::sync::Mutex<FileHandle>,
    writable: bool,
    layout: Layout,
    /// The file's [`Appender`] was handed out (there is at most one, ever).
    appender_taken: AtomicBool,
    /// That appender still lives.
    appender_alive: AtomicBool,
}

/// Where a file's static header, published bytes and frontier word lie (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes below this are the static header.
    pub static_end: usize,
    /// Published bytes start here (after the header's atomic words).
    pub published_from: usize,
    /// The word that says how far the file is published, if anything is ever published.
    pub frontier: Option<Frontier>,
}

/// The frontier word: an atomic u64 at `word` whose value `v` publishes the bytes below
/// `base + v * unit` (clamped into the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontier {
    pub word: usize,
    pub base: usize,
    pub unit: usize,
}

impl Layout {
    /// A mapping of header words only: nothing static, nothing published.
    pub const fn words_only(len: usize) -> Self {
        Layout {
            static_end: 0,
            published_from: len,
            frontier: None,
        }
    }
}

#[derive(Debug)]
enum FileHandle {
    Open(std::sync::Arc<File>),
    Released(std::path::PathBuf),
}

impl MappedFile {
    /// Creates `path` (which must not exist) with length `len`, sparse; allocates the
    /// blocks of its first `reserve_bytes` (`ErrorKind::StorageFull` on a full disk);
    /// writes `head` at its start; then maps it. The head goes through the file before the
    /// mapping exists: a first write through a fresh mapping faults on a hole, and the
    /// kernel's read-ahead then zeroes a whole window around it (most of the cost of
    /// creating a segment, measured).
    pub fn create_with_head(
        path: &Path,
        len: u64,
        reserve_bytes: usize,
        head: &[u8],
        layout: Layout,
    ) -> io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(len)?;
        fallocate(&file, 0, 0..reserve_bytes.min(len as usize))?;
        file.write_all_at(head, 0)?;
        Self::map(file, true, layout)
    }

    /// Maps an existing file read-write (`writable`) or read-only.
    pub fn open(path: &Path, writable: bool, layout: Layout) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Self::map(file, writable, layout)
    }

    /// Maps only the first `len` bytes of an existing file, read-write: a tailer uses it to
    /// register as a waiter in a segment header, without mapping the data writable.
    pub fn open_prefix_rw(path: &Path, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file too short"));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Self::from_parts(map, file, true, Layout::words_only(len)))
    }

    fn from_parts(map: MmapRaw, file: File, writable: bool, layout: Layout) -> Self {
        assert!(layout.static_end <= layout.published_from && layout.published_from <= map.len());
        MappedFile {
            map,
            file: std::sync::Mutex::new(FileHandle::Open(Arc::new(file))),
            writable,
            layout,
            appender_taken: AtomicBool::new(false),
            appender_alive: AtomicBool::new(false),
        }
    }

    fn map(file: File, writable: bool, layout: Layout) -> io::Result<Self> {
        let len = file.metadata()?.len();
        if len == 0 || len > isize::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot map a file of {len} bytes"),
            ));
        }
        let mut opts = MmapOptions::new();
        opts.len(len as usize);
        let map = if writable {
            opts.map_raw(&file)?
        } else {
            opts.map_raw_read_only(&file)?
        };
        if layout.published_from > map.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file of {len} bytes is shorter than its header"),
            ));
        }
        let mapped = Self::from_parts(map, file, writable, layout);
        // No read-ahead until the owner says where data lies (see `read_ahead`): around a
        // fault in a hole, the kernel would zero a whole read-ahead window nobody asked for
        // (most of the cost of creating or opening a mostly empty segment, measured).
        mapped.advise(Advice::Random, 0..mapped.len());
        Ok(mapped)
    }

    /// Lets the kernel read ahead around faults in `range` (its start page-aligned): for
    /// data mostly read in order, and written in order into holes (a segment's data, once
    /// its header is read or written).
    pub fn read_ahead(&self, range: Range<usize>) {
        self.advise(Advice::Normal, range);
    }

    /// Length of the mapping (the file's length when it was mapped).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping may be written (atomics stored through a read-only mapping would
    /// fault: writers check this before storing into a segment header).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn check(&self, range: &Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "range {range:?} outside a mapping of {} bytes",
            self.len()
        );
    }

    /// A shared view of `range`. Private: the safe views below call it only where the
    /// module's rules freeze the bytes.
    ///
    /// # Safety
    /// The bytes in `range` must be frozen: no one writes them for as long as the returned
    /// slice (or anything derived from it) lives.
    unsafe fn frozen(&self, range: Range<usize>) -> &[u8] {
        self.check(&range);
        // SAFETY: the range is inside the mapping (checked above), the mapping lives as long
        // as `self`, and the caller guarantees nobody writes the bytes meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.len()) }
    }

    /// An exclusive view of `range`, for writing. Private, like `frozen`.
    ///
    /// # Safety
    /// The caller must be the only one accessing `range` for as long as the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn exclusive(&self, range: Range<usize>) -> &mut [u8] {
        assert!(self.writable, "write through a read-only mapping");
        self.check(&range);
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(range.start), range.len())
        }
    }

    /// The static header: bytes `[0, static_end)`.
    pub fn static_header(&self) -> &[u8] {
        // SAFETY: the static header changes only through `&mut self` (`bytes_mut`), which
        // cannot coexist with this shared borrow.
        unsafe { self.frozen(0..self.layout.static_end) }
    }

    /// The raw frontier value (for a data file the committed end; for an index the entry
    /// count), loaded with Acquire: pairs with [`Appender::publish`]'s Release, so the bytes
    /// it publishes are visible. 0 without a frontier.
    pub fn frontier(&self) -> u64 {
        match self.layout.frontier {
            Some(f) => self.word_u64(f.word).load(Ordering::Acquire),
            None => 0,
        }
    }

    /// The end of the published bytes: where the frontier says, clamped into the file (so a
    /// damaged header can never send a reader out of bounds).
    pub fn published_end(&self) -> usize {
        let from = self.layout.published_from;
        match self.layout.frontier {
            Some(f) => {
                let v = self.frontier();
                let bytes = usize::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(f.unit))
                    .and_then(|b| b.checked_add(f.base))
                    .unwrap_or(usize::MAX);
                bytes.clamp(from, self.len())
            }
            None => from,
        }
    }

    /// The published bytes of `range`, cut at the published end and the start of the
    /// published area: a caller holding an end loaded earlier gets fewer bytes, never
    /// unpublished ones.
    pub fn published(&self, range: Range<usize>) -> &[u8] {
        let to = range.end.min(self.published_end());
        let from = range.start.clamp(self.layout.published_from, to);
        // SAFETY: `[from, to)` lies in the published area, below the published end, and
        // published bytes never change while anyone can borrow them: only the appender
        // writes, above the end; moving the end back takes `&mut self`.
        unsafe { self.frozen(from..to) }
    }

    /// Any bytes outside the header words, for writing: a file not shared with anyone in
    /// this process (creating, adopting or recovering a segment).
    pub fn bytes_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        let words = self.layout.static_end..self.layout.published_from;
        assert!(
            range.end <= words.start || range.start >= words.end,
            "header words are accessed only atomically"
        );
        // SAFETY: `&mut self` excludes every other borrow of the mapping in this process
        // (slices from `published`, atomics, the appender's views all borrow `self`, and an
        // `Appender` holds an `Arc`, which `&mut` through `Arc::get_mut` rules out).
        unsafe { self.exclusive(range) }
    }

    /// Moves the frontier to `value`, backwards too (recovery cutting a torn tail), on a file
    /// nobody else in this process uses.
    pub fn set_frontier(&mut self, value: u64) {
        if let Some(f) = self.layout.frontier {
            self.word_u64(f.word).store(value, Ordering::Release);
        }
    }

    /// The file's single appender: `None` if it was handed out before or the mapping is
    /// read-only.
    pub fn appender(self: &Arc<Self>) -> Option<Appender> {
        let frontier = self.layout.frontier?;
        if !self.writable || self.appender_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.appender_alive.store(true, Ordering::Release);
        Some(Appender {
            file: Arc::clone(self),
            frontier,
        })
    }

    /// Releases the disk blocks of `range`, which must lie above the published end, while no
    /// appender lives (reads there then return zeros); from then on no appender is handed
    /// out. The file keeps its length, so mappings stay valid. Refused otherwise.
    pub fn punch_unpublished(&self, range: Range<usize>) -> io::Result<()> {
        // Retire the appender slot first: one never handed out can no longer be, so no
        // writer can appear between the checks below and the punch.
        self.appender_taken.store(true, Ordering::Release);
        if self.appender_alive.load(Ordering::Acquire) || range.start < self.published_end() {
            return Err(io::Error::other(
                "blocks of published bytes, or of a file with a writer, are not released",
            ));
        }
        self.punch_hole(range)
    }

    /// Releases the disk blocks of `range` of a file nobody else in this process uses.
    pub fn punch_hole_mut(&mut self, range: Range<usize>) -> io::Result<()> {
        self.punch_hole(range)
    }

    /// The header word at `pos` (never in the static header or the published area).
    fn word_u64(&self, pos: usize) -> &AtomicU64 {
        self.check(&(pos..pos + 8));
        assert!(
            pos >= self.layout.static_end && pos + 8 <= self.layout.published_from,
            "atomic word {pos} outside the header words"
        );
        assert_eq!(pos % 8, 0, "unaligned atomic");
        // SAFETY: in bounds and aligned (the mapping is page aligned), the memory lives as
        // long as `self`, and it lies among the header words, which are only ever accessed
        // atomically (no slice of the static header or the published area covers them).
        unsafe { &*self.map.as_ptr().add(pos).cast::<AtomicU64>() }
    }

    /// The 8-byte aligned header word at `pos`, accessed atomically; never the frontier
    /// (only the appender moves it). Only load through it unless the mapping
    /// [`is_writable`](Self::is_writable): a store into a read-only mapping faults.
    pub fn atomic_u64(&self, pos: usize) -> &AtomicU64 {
        assert!(
            self.layout.frontier.is_none_or(|f| f.word != pos),
            "the frontier moves only through the appender"
        );
        self.word_u64(pos)
    }

    /// The 4-byte aligned header word at `pos`, accessed atomically.
    pub fn atomic_u32(&self, pos: usize) -> &AtomicU32 {
        self.check(&(pos..pos + 4));
        assert!(
            pos >= self.layout.static_end && pos + 4 <= self.layout.published_from,
            "atomic word {pos} outside the header words"
        );
        assert!(self
            .layout
            .frontier
            .is_none_or(|f| pos + 4 <= f.word || pos >= f.word + 8));
        assert_eq!(pos % 4, 0, "unaligned atomic");
        // SAFETY: as for `word_u64`.
        unsafe { &*self.map.as_ptr().add(pos).cast::<AtomicU32>() }
    }

    /// Reserves disk blocks for `range` so that later writes through the mapping cannot
    /// fail for lack of space. `ENOSPC` comes back as `io::ErrorKind::StorageFull`.
    pub fn reserve(&self, range: Range<usize>) -> io::Result<()> {
        self.fallocate(0, range)
    }

    /// Pre-faults `range` for writing (`MADV_POPULATE_WRITE`), so that the writer does not
    /// take one page fault per fresh page. Best effort: older kernels lack it.
    pub fn populate_write(&self, range: Range<usize>) {
        self.advise(Advice::PopulateWrite, range);
    }

    /// Maps the pages of `range` into this process ahead of use (`MADV_POPULATE_READ`), so
    /// reading them takes no page faults. Best effort.
    pub fn populate_read(&self, range: Range<usize>) {
        self.advise(Advice::PopulateRead, range);
    }

    fn punch_hole(&self, range: Range<usize>) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            range,
        )
    }

    /// Closes the file descriptor; the mapping stays. Later calls that need the file reopen
    /// it at `path`, where it must then be (under its final name).
    pub fn release_file(&self, path: &Path) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) =
            FileHandle::Released(path.to_owned());
    }

    /// Runs `f` on the file: the open one, or the released one reopened for the call. The
    /// lock is held only to look, never across the call.
    fn with_file<T>(&self, f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let handle = match &*self.file.lock().unwrap_or_else(|p| p.into_inner()) {
            FileHandle::Open(file) => Ok(std::sync::Arc::clone(file)),
            FileHandle::Released(path) => Err(path.clone()),
        };
        match handle {
            Ok(file) => f(&file),
            Err(path) => f(&OpenOptions::new()
                .read(true)
                .write(self.writable)
                .open(path)?),
        }
    }

    fn fallocate(&self, mode: libc::c_int, range: Range<usize>) -> io::Result<()> {
        self.check(&range);
        self.with_file(|file| fallocate(file, mode, range))
    }

    /// Best effort: an advice the kernel does not know changes nothing.
    fn advise(&self, advice: Advice, range: Range<usize>) {
        self.check(&range);
        if !range.is_empty() {
            let _ = self.map.advise_range(advice, range.start, range.len());
        }
    }

    /// Synchronously writes back `range` (msync `MS_SYNC`).
    pub fn flush(&self, range: Range<usize>) -> io::Result<()> {
        self.check(&range);
        if range.is_empty() {
            return Ok(());
        }
        self.map.flush_range(range.start, range.len())
    }
}

/// The single writer of a mapped file: the only way to write above its published end and to
/// move the end forward. One exists per mapping at most ([`MappedFile::appender`]).
#[derive(Debug)]
pub struct Appender {
    file: Arc<MappedFile>,
    /// The file's frontier (an appender exists only for a file that has one).
    frontier: Frontier,
}

impl Appender {
    /// Bytes of `range`, at or above the published end, for writing.
    pub fn unpublished_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        assert!(
            range.start >= self.file.published_end(),
            "published bytes are never rewritten"
        );
        // SAFETY: the range lies at or above the published end, where readers never look
        // (`published` cuts there), and only this appender, the file's only one, writes there;
        // `&mut self` keeps its views from overlapping.
        unsafe { self.file.exclusive(range) }
    }

    /// Publishes up to frontier value `value` (never backwards), with a Release store: the
    /// bytes written below it happen-before any Acquire load that sees it, in this process
    /// or any other that maps the file.
    pub fn publish(&mut self, value: u64) {
        let word = self.file.word_u64(self.frontier.word);
        // Relaxed: only this appender stores the word.
        assert!(
            value >= word.load(Ordering::Relaxed),
            "the frontier never moves back"
        );
        word.store(value, Ordering::Release);
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.file.appender_alive.store(false, Ordering::Release);
    }
}

/// `fallocate(2)` of `range` of `file` with `mode`; nothing for an empty range.
fn fallocate(file: &File, mode: libc::c_int, range: Range<usize>) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    // SAFETY: plain syscall on an fd we own for the call; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            range.start as libc::off_t,
            range.len() as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wakes every thread, in any process, blocked in a futex wait on `word`.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is a valid, aligned u32 in a
    // shared mapping (not FUTEX_PRIVATE, so waiters in other processes are found).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Blocks while `*word == expected`, for at most `timeout`. Returns early on a wake, a
/// changed value, a signal, or the timeout; callers re-check their condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid aligned u32 for the duration of the call; the kernel only
    // reads it; `ts` outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        static_end: 8,
        published_from: 64,
        frontier: Some(Frontier {
            word: 8,
            base: 0,
            unit: 1,
        }),
    };

    #[test]
    fn reserve_populate_publish_and_punch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let head = [7u8; 16];
        let m = MappedFile::create_with_head(&path, 1 << 20, 0, &head, LAYOUT).unwrap();
        assert_eq!(m.static_header(), &[7u8; 8]);
        // The head set the frontier word to 0x0707..: far past the file, clamped.
        assert_eq!(m.published_end(), 1 << 20);
        let mut m = m;
        m.set_frontier(64);
        let m = Arc::new(m);
        m.reserve(0..65536).unwrap();
        m.populate_write(0..65536);
        let mut w = m.appender().expect("the first appender");
        assert!(m.appender().is_none(), "one appender per file");
        w.unpublished_mut(64..68).copy_from_slice(b"abcd");
        assert_eq!(m.published(0..68), b"", "not published yet");
        w.publish(68);
        assert_eq!(m.published(0..68), b"abcd");
        assert!(m.punch_unpublished(4096..65536).is_err(), "a writer lives");
        drop(w);
        assert!(
            m.punch_unpublished(0..65536).is_err(),
            "published bytes stay"
        );
        m.punch_unpublished(4096..65536).unwrap();
        assert_eq!(m.published(64..68), b"abcd");
        m.flush(0..4096).unwrap();
    }

    #[test]
    #[should_panic(expected = "published bytes are never rewritten")]
    fn appender_cannot_rewrite_published_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = [0u8; 16];
        head[8] = 64;
        let m = MappedFile::create_with_head(&dir.path().join("f"), 4096, 0, &head, LAYOUT);
        let m = Arc::new(m.unwrap());
        let mut w = m.appender().unwrap();
        w.publish(72);
        w.unpublished_mut(64..72);
    }
}

//! Every `unsafe` that touches a mapping lives here.
//!
//! A [`MappedFile`] is a file mapped once, whole, with `MAP_SHARED`. Other processes (tailers)
//! map the same file, so the kernel, not Rust, owns the bytes; Rust's aliasing rules are kept
//! by the publication protocol of the format:
//!
//! * bytes below a segment's committed end (and index entries below the published count) are
//!   *frozen*: nobody writes them while the file exists, so shared slices of them are sound;
//! * bytes above it are written by the single writer only, through [`MappedFile::writable`],
//!   and nobody reads them;
//! * the header's dynamic fields are only ever accessed as atomics.
//!
//! The file is never truncated below its mapped length while mapped (the format forbids
//! shrinking a segment), so no access here can raise SIGBUS; disk blocks are reserved with
//! `fallocate` before the writer touches a page, so a full disk is an error, not a SIGBUS.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64};

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
        Self::map(file, true)
    }

    /// Maps an existing file read-write (`writable`) or read-only.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Self::map(file, writable)
    }

    /// Maps only the first `len` bytes of an existing file, read-write: a tailer uses it to
    /// register as a waiter in a segment header, without mapping the data writable.
    pub fn open_prefix_rw(path: &Path, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file too short"));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(MappedFile {
            map,
            file: std::sync::Mutex::new(FileHandle::Open(std::sync::Arc::new(file))),
            writable: true,
        })
    }

    fn map(file: File, writable: bool) -> io::Result<Self> {
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
        let mapped = MappedFile {
            map,
            file: std::sync::Mutex::new(FileHandle::Open(std::sync::Arc::new(file))),
            writable,
        };
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

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
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

    /// A shared view of `range`.
    ///
    /// # Safety
    /// The bytes in `range` must be frozen: no one writes them for as long as the returned
    /// slice (or anything derived from it) lives. In mapq that means the range lies below a
    /// published committed end or index count, or the file is not shared yet.
    pub unsafe fn frozen(&self, range: Range<usize>) -> &[u8] {
        self.check(&range);
        // SAFETY: the range is inside the mapping (checked above), the mapping lives as long
        // as `self`, and the caller guarantees nobody writes the bytes meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.len()) }
    }

    /// An exclusive view of `range`, for writing.
    ///
    /// # Safety
    /// The caller must be the only one accessing `range` (the single writer, above the
    /// published end, or the file is not shared yet), and must not hold two overlapping
    /// writable views at once.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn writable(&self, range: Range<usize>) -> &mut [u8] {
        assert!(self.writable, "write through a read-only mapping");
        self.check(&range);
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(range.start), range.len())
        }
    }

    /// The 8-byte aligned word at `pos`, accessed atomically. Only load through it unless
    /// the mapping [`is_writable`](Self::is_writable): a store into a read-only mapping
    /// faults.
    pub fn atomic_u64(&self, pos: usize) -> &AtomicU64 {
        self.check(&(pos..pos + 8));
        assert_eq!(pos % 8, 0, "unaligned atomic");
        // SAFETY: in bounds and aligned (the mapping is page aligned), the memory lives as
        // long as `self`, and the format only ever accesses this word atomically, so no
        // non-atomic reference to it exists (frozen/writable ranges never cover header
        // words).
        unsafe { &*self.map.as_ptr().add(pos).cast::<AtomicU64>() }
    }

    /// The 4-byte aligned word at `pos`, accessed atomically.
    pub fn atomic_u32(&self, pos: usize) -> &AtomicU32 {
        self.check(&(pos..pos + 4));
        assert_eq!(pos % 4, 0, "unaligned atomic");
        // SAFETY: as for `atomic_u64`.
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

    /// Releases the disk blocks of `range` (reads then return zeros). The file keeps its
    /// length, so mappings stay valid.
    pub fn punch_hole(&self, range: Range<usize>) -> io::Result<()> {
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

    #[test]
    fn reserve_populate_and_punch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let m = MappedFile::create_with_head(&path, 1 << 20, 0, &[]).unwrap();
        m.reserve(0..65536).unwrap();
        m.populate_write(0..65536);
        // SAFETY: the file is private to this test.
        unsafe { m.writable(0..4) }.copy_from_slice(b"abcd");
        // SAFETY: nothing writes after this point.
        assert_eq!(unsafe { m.frozen(0..4) }, b"abcd");
        m.punch_hole(0..65536).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { m.frozen(0..4) }, &[0, 0, 0, 0]);
        m.flush(0..4096).unwrap();
    }
}

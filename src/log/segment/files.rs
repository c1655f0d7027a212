//! A segment's files: creating them (directly, or as a spare adopted later by a roll),
//! naming them, and opening them again.
//!
//! A `.log` file always has a whole header and comes with its index files: a new segment's
//! files are made under temporary names (`*.new`) and renamed into place, index files first.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use super::space::QuotaCharge;
use super::{Mapped, Segment, SegmentHeader, DATA_START, LAYOUT, READ_AHEAD_AFTER_BYTES};
use crate::log::error::{LogError, Result};
use crate::log::failpoint;
use crate::log::format::{self, segment_header as sh, SEGMENT_FILE_EXTS};
use crate::log::index::{Index, IndexKind};
use crate::log::mmap::MappedFile;
use crate::log::quota::DiskQuota;
use crate::log::util::{now_ms, sync_dir};

/// Base offset written in a spare segment's header until it is adopted.
pub const SPARE_BASE_OFFSET: u64 = u64::MAX;

/// Path of a spare segment's file of the given extension: `<name>.<ext>.new`.
pub fn spare_path(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}.{}", format::CREATING_SUFFIX))
}

/// Path of a segment's file of the given extension.
pub fn path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(format::file_name(base_offset, ext))
}

/// The base offsets of the segment files in a partition directory, oldest first.
pub fn list_bases(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut bases: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            format::parse_file_name(name.to_str()?, format::SEGMENT_EXT)
        })
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Removes a segment's three files (best effort: missing ones are fine).
pub fn remove(dir: &Path, base: u64) {
    for ext in SEGMENT_FILE_EXTS {
        let _ = fs::remove_file(path(dir, base, ext));
    }
}

/// Whether the data file of segment `base` in `dir` was created and never made durable: a
/// crash before its first flush can leave it with an all-zero header page, or shorter than
/// one (see [`Segment::create`] without `durable`). Such a segment holds no durable record.
pub fn never_durable(dir: &Path, base: u64) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(DATA_START);
    fs::File::open(path(dir, base, format::SEGMENT_EXT))
        .and_then(|f| f.take(DATA_START as u64).read_to_end(&mut head))
        .is_ok_and(|_| head.iter().all(|&b| b == 0))
}

/// Renames a file, or fails as the `rename` failpoint says.
fn rename(from: &Path, to: &Path) -> Result<()> {
    failpoint::check("rename")
        .and_then(|()| fs::rename(from, to))
        .map_err(|e| LogError::io(from, e))
}

/// Bytes allocated when a segment is created: the data file's header page and each index
/// file's first block.
fn initial_charge(index_cap: usize) -> u64 {
    let index = (crate::log::index::INITIAL_ALLOCATION_BYTES as u64)
        .min(crate::log::index::file_len(index_cap));
    2 * index + DATA_START as u64
}

impl Segment {
    /// Creates a new segment in `dir`: its index files first, then the data file under a
    /// temporary name, renamed into place with its whole header, so that a reader never
    /// sees a `.log` file without one. With `durable`, the header and the name are made
    /// durable before this returns; without (a new partition's first segment), the first
    /// flush of a record does it (the caller marks the directory unsynced), and a crash
    /// before it may leave the file with an all-zero header, or none: recovery removes such
    /// a first segment, which held no durable record (see `never_durable`). Replaces an
    /// existing (empty) segment with the same base offset.
    pub fn create(
        dir: &Path,
        header: SegmentHeader,
        quota: Option<&Arc<DiskQuota>>,
        durable: bool,
    ) -> Result<Self> {
        let base = header.base_offset;
        let index_cap = header.index_capacity();
        let final_path = path(dir, base, format::SEGMENT_EXT);
        // The index files and the data file get their first blocks; the writer allocates
        // more ahead of itself as it fills them.
        let charge = QuotaCharge::take(quota, initial_charge(index_cap), &final_path)?;
        let index =
            |kind: IndexKind| Index::create(&path(dir, base, kind.ext()), kind, base, index_cap);
        let offset_index = index(IndexKind::Offset)?;
        let time_index = index(IndexKind::Time)?;
        let tmp = final_path.with_extension(format!(
            "{}.{}",
            format::SEGMENT_EXT,
            format::CREATING_SUFFIX
        ));
        let _ = fs::remove_file(&tmp);
        let cleanup = |e: std::io::Error| {
            let _ = fs::remove_file(&tmp);
            LogError::reserve(&tmp, DATA_START as u64, e)
        };
        let data = failpoint::check("fallocate")
            .and_then(|()| {
                MappedFile::create_with_head(
                    &tmp,
                    header.capacity_bytes,
                    DATA_START,
                    &header.new_head(),
                    LAYOUT,
                )
            })
            .map_err(cleanup)?;
        if durable {
            data.flush(0..DATA_START).map_err(cleanup)?;
        }
        rename(&tmp, &final_path)?;
        if durable {
            sync_dir(dir)?;
        }
        let seg = Self::from_parts(header, final_path, data, offset_index, time_index, quota);
        seg.header_durable.store(durable, Ordering::Release);
        seg.charged_bytes.store(charge.keep(), Ordering::Relaxed);
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
        replicated: bool,
        quota: Option<&Arc<DiskQuota>>,
    ) -> Result<Self> {
        let header = SegmentHeader {
            version: format::FORMAT_VERSION,
            base_offset: SPARE_BASE_OFFSET,
            capacity_bytes,
            created_ms: 0,
            index_interval_bytes,
            replicated,
        };
        let index_cap = header.index_capacity();
        let data_path = spare_path(dir, name, format::SEGMENT_EXT);
        let charge = QuotaCharge::take(quota, initial_charge(index_cap), &data_path)?;
        let created = (|| {
            let index = |kind: IndexKind| {
                let path = spare_path(dir, name, kind.ext());
                Index::create_at(&path, kind, SPARE_BASE_OFFSET, index_cap)
            };
            let offset_index = index(IndexKind::Offset)?;
            let time_index = index(IndexKind::Time)?;
            let _ = fs::remove_file(&data_path);
            let data = failpoint::check("fallocate")
                .and_then(|()| {
                    MappedFile::create_with_head(
                        &data_path,
                        capacity_bytes,
                        DATA_START,
                        &header.new_head(),
                        LAYOUT,
                    )
                })
                .map_err(|e| LogError::reserve(&data_path, DATA_START as u64, e))?;
            Ok(Self::from_parts(
                header,
                data_path.clone(),
                data,
                offset_index,
                time_index,
                quota,
            ))
        })();
        match created {
            Ok(seg) => {
                seg.charged_bytes.store(charge.keep(), Ordering::Relaxed);
                Ok(seg)
            }
            Err(e) => {
                for ext in SEGMENT_FILE_EXTS {
                    let _ = fs::remove_file(spare_path(dir, name, ext));
                }
                Err(e)
            }
        }
    }

    /// Makes a spare the segment with `base_offset`: writes its real header (base offset,
    /// creation time, checksum) and the index headers. The files keep their temporary names
    /// until [`Segment::rename_spare_files`]. The spare is owned by value, so nobody else
    /// uses its files.
    pub fn adopt(mut self, dir: &Path, base_offset: u64, created_ms: i64) -> Result<Self> {
        let adopted = self.adopt_files(dir, base_offset, created_ms);
        if adopted.is_err() {
            // The spare is dropped: give its charge back (its files, still under their
            // temporary names, are removed by the next start's recovery).
            self.release_quota();
        }
        adopted.map(|()| self)
    }

    fn adopt_files(&mut self, dir: &Path, base_offset: u64, created_ms: i64) -> Result<()> {
        self.header.base_offset = base_offset;
        self.header.created_ms = created_ms;
        self.path = path(dir, base_offset, format::SEGMENT_EXT);
        let mut m = self.take_mapping()?;
        let data = Arc::get_mut(&mut m.data)
            .ok_or_else(|| LogError::corrupt(&m.path, "adopting a spare in use"))?;
        data.bytes_mut(0..sh::STATIC_END)
            .copy_from_slice(&self.header.encode());
        m.path = self.path.clone();
        m.offset_index.adopt(
            base_offset,
            path(dir, base_offset, format::OFFSET_INDEX_EXT),
        )?;
        m.time_index
            .adopt(base_offset, path(dir, base_offset, format::TIME_INDEX_EXT))?;
        self.mapped.store(Some(Arc::new(m)));
        self.next_offset = AtomicU64::new(base_offset);
        // Its real header is only in memory until synced.
        self.header_durable.store(false, Ordering::Release);
        Ok(())
    }

    /// The mapping of a segment owned by value, taken out to be changed through `&mut`
    /// (adopting a spare, recovering): nobody else holds it.
    pub(crate) fn take_mapping(&mut self) -> Result<Mapped> {
        let m = self
            .mapped
            .swap(None)
            .ok_or_else(|| LogError::corrupt(&self.path, "segment not mapped"))?;
        Arc::try_unwrap(m).map_err(|m| {
            self.mapped.store(Some(m));
            LogError::corrupt(&self.path, "segment mapping in use")
        })
    }

    /// Puts back a mapping taken with [`Segment::take_mapping`].
    pub(crate) fn put_mapping(&mut self, m: Mapped) {
        self.mapped.store(Some(Arc::new(m)));
    }

    /// Gives an adopted spare's files their final names: the index files first, the data
    /// file last, so a `.log` file always comes with its indexes. A file renamed by an
    /// earlier, interrupted call is skipped.
    pub fn rename_spare_files(dir: &Path, name: &str, base_offset: u64) -> Result<()> {
        for ext in [
            format::OFFSET_INDEX_EXT,
            format::TIME_INDEX_EXT,
            format::SEGMENT_EXT,
        ] {
            let (from, to) = (spare_path(dir, name, ext), path(dir, base_offset, ext));
            if !from.exists() && to.exists() {
                continue;
            }
            rename(&from, &to)?;
        }
        Ok(())
    }

    /// The one constructor: a segment over freshly made or opened files.
    fn from_parts(
        header: SegmentHeader,
        path: PathBuf,
        data: MappedFile,
        offset_index: Index,
        time_index: Index,
        quota: Option<&Arc<DiskQuota>>,
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
            closed_sealed: AtomicBool::new(true),
            header_durable: AtomicBool::new(true),
            last_used_ms: AtomicI64::new(now_ms()),
            reopen_lock: Mutex::new(()),
            next_offset: AtomicU64::new(header.base_offset),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            // Recovery sets the real value of an opened segment; until then nothing counts as
            // reserved.
            allocated_end: AtomicUsize::new(DATA_START),
            allocate_lock: Mutex::new(()),
            prefaulted_end: AtomicUsize::new(DATA_START),
            prefault_requested: AtomicBool::new(false),
            read_ahead: AtomicBool::new(false),
            quota: quota.cloned(),
            charged_bytes: AtomicU64::new(0),
        }
    }

    /// Closes the descriptors of the segment's three files, which must have their final
    /// names: the mappings stay, and the rare calls that need a file (block allocation,
    /// releasing blocks on seal) reopen it for the call. So an idle partition holds no file
    /// descriptor. For a spare adopted by a roll: once its files are renamed.
    pub(crate) fn release_files(&self) {
        if let Some(m) = self.mapping_if_open() {
            m.data.release_file(&m.path);
            m.offset_index.release_file();
            m.time_index.release_file();
        }
    }

    /// Whether [`Segment::enable_read_ahead`] has run (its madvise is file work).
    pub(super) fn read_ahead_enabled(&self) -> bool {
        self.read_ahead.load(Ordering::Relaxed)
    }

    /// Lets the kernel read ahead around faults in this segment's data, once it holds
    /// [`READ_AHEAD_AFTER_BYTES`]. Until then faults map single pages: around a fault in a
    /// hole, read-ahead zeroes a whole window nobody asked for, which made creating and
    /// opening idle partitions slow (measured); past it, read-ahead's large pages make a busy
    /// writer's faults several times cheaper (also measured), and readers mostly read in
    /// order.
    pub(super) fn enable_read_ahead(&self) {
        if !self.read_ahead.swap(true, Ordering::Relaxed) {
            if let Some(m) = self.mapping_if_open() {
                m.data.read_ahead(0..m.data.len());
            }
        }
    }

    /// Opens an existing segment. With `writable`, index files that are missing or damaged
    /// are recreated empty (recovery refills them); read-only, they are an error.
    ///
    /// # Soundness
    /// The segment's files are mapped shared: no other program may write, truncate or map
    /// them writable while they are open (see the `mmap` module). Within one process, open
    /// a partition's segments writable once (the broker's data-directory lock sees to it).
    pub fn open(
        dir: &Path,
        base_offset: u64,
        writable: bool,
        quota: Option<&Arc<DiskQuota>>,
    ) -> Result<Self> {
        let path = path(dir, base_offset, format::SEGMENT_EXT);
        let data = MappedFile::open(&path, writable, LAYOUT).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                LogError::corrupt(&path, "file shorter than a segment header")
            }
            _ => LogError::io(&path, e),
        })?;
        data.release_file(&path);
        let header = SegmentHeader::decode(data.static_header(), &path, data.len() as u64)?;
        if header.base_offset != base_offset {
            return Err(LogError::corrupt(
                &path,
                "base offset does not match the file name",
            ));
        }
        let committed = data.frontier();
        if committed < DATA_START as u64
            || committed > header.capacity_bytes
            || !committed.is_multiple_of(format::FRAME_ALIGN as u64)
        {
            return Err(LogError::corrupt(
                &path,
                format!("committed end {committed} outside the data area"),
            ));
        }
        let index_cap = header.index_capacity();
        let open_index = |kind: IndexKind| -> Result<Index> {
            let p = self::path(dir, base_offset, kind.ext());
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
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        if let Some(q) = quota {
            q.take(charged);
        }
        let seg = Self::from_parts(header, path, data, offset_index, time_index, quota);
        seg.charged_bytes.store(charged, Ordering::Relaxed);
        if committed as usize >= DATA_START + READ_AHEAD_AFTER_BYTES {
            seg.enable_read_ahead();
        }
        Ok(seg)
    }
}

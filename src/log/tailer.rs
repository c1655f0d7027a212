//! Local tailing: read a partition straight from its segment files, in another process than
//! the server, with no server round trip, no lock and read-only access.
//!
//! ```no_run
//! use mapq::log::tailer::{StartAt, TailOptions, Tailer, WaitMode};
//!
//! let options = TailOptions {
//!     from: StartAt::Earliest,
//!     follow: true,
//!     wait: WaitMode::Block,
//!     ..TailOptions::default()
//! };
//! let mut tailer = Tailer::open("./data".as_ref(), "orders", 0, options)?;
//! while let Some(record) = tailer.next_record()? {
//!     // `record` borrows the mapping: no copy was made.
//!     let value = record.value().unwrap_or_default(); // None: a null value
//!     println!("{} {}", record.offset, String::from_utf8_lossy(value));
//! }
//! # Ok::<(), mapq::log::tailer::TailError>(())
//! ```
//!
//! The tailer follows the publication protocol of `FORMAT.md`: it reads frames below the
//! committed end (or the durable end), moves to the next segment once the current one is
//! sealed and fully read (or a newer segment exists, after a crash left it unsealed), and
//! keeps reading a segment that retention deleted under it. Waiting is a busy spin (lowest
//! latency) or a futex wait on the segment header's wake word (no CPU while idle; with write
//! access to the files the tailer registers as a waiter so the writer wakes it at once, with
//! read access only it checks every millisecond).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::LogError;
use super::format::{self, decode_frame, segment_header as sh, FrameView};
use super::mmap::{futex_wait, MappedFile};
use super::segment::{self, Mapped, Segment, DATA_START};

/// Where a reader starts (a tailer, or a consumer of the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still stored.
    Earliest,
    /// After the newest record: only records appended from now on.
    Latest,
    /// At this offset (at most the end offset).
    Offset(u64),
    /// At the first record with a timestamp at or after this many ms since the epoch.
    Timestamp(i64),
}

/// How a following tailer waits for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin on the committed end: lowest latency, one core busy.
    Spin,
    /// Sleep in a futex wait: no CPU while idle.
    Block,
}

/// What a tailer does when records it has not read yet were deleted by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeleted {
    /// Return [`TailError::OffsetDeleted`].
    Fail,
    /// Jump to the earliest record still stored.
    Jump,
}

#[derive(Debug, Clone, Copy)]
pub struct TailOptions {
    pub from: StartAt,
    /// Wait for new records at the end instead of stopping there.
    pub follow: bool,
    /// Read only records that msync has made durable.
    pub durable_only: bool,
    /// Read only records that every in-sync replica holds (what no failover can remove); in
    /// a partition that is not replicated, every record.
    pub replicated_only: bool,
    pub wait: WaitMode,
    pub on_deleted: OnDeleted,
    /// When set and true, a follower stops: `next_record` returns `Ok(None)` at its next
    /// wake-up (within 100 ms), no longer counted among the segment's waiters. For programs
    /// that end on a signal: a process killed while registered in a futex wait leaves the
    /// segment's waiter count one too high for good, which costs the writer a needless
    /// wake-up call on every publish.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            from: StartAt::Earliest,
            follow: false,
            durable_only: false,
            replicated_only: false,
            wait: WaitMode::Block,
            on_deleted: OnDeleted::Fail,
            stop: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TailError {
    #[error("no partition at {0}")]
    NoPartition(PathBuf),
    #[error("offset {offset} was deleted by retention; the earliest offset is {earliest}")]
    OffsetDeleted { offset: u64, earliest: u64 },
    #[error("offset {offset} is beyond the end of the log ({latest})")]
    OffsetBeyondEnd { offset: u64, latest: u64 },
    #[error("the topic was deleted")]
    TopicDeleted,
    /// The partition was truncated back to offset `to` after this tailer had read records
    /// up to `read_up_to`: the records `[to, read_up_to)` it returned are gone, and those
    /// offsets will be given to other records. The tailer is positioned at `to` already:
    /// calling [`Tailer::next_record`] again goes on from there.
    #[error("the partition was truncated to offset {to}: the records read from {to} to {read_up_to} are gone")]
    Truncated { to: u64, read_up_to: u64 },
    #[error(transparent)]
    Log(#[from] LogError),
}

pub type Result<T, E = TailError> = std::result::Result<T, E>;

/// How often a waiting tailer checks the directory (newer segment after a crash, topic
/// deleted), and how long a futex wait lasts at most.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a blocking tailer looks for new records before it sleeps.
const BLOCK_SPIN: Duration = Duration::from_micros(50);
/// How far ahead of its position a following tailer maps pages.
const POPULATE_AHEAD: usize = 256 << 10;
/// A tailer without write access cannot register as a waiter: it looks this often.
const UNREGISTERED_POLL: Duration = Duration::from_millis(1);

/// A reader of one partition's files.
pub struct Tailer {
    dir: PathBuf,
    opts: TailOptions,
    seg: Arc<Segment>,
    m: Arc<Mapped>,
    /// The current segment's header mapped writable, to register as a waiter; `None`
    /// without write access.
    waiter: Option<MappedFile>,
    /// Identity (device, inode) of the current segment's file.
    file_id: (u64, u64),
    pos: usize,
    next_offset: u64,
    last_check: Instant,
    /// Pages below this position are mapped into this process already.
    populated_end: usize,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("dir", &self.dir)
            .field("segment", &self.seg.base_offset())
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

fn bases(dir: &Path) -> Result<Vec<u64>> {
    segment::list_bases(dir).map_err(|_| TailError::NoPartition(dir.to_owned()))
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Tailer {
    /// Opens `<data_dir>/<topic>/<partition>` read-only and positions the tailer.
    pub fn open(data_dir: &Path, topic: &str, partition: u32, opts: TailOptions) -> Result<Self> {
        Self::open_dir(&data_dir.join(topic).join(partition.to_string()), opts)
    }

    /// Opens a partition directory read-only and positions the tailer.
    pub fn open_dir(dir: &Path, opts: TailOptions) -> Result<Self> {
        let all = bases(dir)?;
        let (&first, &last) = all
            .first()
            .zip(all.last())
            .ok_or_else(|| TailError::NoPartition(dir.to_owned()))?;
        let mut t = Self::at_segment(dir, opts, first)?;
        match opts.from {
            StartAt::Earliest => {}
            StartAt::Latest => t.seek_end(last)?,
            StartAt::Offset(offset) => {
                if offset < first {
                    return match opts.on_deleted {
                        OnDeleted::Fail => t.deleted(offset, first),
                        OnDeleted::Jump => Ok(t),
                    };
                }
                let base = all
                    .iter()
                    .rev()
                    .find(|&&b| b <= offset)
                    .copied()
                    .unwrap_or(first);
                t = Self::at_segment(dir, opts, base)?;
                // Any published record: one above the durable or replicated end waits
                // there until it is visible.
                let end = t.m.committed_end();
                match t.m.locate(offset, end)? {
                    Some(pos) => (t.pos, t.next_offset) = (pos, offset),
                    None => {
                        t.seek_end(last)?;
                        if offset != t.next_offset {
                            return Err(TailError::OffsetBeyondEnd {
                                offset,
                                latest: t.next_offset,
                            });
                        }
                    }
                }
            }
            StartAt::Timestamp(ts) => {
                let mut found = false;
                for &base in &all {
                    let c = Self::at_segment(dir, opts, base)?;
                    if let Some((offset, pos)) = c.m.find_timestamp(ts)? {
                        t = c;
                        (t.pos, t.next_offset) = (pos, offset);
                        found = true;
                        break;
                    }
                }
                if !found {
                    t.seek_end(last)?;
                }
            }
        }
        Ok(t)
    }

    fn at_segment(dir: &Path, opts: TailOptions, base: u64) -> Result<Self> {
        let seg = Arc::new(Segment::open(dir, base, false, None)?);
        let m = seg
            .mapping_if_open()
            .ok_or_else(|| LogError::corrupt(seg.path(), "segment not mapped"))?;
        let path = segment::path(dir, base, format::SEGMENT_EXT);
        Ok(Tailer {
            dir: dir.to_owned(),
            opts,
            waiter: MappedFile::open_prefix_rw(&path, sh::SIZE).ok(),
            file_id: file_id(&path).unwrap_or_default(),
            seg,
            m,
            pos: DATA_START,
            next_offset: base,
            last_check: Instant::now(),
            populated_end: DATA_START,
        })
    }

    /// Moves to the end of the newest segment.
    fn seek_end(&mut self, last: u64) -> Result<()> {
        if self.seg.base_offset() != last {
            *self = Self::at_segment(&self.dir, self.opts, last)?;
        }
        let end = self.visible_end();
        self.next_offset = self.m.offset_at(last, end)?;
        self.pos = end;
        Ok(())
    }

    fn deleted<T>(&self, offset: u64, earliest: u64) -> Result<T> {
        Err(TailError::OffsetDeleted { offset, earliest })
    }

    /// The offset of the next record the tailer will return.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Where reading must stop: the committed end, or the durable end, or the replicated
    /// end (the lower of the two when both are asked for).
    fn visible_end(&self) -> usize {
        let mut end = self.m.committed_end();
        if self.opts.durable_only {
            end = end.min(self.m.durable_end());
        }
        if self.opts.replicated_only {
            end = end.min(self.m.replicated_end().unwrap_or(end));
        }
        end
    }

    /// The next record, a zero-copy view of the mapping. `None` at the end of the log when
    /// not following; when following, waits for it.
    pub fn next_record(&mut self) -> Result<Option<FrameView<'_>>> {
        self.next_record_within(None)
    }

    /// The next record if it is readable now in the segment the tailer is in: never waits,
    /// and never moves to another segment (so that the records returned since the last
    /// call to any other method stay mapped: the C library's batches).
    pub fn next_record_here(&mut self) -> Result<Option<FrameView<'_>>> {
        let end = self.visible_end();
        if self.pos >= end {
            return Ok(None);
        }
        self.read_at(end).map(Some)
    }

    /// Decodes the frame at the tailer's position (below `end`) and moves past it.
    fn read_at(&mut self, end: usize) -> Result<FrameView<'_>> {
        let at = self.pos;
        let m = &self.m;
        let f = decode_frame(m.published(at, end))
            .map_err(|e| LogError::corrupt(self.seg.path(), format!("at byte {at}: {e}")))?;
        if f.offset != self.next_offset {
            return Err(LogError::corrupt(
                self.seg.path(),
                format!(
                    "offset {} where {} was expected",
                    f.offset, self.next_offset
                ),
            )
            .into());
        }
        self.pos += f.padded_len;
        self.next_offset = f.offset.checked_add(1).ok_or_else(|| {
            LogError::corrupt(self.seg.path(), "offset u64::MAX has no successor")
        })?;
        Ok(f)
    }

    /// [`Tailer::next_record`], waiting (when following) for `timeout` at the most (`None`:
    /// as long as it takes): `None` once it has passed with no record.
    pub fn next_record_within(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<FrameView<'_>>> {
        // The clock is read only when there is nothing to read at once.
        let mut deadline = None;
        loop {
            let end = self.visible_end();
            if self.pos < end {
                return self.read_at(end).map(Some);
            }
            if self.advance(false)? {
                continue;
            }
            if !self.opts.follow || self.stopped() {
                return Ok(None);
            }
            let deadline = timeout.map(|t| *deadline.get_or_insert_with(|| Instant::now() + t));
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // A caller that never waits (a timeout of 0) gets the periodic checks too.
                if self.last_check.elapsed() >= CHECK_EVERY {
                    self.last_check = Instant::now();
                    if self.advance(true)? {
                        continue;
                    }
                    self.check_still_there()?;
                }
                return Ok(None);
            }
            self.populate_ahead();
            self.wait(end, deadline)?;
            if self.stopped() {
                return Ok(None);
            }
            if self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                if self.advance(true)? {
                    continue;
                }
                self.check_still_there()?;
            }
        }
    }

    /// Maps the next pages of the segment into this process while there is nothing to read,
    /// so that reading them later takes no page fault (one trap per 4 KiB page otherwise,
    /// which is most of a spinning tailer's latency tail).
    fn populate_ahead(&mut self) {
        if self.populated_end < self.pos + POPULATE_AHEAD / 2 {
            let from = self.populated_end.max(self.pos & !(4096 - 1));
            let to = (self.pos + POPULATE_AHEAD).min(self.m.capacity());
            self.m.populate_read(from..to);
            self.populated_end = to;
        }
    }

    /// At the end of the current segment: moves to the next one if this one is finished
    /// (sealed; or, with `look_for_newer`, a newer segment exists, as after a crash that left
    /// it unsealed). Returns whether it moved.
    fn advance(&mut self, look_for_newer: bool) -> Result<bool> {
        // At the end of what it can read: a damaged end stops the reader here, by name.
        self.m.checked_committed_end()?;
        if self.m.is_deleted() {
            // The topic was deleted: the end loaded after the word is final. Read up to it
            // (the durable end, reading durable data only: no flush comes any more), then stop.
            if self.pos < self.visible_end() {
                return Ok(false);
            }
            return Err(TailError::TopicDeleted);
        }
        if let Some(to) = self.m.truncated_to() {
            return self.after_truncation(to);
        }
        let sealed = self.m.is_sealed();
        let committed = self.m.committed_end();
        if self.pos < committed {
            return Ok(false);
        }
        let next_path = segment::path(&self.dir, self.next_offset, format::SEGMENT_EXT);
        if !(sealed || (look_for_newer && next_path.exists())) {
            return Ok(false);
        }
        if next_path.exists() {
            if !sealed && self.pos < self.m.committed_end() {
                // Not sealed (a crash, or a roll between the loads above): the newer file
                // was seen after the committed end was loaded, and the writer's last records
                // here may lie between the two. Read up to the end loaded now first.
                return Ok(false);
            }
            *self = Self::at_segment(&self.dir, self.opts, self.next_offset)?;
            return Ok(true);
        }
        // No successor: retention deleted it (and us) before we got there, or the topic is
        // gone.
        let all = match bases(&self.dir) {
            Ok(all) => all,
            Err(_) => return Err(TailError::TopicDeleted),
        };
        match all.first() {
            Some(&earliest) if earliest > self.next_offset => match self.opts.on_deleted {
                OnDeleted::Fail => self.deleted(self.next_offset, earliest),
                OnDeleted::Jump => {
                    *self = Self::at_segment(&self.dir, self.opts, earliest)?;
                    Ok(true)
                }
            },
            Some(_) => Ok(false),
            None => Err(TailError::TopicDeleted),
        }
    }

    /// This file lost records to a truncation to `to` (section 5.3 of FORMAT.md): finds the
    /// offset to read next again from the directory, once the file that replaces this one
    /// has its name. Reports the records read past the cut, once. Returns whether it moved.
    fn after_truncation(&mut self, to: u64) -> Result<bool> {
        let target = self.next_offset.min(to);
        let all = bases(&self.dir).map_err(|_| TailError::TopicDeleted)?;
        let Some(&base) = all.iter().rev().find(|&&b| b <= target) else {
            return match all.first() {
                Some(&earliest) => self.deleted(target, earliest),
                None => Err(TailError::TopicDeleted),
            };
        };
        let c = Self::at_segment(&self.dir, self.opts, base)?;
        let end = c.visible_end();
        let pos = match c.m.locate(target, end)? {
            _ if c.m.truncated_to().is_some() => None,
            Some(pos) => Some(pos),
            None if c.m.offset_at(base, end)? == target => Some(end),
            None => None,
        };
        let Some(pos) = pos else {
            // The copy has not taken the name yet (or its records are not visible to this
            // reader yet): look again shortly.
            std::thread::sleep(UNREGISTERED_POLL);
            return Ok(false);
        };
        let read_up_to = self.next_offset;
        *self = c;
        (self.pos, self.next_offset) = (pos, target);
        if read_up_to > target {
            return Err(TailError::Truncated {
                to: target,
                read_up_to,
            });
        }
        Ok(true)
    }

    /// A segment that vanished while unsealed means its topic was deleted (or deleted and
    /// created again): never read on from a file that is not ours.
    fn check_still_there(&self) -> Result<()> {
        let path = segment::path(&self.dir, self.seg.base_offset(), format::SEGMENT_EXT);
        match file_id(&path) {
            Some(id) if id == self.file_id => Ok(()),
            // Sealed, or replaced by a truncation's copy (which `advance` moves to).
            _ if self.m.is_sealed() || self.m.truncated_to().is_some() => Ok(()),
            _ => Err(TailError::TopicDeleted),
        }
    }

    /// Whether the owner asked this follower to stop ([`TailOptions::stop`]).
    fn stopped(&self) -> bool {
        self.opts.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Whether anything a waiting tailer waits for happened since it saw `end`: the visible
    /// end moved, the segment was sealed, deleted or truncated, or its owner asked it to stop.
    fn changed_since(&self, end: usize) -> bool {
        self.visible_end() != end
            || self.m.is_sealed()
            || self.m.is_deleted()
            || self.m.truncated_to().is_some()
            || self.stopped()
    }

    /// Waits until something changed (see [`Tailer::changed_since`]), or a while has passed
    /// (at most until `deadline`).
    fn wait(&self, end: usize, deadline: Option<Instant>) -> Result<()> {
        let changed = || self.changed_since(end);
        let started = Instant::now();
        let most = deadline.map_or(CHECK_EVERY, |d| {
            d.saturating_duration_since(started).min(CHECK_EVERY)
        });
        match self.opts.wait {
            WaitMode::Spin => {
                let mut spins = 0u32;
                while !changed() {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1 << 10) && started.elapsed() >= most {
                        break;
                    }
                }
            }
            WaitMode::Block => {
                // Records often come in bursts: look for a few microseconds before paying for
                // a sleep and a wake-up (a futex wake costs 15-80 µs here).
                while started.elapsed() < BLOCK_SPIN.min(most) {
                    if changed() {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
                self.block(end, most)
            }
        }
        Ok(())
    }

    /// Sleeps in a futex wait on the segment's wake word (section 5.1 of FORMAT.md), `most`
    /// at the longest.
    fn block(&self, end: usize, most: Duration) {
        let changed = || self.changed_since(end);
        match &self.waiter {
            Some(rw) => {
                let seq = rw.atomic_u32(sh::WAKE_SEQ);
                let waiters = rw.atomic_u32(sh::WAITERS);
                let expected = seq.load(Ordering::Acquire);
                // SeqCst: pairs with the writer's fence between its publish and its load
                // of WAITERS, so either it sees us registered or we see its publish.
                waiters.fetch_add(1, Ordering::SeqCst);
                if !changed() {
                    futex_wait(seq, expected, most);
                }
                waiters.fetch_sub(1, Ordering::SeqCst);
            }
            None => {
                let seq = self.m.wake_seq();
                let expected = seq.load(Ordering::Acquire);
                if !changed() {
                    futex_wait(seq, expected, UNREGISTERED_POLL.min(most));
                }
            }
        }
    }
}

//! One partition of a topic: its log, the watches that wake consumers waiting for records
//! and producers waiting for durability, and reads that wait (long-poll, live tails).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::durable::DurableWaiters;
use super::error::BrokerError;
pub use crate::log::tailer::StartAt;
use crate::log::{PartitionLog, ReadBatch};

/// The budgets of one read: at most `max_records` records and `max_bytes` bytes of frames,
/// but always at least one record when one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// How a read may wait for records: at most `timeout`, while `stop` is false, holding one of
/// `permits` (the server's bound on waiting consumers).
#[derive(Debug, Clone)]
pub struct Wait {
    pub timeout: Duration,
    pub stop: watch::Receiver<bool>,
    pub permits: Arc<Semaphore>,
}

impl Wait {
    pub(super) fn permit(&self) -> Result<OwnedSemaphorePermit, BrokerError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| BrokerError::TooManyWaiters)
    }
}

/// One partition: its log, and a watch of its end offset that wakes waiting consumers.
///
/// In a cluster the log is replicated, and consumers see it up to its high watermark
/// (what every in-sync replica holds): the watch follows that, and `log_end` follows the
/// appends (for the followers that fetch them).
#[derive(Debug)]
pub struct Partition {
    id: u32,
    log: PartitionLog,
    end_offset: watch::Sender<u64>,
    log_end: watch::Sender<u64>,
    /// A flush of this partition is queued (after `flush_messages` records).
    flush_queued: AtomicBool,
    /// `durability=fsync` producers waiting, as tasks rather than threads, and answered by
    /// every flush of this partition that covers them, whoever ran it (see
    /// [`Broker::wait_durable`]).
    durable_waiters: DurableWaiters,
    /// Records and bytes of frames appended since the partition was opened.
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
}

impl Partition {
    pub(super) fn open(
        dir: &Path,
        id: u32,
        config: &crate::log::LogConfig,
    ) -> Result<Self, BrokerError> {
        let (log, _report) = PartitionLog::open(dir, config.clone()).map_err(BrokerError::Log)?;
        let end = log.end_offset();
        let visible = if log.is_replicated() {
            log.replicated_offset()
        } else {
            end
        };
        Ok(Partition {
            id,
            log,
            end_offset: watch::Sender::new(visible),
            log_end: watch::Sender::new(end),
            flush_queued: AtomicBool::new(false),
            durable_waiters: DurableWaiters::default(),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
        })
    }

    /// The producers waiting for durability.
    pub(super) fn durable_waiters(&self) -> &DurableWaiters {
        &self.durable_waiters
    }

    /// Answers the waiting producers that a flush covered, or, when it failed, every one it
    /// did not.
    pub(super) fn flushed(&self, result: &Result<u64, BrokerError>) {
        match result {
            Ok(durable) => self.durable_waiters.answer(*durable, None),
            Err(e) => {
                let why: std::sync::Arc<str> = e.to_string().into();
                self.durable_waiters
                    .answer(self.log.durable_offset(), Some(&why));
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Marks a flush as queued; false if one already was.
    pub fn queue_flush(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// Clears the queued mark before the queued flush runs.
    pub fn take_queued_flush(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// Records appended but not yet flushed.
    pub fn unflushed_records(&self) -> u64 {
        self.log
            .end_offset()
            .saturating_sub(self.log.durable_offset())
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// A receiver that changes whenever records are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_offset.subscribe()
    }

    /// Counts an append, and wakes the consumers waiting for its records.
    pub(super) fn appended(&self, a: &super::PartitionAppend) {
        self.appended_records.fetch_add(a.count, Ordering::Relaxed);
        self.appended_bytes.fetch_add(a.bytes, Ordering::Relaxed);
        self.appended_to(a.end_offset());
    }

    /// Wakes what waits for records below `end`: consumers, unless the partition is
    /// replicated (they wait for the high watermark), and followers fetching.
    pub fn appended_to(&self, end: u64) {
        if !self.log.is_replicated() {
            self.notify(end);
        }
        self.log_end.send_if_modified(|current| {
            let grew = end > *current;
            if grew {
                *current = end;
            }
            grew
        });
    }

    /// A receiver that changes whenever records are appended, replicated or not.
    pub fn subscribe_log_end(&self) -> watch::Receiver<u64> {
        self.log_end.subscribe()
    }

    /// What consumers may read up to: the end, or in a replicated partition the high
    /// watermark.
    pub fn high_watermark(&self) -> u64 {
        if self.log.is_replicated() {
            self.log.replicated_offset()
        } else {
            self.log.end_offset()
        }
    }

    /// Raises a replicated partition's high watermark (stored in its segments for local
    /// tailers, see `PartitionLog::advance_replicated`) and wakes the consumers waiting
    /// for the records below it. Blocks.
    pub fn advance_high_watermark(&self, hw: u64) -> Result<(), BrokerError> {
        self.log.advance_replicated(hw.min(self.log.end_offset()))?;
        self.notify(self.log.replicated_offset());
        Ok(())
    }

    /// After a truncation: the watches may stand above the new end.
    pub fn truncated_to(&self, end: u64) {
        self.log_end
            .send_modify(|current| *current = (*current).min(end));
    }

    /// Records and bytes of frames appended since the partition was opened.
    pub fn appended_totals(&self) -> (u64, u64) {
        (
            self.appended_records.load(Ordering::Relaxed),
            self.appended_bytes.load(Ordering::Relaxed),
        )
    }

    /// Wakes consumers waiting for records below `end`. Appends finish their notification
    /// in any order, so the watched value only ever grows.
    fn notify(&self, end: u64) {
        self.end_offset.send_if_modified(|current| {
            let grew = end > *current;
            if grew {
                *current = end;
            }
            grew
        });
    }

    /// The offset `at` names. Blocks (a timestamp lookup may map a segment).
    pub fn resolve(&self, at: StartAt) -> Result<u64, BrokerError> {
        let log = &self.log;
        Ok(match at {
            StartAt::Earliest => log.start_offset(),
            StartAt::Latest => self.high_watermark(),
            StartAt::Offset(o) => o,
            StartAt::Timestamp(ts) => log.offset_for_timestamp(ts)?.unwrap_or(log.end_offset()),
        })
    }

    /// Reads from `offset` within `limits`. Never waits for the writer; blocks only on the
    /// files (a segment closed while idle is reopened, cold pages fault in).
    pub fn read(&self, offset: u64, limits: ReadLimits) -> Result<ReadBatch, BrokerError> {
        if !self.log.is_replicated() {
            return Ok(self
                .log
                .read(offset, limits.max_records, limits.max_bytes)?);
        }
        // Up to the high watermark: a record above it may still be truncated away.
        let hw = self.log.replicated_offset();
        let below = usize::try_from(hw.saturating_sub(offset)).unwrap_or(usize::MAX);
        let mut batch = self
            .log
            .read(offset, limits.max_records.min(below), limits.max_bytes)?;
        batch.high_watermark = hw.max(batch.next_offset);
        Ok(batch)
    }

    /// Reads from `offset` within `limits`, past the high watermark: what a follower
    /// fetches. Blocks on the files like [`Partition::read`].
    pub fn read_log(&self, offset: u64, limits: ReadLimits) -> Result<ReadBatch, BrokerError> {
        Ok(self
            .log
            .read(offset, limits.max_records, limits.max_bytes)?)
    }

    /// Reads from the offset `at` names, on the blocking pool; when nothing is there yet and
    /// `wait` allows, waits for the append that brings a record (woken by the append itself,
    /// not by a timer), for the timeout, or for the stop, and reads again. Returns the offset
    /// read from and the batch.
    pub async fn read_or_wait(
        self: &Arc<Self>,
        at: StartAt,
        limits: ReadLimits,
        wait: Option<Wait>,
    ) -> Result<(u64, ReadBatch), BrokerError> {
        let p = Arc::clone(self);
        let (offset, batch) = super::blocking(move || {
            let offset = p.resolve(at)?;
            Ok((offset, p.read(offset, limits)?))
        })
        .await?;
        let Some(mut wait) = wait.filter(|w| batch.record_count == 0 && !w.timeout.is_zero())
        else {
            return Ok((offset, batch));
        };
        let _permit = wait.permit()?;
        let mut changes = self.subscribe();
        tokio::select! {
            _ = changes.wait_for(|&end| end > offset) => {}
            _ = tokio::time::sleep(wait.timeout) => {}
            _ = wait.stop.wait_for(|s| *s) => {}
        }
        let p = Arc::clone(self);
        let batch = super::blocking(move || p.read(offset, limits)).await?;
        Ok((offset, batch))
    }

    /// A live tail from `offset`: batches as records are appended, until `wait.stop` (or an
    /// error, which ends it). Holds one of `wait.permits` while it lives; `wait.timeout` is
    /// not used (a tail waits as long as it is read).
    pub fn tail(
        self: Arc<Self>,
        offset: u64,
        limits: ReadLimits,
        wait: Wait,
    ) -> Result<PartitionTail, BrokerError> {
        Ok(PartitionTail {
            _permit: wait.permit()?,
            partition: self,
            offset,
            limits,
            changes: None,
            stop: wait.stop,
            done: false,
        })
    }
}

/// Resolves when any of `watched` grows past its offset (never, when `watched` is empty):
/// a long-poll over several partitions, woken by the appends themselves.
pub async fn any_grows(watched: Vec<(Arc<Partition>, u64)>) {
    use futures_util::future::{select_all, FutureExt};
    let mut appends: Vec<_> = watched
        .into_iter()
        .map(|(p, offset)| {
            async move {
                let mut rx = p.subscribe();
                let _ = rx.wait_for(|&end| end > offset).await;
            }
            .boxed()
        })
        .collect();
    appends.push(std::future::pending().boxed());
    select_all(appends).await;
}

/// A live tail of a partition (see [`Partition::tail`]).
#[derive(Debug)]
pub struct PartitionTail {
    partition: Arc<Partition>,
    offset: u64,
    limits: ReadLimits,
    changes: Option<watch::Receiver<u64>>,
    stop: watch::Receiver<bool>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl PartitionTail {
    /// The next records as soon as there are some; an error once, when the position is lost
    /// (the topic deleted, the offset removed by retention); `None` once stopped.
    pub async fn next(&mut self) -> Option<Result<ReadBatch, BrokerError>> {
        if self.done {
            return None;
        }
        loop {
            // Subscribe before reading, so an append between the read and the wait wakes us.
            let changes = self
                .changes
                .get_or_insert_with(|| self.partition.subscribe());
            changes.borrow_and_update();
            let (p, offset, limits) = (Arc::clone(&self.partition), self.offset, self.limits);
            match super::blocking(move || p.read(offset, limits)).await {
                Ok(batch) if batch.record_count > 0 => {
                    self.offset = batch.next_offset;
                    return Some(Ok(batch));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            let changes = self.changes.as_mut()?;
            tokio::select! {
                r = changes.changed() => if r.is_err() { return None },
                _ = self.stop.wait_for(|s| *s) => return None,
            }
        }
    }
}

//! Durability: msync of the published data, shared between callers (group commit).

use std::sync::atomic::Ordering;

use super::PartitionLog;
use crate::log::error::{LogError, Result};

/// The partition's one flush at a time: held by a flush, and by a truncation (which moves
/// the durable offset back). Dropping it gives the turn back and wakes whoever waits for it,
/// however the holder ends (a panic included: no later flush may wait for ever).
pub(super) struct FlushTurn<'a>(&'a PartitionLog);

impl Drop for FlushTurn<'_> {
    fn drop(&mut self) {
        *self
            .0
            .flush_running
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = false;
        self.0.flush_done.notify_all();
    }
}

impl PartitionLog {
    /// Waits until no flush runs, and keeps any from starting until the turn is dropped.
    pub(super) fn flush_turn(&self) -> FlushTurn<'_> {
        let mut running = self.flush_running.lock().unwrap_or_else(|p| p.into_inner());
        while *running {
            running = self
                .flush_done
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
        *running = true;
        FlushTurn(self)
    }

    /// Makes every record published so far durable (msync), and advances the durable offset.
    /// A failure stops the partition: later appends fail with [`LogError::Stopped`].
    pub fn flush(&self) -> Result<u64> {
        self.flush_until(u64::MAX)
    }
    /// Makes records below `offset` durable, sharing flushes between callers (group
    /// commit): whoever waits for the flush lock finds, once it has it, that the flush that
    /// held it may already have covered its records, and then returns without an msync.
    /// Returns the durable offset.
    pub fn flush_until(&self, offset: u64) -> Result<u64> {
        let mut running = self.flush_running.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = self.stopped.get() {
                return Err(LogError::Stopped(reason.clone()));
            }
            if self.rolls.deleted.load(Ordering::Acquire) {
                return Err(LogError::Deleted);
            }
            let durable = self.durable_offset();
            if durable >= offset.min(self.end_offset()) {
                return Ok(durable);
            }
            if !*running {
                break;
            }
            // Someone is flushing: wait for it, then look again. Waiters that it covered
            // return without an msync of their own: that is the group commit.
            running = self
                .flush_done
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
        *running = true;
        drop(running);
        let _turn = FlushTurn(self);
        self.flush_published()
    }
    /// msyncs every segment with data above its durable end; only one runs at a time.
    fn flush_published(&self) -> Result<u64> {
        let end = self.end_offset();
        // Durable records need durable file names, and a durable name needs a durable header.
        for seg in self.segments.load().iter() {
            seg.make_header_durable()?;
        }
        self.rolls.sync_names()?;
        for seg in self.segments.load().iter() {
            if seg.durable_end() < seg.committed_end() {
                if let Err(e) = seg.flush() {
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    let reason = e.to_string();
                    tracing::error!(partition = %self.dir.display(), error = %reason, "flush failed; partition stopped");
                    let _ = self.stopped.set(reason);
                    return Err(e);
                }
            }
        }
        self.durable_offset.fetch_max(end, Ordering::AcqRel);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(end)
    }
}

//! A partition's leader-epoch history (KIP-101): for each leader epoch whose leader
//! appended (or may append) records, the first offset of that epoch. A node that follows a
//! new leader asks it where its own last epoch ended there, and truncates to that point: the
//! records it had past it were never committed, and the new leader wrote others there.
//!
//! Kept in `<partition dir>/leader-epochs`, one `epoch start_offset` line per epoch,
//! rewritten durably (temporary file, fsync, rename) on every change; changes are rare
//! (leaderships, and a follower meeting a new epoch in what it fetches).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::broker::BrokerError;
use crate::log::format::LEADER_EPOCHS_FILE;

/// One epoch and its first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u32,
    pub start: u64,
}

/// The history, oldest first: epochs and starts both strictly increasing... starts only
/// non-decreasing (an epoch whose leader appended nothing starts where the next does).
#[derive(Debug)]
pub struct EpochHistory {
    path: PathBuf,
    entries: Mutex<Vec<EpochStart>>,
}

impl EpochHistory {
    /// Reads the history of the partition in `dir`, dropping entries that start past
    /// `end` (records a crash took away), and keeping the file in step.
    pub fn open(dir: &Path, end: u64) -> Result<Self, BrokerError> {
        let path = dir.join(LEADER_EPOCHS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(BrokerError::io(&path, e)),
        };
        let mut entries: Vec<EpochStart> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = line.split_once(' ').and_then(|(e, s)| {
                Some(EpochStart {
                    epoch: e.parse().ok()?,
                    start: s.trim().parse().ok()?,
                })
            });
            match parsed {
                Some(e) if entries.last().is_none_or(|l| l.epoch < e.epoch) => entries.push(e),
                _ => {
                    return Err(BrokerError::Corrupt(format!(
                    "{}: a line that is not `epoch start_offset` with both increasing: {line:?}",
                    path.display()
                )))
                }
            }
        }
        let h = EpochHistory {
            path,
            entries: Mutex::new(entries),
        };
        h.truncate(end)?;
        Ok(h)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<EpochStart>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, entries: &[EpochStart]) -> Result<(), BrokerError> {
        let text: String = entries
            .iter()
            .map(|e| format!("{} {}\n", e.epoch, e.start))
            .collect();
        crate::broker::topic::write_durably(&self.path, text.as_bytes())
    }

    /// The latest epoch and its start.
    pub fn latest(&self) -> Option<EpochStart> {
        self.lock().last().copied()
    }

    /// Records that `epoch` starts at `start`, unless the history knows it (or a later
    /// one) already.
    pub fn assign(&self, epoch: u32, start: u64) -> Result<(), BrokerError> {
        let mut entries = self.lock();
        if entries.last().is_some_and(|l| l.epoch >= epoch) {
            return Ok(());
        }
        let mut next = entries.clone();
        next.push(EpochStart { epoch, start });
        self.save(&next)?;
        *entries = next;
        Ok(())
    }

    /// Forgets the epochs that start at or past `end` (a crash took their records), but
    /// the last one when it starts exactly at `end` (the current leader's epoch, with no
    /// record yet).
    fn truncate(&self, end: u64) -> Result<(), BrokerError> {
        self.cut(end, true)
    }

    /// Forgets the epochs that start at or past `end`, the last one too (a follower cut its
    /// log there: the epochs it learns next come from its leader).
    pub fn truncate_strictly(&self, end: u64) -> Result<(), BrokerError> {
        self.cut(end, false)
    }

    fn cut(&self, end: u64, keep_empty_last: bool) -> Result<(), BrokerError> {
        let mut entries = self.lock();
        let mut keep = entries.iter().take_while(|e| e.start < end).count();
        if keep_empty_last && keep + 1 == entries.len() && entries[keep].start == end {
            keep += 1;
        }
        if keep < entries.len() {
            let next = entries[..keep].to_vec();
            self.save(&next)?;
            *entries = next;
        }
        Ok(())
    }

    /// Where `epoch` ends in this log (KIP-101's OffsetsForLeaderEpoch, with KIP-279's
    /// answer): the largest epoch known that is at most `epoch`, and the start of the epoch
    /// after it (or `log_end`, when it is the latest). `None` when every epoch known is
    /// later than `epoch`.
    pub fn end_of(&self, epoch: u32, log_end: u64) -> Option<(u32, u64)> {
        let entries = self.lock();
        let i = entries.iter().rposition(|e| e.epoch <= epoch)?;
        let end = entries.get(i + 1).map_or(log_end, |next| next.start);
        Some((entries[i].epoch, end))
    }

    /// The entries (for the fetch answer that tells a follower the epochs of the records
    /// it gets): those that start past `from`, and the one that covers `from`.
    pub fn covering(&self, from: u64) -> Vec<EpochStart> {
        let entries = self.lock();
        let first = entries.iter().rposition(|e| e.start <= from).unwrap_or(0);
        entries[first..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_answers_where_an_epoch_ends_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let h = EpochHistory::open(dir.path(), 0).unwrap();
        assert_eq!(h.end_of(1, 0), None);
        h.assign(1, 0).unwrap();
        h.assign(3, 10).unwrap();
        h.assign(2, 5).unwrap(); // older than the latest: ignored
        assert_eq!(h.end_of(1, 20), Some((1, 10)));
        assert_eq!(h.end_of(2, 20), Some((1, 10)), "epoch 2 never led here");
        assert_eq!(h.end_of(3, 20), Some((3, 20)));
        assert_eq!(h.end_of(9, 20), Some((3, 20)));
        assert_eq!(
            h.covering(12),
            vec![EpochStart {
                epoch: 3,
                start: 10
            }]
        );
        assert_eq!(h.covering(0).len(), 2);
        drop(h);
        let h = EpochHistory::open(dir.path(), 20).unwrap();
        assert_eq!(
            h.latest(),
            Some(EpochStart {
                epoch: 3,
                start: 10
            })
        );
        // A crash took the records from 8 on: epoch 3 is gone.
        drop(h);
        let h = EpochHistory::open(dir.path(), 8).unwrap();
        assert_eq!(h.latest(), Some(EpochStart { epoch: 1, start: 0 }));
    }

    #[test]
    fn a_leader_epoch_with_no_records_yet_is_kept_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let h = EpochHistory::open(dir.path(), 0).unwrap();
        h.assign(1, 0).unwrap();
        h.assign(2, 7).unwrap();
        h.truncate(7).unwrap();
        assert_eq!(h.latest(), Some(EpochStart { epoch: 2, start: 7 }));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEADER_EPOCHS_FILE), "2 5\n1 9\n").unwrap();
        assert!(EpochHistory::open(dir.path(), 10).is_err());
    }
}

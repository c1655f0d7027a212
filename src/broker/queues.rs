//! Queue groups as the broker keeps them: each group's settings
//! (`<data_dir>/@queues/<group>/settings.json`, written durably) and its state journalled in
//! mapq's own log format (`<data_dir>/@queues/<group>/journal/`, a partition of the storage
//! engine whose records are the JSON [`Event`]s of [`super::queue`]), appended before every
//! answer that changed the state and replayed when the broker opens. The journal is
//! compacted: after [`SNAPSHOT_EVERY`] events the whole state is written as one snapshot
//! event at the head of a new segment, and the segments before it are deleted.
//!
//! A journal's events reach the mapped file before the answer, as records do with the
//! default `memory` durability: a `kill -9` of the server loses none; the flush task makes
//! them durable with the data's. With `default_durability = "fsync"` each change is flushed
//! before its answer.
//!
//! In a cluster the journal is a replicated partition (`@queue.<group>` in the cluster's
//! state) and the group's coordinator is its leader: every change is appended under that
//! leadership and held on every in-sync replica before its answer
//! ([`JournalReplication`]), and the node that leads the journal next replays it. The
//! settings live in the cluster's store; only the groups this node coordinates are open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::error::BrokerError;
use super::partition::Partition;
use super::queue::{Event, QueueState};
use super::topic::write_durably;
use crate::log::{LogConfig, PartitionLog, Record, WorkerHandle};

/// In a cluster: where a queue group's dead letters go. A dead-letter partition is led by
/// whichever node the cluster chose, seldom the group's coordinator: the record is sent to
/// that leader, once under an idempotency key (a retry after a failure appends nothing
/// more), and acknowledged once its in-sync replicas hold it.
pub trait DeadLetterSink: Send + Sync + std::fmt::Debug {
    /// Appends `record` (one record of a JSON produce request, its partition named) to
    /// `topic`, under the Idempotency-Key `key`. Blocks.
    fn append(&self, topic: &str, record: serde_json::Value, key: &str) -> Result<(), BrokerError>;
}

/// A wait for replication, run on an async worker.
pub type Replicated =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BrokerError>> + Send>>;

/// In a cluster: the replication of a queue group's journal, which this node leads.
pub trait JournalReplication: Send + Sync + std::fmt::Debug {
    /// Whether this node may append to the journal now: it still leads it, under its
    /// etcd lease, with enough in-sync replicas (else `NotCoordinator` or
    /// `NotEnoughReplicas`).
    fn check(&self) -> Result<(), BrokerError>;
    /// Runs `append` as the journal's leader, while that leadership lasts (a change of role
    /// waits for it); otherwise nothing runs and the answer is why. Blocks.
    fn as_leader(
        &self,
        append: &mut dyn FnMut() -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError>;
    /// Waits until every in-sync replica holds the journal below `end` (with `fsync`, has
    /// made it durable), under the leadership it was appended under.
    fn wait_replicated(&self, end: u64, fsync: bool) -> Replicated;
    /// What every in-sync replica holds: the journal's high watermark.
    fn committed(&self) -> u64;
    /// The leadership this replication appends under (it changes with every role change).
    fn generation(&self) -> u64;
}

/// What an answer that changed a group waits for once the group's lock is let go: the
/// journal flushed (`default_durability = "fsync"`), then held by the in-sync replicas (in
/// a cluster).
#[must_use]
#[derive(Debug)]
pub struct Settle {
    journal: Arc<Partition>,
    fsync: bool,
    replicated: Option<(Arc<dyn JournalReplication>, u64)>,
}

impl Settle {
    /// The flush, with `fsync`. Blocks.
    pub fn flush(&self) -> Result<(), BrokerError> {
        if self.fsync {
            self.journal.log().flush()?;
        }
        Ok(())
    }

    /// Waits (on an async worker, never holding a blocking thread) until the in-sync
    /// replicas hold the changes.
    pub async fn replicated(self) -> Result<(), BrokerError> {
        match self.replicated {
            Some((r, end)) => r.wait_replicated(end, self.fsync).await,
            None => Ok(()),
        }
    }
}

/// Name of the directory holding queue groups.
pub const QUEUES_DIR: &str = "@queues";
/// Events after which the journal is compacted into a snapshot.
pub const SNAPSHOT_EVERY: u64 = 1_000_000;
/// Longest lease (and release delay) a worker may ask for: 12 hours, as SQS allows.
pub const MAX_LEASE_MS: u64 = 12 * 3600 * 1000;

/// A queue group's settings (API.md: `PUT /v1/groups/{group}` with `"type": "queue"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub topics: Vec<String>,
    pub lease_ms: u64,
    pub max_deliveries: u32,
    /// `None`: a record is dropped after its last delivery.
    pub dead_letter_topic: Option<String>,
    pub max_in_flight: u64,
}

impl QueueSettings {
    /// The settings validated, their topics sorted and deduplicated (the same topics in
    /// another order are the same settings).
    pub fn normalized(mut self) -> Result<Self, BrokerError> {
        self.validate()?;
        self.topics.sort();
        self.topics.dedup();
        Ok(self)
    }

    pub const DEFAULT_LEASE_MS: u64 = 30_000;
    pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
    pub const DEFAULT_MAX_IN_FLIGHT: u64 = 10_000;

    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |why: String| Err(BrokerError::InvalidConfig(why));
        if self.topics.is_empty() {
            return bad("`topics` is empty".into());
        }
        for t in &self.topics {
            super::validate_name(t)?;
        }
        if !(100..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return bad(format!(
                "lease_ms must be from 100 to {MAX_LEASE_MS}, not {}",
                self.lease_ms
            ));
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            return bad(format!(
                "max_deliveries must be from 1 to 1000, not {}",
                self.max_deliveries
            ));
        }
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            return bad(format!(
                "max_in_flight must be from 1 to 1000000, not {}",
                self.max_in_flight
            ));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            super::validate_name(dlq)?;
            if self.topics.contains(dlq) {
                return bad(format!(
                    "the dead-letter topic {dlq:?} is one of the group's topics"
                ));
            }
        }
        Ok(())
    }
}

/// What a queue group did since the server started: the counters of its metrics.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub first_deliveries: AtomicU64,
    pub redeliveries: AtomicU64,
    pub accepts: AtomicU64,
    pub releases: AtomicU64,
    pub rejects: AtomicU64,
    pub extends: AtomicU64,
    pub lost_leases: AtomicU64,
    pub expired_leases: AtomicU64,
    pub dead_letters: AtomicU64,
    pub window_full: AtomicU64,
}

/// A queue group's state under its lock.
#[derive(Debug)]
pub struct QueueInner {
    pub state: QueueState,
    /// The state could not be rebuilt after a failed journal append: it may disagree with
    /// the journal, so the group answers nothing until the server restarts.
    poisoned: bool,
    snapshot_every: u64,
    journal: Arc<Partition>,
    /// In a cluster: the journal's replication, under whose leadership it is written.
    replication: Option<Arc<dyn JournalReplication>>,
    since_snapshot: u64,
    fsync: bool,
    /// Events applied but not journalled yet (see [`QueueInner::stage`]): the JSON array
    /// they are journalled as (its closing bracket aside) and how many items it holds, then
    /// the last one, kept apart while later ones may join its run; and how many single-record
    /// events they stand for.
    staged: Vec<u8>,
    staged_items: u64,
    pending: Option<Event>,
    staged_events: u64,
    /// In a cluster: the offset of a snapshot whose older segments go once every in-sync
    /// replica holds it (before, a follower could be left without the snapshot and without
    /// the events it replaces).
    cut_at: Option<u64>,
}

impl QueueInner {
    /// In a cluster: refuses (before anything is staged) when this node may not append
    /// to the journal now.
    pub fn ready(&self) -> Result<(), BrokerError> {
        match &self.replication {
            Some(r) => r.check(),
            None => Ok(()),
        }
    }

    /// Deletes the segments before the last snapshot once every in-sync replica holds it.
    /// Blocks.
    pub fn cut_committed(&mut self) {
        let (Some(at), Some(r)) = (self.cut_at, &self.replication) else {
            return;
        };
        if r.committed() <= at {
            return;
        }
        match self.journal.log().delete_segments_below(at) {
            Ok(_) => self.cut_at = None,
            Err(e) => {
                tracing::warn!(error = %e, "deleting a queue group journal's compacted segments failed; tried again later")
            }
        }
    }

    /// Appends `events` to the journal (one publication: all or none) and applies them;
    /// compacts the journal when it is due. On error, nothing was applied. Durable with
    /// [`QueueInner::sync`]. Blocks.
    pub fn commit(&mut self, events: impl IntoIterator<Item = Event>) -> Result<(), BrokerError> {
        self.commit_with(events, None)
    }

    /// [`QueueInner::commit`], appending through `writer` when given (see
    /// [`QueueInner::commit_staged_with`]).
    pub fn commit_with(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        writer: Option<&mut crate::log::AppendGuard<'_>>,
    ) -> Result<(), BrokerError> {
        for e in events {
            self.stage(e);
        }
        self.commit_staged_with(writer).map(|_| ())
    }

    /// Applies an event now, to be journalled by the next [`QueueInner::commit_staged`]
    /// (which the caller must reach before it answers): later decisions of the same
    /// request see it.
    pub fn stage(&mut self, e: Event) {
        if self.poisoned {
            return;
        }
        self.state.apply(&e);
        self.staged_events += e.weight();
        if let Some(last) = &mut self.pending {
            if last.absorb(&e) {
                return;
            }
        }
        if let Some(last) = self.pending.replace(e) {
            self.write_staged(&last);
        }
    }

    /// Adds `e` to the staged JSON array.
    fn write_staged(&mut self, e: &Event) {
        self.staged
            .push(if self.staged_items == 0 { b'[' } else { b',' });
        serde_json::to_writer(&mut self.staged, e).expect("an event serializes");
        self.staged_items += 1;
    }

    /// Journals the staged events as one record: the event's JSON object when there is
    /// one, else a JSON array of them. If that fails, the state is rebuilt from the journal
    /// (the staged events were applied but are not in it) and the error returned. Returns
    /// whether anything was written. Blocks.
    pub fn commit_staged(&mut self) -> Result<bool, BrokerError> {
        self.commit_staged_with(None)
    }

    /// [`QueueInner::commit_staged`], appending through `writer` when given (the journal's
    /// writer, taken by [`QueueInner::writer_now`]).
    pub fn commit_staged_with(
        &mut self,
        writer: Option<&mut crate::log::AppendGuard<'_>>,
    ) -> Result<bool, BrokerError> {
        if self.poisoned {
            return Err(BrokerError::Corrupt(
                "this queue group's state could not be rebuilt after a failed journal write; restart the server".into(),
            ));
        }
        if self.staged_events == 0 {
            return Ok(false);
        }
        if let Some(last) = self.pending.take() {
            self.write_staged(&last);
        }
        let events = std::mem::take(&mut self.staged_events);
        let items = std::mem::take(&mut self.staged_items);
        let mut staged = std::mem::take(&mut self.staged);
        let json = if items == 1 {
            &staged[1..]
        } else {
            staged.push(b']');
            &staged[..]
        };
        let record = Record {
            value_is_json: true,
            ..Record::value(json, crate::log::now_ms())
        };
        let appended = match writer {
            Some(w) => w
                .append(std::slice::from_ref(&record))
                .map(|_| self.journal.appended_to(self.journal.log().end_offset()))
                .map_err(BrokerError::from),
            None => self.as_leader(&mut || {
                self.journal.log().append(std::slice::from_ref(&record))?;
                Ok(())
            }),
        };
        // The buffer is kept for the next request's events.
        staged.clear();
        self.staged = staged;
        if let Err(e) = appended {
            match replay(self.journal.log(), "(after a failed append)") {
                Ok((state, since)) => (self.state, self.since_snapshot) = (state, since),
                Err(again) => {
                    tracing::error!(error = %again, "a queue group's state could not be rebuilt from its journal; it answers nothing until a restart");
                    self.poisoned = true;
                }
            }
            return Err(e);
        }
        self.since_snapshot += events;
        self.cut_committed();
        if self.since_snapshot >= self.snapshot_every {
            // The events are journalled: a failed compaction loses nothing (the journal
            // keeps them; the next commit tries again).
            if let Err(e) = self.compact() {
                tracing::error!(error = %e, "compacting a queue group's journal failed; it will be tried again");
            }
        }
        Ok(true)
    }

    /// The writer of `journal` (this group's: [`QueueInner::journal`]) when journalling
    /// `events` more events, about topics of at most `topic_len` bytes, takes neither waiting
    /// nor file work: a lone server's journal (no replication), not flushed before each
    /// answer, with no compaction due, whose writer is free and has the room made. An async
    /// caller then commits through it ([`QueueInner::commit_staged_with`]) on its own
    /// thread. Blocks never.
    pub fn writer_now<'j>(
        &self,
        journal: &'j Partition,
        events: u64,
        topic_len: usize,
    ) -> Option<crate::log::AppendGuard<'j>> {
        if self.poisoned
            || self.replication.is_some()
            || self.fsync
            || self.since_snapshot + events >= self.snapshot_every
        {
            return None;
        }
        // Each event an object of its topic (escaped: at most 6 bytes a byte) and at most
        // 100 bytes of names and numbers; then the array's brackets.
        let json_bytes = (events as usize)
            .saturating_mul(topic_len.saturating_mul(6).saturating_add(100))
            .saturating_add(2);
        let frame = Record::value(&[], 0).padded_len()?;
        let w = journal.log().try_lock().ok()??;
        w.ready_for(frame.saturating_add(json_bytes).saturating_add(8))
            .then_some(w)
    }

    /// Runs the journal's `append` (in a cluster, as the journal's leader), and wakes its
    /// followers' fetches. Blocks.
    fn as_leader(
        &self,
        append: &mut dyn FnMut() -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        match &self.replication {
            Some(r) => r.as_leader(append)?,
            None => append()?,
        }
        self.journal.appended_to(self.journal.log().end_offset());
        Ok(())
    }

    /// Writes the state as one snapshot at the head of a new segment, and deletes the
    /// segments before it: at once on a lone server; in a cluster once every in-sync
    /// replica holds the snapshot ([`QueueInner::cut_committed`]; the followers delete
    /// theirs when they see the leader's start move). Blocks.
    fn compact(&mut self) -> Result<(), BrokerError> {
        let snapshot = Event::Snapshot {
            state: Box::new(self.state.clone()),
        };
        let bytes = serde_json::to_vec(&snapshot).expect("a snapshot serializes");
        let log = self.journal.log();
        let mut at = 0;
        self.as_leader(&mut || {
            log.roll()?;
            at = log
                .append(&[Record {
                    value_is_json: true,
                    ..Record::value(&bytes, crate::log::now_ms())
                }])?
                .first_offset;
            log.flush()?;
            Ok(())
        })?;
        if self.replication.is_some() {
            self.cut_at = Some(at);
        } else {
            log.delete_segments_below(at)?;
        }
        self.since_snapshot = 0;
        Ok(())
    }

    /// What the answer waits for once the caller let go of the group's lock (so that the
    /// group's other calls wait neither on the disk nor on the followers).
    pub fn settle(&self) -> Settle {
        Settle {
            journal: Arc::clone(&self.journal),
            fsync: self.fsync,
            replicated: self
                .replication
                .as_ref()
                .map(|r| (Arc::clone(r), self.journal.log().end_offset())),
        }
    }

    /// The journal, to flush without holding the group's lock (the maintenance task's,
    /// with the data's).
    pub fn journal(&self) -> Arc<Partition> {
        Arc::clone(&self.journal)
    }
}

/// One queue group.
#[derive(Debug)]
pub struct QueueGroup {
    name: String,
    /// The settings (they never change once the group exists), readable without the lock.
    pub settings: QueueSettings,
    inner: Mutex<QueueInner>,
    /// Bumped whenever records become available (released, expired, extended away).
    changes: watch::Sender<u64>,
    pub counters: QueueCounters,
    /// Where the next lease starts its round of the partitions.
    cursor: AtomicU64,
    /// In a cluster: the journal leadership the group was opened under.
    generation: Option<u64>,
}

impl QueueGroup {
    /// The index to start the next round of `n` partitions at.
    pub fn next_round(&self, n: usize) -> usize {
        (self.cursor.fetch_add(1, Ordering::Relaxed) % n.max(1) as u64) as usize
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn lock(&self) -> MutexGuard<'_, QueueInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock when it is free now; `None` when another call holds it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, QueueInner>> {
        match self.inner.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Wakes waiting lease requests (records became available).
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Every queue group (in a cluster: those this node coordinates).
#[derive(Debug)]
pub struct QueueGroups {
    dir: PathBuf,
    /// Held by a creation across its file work.
    creating: Mutex<()>,
    fsync: bool,
    snapshot_every: u64,
    groups: RwLock<BTreeMap<String, Arc<QueueGroup>>>,
    /// In a cluster: every queue group of the cluster, with its settings.
    cluster: RwLock<Option<BTreeMap<String, QueueSettings>>>,
    /// In a cluster: the journals this node holds a replica of, opened once.
    journals: Mutex<BTreeMap<String, Arc<Partition>>>,
    /// The broker's file worker, which reserves and pre-faults the journals' segments ahead
    /// of their appends (without one, an append does it itself, under the group's lock).
    worker: Option<WorkerHandle>,
}

fn journal_config(replicated: bool, worker: Option<&WorkerHandle>) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 20,
        reserve_chunk_bytes: 1 << 20,
        prefault_bytes: 256 << 10,
        replicated,
        worker: worker.cloned(),
        ..LogConfig::default()
    }
}

/// Replays a journal into a state. An event that does not decode (a journal of a newer
/// version) is skipped with an error in the log, never a failure to start.
fn replay(journal: &PartitionLog, group: &str) -> Result<(QueueState, u64), BrokerError> {
    let mut state = QueueState::default();
    let mut offset = journal.start_offset();
    let mut events = 0u64;
    // Compaction deletes only what a snapshot replaces: a journal that starts past its
    // beginning holds one (what comes before it there is replaced by it), or it lacks what
    // its state was built from.
    let mut needs_snapshot = offset > 0;
    while offset < journal.end_offset() {
        let batch = journal.read(offset, 10_000, 16 << 20)?;
        if batch.record_count == 0 {
            break;
        }
        for r in batch.records() {
            // A record holds one event (an object) or the events of one request (an array).
            let value = r.value.as_deref().unwrap_or_default();
            let decoded = if value.first() == Some(&b'[') {
                // An event that does not decode is skipped alone, not with its request's.
                serde_json::from_slice::<Vec<Event>>(value).or_else(|_| {
                    serde_json::from_slice::<Vec<serde_json::Value>>(value).map(|events| {
                        events
                            .into_iter()
                            .filter_map(|e| match serde_json::from_value::<Event>(e) {
                                Ok(e) => Some(e),
                                Err(e) => {
                                    tracing::error!(group, offset = r.offset, error = %e, "a queue journal event that does not decode; skipped");
                                    None
                                }
                            })
                            .collect()
                    })
                })
            } else {
                serde_json::from_slice::<Event>(value).map(|e| vec![e])
            };
            let decoded = match decoded {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(group, offset = r.offset, error = %e, "a queue journal record that does not decode; skipped");
                    continue;
                }
            };
            for e in decoded {
                if matches!(e, Event::Snapshot { .. }) {
                    events = 0;
                    needs_snapshot = false;
                } else if needs_snapshot {
                    // Before the first snapshot of a journal whose start was cut (a
                    // follower's segments end elsewhere than its leader's): replaced.
                    continue;
                }
                state.apply(&e);
                events += e.weight();
            }
        }
        offset = batch.next_offset;
    }
    if needs_snapshot && journal.end_offset() > journal.start_offset() {
        return Err(BrokerError::Corrupt(format!(
            "the journal of queue group {group} starts at offset {} without a snapshot after it",
            journal.start_offset()
        )));
    }
    Ok((state, events))
}

impl QueueGroups {
    /// Opens every queue group in `dir` (created if missing), replaying its journal.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, BrokerError> {
        Self::open_compacting(dir, fsync, SNAPSHOT_EVERY, None)
    }

    /// [`QueueGroups::open`], compacting journals after `snapshot_every` events, with the
    /// broker's file `worker` doing the journals' file work ahead of their appends.
    pub fn open_compacting(
        dir: &Path,
        fsync: bool,
        snapshot_every: u64,
        worker: Option<WorkerHandle>,
    ) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(|e| BrokerError::io(dir, e))?;
        let mut groups = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| BrokerError::io(dir, e))? {
            let path = entry.map_err(|e| BrokerError::io(dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let settings_path = path.join("settings.json");
            if super::validate_name(&name).is_err() || !settings_path.is_file() {
                tracing::warn!(path = %path.display(), "unexpected entry among queue groups; left alone");
                continue;
            }
            let bytes =
                std::fs::read(&settings_path).map_err(|e| BrokerError::io(&settings_path, e))?;
            let settings: QueueSettings = serde_json::from_slice(&bytes)
                .map_err(|e| BrokerError::Corrupt(format!("{}: {e}", settings_path.display())))?;
            let g = Self::open_group(
                &path,
                &name,
                settings,
                fsync,
                snapshot_every,
                worker.as_ref(),
            )?;
            groups.insert(name, Arc::new(g));
        }
        Ok(QueueGroups {
            dir: dir.to_owned(),
            creating: Mutex::new(()),
            fsync,
            snapshot_every,
            groups: RwLock::new(groups),
            cluster: RwLock::new(None),
            journals: Mutex::new(BTreeMap::new()),
            worker,
        })
    }

    fn open_group(
        path: &Path,
        name: &str,
        settings: QueueSettings,
        fsync: bool,
        snapshot_every: u64,
        worker: Option<&WorkerHandle>,
    ) -> Result<QueueGroup, BrokerError> {
        let journal = Partition::open(&path.join("journal"), 0, &journal_config(false, worker))?;
        Self::replayed(
            Arc::new(journal),
            None,
            name,
            settings,
            fsync,
            snapshot_every,
        )
    }

    /// A group whose state is read back from `journal`. Blocks.
    fn replayed(
        journal: Arc<Partition>,
        replication: Option<Arc<dyn JournalReplication>>,
        name: &str,
        settings: QueueSettings,
        fsync: bool,
        snapshot_every: u64,
    ) -> Result<QueueGroup, BrokerError> {
        let started = std::time::Instant::now();
        let (state, since_snapshot) = replay(journal.log(), name)?;
        if journal.log().end_offset() > 0 {
            tracing::info!(
                group = name,
                events = since_snapshot,
                ms = started.elapsed().as_millis() as u64,
                "queue group state read back from its journal"
            );
        }
        Ok(QueueGroup {
            name: name.to_owned(),
            settings,
            inner: Mutex::new(QueueInner {
                state,
                poisoned: false,
                snapshot_every,
                journal,
                replication: replication.clone(),
                since_snapshot,
                fsync,
                staged: Vec::new(),
                staged_items: 0,
                pending: None,
                staged_events: 0,
                cut_at: None,
            }),
            changes: watch::Sender::new(0),
            counters: QueueCounters::default(),
            cursor: AtomicU64::new(0),
            generation: replication.as_ref().map(|r| r.generation()),
        })
    }

    /// No groups: a placeholder until [`QueueGroups::open`].
    pub fn empty() -> Self {
        QueueGroups {
            dir: PathBuf::new(),
            creating: Mutex::new(()),
            fsync: false,
            snapshot_every: SNAPSHOT_EVERY,
            groups: RwLock::new(BTreeMap::new()),
            cluster: RwLock::new(None),
            journals: Mutex::new(BTreeMap::new()),
            worker: None,
        }
    }

    /// Makes the cluster's queue groups this node's (once, when it joins a cluster): its
    /// own are left on disk as they are, and none is open until this node leads its
    /// journal.
    pub fn enter_cluster(&self) {
        let mut cluster = self.cluster.write().unwrap_or_else(|p| p.into_inner());
        if cluster.is_none() {
            *cluster = Some(BTreeMap::new());
            self.groups
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// In a cluster: the queue groups it has now, with their settings.
    pub fn follow_cluster(&self, all: BTreeMap<String, QueueSettings>) {
        let mut cluster = self.cluster.write().unwrap_or_else(|p| p.into_inner());
        if cluster.is_some() {
            *cluster = Some(all);
        }
    }

    /// In a cluster: the settings of the cluster's queue group `group`; outside one, `None`.
    pub fn in_cluster(&self, group: &str) -> Option<QueueSettings> {
        let cluster = self.cluster.read().unwrap_or_else(|p| p.into_inner());
        cluster.as_ref()?.get(group).cloned()
    }

    /// Whether this node is part of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// In a cluster: this node's replica of `group`'s journal, opened (created) once, as a
    /// partition of the cluster's journal `@queue.<group>`. Blocks.
    pub fn cluster_journal(&self, group: &str) -> Result<Arc<Partition>, BrokerError> {
        super::validate_name(group)?;
        let mut journals = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = journals.get(group) {
            return Ok(Arc::clone(j));
        }
        // Apart from the journal of a queue group of that name this node had on its own.
        let path = self.dir.join(group).join("cluster-journal");
        std::fs::create_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
        let j = Arc::new(Partition::open(
            &path,
            0,
            &journal_config(true, self.worker.as_ref()),
        )?);
        journals.insert(group.to_owned(), Arc::clone(&j));
        Ok(j)
    }

    /// In a cluster: replaces this node's replica of `group`'s journal by an empty one that
    /// starts at `start` (its leader's first offset): the old one moves aside and is
    /// deleted; [`QueueGroups::cluster_journal`] opens the new one. Blocks.
    pub fn restart_journal(&self, group: &str, start: u64) -> Result<(), BrokerError> {
        super::validate_name(group)?;
        let mut journals = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        journals.remove(group);
        let path = self.dir.join(group).join("cluster-journal");
        let aside = self
            .dir
            .join(group)
            .join(format!("cluster-journal.replaced-{}", crate::log::now_ms()));
        if path.exists() {
            std::fs::rename(&path, &aside).map_err(|e| BrokerError::io(&path, e))?;
        }
        PartitionLog::create_empty_at(&path, &journal_config(true, self.worker.as_ref()), start)?;
        // The old files may still be mapped by the replica that just ended: unlinking them
        // is harmless (what was mapped stays readable until it is unmapped).
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(path = %aside.display(), error = %e, "cannot delete a replaced journal; delete it by hand");
        }
        Ok(())
    }

    /// In a cluster: the journals this node holds a replica of.
    pub fn cluster_journals(&self) -> Vec<Arc<Partition>> {
        let journals = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        journals.values().cloned().collect()
    }

    /// In a cluster: opens `group` as its coordinator, its state replayed from the journal
    /// this node now leads under `replication`. Blocks.
    pub fn activate(
        &self,
        group: &str,
        settings: QueueSettings,
        replication: Arc<dyn JournalReplication>,
    ) -> Result<(), BrokerError> {
        let journal = self.cluster_journal(group)?;
        let g = Self::replayed(
            journal,
            Some(replication),
            group,
            settings,
            self.fsync,
            self.snapshot_every,
        )?;
        tracing::info!(group, "coordinating the queue group");
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.to_owned(), Arc::new(g));
        Ok(())
    }

    /// In a cluster: the leadership `group` is open under here, if it is.
    pub fn active_generation(&self, group: &str) -> Option<u64> {
        self.get(group)?.generation
    }

    /// In a cluster: closes `group` here (another node coordinates it now; what its calls
    /// still append under the old leadership is refused).
    pub fn deactivate(&self, group: &str) {
        let removed = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group);
        if let Some(g) = removed {
            tracing::info!(group, "no longer coordinating the queue group");
            g.notify();
        }
    }

    pub fn get(&self, group: &str) -> Option<Arc<QueueGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<QueueGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The queue groups' names, sorted (in a cluster, all of the cluster's).
    pub fn names(&self) -> Vec<String> {
        if let Some(all) = &*self.cluster.read().unwrap_or_else(|p| p.into_inner()) {
            return all.keys().cloned().collect();
        }
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Creates a queue group; `Ok(false)` when it exists with the same settings,
    /// `GroupExists` when with others. Durable before it returns. Blocks.
    pub fn create(&self, group: &str, settings: QueueSettings) -> Result<bool, BrokerError> {
        let settings = settings.normalized()?;
        // Creations take turns; the map's lock, which readers on async workers take, is
        // held only to look up and to insert, never across the file work.
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = self.get(group) {
            return if g.settings == settings {
                Ok(false)
            } else {
                Err(BrokerError::GroupExists(group.to_owned()))
            };
        }
        let path = self.dir.join(group);
        if path.exists() {
            // Left by a creation that a crash cut before its settings were written.
            std::fs::remove_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| BrokerError::io(&path, e))?;
        let json = serde_json::to_vec_pretty(&settings).expect("settings serialize");
        let g = Self::open_group(
            &path,
            group,
            settings,
            self.fsync,
            self.snapshot_every,
            self.worker.as_ref(),
        )?;
        // The settings file last: a group directory without it is not a group.
        write_durably(&path.join("settings.json"), &json)?;
        crate::log::sync_dir(&self.dir).map_err(BrokerError::Log)?;
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.to_owned(), Arc::new(g));
        Ok(true)
    }
}

//! Consumer groups with members, as the broker keeps them: each group's settings and
//! [`Coordinator`], written durably (`<data_dir>/@members/<group>.json`) before any answer
//! whose call changed them, so that a server `kill -9` moves no partition and fences no
//! member, and read back when the broker opens.
//!
//! In a cluster the same state lives in the cluster's store instead ([`SharedGroups`]:
//! etcd), written with a fence on the revision its coordinator last wrote or read, so that
//! a group outlives the node that coordinated it: the next coordinator takes it from there
//! (members, assignments and epochs as they were), and a deposed coordinator's writes are
//! refused.
//!
//! Each group has its own lock, held across its file's write (calls on different groups
//! proceed at once), and a watch bumped whenever its state changes, which long-polling
//! heartbeats and fetches wait on. Fetch positions live in memory only: after a restart a
//! member resumes at the committed offset (at-least-once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::assignor::TopicPartition;
use super::coordinator::{
    Coordinator, CoordinatorError, Expiry, GroupTimeouts, Heartbeat, Snapshot,
};
use super::error::BrokerError;
use super::groups::read_group_files;
use super::topic::{remove_durably, write_durably};
use super::validate_name;

/// Name of the directory holding groups with members.
pub const MEMBERS_DIR: &str = "@members";

/// Removed members remembered (to answer `fenced_member` rather than `unknown_member`).
const FENCED_REMEMBERED: usize = 4096;

/// Where a member without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

impl From<OffsetReset> for super::StartAt {
    fn from(r: OffsetReset) -> Self {
        match r {
            OffsetReset::Earliest => super::StartAt::Earliest,
            OffsetReset::Latest => super::StartAt::Latest,
        }
    }
}

/// A group's settings (API.md: `PUT /v1/groups/{group}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub auto_offset_reset: OffsetReset,
}

impl Default for GroupSettings {
    fn default() -> Self {
        let t = GroupTimeouts::default();
        GroupSettings {
            session_timeout_ms: t.session_timeout_ms,
            rebalance_timeout_ms: t.rebalance_timeout_ms,
            auto_offset_reset: OffsetReset::Earliest,
        }
    }
}

impl GroupSettings {
    /// Shortest and longest timeouts accepted.
    pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 500..=3_600_000;

    fn timeouts(&self) -> GroupTimeouts {
        GroupTimeouts {
            session_timeout_ms: self.session_timeout_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
        }
    }

    /// How often a member should heartbeat: a third of the session timeout.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.session_timeout_ms / 3
    }

    pub fn validate(&self) -> Result<(), BrokerError> {
        for (key, v) in [
            ("session_timeout_ms", self.session_timeout_ms),
            ("rebalance_timeout_ms", self.rebalance_timeout_ms),
        ] {
            if !Self::TIMEOUT_RANGE.contains(&v) {
                return Err(BrokerError::InvalidConfig(format!(
                    "{key} must be from {} to {}, not {v}",
                    Self::TIMEOUT_RANGE.start(),
                    Self::TIMEOUT_RANGE.end()
                )));
            }
        }
        Ok(())
    }
}

/// Where a cluster keeps the state of its groups with members (etcd), instead of each
/// node's files.
pub trait SharedGroups: Send + Sync + std::fmt::Debug {
    /// Writes `value` (`None`: deletes it) as `group`'s state if the state is still at
    /// `revision` (0: absent). The new revision (0 after a deletion), or `None` when another
    /// node wrote it since (this node no longer coordinates the group). Blocks.
    fn write(
        &self,
        group: &str,
        value: Option<&[u8]>,
        revision: i64,
    ) -> Result<Option<i64>, BrokerError>;
}

/// Where a group's state is written.
#[derive(Debug, Clone)]
enum Store {
    File(PathBuf),
    Shared(Arc<dyn SharedGroups>),
}

/// A group's file (and, in a cluster, its value in the cluster's store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct GroupFile {
    settings: GroupSettings,
    state: Snapshot,
    /// The topics last subscribed to, kept when the last member leaves: lag is reported
    /// for them whether or not members are alive.
    #[serde(default)]
    topics: BTreeSet<String>,
}

impl GroupFile {
    /// The topics its members subscribe to.
    fn subscribed(&self) -> BTreeSet<String> {
        self.state
            .members
            .iter()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }
}

/// What the group's members did, since the server started: the counters of its metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounters {
    /// Rebalances (new target assignments), by reason: `join`, `leave`, `subscription`,
    /// `partitions`, `session_timeout`, `rebalance_timeout`.
    pub rebalances: BTreeMap<&'static str, u64>,
    /// Calls refused for fencing, by operation: `heartbeat`, `fetch`, `commit`.
    pub fenced: BTreeMap<&'static str, u64>,
    /// Rebalances that ended with every member holding its target, and how long the last
    /// one and all of them took.
    pub reconciled: u64,
    pub reconcile_ms_total: u64,
    pub last_reconcile_ms: u64,
}

/// What a member may fetch (see [`GroupState::fetch_plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    /// Each partition, the epoch it was given at, and the member's position in it.
    pub partitions: Vec<(TopicPartition, u64, Option<u64>)>,
    /// The member has partitions to revoke or to take: its next heartbeat should not wait.
    pub heartbeat_now: bool,
}

/// Where a member's next fetch of a partition starts: valid while the member still holds
/// the partition at the epoch it was given at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    member: String,
    given_at: u64,
    next: u64,
}

/// A group's state, under its lock.
#[derive(Debug)]
pub struct GroupState {
    pub settings: GroupSettings,
    pub coordinator: Coordinator,
    /// See [`GroupFile::topics`].
    pub topics: BTreeSet<String>,
    pub counters: GroupCounters,
    /// What the file holds now: a call that leaves the state as it was writes nothing.
    written: Option<GroupFile>,
    positions: HashMap<TopicPartition, Position>,
    /// Members removed by a timeout or a leave, until they join again.
    fenced: BTreeSet<String>,
    /// Since when the target assignment has not been reached (ms since the Unix epoch).
    rebalancing_since: Option<i64>,
    /// Removed from the groups (its file deleted): nothing may write it again.
    removed: bool,
    /// In a cluster: the store's revision of the state this node holds (0: not written
    /// yet; [`STALE`]: another node wrote it since, and this copy answers nothing).
    revision: i64,
}

/// See [`GroupState::revision`].
const STALE: i64 = -1;

impl GroupState {
    fn new(settings: GroupSettings) -> Self {
        GroupState {
            settings,
            coordinator: Coordinator::new(settings.timeouts()),
            topics: BTreeSet::new(),
            counters: GroupCounters::default(),
            written: None,
            positions: HashMap::new(),
            fenced: BTreeSet::new(),
            rebalancing_since: None,
            removed: false,
            revision: 0,
        }
    }

    /// The state a group's file holds, with every member's session starting at `now_ms`
    /// (the members could not reach this coordinator before); `partitions` gives the
    /// partitions of the topics its members subscribe to now.
    fn restore(
        file: GroupFile,
        partitions: impl Fn(&BTreeSet<String>) -> BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Self {
        let topics = file.subscribed();
        let mut st = GroupState::new(file.settings);
        st.coordinator = Coordinator::restore(
            file.settings.timeouts(),
            &file.state,
            partitions(&topics),
            now_ms,
        );
        st.topics = file.topics.clone();
        st.written = Some(file);
        if !st.coordinator.is_reconciled() {
            st.rebalancing_since = Some(now_ms);
        }
        st
    }

    fn file(&self) -> GroupFile {
        GroupFile {
            settings: self.settings,
            state: self.coordinator.snapshot(),
            topics: self.topics.clone(),
        }
    }

    /// A join or heartbeat (see [`Coordinator::heartbeat`]), with `partitions` those of the
    /// subscribed topics now.
    pub fn heartbeat(
        &mut self,
        member: &str,
        epoch: u64,
        topics: BTreeSet<String>,
        owned: &BTreeSet<TopicPartition>,
        partitions: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Heartbeat, CoordinatorError> {
        self.set_partitions(partitions);
        self.expire(now_ms);
        let before = self.coordinator.member(member).map(|(_, t, _)| t.clone());
        let answer = self
            .coordinator
            .heartbeat(member, epoch, topics.clone(), owned, now_ms);
        match &answer {
            Err(_) => self.count_fenced("heartbeat"),
            Ok(_) => {
                self.fenced.remove(member);
                match before {
                    None => self.count_rebalance("join"),
                    Some(t) if t != topics => self.count_rebalance("subscription"),
                    Some(_) => {}
                }
            }
        }
        answer
    }

    /// The member leaves: its partitions are free at once.
    pub fn leave(&mut self, member: &str) -> Result<(), CoordinatorError> {
        self.coordinator.leave(member)?;
        self.count_rebalance("leave");
        self.remember_fenced(member);
        Ok(())
    }

    /// Removes the members whose session or rebalance timeout passed.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(String, Expiry)> {
        let gone = self.coordinator.expire(now_ms);
        for (member, why) in &gone {
            self.count_rebalance(match why {
                Expiry::Session => "session_timeout",
                Expiry::Rebalance => "rebalance_timeout",
            });
            self.remember_fenced(member);
        }
        gone
    }

    /// The partitions of the subscribed topics changed (created, deleted, grown).
    pub fn set_partitions(&mut self, partitions: BTreeSet<TopicPartition>) {
        let epoch = self.coordinator.group_epoch();
        self.coordinator.set_partitions(partitions);
        if self.coordinator.group_epoch() != epoch {
            self.count_rebalance("partitions");
        }
    }

    /// In a cluster: `NotCoordinator` when this copy is no longer the group's current state
    /// (another node wrote it since, or the cluster's newer state replaced it here).
    pub fn check_current(&self, group: &str) -> Result<(), BrokerError> {
        if self.revision == STALE || (self.removed && self.revision != 0) {
            return Err(BrokerError::NotCoordinator(group.to_owned()));
        }
        Ok(())
    }

    /// Why `member` may not call: `fenced_member` if it was removed, else `unknown_member`.
    fn missing(&self, member: &str) -> CoordinatorError {
        if self.fenced.contains(member) {
            CoordinatorError::Fenced
        } else {
            CoordinatorError::UnknownMember
        }
    }

    /// What `member` may fetch now: each partition, the epoch it was given at, and the
    /// member's position in it (none: start at the committed offset). Keeps its session.
    pub fn fetch_plan(
        &mut self,
        member: &str,
        now_ms: i64,
        from_committed: bool,
    ) -> Result<FetchPlan, CoordinatorError> {
        if !self.coordinator.has_member(member) {
            self.count_fenced("fetch");
            return Err(self.missing(member));
        }
        if from_committed {
            self.positions.retain(|_, p| p.member != member);
        }
        self.coordinator.touch(member, now_ms);
        let partitions = self
            .coordinator
            .fetchable(member)
            .into_iter()
            .map(|(tp, given_at)| {
                let next = self
                    .positions
                    .get(&tp)
                    .filter(|p| p.member == member && p.given_at == given_at)
                    .map(|p| p.next);
                (tp, given_at, next)
            })
            .collect();
        Ok(FetchPlan {
            partitions,
            heartbeat_now: self.coordinator.has_news(member),
        })
    }

    /// Moves `member`'s position in `tp` to `next`, if it still holds it at `given_at`.
    pub fn advance(&mut self, member: &str, tp: &TopicPartition, given_at: u64, next: u64) {
        if self.coordinator.holder(tp) == Some((member, given_at)) {
            self.positions.insert(
                tp.clone(),
                Position {
                    member: member.to_owned(),
                    given_at,
                    next,
                },
            );
        }
    }

    /// Whether `member` at `epoch` may commit each of `tps` (fencing). Keeps its session.
    pub fn check_commit<'a>(
        &mut self,
        member: &str,
        epoch: u64,
        tps: impl IntoIterator<Item = &'a TopicPartition>,
        now_ms: i64,
    ) -> Result<(), CoordinatorError> {
        if !self.coordinator.has_member(member) {
            self.count_fenced("commit");
            return Err(self.missing(member));
        }
        for tp in tps {
            if let Err(e) = self.coordinator.check_commit(member, epoch, tp) {
                self.count_fenced("commit");
                return Err(e);
            }
        }
        self.coordinator.touch(member, now_ms);
        Ok(())
    }

    fn count_rebalance(&mut self, reason: &'static str) {
        *self.counters.rebalances.entry(reason).or_default() += 1;
    }

    fn count_fenced(&mut self, op: &'static str) {
        *self.counters.fenced.entry(op).or_default() += 1;
    }

    fn remember_fenced(&mut self, member: &str) {
        if self.fenced.len() >= FENCED_REMEMBERED {
            self.fenced.pop_first();
        }
        self.fenced.insert(member.to_owned());
        self.positions.retain(|_, p| p.member != member);
    }
}

/// One group with members.
#[derive(Debug)]
pub struct MemberGroup {
    name: String,
    store: Store,
    state: Mutex<GroupState>,
    /// Bumped whenever the group's persisted state changes.
    changes: watch::Sender<u64>,
    /// Where the next fetch starts its round of the member's partitions.
    cursor: AtomicUsize,
}

impl MemberGroup {
    fn new(name: &str, store: Store, state: GroupState) -> Self {
        MemberGroup {
            name: name.to_owned(),
            store,
            state: Mutex::new(state),
            changes: watch::Sender::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what a reader needs, without holding the lock.
    pub fn read<R>(&self, f: impl FnOnce(&GroupState) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` on the state under the group's lock; what it changed is written durably
    /// before this returns (on failure the state is put back as it was, and the error
    /// returned), and waiters are woken. Returns `f`'s result and a receiver of the next
    /// change (subscribed under the lock: no change after this call can be missed). Blocks.
    pub fn update<R>(
        &self,
        now_ms: i64,
        f: impl FnOnce(&mut GroupState) -> R,
    ) -> Result<(R, watch::Receiver<u64>), BrokerError> {
        let mut st = self.lock();
        if st.removed {
            return Err(BrokerError::GroupNotFound(self.name.clone()));
        }
        if st.revision == STALE {
            return Err(self.not_coordinator());
        }
        let epoch = st.coordinator.group_epoch();
        let before = (st.coordinator.clone(), st.settings, st.topics.clone());
        let r = f(&mut st);
        if st.coordinator.group_epoch() != epoch && st.rebalancing_since.is_none() {
            st.rebalancing_since = Some(now_ms);
        }
        if let Some(since) = st.rebalancing_since {
            if st.coordinator.is_reconciled() {
                let took = now_ms.saturating_sub(since) as u64;
                let c = &mut st.counters;
                c.reconciled += 1;
                c.reconcile_ms_total += took;
                c.last_reconcile_ms = took;
                st.rebalancing_since = None;
            }
        }
        let subscribed = st.coordinator.subscribed_topics();
        if !subscribed.is_empty() {
            st.topics = subscribed;
        }
        let file = st.file();
        if st.written.as_ref() != Some(&file) {
            let json = serde_json::to_vec_pretty(&file).expect("a group file serializes");
            if let Err(e) = self.save(&mut st, Some(&json)) {
                (st.coordinator, st.settings, st.topics) = before;
                return Err(e);
            }
            st.written = Some(file);
            self.changes.send_modify(|v| *v += 1);
        }
        Ok((r, self.changes.subscribe()))
    }

    /// Writes the group's state (`None`: removes it) where it is kept, under its lock.
    /// In a cluster, a write that another node's came before marks this copy stale (it
    /// answers nothing until the next read of the store replaces it). Blocks.
    fn save(&self, st: &mut GroupState, json: Option<&[u8]>) -> Result<(), BrokerError> {
        match &self.store {
            Store::File(path) => match json {
                Some(json) => write_durably(path, json),
                None => remove_durably(path),
            },
            // Never written: nothing to remove.
            Store::Shared(_) if json.is_none() && st.revision == 0 => Ok(()),
            Store::Shared(store) => match store.write(&self.name, json, st.revision)? {
                Some(revision) => {
                    st.revision = revision;
                    Ok(())
                }
                None => {
                    st.revision = STALE;
                    self.changes.send_modify(|v| *v += 1);
                    Err(self.not_coordinator())
                }
            },
        }
    }

    fn not_coordinator(&self) -> BrokerError {
        BrokerError::NotCoordinator(self.name.clone())
    }

    /// Runs `f` under the group's lock without writing anything (a commit holds it across
    /// its own write, so that no rebalance slips between its check and its write). Blocks.
    pub fn with<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.lock())
    }

    /// The index to start the next fetch's round of `n` partitions at.
    pub fn next_round(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % n
        }
    }
}

/// Every group with members.
#[derive(Debug)]
pub struct MemberGroups {
    dir: PathBuf,
    /// Held only to find, insert or remove a group, never while waiting for a group's lock
    /// (which a call holds across its write, to etcd in a cluster): a removal locks the
    /// group first, then this map; the cluster's reads only try the groups' locks.
    groups: RwLock<HashMap<String, Arc<MemberGroup>>>,
    /// In a cluster: the store every group's state is written to.
    shared: std::sync::OnceLock<Arc<dyn SharedGroups>>,
    /// In a cluster: the groups the store held at its last read (a node lists them all,
    /// not only those it coordinates).
    known: RwLock<BTreeSet<String>>,
}

impl MemberGroups {
    /// No groups, and no directory: a placeholder until [`MemberGroups::open`].
    pub fn empty() -> Self {
        MemberGroups {
            dir: PathBuf::new(),
            groups: RwLock::new(HashMap::new()),
            shared: std::sync::OnceLock::new(),
            known: RwLock::new(BTreeSet::new()),
        }
    }

    /// Loads every group file in `dir` (created if missing); `partitions` gives the
    /// partitions of the topics they subscribe to now. Every member's session starts at
    /// `now_ms`: the members could not reach the server while it was down.
    pub fn open(
        dir: &Path,
        partitions: impl Fn(&BTreeSet<String>) -> BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Self, BrokerError> {
        let mut groups = HashMap::new();
        for (name, file) in read_group_files::<GroupFile>(dir, "group members")? {
            let st = GroupState::restore(file, &partitions, now_ms);
            let store = Store::File(dir.join(format!("{name}.json")));
            groups.insert(name.clone(), Arc::new(MemberGroup::new(&name, store, st)));
        }
        Ok(MemberGroups {
            dir: dir.to_owned(),
            groups: RwLock::new(groups),
            shared: std::sync::OnceLock::new(),
            known: RwLock::new(BTreeSet::new()),
        })
    }

    /// Makes the cluster's store the place groups are kept (once, when the node joins a
    /// cluster): this node's own files are left as they are, and its groups are those the
    /// store holds from now on.
    pub fn share(&self, store: Arc<dyn SharedGroups>) {
        if self.shared.set(store).is_ok() {
            self.groups
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// Takes the groups' states from the cluster's store, as read at `revision`: the
    /// groups `mine` says this node coordinates are taken up (or replaced, when the store
    /// holds a newer state than this node's copy), the others dropped, as are the groups
    /// the store no longer holds. Memory only.
    ///
    /// Never waits for a group's lock (a call holds it across its etcd write): a busy
    /// group is looked at again at the next read. So this runs on an async worker.
    pub fn follow_shared(
        &self,
        revision: i64,
        all: &BTreeMap<String, (Vec<u8>, i64)>,
        mine: impl Fn(&str) -> bool,
        partitions: impl Fn(&BTreeSet<String>) -> BTreeSet<TopicPartition>,
        have_topics: impl Fn(&BTreeSet<String>) -> bool,
        now_ms: i64,
    ) {
        let Some(store) = self.shared.get() else {
            return;
        };
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = all.keys().cloned().collect();
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        // Dropped: the groups another node coordinates, and those the store no longer
        // holds that this node wrote before the read. Marked removed, so that a call
        // holding one looks the group up again.
        groups.retain(|name, g| {
            let Ok(mut st) = g.state.try_lock() else {
                return true;
            };
            let gone_from_store =
                !all.contains_key(name) && st.revision != 0 && st.revision <= revision;
            if mine(name) && !gone_from_store {
                return true;
            }
            st.removed = true;
            drop(st);
            g.changes.send_modify(|v| *v += 1);
            false
        });
        for (name, (json, at)) in all {
            if !mine(name) {
                continue;
            }
            if let Some(g) = groups.get(name) {
                let Ok(mut st) = g.state.try_lock() else {
                    continue;
                };
                if st.revision != STALE && st.revision >= *at {
                    continue;
                }
                st.removed = true;
                drop(st);
                g.changes.send_modify(|v| *v += 1);
            }
            let file = match serde_json::from_slice::<GroupFile>(json) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(group = %name, error = %e, "a group's state in the cluster's store does not decode; not taken up");
                    groups.remove(name);
                    continue;
                }
            };
            // Taken up once this node has the topics its members subscribe to (a node that
            // has just joined creates them first): restored without them, the group would
            // drop every assignment, and hand partitions out again without revoking them.
            if !have_topics(&file.subscribed()) {
                groups.remove(name);
                continue;
            }
            let mut st = GroupState::restore(file, &partitions, now_ms);
            st.revision = *at;
            let g = MemberGroup::new(name, Store::Shared(Arc::clone(store)), st);
            groups.insert(name.clone(), Arc::new(g));
        }
    }

    /// Names of the groups with members (or that had some), sorted; in a cluster, those
    /// of the whole cluster.
    pub fn names(&self) -> Vec<String> {
        let mut names = super::groups::sorted_names(&self.groups);
        if self.shared.get().is_some() {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            names.extend(known.iter().cloned());
            names.sort();
            names.dedup();
        }
        names
    }

    pub fn get(&self, group: &str) -> Option<Arc<MemberGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// The group, created with `settings` (in memory: its first [`MemberGroup::update`]
    /// writes it) when missing.
    pub fn get_or_create(
        &self,
        group: &str,
        settings: GroupSettings,
    ) -> Result<Arc<MemberGroup>, BrokerError> {
        validate_name(group)?;
        if let Some(g) = self.get(group) {
            return Ok(g);
        }
        let store = match self.shared.get() {
            Some(s) => Store::Shared(Arc::clone(s)),
            None => Store::File(self.dir.join(format!("{group}.json"))),
        };
        Ok(Arc::clone(
            self.groups
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(group.to_owned())
                .or_insert_with(|| {
                    Arc::new(MemberGroup::new(group, store, GroupState::new(settings)))
                }),
        ))
    }

    /// [`MemberGroup::update`] on `group`, created with the default settings when missing
    /// (and forgotten again if its first write fails). Blocks.
    pub fn update_or_create<R>(
        &self,
        group: &str,
        now_ms: i64,
        mut f: impl FnMut(&mut GroupState) -> R,
    ) -> Result<(R, watch::Receiver<u64>), BrokerError> {
        self.update_or_create_with(group, GroupSettings::default(), now_ms, &mut f)
            .map(|(r, rx, _)| (r, rx))
    }

    fn update_or_create_with<R>(
        &self,
        group: &str,
        settings: GroupSettings,
        now_ms: i64,
        f: &mut impl FnMut(&mut GroupState) -> R,
    ) -> Result<(R, watch::Receiver<u64>, bool), BrokerError> {
        // A group removed between the lookup and its lock is looked up (created) again.
        for _ in 0..3 {
            let existed = self.get(group).is_some();
            let g = self.get_or_create(group, settings)?;
            match g.update(now_ms, &mut *f) {
                Ok((r, rx)) => return Ok((r, rx, !existed)),
                Err(BrokerError::GroupNotFound(_)) => continue,
                Err(e) => {
                    // A group whose first write failed does not exist.
                    self.remove_if(group, &g, |st| st.written.is_none())?;
                    return Err(e);
                }
            }
        }
        Err(BrokerError::GroupNotFound(group.to_owned()))
    }

    /// Creates a group, or changes its settings; returns whether it was created. Durable
    /// before it returns. Blocks.
    pub fn put_settings(
        &self,
        group: &str,
        settings: GroupSettings,
        now_ms: i64,
    ) -> Result<bool, BrokerError> {
        settings.validate()?;
        let mut set = |st: &mut GroupState| {
            st.settings = settings;
            st.coordinator.set_timeouts(settings.timeouts());
        };
        let (_, _, created) = self.update_or_create_with(group, settings, now_ms, &mut set)?;
        Ok(created)
    }

    /// Removes `group` (its file, durably) if it is still `g` and `gone` holds of it, under
    /// its lock. Blocks.
    pub fn remove_if(
        &self,
        group: &str,
        g: &Arc<MemberGroup>,
        gone: impl FnOnce(&GroupState) -> bool,
    ) -> Result<(), BrokerError> {
        let mut st = g.lock();
        if st.removed || !gone(&st) {
            return Ok(());
        }
        {
            let mut all = self.groups.write().unwrap_or_else(|p| p.into_inner());
            if !all.get(group).is_some_and(|cur| Arc::ptr_eq(cur, g)) {
                return Ok(());
            }
            all.remove(group);
        }
        // Out of the map, and its state removed without the map's lock, which readers
        // on async workers take; then marked removed (nothing writes it again).
        let removed = g.save(&mut st, None);
        st.removed = true;
        removed
    }

    /// Every group, for a walk over all of them.
    pub fn all(&self) -> Vec<(String, Arc<MemberGroup>)> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, g)| (n.clone(), Arc::clone(g)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> BTreeSet<String> {
        ["orders".to_owned()].into()
    }

    fn parts(_: &BTreeSet<String>) -> BTreeSet<TopicPartition> {
        (0..6).map(|p| ("orders".to_owned(), p)).collect()
    }

    fn beat(
        g: &MemberGroup,
        member: &str,
        epoch: u64,
        owned: &BTreeSet<TopicPartition>,
        now: i64,
    ) -> Result<Heartbeat, CoordinatorError> {
        g.update(now, |st| {
            st.heartbeat(member, epoch, topics(), owned, parts(&topics()), now)
        })
        .unwrap()
        .0
    }

    fn keys(hb: &Heartbeat) -> BTreeSet<TopicPartition> {
        hb.assignment.keys().cloned().collect()
    }

    /// Two members share a topic; the broker "crashes" (the groups are opened again from
    /// their files) in the middle of a rebalance: every member's next heartbeat gets what
    /// it would have got, nothing moved, nobody fenced.
    #[test]
    fn a_restart_moves_no_partition_and_fences_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let g = groups.get_or_create("g", GroupSettings::default()).unwrap();
        let none = BTreeSet::new();
        let a = beat(&g, "a", 0, &none, 0).unwrap();
        assert_eq!(a.assignment.len(), 6);
        let b = beat(&g, "b", 0, &none, 1).unwrap();
        assert!(b.assignment.is_empty(), "a still holds everything");
        let a2 = beat(&g, "a", a.member_epoch, &keys(&a), 2).unwrap();
        assert_eq!(a2.revoke.len(), 3);
        drop((g, groups));

        // Opened again: the same holders, the same revocations pending.
        let groups = MemberGroups::open(dir.path(), parts, 10_000).unwrap();
        assert_eq!(groups.names(), ["g"]);
        let g = groups.get("g").unwrap();
        assert_eq!(g.read(|st| st.coordinator.held_by("a").len()), 6);
        let a3 = beat(&g, "a", a2.member_epoch, &keys(&a), 10_001).expect("not fenced");
        assert_eq!(a3.revoke, a2.revoke, "the same partitions are being moved");
        // a lets go; b gets them.
        beat(&g, "a", a3.member_epoch, &keys(&a3), 10_002).unwrap();
        let b2 = beat(&g, "b", b.member_epoch, &none, 10_003).expect("not fenced");
        assert_eq!(b2.assignment.len(), 3);
        let moved = a2.revoke.iter().next().unwrap();
        assert_eq!(
            g.with(|st| st.check_commit("a", a3.member_epoch, [moved], 10_004)),
            Err(CoordinatorError::NotOwned)
        );
        let counted = g.read(|st| st.counters.clone());
        assert_eq!(counted.fenced.get("commit"), Some(&1));
        assert_eq!(counted.reconciled, 1, "{counted:?}");
    }

    #[test]
    fn settings_are_durable_and_a_leave_frees_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let s = GroupSettings {
            session_timeout_ms: 5_000,
            rebalance_timeout_ms: 9_000,
            auto_offset_reset: OffsetReset::Latest,
        };
        assert!(groups.put_settings("g", s, 0).unwrap());
        assert!(!groups.put_settings("g", s, 0).unwrap());
        let bad = GroupSettings {
            session_timeout_ms: 1,
            ..s
        };
        assert!(matches!(
            groups.put_settings("g", bad, 0),
            Err(BrokerError::InvalidConfig(_))
        ));
        let g = groups.get("g").unwrap();
        beat(&g, "a", 0, &BTreeSet::new(), 0).unwrap();
        let leave = |m: &str| g.update(0, |st| st.leave(m)).unwrap().0;
        assert_eq!(leave("a"), Ok(()));
        assert_eq!(leave("a"), Err(CoordinatorError::UnknownMember));
        // A member that left (or was removed) and fetches is told it was fenced; one never
        // seen is unknown.
        assert_eq!(
            g.with(|st| st.fetch_plan("a", 1, false)),
            Err(CoordinatorError::Fenced)
        );
        assert_eq!(
            g.with(|st| st.fetch_plan("zed", 1, false)),
            Err(CoordinatorError::UnknownMember)
        );
        drop((g, groups));
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let g = groups.get("g").unwrap();
        assert_eq!(g.read(|st| st.settings), s);
        assert!(g.read(|st| st.coordinator.held_by("a").is_empty()));
        assert_eq!(g.read(|st| st.topics.clone()), topics(), "kept for lag");
        // A member silent beyond the session timeout is removed, durably.
        beat(&g, "b", 0, &BTreeSet::new(), 0).unwrap();
        let gone = g.update(6_000, |st| st.expire(6_000)).unwrap().0;
        assert_eq!(gone, vec![("b".to_owned(), Expiry::Session)]);
        drop((g, groups));
        let groups = MemberGroups::open(dir.path(), parts, 7_000).unwrap();
        let g = groups.get("g").unwrap();
        assert!(!g.read(|st| st.coordinator.has_member("b")));
    }

    /// A fetch position belongs to the member and the epoch it was given the partition at:
    /// once the partition moved, the next holder starts at the committed offset.
    #[test]
    fn positions_do_not_follow_a_partition_to_its_next_holder() {
        let dir = tempfile::tempdir().unwrap();
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let g = groups.get_or_create("g", GroupSettings::default()).unwrap();
        let a = beat(&g, "a", 0, &BTreeSet::new(), 0).unwrap();
        let plan = g
            .with(|st| st.fetch_plan("a", 1, false))
            .unwrap()
            .partitions;
        assert_eq!(plan.len(), 6);
        assert!(plan.iter().all(|(_, _, pos)| pos.is_none()));
        let (tp, given, _) = plan[0].clone();
        g.with(|st| st.advance("a", &tp, given, 42));
        let plan = g
            .with(|st| st.fetch_plan("a", 2, false))
            .unwrap()
            .partitions;
        assert_eq!(plan[0].2, Some(42));
        g.update(3, |st| st.leave("a")).unwrap().0.unwrap();
        let b = beat(&g, "b", 0, &BTreeSet::new(), 4).unwrap();
        assert_eq!(keys(&b), keys(&a));
        let plan = g
            .with(|st| st.fetch_plan("b", 5, false))
            .unwrap()
            .partitions;
        assert!(plan.iter().all(|(_, _, pos)| pos.is_none()), "{plan:?}");
    }
}

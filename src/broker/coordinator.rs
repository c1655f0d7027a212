//! The coordinator of one consumer group with members (API.md, "Consumer groups with
//! members"): membership, member epochs, the two-step movement of partitions, session and
//! rebalance timeouts, and the fencing of fetches and commits. A pure state machine: the
//! caller gives it the time and the partitions of the subscribed topics, and persists it
//! (the HTTP and Kafka front ends are built on it).
//!
//! The rules:
//! - A member joins with epoch 0 and heartbeats with the epoch it was last given, the topics
//!   it subscribes to, and the partitions it owns (holds). A heartbeat is idempotent: a
//!   retried join is a heartbeat.
//! - The target assignment comes from [`assign`] (sticky, balanced, deterministic) and is
//!   computed again when members, subscriptions or partitions change.
//! - A partition moves in two steps. Its old owner is told to revoke it; it may still
//!   commit, but not fetch; it lets go by leaving it out of `owned`. Only then is the
//!   partition given to its new owner. An owner that has not let go within the rebalance
//!   timeout is fenced (removed; it must join again with epoch 0), and the partition moves.
//! - So no two members may fetch a partition at once: a member fetches a partition only
//!   while it holds it and its target includes it.
//! - A member not heard from for the session timeout is removed; its partitions move.
//! - A commit is accepted from a member that holds the partition, with an epoch at least
//!   the one the partition was given to it at, and at most its current epoch.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::assignor::{assign, MemberState, TopicPartition};

/// A group's timing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTimeouts {
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
}

impl Default for GroupTimeouts {
    fn default() -> Self {
        GroupTimeouts {
            session_timeout_ms: 30_000,
            rebalance_timeout_ms: 60_000,
        }
    }
}

/// Why the coordinator refused a member's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The member was removed (session timeout, rebalance timeout, leave) or its epoch is
    /// ahead of the group's: it must join again with epoch 0.
    #[error("the member was fenced; join again with member_epoch 0")]
    Fenced,
    #[error("no such member in the group")]
    UnknownMember,
    /// A commit with an epoch older than the one the partition was given at.
    #[error("the member epoch is stale")]
    StaleEpoch,
    #[error("the member does not own this partition")]
    NotOwned,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub member_epoch: u64,
    /// The partitions the member may fetch (and commit), with the epoch each was given at.
    pub assignment: BTreeMap<TopicPartition, u64>,
    /// Partitions the member holds but must let go of: it stops fetching them, may still
    /// commit them, and leaves them out of `owned` in its next heartbeat.
    pub revoke: BTreeSet<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    topics: BTreeSet<String>,
    epoch: u64,
    last_seen_ms: i64,
}

/// What must survive a restart of the server, so that a `kill -9` moves no partition and
/// fences no member: the members (topics, epochs) and who holds what, at which epoch, and
/// what is being revoked. Everything else is derived: the target assignment (the assignor
/// is deterministic and sticky), the partitions (from the topics), the members' last
/// contact (a restart gives every member a new session). Lists, not maps keyed by
/// partition, so that it serializes to JSON as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub group_epoch: u64,
    /// The last member epoch handed out: each new one is larger, so an epoch never names
    /// two incarnations of a member.
    #[serde(default)]
    pub last_member_epoch: u64,
    pub members: Vec<SnapshotMember>,
    /// `(topic, partition, member, epoch given at)`.
    pub held: Vec<(String, u32, String, u64)>,
    /// `(topic, partition, revoking since, ms since the Unix epoch)`.
    pub revoking: Vec<(String, u32, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMember {
    pub member: String,
    pub topics: Vec<String>,
    pub epoch: u64,
}

/// One group's membership and ownership.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coordinator {
    timeouts: GroupTimeouts,
    /// Bumped whenever the target assignment is computed again.
    group_epoch: u64,
    /// See [`Snapshot::last_member_epoch`].
    last_member_epoch: u64,
    members: BTreeMap<String, Member>,
    partitions: BTreeSet<TopicPartition>,
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Who holds each partition, and the member epoch it was given at.
    held: BTreeMap<TopicPartition, (String, u64)>,
    /// Since when a holder has been asked to let go of a partition.
    revoking_since: BTreeMap<TopicPartition, i64>,
    /// The last member each partition was given to (not persisted: for counting moves).
    last_holder: BTreeMap<TopicPartition, String>,
    /// Partitions given to a member other than their previous holder, since this
    /// coordinator was created.
    moves: u64,
}

/// Why a member was removed by [`Coordinator::expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Not heard from for the session timeout.
    Session,
    /// Did not let go of a revoked partition within the rebalance timeout.
    Rebalance,
}

impl Coordinator {
    pub fn new(timeouts: GroupTimeouts) -> Self {
        Coordinator {
            timeouts,
            ..Coordinator::default()
        }
    }

    pub fn group_epoch(&self) -> u64 {
        self.group_epoch
    }

    /// New session and rebalance timeouts (the group's settings changed).
    pub fn set_timeouts(&mut self, timeouts: GroupTimeouts) {
        self.timeouts = timeouts;
    }

    /// The state to persist before answering a call that changed it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            group_epoch: self.group_epoch,
            last_member_epoch: self.last_member_epoch,
            members: self
                .members
                .iter()
                .map(|(id, m)| SnapshotMember {
                    member: id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    epoch: m.epoch,
                })
                .collect(),
            held: self
                .held
                .iter()
                .map(|((t, p), (m, e))| (t.clone(), *p, m.clone(), *e))
                .collect(),
            revoking: self
                .revoking_since
                .iter()
                .map(|((t, p), since)| (t.clone(), *p, *since))
                .collect(),
        }
    }

    /// The coordinator a snapshot was taken of, with `partitions` (those of the subscribed
    /// topics now) and every member's session starting at `now_ms`.
    pub fn restore(
        timeouts: GroupTimeouts,
        s: &Snapshot,
        partitions: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Self {
        let mut c = Coordinator::new(timeouts);
        c.members = s
            .members
            .iter()
            .map(|m| {
                (
                    m.member.clone(),
                    Member {
                        topics: m.topics.iter().cloned().collect(),
                        epoch: m.epoch,
                        last_seen_ms: now_ms,
                    },
                )
            })
            .collect();
        c.held = s
            .held
            .iter()
            .filter(|(_, _, m, _)| c.members.contains_key(m))
            .map(|(t, p, m, e)| ((t.clone(), *p), (m.clone(), *e)))
            .collect();
        c.revoking_since = s
            .revoking
            .iter()
            .filter(|(t, p, _)| c.held.contains_key(&(t.clone(), *p)))
            // The rebalance timeout starts again too: the holder could not answer meanwhile.
            .map(|(t, p, _)| ((t.clone(), *p), now_ms))
            .collect();
        c.partitions = partitions;
        c.held.retain(|tp, _| c.partitions.contains(tp));
        c.last_holder = c
            .held
            .iter()
            .map(|(tp, (m, _))| (tp.clone(), m.clone()))
            .collect();
        c.reassign();
        c.group_epoch = c.group_epoch.max(s.group_epoch);
        c.last_member_epoch = s
            .members
            .iter()
            .map(|m| m.epoch)
            .chain(s.held.iter().map(|h| h.3))
            .fold(s.last_member_epoch, u64::max);
        c
    }

    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn has_member(&self, member: &str) -> bool {
        self.members.contains_key(member)
    }

    /// A member's epoch, topics and last contact (ms since the Unix epoch).
    pub fn member(&self, member: &str) -> Option<(u64, &BTreeSet<String>, i64)> {
        self.members
            .get(member)
            .map(|m| (m.epoch, &m.topics, m.last_seen_ms))
    }

    /// The topics some member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Who holds `tp`, and the member epoch it was given at.
    pub fn holder(&self, tp: &TopicPartition) -> Option<(&str, u64)> {
        self.held.get(tp).map(|(m, e)| (m.as_str(), *e))
    }

    /// The partitions `member` may fetch now (see [`Coordinator::can_fetch`]), with the
    /// epoch each was given at.
    pub fn fetchable(&self, member: &str) -> Vec<(TopicPartition, u64)> {
        let Some(target) = self.target.get(member) else {
            return Vec::new();
        };
        self.held
            .iter()
            .filter(|(tp, (h, _))| h == member && target.contains(*tp))
            .map(|(tp, (_, e))| (tp.clone(), *e))
            .collect()
    }

    /// The partitions `member` holds but is asked to let go of.
    pub fn revoking(&self, member: &str) -> Vec<TopicPartition> {
        let target = self.target.get(member);
        self.held
            .iter()
            .filter(|(tp, (h, _))| h == member && !target.is_some_and(|t| t.contains(*tp)))
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Whether `member`'s next heartbeat would bring it something: partitions to revoke,
    /// or partitions of its target that nobody holds (not those still being revoked from
    /// another member: that heartbeat would wait).
    pub fn has_news(&self, member: &str) -> bool {
        !self.revoking(member).is_empty()
            || self
                .target
                .get(member)
                .is_some_and(|t| t.iter().any(|tp| !self.held.contains_key(tp)))
    }

    /// Whether every member holds exactly its target (no partition is moving or free).
    pub fn is_reconciled(&self) -> bool {
        let targeted: usize = self.target.values().map(BTreeSet::len).sum();
        targeted == self.held.len()
            && self.target.iter().all(|(m, t)| {
                t.iter()
                    .all(|tp| self.held.get(tp).is_some_and(|(h, _)| h == m))
            })
    }

    /// Partitions given to a member other than their previous holder so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// The partitions `member` holds now.
    pub fn held_by(&self, member: &str) -> BTreeSet<TopicPartition> {
        self.held
            .iter()
            .filter(|(_, (m, _))| m == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// The partitions of the subscribed topics changed (a topic created, deleted, grown).
    pub fn set_partitions(&mut self, partitions: BTreeSet<TopicPartition>) {
        if partitions != self.partitions {
            self.partitions = partitions;
            self.held.retain(|tp, _| self.partitions.contains(tp));
            self.revoking_since
                .retain(|tp, _| self.partitions.contains(tp));
            self.reassign();
        }
    }

    /// A join (`epoch` 0) or a heartbeat. `owned` is what the member holds by its own
    /// account: partitions held for it that it leaves out are let go of.
    pub fn heartbeat(
        &mut self,
        member: &str,
        epoch: u64,
        topics: BTreeSet<String>,
        owned: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Heartbeat, CoordinatorError> {
        self.expire(now_ms);
        match self.members.get(member) {
            None if epoch != 0 => return Err(CoordinatorError::Fenced),
            Some(m) if epoch > m.epoch => return Err(CoordinatorError::Fenced),
            Some(_) if epoch == 0 => {
                // Joins again, from scratch (restarted): what it held is let go of.
                self.release(member);
            }
            _ => {}
        }
        let known = self.members.contains_key(member);
        let m = self.members.entry(member.to_owned()).or_insert(Member {
            topics: BTreeSet::new(),
            epoch: 0,
            last_seen_ms: now_ms,
        });
        m.last_seen_ms = now_ms;
        let resubscribed = m.topics != topics;
        m.topics = topics;
        // Partitions held for it that it no longer owns: let go.
        let let_go: Vec<TopicPartition> = self
            .held
            .iter()
            .filter(|(tp, (h, _))| h == member && !owned.contains(*tp))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in let_go {
            self.held.remove(&tp);
            self.revoking_since.remove(&tp);
        }
        if !known || resubscribed {
            self.reassign();
        }
        Ok(self.reconcile(member, now_ms))
    }

    /// The member leaves: its partitions are free at once.
    pub fn leave(&mut self, member: &str) -> Result<(), CoordinatorError> {
        if self.members.remove(member).is_none() {
            return Err(CoordinatorError::UnknownMember);
        }
        self.release(member);
        self.reassign();
        Ok(())
    }

    /// Removes members not heard from for the session timeout, and fences holders that did
    /// not let go of a revoked partition within the rebalance timeout. Returns the removed,
    /// and why.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(String, Expiry)> {
        let session = self.timeouts.session_timeout_ms as i64;
        let rebalance = self.timeouts.rebalance_timeout_ms as i64;
        let mut gone: BTreeMap<String, Expiry> = self
            .members
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > session)
            .map(|(id, _)| (id.clone(), Expiry::Session))
            .collect();
        for (tp, since) in &self.revoking_since {
            if now_ms.saturating_sub(*since) > rebalance {
                if let Some((holder, _)) = self.held.get(tp) {
                    gone.entry(holder.clone()).or_insert(Expiry::Rebalance);
                }
            }
        }
        for id in gone.keys() {
            self.members.remove(id);
            self.release(id);
        }
        if !gone.is_empty() {
            self.reassign();
        }
        gone.into_iter().collect()
    }

    /// Whether `member` at `epoch` may fetch `tp` now: it holds it and keeps it.
    #[cfg(test)]
    fn can_fetch(&self, member: &str, epoch: u64, tp: &TopicPartition) -> bool {
        self.members.get(member).is_some_and(|m| m.epoch == epoch)
            && self.held.get(tp).is_some_and(|(h, _)| h == member)
            && self.target.get(member).is_some_and(|t| t.contains(tp))
    }

    /// Whether a commit of `tp` by `member` at `epoch` is accepted.
    pub fn check_commit(
        &self,
        member: &str,
        epoch: u64,
        tp: &TopicPartition,
    ) -> Result<(), CoordinatorError> {
        let m = self
            .members
            .get(member)
            .ok_or(CoordinatorError::UnknownMember)?;
        if epoch > m.epoch {
            return Err(CoordinatorError::Fenced);
        }
        match self.held.get(tp) {
            Some((h, given)) if h == member => {
                if epoch < *given {
                    Err(CoordinatorError::StaleEpoch)
                } else {
                    Ok(())
                }
            }
            _ => Err(CoordinatorError::NotOwned),
        }
    }

    /// Notes that `member` was heard from (a fetch or a commit keeps its session).
    pub fn touch(&mut self, member: &str, now_ms: i64) {
        if let Some(m) = self.members.get_mut(member) {
            m.last_seen_ms = now_ms;
        }
    }

    fn release(&mut self, member: &str) {
        let freed: Vec<TopicPartition> = self
            .held
            .iter()
            .filter(|(_, (h, _))| h == member)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in freed {
            self.held.remove(&tp);
            self.revoking_since.remove(&tp);
        }
    }

    /// Computes the target assignment again from the members and what they hold.
    fn reassign(&mut self) {
        let states: Vec<MemberState> = self
            .members
            .iter()
            .map(|(id, m)| MemberState {
                member: id.clone(),
                topics: m.topics.clone(),
                owned: self.held_by(id),
            })
            .collect();
        let subscribed: BTreeSet<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(t)))
            .cloned()
            .collect();
        self.target = assign(&states, &subscribed);
        self.group_epoch += 1;
    }

    /// The member's answer: gives it the partitions of its target nobody else holds, and
    /// asks it to revoke those it holds outside its target. Its epoch moves when what it
    /// is given changes.
    fn reconcile(&mut self, member: &str, now_ms: i64) -> Heartbeat {
        let target = self.target.get(member).cloned().unwrap_or_default();
        let epoch = self.members.get(member).map_or(0, |m| m.epoch);
        let free: Vec<TopicPartition> = target
            .iter()
            .filter(|tp| !self.held.contains_key(*tp))
            .cloned()
            .collect();
        let next_epoch = if free.is_empty() && epoch > 0 {
            epoch
        } else {
            // Never one handed out before (to this member or an earlier incarnation of it).
            self.last_member_epoch = self.last_member_epoch.max(self.group_epoch).max(epoch) + 1;
            self.last_member_epoch
        };
        for tp in free {
            let previous = self.last_holder.insert(tp.clone(), member.to_owned());
            if previous.is_some_and(|p| p != member) {
                self.moves += 1;
            }
            self.held.insert(tp, (member.to_owned(), next_epoch));
        }
        if let Some(m) = self.members.get_mut(member) {
            m.epoch = next_epoch;
        }
        let mut assignment = BTreeMap::new();
        let mut revoke = BTreeSet::new();
        for (tp, (h, given)) in &self.held {
            if h != member {
                continue;
            }
            if target.contains(tp) {
                assignment.insert(tp.clone(), *given);
            } else {
                revoke.insert(tp.clone());
            }
        }
        for tp in &revoke {
            self.revoking_since.entry(tp.clone()).or_insert(now_ms);
        }
        Heartbeat {
            member_epoch: next_epoch,
            assignment,
            revoke,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics() -> BTreeSet<String> {
        ["orders".to_owned()].into()
    }

    fn parts(n: u32) -> BTreeSet<TopicPartition> {
        (0..n).map(|p| ("orders".to_owned(), p)).collect()
    }

    /// A member as a well-behaved client: it owns what it was assigned, and lets go of
    /// what it is asked to revoke in its next heartbeat.
    #[derive(Debug, Default, Clone)]
    struct Client {
        epoch: u64,
        owned: BTreeSet<TopicPartition>,
    }

    impl Client {
        fn beat(
            &mut self,
            c: &mut Coordinator,
            id: &str,
            now: i64,
        ) -> Result<(), CoordinatorError> {
            let hb = c.heartbeat(id, self.epoch, topics(), &self.owned, now)?;
            self.epoch = hb.member_epoch;
            // Owns what it is given; keeps what it must revoke until the next heartbeat.
            self.owned = hb.assignment.keys().cloned().collect();
            Ok(())
        }
    }

    #[test]
    fn a_partition_moves_in_two_steps_and_never_to_two_fetchers() {
        let mut c = Coordinator::new(GroupTimeouts::default());
        c.set_partitions(parts(4));
        let mut a = Client::default();
        a.beat(&mut c, "a", 0).unwrap();
        assert_eq!(a.owned.len(), 4);
        let mut b = Client::default();
        b.beat(&mut c, "b", 1).unwrap();
        assert!(
            b.owned.is_empty(),
            "nothing is free yet: a still holds all four"
        );
        // a learns to revoke two: it may still commit them but not fetch them.
        let hb = c.heartbeat("a", a.epoch, topics(), &a.owned, 2).unwrap();
        assert_eq!(hb.revoke.len(), 2);
        let moving = hb.revoke.iter().next().unwrap().clone();
        assert!(!c.can_fetch("a", hb.member_epoch, &moving));
        assert!(c.check_commit("a", hb.member_epoch, &moving).is_ok());
        a.epoch = hb.member_epoch;
        a.owned = hb.assignment.keys().cloned().collect();
        // a lets go (its next heartbeat leaves them out); then b gets them.
        a.beat(&mut c, "a", 3).unwrap();
        b.beat(&mut c, "b", 4).unwrap();
        assert_eq!((a.owned.len(), b.owned.len()), (2, 2));
        assert!(c.can_fetch("b", b.epoch, &moving));
        assert_eq!(
            c.check_commit("a", a.epoch, &moving),
            Err(CoordinatorError::NotOwned)
        );
    }

    #[test]
    fn a_silent_member_is_removed_and_a_stuck_one_fenced() {
        let t = GroupTimeouts {
            session_timeout_ms: 100,
            rebalance_timeout_ms: 50,
        };
        let mut c = Coordinator::new(t);
        c.set_partitions(parts(2));
        let (mut a, mut b) = (Client::default(), Client::default());
        a.beat(&mut c, "a", 0).unwrap();
        b.beat(&mut c, "b", 0).unwrap();
        // a never lets go of the partition b should get (it keeps reporting both): fenced
        // after the rebalance timeout.
        let held = c.held_by("a");
        assert_eq!(held.len(), 2);
        let hb = c.heartbeat("a", a.epoch, topics(), &held, 10).unwrap();
        assert_eq!(hb.revoke.len(), 1);
        let hb = c
            .heartbeat("a", hb.member_epoch, topics(), &held, 20)
            .unwrap();
        assert_eq!(hb.revoke.len(), 1, "still asked to let go");
        a.epoch = hb.member_epoch;
        b.beat(&mut c, "b", 75).unwrap();
        assert_eq!(
            c.heartbeat("a", a.epoch, topics(), &held, 80),
            Err(CoordinatorError::Fenced)
        );
        b.beat(&mut c, "b", 81).unwrap();
        assert_eq!(b.owned.len(), 2);
        // b falls silent: removed after the session timeout, its partitions free.
        assert_eq!(c.expire(300), vec![("b".to_owned(), Expiry::Session)]);
        let mut a2 = Client::default();
        a2.beat(&mut c, "a", 301).unwrap();
        assert_eq!(a2.owned.len(), 2);
    }

    /// A restart between any two calls changes nothing a member sees: the restored
    /// coordinator answers as the one it was taken from (a `kill -9` moves no partition and
    /// fences nobody), and its snapshot survives JSON.
    #[test]
    fn a_restored_coordinator_answers_as_before() {
        let mut c = Coordinator::new(GroupTimeouts::default());
        c.set_partitions(parts(6));
        let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let mut cl = Client::default();
            cl.beat(&mut c, id, i as i64).unwrap();
            clients.insert(id, cl);
        }
        // Mid-rebalance: a and b have been asked to revoke some partitions for c.
        let json = serde_json::to_string(&c.snapshot()).unwrap();
        let snap: Snapshot = serde_json::from_str(&json).unwrap();
        let mut restored = Coordinator::restore(GroupTimeouts::default(), &snap, parts(6), 1_000);
        for t in [10, 11, 12, 13, 14, 15] {
            for (id, cl) in clients.iter_mut() {
                let before = c.heartbeat(id, cl.epoch, topics(), &cl.owned, t).unwrap();
                let after = restored
                    .heartbeat(id, cl.epoch, topics(), &cl.owned, 1_000 + t)
                    .unwrap();
                assert_eq!(before.assignment, after.assignment, "{id} at {t}");
                assert_eq!(before.revoke, after.revoke, "{id} at {t}");
                cl.epoch = after.member_epoch;
                cl.owned = after.assignment.keys().cloned().collect();
            }
        }
        let sizes: Vec<usize> = clients
            .keys()
            .map(|id| restored.held_by(id).len())
            .collect();
        assert_eq!(sizes, [2, 2, 2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Beat(u8),
        Leave(u8),
        /// A heartbeat that reports what the member held long ago (a delayed request).
        StaleBeat(u8),
        /// A commit of a partition at an epoch remembered from some time ago.
        DelayedCommit(u8, u32),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u8..5).prop_map(Op::Join),
            6 => (0u8..5).prop_map(Op::Beat),
            1 => (0u8..5).prop_map(Op::Leave),
            1 => (0u8..5).prop_map(Op::StaleBeat),
            2 => ((0u8..5), (0u32..8)).prop_map(|(m, p)| Op::DelayedCommit(m, p)),
            2 => (0u16..400).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Random joins, heartbeats, leaves, clock jumps, stale heartbeats and delayed
        /// commits: no partition is ever fetchable by two members at once, and no commit is
        /// accepted from a member that does not hold the partition.
        #[test]
        fn no_partition_has_two_fetchers_and_no_stale_commit_is_accepted(ops in proptest::collection::vec(op(), 1..120)) {
            let t = GroupTimeouts { session_timeout_ms: 300, rebalance_timeout_ms: 200 };
            let mut c = Coordinator::new(t);
            c.set_partitions(parts(8));
            let mut clients: BTreeMap<String, Client> = BTreeMap::new();
            let mut old: BTreeMap<String, Client> = BTreeMap::new();
            let mut now = 0i64;
            for op in ops {
                match op {
                    Op::Join(m) => {
                        let id = format!("m{m}");
                        let mut cl = Client::default();
                        if cl.beat(&mut c, &id, now).is_ok() {
                            clients.insert(id, cl);
                        }
                    }
                    Op::Beat(m) => {
                        let id = format!("m{m}");
                        if let Some(cl) = clients.get_mut(&id) {
                            old.insert(id.clone(), cl.clone());
                            if cl.beat(&mut c, &id, now).is_err() {
                                clients.remove(&id);
                            }
                        }
                    }
                    Op::Leave(m) => {
                        let id = format!("m{m}");
                        if clients.remove(&id).is_some() {
                            let _ = c.leave(&id);
                        }
                    }
                    Op::StaleBeat(m) => {
                        let id = format!("m{m}");
                        if let (Some(stale), true) = (old.get(&id).cloned(), clients.contains_key(&id)) {
                            match c.heartbeat(&id, stale.epoch, topics(), &stale.owned, now) {
                                Ok(hb) => {
                                    let cl = clients.get_mut(&id).unwrap();
                                    cl.epoch = hb.member_epoch;
                                    cl.owned = hb.assignment.keys().cloned().collect();
                                }
                                Err(_) => { clients.remove(&id); }
                            }
                        }
                    }
                    Op::DelayedCommit(m, p) => {
                        let id = format!("m{m}");
                        if let Some(stale) = old.get(&id) {
                            let tp = ("orders".to_owned(), p);
                            if c.check_commit(&id, stale.epoch, &tp).is_ok() {
                                // Accepted: nobody else may be fetching it meanwhile.
                                let others = clients
                                    .iter()
                                    .filter(|(other, cl)| **other != id && c.can_fetch(other, cl.epoch, &tp))
                                    .count();
                                prop_assert_eq!(others, 0, "a commit of {:?} accepted while another member fetches it", tp);
                                prop_assert!(c.held_by(&id).contains(&tp));
                            }
                        }
                    }
                    Op::Advance(ms) => {
                        now += i64::from(ms);
                        c.expire(now);
                    }
                }
                for p in 0..8 {
                    let tp = ("orders".to_owned(), p);
                    let fetchers = clients
                        .iter()
                        .filter(|(id, cl)| c.can_fetch(id, cl.epoch, &tp))
                        .count();
                    prop_assert!(fetchers <= 1, "{tp:?} fetchable by {fetchers} members");
                }
            }
            // Everyone still in the group heartbeats a few rounds: every partition ends up
            // with exactly one fetcher, balanced.
            for _ in 0..4 {
                now += 1;
                let ids: Vec<String> = clients.keys().cloned().collect();
                for id in ids {
                    let cl = clients.get_mut(&id).unwrap();
                    if cl.beat(&mut c, &id, now).is_err() {
                        clients.remove(&id);
                    }
                }
            }
            if !clients.is_empty() {
                let mut counts = Vec::new();
                for (id, cl) in &clients {
                    counts.push((0..8).filter(|&p| c.can_fetch(id, cl.epoch, &("orders".to_owned(), p))).count());
                }
                prop_assert_eq!(counts.iter().sum::<usize>(), 8, "every partition fetched: {:?}", counts);
                prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
            }
        }
    }
}

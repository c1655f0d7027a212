//! This node's replica of one partition, and its role there: the leader (which tracks its
//! followers' positions and moves the high watermark), a follower (which fetches from the
//! leader, see `follower.rs`), or neither (the partition has no leader).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::epochs::EpochHistory;
use crate::broker::{BrokerError, Partition};

/// The offsets a leader publishes to its followers and its waiting producers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Every in-sync replica holds the records below.
    pub hw: u64,
    /// Every in-sync replica has made the records below durable.
    pub durable_hw: u64,
    /// `durability=fsync` producers wait for the records below: followers make them durable.
    pub flush_to: u64,
}

/// What the leader knows of a follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerPos {
    pub end: u64,
    pub durable: u64,
    /// The last time the follower fetched from the leader's end (it had everything).
    pub caught_up: Instant,
}

#[derive(Debug, Clone)]
pub struct LeaderRole {
    pub epoch: u32,
    pub isr: Vec<String>,
    /// The revision of the partition's etcd key this role was read (or written) at: the
    /// fence of the leader's own changes to the in-sync set.
    pub mod_revision: i64,
    pub min_isr: u32,
    /// Followers this leader is adding to the in-sync set (its etcd write in flight): the
    /// high watermark counts them already, so that it cannot pass a member's end before
    /// etcd lists it (KIP-497's "maximal ISR").
    pub joining: Vec<String>,
    pub followers: HashMap<String, FollowerPos>,
    pub since: Instant,
}

#[derive(Debug, Clone)]
pub enum Role {
    Idle,
    Leader(LeaderRole),
    Follower { leader: String, epoch: u32 },
}

/// Why a write or a replication request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This node does not lead the partition (at that epoch).
    NotLeader,
    /// Fewer in-sync replicas than the minimum.
    NotEnoughReplicas { isr: usize, min: u32 },
    /// The node's etcd lease lapsed: it may have been replaced.
    LeaseLapsed,
}

#[derive(Debug)]
pub struct Replica {
    pub topic: String,
    pub partition: u32,
    pub p: Arc<Partition>,
    pub epochs: EpochHistory,
    node_id: String,
    /// Held briefly, by anyone who reads or sets the role (produce paths included).
    role: Mutex<Role>,
    /// Held by a role change, and by a follower's work under its role (appends, cuts,
    /// high-watermark moves: disk work), so that a role change waits for that work and no
    /// such work runs under a role that has ended. Never taken on an async worker.
    fence: Mutex<()>,
    /// Bumped on every role change: ends what waited under the old role (0: no role taken
    /// up yet in this process).
    generation: watch::Sender<u64>,
    marks: watch::Sender<Marks>,
}

impl Replica {
    pub fn open(
        topic: &str,
        partition: u32,
        p: Arc<Partition>,
        node_id: &str,
    ) -> Result<Self, BrokerError> {
        let epochs = EpochHistory::open(p.log().dir(), p.log().end_offset())?;
        let hw = p.log().replicated_offset();
        Ok(Replica {
            topic: topic.to_owned(),
            partition,
            epochs,
            node_id: node_id.to_owned(),
            role: Mutex::new(Role::Idle),
            fence: Mutex::new(()),
            generation: watch::Sender::new(0),
            marks: watch::Sender::new(Marks {
                hw,
                durable_hw: hw.min(p.log().durable_offset()),
                flush_to: 0,
            }),
            p,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Role> {
        self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn role(&self) -> Role {
        self.lock().clone()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Runs `f` while the role is still the one of `generation` (a role change waits for
    /// it): what a follower appends, cuts or publishes is never done under a role it no
    /// longer has. `None` when the role changed.
    /// Blocks.
    pub fn under_role<R>(&self, generation: u64, f: impl FnOnce() -> R) -> Option<R> {
        let _fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation() == generation).then(f)
    }

    /// Whether this process has taken up no role for the partition yet.
    pub fn is_fresh(&self) -> bool {
        self.generation() == 0
    }

    pub fn subscribe_generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn marks(&self) -> Marks {
        *self.marks.borrow()
    }

    pub fn subscribe_marks(&self) -> watch::Receiver<Marks> {
        self.marks.subscribe()
    }

    /// Takes up `role` (after the work under the old one): the generation it has. Blocks.
    fn set_role(&self, role: Role) -> u64 {
        self.change_role(|held| {
            *held = role;
            true
        })
        .unwrap_or_else(|| self.generation())
    }

    /// Runs `change` on the role, after the work under it; when it changed the role, bumps
    /// the generation and returns the new one. Blocks.
    fn change_role(&self, change: impl FnOnce(&mut Role) -> bool) -> Option<u64> {
        let _fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.lock();
        if !change(&mut held) {
            return None;
        }
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        Some(generation)
    }

    /// Leads from `epoch` on: the epoch starts at the log's end. Blocks (the history file).
    pub fn become_leader(
        &self,
        epoch: u32,
        isr: Vec<String>,
        mod_revision: i64,
        min_isr: u32,
    ) -> Result<(), BrokerError> {
        self.epochs.assign(epoch, self.p.log().end_offset())?;
        let _ = self.set_role(Role::Leader(LeaderRole {
            epoch,
            isr,
            mod_revision,
            min_isr,
            joining: Vec::new(),
            followers: HashMap::new(),
            since: Instant::now(),
        }));
        tracing::info!(topic = %self.topic, partition = self.partition, epoch, "leading the partition");
        self.update_marks()
    }

    /// Follows `leader` at `epoch`: the generation of that role (its fetch loop runs while
    /// it lasts). Blocks (see [`Replica::set_role`]).
    pub fn become_follower(&self, leader: &str, epoch: u32) -> u64 {
        let generation = self.set_role(Role::Follower {
            leader: leader.to_owned(),
            epoch,
        });
        tracing::info!(topic = %self.topic, partition = self.partition, leader, epoch, "following");
        generation
    }

    /// Gives up any role. Blocks (see [`Replica::set_role`]).
    pub fn become_idle(&self) {
        self.change_role(|held| !matches!(std::mem::replace(held, Role::Idle), Role::Idle));
    }

    /// The leader epoch when this node leads.
    pub fn leading(&self) -> Option<u32> {
        match &*self.lock() {
            Role::Leader(l) => Some(l.epoch),
            _ => None,
        }
    }

    /// Takes the in-sync set and the revision from etcd when it is newer than the one held
    /// (the controller removed a dead follower, or this leader's own change came back).
    /// Whether the in-sync set changed: the caller then moves the marks
    /// ([`Replica::update_marks`], which blocks).
    pub fn refresh_leader(
        &self,
        epoch: u32,
        isr: &[String],
        mod_revision: i64,
        min_isr: u32,
    ) -> bool {
        match &mut *self.lock() {
            Role::Leader(l) if l.epoch == epoch && mod_revision > l.mod_revision => {
                let changed = l.isr != isr;
                l.isr = isr.to_vec();
                l.joining.retain(|j| !isr.contains(j));
                l.mod_revision = mod_revision;
                l.min_isr = min_isr;
                changed
            }
            _ => false,
        }
    }

    /// Whether this node may append to the partition now: it leads, and the in-sync set
    /// is at least the minimum.
    pub fn check_writable(&self) -> Result<(u32, u64), Refusal> {
        match &*self.lock() {
            Role::Leader(l) if (l.isr.len() as u32) < l.min_isr => {
                Err(Refusal::NotEnoughReplicas {
                    isr: l.isr.len(),
                    min: l.min_isr,
                })
            }
            Role::Leader(l) => Ok((l.epoch, self.generation())),
            _ => Err(Refusal::NotLeader),
        }
    }

    /// A follower fetched from `end` with `durable` of it made durable: remembers it and
    /// moves the marks. `Err` when this node does not lead at `epoch`. Blocks (moving the
    /// high watermark writes the segments' `replicated_end`).
    pub fn follower_fetched(
        &self,
        node: &str,
        epoch: u32,
        end: u64,
        durable: u64,
    ) -> Result<(), Refusal> {
        {
            let mut role = self.lock();
            let Role::Leader(l) = &mut *role else {
                return Err(Refusal::NotLeader);
            };
            if l.epoch != epoch {
                return Err(Refusal::NotLeader);
            }
            let now = Instant::now();
            let caught_up = if end >= self.p.log().end_offset() {
                now
            } else {
                l.followers.get(node).map_or(l.since, |f| f.caught_up)
            };
            l.followers.insert(
                node.to_owned(),
                FollowerPos {
                    end,
                    durable,
                    caught_up,
                },
            );
        }
        self.update_marks().map_err(|e| {
            tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "high watermark not moved");
            Refusal::NotLeader
        })
    }

    /// Recomputes the leader's marks: the high watermark is the lowest end over the
    /// in-sync set (a member that has not fetched yet holds it where it is), and never
    /// goes down. Blocks.
    pub fn update_marks(&self) -> Result<(), BrokerError> {
        let log = self.p.log();
        let (hw, durable_hw) = {
            let role = self.lock();
            let Role::Leader(l) = &*role else {
                return Ok(());
            };
            let current = self.marks();
            let (mut hw, mut durable) = (log.end_offset(), log.durable_offset());
            for member in l
                .isr
                .iter()
                .chain(&l.joining)
                .filter(|m| **m != self.node_id)
            {
                match l.followers.get(member) {
                    Some(f) => {
                        hw = hw.min(f.end);
                        durable = durable.min(f.durable);
                    }
                    None => {
                        hw = hw.min(current.hw);
                        durable = durable.min(current.durable_hw);
                    }
                }
            }
            (hw, durable.min(hw))
        };
        self.advance(hw, durable_hw)
    }

    /// Raises the marks (never lowers them) and the partition's high watermark. Blocks.
    pub fn advance(&self, hw: u64, durable_hw: u64) -> Result<(), BrokerError> {
        let current = self.marks();
        if hw > current.hw {
            self.p.advance_high_watermark(hw)?;
        }
        self.marks.send_if_modified(|m| {
            let before = *m;
            m.hw = m.hw.max(hw);
            m.durable_hw = m.durable_hw.max(durable_hw.min(m.hw));
            before != *m
        });
        Ok(())
    }

    /// Asks the followers to make the records below `end` durable.
    pub fn want_durable(&self, end: u64) {
        self.marks.send_if_modified(|m| {
            let grew = end > m.flush_to;
            m.flush_to = m.flush_to.max(end);
            grew
        });
    }

    /// The leader's changes to its in-sync set: followers that have not caught up within
    /// `lag` leave it; replicas (alive per `alive`) that have caught up with the high
    /// watermark join it. `None` when it stays as it is.
    pub fn isr_change(
        &self,
        lag: Duration,
        replicas: &[String],
        alive: impl Fn(&str) -> bool,
    ) -> Option<(Vec<String>, i64, u32)> {
        let mut role = self.lock();
        let Role::Leader(l) = &mut *role else {
            return None;
        };
        let now = Instant::now();
        let hw = self.marks().hw;
        let in_sync = |node: &str| {
            node == self.node_id
                || l.followers
                    .get(node)
                    .is_some_and(|f| now.duration_since(f.caught_up) < lag && f.end >= hw)
        };
        let keeps = |node: &str| {
            node == self.node_id
                || match l.followers.get(node) {
                    Some(f) => now.duration_since(f.caught_up) < lag,
                    None => now.duration_since(l.since) < lag,
                }
        };
        let mut isr: Vec<String> = l.isr.iter().filter(|n| keeps(n)).cloned().collect();
        let mut joining = Vec::new();
        for r in replicas {
            if !isr.contains(r) && alive(r) && in_sync(r) {
                isr.push(r.clone());
                joining.push(r.clone());
            }
        }
        // In replica order, as the controller writes it.
        let in_order = |mut v: Vec<String>| {
            v.sort_by_key(|n| replicas.iter().position(|r| r == n));
            v
        };
        let isr = in_order(isr);
        if isr == in_order(l.isr.clone()) {
            return None;
        }
        l.joining = joining;
        Some((isr, l.mod_revision, l.epoch))
    }

    /// The in-sync set change proposed by [`Replica::isr_change`] was not written: its
    /// joining followers stop counting.
    pub fn isr_change_failed(&self) {
        if let Role::Leader(l) = &mut *self.lock() {
            l.joining.clear();
        }
    }

    /// The in-sync set and its size rule, when this node leads.
    pub fn leader_state(&self) -> Option<LeaderRole> {
        match &*self.lock() {
            Role::Leader(l) => Some(l.clone()),
            _ => None,
        }
    }
}

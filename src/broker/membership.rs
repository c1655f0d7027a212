//! What the broker does for consumer groups with members (API.md, "Consumer groups with
//! members"): joins and heartbeats that long-poll for a change of assignment, leaves,
//! fetches from the partitions a member owns, commits fenced by epoch and ownership, and
//! the description of a group with its lag. The HTTP routes (and later the Kafka protocol)
//! call these; the rules live in [`super::coordinator`], the files in [`super::members`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::assignor::TopicPartition;
use super::coordinator::{CoordinatorError, Heartbeat};
use super::members::GroupSettings;
use super::{blocking, Broker, BrokerError, ReadLimits, Wait};
use crate::log::{now_ms, ReadBatch};

/// A join or heartbeat (see [`Broker::heartbeat`]).
#[derive(Debug, Clone)]
pub struct HeartbeatCall {
    pub member_epoch: u64,
    pub topics: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
    /// Long-poll: wait up to this long for the answer to differ from what the member has.
    pub wait: Duration,
}

/// A heartbeat's answer, with what the member needs to start fetching.
#[derive(Debug, Clone)]
pub struct HeartbeatAnswer {
    pub heartbeat: Heartbeat,
    pub settings: GroupSettings,
    /// The group's committed offset of each assigned partition.
    pub committed: BTreeMap<TopicPartition, u64>,
}

/// A member fetch's request (see [`Broker::member_fetch`]).
#[derive(Debug, Clone, Copy)]
pub struct MemberFetchCall {
    pub limits: ReadLimits,
    /// Only the records of the first partition that has some.
    pub one_partition: bool,
    /// Start every partition at the committed offset, not at the member's position.
    pub from_committed: bool,
}

/// What a member fetch brings (see [`Broker::member_fetch`]).
#[derive(Debug)]
pub struct MemberFetch {
    pub batches: Vec<(TopicPartition, ReadBatch)>,
    /// The member has partitions to revoke or to take: it should heartbeat now.
    pub heartbeat_now: bool,
}

/// One member of a group, as described.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member: String,
    pub member_epoch: u64,
    pub topics: BTreeSet<String>,
    /// The partitions it holds and keeps.
    pub assignment: Vec<TopicPartition>,
    /// The partitions it holds but is letting go of.
    pub revoking: Vec<TopicPartition>,
    pub last_seen_ms: i64,
}

/// A partition's committed offset (none yet: `None`) and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    pub offset: Option<u64>,
    /// Records a member would still get: from the committed offset (or the group's
    /// `auto_offset_reset` position) to the end.
    pub lag: u64,
}

/// A group, as `GET /v1/groups/{group}` shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub name: String,
    pub epoch: u64,
    pub settings: GroupSettings,
    pub members: Vec<MemberDescription>,
    /// The topics the group subscribes to (kept when its last member leaves).
    pub topics: BTreeSet<String>,
    pub offsets: Vec<PartitionLag>,
}

impl Broker {
    /// The partitions of `topics`, each of which must exist.
    pub fn partitions_of(
        &self,
        topics: &BTreeSet<String>,
    ) -> Result<BTreeSet<TopicPartition>, BrokerError> {
        let mut out = BTreeSet::new();
        for name in topics {
            let t = self.topic(name)?;
            out.extend(t.partitions().iter().map(|p| (name.clone(), p.id())));
        }
        Ok(out)
    }

    /// `GroupExists` when `group` is a queue group, or has Kafka consumers in it (calls of
    /// HTTP partitioned groups on it).
    fn not_a_queue_group(&self, group: &str) -> Result<(), BrokerError> {
        if self.is_queue_group(group) {
            return Err(BrokerError::WrongGroupType {
                group: group.to_owned(),
                is: "a queue group",
            });
        }
        if self.has_kafka_members(group) {
            return Err(BrokerError::WrongGroupType {
                group: group.to_owned(),
                is: "a Kafka consumer group with members (stop them, or commit through them)",
            });
        }
        Ok(())
    }

    /// The partitions of those of `topics` that exist (a deleted topic has none).
    pub(super) fn existing_partitions_of(
        &self,
        topics: &BTreeSet<String>,
    ) -> BTreeSet<TopicPartition> {
        topics
            .iter()
            .filter_map(|name| self.topic(name).ok())
            .flat_map(|t| (0..t.partition_count()).map(move |p| (t.name().to_owned(), p)))
            .collect()
    }

    /// A group's settings (the defaults when it does not exist yet).
    pub fn group_settings(&self, group: &str) -> GroupSettings {
        self.members
            .get(group)
            .map(|g| g.read(|st| st.settings))
            .unwrap_or_default()
    }

    /// Creates a group with members or changes its settings; `true` when created. Durable
    /// before it returns. Blocks.
    pub fn put_group(&self, group: &str, settings: GroupSettings) -> Result<bool, BrokerError> {
        self.not_a_queue_group(group)?;
        self.members.put_settings(group, settings, now_ms())
    }

    /// A member joins (epoch 0) or heartbeats; a first join creates the group with the
    /// default settings. When the answer would tell the member nothing new (same epoch, the
    /// partitions it owns, nothing to revoke), waits up to `call.wait` for the group to
    /// change, or for `stop`. What changed is durable before the answer.
    pub async fn heartbeat(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        call: HeartbeatCall,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        super::validate_name(group)?;
        super::validate_name(member)?;
        self.not_a_queue_group(group)?;
        let deadline = tokio::time::Instant::now() + call.wait;
        loop {
            let (broker, group_name, member_id, c) = (
                Arc::clone(self),
                group.to_owned(),
                member.to_owned(),
                call.clone(),
            );
            let (answer, mut changes) = blocking(move || {
                // Each of the member's topics must exist.
                broker.partitions_of(&c.topics)?;
                let now = now_ms();
                let beat = |st: &mut super::members::GroupState| {
                    // The partitions of every member's topics, not only the caller's.
                    let mut topics = st.coordinator.subscribed_topics();
                    topics.extend(c.topics.iter().cloned());
                    let partitions = broker.existing_partitions_of(&topics);
                    st.heartbeat(
                        &member_id,
                        c.member_epoch,
                        c.topics.clone(),
                        &c.owned,
                        partitions,
                        now,
                    )
                    .map(|hb| (hb, st.settings))
                };
                let (hb, changes) = broker.members.update_or_create(&group_name, now, beat)?;
                let (heartbeat, settings) = hb.map_err(BrokerError::Member)?;
                let committed = match broker.groups.offsets(&group_name) {
                    Ok(all) => all
                        .into_iter()
                        .filter(|(tp, _)| heartbeat.assignment.contains_key(tp))
                        .collect(),
                    Err(_) => BTreeMap::new(),
                };
                Ok((
                    HeartbeatAnswer {
                        heartbeat,
                        settings,
                        committed,
                    },
                    changes,
                ))
            })
            .await?;
            let hb = &answer.heartbeat;
            let news = hb.member_epoch != call.member_epoch
                || !hb.revoke.is_empty()
                || !hb.assignment.keys().eq(call.owned.iter());
            if news || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.wait_for(|s| *s) => return Ok(answer),
            }
        }
    }

    /// The member leaves; its partitions are free at once. Durable before it returns.
    /// Blocks.
    pub fn leave_group(&self, group: &str, member: &str) -> Result<(), BrokerError> {
        super::validate_name(group)?;
        let g = self
            .members
            .get(group)
            .ok_or(BrokerError::Member(CoordinatorError::UnknownMember))?;
        g.update(now_ms(), |st| st.leave(member))?
            .0
            .map_err(BrokerError::Member)
    }

    /// Records of the partitions `member` may fetch (those it owns and keeps; `allow`
    /// filters them by topic), from its position in each (else, or with `from_committed`,
    /// the committed offset, else the group's `auto_offset_reset`), taking the partitions
    /// in turn from a different one each call. With `one_partition`, the records of the
    /// first partition that has some. When none has records and `wait` allows, waits for an append to any of them
    /// (or a change of the group) and reads once more. The member's positions move past
    /// what is returned; a fetch keeps its session.
    pub async fn member_fetch(
        self: &Arc<Self>,
        group: &str,
        member: &str,
        call: MemberFetchCall,
        allow: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        wait: Option<Wait>,
    ) -> Result<MemberFetch, BrokerError> {
        super::validate_name(group)?;
        let g = self
            .members
            .get(group)
            .ok_or(BrokerError::Member(CoordinatorError::UnknownMember))?;
        let mut waited = false;
        let mut call = call;
        loop {
            let (broker, g2, m, allow2) = (
                Arc::clone(self),
                Arc::clone(&g),
                member.to_owned(),
                Arc::clone(&allow),
            );
            let (fetched, watched, changes) =
                blocking(move || broker.fetch_once(&g2, &m, call, &*allow2)).await?;
            // Positions are the member's again once they were reset.
            call.from_committed = false;
            let wait = match wait.as_ref() {
                Some(w)
                    if fetched.batches.is_empty()
                        && !fetched.heartbeat_now
                        && !waited
                        && !w.timeout.is_zero() =>
                {
                    w
                }
                _ => return Ok(fetched),
            };
            waited = true;
            let _permit = wait.permit()?;
            let mut stop = wait.stop.clone();
            let mut changes = changes;
            tokio::select! {
                _ = super::partition::any_grows(watched) => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait.timeout) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// One round of [`Broker::member_fetch`], on the blocking pool: the batches read, the
    /// partitions watched (with the offset read from) when nothing was there, and a
    /// receiver of the group's next change.
    #[allow(clippy::type_complexity)]
    fn fetch_once(
        &self,
        g: &super::members::MemberGroup,
        member: &str,
        call: MemberFetchCall,
        allow: &dyn Fn(&str) -> bool,
    ) -> Result<
        (
            MemberFetch,
            Vec<(Arc<super::Partition>, u64)>,
            tokio::sync::watch::Receiver<u64>,
        ),
        BrokerError,
    > {
        let now = now_ms();
        let (plan, changes) = g.update(now, |st| {
            st.fetch_plan(member, now, call.from_committed)
                .map(|plan| (plan, st.settings.auto_offset_reset))
        })?;
        let (plan, reset) = plan.map_err(BrokerError::Member)?;
        let heartbeat_now = plan.heartbeat_now;
        let mut plan = plan.partitions;
        plan.retain(|((topic, _), _, _)| allow(topic));
        let committed = self.groups.offsets(g.name()).unwrap_or_default();
        let start = g.next_round(plan.len());
        plan.rotate_left(start);
        let mut out = Vec::new();
        let mut watched = Vec::new();
        let (limits, one_partition) = (call.limits, call.one_partition);
        let (mut records, mut bytes) = (limits.max_records, limits.max_bytes);
        for (tp, given_at, position) in plan {
            // At least one record, even one larger than `max_bytes`.
            if records == 0 || (!out.is_empty() && (bytes == 0 || one_partition)) {
                break;
            }
            let Ok(p) = self.partition(&tp) else {
                continue;
            };
            let log = p.log();
            let from = match position.or_else(|| committed.get(&tp).copied()) {
                Some(o) => o,
                None => p.resolve(reset.into())?,
            }
            .clamp(log.start_offset(), log.end_offset());
            let batch = p.read(
                from,
                ReadLimits {
                    max_records: records,
                    max_bytes: bytes,
                },
            )?;
            g.with(|st| st.advance(member, &tp, given_at, batch.next_offset));
            if batch.record_count == 0 {
                watched.push((p, from));
                continue;
            }
            records -= batch.record_count.min(records);
            bytes = bytes.saturating_sub(batch.byte_len());
            out.push((tp, batch));
        }
        Ok((
            MemberFetch {
                batches: out,
                heartbeat_now,
            },
            watched,
            changes,
        ))
    }

    /// Commits offsets for `group`, durably. As `member` (with its epoch), each partition
    /// must be held by it (fencing); without, only while the group has no members (the v1
    /// call). Each offset must be at most its partition's end. Blocks.
    pub fn commit_offsets(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        entries: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        super::validate_name(group)?;
        self.not_a_queue_group(group)?;
        self.commit_checked_offsets(group, member, entries)
    }

    /// A Kafka consumer group's commit, its member and generation checked by the Kafka
    /// listener's coordinator. Durable on return. Blocks.
    pub fn commit_kafka_offsets(
        &self,
        group: &str,
        entries: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        super::validate_name(group)?;
        if self.is_queue_group(group) || self.is_member_group(group) {
            return Err(BrokerError::WrongGroupType {
                group: group.to_owned(),
                is: "a queue group or an HTTP group with members",
            });
        }
        self.commit_checked_offsets(group, None, entries)
    }

    fn commit_checked_offsets(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        entries: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        let check = || {
            for (topic, partition, offset) in entries {
                let end = self.topic(topic)?.partition(*partition)?.log().end_offset();
                if *offset > end {
                    return Err(BrokerError::OffsetBeyondEnd {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                        end,
                    });
                }
            }
            Ok(())
        };
        let Some(g) = self.members.get(group) else {
            return match member {
                None => self.groups.commit(group, entries, check),
                Some(_) => Err(BrokerError::Member(CoordinatorError::UnknownMember)),
            };
        };
        // Under the group's lock: no rebalance between the fencing check and the write.
        g.with(|st| {
            // In a cluster, a copy another node's state replaced commits nothing.
            st.check_current(group)?;
            let tps: Vec<TopicPartition> =
                entries.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            match member {
                Some((m, epoch)) => st
                    .check_commit(m, epoch, &tps, now_ms())
                    .map_err(BrokerError::Member)?,
                None if st.coordinator.members().next().is_some() => {
                    return Err(BrokerError::MembersOnly(group.to_owned()))
                }
                None => {}
            }
            self.groups.commit(group, entries, check)
        })
    }

    /// Whether `group` names a group with members (HTTP members, mapq's own protocol).
    pub fn is_member_group(&self, group: &str) -> bool {
        self.members.get(group).is_some()
    }

    /// Every group: with members, or with committed offsets only. Sorted.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.groups.names().into_iter().collect();
        names.extend(self.members.names());
        names.extend(self.queues.names());
        names.into_iter().collect()
    }

    /// The topics a group subscribes to or has committed offsets on. Blocks (waits for a
    /// commit's write).
    pub fn group_topics(&self, group: &str) -> BTreeSet<String> {
        let mut topics: BTreeSet<String> = self
            .groups
            .offsets(group)
            .map(|o| o.into_keys().map(|(t, _)| t).collect())
            .unwrap_or_default();
        if let Some(g) = self.members.get(group) {
            topics.extend(g.read(|st| st.topics.clone()));
        }
        if let Some(g) = self.queues.get(group) {
            topics.extend(g.settings.topics.iter().cloned());
        }
        topics
    }

    /// A group's members, assignment and lag (see [`GroupDescription`]). Lag is computed
    /// from the committed offsets whether or not members are alive. Blocks (waits for a
    /// commit's write).
    pub fn describe_group(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        super::validate_name(group)?;
        let committed = self.groups.offsets(group);
        let g = self.members.get(group);
        if g.is_none() && committed.is_err() {
            return Err(BrokerError::GroupNotFound(group.to_owned()));
        }
        let committed = committed.unwrap_or_default();
        let (epoch, settings, members, topics) = match &g {
            Some(g) => g.read(|st| {
                let c = &st.coordinator;
                let members = c
                    .members()
                    .filter_map(|m| {
                        let (member_epoch, topics, last_seen_ms) = c.member(m)?;
                        Some(MemberDescription {
                            member: m.to_owned(),
                            member_epoch,
                            topics: topics.clone(),
                            assignment: c.fetchable(m).into_iter().map(|(tp, _)| tp).collect(),
                            revoking: c.revoking(m),
                            last_seen_ms,
                        })
                    })
                    .collect();
                (c.group_epoch(), st.settings, members, st.topics.clone())
            }),
            None => (0, GroupSettings::default(), Vec::new(), BTreeSet::new()),
        };
        let mut partitions = self.existing_partitions_of(&topics);
        partitions.extend(committed.keys().cloned());
        let offsets = partitions
            .into_iter()
            .filter_map(|(topic, partition)| {
                let tp = (topic, partition);
                let p = self.partition(&tp).ok()?;
                let log = p.log();
                let offset = committed.get(&tp).copied();
                let from = match offset {
                    Some(o) => o,
                    None => p.resolve(settings.auto_offset_reset.into()).ok()?,
                };
                let (topic, partition) = tp;
                Some(PartitionLag {
                    lag: log.end_offset().saturating_sub(from),
                    topic,
                    partition,
                    offset,
                })
            })
            .collect();
        Ok(GroupDescription {
            name: group.to_owned(),
            epoch,
            settings,
            members,
            topics,
            offsets,
        })
    }

    /// Forgets a deleted topic in every group with members: it is no longer among the
    /// topics whose lag a group reports, and a group left with no members and no topics is
    /// removed (as a group left with no committed offsets is). Blocks.
    pub(super) fn forget_member_topic(&self, topic: &str) -> Result<(), BrokerError> {
        for (name, g) in self.members.all() {
            let (emptied, _) = g.update(now_ms(), |st| {
                if !st.topics.remove(topic) {
                    return false;
                }
                let subscribed = st.coordinator.subscribed_topics();
                st.set_partitions(self.existing_partitions_of(&subscribed));
                st.topics.is_empty()
            })?;
            if emptied {
                self.members.remove_if(&name, &g, |st| {
                    st.topics.is_empty() && st.coordinator.members().next().is_none()
                })?;
            }
        }
        Ok(())
    }

    /// Removes the members of every group whose session or rebalance timeout passed, and
    /// follows topics created, grown or deleted. For the maintenance task. Blocks.
    pub fn expire_members(&self) -> Result<(), BrokerError> {
        let mut first_error = None;
        for (_, g) in self.members.all() {
            let now = now_ms();
            let expired = g.update(now, |st| {
                // A group without members has nothing to assign (and no epoch to bump).
                if st.coordinator.members().next().is_some() {
                    let topics = st.coordinator.subscribed_topics();
                    st.set_partitions(self.existing_partitions_of(&topics));
                }
                st.expire(now)
            });
            // One group's failure (in a cluster, a copy another node took over) does not
            // keep the others from their expiry.
            let gone = match expired {
                Ok((gone, _)) => gone,
                Err(BrokerError::GroupNotFound(_)) => continue,
                Err(e) => {
                    tracing::warn!(group = g.name(), error = %e, "group maintenance failed");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for (member, why) in gone {
                tracing::info!(group = g.name(), member = %member, reason = ?why, "group member removed: its partitions move");
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

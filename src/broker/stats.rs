//! A snapshot of the broker's state and counters as plain data, for metrics and operations:
//! readers of it need to know nothing of topics, partitions or segments.

use std::sync::atomic::Ordering;

use super::Broker;

/// What a scrape shows.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    pub partitions: Vec<PartitionStats>,
    pub groups: Vec<GroupStats>,
    pub member_groups: Vec<MemberGroupStats>,
    pub queue_groups: Vec<QueueGroupStats>,
    pub idempotency: Vec<IdempotencyStats>,
    /// Segments mapped, with their files open, across all partitions.
    pub open_segments: u64,
    /// The `max_disk_bytes` quota: `(used, limit)` bytes, when there is one.
    pub disk: Option<(u64, u64)>,
}

/// One partition's offsets, size and the counters of its engine's work since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub topic: String,
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub segments: u64,
    /// Local tailers blocked in a futex wait on the partition's files.
    pub tail_waiters: u64,
    pub segments_rolled: u64,
    pub segments_deleted_by_age: u64,
    pub segments_deleted_by_size: u64,
    pub flushes: u64,
    pub flush_errors: u64,
    /// Records appended since the partition was opened (this process).
    pub records_appended: u64,
    /// Bytes of frames appended since the partition was opened.
    pub bytes_appended: u64,
}

/// A topic's idempotent produce: keys remembered, retries answered from the log, refusals,
/// and how long rebuilding the keys from the log took when it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyStats {
    pub topic: String,
    pub keys: u64,
    pub replays: u64,
    pub mismatches: u64,
    pub in_flight: u64,
    pub rebuild_ms: u64,
}

/// A consumer group's committed offset in one partition, and its lag behind the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub lag: u64,
}

/// A group with members: its members, epoch, and what its coordinator did since the
/// server started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberGroupStats {
    pub group: String,
    pub members: u64,
    pub epoch: u64,
    pub partitions_moved: u64,
    pub counters: super::members::GroupCounters,
}

/// A queue group: what is waiting and in flight now, and what it did since the server
/// started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGroupStats {
    pub group: String,
    pub backlog: u64,
    pub in_flight: u64,
    pub oldest_unacked_age_ms: u64,
    pub first_deliveries: u64,
    pub redeliveries: u64,
    pub accepts: u64,
    pub releases: u64,
    pub rejects: u64,
    pub extends: u64,
    pub expired_leases: u64,
    pub lost_leases: u64,
    pub dead_letters: u64,
    pub window_full: u64,
}

impl Broker {
    /// The snapshot. Reads atomics and the in-memory group offsets, and each queue group's
    /// state (under its lock) and the timestamp of its oldest unsettled record.
    pub fn stats(&self) -> BrokerStats {
        let mut stats = BrokerStats {
            disk: self.quota().map(|q| (q.used_bytes(), q.limit_bytes())),
            ..BrokerStats::default()
        };
        for t in self.topics() {
            let idem = t.idempotency();
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            stats.idempotency.push(IdempotencyStats {
                topic: t.name().to_owned(),
                keys: idem.len() as u64,
                replays: load(&idem.replays),
                mismatches: load(&idem.mismatches),
                in_flight: load(&idem.in_flight_conflicts),
                rebuild_ms: load(&idem.rebuild_ms),
            });
            for p in t.partitions() {
                let log = p.log();
                let st = log.stats();
                stats.open_segments += log.open_segment_count() as u64;
                let (records_appended, bytes_appended) = p.appended_totals();
                stats.partitions.push(PartitionStats {
                    topic: t.name().to_owned(),
                    partition: p.id(),
                    start_offset: log.start_offset(),
                    end_offset: log.end_offset(),
                    durable_offset: log.durable_offset(),
                    size_bytes: log.size_bytes(),
                    segments: log.segment_count() as u64,
                    tail_waiters: log.tail_waiters(),
                    segments_rolled: load(&st.segments_rolled),
                    segments_deleted_by_age: load(&st.segments_deleted_by_age),
                    segments_deleted_by_size: load(&st.segments_deleted_by_size),
                    flushes: load(&st.flushes),
                    flush_errors: load(&st.flush_errors),
                    records_appended,
                    bytes_appended,
                });
            }
        }
        for (group, g) in self.members.all() {
            stats.member_groups.push(g.read(|st| MemberGroupStats {
                group,
                members: st.coordinator.members().count() as u64,
                epoch: st.coordinator.group_epoch(),
                partitions_moved: st.coordinator.moves(),
                counters: st.counters.clone(),
            }));
        }
        for g in self.queues.all() {
            let Ok(d) = self.describe_queue_group(g.name()) else {
                continue;
            };
            let c = &g.counters;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            stats.queue_groups.push(QueueGroupStats {
                group: g.name().to_owned(),
                backlog: d.partitions.iter().map(|p| p.backlog).sum(),
                in_flight: d.partitions.iter().map(|p| p.in_flight).sum(),
                oldest_unacked_age_ms: d
                    .partitions
                    .iter()
                    .map(|p| p.oldest_unacked_age_ms)
                    .max()
                    .unwrap_or(0),
                first_deliveries: load(&c.first_deliveries),
                redeliveries: load(&c.redeliveries),
                accepts: load(&c.accepts),
                releases: load(&c.releases),
                rejects: load(&c.rejects),
                extends: load(&c.extends),
                expired_leases: load(&c.expired_leases),
                lost_leases: load(&c.lost_leases),
                dead_letters: load(&c.dead_letters),
                window_full: load(&c.window_full),
            });
        }
        for group in self.groups().names() {
            let Ok(offsets) = self.groups().offsets(&group) else {
                continue;
            };
            for ((topic, partition), offset) in offsets {
                let Ok(p) = self
                    .topic(&topic)
                    .and_then(|t| t.partition(partition).cloned())
                else {
                    continue;
                };
                stats.groups.push(GroupStats {
                    group: group.clone(),
                    lag: p.high_watermark().saturating_sub(offset),
                    topic,
                    partition,
                    offset,
                });
            }
        }
        stats
    }
}

//! What the broker does for queue groups (API.md, "Queue groups"): creation, leases that
//! long-poll, acks, dead-lettering through idempotent produce, the description with backlog
//! and in-flight counts, and the maintenance tick. The rules live in [`super::queue`], the
//! journal in [`super::queues`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::assignor::TopicPartition;
use super::idempotency::{request_digest, request_head, Claim, Piece};
use super::queue::{AckKind, AckOutcome, DeadReason, Event, Rec, Token};
use super::queues::{QueueGroup, QueueInner, QueueSettings, Settle};
use super::{blocking, Broker, BrokerError, Partition, Wait};
use crate::log::format::Header;
use crate::log::{now_ms, ReadBatch, Record, StoredRecord};

/// The records of a batch, each with its frame (a view of the batch's chunks).
fn with_frames(batch: &ReadBatch) -> Vec<(StoredRecord, Bytes)> {
    let mut frames = Vec::with_capacity(batch.record_count);
    for chunk in &batch.chunks {
        let mut at = 0;
        while at < chunk.len() {
            let Ok(f) = crate::log::format::decode_frame_unchecked_crc(&chunk[at..]) else {
                break;
            };
            frames.push(chunk.slice(at..at + f.padded_len));
            at += f.padded_len;
        }
    }
    batch.records().zip(frames).collect()
}

/// A dead letter as one record of a JSON produce request: the record's key, value (its
/// JSON, or its bytes in base64), timestamp and headers, plus the `dlq.*` headers. Header
/// values that are not UTF-8 are carried with replacement characters (a JSON request has
/// text headers).
fn dead_letter_json(r: &StoredRecord, partition: u32, values: &[String; 6]) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut headers = serde_json::Map::new();
    for (k, v) in r.headers() {
        let v = v.map(|v| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()));
        headers.insert(
            String::from_utf8_lossy(k).into_owned(),
            v.unwrap_or(serde_json::Value::Null),
        );
    }
    for (k, v) in DLQ_HEADERS.iter().zip(values) {
        headers.insert((*k).to_owned(), serde_json::Value::String(v.clone()));
    }
    let mut record = serde_json::json!({
        "partition": partition,
        "timestamp_ms": r.timestamp_ms,
        "headers": headers,
    });
    if let Some(k) = r.key.as_deref() {
        record["key_b64"] = b64(k).into();
    }
    if let Some(v) = r.value.as_deref() {
        match serde_json::from_slice::<serde_json::Value>(v)
            .ok()
            .filter(|_| r.value_is_json())
        {
            Some(json) => record["value"] = json,
            None => record["value_b64"] = b64(v).into(),
        }
    }
    record
}

/// A record handed out under a lease.
#[derive(Debug, Clone)]
pub struct LeasedRecord {
    pub topic: String,
    pub partition: u32,
    pub record: StoredRecord,
    /// The record's frame as it lies in the segment (a view of the mapping, not a copy).
    pub frame: Bytes,
    pub delivery: u32,
    pub expires_ms: i64,
}

impl LeasedRecord {
    /// The lease token for this delivery of the record (what [`Token::encode`] gives),
    /// written where it goes rather than built for each record.
    pub fn token(&self) -> impl std::fmt::Display + '_ {
        super::queue::TokenOf {
            topic: &self.topic,
            partition: self.partition,
            offset: self.record.offset,
            delivery: self.delivery,
        }
    }
}

/// What a lease request got.
#[derive(Debug, Clone, Default)]
pub struct LeaseAnswer {
    pub records: Vec<LeasedRecord>,
    /// The records' frames, in the same order, in as few pieces as they lie in the
    /// mapping (what the binary answer sends).
    pub frames: Vec<Bytes>,
    /// The in-flight window (`max_in_flight`) was full: fewer records (or none) than asked.
    pub window_full: bool,
}

/// What a `try_..._now` call of an async caller did.
pub enum Now<T> {
    /// Done at once.
    Done(T),
    /// The group's lock was held by another call: it may be free after a yield.
    Busy,
    /// Not to be done at once (waiting or file work): for the blocking pool.
    Later,
}

/// How often [`at_once`] yields to the runtime while a group's lock is busy.
const BUSY_YIELDS: u32 = 4;

/// Calls `now` until it is done or cannot be done at once, yielding to the runtime while
/// the group's lock is busy (another worker thread is leasing or acking: a few tens of
/// microseconds), at most [`BUSY_YIELDS`] times. `None`: for the blocking pool, which
/// would cost two thread hand-offs.
pub async fn at_once<T>(
    mut now: impl FnMut() -> Result<Now<T>, BrokerError>,
) -> Result<Option<T>, BrokerError> {
    let mut yields = 0;
    loop {
        match now()? {
            Now::Done(done) => return Ok(Some(done)),
            Now::Busy if yields < BUSY_YIELDS => {
                yields += 1;
                tokio::task::yield_now().await;
            }
            Now::Busy | Now::Later => return Ok(None),
        }
    }
}

/// What one round of leasing gives: the records leased, the partitions to watch when there
/// were none (with the offset that would come next), when the next lease expires or release
/// falls due, and what makes the changes durable.
type LeaseRound = (LeaseAnswer, Vec<(Arc<Partition>, u64)>, Option<i64>, Settle);

/// One partition of a queue group, as described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePartitionStats {
    pub topic: String,
    pub partition: u32,
    pub backlog: u64,
    pub in_flight: u64,
    pub oldest_unacked_age_ms: u64,
    pub dead_lettered: u64,
}

/// A queue group, as `GET /v1/groups/{group}` shows it.
#[derive(Debug, Clone)]
pub struct QueueDescription {
    pub name: String,
    pub settings: QueueSettings,
    pub partitions: Vec<QueuePartitionStats>,
    /// The in-flight window is full now.
    pub window_full: bool,
}

/// Headers of a dead-lettered record, besides its own.
pub const DLQ_HEADERS: [&str; 6] = [
    "dlq.group",
    "dlq.topic",
    "dlq.partition",
    "dlq.offset",
    "dlq.deliveries",
    "dlq.reason",
];

impl Broker {
    /// Creates a queue group (`true`), or finds it with the same settings (`false`). Its
    /// topics must exist; a missing dead-letter topic is created as produce would create it.
    /// A group with members or committed offsets of that name: `GroupExists`. Blocks.
    pub fn create_queue_group(
        &self,
        group: &str,
        settings: QueueSettings,
    ) -> Result<bool, BrokerError> {
        super::validate_name(group)?;
        settings.validate()?;
        if self.members.get(group).is_some()
            || self.groups.exists(group)
            || self.has_kafka_members(group)
        {
            return Err(BrokerError::GroupExists(group.to_owned()));
        }
        for t in &settings.topics {
            self.topic(t)?;
        }
        if let Some(dlq) = &settings.dead_letter_topic {
            self.topic_for_produce(dlq, [])?;
        }
        self.queues.create(group, settings)
    }

    /// A queue group called `group`, or `GroupNotFound`.
    pub fn queue_group(&self, group: &str) -> Result<Arc<QueueGroup>, BrokerError> {
        super::validate_name(group)?;
        if let Some(g) = self.queues.get(group) {
            return Ok(g);
        }
        if self.queues.in_cluster(group).is_some() {
            // Its journal's leader coordinates it: this node does not (or not yet).
            return Err(BrokerError::NotCoordinator(group.to_owned()));
        }
        if self.members.get(group).is_some()
            || self.groups.exists(group)
            || self.has_kafka_members(group)
        {
            return Err(BrokerError::WrongGroupType {
                group: group.to_owned(),
                is: "a group with members (or committed offsets)",
            });
        }
        Err(BrokerError::GroupNotFound(group.to_owned()))
    }

    /// Whether `group` names a queue group.
    pub fn is_queue_group(&self, group: &str) -> bool {
        self.queues.get(group).is_some() || self.queues.in_cluster(group).is_some()
    }

    /// The queue groups (in a cluster: those it has, and those this node coordinates).
    pub fn queue_groups(&self) -> &super::queues::QueueGroups {
        &self.queues
    }

    /// Leases up to `max` records: first those due for another delivery, then new ones,
    /// within the in-flight window. When there are none and `wait` allows, waits for an
    /// append, a release, an expiry or a change, and tries once more. Each lease (and its
    /// delivery count) is journalled before the answer.
    pub async fn lease(
        self: &Arc<Self>,
        group: &str,
        max: usize,
        wait: Option<Wait>,
    ) -> Result<LeaseAnswer, BrokerError> {
        let g = self.queue_group(group)?;
        let deadline = wait
            .as_ref()
            .map(|w| tokio::time::Instant::now() + w.timeout);
        let mut permit = None;
        loop {
            let mut changes = g.subscribe();
            // Leased here when that takes no waiting (see `Broker::try_lease_now`): cheaper
            // than the hand-off to the blocking pool.
            let (answer, watched, next_due, settle) =
                match at_once(|| self.try_lease_now(&g, max)).await? {
                    Some(done) => done,
                    None => {
                        let (broker, g2) = (Arc::clone(self), Arc::clone(&g));
                        blocking(move || broker.lease_once(&g2, max)).await?
                    }
                };
            // In a cluster: the leases (their delivery counts) are on every in-sync replica
            // of the journal before the answer.
            settle.replicated().await?;
            let (Some(w), Some(deadline)) = (wait.as_ref(), deadline) else {
                return Ok(answer);
            };
            if !answer.records.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            if permit.is_none() {
                permit = Some(w.permit()?);
            }
            let mut stop = w.stop.clone();
            let due = next_due.map_or(deadline, |at| {
                let ms = at.saturating_sub(now_ms()).max(1) as u64;
                deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(ms))
            });
            tokio::select! {
                _ = super::partition::any_grows(watched) => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.wait_for(|s| *s) => return Ok(answer),
            }
        }
    }

    /// One round of [`Broker::lease`], on the blocking pool: the records leased, the
    /// partitions to watch when there were none (with the offset that would come next), and
    /// when the next lease expires or release falls due.
    fn lease_once(&self, g: &QueueGroup, max: usize) -> Result<LeaseRound, BrokerError> {
        self.lease_locked(g, g.lock(), None, max, now_ms())
    }

    /// [`Broker::lease_once`] at once, when that takes neither waiting nor file work:
    /// nothing due for dead-lettering, the group's lock free, every segment the lease may
    /// read mapped now (`PartitionLog::is_mapped_from`), and its journal ready to take the
    /// leases without a flush ([`QueueInner::writer_now`]). `None` otherwise, having changed
    /// nothing. For an async caller (it saves two thread hand-offs).
    fn try_lease_now(&self, g: &QueueGroup, max: usize) -> Result<Now<LeaseRound>, BrokerError> {
        let Some(inner) = g.try_lock() else {
            return Ok(Now::Busy);
        };
        let s = &g.settings;
        let now = now_ms();
        if !inner.state.due_dead(now, s.max_deliveries).is_empty() {
            return Ok(Now::Later);
        }
        // Every record a lease may read (a redelivery or a new one) is at or above its
        // partition's floor: read here only when no segment from there needs reopening.
        let partitions = self.existing_partitions_of(&s.topics.iter().cloned().collect());
        for tp in &partitions {
            let Ok(p) = self.partition(tp) else {
                continue;
            };
            let log = p.log();
            let floor = inner.state.queue(tp).map_or(0, |q| q.floor);
            if !log.is_mapped_from(floor.max(log.start_offset())) {
                return Ok(Now::Later);
            }
        }
        // At most a skip per partition and an event per record.
        let events = max.saturating_add(partitions.len()) as u64;
        let longest = s.topics.iter().map(String::len).max().unwrap_or(0);
        let journal = inner.journal();
        let Some(writer) = inner.writer_now(&journal, events, longest) else {
            return Ok(Now::Later);
        };
        self.lease_locked(g, inner, Some(writer), max, now)
            .map(Now::Done)
    }

    /// [`Broker::lease_once`] under the group's lock at `now`; through the journal's `writer`
    /// when given.
    fn lease_locked(
        &self,
        g: &QueueGroup,
        mut inner: std::sync::MutexGuard<'_, QueueInner>,
        mut writer: Option<crate::log::AppendGuard<'_>>,
        max: usize,
        now: i64,
    ) -> Result<LeaseRound, BrokerError> {
        inner.ready()?;
        let settled = self.settle_due(g, &mut inner, now);
        // What was dead-lettered is journalled, whatever happened next.
        inner.commit_staged_with(writer.as_mut())?;
        if let Err(e) = settled {
            // Retried by the next tick; leasing goes on meanwhile.
            tracing::warn!(group = g.name(), error = %e, "dead-lettering failed; it will be tried again");
        }
        let s = &g.settings;
        let room = s.max_in_flight.saturating_sub(inner.state.in_flight(now)) as usize;
        let want = max.min(room);
        let window_full = want < max;
        if window_full {
            g.counters.window_full.fetch_add(1, Ordering::Relaxed);
        }
        let mut picked: Vec<(TopicPartition, (StoredRecord, Bytes), u32)> = Vec::new();
        let mut frames = Vec::new();
        // Records due for another delivery first.
        for (tp, o, d) in inner.state.redeliverable(now, s.max_deliveries, want) {
            let Some(r) = self.read_one(&tp, o)? else {
                continue;
            };
            frames.push(r.1.clone());
            if let Some(Rec::Leased { .. }) = inner.state.queue(&tp).and_then(|q| q.recs.get(&o)) {
                g.counters.expired_leases.fetch_add(1, Ordering::Relaxed);
            }
            picked.push((tp, r, d));
        }
        // Then new ones, from each partition in turn.
        let mut watched = Vec::new();
        let mut skips = Vec::new();
        let partitions = self.existing_partitions_of(&s.topics.iter().cloned().collect());
        let n = partitions.len().max(1);
        let start = g.next_round(n);
        for tp in partitions.iter().cycle().skip(start).take(partitions.len()) {
            let Ok(p) = self.partition(tp) else {
                continue;
            };
            let log = p.log();
            let (floor, next) = inner
                .state
                .queue(tp)
                .map_or((log.start_offset(), log.start_offset()), |q| {
                    (q.floor, q.next)
                });
            if floor < log.start_offset() {
                // Retention removed records before they were settled: skip them.
                skips.push(Event::Skip {
                    t: tp.0.clone(),
                    p: tp.1,
                    to: log.start_offset(),
                });
            }
            let from = next.max(log.start_offset());
            if picked.len() >= want || from > log.end_offset() {
                continue;
            }
            let batch = p.read(
                from,
                super::ReadLimits {
                    max_records: want - picked.len(),
                    max_bytes: 16 << 20,
                },
            )?;
            if batch.record_count == 0 {
                watched.push((p, from));
                continue;
            }
            let read = with_frames(&batch);
            if read.len() == batch.record_count {
                frames.extend(batch.chunks.iter().cloned());
            } else {
                frames.extend(read.iter().map(|(_, f)| f.clone()));
            }
            for r in read {
                picked.push((tp.clone(), r, 1));
            }
        }
        let exp = now.saturating_add(s.lease_ms as i64);
        let mut events = skips;
        events.extend(picked.iter().map(|(tp, (r, _), d)| Event::Lease {
            t: tp.0.clone(),
            p: tp.1,
            o: r.offset,
            d: *d,
            exp,
        }));
        inner.commit_with(events, writer.as_mut())?;
        drop(writer);
        let settle = inner.settle();
        let first = picked.iter().filter(|(_, _, d)| *d == 1).count() as u64;
        g.counters
            .first_deliveries
            .fetch_add(first, Ordering::Relaxed);
        g.counters
            .redeliveries
            .fetch_add(picked.len() as u64 - first, Ordering::Relaxed);
        let records = picked
            .into_iter()
            .map(
                |((topic, partition), (record, frame), delivery)| LeasedRecord {
                    topic,
                    partition,
                    record,
                    frame,
                    delivery,
                    expires_ms: exp,
                },
            )
            .collect();
        let next_due = inner.state.next_due(now);
        drop(inner);
        settle.flush()?;
        Ok((
            LeaseAnswer {
                records,
                frames,
                window_full,
            },
            watched,
            next_due,
            settle,
        ))
    }

    fn read_one(
        &self,
        tp: &TopicPartition,
        offset: u64,
    ) -> Result<Option<(StoredRecord, Bytes)>, BrokerError> {
        let Ok(p) = self.partition(tp) else {
            return Ok(None);
        };
        if offset < p.log().start_offset() || offset >= p.log().end_offset() {
            return Ok(None);
        }
        let batch = p.read(
            offset,
            super::ReadLimits {
                max_records: 1,
                max_bytes: 1,
            },
        )?;
        let first = with_frames(&batch)
            .into_iter()
            .next()
            .filter(|(r, _)| r.offset == offset);
        Ok(first)
    }

    /// Dead-letters the records whose last allowed delivery failed (released, or lease
    /// expired), under the group's lock. Blocks.
    fn settle_due(
        &self,
        g: &QueueGroup,
        inner: &mut QueueInner,
        now: i64,
    ) -> Result<(), BrokerError> {
        let max = g.settings.max_deliveries;
        for (tp, o, d) in inner.state.due_dead(now, max) {
            if let Some(Rec::Leased { .. }) = inner.state.queue(&tp).and_then(|q| q.recs.get(&o)) {
                g.counters.expired_leases.fetch_add(1, Ordering::Relaxed);
            }
            self.dead_letter(g, inner, &tp, o, d, DeadReason::MaxDeliveries)?;
        }
        Ok(())
    }

    /// Appends the record to the dead-letter topic (once: under an idempotency key naming
    /// the group and the record, so that a retry after a crash is answered from the first
    /// copy), then journals it settled. Without a dead-letter topic the record is dropped.
    fn dead_letter(
        &self,
        g: &QueueGroup,
        inner: &mut QueueInner,
        tp: &TopicPartition,
        offset: u64,
        deliveries: u32,
        reason: DeadReason,
    ) -> Result<(), BrokerError> {
        if let (Some(dlq), Some((r, _))) = (
            g.settings.dead_letter_topic.clone(),
            self.read_one(tp, offset)?,
        ) {
            let topic = self.topic_for_produce(&dlq, [])?;
            let partition = tp.1 % topic.partition_count().max(1);
            let key = format!(
                "dlq-{:032x}",
                u128::from_le_bytes(request_digest(&[
                    g.name().as_bytes(),
                    tp.0.as_bytes(),
                    &tp.1.to_le_bytes(),
                    &offset.to_le_bytes()
                ]))
            );
            let values = [
                g.name().to_owned(),
                tp.0.clone(),
                tp.1.to_string(),
                offset.to_string(),
                deliveries.to_string(),
                reason.as_str().to_owned(),
            ];
            if let Some(sink) = self.dead_letters.get() {
                // In a cluster: to the dead-letter partition's leader.
                let record = dead_letter_json(&r, partition, &values);
                sink.append(&dlq, record, &key)?;
                return self.dead_lettered(g, inner, tp, offset, reason);
            }
            let digest = request_digest(&[key.as_bytes()]);
            let now = now_ms();
            let claim = topic.idempotency().claim(key.as_bytes(), digest, 1, now)?;
            match claim {
                Claim::Replay { .. } => {}
                Claim::Append(pending) => {
                    let mut headers: Vec<Header<'_>> = r.headers().collect();
                    headers.extend(
                        DLQ_HEADERS
                            .iter()
                            .zip(&values)
                            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
                    );
                    let record = Record {
                        key: r.key.as_deref(),
                        value: r.value.as_deref(),
                        headers: &headers,
                        timestamp_ms: r.timestamp_ms,
                        value_is_json: r.value_is_json(),
                        batch: Some(request_head(key.as_bytes(), digest, 1, 1, None, now)),
                    };
                    let appends =
                        self.append(&topic, &BTreeMap::from([(partition, vec![record])]))?;
                    pending.complete(
                        appends
                            .iter()
                            .map(|a| Piece {
                                partition: a.partition,
                                first_offset: a.first_offset,
                                count: 1,
                                positions: None,
                            })
                            .collect(),
                        now,
                    );
                }
            }
        }
        self.dead_lettered(g, inner, tp, offset, reason)
    }

    /// Stages the record settled as dead.
    fn dead_lettered(
        &self,
        g: &QueueGroup,
        inner: &mut QueueInner,
        tp: &TopicPartition,
        offset: u64,
        reason: DeadReason,
    ) -> Result<(), BrokerError> {
        inner.stage(Event::Dead {
            t: tp.0.clone(),
            p: tp.1,
            o: offset,
            reason,
        });
        g.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies acks in order: each acts on its record if its token is the record's current
    /// delivery (else `lease_lost`). What changed is journalled before the answer. Blocks.
    pub fn ack(
        &self,
        group: &str,
        acks: &[(Token, AckKind)],
    ) -> Result<(Vec<AckOutcome>, Settle), BrokerError> {
        let g = self.queue_group(group)?;
        let inner = g.lock();
        self.ack_locked(&g, inner, None, acks)
    }

    /// [`Broker::ack`] at once, when that takes neither waiting nor file work: accepts and
    /// extends only (nothing can be dead-lettered), the group's lock free, and its journal
    /// ready to take them without a flush ([`QueueInner::writer_now`]). `None`
    /// otherwise, having changed nothing: the caller then calls [`Broker::ack`] on the
    /// blocking pool. For an async caller (it saves two thread hand-offs).
    pub fn try_ack_now(
        &self,
        group: &str,
        acks: &[(Token, AckKind)],
    ) -> Result<Now<(Vec<AckOutcome>, Settle)>, BrokerError> {
        if !acks
            .iter()
            .all(|(_, k)| matches!(k, AckKind::Accept | AckKind::Extend { .. }))
        {
            return Ok(Now::Later);
        }
        let g = self.queue_group(group)?;
        let Some(inner) = g.try_lock() else {
            return Ok(Now::Busy);
        };
        let longest = acks.iter().map(|(t, _)| t.topic.len()).max().unwrap_or(0);
        let journal = inner.journal();
        let Some(writer) = inner.writer_now(&journal, acks.len() as u64, longest) else {
            return Ok(Now::Later);
        };
        self.ack_locked(&g, inner, Some(writer), acks)
            .map(Now::Done)
    }

    /// [`Broker::ack`] under the group's lock; through the journal's `writer` when given.
    fn ack_locked(
        &self,
        g: &QueueGroup,
        mut inner: std::sync::MutexGuard<'_, QueueInner>,
        mut writer: Option<crate::log::AppendGuard<'_>>,
        acks: &[(Token, AckKind)],
    ) -> Result<(Vec<AckOutcome>, Settle), BrokerError> {
        inner.ready()?;
        let now = now_ms();
        let max = g.settings.max_deliveries;
        let mut results = Vec::with_capacity(acks.len());
        // Whether a waiting lease request may now get something (a record released, or
        // room in a full window).
        let mut released = false;
        let mut failed = None;
        for (token, kind) in acks {
            let (outcome, event, dead) = inner.state.ack(token, *kind, now, max);
            if let Some(e) = event {
                released |= matches!(e, Event::Release { .. });
                inner.stage(e);
            }
            let tp = (token.topic.clone(), token.partition);
            if let Some(reason) = dead {
                let dead =
                    self.dead_letter(g, &mut inner, &tp, token.offset, token.delivery, reason);
                if let Err(e) = dead {
                    // The acks before this one are journalled below; this one and the
                    // rest are not applied: the caller retries them.
                    failed = Some(e);
                    break;
                }
            }
            released |= matches!(outcome, AckOutcome::Ok { repeat: false })
                && !matches!(kind, AckKind::Extend { .. });
            let c = &g.counters;
            let counter = match (outcome, kind) {
                (AckOutcome::LeaseLost, _) => Some(&c.lost_leases),
                (AckOutcome::Ok { repeat: true }, _) => None,
                (AckOutcome::Ok { .. }, AckKind::Accept) => Some(&c.accepts),
                (AckOutcome::Ok { .. }, AckKind::Release { .. }) => Some(&c.releases),
                (AckOutcome::Ok { .. }, AckKind::Reject) => Some(&c.rejects),
                (AckOutcome::Ok { .. }, AckKind::Extend { .. }) => Some(&c.extends),
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            results.push(outcome);
        }
        inner.commit_staged_with(writer.as_mut())?;
        drop(writer);
        if let Some(e) = failed {
            return Err(e);
        }
        let settle = inner.settle();
        drop(inner);
        settle.flush()?;
        if released {
            g.notify();
        }
        Ok((results, settle))
    }

    /// A queue group's backlog, in-flight records, oldest unacked age and dead letters,
    /// per partition. Blocks (reads the oldest records' timestamps).
    pub fn describe_queue_group(&self, group: &str) -> Result<QueueDescription, BrokerError> {
        let g = self.queue_group(group)?;
        let inner = g.lock();
        let now = now_ms();
        let s = &g.settings;
        let mut partitions = Vec::new();
        for tp in self.existing_partitions_of(&s.topics.iter().cloned().collect()) {
            let Ok(p) = self.partition(&tp) else {
                continue;
            };
            let log = p.log();
            let (end, start) = (log.end_offset(), log.start_offset());
            let empty = super::queue::PartitionQueue::starting_at(start);
            let q = inner.state.queue(&tp).unwrap_or(&empty);
            let oldest = q.oldest_unsettled(end).max(start);
            let age = match self.read_one(&tp, oldest)? {
                Some((r, _)) if oldest < end => now.saturating_sub(r.timestamp_ms).max(0) as u64,
                _ => 0,
            };
            partitions.push(QueuePartitionStats {
                backlog: q.backlog(end, now),
                in_flight: q.in_flight(now),
                oldest_unacked_age_ms: age,
                dead_lettered: q.dead_lettered,
                topic: tp.0,
                partition: tp.1,
            });
        }
        let window_full = inner.state.in_flight(now) >= s.max_in_flight;
        Ok(QueueDescription {
            name: group.to_owned(),
            settings: s.clone(),
            partitions,
            window_full,
        })
    }

    /// Dead-letters records whose last lease expired, in every queue group, and wakes the
    /// lease requests waiting for expired leases. For the maintenance task. Blocks.
    pub fn tick_queue_groups(&self) -> Result<(), BrokerError> {
        let mut first_error = None;
        for g in self.queues.all() {
            // One group's failure does not keep the others from their tick.
            if let Err(e) = self.tick_queue_group(&g) {
                tracing::warn!(group = g.name(), error = %e, "queue group maintenance failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn tick_queue_group(&self, g: &QueueGroup) -> Result<(), BrokerError> {
        let mut inner = g.lock();
        // In a cluster, a group whose journal this node may not write now waits: its next
        // leader (or the in-sync replicas' return) settles what is due.
        if inner.ready().is_err() {
            return Ok(());
        }
        inner.cut_committed();
        let now = now_ms();
        let settled = self.settle_due(g, &mut inner, now);
        let changed = inner.commit_staged()?;
        let settle = changed.then(|| inner.settle());
        let expired = inner
            .state
            .next_due(now - 1_000)
            .is_some_and(|at| at <= now);
        drop(inner);
        // Nobody waits for this answer: flushed with `fsync`; replicated in the background.
        if let Some(settle) = settle {
            settle.flush()?;
        }
        if changed || expired {
            g.notify();
        }
        settled
    }

    /// Forgets a deleted topic in every queue group: its partitions' queues go, so that a
    /// topic created again under the name starts afresh. Blocks.
    pub(super) fn forget_queue_topic(&self, topic: &str) -> Result<(), BrokerError> {
        for g in self.queues.all() {
            if g.settings.topics.iter().any(|t| t == topic) {
                g.lock().commit([Event::Forget {
                    t: topic.to_owned(),
                }])?;
            }
        }
        Ok(())
    }

    /// Flushes every queue group's journal (with the data's flushes). Blocks.
    pub fn flush_queue_groups(&self) -> Result<(), BrokerError> {
        for g in self.queues.all() {
            // The msync runs without the group's lock: leases and acks go on meanwhile.
            let journal = g.lock().journal();
            journal.log().flush()?;
        }
        // In a cluster, the journals this node follows too.
        for journal in self.queues.cluster_journals() {
            journal.log().flush()?;
        }
        Ok(())
    }
}

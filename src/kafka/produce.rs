//! Produce and InitProducerId: records appended as mapq records, and Kafka's idempotent
//! producer (per-partition sequence checks, duplicates answered with their first offsets).
//!
//! A producer's id, epoch and first sequence are stored with each of its batches (format
//! v2's producer fields), so the sequence state is rebuilt from the log after a restart:
//! on the first idempotent produce to a partition, its batch heads of the last
//! [`PRODUCER_EXPIRY_MS`] are scanned. Producer ids are handed out in blocks recorded durably
//! in `@kafka/producer_ids`, so no id is ever given twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
use kafka_protocol::ResponseError;

use super::records::{self, IncomingBatch};
use super::{kafka_error, Ctx, Outcome};
use crate::auth::Permission;
use crate::broker::{Broker, BrokerError, Partition, PartitionAppend, Topic};
use crate::config::Durability;
use crate::log::format::{BatchHead, ProducerStamp};

/// How long a producer's sequence state is kept after its last batch (Kafka's
/// `producer.id.expiration.ms`): a producer silent for longer starts afresh.
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Batches per producer remembered to answer a retry (Kafka keeps five: a producer has at
/// most five in flight).
const REMEMBERED_BATCHES: usize = 5;
/// Producer ids reserved per write of `@kafka/producer_ids`.
const ID_BLOCK: i64 = 1000;
const KAFKA_DIR: &str = "@kafka";

/// Producer ids and the sequence state of every partition idempotent producers wrote to.
#[derive(Default)]
pub struct Producers {
    /// The next id to give and the end of the reserved block.
    ids: Mutex<(i64, i64)>,
    partitions: Mutex<HashMap<(String, u32), SharedProducers>>,
}

type SharedProducers = Arc<Mutex<PartitionProducers>>;

/// The producers of one partition.
#[derive(Default)]
struct PartitionProducers {
    /// The partition this state is of: a topic deleted and created again starts afresh.
    of: Weak<Partition>,
    loaded: bool,
    /// The cluster leadership the state was loaded under (0 outside clusters).
    generation: u64,
    by_id: HashMap<i64, ProducerEntry>,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    /// (first sequence, last sequence, first offset) of the last batches, oldest first.
    batches: VecDeque<(i32, i32, u64)>,
}

/// What the sequence check says of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    Append,
    /// A retry of a batch already appended at this offset.
    Duplicate(u64),
}

impl ProducerEntry {
    fn remember(&mut self, stamp: ProducerStamp, count: u32, first_offset: u64) {
        if stamp.epoch != self.epoch {
            self.epoch = stamp.epoch;
            self.batches.clear();
        }
        let last = records::seq_add(stamp.base_sequence, count.saturating_sub(1));
        self.batches
            .push_back((stamp.base_sequence, last, first_offset));
        while self.batches.len() > REMEMBERED_BATCHES {
            self.batches.pop_front();
        }
    }
}

impl PartitionProducers {
    fn check(&self, stamp: ProducerStamp, count: u32) -> Result<Sequence, ResponseError> {
        let Some(e) = self.by_id.get(&stamp.id) else {
            // Unknown (new, or silent past the expiry): its sequence starts here.
            return Ok(Sequence::Append);
        };
        if stamp.epoch < e.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if stamp.epoch > e.epoch {
            return if stamp.base_sequence == 0 {
                Ok(Sequence::Append)
            } else {
                Err(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        let last = records::seq_add(stamp.base_sequence, count.saturating_sub(1));
        if let Some(&(_, _, offset)) = e
            .batches
            .iter()
            .find(|&&(first, l, _)| first == stamp.base_sequence && l == last)
        {
            return Ok(Sequence::Duplicate(offset));
        }
        match e.batches.back() {
            Some(&(_, l, _)) if stamp.base_sequence != records::seq_add(l, 1) => {
                Err(ResponseError::OutOfOrderSequenceNumber)
            }
            _ => Ok(Sequence::Append),
        }
    }
}

impl Producers {
    /// A new producer id, never given before by this data directory. Blocks (a new block
    /// of ids is written durably).
    fn next_id(&self, broker: &Broker) -> Result<i64, BrokerError> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 >= ids.1 {
            let dir = broker.config().data_dir.join(KAFKA_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| BrokerError::io(&dir, e))?;
            let path = dir.join("producer_ids");
            let start = match std::fs::read_to_string(&path) {
                Ok(text) => text.trim().parse::<i64>().map_err(|_| {
                    BrokerError::Corrupt(format!("{}: not a number", path.display()))
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(BrokerError::io(&path, e)),
            };
            let end = start + ID_BLOCK;
            crate::broker::write_durably(&path, format!("{end}\n").as_bytes())?;
            *ids = (start, end);
        }
        let id = ids.0;
        ids.0 += 1;
        // In a cluster each node gives ids of its own: its broker id in the high half.
        if broker.config().cluster {
            let node = crate::cluster::kafka_broker_id(&broker.config().node_id);
            return Ok((i64::from(node) << 32) | (id & 0xffff_ffff));
        }
        Ok(id)
    }

    /// The sequence state of `p`, loaded from its log on first use, and again when the
    /// cluster leadership it was loaded under (`generation`; 0 outside clusters) changed:
    /// other leaders appended meanwhile. Blocks.
    fn of(
        &self,
        topic: &str,
        p: &Arc<Partition>,
        generation: u64,
    ) -> Result<SharedProducers, BrokerError> {
        let state = Arc::clone(
            self.partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((topic.to_owned(), p.id()))
                .or_default(),
        );
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let same = s.of.upgrade().is_some_and(|cur| Arc::ptr_eq(&cur, p));
            if !same || !s.loaded || s.generation != generation {
                let mut fresh = PartitionProducers {
                    of: Arc::downgrade(p),
                    loaded: false,
                    generation,
                    by_id: HashMap::new(),
                };
                let since = crate::log::now_ms() - PRODUCER_EXPIRY_MS;
                p.log().scan_batch_heads(since, |first_offset, head| {
                    if let Some(stamp) = head.producer {
                        fresh.by_id.entry(stamp.id).or_default().remember(
                            stamp,
                            head.record_count,
                            first_offset,
                        );
                    }
                })?;
                fresh.loaded = true;
                *s = fresh;
            }
        }
        Ok(state)
    }
}

/// How one partition's records went.
struct Appended {
    error: Result<u64, ResponseError>,
    /// The append to wait on for durability and replication (for a duplicate, the batch
    /// stored before), with the leadership it was made under in a cluster.
    wait: Option<(Arc<Partition>, PartitionAppend, Option<u64>)>,
}

impl Ctx<'_> {
    pub(super) async fn produce(
        &self,
        req: ProduceRequest,
        out: &mut Outcome,
    ) -> Option<ProduceResponse> {
        let acks = req.acks;
        let refuse_all = if !(-1..=1).contains(&acks) {
            Some(ResponseError::InvalidRequiredAcks)
        } else if req
            .transactional_id
            .as_ref()
            .is_some_and(|t| !t.0.is_empty())
        {
            // Transactions are not offered (their APIs are not advertised).
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        } else {
            None
        };
        let now = crate::log::now_ms();
        // The request's batches may expand to what one HTTP request may carry, no more.
        let budget = Arc::new(records::Budget::new(
            self.broker().config().max_request_bytes as usize,
        ));
        let mut response = ProduceResponse::default();
        let mut waits = Vec::new();
        for topic in req.topic_data {
            let name = topic.name.0.to_string();
            let mut t_out = TopicProduceResponse::default();
            t_out.name = topic.name.clone();
            let found = match refuse_all {
                Some(e) => Err(e),
                None if !self.principal.may(Permission::Produce, &name) => {
                    Err(ResponseError::TopicAuthorizationFailed)
                }
                None => {
                    let broker = Arc::clone(self.broker());
                    let n = name.clone();
                    let ids: Vec<u32> = topic
                        .partition_data
                        .iter()
                        .filter_map(|p| u32::try_from(p.index).ok())
                        .collect();
                    crate::broker::blocking(move || broker.topic_for_produce(&n, ids))
                        .await
                        .map_err(|e| kafka_error(&e))
                }
            };
            for part in topic.partition_data {
                let mut p_out = PartitionProduceResponse::default();
                p_out.index = part.index;
                p_out.base_offset = -1;
                p_out.log_append_time_ms = -1;
                p_out.log_start_offset = -1;
                let result = match &found {
                    Err(e) => Appended {
                        error: Err(*e),
                        wait: None,
                    },
                    Ok(t) => {
                        self.produce_partition(t, part.index, part.records, now, &budget)
                            .await
                    }
                };
                match result.error {
                    Ok(offset) => {
                        p_out.base_offset = offset as i64;
                        if let Ok(t) = &found {
                            if let Ok(p) = t.partition(part.index as u32) {
                                p_out.log_start_offset = p.log().start_offset() as i64;
                            }
                        }
                    }
                    Err(e) => p_out.error_code = out.error(e),
                }
                if let Some(w) = result.wait {
                    waits.push((w, t_out.partition_responses.len(), response.responses.len()));
                }
                t_out.partition_responses.push(p_out);
            }
            response.responses.push(t_out);
        }
        if acks == 0 {
            return None;
        }
        // acks=all waits for what the server's durability promises (fsync: on disk);
        // acks=1 for the leader's log, the mapping (it survives a crash of the process).
        let durability = self.broker().config().default_durability;
        if acks == -1 && durability == Durability::Fsync {
            let _turn = self.kafka.state.fsync_producers().acquire().await;
            for ((p, a, _), pi, ti) in &waits {
                if let Err(e) = self.broker().wait_durable(p, a.end_offset()).await {
                    tracing::warn!(error = %e, "Kafka produce: records appended but not made durable");
                    let code = out.error(ResponseError::KafkaStorageError);
                    response.responses[*ti].partition_responses[*pi].error_code = code;
                }
            }
        }
        // In a cluster, acks=all also waits until every in-sync replica holds them.
        if let (Some(c), -1) = (self.kafka.state.cluster(), acks) {
            for ((_, a, generation), pi, ti) in &waits {
                let r_out = &mut response.responses[*ti];
                if r_out.partition_responses[*pi].error_code != 0 {
                    continue;
                }
                let generations = HashMap::from([(a.partition, generation.unwrap_or(u64::MAX))]);
                let committed = c
                    .wait_committed(
                        &r_out.name.0,
                        std::slice::from_ref(a),
                        durability,
                        &generations,
                    )
                    .await;
                if let Err(refusal) = committed {
                    let e = match refusal {
                        crate::cluster::Refusal::NotEnoughReplicas { .. } => {
                            ResponseError::NotEnoughReplicasAfterAppend
                        }
                        _ => ResponseError::NotLeaderOrFollower,
                    };
                    r_out.partition_responses[*pi].error_code = out.error(e);
                }
            }
        }
        Some(response)
    }

    async fn produce_partition(
        &self,
        topic: &Arc<Topic>,
        index: i32,
        records: Option<bytes::Bytes>,
        now: i64,
        budget: &Arc<records::Budget>,
    ) -> Appended {
        let fail = |e: ResponseError| Appended {
            error: Err(e),
            wait: None,
        };
        let Ok(p) = u32::try_from(index)
            .map_err(|_| ())
            .and_then(|i| topic.partition(i).map(Arc::clone).map_err(|_| ()))
        else {
            return fail(ResponseError::UnknownTopicOrPartition);
        };
        // Decompressing and checking CRCs is CPU work: off the async workers.
        let decoded = match records {
            None => None,
            Some(b) => Some(
                {
                    let budget = Arc::clone(budget);
                    tokio::task::spawn_blocking(move || records::decode_produce(b, now, &budget))
                }
                .await
                .unwrap_or_else(|e| Err(records::Refused::Corrupt(e.to_string()))),
            ),
        };
        let batch = match decoded {
            None => return fail(ResponseError::CorruptMessage),
            Some(Err(refused)) => {
                tracing::debug!(peer = %self.peer, client = %self.client_id, %refused, "Kafka produce refused");
                return fail(match refused {
                    records::Refused::TooLarge(_) => ResponseError::MessageTooLarge,
                    records::Refused::Corrupt(_) => ResponseError::CorruptMessage,
                });
            }
            Some(Ok(b)) if b.records.is_empty() => return fail(ResponseError::CorruptMessage),
            Some(Ok(b)) => b,
        };
        if batch.transactional {
            return fail(ResponseError::TransactionalIdAuthorizationFailed);
        }
        // In a cluster, only the leader appends, and only with enough in-sync replicas.
        let generation = match self.kafka.state.cluster() {
            None => None,
            Some(c) => match c.writable(topic.name(), p.id()) {
                Ok((_, generation)) => Some(generation),
                Err((crate::cluster::Refusal::NotEnoughReplicas { .. }, _)) => {
                    return fail(ResponseError::NotEnoughReplicas)
                }
                Err(_) => return fail(ResponseError::NotLeaderOrFollower),
            },
        };
        let broker = Arc::clone(self.broker());
        let topic = Arc::clone(topic);
        let producers = self.kafka.producers_handle();
        let part = Arc::clone(&p);
        let count = batch.records.len() as u64;
        let result = crate::broker::blocking(move || {
            append_batch(&broker, &topic, &part, &batch, &producers, now, generation)
        })
        .await;
        match result {
            Ok(Ok((offset, appended))) => {
                // A retried batch stored before is answered as its first attempt would
                // have been: after the same waits (durability, the in-sync replicas).
                let a = appended.unwrap_or(PartitionAppend {
                    partition: p.id(),
                    first_offset: offset,
                    count,
                    bytes: 0,
                });
                Appended {
                    error: Ok(offset),
                    wait: Some((p, a, generation)),
                }
            }
            Ok(Err(e)) => fail(e),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka produce failed");
                fail(kafka_error(&e))
            }
        }
    }

    pub(super) async fn init_producer_id(
        &self,
        req: InitProducerIdRequest,
        out: &mut Outcome,
    ) -> InitProducerIdResponse {
        let mut r = InitProducerIdResponse::default();
        r.producer_id = ProducerId(-1);
        r.producer_epoch = -1;
        if req
            .transactional_id
            .as_ref()
            .is_some_and(|t| !t.0.is_empty())
        {
            r.error_code = out.error(ResponseError::TransactionalIdAuthorizationFailed);
            return r;
        }
        if !self.principal.holds(Permission::Produce) {
            r.error_code = out.error(ResponseError::ClusterAuthorizationFailed);
            return r;
        }
        // A producer that asks again with its id (KIP-360) gets the next epoch of it.
        if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
            if req.producer_epoch == i16::MAX {
                // Epochs ran out: a new id.
            } else {
                r.producer_id = req.producer_id;
                r.producer_epoch = req.producer_epoch + 1;
                return r;
            }
        }
        let broker = Arc::clone(self.broker());
        let producers = self.kafka.producers_handle();
        match crate::broker::blocking(move || producers.next_id(&broker)).await {
            Ok(id) => {
                r.producer_id = ProducerId(id);
                r.producer_epoch = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand out a Kafka producer id");
                r.error_code = out.error(ResponseError::CoordinatorNotAvailable);
            }
        }
        r
    }
}

/// Appends one partition's batch: an idempotent one after its sequence check, under the
/// partition's producer lock (so no other batch of it lands between check and append).
/// Returns the first offset, and the append (none for a duplicate). Blocks.
fn append_batch(
    broker: &Broker,
    topic: &Topic,
    p: &Arc<Partition>,
    batch: &IncomingBatch,
    producers: &Producers,
    now: i64,
    generation: Option<u64>,
) -> Result<Result<(u64, Option<PartitionAppend>), ResponseError>, BrokerError> {
    let headers = records::header_lists(batch);
    let count = batch.records.len() as u32;
    let append = |head: Option<BatchHead<'_>>| -> Result<PartitionAppend, BrokerError> {
        let recs = records::as_records(batch, &headers, head);
        let by_partition = BTreeMap::from([(p.id(), recs)]);
        let mut appended = broker.append(topic, &by_partition)?;
        Ok(appended.remove(0))
    };
    let Some(stamp) = batch.producer else {
        return match append(None) {
            Ok(a) => Ok(Ok((a.first_offset, Some(a)))),
            Err(e) => Ok(Err(kafka_error(&e))),
        };
    };
    let state = producers.of(topic.name(), p, generation.unwrap_or(0))?;
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    match state.check(stamp, count) {
        Err(e) => Ok(Err(e)),
        Ok(Sequence::Duplicate(offset)) => Ok(Ok((offset, None))),
        Ok(Sequence::Append) => {
            let head = BatchHead {
                record_count: count,
                appended_ms: now,
                producer: Some(stamp),
                ..BatchHead::default()
            };
            match append(Some(head)) {
                Ok(a) => {
                    state
                        .by_id
                        .entry(stamp.id)
                        .or_default()
                        .remember(stamp, count, a.first_offset);
                    Ok(Ok((a.first_offset, Some(a))))
                }
                Err(e) => Ok(Err(kafka_error(&e))),
            }
        }
    }
}

impl super::Kafka {
    fn producers_handle(self: &Arc<Self>) -> ProducersRef {
        ProducersRef(Arc::clone(self))
    }
}

/// The producers of a [`super::Kafka`], to move into a blocking task.
struct ProducersRef(Arc<super::Kafka>);

impl std::ops::Deref for ProducersRef {
    type Target = Producers;
    fn deref(&self) -> &Producers {
        &self.0.producers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(epoch: i16, base_sequence: i32) -> ProducerStamp {
        ProducerStamp {
            id: 9,
            epoch,
            base_sequence,
        }
    }

    #[test]
    fn sequences_follow_on_retries_are_duplicates_and_gaps_are_refused() {
        let mut s = PartitionProducers::default();
        assert_eq!(s.check(stamp(0, 0), 3), Ok(Sequence::Append));
        s.by_id.entry(9).or_default().remember(stamp(0, 0), 3, 100);
        assert_eq!(s.check(stamp(0, 0), 3), Ok(Sequence::Duplicate(100)));
        assert_eq!(s.check(stamp(0, 3), 2), Ok(Sequence::Append));
        assert_eq!(
            s.check(stamp(0, 4), 2),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        s.by_id.entry(9).or_default().remember(stamp(0, 3), 2, 103);
        assert_eq!(s.check(stamp(0, 0), 3), Ok(Sequence::Duplicate(100)));
        assert_eq!(s.check(stamp(0, 3), 2), Ok(Sequence::Duplicate(103)));
        // A new epoch starts at 0; an old one is fenced.
        assert_eq!(s.check(stamp(1, 0), 1), Ok(Sequence::Append));
        assert_eq!(
            s.check(stamp(1, 7), 1),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        s.by_id.entry(9).or_default().remember(stamp(1, 0), 1, 105);
        assert_eq!(
            s.check(stamp(0, 5), 1),
            Err(ResponseError::InvalidProducerEpoch)
        );
    }

    #[test]
    fn sequences_wrap_from_i32_max_to_0_as_kafkas_do() {
        let mut s = PartitionProducers::default();
        s.by_id
            .entry(9)
            .or_default()
            .remember(stamp(0, i32::MAX - 1), 2, 7);
        assert_eq!(s.check(stamp(0, 0), 1), Ok(Sequence::Append));
        assert_eq!(
            s.check(stamp(0, i32::MAX - 1), 2),
            Ok(Sequence::Duplicate(7))
        );
        assert_eq!(
            s.check(stamp(0, 1), 1),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        // A batch across the wrap ends at 1.
        s.by_id.entry(9).or_default().remember(stamp(0, 0), 1, 9);
        s.by_id.entry(9).or_default().remember(stamp(0, 1), 5, 10);
        assert_eq!(s.check(stamp(0, 6), 1), Ok(Sequence::Append));
        assert_eq!(records::seq_add(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut e = ProducerEntry::default();
        for i in 0..7 {
            e.remember(stamp(0, i), 1, i as u64);
        }
        assert_eq!(e.batches.len(), REMEMBERED_BATCHES);
        assert_eq!(e.batches.front(), Some(&(2, 2, 2)));
    }
}

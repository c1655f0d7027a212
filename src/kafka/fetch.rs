//! Fetch (long-poll, byte limits, at least one whole record) and ListOffsets.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::ResponseError;

use super::{kafka_error, records, Ctx, Outcome};
use crate::auth::Permission;
use crate::broker::{Partition, ReadLimits, StartAt};

/// The longest a fetch waits for records, whatever it asks (the HTTP long-poll's bound).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734: the offset of the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;

/// One partition a fetch asked for.
struct Wanted {
    name: String,
    topic: usize,
    slot: usize,
    partition: Arc<Partition>,
    offset: u64,
    max_bytes: usize,
}

impl Ctx<'_> {
    pub(super) async fn fetch(&self, req: FetchRequest, out: &mut Outcome) -> FetchResponse {
        let mut response = FetchResponse::default();
        let mut wanted = Vec::new();
        for (ti, topic) in req.topics.iter().enumerate() {
            let name = topic.topic.0.to_string();
            let mut t_out = FetchableTopicResponse::default();
            t_out.topic = topic.topic.clone();
            let found = if !self.principal.may(Permission::Consume, &name) {
                Err(ResponseError::TopicAuthorizationFailed)
            } else {
                self.broker().topic(&name).map_err(|e| kafka_error(&e))
            };
            for part in &topic.partitions {
                let mut p_out = empty_partition(part.partition);
                let partition = found.as_ref().map_err(|e| *e).and_then(|t| {
                    u32::try_from(part.partition)
                        .ok()
                        .and_then(|i| t.partition(i).ok().map(Arc::clone))
                        .ok_or(ResponseError::UnknownTopicOrPartition)
                });
                // In a cluster, a node that holds no replica of the partition serves none
                // of it: the client asks Metadata again and fetches from a replica.
                let partition = partition.and_then(|p| match self.kafka.state.cluster() {
                    Some(c) if c.holds_no_replica(&name, p.id()) => {
                        Err(ResponseError::NotLeaderOrFollower)
                    }
                    _ => Ok(p),
                });
                match partition {
                    Err(e) => p_out.error_code = out.error(e),
                    Ok(p) => {
                        let log = p.log();
                        let (start, end) = (log.start_offset(), log.end_offset());
                        p_out.high_watermark = p.high_watermark() as i64;
                        p_out.last_stable_offset = p_out.high_watermark;
                        p_out.log_start_offset = start as i64;
                        let offset = part.fetch_offset;
                        if offset < start as i64 || offset > end as i64 {
                            p_out.error_code = out.error(ResponseError::OffsetOutOfRange);
                        } else {
                            wanted.push(Wanted {
                                name: name.clone(),
                                topic: ti,
                                slot: t_out.partitions.len(),
                                partition: p,
                                offset: offset as u64,
                                max_bytes: part.partition_max_bytes.max(0) as usize,
                            });
                        }
                    }
                }
                t_out.partitions.push(p_out);
            }
            response.responses.push(t_out);
        }
        let max_bytes = if self.version >= 3 {
            req.max_bytes.max(0) as usize
        } else {
            usize::MAX
        };
        let min_bytes = req.min_bytes.max(0) as usize;
        let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = self.kafka.state.shutdown_signal();
        let failed = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        loop {
            // The ends before the read: an append that lands after the read, but before the
            // wait begins, still wakes the wait.
            let ends: Vec<u64> = wanted
                .iter()
                .map(|w| w.partition.high_watermark().max(w.offset))
                .collect();
            let read = self.read_all(&wanted, max_bytes).await;
            let total: usize = read.iter().map(|r| r.as_ref().map_or(0, |b| b.len())).sum();
            // As Kafka: answered at once with min_bytes 0, with nothing to wait on, or when
            // a partition has an error; else once min_bytes are there, or at max_wait_ms.
            let done = total >= min_bytes
                || wanted.is_empty()
                || failed
                || read.iter().any(Result::is_err)
                || tokio::time::Instant::now() >= deadline
                || *stop.borrow();
            if done {
                for (w, r) in wanted.iter().zip(read) {
                    let p_out = &mut response.responses[w.topic].partitions[w.slot];
                    match r {
                        Ok(bytes) => {
                            p_out.high_watermark = w.partition.high_watermark() as i64;
                            p_out.last_stable_offset = p_out.high_watermark;
                            if !bytes.is_empty() {
                                p_out.records = Some(bytes.freeze());
                            }
                        }
                        Err(e) => p_out.error_code = out.error(e),
                    }
                }
                return response;
            }
            // Woken by the append itself, not by a timer.
            let watched = wanted
                .iter()
                .zip(&ends)
                .map(|(w, &end)| (Arc::clone(&w.partition), end))
                .collect();
            tokio::select! {
                _ = crate::broker::any_grows(watched) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// Reads every wanted partition within the budgets: at least one record for the first
    /// partition that has one, whatever the limits, as Kafka does.
    async fn read_all(
        &self,
        wanted: &[Wanted],
        max_bytes: usize,
    ) -> Vec<Result<BytesMut, ResponseError>> {
        let jobs: Vec<(Arc<Partition>, u64, usize)> = wanted
            .iter()
            .map(|w| (Arc::clone(&w.partition), w.offset, w.max_bytes))
            .collect();
        let state = self.kafka.state.clone();
        let topics: Vec<String> = wanted.iter().map(|w| w.name.clone()).collect();
        let result = crate::broker::blocking(move || {
            let mut left = max_bytes;
            let mut results = Vec::with_capacity(jobs.len());
            for ((p, offset, part_max), topic) in jobs.into_iter().zip(topics) {
                if left == 0
                    && results
                        .iter()
                        .any(|r: &Result<BytesMut, _>| r.as_ref().is_ok_and(|b| !b.is_empty()))
                {
                    results.push(Ok(BytesMut::new()));
                    continue;
                }
                let limits = ReadLimits {
                    max_records: usize::MAX,
                    max_bytes: part_max.min(left).max(1),
                };
                match p.read(offset, limits) {
                    Ok(batch) => {
                        let mut buf = BytesMut::new();
                        if let Err(why) = records::encode_fetch(&batch, &mut buf) {
                            tracing::warn!(%why, "cannot encode fetched records");
                            results.push(Err(ResponseError::UnknownServerError));
                            continue;
                        }
                        left = left.saturating_sub(buf.len());
                        crate::server::routes::consume::count_read(&state, &topic, p.id(), &batch);
                        results.push(Ok(buf));
                    }
                    Err(e) => results.push(Err(kafka_error(&e))),
                }
            }
            Ok(results)
        })
        .await;
        result.unwrap_or_else(|e| wanted.iter().map(|_| Err(kafka_error(&e))).collect())
    }

    pub(super) async fn list_offsets(
        &self,
        req: ListOffsetsRequest,
        out: &mut Outcome,
    ) -> ListOffsetsResponse {
        let mut response = ListOffsetsResponse::default();
        for topic in req.topics {
            let name = topic.name.0.to_string();
            let mut t_out = ListOffsetsTopicResponse::default();
            t_out.name = topic.name.clone();
            let found = if !self.principal.may(Permission::Consume, &name) {
                Err(ResponseError::TopicAuthorizationFailed)
            } else {
                self.broker().topic(&name).map_err(|e| kafka_error(&e))
            };
            for part in topic.partitions {
                let mut p_out = ListOffsetsPartitionResponse::default();
                p_out.partition_index = part.partition_index;
                p_out.timestamp = -1;
                p_out.offset = -1;
                let partition = found.as_ref().map_err(|e| *e).and_then(|t| {
                    u32::try_from(part.partition_index)
                        .ok()
                        .and_then(|i| t.partition(i).ok().map(Arc::clone))
                        .ok_or(ResponseError::UnknownTopicOrPartition)
                });
                let at = match part.timestamp {
                    LATEST => Some(StartAt::Latest),
                    EARLIEST => Some(StartAt::Earliest),
                    MAX_TIMESTAMP => None,
                    t if t >= 0 => Some(StartAt::Timestamp(t)),
                    _ => None,
                };
                match (partition, at) {
                    (Err(e), _) => p_out.error_code = out.error(e),
                    (Ok(_), None) => {
                        p_out.error_code = out.error(ResponseError::UnsupportedVersion)
                    }
                    (Ok(p), Some(at)) => {
                        let found = crate::broker::blocking(move || {
                            let offset = p.resolve(at)?;
                            // The timestamp of the record found, when one was asked for.
                            let ts = match at {
                                StartAt::Timestamp(_) if offset < p.high_watermark() => p
                                    .read(
                                        offset,
                                        ReadLimits {
                                            max_records: 1,
                                            max_bytes: 1,
                                        },
                                    )?
                                    .records()
                                    .next()
                                    .map_or(-1, |r| r.timestamp_ms),
                                _ => -1,
                            };
                            let none =
                                matches!(at, StartAt::Timestamp(_)) && offset >= p.high_watermark();
                            Ok((offset, ts, none))
                        })
                        .await;
                        match found {
                            // No record at or after the timestamp: offset -1, as Kafka answers.
                            Ok((_, _, true)) => {}
                            Ok((offset, ts, false)) => {
                                p_out.offset = offset as i64;
                                p_out.timestamp = ts;
                            }
                            Err(e) => p_out.error_code = out.error(kafka_error(&e)),
                        }
                    }
                }
                t_out.partitions.push(p_out);
            }
            response.topics.push(t_out);
        }
        response
    }
}

fn empty_partition(index: i32) -> PartitionData {
    let mut p = PartitionData::default();
    p.partition_index = index;
    p.high_watermark = -1;
    p.last_stable_offset = -1;
    p.log_start_offset = -1;
    p.preferred_read_replica = BrokerId(-1);
    p
}

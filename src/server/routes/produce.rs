//! `POST /v1/topics/{topic}/records`: JSON, NDJSON, a raw value, or binary frames.

use crate::log::now_ms;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::records::{ProduceRequest, ProduceResponse, RecordIn, RecordOffset};
use crate::broker::idempotency::{
    check_key, offsets_of, request_digest, request_head, Claim, Piece,
};
use crate::broker::{Broker, BrokerError, PartitionAppend, Topic};
use crate::config::Durability;
use crate::log::{format, LogError, Record, ValidFrames};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::{blocking, record_target, AppState};

/// Query of a produce request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProduceQuery {
    /// `memory` (acknowledged once in the mapping) or `fsync` (once msync has made it
    /// durable). Default: the server's `default_durability`.
    durability: Option<Durability>,
    /// Key of the record, for `application/octet-stream`.
    key: Option<String>,
    /// Partition, for `application/octet-stream` and `application/vnd.mapq.frames`.
    partition: Option<u32>,
    /// In a cluster: `all` (default) answers once every in-sync replica holds the records
    /// (with `durability=fsync`, has made them durable); `leader` once the leader has.
    /// Outside a cluster both mean this server's log.
    acks: Option<Acks>,
}

/// Which replicas hold a write before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// The partition's leader.
    Leader,
    /// Every in-sync replica.
    All,
}

/// Bodies up to this size are appended on the async worker when that needs no file work.
const INLINE_APPEND_BYTES: usize = 16 << 10;

/// A produce request, checked as far as the headers and query go.
struct Request {
    topic: String,
    kind: Kind,
    body: bytes::Bytes,
    query: ProduceQuery,
    max_record: u64,
    /// The partitions chosen for the records by a first attempt that could not append at
    /// once: the retry uses them (choosing again would move the round-robin twice).
    chosen: std::sync::Mutex<Option<Vec<u32>>>,
    /// The request's `Idempotency-Key`, checked.
    idempotency_key: Option<Vec<u8>>,
    /// In a cluster: the node's part, the request's path and query (for a redirect), and
    /// the leadership generation of each partition appended to (see
    /// `Cluster::wait_committed`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    uri: String,
    generations: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

/// Where an append runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// On the async worker: only if the topic exists and the append needs no file work.
    Now,
    /// On the blocking pool: whatever it takes (a topic created, a roll).
    Blocking,
}

/// What a produce request appended.
struct Produced {
    offsets: Vec<RecordOffset>,
    appends: Vec<PartitionAppend>,
    topic: Arc<Topic>,
    /// A retry answered from the log: nothing was appended.
    replayed: bool,
}

impl Produced {
    /// An append to one partition (frames): its records' offsets in order.
    fn one_partition(topic: Arc<Topic>, a: PartitionAppend) -> Self {
        Produced {
            offsets: (a.first_offset..a.end_offset())
                .map(|offset| RecordOffset {
                    partition: a.partition,
                    offset,
                })
                .collect(),
            appends: vec![a],
            topic,
            replayed: false,
        }
    }
}

impl Request {
    /// The partition of each record (asked for, else by key, else round-robin), or the
    /// ones an earlier attempt of this request chose.
    fn choose(
        &self,
        topic: &Topic,
        records: &mut dyn Iterator<Item = (Option<u32>, Option<&[u8]>)>,
    ) -> ApiResult<Vec<u32>> {
        let mut chosen = self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = chosen.as_ref() {
            return Ok(c.clone());
        }
        // In a cluster, records without a partition or key go to the partitions led here.
        let led = self
            .cluster
            .as_ref()
            .map(|c| c.led_partitions(topic.name()))
            .unwrap_or_default();
        let c = records
            .map(|(explicit, key)| topic.choose_partition_among(explicit, key, &led))
            .collect::<Result<Vec<_>, _>>()?;
        *chosen = Some(c.clone());
        Ok(c)
    }

    /// In a cluster: checks that this node leads each of `partitions` and may write now,
    /// and notes the leadership each append is made under. Otherwise `307 not_leader` to
    /// the leader (all the partitions led by one other node), `503`, or `400` for a request
    /// whose records belong to partitions led by several nodes.
    fn check_leaders(
        &self,
        topic: &Topic,
        partitions: impl IntoIterator<Item = u32>,
    ) -> ApiResult<()> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let mut generations = std::collections::HashMap::new();
        let mut elsewhere: Vec<(u32, Option<String>)> = Vec::new();
        for p in partitions {
            if generations.contains_key(&p) {
                continue;
            }
            match c.writable(topic.name(), p) {
                Ok((_, generation)) => {
                    generations.insert(p, generation);
                }
                Err((crate::cluster::Refusal::NotLeader, leader)) => {
                    elsewhere.push((p, leader.map(|l| l.node_id)));
                }
                Err((refusal, _)) => {
                    return Err(super::cluster::refusal_error(&refusal, topic.name(), p))
                }
            }
        }
        let Some((p, leader)) = elsewhere.first().cloned() else {
            *self.generations.lock().unwrap_or_else(|e| e.into_inner()) = generations;
            return Ok(());
        };
        let Some(leader) = leader else {
            return Err(super::cluster::refusal_error(
                &crate::cluster::Refusal::NotLeader,
                topic.name(),
                p,
            ));
        };
        if !generations.is_empty() || elsewhere.iter().any(|(_, l)| l.as_ref() != Some(&leader)) {
            return Err(ApiError::bad_request(format!(
                "the records of this request belong to partitions led by different nodes (partition {p} is led by {leader}); send each leader its partitions (GET /v1/cluster names them)"
            )));
        }
        Err(super::cluster::redirect(
            c,
            &leader,
            &self.uri,
            &format!("partition {p} of topic {}", topic.name()),
        ))
    }

    /// Decodes and appends the request's records; `None` when `Mode::Now` cannot (nothing
    /// changed then). Every check on the body comes before the topic is looked up (and
    /// perhaps created): a refused request changes nothing.
    fn append(&self, broker: &Broker, mode: Mode) -> ApiResult<Option<Produced>> {
        let topic = |partitions: &mut dyn Iterator<Item = u32>| match mode {
            Mode::Blocking => broker.topic_for_produce(&self.topic, partitions).map(Some),
            Mode::Now => match broker.topic(&self.topic) {
                Ok(t) => Ok(Some(t)),
                Err(BrokerError::TopicNotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
        };
        if let Kind::Frames = self.kind {
            if self.body.is_empty() {
                return Err(ApiError::bad_request("the request holds no frames"));
            }
            let mut stripped = None;
            let frames = check_client_frames(&self.body, self.max_record, &mut stripped)?;
            let Some(topic) = topic(&mut self.query.partition.into_iter())? else {
                return Ok(None);
            };
            let partition =
                self.choose(&topic, &mut std::iter::once((self.query.partition, None)))?[0];
            self.check_leaders(&topic, [partition])?;
            let a = match mode {
                Mode::Blocking => Some(broker.append_frames(&topic, partition, frames)?),
                Mode::Now => broker.try_append_frames(&topic, partition, frames)?,
            };
            return Ok(a.map(|a| Produced::one_partition(topic, a)));
        }
        let mut records = decode(
            self.kind,
            &self.body,
            &self.query,
            now_ms(),
            self.max_record,
        )?;
        if records.is_empty() {
            return Err(ApiError::bad_request("the request holds no records"));
        }
        let Some(topic) = topic(&mut records.iter().filter_map(|r| r.requested))? else {
            return Ok(None);
        };
        self.assign_partitions(&topic, &mut records)?;
        self.check_leaders(&topic, records.iter().map(|r| r.partition))?;
        let headers = record_headers(&records);
        let (by_partition, places) = batches(&records, &headers);
        let appends = match mode {
            Mode::Blocking => broker.append(&topic, &by_partition)?,
            Mode::Now => match broker.try_append(&topic, &by_partition)? {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        let first: BTreeMap<u32, u64> = appends
            .iter()
            .map(|a| (a.partition, a.first_offset))
            .collect();
        let offsets = places
            .into_iter()
            .map(|(partition, i)| RecordOffset {
                partition,
                offset: first[&partition] + i,
            })
            .collect();
        Ok(Some(Produced {
            offsets,
            appends,
            topic,
            replayed: false,
        }))
    }

    /// Gives each record its partition (see [`Request::choose`]).
    fn assign_partitions(&self, topic: &Topic, records: &mut [Owned<'_>]) -> ApiResult<()> {
        let chosen = self.choose(
            topic,
            &mut records.iter().map(|r| (r.requested, r.key.as_deref())),
        )?;
        for (r, p) in records.iter_mut().zip(chosen) {
            r.partition = p;
        }
        Ok(())
    }

    /// The digest of what decides the request's records: the body's type, the query's key
    /// and partition, the body (not its durability, which only decides when it is answered).
    fn digest(&self) -> [u8; 16] {
        let partition = self
            .query
            .partition
            .map(|p| p.to_string())
            .unwrap_or_default();
        request_digest(&[
            self.kind.name().as_bytes(),
            self.query.key.as_deref().unwrap_or("").as_bytes(),
            partition.as_bytes(),
            &self.body,
        ])
    }

    /// Appends a request that carries an `Idempotency-Key` (API.md, "Idempotent produce"):
    /// a retry of a stored request is answered with its offsets, nothing appended; a
    /// request that a crash cut in the middle appends only the records it lacks. The key
    /// goes into the batch head of each partition's part, stored with the records. Blocks.
    fn append_idempotent(&self, broker: &Broker, key: &[u8]) -> ApiResult<Produced> {
        let digest = self.digest();
        let now = now_ms();
        if let Kind::Frames = self.kind {
            if self.body.is_empty() {
                return Err(ApiError::bad_request("the request holds no frames"));
            }
            let mut stripped = None;
            let frames = check_client_frames(&self.body, self.max_record, &mut stripped)?;
            let topic = broker.topic_for_produce(&self.topic, self.query.partition)?;
            let n = frames.count() as u32;
            let pending = match topic.idempotency().claim(key, digest, n, now)? {
                Claim::Replay { offsets, pieces } => {
                    self.check_leaders(&topic, pieces.iter().map(|p| p.partition))?;
                    return Ok(produced(Arc::clone(&topic), offsets, &pieces, true));
                }
                Claim::Append(pending) => pending,
            };
            // One partition, all or nothing: a stored part would be the whole request.
            let partition =
                self.choose(&topic, &mut std::iter::once((self.query.partition, None)))?[0];
            self.check_leaders(&topic, [partition])?;
            let head = request_head(key, digest, n, n, None, now);
            // The frames as checked (their own batch heads removed, if they had any).
            let body: &[u8] = stripped.as_deref().unwrap_or(&self.body);
            let (first, rest) = first_frame_with_head(body, head)?;
            let frames = ValidFrames::with_head(&first, &body[rest..], n.into());
            let a = broker.append_frames(&topic, partition, frames)?;
            pending.complete(
                vec![Piece {
                    partition,
                    first_offset: a.first_offset,
                    count: n,
                    positions: None,
                }],
                now,
            );
            return Ok(Produced::one_partition(topic, a));
        }
        let mut records = decode(self.kind, &self.body, &self.query, now, self.max_record)?;
        if records.is_empty() {
            return Err(ApiError::bad_request("the request holds no records"));
        }
        let topic =
            broker.topic_for_produce(&self.topic, records.iter().filter_map(|r| r.requested))?;
        let n = records.len() as u32;
        let pending = match topic.idempotency().claim(key, digest, n, now)? {
            Claim::Replay { offsets, pieces } => {
                self.check_leaders(&topic, pieces.iter().map(|p| p.partition))?;
                return Ok(produced(Arc::clone(&topic), offsets, &pieces, true));
            }
            Claim::Append(pending) => pending,
        };
        self.assign_partitions(&topic, &mut records)?;
        self.check_leaders(&topic, records.iter().map(|r| r.partition))?;
        let headers = record_headers(&records);
        // The records not stored yet, by partition, with their request positions.
        let mut positions: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for i in (0..n).filter(|&i| !pending.is_stored(i)) {
            positions
                .entry(records[i as usize].partition)
                .or_default()
                .push(i);
        }
        let spread = positions.len() > 1 || positions.values().any(|p| p.len() != n as usize);
        let by_partition: BTreeMap<u32, Vec<Record<'_>>> = positions
            .iter()
            .map(|(&partition, positions)| {
                let mut batch: Vec<Record<'_>> = positions
                    .iter()
                    .map(|&i| record_of(&records[i as usize], &headers[i as usize]))
                    .collect();
                batch[0].batch = Some(request_head(
                    key,
                    digest,
                    n,
                    positions.len() as u32,
                    spread.then_some(positions.as_slice()),
                    now,
                ));
                (partition, batch)
            })
            .collect();
        let appends = broker.append(&topic, &by_partition)?;
        let new: Vec<Piece> = appends
            .iter()
            .map(|a| Piece {
                partition: a.partition,
                first_offset: a.first_offset,
                count: a.count as u32,
                positions: spread.then(|| positions[&a.partition].clone().into()),
            })
            .collect();
        let all: Vec<Piece> = pending.stored().iter().chain(&new).cloned().collect();
        pending.complete(new, now);
        Ok(produced(topic, offsets_of(n, &all), &all, false))
    }
}

/// Checks a client's frames. Frames copied from a binary consume of a topic whose batches
/// have heads (idempotency keys, producer ids) carry those heads, which only the server
/// writes: they are removed (the records kept, in `storage`), not refused.
fn check_client_frames<'a>(
    body: &'a [u8],
    max_record: u64,
    storage: &'a mut Option<Vec<u8>>,
) -> ApiResult<ValidFrames<'a>> {
    match ValidFrames::check(body, max_record) {
        Err(LogError::InvalidFrame {
            source: format::FrameError::BadBatchHead(why),
            ..
        }) if why == format::CLIENT_BATCH_HEAD => {
            let plain = format::without_batch_heads(body)
                .ok_or_else(|| ApiError::bad_request("the frames do not decode"))?;
            Ok(ValidFrames::check(storage.insert(plain), max_record)?)
        }
        checked => Ok(checked?),
    }
}

/// The first of client-built frames encoded again with a batch head, and where the others
/// start in the body (they are appended as they are, without a copy here).
fn first_frame_with_head(body: &[u8], head: format::BatchHead<'_>) -> ApiResult<(Vec<u8>, usize)> {
    let first = format::decode_frame(body)
        .map_err(|e| ApiError::bad_request(format!("invalid frame at byte 0: {e}")))?;
    let headers: Vec<format::Header<'_>> = first.headers().collect();
    let record = Record {
        batch: Some(head),
        ..first.record(&headers)
    };
    let len = record
        .padded_len()
        .ok_or_else(|| ApiError::too_large("the first frame with its batch head is over 4 GiB"))?;
    let mut framed = vec![0u8; len];
    format::encode_frame(&mut framed, first.offset, &record);
    Ok((framed, first.padded_len))
}

/// The answer to a request with a key: its records' offsets in request order, and the
/// parts to wait for when it asks for durability (every part, those stored before a crash
/// too); `replayed` when nothing was appended.
fn produced(
    topic: Arc<Topic>,
    offsets: Vec<(u32, u64)>,
    pieces: &[Piece],
    replayed: bool,
) -> Produced {
    Produced {
        offsets: offsets
            .into_iter()
            .map(|(partition, offset)| RecordOffset { partition, offset })
            .collect(),
        appends: pieces
            .iter()
            .map(|p| PartitionAppend {
                partition: p.partition,
                first_offset: p.first_offset,
                count: u64::from(p.count),
                bytes: 0,
            })
            .collect(),
        topic,
        replayed,
    }
}

/// A record decoded from the request, owning what had to be decoded (base64, escapes).
struct Owned<'a> {
    /// The partition the record asked for, if any.
    requested: Option<u32>,
    /// The partition it goes to, chosen once the whole request was found valid.
    partition: u32,
    key: Option<Cow<'a, [u8]>>,
    /// `None`: a null value (a record with neither `value` nor `value_b64`).
    value: Option<Cow<'a, [u8]>>,
    json: bool,
    headers: Vec<Header<'a>>,
    timestamp_ms: i64,
}

/// A header's name and value (`None`: null).
type Header<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

fn b64(field: &str, s: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ApiError::bad_request(format!("`{field}` is not valid base64: {e}")))
}

fn cow_bytes(c: Cow<'_, str>) -> Cow<'_, [u8]> {
    match c {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// Decodes and checks one record; its partition is chosen once the whole request has been
/// found valid.
fn decode_record<'a>(r: RecordIn<'a>, now: i64, max_record_bytes: u64) -> ApiResult<Owned<'a>> {
    let key = match (r.key, r.key_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "a record has both `key` and `key_b64`",
            ))
        }
        (Some(k), None) => Some(cow_bytes(k)),
        (None, Some(k)) => Some(Cow::Owned(b64("key_b64", &k)?)),
        (None, None) => None,
    };
    let (value, json) = match (r.value, r.value_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "a record has both `value` and `value_b64`",
            ))
        }
        (Some(v), None) => (Some(Cow::Borrowed(v.get().as_bytes())), true),
        (None, Some(v)) => (Some(Cow::Owned(b64("value_b64", &v)?)), false),
        // Neither: a null value (a tombstone), as distinct from an empty one.
        (None, None) => (None, false),
    };
    let headers: Vec<_> = r
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (cow_bytes(k), v.map(cow_bytes)))
        .collect();
    let size = key.as_ref().map_or(0, |k| k.len())
        + value.as_ref().map_or(0, |v| v.len())
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>();
    if size as u64 > max_record_bytes {
        return Err(ApiError::too_large(format!(
            "a record of {size} bytes is over max_record_bytes ({max_record_bytes})"
        )));
    }
    let timestamp_ms = match r.timestamp_ms {
        None | Some(0) => now,
        Some(t) if t < 0 => {
            return Err(ApiError::bad_request(format!(
                "timestamp_ms must be milliseconds since the Unix epoch, not {t}"
            )))
        }
        Some(t) => t,
    };
    Ok(Owned {
        requested: r.partition,
        partition: 0,
        key,
        value,
        json,
        headers,
        timestamp_ms,
    })
}

/// Each record's headers, borrowed, as the engine's records take them.
fn record_headers<'r>(records: &'r [Owned<'_>]) -> Vec<Vec<format::Header<'r>>> {
    records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_deref()))
                .collect()
        })
        .collect()
}

/// The engine's record for a decoded one.
fn record_of<'r>(r: &'r Owned<'_>, headers: &'r [format::Header<'r>]) -> Record<'r> {
    Record {
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers,
        timestamp_ms: r.timestamp_ms,
        value_is_json: r.json,
        batch: None,
    }
}

/// The records of a request by partition, in request order within each (the broker's
/// all-or-nothing append takes them so), and where each record of the request went.
fn batches<'r>(records: &'r [Owned<'_>], headers: &'r [Vec<format::Header<'r>>]) -> Batches<'r> {
    let mut by_partition: BTreeMap<u32, Vec<Record<'r>>> = BTreeMap::new();
    let mut places = Vec::with_capacity(records.len());
    for (r, headers) in records.iter().zip(headers) {
        let batch = by_partition.entry(r.partition).or_default();
        places.push((r.partition, batch.len() as u64));
        batch.push(record_of(r, headers));
    }
    (by_partition, places)
}

/// Records by partition, and each request record's (partition, index in its batch).
type Batches<'r> = (BTreeMap<u32, Vec<Record<'r>>>, Vec<(u32, u64)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Ndjson,
    Octets,
    Frames,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Ndjson => "ndjson",
            Kind::Octets => "octets",
            Kind::Frames => "frames",
        }
    }
}

fn content_kind(headers: &HeaderMap) -> ApiResult<Kind> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    let kinds = [
        ("application/json", Kind::Json),
        ("application/x-ndjson", Kind::Ndjson),
        ("application/octet-stream", Kind::Octets),
        ("application/vnd.mapq.frames", Kind::Frames),
    ];
    match kinds
        .iter()
        .find(|(name, _)| mime.eq_ignore_ascii_case(name))
    {
        Some(&(_, kind)) => Ok(kind),
        None => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {ct:?} is not one of application/json, application/x-ndjson, \
                 application/octet-stream, application/vnd.mapq.frames"
            ),
        )),
    }
}

/// The errors `produce` answers with (besides those of every route).
pub const PRODUCE_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::PartitionNotFound,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RequestTimeout,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::TooManyTopics,
    ErrorCode::InsufficientStorage,
    ErrorCode::PartitionUnavailable,
    ErrorCode::TooManyOpenFiles,
    ErrorCode::NotReady,
    ErrorCode::ShuttingDown,
    ErrorCode::IdempotencyKeyMismatch,
    ErrorCode::IdempotencyKeyInFlight,
    ErrorCode::NotLeader,
    ErrorCode::NotEnoughReplicas,
    ErrorCode::LeaderNotAvailable,
];

/// Produce records to a topic.
///
/// Bodies by `Content-Type`: `application/json` (`{"records": [...]}`),
/// `application/x-ndjson` (one record object per line), `application/octet-stream` (one
/// record's value; key and partition from the query) or `application/vnd.mapq.frames`
/// (record frames in the on-disk format, appended without re-encoding). A request is all or
/// nothing per partition.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", tag = "records",
    params(
        ("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,128}$",
            description = "Makes retries safe: a retry with the same key and request is answered with the original offsets (header `Idempotent-Replayed: true`) and appends nothing; the same key with another request is a 422, while the first is in progress a 409. Remembered for `idempotency_window_ms`, across restarts."),
        ProduceQuery,
    ),
    request_body(content(
        (ProduceRequest = "application/json"),
        (String = "application/x-ndjson"),
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/vnd.mapq.frames"),
    )),
    responses(
        (status = 200, body = ProduceResponse, headers(
            ("Idempotent-Replayed" = String, description = "`true` on a retry answered from the log: nothing was appended"),
        )),
    ))]
pub async fn produce(
    State(state): State<AppState>,
    Path(topic_name): Path<String>,
    uri: axum::http::Uri,
    query: Result<Query<ProduceQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(HeaderMap, Json<ProduceResponse>)> {
    let started = Instant::now();
    record_target(&topic_name, None);
    let Query(query) = query?;
    crate::broker::validate_name(&topic_name)?;
    let kind = content_kind(&headers)?;
    let mut keys = headers.get_all("idempotency-key").iter();
    let idempotency_key = match (keys.next(), keys.next()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "a request takes one Idempotency-Key header",
            ))
        }
        (Some(v), None) => {
            let key = v.as_bytes();
            check_key(key).map_err(ApiError::bad_request)?;
            Some(key.to_vec())
        }
        _ => None,
    };
    let config = state.config();
    let max_request = config.max_request_bytes;
    let max_record = config.max_record_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max_request {
            return Err(ApiError::too_large(format!(
                "request body of {len} bytes is over max_request_bytes ({max_request})"
            )));
        }
    }
    let limit_name = || format!("max_request_bytes ({max_request})");
    let body = crate::server::read_body(config, body, max_request as usize, limit_name).await?;
    if matches!(kind, Kind::Json | Kind::Ndjson)
        && (query.key.is_some() || query.partition.is_some())
    {
        return Err(ApiError::bad_request(
            "`key` and `partition` in the query apply to raw bodies; JSON records carry their own",
        ));
    }
    if matches!(kind, Kind::Frames) && query.key.is_some() {
        return Err(ApiError::bad_request(
            "frames carry their own keys; drop `key` from the query",
        ));
    }
    let durability = query.durability.unwrap_or(config.default_durability);
    let acks = query.acks.unwrap_or(Acks::All);
    // Durable producers take turns (see `max_fsync_in_flight`): a flush answers every one it
    // covered at once, and a bounded crowd keeps that burst, and the requests it sets off,
    // short for everyone else.
    let _turn = match durability {
        Durability::Fsync => Some(state.fsync_producers().acquire().await),
        Durability::Memory => None,
    };
    let broker = state.broker()?;
    let cluster = state.cluster_for_write()?;
    if let Some(c) = &cluster {
        super::cluster::ensure_topic(c, &topic_name).await?;
    }
    let request = Arc::new(Request {
        topic: topic_name,
        kind,
        body,
        query,
        max_record,
        chosen: Default::default(),
        idempotency_key,
        cluster: cluster.clone(),
        uri: super::cluster::request_target(&uri),
        generations: Default::default(),
    });
    // A small request to an existing topic is appended here when that is a copy into the
    // mapping (see `Topic::try_append`): cheaper than the hand-off to the blocking pool.
    // Anything else (a topic to create, a roll, blocks to reserve, a busy writer) goes there.
    // (A request with an idempotency key claims its key first: on the blocking pool.)
    let now = (request.body.len() <= INLINE_APPEND_BYTES && request.idempotency_key.is_none())
        .then(|| request.append(&broker, Mode::Now))
        .transpose()?
        .flatten();
    let Produced {
        offsets,
        appends,
        topic,
        replayed,
    } = match now {
        Some(done) => done,
        None => {
            let broker = Arc::clone(&broker);
            let request = Arc::clone(&request);
            blocking(move || match &request.idempotency_key {
                Some(key) => request.append_idempotent(&broker, key),
                None => request
                    .append(&broker, Mode::Blocking)?
                    .ok_or_else(|| ApiError::internal("a blocking append did not append")),
            })
            .await?
        }
    };
    if durability == Durability::Fsync {
        broker.wait_appends_durable(&topic, &appends).await?;
    }
    if let (Some(c), Acks::All) = (&cluster, acks) {
        let generations = request
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        c.wait_committed(topic.name(), &appends, durability, &generations)
            .await
            .map_err(|r| super::cluster::uncommitted_error(&r, topic.name()))?;
    }
    state
        .metrics()
        .observe_produce(durability, started.elapsed());
    let mut answer = HeaderMap::new();
    if replayed {
        answer.insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    Ok((answer, Json(ProduceResponse { offsets })))
}

/// Decodes the records of a JSON, NDJSON or raw body, checking each.
fn decode<'a>(
    kind: Kind,
    body: &'a [u8],
    query: &'a ProduceQuery,
    now: i64,
    max_record: u64,
) -> ApiResult<Vec<Owned<'a>>> {
    match kind {
        Kind::Json => {
            let req: ProduceRequest<'_> = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
            req.records
                .into_iter()
                .map(|r| decode_record(r, now, max_record))
                .collect()
        }
        Kind::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("NDJSON body is not UTF-8"))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, line)| {
                    let r: RecordIn<'_> = serde_json::from_str(line)
                        .map_err(|e| ApiError::bad_request(format!("line {}: {e}", n + 1)))?;
                    decode_record(r, now, max_record)
                })
                .collect()
        }
        Kind::Octets | Kind::Frames => {
            if body.len() as u64 > max_record {
                return Err(ApiError::too_large(format!(
                    "a record of {} bytes is over max_record_bytes ({max_record})",
                    body.len()
                )));
            }
            Ok(vec![Owned {
                requested: query.partition,
                partition: 0,
                key: query.key.as_deref().map(|k| Cow::Borrowed(k.as_bytes())),
                value: Some(Cow::Borrowed(body)),
                json: false,
                headers: Vec::new(),
                timestamp_ms: now,
            }])
        }
    }
}

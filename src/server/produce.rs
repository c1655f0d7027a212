//! `POST /v1/topics/{topic}/records`: JSON, NDJSON, a raw value, or binary frames.

use crate::log::now_ms;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{blocking, record_target, AppState};
use crate::broker::{Broker, Topic};
use crate::config::Durability;
use crate::log::format::{self, decode_frame_unchecked_crc, Record};

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
}

/// One record of a JSON or NDJSON produce request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a record object such as {\"key\": \"k\", \"value\": {\"any\": \"json\"}}"
)]
pub struct RecordIn<'a> {
    /// Key as a string; or use `key_b64`. Both absent: null key.
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    /// Key bytes, base64.
    #[serde(borrow, default)]
    key_b64: Option<Cow<'a, str>>,
    /// Any JSON value, stored as its JSON text and returned as JSON.
    #[serde(borrow, default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    value: Option<&'a RawValue>,
    /// Value bytes, base64.
    #[serde(borrow, default)]
    value_b64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    headers: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    partition: Option<u32>,
    /// Milliseconds since the Unix epoch; absent or 0: the server's clock.
    timestamp_ms: Option<i64>,
}

/// A present `value`, even `null`, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `application/json` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"records\": [...]} of record objects"
)]
pub struct ProduceRequest<'a> {
    #[serde(borrow)]
    records: Vec<RecordIn<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordOffset {
    pub partition: u32,
    pub offset: u64,
}

/// One entry per record, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProduceResponse {
    pub offsets: Vec<RecordOffset>,
}

/// A record decoded from the request, owning what had to be decoded (base64, escapes).
struct Owned<'a> {
    /// The partition the record asked for, if any.
    requested: Option<u32>,
    /// The partition it goes to, chosen by [`place`].
    partition: u32,
    key: Option<Cow<'a, [u8]>>,
    value: Cow<'a, [u8]>,
    json: bool,
    headers: Vec<Header<'a>>,
    timestamp_ms: i64,
}

type Header<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Offsets in request order, and for each partition written: its end offset after the
/// append and the bytes of frames appended.
type Appended = (Vec<RecordOffset>, Vec<(u32, u64, u64)>);

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

/// Decodes and checks one record; its partition is chosen later, by [`place`], once the
/// whole request has been found valid.
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
        (Some(v), None) => (Cow::Borrowed(v.get().as_bytes()), true),
        (None, Some(v)) => (Cow::Owned(b64("value_b64", &v)?), false),
        (None, None) => {
            return Err(ApiError::bad_request(
                "a record needs `value` or `value_b64`",
            ))
        }
    };
    let headers: Vec<_> = r
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (cow_bytes(k), cow_bytes(v)))
        .collect();
    let size = key.as_ref().map_or(0, |k| k.len())
        + value.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
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

/// Chooses each record's partition: the one it asked for, else by key, else round-robin.
fn place(topic: &Topic, records: &mut [Owned<'_>]) -> ApiResult<()> {
    for r in records {
        r.partition = topic.choose_partition(r.requested, r.key.as_deref())?;
    }
    Ok(())
}

/// The topic to produce to, created with the defaults if it is missing and auto-creation is
/// on; but only for a request found valid for such a topic (`partitions` are the explicit
/// partitions it names): a refused request creates nothing.
fn topic_for(
    broker: &Broker,
    name: &str,
    partitions: impl IntoIterator<Item = u32>,
) -> ApiResult<Arc<Topic>> {
    match broker.topic(name) {
        Ok(t) => return Ok(t),
        Err(crate::broker::BrokerError::TopicNotFound(_)) if broker.config().auto_create_topics => {
        }
        Err(e) => return Err(e.into()),
    }
    let count = broker.config().default_partitions;
    if let Some(partition) = partitions.into_iter().find(|&p| p >= count) {
        return Err(crate::broker::BrokerError::PartitionNotFound {
            topic: name.to_owned(),
            partition,
        }
        .into());
    }
    Ok(broker.topic_for_produce(name)?)
}

/// Appends decoded records, partition by partition (each partition's share is one atomic
/// batch). Returns the offsets in request order and the end offset per touched partition.
fn append_owned(topic: &Topic, records: &[Owned<'_>]) -> ApiResult<Appended> {
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_partition.entry(r.partition).or_default().push(i);
    }
    let header_refs: Vec<Vec<(&[u8], &[u8])>> = records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .collect()
        })
        .collect();
    let batches: Vec<(u32, &Vec<usize>, Vec<Record<'_>>)> = by_partition
        .iter()
        .map(|(&partition, indices)| {
            let batch = indices
                .iter()
                .map(|&i| {
                    let r = &records[i];
                    Record {
                        key: r.key.as_deref(),
                        value: &r.value,
                        headers: &header_refs[i],
                        timestamp_ms: r.timestamp_ms,
                        value_is_json: r.json,
                    }
                })
                .collect();
            (partition, indices, batch)
        })
        .collect();
    // All or nothing across partitions: lock every writer involved (in partition order, as
    // every multi-partition request does, so two requests cannot deadlock), make room in
    // each, and only then append. A full disk or a stopped partition fails the request
    // before any record is visible.
    let partitions = batches
        .iter()
        .map(|(p, _, _)| topic.partition(*p).map(Arc::clone))
        .collect::<Result<Vec<_>, _>>()?;
    let mut guards = Vec::with_capacity(partitions.len());
    for (p, (_, _, batch)) in partitions.iter().zip(&batches) {
        let mut guard = p.log().lock()?;
        guard.reserve(crate::log::batch_bytes(batch)?)?;
        guards.push(guard);
    }
    let mut offsets: Vec<RecordOffset> = records
        .iter()
        .map(|r| RecordOffset {
            partition: r.partition,
            offset: 0,
        })
        .collect();
    let mut ends = Vec::with_capacity(batches.len());
    for (guard, (partition, indices, batch)) in guards.iter_mut().zip(&batches) {
        let appended = guard.append(batch)?;
        for (n, &i) in indices.iter().enumerate() {
            offsets[i].offset = appended.first_offset + n as u64;
        }
        let bytes = crate::log::batch_bytes(batch)? as u64;
        ends.push((*partition, appended.first_offset + appended.count, bytes));
    }
    drop(guards);
    for (p, &(_, end, _)) in partitions.iter().zip(&ends) {
        p.notify(end);
    }
    Ok((offsets, ends))
}

/// Checks the sizes of client-built frames (their CRCs are checked by the append).
fn check_frame_sizes(frames: &[u8], max_record_bytes: u64) -> ApiResult<()> {
    let mut at = 0;
    while at < frames.len() {
        let f = decode_frame_unchecked_crc(&frames[at..])
            .map_err(|e| ApiError::bad_request(format!("invalid frame at byte {at}: {e}")))?;
        let payload = f.headers_range.end - format::frame::FIXED_SIZE;
        if payload as u64 > max_record_bytes {
            return Err(ApiError::too_large(format!(
                "a record of {payload} bytes is over max_record_bytes ({max_record_bytes})"
            )));
        }
        at += f.padded_len;
    }
    Ok(())
}

enum Kind {
    Json,
    Ndjson,
    Octets,
    Frames,
}

fn content_kind(headers: &HeaderMap) -> ApiResult<Kind> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Kind::Json),
        "application/x-ndjson" => Ok(Kind::Ndjson),
        "application/octet-stream" => Ok(Kind::Octets),
        "application/vnd.mapq.frames" => Ok(Kind::Frames),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {ct:?} is not one of application/json, application/x-ndjson, \
                 application/octet-stream, application/vnd.mapq.frames"
            ),
        )),
    }
}

/// Produce records to a topic.
///
/// Bodies by `Content-Type`: `application/json` (`{"records": [...]}`),
/// `application/x-ndjson` (one record object per line), `application/octet-stream` (one
/// record's value; key and partition from the query) or `application/vnd.mapq.frames`
/// (record frames in the on-disk format, appended without re-encoding). A request is all or
/// nothing per partition.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", tag = "records",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), ProduceQuery),
    request_body(content(
        (ProduceRequest = "application/json"),
        (String = "application/x-ndjson"),
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/vnd.mapq.frames"),
    )),
    responses(
        (status = 200, body = ProduceResponse),
        (status = 400, description = "`bad_request` or `invalid_name`", body = ErrorBody),
        (status = 404, description = "`topic_not_found` or `partition_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body arrived too slowly", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`too_many_topics` (auto-creation beyond `max_topics`)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`", body = ErrorBody),
        (status = 503, description = "`shutting_down`", body = ErrorBody),
    ))]
pub async fn produce(
    State(state): State<AppState>,
    Path(topic_name): Path<String>,
    query: Result<Query<ProduceQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ProduceResponse>> {
    let started = Instant::now();
    record_target(&topic_name, None);
    let Query(query) = query?;
    crate::broker::validate_name(&topic_name)?;
    let kind = content_kind(&headers)?;
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
    let limit_name = format!("max_request_bytes ({max_request})");
    let body = super::read_body(config, body, max_request as usize, &limit_name).await?;
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
    let broker = state.broker()?;
    let metrics = state.metrics().clone();
    let (response, ends, topic, broker) = blocking(move || {
        let now = now_ms();
        // Every check on the body comes before the topic is looked up (and perhaps
        // created): a refused request changes nothing.
        let owned = |records: Vec<Owned<'_>>| -> ApiResult<(Arc<Topic>, Appended)> {
            let mut records = records;
            if records.is_empty() {
                return Err(ApiError::bad_request("the request holds no records"));
            }
            let topic = topic_for(
                &broker,
                &topic_name,
                records.iter().filter_map(|r| r.requested),
            )?;
            place(&topic, &mut records)?;
            let appended = append_owned(&topic, &records)?;
            Ok((topic, appended))
        };
        let (topic, (offsets, ends)) = match kind {
            Kind::Json => {
                let req: ProduceRequest<'_> = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
                let records = req
                    .records
                    .into_iter()
                    .map(|r| decode_record(r, now, max_record))
                    .collect::<ApiResult<Vec<_>>>()?;
                owned(records)?
            }
            Kind::Ndjson => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| ApiError::bad_request("NDJSON body is not UTF-8"))?;
                let records = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(n, line)| {
                        let r: RecordIn<'_> = serde_json::from_str(line)
                            .map_err(|e| ApiError::bad_request(format!("line {}: {e}", n + 1)))?;
                        decode_record(r, now, max_record)
                    })
                    .collect::<ApiResult<Vec<_>>>()?;
                owned(records)?
            }
            Kind::Octets => {
                if body.len() as u64 > max_record {
                    return Err(ApiError::too_large(format!(
                        "a record of {} bytes is over max_record_bytes ({max_record})",
                        body.len()
                    )));
                }
                let key = query.key.as_deref().map(str::as_bytes);
                let record = Owned {
                    requested: query.partition,
                    partition: 0,
                    key: key.map(Cow::Borrowed),
                    value: Cow::Borrowed(&body),
                    json: false,
                    headers: Vec::new(),
                    timestamp_ms: now,
                };
                owned(vec![record])?
            }
            Kind::Frames => {
                if body.is_empty() {
                    return Err(ApiError::bad_request("the request holds no frames"));
                }
                check_frame_sizes(&body, max_record)?;
                if broker.topic(&topic_name).is_err() {
                    // Checked again by the append; here so that bad frames create no topic.
                    crate::log::validate_frames(&body)?;
                }
                let topic = topic_for(&broker, &topic_name, query.partition)?;
                let partition = topic.choose_partition(query.partition, None)?;
                let p = topic.partition(partition)?;
                let appended = p.append_frames(&body)?;
                let offsets = (0..appended.count)
                    .map(|i| RecordOffset {
                        partition,
                        offset: appended.first_offset + i,
                    })
                    .collect();
                let ends = vec![(
                    partition,
                    appended.first_offset + appended.count,
                    body.len() as u64,
                )];
                (topic, (offsets, ends))
            }
        };
        for &(partition, _, _) in &ends {
            broker.after_append(topic.partition(partition)?);
        }
        Ok((ProduceResponse { offsets }, ends, topic, broker))
    })
    .await?;
    for &(partition, _, bytes) in &ends {
        let n = response
            .offsets
            .iter()
            .filter(|o| o.partition == partition)
            .count() as u64;
        let labels = [topic.name(), &partition.to_string()];
        metrics
            .records_appended
            .with_label_values(&labels)
            .inc_by(n);
        metrics
            .bytes_appended
            .with_label_values(&labels)
            .inc_by(bytes);
    }
    if durability == Durability::Fsync {
        wait_durable(broker, &topic, ends).await?;
    }
    metrics.observe_produce(durability, started.elapsed());
    Ok(Json(response))
}

/// Waits until msync has covered every record below each partition's end. Concurrent
/// callers share flushes (group commit, see `PartitionLog::flush_until`).
async fn wait_durable(
    broker: Arc<Broker>,
    topic: &Arc<Topic>,
    ends: Vec<(u32, u64, u64)>,
) -> ApiResult<()> {
    for (partition, end, _) in ends {
        broker
            .wait_durable(topic.partition(partition)?, end)
            .await?;
    }
    Ok(())
}

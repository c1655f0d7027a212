//! Consuming: `GET .../records` (JSON or the raw frames, zero-copy, with long-poll) and
//! `GET .../stream` (Server-Sent Events).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::records::{ConsumeResponse, RecordOut};
use crate::broker::{Partition, ReadLimits, StartAt, Topic, Wait};
use crate::log::{ReadBatch, StoredRecord};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::{blocking, record_target, AppState};

/// Longest long-poll a consumer may ask for.
pub(crate) const MAX_WAIT_MS: u64 = 30_000;
/// Largest `max_bytes` honoured; larger values are clamped.
const MAX_BYTES_CAP: usize = 64 << 20;
/// Largest `max_records` honoured; larger values are clamped.
const MAX_RECORDS_CAP: usize = 100_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsumeQuery {
    /// A number, `earliest` or `latest`. Default `earliest`.
    offset: Option<String>,
    /// Start at the first record with a timestamp at or after this (instead of `offset`).
    timestamp_ms: Option<i64>,
    /// Default 1000.
    max_records: Option<usize>,
    /// Default 1 MiB; at least one record is returned even if it alone is larger.
    max_bytes: Option<usize>,
    /// Long-poll: wait up to this long (at most 30000) for a record at or after `offset`.
    wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// A number, `earliest` or `latest`. Default `latest`. `Last-Event-ID` wins over it.
    offset: Option<String>,
}

/// The JSON form of a stored record.
pub fn record_json(r: &StoredRecord) -> RecordOut<'_> {
    RecordOut::new(
        r.offset,
        r.timestamp_ms,
        r.key.as_deref(),
        r.value.as_deref(),
        r.value_is_json(),
        r.headers(),
    )
}

/// Where a read starts: `earliest`, `latest`, a number, or a timestamp.
fn start_at(
    offset: Option<&str>,
    timestamp_ms: Option<i64>,
    default_latest: bool,
) -> ApiResult<StartAt> {
    match (offset, timestamp_ms) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give either `offset` or `timestamp_ms`, not both",
        )),
        (None, Some(ts)) => Ok(StartAt::Timestamp(ts)),
        (Some("earliest"), None) => Ok(StartAt::Earliest),
        (Some("latest"), None) => Ok(StartAt::Latest),
        (None, None) if default_latest => Ok(StartAt::Latest),
        (None, None) => Ok(StartAt::Earliest),
        (Some(n), None) => n.parse().map(StartAt::Offset).map_err(|_| {
            ApiError::bad_request(format!(
                "offset must be `earliest`, `latest` or a number from 0 to 18446744073709551615, not {n:?}"
            ))
        }),
    }
}

/// How a consumer of this server may wait for records.
pub(crate) fn wait_for(state: &AppState, timeout: Duration) -> Wait {
    Wait {
        timeout,
        stop: state.shutdown_signal(),
        permits: Arc::clone(state.waiters()),
    }
}

fn parse_partition(topic: &Topic, raw: &str) -> ApiResult<Arc<Partition>> {
    let id: u32 = raw.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "partition must be a non-negative number, not {raw:?}"
        ))
    })?;
    Ok(Arc::clone(topic.partition(id)?))
}

/// A read's budget from its query (`max_records` default 1000, `max_bytes` default 1 MiB,
/// both clamped to their caps) and its long-poll (`wait_ms`, at most 30000).
pub(crate) fn read_budget(
    max_records: Option<usize>,
    max_bytes: Option<usize>,
    wait_ms: Option<u64>,
) -> ApiResult<(ReadLimits, u64)> {
    let max_records = max_records.unwrap_or(1000);
    if max_records == 0 {
        return Err(ApiError::bad_request("max_records must be at least 1"));
    }
    let wait_ms = check_wait_ms(wait_ms.unwrap_or(0))?;
    let limits = ReadLimits {
        max_records: max_records.min(MAX_RECORDS_CAP),
        max_bytes: max_bytes.unwrap_or(1 << 20).min(MAX_BYTES_CAP),
    };
    Ok((limits, wait_ms))
}

/// Counts what a consumer was served, in `mapq_records_read_total` and
/// `mapq_bytes_read_total`.
pub(crate) fn count_read(state: &AppState, topic: &str, partition: u32, batch: &ReadBatch) {
    let labels = [topic, &partition.to_string()];
    let metrics = state.metrics();
    metrics
        .records_read
        .with_label_values(&labels)
        .inc_by(batch.record_count as u64);
    metrics
        .bytes_read
        .with_label_values(&labels)
        .inc_by(batch.byte_len() as u64);
}

/// A long-poll's `wait_ms`: at most [`MAX_WAIT_MS`], else `400`.
pub(crate) fn check_wait_ms(wait_ms: u64) -> ApiResult<u64> {
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    Ok(wait_ms)
}

/// Whether the request's `Accept` names `media`.
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(media))
}

pub(crate) fn wants_octets(headers: &HeaderMap) -> bool {
    accepts(headers, "application/octet-stream")
}

/// The errors `consume` answers with (besides those of every route).
pub const CONSUME_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::PartitionNotFound,
    ErrorCode::OffsetOutOfRange,
    ErrorCode::TooManyWaiters,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Read records from a partition.
///
/// With `Accept: application/octet-stream` the body is the record frames exactly as they
/// lie in the segment (see the on-disk format), sent straight from the mapping, with the
/// headers `X-Mapq-Next-Offset` and `X-Mapq-High-Watermark`. Otherwise JSON.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records", tag = "records",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), ("partition" = u32, Path), ConsumeQuery),
    responses(
        (status = 200, content(
            (ConsumeResponse = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )),
    ))]
pub async fn consume(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    query: Result<Query<ConsumeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let broker = state.broker_for_read()?;
    let t = broker.topic(&topic)?;
    let p = parse_partition(&t, &partition)?;
    record_target(&topic, Some(p.id()));
    if let Some(elsewhere) = super::cluster::read_elsewhere(&state, &topic, p.id(), &uri) {
        return Err(elsewhere);
    }
    let (limits, wait_ms) = read_budget(q.max_records, q.max_bytes, q.wait_ms)?;
    let start = start_at(q.offset.as_deref(), q.timestamp_ms, false)?;
    let wait = wait_for(&state, Duration::from_millis(wait_ms));
    let (_, batch) = p.read_or_wait(start, limits, Some(wait)).await?;
    count_read(&state, &topic, p.id(), &batch);
    if wants_octets(&headers) {
        Ok(octets_response(batch))
    } else {
        // Decoding and serializing up to max_bytes of records is CPU work of its own.
        blocking(move || Ok(json_response(&batch))).await
    }
}

/// The frames, straight from the mapping: the body is the batch's `Bytes` chunks, which
/// point into the segment files; nothing is copied in user space.
pub(crate) fn octets_response(batch: ReadBatch) -> Response {
    let len = batch.byte_len();
    let next = batch.next_offset;
    let hwm = batch.high_watermark;
    let body = match batch.chunks.len() {
        1 => Body::from(batch.chunks.into_iter().next().unwrap_or_default()),
        _ => Body::from_stream(stream::iter(
            batch.chunks.into_iter().map(Ok::<Bytes, Infallible>),
        )),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("x-mapq-next-offset", HeaderValue::from(next));
    h.insert("x-mapq-high-watermark", HeaderValue::from(hwm));
    resp
}

fn json_response(batch: &ReadBatch) -> Response {
    let records: Vec<StoredRecord> = batch.records().collect();
    let body = ConsumeResponse {
        records: records.iter().map(record_json).collect(),
        next_offset: batch.next_offset,
        high_watermark: batch.high_watermark,
    };
    json_records_response(&body, batch.byte_len(), batch.record_count)
}

/// A JSON answer of records, its buffer sized up front for `frame_bytes` of frames in
/// `records` records (values may become base64, a third larger, plus each record's
/// fields): growing one large buffer by doubling would copy it several times.
pub(crate) fn json_records_response(
    body: &impl serde::Serialize,
    frame_bytes: usize,
    records: usize,
) -> Response {
    let mut bytes = Vec::with_capacity(frame_bytes / 3 * 4 + 200 * records + 64);
    match serde_json::to_writer(&mut bytes, body).map(|()| bytes) {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The errors `stream` answers with (besides those of every route).
pub const STREAM_ERRORS: &[ErrorCode] = CONSUME_ERRORS;

/// A live tail as Server-Sent Events: one event per record, `id:` its offset, `data:` the
/// record as JSON. Honours `Last-Event-ID` to resume after the last event received.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/stream", tag = "records",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), ("partition" = u32, Path), StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this offset")),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(q) = query?;
    let broker = state.broker_for_read()?;
    let t = broker.topic(&topic)?;
    let p = parse_partition(&t, &partition)?;
    record_target(&topic, Some(p.id()));
    if let Some(elsewhere) = super::cluster::read_elsewhere(&state, &topic, p.id(), &uri) {
        return Err(elsewhere);
    }
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .and_then(|id| id.checked_add(1))
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an offset"))
        })
        .transpose()?;
    let start = match resume {
        Some(o) => StartAt::Offset(o),
        None => start_at(q.offset.as_deref(), None, true)?,
    };
    // Fail fast on an offset outside the log.
    let (offset, _) = p
        .read_or_wait(
            start,
            ReadLimits {
                max_records: 1,
                max_bytes: 1,
            },
            None,
        )
        .await?;
    let limits = ReadLimits {
        max_records: 100,
        max_bytes: 1 << 20,
    };
    let tail = p.tail(offset, limits, wait_for(&state, Duration::ZERO))?;
    let events = stream::unfold(tail, |mut tail| async move {
        let events = match tail.next().await? {
            Ok(batch) => batch
                .records()
                .map(|r| {
                    let data =
                        serde_json::to_string(&record_json(&r)).unwrap_or_else(|_| "{}".into());
                    Event::default().id(r.offset.to_string()).data(data)
                })
                .collect(),
            Err(e) => {
                let err = ApiError::from(e);
                let data = serde_json::json!({"error": {"code": err.code, "message": err.message}});
                vec![Event::default().event("error").data(data.to_string())]
            }
        };
        Some((stream::iter(events.into_iter().map(Ok)), tail))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

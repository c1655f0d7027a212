//! Queue groups: leases (long-polling) and acks; their description and settings are
//! rendered here for `GET`/`PUT /v1/groups/{group}` (in `members.rs`, which serves both
//! kinds of group).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::api::groups::{
    AckRequest, AckResponse, AckResultOut, AckStatus, AckType, GroupType, LeaseRequest,
    QueueGroupOut, QueuePartitionOut, QueueSettingsOut,
};
use crate::api::records::{LeaseResponse, LeasedRecordOut};
use crate::auth::{Permission, Principal};
use crate::broker::queue::{AckKind, AckOutcome, Token};
use crate::broker::queues::{QueueSettings, MAX_LEASE_MS};
use crate::broker::{at_once, validate_name, Broker, LeaseAnswer, LeasedRecord};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::routes::consume::{
    accepts, check_wait_ms, count_read, json_records_response, record_json, wait_for,
};
use crate::server::{blocking, AppState};

/// Most records one lease request gets.
const MAX_LEASE_RECORDS: usize = 10_000;

pub fn settings_out(name: &str, s: &QueueSettings) -> QueueSettingsOut {
    QueueSettingsOut {
        name: name.to_owned(),
        group_type: GroupType::Queue,
        topics: s.topics.clone(),
        lease_ms: s.lease_ms,
        max_deliveries: s.max_deliveries,
        dead_letter_topic: s.dead_letter_topic.clone(),
        max_in_flight: s.max_in_flight,
    }
}

/// Leasing and acking need `consume` on every topic of the group.
fn may_work(
    broker: &Broker,
    principal: &Principal,
    group: &str,
) -> ApiResult<Arc<crate::broker::queues::QueueGroup>> {
    let g = broker.queue_group(group)?;
    if g.settings
        .topics
        .iter()
        .all(|t| principal.may(Permission::Consume, t))
    {
        Ok(g)
    } else {
        Err(crate::server::forbidden(principal))
    }
}

/// The description of a queue group (for `GET /v1/groups/{group}`): `404` for a token that
/// may consume none of its topics.
pub async fn describe(
    broker: &Arc<Broker>,
    principal: &Principal,
    group: &str,
) -> ApiResult<QueueGroupOut> {
    let (b, g) = (Arc::clone(broker), group.to_owned());
    let d = blocking(move || Ok(b.describe_queue_group(&g)?)).await?;
    if !d
        .settings
        .topics
        .iter()
        .any(|t| principal.may(Permission::Consume, t))
    {
        return Err(crate::broker::BrokerError::GroupNotFound(group.to_owned()).into());
    }
    let partitions: Vec<QueuePartitionOut> = d.partitions.iter().map(Into::into).collect();
    Ok(QueueGroupOut {
        name: d.name.clone(),
        group_type: GroupType::Queue,
        backlog: partitions.iter().map(|p| p.backlog).sum(),
        in_flight: partitions.iter().map(|p| p.in_flight).sum(),
        oldest_unacked_age_ms: partitions
            .iter()
            .map(|p| p.oldest_unacked_age_ms)
            .max()
            .unwrap_or(0),
        dead_lettered: partitions.iter().map(|p| p.dead_lettered).sum(),
        window_full: d.window_full,
        settings: settings_out(&d.name, &d.settings),
        partitions,
    })
}

/// The errors `lease` answers with (besides those of every route).
pub const LEASE_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::GroupNotFound,
    ErrorCode::GroupExists,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RequestTimeout,
    ErrorCode::TooManyWaiters,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Lease records of a queue group: each is handed to this caller alone until its lease
/// ends, with a token for its acks. Records due for another delivery come first, then new
/// ones. Long-polls up to `wait_ms` when none is available. The delivery count is durable
/// before the answer. With `Accept: application/vnd.mapq.leases`, a binary answer: a
/// 4-byte little-endian length, that much JSON (the records without key, value and
/// headers), then the records' frames as on disk, in the same order.
#[utoipa::path(post, path = "/v1/groups/{group}/leases", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = LeaseRequest,
    responses((status = 200, content(
        (LeaseResponse = "application/json"),
        (Vec<u8> = "application/vnd.mapq.leases"),
    ))))]
pub async fn lease(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    validate_name(&group)?;
    let req: LeaseRequest = crate::server::read_json(state.config(), body).await?;
    let max = req.max_records.unwrap_or(100);
    if max == 0 || max > MAX_LEASE_RECORDS {
        return Err(ApiError::bad_request(format!(
            "max_records must be from 1 to {MAX_LEASE_RECORDS}"
        )));
    }
    check_wait_ms(req.wait_ms)?;
    if let Some(m) = &req.member {
        validate_name(m)?;
    }
    let broker = state.broker()?;
    may_work(&broker, &principal, &group)?;
    // The body carries the long-poll: it ends within the request timeout.
    let wait_ms = req.wait_ms.min(state.config().request_timeout_ms / 2);
    let wait = wait_for(&state, Duration::from_millis(wait_ms));
    let answer = broker.lease(&group, max, Some(wait)).await?;
    // Counted per partition, not per record (each count is a labelled series lookup).
    let mut served: std::collections::BTreeMap<(&str, u32), crate::log::ReadBatch> =
        std::collections::BTreeMap::new();
    for r in &answer.records {
        let b = served
            .entry((r.topic.as_str(), r.partition))
            .or_insert_with(|| crate::log::ReadBatch {
                chunks: Vec::new(),
                record_count: 0,
                next_offset: 0,
                high_watermark: 0,
            });
        b.record_count += 1;
        b.chunks.push(r.frame.clone());
    }
    for ((topic, partition), batch) in &served {
        count_read(&state, topic, *partition, batch);
    }
    drop(served);
    if accepts(&headers, LEASES_MEDIA_TYPE) {
        return lease_frames(answer);
    }
    blocking(move || Ok(lease_json(&answer.records, answer.window_full))).await
}

/// The binary form of a lease answer (`Accept: application/vnd.mapq.leases`): a 4-byte
/// little-endian length, that many bytes of JSON (the JSON answer without the records'
/// keys, values and headers), then each record's frame exactly as on disk (FORMAT.md), in
/// the same order, sent from the mapping without a copy.
pub const LEASES_MEDIA_TYPE: &str = "application/vnd.mapq.leases";

fn lease_frames(answer: LeaseAnswer) -> ApiResult<Response> {
    let mut head = Vec::with_capacity(4 + 160 * answer.records.len());
    head.extend_from_slice(&[0; 4]);
    write_prelude(&mut head, &answer.records, answer.window_full);
    let prelude_len = (head.len() - 4) as u32;
    head[..4].copy_from_slice(&prelude_len.to_le_bytes());
    let len = head.len() + answer.frames.iter().map(bytes::Bytes::len).sum::<usize>();
    let chunks = std::iter::once(bytes::Bytes::from(head)).chain(answer.frames);
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.map(Ok::<_, std::convert::Infallible>),
    ));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LEASES_MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

/// The binary answer's JSON: `{"records":[{"topic","partition","offset","timestamp_ms",
/// "lease","delivery","lease_expires_ms"}, ...],"window_full"}`, written straight into
/// `out` (through serde it was a tenth of the server's CPU under a queue's load). Topic
/// names and tokens are made of `[A-Za-z0-9._-]` (`validate_name`): nothing to escape.
fn write_prelude(out: &mut Vec<u8>, records: &[LeasedRecord], window_full: bool) {
    use std::io::Write;
    out.extend_from_slice(b"{\"records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"topic\":\"{}\",\"partition\":{},\"offset\":{},\"timestamp_ms\":{},\"lease\":\"{}\",\"delivery\":{},\"lease_expires_ms\":{}}}",
            r.topic,
            r.partition,
            r.record.offset,
            r.record.timestamp_ms,
            r.token(),
            r.delivery,
            r.expires_ms
        );
    }
    let _ = write!(out, "],\"window_full\":{window_full}}}");
}

fn lease_json(records: &[LeasedRecord], window_full: bool) -> Response {
    let tokens: Vec<String> = records.iter().map(|r| r.token().to_string()).collect();
    let body = LeaseResponse {
        records: records
            .iter()
            .zip(&tokens)
            .map(|(r, token)| LeasedRecordOut {
                topic: &r.topic,
                partition: r.partition,
                record: record_json(&r.record),
                lease: token,
                delivery: r.delivery,
                lease_expires_ms: r.expires_ms,
            })
            .collect(),
        window_full,
    };
    let len = records.iter().map(|r| r.frame.len()).sum();
    json_records_response(&body, len, records.len())
}

/// The errors `ack` answers with (besides those of every route).
pub const ACK_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::GroupNotFound,
    ErrorCode::GroupExists,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RequestTimeout,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Ack leased records, in order: `accept` (settled), `release` (available again after
/// `delay_ms`; dead-lettered after the last delivery), `reject` (dead-lettered at once),
/// `extend` (the lease ends `lease_ms` from now). Each result is `ok`, or `lease_lost`
/// when the record was leased again since (the token acts on nothing); a repeated accept is
/// `ok` with `repeat`. A malformed ack refuses the whole request (`400`), nothing changed.
/// Durable before the answer.
#[utoipa::path(post, path = "/v1/groups/{group}/acks", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = AckRequest,
    responses((status = 200, body = AckResponse)))]
pub async fn ack(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    validate_name(&group)?;
    // The tokens are borrowed from the body, and the answer's from them: no copy of each.
    let body = crate::server::read_small_body(state.config(), body).await?;
    let req: AckRequest = crate::server::parse_json(&body)?;
    if req.acks.is_empty() {
        return Err(ApiError::bad_request("`acks` is empty"));
    }
    let broker = state.broker()?;
    let default_lease = may_work(&broker, &principal, &group)?.settings.lease_ms;
    let mut acks = Vec::with_capacity(req.acks.len());
    for (i, a) in req.acks.iter().enumerate() {
        let token = Token::decode(&a.lease).ok_or_else(|| {
            ApiError::bad_request(format!("acks[{i}]: {:?} is not a lease token", a.lease))
        })?;
        let check = |what: &str, v: Option<u64>, default: u64| -> ApiResult<u64> {
            let v = v.unwrap_or(default);
            if v > MAX_LEASE_MS {
                return Err(ApiError::bad_request(format!(
                    "acks[{i}]: {what} must be at most {MAX_LEASE_MS}, not {v}"
                )));
            }
            Ok(v)
        };
        let misplaced = |field: &str| {
            ApiError::bad_request(format!(
                "acks[{i}]: {field} does not go with {:?}",
                a.ack_type
            ))
        };
        let kind = match a.ack_type {
            AckType::Accept | AckType::Reject if a.delay_ms.is_some() => {
                return Err(misplaced("delay_ms"))
            }
            AckType::Accept | AckType::Reject | AckType::Release if a.lease_ms.is_some() => {
                return Err(misplaced("lease_ms"))
            }
            AckType::Extend if a.delay_ms.is_some() => return Err(misplaced("delay_ms")),
            AckType::Accept => AckKind::Accept,
            AckType::Reject => AckKind::Reject,
            AckType::Release => AckKind::Release {
                delay_ms: check("delay_ms", a.delay_ms, 0)?,
            },
            AckType::Extend => AckKind::Extend {
                lease_ms: check("lease_ms", a.lease_ms, default_lease)?,
            },
        };
        acks.push((token, kind));
    }
    // Accepts and extends are applied here when that takes no waiting (see
    // `Broker::try_ack_now`): cheaper than the hand-off to the blocking pool.
    let (results, settle) = match at_once(|| broker.try_ack_now(&group, &acks)).await? {
        Some(done) => done,
        None => blocking(move || Ok(broker.ack(&group, &acks)?)).await?,
    };
    // In a cluster: the acks are on every in-sync replica of the journal before the answer.
    settle.replicated().await?;
    Ok(axum::Json(AckResponse {
        results: req
            .acks
            .iter()
            .zip(results)
            .map(|(a, outcome)| {
                let (status, repeat) = match outcome {
                    AckOutcome::Ok { repeat } => (AckStatus::Ok, repeat),
                    AckOutcome::LeaseLost => (AckStatus::LeaseLost, false),
                };
                AckResultOut {
                    lease: std::borrow::Cow::Borrowed(&a.lease),
                    status,
                    repeat,
                }
            })
            .collect(),
    })
    .into_response())
}

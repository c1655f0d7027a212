//! Consumer groups with members: group settings, joins and heartbeats (long-polling for a
//! change of assignment), leaves, member fetches, and the description of a group. The
//! rules are the broker's coordinator's; these handlers parse, authorize and render.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::groups::{
    AssignedPartition, AutoOffsetReset, GroupDescriptionOut, GroupOut, GroupSettingsIn,
    GroupSettingsOut, GroupType, JoinRequest, JoinResponse, MemberOut, PartitionLagOut,
    PutGroupOut, TopicPartitionRef,
};
use crate::api::records::{MemberRecordOut, MemberRecords};
use crate::auth::{Permission, Principal};
use crate::broker::assignor::TopicPartition;
use crate::broker::members::{GroupSettings, OffsetReset};
use crate::broker::{validate_name, HeartbeatCall};
use crate::log::{ReadBatch, StoredRecord};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::routes::consume::{
    check_wait_ms, count_read, json_records_response, octets_response, read_budget, record_json,
    wait_for, wants_octets,
};
use crate::server::{blocking, AppState};

fn settings_out(name: &str, s: &GroupSettings) -> GroupSettingsOut {
    GroupSettingsOut {
        name: name.to_owned(),
        group_type: GroupType::Partitioned,
        session_timeout_ms: s.session_timeout_ms,
        rebalance_timeout_ms: s.rebalance_timeout_ms,
        auto_offset_reset: match s.auto_offset_reset {
            OffsetReset::Earliest => AutoOffsetReset::Earliest,
            OffsetReset::Latest => AutoOffsetReset::Latest,
        },
    }
}

fn tp_ref((topic, partition): &TopicPartition) -> TopicPartitionRef {
    TopicPartitionRef {
        topic: topic.clone(),
        partition: *partition,
    }
}

/// The errors `put_group` answers with (besides those of every route).
pub const PUT_GROUP_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::InvalidConfig,
    ErrorCode::GroupExists,
    ErrorCode::TopicNotFound,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RequestTimeout,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Create a group, or (a group with members) change its settings; absent fields take
/// their defaults. A group with members: `201`, or `200` with its settings changed (a first
/// join creates it with the defaults, so this call is optional for it). A queue group:
/// `201`, or `200` when it exists with the same settings (`409 group_exists` with others).
#[utoipa::path(put, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = GroupSettingsIn,
    responses(
        (status = 201, body = PutGroupOut, description = "Created, durably"),
        (status = 200, body = PutGroupOut, description = "It existed; its settings are these"),
    ))]
pub async fn put_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<PutGroupOut>)> {
    validate_name(&group)?;
    let req: GroupSettingsIn = crate::server::read_json(state.config(), body).await?;
    let broker = state.broker()?;
    let (created, out) = match req {
        GroupSettingsIn::Partitioned {
            session_timeout_ms,
            rebalance_timeout_ms,
            auto_offset_reset,
        } => {
            let d = GroupSettings::default();
            let settings = GroupSettings {
                session_timeout_ms: session_timeout_ms.unwrap_or(d.session_timeout_ms),
                rebalance_timeout_ms: rebalance_timeout_ms.unwrap_or(d.rebalance_timeout_ms),
                auto_offset_reset: match auto_offset_reset {
                    Some(AutoOffsetReset::Latest) => OffsetReset::Latest,
                    Some(AutoOffsetReset::Earliest) | None => OffsetReset::Earliest,
                },
            };
            may_manage(&broker, &principal, &group).await?;
            let name = group.clone();
            let created = blocking(move || Ok(broker.put_group(&name, settings)?)).await?;
            (
                created,
                PutGroupOut::Partitioned(settings_out(&group, &settings)),
            )
        }
        GroupSettingsIn::Queue {
            topics,
            lease_ms,
            max_deliveries,
            dead_letter_topic,
            max_in_flight,
        } => {
            use crate::broker::queues::QueueSettings as Q;
            let settings = Q {
                topics,
                lease_ms: lease_ms.unwrap_or(Q::DEFAULT_LEASE_MS),
                max_deliveries: max_deliveries.unwrap_or(Q::DEFAULT_MAX_DELIVERIES),
                dead_letter_topic,
                max_in_flight: max_in_flight.unwrap_or(Q::DEFAULT_MAX_IN_FLIGHT),
            };
            let consumes = settings
                .topics
                .iter()
                .all(|t| principal.may(Permission::Consume, t));
            let produces_dlq = settings
                .dead_letter_topic
                .as_ref()
                .is_none_or(|t| principal.may(Permission::Produce, t));
            if !consumes || !produces_dlq {
                return Err(crate::server::forbidden(&principal));
            }
            let created = match state.cluster_for_write()? {
                Some(c) => c
                    .create_queue_group(&group, settings.clone())
                    .await
                    .map_err(super::cluster::cluster_error)?,
                None => {
                    let (name, s) = (group.clone(), settings.clone());
                    blocking(move || Ok(broker.create_queue_group(&name, s)?)).await?
                }
            };
            (
                created,
                PutGroupOut::Queue(super::queues::settings_out(&group, &settings)),
            )
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out)))
}

/// Changing a group's settings or removing a member needs `consume` on every topic of the
/// group (any token that may consume somewhere, while it has none): `403` otherwise.
async fn may_manage(
    broker: &Arc<crate::broker::Broker>,
    principal: &Principal,
    group: &str,
) -> ApiResult<()> {
    let (b, g) = (Arc::clone(broker), group.to_owned());
    let topics = blocking(move || Ok(b.group_topics(&g))).await?;
    if topics.iter().all(|t| principal.may(Permission::Consume, t)) {
        Ok(())
    } else {
        Err(crate::server::forbidden(principal))
    }
}

/// The errors `join` answers with (besides those of every route).
pub const JOIN_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::GroupExists,
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::FencedMember,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::PayloadTooLarge,
    ErrorCode::RequestTimeout,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Join a group (`member_epoch` 0) or heartbeat: the same idempotent call. `member` is
/// chosen by the client (e.g. a UUID). Long-polls up to `wait_ms` when the answer would
/// bring nothing new. What changed is durable before the answer.
#[utoipa::path(put, path = "/v1/groups/{group}/members/{member}", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"),
        ("member" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = JoinRequest,
    responses((status = 200, body = JoinResponse)))]
pub async fn join(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((group, member)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<JoinResponse>> {
    validate_name(&group)?;
    validate_name(&member)?;
    let req: JoinRequest = crate::server::read_json(state.config(), body).await?;
    if req.topics.is_empty() {
        return Err(ApiError::bad_request("`topics` is empty"));
    }
    for t in req.topics.iter().chain(req.owned.iter().map(|o| &o.topic)) {
        validate_name(t)?;
        if !principal.may(Permission::Consume, t) {
            return Err(crate::server::forbidden(&principal));
        }
    }
    check_wait_ms(req.wait_ms)?;
    let broker = state.broker()?;
    // A long-poll ends well within the member's session and the request timeout.
    let session = {
        let (b, g) = (Arc::clone(&broker), group.clone());
        blocking(move || Ok(b.group_settings(&g).session_timeout_ms)).await?
    };
    let wait_ms = req
        .wait_ms
        .min(session / 2)
        .min(state.config().request_timeout_ms / 2);
    let call = HeartbeatCall {
        member_epoch: req.member_epoch,
        topics: req.topics.into_iter().collect(),
        owned: req
            .owned
            .into_iter()
            .map(|o| (o.topic, o.partition))
            .collect(),
        wait: Duration::from_millis(wait_ms),
    };
    let a = broker
        .heartbeat(&group, &member, call, state.shutdown_signal())
        .await?;
    Ok(Json(JoinResponse {
        member_epoch: a.heartbeat.member_epoch,
        heartbeat_interval_ms: a.settings.heartbeat_interval_ms(),
        session_timeout_ms: a.settings.session_timeout_ms,
        assignment: a
            .heartbeat
            .assignment
            .iter()
            .map(|(tp, epoch)| AssignedPartition {
                topic: tp.0.clone(),
                partition: tp.1,
                epoch: *epoch,
                committed: a.committed.get(tp).copied(),
            })
            .collect(),
        revoke: a.heartbeat.revoke.iter().map(tp_ref).collect(),
    }))
}

/// The errors `leave` answers with (besides those of every route).
pub const LEAVE_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidName,
    ErrorCode::UnknownMember,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Leave the group: the member's partitions are free at once (durably, before the answer).
#[utoipa::path(delete, path = "/v1/groups/{group}/members/{member}", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"),
        ("member" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses((status = 204, description = "Left")))]
pub async fn leave(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((group, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    validate_name(&group)?;
    validate_name(&member)?;
    let broker = state.broker()?;
    may_manage(&broker, &principal, &group).await?;
    blocking(move || Ok(broker.leave_group(&group, &member)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MemberFetchQuery {
    /// Default 1000, across the member's partitions.
    max_records: Option<usize>,
    /// Default 1 MiB; at least one record is returned even if it alone is larger.
    max_bytes: Option<usize>,
    /// Long-poll: wait up to this long (at most 30000, and at most half the session
    /// timeout) for a record in any owned partition.
    wait_ms: Option<u64>,
    /// `committed`: start every partition at the group's committed offset instead of the
    /// member's position (after a fetch whose answer was lost: a timeout, a broken
    /// connection), so that no record the member did not see is skipped.
    from: Option<String>,
}

/// The errors `member_records` answers with (besides those of every route).
pub const MEMBER_RECORDS_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::UnknownMember,
    ErrorCode::FencedMember,
    ErrorCode::TooManyWaiters,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Read records of the partitions the member owns (not those it is letting go of), from
/// its position in each: the committed offset at first, else the group's
/// `auto_offset_reset`. The position moves past what is returned; a partition that moves
/// to another member starts there from the committed offset. `X-Mapq-Heartbeat-Now: true`
/// tells the member that its assignment is changing (it has partitions to let go of or to
/// take): its next heartbeat should not wait; a long-poll ends early for it. JSON records carry `topic`
/// and `partition`. With `Accept: application/octet-stream`, the frames of one partition
/// as they lie on disk, named by `X-Mapq-Topic` and `X-Mapq-Partition` (absent when there
/// are no records), with `X-Mapq-Next-Offset` and `X-Mapq-High-Watermark`.
#[utoipa::path(get, path = "/v1/groups/{group}/members/{member}/records", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"),
        ("member" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), MemberFetchQuery),
    responses(
        (status = 200, content(
            (MemberRecords = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )),
    ))]
pub async fn member_records(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((group, member)): Path<(String, String)>,
    query: Result<Query<MemberFetchQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(q) = query?;
    validate_name(&group)?;
    validate_name(&member)?;
    let (limits, wait_ms) = read_budget(q.max_records, q.max_bytes, q.wait_ms)?;
    let from_committed = match q.from.as_deref() {
        None => false,
        Some("committed") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "from must be `committed`, not {other:?}"
            )))
        }
    };
    let octets = wants_octets(&headers);
    let broker = state.broker_for_read()?;
    // A long-poll ends well within the member's session.
    let session = {
        let (b, g) = (Arc::clone(&broker), group.clone());
        blocking(move || Ok(b.group_settings(&g).session_timeout_ms)).await?
    };
    let wait_ms = wait_ms.min(session / 2);
    let allow = Arc::new(move |topic: &str| principal.may(Permission::Consume, topic));
    let wait = wait_for(&state, Duration::from_millis(wait_ms));
    let fetch = crate::broker::MemberFetchCall {
        limits,
        one_partition: octets,
        from_committed,
    };
    let fetched = broker
        .member_fetch(&group, &member, fetch, allow, Some(wait))
        .await?;
    let heartbeat_now = fetched.heartbeat_now;
    let batches = fetched.batches;
    for ((topic, partition), batch) in &batches {
        count_read(&state, topic, *partition, batch);
    }
    let mut resp = if octets {
        match batches.into_iter().next() {
            None => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                Vec::new(),
            )
                .into_response(),
            Some(((topic, partition), batch)) => {
                let mut resp = octets_response(batch);
                let h = resp.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&topic) {
                    h.insert("x-mapq-topic", v);
                }
                h.insert("x-mapq-partition", HeaderValue::from(partition));
                resp
            }
        }
    } else {
        blocking(move || Ok(member_json(&batches))).await?
    };
    if heartbeat_now {
        resp.headers_mut()
            .insert("x-mapq-heartbeat-now", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn member_json(batches: &[(TopicPartition, ReadBatch)]) -> Response {
    let decoded: Vec<(&TopicPartition, Vec<StoredRecord>)> = batches
        .iter()
        .map(|(tp, b)| (tp, b.records().collect()))
        .collect();
    let body = MemberRecords {
        records: decoded
            .iter()
            .flat_map(|((topic, partition), records)| {
                records.iter().map(move |r| MemberRecordOut {
                    topic,
                    partition: *partition,
                    record: record_json(r),
                })
            })
            .collect(),
    };
    let (len, count) = batches.iter().fold((0, 0), |(l, c), (_, b)| {
        (l + b.byte_len(), c + b.record_count)
    });
    json_records_response(&body, len, count)
}

/// The errors `describe_group` answers with (besides those of every route).
pub const DESCRIBE_GROUP_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidName,
    ErrorCode::GroupNotFound,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// A group. With members (or committed offsets only): its settings, members with their
/// assignment, and the committed offset and lag of every partition of its topics (whether
/// or not members are alive). A queue group: backlog, in flight, oldest unacked age and
/// dead letters, in all and per partition, and its settings.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses((status = 200, body = GroupOut)))]
pub async fn describe_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
) -> ApiResult<Json<GroupOut>> {
    validate_name(&group)?;
    let broker = state.broker_for_read()?;
    if broker.is_queue_group(&group) {
        let q = super::queues::describe(&broker, &principal, &group).await?;
        return Ok(Json(GroupOut::Queue(q)));
    }
    let name = group.clone();
    let d = blocking(move || Ok(broker.describe_group(&name)?)).await?;
    let may = |t: &str| principal.may(Permission::Consume, t);
    let topics: BTreeSet<&str> = d
        .topics
        .iter()
        .map(String::as_str)
        .chain(d.offsets.iter().map(|o| o.topic.as_str()))
        .collect();
    // Shown to a token that may consume one of its topics (any, while it has none yet).
    if !topics.is_empty() && !topics.iter().any(|t| may(t)) {
        return Err(crate::broker::BrokerError::GroupNotFound(group).into());
    }
    let offsets: Vec<PartitionLagOut> = d
        .offsets
        .iter()
        .filter(|o| may(&o.topic))
        .map(|o| PartitionLagOut {
            topic: o.topic.clone(),
            partition: o.partition,
            offset: o.offset,
            lag: o.lag,
        })
        .collect();
    Ok(Json(GroupOut::Partitioned(GroupDescriptionOut {
        name: d.name.clone(),
        group_type: GroupType::Partitioned,
        epoch: d.epoch,
        settings: settings_out(&d.name, &d.settings),
        topics: d.topics.iter().filter(|t| may(t)).cloned().collect(),
        members: d
            .members
            .iter()
            .map(|m| MemberOut {
                member: m.member.clone(),
                member_epoch: m.member_epoch,
                topics: m.topics.iter().cloned().collect(),
                assignment: m.assignment.iter().map(tp_ref).collect(),
                revoking: m.revoking.iter().map(tp_ref).collect(),
                last_seen_ms: m.last_seen_ms,
            })
            .collect(),
        lag: offsets.iter().map(|o| o.lag).sum(),
        offsets,
    })))
}

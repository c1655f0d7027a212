//! Consumer group offsets.

use axum::extract::{Path, Query, State};
use axum::Extension;

use crate::auth::{Permission, Principal};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::groups::{CommitRequest, GroupList, GroupOffsets, OffsetOut};
use crate::broker::{validate_name, BrokerError};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::{blocking, AppState};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    /// Only this topic's offsets.
    topic: Option<String>,
}

/// The errors `commit_offsets` answers with (besides those of every route).
pub const COMMIT_OFFSETS_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::UnknownMember,
    ErrorCode::FencedMember,
    ErrorCode::StaleMemberEpoch,
    ErrorCode::PartitionNotOwned,
    ErrorCode::GroupExists,
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::PartitionNotFound,
    ErrorCode::RequestTimeout,
    ErrorCode::PayloadTooLarge,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// Commit a group's offsets. Durable (fsync) before the answer. In a group with members,
/// a member commits the partitions it owns, with `member` and `member_epoch`; a commit
/// without them is accepted only while the group has no members.
#[utoipa::path(put, path = "/v1/groups/{group}/offsets", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = CommitRequest,
    responses(
        (status = 204, description = "Committed, durably"),
    ))]
pub async fn commit_offsets(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    validate_name(&group)?;
    let req: CommitRequest = crate::server::read_json(state.config(), body).await?;
    if req
        .offsets
        .iter()
        .any(|o| !principal.may(Permission::Consume, &o.topic))
    {
        return Err(crate::server::forbidden(&principal));
    }
    if req.offsets.is_empty() {
        return Err(ApiError::bad_request("`offsets` is empty"));
    }
    let member = match (req.member, req.member_epoch) {
        (Some(m), Some(e)) => {
            validate_name(&m)?;
            Some((m, e))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give both `member` and `member_epoch`, or neither",
            ))
        }
    };
    let broker = state.broker()?;
    let entries: Vec<(String, u32, u64)> = req
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    blocking(move || {
        let member = member.as_ref().map(|(m, e)| (m.as_str(), *e));
        Ok(broker.commit_offsets(&group, member, &entries)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The errors `get_offsets` answers with (besides those of every route).
pub const GET_OFFSETS_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::GroupExists,
    ErrorCode::InvalidName,
    ErrorCode::GroupNotFound,
    ErrorCode::NotReady,
    ErrorCode::NotLeader,
    ErrorCode::LeaderNotAvailable,
];

/// A group's committed offsets and lag, on the topics the token may consume.
#[utoipa::path(get, path = "/v1/groups/{group}/offsets", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), GroupQuery),
    responses(
        (status = 200, body = GroupOffsets),
    ))]
pub async fn get_offsets(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    query: Result<Query<GroupQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<GroupOffsets>> {
    let Query(q) = query?;
    validate_name(&group)?;
    if let Some(topic) = &q.topic {
        validate_name(topic)?;
        if !principal.may(Permission::Consume, topic) {
            return Err(crate::server::forbidden(&principal));
        }
    }
    let broker = state.broker_for_read()?;
    if broker.is_queue_group(&group) {
        return Err(BrokerError::WrongGroupType {
            group,
            is: "a queue group (it commits no offsets: see GET /v1/groups/{group})",
        }
        .into());
    }
    // The group's lock is held across a commit's fsync: wait for it off the async workers.
    let committed = {
        let broker = std::sync::Arc::clone(&broker);
        let group = group.clone();
        crate::server::blocking(move || broker.groups().offsets(&group).map_err(ApiError::from))
            .await?
    };
    // A group is shown to a token that may consume one of the topics it committed on.
    if !committed
        .keys()
        .any(|(topic, _)| principal.may(Permission::Consume, topic))
    {
        return Err(crate::broker::BrokerError::GroupNotFound(group).into());
    }
    let mut offsets = Vec::new();
    for ((topic, partition), offset) in committed {
        if q.topic.as_ref().is_some_and(|t| *t != topic)
            || !principal.may(Permission::Consume, &topic)
        {
            continue;
        }
        // Offsets of deleted topics or partitions are not shown.
        let Ok(t) = broker.topic(&topic) else {
            continue;
        };
        let Ok(p) = t.partition(partition) else {
            continue;
        };
        let hwm = p.high_watermark();
        offsets.push(OffsetOut {
            topic,
            partition,
            offset,
            lag: hwm.saturating_sub(offset),
        });
    }
    Ok(Json(GroupOffsets { offsets }))
}

/// The errors `list_groups` answers with (besides those of every route).
pub const LIST_GROUPS_ERRORS: &[ErrorCode] = &[ErrorCode::NotReady];

/// List the groups (with members, or with committed offsets) on topics the token may
/// consume.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList)))]
pub async fn list_groups(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<GroupList>> {
    let broker = state.broker_for_read()?;
    // Each group's lock is held across a commit's fsync: read them off the async workers.
    let groups = crate::server::blocking(move || {
        Ok(broker
            .group_names()
            .into_iter()
            .filter(|g| {
                let topics = broker.group_topics(g);
                topics.is_empty()
                    || topics
                        .iter()
                        .any(|topic| principal.may(Permission::Consume, topic))
            })
            .collect())
    })
    .await?;
    Ok(Json(GroupList { groups }))
}

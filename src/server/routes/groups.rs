//! Consumer group offsets.

use axum::extract::{Path, Query, State};
use axum::Extension;

use crate::auth::{Permission, Principal};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::broker::{validate_name, BrokerError};
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use crate::server::{blocking, AppState};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetIn {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,200}$")]
    pub topic: String,
    pub partition: u32,
    /// The next offset the group will consume (at most the high watermark).
    pub offset: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub offsets: Vec<OffsetIn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetOut {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// High watermark minus the committed offset.
    pub lag: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupOffsets {
    pub offsets: Vec<OffsetOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    /// Only this topic's offsets.
    topic: Option<String>,
}

/// Commit a group's offsets. Durable (fsync) before the answer.
#[utoipa::path(put, path = "/v1/groups/{group}/offsets", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    request_body = CommitRequest,
    responses(
        (status = 204, description = "Committed, durably"),
        (status = 400, description = "`bad_request` or `invalid_name`", body = ErrorBody),
        (status = 404, description = "`topic_not_found` or `partition_not_found`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body arrived too slowly", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 1 MiB", body = ErrorBody),
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
    let broker = state.broker()?;
    let entries: Vec<(String, u32, u64)> = req
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    blocking(move || {
        // Checked under the group's lock, so that a topic deleted meanwhile cannot keep
        // an offset committed here.
        let check = || {
            for (topic, partition, offset) in &entries {
                let hwm = broker
                    .topic(topic)?
                    .partition(*partition)?
                    .log()
                    .end_offset();
                if *offset > hwm {
                    return Err(BrokerError::BadRequest(format!(
                        "offset {offset} is beyond the end ({hwm}) of {topic}/{partition}"
                    )));
                }
            }
            Ok(())
        };
        broker
            .groups()
            .commit(&group, &entries, check)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A group's committed offsets and lag, on the topics the token may consume.
#[utoipa::path(get, path = "/v1/groups/{group}/offsets", tag = "groups",
    params(("group" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$"), GroupQuery),
    responses(
        (status = 200, body = GroupOffsets),
        (status = 400, description = "`bad_request` or `invalid_name`", body = ErrorBody),
        (status = 404, description = "`group_not_found`", body = ErrorBody),
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
        let hwm = p.log().end_offset();
        offsets.push(OffsetOut {
            topic,
            partition,
            offset,
            lag: hwm.saturating_sub(offset),
        });
    }
    Ok(Json(GroupOffsets { offsets }))
}

/// List the groups with committed offsets on topics the token may consume.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList)))]
pub async fn list_groups(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<GroupList>> {
    let broker = state.broker_for_read()?;
    // Each group's lock is held across a commit's fsync: read them off the async workers.
    let groups = crate::server::blocking(move || {
        let groups = broker.groups();
        Ok(groups
            .names()
            .into_iter()
            .filter(|g| {
                groups.offsets(g).is_ok_and(|o| {
                    o.keys()
                        .any(|(topic, _)| principal.may(Permission::Consume, topic))
                })
            })
            .collect())
    })
    .await?;
    Ok(Json(GroupList { groups }))
}

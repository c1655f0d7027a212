//! Topic administration: create, list, describe, delete.

use axum::extract::{Path, State};
use axum::Extension;

use crate::auth::{Permission, Principal};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::broker::{Topic, TopicOverrides};
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use crate::server::{blocking, record_target, AppState};

/// `POST /v1/topics` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// `^[A-Za-z0-9._-]{1,200}$`, not `.` or `..`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,200}$")]
    pub name: String,
    /// Default: the server's `default_partitions`.
    pub partitions: Option<u32>,
    /// Overrides of the server defaults; `null` means no limit.
    #[schema(value_type = Option<TopicConfigOut>)]
    pub config: Option<serde_json::Value>,
}

/// A topic's effective settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicConfigOut {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub segment_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionStats {
    pub partition: u32,
    pub start_offset: u64,
    /// The high watermark: the offset the next record will get.
    pub end_offset: u64,
    pub size_bytes: u64,
    pub segments: u64,
}

/// A topic as `GET /v1/topics/{topic}` describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfigOut,
    pub partition_stats: Vec<PartitionStats>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicSummary>,
}

pub fn describe(t: &Topic) -> TopicDescription {
    let c = t.config();
    TopicDescription {
        name: t.name().to_owned(),
        partitions: t.partition_count(),
        config: TopicConfigOut {
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
        },
        partition_stats: t
            .partitions()
            .iter()
            .map(|p| {
                let log = p.log();
                PartitionStats {
                    partition: p.id(),
                    start_offset: log.start_offset(),
                    end_offset: log.end_offset(),
                    size_bytes: log.size_bytes(),
                    segments: log.segment_count() as u64,
                }
            })
            .collect(),
    }
}

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "Created", body = TopicDescription),
        (status = 400, description = "`bad_request`, `invalid_name` or `invalid_config`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body arrived too slowly", body = ErrorBody),
        (status = 409, description = "`topic_exists`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 1 MiB", body = ErrorBody),
        (status = 429, description = "`too_many_topics`", body = ErrorBody),
    ))]
pub async fn create_topic(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<TopicDescription>)> {
    let req: CreateTopic = crate::server::read_json(state.config(), body).await?;
    record_target(&req.name, None);
    if !principal.may(Permission::Admin, &req.name) {
        return Err(crate::server::forbidden(&principal));
    }
    let overrides: TopicOverrides = match req.config {
        None | Some(serde_json::Value::Null) => TopicOverrides::default(),
        Some(v) => serde_json::from_value(v).map_err(|e| {
            ApiError::from(crate::broker::BrokerError::InvalidConfig(e.to_string()))
        })?,
    };
    let broker = state.broker()?;
    let t = blocking(move || {
        broker
            .create_topic(&req.name, req.partitions, overrides)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(describe(&t))))
}

/// List topics.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, body = TopicList)))]
pub async fn list_topics(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<TopicList>> {
    let broker = state.broker_for_read()?;
    Ok(Json(TopicList {
        topics: broker
            .topics()
            .iter()
            .filter(|t| principal.sees(t.name()))
            .map(|t| TopicSummary {
                name: t.name().to_owned(),
                partitions: t.partition_count(),
            })
            .collect(),
    }))
}

/// Describe a topic: its configuration and per-partition offsets and sizes.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses(
        (status = 200, body = TopicDescription),
        (status = 400, description = "`invalid_name`", body = ErrorBody),
        (status = 404, description = "`topic_not_found`", body = ErrorBody),
    ))]
pub async fn describe_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<Json<TopicDescription>> {
    record_target(&topic, None);
    let t = state.broker_for_read()?.topic(&topic)?;
    Ok(Json(describe(&t)))
}

/// Delete a topic and its files. Local tailers holding mappings keep reading what they
/// mapped.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_name`", body = ErrorBody),
        (status = 404, description = "`topic_not_found`", body = ErrorBody),
    ))]
pub async fn delete_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    record_target(&topic, None);
    let broker = state.broker()?;
    let t = broker.topic(&topic)?;
    let name = topic.clone();
    blocking(move || broker.delete_topic(&name).map_err(ApiError::from)).await?;
    state.metrics().remove_topic(&topic, t.partition_count());
    Ok(StatusCode::NO_CONTENT)
}

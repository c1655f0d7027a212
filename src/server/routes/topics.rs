//! Topic administration: create, list, describe, delete.

use axum::extract::{Path, State};
use axum::Extension;

use crate::auth::{Permission, Principal};
use axum::http::StatusCode;
use axum::Json;

use crate::api::topics::{
    CreateTopic, PartitionStats, TopicConfigOut, TopicDescription, TopicList, TopicSummary,
};
use crate::broker::{Topic, TopicOverrides};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::{blocking, record_target, AppState};

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
            idempotency_window_ms: c.idempotency_window_ms,
        },
        idempotency_keys: t.idempotency().len() as u64,
        partition_stats: t
            .partitions()
            .iter()
            .map(|p| {
                let log = p.log();
                PartitionStats {
                    partition: p.id(),
                    start_offset: log.start_offset(),
                    end_offset: log.end_offset(),
                    durable_offset: log.durable_offset(),
                    high_watermark: p.high_watermark(),
                    size_bytes: log.size_bytes(),
                    segments: log.segment_count() as u64,
                }
            })
            .collect(),
    }
}

/// The errors `create_topic` answers with (besides those of every route).
pub const CREATE_TOPIC_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::InvalidName,
    ErrorCode::InvalidConfig,
    ErrorCode::RequestTimeout,
    ErrorCode::TopicExists,
    ErrorCode::PayloadTooLarge,
    ErrorCode::TooManyTopics,
    ErrorCode::InsufficientStorage,
    ErrorCode::TooManyOpenFiles,
    ErrorCode::NotReady,
    ErrorCode::ShuttingDown,
    ErrorCode::LeaderNotAvailable,
];

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "Created", body = TopicDescription),
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
    if let Some(c) = state.cluster_for_write()? {
        // `Cluster::create_topic` checks the name, the partitions and the overrides.
        let partitions = req.partitions.unwrap_or(broker.config().default_partitions);
        let t = c
            .create_topic(
                &req.name,
                partitions,
                req.replication_factor,
                req.min_insync_replicas,
                overrides,
            )
            .await
            .map_err(super::cluster::cluster_error)?;
        let described = blocking(move || Ok(describe(&t))).await?;
        return Ok((StatusCode::CREATED, Json(described)));
    }
    if req.replication_factor.is_some_and(|rf| rf != 1)
        || req.min_insync_replicas.is_some_and(|m| m != 1)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidConfig,
            "replication_factor and min_insync_replicas above 1 need a cluster (mapq serve --cluster)",
        ));
    }
    // The description counts the idempotency keys under their lock: off the async workers.
    let described = blocking(move || {
        broker
            .create_topic(&req.name, req.partitions, overrides)
            .map(|t| describe(&t))
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(described)))
}

/// The errors `list_topics` answers with (besides those of every route).
pub const LIST_TOPICS_ERRORS: &[ErrorCode] = &[ErrorCode::NotReady];

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

/// The errors `describe_topic` answers with (besides those of every route).
pub const DESCRIBE_TOPIC_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::NotReady,
];

/// Describe a topic: its configuration and per-partition offsets and sizes.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses(
        (status = 200, body = TopicDescription),
    ))]
pub async fn describe_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<Json<TopicDescription>> {
    record_target(&topic, None);
    let t = state.broker_for_read()?.topic(&topic)?;
    // The description counts the idempotency keys under the lock produce claims take (and
    // may purge expired ones): off the async workers.
    Ok(Json(blocking(move || Ok(describe(&t))).await?))
}

/// The errors `delete_topic` answers with (besides those of every route).
pub const DELETE_TOPIC_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidName,
    ErrorCode::TopicNotFound,
    ErrorCode::NotReady,
    ErrorCode::ShuttingDown,
    ErrorCode::LeaderNotAvailable,
];

/// Delete a topic and its files. Local tailers holding mappings keep reading what they
/// mapped.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,200}$")),
    responses(
        (status = 204, description = "Deleted"),
    ))]
pub async fn delete_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    record_target(&topic, None);
    let broker = state.broker()?;
    let t = broker.topic(&topic)?;
    if let Some(c) = state.cluster_for_write()? {
        c.delete_topic(&topic)
            .await
            .map_err(super::cluster::cluster_error)?;
        state.metrics().remove_topic(&topic, t.partition_count());
        return Ok(StatusCode::NO_CONTENT);
    }
    let name = topic.clone();
    blocking(move || broker.delete_topic(&name).map_err(ApiError::from)).await?;
    state.metrics().remove_topic(&topic, t.partition_count());
    Ok(StatusCode::NO_CONTENT)
}

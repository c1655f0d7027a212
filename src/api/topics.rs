//! Topic administration bodies: `POST /v1/topics`, `GET /v1/topics`, `GET /v1/topics/{topic}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/topics` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// In a cluster: replicas of each partition. Default: `default_replication_factor`, or
    /// the number of live nodes when fewer. Outside one: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    /// In a cluster: in-sync replicas a write needs. Default:
    /// `default_min_insync_replicas`, at most the replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_insync_replicas: Option<u32>,
}

/// A topic's effective settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigOut {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub segment_ms: Option<u64>,
    /// How long a produce request's `Idempotency-Key` is remembered (ms).
    pub idempotency_window_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionStats {
    pub partition: u32,
    pub start_offset: u64,
    /// The high watermark: the offset the next record will get.
    pub end_offset: u64,
    /// Records below this offset are durable (msynced).
    pub durable_offset: u64,
    /// What consumers may read up to: the end offset, or in a cluster what every in-sync
    /// replica holds.
    pub high_watermark: u64,
    pub size_bytes: u64,
    pub segments: u64,
}

/// A topic as `GET /v1/topics/{topic}` describes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfigOut,
    pub partition_stats: Vec<PartitionStats>,
    /// Idempotency keys remembered now (within `idempotency_window_ms`).
    pub idempotency_keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicSummary>,
}

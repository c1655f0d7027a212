//! Cluster bodies: `GET /v1/cluster`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A node, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeOut {
    pub node_id: String,
    pub advertised_http: String,
    pub advertised_kafka: String,
    /// Registered in etcd now (its lease is alive).
    pub alive: bool,
}

/// A partition, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionOut {
    pub topic: String,
    pub partition: u32,
    /// Node id; `null` while the partition has no live in-sync replica.
    pub leader: Option<String>,
    pub leader_epoch: u32,
    pub replicas: Vec<String>,
    pub isr: Vec<String>,
    /// What every in-sync replica holds, as this node knows it (`null` where this node
    /// holds no replica).
    pub high_watermark: Option<u64>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterOut {
    /// The node that answered.
    pub node_id: String,
    pub nodes: Vec<NodeOut>,
    pub controller: Option<String>,
    pub partitions: Vec<PartitionOut>,
}

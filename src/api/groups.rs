//! Consumer group bodies: committed offsets and the group list.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetIn {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,200}$")]
    pub topic: String,
    pub partition: u32,
    /// The next offset the group will consume (at most the high watermark).
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub offsets: Vec<OffsetIn>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OffsetOut {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// High watermark minus the committed offset.
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupOffsets {
    pub offsets: Vec<OffsetOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<String>,
}

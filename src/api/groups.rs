//! Consumer group bodies: committed offsets, the group list, and groups with members
//! (settings, joins and heartbeats, member fetches, the description of a group).

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
    /// The committing member (groups with members): each partition must be owned by it.
    /// Without it, the commit is accepted only while the group has no members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The member's epoch (with `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_epoch: Option<u64>,
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

/// The kind of group (`PUT /v1/groups/{group}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupType {
    /// Members share the partitions: each partition is owned by one member at a time.
    Partitioned,
    /// Per-record leases, acks and dead letters (not available in this version).
    Queue,
}

/// Where a member without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoOffsetReset {
    Earliest,
    Latest,
}

/// A group's settings; absent fields take their defaults.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSettingsIn {
    #[serde(rename = "type")]
    pub group_type: GroupType,
    /// Default 30000: a member not heard from for this long is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u64>,
    /// Default 60000: a member that does not let go of a revoked partition within this
    /// long is fenced, and the partition moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_timeout_ms: Option<u64>,
    /// Default `earliest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_offset_reset: Option<AutoOffsetReset>,
}

/// A group's settings, as they are.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupSettingsOut {
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: GroupType,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub auto_offset_reset: AutoOffsetReset,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicPartitionRef {
    pub topic: String,
    pub partition: u32,
}

/// A partition a member holds: `{"topic", "partition"}`, or an `assignment` entry as it
/// came (its `epoch` and `committed` are not needed, and ignored).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnedPartition {
    pub topic: String,
    pub partition: u32,
    #[serde(default, skip_serializing)]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing)]
    pub committed: Option<u64>,
}

/// A join (`member_epoch` 0) or a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The topics the member subscribes to (each must exist).
    pub topics: Vec<String>,
    /// 0 to join; then the epoch of the last answer.
    #[serde(default)]
    pub member_epoch: u64,
    /// The partitions the member holds: those assigned to it that it has not let go of.
    /// The entries of `assignment` may be sent back as they are.
    #[serde(default)]
    pub owned: Vec<OwnedPartition>,
    /// Long-poll: wait up to this long (at most 30000, and at most half the session
    /// timeout) for the assignment to change, when the answer would bring nothing new.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A partition assigned to the member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssignedPartition {
    pub topic: String,
    pub partition: u32,
    /// The member epoch the partition was assigned at.
    pub epoch: u64,
    /// The group's committed offset (`null`: none; fetches start at `auto_offset_reset`).
    pub committed: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub member_epoch: u64,
    /// Heartbeat at least this often (a third of the session timeout).
    pub heartbeat_interval_ms: u64,
    pub session_timeout_ms: u64,
    /// The partitions the member may fetch and commit.
    pub assignment: Vec<AssignedPartition>,
    /// Partitions to let go of: stop fetching them, commit what was processed, and leave
    /// them out of `owned` in the next heartbeat.
    pub revoke: Vec<TopicPartitionRef>,
}

/// One member, as the group description shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberOut {
    pub member: String,
    pub member_epoch: u64,
    pub topics: Vec<String>,
    /// The partitions it owns (fetches).
    pub assignment: Vec<TopicPartitionRef>,
    /// Partitions it still holds but is letting go of.
    pub revoking: Vec<TopicPartitionRef>,
    /// When the server last heard from it (ms since the Unix epoch).
    pub last_seen_ms: i64,
}

/// A partition's committed offset and lag.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionLagOut {
    pub topic: String,
    pub partition: u32,
    /// `null`: nothing committed yet.
    pub offset: Option<u64>,
    /// Records still to consume: from the committed offset (else the `auto_offset_reset`
    /// position) to the end.
    pub lag: u64,
}

/// `GET /v1/groups/{group}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupDescriptionOut {
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: GroupType,
    /// Bumped at each new target assignment.
    pub epoch: u64,
    pub settings: GroupSettingsOut,
    pub topics: Vec<String>,
    pub members: Vec<MemberOut>,
    pub offsets: Vec<PartitionLagOut>,
    /// The sum of `offsets[].lag`.
    pub lag: u64,
}

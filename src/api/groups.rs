//! Consumer group bodies: committed offsets, the group list, and groups with members
//! (settings, joins and heartbeats, member fetches, the description of a group).

use std::borrow::Cow;

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
    /// Per-record leases, acks and dead letters.
    Queue,
}

/// Where a member without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoOffsetReset {
    Earliest,
    Latest,
}

/// A group's type and settings (`PUT /v1/groups/{group}`); absent fields take their
/// defaults.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GroupSettingsIn {
    /// A group with members sharing partitions.
    Partitioned {
        /// Default 30000: a member not heard from for this long is removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_timeout_ms: Option<u64>,
        /// Default 60000: a member that does not let go of a revoked partition within
        /// this long is fenced, and the partition moves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rebalance_timeout_ms: Option<u64>,
        /// Default `earliest`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auto_offset_reset: Option<AutoOffsetReset>,
    },
    /// A queue group: per-record leases, acks, redelivery, dead letters.
    Queue {
        /// The topics whose records the group hands out (each must exist).
        topics: Vec<String>,
        /// Default 30000 (100 to 43200000): how long a lease lasts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
        /// Default 5: deliveries before a record is dead-lettered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_deliveries: Option<u32>,
        /// Where records go after their last delivery or a reject (created if missing);
        /// absent or null: they are dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter_topic: Option<String>,
        /// Default 10000: records leased and not acked at most at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_in_flight: Option<u64>,
    },
}

/// A queue group's settings, as they are.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueSettingsOut {
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: GroupType,
    pub topics: Vec<String>,
    pub lease_ms: u64,
    pub max_deliveries: u32,
    pub dead_letter_topic: Option<String>,
    pub max_in_flight: u64,
}

/// `PUT /v1/groups/{group}`'s answer: the group's settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PutGroupOut {
    Partitioned(GroupSettingsOut),
    Queue(QueueSettingsOut),
}

/// `POST /v1/groups/{group}/leases`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who asks (for the server's log; a queue group does not track its workers).
    #[serde(default)]
    pub member: Option<String>,
    /// Default 100 (at most 10000).
    #[serde(default)]
    pub max_records: Option<usize>,
    /// Long-poll: wait up to this long (at most 30000) for a record.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One ack (`POST /v1/groups/{group}/acks`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckIn<'a> {
    /// The token the lease came with.
    #[serde(borrow)]
    pub lease: Cow<'a, str>,
    /// `accept`, `release` (with `delay_ms`), `reject`, or `extend` (with `lease_ms`).
    #[serde(rename = "type")]
    pub ack_type: AckType,
    /// `release`: available again after this long (default 0, at most 43200000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `extend`: the lease now ends this long from now (default the group's `lease_ms`, at
    /// most 43200000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckType {
    Accept,
    Release,
    Reject,
    Extend,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest<'a> {
    #[serde(borrow)]
    pub acks: Vec<AckIn<'a>>,
}

/// What one ack did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AckResultOut<'a> {
    #[serde(borrow)]
    pub lease: Cow<'a, str>,
    /// `ok`, or `lease_lost` (the record was leased again since: the ack acted on nothing).
    pub status: AckStatus,
    /// An `accept` of a record this token had accepted already.
    pub repeat: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Ok,
    LeaseLost,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AckResponse<'a> {
    #[serde(borrow)]
    pub results: Vec<AckResultOut<'a>>,
}

/// One partition of a queue group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuePartitionOut {
    pub topic: String,
    pub partition: u32,
    /// Records neither settled nor in flight.
    pub backlog: u64,
    /// Records leased and not acked (leases not expired).
    pub in_flight: u64,
    /// Age of the oldest record not settled (0: none).
    pub oldest_unacked_age_ms: u64,
    /// Records dead-lettered (or dropped) so far.
    pub dead_lettered: u64,
}

impl From<&crate::broker::QueuePartitionStats> for QueuePartitionOut {
    fn from(p: &crate::broker::QueuePartitionStats) -> Self {
        QueuePartitionOut {
            topic: p.topic.clone(),
            partition: p.partition,
            backlog: p.backlog,
            in_flight: p.in_flight,
            oldest_unacked_age_ms: p.oldest_unacked_age_ms,
            dead_lettered: p.dead_lettered,
        }
    }
}

/// `GET /v1/groups/{group}` of a queue group: totals at the top, the same per partition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueGroupOut {
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: GroupType,
    pub backlog: u64,
    pub in_flight: u64,
    pub oldest_unacked_age_ms: u64,
    pub dead_lettered: u64,
    /// The in-flight window (`max_in_flight`) is full: leases get nothing until acks.
    pub window_full: bool,
    pub settings: QueueSettingsOut,
    pub partitions: Vec<QueuePartitionOut>,
}

/// `GET /v1/groups/{group}`: a group with members (or only offsets), or a queue group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GroupOut {
    Partitioned(GroupDescriptionOut),
    Queue(QueueGroupOut),
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

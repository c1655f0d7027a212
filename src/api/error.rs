//! Errors on the wire: `{"error": {"code", "message", ...}}`, with a stable code from
//! [`ErrorCode`] that fixes the status. The server answers only with these codes; clients
//! match on them; the OpenAPI document lists them per route.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! codes {
    ($($variant:ident = ($code:literal, $status:literal, $what:literal),)*) => {
        /// Every error code of the API, with the status it is answered with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(#[doc = $what] $variant,)*
            /// A code this build does not know (from a newer server); never sent.
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code the server sends.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable snake_case identifier.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// What the code means, in a few words.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $what,)*
                    ErrorCode::Unknown => "a code this build does not know",
                }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Unknown => 500,
                }
            }
        }
    };
}

codes! {
    BadRequest = ("bad_request", 400, "The request is malformed (query, body, header)"),
    InvalidName = ("invalid_name", 400, "A topic or group name outside `^[A-Za-z0-9._-]{1,200}$`, or `.`/`..`"),
    InvalidConfig = ("invalid_config", 400, "A topic setting out of range"),
    Unauthorized = ("unauthorized", 401, "Tokens are configured and no valid one was sent"),
    Forbidden = ("forbidden", 403, "The token lacks the permission"),
    NotFound = ("not_found", 404, "No such route"),
    TopicNotFound = ("topic_not_found", 404, "The topic does not exist (and is not created for this request)"),
    PartitionNotFound = ("partition_not_found", 404, "The topic has no such partition"),
    GroupNotFound = ("group_not_found", 404, "No group of that name (with members, committed offsets, or a queue group)"),
    UnknownMember = ("unknown_member", 404, "The group has no such member (join first)"),
    MethodNotAllowed = ("method_not_allowed", 405, "The route does not take this method"),
    RequestTimeout = ("request_timeout", 408, "The request body arrived too slowly"),
    TopicExists = ("topic_exists", 409, "A topic of that name exists"),
    GroupExists = ("group_exists", 409, "A group of that name exists with another type or other settings"),
    FencedMember = ("fenced_member", 409, "The member was removed from the group (session or rebalance timeout, or it left): join again with `member_epoch` 0"),
    StaleMemberEpoch = ("stale_member_epoch", 409, "The commit's `member_epoch` is older than the one the partition was assigned at"),
    PartitionNotOwned = ("partition_not_owned", 409, "The member does not own the partition (or the group has members and the commit names none)"),
    IdempotencyKeyInFlight = ("idempotency_key_in_flight", 409, "A request with this `Idempotency-Key` is still in progress"),
    PayloadTooLarge = ("payload_too_large", 413, "A body over `max_request_bytes` (or the administrative limit), or a record over `max_record_bytes`"),
    UnsupportedMediaType = ("unsupported_media_type", 415, "A `Content-Type` the route does not take"),
    IdempotencyKeyMismatch = ("idempotency_key_mismatch", 422, "The `Idempotency-Key` was used for a different request"),
    OffsetOutOfRange = ("offset_out_of_range", 416, "The offset is not stored: the answer carries `earliest` and `latest`"),
    TooManyTopics = ("too_many_topics", 429, "Creating the topic would exceed `max_topics`"),
    TooManyWaiters = ("too_many_waiters", 429, "Too many consumers already wait (`max_long_poll_waiters`)"),
    InternalError = ("internal_error", 500, "Something failed inside the server; the detail is in its log"),
    NotReady = ("not_ready", 503, "The server is still recovering its partitions"),
    ShuttingDown = ("shutting_down", 503, "The server is shutting down"),
    RequestTimedOut = ("request_timed_out", 503, "No answer within `request_timeout_ms`; the request may or may not have taken effect"),
    PartitionUnavailable = ("partition_unavailable", 503, "The partition stopped accepting writes after a failed flush"),
    TooManyOpenFiles = ("too_many_open_files", 503, "The server reached its limit of open files"),
    NotLeader = ("not_leader", 307, "In a cluster: this node does not lead the partition; `Location` (and `leader`) name the node that does"),
    FencedLeaderEpoch = ("fenced_leader_epoch", 409, "In a cluster: a replication request for another leader epoch than this node's"),
    NotEnoughReplicas = ("not_enough_replicas", 503, "In a cluster: fewer in-sync replicas than `min_insync_replicas` (nothing appended), or fewer by the time the records were replicated (they may survive; not acknowledged)"),
    LeaderNotAvailable = ("leader_not_available", 503, "In a cluster: the partition has no leader reachable from this node now (a failover is under way, or this node lost its etcd session); retry"),
    InsufficientStorage = ("insufficient_storage", 507, "No disk space left (or `max_disk_bytes` reached): nothing was appended"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error response: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case identifier, e.g. `topic_not_found`.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// On `offset_out_of_range`: the earliest offset still stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest: Option<u64>,
    /// On `offset_out_of_range`: the high watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<u64>,
    /// On `not_leader`: the node id of the partition's leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_identifier_and_unknown_ones_decode() {
        for &c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            let back: ErrorCode = serde_json::from_value(c.as_str().into()).unwrap();
            assert_eq!(back, c);
            let redirect = c == ErrorCode::NotLeader && c.status() == 307;
            assert!(redirect || (400..600).contains(&c.status()), "{c}");
        }
        let later: ErrorCode = serde_json::from_str("\"lease_lost\"").unwrap();
        assert_eq!(later, ErrorCode::Unknown);
    }
}

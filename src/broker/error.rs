//! Errors of the broker, wrapping the engine's.

use std::path::Path;

use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("topic '{0}' does not exist")]
    TopicNotFound(String),
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// An `Idempotency-Key` already used for another request (another body, query or
    /// content type) within the key's window.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyMismatch,
    /// An `Idempotency-Key` whose first request is still being appended.
    #[error("a request with this Idempotency-Key is still in progress; retry once it is answered")]
    IdempotencyKeyInFlight,
    #[error("topic '{topic}' has no partition {partition}")]
    PartitionNotFound { topic: String, partition: u32 },
    #[error("invalid name {0:?}: names match ^[A-Za-z0-9._-]{{1,200}}$ and are not . or ..")]
    InvalidName(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("consumer group '{0}' does not exist")]
    GroupNotFound(String),
    /// A member's call refused by the group's coordinator (fencing).
    #[error(transparent)]
    Member(#[from] crate::broker::coordinator::CoordinatorError),
    /// A group of that name exists with another type or other settings.
    #[error("group '{0}' exists with another type or other settings")]
    GroupExists(String),
    /// A call of one kind of group on a group of the other kind.
    #[error("group '{group}' is {is}: this call is for the other kind of group")]
    WrongGroupType { group: String, is: &'static str },
    /// A commit without a member for a group that has members.
    #[error("group '{0}' has members: commit as one of them, with `member` and `member_epoch`")]
    MembersOnly(String),
    /// A group commit for an offset past the partition's end.
    #[error("offset {offset} is beyond the end ({end}) of {topic}/{partition}")]
    OffsetBeyondEnd {
        topic: String,
        partition: u32,
        offset: u64,
        end: u64,
    },
    /// A server setting that cannot work (found when the broker opens).
    #[error("invalid setting {key}: {reason}")]
    InvalidSetting { key: &'static str, reason: String },
    /// The broker's own files (topic metadata, group offsets, the lock) could not be read
    /// or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the server already has max_topics ({0}) topics")]
    TooManyTopics(u64),
    #[error(
        "the data directory {} is in use by another mapq server (pid {owner}); stop it, or give this one another --data-dir",
        data_dir.display()
    )]
    Locked {
        data_dir: std::path::PathBuf,
        owner: String,
    },
    /// The flush that would have made a producer's records durable failed (and did not stop
    /// the partition: a rename or a directory fsync). The records are in the log, but not
    /// acknowledged as durable; a later flush may succeed.
    #[error("the flush of these records failed: {0}")]
    FlushFailed(String),
    #[error("too many consumers are waiting; retry later or without wait_ms")]
    TooManyWaiters,
    #[error("a background task failed: {0}")]
    TaskFailed(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// In a cluster: etcd, which holds committed offsets and groups' state, did not take a
    /// change.
    #[error("the cluster's etcd did not take this change: {0}")]
    ClusterStore(String),
    /// In a cluster: fewer in-sync replicas than the minimum (of a queue group's journal).
    #[error("{what} has {isr} in-sync replicas, fewer than min_insync_replicas ({min}); nothing changed")]
    NotEnoughReplicas { what: String, isr: usize, min: u32 },
    /// In a cluster: a queue group's dead letter could not be handed to the leader of its
    /// dead-letter partition (it stays due, and is tried again).
    #[error("a dead letter could not be appended: {0}")]
    DeadLetter(String),
    /// In a cluster: another node coordinates this group now (or is taking it up).
    #[error("this node no longer coordinates group '{0}' (another node took it up); retry")]
    NotCoordinator(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl BrokerError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        BrokerError::Io {
            path: path.to_owned(),
            source: e,
        }
    }
}

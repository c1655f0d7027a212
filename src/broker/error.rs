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
    #[error("topic '{topic}' has no partition {partition}")]
    PartitionNotFound { topic: String, partition: u32 },
    #[error("invalid name {0:?}: names match ^[A-Za-z0-9._-]{{1,200}}$ and are not . or ..")]
    InvalidName(String),
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    #[error("consumer group '{0}' does not exist")]
    GroupNotFound(String),
    #[error("{0}")]
    BadRequest(String),
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
    #[error("too many consumers are waiting; retry later or without wait_ms")]
    TooManyWaiters,
    #[error("a background task failed: {0}")]
    TaskFailed(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl BrokerError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        BrokerError::Log(LogError::io(path, e))
    }
}

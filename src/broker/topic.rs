//! A topic: its metadata file and its partitions.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;

use super::error::BrokerError;
use super::partitioner::RoundRobin;
use crate::config::Config;
use crate::log::WorkerHandle;
use crate::log::{Appended, DiskQuota, LogError, PartitionLog};

/// The topic metadata file, `<data_dir>/<topic>/topic.json`.
pub const META_FILE: &str = "topic.json";

/// A topic's overrides of the server's defaults. Absent: the server default applies;
/// `null`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverrides {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some"
    )]
    pub retention_ms: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some"
    )]
    pub retention_bytes: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some"
    )]
    pub segment_ms: Option<Option<u64>>,
}

/// A present field (even `null`) is `Some`.
fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Logs every entry of a topic directory that is neither its metadata nor one of its
/// partitions, and leaves it alone.
fn report_strays(dir: &Path, partitions: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let partition = name
            .parse::<u32>()
            .is_ok_and(|id| id < partitions && id.to_string() == name);
        if name != META_FILE && !partition {
            tracing::warn!(path = %entry.path().display(), "unexpected entry in topic directory; left alone");
        }
    }
}

impl TopicOverrides {
    pub fn validate(&self) -> Result<(), BrokerError> {
        for (key, value) in [
            ("retention_ms", self.retention_ms.flatten()),
            ("retention_bytes", self.retention_bytes.flatten()),
            ("segment_ms", self.segment_ms.flatten()),
            ("segment_bytes", self.segment_bytes),
        ] {
            if value.is_some_and(|v| v > i64::MAX as u64) {
                return Err(BrokerError::InvalidConfig(format!(
                    "{key} must be at most {}",
                    i64::MAX
                )));
            }
        }
        if let Some(b) = self.segment_bytes {
            if !(64 << 10..=crate::log::MAX_SEGMENT_BYTES).contains(&b) {
                return Err(BrokerError::InvalidConfig(format!(
                    "segment_bytes must be between 65536 and {}",
                    crate::log::MAX_SEGMENT_BYTES
                )));
            }
        }
        Ok(())
    }
}

/// A topic's effective settings: its overrides over the server defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub segment_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    partitions: u32,
    #[serde(default)]
    config: TopicOverrides,
}

/// The number of partitions of the topic in `dir`, from its metadata file (for readers of
/// the files, such as `mapq tail`).
pub fn partition_count(dir: &Path) -> Result<u32, BrokerError> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path).map_err(|e| BrokerError::io(&path, e))?;
    let meta: TopicMeta = serde_json::from_slice(&bytes)
        .map_err(|e| BrokerError::Corrupt(format!("{}: {e}", path.display())))?;
    Ok(meta.partitions)
}

/// One partition: its log, and a watch of its end offset that wakes waiting consumers.
#[derive(Debug)]
pub struct Partition {
    id: u32,
    log: PartitionLog,
    end_offset: watch::Sender<u64>,
    /// A flush of this partition is queued (after `flush_messages` records).
    flush_queued: AtomicBool,
    /// Changes after every flush of this partition, whoever ran it: what `durability=fsync`
    /// producers wait on, as tasks rather than threads (see [`Broker::wait_durable`]).
    flushed: watch::Sender<FlushOutcome>,
    /// A flush for waiting producers runs on the blocking pool: at most one at a time per
    /// partition, which every producer waiting meanwhile shares (group commit).
    flush_for_waiters: AtomicBool,
}

/// What the last flush of a partition left: the durable offset, or why it failed.
#[derive(Debug, Clone, Default)]
pub enum FlushOutcome {
    /// No flush has ended since the partition was opened.
    #[default]
    None,
    Durable(u64),
    Failed(std::sync::Arc<str>),
}

impl FlushOutcome {
    /// The outcome of a flush's result.
    pub fn of(result: &Result<u64, BrokerError>) -> Self {
        match result {
            Ok(durable) => FlushOutcome::Durable(*durable),
            Err(e) => FlushOutcome::Failed(e.to_string().into()),
        }
    }
}

impl Partition {
    fn open(dir: &Path, id: u32, config: &crate::log::LogConfig) -> Result<Self, BrokerError> {
        let (log, _report) = PartitionLog::open(dir, config.clone()).map_err(BrokerError::Log)?;
        let end = log.end_offset();
        Ok(Partition {
            id,
            log,
            end_offset: watch::Sender::new(end),
            flush_queued: AtomicBool::new(false),
            flushed: watch::Sender::new(FlushOutcome::None),
            flush_for_waiters: AtomicBool::new(false),
        })
    }

    /// A receiver that changes after every flush of this partition.
    pub fn subscribe_flushes(&self) -> watch::Receiver<FlushOutcome> {
        self.flushed.subscribe()
    }

    /// Tells waiting producers what a flush did.
    pub(super) fn flushed(&self, outcome: FlushOutcome) {
        self.flushed.send_replace(outcome);
    }

    /// Claims the right to start a flush for waiting producers; false if one runs.
    pub(super) fn claim_waiters_flush(&self) -> bool {
        !self.flush_for_waiters.swap(true, Ordering::AcqRel)
    }

    /// Gives the right back once that flush has ended.
    pub(super) fn release_waiters_flush(&self) {
        self.flush_for_waiters.store(false, Ordering::Release);
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Marks a flush as queued; false if one already was.
    pub fn queue_flush(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// Clears the queued mark before the queued flush runs.
    pub fn take_queued_flush(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// Records appended but not yet flushed.
    pub fn unflushed_records(&self) -> u64 {
        self.log
            .end_offset()
            .saturating_sub(self.log.durable_offset())
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// A receiver that changes whenever records are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_offset.subscribe()
    }

    /// Wakes consumers waiting for records below `end`. Appends finish their notification
    /// in any order, so the watched value only ever grows.
    pub fn notify(&self, end: u64) {
        self.end_offset.send_if_modified(|current| {
            let grew = end > *current;
            if grew {
                *current = end;
            }
            grew
        });
    }

    /// Appends client-built frames (blocks) and wakes waiting consumers.
    pub fn append_frames(&self, frames: &[u8]) -> Result<Appended, LogError> {
        let appended = self.log.append_frames(frames)?;
        self.notify(appended.first_offset + appended.count);
        Ok(appended)
    }
}

/// A topic: a fixed number of partitions.
#[derive(Debug)]
pub struct Topic {
    name: String,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
    round_robin: RoundRobin,
}

fn effective(o: &TopicOverrides, c: &Config) -> TopicConfig {
    TopicConfig {
        retention_ms: o.retention_ms.unwrap_or(c.retention_ms),
        retention_bytes: o.retention_bytes.unwrap_or(c.retention_bytes),
        segment_bytes: o.segment_bytes.unwrap_or(c.segment_bytes),
        segment_ms: o.segment_ms.unwrap_or(c.segment_ms),
    }
}

impl Topic {
    /// Creates the topic's directory, metadata (durably) and partitions.
    pub fn create(
        dir: &Path,
        name: &str,
        partitions: u32,
        overrides: TopicOverrides,
        config: &Config,
        prefaulter: WorkerHandle,
        quota: Option<Arc<DiskQuota>>,
    ) -> Result<Self, BrokerError> {
        fs::create_dir_all(dir).map_err(|e| BrokerError::io(dir, e))?;
        let meta = TopicMeta {
            name: name.to_owned(),
            partitions,
            config: overrides,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_durably(&dir.join(META_FILE), &json)?;
        if let Some(parent) = dir.parent() {
            let _ = crate::log::sync_dir(parent);
        }
        Self::open(dir, name, config, prefaulter, quota)
    }

    /// Opens an existing topic directory.
    pub fn open(
        dir: &Path,
        name: &str,
        config: &Config,
        prefaulter: WorkerHandle,
        quota: Option<Arc<DiskQuota>>,
    ) -> Result<Self, BrokerError> {
        let path = dir.join(META_FILE);
        let bytes = fs::read(&path).map_err(|e| BrokerError::io(&path, e))?;
        let meta: TopicMeta = serde_json::from_slice(&bytes)
            .map_err(|e| BrokerError::Corrupt(format!("{}: {e}", path.display())))?;
        if meta.name != name || meta.partitions == 0 {
            return Err(BrokerError::Corrupt(format!(
                "{}: does not describe topic {name}",
                path.display()
            )));
        }
        let topic_config = effective(&meta.config, config);
        let mut log_config = config.log_config(topic_config.segment_bytes);
        log_config.worker = Some(prefaulter);
        log_config.quota = quota;
        let partitions = (0..meta.partitions)
            .map(|id| Partition::open(&dir.join(id.to_string()), id, &log_config).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        report_strays(dir, meta.partitions);
        Ok(Topic {
            name: name.to_owned(),
            config: topic_config,
            partitions,
            round_robin: RoundRobin::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>, BrokerError> {
        self.partitions
            .get(id as usize)
            .ok_or(BrokerError::PartitionNotFound {
                topic: self.name.clone(),
                partition: id,
            })
    }

    /// The partition for a record: explicit, else by key, else round-robin.
    pub fn choose_partition(
        &self,
        explicit: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<u32, BrokerError> {
        let n = self.partition_count();
        match (explicit, key) {
            (Some(p), _) => self.partition(p).map(|_| p),
            (None, Some(k)) => Ok(super::partitioner::partition_for_key(k, n)),
            (None, None) => Ok(self.round_robin.next(n)),
        }
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, fsync of
/// the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| BrokerError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| BrokerError::io(&tmp, e))?;
    f.sync_all().map_err(|e| BrokerError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| BrokerError::io(path, e))?;
    if let Some(dir) = path.parent() {
        crate::log::sync_dir(dir).map_err(BrokerError::Log)?;
    }
    Ok(())
}

//! A topic: its metadata file and its partitions.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use super::error::BrokerError;
use super::idempotency::{Idempotency, Piece};
use super::partition::Partition;
use super::partitioner::RoundRobin;
use crate::config::Config;
use crate::log::{DiskQuota, Record, ValidFrames, WorkerHandle};

/// The topic metadata file, `<data_dir>/<topic>/topic.json`.
pub const META_FILE: &str = "topic.json";

/// Threads that open (or create) a topic's partitions at once.
const OPENING_THREADS: usize = 8;

/// The idempotency keys stored in the partitions' batch heads within the window (see
/// [`super::idempotency`]): read back from the log, the one place they are kept.
fn rebuild_idempotency(partitions: &[Arc<Partition>], window_ms: u64) -> Idempotency {
    let started = std::time::Instant::now();
    let idempotency = Idempotency::new(window_ms);
    let now = crate::log::now_ms();
    let since = idempotency.rebuild_since(now);
    // Count first, then fill a table of the right size: growing it a million keys long
    // touched twice the memory, which is most of the time on a fresh machine.
    let mut heads = 0usize;
    for p in partitions {
        let _ = p.log().scan_batch_heads(since, |_, head| {
            heads += usize::from(head.request.is_some());
        });
    }
    idempotency.reserve(heads);
    for p in partitions {
        if let Err(e) = learn_heads(&idempotency, p, since) {
            // The records read as they are; only the keys after the damage are not known.
            tracing::error!(topic_partition = p.id(), error = %e, "idempotency keys not read back from this partition");
        }
    }
    idempotency.finish_rebuild(now);
    idempotency.rebuild_ms.store(
        started.elapsed().as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    idempotency
}

/// Remembers the idempotency keys in the batch heads of partition `p` appended at or after
/// `since_ms`.
fn learn_heads(
    idempotency: &Idempotency,
    p: &Partition,
    since_ms: i64,
) -> Result<(), crate::log::LogError> {
    p.log().scan_batch_heads(since_ms, |first_offset, head| {
        if let Some(r) = head.request {
            let piece = Piece {
                partition: p.id(),
                first_offset,
                count: head.record_count,
                positions: r.has_positions().then(|| {
                    (0..head.record_count as usize)
                        .map(|i| r.position(i))
                        .collect()
                }),
            };
            idempotency.remember(r.key, r.digest, r.records, piece, head.appended_ms);
        }
    })
}

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_window_ms: Option<u64>,
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
            ("idempotency_window_ms", self.idempotency_window_ms),
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
    pub idempotency_window_ms: u64,
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

/// What an append did in one partition: records `first_offset .. first_offset + count`,
/// `bytes` of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionAppend {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u64,
    pub bytes: u64,
}

impl PartitionAppend {
    /// The partition's end offset after the append.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.count
    }
}

/// A topic: a fixed number of partitions.
#[derive(Debug)]
pub struct Topic {
    name: String,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
    round_robin: RoundRobin,
    idempotency: Idempotency,
}

fn effective(o: &TopicOverrides, c: &Config) -> TopicConfig {
    TopicConfig {
        retention_ms: o.retention_ms.unwrap_or(c.retention_ms),
        retention_bytes: o.retention_bytes.unwrap_or(c.retention_bytes),
        segment_bytes: o.segment_bytes.unwrap_or(c.segment_bytes),
        segment_ms: o.segment_ms.unwrap_or(c.segment_ms),
        idempotency_window_ms: o.idempotency_window_ms.unwrap_or(c.idempotency_window_ms),
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
        // The partitions' directories exist before the topic's directory is synced (below),
        // which makes their names durable with `topic.json`'s.
        for id in 0..partitions {
            let p = dir.join(id.to_string());
            fs::create_dir_all(&p).map_err(|e| BrokerError::io(&p, e))?;
        }
        // Two syncs that wait for the disk run side by side with the partitions' creation,
        // so that a creation waits for about two syncs: the metadata (its file synced,
        // renamed, its directory synced) and the data directory (which now names the
        // topic). A new partition's first segment costs no sync: its first flush makes it
        // durable (see `Segment::create`). A crash part-way leaves either a directory without
        // `topic.json` (left alone at start-up, and created over by the next creation of the
        // name) or `topic.json` with partitions that lack files or hold a first segment that
        // was never made durable (created anew, empty, when the topic opens).
        std::thread::scope(|s| {
            let metadata = s.spawn(|| write_durably(&dir.join(META_FILE), &json));
            let data_dir = s.spawn(|| match dir.parent() {
                Some(parent) => crate::log::sync_dir(parent).map_err(BrokerError::Log),
                None => Ok(()),
            });
            let topic = Self::with_meta(dir, meta, config, prefaulter, quota);
            let joined = |h: std::thread::ScopedJoinHandle<'_, Result<(), BrokerError>>| {
                h.join().unwrap_or_else(|_| {
                    Err(BrokerError::TaskFailed(
                        "a thread making a topic's metadata durable panicked".into(),
                    ))
                })
            };
            let (metadata, data_dir) = (joined(metadata), joined(data_dir));
            metadata.and(data_dir).and(topic)
        })
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
        report_strays(dir, meta.partitions);
        Self::with_meta(dir, meta, config, prefaulter, quota)
    }

    /// The topic `meta` describes, its partitions opened (created when new). A topic's
    /// partitions open side by side, a few at a time: each new one waits for the disk.
    fn with_meta(
        dir: &Path,
        meta: TopicMeta,
        config: &Config,
        prefaulter: WorkerHandle,
        quota: Option<Arc<DiskQuota>>,
    ) -> Result<Self, BrokerError> {
        let topic_config = effective(&meta.config, config);
        let mut log_config = config.log_config(topic_config.segment_bytes);
        log_config.worker = Some(prefaulter);
        log_config.quota = quota;
        let open = |id: u32| Partition::open(&dir.join(id.to_string()), id, &log_config);
        let ids: Vec<u32> = (0..meta.partitions).collect();
        let partitions = if ids.len() == 1 {
            vec![open(0)?]
        } else {
            let per_thread = ids.len().div_ceil(OPENING_THREADS);
            std::thread::scope(|s| {
                let chunks: Vec<_> = ids
                    .chunks(per_thread)
                    .map(|chunk| {
                        s.spawn(move || chunk.iter().map(|&id| open(id)).collect::<Vec<_>>())
                    })
                    .collect();
                let mut opened = Vec::with_capacity(ids.len());
                for chunk in chunks {
                    let results = chunk.join().map_err(|_| {
                        BrokerError::TaskFailed("a thread opening partitions panicked".into())
                    })?;
                    opened.extend(results);
                }
                opened.into_iter().collect::<Result<Vec<_>, _>>()
            })?
        };
        let partitions: Vec<Arc<Partition>> = partitions.into_iter().map(Arc::new).collect();
        let idempotency = rebuild_idempotency(&partitions, topic_config.idempotency_window_ms);
        Ok(Topic {
            name: meta.name,
            config: topic_config,
            partitions,
            round_robin: RoundRobin::default(),
            idempotency,
        })
    }

    /// The topic's remembered idempotency keys.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
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

    /// Appends one batch to each partition of `batches`, all or nothing: every writer
    /// involved is locked in partition order (the map's order, so two appends cannot
    /// deadlock), room is made in each, and only then are the batches appended. A full disk
    /// or a stopped partition fails the whole append before any record is visible. Wakes the
    /// consumers waiting on each partition. Blocks.
    pub fn append(
        &self,
        batches: &BTreeMap<u32, Vec<Record<'_>>>,
    ) -> Result<Vec<PartitionAppend>, BrokerError> {
        let partitions = self.partitions_of(batches.keys().copied())?;
        let mut guards = Vec::with_capacity(partitions.len());
        for (p, batch) in partitions.iter().zip(batches.values()) {
            let mut guard = p.log().lock()?;
            guard.reserve(crate::log::batch_bytes(batch)?)?;
            guards.push(guard);
        }
        self.append_locked(&partitions, guards, batches)
    }

    /// [`Topic::append`] if it can be done at once, without waiting for a writer lock and
    /// without file work (see `AppendGuard::ready_for`): `None` otherwise, having changed
    /// nothing. For an async caller, which then hands the append to the blocking pool.
    pub fn try_append(
        &self,
        batches: &BTreeMap<u32, Vec<Record<'_>>>,
    ) -> Result<Option<Vec<PartitionAppend>>, BrokerError> {
        let partitions = self.partitions_of(batches.keys().copied())?;
        let mut guards = Vec::with_capacity(partitions.len());
        for (p, batch) in partitions.iter().zip(batches.values()) {
            match p.log().try_lock()? {
                Some(guard) if guard.ready_for(crate::log::batch_bytes(batch)?) => {
                    guards.push(guard)
                }
                _ => return Ok(None),
            }
        }
        self.append_locked(&partitions, guards, batches).map(Some)
    }

    fn partitions_of(
        &self,
        ids: impl Iterator<Item = u32>,
    ) -> Result<Vec<Arc<Partition>>, BrokerError> {
        ids.map(|p| self.partition(p).map(Arc::clone)).collect()
    }

    /// Appends `batches` under their partitions' locked writers (room made), then wakes the
    /// consumers.
    fn append_locked(
        &self,
        partitions: &[Arc<Partition>],
        mut guards: Vec<crate::log::AppendGuard<'_>>,
        batches: &BTreeMap<u32, Vec<Record<'_>>>,
    ) -> Result<Vec<PartitionAppend>, BrokerError> {
        let mut appends = Vec::with_capacity(batches.len());
        for (guard, (&partition, batch)) in guards.iter_mut().zip(batches) {
            let appended = guard.append(batch)?;
            appends.push(PartitionAppend {
                partition,
                first_offset: appended.first_offset,
                count: appended.count,
                bytes: crate::log::batch_bytes(batch)? as u64,
            });
        }
        drop(guards);
        for (p, a) in partitions.iter().zip(&appends) {
            p.appended(a);
        }
        Ok(appends)
    }

    /// Appends checked client-built frames to one partition and wakes its consumers. Blocks.
    pub fn append_frames(
        &self,
        partition: u32,
        frames: ValidFrames<'_>,
    ) -> Result<PartitionAppend, BrokerError> {
        let p = self.partition(partition)?;
        let guard = p.log().lock()?;
        self.append_frames_locked(p, guard, partition, frames)
    }

    /// [`Topic::append_frames`] if it can be done at once (see [`Topic::try_append`]).
    pub fn try_append_frames(
        &self,
        partition: u32,
        frames: ValidFrames<'_>,
    ) -> Result<Option<PartitionAppend>, BrokerError> {
        let p = self.partition(partition)?;
        match p.log().try_lock()? {
            Some(guard) if guard.ready_for(frames.len()) => self
                .append_frames_locked(p, guard, partition, frames)
                .map(Some),
            _ => Ok(None),
        }
    }

    fn append_frames_locked(
        &self,
        p: &Partition,
        mut guard: crate::log::AppendGuard<'_>,
        partition: u32,
        frames: ValidFrames<'_>,
    ) -> Result<PartitionAppend, BrokerError> {
        let appended = guard.append_frames(frames)?;
        drop(guard);
        let a = PartitionAppend {
            partition,
            first_offset: appended.first_offset,
            count: appended.count,
            bytes: frames.len() as u64,
        };
        p.appended(&a);
        Ok(a)
    }

    /// The partition for a record: explicit, else by key, else round-robin.
    pub fn choose_partition(
        &self,
        explicit: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<u32, BrokerError> {
        self.choose_partition_among(explicit, key, &[])
    }

    /// [`Topic::choose_partition`], with the round-robin over `among` when it is not empty
    /// (in a cluster: the partitions this node leads).
    pub fn choose_partition_among(
        &self,
        explicit: Option<u32>,
        key: Option<&[u8]>,
        among: &[u32],
    ) -> Result<u32, BrokerError> {
        let n = self.partition_count();
        match (explicit, key) {
            (Some(p), _) => self.partition(p).map(|_| p),
            (None, Some(k)) => Ok(super::partitioner::partition_for_key(k, n)),
            (None, None) if !among.is_empty() => {
                Ok(among[self.round_robin.next(among.len() as u32) as usize])
            }
            (None, None) => Ok(self.round_robin.next(n)),
        }
    }

    /// Learns the idempotency keys stored in one partition's batch heads within the
    /// window: a cluster node that becomes the partition's leader answers retries of
    /// requests its predecessor stored. Blocks.
    pub fn learn_idempotency(&self, partition: u32) -> Result<(), BrokerError> {
        let p = self.partition(partition)?;
        let now = crate::log::now_ms();
        let since = self.idempotency.rebuild_since(now);
        learn_heads(&self.idempotency, p, since)?;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, fsync of
/// the directory.
/// Removes `path` (gone already is fine) and syncs its directory. Blocks.
pub fn remove_durably(path: &Path) -> Result<(), BrokerError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BrokerError::io(path, e)),
    }
    if let Some(dir) = path.parent() {
        crate::log::sync_dir(dir).map_err(BrokerError::Log)?;
    }
    Ok(())
}

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

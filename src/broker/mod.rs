//! The broker: topics made of partitions, their metadata on disk, the partitioner, and
//! consumer group offsets. It owns the partition logs and wakes waiting consumers after each
//! append. Methods that touch files block: the HTTP layer calls them off the async workers.

pub mod assignor;
pub mod coordinator;
mod durable;
pub mod error;
pub mod groups;
pub mod idempotency;
pub mod members;
mod membership;
mod partition;
pub mod partitioner;
pub mod queue;
mod queue_ops;
pub mod queues;
mod stats;
pub mod topic;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

pub use error::BrokerError;
pub use membership::{
    GroupDescription, HeartbeatAnswer, HeartbeatCall, MemberDescription, MemberFetch,
    MemberFetchCall, PartitionLag,
};
pub use partition::{any_grows, Partition, PartitionTail, ReadLimits, StartAt, Wait};
pub use queue_ops::{
    at_once, LeaseAnswer, LeasedRecord, QueueDescription, QueuePartitionStats, DLQ_HEADERS,
};
pub use stats::{
    BrokerStats, GroupStats, IdempotencyStats, MemberGroupStats, PartitionStats, QueueGroupStats,
};
pub use topic::{write_durably, PartitionAppend, Topic, TopicOverrides};

use crate::config::Config;
use crate::log::{DiskQuota, FileWorker};

/// Topic and group names: `^[A-Za-z0-9._-]{1,200}$`, not `.` or `..`. Checked before any
/// path is built from a name.
pub fn validate_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidName(name.to_owned()))
    }
}

/// Runs blocking file work (appends that may create a segment, reads of cold or closed
/// segments, msync) on the blocking pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BrokerError::TaskFailed(e.to_string())))
}

/// Name of the directory holding group offsets: `@` cannot appear in a topic name.
pub const GROUPS_DIR: &str = "@groups";
/// The lock file that keeps a second server off a data directory.
pub const LOCK_FILE: &str = "@lock";

/// Lets `group` read the data directory, and nobody else: from now on this process creates
/// files without access for others (umask 027), and the directory is setgid to the group, so
/// everything created below it belongs to the group (subdirectories inherit the setgid bit).
pub fn share_with_group(data_dir: &Path, group: &str) -> Result<(), BrokerError> {
    let gid = match group.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) => crate::sys::group_id(group)
            .map_err(|e| BrokerError::InvalidSetting {
                key: "data_group",
                reason: format!("{group:?}: {e}"),
            })?
            .ok_or_else(|| BrokerError::InvalidSetting {
                key: "data_group",
                reason: format!("no group named {group:?}"),
            })?,
    };
    crate::sys::set_umask(0o027);
    std::os::unix::fs::chown(data_dir, None, Some(gid))
        .map_err(|e| BrokerError::io(data_dir, e))?;
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o2750);
    fs::set_permissions(data_dir, mode).map_err(|e| BrokerError::io(data_dir, e))?;
    Ok(())
}

/// Takes the data directory's exclusive lock (`flock` on `@lock`, which holds the owner's
/// pid), so that a second server on the same directory refuses to start instead of
/// corrupting the logs. The lock lasts as long as the returned file is open; the kernel
/// drops it when the process dies, so a crash leaves nothing to clean up.
pub fn lock_data_dir(data_dir: &Path) -> Result<fs::File, BrokerError> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| BrokerError::io(&path, e))?;
    if !crate::sys::try_lock_exclusive(&file).map_err(|e| BrokerError::io(&path, e))? {
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        return Err(BrokerError::Locked {
            data_dir: data_dir.to_owned(),
            owner: owner.trim().to_owned(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// A topic name claimed for creation or deletion (see `Broker::claim_name`).
struct NameClaim<'a> {
    broker: &'a Broker,
    name: String,
    creates: bool,
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        let mut busy = self.broker.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.0.remove(&self.name);
        busy.1 -= u64::from(self.creates);
        drop(busy);
        self.broker.name_freed.notify_all();
    }
}

/// Told the duration of each flush.
pub type FlushObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

struct Observer(FlushObserver);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushObserver")
    }
}

/// All topics of a data directory.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    data_dir: PathBuf,
    /// The topics by name. Held only to look up, insert or remove an `Arc<Topic>`, never
    /// across file work; creating or deleting a topic claims its name in `busy` first.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Names of the topics being created or deleted, and how many are being created: the
    /// file work of one name is serialized, different names proceed at once (so their
    /// fsyncs overlap). Lock order: `busy`, then `topics`; neither is held across file work.
    busy: std::sync::Mutex<(std::collections::HashSet<String>, u64)>,
    /// Signalled when a name leaves `busy`.
    name_freed: std::sync::Condvar,
    groups: groups::Groups,
    /// Groups with members: their coordinators and settings.
    members: members::MemberGroups,
    /// Queue groups: their settings and journalled state.
    queues: queues::QueueGroups,
    prefaulter: FileWorker,
    /// The `max_disk_bytes` quota, shared by every partition.
    quota: Option<Arc<DiskQuota>>,
    /// Partitions that crossed `flush_messages`, for the maintenance task to flush.
    flush_requests: tokio::sync::mpsc::UnboundedSender<Weak<Partition>>,
    flush_receiver: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Weak<Partition>>>>,
    /// Told how long each flush took (msync of one partition), wherever it ran.
    flush_observer: std::sync::OnceLock<Observer>,
    /// Whether a group has Kafka consumers in it now (set by the Kafka listener): HTTP
    /// members, HTTP commits and queue groups keep off such a group.
    kafka_groups: std::sync::OnceLock<KafkaGroups>,
    /// In a cluster: where queue groups' dead letters go (see [`queues::DeadLetterSink`]).
    dead_letters: std::sync::OnceLock<Arc<dyn queues::DeadLetterSink>>,
    /// The data directory's lock, held while the broker lives.
    _lock: fs::File,
}

/// See [`Broker::set_kafka_groups`].
pub struct KafkaGroups(pub Box<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for KafkaGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaGroups")
    }
}

impl Broker {
    /// Opens the data directory, recovering every partition of every topic.
    pub fn open(config: Arc<Config>) -> Result<Self, BrokerError> {
        let lock = Self::claim(&config)?;
        Self::open_claimed(config, lock)
    }

    /// Creates the data directory if needed, shares it with `data_group`, and takes its
    /// lock (see [`lock_data_dir`]): the quick part of opening, so that a server can refuse
    /// a directory in use before it listens.
    pub fn claim(config: &Config) -> Result<fs::File, BrokerError> {
        let data_dir = &config.data_dir;
        fs::create_dir_all(data_dir).map_err(|e| BrokerError::io(data_dir, e))?;
        if !config.data_group.is_empty() {
            share_with_group(data_dir, &config.data_group)?;
        }
        lock_data_dir(data_dir)
    }

    /// [`Broker::open`] on a data directory already claimed with [`Broker::claim`].
    pub fn open_claimed(config: Arc<Config>, lock: fs::File) -> Result<Self, BrokerError> {
        let data_dir = config.data_dir.clone();
        let prefaulter = FileWorker::spawn().map_err(|e| BrokerError::io(&data_dir, e))?;
        let groups = groups::Groups::open(&data_dir.join(GROUPS_DIR))?;
        let quota = config.max_disk_bytes.map(|b| Arc::new(DiskQuota::new(b)));
        let (flush_requests, flush_receiver) = tokio::sync::mpsc::unbounded_channel();
        let broker = Broker {
            config,
            data_dir,
            topics: RwLock::new(BTreeMap::new()),
            busy: std::sync::Mutex::new(Default::default()),
            name_freed: std::sync::Condvar::new(),
            groups,
            // Opened once the topics are known (below).
            members: members::MemberGroups::empty(),
            queues: queues::QueueGroups::empty(),
            prefaulter,
            quota,
            flush_requests,
            flush_receiver: std::sync::Mutex::new(Some(flush_receiver)),
            flush_observer: std::sync::OnceLock::new(),
            kafka_groups: std::sync::OnceLock::new(),
            dead_letters: std::sync::OnceLock::new(),
            _lock: lock,
        };
        let mut topics = BTreeMap::new();
        let entries =
            fs::read_dir(&broker.data_dir).map_err(|e| BrokerError::io(&broker.data_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BrokerError::io(&broker.data_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('@') {
                // mapq's own entries (group offsets, the lock): never topics.
                continue;
            }
            let path = entry.path();
            if validate_name(&name).is_err() || !path.join(topic::META_FILE).is_file() {
                tracing::warn!(path = %path.display(), "unexpected entry in data directory; left alone");
                continue;
            }
            let t = Topic::open(
                &path,
                &name,
                &broker.config,
                broker.prefaulter.handle(),
                broker.quota.clone(),
            )?;
            topics.insert(name, Arc::new(t));
        }
        // A crash while a topic was being deleted may have left its committed offsets.
        broker.groups.forget_topics(|t| topics.contains_key(t))?;
        tracing::info!(topics = topics.len(), data_dir = %broker.data_dir.display(), "data directory opened");
        *broker.topics.write().unwrap_or_else(|p| p.into_inner()) = topics;
        let mut broker = broker;
        let members = members::MemberGroups::open(
            &broker.data_dir.join(members::MEMBERS_DIR),
            |topics| broker.existing_partitions_of(topics),
            crate::log::now_ms(),
        )?;
        broker.members = members;
        let fsync = broker.config.default_durability == crate::config::Durability::Fsync;
        broker.queues = queues::QueueGroups::open_compacting(
            &broker.data_dir.join(queues::QUEUES_DIR),
            fsync,
            broker.config.queue_snapshot_every,
            Some(broker.prefaulter.handle()),
        )?;
        Ok(broker)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Tells the broker which groups have Kafka consumers in them (once, by the Kafka
    /// listener).
    pub fn set_kafka_groups(&self, has_members: KafkaGroups) {
        let _ = self.kafka_groups.set(has_members);
    }

    /// Whether Kafka consumers are in `group` now.
    pub fn has_kafka_members(&self, group: &str) -> bool {
        self.kafka_groups.get().is_some_and(|f| (f.0)(group))
    }

    pub fn groups(&self) -> &groups::Groups {
        &self.groups
    }

    /// In a cluster: sends queue groups' dead letters to `sink` (once, when the node joins).
    pub fn send_dead_letters_to(&self, sink: Arc<dyn queues::DeadLetterSink>) {
        let _ = self.dead_letters.set(sink);
    }

    /// In a cluster: keeps the state of groups with members in the cluster's store (once,
    /// when the node joins).
    pub fn share_member_groups(&self, store: Arc<dyn members::SharedGroups>) {
        self.members.share(store);
    }

    /// In a cluster: takes up the groups with members this node coordinates from the
    /// cluster's store as read at `revision` (see [`members::MemberGroups::follow_shared`]).
    pub fn follow_member_groups(
        &self,
        revision: i64,
        all: &std::collections::BTreeMap<String, (Vec<u8>, i64)>,
        mine: impl Fn(&str) -> bool,
    ) {
        self.members.follow_shared(
            revision,
            all,
            mine,
            |topics| self.existing_partitions_of(topics),
            |topics| topics.iter().all(|t| self.topic(t).is_ok()),
            crate::log::now_ms(),
        );
    }

    /// The topic called `name`, if it exists.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        validate_name(name)?;
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))
    }

    /// The partition `tp` names, if its topic and it exist.
    pub fn partition(&self, tp: &assignor::TopicPartition) -> Result<Arc<Partition>, BrokerError> {
        Ok(Arc::clone(self.topic(&tp.0)?.partition(tp.1)?))
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Creates a topic. Blocks (creates files).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        overrides: TopicOverrides,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_name(name)?;
        let partitions = partitions.unwrap_or(self.config.default_partitions);
        if partitions == 0 || partitions > self.config.max_partitions_per_topic {
            return Err(BrokerError::InvalidConfig(format!(
                "partitions must be between 1 and {}",
                self.config.max_partitions_per_topic
            )));
        }
        overrides.validate()?;
        let _claim = self.claim_name(name, |broker, creating| {
            if broker.topic(name).is_ok() {
                return Err(BrokerError::TopicExists(name.to_owned()));
            }
            let count = broker
                .topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64;
            if count + creating >= broker.config.max_topics {
                return Err(BrokerError::TooManyTopics(broker.config.max_topics));
            }
            Ok(true)
        })?;
        let dir = self.data_dir.join(name);
        let t = Topic::create(
            &dir,
            name,
            partitions,
            overrides,
            &self.config,
            self.prefaulter.handle(),
            self.quota.clone(),
        )
        .inspect_err(|_| {
            // A creation that failed half-way leaves nothing that a restart would take for
            // a topic (the name is still claimed: nobody else works in this directory).
            if fs::remove_dir_all(&dir).is_ok() {
                let _ = crate::log::sync_dir(&self.data_dir);
            }
        })?;
        let t = Arc::new(t);
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::clone(&t));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(t)
    }

    /// Waits until no one creates or deletes `name`, runs `check` (given the number of
    /// topics being created), and claims the name until the returned guard drops.
    /// `check` returns whether the claim creates a topic.
    fn claim_name(
        &self,
        name: &str,
        check: impl FnOnce(&Self, u64) -> Result<bool, BrokerError>,
    ) -> Result<NameClaim<'_>, BrokerError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.0.contains(name) {
            busy = self
                .name_freed
                .wait(busy)
                .unwrap_or_else(|p| p.into_inner());
        }
        let creates = check(self, busy.1)?;
        busy.0.insert(name.to_owned());
        busy.1 += u64::from(creates);
        Ok(NameClaim {
            broker: self,
            name: name.to_owned(),
            creates,
        })
    }

    /// The topic to produce to, created with the defaults if it is missing and auto-creation
    /// is on; `partitions` are the partitions the request names explicitly, which such a new
    /// topic must have (a request refused for them creates nothing). Blocks.
    pub fn topic_for_produce(
        &self,
        name: &str,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<Arc<Topic>, BrokerError> {
        match self.topic(name) {
            Err(BrokerError::TopicNotFound(_)) if self.config.auto_create_topics => {
                let count = self.config.default_partitions;
                if let Some(partition) = partitions.into_iter().find(|&p| p >= count) {
                    return Err(BrokerError::PartitionNotFound {
                        topic: name.to_owned(),
                        partition,
                    });
                }
                match self.create_topic(name, None, TopicOverrides::default()) {
                    Err(BrokerError::TopicExists(_)) => self.topic(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Appends to several partitions of `topic`, all or nothing (see [`Topic::append`]),
    /// wakes their consumers and queues the flushes `flush_messages` asks for. Blocks.
    pub fn append(
        &self,
        topic: &Topic,
        batches: &BTreeMap<u32, Vec<crate::log::Record<'_>>>,
    ) -> Result<Vec<PartitionAppend>, BrokerError> {
        let appends = topic.append(batches)?;
        for a in &appends {
            self.after_append(topic.partition(a.partition)?);
        }
        Ok(appends)
    }

    /// [`Broker::append`] if it can be done at once, without blocking (see
    /// [`Topic::try_append`]); `None` otherwise.
    pub fn try_append(
        &self,
        topic: &Topic,
        batches: &BTreeMap<u32, Vec<crate::log::Record<'_>>>,
    ) -> Result<Option<Vec<PartitionAppend>>, BrokerError> {
        let appends = topic.try_append(batches)?;
        for a in appends.iter().flatten() {
            self.after_append(topic.partition(a.partition)?);
        }
        Ok(appends)
    }

    /// [`Broker::append_frames`] if it can be done at once (see [`Topic::try_append`]).
    pub fn try_append_frames(
        &self,
        topic: &Topic,
        partition: u32,
        frames: crate::log::ValidFrames<'_>,
    ) -> Result<Option<PartitionAppend>, BrokerError> {
        let a = topic.try_append_frames(partition, frames)?;
        if a.is_some() {
            self.after_append(topic.partition(partition)?);
        }
        Ok(a)
    }

    /// Appends checked client-built frames to one partition of `topic` (see
    /// [`Topic::append_frames`]). Blocks.
    pub fn append_frames(
        &self,
        topic: &Topic,
        partition: u32,
        frames: crate::log::ValidFrames<'_>,
    ) -> Result<PartitionAppend, BrokerError> {
        let a = topic.append_frames(partition, frames)?;
        self.after_append(topic.partition(partition)?);
        Ok(a)
    }

    /// Waits until every record of `appends` is durable (see [`Broker::wait_durable`]).
    pub async fn wait_appends_durable(
        self: &Arc<Self>,
        topic: &Topic,
        appends: &[PartitionAppend],
    ) -> Result<(), BrokerError> {
        for a in appends {
            self.wait_durable(topic.partition(a.partition)?, a.end_offset())
                .await?;
        }
        Ok(())
    }

    /// Deletes a topic and its files. Local tailers that map its segments keep reading what
    /// they mapped. Blocks.
    pub fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        validate_name(name)?;
        let _claim = self.claim_name(name, |_, _| Ok(false))?;
        let t = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))?;
        for p in t.partitions() {
            // Waits for appends and file work in flight; none starts afterwards.
            p.log().mark_deleted();
            p.log().release_quota();
        }
        // The offsets go first: a crash before the files are gone leaves a topic without
        // committed offsets, never committed offsets that a re-created topic would inherit
        // (start-up forgets the offsets of topics that no longer exist).
        self.groups.forget_topics(|t| t != name)?;
        self.forget_member_topic(name)?;
        self.forget_queue_topic(name)?;
        let dir = self.data_dir.join(name);
        fs::remove_dir_all(&dir).map_err(|e| BrokerError::io(&dir, e))?;
        let _ = crate::log::sync_dir(&self.data_dir);
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// msyncs every partition with unflushed records. A partition whose topic is deleted
    /// meanwhile is skipped: nothing of it is left to make durable. Blocks.
    pub fn flush_all(&self) -> Result<(), BrokerError> {
        let mut first_error = None;
        for t in self.topics() {
            for p in t.partitions() {
                if let Err(e) = self.flush_unless_deleted(p) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes everything appended to `p` durable; a partition whose topic was deleted
    /// meanwhile has nothing left to flush, which is no error. Blocks.
    pub fn flush_unless_deleted(&self, p: &Partition) -> Result<(), BrokerError> {
        match self.flush(p, u64::MAX) {
            Ok(_) | Err(BrokerError::Log(crate::log::LogError::Deleted)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes a partition durable up to `offset` (sharing flushes with concurrent callers),
    /// timing the msync, and tells producers waiting in [`Broker::wait_durable`]. Blocks.
    pub fn flush(&self, p: &Partition, offset: u64) -> Result<u64, BrokerError> {
        let result = self.flush_quietly(p, offset);
        p.flushed(&result);
        result
    }

    /// [`Broker::flush`] without telling the waiting producers. Blocks.
    fn flush_quietly(&self, p: &Partition, offset: u64) -> Result<u64, BrokerError> {
        let log = p.log();
        if log.durable_offset() >= offset.min(log.end_offset()) {
            return Ok(log.durable_offset());
        }
        let started = std::time::Instant::now();
        let result = log.flush_until(offset);
        if let Some(Observer(observe)) = self.flush_observer.get() {
            observe(started.elapsed());
        }
        result.map_err(BrokerError::Log)
    }

    /// Waits until every record below `end` of partition `p` is durable, as a task: no
    /// thread waits, and only the flush that covers it wakes it. When no flush loop runs for
    /// waiters, one is started on the blocking pool; every producer that waits meanwhile
    /// shares its next flush (group commit). A flush by anyone else (the periodic one) answers
    /// the producers it covered too (see [`durable`]).
    pub async fn wait_durable(
        self: &Arc<Self>,
        p: &Arc<Partition>,
        end: u64,
    ) -> Result<(), BrokerError> {
        let log = p.log();
        let settled = || -> Option<Result<(), BrokerError>> {
            if log.durable_offset() >= end.min(log.end_offset()) {
                return Some(Ok(()));
            }
            if log.is_deleted() {
                return Some(Err(BrokerError::Log(crate::log::LogError::Deleted)));
            }
            if let Some(reason) = log.stopped_reason() {
                return Some(Err(BrokerError::Log(crate::log::LogError::Stopped(reason))));
            }
            None
        };
        if let Some(result) = settled() {
            return result;
        }
        // Let the producers that are ready to run append first, so that the flush this one
        // may start covers them too (a bigger group commit).
        tokio::task::yield_now().await;
        if let Some(result) = settled() {
            return result;
        }
        // Never more than the log holds, so the next flush always covers it.
        let end = end.min(log.end_offset());
        let answer = match p.durable_waiters().register(end) {
            durable::Registered::Wait(answer) => answer,
            durable::Registered::StartLoop(answer) => {
                let flush_loop = FlushLoop {
                    broker: Arc::clone(self),
                    partition: Arc::clone(p),
                    finished: false,
                };
                tokio::task::spawn_blocking(move || flush_loop.run());
                answer
            }
        };
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(settled()
                .and_then(Result::err)
                .unwrap_or_else(|| BrokerError::FlushFailed(why.to_string()))),
            // Every waiter is answered (see `FlushLoop`'s drop); this is not expected.
            Err(_) => Err(BrokerError::FlushFailed("the flush loop ended".into())),
        }
    }

    /// Called after an append: queues a flush once a partition holds `flush_messages`
    /// unflushed records.
    fn after_append(&self, p: &Arc<Partition>) {
        if let Some(n) = self.config.flush_messages {
            if p.unflushed_records() >= n && p.queue_flush() {
                let _ = self.flush_requests.send(Arc::downgrade(p));
            }
        }
    }

    /// The queue of flush requests; the maintenance task takes it once.
    pub fn take_flush_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Weak<Partition>>> {
        self.flush_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Has `observe` told the duration of every flush from now on (once; later calls are
    /// ignored).
    pub fn observe_flushes(&self, observe: FlushObserver) {
        let _ = self.flush_observer.set(Observer(observe));
    }

    pub fn quota(&self) -> Option<&Arc<DiskQuota>> {
        self.quota.as_ref()
    }
}

/// The flush loop of a partition's waiting producers (see [`durable`]). Should it end before
/// its end (a panic, or a runtime that shut down before it ran), its drop answers every
/// waiter, so that none waits for ever.
struct FlushLoop {
    broker: Arc<Broker>,
    partition: Arc<Partition>,
    finished: bool,
}

impl FlushLoop {
    fn run(mut self) {
        loop {
            let result = self.broker.flush_quietly(&self.partition, u64::MAX);
            self.partition.flushed(&result);
            if !self.partition.durable_waiters().continue_loop() {
                break;
            }
        }
        self.finished = true;
    }
}

impl Drop for FlushLoop {
    fn drop(&mut self) {
        if !self.finished {
            self.partition
                .durable_waiters()
                .abandon("the flush for waiting producers stopped");
        }
    }
}

//! Clusters: several mapq nodes, coordinated by etcd, replicating partitions.
//!
//! etcd holds who is alive (each node's key is attached to its lease), which node is the
//! controller (a key created under the controller's lease: the first to create it wins,
//! as etcd's own election recipe does), the topics, and each partition's leader, leader
//! epoch and in-sync replicas, changed only by transactions that compare the key's
//! revision. Data never goes through etcd: followers fetch from the leader over the
//! binary read path (`follower.rs`) and append with the leader's offsets; the leader's
//! high watermark is the lowest end over the in-sync set (`replica.rs`). A leader whose
//! lease may have lapsed acknowledges nothing. See `DESIGN.md` ("Clusters").

pub mod epochs;
pub mod etcd;
mod follower;
mod journals;
pub mod metrics;
pub mod replica;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::broker::topic::TopicOverrides;
use crate::broker::{Broker, BrokerError, PartitionAppend, Topic};
use crate::config::{Config, Durability};
use etcd::{Compare, Etcd, EtcdError, Op};
pub use follower::{
    encode_epochs, EpochEnd, DURABLE_HW_HEADER, EPOCHS_HEADER, FETCH_WAIT_MS, FLUSH_TO_HEADER,
    HW_HEADER, LOG_START_HEADER,
};
pub use replica::{Marks, Refusal, Replica, Role};
use state::{ClusterView, NodeInfo, PartitionState, TopicSpec};

/// How often each node reads the cluster's state from etcd.
const POLL: Duration = Duration::from_millis(200);
/// The data directory's record of the node that runs on it.
const NODE_FILE: &str = "@cluster-node.json";

/// Why the cluster refused or failed something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Refused(String),
    #[error("topic {0:?} exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidConfig(String),
}

/// The settings of a node in a cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    pub etcd_endpoints: Vec<String>,
    pub advertised_http: String,
    pub advertised_kafka: String,
    pub lease: Duration,
    pub replica_lag: Duration,
    pub default_replication_factor: u32,
    pub default_min_insync_replicas: u32,
    pub token: String,
    pub max_fetch_bytes: usize,
}

impl Settings {
    /// The cluster settings of `config` (validated when it was loaded).
    pub fn of(config: &Config, http: &str, kafka: &str) -> Self {
        let or = |set: &str, bound: &str| {
            if set.is_empty() {
                bound.to_owned()
            } else {
                set.to_owned()
            }
        };
        Settings {
            node_id: config.node_id.clone(),
            etcd_endpoints: config.etcd_endpoints.clone(),
            advertised_http: or(&config.advertised_http, http),
            advertised_kafka: or(&config.advertised_kafka, kafka),
            lease: Duration::from_millis(config.cluster_lease_ms),
            replica_lag: Duration::from_millis(config.replica_lag_ms),
            default_replication_factor: config.default_replication_factor,
            default_min_insync_replicas: config.default_min_insync_replicas,
            token: config.cluster_token.clone(),
            // A batch's frames may be somewhat larger than the request that brought them.
            max_fetch_bytes: (config.max_request_bytes as usize).saturating_mul(2),
        }
    }
}

/// The node's etcd session: its lease, and until when the node may act on it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// The send time of the last keep-alive that etcd answered, plus the TTL: until then,
    /// etcd has not expired the lease (it counts from its receipt, which came later).
    valid_until: Instant,
}

/// This node's part in a cluster.
pub struct Cluster {
    settings: Settings,
    instance: String,
    etcd: Arc<Etcd>,
    http: reqwest::Client,
    broker: Arc<Broker>,
    view: ArcSwap<ClusterView>,
    lease: Mutex<Lease>,
    replicas: Mutex<HashMap<(String, u32), Arc<Replica>>>,
    /// Topics this process has seen in the cluster: those it deletes when the cluster does.
    known_topics: Mutex<std::collections::BTreeSet<String>>,
    stop: watch::Receiver<bool>,
    stopped: AtomicBool,
    metrics: metrics::ClusterMetrics,
    polling: tokio::sync::Mutex<()>,
    /// What failed to be taken up at the last poll (logged once).
    failing: Mutex<std::collections::HashSet<String>>,
    /// The etcd revision this process registered at: a leadership given before it was
    /// given to an earlier process of this node.
    registered_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.settings.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins the cluster: registers this node under its lease (refused when a live node
    /// of another data directory holds the same `node_id`), reads the state, takes up the
    /// roles it gives this node, and starts the session and state loops.
    pub async fn join(
        settings: Settings,
        broker: Arc<Broker>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, ClusterError> {
        let (dir, id) = (broker.config().data_dir.clone(), settings.node_id.clone());
        let instance = tokio::task::spawn_blocking(move || claim_data_dir(&dir, &id))
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))??;
        let etcd = Arc::new(Etcd::new(&settings.etcd_endpoints, Duration::from_secs(2))?);
        let mut headers = reqwest::header::HeaderMap::new();
        if !settings.token.is_empty() {
            let value =
                reqwest::header::HeaderValue::try_from(format!("Bearer {}", settings.token))
                    .map_err(|_| {
                        ClusterError::InvalidConfig(
                            "cluster_token is not a valid header value".into(),
                        )
                    })?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(FETCH_WAIT_MS) + Duration::from_secs(5))
            .build()
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        let ttl = ttl_seconds(settings.lease);
        let sent = Instant::now();
        let id = etcd.grant(ttl).await?;
        let cluster = Arc::new(Cluster {
            metrics: metrics::ClusterMetrics::default(),
            instance,
            etcd,
            http,
            broker,
            view: ArcSwap::from_pointee(ClusterView::default()),
            lease: Mutex::new(Lease {
                id,
                valid_until: sent + settings.lease,
            }),
            replicas: Mutex::new(HashMap::new()),
            known_topics: Mutex::new(Default::default()),
            stop,
            stopped: AtomicBool::new(false),
            polling: tokio::sync::Mutex::new(()),
            failing: Mutex::new(Default::default()),
            registered_at: std::sync::atomic::AtomicI64::new(0),
            settings,
        });
        cluster.register(id).await?;
        // Committed offsets live in etcd from now on.
        let store = EtcdOffsets {
            etcd: Arc::clone(&cluster.etcd),
            runtime: tokio::runtime::Handle::current(),
        };
        cluster.broker.groups().share(Box::new(store.clone()));
        // So do groups with members: their next coordinator takes them up from there.
        cluster.broker.share_member_groups(Arc::new(store));
        // Queue groups are opened where their journals are led.
        cluster.broker.queue_groups().enter_cluster();
        // Their dead letters go to the dead-letter partitions' leaders.
        cluster
            .broker
            .send_dead_letters_to(Arc::new(journals::DeadLetterForward {
                cluster: Arc::downgrade(&cluster),
                runtime: tokio::runtime::Handle::current(),
            }));
        tracing::info!(node_id = %cluster.settings.node_id, advertised_http = %cluster.settings.advertised_http, "joined the cluster");
        cluster.poll_once().await;
        tokio::spawn(Arc::clone(&cluster).session_loop());
        tokio::spawn(Arc::clone(&cluster).state_loop());
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn metrics(&self) -> &metrics::ClusterMetrics {
        &self.metrics
    }

    pub fn max_fetch_bytes(&self) -> usize {
        self.settings.max_fetch_bytes
    }

    pub fn stopping(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || *self.stop.borrow()
    }

    /// The last state read from etcd.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    /// Whether this node's lease is certainly still alive in etcd.
    pub fn lease_valid(&self) -> bool {
        Instant::now() < self.lock_lease().valid_until
    }

    fn lock_lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.settings.node_id.clone(),
            advertised_http: self.settings.advertised_http.clone(),
            advertised_kafka: self.settings.advertised_kafka.clone(),
            instance: self.instance.clone(),
        }
    }

    /// Puts this node's key under `lease`: created, or taken over from an earlier process
    /// on the same data directory whose lease has not expired yet. Another instance under
    /// the same id is refused. Notes the revision it registered at.
    async fn register(&self, lease: i64) -> Result<(), ClusterError> {
        let revision = self.register_at(lease).await?;
        self.registered_at.fetch_max(revision, Ordering::AcqRel);
        Ok(())
    }

    async fn register_at(&self, lease: i64) -> Result<i64, ClusterError> {
        let key = state::node_key(&self.settings.node_id);
        let value = serde_json::to_vec(&self.node_info()).expect("serializable");
        let put = [Op::Put {
            key: key.clone(),
            value: value.clone(),
            lease,
        }];
        for _ in 0..5 {
            if let Some(revision) = self.etcd.txn(&[Compare::Absent(key.clone())], &put).await? {
                return Ok(revision);
            }
            let Some(existing) = self.etcd.get(&key).await? else {
                continue;
            };
            let theirs: Option<NodeInfo> = serde_json::from_slice(&existing.value).ok();
            match theirs {
                Some(n) if n.instance == self.instance => {
                    let fenced = [Compare::ModRevision(key.clone(), existing.mod_revision)];
                    if let Some(revision) = self.etcd.txn(&fenced, &put).await? {
                        return Ok(revision);
                    }
                }
                Some(n) => {
                    return Err(ClusterError::Refused(format!(
                        "node_id {:?} is in use by a live node (advertised at {}, another data directory); every node needs its own node_id",
                        self.settings.node_id, n.advertised_http
                    )))
                }
                None => {
                    return Err(ClusterError::Refused(format!(
                        "etcd key {key} holds something that is not a node registration"
                    )))
                }
            }
        }
        Err(ClusterError::Refused(format!(
            "could not register {key}: it kept changing"
        )))
    }

    /// Keeps the lease alive; when it expired (etcd unreachable for longer than its TTL, or
    /// the process was frozen), takes a new one and registers again.
    async fn session_loop(self: Arc<Self>) {
        let ttl = ttl_seconds(self.settings.lease);
        let every = self.settings.lease / 3;
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let id = self.lock_lease().id;
            let sent = Instant::now();
            match self.etcd.keep_alive(id).await {
                Ok(left) if left > 0 => {
                    self.lock_lease().valid_until = sent + self.settings.lease;
                    self.metrics.session_up.store(true, Ordering::Relaxed);
                }
                Ok(_) => {
                    self.metrics.session_up.store(false, Ordering::Relaxed);
                    tracing::warn!(node_id = %self.settings.node_id, "the etcd lease expired; taking a new one");
                    let renewed = async {
                        let sent = Instant::now();
                        let id = self.etcd.grant(ttl).await?;
                        self.register(id).await?;
                        Ok::<_, ClusterError>((id, sent))
                    }
                    .await;
                    match renewed {
                        Ok((id, sent)) => {
                            *self.lock_lease() = Lease {
                                id,
                                valid_until: sent + self.settings.lease,
                            };
                            self.metrics.session_up.store(true, Ordering::Relaxed);
                            tracing::info!(node_id = %self.settings.node_id, "registered again");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot register again; retrying");
                        }
                    }
                }
                Err(e) => {
                    self.metrics.etcd_errors.inc();
                    if !self.lease_valid() {
                        self.metrics.session_up.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, "etcd keep-alive failed");
                }
            }
        }
        // A clean stop: the registration and any controllership go at once.
        self.stopped.store(true, Ordering::Release);
        let id = self.lock_lease().id;
        let _ = self.etcd.revoke(id).await;
        let all: Vec<Arc<Replica>> = self.lock_replicas().values().cloned().collect();
        idle(all).await;
    }

    async fn state_loop(self: Arc<Self>) {
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            self.poll_once().await;
        }
    }

    /// Reads the state, takes up this node's roles, and does the controller's and the
    /// leaders' work.
    pub async fn poll_once(self: &Arc<Self>) {
        // One at a time (the state loop, a topic's creation): roles are taken up once.
        let _turn = self.polling.lock().await;
        let (revision, kvs) = match self.etcd.range_prefix(state::PREFIX).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.etcd_errors.inc();
                tracing::debug!(error = %e, "cannot read the cluster state");
                return;
            }
        };
        let view = Arc::new(ClusterView::from_kvs(revision, &kvs));
        self.view.store(Arc::clone(&view));
        self.broker
            .groups()
            .follow_shared(view.revision, view.offsets.clone());
        self.broker.queue_groups().follow_cluster(
            view.queues
                .iter()
                .map(|(g, q)| (g.clone(), q.settings.clone()))
                .collect(),
        );
        self.reconcile(&view).await;
        // After the topics are taken up: a group is restored with its topics' partitions.
        self.broker
            .follow_member_groups(view.revision, &view.member_groups, |g| {
                self.coordinator_of(g)
                    .is_some_and(|n| n.node_id == self.settings.node_id)
            });
        if !self.lease_valid() {
            return;
        }
        match view.controller.as_deref() {
            Some(c) if c == self.settings.node_id => self.control(&view).await,
            Some(_) => {}
            None => self.campaign().await,
        }
        self.maintain_isrs(&view).await;
    }

    /// Tries to become the controller: creates the key under this node's lease.
    async fn campaign(&self) {
        let lease = self.lock_lease().id;
        let value = serde_json::to_vec(&state::ControllerRecord {
            node_id: self.settings.node_id.clone(),
        })
        .expect("serializable");
        let won = self
            .etcd
            .txn(
                &[Compare::Absent(state::CONTROLLER_KEY.into())],
                &[Op::Put {
                    key: state::CONTROLLER_KEY.into(),
                    value,
                    lease,
                }],
            )
            .await;
        if let Ok(Some(_)) = won {
            tracing::info!(node_id = %self.settings.node_id, "elected controller");
        }
    }

    /// The controller's work: a partition whose leader is gone gets the first live
    /// in-sync replica (in replica order) as leader, with the next epoch; none alive, it
    /// goes offline (no unclean election) until one comes back. Dead followers leave the
    /// in-sync sets.
    async fn control(&self, view: &ClusterView) {
        for ((topic, partition), v) in &view.partitions {
            let Some(next) = controller_decision(view, &v.state) else {
                continue;
            };
            let written = self
                .write_partition(topic, *partition, v.mod_revision, &next)
                .await;
            match written {
                Ok(Some(_)) if next.leader != v.state.leader => {
                    self.metrics.leader_changes.inc();
                    tracing::info!(topic, partition, leader = ?next.leader, epoch = next.leader_epoch, isr = ?next.isr, "leadership moved");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "partition state not written")
                }
            }
        }
    }

    /// The leaders' work: in-sync set changes (lagging followers out, caught-up ones in),
    /// written with the revision the leader holds as the fence.
    async fn maintain_isrs(&self, view: &ClusterView) {
        let replicas: Vec<Arc<Replica>> = self.lock_replicas().values().cloned().collect();
        for r in replicas {
            let Some(v) = view.partition(&r.topic, r.partition) else {
                continue;
            };
            let Some((isr, mod_revision, epoch)) =
                r.isr_change(self.settings.replica_lag, &v.state.replicas, |n| {
                    view.is_alive(n)
                })
            else {
                continue;
            };
            let next = PartitionState {
                leader: Some(self.settings.node_id.clone()),
                leader_epoch: epoch,
                replicas: v.state.replicas.clone(),
                isr: isr.clone(),
            };
            let written = self
                .write_partition(&r.topic, r.partition, mod_revision, &next)
                .await;
            match written {
                Ok(Some(revision)) => {
                    let min_isr = view.min_isr(&r.topic);
                    tracing::info!(topic = %r.topic, partition = r.partition, ?isr, "in-sync replicas changed");
                    if r.refresh_leader(epoch, &isr, revision, min_isr) {
                        self.move_marks(&r).await;
                    }
                }
                Ok(None) => {
                    // Someone else changed the partition: the next read shows what.
                    r.isr_change_failed();
                    self.metrics.fenced_writes.inc();
                }
                Err(e) => {
                    r.isr_change_failed();
                    tracing::warn!(error = %e, "in-sync set not written")
                }
            }
        }
    }

    fn lock_replicas(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<Replica>>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's replica of a partition, if it holds one.
    pub fn replica(&self, topic: &str, partition: u32) -> Option<Arc<Replica>> {
        self.lock_replicas()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Takes up the roles `view` gives this node: topics created and deleted locally,
    /// leaderships, followings. A topic or partition that fails is logged (once, until it
    /// works) and skipped: the others still get their roles.
    async fn reconcile(self: &Arc<Self>, view: &ClusterView) {
        for (name, spec) in &view.topics {
            let result = self.take_up_topic(name, spec).await;
            self.note_failure(name, result);
        }
        self.drop_deleted_topics(view).await;
        for ((topic, partition), v) in &view.partitions {
            let result = self.take_up_partition(view, topic, *partition, v).await;
            self.note_failure(&format!("{topic}/{partition}"), result);
            if let Some(r) = self.replica(topic, *partition) {
                self.sync_queue_group(view, &r).await;
            } else if let Some(group) = state::group_of_journal(topic) {
                self.broker.queue_groups().deactivate(group);
            }
        }
    }

    /// Logs a failure to take up `what` when it starts failing, and when it works again.
    fn note_failure(&self, what: &str, result: Result<(), ClusterError>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if failing.remove(what) {
                    tracing::info!(what, "taken up after failures");
                }
            }
            Err(e) => {
                if failing.insert(what.to_owned()) {
                    tracing::error!(what, error = %e, "cannot take up this node's role (retried every poll)");
                }
            }
        }
    }

    /// Creates `name` here if the cluster has it and this node does not yet.
    async fn take_up_topic(&self, name: &str, spec: &TopicSpec) -> Result<(), ClusterError> {
        self.known_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        if self.broker.topic(name).is_ok() {
            return Ok(());
        }
        let broker = Arc::clone(&self.broker);
        let (name, spec) = (name.to_owned(), spec.clone());
        let created = tokio::task::spawn_blocking(move || {
            broker.create_topic(&name, Some(spec.partitions), spec.overrides)
        })
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))?;
        match created {
            Ok(_) | Err(BrokerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes here the topics this process saw in the cluster and the cluster no longer has.
    async fn drop_deleted_topics(&self, view: &ClusterView) {
        let gone: Vec<String> = {
            let mut known = self.known_topics.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = known
                .iter()
                .filter(|t| !view.topics.contains_key(*t))
                .cloned()
                .collect();
            for t in &gone {
                known.remove(t);
            }
            gone
        };
        for name in gone {
            let dropped: Vec<Arc<Replica>> = {
                let mut replicas = self.lock_replicas();
                let keys: Vec<(String, u32)> = replicas
                    .keys()
                    .filter(|(t, _)| *t == name)
                    .cloned()
                    .collect();
                keys.iter().filter_map(|k| replicas.remove(k)).collect()
            };
            idle(dropped).await;
            let broker = Arc::clone(&self.broker);
            let n = name.clone();
            let deleted = tokio::task::spawn_blocking(move || broker.delete_topic(&n)).await;
            if let Ok(Err(e)) = deleted {
                if !matches!(e, BrokerError::TopicNotFound(_)) {
                    tracing::error!(topic = %name, error = %e, "cannot delete a topic the cluster deleted");
                }
            }
        }
    }

    /// Takes up this node's role for one partition.
    async fn take_up_partition(
        self: &Arc<Self>,
        view: &ClusterView,
        topic: &str,
        partition: u32,
        v: &state::Versioned,
    ) -> Result<(), ClusterError> {
        let me = self.settings.node_id.clone();
        let s = &v.state;
        if !s.replicas.contains(&me) {
            let dropped = self.lock_replicas().remove(&(topic.to_owned(), partition));
            idle(dropped.into_iter().collect()).await;
            return Ok(());
        }
        let r = match self.replica(topic, partition) {
            Some(r) => r,
            None => {
                let p = match state::group_of_journal(topic) {
                    Some(group) => {
                        let (broker, group) = (Arc::clone(&self.broker), group.to_owned());
                        tokio::task::spawn_blocking(move || {
                            broker.queue_groups().cluster_journal(&group)
                        })
                        .await
                        .map_err(|e| ClusterError::Refused(e.to_string()))??
                    }
                    None => {
                        let Ok(t) = self.broker.topic(topic) else {
                            return Ok(());
                        };
                        Arc::clone(t.partition(partition)?)
                    }
                };
                let (topic2, me2) = (topic.to_owned(), me.clone());
                let r =
                    tokio::task::spawn_blocking(move || Replica::open(&topic2, partition, p, &me2))
                        .await
                        .map_err(|e| ClusterError::Refused(e.to_string()))??;
                let r = Arc::new(r);
                self.lock_replicas()
                    .insert((topic.to_owned(), partition), Arc::clone(&r));
                r
            }
        };
        let min_isr = view.min_isr(topic);
        match s.leader.as_deref() {
            // Led by this node's previous process (restarted before its lease ran out):
            // it leads again under a new epoch, as any new leader does, so that every
            // follower truncates to what this process holds.
            Some(l)
                if l == me
                    && r.is_fresh()
                    && v.mod_revision < self.registered_at.load(Ordering::Acquire) =>
            {
                if self.lease_valid() {
                    self.new_epoch(topic, partition, v).await;
                }
            }
            Some(l) if l == me => {
                let leading =
                    matches!(r.role(), Role::Leader(held) if held.epoch == s.leader_epoch);
                if leading {
                    if r.refresh_leader(s.leader_epoch, &s.isr, v.mod_revision, min_isr) {
                        self.move_marks(&r).await;
                    }
                } else if self.lease_valid() {
                    let (r2, isr, epoch, rev) = (
                        Arc::clone(&r),
                        s.isr.clone(),
                        s.leader_epoch,
                        v.mod_revision,
                    );
                    // A queue group's journal has no idempotency keys.
                    let t = match state::group_of_journal(topic) {
                        Some(_) => None,
                        None => Some(self.broker.topic(topic)?),
                    };
                    tokio::task::spawn_blocking(move || {
                        // Retries of requests the previous leader stored are answered
                        // from the log.
                        if let Some(t) = t {
                            t.learn_idempotency(r2.partition)?;
                        }
                        r2.become_leader(epoch, isr, rev, min_isr)
                    })
                    .await
                    .map_err(|e| ClusterError::Refused(e.to_string()))??;
                    self.metrics.leaderships_taken.inc();
                }
            }
            Some(l) => {
                let following = matches!(r.role(), Role::Follower { leader, epoch } if leader == l && epoch == s.leader_epoch);
                if following {
                    return Ok(());
                }
                match view.nodes.get(l) {
                    Some(info) => {
                        let (r2, leader, epoch) = (Arc::clone(&r), l.to_owned(), s.leader_epoch);
                        let generation =
                            tokio::task::spawn_blocking(move || r2.become_follower(&leader, epoch))
                                .await
                                .map_err(|e| ClusterError::Refused(e.to_string()))?;
                        tokio::spawn(follower::follow(
                            Arc::clone(self),
                            Arc::clone(&r),
                            info.advertised_http.trim_end_matches('/').to_owned(),
                            s.leader_epoch,
                            generation,
                        ));
                    }
                    None => idle(vec![r]).await,
                }
            }
            None => idle(vec![r]).await,
        }
        Ok(())
    }

    /// Moves a leader's marks (after its in-sync set or its own end changed), on the
    /// blocking pool: the high watermark is stored in the segments.
    async fn move_marks(&self, r: &Arc<Replica>) {
        let r2 = Arc::clone(r);
        let moved = tokio::task::spawn_blocking(move || r2.update_marks()).await;
        if let Ok(Err(e)) = moved {
            tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "high watermark not moved");
        }
    }

    /// Writes a partition's state if its key is still at `mod_revision` (the fence every
    /// change of partition state goes through): the new revision, or `None` when someone
    /// changed it first.
    async fn write_partition(
        &self,
        topic: &str,
        partition: u32,
        mod_revision: i64,
        next: &PartitionState,
    ) -> Result<Option<i64>, EtcdError> {
        let key = state::partition_key(topic, partition);
        self.etcd
            .txn(
                &[Compare::ModRevision(key.clone(), mod_revision)],
                &[Op::Put {
                    key,
                    value: serde_json::to_vec(next).expect("serializable"),
                    lease: 0,
                }],
            )
            .await
    }

    /// Writes the next leader epoch for a partition this node leads (fenced on the revision
    /// read): the next read makes this node its leader at that epoch.
    async fn new_epoch(&self, topic: &str, partition: u32, v: &state::Versioned) {
        let next = PartitionState {
            leader_epoch: v.state.leader_epoch + 1,
            ..v.state.clone()
        };
        let written = self
            .write_partition(topic, partition, v.mod_revision, &next)
            .await;
        match written {
            Ok(Some(_)) => {
                tracing::info!(
                    topic,
                    partition,
                    epoch = next.leader_epoch,
                    "leading again after a restart, under a new epoch"
                );
            }
            Ok(None) => self.metrics.fenced_writes.inc(),
            Err(e) => tracing::warn!(topic, partition, error = %e, "new leader epoch not written"),
        }
    }

    /// Creates a topic in the cluster (then here): replicas placed over the live nodes,
    /// the first of each partition's replicas its leader at epoch 1.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        min_insync_replicas: Option<u32>,
        overrides: TopicOverrides,
    ) -> Result<Arc<Topic>, ClusterError> {
        // What every node must be able to create (a topic no node can open would be
        // retried by all of them forever).
        crate::broker::validate_name(name)?;
        overrides.validate()?;
        let max = self.broker.config().max_partitions_per_topic;
        if partitions == 0 || partitions > max {
            return Err(ClusterError::InvalidConfig(format!(
                "partitions must be between 1 and {max}"
            )));
        }
        // Placement over the nodes alive now, not as of the last read.
        self.poll_once().await;
        let view = self.view();
        let nodes: Vec<String> = view.nodes.keys().cloned().collect();
        let rf = replication_factor.unwrap_or(
            self.settings
                .default_replication_factor
                .min(nodes.len() as u32),
        );
        if rf == 0 || rf as usize > nodes.len() {
            return Err(ClusterError::InvalidConfig(format!(
                "replication_factor {rf} needs as many live nodes; {} are alive",
                nodes.len()
            )));
        }
        let min_isr =
            min_insync_replicas.unwrap_or(self.settings.default_min_insync_replicas.min(rf));
        if min_isr == 0 || min_isr > rf {
            return Err(ClusterError::InvalidConfig(format!(
                "min_insync_replicas must be between 1 and the replication factor ({rf})"
            )));
        }
        let spec = TopicSpec {
            partitions,
            replication_factor: rf,
            min_insync_replicas: min_isr,
            overrides,
        };
        let mut ops = Vec::new();
        for (p, replicas) in state::place(name, partitions, rf as usize, &nodes)
            .into_iter()
            .enumerate()
        {
            let s = PartitionState {
                leader: replicas.first().cloned(),
                leader_epoch: 1,
                isr: replicas.clone(),
                replicas,
            };
            ops.push(Op::Put {
                key: state::partition_key(name, p as u32),
                value: serde_json::to_vec(&s).expect("serializable"),
                lease: 0,
            });
        }
        // The topic's key first (its creation is the fence), then its partitions' keys, in
        // transactions etcd takes (at most `MAX_TXN_OPS` writes each), each fenced on the
        // topic key still being the one written: a deletion meanwhile stops them.
        let topic_key = state::topic_key(name);
        let mut chunks = ops.chunks(etcd::MAX_TXN_OPS);
        let mut first = vec![Op::Put {
            key: topic_key.clone(),
            value: serde_json::to_vec(&spec).expect("serializable"),
            lease: 0,
        }];
        first.extend(chunks.next().unwrap_or_default().iter().cloned());
        let Some(revision) = self
            .etcd
            .txn(&[Compare::Absent(topic_key.clone())], &first)
            .await?
        else {
            return Err(ClusterError::TopicExists(name.to_owned()));
        };
        for chunk in chunks {
            let fence = [Compare::ModRevision(topic_key.clone(), revision)];
            if self.etcd.txn(&fence, chunk).await?.is_none() {
                return Err(ClusterError::Refused(format!(
                    "topic {name} was changed while it was being created"
                )));
            }
        }
        tracing::info!(
            topic = name,
            partitions,
            replication_factor = rf,
            min_insync_replicas = min_isr,
            "topic created in the cluster"
        );
        self.poll_once().await;
        Ok(self.broker.topic(name)?)
    }

    /// Deletes a topic from the cluster (each node deletes its copy when it sees that),
    /// with the offsets groups committed on it.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<(), ClusterError> {
        self.poll_once().await;
        let mut ops = vec![
            Op::Delete {
                key: state::topic_key(name),
                prefix: false,
            },
            Op::Delete {
                key: format!("{}partitions/{name}/", state::PREFIX),
                prefix: true,
            },
        ];
        for (group, offsets) in &self.view().offsets {
            for (topic, partition) in offsets.keys() {
                if topic == name {
                    ops.push(Op::Delete {
                        key: state::offset_key(group, topic, *partition),
                        prefix: false,
                    });
                }
            }
        }
        for chunk in ops.chunks(etcd::MAX_TXN_OPS) {
            if self.etcd.txn(&[], chunk).await?.is_none() {
                return Err(ClusterError::Refused("the deletion was not applied".into()));
            }
        }
        self.poll_once().await;
        Ok(())
    }

    /// The replica to append to: this node leads the partition and may write now.
    /// Otherwise why not, with the leader's advertised HTTP address when one is alive.
    pub fn writable(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(Arc<Replica>, u64), (Refusal, Option<NodeInfo>)> {
        let leader = || self.view().leader_of(topic, partition).cloned();
        let Some(r) = self.replica(topic, partition) else {
            return Err((Refusal::NotLeader, leader()));
        };
        if !self.lease_valid() {
            return Err((Refusal::LeaseLapsed, None));
        }
        match r.check_writable() {
            Ok((_, generation)) => Ok((r, generation)),
            Err(Refusal::NotLeader) => Err((Refusal::NotLeader, leader())),
            Err(e) => Err((e, None)),
        }
    }

    /// The node that coordinates `group` (a group with members, a Kafka consumer group):
    /// of the live nodes, the one whose hash with the group is highest (rendezvous
    /// hashing), so every node names the same one, and a node's loss moves only its own
    /// groups. Their committed offsets are in etcd, and so is the state of a group with
    /// members, which the next coordinator takes up; Kafka consumers rejoin, as after a
    /// Kafka coordinator move. A queue group's coordinator is its journal's leader (none
    /// while the journal has no leader).
    pub fn coordinator_of(&self, group: &str) -> Option<NodeInfo> {
        let view = self.view();
        if view.queues.contains_key(group) {
            return view.leader_of(&state::journal_topic(group), 0).cloned();
        }
        view.nodes
            .values()
            .max_by_key(|n| {
                let mut key = group.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(n.node_id.as_bytes());
                (crc32c::crc32c(&key), n.node_id.clone())
            })
            .cloned()
    }

    /// Whether the cluster has this partition and this node holds no replica of it (its
    /// reads are served by the replicas).
    pub fn holds_no_replica(&self, topic: &str, partition: u32) -> bool {
        self.replica(topic, partition).is_none()
            && self
                .view()
                .partition(topic, partition)
                .is_some_and(|v| !v.state.replicas.iter().any(|r| r == self.node_id()))
    }

    /// The partitions of `topic` this node leads now.
    pub fn led_partitions(&self, topic: &str) -> Vec<u32> {
        let mut led: Vec<u32> = self
            .lock_replicas()
            .iter()
            .filter(|((t, _), r)| t == topic && r.leading().is_some())
            .map(|((_, p), _)| *p)
            .collect();
        led.sort_unstable();
        led
    }

    /// Waits until every in-sync replica holds the appended records (with `fsync`, has made
    /// them durable), as the leader that appended them at `generation`, with its lease
    /// valid and the in-sync set still at its minimum. Any of that lost: the refusal (the
    /// records may or may not survive).
    pub async fn wait_committed(
        &self,
        topic: &str,
        appends: &[PartitionAppend],
        durability: Durability,
        generations: &HashMap<u32, u64>,
    ) -> Result<(), Refusal> {
        for a in appends {
            let Some(r) = self.replica(topic, a.partition) else {
                return Err(Refusal::NotLeader);
            };
            let generation = generations.get(&a.partition).copied().unwrap_or(u64::MAX);
            let end = a.end_offset();
            let fsync = durability == Durability::Fsync;
            if fsync {
                r.want_durable(end);
            }
            // The followers' next fetches move the high watermark over these records; the
            // leader alone (no follower in sync) or a flush of its own must move it here.
            let alone = r
                .leader_state()
                .is_some_and(|l| l.isr.iter().all(|n| n == self.node_id()));
            if alone || fsync {
                self.move_marks(&r).await;
            }
            let mut marks = r.subscribe_marks();
            let mut changes = r.subscribe_generation();
            let committed = |m: &Marks| m.hw >= end && (!fsync || m.durable_hw >= end);
            let mut lease_check = tokio::time::interval(Duration::from_millis(100));
            loop {
                if r.generation() != generation {
                    self.metrics.fenced_writes.inc();
                    return Err(Refusal::NotLeader);
                }
                if !self.lease_valid() {
                    self.metrics.fenced_writes.inc();
                    return Err(Refusal::LeaseLapsed);
                }
                if committed(&marks.borrow_and_update()) {
                    break;
                }
                tokio::select! {
                    _ = marks.changed() => {}
                    _ = changes.changed() => {}
                    _ = lease_check.tick() => {}
                }
            }
            // Still the leadership that appended them, and Kafka's
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND: committed by too few.
            if r.generation() != generation {
                return Err(Refusal::NotLeader);
            }
            r.check_writable()?;
        }
        if !self.lease_valid() {
            return Err(Refusal::LeaseLapsed);
        }
        Ok(())
    }
}

/// Gives up the roles of `replicas`, on the blocking pool (a role change waits for a
/// follower's disk work under the old role).
async fn idle(replicas: Vec<Arc<Replica>>) {
    if replicas.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for r in replicas {
            r.become_idle();
        }
    })
    .await;
}

/// Committed offsets and groups with members kept in etcd (see
/// [`crate::broker::groups::SharedOffsets`] and [`crate::broker::members::SharedGroups`]).
#[derive(Debug, Clone)]
struct EtcdOffsets {
    etcd: Arc<Etcd>,
    runtime: tokio::runtime::Handle,
}

impl crate::broker::groups::SharedOffsets for EtcdOffsets {
    fn commit(&self, group: &str, entries: &[(String, u32, u64)]) -> Result<i64, BrokerError> {
        let ops: Vec<Op> = entries
            .iter()
            .map(|(topic, partition, offset)| Op::Put {
                key: state::offset_key(group, topic, *partition),
                value: offset.to_string().into_bytes(),
                lease: 0,
            })
            .collect();
        // Commits run on the blocking pool, where waiting on the runtime is allowed.
        match self.runtime.block_on(self.etcd.txn(&[], &ops)) {
            Ok(Some(revision)) => Ok(revision),
            Ok(None) => Err(BrokerError::ClusterStore(
                "the transaction was not applied".into(),
            )),
            Err(e) => Err(BrokerError::ClusterStore(e.to_string())),
        }
    }
}

impl crate::broker::members::SharedGroups for EtcdOffsets {
    fn write(
        &self,
        group: &str,
        value: Option<&[u8]>,
        revision: i64,
    ) -> Result<Option<i64>, BrokerError> {
        let key = state::group_key(group);
        let fence = if revision == 0 {
            // A new group: no queue group may have the name either.
            vec![
                Compare::Absent(key.clone()),
                Compare::Absent(state::queue_key(group)),
            ]
        } else {
            vec![Compare::ModRevision(key.clone(), revision)]
        };
        let op = match value {
            Some(v) => Op::Put {
                key,
                value: v.to_vec(),
                lease: 0,
            },
            None => Op::Delete { key, prefix: false },
        };
        // Group calls run on the blocking pool, where waiting on the runtime is allowed.
        match self.runtime.block_on(self.etcd.txn(&fence, &[op])) {
            Ok(Some(at)) => Ok(Some(if value.is_some() { at } else { 0 })),
            Ok(None) => Ok(None),
            Err(e) => Err(BrokerError::ClusterStore(e.to_string())),
        }
    }
}

/// The controller's change to a partition's state, if it needs one.
fn controller_decision(view: &ClusterView, s: &PartitionState) -> Option<PartitionState> {
    let alive = |n: &String| view.is_alive(n);
    let leader_alive = s.leader.as_ref().is_some_and(alive);
    if leader_alive {
        let isr: Vec<String> = s.isr.iter().filter(|n| alive(n)).cloned().collect();
        return (isr != s.isr).then(|| PartitionState { isr, ..s.clone() });
    }
    let next = s
        .replicas
        .iter()
        .find(|r| s.isr.contains(r) && alive(r))
        .cloned();
    match next {
        Some(leader) => Some(PartitionState {
            isr: s.isr.iter().filter(|n| alive(n)).cloned().collect(),
            leader: Some(leader),
            leader_epoch: s.leader_epoch + 1,
            replicas: s.replicas.clone(),
        }),
        // Offline: the in-sync set stays, so that one of its members leads when it returns.
        None if s.leader.is_some() => Some(PartitionState {
            leader: None,
            leader_epoch: s.leader_epoch + 1,
            ..s.clone()
        }),
        None => None,
    }
}

/// A node's broker id for Kafka clients (an `int32`): the node id itself when it is a
/// number below 2^31, else a hash of it.
pub fn kafka_broker_id(node_id: &str) -> i32 {
    match node_id.parse::<i32>() {
        Ok(n) if n >= 0 => n,
        _ => (crc32c::crc32c(node_id.as_bytes()) & 0x7fff_ffff) as i32,
    }
}

/// The lease TTL in whole seconds (etcd's unit), at least 2.
fn ttl_seconds(lease: Duration) -> u64 {
    lease.as_millis().div_ceil(1000).max(2) as u64
}

/// The data directory's node record: its `node_id` (a directory serves one node) and its
/// instance id (which tells this node's own earlier registration from another node's).
fn claim_data_dir(data_dir: &std::path::Path, node_id: &str) -> Result<String, ClusterError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct NodeRecord {
        node_id: String,
        instance: String,
    }
    let path = data_dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let record: NodeRecord = serde_json::from_slice(&bytes)
                .map_err(|e| ClusterError::Refused(format!("{}: {e}", path.display())))?;
            if record.node_id != node_id {
                return Err(ClusterError::Refused(format!(
                    "the data directory {} belongs to node {:?}, not {node_id:?}",
                    data_dir.display(),
                    record.node_id
                )));
            }
            Ok(record.instance)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let instance = format!(
                "{:016x}{:08x}",
                crate::log::now_ms(),
                std::process::id() ^ rand_u32()
            );
            let record = NodeRecord {
                node_id: node_id.to_owned(),
                instance: instance.clone(),
            };
            crate::broker::topic::write_durably(
                &path,
                &serde_json::to_vec(&record).expect("serializable"),
            )?;
            Ok(instance)
        }
        Err(e) => Err(BrokerError::io(&path, e).into()),
    }
}

/// A little randomness for the instance id (the clock and pid do most of the work).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::log::now_ms() as u64);
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(alive: &[&str]) -> ClusterView {
        let mut v = ClusterView::default();
        for n in alive {
            v.nodes.insert(
                n.to_string(),
                NodeInfo {
                    node_id: n.to_string(),
                    advertised_http: String::new(),
                    advertised_kafka: String::new(),
                    instance: String::new(),
                },
            );
        }
        v
    }

    fn ps(leader: Option<&str>, epoch: u32, isr: &[&str]) -> PartitionState {
        PartitionState {
            leader: leader.map(str::to_owned),
            leader_epoch: epoch,
            replicas: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            isr: isr.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_dead_leader_is_replaced_by_the_first_live_in_sync_replica_with_the_next_epoch() {
        let next = controller_decision(&view(&["b", "c"]), &ps(Some("a"), 4, &["a", "c"])).unwrap();
        assert_eq!(next, ps(Some("c"), 5, &["c"]));
    }

    #[test]
    fn no_in_sync_replica_alive_means_offline_not_an_unclean_election() {
        let next = controller_decision(&view(&["b"]), &ps(Some("a"), 4, &["a", "c"])).unwrap();
        assert_eq!(next, ps(None, 5, &["a", "c"]));
        // Nothing more to do until an in-sync replica returns; then it leads.
        assert_eq!(controller_decision(&view(&["b"]), &next), None);
        let back = controller_decision(&view(&["b", "c"]), &next).unwrap();
        assert_eq!(back, ps(Some("c"), 6, &["c"]));
    }

    #[test]
    fn dead_followers_leave_the_in_sync_set_and_a_healthy_partition_is_left_alone() {
        let next = controller_decision(&view(&["a", "c"]), &ps(Some("a"), 2, &["a", "b", "c"]));
        assert_eq!(next, Some(ps(Some("a"), 2, &["a", "c"])));
        assert_eq!(
            controller_decision(&view(&["a", "b", "c"]), &ps(Some("a"), 2, &["a", "b"])),
            None
        );
    }

    #[test]
    fn kafka_broker_ids_are_the_number_or_a_stable_hash() {
        assert_eq!(kafka_broker_id("3"), 3);
        assert_eq!(kafka_broker_id("n1"), kafka_broker_id("n1"));
        assert_ne!(kafka_broker_id("n1"), kafka_broker_id("n2"));
        assert!(kafka_broker_id("-4") >= 0);
    }

    #[test]
    fn a_data_directory_serves_one_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim_data_dir(dir.path(), "n1").unwrap();
        assert_eq!(claim_data_dir(dir.path(), "n1").unwrap(), first);
        let err = claim_data_dir(dir.path(), "n2").unwrap_err().to_string();
        assert!(err.contains("belongs to node \"n1\""), "{err}");
    }
}

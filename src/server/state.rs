//! What every handler shares: the configuration, the broker once recovered, the shutdown
//! signal, the bound on waiting consumers, the metrics and the tokens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{watch, Semaphore};

use super::access::AccessTable;
use super::error::{ApiError, ApiResult};
use super::metrics::Metrics;
use crate::broker::Broker;
use crate::config::Config;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    /// Set once every partition has been recovered.
    broker: OnceLock<Arc<Broker>>,
    shutting_down: AtomicBool,
    /// Becomes true when shutdown begins: wakes long-polls and SSE streams.
    shutdown: watch::Sender<bool>,
    /// Permits for consumers blocked in a long-poll or an SSE stream.
    waiters: Arc<Semaphore>,
    /// Permits for `durability=fsync` produce requests in progress (`max_fsync_in_flight`).
    fsync_producers: Semaphore,
    metrics: Metrics,
    tokens: crate::auth::Tokens,
    /// What each route needs of a token, declared where the routes are registered.
    access: OnceLock<AccessTable>,
    /// Set once the node has joined its cluster (never, outside one).
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Self {
        let waiters = Arc::new(Semaphore::new(config.max_long_poll_waiters as usize));
        let fsync_producers = Semaphore::new(config.max_fsync_in_flight as usize);
        // Validated when the configuration was loaded; never fall back to no authentication.
        let tokens = crate::auth::Tokens::new(&config.tokens)
            .expect("tokens are checked by Config::validate");
        AppState(Arc::new(Inner {
            tokens,
            config,
            broker: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            waiters,
            fsync_producers,
            metrics,
            access: OnceLock::new(),
            cluster: OnceLock::new(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The broker, once recovery has finished and while not shutting down.
    pub fn broker(&self) -> ApiResult<Arc<Broker>> {
        if self.0.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::shutting_down());
        }
        self.0.broker.get().cloned().ok_or_else(ApiError::not_ready)
    }

    /// The broker even while shutting down (reads finish during a graceful stop).
    pub fn broker_for_read(&self) -> ApiResult<Arc<Broker>> {
        self.0.broker.get().cloned().ok_or_else(ApiError::not_ready)
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.0.cluster.get()
    }

    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.0.cluster.set(cluster);
    }

    /// Whether the server runs in a cluster (known from its settings before it has joined).
    pub fn in_cluster(&self) -> bool {
        self.0.config.cluster
    }

    pub fn set_broker(&self, broker: Arc<Broker>) {
        let _ = self.0.broker.set(broker);
    }

    pub fn is_ready(&self) -> bool {
        self.0.broker.get().is_some()
            && (!self.in_cluster() || self.0.cluster.get().is_some())
            && !self.0.shutting_down.load(Ordering::Acquire)
    }

    /// For a write: the cluster when the node is in one, `None` outside one; `503
    /// not_ready` while it has not joined yet (a write must not bypass replication).
    pub fn cluster_for_write(&self) -> ApiResult<Option<Arc<crate::cluster::Cluster>>> {
        match (self.in_cluster(), self.0.cluster.get()) {
            (false, _) => Ok(None),
            (true, Some(c)) => Ok(Some(Arc::clone(c))),
            (true, None) => Err(ApiError::new(
                crate::api::ErrorCode::NotReady,
                "the node has not joined its cluster yet",
            )),
        }
    }

    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    pub fn waiters(&self) -> &Arc<Semaphore> {
        &self.0.waiters
    }

    /// The permits of `durability=fsync` produce requests.
    pub fn fsync_producers(&self) -> &Semaphore {
        &self.0.fsync_producers
    }

    pub fn tokens(&self) -> &crate::auth::Tokens {
        &self.0.tokens
    }

    /// The routes' declared access (empty until the router is built: every route refused).
    pub fn access(&self) -> Option<&AccessTable> {
        self.0.access.get()
    }

    pub(super) fn set_access(&self, table: AccessTable) {
        let _ = self.0.access.set(table);
    }
}

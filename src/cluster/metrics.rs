//! The cluster's metrics: counters kept as things happen, and per-partition gauges read at
//! scrape time from the replicas this node holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGaugeVec, Opts};

use super::{Cluster, Role};

/// Counters of what happened, and the etcd session's state.
#[derive(Debug)]
pub struct ClusterMetrics {
    /// Leaderships the controller moved (this node being the controller).
    pub leader_changes: IntCounter,
    /// Leaderships this node took up.
    pub leaderships_taken: IntCounter,
    /// Writes refused or not acknowledged because this node's leadership or lease ended
    /// while they waited, and fenced etcd updates.
    pub fenced_writes: IntCounter,
    /// Truncations of a follower's log to its leader's history.
    pub truncations: IntCounter,
    /// Records appended as a follower.
    pub replicated_records: IntCounter,
    /// etcd calls that failed.
    pub etcd_errors: IntCounter,
    pub session_up: AtomicBool,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        let c = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        ClusterMetrics {
            leader_changes: c(
                "mapq_cluster_leader_changes_total",
                "Partition leaderships the controller moved while this node was the controller",
            ),
            leaderships_taken: c(
                "mapq_cluster_leaderships_taken_total",
                "Partition leaderships this node took up",
            ),
            fenced_writes: c(
                "mapq_cluster_fenced_writes_total",
                "Writes not acknowledged because this node's leadership or etcd lease ended while they waited, and etcd updates refused by their fence",
            ),
            truncations: c(
                "mapq_cluster_truncations_total",
                "Truncations of a follower's log to its new leader's history",
            ),
            replicated_records: c(
                "mapq_cluster_replicated_records_total",
                "Records appended as a follower",
            ),
            etcd_errors: c(
                "mapq_cluster_etcd_errors_total",
                "etcd calls that failed (unreachable, refused)",
            ),
            session_up: AtomicBool::new(true),
        }
    }
}

/// Registers the cluster's metrics in `registry`.
pub fn register(registry: &prometheus::Registry, cluster: &Arc<Cluster>) {
    let m = cluster.metrics();
    for c in [
        &m.leader_changes,
        &m.leaderships_taken,
        &m.fenced_writes,
        &m.truncations,
        &m.replicated_records,
        &m.etcd_errors,
    ] {
        if let Err(e) = registry.register(Box::new(c.clone())) {
            tracing::error!(error = %e, "cluster metric not registered");
        }
    }
    if let Err(e) = registry.register(Box::new(Gauges::new(Arc::downgrade(cluster)))) {
        tracing::error!(error = %e, "cluster metrics not registered");
    }
}

/// The gauges, computed at scrape time.
struct Gauges {
    cluster: Weak<Cluster>,
    descs: Vec<Desc>,
}

const GAUGES: &[(&str, &str, &[&str])] = &[
    ("mapq_cluster_etcd_session_up", "1 while this node's etcd lease is alive (it may lead and acknowledge), else 0", &[]),
    ("mapq_cluster_is_controller", "1 on the node that is the controller", &[]),
    ("mapq_cluster_nodes_alive", "Nodes registered in etcd", &[]),
    ("mapq_cluster_partitions_led", "Partitions this node leads", &[]),
    ("mapq_cluster_under_replicated_partitions", "Partitions this node leads whose in-sync set is smaller than their replica set", &[]),
    ("mapq_cluster_under_min_isr_partitions", "Partitions this node leads whose in-sync set is below min_insync_replicas: produce gets 503", &[]),
    ("mapq_cluster_isr_size", "In-sync replicas of a partition this node leads", &["topic", "partition"]),
    ("mapq_cluster_replicas", "Replicas of a partition this node leads", &["topic", "partition"]),
    ("mapq_cluster_high_watermark", "A partition's high watermark on this node (what every in-sync replica holds)", &["topic", "partition"]),
    ("mapq_cluster_replication_lag_records", "Records a follower lacks, as its leader sees it", &["topic", "partition", "follower"]),
    ("mapq_cluster_replication_lag_bytes", "Bytes of frames a follower lacks, as its leader sees it", &["topic", "partition", "follower"]),
];

impl Gauges {
    fn new(cluster: Weak<Cluster>) -> Self {
        let descs = GAUGES
            .iter()
            .filter_map(|(name, help, labels)| {
                Opts::new(*name, *help)
                    .variable_labels(labels.iter().map(|l| l.to_string()).collect())
                    .describe()
                    .ok()
            })
            .collect();
        Gauges { cluster, descs }
    }
}

impl Collector for Gauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(cluster) = self.cluster.upgrade() else {
            return Vec::new();
        };
        let vecs: Vec<IntGaugeVec> = GAUGES
            .iter()
            .filter_map(|(name, help, labels)| {
                IntGaugeVec::new(Opts::new(*name, *help), labels).ok()
            })
            .collect();
        if vecs.len() != GAUGES.len() {
            return Vec::new();
        }
        let view = cluster.view();
        let session = cluster.metrics().session_up.load(Ordering::Relaxed) && cluster.lease_valid();
        vecs[0]
            .with_label_values(&[] as &[&str])
            .set(i64::from(session));
        let controller = view.controller.as_deref() == Some(cluster.node_id());
        vecs[1]
            .with_label_values(&[] as &[&str])
            .set(i64::from(controller));
        vecs[2]
            .with_label_values(&[] as &[&str])
            .set(view.nodes.len() as i64);
        let (mut led, mut under, mut below_min) = (0, 0, 0);
        let replicas: Vec<_> = cluster.lock_replicas().values().cloned().collect();
        for r in replicas {
            let p = r.partition.to_string();
            let labels = [r.topic.as_str(), p.as_str()];
            vecs[8]
                .with_label_values(&labels)
                .set(r.p.high_watermark() as i64);
            let Role::Leader(l) = r.role() else {
                continue;
            };
            led += 1;
            let n_replicas = view
                .partition(&r.topic, r.partition)
                .map_or(l.isr.len(), |v| v.state.replicas.len());
            under += i32::from(l.isr.len() < n_replicas);
            below_min += i32::from((l.isr.len() as u32) < l.min_isr);
            vecs[6].with_label_values(&labels).set(l.isr.len() as i64);
            vecs[7].with_label_values(&labels).set(n_replicas as i64);
            let end = r.p.log().end_offset();
            for (node, f) in &l.followers {
                let fl = [r.topic.as_str(), p.as_str(), node.as_str()];
                vecs[9]
                    .with_label_values(&fl)
                    .set(end.saturating_sub(f.end) as i64);
                let bytes = r.p.log().bytes_from(f.end).unwrap_or(0);
                vecs[10].with_label_values(&fl).set(bytes as i64);
            }
        }
        vecs[3].with_label_values(&[] as &[&str]).set(led);
        vecs[4]
            .with_label_values(&[] as &[&str])
            .set(i64::from(under));
        vecs[5]
            .with_label_values(&[] as &[&str])
            .set(i64::from(below_min));
        vecs.iter().flat_map(|v| v.collect()).collect()
    }
}

//! Prometheus metrics, named by Prometheus conventions (base units, `_total` counters).

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::broker::{Broker, BrokerStats};

/// Buckets from 10 µs to 10 s: produce and consume latencies span that range.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The server's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub records_read: IntCounterVec,
    pub bytes_read: IntCounterVec,
    long_poll_waiters: IntGauge,
    produce_duration: HistogramVec,
    kafka_requests: IntCounterVec,
    kafka_errors: IntCounterVec,
    kafka_duration: HistogramVec,
    kafka_connections: IntGauge,
    kafka_connections_opened: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let tp = &["topic", "partition"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge_alone =
            |name: &str, help: &str| registered(&registry, IntGauge::new(name, help)?);
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            registered(&registry, HistogramVec::new(opts, labels)?)
        };
        let m = Metrics {
            http_requests: counter(
                "mapq_http_requests_total",
                "HTTP requests, by method, route template and status",
                &["method", "route", "status"],
            )?,
            http_duration: histogram(
                "mapq_http_request_duration_seconds",
                "HTTP request latency, by method and route template",
                &["method", "route"],
            )?,
            records_read: counter("mapq_records_read_total", "Records served to consumers", tp)?,
            bytes_read: counter(
                "mapq_bytes_read_total",
                "Bytes of frames served to consumers",
                tp,
            )?,
            long_poll_waiters: gauge_alone(
                "mapq_long_poll_waiters",
                "Consumers blocked in a long-poll or an SSE stream",
            )?,
            produce_duration: histogram(
                "mapq_produce_duration_seconds",
                "Produce request latency, from the body read to the answer, by durability",
                &["durability"],
            )?,
            kafka_requests: counter(
                "mapq_kafka_requests_total",
                "Kafka protocol requests answered, by API",
                &["api"],
            )?,
            kafka_errors: counter(
                "mapq_kafka_request_errors_total",
                "Kafka error codes in answers (one per partition, member or resource), by API and error",
                &["api", "error"],
            )?,
            kafka_duration: histogram(
                "mapq_kafka_request_duration_seconds",
                "Kafka protocol request latency, from the decoded request to the answer, by API",
                &["api"],
            )?,
            kafka_connections: gauge_alone(
                "mapq_kafka_connections",
                "Kafka protocol connections open",
            )?,
            kafka_connections_opened: registered(
                &registry,
                prometheus::IntCounter::new(
                    "mapq_kafka_connections_total",
                    "Kafka protocol connections accepted",
                )?,
            )?,
            registry,
        };
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    pub fn observe_produce(&self, durability: crate::config::Durability, elapsed: Duration) {
        let label = match durability {
            crate::config::Durability::Memory => "memory",
            crate::config::Durability::Fsync => "fsync",
        };
        self.produce_duration
            .with_label_values(&[label])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a Kafka request: its API, the errors its answer carries, its latency.
    pub fn observe_kafka(
        &self,
        api: &str,
        errors: &[kafka_protocol::ResponseError],
        elapsed: Duration,
    ) {
        self.kafka_requests.with_label_values(&[api]).inc();
        for e in errors {
            self.kafka_errors
                .with_label_values(&[api, &e.to_string()])
                .inc();
        }
        self.kafka_duration
            .with_label_values(&[api])
            .observe(elapsed.as_secs_f64());
    }

    pub fn kafka_connection_opened(&self) {
        self.kafka_connections.inc();
        self.kafka_connections_opened.inc();
    }

    pub fn kafka_connection_closed(&self) {
        self.kafka_connections.dec();
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        // Any token is a method to hyper: a fixed set of labels keeps the series bounded.
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" => method,
            _ => "other",
        };
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// Called once the broker is open: its state is read at each scrape (see
    /// [`BrokerCollector`]), and its flushes are timed.
    pub fn register_broker(&self, broker: &Arc<Broker>) {
        let opts = HistogramOpts::new(
            "mapq_flush_duration_seconds",
            "Time to msync one partition's new data",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        if let Ok(h) = prometheus::Histogram::with_opts(opts) {
            if self.registry.register(Box::new(h.clone())).is_ok() {
                broker.observe_flushes(Box::new(move |d| h.observe(d.as_secs_f64())));
            }
        }
        let collector = BrokerCollector::new(Arc::clone(broker));
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::error!(error = %e, "broker metrics not registered");
        }
    }

    /// Registers a cluster node's metrics.
    pub fn register_cluster(&self, cluster: &Arc<crate::cluster::Cluster>) {
        crate::cluster::metrics::register(&self.registry, cluster);
    }

    /// The text exposition.
    pub fn render(&self, waiters: u64) -> String {
        self.long_poll_waiters.set(waiters as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Forgets the series of a deleted topic.
    pub fn remove_topic(&self, topic: &str, partitions: u32) {
        for p in 0..partitions {
            let labels = [topic, &p.to_string()];
            for c in [&self.records_read, &self.bytes_read] {
                let _ = c.remove_label_values(&labels);
            }
        }
    }
}

/// `collector`, once registered.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// One family of the broker's series: its name, help, labels and how to read its values
/// from a snapshot.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    labels: &'static [&'static str],
    values: fn(&BrokerStats) -> Vec<Series>,
}

/// One series: its label values and its value.
type Series = (Vec<String>, u64);

const TP: &[&str] = &["topic", "partition"];
const GTP: &[&str] = &["group", "topic", "partition"];

/// The series of each partition: `(labels, value)`.
fn per_partition(s: &BrokerStats, value: fn(&crate::broker::PartitionStats) -> u64) -> Vec<Series> {
    s.partitions
        .iter()
        .map(|p| (vec![p.topic.clone(), p.partition.to_string()], value(p)))
        .collect()
}

/// The series of each topic's idempotent produce: `(labels, value)`.
fn per_topic(s: &BrokerStats, value: fn(&crate::broker::IdempotencyStats) -> u64) -> Vec<Series> {
    s.idempotency
        .iter()
        .map(|i| (vec![i.topic.clone()], value(i)))
        .collect()
}

/// The series of each group's partition: `(labels, value)`.
fn per_group(s: &BrokerStats, value: fn(&crate::broker::GroupStats) -> u64) -> Vec<Series> {
    s.groups
        .iter()
        .map(|g| {
            let labels = vec![g.group.clone(), g.topic.clone(), g.partition.to_string()];
            (labels, value(g))
        })
        .collect()
}

/// The series of each group with members: `(labels, value)`.
fn per_member_group(
    s: &BrokerStats,
    value: fn(&crate::broker::MemberGroupStats) -> u64,
) -> Vec<Series> {
    s.member_groups
        .iter()
        .map(|g| (vec![g.group.clone()], value(g)))
        .collect()
}

/// The series of a counter of each group with members, by `reason` or `operation`.
fn per_member_group_by(
    s: &BrokerStats,
    counts: fn(&crate::broker::MemberGroupStats) -> &std::collections::BTreeMap<&'static str, u64>,
    kinds: &[&str],
) -> Vec<Series> {
    s.member_groups
        .iter()
        .flat_map(|g| {
            kinds.iter().map(move |k| {
                let n = counts(g).get(k).copied().unwrap_or(0);
                (vec![g.group.clone(), (*k).to_owned()], n)
            })
        })
        .collect()
}

/// The series of each queue group: `(labels, value)`.
fn per_queue(s: &BrokerStats, value: QueueCounter) -> Vec<Series> {
    s.queue_groups
        .iter()
        .map(|g| (vec![g.group.clone()], value(g)))
        .collect()
}

/// One of a queue group's counters, read from its stats.
type QueueCounter = fn(&crate::broker::QueueGroupStats) -> u64;

/// The series of a counter of each queue group, by a second label.
fn per_queue_by(s: &BrokerStats, kinds: &[(&str, QueueCounter)]) -> Vec<Series> {
    s.queue_groups
        .iter()
        .flat_map(|g| {
            kinds
                .iter()
                .map(move |(k, v)| (vec![g.group.clone(), (*k).to_owned()], v(g)))
        })
        .collect()
}

const FAMILIES: &[Family] = &[
    Family {
        name: "mapq_log_start_offset",
        help: "Earliest offset stored",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.start_offset),
    },
    Family {
        name: "mapq_log_end_offset",
        help: "Offset the next record will get",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.end_offset),
    },
    Family {
        name: "mapq_log_durable_offset",
        help: "Records below this offset are durable",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.durable_offset),
    },
    Family {
        name: "mapq_log_size_bytes",
        help: "Bytes of frames stored",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.size_bytes),
    },
    Family {
        name: "mapq_log_segments",
        help: "Segments of the partition",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.segments),
    },
    Family {
        name: "mapq_tail_waiters",
        help: "Local tailers blocked in a futex wait on the partition's files",
        counter: false,
        labels: TP,
        values: |s| per_partition(s, |p| p.tail_waiters),
    },
    Family {
        name: "mapq_records_appended_total",
        help: "Records appended",
        counter: true,
        labels: TP,
        values: |s| per_partition(s, |p| p.records_appended),
    },
    Family {
        name: "mapq_bytes_appended_total",
        help: "Bytes of frames appended",
        counter: true,
        labels: TP,
        values: |s| per_partition(s, |p| p.bytes_appended),
    },
    Family {
        name: "mapq_segments_rolled_total",
        help: "Segments sealed and rolled over",
        counter: true,
        labels: TP,
        values: |s| per_partition(s, |p| p.segments_rolled),
    },
    Family {
        name: "mapq_segments_deleted_total",
        help: "Segments deleted by retention, by reason (age, size)",
        counter: true,
        labels: &["topic", "partition", "reason"],
        values: |s| {
            s.partitions
                .iter()
                .flat_map(|p| {
                    let labels = |reason: &str| {
                        vec![p.topic.clone(), p.partition.to_string(), reason.to_owned()]
                    };
                    [
                        (labels("age"), p.segments_deleted_by_age),
                        (labels("size"), p.segments_deleted_by_size),
                    ]
                })
                .collect()
        },
    },
    Family {
        name: "mapq_flushes_total",
        help: "Flushes (msync) that wrote data",
        counter: true,
        labels: TP,
        values: |s| per_partition(s, |p| p.flushes),
    },
    Family {
        name: "mapq_flush_errors_total",
        help: "Failed flushes",
        counter: true,
        labels: TP,
        values: |s| per_partition(s, |p| p.flush_errors),
    },
    Family {
        name: "mapq_idempotency_keys",
        help: "Idempotency keys remembered (within idempotency_window_ms)",
        counter: false,
        labels: &["topic"],
        values: |s| per_topic(s, |i| i.keys),
    },
    Family {
        name: "mapq_idempotent_replays_total",
        help: "Produce retries answered with the original offsets, nothing appended",
        counter: true,
        labels: &["topic"],
        values: |s| per_topic(s, |i| i.replays),
    },
    Family {
        name: "mapq_idempotency_conflicts_total",
        help: "Produce requests refused for their Idempotency-Key, by code (idempotency_key_mismatch, idempotency_key_in_flight)",
        counter: true,
        labels: &["topic", "code"],
        values: |s| {
            s.idempotency
                .iter()
                .flat_map(|i| {
                    [
                        (vec![i.topic.clone(), "idempotency_key_mismatch".to_owned()], i.mismatches),
                        (vec![i.topic.clone(), "idempotency_key_in_flight".to_owned()], i.in_flight),
                    ]
                })
                .collect()
        },
    },
    Family {
        name: "mapq_idempotency_rebuild_milliseconds",
        help: "Time to rebuild a topic's idempotency keys from its log when it opened",
        counter: false,
        labels: &["topic"],
        values: |s| per_topic(s, |i| i.rebuild_ms),
    },
    Family {
        name: "mapq_consumer_group_offset",
        help: "Committed offset of a consumer group",
        counter: false,
        labels: GTP,
        values: |s| per_group(s, |g| g.offset),
    },
    Family {
        name: "mapq_consumer_group_lag",
        help: "High watermark minus the committed offset of a consumer group",
        counter: false,
        labels: GTP,
        values: |s| per_group(s, |g| g.lag),
    },
    Family {
        name: "mapq_group_members",
        help: "Members of a consumer group with members",
        counter: false,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.members),
    },
    Family {
        name: "mapq_group_epoch",
        help: "Epoch of a consumer group (bumped at each new target assignment)",
        counter: false,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.epoch),
    },
    Family {
        name: "mapq_group_rebalances_total",
        help: "New target assignments of a consumer group, by reason (join, leave, subscription, partitions, session_timeout, rebalance_timeout)",
        counter: true,
        labels: &["group", "reason"],
        values: |s| {
            per_member_group_by(
                s,
                |g| &g.counters.rebalances,
                &[
                    "join",
                    "leave",
                    "subscription",
                    "partitions",
                    "session_timeout",
                    "rebalance_timeout",
                ],
            )
        },
    },
    Family {
        name: "mapq_group_partitions_moved_total",
        help: "Partitions given to a member other than their previous owner",
        counter: true,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.partitions_moved),
    },
    Family {
        name: "mapq_group_fenced_total",
        help: "Member calls refused by fencing (removed member, stale epoch, partition not owned), by operation (heartbeat, fetch, commit)",
        counter: true,
        labels: &["group", "operation"],
        values: |s| {
            per_member_group_by(s, |g| &g.counters.fenced, &["heartbeat", "fetch", "commit"])
        },
    },
    Family {
        name: "mapq_group_reconciles_total",
        help: "Rebalances that ended with every member owning its target assignment",
        counter: true,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.counters.reconciled),
    },
    Family {
        name: "mapq_group_reconcile_milliseconds_total",
        help: "Time from a new target assignment to every member owning it, summed over the rebalances (divide by mapq_group_reconciles_total)",
        counter: true,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.counters.reconcile_ms_total),
    },
    Family {
        name: "mapq_group_last_reconcile_milliseconds",
        help: "Time the last rebalance took to reconcile",
        counter: false,
        labels: &["group"],
        values: |s| per_member_group(s, |g| g.counters.last_reconcile_ms),
    },
    Family {
        name: "mapq_queue_backlog",
        help: "Records of a queue group neither settled nor in flight",
        counter: false,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.backlog),
    },
    Family {
        name: "mapq_queue_in_flight",
        help: "Records of a queue group leased and not acked",
        counter: false,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.in_flight),
    },
    Family {
        name: "mapq_queue_oldest_unacked_age_milliseconds",
        help: "Age of the oldest record of a queue group not settled",
        counter: false,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.oldest_unacked_age_ms),
    },
    Family {
        name: "mapq_queue_deliveries_total",
        help: "Records leased, by kind (first, retry)",
        counter: true,
        labels: &["group", "kind"],
        values: |s| {
            per_queue_by(
                s,
                &[("first", |g| g.first_deliveries), ("retry", |g| g.redeliveries)],
            )
        },
    },
    Family {
        name: "mapq_queue_acks_total",
        help: "Acks that acted, by type (accept, release, reject, extend; repeats not counted)",
        counter: true,
        labels: &["group", "type"],
        values: |s| {
            per_queue_by(
                s,
                &[
                    ("accept", |g| g.accepts),
                    ("release", |g| g.releases),
                    ("reject", |g| g.rejects),
                    ("extend", |g| g.extends),
                ],
            )
        },
    },
    Family {
        name: "mapq_queue_lease_expiries_total",
        help: "Leases that ended without an ack",
        counter: true,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.expired_leases),
    },
    Family {
        name: "mapq_queue_lost_leases_total",
        help: "Acks that acted on nothing (lease_lost: the record was leased again, settled otherwise, or never leased under that token)",
        counter: true,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.lost_leases),
    },
    Family {
        name: "mapq_queue_dead_letters_total",
        help: "Records dead-lettered (or dropped, without a dead-letter topic)",
        counter: true,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.dead_letters),
    },
    Family {
        name: "mapq_queue_window_full_total",
        help: "Lease requests that got fewer records than asked because max_in_flight records were in flight",
        counter: true,
        labels: &["group"],
        values: |s| per_queue(s, |g| g.window_full),
    },
    Family {
        name: "mapq_open_segments",
        help: "Segments mapped, with their files open, across all partitions",
        counter: false,
        labels: &[],
        values: |s| vec![(Vec::new(), s.open_segments)],
    },
    Family {
        name: "mapq_disk_used_bytes",
        help: "Disk blocks charged to the max_disk_bytes quota",
        counter: false,
        labels: &[],
        values: |s| {
            s.disk
                .map(|(used, _)| (Vec::new(), used))
                .into_iter()
                .collect()
        },
    },
    Family {
        name: "mapq_disk_limit_bytes",
        help: "The max_disk_bytes quota (absent: no quota)",
        counter: false,
        labels: &[],
        values: |s| {
            s.disk
                .map(|(_, limit)| (Vec::new(), limit))
                .into_iter()
                .collect()
        },
    },
];

/// The broker's series, read from one [`Broker::stats`] snapshot per scrape: the engine's
/// counters are exported as it counts them, so concurrent scrapes cannot count twice.
pub struct BrokerCollector {
    broker: Arc<Broker>,
    descs: Vec<Desc>,
}

impl BrokerCollector {
    fn new(broker: Arc<Broker>) -> Self {
        let descs = FAMILIES
            .iter()
            .filter_map(|f| {
                Desc::new(
                    f.name.to_owned(),
                    f.help.to_owned(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
                .ok()
            })
            .collect();
        BrokerCollector { broker, descs }
    }
}

impl Collector for BrokerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.broker.stats();
        let mut out = Vec::new();
        for f in FAMILIES {
            let series = (f.values)(&stats);
            let opts = Opts::new(f.name, f.help);
            if f.counter {
                let Ok(vec) = IntCounterVec::new(opts, f.labels) else {
                    continue;
                };
                for (labels, v) in &series {
                    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                    vec.with_label_values(&labels).inc_by(*v);
                }
                out.extend(vec.collect());
            } else {
                let Ok(vec) = IntGaugeVec::new(opts, f.labels) else {
                    continue;
                };
                for (labels, v) in &series {
                    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                    vec.with_label_values(&labels).set(*v as i64);
                }
                out.extend(vec.collect());
            }
        }
        // A family without series is left out, as the registry leaves out empty vectors.
        out.retain(|mf| !mf.get_metric().is_empty());
        out
    }
}

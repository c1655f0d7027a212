//! Prometheus metrics, named by Prometheus conventions (base units, `_total` counters).

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::broker::Broker;

/// Buckets from 10 µs to 10 s: produce and consume latencies span that range.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The server's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Held by a scrape: two at once would both bring the counters up to the engine's
    /// counts, counting the difference twice.
    render_lock: std::sync::Arc<std::sync::Mutex<()>>,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub records_appended: IntCounterVec,
    pub bytes_appended: IntCounterVec,
    pub records_read: IntCounterVec,
    pub bytes_read: IntCounterVec,
    log_start: IntGaugeVec,
    log_end: IntGaugeVec,
    log_durable: IntGaugeVec,
    log_size: IntGaugeVec,
    log_segments: IntGaugeVec,
    long_poll_waiters: IntGauge,
    segments_rolled: IntCounterVec,
    segments_deleted: IntCounterVec,
    flushes: IntCounterVec,
    flush_errors: IntCounterVec,
    disk_used: IntGauge,
    disk_limit: IntGauge,
    open_segments: IntGauge,
    produce_duration: HistogramVec,
    group_offset: IntGaugeVec,
    group_lag: IntGaugeVec,
    tail_waiters: IntGaugeVec,
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
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str| gauges(name, help, tp);
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
            records_appended: counter("mapq_records_appended_total", "Records appended", tp)?,
            bytes_appended: counter("mapq_bytes_appended_total", "Bytes of frames appended", tp)?,
            records_read: counter("mapq_records_read_total", "Records served to consumers", tp)?,
            bytes_read: counter(
                "mapq_bytes_read_total",
                "Bytes of frames served to consumers",
                tp,
            )?,
            log_start: gauge("mapq_log_start_offset", "Earliest offset stored")?,
            log_end: gauge("mapq_log_end_offset", "Offset the next record will get")?,
            log_durable: gauge(
                "mapq_log_durable_offset",
                "Records below this offset are durable",
            )?,
            log_size: gauge("mapq_log_size_bytes", "Bytes of frames stored")?,
            log_segments: gauge("mapq_log_segments", "Segments of the partition")?,
            long_poll_waiters: gauge_alone(
                "mapq_long_poll_waiters",
                "Consumers blocked in a long-poll or an SSE stream",
            )?,
            segments_rolled: counter(
                "mapq_segments_rolled_total",
                "Segments sealed and rolled over",
                tp,
            )?,
            segments_deleted: counter(
                "mapq_segments_deleted_total",
                "Segments deleted by retention, by reason (age, size)",
                &["topic", "partition", "reason"],
            )?,
            flushes: counter("mapq_flushes_total", "Flushes (msync) that wrote data", tp)?,
            flush_errors: counter("mapq_flush_errors_total", "Failed flushes", tp)?,
            // Registered with the broker, and only when it has a quota.
            disk_used: IntGauge::new(
                "mapq_disk_used_bytes",
                "Disk blocks charged to the max_disk_bytes quota",
            )?,
            disk_limit: IntGauge::new(
                "mapq_disk_limit_bytes",
                "The max_disk_bytes quota (absent: no quota)",
            )?,
            produce_duration: histogram(
                "mapq_produce_duration_seconds",
                "Produce request latency, from the body read to the answer, by durability",
                &["durability"],
            )?,
            group_offset: gauges(
                "mapq_consumer_group_offset",
                "Committed offset of a consumer group",
                &["group", "topic", "partition"],
            )?,
            group_lag: gauges(
                "mapq_consumer_group_lag",
                "High watermark minus the committed offset of a consumer group",
                &["group", "topic", "partition"],
            )?,
            tail_waiters: gauge(
                "mapq_tail_waiters",
                "Local tailers blocked in a futex wait on the partition's files",
            )?,
            open_segments: gauge_alone(
                "mapq_open_segments",
                "Segments mapped, with their files open, across all partitions",
            )?,
            registry,
            render_lock: Default::default(),
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

    /// Called once the broker is open (the gauges are read from it at each scrape).
    pub fn register_broker(&self, broker: &Broker) {
        let _ = self
            .registry
            .register(Box::new(broker.flush_duration().clone()));
        if broker.quota().is_some() {
            for g in [&self.disk_used, &self.disk_limit] {
                let _ = self.registry.register(Box::new(g.clone()));
            }
        }
    }

    /// The text exposition, with the log gauges refreshed from `broker`.
    pub fn render(&self, broker: Option<&Broker>, waiters: u64) -> String {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.long_poll_waiters.set(waiters as i64);
        if let Some(b) = broker {
            for g in [
                &self.log_start,
                &self.log_end,
                &self.log_durable,
                &self.log_size,
                &self.log_segments,
            ] {
                g.reset();
            }
            self.tail_waiters.reset();
            self.group_offset.reset();
            self.group_lag.reset();
            for group in b.groups().names() {
                let Ok(offsets) = b.groups().offsets(&group) else {
                    continue;
                };
                for ((topic, partition), offset) in offsets {
                    let Ok(t) = b.topic(&topic) else { continue };
                    let Ok(p) = t.partition(partition) else {
                        continue;
                    };
                    let labels = [group.as_str(), topic.as_str(), &partition.to_string()];
                    self.group_offset
                        .with_label_values(&labels)
                        .set(offset as i64);
                    let lag = p.log().end_offset().saturating_sub(offset);
                    self.group_lag.with_label_values(&labels).set(lag as i64);
                }
            }
            for t in b.topics() {
                for p in t.partitions() {
                    let labels = [t.name(), &p.id().to_string()];
                    let log = p.log();
                    let waiters: u32 = log.segments().iter().map(|s| s.tail_waiters()).sum();
                    self.tail_waiters
                        .with_label_values(&labels)
                        .set(i64::from(waiters));
                    self.log_start
                        .with_label_values(&labels)
                        .set(log.start_offset() as i64);
                    self.log_end
                        .with_label_values(&labels)
                        .set(log.end_offset() as i64);
                    self.log_durable
                        .with_label_values(&labels)
                        .set(log.durable_offset() as i64);
                    self.log_size
                        .with_label_values(&labels)
                        .set(log.size_bytes() as i64);
                    self.log_segments
                        .with_label_values(&labels)
                        .set(log.segment_count() as i64);
                    let st = log.stats();
                    let load = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    catch_up(
                        &self.segments_rolled.with_label_values(&labels),
                        load(&st.segments_rolled),
                    );
                    catch_up(&self.flushes.with_label_values(&labels), load(&st.flushes));
                    catch_up(
                        &self.flush_errors.with_label_values(&labels),
                        load(&st.flush_errors),
                    );
                    for (reason, n) in [
                        ("age", load(&st.segments_deleted_by_age)),
                        ("size", load(&st.segments_deleted_by_size)),
                    ] {
                        let c = self
                            .segments_deleted
                            .with_label_values(&[labels[0], labels[1], reason]);
                        catch_up(&c, n);
                    }
                }
            }
            let open: usize = b
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.log().open_segment_count()))
                .sum();
            self.open_segments.set(open as i64);
            if let Some(q) = b.quota() {
                self.disk_used.set(q.used_bytes() as i64);
                self.disk_limit.set(q.limit_bytes() as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Forgets the series of a deleted topic.
    pub fn remove_topic(&self, topic: &str, partitions: u32) {
        for p in 0..partitions {
            let labels = [topic, &p.to_string()];
            for c in [
                &self.records_appended,
                &self.bytes_appended,
                &self.records_read,
                &self.bytes_read,
                &self.segments_rolled,
                &self.flushes,
                &self.flush_errors,
            ] {
                let _ = c.remove_label_values(&labels);
            }
            for reason in ["age", "size"] {
                let _ = self
                    .segments_deleted
                    .remove_label_values(&[labels[0], labels[1], reason]);
            }
        }
    }
}

/// Brings a counter up to an engine's own count (counters only move forward).
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
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

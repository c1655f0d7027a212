//! Background maintenance: one supervised task per server that flushes (msync) on a timer
//! and after `flush_messages` records, rolls segments by age, applies retention by age
//! and by size, and removes group members past their session or rebalance timeout. It talks to the engine through its public API; every piece of file work runs
//! on the blocking pool. Rolling by size happens in the append itself, and the next chunk of
//! every active segment is reserved and pre-faulted by the engine's prefaulter thread.

use crate::log::now_ms;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::broker::{Broker, Partition};

/// How often members past their session or rebalance timeout are looked for.
const MEMBERS_TICK: Duration = Duration::from_millis(250);

/// Starts the maintenance task; it ends when `shutdown` turns true.
pub fn spawn(broker: Arc<Broker>, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let requests = broker.take_flush_requests();
    tokio::spawn(run(broker, requests, shutdown))
}

async fn run(
    broker: Arc<Broker>,
    requests: Option<mpsc::UnboundedReceiver<Weak<Partition>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = broker.config().clone();
    let mut flush_tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms));
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut housekeeping =
        tokio::time::interval(Duration::from_millis(config.retention_check_interval_ms));
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Group members whose session or rebalance timeout passed are removed within this.
    let mut members_tick = tokio::time::interval(MEMBERS_TICK);
    members_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut requests = requests;
    tracing::info!(
        flush_interval_ms = config.flush_interval_ms,
        flush_messages = ?config.flush_messages,
        retention_check_interval_ms = config.retention_check_interval_ms,
        "maintenance started"
    );
    loop {
        tokio::select! {
            _ = flush_tick.tick() => {
                let b = Arc::clone(&broker);
                supervise("flush", move || {
                    b.flush_all().map_err(|e| e.to_string())?;
                    b.flush_queue_groups().map_err(|e| e.to_string())
                }).await;
            }
            _ = members_tick.tick() => {
                let b = Arc::clone(&broker);
                supervise("group_members", move || b.expire_members().map_err(|e| e.to_string())).await;
                let b = Arc::clone(&broker);
                supervise("queue_groups", move || b.tick_queue_groups().map_err(|e| e.to_string())).await;
            }
            _ = housekeeping.tick() => {
                let b = Arc::clone(&broker);
                supervise("housekeeping", move || { housekeep(&b); Ok(()) }).await;
            }
            Some(p) = recv(&mut requests) => {
                let Some(p) = p.upgrade() else { continue };
                p.take_queued_flush();
                let b = Arc::clone(&broker);
                supervise("flush_messages", move || {
                    b.flush_unless_deleted(&p).map_err(|e| e.to_string())
                }).await;
            }
            _ = until_true(&mut shutdown) => break,
        }
    }
    tracing::info!("maintenance stopped");
}

async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn recv<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one piece of blocking maintenance work; a failure or a panic is logged and the
/// task carries on (the next tick retries), never taking the server down.
async fn supervise(what: &'static str, work: impl FnOnce() -> Result<(), String> + Send + 'static) {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(task = what, error = %e, "maintenance work failed"),
        Err(e) => tracing::error!(task = what, error = %e, "maintenance work panicked"),
    }
}

/// Rolls segments that are too old, applies retention, and keeps the number of mapped
/// segments bounded.
fn housekeep(broker: &Broker) {
    let now = now_ms();
    roll_and_retain(broker, now);
    close_segments(broker, now);
}

/// Unmaps idle sealed segments and parks idle writers, then unmaps the least recently used
/// segments, active ones included, while more than `max_open_segments` are mapped: the bound
/// holds whatever the number of partitions.
fn close_segments(broker: &Broker, now: i64) {
    let config = broker.config();
    let idle_since = now - config.segment_idle_close_ms as i64;
    let mut open = 0usize;
    // (last use, the segment, its partition's log when it is the active one)
    let mut candidates = Vec::new();
    for topic in broker.topics() {
        for p in topic.partitions() {
            let log = p.log();
            log.close_idle(idle_since);
            let segs = log.segments();
            for (i, seg) in segs.iter().enumerate().filter(|(_, s)| s.is_open()) {
                open += 1;
                let active = i + 1 == segs.len();
                candidates.push((
                    seg.last_used_ms(),
                    Arc::clone(seg),
                    active.then(|| Arc::clone(p)),
                ));
            }
        }
    }
    let limit = config.max_open_segments as usize;
    if open > limit {
        candidates.sort_by_key(|(used, _, _)| *used);
        for (_, seg, active) in candidates {
            if open <= limit {
                break;
            }
            let closed = match active {
                // Parks only a durable writer: one with unflushed records waits for the next
                // flush, and the next round.
                Some(p) => p.log().park_writer(i64::MAX),
                None => seg.close_if_idle(i64::MAX),
            };
            if closed {
                open -= 1;
            }
        }
    }
}

/// Rolls segments that are too old and applies retention, partition by partition.
fn roll_and_retain(broker: &Broker, now: i64) {
    for topic in broker.topics() {
        let cfg = topic.config().clone();
        for p in topic.partitions() {
            let log = p.log();
            if let Some(age) = cfg.segment_ms {
                match log.roll_if_older(now, age) {
                    Ok(true) => tracing::info!(
                        topic = topic.name(),
                        partition = p.id(),
                        segment_ms = age,
                        "rolled segment by age"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        topic = topic.name(),
                        partition = p.id(),
                        error = %e,
                        "roll by age failed"
                    ),
                }
            }
            if cfg.retention_ms.is_none() && cfg.retention_bytes.is_none() {
                continue;
            }
            if let Err(e) = log.apply_retention(now, cfg.retention_ms, cfg.retention_bytes) {
                tracing::warn!(topic = topic.name(), partition = p.id(), error = %e, "retention failed");
            }
        }
    }
}

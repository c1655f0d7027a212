//! Clusters over HTTP: `GET /v1/cluster` (nodes, controller, partition leaders and
//! in-sync sets), the two routes followers call on leaders (replication fetches and
//! leader-epoch ends), and the answers a write gets on a node that cannot take it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::cluster::{ClusterOut, NodeOut, PartitionOut};

use crate::broker::ReadLimits;
use crate::cluster::state::NodeInfo;
use crate::cluster::{self, Cluster, Refusal};
use crate::server::error::{ApiError, ApiResult, ErrorCode};
use crate::server::{blocking, AppState};

/// The path and query of a request: what a redirect sends on.
pub fn request_target(uri: &axum::http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// `307 not_leader` to `target` (a path and query) on `node`.
pub fn redirect_to(node: &NodeInfo, target: &str, what: &str) -> ApiError {
    let base = node.advertised_http.trim_end_matches('/');
    ApiError::not_leader(&node.node_id, format!("{base}{target}"), what)
}

/// [`redirect_to`] the node `leader`, as the cluster's last read names it.
pub fn redirect(c: &Cluster, leader: &str, target: &str, what: &str) -> ApiError {
    match c.view().nodes.get(leader) {
        Some(node) => redirect_to(node, target, what),
        None => ApiError::not_leader(leader, target.to_owned(), what),
    }
}

/// In a cluster, a read of a partition this node holds no replica of goes to its leader:
/// `307 not_leader` there. `None`: read here (a replica, or no cluster).
pub fn read_elsewhere(
    state: &AppState,
    topic: &str,
    partition: u32,
    uri: &axum::http::Uri,
) -> Option<ApiError> {
    let c = state.cluster()?;
    if !c.holds_no_replica(topic, partition) {
        return None;
    }
    Some(match c.view().leader_of(topic, partition) {
        Some(leader) => redirect_to(
            leader,
            &request_target(uri),
            &format!("partition {partition} of topic {topic} (this node holds no replica of it)"),
        ),
        None => refusal_error(&Refusal::NotLeader, topic, partition),
    })
}

/// A write refused before anything was appended.
pub fn refusal_error(refusal: &Refusal, topic: &str, partition: u32) -> ApiError {
    match refusal {
        Refusal::NotEnoughReplicas { isr, min } => ApiError::new(
            ErrorCode::NotEnoughReplicas,
            format!("partition {partition} of topic {topic} has {isr} in-sync replicas, fewer than min_insync_replicas ({min}); nothing was appended"),
        ),
        Refusal::LeaseLapsed => ApiError::new(
            ErrorCode::LeaderNotAvailable,
            "this node's etcd session lapsed: it leads nothing until it has a new one; nothing was appended",
        ),
        Refusal::NotLeader => ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!("partition {partition} of topic {topic} has no leader now; retry"),
        ),
    }
}

/// Appended records whose replication could not be confirmed: they may or may not
/// survive, so they are not acknowledged.
pub fn uncommitted_error(refusal: &Refusal, topic: &str) -> ApiError {
    match refusal {
        Refusal::NotEnoughReplicas { isr, min } => ApiError::new(
            ErrorCode::NotEnoughReplicas,
            format!("the records were appended to topic {topic}, but the in-sync set fell to {isr}, below min_insync_replicas ({min}), before they were replicated; not acknowledged (they may survive)"),
        ),
        Refusal::LeaseLapsed | Refusal::NotLeader => ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!("this node stopped leading a partition of topic {topic} (or lost its etcd session) before the records were replicated; not acknowledged (they may or may not survive)"),
        ),
    }
}

/// Makes sure `name` exists in the cluster before a write: created with the defaults when
/// missing and `auto_create_topics` is on.
pub async fn ensure_topic(c: &Arc<Cluster>, name: &str) -> ApiResult<()> {
    c.ensure_topic(name).await.map_err(cluster_error)
}

/// An error of the cluster layer as an answer.
pub fn cluster_error(e: cluster::ClusterError) -> ApiError {
    use cluster::ClusterError as E;
    match e {
        E::Broker(b) => b.into(),
        E::TopicExists(t) => crate::broker::BrokerError::TopicExists(t).into(),
        E::InvalidConfig(m) => ApiError::new(ErrorCode::InvalidConfig, m),
        E::Etcd(e) => ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!("the cluster's etcd cannot be reached: {e}"),
        ),
        E::Refused(m) => ApiError::new(ErrorCode::LeaderNotAvailable, m),
    }
}

fn no_cluster() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "this server does not run in a cluster (start it with --cluster)",
    )
}

pub const CLUSTER_ERRORS: &[ErrorCode] = &[ErrorCode::NotFound, ErrorCode::NotReady];

/// The cluster: nodes, controller, and each partition's leader, epoch and in-sync set.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterOut)))]
pub async fn get_cluster(State(state): State<AppState>) -> ApiResult<Json<ClusterOut>> {
    let c = state.cluster().ok_or_else(|| {
        if state.in_cluster() {
            ApiError::not_ready()
        } else {
            no_cluster()
        }
    })?;
    let view = c.view();
    let mut nodes: Vec<NodeOut> = view
        .nodes
        .values()
        .map(|n| NodeOut {
            node_id: n.node_id.clone(),
            advertised_http: n.advertised_http.clone(),
            advertised_kafka: n.advertised_kafka.clone(),
            alive: true,
        })
        .collect();
    // Nodes that hold replicas but are not registered now.
    for v in view.partitions.values() {
        for r in &v.state.replicas {
            if !nodes.iter().any(|n| &n.node_id == r) {
                nodes.push(NodeOut {
                    node_id: r.clone(),
                    advertised_http: String::new(),
                    advertised_kafka: String::new(),
                    alive: false,
                });
            }
        }
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let partitions = view
        .partitions
        .iter()
        .map(|((topic, partition), v)| PartitionOut {
            topic: topic.clone(),
            partition: *partition,
            leader: v.state.leader.clone(),
            leader_epoch: v.state.leader_epoch,
            replicas: v.state.replicas.clone(),
            isr: v.state.isr.clone(),
            high_watermark: c.replica(topic, *partition).map(|r| r.p.high_watermark()),
        })
        .collect();
    Ok(Json(ClusterOut {
        node_id: c.node_id().to_owned(),
        nodes,
        controller: view.controller.clone(),
        partitions,
    }))
}

/// Query of a follower's fetch.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReplicateQuery {
    /// The follower's end: the first offset it lacks.
    offset: u64,
    /// The follower's durable end.
    durable: u64,
    /// The high watermark the follower knows.
    hw: u64,
    /// The follower's node id.
    node: String,
    /// The leader epoch the follower follows.
    leader_epoch: u32,
    max_bytes: usize,
    wait_ms: u64,
}

pub const REPLICATE_ERRORS: &[ErrorCode] = &[
    ErrorCode::NotFound,
    ErrorCode::NotReady,
    ErrorCode::FencedLeaderEpoch,
    ErrorCode::OffsetOutOfRange,
    ErrorCode::BadRequest,
];

/// This node's replica of a partition it leads at `epoch`, with its lease valid (a leader
/// that may have been replaced serves no follower); else `409 fenced_leader_epoch`.
fn leading_at(
    c: &Cluster,
    topic: &str,
    partition: u32,
    epoch: u32,
) -> ApiResult<Arc<cluster::Replica>> {
    match c.replica(topic, partition) {
        Some(r) if r.leading() == Some(epoch) && c.lease_valid() => Ok(r),
        _ => Err(fenced(topic, partition, epoch)),
    }
}

fn fenced(topic: &str, partition: u32, epoch: u32) -> ApiError {
    ApiError::new(
        ErrorCode::FencedLeaderEpoch,
        format!("this node does not lead partition {partition} of topic {topic} at leader epoch {epoch}"),
    )
}

/// A follower's fetch (internal): the leader's frames from `offset`, exactly as stored,
/// with the high watermarks, the durable end the followers should reach, and the leader
/// epochs of the records sent. Records the follower's position first; waits up to
/// `wait_ms` when there is nothing new for it.
#[utoipa::path(get, path = "/v1/internal/replicate/{topic}/{partition}", tag = "cluster",
    params(("topic" = String, Path), ("partition" = u32, Path), ReplicateQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn replicate(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<ReplicateQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let c = state.cluster().ok_or_else(no_cluster)?;
    let r = leading_at(c, &topic, partition, q.leader_epoch)?;
    let log_end = r.p.log().end_offset();
    if q.offset > log_end || q.offset < r.p.log().start_offset() {
        let mut e = ApiError::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "the follower's end {} is outside this leader's log",
                q.offset
            ),
        );
        e.range = Some((r.p.log().start_offset(), log_end));
        return Err(e);
    }
    // Before the read: a start the read's records follow (a compaction meanwhile moves it
    // past them, and the follower would delete what the snapshot has not replaced yet).
    let log_start = r.p.log().start_offset();
    let limits = ReadLimits {
        max_records: 1 << 20,
        max_bytes: q.max_bytes.clamp(1, c.max_fetch_bytes().max(1)),
    };
    // The follower's position first (it may move the high watermark), then the read: one
    // trip to the blocking pool.
    let r2 = Arc::clone(&r);
    let (node, epoch, offset, durable) = (q.node.clone(), q.leader_epoch, q.offset, q.durable);
    let mut batch = blocking(move || {
        r2.follower_fetched(&node, epoch, offset, durable)
            .map_err(|_| fenced(&r2.topic, r2.partition, epoch))?;
        r2.p.read_log(offset, limits).map_err(ApiError::from)
    })
    .await?;
    let news = |m: &cluster::Marks| m.hw > q.hw || (m.flush_to > q.durable && q.durable < q.offset);
    if batch.record_count == 0 && q.wait_ms > 0 && !news(&r.marks()) {
        let mut appended = r.p.subscribe_log_end();
        let mut marks = r.subscribe_marks();
        let mut roles = r.subscribe_generation();
        let generation = r.generation();
        let mut stop = state.shutdown_signal();
        tokio::select! {
            _ = appended.wait_for(|&end| end > offset) => {}
            _ = marks.wait_for(news) => {}
            _ = roles.wait_for(|&g| g != generation) => {}
            _ = tokio::time::sleep(Duration::from_millis(q.wait_ms.min(30_000))) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        let p = Arc::clone(&r.p);
        batch = blocking(move || p.read_log(offset, limits).map_err(ApiError::from)).await?;
    }
    let marks = r.marks();
    let epochs = cluster::encode_epochs(&r.epochs.covering(offset));
    let mut resp = super::consume::octets_response(batch);
    let h = resp.headers_mut();
    h.insert(cluster::HW_HEADER, HeaderValue::from(marks.hw));
    h.insert(
        cluster::DURABLE_HW_HEADER,
        HeaderValue::from(marks.durable_hw),
    );
    h.insert(cluster::FLUSH_TO_HEADER, HeaderValue::from(marks.flush_to));
    h.insert(cluster::LOG_START_HEADER, HeaderValue::from(log_start));
    if let Ok(v) = HeaderValue::try_from(epochs) {
        h.insert(cluster::EPOCHS_HEADER, v);
    }
    Ok(resp)
}

/// Query of a leader-epoch lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EpochEndQuery {
    /// The follower's latest leader epoch.
    epoch: u32,
    /// The leader epoch the follower follows.
    leader_epoch: u32,
}

/// Where a leader epoch ended in the leader's log (internal; KIP-101): a follower cuts its
/// log there before it fetches.
#[utoipa::path(get, path = "/v1/internal/epoch-end/{topic}/{partition}", tag = "cluster",
    params(("topic" = String, Path), ("partition" = u32, Path), EpochEndQuery),
    responses((status = 200, body = inline(Object))))]
pub async fn epoch_end(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, u32)>,
    query: Result<Query<EpochEndQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<cluster::EpochEnd>> {
    let Query(q) = query?;
    let c = state.cluster().ok_or_else(no_cluster)?;
    let r = leading_at(c, &topic, partition, q.leader_epoch)?;
    let end = r.p.log().end_offset();
    Ok(Json(match r.epochs.end_of(q.epoch, end) {
        Some((epoch, end_offset)) => cluster::EpochEnd {
            epoch: Some(epoch),
            end_offset,
        },
        None => cluster::EpochEnd {
            epoch: None,
            end_offset: r.p.log().start_offset(),
        },
    }))
}

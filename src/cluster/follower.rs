//! A follower's loop: truncate to where the leader's history says this node's last epoch
//! ended (KIP-101), then fetch the leader's frames through its binary read path and append
//! them with the leader's offsets, byte for byte, until the role changes.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::epochs::EpochStart;
use super::replica::Replica;
use super::Cluster;
use crate::broker::BrokerError;
use crate::log::ReplicaFrames;

/// Bytes asked for per fetch at first; doubled (up to `max_request_bytes`) when one batch
/// is larger.
const FETCH_BYTES: usize = 4 << 20;
/// How long the leader may hold a fetch that finds nothing new.
pub const FETCH_WAIT_MS: u64 = 500;
/// The pause after a failed fetch.
const RETRY: Duration = Duration::from_millis(200);

/// The headers of a replication answer.
pub const HW_HEADER: &str = "x-mapq-high-watermark";
pub const DURABLE_HW_HEADER: &str = "x-mapq-durable-high-watermark";
pub const FLUSH_TO_HEADER: &str = "x-mapq-flush-to";
pub const EPOCHS_HEADER: &str = "x-mapq-leader-epochs";
/// The leader's first offset: a follower deletes its segments below it (and below its high
/// watermark), as the leader's retention or a queue group journal's compaction did.
pub const LOG_START_HEADER: &str = "x-mapq-log-start";

/// The answer of `GET /v1/internal/epoch-end/...`.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct EpochEnd {
    /// The largest epoch the leader knows that is at most the one asked about; `null` when
    /// it knows none.
    pub epoch: Option<u32>,
    pub end_offset: u64,
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the leader answered {0}: {1}")]
    Refused(u16, String),
    #[error("this log has records the leader does not: truncate again")]
    Diverged,
    #[error("a batch larger than {0} bytes")]
    BatchTooLarge(usize),
    #[error("this node's role changed")]
    RoleChanged,
    #[error("the leader's log starts at {0}, past this replica's end")]
    Behind(u64),
    #[error("{0}")]
    Local(String),
}

/// Encodes epochs for [`EPOCHS_HEADER`]: `epoch:start` pairs, comma-separated.
pub fn encode_epochs(epochs: &[EpochStart]) -> String {
    epochs
        .iter()
        .map(|e| format!("{}:{}", e.epoch, e.start))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_epochs(text: &str) -> Vec<EpochStart> {
    text.split(',')
        .filter_map(|pair| {
            let (e, s) = pair.split_once(':')?;
            Some(EpochStart {
                epoch: e.trim().parse().ok()?,
                start: s.trim().parse().ok()?,
            })
        })
        .collect()
}

/// Follows `leader_url` at `epoch` while this replica's role is still `generation` (the
/// follower role it was started for) and the server runs.
pub(super) async fn follow(
    cluster: Arc<Cluster>,
    r: Arc<Replica>,
    leader_url: String,
    epoch: u32,
    generation: u64,
) {
    let mut changes = r.subscribe_generation();
    let mut max_bytes = FETCH_BYTES;
    let mut truncated = false;
    // The log's end after this loop's last step: if it moved otherwise (an append made
    // while this node still thought it led), the history is asked again and the log cut.
    let mut expected_end: Option<u64> = None;
    let mut failures = 0u32;
    while r.generation() == generation && !cluster.stopping() {
        if expected_end.is_some_and(|e| e != r.p.log().end_offset()) {
            truncated = false;
        }
        let step = if truncated {
            fetch_once(&cluster, &r, &leader_url, epoch, max_bytes, generation).await
        } else {
            truncate_to_leader(&cluster, &r, &leader_url, epoch, generation)
                .await
                .map(|()| truncated = true)
        };
        expected_end = Some(r.p.log().end_offset());
        let failed = match step {
            Ok(()) => {
                failures = 0;
                continue;
            }
            Err(FollowError::Diverged) => {
                truncated = false;
                true
            }
            Err(FollowError::BatchTooLarge(n)) if n < cluster.max_fetch_bytes() => {
                max_bytes = (n * 2).min(cluster.max_fetch_bytes());
                false
            }
            // A queue group's journal starts again at the leader's start (a snapshot there
            // holds everything before it): this role ends, the next poll takes it up anew.
            Err(FollowError::Behind(start))
                if super::state::group_of_journal(&r.topic).is_some() =>
            {
                match cluster.restart_journal(&r, start).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(topic = %r.topic, error = %e, "cannot start this journal's replica again at its leader's start");
                        true
                    }
                }
            }
            Err(FollowError::Behind(start)) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::error!(topic = %r.topic, partition = r.partition, end = r.p.log().end_offset(), leader_start = start, "this replica ends before its leader's first offset (the leader's retention deleted what it lacks): it cannot catch up");
                }
                true
            }
            Err(e) => {
                failures += 1;
                // Once, then every 50th time: a leader that is gone fails every fetch. A
                // leader that has not taken up its role yet (409) is normal for a moment.
                let early_409 = matches!(e, FollowError::Refused(409, _)) && failures < 10;
                if !early_409 && (failures == 1 || failures.is_multiple_of(50)) {
                    tracing::warn!(topic = %r.topic, partition = r.partition, leader = %leader_url, error = %e, failures, "replication fetch failed");
                }
                true
            }
        };
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = changes.wait_for(|g| *g != generation) => {}
            }
        }
    }
}

/// Asks the leader where this log's last epoch ended there and cuts this log to that point
/// (never below the high watermark: those records are on every in-sync replica).
async fn truncate_to_leader(
    cluster: &Cluster,
    r: &Arc<Replica>,
    leader_url: &str,
    epoch: u32,
    generation: u64,
) -> Result<(), FollowError> {
    let log = r.p.log();
    let end = log.end_offset();
    if end == log.start_offset() {
        return Ok(());
    }
    let last = r.epochs.latest().map_or(0, |e| e.epoch);
    let url = format!(
        "{leader_url}/v1/internal/epoch-end/{}/{}?epoch={last}&leader_epoch={epoch}",
        r.topic, r.partition
    );
    let resp = cluster.http().get(&url).send().await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        return Err(FollowError::Refused(
            status,
            resp.text().await.unwrap_or_default(),
        ));
    }
    let answer: EpochEnd = resp.json().await?;
    let replicated = log.replicated_offset();
    let point = match answer.epoch {
        // KIP-279: the leader's largest epoch at most ours, and where it ended there; ours
        // ends where the epoch after it starts here.
        Some(e) => {
            let ours = r.epochs.end_of(e, end).map_or(replicated, |(_, ours)| ours);
            answer.end_offset.min(ours).min(end)
        }
        None => replicated,
    };
    if point >= end {
        return Ok(());
    }
    if point < replicated {
        return Err(FollowError::Local(format!(
            "the leader's history puts the cut at {point}, below the high watermark {replicated}: not truncating"
        )));
    }
    let r2 = Arc::clone(r);
    let broker = Arc::clone(cluster.broker());
    let cut = tokio::task::spawn_blocking(move || {
        r2.under_role(generation, || {
            let cut = r2.p.log().truncate_to(point)?;
            r2.epochs.truncate_strictly(point)?;
            r2.p.truncated_to(point);
            // Retries are answered from the log: not from records it no longer has.
            if let Ok(t) = broker.topic(&r2.topic) {
                t.idempotency().forget_from(r2.partition, point);
            }
            Ok::<_, BrokerError>(cut)
        })
    })
    .await
    .map_err(|e| FollowError::Local(e.to_string()))?
    .ok_or(FollowError::RoleChanged)?
    .map_err(|e| FollowError::Local(e.to_string()))?;
    cluster.metrics().truncations.inc();
    tracing::warn!(topic = %r.topic, partition = r.partition, old_end = cut.old_end, new_end = cut.new_end, "truncated to the leader's history");
    Ok(())
}

/// One fetch from the leader, appended.
async fn fetch_once(
    cluster: &Cluster,
    r: &Arc<Replica>,
    leader_url: &str,
    epoch: u32,
    max_bytes: usize,
    generation: u64,
) -> Result<(), FollowError> {
    let log = r.p.log();
    let end = log.end_offset();
    let durable = log.durable_offset();
    let hw = r.marks().hw;
    let url = format!(
        "{leader_url}/v1/internal/replicate/{}/{}?offset={end}&durable={durable}&hw={hw}&node={}&leader_epoch={epoch}&max_bytes={max_bytes}&wait_ms={FETCH_WAIT_MS}",
        r.topic,
        r.partition,
        cluster.node_id(),
    );
    let resp = cluster.http().get(&url).send().await?;
    let status = resp.status();
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        // Past the leader's end: this log has records the leader does not (cut them).
        // Before its start: the leader's retention deleted what this log lacks, which no
        // fetch can bring back.
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let earliest = body["error"]["earliest"].as_u64().unwrap_or(0);
        if end < earliest {
            return Err(FollowError::Behind(earliest));
        }
        return Err(FollowError::Diverged);
    }
    if !status.is_success() {
        return Err(FollowError::Refused(
            status.as_u16(),
            resp.text().await.unwrap_or_default(),
        ));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let number = |name: &str| {
        header(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (leader_hw, leader_durable_hw, flush_to, leader_start) = (
        number(HW_HEADER),
        number(DURABLE_HW_HEADER),
        number(FLUSH_TO_HEADER),
        number(LOG_START_HEADER),
    );
    let epochs = decode_epochs(&header(EPOCHS_HEADER).unwrap_or_default());
    let body = resp.bytes().await?;
    let r2 = Arc::clone(r);
    let broker = Arc::clone(cluster.broker());
    let appended = tokio::task::spawn_blocking(move || -> Result<u64, FollowError> {
        let frames =
            ReplicaFrames::check(&body, end).map_err(|e| FollowError::Local(e.to_string()))?;
        if frames.is_empty() && !body.is_empty() {
            return Err(FollowError::BatchTooLarge(body.len()));
        }
        let new_end = end + frames.count();
        r2.under_role(generation, || {
            // The epochs first: a crash between the two leaves an epoch that starts past
            // the end, which the history drops when it opens.
            for e in epochs.iter().filter(|e| e.start < new_end) {
                r2.epochs.assign(e.epoch, e.start)?;
            }
            if !frames.is_empty() {
                r2.p.log().append_replica(frames)?;
                r2.p.appended_to(new_end);
            }
            Ok::<_, BrokerError>(())
        })
        .ok_or(FollowError::RoleChanged)?
        .map_err(|e| FollowError::Local(e.to_string()))?;
        let mut durable = r2.p.log().durable_offset();
        if flush_to > durable {
            durable = broker
                .flush(&r2.p, flush_to.min(new_end))
                .map_err(|e| FollowError::Local(e.to_string()))?;
        }
        r2.under_role(generation, || {
            r2.advance(leader_hw.min(new_end), leader_durable_hw.min(durable))?;
            // Only once this replica holds the record at the leader's start (a queue group
            // journal's snapshot there replaces what comes before): never without it.
            if leader_start < r2.marks().hw && leader_start > r2.p.log().start_offset() {
                r2.p.log().delete_segments_below(leader_start)?;
            }
            Ok::<_, BrokerError>(())
        })
        .ok_or(FollowError::RoleChanged)?
        .map_err(|e| FollowError::Local(e.to_string()))?;
        Ok(new_end - end)
    })
    .await
    .map_err(|e| FollowError::Local(e.to_string()))??;
    cluster.metrics().replicated_records.inc_by(appended);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_travel_in_a_header_and_back() {
        let e = vec![
            EpochStart { epoch: 1, start: 0 },
            EpochStart {
                epoch: 4,
                start: 90,
            },
        ];
        assert_eq!(encode_epochs(&e), "1:0,4:90");
        assert_eq!(decode_epochs("1:0,4:90"), e);
        assert_eq!(decode_epochs(""), vec![]);
    }
}

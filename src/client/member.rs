//! `mapq consume TOPIC --group G`: a member of a consumer group. It joins, prints the
//! records of the partitions it is assigned, commits after each batch printed (so that a
//! partition it lets go of resumes at its new owner right after the last record printed
//! here), heartbeats, lets go of what it is asked to revoke, rejoins when fenced, and
//! leaves on Ctrl-C or SIGTERM. Several share a topic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::consume::{write_value, ConsumeArgs, OutputFormat};
use super::{Api, ClientError, Result};

/// The member's view of itself.
struct Member<'a> {
    api: &'a Api,
    group: &'a str,
    id: String,
    topics: Vec<String>,
    epoch: u64,
    owned: BTreeSet<(String, u64)>,
    interval: Duration,
    next_beat: Instant,
}

impl Member<'_> {
    fn url(&self, path: &str) -> String {
        self.api.url(&format!(
            "/v1/groups/{}/members/{}{path}",
            self.group, self.id
        ))
    }

    /// Heartbeats (a join with epoch 0), waiting up to `wait` for a change when there is
    /// no news; lets go of revoked partitions in a second heartbeat at once. Fenced: joins
    /// again.
    async fn heartbeat(&mut self, wait: Duration) -> Result<()> {
        let mut wait_ms = wait.as_millis() as u64;
        for _ in 0..8 {
            let owned: Vec<Value> = self
                .owned
                .iter()
                .map(|(t, p)| json!({"topic": t, "partition": p}))
                .collect();
            let body = json!({"topics": self.topics, "member_epoch": self.epoch, "owned": owned, "wait_ms": wait_ms});
            let answer = match self
                .api
                .call(self.api.http.put(self.url("")).json(&body))
                .await
            {
                Err(e) if e.0.contains("fenced_member") && self.epoch != 0 => {
                    eprintln!("mapq consume: member {} was fenced; joining again", self.id);
                    self.epoch = 0;
                    self.owned.clear();
                    continue;
                }
                r => r?,
            };
            self.epoch = answer["member_epoch"].as_u64().unwrap_or(0);
            self.interval =
                Duration::from_millis(answer["heartbeat_interval_ms"].as_u64().unwrap_or(3000));
            self.next_beat = Instant::now() + self.interval;
            let assigned = pairs(&answer["assignment"]);
            let revoke = pairs(&answer["revoke"]);
            self.owned = assigned;
            if revoke.is_empty() {
                return Ok(());
            }
            // Everything printed is committed: let go of the revoked partitions now.
            wait_ms = 0;
        }
        Ok(())
    }
}

fn pairs(list: &Value) -> BTreeSet<(String, u64)> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| Some((x["topic"].as_str()?.to_owned(), x["partition"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A member id unique enough for a process: `mapq-<pid>-<time>`.
fn default_member_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("mapq-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(super) async fn stop_requested() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs the member until `--count` records are printed, the end is reached (without
/// `--follow`), or it is asked to stop; then leaves.
pub async fn consume_as_member(
    api: &Api,
    c: &ConsumeArgs,
    format: OutputFormat,
    group: &str,
) -> Result<()> {
    if c.from.is_some() {
        return Err(ClientError(
            "--from does not apply to a group member: it starts at the group's committed offsets (or its auto_offset_reset); add --partition to read one partition yourself".into(),
        ));
    }
    if format == OutputFormat::Raw {
        return Err(ClientError(
            "--format raw needs --partition: a member's records come from several partitions"
                .into(),
        ));
    }
    let mut m = Member {
        api,
        group,
        id: c.member.clone().unwrap_or_else(default_member_id),
        topics: vec![c.topic.clone()],
        epoch: 0,
        owned: BTreeSet::new(),
        interval: Duration::from_secs(3),
        next_beat: Instant::now(),
    };
    let stop = stop_requested();
    tokio::pin!(stop);
    let result = tokio::select! {
        joined = m.heartbeat(Duration::ZERO) => match joined {
            Ok(()) => run(&mut m, c, format, &mut stop).await,
            Err(e) => Err(e),
        },
        // Stopped while joining: leave all the same (the join may have landed).
        _ = stop.as_mut() => Ok(()),
    };
    // Leave either way: the partitions are free at once for the others.
    let left = api.call(api.http.delete(m.url(""))).await;
    if let Err(e) = left {
        if !e.0.contains("unknown_member") && !e.0.contains("fenced_member") {
            eprintln!("mapq consume: leaving the group failed: {e}");
        }
    }
    result
}

async fn run(
    m: &mut Member<'_>,
    c: &ConsumeArgs,
    format: OutputFormat,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let mut printed = 0u64;
    let mut heartbeat_now = false;
    loop {
        if c.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        if heartbeat_now || Instant::now() >= m.next_beat {
            // The fetches long-poll (and end early when the assignment changes): the
            // heartbeat itself need not wait.
            tokio::select! {
                r = m.heartbeat(Duration::ZERO) => r?,
                _ = stop.as_mut() => return Ok(()),
            }
        }
        let wait_ms = if c.follow {
            m.next_beat
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(30_000) as u64
        } else {
            0
        };
        let url = m.url(&format!("/records?wait_ms={wait_ms}"));
        let resp = tokio::select! {
            r = m.api.send(m.api.http.get(url)) => r,
            _ = stop.as_mut() => return Ok(()),
        };
        let resp = match resp {
            Err(e) if e.0.contains("fenced_member") => {
                eprintln!("mapq consume: member {} was fenced; joining again", m.id);
                m.epoch = 0;
                m.owned.clear();
                heartbeat_now = true;
                continue;
            }
            r => r?,
        };
        heartbeat_now = resp.headers().contains_key("x-mapq-heartbeat-now");
        let v: Value = resp
            .json()
            .await
            .map_err(|e| ClientError(format!("unexpected answer from the server: {e}")))?;
        let records = v["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() && !heartbeat_now && !c.follow {
            return Ok(());
        }
        let mut next: BTreeMap<(String, u64), u64> = BTreeMap::new();
        let closed = {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut closed = false;
            for r in &records {
                if c.count.is_some_and(|n| printed >= n) {
                    break;
                }
                let written = match format {
                    OutputFormat::Json => writeln!(out, "{r}"),
                    _ => write_value(&mut out, r),
                };
                if written.is_err() {
                    closed = true;
                    break;
                }
                printed += 1;
                if let (Some(t), Some(p), Some(o)) = (
                    r["topic"].as_str(),
                    r["partition"].as_u64(),
                    r["offset"].as_u64(),
                ) {
                    next.insert((t.to_owned(), p), o + 1);
                }
            }
            let _ = out.flush();
            closed
        };
        commit(m, &next).await?;
        if closed {
            return Ok(());
        }
    }
}

/// Commits, as the member, the offset after the last record printed of each partition.
async fn commit(m: &mut Member<'_>, next: &BTreeMap<(String, u64), u64>) -> Result<()> {
    if next.is_empty() {
        return Ok(());
    }
    let offsets: Vec<Value> = next
        .iter()
        .map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o}))
        .collect();
    let body = json!({"offsets": offsets, "member": m.id, "member_epoch": m.epoch});
    let url = m.api.url(&format!("/v1/groups/{}/offsets", m.group));
    match m.api.call(m.api.http.put(url).json(&body)).await {
        Ok(_) => Ok(()),
        // Fenced meanwhile (a long pause): what was printed may be printed again by the
        // partition's next owner. Join again.
        Err(e)
            if [
                "fenced_member",
                "partition_not_owned",
                "stale_member_epoch",
                "unknown_member",
            ]
            .iter()
            .any(|code| e.0.contains(code)) =>
        {
            eprintln!("mapq consume: commit refused ({e}); joining again");
            m.epoch = 0;
            m.owned.clear();
            m.next_beat = Instant::now();
            Ok(())
        }
        Err(e) => Err(e),
    }
}

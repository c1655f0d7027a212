//! `mapq queue work GROUP -- COMMAND`: a worker of a queue group that runs a command per
//! record and acks by its exit status: 0 accepts, `--reject-exit` (default 100) rejects (to
//! the dead letters), anything else releases the record for another delivery (after
//! `--retry-delay-ms`). The command reads the record's value on its standard input and
//! finds the rest in its environment. Leases of commands still running are extended at
//! half their time. Ctrl-C or SIGTERM: no new records; the ones not started are released,
//! the running ones finish and are acked.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::consume::value_bytes;
use super::{Api, ClientArgs, ClientError, Result};

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Run COMMAND for each record of queue group GROUP (value on stdin; MAPQ_TOPIC,
    /// MAPQ_PARTITION, MAPQ_OFFSET, MAPQ_DELIVERY, MAPQ_KEY, MAPQ_LEASE, MAPQ_GROUP in the
    /// environment) and ack by
    /// its exit status.
    Work(WorkArgs),
}

#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// The queue group (created beforehand with `PUT /v1/groups/GROUP`).
    pub group: String,
    /// Commands run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The exit status that rejects a record (sends it to the dead letters at once).
    #[arg(long, default_value_t = 100)]
    pub reject_exit: i32,
    /// A released record (any other non-zero status) comes back after this long.
    #[arg(long, default_value_t = 1000)]
    pub retry_delay_ms: u64,
    /// Stop after this many records were acked.
    #[arg(long)]
    pub count: Option<u64>,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// Acks one record; `false` when the lease was lost (the record was leased again: the ack
/// acted on nothing).
async fn ack(api: &Api, group: &str, lease: &str, kind: Value) -> Result<bool> {
    let mut a = kind;
    a["lease"] = json!(lease);
    let answer = api
        .call(
            api.http
                .post(api.url(&format!("/v1/groups/{group}/acks")))
                .json(&json!({ "acks": [a] })),
        )
        .await?;
    let ok = answer["results"][0]["status"] == "ok";
    if !ok {
        eprintln!(
            "mapq queue work: lease {lease} was lost (the record went to another worker); its {} acted on nothing",
            a["type"]
        );
    }
    Ok(ok)
}

/// Runs the command for one record, extending its lease while it runs; returns the ack.
async fn run_one(api: &Api, w: &WorkArgs, r: &Value) -> Result<Value> {
    let lease = r["lease"].as_str().unwrap_or_default().to_owned();
    let mut cmd = tokio::process::Command::new(&w.command[0]);
    // A group of its own: a Ctrl-C in the terminal stops the worker, which lets the
    // running commands finish, instead of killing them too.
    cmd.process_group(0).kill_on_drop(true);
    cmd.args(&w.command[1..])
        .stdin(Stdio::piped())
        .env("MAPQ_GROUP", &w.group)
        .env("MAPQ_TOPIC", r["topic"].as_str().unwrap_or_default())
        .env("MAPQ_PARTITION", r["partition"].to_string())
        .env("MAPQ_OFFSET", r["offset"].to_string())
        .env("MAPQ_DELIVERY", r["delivery"].to_string())
        .env("MAPQ_LEASE", &lease);
    if let Some(k) = r["key"].as_str() {
        cmd.env("MAPQ_KEY", k);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError(format!("cannot run {:?}: {e}", w.command[0])))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A null value (a tombstone) is an empty input.
        let value = value_bytes(r).unwrap_or_default();
        // A command that does not read its input is no failure.
        let _ = stdin.write_all(&value).await;
    }
    let lease_ms = (r["lease_expires_ms"].as_i64().unwrap_or(0) - crate::log::now_ms()).max(200);
    let half = Duration::from_millis(lease_ms as u64 / 2);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(|e| ClientError(e.to_string()))?,
            _ = tokio::time::sleep(half) => {
                ack(api, &w.group, &lease, json!({"type": "extend", "lease_ms": lease_ms})).await?;
            }
        }
    };
    Ok(match status.code() {
        Some(0) => json!({"type": "accept"}),
        Some(c) if c == w.reject_exit => json!({"type": "reject"}),
        _ => json!({"type": "release", "delay_ms": w.retry_delay_ms}),
    })
}

pub async fn queue(args: &ClientArgs, cmd: &QueueCommand) -> Result<()> {
    let QueueCommand::Work(w) = cmd;
    let api = Api::new(args)?;
    let member = format!("mapq-{}", std::process::id());
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = Arc::clone(&stopping);
        tokio::spawn(async move {
            super::member::stop_requested().await;
            stopping.store(true, Ordering::Relaxed);
        });
    }
    let slots = Arc::new(Semaphore::new(w.concurrency.max(1)));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Accepted, released, rejected.
    let tally: Arc<[std::sync::atomic::AtomicU64; 3]> = Arc::new(Default::default());
    let mut running = tokio::task::JoinSet::new();
    let mut failure: Option<ClientError> = None;
    while !stopping.load(Ordering::Relaxed)
        && w.count.is_none_or(|n| done.load(Ordering::Relaxed) < n)
    {
        // Lease only what can start at once: wait for a free slot first.
        let first = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.map_err(|e| ClientError(e.to_string()))?,
            _ = super::member::stop_requested() => break,
        };
        let mut first = Some(first);
        let free = 1 + slots.available_permits();
        let lease = api.call(
            api.http
                .post(api.url(&format!("/v1/groups/{}/leases", w.group)))
                .json(&json!({"member": member, "max_records": free, "wait_ms": 1000})),
        );
        let got = tokio::select! {
            got = lease => got?,
            _ = super::member::stop_requested() => break,
        };
        for r in got["records"].as_array().cloned().unwrap_or_default() {
            if stopping.load(Ordering::Relaxed) {
                // Not started: back to the queue at once.
                let lease = r["lease"].as_str().unwrap_or_default();
                ack(&api, &w.group, lease, json!({"type": "release"})).await?;
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .map_err(|e| ClientError(e.to_string()))?,
            };
            let (api, w_group, done) = (api.clone(), w.group.clone(), Arc::clone(&done));
            let work = WorkArgs {
                group: w.group.clone(),
                concurrency: w.concurrency,
                reject_exit: w.reject_exit,
                retry_delay_ms: w.retry_delay_ms,
                count: w.count,
                command: w.command.clone(),
            };
            let tally = Arc::clone(&tally);
            running.spawn(async move {
                let _permit = permit;
                let lease = r["lease"].as_str().unwrap_or_default();
                let kind = match run_one(&api, &work, &r).await {
                    Ok(kind) => kind,
                    Err(e) => {
                        // Not run: back to the queue at once, not held until the lease ends.
                        let _ = ack(&api, &w_group, lease, json!({"type": "release"})).await;
                        return Err(e);
                    }
                };
                let which = match kind["type"].as_str() {
                    Some("accept") => 0,
                    Some("reject") => 2,
                    _ => 1,
                };
                if ack(&api, &w_group, lease, kind).await? {
                    done.fetch_add(1, Ordering::Relaxed);
                    tally[which].fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), ClientError>(())
            });
        }
        while let Some(finished) = running.try_join_next() {
            if let Ok(Err(e)) = finished {
                failure.get_or_insert(e);
            }
        }
        if failure.is_some() {
            break;
        }
    }
    while let Some(finished) = running.join_next().await {
        if let Ok(Err(e)) = finished {
            failure.get_or_insert(e);
        }
    }
    let [accepted, released, rejected] =
        tally.as_ref().each_ref().map(|c| c.load(Ordering::Relaxed));
    eprintln!("mapq queue work: {accepted} accepted, {released} released, {rejected} rejected");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

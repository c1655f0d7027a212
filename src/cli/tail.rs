//! `mapq tail`: a topic's records straight from its segment files, no server needed.

use std::path::PathBuf;

use crate::api::records::RecordOut;
use crate::log::tailer::{OnDeleted, StartAt, TailError, TailOptions, Tailer, WaitMode};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The server's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The topic to read (or a queue group's journal: `@queues/<group>/journal`, on a
    /// cluster node `@queues/<group>/cluster-journal`).
    pub topic: String,
    /// Only this partition (default: every partition of the topic, one after the other;
    /// all at once with `--follow`).
    #[arg(long)]
    pub partition: Option<u32>,
    /// `earliest`, `latest`, an offset, or `@TIMESTAMP_MS` (the first record at or after it).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Keep waiting for new records at the end of the log.
    #[arg(long)]
    pub follow: bool,
    /// Only records that msync has made durable.
    #[arg(long)]
    pub durable_only: bool,
    /// Only records that every in-sync replica holds (no failover can remove them); in a
    /// partition that is not replicated, every record.
    #[arg(long)]
    pub replicated_only: bool,
    /// How to wait when following: `spin` (lowest latency, a busy core) or `block`.
    #[arg(long, value_enum, default_value = "block")]
    pub wait: WaitArg,
    /// `json` (the record object of the JSON consume API, with its `partition` first),
    /// `value` (the value bytes and a newline) or `raw` (the frames as on disk).
    #[arg(long, value_enum, default_value = "json")]
    pub format: FormatArg,
    /// Exit after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// When records not read yet were deleted by retention, jump to the earliest one left
    /// instead of stopping with an error.
    #[arg(long)]
    pub skip_deleted: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WaitArg {
    Spin,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Json,
    Value,
    Raw,
}

fn parse_from(from: &str) -> Result<StartAt, String> {
    match from {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => match from.strip_prefix('@') {
            Some(ts) => ts
                .parse()
                .map(StartAt::Timestamp)
                .map_err(|_| format!("--from @{ts}: not a timestamp in milliseconds")),
            None => from.parse().map(StartAt::Offset).map_err(|_| {
                format!("--from {from}: expected earliest, latest, an offset or @TIMESTAMP_MS")
            }),
        },
    }
}

pub(super) fn run_tail(args: &TailArgs) -> Result<(), String> {
    use std::io::Write;
    let journal = is_queue_journal(&args.topic);
    if !journal {
        crate::broker::validate_name(&args.topic).map_err(|e| e.to_string())?;
    }
    let from = parse_from(&args.from)?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if journal && p != 0 => return Err(format!("{} has one partition, 0", args.topic)),
        Some(p) => vec![p],
        None if journal => vec![0],
        None => {
            let n = crate::broker::topic::partition_count(&args.data_dir.join(&args.topic))
                .map_err(|e| match e {
                    crate::broker::BrokerError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!("no topic {:?} in {}", args.topic, args.data_dir.display())
                    }
                    e => e.to_string(),
                })?;
            if n > 1 && args.format == FormatArg::Raw {
                return Err(format!(
                    "--format raw needs --partition: {} has {n} partitions and frames do not say theirs",
                    args.topic
                ));
            }
            if n > 1 && matches!(from, StartAt::Offset(_)) {
                return Err(format!(
                    "--from OFFSET needs --partition: {} has {n} partitions",
                    args.topic
                ));
            }
            (0..n).collect()
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut written = 0u64;
    let mut write =
        |render: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| -> Result<bool, String> {
            let result = render(&mut out)
                // Followers show each record as it comes.
                .and_then(|()| if args.follow { out.flush() } else { Ok(()) });
            written += 1;
            match result {
                Ok(()) => Ok(args.count.is_none_or(|n| written < n)),
                // The reader went away (`| head`): not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
                Err(e) => Err(format!("cannot write: {e}")),
            }
        };
    if args.count == Some(0) {
        return Ok(());
    }
    if args.follow && partitions.len() > 1 {
        // One tailer thread a partition, each waiting on its own partition; lines are
        // written here, in the order they come.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, String>>(1024);
        for &p in &partitions {
            let tx = tx.clone();
            let (data_dir, topic, options) = (
                args.data_dir.clone(),
                args.topic.clone(),
                tail_options(args, from),
            );
            let format = args.format;
            std::thread::spawn(move || {
                let result = tail_partition(&data_dir, &topic, p, options, |f| {
                    let mut line = Vec::with_capacity(f.bytes.len() + 64);
                    let _ = render(format, p, f, &mut line);
                    tx.send(Ok(line)).is_ok()
                });
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                }
            });
        }
        drop(tx);
        for line in rx {
            let line = line?;
            if !write(&|out| out.write_all(&line))? {
                break;
            }
        }
    } else {
        for &p in &partitions {
            let mut more = true;
            let mut failed = None;
            tail_partition(
                &args.data_dir,
                &args.topic,
                p,
                tail_options(args, from),
                |f| {
                    match write(&|out| render(args.format, p, f, out)) {
                        Ok(go_on) => more = go_on,
                        Err(e) => {
                            failed = Some(e);
                            more = false;
                        }
                    }
                    more
                },
            )?;
            if let Some(e) = failed {
                return Err(e);
            }
            if !more {
                break;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("cannot write: {e}")),
        _ => Ok(()),
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP to `sys::STOP_REQUESTED`; a futex wait in progress
/// returns at once (no `SA_RESTART`), so the follower stops and exits cleanly.
pub(super) fn stop_on_signals() {
    crate::sys::stop_on_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
}

fn tail_options(args: &TailArgs, from: StartAt) -> TailOptions {
    TailOptions {
        stop: Some(&crate::sys::STOP_REQUESTED),
        from,
        follow: args.follow,
        durable_only: args.durable_only,
        replicated_only: args.replicated_only,
        wait: match args.wait {
            WaitArg::Spin => WaitMode::Spin,
            WaitArg::Block => WaitMode::Block,
        },
        on_deleted: if args.skip_deleted {
            OnDeleted::Jump
        } else {
            OnDeleted::Fail
        },
    }
}

/// Whether `topic` names a queue group's journal (`@queues/<group>/journal`, or on a
/// cluster node `@queues/<group>/cluster-journal`: one partition, its segments in that
/// directory of the data directory).
fn is_queue_journal(topic: &str) -> bool {
    let group = topic
        .strip_prefix(crate::broker::queues::QUEUES_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| {
            rest.strip_suffix("/journal")
                .or_else(|| rest.strip_suffix("/cluster-journal"))
        });
    group.is_some_and(|g| crate::broker::validate_name(g).is_ok())
}

/// Reads one partition, handing each record to `each` until it returns false or the log
/// ends (never, with `follow`). Errors are explained for a person.
fn tail_partition(
    data_dir: &std::path::Path,
    topic: &str,
    partition: u32,
    options: TailOptions,
    mut each: impl FnMut(&crate::log::FrameView<'_>) -> bool,
) -> Result<(), String> {
    let explain = |e: TailError| {
        match e {
        TailError::OffsetDeleted { .. } => format!(
            "partition {partition}: {e} (start again with --from earliest, or pass --skip-deleted to jump)"
        ),
        TailError::NoPartition(_) if is_queue_journal(topic) => format!(
            "no queue group journal {topic:?} in {}",
            data_dir.display()
        ),
        TailError::NoPartition(_) => format!(
            "no topic {topic:?} with partition {partition} in {}",
            data_dir.display()
        ),
        e => e.to_string(),
    }
    };
    let mut tailer = if is_queue_journal(topic) {
        Tailer::open_dir(&data_dir.join(topic), options)
    } else {
        Tailer::open(data_dir, topic, partition, options)
    }
    .map_err(explain)?;
    loop {
        match tailer.next_record() {
            Ok(Some(f)) => {
                if !each(&f) {
                    break;
                }
            }
            Ok(None) => break,
            Err(TailError::Truncated { to, read_up_to }) => eprintln!(
                "mapq tail: partition {partition}: truncated to offset {to}; the records {to} to {} printed above are gone; going on from {to}",
                read_up_to - 1
            ),
            Err(e) => return Err(explain(e)),
        }
    }
    Ok(())
}

/// Writes a record as `mapq tail --format` prints it, with its newline.
fn render(
    format: FormatArg,
    partition: u32,
    f: &crate::log::FrameView<'_>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    /// A record with the partition it came from.
    #[derive(serde::Serialize)]
    struct Tailed<'a> {
        partition: u32,
        #[serde(flatten)]
        record: RecordOut<'a>,
    }
    match format {
        FormatArg::Json => serde_json::to_writer(
            &mut *out,
            &Tailed {
                partition,
                record: RecordOut::of_frame(f),
            },
        )
        // Keep the kind of an I/O error (a closed pipe is not a failure).
        .map_err(|e| match e.io_error_kind() {
            Some(kind) => std::io::Error::from(kind),
            None => std::io::Error::other(e),
        })
        .and_then(|()| out.write_all(b"\n")),
        // A null value prints as an empty line, like an empty one.
        FormatArg::Value => out
            .write_all(f.value().unwrap_or_default())
            .and_then(|()| out.write_all(b"\n")),
        FormatArg::Raw => out.write_all(f.bytes),
    }
}

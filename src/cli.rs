//! The `mapq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::log::tailer::{OnDeleted, StartAt, TailError, TailOptions, Tailer, WaitMode};
use crate::log::verify;
use crate::record_json::RecordOut;

/// mapq: a message queue on memory-mapped, segmented log files.
#[derive(Debug, Parser)]
#[command(name = "mapq", version, about)]
pub struct Cli {
    /// Log lines as `text` or as `json` (one object per line), on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at the level of `RUST_LOG` if set, else `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(default_level).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded defaults, then --config, then MAPQ_* variables, then flags).
    Serve {
        /// A TOML file of settings (see config/mapq.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080 or localhost:8080 (port 0: any free port).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// HTTP load generator: produce N records, then consume them as frames and as JSON.
    Bench(crate::bench::BenchArgs),
    /// Manage topics over HTTP: list, create, describe, delete.
    Topics {
        #[command(subcommand)]
        command: crate::client::TopicsCommand,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Produce records read from stdin, one per line, in batches.
    Produce {
        #[command(flatten)]
        args: crate::client::ProduceArgs,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Print a partition's records over HTTP, optionally following and committing a group.
    Consume {
        #[command(flatten)]
        args: crate::client::ConsumeArgs,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Read a partition straight from its segment files (no server needed, read-only
    /// access is enough), one line per record.
    Tail(TailArgs),
    /// Check every segment's header, frames, CRCs and indexes; exit non-zero on corruption.
    Verify {
        /// The data directory (`<dir>/<topic>/<partition>/`), or one partition directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The server's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The topic to read.
    pub topic: String,
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// `earliest`, `latest`, an offset, or `@TIMESTAMP_MS` (the first record at or after it).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Keep waiting for new records at the end of the log.
    #[arg(long)]
    pub follow: bool,
    /// Only records that msync has made durable.
    #[arg(long)]
    pub durable_only: bool,
    /// How to wait when following: `spin` (lowest latency, a busy core) or `block`.
    #[arg(long, value_enum, default_value = "block")]
    pub wait: WaitArg,
    /// `json` (the record object of the JSON consume API), `value` (the value bytes and a
    /// newline) or `raw` (the frames as on disk).
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

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(cli.log_format, "warn");
    }
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => run_serve(
            config.as_deref(),
            Overrides { listen, data_dir },
            cli.log_format,
        ),
        Command::Verify { data_dir } => run_verify(&data_dir),
        Command::Tail(args) => match run_tail(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mapq tail: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Topics { command, client } => {
            client_command(|| async move { crate::client::topics(&client, &command).await })
        }
        Command::Produce { args, client } => {
            client_command(|| async move { crate::client::produce(&client, &args).await })
        }
        Command::Consume { args, client } => {
            client_command(|| async move { crate::client::consume(&client, &args).await })
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(crate::bench::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mapq bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_serve(
    file: Option<&std::path::Path>,
    overrides: Overrides,
    log_format: LogFormat,
) -> ExitCode {
    let loaded = match Config::load_with_warnings(file, std::env::vars(), &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mapq serve: {e}");
            return ExitCode::from(2);
        }
    };
    let config = loaded.config;
    init_logging(log_format, &config.log_level);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!("effective configuration: {}", config.summary());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mapq serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapq serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_verify(data_dir: &std::path::Path) -> ExitCode {
    let summaries = match verify::verify_data_dir(data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mapq verify: cannot read {}: {e}", data_dir.display());
            return ExitCode::from(2);
        }
    };
    if summaries.is_empty() {
        println!("{}: no partitions found", data_dir.display());
    }
    let mut corrupt = 0;
    for s in &summaries {
        println!("{s}");
        if !s.is_ok() {
            corrupt += 1;
        }
    }
    println!("{} partitions checked, {corrupt} corrupt", summaries.len());
    if corrupt == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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

fn run_tail(args: &TailArgs) -> Result<(), String> {
    use std::io::Write;
    crate::broker::validate_name(&args.topic).map_err(|e| e.to_string())?;
    let options = TailOptions {
        from: parse_from(&args.from)?,
        follow: args.follow,
        durable_only: args.durable_only,
        wait: match args.wait {
            WaitArg::Spin => WaitMode::Spin,
            WaitArg::Block => WaitMode::Block,
        },
        on_deleted: if args.skip_deleted {
            OnDeleted::Jump
        } else {
            OnDeleted::Fail
        },
    };
    let explain = |e: TailError| match e {
        TailError::OffsetDeleted { .. } => {
            format!("{e} (start again with --from earliest, or pass --skip-deleted to jump)")
        }
        TailError::NoPartition(_) => format!(
            "no topic {:?} with partition {} in {}",
            args.topic,
            args.partition,
            args.data_dir.display()
        ),
        e => e.to_string(),
    };
    let mut tailer =
        Tailer::open(&args.data_dir, &args.topic, args.partition, options).map_err(explain)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut written = 0u64;
    while args.count.is_none_or(|n| written < n) {
        let Some(f) = tailer.next_record().map_err(explain)? else {
            break;
        };
        let result = match args.format {
            FormatArg::Json => serde_json::to_writer(&mut out, &RecordOut::of_frame(&f))
                // Keep the kind of an I/O error (a closed pipe is not a failure).
                .map_err(|e| match e.io_error_kind() {
                    Some(kind) => std::io::Error::from(kind),
                    None => std::io::Error::other(e),
                })
                .and_then(|()| out.write_all(b"\n")),
            FormatArg::Value => out.write_all(f.value()).and_then(|()| out.write_all(b"\n")),
            FormatArg::Raw => out.write_all(f.bytes),
        };
        written += 1;
        // Followers show each record as it comes.
        let result = result.and_then(|()| if args.follow { out.flush() } else { Ok(()) });
        match result {
            Ok(()) => {}
            // The reader went away (`| head`): not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("cannot write: {e}")),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("cannot write: {e}")),
        _ => Ok(()),
    }
}

/// Runs an HTTP client command on a small runtime; errors go to stderr, exit code 1.
fn client_command<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::client::ClientError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mapq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapq: {e}");
            ExitCode::FAILURE
        }
    }
}

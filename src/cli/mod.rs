//! The `mapq` command line: the clap tree and the runners of the commands that need no
//! server (`serve`, `tail`, `verify`, `token`); the HTTP client commands are in
//! [`crate::client`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;
mod tail;
mod token;
mod verify;

pub use tail::TailArgs;
pub use token::TokenCommand;

use crate::config::Overrides;
use serve::run_serve;
use tail::{run_tail, stop_on_signals};
use token::run_token;
use verify::run_verify;

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
        /// Kafka listen address, e.g. 127.0.0.1:9092 (port 0: any free port; empty: none).
        #[arg(long)]
        kafka_listen: Option<String>,
        /// Join the cluster named by `etcd_endpoints` as `node_id` (see config/mapq.toml).
        #[arg(long)]
        cluster: bool,
    },
    /// HTTP load generator: produce N records, then consume them as frames and as JSON.
    Bench(crate::client::bench::BenchArgs),
    /// Manage topics over HTTP: list, create, describe, delete.
    Topics {
        #[command(subcommand)]
        command: crate::client::TopicsCommand,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Consumer groups over HTTP: list, describe (members, assignment, lag).
    Groups {
        #[command(subcommand)]
        command: crate::client::GroupsCommand,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// A cluster over HTTP: `mapq cluster status` shows its nodes, controller and each
    /// partition's leader and in-sync replicas.
    Cluster {
        #[command(subcommand)]
        command: crate::client::ClusterCommand,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Queue groups over HTTP: `mapq queue work GROUP -- COMMAND` runs COMMAND per record
    /// and acks by its exit status.
    Queue {
        #[command(subcommand)]
        command: crate::client::QueueCommand,
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
    /// Print a topic's records over HTTP (every partition, or one), optionally following; with
    /// `--group`, as a member of a consumer group that shares the topic.
    Consume {
        #[command(flatten)]
        args: crate::client::ConsumeArgs,
        #[command(flatten)]
        client: crate::client::ClientArgs,
    },
    /// Read a topic's records straight from its segment files (every partition, or one; no
    /// server needed, read-only access is enough), one line per record.
    Tail(TailArgs),
    /// Make tokens for the `tokens` setting.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check every segment's header, frames, CRCs and indexes; exit non-zero on corruption.
    Verify {
        /// The data directory (`<dir>/<topic>/<partition>/`), one topic directory, or one
        /// partition directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
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
            kafka_listen,
            cluster,
        } => run_serve(
            config.as_deref(),
            Overrides {
                listen,
                data_dir,
                kafka_listen,
                cluster,
            },
            cli.log_format,
        ),
        Command::Verify { data_dir } => run_verify(&data_dir),
        Command::Token { command } => run_token(&command),
        Command::Tail(args) => {
            if args.follow {
                stop_on_signals();
            }
            match run_tail(&args) {
                Ok(()) => {
                    match crate::sys::STOP_SIGNAL.load(std::sync::atomic::Ordering::Relaxed) {
                        // Ended by a signal: the usual exit code for it, once unregistered.
                        0 => ExitCode::SUCCESS,
                        signal => ExitCode::from(128 + signal as u8),
                    }
                }
                Err(e) => {
                    eprintln!("mapq tail: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Topics { command, client } => {
            client_command(|| async move { crate::client::topics(&client, &command).await })
        }
        Command::Groups { command, client } => {
            client_command(|| async move { crate::client::groups(&client, &command).await })
        }
        Command::Cluster { command, client } => {
            client_command(|| async move { crate::client::cluster(&client, &command).await })
        }
        Command::Queue { command, client } => {
            client_command(|| async move { crate::client::queue(&client, &command).await })
        }
        Command::Produce { args, client } => {
            client_command(|| async move { crate::client::produce(&client, &args).await })
        }
        Command::Consume { args, client } => {
            client_command(|| async move { crate::client::consume(&client, &args).await })
        }
        Command::Bench(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mapq bench: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::client::bench::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mapq bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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

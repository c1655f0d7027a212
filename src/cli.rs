//! The `mapq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::log::verify;

/// mapq: a message queue on memory-mapped, segmented log files.
#[derive(Debug, Parser)]
#[command(name = "mapq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded defaults, then --config, then MAPQ_* variables, then flags).
    Serve {
        /// A TOML file of settings (see config/mapq.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080 (port 0: any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// HTTP load generator: produce N records, then consume them as frames and as JSON.
    Bench(crate::bench::BenchArgs),
    /// Check every segment's header, frames, CRCs and indexes; exit non-zero on corruption.
    Verify {
        /// The data directory (`<dir>/<topic>/<partition>/`), or one partition directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => run_serve(config.as_deref(), Overrides { listen, data_dir }),
        Command::Verify { data_dir } => run_verify(&data_dir),
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

fn run_serve(file: Option<&std::path::Path>, overrides: Overrides) -> ExitCode {
    let config = match Config::load(file, std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mapq serve: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = ?config, "effective configuration");
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

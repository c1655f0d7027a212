//! The `mapq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        Command::Verify { data_dir } => run_verify(&data_dir),
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

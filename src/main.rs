use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    mapq::cli::run(mapq::cli::Cli::parse())
}

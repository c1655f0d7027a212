//! `mapq serve`: the configuration, logging and runtime around [`crate::app::serve`].

use std::process::ExitCode;

use super::{init_logging, LogFormat};
use crate::config::{Config, Overrides};

pub(super) fn run_serve(
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
    match runtime.block_on(crate::app::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapq serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `mapq verify`: the full read-only check of segment files.

use std::process::ExitCode;

use crate::log::verify;

pub(super) fn run_verify(data_dir: &std::path::Path) -> ExitCode {
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

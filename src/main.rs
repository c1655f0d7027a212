use std::process::ExitCode;

use clap::Parser;

// mimalloc rather than glibc's malloc: the server allocates and frees small blocks on every
// request from several threads, where glibc's arenas spent about a tenth of the server's CPU
// (perf, one 100 B record per request). Measured with wrk, 100 connections, on 2 cores: server
// CPU per request 17.5-19.4 -> 13.4-13.6 us for /healthz and 21.3-29.1 -> 20.0-20.6 us for a
// memory produce (README, "Where produce time goes"). Its cost: per-thread heaps, about
// 60 MB more resident with 10,000 idle partitions (still well under the 256 MB goal).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mapq::cli::run(mapq::cli::Cli::parse())
}

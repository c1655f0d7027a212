//! A `mapq serve` of this build on a port chosen by the OS, for the benchmarks that measure
//! a real server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
    pub base: String,
    /// The Kafka listener's `host:port`.
    pub kafka: String,
}

impl Server {
    /// Starts a server on `data_dir` with extra `MAPQ_*` settings; returns once it listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapq"));
        // The benchmarks' own MAPQ_BENCH_* knobs are not server settings.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAPQ_BENCH_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--kafka-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env(
                "MAPQ_LOG_LEVEL",
                std::env::var("MAPQ_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mapq serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("the listening lines");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .to_owned()
        };
        let base = line("mapq listening on ");
        let kafka = line("mapq kafka listening on ");
        Server { child, base, kafka }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9 the server");
        self.child.wait().expect("reap the server");
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mapq bench --produce-only` against `server` with `args`, and returns the figures of
/// its `RESULT produce...` line by name (`records_per_s`, `mb_per_s`, `p50_us`, ...). A run
/// that fails, or a figure that does not parse, stops the benchmark with the output.
pub fn produce_figures(server: &Server, args: &[&str]) -> std::collections::BTreeMap<String, f64> {
    let mut all = vec!["--produce-only"];
    all.extend_from_slice(args);
    bench_figures(server, &all)
        .remove("produce")
        .unwrap_or_else(|| panic!("no RESULT produce line from mapq bench"))
}

/// Runs `mapq bench` against `server` with `args`, and returns the figures of each of its
/// `RESULT <scenario> ...` lines, by scenario (`produce`, `consume_binary` or
/// `consume_json`, the rest of the name dropped) and figure name.
pub fn bench_figures(
    server: &Server,
    args: &[&str],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> {
    let out = Command::new(env!("CARGO_BIN_EXE_mapq"))
        .args(["bench", "--server", &server.base])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run mapq bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mapq bench failed: {text}");
    let scenarios: std::collections::BTreeMap<_, _> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            let scenario = ["produce", "consume_binary", "consume_json"]
                .into_iter()
                .find(|s| name.starts_with(s))
                .unwrap_or(name)
                .to_owned();
            let figures = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| {
                    let v = v
                        .parse()
                        .unwrap_or_else(|_| panic!("{v:?} is not a number in: {line}"));
                    (k.to_owned(), v)
                })
                .collect();
            (scenario, figures)
        })
        .collect();
    assert!(
        !scenarios.is_empty(),
        "no RESULT line from mapq bench:\n{text}"
    );
    scenarios
}

/// A number from the environment (a benchmark's knob), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of some figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

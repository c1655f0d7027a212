//! Crash test with real processes: a child process appends and acknowledges, the parent kills
//! it with SIGKILL at a random moment, reopens the directory and checks that every
//! acknowledged record is there, intact and without gaps. Several cycles on one directory.
//!
//! The child is this test binary, re-executed to run only `child_writer`, which is
//! `#[ignore]`d so that it is not a vacuous passing test of its own in every run (it is a
//! no-op unless `MAPQ_CRASH_DIR` is set). Both `cargo test` and `cargo nextest` run test
//! binaries with the libtest command line, so the same arguments (`--ignored --exact
//! child_writer`) select the child under either.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{check_all, small_config, try_append_range};
use mapq::log::{verify, FileWorker, LogConfig, PartitionLog, RecoveryReport};

const DIR_ENV: &str = "MAPQ_CRASH_DIR";
/// Marks the child's own lines among libtest's (which may share a line with the first).
const MARK: &str = "mapq-crash-child: ";
const SEED_ENV: &str = "MAPQ_CRASH_SEED";
/// Set to `1` for a child that appends with a prefaulter thread.
const PREFAULT_ENV: &str = "MAPQ_CRASH_PREFAULT";
/// The child stops on its own after this long, should its parent never kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// Longest wait for any one thing the child should do promptly.
const PROMPT: Duration = Duration::from_secs(30);

fn config() -> LogConfig {
    // Small segments: the child rolls every few dozen records, so kills land in rolls too.
    small_config(16 << 10)
}

/// splitmix64: a small deterministic generator, so that a seed reproduces a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The child: appends batches and prints `ack <last offset>` after each one that returned.
fn child_main(dir: &Path, seed: u64, prefault: bool) -> Result<(), String> {
    let prefaulter = if prefault {
        Some(FileWorker::spawn().map_err(|e| format!("spawn the prefaulter: {e}"))?)
    } else {
        None
    };
    let config = LogConfig {
        worker: prefaulter.as_ref().map(FileWorker::handle),
        ..config()
    };
    let (log, _) =
        PartitionLog::open(dir, config).map_err(|e| format!("open {}: {e}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    let mut next = log.end_offset();
    let mut say = |line: String| -> Result<(), String> {
        writeln!(out, "{MARK}{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing to the parent: {e}"))
    };
    say(format!("start {next}"))?;
    let mut rng = Rng(seed);
    let deadline = Instant::now() + CHILD_LIFETIME;
    while Instant::now() < deadline {
        let n = 1 + rng.below(24);
        let first = try_append_range(&log, next, next + n)
            .map_err(|e| format!("append of {next}..{}: {e}", next + n))?;
        if first != next {
            return Err(format!("batch appended at {first}, expected {next}"));
        }
        next += n;
        if rng.below(16) == 0 {
            log.flush().map_err(|e| format!("flush at {next}: {e}"))?;
        }
        say(format!("ack {}", next - 1))?;
    }
    Err(format!(
        "not killed within {CHILD_LIFETIME:?}; stopping at {next}"
    ))
}

/// Not a test of its own: the body of the child process (see the module comment).
#[test]
#[ignore = "the child process of acknowledged_records_survive_sigkill, which runs it"]
fn child_writer() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let prefault = std::env::var(PREFAULT_ENV).is_ok_and(|v| v == "1");
    if let Err(e) = child_main(Path::new(&dir), seed, prefault) {
        panic!("child_writer: {e}");
    }
}

/// What the child printed, as the parent sees it.
enum Line {
    Start(u64),
    Ack(u64),
}

fn spawn_child(dir: &Path, seed: u64, prefault: bool) -> (Child, Receiver<Line>, Receiver<String>) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(PREFAULT_ENV, if prefault { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // libtest prints its own lines too; only the marked ones are parsed.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some((_, line)) = line.split_once(MARK) else {
                continue;
            };
            let parsed = if let Some(n) = line.strip_prefix("start ") {
                n.parse().ok().map(Line::Start)
            } else if let Some(n) = line.strip_prefix("ack ") {
                n.parse().ok().map(Line::Ack)
            } else {
                None
            };
            if let Some(p) = parsed {
                if line_tx.send(p).is_err() {
                    break;
                }
            }
        }
    });
    let (err_tx, err) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = err_tx.send(s);
    });
    (child, lines, err)
}

/// Kills the child and waits for it, within a deadline; returns how it ended.
fn kill_and_reap(mut child: Child) -> ExitStatus {
    child.kill().expect("SIGKILL the child");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(PROMPT) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("waiting for the child: {e}"),
        Err(_) => panic!("the killed child was not reaped within {PROMPT:?}"),
    }
}

/// When to kill the child in one cycle.
#[derive(Debug)]
struct KillPlan {
    /// After this many acknowledgements...
    acks: u64,
    /// ...or this long after the child said it started, whichever comes first.
    delay: Duration,
    /// Kill at `delay` after spawning, without waiting for the child to start: the kill may
    /// land in process start-up or in the child's recovery.
    early: bool,
    /// The child appends with a prefaulter thread.
    prefault: bool,
}

/// Runs one child until its kill; returns the highest acknowledged offset, if any.
fn run_cycle(dir: &Path, seed: u64, plan: &KillPlan, acked_end: u64) -> Option<u64> {
    let spawned = Instant::now();
    let (child, lines, stderr) = spawn_child(dir, seed, plan.prefault);
    let child_failed = |what: &str| -> ! {
        let err = stderr.recv_timeout(PROMPT).unwrap_or_default();
        panic!("{what}; the child's stderr:\n{err}")
    };
    let mut last_ack: Option<u64> = None;
    let mut acks = 0;
    let mut kill_at = spawned + plan.delay;
    if !plan.early {
        match lines.recv_timeout(PROMPT) {
            Ok(Line::Start(start)) => {
                assert!(
                    start >= acked_end,
                    "the child starts at {start}, below the acknowledged end {acked_end}"
                );
                kill_at = Instant::now() + plan.delay;
            }
            Ok(Line::Ack(_)) => panic!("an ack before the start line"),
            Err(RecvTimeoutError::Timeout) => child_failed("no start line in time"),
            Err(RecvTimeoutError::Disconnected) => child_failed("the child exited before starting"),
        }
    }
    while acks < plan.acks {
        let now = Instant::now();
        if now >= kill_at {
            break;
        }
        match lines.recv_timeout(kill_at - now) {
            Ok(Line::Ack(a)) => {
                assert!(
                    last_ack.is_none_or(|l| a > l),
                    "acks rise: {a} after {last_ack:?}"
                );
                last_ack = Some(a);
                acks += 1;
            }
            Ok(Line::Start(start)) => assert!(start >= acked_end),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                child_failed("the child stopped before it was killed")
            }
        }
    }
    let status = kill_and_reap(child);
    if status.signal() != Some(libc::SIGKILL) {
        // It ended on its own just before the kill: that is a failure of the child.
        child_failed(&format!("the child exited by itself ({status})"));
    }
    // Acks the child printed before it died are acknowledged too: drain them.
    let drain_deadline = Instant::now() + PROMPT;
    loop {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Line::Ack(a)) => {
                assert!(last_ack.is_none_or(|l| a > l));
                last_ack = Some(a);
            }
            Ok(Line::Start(start)) => assert!(start >= acked_end),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the child's stdout did not close"),
        }
    }
    last_ack
}

/// Reopens the directory and checks every acknowledged record; returns the end and what
/// recovery reported.
fn check_after_crash(dir: &Path, acked_end: u64, cycle: usize) -> (u64, RecoveryReport) {
    let (log, report) = PartitionLog::open(dir, config()).expect("open after the crash");
    // A killed process loses nothing it published: its pages live in the page cache, and
    // the committed end only ever covers whole frames.
    assert_eq!(
        report.truncated_bytes, 0,
        "cycle {cycle}: recovery cut published bytes: {report:?}"
    );
    assert!(report.removed_segments.is_empty(), "{report:?}");
    let end = log.end_offset();
    assert!(
        end >= acked_end,
        "cycle {cycle}: the log ends at {end}, but records up to {acked_end} were acknowledged \
         ({report:?})"
    );
    assert_eq!(log.start_offset(), 0);
    // Every record, compared with what the child generated for its offset.
    assert_eq!(check_all(&log, 0), end, "cycle {cycle}: records read back");
    drop(log);
    let summary = verify::verify_partition(dir);
    assert!(summary.is_ok(), "cycle {cycle}: {summary}");
    assert_eq!(summary.end_offset, Some(end));
    (end, report)
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("crash test seed: {seed} (set {SEED_ENV} to repeat)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked_end = 0u64;
    let mut total_acks = 0u64;
    let cycles = 10;
    for cycle in 0..cycles {
        let plan = KillPlan {
            acks: 1 + rng.below(2_000),
            delay: Duration::from_millis(rng.below(400)),
            // Some cycles kill early, whatever the child is doing then.
            early: cycle % 4 == 3,
            prefault: cycle % 2 == 1,
        };
        let plan = if plan.early {
            KillPlan {
                delay: Duration::from_millis(rng.below(40)),
                ..plan
            }
        } else {
            plan
        };
        let last_ack = run_cycle(dir.path(), rng.next(), &plan, acked_end);
        if let Some(a) = last_ack {
            assert!(a + 1 >= acked_end);
            total_acks += a + 1 - acked_end;
            acked_end = a + 1;
        }
        let (end, report) = check_after_crash(dir.path(), acked_end, cycle);
        eprintln!(
            "cycle {cycle}: {plan:?}, acknowledged end {acked_end}, log end {end}, recovery: \
             {} segments, {} checkpoints rebuilt, removed {:?}",
            report.segments, report.rebuilt_checkpoints, report.removed_temp_files
        );
    }
    assert!(total_acks > 0, "no cycle acknowledged anything");
    // The children rolled segments, so kills could land in rolls.
    let (log, _) = PartitionLog::open(dir.path(), config()).expect("final open");
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
}

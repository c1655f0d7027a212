//! Replays the fuzz corpus: every seed of the three libFuzzer targets in `tests/cargo-fuzz/`
//! (frame decoding, segment recovery from arbitrary bytes, request bodies through the real
//! router), and every input a fuzzer found failing, kept as a regression. The fuzzing itself
//! runs with `tests/cargo-fuzz/run.sh SECONDS`.

mod common;

use common::fuzz::{frame_decoding, fuzz_dir, RequestBodies, SegmentRecovery};

/// Runs `check` on every file of `seeds/<target>/` and `regressions/<target>/`.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let mut seeds = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_eq!(kind, "regressions", "{} is missing", dir.display());
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let input = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            seeds += usize::from(kind == "seeds");
        }
    }
    assert!(seeds > 0, "{target} has no seeds");
}

#[test]
fn frame_decoding_corpus() {
    replay("frame_decoding", frame_decoding);
}

#[test]
fn segment_recovery_corpus() {
    let target = SegmentRecovery::new();
    // The unchanged seed recovers whole: a target that refused every segment would pass
    // every input without checking anything.
    let seed = std::fs::read(fuzz_dir().join("seeds/segment_recovery/seed-0")).unwrap();
    assert_eq!(target.recover(&seed), Some(40));
    replay("segment_recovery", |input| target.check(input));
}

#[test]
fn request_bodies_corpus() {
    let target = RequestBodies::new();
    replay("request_bodies", |input| target.check(input));
}

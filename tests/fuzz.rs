//! Replays the fuzz corpus: every seed of the three libFuzzer targets in `tests/cargo-fuzz/`
//! (frame decoding, segment recovery from arbitrary bytes, request bodies through the real
//! router), and every input a fuzzer found failing, kept as a regression. The fuzzing itself
//! runs with `tests/cargo-fuzz/run.sh SECONDS`.

mod common;

use common::fuzz::{frame_decoding, fuzz_dir, RequestBodies, SegmentRecovery};
use mapq::log::format::decode_frame;

/// Runs `check` on every file of `seeds/<target>/` and `regressions/<target>/` (both must
/// exist: a misnamed directory would otherwise never be replayed), but dot files such as the
/// `.gitkeep` that keeps an empty directory in git.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let mut seeds = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()));
        let mut paths: Vec<_> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
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
    // The valid seeds decode to what they hold: a decoder that refused everything would pass
    // every input without checking anything.
    let seed = |n: u32| std::fs::read(fuzz_dir().join(format!("seeds/frame_decoding/seed-{n}")));
    let seed0 = seed(0).unwrap();
    let f = decode_frame(&seed0).unwrap();
    assert_eq!(
        (f.offset, f.timestamp_ms, f.key(), f.value()),
        (7, 1, None, Some(&b"hello"[..]))
    );
    assert_eq!(f.headers().count(), 0);
    let seed1 = seed(1).unwrap();
    let f = decode_frame(&seed1).unwrap();
    assert_eq!(
        (f.offset, f.key(), f.value(), f.value_is_json()),
        (7, Some(&b"k"[..]), Some(&br#"{"a":1}"#[..]), true)
    );
    assert_eq!(
        f.headers().collect::<Vec<_>>(),
        [(&b"source"[..], Some(&b"web"[..]))]
    );
    // A version 2 frame: a null value, a null and an empty header value, a batch head.
    let seed2 = v2_frame();
    let f = decode_frame(&seed2).unwrap();
    assert_eq!(f.value(), None);
    assert_eq!(
        f.headers().collect::<Vec<_>>(),
        [(&b"n"[..], None), (&b"e"[..], Some(&b""[..]))]
    );
    let head = f.batch().expect("a batch head");
    assert_eq!((head.record_count, head.leader_epoch), (2, 9));
    assert_eq!(head.request.map(|r| r.key), Some(&b"idem"[..]));
    assert_eq!(head.positions(), Some(vec![0, 3]));
    replay("frame_decoding", frame_decoding);
    // And every single-byte change of those two: each must decode to its own bytes or be
    // refused, never anything in between.
    for seed in [seed0, seed1, seed2] {
        for at in 0..seed.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut changed = seed.clone();
                changed[at] ^= x;
                frame_decoding(&changed);
            }
        }
    }
}

#[test]
fn segment_recovery_corpus() {
    let target = SegmentRecovery::new();
    // The unchanged seed recovers whole: a target that refused every segment would pass
    // every input without checking anything.
    let seed = std::fs::read(fuzz_dir().join("seeds/segment_recovery/seed-0")).unwrap();
    assert_eq!(target.recover(&seed), Some(40));
    replay("segment_recovery", |input| target.check(input));
    // Committed ends around the edges of the data area (4096 to the 65536-byte capacity,
    // 8-aligned): the partition opens exactly for the valid ones.
    let original_end = u64::from_le_bytes(seed[..8].try_into().unwrap());
    for end in [
        0,
        4088,
        4096,
        4100,
        original_end - 8,
        original_end,
        65528,
        65536,
        65544,
    ] {
        let mut input = seed.clone();
        input[..8].copy_from_slice(&u64::to_le_bytes(end));
        target.check(&input);
    }
    // A byte changed in the data: everything before the damaged frame survives.
    for at in [
        8 + 3,
        8 + 100,
        8 + 1000,
        8 + original_end as usize - 4096 - 1,
    ] {
        for x in [0x01, 0xff] {
            let mut input = seed.clone();
            input[at] ^= x;
            target.check(&input);
        }
    }
}

#[test]
fn request_bodies_corpus() {
    // On a fresh broker, the seeds (all valid requests) are served: a router that answered
    // 400 to everything would pass every input without checking anything. Seed 4 creates
    // the topic seed 0 already created: 409.
    let target = RequestBodies::new();
    for n in 0..6 {
        let input =
            std::fs::read(fuzz_dir().join(format!("seeds/request_bodies/seed-{n}"))).unwrap();
        let status = target.status(&input).unwrap();
        assert!(status.is_success() || status == 409, "seed-{n}: {status}");
    }
    replay("request_bodies", |input| target.check(input));
}

/// A frame with every addition of format version 2.
fn v2_frame() -> Vec<u8> {
    use mapq::log::format::{encode_frame, BatchHead, ProducerStamp, Record, RequestTag};
    let record = Record {
        key: Some(b"k"),
        value: None,
        headers: &[(b"n", None), (b"e", Some(b""))],
        timestamp_ms: 5,
        value_is_json: false,
        batch: Some(BatchHead {
            record_count: 2,
            leader_epoch: 9,
            appended_ms: 1_764_201_600_123,
            producer: Some(ProducerStamp {
                id: 77,
                epoch: 1,
                base_sequence: 10,
            }),
            request: Some(RequestTag {
                key: b"idem",
                digest: [7; 16],
                records: 4,
                positions: Some(&[0, 3]),
            }),
        }),
    };
    let mut buf = vec![0; record.padded_len().unwrap()];
    encode_frame(&mut buf, 3, &record);
    buf
}

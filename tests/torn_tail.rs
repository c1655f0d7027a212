//! Generated torn tails: a log is written and closed, the newest segment's last bytes are
//! damaged the ways an interrupted write damages them, and the reopened log must keep exactly
//! the intact prefix, cut the rest, verify clean and go on appending.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use common::{append_range, check_all, small_config};
use mapq::log::format::{self, segment_header as sh};
use mapq::log::DATA_START;
use mapq::log::{verify, LogConfig, PartitionLog};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

const SEGMENT_BYTES: u64 = 16 << 10;

fn config() -> LogConfig {
    small_config(SEGMENT_BYTES)
}

/// How much of the log was flushed before it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    /// Nothing: every durable end is at the start of its segment's data.
    Nothing,
    /// Everything up to the middle of the active segment; the rest is not durable.
    MidActive,
}

/// A frame of the active segment.
#[derive(Debug, Clone, Copy)]
struct Frame {
    pos: usize,
    /// Unpadded length: the bytes the CRC and layout cover.
    len: usize,
}

/// A closed log, held in memory so that every case damages a fresh copy.
#[derive(Debug)]
struct Image {
    flushed: Flushed,
    files: Vec<(String, Vec<u8>)>,
    /// Index of the active segment's data file in `files`.
    active: usize,
    active_base: u64,
    /// Records written.
    end: u64,
    frames: Vec<Frame>,
    committed: usize,
    durable: usize,
    capacity: usize,
    /// Positions of the active segment's index checkpoints.
    checkpoint_positions: Vec<usize>,
    /// Checkpoints of the sealed segments that recovery rescans (those not flushed).
    sealed_rescanned_checkpoints: usize,
}

fn build_image(flushed: Flushed) -> Image {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = PartitionLog::open(dir.path(), config()).expect("open");
    let mut next = 0u64;
    loop {
        let n = 1 + next % 7;
        append_range(&log, next, next + n);
        next += n;
        let segs = log.segments();
        let active = segs.last().expect("a log has a segment");
        let data = active.committed_end() - DATA_START;
        if segs.len() < 3 {
            continue;
        }
        match flushed {
            Flushed::Nothing if data >= 6 << 10 => break,
            Flushed::Nothing => {}
            Flushed::MidActive => {
                if active.durable_end() == DATA_START && data >= 2 << 10 {
                    log.flush().expect("flush");
                } else if active.durable_end() > DATA_START
                    && active.committed_end() - active.durable_end() >= 4 << 10
                {
                    break;
                }
            }
        }
    }
    let segs = log.segments();
    let active = segs.last().expect("a log has a segment");
    let checkpoint_positions = active
        .checkpoints()
        .iter()
        .map(|c| c.position as usize)
        .collect();
    let sealed_rescanned_checkpoints = segs[..segs.len() - 1]
        .iter()
        .filter(|s| s.durable_end() < s.committed_end())
        .map(|s| s.checkpoints().len())
        .sum();
    let active_base = active.base_offset();
    drop(segs);
    drop(log);

    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8 name");
            (name, fs::read(e.path()).expect("read file"))
        })
        .collect();
    files.sort();
    let active_name = format::file_name(active_base, format::SEGMENT_EXT);
    let active = files
        .iter()
        .position(|(n, _)| *n == active_name)
        .expect("active segment file");
    let bytes = &files[active].1;
    let committed = format::get_u64(bytes, sh::COMMITTED_END) as usize;
    let durable = format::get_u64(bytes, sh::DURABLE_END) as usize;
    let mut frames = Vec::new();
    let mut at = DATA_START;
    while at < committed {
        let f = format::decode_frame(&bytes[at..committed]).expect("a frame written by the log");
        frames.push(Frame {
            pos: at,
            len: f.headers_range.end,
        });
        at += f.padded_len;
    }
    assert_eq!(at, committed);
    assert_eq!(active_base + frames.len() as u64, next);
    match flushed {
        Flushed::Nothing => assert_eq!(durable, DATA_START),
        Flushed::MidActive => assert!(DATA_START < durable && durable + (4 << 10) <= committed),
    }
    Image {
        flushed,
        capacity: bytes.len(),
        files,
        active,
        active_base,
        end: next,
        frames,
        committed,
        durable,
        checkpoint_positions,
        sealed_rescanned_checkpoints,
    }
}

fn image(flushed: Flushed) -> &'static Image {
    static NOTHING: OnceLock<Image> = OnceLock::new();
    static MID_ACTIVE: OnceLock<Image> = OnceLock::new();
    match flushed {
        Flushed::Nothing => NOTHING.get_or_init(|| build_image(flushed)),
        Flushed::MidActive => MID_ACTIVE.get_or_init(|| build_image(flushed)),
    }
}

/// Ways the newest segment's tail gets damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// One byte XORed with a non-zero mask.
    Flip { pos: usize, mask: u8 },
    /// Every byte from `pos` to the committed end zeroed (pages never written).
    ZeroFrom { pos: usize },
    /// The last frames each keep only a prefix (given as a fraction of their padded length);
    /// the rest of each is zeroed.
    ZeroFrameTails { keep: Vec<Index> },
    /// Arbitrary bytes written at `pos` (cut at the committed end).
    Overwrite { pos: usize, bytes: Vec<u8> },
    /// The committed end moved `by` bytes past the last frame; with `garbage`, those bytes
    /// are filled with pseudo-random bytes from that seed, otherwise they stay as they are.
    ExtendCommitted { by: usize, garbage: Option<u64> },
}

fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// Applies `damage` to the active segment's bytes; returns the committed end it leaves.
fn apply(img: &Image, bytes: &mut [u8], damage: &Damage) -> usize {
    let committed = img.committed;
    match damage {
        Damage::Flip { pos, mask } => {
            assert!(*pos < committed && *mask != 0);
            bytes[*pos] ^= mask;
        }
        Damage::ZeroFrom { pos } => bytes[*pos..committed].fill(0),
        Damage::ZeroFrameTails { keep } => {
            let last = &img.frames[img.frames.len() - keep.len()..];
            for (i, (f, k)) in last.iter().zip(keep).enumerate() {
                let padded = format::align_up(f.len);
                let end = if i + 1 == last.len() {
                    committed
                } else {
                    f.pos + padded
                };
                bytes[f.pos + k.index(padded)..end].fill(0);
            }
        }
        Damage::Overwrite { pos, bytes: b } => {
            let end = (*pos + b.len()).min(committed);
            bytes[*pos..end].copy_from_slice(&b[..end - pos]);
        }
        Damage::ExtendCommitted { by, garbage } => {
            assert!(by.is_multiple_of(format::FRAME_ALIGN) && committed + by <= img.capacity);
            if let Some(seed) = garbage {
                bytes[committed..committed + by].copy_from_slice(&pseudo_random_bytes(*seed, *by));
            }
            let new = (committed + by) as u64;
            bytes[sh::COMMITTED_END..sh::COMMITTED_END + 8].copy_from_slice(&new.to_le_bytes());
            return committed + by;
        }
    }
    committed
}

/// The first frame whose bytes `[pos, pos + len)` the damage changed.
fn first_changed_frame(
    img: &Image,
    before: &[u8],
    after: &[u8],
    len: impl Fn(&Frame) -> usize,
) -> Option<usize> {
    img.frames.iter().position(|f| {
        let r = f.pos..f.pos + len(f);
        before[r.clone()] != after[r]
    })
}

fn write_files(img: &Image, dir: &Path, active_bytes: &[u8]) {
    for (i, (name, bytes)) in img.files.iter().enumerate() {
        let bytes = if i == img.active { active_bytes } else { bytes };
        fs::write(dir.join(name), bytes).expect("write file");
    }
}

/// Checks one damaged copy of `img`. With `thorough`, also reopens once more after the
/// appends that follow recovery.
fn check_case(img: &Image, damage: &Damage, thorough: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = &img.files[img.active].1;
    let mut after = before.clone();
    let new_committed = apply(img, &mut after, damage);
    write_files(img, dir.path(), &after);

    // What must survive: every record before the first damaged one, and nothing of it. A
    // frame whose damage lies only in its padding (not covered by the CRC, but zero by the
    // format) may be cut or kept: its record is intact either way.
    let damaged = first_changed_frame(img, before, &after, |f| f.len);
    let padding_damaged = first_changed_frame(img, before, &after, |f| format::align_up(f.len));
    let frame_end = |i: Option<usize>| i.map_or(img.end, |i| img.active_base + i as u64);
    let allowed_ends = frame_end(padding_damaged)..=frame_end(damaged);

    let (log, report) = PartitionLog::open(dir.path(), config()).expect("open a torn log");
    let end = log.end_offset();
    assert!(
        allowed_ends.contains(&end),
        "the end after recovery is {end}, expected {allowed_ends:?}: every record before the \
         first damaged frame ({damaged:?}) and none from it (report {report:?})"
    );
    assert_eq!(check_all(&log, 0), end, "records read back");
    // Where recovery cut, and the checkpoints it had to rebuild on the way there: those at
    // or above the durable end (below it they are trusted), and all of those in sealed
    // segments that were not flushed.
    let cut_at = img
        .frames
        .get((end - img.active_base) as usize)
        .map_or(img.committed, |f| f.pos);
    assert_eq!(
        report.truncated_bytes,
        (new_committed - cut_at) as u64,
        "bytes cut: from the first damaged frame to the committed end"
    );
    assert!(report.removed_segments.is_empty(), "{report:?}");
    let expected_rebuilt = img.sealed_rescanned_checkpoints
        + img
            .checkpoint_positions
            .iter()
            .filter(|&&p| img.durable <= p && p < cut_at)
            .count();
    assert_eq!(
        report.rebuilt_checkpoints, expected_rebuilt,
        "checkpoints rebuilt: those above the durable end (and in unflushed sealed segments)"
    );
    let summary = verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "verify after recovery: {summary}");
    assert_eq!(summary.end_offset, Some(end));

    // Appends go on from the new end, and survive another reopen.
    assert_eq!(append_range(&log, end, end + 5), end);
    assert_eq!(check_all(&log, 0), end + 5);
    drop(log);
    if !thorough {
        return;
    }
    let (log, report) = PartitionLog::open(dir.path(), config()).expect("reopen");
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(check_all(&log, 0), end + 5);
    drop(log);
    let summary = verify::verify_partition(dir.path());
    assert!(summary.is_ok(), "verify after appending: {summary}");
}

/// Runs every case (each damaging a fresh copy of `img`), then fails naming the cases that
/// failed, so that one run shows the whole pattern. Stops early after many failures.
fn run_cases(img: &Image, cases: impl IntoIterator<Item = (Damage, bool)>) {
    const MAX_FAILURES: usize = 20;
    let mut failed = Vec::new();
    let mut ran = 0;
    for (damage, thorough) in cases {
        ran += 1;
        if catch_unwind(AssertUnwindSafe(|| check_case(img, &damage, thorough))).is_err() {
            failed.push(damage);
            if failed.len() == MAX_FAILURES {
                break;
            }
        }
    }
    assert!(ran > 0, "no case ran");
    assert!(
        failed.is_empty(),
        "{} of {ran} cases failed{} on the image flushed {:?} (active segment {}, last frames \
         (position, unpadded length) {:?}, committed end {}, durable end {}); failed cases: \
         {failed:?}",
        failed.len(),
        if failed.len() == MAX_FAILURES {
            " (stopped early)"
        } else {
            ""
        },
        img.flushed,
        img.active_base,
        img.frames
            .iter()
            .rev()
            .take(12)
            .map(|f| (f.pos, f.len))
            .collect::<Vec<_>>(),
        img.committed,
        img.durable
    );
}

/// Lowest position the damage may touch: bytes below the durable end were made durable by
/// msync and are trusted by recovery, so a torn write cannot reach them.
fn lowest_damage(img: &Image) -> usize {
    img.durable.max(DATA_START)
}

fn flip_every_byte_of_the_last_2_kib(flushed: Flushed) {
    let img = image(flushed);
    let from = lowest_damage(img).max(img.committed - 2048);
    let masks = [0x01u8, 0x80, 0xFF, 0x10, 0x5A, 0x02, 0x40, 0x08];
    run_cases(
        img,
        (from..img.committed).map(|pos| {
            let mask = masks[pos % masks.len()];
            (Damage::Flip { pos, mask }, pos.is_multiple_of(16))
        }),
    );
}

#[test]
fn single_byte_flips_in_an_unflushed_tail() {
    flip_every_byte_of_the_last_2_kib(Flushed::Nothing);
}

#[test]
fn single_byte_flips_above_the_durable_end() {
    flip_every_byte_of_the_last_2_kib(Flushed::MidActive);
}

#[test]
fn committed_end_past_the_last_frame() {
    for flushed in [Flushed::Nothing, Flushed::MidActive] {
        let img = image(flushed);
        let room = img.capacity - img.committed;
        assert!(room >= 4096, "the image leaves room past its last frame");
        let mut sizes: Vec<usize> = (8..=256).step_by(8).collect();
        sizes.extend([1016, 2048, 4088, 4096, 4104, room - 8, room]);
        let cases = sizes.into_iter().flat_map(|by| {
            [None, Some(by as u64)].map(|garbage| (Damage::ExtendCommitted { by, garbage }, true))
        });
        run_cases(img, cases);
    }
}

#[test]
fn tail_zeroed_from_every_frame_and_page_boundary() {
    for flushed in [Flushed::Nothing, Flushed::MidActive] {
        let img = image(flushed);
        let low = lowest_damage(img);
        let mut starts: Vec<usize> = img
            .frames
            .iter()
            .flat_map(|f| [f.pos, f.pos + 8, f.pos + f.len - 1])
            .collect();
        starts.extend((DATA_START..img.committed).step_by(4096));
        starts.extend((DATA_START..img.committed).step_by(512));
        starts.retain(|&p| p >= low && p < img.committed);
        starts.sort_unstable();
        starts.dedup();
        // The frames nearest the end matter most; keep the case count bounded.
        let keep_from = starts.len().saturating_sub(150);
        let cases = starts[keep_from..]
            .iter()
            .map(|&pos| (Damage::ZeroFrom { pos }, true));
        run_cases(img, cases);
    }
}

/// Random damage near the end of the committed region, shrunk to a minimal case on failure.
fn random_damage(img: &'static Image) -> impl Strategy<Value = Damage> {
    let low = lowest_damage(img).max(img.committed.saturating_sub(4096));
    let region = low..img.committed;
    let frames_above = img.frames.iter().filter(|f| f.pos >= low).count().min(8);
    let room = (img.capacity - img.committed) / format::FRAME_ALIGN;
    prop_oneof![
        (region.clone(), 1u8..=255).prop_map(|(pos, mask)| Damage::Flip { pos, mask }),
        region.clone().prop_map(|pos| Damage::ZeroFrom { pos }),
        proptest::collection::vec(any::<Index>(), 1..=frames_above)
            .prop_map(|keep| Damage::ZeroFrameTails { keep }),
        (region, proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(pos, bytes)| Damage::Overwrite { pos, bytes }),
        (1..=room.min(512), proptest::option::of(any::<u64>())).prop_map(|(n, garbage)| {
            Damage::ExtendCommitted {
                by: n * format::FRAME_ALIGN,
                garbage,
            }
        }),
    ]
}

#[test]
fn random_tail_damage() {
    for (flushed, cases) in [(Flushed::Nothing, 200), (Flushed::MidActive, 200)] {
        let img = image(flushed);
        // A failing case's seed is saved in tests/torn_tail.proptest-regressions (commit it)
        // and replayed first by every later run, on both images, before new random cases.
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            source_file: Some(file!()),
            ..Config::default()
        });
        let result = runner.run(&random_damage(img), |damage| {
            check_case(img, &damage, true);
            Ok(())
        });
        if let Err(e) = result {
            panic!(
                "random tail damage on the image flushed {flushed:?} (seed saved in \
                 tests/torn_tail.proptest-regressions): {e}"
            );
        }
    }
}

/// A torn write can leave non-zero bytes in a frame's padding. The CRC does not cover them,
/// but the format says they are zero and `mapq verify` rejects a frame whose padding is not:
/// recovery must leave a partition that verifies (by cutting the frame, or zeroing it).
#[test]
fn damaged_padding_is_cut_or_zeroed_by_recovery() {
    let img = image(Flushed::Nothing);
    let f = img
        .frames
        .iter()
        .rev()
        .find(|f| !f.len.is_multiple_of(format::FRAME_ALIGN))
        .expect("a frame with padding");
    let flip = Damage::Flip {
        pos: f.pos + f.len,
        mask: 0x01,
    };
    run_cases(img, [(flip, true)]);
}

/// The checkpoint path: with the durable end in the middle of the active segment, recovery
/// keeps the checkpoints below it and rescans only from the last of them.
#[test]
fn recovery_starts_from_the_last_durable_checkpoint() {
    let img = image(Flushed::MidActive);
    let below = img
        .checkpoint_positions
        .iter()
        .filter(|&&p| p < img.durable)
        .count();
    assert!(below >= 2, "checkpoints below the durable end: {below}");
    // Tear the last frame; only checkpoints above the durable end may be rebuilt.
    let last = *img.frames.last().expect("frames");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = img.files[img.active].1.clone();
    bytes[last.pos + last.len - 1] ^= 0x01;
    write_files(img, dir.path(), &bytes);
    let (log, report) = PartitionLog::open(dir.path(), config()).expect("open");
    assert_eq!(log.end_offset(), img.end - 1);
    assert!(report.truncated_bytes > 0);
    let above = img
        .checkpoint_positions
        .iter()
        .filter(|&&p| p >= img.durable && p < last.pos)
        .count();
    assert_eq!(report.rebuilt_checkpoints, above, "{report:?}");
    // The kept checkpoints are the ones in the index after recovery.
    let active = log.segments().last().expect("segment").clone();
    let kept: Vec<usize> = active
        .checkpoints()
        .iter()
        .map(|c| c.position as usize)
        .collect();
    let want: Vec<usize> = img
        .checkpoint_positions
        .iter()
        .copied()
        .filter(|&p| p < last.pos)
        .collect();
    assert_eq!(kept, want);
    assert!(active.durable_end() <= active.committed_end());
    assert_eq!(active.durable_end(), img.durable);
    drop(log);
    assert!(verify::verify_partition(dir.path()).is_ok());
}

/// A batch with a head is published whole or not at all (FORMAT.md §6): damage to any of
/// its records, even the last, cuts the whole batch back to its head, so its head (an
/// idempotency key, a producer sequence) never survives without all of its records.
#[test]
fn a_torn_batch_is_cut_back_to_its_head() {
    use mapq::log::format::{BatchHead, Record, RequestTag};
    for damaged in [1usize, 3, 5] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = PartitionLog::open(dir.path(), config()).unwrap();
            append_range(&log, 0, 3);
            let values: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 100]).collect();
            let mut batch: Vec<Record<'_>> =
                values.iter().map(|v| Record::value(v, 1_000)).collect();
            batch[0].batch = Some(BatchHead {
                record_count: 6,
                request: Some(RequestTag {
                    key: b"req-1",
                    digest: [1; 16],
                    records: 6,
                    positions: None,
                }),
                ..BatchHead::default()
            });
            assert_eq!(log.append(&batch).unwrap().first_offset, 3);
        }
        let path = dir.path().join("00000000000000000000.log");
        let mut bytes = fs::read(&path).unwrap();
        let committed = u64::from_le_bytes(
            bytes[sh::COMMITTED_END..sh::COMMITTED_END + 8]
                .try_into()
                .unwrap(),
        ) as usize;
        let mut at = DATA_START;
        let mut frames = Vec::new();
        while at < committed {
            let f = format::decode_frame(&bytes[at..committed]).unwrap();
            frames.push(at);
            at += f.padded_len;
        }
        assert_eq!(frames.len(), 9);
        // A byte of the damaged record's value (covered by its CRC).
        bytes[frames[3 + damaged] + format::frame::FIXED_SIZE + 10] ^= 0xff;
        fs::write(&path, &bytes).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), config()).unwrap();
        assert_eq!(
            log.end_offset(),
            3,
            "record {damaged} of the batch damaged: the whole batch goes"
        );
        assert_eq!(report.truncated_bytes as usize, committed - frames[3]);
        // The idempotency key went with its records: no head names it any more, so a
        // server rebuilding its keys from the log would append the retry again, whole.
        let mut keys = Vec::new();
        log.scan_batch_heads(i64::MIN, |_, head| {
            keys.extend(head.request.map(|r| r.key.to_vec()));
        })
        .unwrap();
        assert!(keys.is_empty(), "{keys:?}");
        check_all(&log, 0);
        append_range(&log, 3, 5);
        check_all(&log, 0);
        drop(log);
        let summary = verify::verify_partition(dir.path());
        assert!(summary.is_ok(), "{summary}");
    }
}

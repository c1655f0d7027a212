//! `mapq verify` as a user runs it: the real binary on a real data directory.

mod common;

use std::process::Command;

use common::*;
use mapq::log::format::{align_up, frame, get_u32};
use mapq::log::PartitionLog;
use mapq::log::DATA_START;

fn verify(dir: &std::path::Path) -> (i32, String) {
    let out = common::server::output_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_mapq"))
            .args(["verify", "--data-dir"])
            .arg(dir),
        b"",
        std::time::Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_passes_a_healthy_data_dir_and_fails_a_corrupt_one() {
    let data = tempfile::tempdir().unwrap();
    for (topic, partitions) in [("orders", 2), ("audit.log", 1)] {
        for p in 0..partitions {
            let dir = data.path().join(topic).join(p.to_string());
            let (log, _) = PartitionLog::open(&dir, small_config(32 << 10)).unwrap();
            for from in (0..400).step_by(10) {
                append_range(&log, from, from + 10);
            }
            assert!(log.segment_count() > 2);
            log.flush().unwrap();
        }
    }
    let (code, out) = verify(data.path());
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": OK").count(), 3, "{out}");
    assert!(out.contains("400 records"), "{out}");
    assert!(out.contains("3 partitions checked, 0 corrupt"), "{out}");

    // Flip one byte inside a record of a sealed segment of orders/1: the fifth byte after the
    // first frame's fixed part, in its key or value (every value is at least 8 bytes).
    let seg = data.path().join("orders/1/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[DATA_START + frame::FIXED_SIZE + 4] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let (code, out) = verify(data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("orders/1: CORRUPT"), "{out}");
    assert!(out.contains("checksum mismatch"), "{out}");
    assert!(out.contains("3 partitions checked, 1 corrupt"), "{out}");
    // One topic's directory checks that topic's partitions (it used to find none, and pass).
    std::fs::write(
        data.path().join("orders/topic.json"),
        r#"{"name": "orders", "partitions": 2}"#,
    )
    .unwrap();
    let (code, out) = verify(&data.path().join("orders"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 partitions checked, 1 corrupt"), "{out}");
}

#[test]
fn verify_reports_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = verify(&dir.path().join("missing"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read"), "{out}");
}

#[test]
fn verify_flags_non_zero_padding() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("t/0");
    let (log, _) = PartitionLog::open(&dir, small_config(32 << 10)).unwrap();
    append_range(&log, 0, 1);
    drop(log);
    // Record 0 is a 58-byte frame padded to 64: its byte 60 is padding.
    let seg = dir.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let frame_len = get_u32(&bytes, DATA_START + frame::LENGTH) as usize;
    assert_eq!(
        (frame_len, align_up(frame_len)),
        (58, 64),
        "record 0's frame length, padded"
    );
    bytes[DATA_START + 60] = 1;
    std::fs::write(&seg, bytes).unwrap();
    let (code, out) = verify(data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("padding after the frame is not zero"), "{out}");
}

//! Bad bytes on disk stop every reader with a clear message naming the file and the
//! position, never a panic and never a silent skip (FORMAT.md section 2): a segment of an
//! unknown version, a header field out of range, a frame with an attribute bit no version
//! defines, a batch head that does not add up. The readers: `mapq tail` (the Rust tailer in
//! a process of its own), the Python reader written from the document, and `mapq verify`.

mod common;

use std::process::Command;

use common::{append_range, small_config};
use mapq::log::format::{self, frame, segment_header as sh};
use mapq::log::{PartitionLog, DATA_START};

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The damages, each applied to a fresh copy of the same segment: its name, what the
/// messages must mention, and the change.
type Damage = (&'static str, &'static [&'static str], fn(&mut Vec<u8>));

fn frame_at(bytes: &[u8], n: usize) -> usize {
    let mut at = DATA_START;
    for _ in 0..n {
        let len = format::get_u32(bytes, at) as usize;
        at += format::align_up(len);
    }
    at
}

/// Sets an attribute word of frame `n` and recomputes its CRC, so that only the flag is
/// wrong.
fn set_attributes(bytes: &mut [u8], n: usize, attrs: u32) {
    let at = frame_at(bytes, n);
    put_u32(bytes, at + frame::ATTRIBUTES, attrs);
    let len = format::get_u32(bytes, at) as usize;
    let crc = crc32c::crc32c(&bytes[at + frame::CRC_START..at + len]);
    put_u32(bytes, at + frame::CRC, crc);
}

const DAMAGES: &[Damage] = &[
    ("unknown version", &["version 3"], |b| {
        put_u32(b, sh::VERSION, 3);
        let crc = crc32c::crc32c(&b[..sh::HEADER_CRC]);
        put_u32(b, sh::HEADER_CRC, crc);
    }),
    ("committed end past the file", &["committed end"], |b| {
        let beyond = b.len() as u64 + 8;
        b[sh::COMMITTED_END..sh::COMMITTED_END + 8].copy_from_slice(&beyond.to_le_bytes());
    }),
    ("unknown attribute bit", &["attribute"], |b| {
        set_attributes(b, 3, 0x10)
    }),
    ("null value with the JSON bit", &["byte"], |b| {
        set_attributes(
            b,
            2,
            format::attributes::VALUE_NULL | format::attributes::VALUE_JSON,
        )
    }),
];

#[test]
fn bad_segments_stop_every_reader_with_the_file_and_position() {
    let source = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(source.path(), small_config(64 << 10)).unwrap();
        append_range(&log, 0, 10);
        log.flush().unwrap();
    }
    let segment = "00000000000000000000.log";
    let original = std::fs::read(source.path().join(segment)).unwrap();
    for (what, mentions, damage) in DAMAGES {
        let data = tempfile::tempdir().unwrap();
        let partition = data.path().join("orders").join("0");
        std::fs::create_dir_all(&partition).unwrap();
        for e in std::fs::read_dir(source.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), partition.join(e.file_name())).unwrap();
        }
        let mut bytes = original.clone();
        damage(&mut bytes);
        std::fs::write(partition.join(segment), &bytes).unwrap();

        let runs = [
            (
                "mapq tail",
                Command::new(env!("CARGO_BIN_EXE_mapq"))
                    .args(["tail", "--partition", "0", "--data-dir"])
                    .arg(data.path())
                    .arg("orders")
                    .output()
                    .unwrap(),
            ),
            (
                "the Python reader",
                Command::new(common::python())
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/tools/format_reader.py"
                    ))
                    .arg(&partition)
                    .output()
                    .unwrap(),
            ),
            (
                "mapq verify",
                Command::new(env!("CARGO_BIN_EXE_mapq"))
                    .args(["verify", "--data-dir"])
                    .arg(data.path())
                    .output()
                    .unwrap(),
            ),
        ];
        for (reader, out) in runs {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{what}: {reader} succeeded: {text}");
            assert!(
                !text.contains("panicked"),
                "{what}: {reader} panicked: {text}"
            );
            assert!(
                text.contains(segment),
                "{what}: {reader} does not name the file: {text}"
            );
            // A damaged frame is named by where it starts.
            let frame = match *what {
                "unknown attribute bit" => Some(3),
                "null value with the JSON bit" => Some(2),
                _ => None,
            };
            if let Some(n) = frame {
                let at = format!("byte {}", frame_at(&original, n));
                assert!(
                    text.contains(&at),
                    "{what}: {reader} does not say {at:?}: {text}"
                );
            }
            for m in *mentions {
                assert!(
                    text.contains(m),
                    "{what}: {reader} does not say {m:?}: {text}"
                );
            }
        }
    }
}

//! Segment recovery from arbitrary bytes: a recovered partition must read and verify clean.
#![no_main]

#[path = "../../common/fuzz.rs"]
mod checks;

use std::sync::OnceLock;

static TARGET: OnceLock<checks::SegmentRecovery> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    TARGET.get_or_init(checks::SegmentRecovery::new).check(data)
});

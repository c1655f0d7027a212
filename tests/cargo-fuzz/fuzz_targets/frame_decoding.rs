//! Frame decoding and validation of arbitrary bytes.
#![no_main]

#[path = "../../common/fuzz.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::frame_decoding(data));

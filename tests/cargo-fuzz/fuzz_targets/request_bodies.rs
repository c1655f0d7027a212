//! Request bodies through the real router: never a 5xx.
#![no_main]

#[path = "../../common/fuzz.rs"]
mod checks;

thread_local! {
    static TARGET: checks::RequestBodies = checks::RequestBodies::new();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.with(|t| t.check(data)));

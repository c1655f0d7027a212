//! The C ABI: the functions C calls, and the crate's only `unsafe`. Each turns the
//! pointers it is given into references and slices, under the contract its `# Safety`
//! section states (the header says the same to C), then calls the safe function of the
//! crate's root that does the work. No call panics across the boundary ([`guarded`]).
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{
    default_options, fail, guarded, last_error, mapq_header, mapq_record, mapq_tail_options,
    mapq_tailer, MAPQ_TAIL_ERR_ARGUMENT, MAPQ_TAIL_OK,
};

/// A C string argument: `None` for NULL.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string valid for the call.
unsafe fn c_str<'a>(s: *const c_char) -> Option<&'a CStr> {
    // SAFETY: not null (checked), NUL-terminated and valid for the call by the contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) })
}

/// The default options: from the earliest record, not following, a futex wait, failing
/// when unread records were deleted.
#[no_mangle]
pub extern "C" fn mapq_tail_options_default() -> mapq_tail_options {
    default_options()
}

/// Opens partition `partition` of `topic` in the data directory `data_dir` (read-only
/// access is enough; the server need not run). `options` may be NULL (the defaults).
/// On success `*out` is the tailer, to close with `mapq_tail_close`.
///
/// # Safety
/// `data_dir` and `topic` are NUL-terminated strings; `options` is NULL or points to
/// options; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_open(
    data_dir: *const c_char,
    topic: *const c_char,
    partition: u32,
    options: *const mapq_tail_options,
    out: *mut *mut mapq_tailer,
) -> i32 {
    guarded(|| {
        // SAFETY: `out` is NULL or writable, by the contract.
        let Some(out) = (unsafe { out.as_mut() }) else {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "out is NULL");
        };
        // SAFETY: strings valid for the call, `options` NULL or valid, by the contract.
        let (dir, topic, options) = unsafe { (c_str(data_dir), c_str(topic), options.as_ref()) };
        match super::open(dir, topic, partition, options) {
            Ok(t) => {
                *out = Box::into_raw(t);
                MAPQ_TAIL_OK
            }
            Err(code) => code,
        }
    })
}

/// The next record, into `*out`: `MAPQ_TAIL_OK`; at the end of the log
/// `MAPQ_TAIL_END` (not following) or, following, `MAPQ_TAIL_TIMEOUT` once `timeout_ms`
/// passed with no record (`-1`: wait as long as it takes; `0`: do not wait). The record's
/// pointers are valid until the next call on this tailer.
///
/// # Safety
/// `t` is a tailer from `mapq_tail_open`, not closed, used by this thread only; `out`
/// points to writable storage for a record.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_next(
    t: *mut mapq_tailer,
    timeout_ms: i64,
    out: *mut mapq_record,
) -> i32 {
    guarded(|| {
        // SAFETY: NULL or a live tailer used by this thread only, and NULL or writable
        // storage for a record, by the contract.
        let (Some(t), Some(out)) = (unsafe { (t.as_mut(), out.as_mut()) }) else {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the tailer or out is NULL");
        };
        match super::next(t, timeout_ms) {
            Ok(r) => {
                *out = r;
                MAPQ_TAIL_OK
            }
            Err(code) => code,
        }
    })
}

/// Up to `max` records into `out[0 .. *count)`, for callers that pay per call (an
/// interpreter): the first as `mapq_tail_next` returns it (waiting up to `timeout_ms`), the
/// others only those readable at once in the same segment, so that every one of them stays
/// valid until the next call on this tailer. Returns as `mapq_tail_next` does (`*count` is
/// 0 unless `MAPQ_TAIL_OK`); an error after the first record ends the batch, and the next
/// call returns it.
///
/// # Safety
/// As `mapq_tail_next`; `out` points to writable storage for `max` records, and `count` to
/// a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_next_batch(
    t: *mut mapq_tailer,
    timeout_ms: i64,
    out: *mut mapq_record,
    max: usize,
    count: *mut usize,
) -> i32 {
    guarded(|| {
        // SAFETY: each NULL or valid as the contract says.
        let (Some(t), Some(count)) = (unsafe { (t.as_mut(), count.as_mut()) }) else {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the tailer or count is NULL");
        };
        *count = 0;
        if out.is_null() {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "out is NULL");
        }
        // SAFETY: not null, and writable storage for `max` records by the contract.
        let out = unsafe { std::slice::from_raw_parts_mut(out, max) };
        match super::next_batch(t, timeout_ms, out) {
            Ok(n) => {
                *count = n;
                MAPQ_TAIL_OK
            }
            Err(code) => code,
        }
    })
}

/// Header `index` (from 0) of `record`, into `*out`: `MAPQ_TAIL_OK`, or
/// `MAPQ_TAIL_ERR_ARGUMENT` past the last one. Valid as long as the record.
///
/// # Safety
/// `record` points to a record `mapq_tail_next` filled, still valid; `out` points to
/// writable storage for a header.
#[no_mangle]
pub unsafe extern "C" fn mapq_record_header(
    record: *const mapq_record,
    index: u32,
    out: *mut mapq_header,
) -> i32 {
    guarded(|| {
        // SAFETY: NULL or a record, and NULL or writable storage for a header, by the
        // contract.
        let (Some(r), Some(out)) = (unsafe { (record.as_ref(), out.as_mut()) }) else {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the record or out is NULL");
        };
        if r.headers.is_null() {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the record has no headers pointer");
        }
        // SAFETY: the record's headers, in its frame, still mapped: the record is still
        // valid by the contract.
        let headers = unsafe { std::slice::from_raw_parts(r.headers, r.headers_len) };
        match super::record_header(r.header_count, headers, index) {
            Ok(h) => {
                *out = h;
                MAPQ_TAIL_OK
            }
            Err(code) => code,
        }
    })
}

/// The offset of the next record the tailer will return (after `MAPQ_TAIL_ERR_TRUNCATED`,
/// where it goes on). 0 for a NULL tailer.
///
/// # Safety
/// `t` is NULL or a tailer from `mapq_tail_open`, not closed.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_position(t: *const mapq_tailer) -> u64 {
    // SAFETY: NULL or a live tailer by the contract.
    unsafe { t.as_ref() }.map_or(0, |t| t.inner.position())
}

/// Closes a tailer (NULL: nothing). Its records' pointers are invalid from then on.
///
/// # Safety
/// `t` is NULL or a tailer from `mapq_tail_open`, not closed yet.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_close(t: *mut mapq_tailer) {
    if !t.is_null() {
        // SAFETY: from `Box::into_raw` in `mapq_tail_open`, closed once by the contract.
        let t = unsafe { Box::from_raw(t) };
        let _ = catch_unwind(AssertUnwindSafe(|| drop(t)));
    }
}

/// The message of the last error on the calling thread ("" when there was none yet; a
/// successful call leaves it as it was): valid until the thread's next failing call into
/// the library.
#[no_mangle]
pub extern "C" fn mapq_tail_error() -> *const c_char {
    last_error()
}

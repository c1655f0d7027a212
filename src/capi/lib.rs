//! mapq's local tailer for C, and every language with a C FFI: the Rust tailer
//! (`mapq::log::tailer`) behind a handful of functions. `include/mapq_tail.h` is generated
//! from this file.
//!
//! ```c
//! mapq_tail_options o = mapq_tail_options_default();
//! o.follow = true;
//! mapq_tailer *t;
//! if (mapq_tail_open("./data", "orders", 0, &o, &t) != MAPQ_TAIL_OK) {
//!     fprintf(stderr, "%s\n", mapq_tail_error());
//!     return 1;
//! }
//! mapq_record r;
//! int rc;
//! while ((rc = mapq_tail_next(t, 1000, &r)) == MAPQ_TAIL_OK || rc == MAPQ_TAIL_TIMEOUT) {
//!     if (rc == MAPQ_TAIL_OK) { ... }  /* r.value[0 .. r.value_len): until the next call */
//! }
//! mapq_tail_close(t);
//! ```
//!
//! A record's pointers point into the partition's mapping: no copy, and no allocation per
//! record. They are valid until the next call on the same tailer (which may move to the
//! next segment and unmap this one); using one after that is undefined behaviour. A tailer
//! is used by one thread at a time. Errors are codes (`MAPQ_TAIL_ERR_*`, negative) with a
//! message for the calling thread (`mapq_tail_error`). No call panics across the boundary.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use mapq::log::format::HeaderIter;
use mapq::log::tailer::{OnDeleted, StartAt, TailError, TailOptions, Tailer, WaitMode};

/// Success: a record was returned (or the tailer opened).
pub const MAPQ_TAIL_OK: i32 = 0;
/// `mapq_tail_next`, not following: the end of the log.
pub const MAPQ_TAIL_END: i32 = 1;
/// `mapq_tail_next`, following: no record came within the timeout.
pub const MAPQ_TAIL_TIMEOUT: i32 = 2;
/// A null pointer, a name that is not UTF-8, an option out of range.
pub const MAPQ_TAIL_ERR_ARGUMENT: i32 = -1;
/// The path is not a mapq data directory (no such directory, or no `@lock` in it).
pub const MAPQ_TAIL_ERR_NOT_A_DATA_DIR: i32 = -2;
/// The data directory has no such topic.
pub const MAPQ_TAIL_ERR_NO_TOPIC: i32 = -3;
/// The topic has no such partition.
pub const MAPQ_TAIL_ERR_NO_PARTITION: i32 = -4;
/// The offset asked for was deleted by retention (the message names the earliest).
pub const MAPQ_TAIL_ERR_OFFSET_DELETED: i32 = -5;
/// The offset asked for is beyond the end of the log.
pub const MAPQ_TAIL_ERR_OFFSET_BEYOND_END: i32 = -6;
/// The topic was deleted (while followed, or before).
pub const MAPQ_TAIL_ERR_TOPIC_DELETED: i32 = -7;
/// The partition was truncated below what was read (a cluster failover): the records
/// from `mapq_tail_position` on are gone; the next call goes on from there.
pub const MAPQ_TAIL_ERR_TRUNCATED: i32 = -8;
/// Damaged files, or an I/O error.
pub const MAPQ_TAIL_ERR_IO: i32 = -9;
/// A bug in the library (a panic, caught at the boundary).
pub const MAPQ_TAIL_ERR_INTERNAL: i32 = -10;

/// `mapq_tail_options.from`: the oldest record still stored.
pub const MAPQ_TAIL_FROM_EARLIEST: u32 = 0;
/// `mapq_tail_options.from`: only records appended from now on.
pub const MAPQ_TAIL_FROM_LATEST: u32 = 1;
/// `mapq_tail_options.from`: at the offset `from_value`.
pub const MAPQ_TAIL_FROM_OFFSET: u32 = 2;
/// `mapq_tail_options.from`: at the first record with a timestamp at or after
/// `from_value` (ms since the Unix epoch).
pub const MAPQ_TAIL_FROM_TIMESTAMP: u32 = 3;

/// `mapq_record.flags`: the value was produced as JSON.
pub const MAPQ_RECORD_VALUE_JSON: u32 = 1;

/// How a tailer reads: the Rust tailer's `TailOptions`. The flags are bytes, 0 for no and
/// anything else for yes (so that any FFI can set them).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mapq_tail_options {
    /// `MAPQ_TAIL_FROM_*`.
    pub from: u32,
    /// The offset or timestamp of `MAPQ_TAIL_FROM_OFFSET` / `MAPQ_TAIL_FROM_TIMESTAMP`.
    pub from_value: i64,
    /// Wait for new records at the end instead of stopping there.
    pub follow: u8,
    /// Read only records msync has made durable.
    pub durable_only: u8,
    /// Read only records every in-sync replica holds (in a cluster).
    pub replicated_only: u8,
    /// Spin while waiting (lowest latency, a core busy) instead of a futex wait.
    pub spin: u8,
    /// Jump to the earliest record when unread records were deleted by retention, instead
    /// of failing with `MAPQ_TAIL_ERR_OFFSET_DELETED`.
    pub jump_when_deleted: u8,
}

/// One record: pointers into the mapping, valid until the next call on its tailer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mapq_record {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `NULL` when the record has no key.
    pub key: *const u8,
    pub key_len: usize,
    /// `NULL` when the value is null (a tombstone); an empty value is not `NULL`.
    pub value: *const u8,
    pub value_len: usize,
    /// The headers, encoded; read them with `mapq_record_header`.
    pub headers: *const u8,
    pub headers_len: usize,
    pub header_count: u32,
    /// `MAPQ_RECORD_*` bits.
    pub flags: u32,
}

/// One header of a record: pointers into the mapping, as the record's.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mapq_header {
    pub name: *const u8,
    pub name_len: usize,
    /// `NULL` when the header's value is null.
    pub value: *const u8,
    pub value_len: usize,
}

/// A tailer of one partition (opaque).
pub struct mapq_tailer {
    inner: Tailer,
    follow: bool,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: impl Into<String>) {
    let text = message.into().replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(text).unwrap_or_default());
}

/// Fails with `code` and `message` (the thread's last error).
fn fail(code: i32, message: impl Into<String>) -> i32 {
    set_error(message);
    code
}

/// Runs `f`, turning a panic into `MAPQ_TAIL_ERR_INTERNAL`.
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        fail(
            MAPQ_TAIL_ERR_INTERNAL,
            "internal error in the mapq tailer (a bug: please report it)",
        )
    })
}

fn tail_error(e: &TailError) -> i32 {
    let code = match e {
        TailError::NoPartition(_) => MAPQ_TAIL_ERR_NO_PARTITION,
        TailError::OffsetDeleted { .. } => MAPQ_TAIL_ERR_OFFSET_DELETED,
        TailError::OffsetBeyondEnd { .. } => MAPQ_TAIL_ERR_OFFSET_BEYOND_END,
        TailError::TopicDeleted => MAPQ_TAIL_ERR_TOPIC_DELETED,
        TailError::Truncated { .. } => MAPQ_TAIL_ERR_TRUNCATED,
        _ => MAPQ_TAIL_ERR_IO,
    };
    fail(code, e.to_string())
}

/// A C string argument as UTF-8, or why not.
///
/// # Safety
/// `s` is null or a NUL-terminated string valid for the call.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, i32> {
    if s.is_null() {
        return Err(fail(MAPQ_TAIL_ERR_ARGUMENT, format!("{what} is NULL")));
    }
    // SAFETY: not null, and NUL-terminated and valid for the call by the caller's contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| fail(MAPQ_TAIL_ERR_ARGUMENT, format!("{what} is not UTF-8")))
}

/// The default options: from the earliest record, not following, a futex wait, failing
/// when unread records were deleted.
#[no_mangle]
pub extern "C" fn mapq_tail_options_default() -> mapq_tail_options {
    mapq_tail_options {
        from: MAPQ_TAIL_FROM_EARLIEST,
        from_value: 0,
        follow: 0,
        durable_only: 0,
        replicated_only: 0,
        spin: 0,
        jump_when_deleted: 0,
    }
}

fn options(o: &mapq_tail_options) -> Result<TailOptions, i32> {
    let from = match o.from {
        MAPQ_TAIL_FROM_EARLIEST => StartAt::Earliest,
        MAPQ_TAIL_FROM_LATEST => StartAt::Latest,
        MAPQ_TAIL_FROM_OFFSET if o.from_value >= 0 => StartAt::Offset(o.from_value as u64),
        MAPQ_TAIL_FROM_TIMESTAMP => StartAt::Timestamp(o.from_value),
        _ => {
            return Err(fail(
                MAPQ_TAIL_ERR_ARGUMENT,
                format!(
                    "from {} with from_value {}: use MAPQ_TAIL_FROM_* (an offset is not negative)",
                    o.from, o.from_value
                ),
            ))
        }
    };
    Ok(TailOptions {
        from,
        follow: o.follow != 0,
        durable_only: o.durable_only != 0,
        replicated_only: o.replicated_only != 0,
        wait: if o.spin != 0 {
            WaitMode::Spin
        } else {
            WaitMode::Block
        },
        on_deleted: if o.jump_when_deleted != 0 {
            OnDeleted::Jump
        } else {
            OnDeleted::Fail
        },
        stop: None,
    })
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
        if out.is_null() {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "out is NULL");
        }
        // SAFETY: the caller's contract: strings valid for the call.
        let (dir, topic) = match unsafe { (text(data_dir, "data_dir"), text(topic, "topic")) } {
            (Ok(d), Ok(t)) => (Path::new(d), t),
            (Err(code), _) | (_, Err(code)) => return code,
        };
        let opts = if options.is_null() {
            mapq_tail_options_default()
        } else {
            // SAFETY: not null, and points to options by the caller's contract.
            unsafe { *options }
        };
        let opts = match self::options(&opts) {
            Ok(o) => o,
            Err(code) => return code,
        };
        if !dir.is_dir() || !dir.join(mapq::broker::LOCK_FILE).exists() {
            return fail(
                MAPQ_TAIL_ERR_NOT_A_DATA_DIR,
                format!("{} is not a mapq data directory", dir.display()),
            );
        }
        if mapq::broker::validate_name(topic).is_err() || !dir.join(topic).is_dir() {
            return fail(
                MAPQ_TAIL_ERR_NO_TOPIC,
                format!("{} has no topic {topic:?}", dir.display()),
            );
        }
        match Tailer::open(dir, topic, partition, opts) {
            Ok(inner) => {
                let t = Box::new(mapq_tailer {
                    inner,
                    follow: opts.follow,
                });
                // SAFETY: `out` is not null and writable by the caller's contract.
                unsafe { *out = Box::into_raw(t) };
                MAPQ_TAIL_OK
            }
            Err(e) => tail_error(&e),
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
        if t.is_null() || out.is_null() {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the tailer or out is NULL");
        }
        // SAFETY: a live tailer, used by this thread only, by the caller's contract.
        let t = unsafe { &mut *t };
        let follow = t.follow;
        match t.inner.next_record_within(timeout(timeout_ms)) {
            Ok(Some(f)) => {
                // SAFETY: `out` is not null and writable by the caller's contract.
                unsafe { *out = record(&f) };
                MAPQ_TAIL_OK
            }
            Ok(None) if follow => MAPQ_TAIL_TIMEOUT,
            Ok(None) => MAPQ_TAIL_END,
            Err(e) => tail_error(&e),
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
        if t.is_null() || out.is_null() || count.is_null() || max == 0 {
            return fail(
                MAPQ_TAIL_ERR_ARGUMENT,
                "the tailer, out or count is NULL, or max is 0",
            );
        }
        // SAFETY: writable by the caller's contract.
        unsafe { *count = 0 };
        // SAFETY: a live tailer, used by this thread only, by the caller's contract.
        let t = unsafe { &mut *t };
        let follow = t.follow;
        let first = match t.inner.next_record_within(timeout(timeout_ms)) {
            Ok(Some(f)) => record(&f),
            Ok(None) if follow => return MAPQ_TAIL_TIMEOUT,
            Ok(None) => return MAPQ_TAIL_END,
            Err(e) => return tail_error(&e),
        };
        // SAFETY: `out` has room for `max` (at least 1) records by the caller's contract.
        unsafe { *out = first };
        let mut n = 1;
        while n < max {
            match t.inner.next_record_here() {
                // SAFETY: `n < max`: within the caller's storage.
                Ok(Some(f)) => unsafe { *out.add(n) = record(&f) },
                _ => break,
            }
            n += 1;
        }
        // SAFETY: writable by the caller's contract.
        unsafe { *count = n };
        MAPQ_TAIL_OK
    })
}

/// A timeout in ms as the tailer takes it: negative, as long as it takes.
fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// A record as C sees it: pointers into the mapping.
fn record(f: &mapq::log::FrameView<'_>) -> mapq_record {
    let key = f.key();
    let value = f.value();
    let headers = &f.bytes[f.headers_range.clone()];
    mapq_record {
        offset: f.offset,
        timestamp_ms: f.timestamp_ms,
        key: key.map_or(std::ptr::null(), <[u8]>::as_ptr),
        key_len: key.map_or(0, <[u8]>::len),
        value: value.map_or(std::ptr::null(), <[u8]>::as_ptr),
        value_len: value.map_or(0, <[u8]>::len),
        headers: headers.as_ptr(),
        headers_len: headers.len(),
        header_count: f.header_count,
        flags: if f.value_is_json() {
            MAPQ_RECORD_VALUE_JSON
        } else {
            0
        },
    }
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
        if record.is_null() || out.is_null() {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "the record or out is NULL");
        }
        // SAFETY: points to a record, by the caller's contract.
        let r = unsafe { &*record };
        if index >= r.header_count || r.headers.is_null() {
            return fail(
                MAPQ_TAIL_ERR_ARGUMENT,
                format!("the record has {} headers", r.header_count),
            );
        }
        // SAFETY: the record's headers, validated with its frame when it was read, and
        // still mapped (the record is still valid by the caller's contract).
        let bytes = unsafe { std::slice::from_raw_parts(r.headers, r.headers_len) };
        let Some((name, value)) = HeaderIter::new_validated(bytes).nth(index as usize) else {
            return fail(MAPQ_TAIL_ERR_ARGUMENT, "no such header");
        };
        let h = mapq_header {
            name: name.as_ptr(),
            name_len: name.len(),
            value: value.map_or(std::ptr::null(), <[u8]>::as_ptr),
            value_len: value.map_or(0, <[u8]>::len),
        };
        // SAFETY: `out` is not null and writable by the caller's contract.
        unsafe { *out = h };
        MAPQ_TAIL_OK
    })
}

/// The offset of the next record the tailer will return (after `MAPQ_TAIL_ERR_TRUNCATED`,
/// where it goes on). 0 for a NULL tailer.
///
/// # Safety
/// `t` is NULL or a tailer from `mapq_tail_open`, not closed.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_position(t: *const mapq_tailer) -> u64 {
    if t.is_null() {
        return 0;
    }
    // SAFETY: a live tailer by the caller's contract.
    unsafe { &*t }.inner.position()
}

/// Closes a tailer (NULL: nothing). Its records' pointers are invalid from then on.
///
/// # Safety
/// `t` is NULL or a tailer from `mapq_tail_open`, not closed yet.
#[no_mangle]
pub unsafe extern "C" fn mapq_tail_close(t: *mut mapq_tailer) {
    if !t.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from `Box::into_raw` in `mapq_tail_open`, closed once by contract.
            drop(unsafe { Box::from_raw(t) });
        }));
    }
}

/// The message of the last error on the calling thread ("" when there was none yet; a
/// successful call leaves it as it was): valid until the thread's next failing call into
/// the library.
#[no_mangle]
pub extern "C" fn mapq_tail_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

//! mapq's local tailer for C, and every language with a C FFI: the Rust tailer
//! (`mapq::log::tailer`) behind a handful of functions. `include/mapq_tail.h` is generated
//! from this crate. The functions C calls are in [`sys`], the only module with `unsafe`:
//! each turns its pointers into references and slices there, under the caller's contract,
//! and calls the safe functions of this file.
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
#![deny(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, CString};
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

pub mod sys;

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

/// A C string argument (`None`: NULL) as UTF-8, or why not.
fn text<'a>(s: Option<&'a CStr>, what: &str) -> Result<&'a str, i32> {
    s.ok_or_else(|| fail(MAPQ_TAIL_ERR_ARGUMENT, format!("{what} is NULL")))?
        .to_str()
        .map_err(|_| fail(MAPQ_TAIL_ERR_ARGUMENT, format!("{what} is not UTF-8")))
}

/// The default options: from the earliest record, not following, a futex wait, failing
/// when unread records were deleted.
pub fn default_options() -> mapq_tail_options {
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

/// `mapq_tail_open`: a tailer of partition `partition` of `topic` in `data_dir`, or the
/// error's code.
fn open(
    data_dir: Option<&CStr>,
    topic: Option<&CStr>,
    partition: u32,
    options: Option<&mapq_tail_options>,
) -> Result<Box<mapq_tailer>, i32> {
    let dir = Path::new(text(data_dir, "data_dir")?);
    let topic = text(topic, "topic")?;
    let opts = self::options(options.unwrap_or(&default_options()))?;
    if !dir.is_dir() || !dir.join(mapq::broker::LOCK_FILE).exists() {
        return Err(fail(
            MAPQ_TAIL_ERR_NOT_A_DATA_DIR,
            format!("{} is not a mapq data directory", dir.display()),
        ));
    }
    if mapq::broker::validate_name(topic).is_err() || !dir.join(topic).is_dir() {
        return Err(fail(
            MAPQ_TAIL_ERR_NO_TOPIC,
            format!("{} has no topic {topic:?}", dir.display()),
        ));
    }
    match Tailer::open(dir, topic, partition, opts) {
        Ok(inner) => Ok(Box::new(mapq_tailer {
            inner,
            follow: opts.follow,
        })),
        Err(e) => Err(tail_error(&e)),
    }
}

/// The next record, waiting up to `timeout_ms` for it: the record, or the code to return
/// (`MAPQ_TAIL_END`, `MAPQ_TAIL_TIMEOUT`, an error).
fn next(t: &mut mapq_tailer, timeout_ms: i64) -> Result<mapq_record, i32> {
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    match t.inner.next_record_within(timeout) {
        Ok(Some(f)) => Ok(record(&f)),
        Ok(None) if t.follow => Err(MAPQ_TAIL_TIMEOUT),
        Ok(None) => Err(MAPQ_TAIL_END),
        Err(e) => Err(tail_error(&e)),
    }
}

/// `mapq_tail_next_batch`: the next record into `out[0]` (as [`next`]), then those readable
/// at once in the same segment into the rest of `out` (not empty); how many.
fn next_batch(t: &mut mapq_tailer, timeout_ms: i64, out: &mut [mapq_record]) -> Result<usize, i32> {
    let (first, rest) = out
        .split_first_mut()
        .ok_or_else(|| fail(MAPQ_TAIL_ERR_ARGUMENT, "max is 0"))?;
    *first = next(t, timeout_ms)?;
    let mut n = 1;
    for slot in rest {
        match t.inner.next_record_here() {
            Ok(Some(f)) => *slot = record(&f),
            _ => break,
        }
        n += 1;
    }
    Ok(n)
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

/// `mapq_record_header`: header `index` of a record with `header_count` headers encoded
/// in `headers` (validated with its frame when it was read).
fn record_header(header_count: u32, headers: &[u8], index: u32) -> Result<mapq_header, i32> {
    if index >= header_count {
        return Err(fail(
            MAPQ_TAIL_ERR_ARGUMENT,
            format!("the record has {header_count} headers"),
        ));
    }
    let (name, value) = HeaderIter::new_validated(headers)
        .nth(index as usize)
        .ok_or_else(|| fail(MAPQ_TAIL_ERR_ARGUMENT, "no such header"))?;
    Ok(mapq_header {
        name: name.as_ptr(),
        name_len: name.len(),
        value: value.map_or(std::ptr::null(), <[u8]>::as_ptr),
        value_len: value.map_or(0, <[u8]>::len),
    })
}

/// The thread's last error message, as C reads it.
fn last_error() -> *const std::ffi::c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

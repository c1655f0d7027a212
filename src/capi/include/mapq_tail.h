/* mapq's local tailer, for C (and any language with a C FFI).
 * Generated from src/capi/lib.rs and sys.rs by cbindgen when the library is built: do not edit. */

#ifndef MAPQ_TAIL_H
#define MAPQ_TAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Success: a record was returned (or the tailer opened).
#define MAPQ_TAIL_OK 0

// `mapq_tail_next`, not following: the end of the log.
#define MAPQ_TAIL_END 1

// `mapq_tail_next`, following: no record came within the timeout.
#define MAPQ_TAIL_TIMEOUT 2

// A null pointer, a name that is not UTF-8, an option out of range.
#define MAPQ_TAIL_ERR_ARGUMENT -1

// The path is not a mapq data directory (no such directory, or no `@lock` in it).
#define MAPQ_TAIL_ERR_NOT_A_DATA_DIR -2

// The data directory has no such topic.
#define MAPQ_TAIL_ERR_NO_TOPIC -3

// The topic has no such partition.
#define MAPQ_TAIL_ERR_NO_PARTITION -4

// The offset asked for was deleted by retention (the message names the earliest).
#define MAPQ_TAIL_ERR_OFFSET_DELETED -5

// The offset asked for is beyond the end of the log.
#define MAPQ_TAIL_ERR_OFFSET_BEYOND_END -6

// The topic was deleted (while followed, or before).
#define MAPQ_TAIL_ERR_TOPIC_DELETED -7

// The partition was truncated below what was read (a cluster failover): the records
// from `mapq_tail_position` on are gone; the next call goes on from there.
#define MAPQ_TAIL_ERR_TRUNCATED -8

// Damaged files, or an I/O error.
#define MAPQ_TAIL_ERR_IO -9

// A bug in the library (a panic, caught at the boundary).
#define MAPQ_TAIL_ERR_INTERNAL -10

// `mapq_tail_options.from`: the oldest record still stored.
#define MAPQ_TAIL_FROM_EARLIEST 0

// `mapq_tail_options.from`: only records appended from now on.
#define MAPQ_TAIL_FROM_LATEST 1

// `mapq_tail_options.from`: at the offset `from_value`.
#define MAPQ_TAIL_FROM_OFFSET 2

// `mapq_tail_options.from`: at the first record with a timestamp at or after
// `from_value` (ms since the Unix epoch).
#define MAPQ_TAIL_FROM_TIMESTAMP 3

// `mapq_record.flags`: the value was produced as JSON.
#define MAPQ_RECORD_VALUE_JSON 1

// A tailer of one partition (opaque).
typedef struct mapq_tailer mapq_tailer;

// How a tailer reads: the Rust tailer's `TailOptions`. The flags are bytes, 0 for no and
// anything else for yes (so that any FFI can set them).
typedef struct mapq_tail_options {
  // `MAPQ_TAIL_FROM_*`.
  uint32_t from;
  // The offset or timestamp of `MAPQ_TAIL_FROM_OFFSET` / `MAPQ_TAIL_FROM_TIMESTAMP`.
  int64_t from_value;
  // Wait for new records at the end instead of stopping there.
  uint8_t follow;
  // Read only records msync has made durable.
  uint8_t durable_only;
  // Read only records every in-sync replica holds (in a cluster).
  uint8_t replicated_only;
  // Spin while waiting (lowest latency, a core busy) instead of a futex wait.
  uint8_t spin;
  // Jump to the earliest record when unread records were deleted by retention, instead
  // of failing with `MAPQ_TAIL_ERR_OFFSET_DELETED`.
  uint8_t jump_when_deleted;
} mapq_tail_options;

// One record: pointers into the mapping, valid until the next call on its tailer.
typedef struct mapq_record {
  uint64_t offset;
  // Milliseconds since the Unix epoch.
  int64_t timestamp_ms;
  // `NULL` when the record has no key.
  const uint8_t *key;
  size_t key_len;
  // `NULL` when the value is null (a tombstone); an empty value is not `NULL`.
  const uint8_t *value;
  size_t value_len;
  // The headers, encoded; read them with `mapq_record_header`.
  const uint8_t *headers;
  size_t headers_len;
  uint32_t header_count;
  // `MAPQ_RECORD_*` bits.
  uint32_t flags;
} mapq_record;

// One header of a record: pointers into the mapping, as the record's.
typedef struct mapq_header {
  const uint8_t *name;
  size_t name_len;
  // `NULL` when the header's value is null.
  const uint8_t *value;
  size_t value_len;
} mapq_header;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The default options: from the earliest record, not following, a futex wait, failing
// when unread records were deleted.
struct mapq_tail_options mapq_tail_options_default(void);

// Opens partition `partition` of `topic` in the data directory `data_dir` (read-only
// access is enough; the server need not run). `options` may be NULL (the defaults).
// On success `*out` is the tailer, to close with `mapq_tail_close`.
//
// # Safety
// `data_dir` and `topic` are NUL-terminated strings; `options` is NULL or points to
// options; `out` points to writable storage for a pointer.
int32_t mapq_tail_open(const char *data_dir,
                       const char *topic,
                       uint32_t partition,
                       const struct mapq_tail_options *options,
                       struct mapq_tailer **out);

// The next record, into `*out`: `MAPQ_TAIL_OK`; at the end of the log
// `MAPQ_TAIL_END` (not following) or, following, `MAPQ_TAIL_TIMEOUT` once `timeout_ms`
// passed with no record (`-1`: wait as long as it takes; `0`: do not wait). The record's
// pointers are valid until the next call on this tailer.
//
// # Safety
// `t` is a tailer from `mapq_tail_open`, not closed, used by this thread only; `out`
// points to writable storage for a record.
int32_t mapq_tail_next(struct mapq_tailer *t, int64_t timeout_ms, struct mapq_record *out);

// Up to `max` records into `out[0 .. *count)`, for callers that pay per call (an
// interpreter): the first as `mapq_tail_next` returns it (waiting up to `timeout_ms`), the
// others only those readable at once in the same segment, so that every one of them stays
// valid until the next call on this tailer. Returns as `mapq_tail_next` does (`*count` is
// 0 unless `MAPQ_TAIL_OK`); an error after the first record ends the batch, and the next
// call returns it.
//
// # Safety
// As `mapq_tail_next`; `out` points to writable storage for `max` records, and `count` to
// a writable `size_t`.
int32_t mapq_tail_next_batch(struct mapq_tailer *t,
                             int64_t timeout_ms,
                             struct mapq_record *out,
                             size_t max,
                             size_t *count);

// Header `index` (from 0) of `record`, into `*out`: `MAPQ_TAIL_OK`, or
// `MAPQ_TAIL_ERR_ARGUMENT` past the last one. Valid as long as the record.
//
// # Safety
// `record` points to a record `mapq_tail_next` filled, still valid; `out` points to
// writable storage for a header.
int32_t mapq_record_header(const struct mapq_record *record,
                           uint32_t index,
                           struct mapq_header *out);

// The offset of the next record the tailer will return (after `MAPQ_TAIL_ERR_TRUNCATED`,
// where it goes on). 0 for a NULL tailer.
//
// # Safety
// `t` is NULL or a tailer from `mapq_tail_open`, not closed.
uint64_t mapq_tail_position(const struct mapq_tailer *t);

// Closes a tailer (NULL: nothing). Its records' pointers are invalid from then on.
//
// # Safety
// `t` is NULL or a tailer from `mapq_tail_open`, not closed yet.
void mapq_tail_close(struct mapq_tailer *t);

// The message of the last error on the calling thread ("" when there was none yet; a
// successful call leaves it as it was): valid until the thread's next failing call into
// the library.
const char *mapq_tail_error(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* MAPQ_TAIL_H */

"""mapq's local tailer for Python, over the C library libmapq_tail.so (src/capi).

    from mapq_tail import Tailer

    with Tailer("./data", "orders", 0, follow=True) as t:
        for record in t:
            print(record.offset, bytes(record.value))

Records come straight from the partition's memory mapping: `key`, `value` and the headers
are memoryviews of it, not copies. They are valid until the tailer reads on (the next
record, or close); then they are released, and using one raises ValueError. Copy with
bytes() what you keep. A view made from one (a slice, memoryview(view), numpy.frombuffer)
is not released with it: while one lives, the tailer refuses (BufferError) to go past the
batch it came from, or to close, which could unmap what it shows. Following, the wait for the next
record is a futex wait (or a spin) inside the library, with the GIL released. A tailer is
used from the thread that opened it (another thread gets RuntimeError).

The library is found through MAPQ_TAIL_LIBRARY (a path), then next to this package, then
by the system's loader (ctypes.util.find_library).
"""

import ctypes
import ctypes.util
import os
import sys
import threading
import time

__all__ = ["Tailer", "Record", "TailError", "load"]

OK, END, TIMEOUT = 0, 1, 2
ERRORS = {
    -1: "argument",
    -2: "not_a_data_dir",
    -3: "no_topic",
    -4: "no_partition",
    -5: "offset_deleted",
    -6: "offset_beyond_end",
    -7: "topic_deleted",
    -8: "truncated",
    -9: "io",
    -10: "internal",
}
FROM_EARLIEST, FROM_LATEST, FROM_OFFSET, FROM_TIMESTAMP = 0, 1, 2, 3
VALUE_JSON = 1


class _Options(ctypes.Structure):
    _fields_ = [
        ("from_", ctypes.c_uint32),
        ("from_value", ctypes.c_int64),
        ("follow", ctypes.c_uint8),
        ("durable_only", ctypes.c_uint8),
        ("replicated_only", ctypes.c_uint8),
        ("spin", ctypes.c_uint8),
        ("jump_when_deleted", ctypes.c_uint8),
    ]


class _Record(ctypes.Structure):
    _fields_ = [
        ("offset", ctypes.c_uint64),
        ("timestamp_ms", ctypes.c_int64),
        ("key", ctypes.c_void_p),
        ("key_len", ctypes.c_size_t),
        ("value", ctypes.c_void_p),
        ("value_len", ctypes.c_size_t),
        ("headers", ctypes.c_void_p),
        ("headers_len", ctypes.c_size_t),
        ("header_count", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


# A record is nine 64-bit words (its last holds header_count, then flags): a batch is read
# as words, which is several times faster than through ctypes' fields.
_WORDS = ctypes.sizeof(_Record) // 8
if _WORDS != 9 or ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":
    raise ImportError("mapq_tail needs a 64-bit little-endian platform")
_BATCH = 256
_ident = threading.get_ident


class _Header(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("name_len", ctypes.c_size_t),
        ("value", ctypes.c_void_p),
        ("value_len", ctypes.c_size_t),
    ]


# The address space above the first page, as a ctypes array type: each tailer makes one
# object of it (no memory is allocated or touched), and for each batch a read-only view of
# it that its records' views are slices of, at the addresses the library returned. Every
# view derived from a record's (a slice, memoryview(view), an array made from one) keeps
# that batch's view alive, and with it a reference to the object: the tailer counts those
# references before it lets the library go on, and refuses while one remains.
_BASE = 4096
_SPACE = ctypes.c_ubyte * (sys.maxsize - _BASE)


class TailError(Exception):
    """An error of the tailer: `code` (the C code), `kind` (its name), and the message."""

    def __init__(self, code, message):
        super().__init__(f"{ERRORS.get(code, code)}: {message}")
        self.code = code
        self.kind = ERRORS.get(code, str(code))


_lib = None


def load(path=None):
    """Loads libmapq_tail.so (once): `path`, MAPQ_TAIL_LIBRARY, next to this package, or
    wherever the system's loader finds it."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    named = path or os.environ.get("MAPQ_TAIL_LIBRARY")
    if named and not os.path.exists(named):
        raise OSError(f"{named} (the mapq_tail library named) does not exist")
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmapq_tail.so")
    candidates = [path, os.environ.get("MAPQ_TAIL_LIBRARY"), here, ctypes.util.find_library("mapq_tail")]
    name = next((c for c in candidates if c and (os.path.exists(c) or not os.sep in c)), None)
    if name is None:
        raise OSError("libmapq_tail.so not found: build it (cargo build --release -p mapq-tail) "
                      "and set MAPQ_TAIL_LIBRARY to its path")
    lib = ctypes.CDLL(name)  # CDLL: the GIL is released during every call
    lib.mapq_tail_options_default.restype = _Options
    lib.mapq_tail_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32,
                                   ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_void_p)]
    lib.mapq_tail_open.restype = ctypes.c_int32
    lib.mapq_tail_next.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Record)]
    lib.mapq_tail_next.restype = ctypes.c_int32
    lib.mapq_tail_next_batch.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Record),
                                         ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    lib.mapq_tail_next_batch.restype = ctypes.c_int32
    lib.mapq_record_header.argtypes = [ctypes.POINTER(_Record), ctypes.c_uint32, ctypes.POINTER(_Header)]
    lib.mapq_record_header.restype = ctypes.c_int32
    lib.mapq_tail_position.argtypes = [ctypes.c_void_p]
    lib.mapq_tail_position.restype = ctypes.c_uint64
    lib.mapq_tail_close.argtypes = [ctypes.c_void_p]
    lib.mapq_tail_close.restype = None
    lib.mapq_tail_error.restype = ctypes.c_char_p
    _lib = lib
    return lib


class Record:
    """One record: `offset`, `timestamp_ms`, `value_is_json`, and `key`, `value` (memoryviews
    of the mapping, or None for null) and `headers` (a list of (name, value) memoryviews),
    made when first asked for. Valid until the tailer reads on (the next record, or close):
    then its views are released, and asking for them raises ValueError."""

    __slots__ = ("offset", "timestamp_ms", "value_is_json", "_at", "_tailer", "_epoch")

    def __init__(self, tailer, at):
        self.offset = tailer._words[at]
        self.timestamp_ms = tailer._signed[at + 1]
        self.value_is_json = bool((tailer._words[at + 8] >> 32) & VALUE_JSON)
        self._at = at
        self._tailer = tailer
        self._epoch = tailer._epoch

    def _live(self):
        """The tailer, once checked that this record's batch is still the one it holds."""
        t = self._tailer
        if self._epoch != t._epoch:
            raise ValueError("this record was released: the tailer read on (or closed)")
        if t._owner != _ident():
            t._wrong_thread()
        return t

    @property
    def key(self):
        t = self._live()
        return t._view(t._words[self._at + 2], t._words[self._at + 3])

    @property
    def value(self):
        t = self._live()
        return t._view(t._words[self._at + 4], t._words[self._at + 5])

    @property
    def headers(self):
        t = self._live()
        out = []
        h = _Header()
        record = ctypes.cast(ctypes.byref(t._batch, self._at * 8), ctypes.POINTER(_Record))
        for i in range(t._words[self._at + 8] & 0xFFFFFFFF):
            rc = t._lib.mapq_record_header(record, i, ctypes.byref(h))
            if rc != OK:
                raise TailError(rc, t._lib.mapq_tail_error().decode(errors="replace"))
            out.append((t._view(h.name, h.name_len), t._view(h.value, h.value_len)))
        return out

    def __repr__(self):
        return f"Record(offset={self.offset}, timestamp_ms={self.timestamp_ms})"


class Tailer:
    """A tailer of one partition, read-only, straight from the data directory's files.

    `start`: "earliest" (default), "latest", or an offset (int); `timestamp_ms`: start at
    the first record at or after it instead. `follow`: wait at the end for new records
    (iteration then never ends; `next(timeout)` returns None when none came in time).

    A tailer belongs to the thread that opened it, as an sqlite3 connection does: used from
    another thread, it raises RuntimeError. (Every check that keeps a view from outliving
    the mapping then costs no lock.)
    """

    def __init__(self, data_dir, topic, partition=0, *, follow=False, start="earliest",
                 timestamp_ms=None, durable_only=False, replicated_only=False, spin=False,
                 jump_when_deleted=False, library=None):
        self._handle = None
        self._lib = load(library)
        o = self._lib.mapq_tail_options_default()
        if timestamp_ms is not None:
            o.from_, o.from_value = FROM_TIMESTAMP, int(timestamp_ms)
        elif start == "earliest":
            o.from_ = FROM_EARLIEST
        elif start == "latest":
            o.from_ = FROM_LATEST
        elif isinstance(start, int):
            o.from_, o.from_value = FROM_OFFSET, start
        else:
            raise ValueError(f"start must be 'earliest', 'latest' or an offset, not {start!r}")
        o.follow, o.durable_only, o.replicated_only = follow, durable_only, replicated_only
        o.spin, o.jump_when_deleted = spin, jump_when_deleted
        self._follow = follow
        self._owner = _ident()
        self._batch = (_Record * _BATCH)()
        self._words = memoryview(self._batch).cast("B").cast("Q")
        self._signed = memoryview(self._batch).cast("B").cast("q")
        self._count = ctypes.c_size_t(0)
        self._count_ref = ctypes.byref(self._count)
        self._n = self._i = 0
        # Every view handed out since the last record, released before the next one; and
        # a count of those releases (a record made before one is stale).
        self._views = []
        self._epoch = 0
        # See _SPACE: the object, and the batch's view of it.
        self._space = _SPACE.from_address(_BASE)
        self._region = None
        handle = ctypes.c_void_p()
        rc = self._lib.mapq_tail_open(os.fsencode(data_dir), topic.encode(), partition,
                                      ctypes.byref(o), ctypes.byref(handle))
        if rc != OK:
            raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))
        self._handle = handle

    def _wrong_thread(self):
        raise RuntimeError("a Tailer is used only from the thread that opened it (open one "
                           "per thread)")

    def _view(self, address, length):
        if not address:
            return None
        at = address - _BASE
        v = self._region[at:at + length]
        self._views.append(v)
        return v

    def _release_views(self):
        """Releases every view handed out, before the next record. A view that cannot be
        released (something holds its buffer, as pickle.PickleBuffer does) stops the tailer
        here: reading on could leave that view on unmapped memory."""
        views = self._views
        self._epoch += 1
        if not views:
            return
        kept = []
        for v in views:
            try:
                v.release()
            except BufferError:
                kept.append(v)
        views[:] = kept
        if kept:
            raise BufferError(
                f"{len(kept)} view(s) of the last record are still in use (something holds "
                "their buffer): copy (bytes(...)) what you keep, then drop them")

    def _map(self, n):
        """Takes a batch of `n` records the library filled: a new read-only view of the
        address space for its records' views."""
        whole = memoryview(self._space)
        readonly = whole.toreadonly()
        self._region = readonly.cast("B")
        readonly.release()
        whole.release()
        self._n, self._i = n, 0

    def _release(self):
        """Releases the views handed out and the batch's view, before a call into the
        library (which may unmap what they show). Refuses (BufferError) while a view made
        from one of them lives on: a slice, memoryview(view), an array made from one."""
        self._release_views()
        self._n = self._i = 0
        if self._region is not None:
            self._region.release()
            self._region = None
        # Two references: the attribute and getrefcount's argument. A third is a view of
        # the batch that something still holds.
        if sys.getrefcount(self._space) > 2:
            raise BufferError(
                "a view made from a record's (a slice, memoryview(view), an array made from "
                "one) is still alive: the tailer does not read on, which could unmap what it "
                "shows, until it is dropped (copy with bytes() what you keep)")

    def _refill(self, timeout):
        """Releases everything and fills the batch: True, or False at the end / after
        `timeout` seconds."""
        self._release()
        if self._handle is None:
            raise ValueError("the tailer is closed")
        # A batch the library filled, whose call was interrupted (Ctrl-C) before it was
        # taken: the library sets the count last, and it is zeroed once taken.
        n = self._count.value
        if n:
            self._count.value = 0
            self._map(n)
            return True
        # Waits as long as asked, but in slices of 200 ms, so that the interpreter runs its
        # signal handlers (Ctrl-C) in between.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            rc = self._lib.mapq_tail_next_batch(self._handle, int(left * 1000), self._batch,
                                                _BATCH, self._count_ref)
            if rc == OK:
                n = self._count.value
                self._count.value = 0
                self._map(n)
                return True
            if rc == END:
                return False
            if rc != TIMEOUT:
                raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def next(self, timeout=None):
        """The next record; None at the end (not following) or when `timeout` seconds
        passed without one (following; None: wait as long as it takes). Releases the views
        of the record before."""
        if self._owner != _ident():
            self._wrong_thread()
        self._release_views()
        i = self._i
        if i >= self._n:
            if not self._refill(timeout):
                return None
            i = 0
        self._i = i + 1
        return Record(self, i * _WORDS)

    @property
    def position(self):
        """The offset of the next record it will return."""
        if self._owner != _ident():
            self._wrong_thread()
        if self._handle is None:
            raise ValueError("the tailer is closed")
        if self._i < self._n:
            return self._words[self._i * _WORDS]
        return self._lib.mapq_tail_position(self._handle)

    def values(self, timeout=None):
        """The fast path: (offset, value) pairs, the value a memoryview of the mapping (None
        for a null value), released when the tailer reads on, as a record's are. Stops at
        the end (not following) or, following, once `timeout` seconds passed without a
        record (None: never)."""
        words, views, owner = self._words, self._views, self._owner
        while True:
            if _ident() != owner:
                self._wrong_thread()
            # _release_views, inline for its common case: one view, released.
            self._epoch += 1
            if views:
                if len(views) == 1:
                    try:
                        views[0].release()
                        views.clear()
                    except BufferError:
                        self._release_views()
                else:
                    self._release_views()
            i = self._i
            if i >= self._n:
                if not self._refill(timeout):
                    return
                i = 0
            self._i = i + 1
            at = i * _WORDS
            address = words[at + 4]
            if address:
                start = address - _BASE
                value = self._region[start:start + words[at + 5]]
                views.append(value)
                yield words[at], value
            else:
                yield words[at], None

    def __iter__(self):
        owner = self._owner
        while True:
            # next(), inline.
            if _ident() != owner:
                self._wrong_thread()
            self._release_views()
            i = self._i
            if i >= self._n:
                if not self._refill(None):
                    if self._follow:
                        continue
                    return
                i = 0
            self._i = i + 1
            yield Record(self, i * _WORDS)

    def close(self):
        """Releases the views handed out, and closes the tailer (once)."""
        if self._owner != _ident():
            self._wrong_thread()
        self._close()

    def _close(self):
        if self._handle is None:
            return
        self._release()
        self._lib.mapq_tail_close(self._handle)
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Nothing else can hold the tailer now, so any thread may close it. While a view
        # made from a record's lives on, it is not closed (BufferError): its mapping stays.
        try:
            self._close()
        except Exception:
            pass

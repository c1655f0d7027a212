"""mapq's local tailer for Python, over the C library libmapq_tail.so (src/capi).

    from mapq_tail import Tailer

    with Tailer("./data", "orders", 0, follow=True) as t:
        for record in t:
            print(record.offset, bytes(record.value))

Records come straight from the partition's memory mapping: `key`, `value` and the headers
are memoryviews of it, not copies. They are valid until the next record is read; then they
are released, and using one raises ValueError (copy with bytes() what you keep; a slice or
a cast of a view is a view of the same memory, and must not be kept either). Following, the
wait for the next record is a futex wait (or a spin) inside the library, with the GIL
released.

The library is found through MAPQ_TAIL_LIBRARY (a path), then next to this package, then
by the system's loader (ctypes.util.find_library).
"""

import ctypes
import ctypes.util
import os

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
        ("follow", ctypes.c_bool),
        ("durable_only", ctypes.c_bool),
        ("replicated_only", ctypes.c_bool),
        ("spin", ctypes.c_bool),
        ("jump_when_deleted", ctypes.c_bool),
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
assert _WORDS == 9 and ctypes.sizeof(ctypes.c_void_p) == 8, "a 64-bit platform"
_BATCH = 256


class _Header(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("name_len", ctypes.c_size_t),
        ("value", ctypes.c_void_p),
        ("value_len", ctypes.c_size_t),
    ]


# A read-only memoryview of memory the library owns, made in one call (no copy).
_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_from_memory.restype = ctypes.py_object
_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PyBUF_READ = 0x100


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
    made when first asked for. Valid until the next record is read."""

    __slots__ = ("offset", "timestamp_ms", "value_is_json", "_key", "_key_len", "_value",
                 "_value_len", "_header_count", "_raw", "_at", "_views", "_lib")

    def __init__(self, words, at, batch, lib):
        self.offset = words[at]
        ts = words[at + 1]
        self.timestamp_ms = ts - (1 << 64) if ts >= 1 << 63 else ts
        self._key, self._key_len = words[at + 2], words[at + 3]
        self._value, self._value_len = words[at + 4], words[at + 5]
        last = words[at + 8]
        self._header_count = last & 0xFFFFFFFF
        self.value_is_json = bool((last >> 32) & VALUE_JSON)
        self._raw = batch  # the record is at word `at` of it (for its headers)
        self._at = at
        self._views = []
        self._lib = lib

    def _view(self, address, length):
        if not address:
            return None
        if self._views is None:
            raise ValueError("this record was released: the next one was read")
        v = _from_memory(address, length, _PyBUF_READ)
        self._views.append(v)
        return v

    @property
    def key(self):
        return self._view(self._key, self._key_len)

    @property
    def value(self):
        return self._view(self._value, self._value_len)

    @property
    def headers(self):
        out = []
        h = _Header()
        for i in range(self._header_count):
            if self._views is None:
                raise ValueError("this record was released: the next one was read")
            record = ctypes.cast(ctypes.byref(self._raw, self._at * 8), ctypes.POINTER(_Record))
            rc = self._lib.mapq_record_header(record, i, ctypes.byref(h))
            if rc != OK:
                raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))
            out.append((self._view(h.name, h.name_len), self._view(h.value, h.value_len)))
        return out

    def _release(self):
        for v in self._views or ():
            v.release()
        self._views = None

    def __repr__(self):
        return f"Record(offset={self.offset}, timestamp_ms={self.timestamp_ms})"


class Tailer:
    """A tailer of one partition, read-only, straight from the data directory's files.

    `start`: "earliest" (default), "latest", or an offset (int); `timestamp_ms`: start at
    the first record at or after it instead. `follow`: wait at the end for new records
    (iteration then never ends; `next(timeout)` returns None when none came in time).
    """

    def __init__(self, data_dir, topic, partition=0, *, follow=False, start="earliest",
                 timestamp_ms=None, durable_only=False, replicated_only=False, spin=False,
                 jump_when_deleted=False, library=None):
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
        self._handle = ctypes.c_void_p()
        self._batch = (_Record * _BATCH)()
        self._words = memoryview(self._batch).cast("B").cast("Q")
        self._count = ctypes.c_size_t(0)
        self._n = self._i = 0
        self._last = None
        rc = self._lib.mapq_tail_open(os.fsencode(data_dir), topic.encode(), partition,
                                      ctypes.byref(o), ctypes.byref(self._handle))
        if rc != OK:
            raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))

    def next(self, timeout=None):
        """The next record; None at the end (not following) or when `timeout` seconds
        passed without one (following; None: wait as long as it takes). Releases the views
        of the record before."""
        if self._handle is None:
            raise ValueError("the tailer is closed")
        if self._last is not None:
            self._last._release()
            self._last = None
        if self._i >= self._n:
            # A batch: the records the library can give at once, all valid until its next
            # call, which comes only once each of them was released.
            ms = -1 if timeout is None else max(0, int(timeout * 1000))
            rc = self._lib.mapq_tail_next_batch(self._handle, ms, self._batch, _BATCH,
                                                ctypes.byref(self._count))
            if rc in (END, TIMEOUT):
                return None
            if rc != OK:
                raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))
            self._n, self._i = self._count.value, 0
        i = self._i
        self._i = i + 1
        r = Record(self._words, i * _WORDS, self._batch, self._lib)
        self._last = r
        return r

    @property
    def position(self):
        """The offset of the next record it will return."""
        if self._i < self._n:
            return self._words[self._i * _WORDS]
        return self._lib.mapq_tail_position(self._handle)

    def values(self, timeout=None):
        """The fast path: (offset, value) pairs, the value a memoryview of the mapping (None
        for a null value), released when the next pair is made, as a record's are. Stops at
        the end (not following) or, following, once `timeout` seconds passed without a
        record (None: never)."""
        if self._last is not None:
            self._last._release()
            self._last = None
        words, batch, count = self._words, self._batch, self._count
        lib, handle, from_memory = self._lib, self._handle, _from_memory
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        view = None
        try:
            while True:
                if self._i >= self._n:
                    if view is not None:
                        view.release()
                        view = None
                    rc = lib.mapq_tail_next_batch(handle, ms, batch, _BATCH, ctypes.byref(count))
                    if rc in (END, TIMEOUT):
                        return
                    if rc != OK:
                        raise TailError(rc, lib.mapq_tail_error().decode(errors="replace"))
                    self._n, self._i = count.value, 0
                at = self._i * _WORDS
                self._i += 1
                if view is not None:
                    view.release()
                address = words[at + 4]
                view = from_memory(address, words[at + 5], _PyBUF_READ) if address else None
                yield words[at], view
        finally:
            if view is not None:
                view.release()

    def __iter__(self):
        while True:
            r = self.next()
            if r is None:
                if self._follow:
                    continue
                return
            yield r

    def close(self):
        if self._last is not None:
            self._last._release()
            self._last = None
        if self._handle is not None:
            self._lib.mapq_tail_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

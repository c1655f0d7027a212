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


_Bytes = ctypes.POINTER(ctypes.c_uint8)


class _Record(ctypes.Structure):
    _fields_ = [
        ("offset", ctypes.c_uint64),
        ("timestamp_ms", ctypes.c_int64),
        ("key", _Bytes),
        ("key_len", ctypes.c_size_t),
        ("value", _Bytes),
        ("value_len", ctypes.c_size_t),
        ("headers", _Bytes),
        ("headers_len", ctypes.c_size_t),
        ("header_count", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class _Header(ctypes.Structure):
    _fields_ = [
        ("name", _Bytes),
        ("name_len", ctypes.c_size_t),
        ("value", _Bytes),
        ("value_len", ctypes.c_size_t),
    ]


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
    lib.mapq_record_header.argtypes = [ctypes.POINTER(_Record), ctypes.c_uint32, ctypes.POINTER(_Header)]
    lib.mapq_record_header.restype = ctypes.c_int32
    lib.mapq_tail_position.argtypes = [ctypes.c_void_p]
    lib.mapq_tail_position.restype = ctypes.c_uint64
    lib.mapq_tail_close.argtypes = [ctypes.c_void_p]
    lib.mapq_tail_close.restype = None
    lib.mapq_tail_error.restype = ctypes.c_char_p
    _lib = lib
    return lib


def _view(ptr, length):
    """A read-only memoryview of `length` bytes at `ptr` (None for a null pointer)."""
    if not ptr:
        return None
    if length == 0:
        return memoryview(b"")
    array = (ctypes.c_uint8 * length).from_address(ctypes.cast(ptr, ctypes.c_void_p).value)
    return memoryview(array).cast("B").toreadonly()


class Record:
    """One record: `offset`, `timestamp_ms`, `key` and `value` (memoryviews, or None for
    null), `headers` (a list of (name, value) memoryviews), `value_is_json`. Valid until
    the next record is read."""

    __slots__ = ("offset", "timestamp_ms", "key", "value", "headers", "value_is_json", "_views")

    def __init__(self, raw, lib):
        self.offset = raw.offset
        self.timestamp_ms = raw.timestamp_ms
        self.value_is_json = bool(raw.flags & VALUE_JSON)
        self.key = _view(raw.key, raw.key_len)
        self.value = _view(raw.value, raw.value_len)
        headers = []
        h = _Header()
        for i in range(raw.header_count):
            rc = lib.mapq_record_header(ctypes.byref(raw), i, ctypes.byref(h))
            if rc != OK:
                raise TailError(rc, lib.mapq_tail_error().decode(errors="replace"))
            headers.append((_view(h.name, h.name_len), _view(h.value, h.value_len)))
        self.headers = headers
        self._views = [v for v in [self.key, self.value] + [x for pair in headers for x in pair] if v is not None]

    def _release(self):
        for v in self._views:
            v.release()
        self._views = []

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
        self._raw = _Record()
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
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        rc = self._lib.mapq_tail_next(self._handle, ms, ctypes.byref(self._raw))
        if rc == OK:
            self._last = Record(self._raw, self._lib)
            return self._last
        if rc in (END, TIMEOUT):
            return None
        raise TailError(rc, self._lib.mapq_tail_error().decode(errors="replace"))

    @property
    def position(self):
        """The offset of the next record it will return."""
        return self._lib.mapq_tail_position(self._handle)

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

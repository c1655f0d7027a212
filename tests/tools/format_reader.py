#!/usr/bin/env python3
"""A reader of one mapq partition's segment files, written from src/log/FORMAT.md alone,
with Python's standard library only: the test suite's check that the document is enough for
a reader in another language (tests/foreign_reader.rs runs it against a live server).

    format_reader.py <partition directory> [--follow]

Prints one JSON line per record: {"offset": n, "timestamp_ms": t, "key_b64": ... or null,
"value_b64": ... or null, "value_json": bool, "headers": [[name_b64, value_b64 or null], ...],
"batch": null or {"record_count", "leader_epoch", "appended_ms", "producer_id", "producer_epoch",
"base_sequence", "key_b64", "request_records", "digest_b64", "positions"}} (format
version 1 or 2).
Without --follow it stops at the end of the log (exit 0). With --follow it waits for more,
polling (a reader without write access cannot join the futex protocol, section 5.1), until
the topic is deleted: then "topic deleted" on stderr and exit 3. A truncation that takes
records it printed away is reported on stderr ("truncated to N: records N to M are gone"),
and it goes on from N. Records that retention
deleted before it read them: a message and exit 4. A format error stops it with a message
naming the file and byte position on stderr and exit 2.
"""

import base64
import json
import mmap
import os
import struct
import sys
import time

HEADER_SIZE = 4096
COMMITTED_END, DURABLE_END, SEALED, DELETED = 64, 128, 192, 320
REPLICATED_END, TRUNCATED_TO, TRUNCATED = 384, 448, 456
FRAME_FIXED = 40
VALUE_JSON, HAS_KEY, VALUE_NULL, BATCH_HEAD = 0x1, 0x2, 0x4, 0x8
KNOWN_ATTRIBUTES = {1: VALUE_JSON | HAS_KEY, 2: VALUE_JSON | HAS_KEY | VALUE_NULL | BATCH_HEAD}
NULL_LEN = 0xFFFFFFFF
BATCH_FIXED = 56
POLL = 0.002


class FormatError(Exception):
    pass


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def segment_path(directory, base):
    return os.path.join(directory, "%020d.log" % base)


def segment_bases(directory):
    """Base offsets of the .log files, oldest first (section 1); None if the directory is gone."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    return sorted(int(n[:20]) for n in names
                  if len(n) == 24 and n.endswith(".log") and n[:20].isdigit())


def identity(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class Segment:
    def __init__(self, directory, base):
        self.path = segment_path(directory, base)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)
            if st.st_size < HEADER_SIZE:
                raise FormatError("%s: shorter than a header" % self.path)
            self.m = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        (magic, version, header_bytes, base_offset, capacity, _created, interval,
         header_crc) = struct.unpack_from("<8sIIQQqII", self.m, 0)
        checks = [
            (magic == b"MAPQSEG\0", "bad magic"),
            (version in KNOWN_ATTRIBUTES, "unknown version %d" % version),
            (header_bytes == HEADER_SIZE, "header_bytes %d" % header_bytes),
            (base_offset == base, "base offset %d does not match the name" % base_offset),
            (capacity == st.st_size, "capacity %d is not the file's length" % capacity),
            (interval > 0, "index_interval_bytes 0"),
            (crc32c(self.m[0:44]) == header_crc, "header CRC mismatch"),
        ]
        for ok, why in checks:
            if not ok:
                raise FormatError("%s: byte 0: %s" % (self.path, why))
        self.base = base
        self.capacity = capacity
        self.version = version

    def u32(self, at):
        return struct.unpack_from("<I", self.m, at)[0]

    def committed_end(self):
        end = struct.unpack_from("<Q", self.m, COMMITTED_END)[0]
        if not (HEADER_SIZE <= end <= self.capacity and end % 8 == 0):
            raise FormatError("%s: byte %d: committed end %d outside the data area"
                              % (self.path, COMMITTED_END, end))
        return end

    def sealed(self):
        return self.u32(SEALED) != 0

    def deleted(self):
        return self.u32(DELETED) != 0

    def truncated_to(self):
        """The end offset after a truncation that took records of this file, or None."""
        if self.version < 2 or self.u32(TRUNCATED) == 0:
            return None
        return struct.unpack_from("<Q", self.m, TRUNCATED_TO)[0]

    def frame(self, pos, end, expected_offset):
        """Decodes the frame at `pos` (section 2.2); returns (record, padded length)."""
        def bad(why):
            return FormatError("%s: byte %d: %s" % (self.path, pos, why))
        if end - pos < FRAME_FIXED:
            raise bad("a frame header crosses the committed end")
        (length, crc, offset, ts, attrs, key_len, value_len,
         header_count) = struct.unpack_from("<IIQqIIII", self.m, pos)
        padded = (length + 7) & ~7
        if length < FRAME_FIXED or pos + padded > end:
            raise bad("frame length %d" % length)
        if attrs & ~KNOWN_ATTRIBUTES[self.version]:
            raise bad("unknown attribute bits 0x%x" % attrs)
        if not attrs & HAS_KEY and key_len != 0:
            raise bad("a null key with a length")
        if attrs & VALUE_NULL and (value_len != 0 or attrs & VALUE_JSON):
            raise bad("a null value with a length or the JSON bit")
        if FRAME_FIXED + key_len + value_len > length:
            raise bad("key and value overrun the frame")
        if any(self.m[pos + length:pos + padded]):
            raise bad("non-zero padding")
        if crc32c(self.m[pos + 16:pos + length]) != crc:
            raise bad("CRC mismatch")
        if offset != expected_offset:
            raise bad("offset %d where %d was expected" % (offset, expected_offset))
        at = pos + FRAME_FIXED
        key = self.m[at:at + key_len] if attrs & HAS_KEY else None
        at += key_len
        value = None if attrs & VALUE_NULL else self.m[at:at + value_len]
        at += value_len
        frame_end = pos + length
        headers = []
        for _ in range(header_count):
            if at + 4 > frame_end:
                raise bad("headers overrun the frame")
            (n,) = struct.unpack_from("<I", self.m, at)
            name = self.m[at + 4:at + 4 + n]
            at += 4 + n
            if at + 4 > frame_end:
                raise bad("headers overrun the frame")
            (n,) = struct.unpack_from("<I", self.m, at)
            at += 4
            if n == NULL_LEN and self.version >= 2:
                headers.append([b64(name), None])
                continue
            if at + n > frame_end:
                raise bad("headers overrun the frame")
            headers.append([b64(name), b64(self.m[at:at + n])])
            at += n
        batch = None
        if attrs & BATCH_HEAD:
            try:
                batch = batch_head(self.m[at:frame_end])
            except ValueError as e:
                raise bad("batch head: %s" % e)
            at = frame_end
        if at != frame_end:
            raise bad("headers do not fill the frame")
        record = {
            "offset": offset,
            "timestamp_ms": ts,
            "key_b64": None if key is None else b64(key),
            "value_b64": None if value is None else b64(value),
            "value_json": bool(attrs & VALUE_JSON),
            "headers": headers,
            "batch": batch,
        }
        return record, padded


def batch_head(block):
    """Decodes and checks a batch head (section 2.3)."""
    if len(block) < BATCH_FIXED:
        raise ValueError("shorter than 56 bytes")
    (head_len, count, leader_epoch, producer_epoch, key_len, producer_id, base_sequence,
     request_records) = struct.unpack_from("<IIIhHqiI", block, 0)
    digest = block[32:48]
    (appended_ms,) = struct.unpack_from("<q", block, 48)
    if head_len != len(block):
        raise ValueError("head_len %d does not fill the frame" % head_len)
    if count < 1:
        raise ValueError("record_count 0")
    producer = (producer_id, producer_epoch, base_sequence)
    if producer != (-1, -1, -1) and min(producer) < 0:
        raise ValueError("producer fields partly set")
    rest = block[BATCH_FIXED:]
    positions = None
    if key_len == 0:
        if request_records != 0 or any(digest) or rest:
            raise ValueError("request fields without a key")
        key = None
    else:
        if len(rest) < key_len:
            raise ValueError("the key overruns the block")
        key, rest = rest[:key_len], rest[key_len:]
        if request_records < count:
            raise ValueError("request_records below record_count")
        if rest:
            if len(rest) != 4 * count:
                raise ValueError("positions do not match record_count")
            positions = list(struct.unpack_from("<%dI" % count, rest, 0))
            if any(p >= request_records for p in positions) or any(
                    a >= b for a, b in zip(positions, positions[1:])):
                raise ValueError("positions out of order or range")
    return {
        "record_count": count,
        "leader_epoch": leader_epoch,
        "appended_ms": appended_ms,
        "producer_id": producer_id,
        "producer_epoch": producer_epoch,
        "base_sequence": base_sequence,
        "key_b64": None if key is None else b64(key),
        "request_records": request_records,
        "digest_b64": b64(digest),
        "positions": positions,
    }


def b64(data):
    return base64.b64encode(data).decode("ascii")


class TopicDeleted(Exception):
    pass


class RecordsLost(Exception):
    """Retention deleted records this reader had not read yet (section 5)."""


def read(directory, follow):
    bases = segment_bases(directory)
    if bases is None:
        raise TopicDeleted()
    while not bases:
        if not follow:
            return
        time.sleep(POLL)
        bases = segment_bases(directory)
        if bases is None:
            raise TopicDeleted()
    seg = Segment(directory, bases[0])
    pos, next_offset = HEADER_SIZE, bases[0]
    while True:
        end = seg.committed_end()
        while pos < end:
            record, padded = seg.frame(pos, end, next_offset)
            print(json.dumps(record), flush=True)
            pos += padded
            next_offset += 1
        # At the committed end (section 5).
        if seg.deleted():
            # The end loaded after the word is final: read up to it, then stop.
            if seg.committed_end() != end:
                continue
            raise TopicDeleted()
        to = seg.truncated_to()
        if to is not None:
            # Section 5.3: find the next offset again from the directory, once the file that
            # replaces this one has its name.
            found = find_after_truncation(directory, min(next_offset, to))
            if found is None:
                if not follow:
                    return
                time.sleep(POLL)
                continue
            if next_offset > to:
                print("truncated to %d: records %d to %d are gone" % (to, to, next_offset - 1),
                      file=sys.stderr, flush=True)
            seg, pos = found
            next_offset = min(next_offset, to)
            continue
        if seg.sealed():
            if seg.committed_end() != end:
                continue
            # Finished: on to the segment whose base offset is the next offset (the same
            # name again when this one was sealed empty: its replacement is a new file).
            nxt = segment_path(directory, next_offset)
            ident = identity(nxt)
            if ident is not None and (nxt != seg.path or ident != seg.identity):
                seg, pos = Segment(directory, next_offset), HEADER_SIZE
                continue
            bases = segment_bases(directory)
            if bases is None:
                raise TopicDeleted()
            if bases and bases[0] > next_offset:
                raise RecordsLost(next_offset, bases[0])
        else:
            if not follow:
                return
            # A newer file while this one is not sealed (a crash): finished once every frame
            # below a committed end loaded after seeing that file is read.
            nxt = segment_path(directory, next_offset)
            if nxt != seg.path and identity(nxt) is not None:
                if seg.committed_end() == end:
                    seg, pos = Segment(directory, next_offset), HEADER_SIZE
                continue
            # The file replaced or gone while not sealed: the topic was deleted (perhaps
            # created again); never read on from a file that is not ours.
            # (Or replaced by a truncation's copy: look at the mark after the identity.)
            if identity(seg.path) != seg.identity:
                if seg.truncated_to() is None:
                    raise TopicDeleted()
                continue
        if not follow:
            return
        time.sleep(POLL)


def find_after_truncation(directory, target):
    """The segment holding offset `target` (or ending at it) and the position of that
    offset, from a file not itself truncated; None while the replacement is not in place."""
    bases = segment_bases(directory)
    if bases is None:
        raise TopicDeleted()
    older = [b for b in bases if b <= target]
    if not older:
        if bases:
            raise RecordsLost(target, bases[0])
        raise TopicDeleted()
    seg = Segment(directory, older[-1])
    if seg.truncated_to() is not None:
        return None
    end, pos, offset = seg.committed_end(), HEADER_SIZE, seg.base
    while pos < end and offset < target:
        _, padded = seg.frame(pos, end, offset)
        pos += padded
        offset += 1
    if offset != target:
        return None
    return seg, pos


def main():
    args = sys.argv[1:]
    follow = "--follow" in args
    paths = [a for a in args if a != "--follow"]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 64
    try:
        read(paths[0], follow)
    except TopicDeleted:
        print("topic deleted", file=sys.stderr)
        return 3
    except FormatError as e:
        print("format error: %s" % e, file=sys.stderr)
        return 2
    except RecordsLost as e:
        print("records %d to %d were deleted by retention before they were read" % e.args,
              file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())

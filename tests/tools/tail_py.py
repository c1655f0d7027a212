"""A Python program on mapq's Python tailer (src/capi/python), for tests/tail_ffi.rs. The
same modes and output as tail_c.c:

    tail_py.py follow DATA_DIR TOPIC PARTITION COUNT
    tail_py.py errors DATA_DIR TOPIC
    tail_py.py deleted DATA_DIR TOPIC
    tail_py.py values DATA_DIR TOPIC PARTITION       (Tailer.values(): "offset value" lines)
"""

import pickle
import sys
import threading

from mapq_tail import Tailer, TailError


def hexed(view):
    return "-" if view is None else "x" + bytes(view).hex()


def follow(data_dir, topic, partition, count):
    with Tailer(data_dir, topic, partition, follow=True) as t:
        seen, idle = 0, 0
        previous = None
        while seen < count:
            r = t.next(timeout=0.1)
            if previous is not None:
                # The last record's views were released by this call: using one fails.
                try:
                    bytes(previous)
                    raise SystemExit("a record's value was still readable after the next call")
                except ValueError:
                    pass
                previous = None
            if r is None:
                idle += 1
                if idle > 600:
                    raise SystemExit(f"no record for 60 s after {seen}")
                continue
            idle = 0
            headers = ",".join(f"{hexed(n)}={hexed(v)}" for n, v in r.headers)
            json = "j" if r.value_is_json else ""
            print(f"{r.offset} {r.timestamp_ms} {hexed(r.key)} {json}{hexed(r.value)} {headers}")
            if r.value is not None:
                previous = r.value
            seen += 1
    sys.stdout.flush()


def values(data_dir, topic, partition):
    """Tailer.values(), not following: "offset value" lines; each view released at the next."""
    previous = None
    with Tailer(data_dir, topic, partition) as t:
        for offset, value in t.values():
            if previous is not None:
                try:
                    bytes(previous)
                    raise SystemExit("a value was still readable after the next one")
                except ValueError:
                    pass
            print(f"{offset} {hexed(value)}")
            previous = value
    sys.stdout.flush()


def try_open(what, data_dir, topic, partition):
    try:
        Tailer(data_dir, topic, partition).close()
        print(f"{what} 0 ")
    except TailError as e:
        print(f"{what} {e.code} {e}")


def errors(data_dir, topic):
    try_open("not_a_data_dir", "/proc/self", topic, 0)
    try_open("no_topic", data_dir, "no-such-topic", 0)
    try_open("no_partition", data_dir, topic, 99)
    try:
        Tailer(data_dir, topic, 0, start=1_000_000)
        print("beyond_end 0 ")
    except TailError as e:
        print(f"beyond_end {e.code} {e}")
    with Tailer(data_dir, topic, 0, start=2) as t:
        offsets = [r.offset for r in t]
        print(f"from_offset {len(offsets)} {offsets[0] if offsets else -1}")
    with Tailer(data_dir, topic, 0, follow=True, start="latest") as t:
        print(f"latest_no_wait {t.next(timeout=0) is None} {t.position}")
    # A record asked for after the tailer read on, and a closed tailer.
    t = Tailer(data_dir, topic, 0)
    first = t.next()
    t.next()
    try:
        first.value
        print("stale_record readable")
    except ValueError:
        print("stale_record refused")
    # Something holding a view's buffer keeps the tailer from reading on, until it lets go.
    with Tailer(data_dir, topic, 0) as held:
        holder = pickle.PickleBuffer(held.next().value)
        try:
            held.next()
            print("held_view read_on")
        except BufferError:
            holder.release()
            print(f"held_view refused {held.next().offset}")
    # A view made from a record's (a slice, memoryview(view), what numpy.frombuffer keeps)
    # outlives the record: the tailer reads on within its batch, refuses to go past it
    # (the library could unmap what the view shows), and goes on once it is dropped.
    with Tailer(data_dir, topic, 0) as derived:
        derived.next()
        derived.next()
        kept = derived.next().value[1:]  # offset 2: 3 bytes
        seen = []
        try:
            while (r := derived.next()) is not None:
                seen.append(r.offset)
            print("derived_view read_on")
        except BufferError:
            copy = bytes(kept)
            del kept
            rest = derived.next()
            print(f"derived_view refused {seen} {len(copy)} {rest}")
    # The same for memoryview(view); and close() refuses while such a view lives.
    with Tailer(data_dir, topic, 0) as wrapping:
        wrapped = memoryview(wrapping.next().value)
        try:
            while wrapping.next() is not None:
                pass
            print("wrapped_view read_on")
        except BufferError:
            del wrapped
            print(f"wrapped_view refused {wrapping.next()}")
    closing = Tailer(data_dir, topic, 0)
    kept = closing.next().value[:1]
    try:
        closing.close()
        print("close_with_view closed")
    except BufferError:
        del kept
        closing.close()
        print("close_with_view refused")
    # A tailer and its records are used only from the thread that opened it.
    third = t.next()
    outcome = []

    def elsewhere():
        for what in (t.next, lambda: third.value, t.close):
            try:
                what()
                outcome.append("used")
            except RuntimeError:
                outcome.append("refused")

    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join()
    with Tailer(data_dir, topic, 0, start=2) as again:
        same = bytes(third.value) == bytes(again.next().value)
    print(f"other_thread {' '.join(outcome)} {same}")
    t.close()
    try:
        t.next()
        print("closed readable")
    except ValueError:
        print("closed refused")


def deleted(data_dir, topic):
    with Tailer(data_dir, topic, 0, follow=True) as t:
        print("ready", flush=True)
        for _ in range(600):
            try:
                t.next(timeout=0.1)
            except TailError as e:
                print(f"deleted {e.code} {e}")
                return
    print("deleted 0 never")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "follow":
        follow(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "values":
        values(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "errors":
        errors(sys.argv[2], sys.argv[3])
    elif mode == "deleted":
        deleted(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")

"""The Python tailer's side of benches/tail_latency.rs (src/capi/python over
libmapq_tail.so). Prints "ready", then:
    tail_py.py latency spin|block DATA_DIR N   "p50 p99 p999 max" of the one-way latency, ns
    tail_py.py throughput DATA_DIR [records|values]
                                                "records ns" to read the whole log once, as
                                                Record objects or with Tailer.values()
"""

import sys
import time

from mapq_tail import Tailer


def latency(wait, data_dir, n):
    t = Tailer(data_dir, "t", 0, follow=True, start="latest", spin=(wait == "spin"))
    print("ready", flush=True)
    lat = [0] * n
    now = time.monotonic_ns
    for i in range(n):
        r = t.next()
        sent = int.from_bytes(r.value[:8], "little")
        lat[i] = max(1, now() - sent)
    lat.sort()
    print(lat[n // 2], lat[n * 99 // 100], lat[n * 999 // 1000], lat[-1], flush=True)


def throughput(data_dir, api):
    t = Tailer(data_dir, "t", 0)
    print("ready", flush=True)
    start = time.monotonic_ns()
    n = total = 0
    if api == "values":
        for _, value in t.values():
            total += value[0]
            n += 1
    else:
        for r in t:
            total += r.value[0]
            n += 1
    print(n, time.monotonic_ns() - start, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "latency":
        latency(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        throughput(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "records")

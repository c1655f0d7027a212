#!/usr/bin/env python3
"""A worker of a mapq queue group, written against API.md only (the standard library, no
mapq code). It leases records and acks each by its value: "ok-*" accepted, "flaky-*"
released (always: it fails every time), "bad-*" rejected. With HOLD=1 it leases once,
says so, and holds its leases without acking (to be killed holding them).

    queue_worker.py BASE_URL GROUP MEMBER MAX_RECORDS PACE_MS HOLD

It prints one JSON object per line for each delivery it gets and each ack result, flushed,
for the test to check; acks are retried, as they are, while the server is down.
"""

import json
import sys
import time
import urllib.error
import urllib.request

base, group, member, max_records, pace_ms, hold = sys.argv[1:7]
max_records = int(max_records)
pace = int(pace_ms) / 1000.0
RETRY_FOR = 60.0


def log(event, **fields):
    fields.update({"event": event, "member": member, "t": time.time()})
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def call(path, body):
    """POST, retried while the server is unreachable or unavailable (a restart)."""
    data = json.dumps(body).encode()
    deadline = time.time() + RETRY_FOR
    while True:
        req = urllib.request.Request(base + path, data=data, method="POST")
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code >= 500 and time.time() < deadline:
                time.sleep(0.05)
                continue
            log("error", status=e.code, body=e.read().decode(errors="replace"))
            sys.exit(3)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if time.time() >= deadline:
                raise
            log("retry", path=path)
            time.sleep(0.05)


def kind(value):
    if value.startswith("ok-"):
        return {"type": "accept"}
    if value.startswith("flaky-"):
        return {"type": "release"}
    return {"type": "reject"}


while True:
    got = call(f"/v1/groups/{group}/leases", {"member": member, "max_records": max_records, "wait_ms": 500})
    records = got["records"]
    for r in records:
        log("delivered", value=r["value"], delivery=r["delivery"], partition=r["partition"], offset=r["offset"])
    if hold == "1" and records:
        log("holding", leases=len(records))
        time.sleep(3600)
    if not records:
        continue
    acks = [dict(kind(r["value"]), lease=r["lease"]) for r in records]
    time.sleep(pace)
    answer = call(f"/v1/groups/{group}/acks", {"acks": acks})
    for r, a, res in zip(records, acks, answer["results"]):
        log("acked", value=r["value"], type=a["type"], delivery=r["delivery"], status=res["status"], repeat=res["repeat"])

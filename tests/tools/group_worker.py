#!/usr/bin/env python3
"""A worker of a mapq consumer group with members, written against API.md only (the
standard library, no mapq code): it joins, fetches the records of the partitions it owns,
copies each aligned chunk of CHUNK records to an output topic with an Idempotency-Key
naming the chunk, then commits the chunk's end as the member. A chunk copied twice (after a
crash, a fence or a move) is answered from the first copy, so the output holds each record
once.

    group_worker.py BASE_URL GROUP MEMBER IN_TOPIC OUT_TOPIC PACE_MS

It prints one JSON object per line to stdout for each thing it does ("joined", "produced",
"committed", "refused", "revoked", ...), flushed, for the test to follow. It never stops by
itself: the test stops it (SIGTERM: it leaves the group; SIGKILL: it does not).
"""

import json
import signal
import sys
import time
import urllib.error
import urllib.request

CHUNK = 100
HEARTBEAT_EVERY = 0.3
RETRY_FOR = 60.0

base, group, member, in_topic, out_topic, pace_ms = sys.argv[1:7]
pace = int(pace_ms) / 1000.0


def log(event, **fields):
    fields.update({"event": event, "member": member, "t": time.time()})
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Refused(Exception):
    def __init__(self, status, code):
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


def call(method, path, body=None, headers=None):
    """One request; retried while the server is unreachable or unavailable (a restart).
    An answer in 4xx raises Refused with its code."""
    data = None if body is None else json.dumps(body).encode()
    deadline = time.time() + RETRY_FOR
    while True:
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return (json.loads(raw) if raw else None), resp.headers
        except urllib.error.HTTPError as e:
            raw = e.read()
            if e.code >= 500 and time.time() < deadline:
                time.sleep(0.1)
                continue
            try:
                code = json.loads(raw)["error"]["code"]
            except Exception:
                code = "?"
            raise Refused(e.code, code)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if time.time() >= deadline:
                raise
            time.sleep(0.1)


class Worker:
    def __init__(self):
        self.epoch = 0
        self.owned = set()
        # Per partition: (first offset of the chunk being gathered, its values).
        self.chunks = {}
        self.next_beat = 0.0

    def heartbeat(self):
        for _ in range(8):
            owned = [{"topic": t, "partition": p} for (t, p) in sorted(self.owned)]
            body = {"topics": [in_topic], "member_epoch": self.epoch, "owned": owned}
            try:
                a, _ = call("PUT", f"/v1/groups/{group}/members/{member}", body)
            except Refused as r:
                if r.code != "fenced_member":
                    raise
                log("refused", call="heartbeat", code=r.code, epoch=self.epoch)
                self.rejoin()
                continue
            joined = self.epoch == 0
            self.epoch = a["member_epoch"]
            assigned = {(x["topic"], x["partition"]) for x in a["assignment"]}
            revoke = {(x["topic"], x["partition"]) for x in a["revoke"]}
            if joined:
                log("joined", epoch=self.epoch, assignment=sorted(assigned))
            for tp in set(self.chunks) - assigned:
                # Not committed: the partition's next owner starts at the committed offset.
                del self.chunks[tp]
            self.owned = assigned
            self.next_beat = time.time() + HEARTBEAT_EVERY
            if not revoke:
                return
            log("revoked", partitions=sorted(revoke))

    def rejoin(self):
        self.epoch = 0
        self.owned = set()
        self.chunks = {}

    def take(self, r):
        """Adds a record to its partition's chunk; returns the chunk when it is whole."""
        tp = (r["topic"], r["partition"])
        offset = r["offset"]
        start, values = self.chunks.get(tp, (None, []))
        if start is None:
            if offset % CHUNK != 0:
                log("error", why="a partition starts off a chunk boundary", tp=tp, offset=offset)
                sys.exit(3)
            start = offset
        expected = start + len(values)
        if offset < expected:
            return None  # Served again (the server restarted): already taken.
        if offset > expected:
            log("error", why="a gap", tp=tp, offset=offset, expected=expected)
            sys.exit(3)
        values.append(r["value"])
        self.chunks[tp] = (start, values)
        if len(values) < CHUNK:
            return None
        del self.chunks[tp]
        return tp, start, values

    def copy(self, tp, start, values):
        topic, partition = tp
        key = f"{topic}-{partition}-{start}"
        body = {"records": [{"value": v} for v in values]}
        _, headers = call(
            "POST", f"/v1/topics/{out_topic}/records", body, {"Idempotency-Key": key}
        )
        log("produced", key=key, replayed=headers.get("Idempotent-Replayed") == "true")
        # The pause of a slow worker, between its work and its commit.
        time.sleep(pace)
        log("committing", key=key)
        offsets = [{"topic": topic, "partition": partition, "offset": start + len(values)}]
        try:
            call(
                "PUT",
                f"/v1/groups/{group}/offsets",
                {"offsets": offsets, "member": member, "member_epoch": self.epoch},
            )
        except Refused as r:
            log("refused", call="commit", code=r.code, key=key, epoch=self.epoch)
            self.rejoin()
            return False
        log("committed", key=key)
        return True

    def run(self):
        self.heartbeat()
        while True:
            if time.time() >= self.next_beat:
                self.heartbeat()
            try:
                got, headers = call(
                    "GET", f"/v1/groups/{group}/members/{member}/records?max_records=500&wait_ms=200"
                )
            except Refused as r:
                if r.code not in ("fenced_member", "unknown_member"):
                    raise
                log("refused", call="fetch", code=r.code, epoch=self.epoch)
                self.rejoin()
                self.heartbeat()
                continue
            if headers.get("X-Mapq-Heartbeat-Now") == "true":
                self.next_beat = 0.0
            for r in got["records"]:
                whole = self.take(r)
                if whole and not self.copy(*whole):
                    self.heartbeat()
                    break


def leave(*_):
    try:
        call("DELETE", f"/v1/groups/{group}/members/{member}")
    except Exception:
        pass
    log("left")
    sys.exit(0)


signal.signal(signal.SIGTERM, leave)
Worker().run()

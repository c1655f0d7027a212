"""confluent-kafka (librdkafka) against mapq's Kafka listener, for tests/kafka.rs.

  produce BOOTSTRAP TOPIC COUNT CODEC     idempotent, acks=all; one JSON line per delivery
  consume BOOTSTRAP TOPIC GROUP MAX [COMMIT_AFTER]
                                          a group member from the earliest offset; one JSON
                                          line per record; with COMMIT_AFTER it commits (sync)
                                          after that many records and stops
  load BOOTSTRAP TOPIC STOPFILE           idempotent, acks=all, until STOPFILE exists; one
                                          "ack KEY PARTITION OFFSET" line per delivery

Runs in Debian's /usr/bin/python3 (python3-confluent-kafka). Exits with os._exit: the 1.7.0
binding can crash while the interpreter finalizes after a null header value was seen.
"""
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def produce(bootstrap, topic, count, codec):
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            out({"key": text(msg.key()), "partition": msg.partition(), "offset": msg.offset()})

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": codec,
        "linger.ms": 5,
    })
    for i in range(count):
        p.produce(topic, key=b"k%d" % i, value=b"value %d" % i,
                  headers=[("i", str(i).encode())], on_delivery=delivered)
        p.poll(0)
    left = p.flush(30)
    if errors or left:
        sys.stderr.write("errors: %s; undelivered: %d\n" % (errors[:5], left))
        return 1
    return 0


def consume(bootstrap, topic, group, most, commit_after=None):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
    })
    c.subscribe([topic])
    got = 0
    idle_until = time.time() + 20
    while got < most and time.time() < idle_until:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        got += 1
        idle_until = time.time() + 5
        out({"partition": m.partition(), "offset": m.offset(), "key": text(m.key()),
             "value": text(m.value())})
        if commit_after is not None and got == commit_after:
            c.commit(message=m, asynchronous=False)
            break
    c.close()
    return 0


def load(bootstrap, topic, stopfile):
    failures = []

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))
            sys.stdout.write("error %s\n" % err)
        else:
            sys.stdout.write("ack %s %d %d\n" % (text(msg.key()), msg.partition(), msg.offset()))
        sys.stdout.flush()

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": 60000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
    })
    i = 0
    while not os.path.exists(stopfile):
        try:
            p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, on_delivery=delivered)
            i += 1
        except BufferError:
            pass
        p.poll(0.001 if i % 50 == 0 else 0)
    left = p.flush(60)
    sys.stdout.write("sent %d undelivered %d\n" % (i, left))
    sys.stdout.flush()
    return 1 if left or failures else 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        return produce(args[0], args[1], int(args[2]), args[3])
    if cmd == "consume":
        return consume(args[0], args[1], args[2], int(args[3]),
                       int(args[4]) if len(args) > 4 else None)
    if cmd == "load":
        return load(args[0], args[1], args[2])
    sys.stderr.write("unknown command %s\n" % cmd)
    return 2


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:  # reported, then the same quick exit
        sys.stderr.write("failed: %r\n" % (e,))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""aiokafka (PyPI, asyncio) against mapq's Kafka listener, for tests/kafka.rs: produces
COUNT records to TOPIC with an idempotent producer (acks=all, gzip), then consumes them in
GROUP from the earliest offset and commits. Prints one JSON object.

Usage: aiokafka_client.py BOOTSTRAP TOPIC GROUP COUNT   (PYTHONPATH: aiokafka's directory)
"""
import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def main(bootstrap, topic, group, count):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         compression_type="gzip")
    await p.start()
    try:
        futures = [await p.send(topic, key=b"k%d" % i, value=b"v%d" % i,
                                headers=[("i", b"%d" % i)]) for i in range(count)]
        sent = [await f for f in futures]
    finally:
        await p.stop()
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    consumed = []
    try:
        while len(consumed) < count:
            batch = await c.getmany(timeout_ms=5000)
            if not batch:
                break
            for msgs in batch.values():
                consumed.extend({"partition": m.partition, "offset": m.offset,
                                 "key": m.key.decode(), "value": m.value.decode(),
                                 "headers": [[k, v.decode()] for k, v in m.headers]}
                                for m in msgs)
        await c.commit()
    finally:
        await c.stop()
    print(json.dumps({"produced": [[s.partition, s.offset] for s in sent],
                      "consumed": consumed}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))

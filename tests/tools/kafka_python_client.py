"""kafka-python (PyPI) against mapq's Kafka listener, for tests/kafka.rs: produces COUNT
records (acks=all, gzip) to TOPIC, then consumes them in GROUP from the earliest offset and
commits. Prints one JSON object: the offsets produced and the records consumed.

Usage: kafka_python_client.py BOOTSTRAP TOPIC GROUP COUNT
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer

bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
futures = [p.send(topic, key=b"k%d" % i, value=b"v%d" % i, headers=[("i", b"%d" % i)])
           for i in range(count)]
p.flush()
produced = [[f.get(timeout=30).partition, f.get(timeout=30).offset] for f in futures]
p.close()
c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                  auto_offset_reset="earliest", enable_auto_commit=False,
                  consumer_timeout_ms=5000)
consumed = []
for m in c:
    consumed.append({"partition": m.partition, "offset": m.offset, "key": m.key.decode(),
                     "value": m.value.decode(), "headers": [[k, v.decode()] for k, v in m.headers]})
    if len(consumed) == count:
        break
c.commit()
c.close()
print(json.dumps({"produced": produced, "consumed": consumed}))

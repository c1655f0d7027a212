// kafkajs (npm) against mapq's Kafka listener, for tests/kafka.rs: creates TOPIC with two
// partitions (admin API), produces COUNT records with an idempotent producer (acks=all),
// then consumes them in GROUP from the beginning. Prints one JSON object.
//
// Usage: node kafkajs_client.js BOOTSTRAP TOPIC GROUP COUNT   (NODE_PATH: kafkajs' node_modules)
const { Kafka, logLevel, Partitioners } = require('kafkajs');

const [bootstrap, topic, group, countText] = process.argv.slice(2);
const count = Number(countText);
const kafka = new Kafka({ clientId: 'mapq-test', brokers: [bootstrap], logLevel: logLevel.ERROR });

(async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
  const topics = await admin.listTopics();
  await admin.disconnect();

  const producer = kafka.producer({ idempotent: true, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const messages = Array.from({ length: count }, (_, i) => ({ key: `k${i}`, value: `v${i}`, headers: { i: `${i}` } }));
  const sent = await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: group });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const consumed = [];
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, 20000);
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        consumed.push({ partition, offset: Number(message.offset), key: message.key.toString(), value: message.value.toString(), headers: { i: message.headers.i.toString() } });
        if (consumed.length === count) { clearTimeout(timer); resolve(); }
      },
    });
  });
  await consumer.disconnect();
  console.log(JSON.stringify({ topics, sent: sent.map((r) => [r.partition, Number(r.baseOffset)]), consumed }));
})().catch((e) => { console.error(e); process.exit(1); });

// Events made by the TypeScript factory, produced to Kafka with KafkaJS (key
// = metadata.partition, the gateway's headers), are consumed by a real
// `moonx-ws serve` and reach the entitled WebSocket client; an event the
// TypeScript validator refuses is dead-lettered by the gateway with the same
// (path, code) errors in its `dlq.errors` header, the original value kept. Needs the broker at KAFKA_BROKERS (default
// 127.0.0.1:9092); topics are unique per run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Kafka, logLevel } from 'kafkajs';
import { MoonxClient } from '../dist/client/index.js';
import { createEvent, validateEvent } from '../dist/events/index.js';
import { startGateway, waitFor } from './gateway.mjs';
import { SAMPLE_DATA } from './samples.mjs';

const BROKERS = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',');
const suffix = crypto.randomBytes(4).toString('hex');
const MAIN = `sdk-ts-${suffix}.events`;
const DLQ = `sdk-ts-${suffix}.events.dlq`;

const kafka = new Kafka({ clientId: 'moonx-ws-sdk-test', brokers: BROKERS, logLevel: logLevel.NOTHING });
const admin = kafka.admin();
const producer = kafka.producer();
let gw;

before(async () => {
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic: MAIN, numPartitions: 6 }, { topic: DLQ, numPartitions: 2 }] });
  await producer.connect();
  gw = await startGateway({
    mode: 'serve',
    env: {
      KAFKA_BROKERS: BROKERS.join(','),
      KAFKA_MAIN_TOPIC: MAIN,
      EVENT_DEAD_LETTER_QUEUE_TOPIC: DLQ,
      KAFKA_CONSUMER_GROUP_ID: `sdk-ts-${suffix}`,
      KAFKA_AUTO_OFFSET_RESET: 'earliest',
      GATEWAY_INSTANCE_ID: 'sdk-ts',
      RUST_LOG: 'info,rdkafka=warn',
    },
  });
  await waitFor(async () => (await fetch(`${gw.http}/health`)).status === 200, 'the gateway to be healthy (partitions assigned)', 60_000);
});

after(async () => {
  await gw?.stop();
  await producer.disconnect();
  await admin.deleteTopics({ topics: [MAIN, DLQ] }).catch(() => {});
  await admin.disconnect();
});

/** A record as the gateway's own producer writes it. */
const record = (e) => ({
  key: e.metadata.partition,
  value: JSON.stringify(e),
  headers: { eventType: e.metadata.eventType, eventId: e.metadata.eventId, correlationId: e.metadata.correlationId, 'content-type': 'application/json' },
});

test('factory events produced with KafkaJS reach the entitled client', async () => {
  const user = `kafka-${suffix}`;
  const c = new MoonxClient({ url: gw.ws, token: gw.token(user) });
  const got = [];
  try {
    await c.connect();
    await c.subscribe('orders', (e) => got.push(e.metadata.eventId));
    await c.subscribe('trades', (e) => got.push(e.metadata.eventId));
    const events = [
      createEvent('order.created', { ...SAMPLE_DATA['order.created'], userId: user }, { source: 'sdk-kafka-test' }),
      createEvent('trade.executed', { ...SAMPLE_DATA['trade.executed'], userId: user }, { source: 'sdk-kafka-test' }),
      createEvent('order.updated', { ...SAMPLE_DATA['order.updated'], userId: user }, { source: 'sdk-kafka-test' }),
    ];
    await producer.send({ topic: MAIN, messages: events.map(record) });
    const want = events.map((e) => e.metadata.eventId);
    await waitFor(() => want.every((id) => got.includes(id)), 'the produced events at the client', 30_000);
    assert.deepEqual(got, want, 'one user, one partition: in order, each once');
  } finally {
    c.close();
  }
});

test('what validateEvent refuses, the gateway dead-letters with the same errors', async () => {
  const e = createEvent('price.updated', SAMPLE_DATA['price.updated']);
  const bad = { ...e, metadata: { ...e.metadata, eventVersion: 'v1' }, data: { ...e.data, price: '1e5', chainId: -1 } };
  const ours = validateEvent(bad);
  assert.equal(ours.isValid, false);
  const consumer = kafka.consumer({ groupId: `sdk-ts-dlq-${suffix}` });
  const letters = [];
  await consumer.connect();
  await consumer.subscribe({ topic: DLQ, fromBeginning: true });
  // Kafka Connect's dead-letter shape: the value is the original bytes, the failure is in the dlq.* headers.
  const text = (h) => (h === undefined ? undefined : String(h));
  await consumer.run({ eachMessage: async ({ message }) => letters.push({ key: message.key?.toString(), headers: message.headers, value: message.value }) });
  try {
    const original = record(bad);
    await producer.send({ topic: MAIN, messages: [original] });
    await waitFor(() => letters.some((l) => text(l.headers['dlq.event_id']) === e.metadata.eventId), 'the dead letter', 30_000);
    const letter = letters.find((l) => text(l.headers['dlq.event_id']) === e.metadata.eventId);
    assert.equal(letter.value.toString(), original.value, 'the value is the original record, byte for byte');
    assert.equal(letter.key, original.key, 'the original key');
    assert.equal(text(letter.headers.eventType), 'price.updated', 'the original headers are kept');
    assert.equal(text(letter.headers['dlq.reason']), 'invalid_event');
    assert.equal(text(letter.headers['dlq.event_type']), 'price.updated');
    assert.equal(text(letter.headers['dlq.source.topic']), MAIN);
    assert.match(text(letter.headers['dlq.id']), new RegExp(`^${MAIN.replace(/\./g, '\\.')}/\\d+/\\d+$`));
    const errors = JSON.parse(text(letter.headers['dlq.errors']));
    const set = (errs) => errs.map((x) => `${x.path} ${x.code}`).sort();
    assert.deepEqual(set(errors), set(ours.errors));
    for (const x of errors) assert.ok(typeof x.message === 'string' && x.message.length > 0, `${x.path}: a message`);
  } finally {
    await consumer.disconnect();
  }
});

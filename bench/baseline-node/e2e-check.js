#!/usr/bin/env node
'use strict';
// End-to-end check of a running baseline server (node server.js) against a real broker:
// WebSocket clients subscribe, a KafkaJS producer sends envelopes to the server's topic,
// the clients must receive exactly their frames, and /metrics must count them.
//
//   KAFKA_MAIN_TOPIC=bench.baseline.check node server.js &
//   KAFKA_MAIN_TOPIC=bench.baseline.check node e2e-check.js
//
// Env: BASELINE_URL (default http://127.0.0.1:3018), KAFKA_BROKERS, KAFKA_MAIN_TOPIC.
// The server's consumer group must have no backlog on the topic (a fresh topic or group),
// or the counter deltas and deliveries checked here include that backlog.

const crypto = require('node:crypto');
const { Kafka, logLevel } = require('kafkajs');
const WebSocket = require('ws');

const BASE = process.env.BASELINE_URL || 'http://127.0.0.1:3018';
const WS_BASE = BASE.replace(/^http/, 'ws');
const brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',');
const topic = process.env.KAFKA_MAIN_TOPIC || 'moonx.ws.events';

let passed = 0, failed = 0;
function check(name, ok, detail) {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${!ok && detail !== undefined ? `: ${detail}` : ''}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function metrics() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^(baseline_[a-z_]+) (\d+)$/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

function client(query) {
  const ws = new WebSocket(`${WS_BASE}/ws${query}`);
  const c = { ws, frames: [], replies: [] };
  ws.on('message', (data) => {
    const text = data.toString();
    const msg = JSON.parse(text);
    if (msg.type === 'event') c.frames.push({ text, msg });
    else c.replies.push(msg);
  });
  c.open = new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  c.request = async (obj) => {
    const n = c.replies.length;
    ws.send(JSON.stringify(obj));
    for (let i = 0; i < 100 && c.replies.length === n; i++) await sleep(20);
    return c.replies[n];
  };
  return c;
}

function envelope(type, data, extra = {}) {
  const partition = type === 'price.updated' ? 'prices' : extra.userId || type;
  return {
    metadata: {
      eventId: crypto.randomUUID(),
      eventType: type,
      eventVersion: '1.0',
      correlationId: crypto.randomUUID(),
      timestamp: Date.now(),
      source: type === 'price.updated' ? 'price-service' : 'order-service',
      dataClassification: extra.classification || (type === 'price.updated' ? 'public' : 'confidential'),
      partition,
      ...(extra.userId ? { userId: extra.userId } : {}),
    },
    data,
  };
}

async function main() {
  // 1. the server is up and its consumer joined the group
  let health;
  for (let i = 0; i < 150; i++) {
    try {
      health = await (await fetch(`${BASE}/health`)).json();
      if (health.kafka.groupJoined) break;
    } catch { /* not up yet */ }
    await sleep(200);
  }
  check('GET /health: 200 JSON, consumer joined the group', health && health.kafka.groupJoined, JSON.stringify(health));

  // 2. clients and the protocol subset
  const anon = client('');
  const alice = client('?userId=user-1');
  const bob = client('?userId=user-2');
  await Promise.all([anon.open, alice.open, bob.open]);
  check('ping -> pong', (await anon.request({ type: 'ping' }))?.type === 'pong');
  const sub = await anon.request({ type: 'subscribe', channel: 'prices' });
  check('subscribe prices -> subscribed', sub?.type === 'subscribed' && sub.channel === 'prices', JSON.stringify(sub));
  const denied = await anon.request({ type: 'subscribe', channel: 'orders' });
  check('anonymous subscribe orders -> unauthorized', denied?.type === 'error' && denied.code === 'unauthorized', JSON.stringify(denied));
  const unknown = await anon.request({ type: 'subscribe', channel: 'nope' });
  check('unknown channel -> unknown_channel', unknown?.code === 'unknown_channel', JSON.stringify(unknown));
  check('alice subscribes orders', (await alice.request({ type: 'subscribe', channel: 'orders' }))?.type === 'subscribed');
  check('bob subscribes orders', (await bob.request({ type: 'subscribe', channel: 'orders' }))?.type === 'subscribed');

  // 3. produce
  const before = await metrics();
  const prices = [];
  for (let i = 0; i < 5; i++) {
    prices.push(envelope('price.updated', {
      token: ['ETH', 'BTC', 'USDT', 'SOL', 'BNB'][i], chainId: 1, price: `${3000 + i}.25`,
      priceUsd: `${3000 + i}.25`, change24h: '-0.5', volume24h: '1000000',
    }));
  }
  const order = envelope('order.created', {
    orderId: 'order-1', userId: 'user-1', tokenIn: 'ETH', tokenOut: 'USDT', amountIn: '1.0',
    amountOutExpected: '3000.0', chainId: 1, orderType: 'market', status: 'pending',
  }, { userId: 'user-1' });
  const leaky = envelope('order.created', { ...order.data, orderId: 'order-2' },
    { userId: 'user-1', classification: 'public' }); // downgraded: must be refused
  const kafka = new Kafka({ clientId: 'baseline-e2e', brokers, logLevel: logLevel.WARN });
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({
    topic,
    messages: [
      ...prices.map((e) => ({ key: e.metadata.partition, value: JSON.stringify(e) })),
      { key: 'user-1', value: JSON.stringify(order) },
      { key: 'user-1', value: JSON.stringify(leaky) },
      { key: 'x', value: '{"metadata": not json' },
    ],
  });
  await producer.disconnect();

  // 4. deliveries
  for (let i = 0; i < 200 && (anon.frames.length < 5 || alice.frames.length < 1); i++) await sleep(50);
  await sleep(500); // anything extra would arrive now
  check('anonymous prices subscriber got the 5 price events', anon.frames.length === 5, `${anon.frames.length} frames`);
  const byId = new Map(prices.map((e) => [e.metadata.eventId, e]));
  const exact = anon.frames.every((f) => {
    const sent = byId.get(f.msg.event.metadata.eventId);
    return sent && f.text === JSON.stringify({ type: 'event', channel: 'prices', event: sent });
  });
  check('price frames are exactly {"type":"event","channel":"prices","event":<envelope>}', exact, anon.frames[0]?.text);
  check('alice (owner) got her order on orders', alice.frames.length === 1 && alice.frames[0].msg.channel === 'orders'
    && alice.frames[0].msg.event.metadata.eventId === order.metadata.eventId, JSON.stringify(alice.frames.map((f) => f.msg)));
  check('bob got nothing of alice', bob.frames.length === 0, `${bob.frames.length} frames`);

  // 5. counters
  const after = await metrics();
  const d = (k) => (after[k] ?? NaN) - (before[k] ?? NaN);
  check('events_consumed_total +8', d('baseline_events_consumed_total') === 8, d('baseline_events_consumed_total'));
  check('events_routed_total +6', d('baseline_events_routed_total') === 6, d('baseline_events_routed_total'));
  check('events_invalid_total +2 (downgraded order, bad JSON)', d('baseline_events_invalid_total') === 2, d('baseline_events_invalid_total'));
  check('frames_sent_total +6', d('baseline_frames_sent_total') === 6, d('baseline_frames_sent_total'));
  check('connections gauge sees the 3 clients', after.baseline_connections >= 3, after.baseline_connections);

  for (const c of [anon, alice, bob]) c.ws.close();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

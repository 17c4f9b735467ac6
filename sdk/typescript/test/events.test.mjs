// The factory, the partition keys and the lossless JSON layer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createEvent, createPriceUpdatedEvent, createOrderCreatedEvent, createOrderUpdatedEvent, createOrderCancelledEvent,
  createPortfolioUpdatedEvent, createTradeExecutedEvent, createTradeFailedEvent, createUserConnectedEvent,
  createUserDisconnectedEvent, createSystemHealthCheckEvent, createSystemErrorEvent, createSessionRevokedEvent, EventFactory, EventValidationError,
  TypeRegistry, partitionKey, validateEvent, parseJsonTree, canonicalJson, EVENT_TYPES, DEFAULT_CLASSIFICATION, migrateLegacy,
} from '../dist/events/index.js';

import { SAMPLE_DATA } from './samples.mjs';

const HELPERS = {
  'price.updated': createPriceUpdatedEvent, 'order.created': createOrderCreatedEvent, 'order.updated': createOrderUpdatedEvent,
  'order.cancelled': createOrderCancelledEvent, 'portfolio.updated': createPortfolioUpdatedEvent, 'trade.executed': createTradeExecutedEvent,
  'trade.failed': createTradeFailedEvent, 'user.connected': createUserConnectedEvent, 'user.disconnected': createUserDisconnectedEvent,
  'session.revoked': createSessionRevokedEvent, 'system.health_check': createSystemHealthCheckEvent, 'system.error': createSystemErrorEvent,
};

test('a helper per built-in type fills the metadata and the result is valid', () => {
  assert.equal(Object.keys(HELPERS).length, 12);
  assert.deepEqual(Object.keys(HELPERS).sort(), [...EVENT_TYPES].sort());
  for (const type of EVENT_TYPES) {
    const e = HELPERS[type](SAMPLE_DATA[type], { source: 'sdk-test' });
    assert.equal(e.metadata.eventType, type);
    assert.equal(e.metadata.dataClassification, DEFAULT_CLASSIFICATION[type]);
    assert.match(e.metadata.eventId, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID v7');
    assert.equal(e.metadata.partition, partitionKey(type, e.metadata.userId));
    assert.equal(e.metadata.source, 'sdk-test');
    assert.ok(Math.abs(e.metadata.timestamp - Date.now()) < 5000);
    assert.deepEqual(validateEvent(e), { isValid: true, errors: [] });
    assert.deepEqual(validateEvent(JSON.stringify(e)), { isValid: true, errors: [] });
  }
});

test('partition keys follow the strategy', () => {
  assert.equal(createPriceUpdatedEvent(SAMPLE_DATA['price.updated']).metadata.partition, 'prices');
  assert.equal(createSystemErrorEvent(SAMPLE_DATA['system.error']).metadata.partition, 'system');
  assert.equal(createOrderCreatedEvent(SAMPLE_DATA['order.created']).metadata.partition, 'user-456');
  assert.equal(createSessionRevokedEvent(SAMPLE_DATA['session.revoked']).metadata.partition, 'user-456');
  assert.equal(createSessionRevokedEvent(SAMPLE_DATA['session.revoked']).metadata.dataClassification, 'internal');
  assert.equal(partitionKey('order.created'), 'order.created');
  const r = new TypeRegistry().register({ name: 'reward.granted', defaultClassification: 'confidential' }).register({ name: 'market.opened', defaultClassification: 'public' });
  assert.equal(partitionKey('reward.granted', 'u9', r), 'u9');
  assert.equal(partitionKey('market.opened', 'u9', r), 'market.opened');
  assert.throws(() => new TypeRegistry().register({ name: 'price.updated', defaultClassification: 'public' }));
});

test('the factory refuses a downgrade and lists every error', () => {
  let caught;
  try {
    createEvent('order.created', { orderId: '', tokenIn: 'ETH' }, { classification: 'public' });
  } catch (e) {
    caught = e;
  }
  const paths = caught.errors.map((e) => e.path);
  for (const p of ['/metadata/dataClassification', '/metadata/userId', '/data/orderId', '/data/amountIn']) assert.ok(paths.includes(p), p);
  assert.ok(caught instanceof EventValidationError);
  assert.ok(caught.errors.length >= 8);
});

test('a raised classification is kept; custom types need registration', () => {
  assert.equal(createPriceUpdatedEvent(SAMPLE_DATA['price.updated'], { classification: 'internal' }).metadata.dataClassification, 'internal');
  assert.throws(() => new EventFactory('svc').create('reward.granted', { userId: 'u1' }), EventValidationError);
  const f = new EventFactory('svc', new TypeRegistry().register({ name: 'reward.granted', defaultClassification: 'confidential' }));
  const e = f.create('reward.granted', { userId: 'u1', points: 5 });
  assert.equal(e.metadata.partition, 'u1');
  assert.equal(e.metadata.dataClassification, 'confidential');
});

test('integers are judged by their literal, as in Rust', () => {
  const e = createPriceUpdatedEvent(SAMPLE_DATA['price.updated']);
  const text = JSON.stringify(e);
  assert.ok(validateEvent(text).isValid);
  const bad = (chainId) => validateEvent(text.replace('"chainId":1', `"chainId":${chainId}`)).errors.map((x) => `${x.path} ${x.code}`);
  assert.deepEqual(bad('1.0'), ['/data/chainId type']);
  assert.deepEqual(bad('1e0'), ['/data/chainId type']);
  assert.deepEqual(bad('-1'), ['/data/chainId type']);
  assert.deepEqual(bad('18446744073709551616'), ['/data/chainId type']);
  assert.deepEqual(bad('18446744073709551615'), []);
  assert.deepEqual(validateEvent('{"metadata":').errors.map((x) => x.code), ['invalid_json']);
});

test('canonical JSON is what serde_json writes', () => {
  const cases = {
    '{"b":1,"a":[1.0,1e16,1e15,0.001,1.5e-7,-0,-0.0,18446744073709551616,-9223372036854775808,-9223372036854775809,123.456]}':
      '{"a":[1.0,1e16,1000000000000000.0,0.001,1.5e-7,-0.0,-0.0,1.8446744073709552e19,-9223372036854775808,-9.223372036854776e18,123.456],"b":1}',
    '"\\u00e9\\n\\u0001/"': '"é\\n\\u0001/"',
  };
  for (const [input, out] of Object.entries(cases)) assert.equal(canonicalJson(parseJsonTree(input)), out);
});

test('legacy migration is deterministic and agrees with a migrated id computed independently', () => {
  const msg = { type: 'price_update', timestamp: 1764000000, token: 'ETH', chainId: 1, price: '3000', priceUsd: '3000', change24h: '0.1', volume24h: '5' };
  const a = migrateLegacy(msg, 'moonx.price.updates');
  const b = migrateLegacy(JSON.stringify(msg), 'moonx.price.updates');
  assert.ok(a.ok && b.ok);
  assert.equal(a.json, b.json);
  assert.equal(a.envelope.metadata.timestamp, 1764000000000);
  assert.equal(a.envelope.data.type, undefined);
  const wrong = migrateLegacy({ type: 'order_created', timestamp: 1764000000000 }, 'moonx.price.updates');
  assert.deepEqual([wrong.ok, wrong.reason], [false, 'wrong_topic']);
});

test('hostile input: any text gets a verdict, never a crash; nesting is bounded', () => {
  assert.deepEqual(validateEvent('['.repeat(200) + ']'.repeat(200)).errors.map((e) => e.code), ['invalid_json']);
  assert.deepEqual(validateEvent('['.repeat(100) + ']'.repeat(100)).errors.map((e) => `${e.path} ${e.code}`), [' type']);
  for (const text of ['', ' ', 'nul', '{"a":1,}', '"\\ud800"', '1e400', '{"metadata":{}}x', '\u0000', '01', '-']) {
    assert.deepEqual(validateEvent(text).errors.map((e) => e.code), ['invalid_json'], JSON.stringify(text));
  }
  // Random bytes-as-text: a verdict every time.
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const alphabet = '{}[]":,0123456789.eE-+ truefalsnul\\metadatyp';
  for (let i = 0; i < 2000; i++) {
    const text = Array.from({ length: Math.floor(rnd() * 40) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join('');
    const r = validateEvent(text);
    assert.equal(r.isValid, false);
    assert.ok(r.errors.length > 0);
  }
  // Duplicate member names: the last one wins, as in serde_json.
  assert.equal(canonicalJson(parseJsonTree('{"a":1,"a":2}')), '{"a":2}');
  // A member named __proto__ is data, not a prototype.
  const m = migrateLegacy('{"type":"price","timestamp":1764000000000,"__proto__":{"x":1}}', 'moonx.price.updates');
  assert.ok(m.ok);
  assert.deepEqual(Object.keys(m.envelope.data), ['__proto__']);
});

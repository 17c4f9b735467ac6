#!/usr/bin/env node
'use strict';
/*
 * moonx-ws benchmark baseline: the seed's own Node.js service
 * (KafkaConsumerService + WebSocket server, `seed/kafka-single-topic-pattern.md`),
 * written faithfully on KafkaJS + ws, without handicaps. See README.md.
 *
 *   node server.js                      serve (Kafka -> WebSocket), config from env
 *   node server.js --bench-hotpath N    in-process per-event hot path, no Kafka, no sockets
 *
 * Everything is in this one file on purpose: the per-event code path that the
 * hot-path mode measures is the very code the service runs (processRecord).
 */

const http = require('node:http');
const crypto = require('node:crypto');

// ------------------------------------------------------------------ event model
// The seed's EventType union, each with its default classification.

const DEFAULT_CLASSIFICATION = new Map([
  ['price.updated', 'public'],
  ['order.created', 'confidential'],
  ['order.updated', 'confidential'],
  ['order.cancelled', 'confidential'],
  ['portfolio.updated', 'restricted'],
  ['trade.executed', 'confidential'],
  ['trade.failed', 'confidential'],
  ['user.connected', 'internal'],
  ['user.disconnected', 'internal'],
  ['system.health_check', 'internal'],
  ['system.error', 'internal'],
]);
const CLASS_RANK = { public: 0, internal: 1, confidential: 2, restricted: 3 };
const CONFIDENTIAL = CLASS_RANK.confidential;

// ------------------------------------------------------------------ validation
// eventFactory.validateEvent: { isValid, errors }. The rules are the ones of the
// Rust gateway (crates/events/src/validate.rs, schema/README.md): required
// metadata fields with their kinds, known type, the type's data fields (decimal
// strings for amounts), classification not below the type's default, userId on
// confidential/restricted events, owner match, timestamp sanity. Every error is
// collected (path + code), like the seed's errors array.

const K_TEXT = 1, K_UUID = 2, K_VERSION = 3, K_AMOUNT = 4, K_SIGNED = 5,
  K_UINT = 6, K_ONEOF = 7, K_OBJECT = 8, K_ARRAYOF = 9;
const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const VERSION_RE = /^[0-9]+\.[0-9]+(\.[0-9]+)?$/;
const AMOUNT_RE = /^[0-9]+(\.[0-9]+)?$/;
const SIGNED_RE = /^-?[0-9]+(\.[0-9]+)?$/;
// 2^64 - 1 as written in JSON parses to the double 2^64; JSON.parse cannot tell
// 2^64 - 1 from 2^64 (nor `1.0` from `1`): see README, "Deviations".
const UINT_MAX = 18446744073709551615;
const MIN_TIMESTAMP_MS = 1577836800000; // 2020-01-01
const MAX_FUTURE_SKEW_MS = 5 * 60 * 1000;

const req = (name, kind, set) => ({ name, kind, required: true, set });
const opt = (name, kind, set) => ({ name, kind, required: false, set });
const CLASSIFICATIONS = ['public', 'internal', 'confidential', 'restricted'];
const ORDER_TYPES = ['market', 'limit', 'stop_loss', 'take_profit'];
const ORDER_STATUSES = ['pending', 'open', 'partially_filled', 'filled', 'cancelled', 'failed', 'expired'];
const HEALTH_STATUSES = ['healthy', 'degraded', 'unhealthy'];
const SEVERITIES = ['warning', 'error', 'critical'];

const METADATA = [
  req('eventId', K_UUID), req('eventType', K_TEXT), req('eventVersion', K_VERSION),
  req('correlationId', K_TEXT), opt('causationId', K_TEXT), req('timestamp', K_UINT),
  req('source', K_TEXT), opt('userId', K_TEXT),
  req('dataClassification', K_ONEOF, CLASSIFICATIONS), req('partition', K_TEXT),
  opt('migratedFrom', K_TEXT),
];
const HOLDING = [req('token', K_TEXT), req('chainId', K_UINT), req('balance', K_AMOUNT), req('valueUsd', K_AMOUNT)];
const DATA_FIELDS = new Map([
  ['price.updated', [req('token', K_TEXT), req('chainId', K_UINT), req('price', K_AMOUNT),
    req('priceUsd', K_AMOUNT), req('change24h', K_SIGNED), req('volume24h', K_AMOUNT)]],
  ['order.created', [req('orderId', K_TEXT), req('userId', K_TEXT), req('tokenIn', K_TEXT),
    req('tokenOut', K_TEXT), req('amountIn', K_AMOUNT), req('amountOutExpected', K_AMOUNT),
    req('chainId', K_UINT), req('orderType', K_ONEOF, ORDER_TYPES),
    req('status', K_ONEOF, ORDER_STATUSES), opt('limitPrice', K_AMOUNT)]],
  ['order.updated', [req('orderId', K_TEXT), req('userId', K_TEXT), req('status', K_ONEOF, ORDER_STATUSES),
    opt('previousStatus', K_ONEOF, ORDER_STATUSES), opt('filledAmount', K_AMOUNT),
    opt('amountOut', K_AMOUNT), opt('txHash', K_TEXT)]],
  ['order.cancelled', [req('orderId', K_TEXT), req('userId', K_TEXT), opt('reason', K_TEXT),
    opt('cancelledBy', K_TEXT)]],
  ['portfolio.updated', [req('userId', K_TEXT), req('totalValueUsd', K_AMOUNT),
    req('holdings', K_ARRAYOF, HOLDING), opt('change24h', K_SIGNED)]],
  ['trade.executed', [req('tradeId', K_TEXT), req('orderId', K_TEXT), req('userId', K_TEXT),
    req('tokenIn', K_TEXT), req('tokenOut', K_TEXT), req('amountIn', K_AMOUNT),
    req('amountOut', K_AMOUNT), req('price', K_AMOUNT), req('chainId', K_UINT),
    req('txHash', K_TEXT), opt('fee', K_AMOUNT)]],
  ['trade.failed', [req('orderId', K_TEXT), req('userId', K_TEXT), req('tokenIn', K_TEXT),
    req('tokenOut', K_TEXT), req('amountIn', K_AMOUNT), req('chainId', K_UINT),
    req('reason', K_TEXT), opt('tradeId', K_TEXT), opt('errorCode', K_TEXT), opt('txHash', K_TEXT)]],
  ['user.connected', [req('userId', K_TEXT), req('connectionId', K_TEXT), req('instanceId', K_TEXT)]],
  ['user.disconnected', [req('userId', K_TEXT), req('connectionId', K_TEXT), req('instanceId', K_TEXT),
    opt('reason', K_TEXT), opt('durationMs', K_UINT)]],
  ['system.health_check', [req('service', K_TEXT), req('status', K_ONEOF, HEALTH_STATUSES),
    opt('uptimeSeconds', K_UINT), opt('details', K_OBJECT)]],
  ['system.error', [req('service', K_TEXT), req('errorCode', K_TEXT), req('message', K_TEXT),
    req('severity', K_ONEOF, SEVERITIES), opt('details', K_OBJECT)]],
]);

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

// The JSON Pointer of a failing field is built only when there is an error.
function checkFields(obj, fields, at, errors) {
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    const v = obj[f.name];
    if (v === undefined) {
      if (f.required) errors.push({ path: `${at}/${f.name}`, code: 'required' });
      continue;
    }
    const code = checkKind(v, f, at, errors);
    if (code !== null) errors.push({ path: `${at}/${f.name}`, code });
  }
}

/** null when v is of kind f.kind, else the error code (ArrayOf reports its items itself). */
function checkKind(v, f, at, errors) {
  switch (f.kind) {
    case K_UINT:
      return typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > UINT_MAX ? 'type' : null;
    case K_OBJECT:
      return isObject(v) ? null : 'type';
    case K_ARRAYOF:
      if (!Array.isArray(v)) return 'type';
      for (let i = 0; i < v.length; i++) {
        if (isObject(v[i])) checkFields(v[i], f.set, `${at}/${f.name}/${i}`, errors);
        else errors.push({ path: `${at}/${f.name}/${i}`, code: 'type' });
      }
      return null;
    default:
      break;
  }
  if (typeof v !== 'string') return 'type';
  switch (f.kind) {
    case K_TEXT:
      return v.length === 0 ? 'format' : null;
    case K_UUID:
      return UUID_RE.test(v) ? null : 'format';
    case K_VERSION:
      return VERSION_RE.test(v) ? null : 'format';
    case K_AMOUNT:
      return AMOUNT_RE.test(v) ? null : 'format';
    case K_SIGNED:
      return SIGNED_RE.test(v) ? null : 'format';
    case K_ONEOF:
      return f.set.includes(v) ? null : 'enum';
    default:
      return null;
  }
}

/** eventFactory.validateEvent(event) -> { isValid, errors } (now: ms since epoch). */
function validateEvent(doc, now) {
  const errors = [];
  if (!isObject(doc)) {
    errors.push({ path: '', code: 'type' });
    return { isValid: false, errors };
  }
  const m = doc.metadata;
  const d = doc.data;
  const metaOk = isObject(m);
  const dataOk = isObject(d);
  if (m === undefined) errors.push({ path: '/metadata', code: 'required' });
  else if (!metaOk) errors.push({ path: '/metadata', code: 'type' });
  if (d === undefined) errors.push({ path: '/data', code: 'required' });
  else if (!dataOk) errors.push({ path: '/data', code: 'type' });
  if (!metaOk) return { isValid: false, errors };

  checkFields(m, METADATA, '/metadata', errors);

  const type = m.eventType;
  let min = -1;
  if (typeof type === 'string') {
    const def = DEFAULT_CLASSIFICATION.get(type);
    if (def === undefined) {
      errors.push({ path: '/metadata/eventType', code: 'unknown_type' });
    } else {
      min = CLASS_RANK[def];
      if (dataOk) checkFields(d, DATA_FIELDS.get(type), '/data', errors);
    }
  }
  const cls = m.dataClassification;
  const given = typeof cls === 'string' && Object.hasOwn(CLASS_RANK, cls) ? CLASS_RANK[cls] : -1;
  if (given >= 0 && min >= 0 && given < min) {
    errors.push({ path: '/metadata/dataClassification', code: 'classification_downgrade' });
  }
  if (Math.max(given, min) >= CONFIDENTIAL && typeof m.userId !== 'string') {
    errors.push({ path: '/metadata/userId', code: 'owner_required' });
  }
  if (dataOk && typeof m.userId === 'string' && typeof d.userId === 'string' && m.userId !== d.userId) {
    errors.push({ path: '/data/userId', code: 'owner_mismatch' });
  }
  const ts = m.timestamp;
  if (typeof ts === 'number' && Number.isInteger(ts) && ts >= 0 && ts <= UINT_MAX) {
    if (ts < MIN_TIMESTAMP_MS || ts > now + MAX_FUTURE_SKEW_MS) {
      errors.push({ path: '/metadata/timestamp', code: 'timestamp' });
    }
  }
  return { isValid: errors.length === 0, errors };
}

// ------------------------------------------------------------------ envelope parsing
// KafkaConsumerService.parseEventEnvelope: the new envelope format, or a legacy
// `{ type, timestamp, ... }` message migrated into an envelope.

const LEGACY_TYPES = new Map([
  ['price_update', 'price.updated'], ['price_updated', 'price.updated'], ['price', 'price.updated'],
  ['order_created', 'order.created'], ['order_create', 'order.created'], ['order_new', 'order.created'],
  ['order_updated', 'order.updated'], ['order_update', 'order.updated'], ['order_status', 'order.updated'],
  ['order_cancelled', 'order.cancelled'], ['order_canceled', 'order.cancelled'], ['order_cancel', 'order.cancelled'],
  ['portfolio_update', 'portfolio.updated'], ['portfolio_updated', 'portfolio.updated'], ['portfolio', 'portfolio.updated'],
  ['trade_executed', 'trade.executed'], ['trade_execute', 'trade.executed'],
  ['trade_completed', 'trade.executed'], ['trade', 'trade.executed'],
  ['trade_failed', 'trade.failed'], ['trade_fail', 'trade.failed'],
]);
const LEGACY_RESERVED = new Set(['type', 'timestamp', 'eventId', 'correlationId', 'source']);
const USER_SCOPED = new Set(['order.created', 'order.updated', 'order.cancelled', 'portfolio.updated',
  'trade.executed', 'trade.failed', 'user.connected', 'user.disconnected']);

/** The seed's partition-key strategy (used for migrated legacy messages). */
function partitionKey(type, userId) {
  if (type === 'price.updated') return 'prices';
  if (type.startsWith('system.')) return 'system';
  if (USER_SCOPED.has(type)) return userId || type;
  return userId || type;
}

/** Why a legacy message cannot be migrated. */
class LegacyError {
  constructor(reason) {
    this.reason = reason;
  }
}

/** migrateLegacyMessage: returns an envelope, or a LegacyError when it cannot be migrated. */
function migrateLegacyMessage(msg, topic) {
  if (typeof msg.type !== 'string') return new LegacyError('missing_type');
  const norm = msg.type.trim().toLowerCase().replace(/[-.]/g, '_');
  const type = LEGACY_TYPES.get(norm);
  if (type === undefined) return new LegacyError('unknown_type');
  let ts = msg.timestamp;
  if (typeof ts === 'string' && /^[0-9]+$/.test(ts)) ts = Number(ts);
  if (typeof ts !== 'number' || !Number.isFinite(ts) || ts < 0) return new LegacyError(ts === undefined ? 'missing_timestamp' : 'bad_timestamp');
  ts = Math.floor(ts);
  if (ts < 1e12) ts *= 1000; // seconds
  let data;
  if (isObject(msg.data)) {
    data = msg.data;
  } else {
    data = {};
    for (const k of Object.keys(msg)) if (!LEGACY_RESERVED.has(k)) data[k] = msg[k];
  }
  const userId = typeof msg.userId === 'string' ? msg.userId
    : typeof data.userId === 'string' ? data.userId : undefined;
  // The seed generates a fresh UUID (the Rust gateway derives a deterministic v5 id instead).
  const eventId = typeof msg.eventId === 'string' && UUID_RE.test(msg.eventId) ? msg.eventId : crypto.randomUUID();
  const metadata = {
    eventId,
    eventType: type,
    eventVersion: '1.0',
    correlationId: typeof msg.correlationId === 'string' ? msg.correlationId : eventId,
    timestamp: ts,
    source: typeof msg.source === 'string' ? msg.source : `legacy:${topic}`,
    dataClassification: DEFAULT_CLASSIFICATION.get(type),
    partition: partitionKey(type, userId),
    migratedFrom: topic,
  };
  if (userId !== undefined) metadata.userId = userId;
  return { metadata, data };
}

/** parseEventEnvelope: the envelope to validate, or a LegacyError (never throws). */
function parseEventEnvelope(msg, topic) {
  if (isObject(msg)) {
    if (msg.metadata !== undefined) return msg; // new envelope format ({ metadata, data })
    if (msg.type !== undefined) return migrateLegacyMessage(msg, topic); // legacy format
  }
  return msg; // neither: validation reports what is wrong with it
}

// ------------------------------------------------------------------ metrics

const metrics = {
  eventsConsumed: 0,
  eventsRouted: 0,
  eventsInvalid: 0,
  eventsUnhandled: 0,
  eventsFailed: 0,
  framesSent: 0,
  connections: 0,
};

let invalidLoggedAt = 0;
let invalidSuppressed = 0;
/** Invalid events are counted and logged at most once per second (plus a count of the rest). */
function reportInvalid(reason, detail, topic, partition, offset) {
  metrics.eventsInvalid++;
  const now = Date.now();
  if (now - invalidLoggedAt < 1000) {
    invalidSuppressed++;
    return;
  }
  invalidLoggedAt = now;
  const suppressed = invalidSuppressed;
  invalidSuppressed = 0;
  console.warn(JSON.stringify({
    level: 'warn', msg: 'invalid event', reason, detail, topic, partition, offset,
    suppressedSinceLastLog: suppressed,
  }));
}

// ------------------------------------------------------------------ fan-out hub (WebSocket side)

const CHANNELS = new Set(['prices', 'orders', 'portfolio', 'trades', 'system']);
const PRIVATE_CHANNELS = new Set(['orders', 'portfolio', 'trades']);
const SEND_OPTS = { binary: false }; // a text frame from a pre-encoded Buffer
// FRAME_MODE=stringify (default, the seed's way): JSON.stringify the frame object once per event.
// FRAME_MODE=splice: write the record's original JSON text into the frame (what the Rust gateway
// does); migrated legacy events are still stringified. Both give byte-identical frames for
// compact producer JSON.
const FRAME_MODE = process.env.FRAME_MODE || 'stringify';
if (FRAME_MODE !== 'stringify' && FRAME_MODE !== 'splice') {
  throw new Error(`FRAME_MODE must be stringify or splice, got ${JSON.stringify(FRAME_MODE)}`);
}
const FRAME_SPLICE = FRAME_MODE === 'splice';

class Hub {
  constructor() {
    /** subscribers of `prices` */
    this.prices = new Set();
    /** userId -> Set<client> (connections identified as that user) */
    this.users = new Map();
    /** clients with role admin subscribed to `system` */
    this.operators = new Set();
    /** the last frame built (keeps the hot-path benchmark honest) */
    this.lastFrame = null;
  }

  /**
   * The event frame: serialized once per event and encoded to UTF-8 once, the same
   * bytes to every recipient. `raw` is the record's JSON text (null for migrated events).
   */
  frame(channel, event, raw) {
    const text = FRAME_SPLICE && raw !== null
      ? `{"type":"event","channel":"${channel}","event":${raw}}`
      : JSON.stringify({ type: 'event', channel, event });
    const buf = Buffer.from(text);
    this.lastFrame = buf;
    return buf;
  }

  /** price.updated -> every subscriber of the channel. */
  broadcast(channel, event, raw) {
    const buf = this.frame(channel, event, raw);
    let n = 0;
    for (const c of this.prices) n += send(c, buf);
    return n;
  }

  /** order.*, portfolio.updated, trade.* -> the owner's connections subscribed to `channel`. */
  toUser(channel, userId, event, raw) {
    const buf = this.frame(channel, event, raw);
    const conns = this.users.get(userId);
    if (conns === undefined) return 0;
    let n = 0;
    for (const c of conns) if (c.channels.has(channel)) n += send(c, buf);
    return n;
  }

  /** user.*, system.* -> operators subscribed to `system`. */
  toOperators(event, raw) {
    const buf = this.frame('system', event, raw);
    let n = 0;
    for (const c of this.operators) n += send(c, buf);
    return n;
  }

  add(client) {
    if (client.userId !== null) {
      let set = this.users.get(client.userId);
      if (set === undefined) this.users.set(client.userId, (set = new Set()));
      set.add(client);
    }
  }

  remove(client) {
    this.prices.delete(client);
    this.operators.delete(client);
    if (client.userId !== null) {
      const set = this.users.get(client.userId);
      if (set !== undefined) {
        set.delete(client);
        if (set.size === 0) this.users.delete(client.userId);
      }
    }
  }

  subscribe(client, channel) {
    client.channels.add(channel);
    if (channel === 'prices') this.prices.add(client);
    else if (channel === 'system') this.operators.add(client);
  }

  unsubscribe(client, channel) {
    client.channels.delete(channel);
    if (channel === 'prices') this.prices.delete(client);
    else if (channel === 'system') this.operators.delete(client);
  }
}

function send(client, buf) {
  const ws = client.ws;
  if (ws.readyState !== 1 /* OPEN */) return 0;
  ws.send(buf, SEND_OPTS);
  metrics.framesSent++;
  return 1;
}

const hub = new Hub();

// ------------------------------------------------------------------ handlers
// KafkaConsumerService.eventHandlers: Map<EventType, handler>, one per type.
// A handler is (event, raw): raw is the record's JSON text, or null for a migrated event.

const eventHandlers = new Map();
function registerEventHandler(type, handler) {
  eventHandlers.set(type, handler);
}
const handlePriceUpdated = (event, raw) => hub.broadcast('prices', event, raw);
const handleOrderEvent = (event, raw) => hub.toUser('orders', event.metadata.userId, event, raw);
const handlePortfolioUpdated = (event, raw) => hub.toUser('portfolio', event.metadata.userId, event, raw);
const handleTradeEvent = (event, raw) => hub.toUser('trades', event.metadata.userId, event, raw);
const handleSystemEvent = (event, raw) => hub.toOperators(event, raw);
registerEventHandler('price.updated', handlePriceUpdated);
registerEventHandler('order.created', handleOrderEvent);
registerEventHandler('order.updated', handleOrderEvent);
registerEventHandler('order.cancelled', handleOrderEvent);
registerEventHandler('portfolio.updated', handlePortfolioUpdated);
registerEventHandler('trade.executed', handleTradeEvent);
registerEventHandler('trade.failed', handleTradeEvent);
registerEventHandler('user.connected', handleSystemEvent);
registerEventHandler('user.disconnected', handleSystemEvent);
registerEventHandler('system.health_check', handleSystemEvent);
registerEventHandler('system.error', handleSystemEvent);

// ------------------------------------------------------------------ per-record work
// KafkaConsumerService.messageHandler: parse -> parseEventEnvelope -> validate ->
// handler lookup -> handler (builds the frame once, sends it to the recipients).

const envFlag = (name, dflt) => {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new Error(`${name} must be true or false, got ${JSON.stringify(v)}`);
};
const PROCESSING_ENABLED = envFlag('EVENT_PROCESSING_ENABLED', true);
const VALIDATION_ENABLED = envFlag('EVENT_VALIDATION_ENABLED', true);

function processRecord(value, topic, partition, offset) {
  metrics.eventsConsumed++;
  if (!PROCESSING_ENABLED) return;
  if (value === null) {
    reportInvalid('empty_record', 'the record has no value', topic, partition, offset);
    return;
  }
  const text = value.toString('utf8');
  let msg;
  try {
    msg = JSON.parse(text);
  } catch (e) {
    reportInvalid('invalid_json', e.message, topic, partition, offset);
    return;
  }
  const event = parseEventEnvelope(msg, topic);
  if (event instanceof LegacyError) {
    reportInvalid('legacy_unmigratable', event.reason, topic, partition, offset);
    return;
  }
  if (VALIDATION_ENABLED) {
    const v = validateEvent(event, Date.now());
    if (!v.isValid) {
      reportInvalid('invalid_event', v.errors, topic, partition, offset);
      return;
    }
  } else if (!isObject(event) || !isObject(event.metadata)) {
    reportInvalid('invalid_event', 'not an envelope', topic, partition, offset);
    return;
  }
  const handler = eventHandlers.get(event.metadata.eventType);
  if (handler === undefined) {
    metrics.eventsUnhandled++;
    return;
  }
  try {
    handler(event, event === msg ? text : null);
  } catch (e) {
    metrics.eventsFailed++;
    console.error(JSON.stringify({ level: 'error', msg: 'handler failed', error: String(e), topic, partition, offset }));
    return;
  }
  metrics.eventsRouted++;
}

// ------------------------------------------------------------------ hot-path benchmark

/** A realistic price.updated envelope, about 385 bytes of JSON. */
function sampleEnvelope(now) {
  return JSON.stringify({
    metadata: {
      eventId: '0193a4b2-7c1e-7d3f-9a42-5f8e2c6b1d07',
      eventType: 'price.updated',
      eventVersion: '1.0',
      correlationId: 'b7e4c2a9-3f1d-4e8b-a6c5-2d9f0e1b7a34',
      timestamp: now,
      source: 'price-service',
      dataClassification: 'public',
      partition: 'prices',
    },
    data: {
      token: 'ETH',
      chainId: 1,
      price: '3021.45',
      priceUsd: '3021.45',
      change24h: '-1.28',
      volume24h: '1284537.5',
    },
  });
}

function benchHotpath(n) {
  if (!Number.isInteger(n) || n <= 0) throw new Error('--bench-hotpath needs a positive number of iterations');
  const json = sampleEnvelope(Date.now());
  const record = Buffer.from(json); // Kafka hands the service the value as bytes
  const warmup = 200000;
  for (let i = 0; i < warmup; i++) processRecord(record, 'moonx.ws.events', 0, i);
  if (metrics.eventsRouted !== warmup) throw new Error('the sample envelope was not routed: check the validator');
  const expected = JSON.stringify({ type: 'event', channel: 'prices', event: JSON.parse(json) });
  if (hub.lastFrame.toString() !== expected) throw new Error('unexpected frame');

  // Measure N iterations; repeat rounds of N until at least 2 s were measured.
  let events = 0;
  const t0 = process.hrtime.bigint();
  let elapsedNs = 0n;
  do {
    for (let i = 0; i < n; i++) processRecord(record, 'moonx.ws.events', 0, i);
    events += n;
    elapsedNs = process.hrtime.bigint() - t0;
  } while (elapsedNs < 2000000000n);
  if (metrics.eventsRouted !== warmup + events) throw new Error('not every event was routed');
  const seconds = Number(elapsedNs) / 1e9;
  console.error(`hot path: ${record.length}-byte price.updated envelope, ${hub.lastFrame.length}-byte frame; ` +
    'per event: Buffer->string, JSON.parse, parseEventEnvelope, validateEvent, handler lookup, ' +
    `handler (${FRAME_SPLICE ? 'splice original JSON into frame' : 'JSON.stringify frame'} + Buffer.from), ` +
    `0 subscribers; FRAME_MODE=${FRAME_MODE}; warm-up ${warmup}; node ${process.version}`);
  console.log(JSON.stringify({
    events,
    seconds: Number(seconds.toFixed(6)),
    eventsPerSec: Math.round(events / seconds),
    usPerEvent: Number(((seconds * 1e6) / events).toFixed(4)),
  }));
}

// ------------------------------------------------------------------ service

function log(msg, fields) {
  console.log(JSON.stringify({ level: 'info', time: new Date().toISOString(), msg, ...fields }));
}

function metricsText() {
  const mem = process.memoryUsage();
  return [
    '# TYPE baseline_events_consumed_total counter',
    `baseline_events_consumed_total ${metrics.eventsConsumed}`,
    '# TYPE baseline_events_routed_total counter',
    `baseline_events_routed_total ${metrics.eventsRouted}`,
    '# TYPE baseline_events_invalid_total counter',
    `baseline_events_invalid_total ${metrics.eventsInvalid}`,
    '# TYPE baseline_events_unhandled_total counter',
    `baseline_events_unhandled_total ${metrics.eventsUnhandled}`,
    '# TYPE baseline_events_failed_total counter',
    `baseline_events_failed_total ${metrics.eventsFailed}`,
    '# TYPE baseline_frames_sent_total counter',
    `baseline_frames_sent_total ${metrics.framesSent}`,
    '# TYPE baseline_connections gauge',
    `baseline_connections ${metrics.connections}`,
    '# TYPE baseline_process_resident_memory_bytes gauge',
    `baseline_process_resident_memory_bytes ${mem.rss}`,
    '# TYPE baseline_process_heap_used_bytes gauge',
    `baseline_process_heap_used_bytes ${mem.heapUsed}`,
    '',
  ].join('\n');
}

function reply(ws, obj, id) {
  if (id !== undefined) obj = { id, ...obj };
  ws.send(JSON.stringify(obj));
}

function onClientMessage(client, data, isBinary) {
  const ws = client.ws;
  let msg;
  try {
    msg = JSON.parse(isBinary ? Buffer.from(data).toString('utf8') : data.toString('utf8'));
  } catch {
    reply(ws, { type: 'error', code: 'bad_request', message: 'not JSON' });
    return;
  }
  if (!isObject(msg) || typeof msg.type !== 'string') {
    reply(ws, { type: 'error', code: 'bad_request', message: 'a message is an object with a "type"' });
    return;
  }
  const id = msg.id;
  switch (msg.type) {
    case 'ping':
      reply(ws, { type: 'pong' }, id);
      return;
    case 'subscribe':
    case 'unsubscribe': {
      const channel = msg.channel;
      if (typeof channel !== 'string') {
        reply(ws, { type: 'error', code: 'bad_request', message: '"channel" is required' }, id);
        return;
      }
      if (!CHANNELS.has(channel)) {
        reply(ws, { type: 'error', code: 'unknown_channel', message: `no channel ${JSON.stringify(channel)}` }, id);
        return;
      }
      if (msg.type === 'unsubscribe') {
        hub.unsubscribe(client, channel);
        reply(ws, { type: 'unsubscribed', channel }, id);
        return;
      }
      if (PRIVATE_CHANNELS.has(channel) && client.userId === null) {
        reply(ws, { type: 'error', code: 'unauthorized', message: `${channel} needs ?userId=` }, id);
        return;
      }
      if (channel === 'system' && !client.admin) {
        reply(ws, { type: 'error', code: 'forbidden', message: 'system needs ?role=admin' }, id);
        return;
      }
      hub.subscribe(client, channel);
      reply(ws, { type: 'subscribed', channel }, id);
      return;
    }
    default:
      reply(ws, { type: 'error', code: 'bad_request', message: `unknown message type ${JSON.stringify(msg.type)}` }, id);
  }
}

async function serve() {
  const { Kafka, logLevel } = require('kafkajs');
  const { WebSocketServer } = require('ws');

  const env = process.env;
  const port = Number(env.PORT || 3018);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`PORT: bad value ${env.PORT}`);
  const brokers = (env.KAFKA_BROKERS || '127.0.0.1:9092').split(',').map((s) => s.trim()).filter(Boolean);
  const topic = env.KAFKA_MAIN_TOPIC || 'moonx.ws.events';
  const groupId = env.KAFKA_CONSUMER_GROUP_ID || 'websocket-consumers-baseline';
  const fromBeginning = envFlag('FROM_BEGINNING', false);
  const mode = env.CONSUME_MODE || 'batch';
  if (mode !== 'batch' && mode !== 'message') throw new Error(`CONSUME_MODE: must be batch or message, got ${mode}`);
  const concurrency = Number(env.PARTITIONS_CONSUMED_CONCURRENTLY || 6);
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error('PARTITIONS_CONSUMED_CONCURRENTLY: bad value');

  const status = { connected: false, joined: false, assigned: 0, crashed: null };

  // ---- HTTP + WebSocket
  const server = http.createServer((request, response) => {
    const path = request.url.split('?', 1)[0];
    if (request.method === 'GET' && path === '/health') {
      const body = JSON.stringify({
        status: status.joined ? 'ok' : 'starting',
        kafka: { brokers, topic, groupId, connected: status.connected, groupJoined: status.joined,
          assignedPartitions: status.assigned, lastCrash: status.crashed },
        connections: metrics.connections,
        uptimeSeconds: Math.round(process.uptime()),
      });
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(body);
    } else if (request.method === 'GET' && path === '/metrics') {
      response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      response.end(metricsText());
    } else {
      response.writeHead(404, { 'content-type': 'application/json' });
      response.end('{"error":"not found"}');
    }
  });
  // perMessageDeflate is off by default in ws 8 (and in the Rust gateway).
  const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, maxPayload: 64 * 1024 });
  wss.on('connection', (ws, request) => {
    const q = new URL(request.url, 'http://localhost').searchParams;
    // No JWT in the baseline: identity is taken on trust from the query string.
    const client = { ws, userId: q.get('userId') || null, admin: q.get('role') === 'admin', channels: new Set() };
    metrics.connections++;
    hub.add(client);
    ws.on('message', (data, isBinary) => onClientMessage(client, data, isBinary));
    ws.on('close', () => {
      metrics.connections--;
      hub.remove(client);
    });
    ws.on('error', () => {});
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => resolve());
  });
  log('listening', { port, ws: `ws://0.0.0.0:${port}/ws` });

  // ---- Kafka
  const kafka = new Kafka({ clientId: 'moonx-ws-baseline', brokers, logLevel: logLevel.WARN });
  const consumer = kafka.consumer({ groupId, sessionTimeout: 30000, heartbeatInterval: 3000 });
  const ev = consumer.events;
  consumer.on(ev.CONNECT, () => { status.connected = true; });
  consumer.on(ev.DISCONNECT, () => { status.connected = false; status.joined = false; });
  consumer.on(ev.GROUP_JOIN, (e) => {
    status.joined = true;
    status.crashed = null;
    const assigned = e.payload.memberAssignment[topic] || [];
    status.assigned = assigned.length;
    log('joined consumer group', { groupId, topic, partitions: assigned });
  });
  consumer.on(ev.CRASH, (e) => {
    status.joined = false;
    status.crashed = String(e.payload.error && e.payload.error.message);
  });

  let stopping = false;
  const runConsumer = async () => {
    for (let attempt = 1; !stopping; attempt++) {
      try {
        await consumer.connect();
        await consumer.subscribe({ topics: [topic], fromBeginning });
        const common = { autoCommit: true, partitionsConsumedConcurrently: concurrency };
        if (mode === 'batch') {
          await consumer.run({
            ...common,
            eachBatchAutoResolve: true,
            // The loop is synchronous (handlers only enqueue frames on sockets), so a
            // batch is processed whole and in partition order before anything else runs;
            // KafkaJS then resolves the batch's last offset, commits, and heartbeats.
            eachBatch: async ({ batch, isRunning, isStale }) => {
              if (!isRunning() || isStale()) return;
              const { topic: t, partition, messages } = batch;
              for (let i = 0; i < messages.length; i++) {
                const m = messages[i];
                processRecord(m.value, t, partition, m.offset);
              }
            },
          });
        } else {
          await consumer.run({
            ...common,
            eachMessage: async ({ topic: t, partition, message }) => {
              processRecord(message.value, t, partition, message.offset);
            },
          });
        }
        log('consumer running', { brokers, topic, groupId, fromBeginning, mode,
          partitionsConsumedConcurrently: concurrency, frameMode: FRAME_MODE, validation: VALIDATION_ENABLED });
        return;
      } catch (e) {
        console.error(JSON.stringify({ level: 'error', msg: 'kafka consumer failed to start, retrying', attempt, error: String(e) }));
        try { await consumer.disconnect(); } catch { /* ignore */ }
        await new Promise((r) => setTimeout(r, Math.min(1000 * attempt, 10000)));
      }
    }
  };
  runConsumer();

  // ---- graceful shutdown
  const shutdown = async (signal) => {
    if (stopping) return;
    stopping = true;
    log('shutting down', { signal });
    const force = setTimeout(() => { console.error('shutdown timed out'); process.exit(1); }, 15000);
    force.unref();
    server.close();
    for (const ws of wss.clients) ws.close(1001, 'server shutting down');
    try {
      await consumer.disconnect(); // stops fetching, waits for the batch in progress (committed after each batch), leaves the group
    } catch (e) {
      console.error(JSON.stringify({ level: 'error', msg: 'consumer disconnect failed', error: String(e) }));
    }
    log('stopped', { ...metrics });
    process.exit(0);
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

// ------------------------------------------------------------------ main

module.exports = { validateEvent, parseEventEnvelope, migrateLegacyMessage, LegacyError, processRecord, sampleEnvelope, hub, metrics };

if (require.main === module) {
  const i = process.argv.indexOf('--bench-hotpath');
  if (i !== -1) {
    benchHotpath(Number(process.argv[i + 1] || 1000000));
  } else {
    serve().catch((e) => {
      console.error(`fatal: ${e.message}`);
      process.exit(1);
    });
  }
}

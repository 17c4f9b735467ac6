/**
 * Migration of pre-envelope messages (`{ "type": …, "timestamp": …, … }`)
 * from the legacy topics into envelopes: a port of `legacy.rs`, with the same
 * mapping and the same deterministic UUID v5 ids (namespace
 * `6d6f6f6e-782d-7773-8c65-676163790001`, name `<topic>\n<canonical JSON of
 * the message>`), so a message migrated here and in the gateway gets the
 * same `eventId`. The vectors in `schema/vectors/legacy` check both.
 */
import { v5 as uuidv5 } from 'uuid';
import { canonicalJson, fromJsonTree, isObject, JsonNumber, parseJsonTree, toJsonTree, U64_MAX, type JsonObject, type JsonTree } from './json.js';
import { partitionKey } from './partition.js';
import { EMPTY_REGISTRY, type TypeRegistry } from './registry.js';
import { LEGACY_TOPICS, type EventType } from './types.js';
import { isCanonicalUuid } from './validate.js';

/** Namespace of the v5 ids given to migrated messages (fixed forever). */
export const LEGACY_NAMESPACE = '6d6f6f6e-782d-7773-8c65-676163790001';

/** Why a legacy message cannot be migrated (`LegacyError` in Rust). */
export type LegacyReason = 'not_an_object' | 'missing_type' | 'unknown_type' | 'wrong_topic' | 'missing_timestamp' | 'bad_timestamp';

export type MigrationResult =
  | { ok: true; envelope: Record<string, unknown>; /** The envelope as exact JSON text. */ json: string; tree: JsonTree }
  | { ok: false; reason: LegacyReason; message: string };

export function isLegacyTopic(topic: string): boolean {
  return (LEGACY_TOPICS as readonly string[]).includes(topic);
}

/** The event type a legacy `type` maps to (case-insensitive; `-`, `.` read as `_`). */
export function mapLegacyType(legacyType: string): EventType | undefined {
  const norm = [...legacyType.trim()].map((c) => (c === '-' || c === '.' ? '_' : /[A-Z]/.test(c) ? c.toLowerCase() : c)).join('');
  return LEGACY_TYPE_MAP[norm];
}

const LEGACY_TYPE_MAP: Record<string, EventType> = {
  price_update: 'price.updated',
  price_updated: 'price.updated',
  price: 'price.updated',
  order_created: 'order.created',
  order_create: 'order.created',
  order_new: 'order.created',
  order_updated: 'order.updated',
  order_update: 'order.updated',
  order_status: 'order.updated',
  order_cancelled: 'order.cancelled',
  order_canceled: 'order.cancelled',
  order_cancel: 'order.cancelled',
  portfolio_update: 'portfolio.updated',
  portfolio_updated: 'portfolio.updated',
  portfolio: 'portfolio.updated',
  trade_executed: 'trade.executed',
  trade_execute: 'trade.executed',
  trade_completed: 'trade.executed',
  trade: 'trade.executed',
  trade_failed: 'trade.failed',
  trade_fail: 'trade.failed',
};

/** The legacy topic that carried a type before the refactor. */
export function legacyTopicOf(t: string): string | undefined {
  switch (t) {
    case 'price.updated':
      return LEGACY_TOPICS[0];
    case 'order.created':
    case 'order.updated':
    case 'order.cancelled':
      return LEGACY_TOPICS[1];
    case 'portfolio.updated':
      return LEGACY_TOPICS[2];
    case 'trade.executed':
    case 'trade.failed':
      return LEGACY_TOPICS[3];
    default:
      return undefined;
  }
}

const RESERVED = ['type', 'timestamp', 'eventId', 'correlationId', 'source'];

/**
 * A document without `metadata` that has a `type`, or any object without
 * `metadata` on a legacy topic: what the gateway migrates.
 */
export function isLegacyShaped(doc: unknown, topic?: string | null): boolean {
  const t = doc instanceof Map ? (doc as JsonObject) : toJsonTree(doc);
  if (!isObject(t)) return false;
  return !t.has('metadata') && (t.has('type') || (topic != null && isLegacyTopic(topic)));
}

/**
 * Builds the envelope of a legacy message (not yet validated; see
 * `decodeRecord` for migrate-then-validate). `message` is JSON text (exact)
 * or a JavaScript value; `topic` is where it was read (default `legacy`).
 */
export function migrateLegacy(message: unknown, topic?: string | null, registry: TypeRegistry = EMPTY_REGISTRY): MigrationResult {
  const msg = typeof message === 'string' ? parseJsonTree(message) : message instanceof Map ? (message as JsonTree) : toJsonTree(message);
  const fail = (reason: LegacyReason, text: string): MigrationResult => ({ ok: false, reason, message: text });
  if (!isObject(msg)) return fail('not_an_object', 'a legacy message must be a JSON object');
  const legacyType = msg.get('type');
  if (typeof legacyType !== 'string') return fail('missing_type', 'the legacy message has no "type"');
  const eventType = mapLegacyType(legacyType);
  if (!eventType) return fail('unknown_type', `legacy type ${JSON.stringify(legacyType)} has no mapping to an event type`);
  if (topic != null && isLegacyTopic(topic) && legacyTopicOf(eventType) !== topic) {
    return fail('wrong_topic', `legacy type ${JSON.stringify(legacyType)} does not belong on topic ${topic}`);
  }
  const ts = msg.get('timestamp');
  if (ts === undefined) return fail('missing_timestamp', 'the legacy message has no "timestamp"');
  const timestamp = legacyTimestamp(ts);
  if (timestamp === undefined) return fail('bad_timestamp', `legacy timestamp ${canonicalJson(ts)} is not a number of milliseconds or seconds`);

  const dataField = msg.get('data');
  const data: JsonObject = isObject(dataField) ? new Map(dataField) : new Map([...msg].filter(([k]) => !RESERVED.includes(k)));
  const uid = msg.get('userId') ?? data.get('userId');
  const userId = typeof uid === 'string' ? uid : undefined;
  const origin = topic ?? 'legacy';
  const ownId = msg.get('eventId');
  const eventId = typeof ownId === 'string' && isCanonicalUuid(ownId) ? ownId : uuidv5(`${origin}\n${canonicalJson(msg)}`, LEGACY_NAMESPACE);
  const text = (k: string) => {
    const v = msg.get(k);
    return typeof v === 'string' ? v : undefined;
  };
  const metadata: JsonObject = new Map<string, JsonTree>([
    ['eventId', eventId],
    ['eventType', eventType],
    ['eventVersion', '1.0'],
    ['correlationId', text('correlationId') ?? eventId],
    ['timestamp', new JsonNumber(timestamp.toString())],
    ['source', text('source') ?? `legacy:${origin}`],
    ['dataClassification', registry.defaultClassification(eventType) ?? null],
    ['partition', partitionKey(eventType, userId, registry)],
    ['migratedFrom', origin],
  ]);
  if (userId !== undefined) metadata.set('userId', userId);
  const tree: JsonObject = new Map<string, JsonTree>([
    ['metadata', metadata],
    ['data', data],
  ]);
  return { ok: true, envelope: fromJsonTree(tree) as Record<string, unknown>, json: canonicalJson(tree), tree };
}

/** Milliseconds from a number or a string of digits; below 10^12 it is seconds. */
function legacyTimestamp(v: JsonTree): bigint | undefined {
  let n: bigint | undefined;
  if (v instanceof JsonNumber) {
    n = v.asU64();
    if (n === undefined) {
      const f = v.toNumber();
      if (f >= 0 && Number.isFinite(f)) {
        const t = BigInt(Math.trunc(f));
        n = t > U64_MAX ? U64_MAX : t; // Rust's `as u64` saturates
      }
    }
  } else if (typeof v === 'string' && /^[0-9]+$/.test(v)) {
    const t = BigInt(v);
    n = t <= U64_MAX ? t : undefined;
  }
  if (n === undefined) return undefined;
  if (n < 1_000_000_000_000n) {
    const ms = n * 1000n;
    return ms > U64_MAX ? U64_MAX : ms;
  }
  return n;
}

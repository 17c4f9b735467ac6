/**
 * Validation: a port of `crates/events/src/validate.rs`, the single source of
 * truth. It walks the JSON document with the same field tables and rules and
 * reports *every* error with the same JSON Pointer `path` and `code`; the
 * test suite runs every vector of `schema/vectors` through it.
 *
 * Numbers are judged by their JSON literal, as in Rust: pass the JSON text
 * (or a tree from `parseJsonTree`) to validate bytes exactly; a JavaScript
 * object is judged by its values (an integral `number` is an integer).
 */
import { isObject, JsonNumber, parseJsonTree, toJsonTree, JsonSyntaxError, type JsonObject, type JsonTree } from './json.js';
import { partitionKey } from './partition.js';
import { EMPTY_REGISTRY, type TypeRegistry } from './registry.js';
import {
  classificationRank,
  DATA_CLASSIFICATIONS,
  HEALTH_STATUSES,
  isDataClassification,
  isEventType,
  ORDER_STATUSES,
  ORDER_TYPES,
  requiresOwner,
  SEVERITIES,
  type DataClassification,
  type EventType,
} from './types.js';

/** Oldest acceptable `metadata.timestamp`: 2020-01-01T00:00:00Z. */
export const MIN_TIMESTAMP_MS = 1_577_836_800_000;
/** How far in the future a timestamp may be (clock skew between services). */
export const MAX_FUTURE_SKEW_MS = 5 * 60 * 1000;

/** Stable codes of validation errors (also used in DLQ records). */
export const VALIDATION_ERROR_CODES = [
  'required',
  'type',
  'format',
  'enum',
  'unknown_type',
  'classification_downgrade',
  'owner_required',
  'owner_mismatch',
  'timestamp',
  'partition_mismatch',
  /** Not JSON, or nested deeper than 128 levels (text input only). */
  'invalid_json',
] as const;
export type ValidationErrorCode = (typeof VALIDATION_ERROR_CODES)[number];

export interface ValidationError {
  /** JSON Pointer to the offending value, e.g. `/data/price`; `""` for the document. */
  path: string;
  code: ValidationErrorCode;
  /** Informative; not part of the contract. */
  message: string;
}

export interface ValidationResult {
  isValid: boolean;
  errors: ValidationError[];
}

export interface ValidateOptions {
  /** Custom types that are valid besides the 12 built-in ones. */
  registry?: TypeRegistry;
  /** "Now" for the future-timestamp check (ms); `null` skips that check. Default: `Date.now()`. */
  nowMs?: number | null;
}

/**
 * Checks a whole envelope. `input` is JSON text (judged byte-exactly), a
 * tree from `parseJsonTree`, or a JavaScript value.
 */
export function validateEvent(input: unknown, options: ValidateOptions = {}): ValidationResult {
  let doc: JsonTree;
  if (typeof input === 'string') {
    try {
      doc = parseJsonTree(input);
    } catch (e) {
      if (!(e instanceof JsonSyntaxError)) throw e;
      return { isValid: false, errors: [{ path: '', code: 'invalid_json', message: `not JSON: ${e.message}` }] };
    }
  } else {
    doc = isTree(input) ? input : toJsonTree(input);
  }
  const errors: ValidationError[] = [];
  const registry = options.registry ?? EMPTY_REGISTRY;
  const nowMs = options.nowMs === undefined ? Date.now() : options.nowMs;
  walkEnvelope(doc, registry, nowMs, errors);
  return { isValid: errors.length === 0, errors };
}

function isTree(v: unknown): v is JsonTree {
  return v instanceof Map || v instanceof JsonNumber;
}

type Errors = ValidationError[];
const push = (errs: Errors, path: string, code: ValidationErrorCode, message: string) => errs.push({ path, code, message });

function walkEnvelope(doc: JsonTree, registry: TypeRegistry, nowMs: number | null, errs: Errors): void {
  if (!isObject(doc)) {
    push(errs, '', 'type', 'an event must be a JSON object');
    return;
  }
  const meta = requiredObject(doc, 'metadata', errs);
  if (meta) walkFields(meta, METADATA, '/metadata', errs);
  const data = requiredObject(doc, 'data', errs);
  if (!meta) return;

  const typeValue = meta.get('eventType');
  const eventType = typeof typeValue === 'string' ? typeValue : undefined;
  const dflt = eventType === undefined ? undefined : registry.defaultClassification(eventType);
  if (eventType !== undefined && dflt === undefined) {
    push(errs, '/metadata/eventType', 'unknown_type', `${JSON.stringify(eventType)} is neither a built-in nor a registered event type`);
  }
  if (eventType !== undefined && data && isEventType(eventType)) walkFields(data, DATA_FIELDS[eventType], '/data', errs);

  const str = (v: JsonTree | undefined) => (typeof v === 'string' ? v : undefined);
  const cls = str(meta.get('dataClassification'));
  const ts = meta.get('timestamp');
  checkRules(
    {
      eventType,
      partition: str(meta.get('partition')),
      defaultClassification: dflt,
      classification: cls !== undefined && isDataClassification(cls) ? cls : undefined,
      userId: str(meta.get('userId')),
      dataUserId: data ? str(data.get('userId')) : undefined,
      timestamp: ts instanceof JsonNumber ? ts.asU64() : undefined,
    },
    registry,
    nowMs,
    errs,
  );
}

interface Facts {
  eventType: string | undefined;
  partition: string | undefined;
  defaultClassification: DataClassification | undefined;
  classification: DataClassification | undefined;
  userId: string | undefined;
  dataUserId: string | undefined;
  timestamp: bigint | undefined;
}

function checkRules(f: Facts, registry: TypeRegistry, nowMs: number | null, errs: Errors): void {
  if (f.classification && f.defaultClassification && classificationRank(f.classification) < classificationRank(f.defaultClassification)) {
    push(
      errs,
      '/metadata/dataClassification',
      'classification_downgrade',
      `${f.classification} is below this type's default ${f.defaultClassification}; it may be raised, never lowered`,
    );
  }
  const ranks = [f.classification, f.defaultClassification].filter((c): c is DataClassification => c !== undefined).map(classificationRank);
  const effective = ranks.length ? DATA_CLASSIFICATIONS[Math.max(...ranks)] : undefined;
  if (effective && requiresOwner(effective) && f.userId === undefined) {
    push(errs, '/metadata/userId', 'owner_required', 'confidential and restricted events must carry the owning userId');
  }
  if (f.userId !== undefined && f.dataUserId !== undefined && f.userId !== f.dataUserId) {
    push(errs, '/data/userId', 'owner_mismatch', `${JSON.stringify(f.dataUserId)} differs from metadata.userId ${JSON.stringify(f.userId)}`);
  }
  // Only for a known type and a non-empty partition (an empty one is already
  // a `format` error). The owner is metadata.userId, else data.userId.
  if (f.eventType !== undefined && f.defaultClassification && f.partition !== undefined && f.partition !== '') {
    const owner = f.userId || f.dataUserId || undefined;
    const expected = partitionKey(f.eventType, owner, registry);
    if (f.partition !== expected) {
      push(
        errs,
        '/metadata/partition',
        'partition_mismatch',
        `is ${JSON.stringify(f.partition)}, but events of this type are keyed ${JSON.stringify(expected)} (the partition-key strategy)`,
      );
    }
  }
  if (f.timestamp !== undefined) {
    if (f.timestamp < BigInt(MIN_TIMESTAMP_MS)) {
      push(errs, '/metadata/timestamp', 'timestamp', 'is before 2020-01-01; it must be milliseconds since the Unix epoch');
    } else if (nowMs !== null && f.timestamp > BigInt(nowMs) + BigInt(MAX_FUTURE_SKEW_MS)) {
      push(errs, '/metadata/timestamp', 'timestamp', 'is more than 5 minutes in the future');
    }
  }
}

function requiredObject(root: JsonObject, key: string, errs: Errors): JsonObject | undefined {
  const v = root.get(key);
  if (isObject(v)) return v;
  if (v === undefined) push(errs, `/${key}`, 'required', 'is required');
  else push(errs, `/${key}`, 'type', 'must be an object');
  return undefined;
}

/** The JSON shape a field must have (`enum Kind` in validate.rs). */
type Kind =
  | { k: 'text' }
  | { k: 'uuid' }
  | { k: 'version' }
  | { k: 'amount' }
  | { k: 'signedAmount' }
  | { k: 'uint' }
  | { k: 'oneOf'; allowed: readonly string[] }
  | { k: 'object' }
  | { k: 'arrayOf'; item: readonly Field[] };

interface Field {
  name: string;
  kind: Kind;
  required: boolean;
}

const req = (name: string, kind: Kind): Field => ({ name, kind, required: true });
const opt = (name: string, kind: Kind): Field => ({ name, kind, required: false });
const Text: Kind = { k: 'text' };
const Uuid: Kind = { k: 'uuid' };
const Version: Kind = { k: 'version' };
const Amount: Kind = { k: 'amount' };
const SignedAmount: Kind = { k: 'signedAmount' };
const UInt: Kind = { k: 'uint' };
const ObjectKind: Kind = { k: 'object' };
const OneOf = (allowed: readonly string[]): Kind => ({ k: 'oneOf', allowed });
const ArrayOf = (item: readonly Field[]): Kind => ({ k: 'arrayOf', item });

const METADATA: readonly Field[] = [
  req('eventId', Uuid),
  req('eventType', Text),
  req('eventVersion', Version),
  req('correlationId', Text),
  opt('causationId', Text),
  req('timestamp', UInt),
  req('source', Text),
  opt('userId', Text),
  req('dataClassification', OneOf(DATA_CLASSIFICATIONS)),
  req('partition', Text),
  opt('migratedFrom', Text),
];

const HOLDING: readonly Field[] = [req('token', Text), req('chainId', UInt), req('balance', Amount), req('valueUsd', Amount)];

const DATA_FIELDS: Readonly<Record<EventType, readonly Field[]>> = {
  'price.updated': [
    req('token', Text),
    req('chainId', UInt),
    req('price', Amount),
    req('priceUsd', Amount),
    req('change24h', SignedAmount),
    req('volume24h', Amount),
  ],
  'order.created': [
    req('orderId', Text),
    req('userId', Text),
    req('tokenIn', Text),
    req('tokenOut', Text),
    req('amountIn', Amount),
    req('amountOutExpected', Amount),
    req('chainId', UInt),
    req('orderType', OneOf(ORDER_TYPES)),
    req('status', OneOf(ORDER_STATUSES)),
    opt('limitPrice', Amount),
  ],
  'order.updated': [
    req('orderId', Text),
    req('userId', Text),
    req('status', OneOf(ORDER_STATUSES)),
    opt('previousStatus', OneOf(ORDER_STATUSES)),
    opt('filledAmount', Amount),
    opt('amountOut', Amount),
    opt('txHash', Text),
  ],
  'order.cancelled': [req('orderId', Text), req('userId', Text), opt('reason', Text), opt('cancelledBy', Text)],
  'portfolio.updated': [req('userId', Text), req('totalValueUsd', Amount), req('holdings', ArrayOf(HOLDING)), opt('change24h', SignedAmount)],
  'trade.executed': [
    req('tradeId', Text),
    req('orderId', Text),
    req('userId', Text),
    req('tokenIn', Text),
    req('tokenOut', Text),
    req('amountIn', Amount),
    req('amountOut', Amount),
    req('price', Amount),
    req('chainId', UInt),
    req('txHash', Text),
    opt('fee', Amount),
  ],
  'trade.failed': [
    req('orderId', Text),
    req('userId', Text),
    req('tokenIn', Text),
    req('tokenOut', Text),
    req('amountIn', Amount),
    req('chainId', UInt),
    req('reason', Text),
    opt('tradeId', Text),
    opt('errorCode', Text),
    opt('txHash', Text),
  ],
  'user.connected': [req('userId', Text), req('connectionId', Text), req('instanceId', Text)],
  'user.disconnected': [req('userId', Text), req('connectionId', Text), req('instanceId', Text), opt('reason', Text), opt('durationMs', UInt)],
  'system.health_check': [req('service', Text), req('status', OneOf(HEALTH_STATUSES)), opt('uptimeSeconds', UInt), opt('details', ObjectKind)],
  'session.revoked': [req('userId', Text), req('revokedAt', UInt), opt('reason', Text), opt('revokedBy', Text), opt('instanceId', Text)],
  'system.error': [req('service', Text), req('errorCode', Text), req('message', Text), req('severity', OneOf(SEVERITIES)), opt('details', ObjectKind)],
};

function walkFields(obj: JsonObject, fields: readonly Field[], at: string, errs: Errors): void {
  for (const f of fields) {
    const path = `${at}/${f.name}`;
    const v = obj.get(f.name);
    if (v === undefined) {
      if (f.required) push(errs, path, 'required', 'is required');
    } else {
      checkKind(v, f.kind, path, errs);
    }
  }
}

function checkKind(v: JsonTree, kind: Kind, path: string, errs: Errors): void {
  const expectString = (): string | undefined => {
    if (typeof v === 'string') return v;
    push(errs, path, 'type', 'must be a string');
    return undefined;
  };
  switch (kind.k) {
    case 'text': {
      if (expectString() === '') push(errs, path, 'format', 'must not be empty');
      return;
    }
    case 'uuid': {
      const s = expectString();
      if (s !== undefined && !isCanonicalUuid(s)) push(errs, path, 'format', 'must be a UUID (8-4-4-4-12 hex digits)');
      return;
    }
    case 'version': {
      const s = expectString();
      if (s !== undefined && !isVersion(s)) push(errs, path, 'format', 'must be a version like "1.0"');
      return;
    }
    case 'amount': {
      const s = expectString();
      if (s !== undefined && (!isDecimal(s) || s.startsWith('-'))) push(errs, path, 'format', 'must be a non-negative decimal string like "3000.00"');
      return;
    }
    case 'signedAmount': {
      const s = expectString();
      if (s !== undefined && !isDecimal(s)) push(errs, path, 'format', 'must be a decimal string like "-0.05"');
      return;
    }
    case 'uint':
      if (!(v instanceof JsonNumber) || v.asU64() === undefined) push(errs, path, 'type', 'must be a non-negative integer');
      return;
    case 'oneOf': {
      const s = expectString();
      if (s !== undefined && !kind.allowed.includes(s)) push(errs, path, 'enum', `must be one of ${kind.allowed.join(', ')}`);
      return;
    }
    case 'object':
      if (!isObject(v)) push(errs, path, 'type', 'must be an object');
      return;
    case 'arrayOf':
      if (!Array.isArray(v)) {
        push(errs, path, 'type', 'must be an array');
        return;
      }
      v.forEach((item, i) => {
        const at = `${path}/${i}`;
        if (isObject(item)) walkFields(item, kind.item, at, errs);
        else push(errs, at, 'type', 'must be an object');
      });
      return;
  }
}

/** `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$` */
export function isCanonicalUuid(s: string): boolean {
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(s);
}

/** `major.minor` or `major.minor.patch`. */
export function isVersion(s: string): boolean {
  return /^[0-9]+\.[0-9]+(\.[0-9]+)?$/.test(s);
}

/** The decimal grammar shared with the model and `schema/`: `^-?[0-9]+(\.[0-9]+)?$`. */
export function isDecimal(s: string): boolean {
  return /^-?[0-9]+(\.[0-9]+)?$/.test(s);
}

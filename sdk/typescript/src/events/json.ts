/**
 * Lossless JSON: the Rust model decides integer-ness from the JSON literal
 * (`1` is an integer, `1.0` and `1e0` are not; UInts go up to 2^64−1), which
 * `JSON.parse` cannot tell apart. This module parses into a tree that keeps
 * every number's literal, and writes the canonical form serde_json writes
 * (compact, keys sorted by code point, floats in Rust's shortest form), which
 * legacy migration hashes into its deterministic ids.
 *
 * Guarantee: `canonicalJson(parseJsonTree(text))` equals serde_json's
 * `Value::to_string()` of the same text, for any text both accept.
 */

/** A JSON number with its literal kept. */
export class JsonNumber {
  constructor(readonly literal: string) {}

  /** Whether the literal is an integer (no fraction, no exponent). */
  get isIntegerLiteral(): boolean {
    return !/[.eE]/.test(this.literal);
  }

  /** The value when it is a non-negative integer literal ≤ 2^64−1 (serde_json's `as_u64`). */
  asU64(): bigint | undefined {
    if (!this.isIntegerLiteral || this.literal.startsWith('-')) return undefined;
    const n = BigInt(this.literal);
    return n <= U64_MAX ? n : undefined;
  }

  /** As a JavaScript number (may round). */
  toNumber(): number {
    return Number(this.literal);
  }

  /** How serde_json writes this number after parsing it. */
  canonical(): string {
    if (this.isIntegerLiteral) {
      const negative = this.literal.startsWith('-');
      const magnitude = BigInt(negative ? this.literal.slice(1) : this.literal);
      if (!negative && magnitude <= U64_MAX) return magnitude.toString();
      if (negative && magnitude === 0n) return '-0.0';
      if (negative && magnitude <= I64_MIN_MAGNITUDE) return '-' + magnitude.toString();
    }
    return formatF64(Number(this.literal));
  }
}

export const U64_MAX = (1n << 64n) - 1n;
const I64_MIN_MAGNITUDE = 1n << 63n;

/** A JSON value with lossless numbers and objects as Maps (last duplicate wins). */
export type JsonTree = null | boolean | string | JsonNumber | JsonTree[] | JsonObject;
export type JsonObject = Map<string, JsonTree>;

export function isObject(v: JsonTree | undefined): v is JsonObject {
  return v instanceof Map;
}

export class JsonSyntaxError extends Error {
  constructor(message: string, readonly position: number) {
    super(`${message} at position ${position}`);
    this.name = 'JsonSyntaxError';
  }
}

/** Deepest nesting accepted (the Rust model's limit). */
export const MAX_DEPTH = 128;

/** Parses JSON text (RFC 8259) into a lossless tree. */
export function parseJsonTree(text: string): JsonTree {
  let i = 0;
  const fail = (msg: string): never => {
    throw new JsonSyntaxError(msg, i);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const value = (depth: number): JsonTree => {
    if (depth > MAX_DEPTH) fail('nesting deeper than ' + MAX_DEPTH);
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: JsonObject = new Map();
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a member name');
        const key = string();
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        obj.set(key, value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: JsonTree[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return string();
    if (text.startsWith('true', i)) {
      i += 4;
      return true;
    }
    if (text.startsWith('false', i)) {
      i += 5;
      return false;
    }
    if (text.startsWith('null', i)) {
      i += 4;
      return null;
    }
    const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 1100));
    if (!m || m[0] === '' || m[0] === '-') return fail('expected a value');
    const literal = m[0];
    if (!Number.isFinite(Number(literal))) fail('number out of range');
    i += literal.length;
    return new JsonNumber(literal);
  };
  const string = (): string => {
    i++; // opening quote
    let out = '';
    let start = i;
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        return out;
      }
      if (c < 0x20) fail('control character in string');
      if (c === 0x5c) {
        out += text.slice(start, i);
        const e = text[i + 1];
        const simple: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
        if (e !== undefined && e in simple) {
          out += simple[e];
          i += 2;
        } else if (e === 'u') {
          const hex = text.slice(i + 2, i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape');
          const unit = parseInt(hex, 16);
          i += 6;
          if (unit >= 0xd800 && unit <= 0xdbff) {
            const low = /^\\u([0-9a-fA-F]{4})/.exec(text.slice(i, i + 6));
            const lowUnit = low ? parseInt(low[1]!, 16) : -1;
            if (lowUnit < 0xdc00 || lowUnit > 0xdfff) fail('lone surrogate');
            out += String.fromCharCode(unit, lowUnit);
            i += 6;
          } else if (unit >= 0xdc00 && unit <= 0xdfff) {
            fail('lone surrogate');
          } else {
            out += String.fromCharCode(unit);
          }
        } else {
          fail('bad escape');
        }
        start = i;
        continue;
      }
      i++;
    }
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}

/**
 * Converts a JavaScript value into a tree, as `JSON.stringify` would see it
 * (`toJSON`, `undefined` members dropped). Integral numbers become integer
 * literals; `bigint`s are exact.
 */
export function toJsonTree(v: unknown): JsonTree {
  if (v === null || v === undefined) return null;
  if (v instanceof JsonNumber) return v;
  if (v instanceof Map) return new Map([...v].map(([k, val]) => [String(k), toJsonTree(val)]));
  if (typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    return toJsonTree((v as { toJSON: () => unknown }).toJSON());
  }
  switch (typeof v) {
    case 'boolean':
    case 'string':
      return v;
    case 'bigint':
      return new JsonNumber(v.toString());
    case 'number':
      if (!Number.isFinite(v)) return null;
      if (Number.isInteger(v) && !Object.is(v, -0) && Math.abs(v) < 2 ** 64) return new JsonNumber(BigInt(v).toString());
      return new JsonNumber(formatF64(v));
    case 'object': {
      if (Array.isArray(v)) return v.map(toJsonTree);
      const obj: JsonObject = new Map();
      for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
        if (val !== undefined && typeof val !== 'function' && typeof val !== 'symbol') obj.set(k, toJsonTree(val));
      }
      return obj;
    }
    default:
      return null;
  }
}

/**
 * Converts a tree to plain JavaScript. Numbers become `number`s, except
 * integers beyond 2^53 (`bigint`, exact); write such values with
 * {@link stringifyJson}.
 */
export function fromJsonTree(t: JsonTree): unknown {
  if (t instanceof JsonNumber) {
    if (t.isIntegerLiteral) {
      const n = Number(t.literal);
      return Number.isSafeInteger(n) ? n : BigInt(t.literal);
    }
    return t.toNumber();
  }
  if (Array.isArray(t)) return t.map(fromJsonTree);
  if (t instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of t) {
      Object.defineProperty(out, k, { value: fromJsonTree(v), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return t;
}

/** serde_json's compact form: keys sorted by code point, no whitespace. */
export function canonicalJson(t: JsonTree): string {
  if (t === null) return 'null';
  if (typeof t === 'boolean') return t ? 'true' : 'false';
  if (typeof t === 'string') return JSON.stringify(t);
  if (t instanceof JsonNumber) return t.canonical();
  if (Array.isArray(t)) return '[' + t.map(canonicalJson).join(',') + ']';
  const keys = [...t.keys()].sort(compareCodePoints);
  return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonicalJson(t.get(k)!)).join(',') + '}';
}

/** JSON text of a JavaScript value, exact for `bigint`s (canonical form). */
export function stringifyJson(v: unknown): string {
  return canonicalJson(toJsonTree(v));
}

/** Orders strings as Rust orders them (by UTF-8 bytes, i.e. by code point). */
export function compareCodePoints(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** A finite double as Rust's ryu writes it (`1.0`, `0.001`, `1e16`, `1.5e-7`). */
export function formatF64(v: number): string {
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const sign = v < 0 ? '-' : '';
  // toExponential() without an argument gives the shortest round-trip digits.
  const [mant, exp] = Math.abs(v).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const length = digits.length;
  const kk = Number(exp) + 1; // 10^(kk-1) <= v < 10^kk
  const k = kk - length;
  let body: string;
  if (k >= 0 && kk <= 16) body = digits + '0'.repeat(k) + '.0';
  else if (kk > 0 && kk <= 16) body = digits.slice(0, kk) + '.' + digits.slice(kk);
  else if (kk > -5 && kk <= 0) body = '0.' + '0'.repeat(-kk) + digits;
  else if (length === 1) body = digits + 'e' + (kk - 1);
  else body = digits[0] + '.' + digits.slice(1) + 'e' + (kk - 1);
  return sign + body;
}

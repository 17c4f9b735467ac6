/**
 * One record as the gateway sees it (mirrors `decode_slow`): parse, migrate
 * when legacy-shaped, validate. The verdict and the DLQ reason code are the
 * gateway's: `invalid_json`, `legacy_unmigratable` (with the reason) or
 * `invalid_event` (with every error).
 */
import { canonicalJson, fromJsonTree, JsonSyntaxError, parseJsonTree, toJsonTree, type JsonTree } from './json.js';
import { isLegacyShaped, migrateLegacy, type LegacyReason } from './legacy.js';
import { EMPTY_REGISTRY, type TypeRegistry } from './registry.js';
import { validateEvent, type ValidationError } from './validate.js';

export interface DecodeOptions {
  /** The topic the record came from (legacy topics migrate any object without metadata). */
  topic?: string | null;
  registry?: TypeRegistry;
  /** "Now" for the future-timestamp check; `null` skips it. Default `Date.now()`. */
  nowMs?: number | null;
}

export type DecodeResult =
  | { ok: true; event: Record<string, unknown>; json: string; migrated: boolean }
  | { ok: false; code: 'invalid_json'; message: string }
  | { ok: false; code: 'legacy_unmigratable'; legacyReason: LegacyReason; message: string }
  | { ok: false; code: 'invalid_event'; errors: ValidationError[] };

/** Decodes one record: `input` is its text (exact) or a JavaScript value. */
export function decodeRecord(input: unknown, options: DecodeOptions = {}): DecodeResult {
  let doc: JsonTree;
  if (typeof input === 'string') {
    try {
      doc = parseJsonTree(input);
    } catch (e) {
      if (e instanceof JsonSyntaxError) return { ok: false, code: 'invalid_json', message: e.message };
      throw e;
    }
  } else {
    doc = toJsonTree(input);
  }
  const registry = options.registry ?? EMPTY_REGISTRY;
  let migrated = false;
  if (isLegacyShaped(doc, options.topic)) {
    const m = migrateLegacy(doc, options.topic, registry);
    if (!m.ok) return { ok: false, code: 'legacy_unmigratable', legacyReason: m.reason, message: m.message };
    doc = m.tree;
    migrated = true;
  }
  const { errors } = validateEvent(doc, { registry, nowMs: options.nowMs });
  if (errors.length) return { ok: false, code: 'invalid_event', errors };
  return { ok: true, event: fromJsonTree(doc) as Record<string, unknown>, json: canonicalJson(doc), migrated };
}

// Every vector of schema/vectors through the TypeScript model: the same
// verdict, the same (path, code) set, the same migrated envelope (eventId
// included) as the Rust model (crates/events/tests/vectors.rs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { schemaDir } from './helpers.mjs';
import { validateEvent, decodeRecord, migrateLegacy, parseJsonTree, canonicalJson, stringifyJson, MAIN_TOPIC } from '../dist/events/index.js';

/** "now" of every vector (schema/README.md). */
const VECTOR_NOW_MS = 1764000600000;

function vectors(sub) {
  const dir = path.join(schemaDir, 'vectors', sub);
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ file: `${sub}/${f}`, tree: parseJsonTree(fs.readFileSync(path.join(dir, f), 'utf8')) }));
}

const errorSet = (errors) => [...new Set(errors.map((e) => `${e.path} ${e.code}`))].sort();
const expectedSet = (tree) => errorSet(tree.get('errors').map((e) => ({ path: e.get('path'), code: e.get('code') })));

test('there are vectors of every kind', () => {
  assert.ok(vectors('valid').length >= 20);
  assert.ok(vectors('invalid').length >= 50);
  assert.ok(vectors('legacy').length >= 15);
});

for (const sub of ['valid', 'invalid']) {
  for (const { file, tree } of vectors(sub)) {
    test(`vector ${file}`, () => {
      const input = tree.get('input');
      const valid = tree.get('valid');
      const result = validateEvent(input, { nowMs: VECTOR_NOW_MS });
      assert.equal(result.isValid, valid, `verdict; errors: ${JSON.stringify(result.errors)}`);
      assert.equal(result.errors.length === 0, result.isValid);
      if (valid) {
        assert.equal(sub, 'valid');
        // The decoded envelope, written again, is still valid.
        const d = decodeRecord(canonicalJson(input), { topic: MAIN_TOPIC, nowMs: VECTOR_NOW_MS });
        assert.ok(d.ok, stringifyJson(d));
        assert.ok(validateEvent(d.json, { nowMs: VECTOR_NOW_MS }).isValid);
      } else {
        assert.equal(sub, 'invalid');
        assert.deepEqual(errorSet(result.errors), expectedSet(tree));
        // As text (the bytes a consumer reads) the verdict is the same.
        assert.deepEqual(errorSet(validateEvent(canonicalJson(input), { nowMs: VECTOR_NOW_MS }).errors), expectedSet(tree));
      }
    });
  }
}

for (const { file, tree } of vectors('legacy')) {
  test(`vector ${file}`, () => {
    const input = tree.get('input');
    const topic = tree.get('topic') ?? null;
    const decoded = decodeRecord(canonicalJson(input), { topic, nowMs: VECTOR_NOW_MS });
    const expected = tree.get('expected');
    if (expected !== undefined) {
      assert.ok(decoded.ok, `the model refuses it: ${stringifyJson(decoded)}`);
      const migrated = migrateLegacy(input, topic);
      assert.ok(migrated.ok, stringifyJson(migrated));
      assert.equal(migrated.json, canonicalJson(expected), 'migrated envelope, member by member');
      assert.equal(decoded.json, canonicalJson(expected));
      assert.ok(validateEvent(expected, { nowMs: VECTOR_NOW_MS }).isValid, '`expected` is a valid envelope');
    } else {
      const code = tree.get('expectedError');
      assert.ok(!decoded.ok, `expected ${code}, the model accepts it`);
      assert.equal(decoded.code, code, stringifyJson(decoded));
      if (code === 'legacy_unmigratable') assert.equal(decoded.legacyReason, tree.get('legacyReason'));
      if (code === 'invalid_event') assert.deepEqual(errorSet(decoded.errors), expectedSet(tree));
    }
  });
}

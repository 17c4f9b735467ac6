// schema/asyncapi.yaml: valid AsyncAPI 3.0 (@asyncapi/parser), its $refs to
// the JSON Schemas resolve, and it names everything the Rust code knows:
// every event type, channel, error code, close code, client and server
// message type, Kafka header, read from the Rust sources so the two cannot
// drift.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Parser, fromFile } from '@asyncapi/parser';
import { repoRoot, schemaDir } from './helpers.mjs';

const rust = (p) => fs.readFileSync(path.join(repoRoot, p), 'utf8');
const all = (re, text) => [...text.matchAll(re)].map((m) => m[1]);
const sorted = (xs) => [...new Set(xs)].sort();

// What the Rust code knows.
const eventTypeRs = rust('crates/events/src/event_type.rs');
const deliverRs = rust('crates/gateway/src/deliver/mod.rs');
const protocolRs = rust('crates/gateway/src/deliver/protocol.rs');
const sessionRs = rust('crates/gateway/src/deliver/session.rs');
const parseFn = protocolRs.slice(protocolRs.indexOf('pub fn parse('), protocolRs.indexOf('fn with_id('));
// The code outside the unit tests (whose literals are inputs, not what the server sends).
const protocolCode = protocolRs.slice(0, protocolRs.indexOf('#[cfg(test)]'));
// Server frames are built by the constructors: a `json!({"type": …})` value,
// or the event frame's leading bytes (`extend_from_slice(b"{\"type\":\"event\"…`).
// A `{"type":…}` inside an error message's text is not a frame and is not read.
const serverTypes = [
  ...all(/json!\(\{"type": "(\w+)"/g, protocolCode),
  ...all(/extend_from_slice\(b"\{\\"type\\":\\"(\w+)\\"/g, protocolCode),
];
// Close codes: the ones every `Disconnect` value of session.rs sends, each
// name resolved to its number (the `close_code` module, or a const of session.rs).
const u16Consts = (text) => Object.fromEntries([...text.matchAll(/const (\w+): u16 = (\d+);/g)].map((m) => [m[1], Number(m[2])]));
const closeCodeModule = protocolRs.slice(protocolRs.indexOf('pub mod close_code'), protocolRs.indexOf('}', protocolRs.indexOf('pub mod close_code')));
const closeConsts = { ...u16Consts(sessionRs), ...Object.fromEntries(Object.entries(u16Consts(closeCodeModule)).map(([k, v]) => [`close_code::${k}`, v])) };
const disconnectCodes = all(/Disconnect \{ code: Some\(([\w:]+)\)/g, sessionRs).map((name) => {
  assert.ok(name in closeConsts, `close code ${name} resolved`);
  return closeConsts[name];
});
const RUST = {
  eventTypes: sorted(all(/EventType::\w+ => "([^"]+)"/g, eventTypeRs)),
  channels: sorted(all(/Channel::\w+ => "([^"]+)"/g, deliverRs)),
  errorCodes: sorted(all(/ErrorCode::\w+ => "([^"]+)"/g, protocolRs)),
  closeCodes: sorted([...Object.values(u16Consts(closeCodeModule)), ...disconnectCodes]),
  disconnectCodes: sorted(disconnectCodes),
  clientTypes: sorted(all(/^\s*"(\w+)" =>/gm, parseFn)),
  clientFields: sorted(all(/^\s*(\w+): Option<Value>,/gm, protocolRs.slice(protocolRs.indexOf('struct Raw'))).map((f) => (f === 'kind' ? 'type' : f))),
  serverTypes: sorted(serverTypes),
  eventHeaders: sorted(all(/pub const \w+: &str = "([^"]+)";/g, rust('crates/gateway/src/kafka/mod.rs'))),
  dlqHeaders: sorted(all(/pub const \w+: &str = "(dlq\.[^"]+)";/g, rust('crates/gateway/src/pipeline/dead_letter.rs'))),
};

test('the Rust sources were read (the regexes still match the code)', () => {
  assert.equal(RUST.eventTypes.length, 12);
  assert.ok(RUST.eventTypes.includes('session.revoked'));
  assert.deepEqual(RUST.channels, ['orders', 'portfolio', 'prices', 'system', 'trades']);
  assert.ok(RUST.errorCodes.length >= 7, RUST.errorCodes.join());
  assert.ok(RUST.closeCodes.includes(3008) && RUST.closeCodes.includes(4001), RUST.closeCodes.join());
  assert.ok(RUST.disconnectCodes.includes(1002) && RUST.disconnectCodes.includes(1007), RUST.disconnectCodes.join());
  assert.deepEqual(RUST.serverTypes, ['authenticated', 'error', 'event', 'pong', 'subscribed', 'unsubscribed']);
  assert.deepEqual(RUST.clientTypes, ['auth', 'ping', 'subscribe', 'unsubscribe']);
  assert.ok(RUST.clientFields.includes('channel') && RUST.clientFields.includes('tokens'), RUST.clientFields.join());
  assert.ok(RUST.serverTypes.includes('event') && RUST.serverTypes.includes('subscribed'), RUST.serverTypes.join());
  assert.ok(RUST.eventHeaders.includes('eventType'));
  assert.ok(RUST.dlqHeaders.includes('dlq.reason'));
});

const parsed = (async () => {
  const { document, diagnostics } = await fromFile(new Parser(), path.join(schemaDir, 'asyncapi.yaml')).parse();
  return { document, diagnostics };
})();

test('asyncapi.yaml is a valid AsyncAPI 3.0 document', async () => {
  const { document, diagnostics } = await parsed;
  const problems = diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code} ${d.message} at ${d.path.join('.')}`);
  assert.deepEqual(problems, []);
  assert.ok(document, 'parsed');
  assert.equal(document.version(), '3.0.0');
});

const payloadOf = (channel, name) => channel.messages().all().find((m) => m.name() === name)?.payload()?.json();
const constType = (payload) => payload?.properties?.type?.const;

test('the main topic carries the 12 event types, each referencing the JSON Schemas', async () => {
  const { document } = await parsed;
  const events = document.channels().get('events');
  assert.equal(events.address(), 'moonx.ws.events');
  assert.deepEqual(sorted(events.messages().all().map((m) => m.name())), RUST.eventTypes);
  for (const t of RUST.eventTypes) {
    const p = payloadOf(events, t);
    const envelope = p.allOf[0];
    assert.equal(envelope.$id, 'https://moonx.dev/schema/envelope.schema.json', `${t}: the envelope schema, resolved`);
    assert.equal(p.allOf[1].properties.metadata.properties.eventType.const, t);
    const data = p.allOf[1].properties.data;
    assert.equal(data.$id, `https://moonx.dev/schema/data/${t}.schema.json`, `${t}: its data schema, resolved`);
    const onDisk = JSON.parse(fs.readFileSync(path.join(schemaDir, 'data', `${t}.schema.json`), 'utf8'));
    assert.deepEqual(sorted(Object.keys(data.properties)), sorted(Object.keys(onDisk.properties)));
    const msg = events.messages().all().find((m) => m.name() === t);
    assert.deepEqual(sorted(Object.keys(msg.headers().json().properties)), RUST.eventHeaders, `${t}: the record headers`);
    assert.equal(msg.bindings().get('kafka').json().key.type, 'string', `${t}: the record key`);
  }
  const dlq = document.channels().get('deadLetters');
  assert.equal(dlq.address(), 'moonx.ws.events.dlq');
  const letter = dlq.messages().all()[0];
  for (const h of RUST.dlqHeaders) assert.ok(h in letter.headers().json().properties, `DLQ header ${h}`);
});

test('the WebSocket API: every channel, error code, close code and message type of protocol v1, and the resume fields', async () => {
  const { document } = await parsed;
  const schemas = document.json().components.schemas;
  assert.deepEqual(sorted(schemas.Channel.enum), RUST.channels);
  assert.deepEqual(sorted(schemas.ErrorCode.enum), RUST.errorCodes);
  assert.deepEqual(sorted(schemas.CloseCode.enum), RUST.closeCodes);
  const ops = document.operations();
  const types = (id) => sorted(ops.get(id).messages().all().map((m) => constType(m.payload().json())));
  assert.equal(ops.get('receiveClientMessages').action(), 'receive');
  assert.deepEqual(types('receiveClientMessages'), RUST.clientTypes);
  assert.deepEqual(types('sendServerMessages'), RUST.serverTypes);
  const ws = document.channels().get('websocket');
  const clientFields = sorted(RUST.clientTypes.flatMap((t) => Object.keys(payloadOf(ws, t).properties)));
  for (const f of RUST.clientFields) assert.ok(clientFields.includes(f), `client field ${f}`);
  assert.ok('since' in payloadOf(ws, 'subscribe').properties);
  assert.ok('recovered' in payloadOf(ws, 'subscribed').properties);
  assert.ok('missed' in payloadOf(ws, 'subscribed').properties);
  assert.ok('pos' in payloadOf(ws, 'event').properties);
  assert.equal(payloadOf(ws, 'event').properties.event.$id, 'https://moonx.dev/schema/envelope.schema.json');
});

test('the SDK names the same channels, error codes and message types', async () => {
  const sdk = await import('../dist/client/index.js');
  const ev = await import('../dist/events/index.js');
  assert.deepEqual(sorted(sdk.CHANNELS), RUST.channels);
  assert.deepEqual(sorted(sdk.SERVER_ERROR_CODES), RUST.errorCodes);
  assert.deepEqual(sorted(Object.values(sdk.CLOSE_CODES)), RUST.closeCodes);
  assert.deepEqual(sorted(sdk.CLIENT_MESSAGE_TYPES), RUST.clientTypes);
  assert.deepEqual(sorted(sdk.SERVER_MESSAGE_TYPES), RUST.serverTypes);
  assert.deepEqual(sorted(ev.EVENT_TYPES), RUST.eventTypes);
});

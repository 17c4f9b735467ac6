// The client's protocol behaviour against a scripted server (the `ws`
// package): what the real gateway cannot be made to do on demand: a
// slow_consumer notice with close 3008, duplicate frames at a resume seam,
// replies without `recovered`, a server that stops answering pings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { MoonxClient } from '../dist/client/index.js';
import { waitFor } from './gateway.mjs';

/** A scripted protocol-v1 server; `script` may override replies. */
async function scripted(script = {}) {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.on('listening', r));
  const conns = [];
  wss.on('connection', (ws) => {
    const conn = { ws, received: [] };
    conns.push(conn);
    ws.on('message', (data) => {
      const m = JSON.parse(String(data));
      conn.received.push(m);
      const reply = (o) => ws.send(JSON.stringify({ ...o, id: m.id }));
      if (m.type === 'auth') reply({ type: 'authenticated', userId: 'u1', admin: false, expiresAt: Date.now() + 3600_000 });
      if (m.type === 'subscribe') reply(script.subscribed ? script.subscribed(m, conns.length) : { type: 'subscribed', channel: m.channel });
      if (m.type === 'ping' && !script.silentPings) reply({ type: 'pong' });
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    conns,
    send: (i, o) => conns[i].ws.send(JSON.stringify(o)),
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }),
  };
}

const order = (id, pos) => ({ type: 'event', channel: 'orders', pos, event: { metadata: { eventId: id, eventType: 'order.updated' }, data: { orderId: 'o', userId: 'u1', status: 'filled' } } });

test('slow_consumer + close 3008: reconnect, re-auth, resume every channel from its last pos; the seam is deduped', async () => {
  const srv = await scripted({ subscribed: (m) => ({ type: 'subscribed', channel: m.channel, ...(m.since ? { recovered: true, missed: 1 } : {}) }) });
  const got = [];
  const resumed = [];
  const c = new MoonxClient({ url: srv.url, token: 't', reconnect: { initialDelayMs: 50, maxDelayMs: 100 }, onResumed: (i) => resumed.push(i) });
  try {
    await c.connect();
    await c.subscribe('orders', (e, info) => got.push([e.metadata.eventId, info.pos]));
    srv.send(0, order('e1', 'p1'));
    srv.send(0, order('e2', 'p2'));
    srv.send(0, order('e2', 'p2')); // a duplicate frame: dropped
    await waitFor(() => got.length === 2, 'two events');
    srv.send(0, { type: 'error', code: 'slow_consumer', message: 'your queue overflowed' });
    srv.conns[0].ws.close(3008, 'slow consumer: queue overflowed');
    await waitFor(() => resumed.length === 1, 'the resumed subscription');
    const again = srv.conns[1].received;
    assert.deepEqual(again.map((m) => m.type), ['auth', 'subscribe']);
    assert.equal(again[1].since, 'p2', 'since = the last pos seen');
    srv.send(1, order('e2', 'p2')); // the seam: already seen
    srv.send(1, order('e3', 'p3'));
    await waitFor(() => got.length === 3, 'the next event');
    assert.deepEqual(got, [['e1', 'p1'], ['e2', 'p2'], ['e3', 'p3']]);
    assert.deepEqual(resumed, [{ channel: 'orders', missed: 1 }]);
  } finally {
    c.close();
    await srv.close();
  }
});

test('a resume the server cannot prove (no `recovered`, or false) and a channel with no position are reported', async () => {
  const srv = await scripted({ subscribed: (m, n) => ({ type: 'subscribed', channel: m.channel, ...(n > 1 && m.channel === 'trades' ? { recovered: false } : {}) }) });
  const failed = [];
  const perSub = [];
  const c = new MoonxClient({ url: srv.url, token: 't', reconnect: { initialDelayMs: 50 }, onResumeFailed: (i) => failed.push(i) });
  try {
    await c.connect();
    await c.subscribe('orders', () => {}, { onResumeFailed: (i) => perSub.push(i) });
    await c.subscribe('trades', () => {});
    await c.subscribe('portfolio', () => {});
    await c.subscribe('prices', () => {}, { tokens: ['ETH'] });
    srv.send(0, order('e1', 'p1'));
    srv.send(0, { ...order('e2', 'p9'), channel: 'trades' });
    await waitFor(() => c.positions().trades === 'p9', 'positions');
    srv.conns[0].ws.terminate();
    await waitFor(() => failed.length === 3, 'three reports');
    const byChannel = Object.fromEntries(failed.map((f) => [f.channel, f.reason]));
    assert.deepEqual(byChannel, { orders: 'not_recovered', trades: 'not_recovered', portfolio: 'no_position' });
    assert.deepEqual(perSub, [{ channel: 'orders', reason: 'not_recovered' }]);
    const prices = srv.conns[1].received.find((m) => m.channel === 'prices');
    assert.deepEqual([prices.tokens, prices.since], [['ETH'], undefined], 'prices: filter kept, no resume');
  } finally {
    c.close();
    await srv.close();
  }
});

test('a server that stops answering pings is treated as dead and replaced', async () => {
  const srv = await scripted({ silentPings: true });
  const c = new MoonxClient({ url: srv.url, pingIntervalMs: 100, pongTimeoutMs: 200, reconnect: { initialDelayMs: 50 } });
  try {
    await c.connect();
    await waitFor(() => srv.conns.length >= 2, 'a second connection', 5000);
    assert.ok(srv.conns[0].received.some((m) => m.type === 'ping'));
  } finally {
    c.close();
    await srv.close();
  }
});

test('backoff grows exponentially to its ceiling, with jitter inside the bounds', () => {
  const c = new MoonxClient({ url: 'ws://127.0.0.1:1/ws', reconnect: { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.5 } });
  for (const [n, ceiling] of [[0, 100], [1, 200], [2, 400], [3, 800], [4, 1000], [10, 1000]]) {
    const samples = Array.from({ length: 200 }, () => c.backoffDelay(n));
    assert.ok(samples.every((d) => d >= ceiling / 2 && d <= ceiling), `attempt ${n}: ${Math.min(...samples)}..${Math.max(...samples)}`);
    assert.ok(new Set(samples).size > 1 || ceiling < 4, 'jittered');
  }
});

test('a server that never completes the upgrade: the client gives up on the attempt and retries; close() while connecting is safe', async () => {
  const net = await import('node:net');
  let accepted = 0;
  const sockets = [];
  const srv = net.createServer((s) => {
    accepted += 1;
    sockets.push(s);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const c = new MoonxClient({ url: `ws://127.0.0.1:${srv.address().port}/ws`, requestTimeoutMs: 200, reconnect: { initialDelayMs: 50, maxDelayMs: 100 } });
  const connecting = c.connect();
  try {
    await waitFor(() => accepted >= 2, 'a second attempt', 5000);
    c.close(); // the socket is still connecting: no crash, connect() rejects
    await assert.rejects(connecting, (e) => e.code === 'closed');
    assert.equal(c.state, 'closed');
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => srv.close(r));
  }
});

test('close 4001 (session revoked): never retried with the same token; a new token from getToken reconnects, none closes the client', async () => {
  const srv = await scripted();
  const revoked = [];
  let next = 't2';
  const c = new MoonxClient({ url: srv.url, token: 't1', getToken: () => next, reconnect: { initialDelayMs: 20, maxDelayMs: 50 }, onSessionRevoked: (e) => revoked.push(e) });
  try {
    await c.connect();
    await c.subscribe('orders', () => {});
    srv.conns[0].ws.close(4001, 'session revoked');
    await waitFor(() => srv.conns.length === 2 && srv.conns[1].received.length >= 2, 'a reconnect with the new token');
    assert.equal(revoked.length, 1);
    assert.equal(revoked[0].code, 'session_revoked');
    assert.deepEqual(srv.conns[1].received.map((m) => m.type), ['auth', 'subscribe']);
    assert.equal(srv.conns[1].received[0].token, 't2', 'the new token, never the revoked one');
    next = 't2'; // the app has no new token: the same one must not be tried
    srv.conns[1].ws.close(4001, 'session revoked');
    await waitFor(() => c.state === 'closed', 'the client closes');
    assert.equal(revoked.length, 2);
    assert.equal(srv.conns.length, 2, 'no reconnect with the revoked token');
  } finally {
    c.close();
    await srv.close();
  }

  const srv2 = await scripted();
  const errors = [];
  const c2 = new MoonxClient({ url: srv2.url, token: 't1', reconnect: { initialDelayMs: 20 }, onError: (e) => errors.push(e) });
  try {
    await c2.connect();
    srv2.conns[0].ws.close(4001, 'session revoked');
    await waitFor(() => c2.state === 'closed', 'without getToken the client closes');
    assert.equal(errors.at(-1).code, 'session_revoked');
    assert.equal(srv2.conns.length, 1);
  } finally {
    c2.close();
    await srv2.close();
  }
});

test('close 3008 is still a reconnect with the same token', async () => {
  const srv = await scripted();
  const c = new MoonxClient({ url: srv.url, token: 't1', reconnect: { initialDelayMs: 20 } });
  try {
    await c.connect();
    srv.conns[0].ws.close(3008, 'slow consumer: queue overflowed');
    await waitFor(() => srv.conns.length === 2 && srv.conns[1].received.length >= 1, 'the reconnect');
    assert.equal(srv.conns[1].received[0].token, 't1');
  } finally {
    c.close();
    await srv.close();
  }
});

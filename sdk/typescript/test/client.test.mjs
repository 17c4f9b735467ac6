// The client against the real gateway (`moonx-ws dev`, see gateway.mjs):
// every channel, the prices filter, entitlement, token expiry and refresh,
// reconnect after the server closes, resume after a network drop, and
// factory events accepted by POST /api/events.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { MoonxClient, MoonxServerError } from '../dist/client/index.js';
import { createEvent, EVENT_TYPES } from '../dist/events/index.js';
import { startGateway, startProxy, waitFor } from './gateway.mjs';
import { SAMPLE_DATA } from './samples.mjs';

let gw;
const clients = [];
before(async () => {
  gw = await startGateway();
});
after(async () => {
  for (const c of clients) c.close();
  await gw?.stop();
});

const uid = (p) => `${p}-${crypto.randomBytes(4).toString('hex')}`;

/** A client that records every event per channel, closed after the file. */
function client(opts) {
  const c = new MoonxClient({ url: gw.ws, reconnect: { initialDelayMs: 100, maxDelayMs: 1000 }, ...opts });
  clients.push(c);
  c.got = {};
  c.errors = [];
  return c;
}
async function sub(c, channel, options) {
  (c.got[channel] ??= []);
  return c.subscribe(channel, (e, info) => c.got[channel].push({ e, info }), options);
}
const ids = (c, channel) => (c.got[channel] ?? []).map((x) => x.e.metadata.eventId);

/** The sample data of `type`, owned by `user` where the type has an owner. */
function event(type, user, overrides = {}) {
  const data = { ...SAMPLE_DATA[type], ...overrides };
  if ('userId' in data) data.userId = user;
  return createEvent(type, data, { source: 'sdk-test' });
}

test('factory events of the 11 publishable types are accepted by POST /api/events and reach their channels; session.revoked is refused (admin_only)', async () => {
  const user = uid('u');
  const admin = uid('admin');
  const token = uid('TOK');
  const u = client({ token: gw.token(user) });
  const a = client({ token: gw.token(admin, { roles: ['admin'] }) });
  const anon = client({});
  await Promise.all([u.connect(), a.connect(), anon.connect()]);
  for (const ch of ['orders', 'portfolio', 'trades']) await sub(u, ch);
  await sub(a, 'system');
  await sub(anon, 'prices', { tokens: [token] });

  // session.revoked is published only by POST /api/sessions/revoke (an admin credential), never by a publish key.
  await assert.rejects(gw.publish([event('session.revoked', user)]), /publish: 400 .*admin_only/);
  const publishable = EVENT_TYPES.filter((t) => t !== 'session.revoked');
  assert.equal(publishable.length, 11);
  const events = publishable.map((t) => (t === 'price.updated' ? event(t, user, { token }) : event(t, user)));
  const answer = await gw.publish(events);
  assert.equal(answer.published.length, 11);
  assert.deepEqual(answer.published.map((p) => p.eventId), events.map((e) => e.metadata.eventId), 'published as made, ids kept');

  const expect = {
    orders: [u, ['order.created', 'order.updated', 'order.cancelled']],
    portfolio: [u, ['portfolio.updated']],
    trades: [u, ['trade.executed', 'trade.failed']],
    system: [a, ['user.connected', 'user.disconnected', 'system.health_check', 'system.error']],
    prices: [anon, ['price.updated']],
  };
  for (const [channel, [c, types]] of Object.entries(expect)) {
    const want = events.filter((e) => types.includes(e.metadata.eventType)).map((e) => e.metadata.eventId);
    await waitFor(() => want.every((id) => ids(c, channel).includes(id)), `${channel} to deliver ${types}`);
    const got = c.got[channel].filter((x) => want.includes(x.e.metadata.eventId));
    assert.deepEqual(got.map((x) => x.e.metadata.eventId), want, `${channel}: in order, once`);
    assert.deepEqual(got[0].e, events.find((e) => e.metadata.eventId === want[0]), `${channel}: the envelope as published`);
  }
});

test('the prices tokens filter: only the tokens asked for', async () => {
  const [want, other] = [uid('W'), uid('O')];
  const c = client({});
  await c.connect();
  await sub(c, 'prices', { tokens: [want] });
  const batch = [event('price.updated', null, { token: other }), event('price.updated', null, { token: want })];
  await gw.publish(batch);
  // One ordered price stream: once the later event is here, the earlier one was decided.
  await waitFor(() => ids(c, 'prices').includes(batch[1].metadata.eventId), 'the filtered token');
  assert.ok(!ids(c, 'prices').includes(batch[0].metadata.eventId), 'another token leaked through the filter');
});

test("entitlement: a user's client never sees another user's events", async () => {
  const [ua, ub] = [uid('a'), uid('b')];
  const a = client({ token: gw.token(ua) });
  const b = client({ token: gw.token(ub) });
  await Promise.all([a.connect(), b.connect()]);
  for (const c of [a, b]) for (const ch of ['orders', 'portfolio', 'trades']) await sub(c, ch);
  const ofB = ['order.created', 'portfolio.updated', 'trade.executed'].map((t) => event(t, ub));
  await gw.publish(ofB);
  await waitFor(() => ofB.every((e) => Object.keys(b.got).some((ch) => ids(b, ch).includes(e.metadata.eventId))), "B's own events at B");
  // The hub routed them already; a round trip on A's socket flushes anything queued for A.
  await a.ping();
  const all = (c) => Object.values(c.got).flat().map((x) => x.e.metadata.userId);
  assert.deepEqual(all(a).filter((u) => u !== ua), [], "A received B's events");
  assert.equal(all(b).length, 3);
});

test('private channels need a token; system needs the admin role (typed errors)', async () => {
  const anon = client({});
  await anon.connect();
  await assert.rejects(sub(anon, 'orders'), (e) => e instanceof MoonxServerError && e.code === 'unauthorized');
  const u = client({ token: gw.token(uid('u')) });
  await u.connect();
  await assert.rejects(sub(u, 'system'), (e) => e instanceof MoonxServerError && e.code === 'forbidden');
  await assert.rejects(u.subscribe('nope', () => {}), (e) => e instanceof MoonxServerError && e.code === 'unknown_channel');
});

test('token expiry: the server ends private delivery, the client refreshes, re-auths and gets events again', async () => {
  const user = uid('exp');
  let calls = 0;
  const c = client({
    getToken: () => {
      calls += 1;
      return gw.token(user, { ttlSec: calls === 1 ? 2 : 3600 });
    },
    refreshBeforeExpiryMs: 0, // wait for the server's expiry notice
    onError: (e) => c.errors.push(e),
  });
  await c.connect();
  await sub(c, 'orders');
  const firstExpiry = c.identity.expiresAt;
  await waitFor(() => c.errors.some((e) => e instanceof MoonxServerError && e.code === 'unauthorized'), 'the expiry notice', 8000);
  await waitFor(() => c.identity && c.identity.expiresAt > firstExpiry, 're-authentication with a fresh token');
  assert.equal(calls, 2);
  await waitFor(async () => (await c.ping()) >= 0 && c.state === 'open', 'open');
  const e = event('order.created', user);
  await gw.publish(e);
  await waitFor(() => ids(c, 'orders').includes(e.metadata.eventId), 'an order after the refresh');
});

test('token refresh before expiry: no gap, the server never has to say it expired', async () => {
  const user = uid('ref');
  let calls = 0;
  const c = client({
    getToken: () => {
      calls += 1;
      return gw.token(user, { ttlSec: 3 });
    },
    refreshBeforeExpiryMs: 1500,
    onError: (e) => c.errors.push(e),
  });
  await c.connect();
  await sub(c, 'orders');
  const firstExpiry = c.identity.expiresAt;
  await waitFor(() => Date.now() > firstExpiry + 500, 'the first token to be past its expiry', 8000);
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  assert.ok(c.identity.expiresAt > firstExpiry);
  const e = event('order.created', user);
  await gw.publish(e);
  await waitFor(() => ids(c, 'orders').includes(e.metadata.eventId), 'an order after the first token expired');
  assert.deepEqual(c.errors.map(String), []);
});

test('resume after a network drop: no loss, no duplicate, recovered:true (needs the server side of SPEC 6.1)', async () => {
  const user = uid('res');
  const proxy = await startProxy(gw.port);
  const resumed = [];
  const failed = [];
  const c = client({
    url: proxy.url,
    token: gw.token(user),
    reconnect: { initialDelayMs: 100, maxDelayMs: 500 },
    onResumed: (i) => resumed.push(i),
    onResumeFailed: (i) => failed.push(i),
  });
  try {
    await c.connect();
    await sub(c, 'orders');
    const before = Array.from({ length: 5 }, () => event('order.created', user));
    await gw.publish(before);
    await waitFor(() => ids(c, 'orders').length === 5, 'the first 5 orders');
    assert.ok(c.got.orders.every((x) => typeof x.info.pos === 'string'), 'every orders frame carries pos');

    // The network goes away until the missed events are published.
    proxy.block();
    proxy.dropAll();
    await waitFor(() => c.state === 'reconnecting', 'the client to notice the drop');
    const during = Array.from({ length: 20 }, () => event('order.updated', user));
    await gw.publish(during);
    proxy.unblock();
    await waitFor(() => resumed.length + failed.length > 0, 'the re-subscription', 10_000);
    const after = Array.from({ length: 5 }, () => event('order.cancelled', user));
    await gw.publish(after);
    const all = [...before, ...during, ...after].map((e) => e.metadata.eventId);
    await waitFor(() => all.every((id) => ids(c, 'orders').includes(id)), 'every order, missed ones included', 10_000);
    assert.deepEqual(failed, []);
    assert.deepEqual(resumed, [{ channel: 'orders', missed: 20 }]);
    assert.deepEqual(ids(c, 'orders'), all, 'in order, each once');
  } finally {
    c.close();
    await proxy.close();
  }
});

test('POST /api/sessions/revoke: close 4001 reaches the client as session_revoked; it reconnects only with a new token, and without getToken it closes', async () => {
  const user = uid('rev');
  const admin = gw.token(uid('admin'), { roles: ['admin'] });
  let revokedAtMs = null;
  const tokensGiven = [];
  const revoked = [];
  const c = client({
    token: gw.token(user),
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    // A token the gateway accepts after the revocation: issued in a later second than it.
    getToken: async () => {
      await waitFor(() => revokedAtMs !== null && Math.floor(Date.now() / 1000) * 1000 > revokedAtMs, 'a second after the revocation', 5_000);
      const t = gw.token(user, { iat: Math.floor(Date.now() / 1000) });
      tokensGiven.push(t);
      return t;
    },
    onSessionRevoked: (e) => revoked.push(e),
  });
  const noRefresh = client({ token: gw.token(user), reconnect: { initialDelayMs: 50 }, onError: (e) => noRefresh.errors.push(e) });
  await Promise.all([c.connect(), noRefresh.connect()]);
  await sub(c, 'orders');
  await sub(noRefresh, 'orders');

  const res = await fetch(`${gw.http}/api/sessions/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ userId: user, reason: 'sdk test' }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const answer = await res.json();
  assert.equal(answer.closedConnections, 2);
  revokedAtMs = Date.now();

  await waitFor(() => noRefresh.state === 'closed', 'the client without getToken to close', 10_000);
  assert.equal(noRefresh.errors.at(-1)?.code, 'session_revoked');
  await waitFor(() => revoked.length === 1, 'onSessionRevoked', 10_000);
  assert.equal(revoked[0].code, 'session_revoked');
  assert.match(revoked[0].message, /4001/);
  await waitFor(() => c.state === 'open' && c.identity?.userId === user && tokensGiven.length === 1, 'the reconnect with the new token', 15_000);
  const e = event('order.created', user);
  await gw.publish([e]);
  await waitFor(() => ids(c, 'orders').includes(e.metadata.eventId), 'an order after the new sign-in', 10_000);
  assert.equal(tokensGiven.length, 1, 'one new token, accepted at once');
  assert.equal(revoked.length, 1);
});

test('reconnect after the server closes the socket (restart): re-auth, re-subscribe, the possible gap reported', async () => {
  const own = await startGateway();
  const user = uid('rst');
  const states = [];
  const failed = [];
  const c = new MoonxClient({
    url: own.ws,
    token: own.token(user),
    reconnect: { initialDelayMs: 100, maxDelayMs: 500 },
    onStateChange: (s) => states.push(s),
    onResumeFailed: (i) => failed.push(i),
  });
  let restarted;
  try {
    const got = [];
    await c.connect();
    await c.subscribe('orders', (e) => got.push(e.metadata.eventId));
    const first = event('order.created', user);
    await own.publish(first);
    await waitFor(() => got.includes(first.metadata.eventId), 'an order before the restart');

    await own.stop(); // closes every socket with 1001 going away
    await waitFor(() => c.state === 'reconnecting', 'the client to notice the close');
    restarted = await startGateway({ port: own.port, secret: own.secret, apiKey: own.apiKey });
    await waitFor(() => c.state === 'open' && failed.length === 1, 'reconnected and re-subscribed', 15_000);
    // A restarted dev server is a new stream: the app must be told to refetch.
    assert.equal(failed[0].channel, 'orders');
    assert.equal(c.identity.userId, user, 're-authenticated');
    const second = event('order.updated', user);
    await restarted.publish(second);
    await waitFor(() => got.includes(second.metadata.eventId), 'an order after the restart');
    assert.deepEqual(got, [first.metadata.eventId, second.metadata.eventId]);
    assert.ok(states.includes('reconnecting'));
  } finally {
    c.close();
    await own.stop();
    await restarted?.stop();
  }
});

test('slow consumer: the server closes with 3008 and the client reconnects and goes on', async () => {
  const own = await startGateway({ env: { WS_QUEUE_CAPACITY: '8' } });
  const proxy = await startProxy(own.port);
  const errors = [];
  const c = new MoonxClient({ url: proxy.url, reconnect: { initialDelayMs: 100, maxDelayMs: 500 }, onError: (e) => errors.push(e) });
  const slowDisconnects = async () => Number(/^moonx_ws_slow_consumer_disconnects_total (\d+)/m.exec(await (await fetch(`${own.http}/metrics`)).text())?.[1] ?? 0);
  try {
    const token = uid('SLOW');
    const got = [];
    await c.connect();
    await c.subscribe('prices', (e) => got.push(e.metadata.eventId), { tokens: [token] });
    proxy.pause(); // the client stops reading: TCP buffers fill, then the server's queue
    for (let batch = 0; batch < 40 && (await slowDisconnects()) === 0; batch++) {
      await own.publish(Array.from({ length: 1000 }, () => event('price.updated', null, { token })));
    }
    assert.equal(await slowDisconnects(), 1, 'the server dropped the client as a slow consumer');
    proxy.resume(); // what was buffered flows, then the error frame and the close
    await waitFor(() => errors.some((e) => e instanceof MoonxServerError && e.code === 'slow_consumer'), 'the slow_consumer notice', 30_000);
    await waitFor(() => c.state === 'open' && proxy.connections === 1, 'a new connection', 10_000);
    const after = event('price.updated', null, { token });
    await own.publish(after);
    await waitFor(() => got.includes(after.metadata.eventId), 'events on the new connection');
    assert.equal(new Set(got).size, got.length, 'no event twice');
  } finally {
    c.close();
    await proxy.close();
    await own.stop();
  }
});

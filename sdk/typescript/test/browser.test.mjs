// The client's browser bundle (dist/browser/moonx-ws-client.js) in Debian's
// headless Chromium through playwright-core, against the real gateway:
// connect with a token, subscribe (prices with a filter, orders), reconnect
// after the connection drops, events again.
//
//   CHROMIUM_PATH  the browser (default /usr/bin/chromium; never downloaded)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { createEvent } from '../dist/events/index.js';
import { startGateway, startProxy } from './gateway.mjs';
import { sdkDir } from './helpers.mjs';
import { SAMPLE_DATA } from './samples.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
const WAIT_MS = 15_000;

const PAGE = `<!doctype html><meta charset="utf-8"><title>moonx-ws sdk</title>
<script type="module">
  import { MoonxClient } from '/moonx-ws-client.js';
  window.got = [];
  window.states = [];
  window.failed = [];
  window.resumed = [];
  window.start = async (url, token) => {
    window.client = new MoonxClient({
      url, token,
      reconnect: { initialDelayMs: 100, maxDelayMs: 500 },
      onStateChange: (s) => window.states.push(s),
      onResumeFailed: (f) => window.failed.push(f),
      onResumed: (r) => window.resumed.push(r),
    });
    await window.client.connect();
    await window.client.subscribe('prices', (e, i) => window.got.push([i.channel, e.metadata.eventId, e.data.token]), { tokens: ['BRW'] });
    await window.client.subscribe('orders', (e, i) => window.got.push([i.channel, e.metadata.eventId, e.data.orderId]));
    return { userId: window.client.identity.userId, native: typeof WebSocket === 'function' };
  };
  window.ready = true;
</script>`;

let gw, page, browser, pageServer, proxy;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
  const bundle = fs.readFileSync(path.join(sdkDir, 'dist', 'browser', 'moonx-ws-client.js'));
  pageServer = http.createServer((req, res) => {
    if (req.url === '/moonx-ws-client.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    else if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    else res.writeHead(404).end();
  });
  await new Promise((r) => pageServer.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${pageServer.address().port}`;
  gw = await startGateway({ env: { ALLOWED_ORIGINS: origin } });
  proxy = await startProxy(gw.port);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60_000 });
  page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e));
  await page.goto(origin + '/');
  await page.waitForFunction(() => window.ready === true, null, { timeout: WAIT_MS });
  assert.deepEqual(pageErrors, []);
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await gw?.stop();
  await new Promise((r) => (pageServer ? pageServer.close(r) : r()));
});

const received = (id) => page.waitForFunction((id) => window.got.some((g) => g[1] === id), id, { timeout: WAIT_MS });

test('in Chromium: connect with a token, subscribe, receive; reconnect after a drop and receive again', async () => {
  const user = 'browser-user';
  const started = await page.evaluate(([url, token]) => window.start(url, token), [proxy.url, gw.token(user)]);
  assert.deepEqual(started, { userId: user, native: true });

  const price = createEvent('price.updated', { ...SAMPLE_DATA['price.updated'], token: 'BRW' });
  const other = createEvent('price.updated', { ...SAMPLE_DATA['price.updated'], token: 'NOTME' });
  const order = createEvent('order.created', { ...SAMPLE_DATA['order.created'], userId: user, orderId: 'b-1' });
  await gw.publish([other, price, order]);
  await received(price.metadata.eventId);
  await received(order.metadata.eventId);

  proxy.dropAll();
  // Re-subscribed: resumed (a server with SPEC 6.1) or the possible gap reported.
  await page.waitForFunction(() => window.states.includes('reconnecting') && window.client.state === 'open' && window.failed.length + window.resumed.length === 1, null, { timeout: WAIT_MS });
  const order2 = createEvent('order.updated', { ...SAMPLE_DATA['order.updated'], userId: user, orderId: 'b-1' });
  await gw.publish(order2);
  await received(order2.metadata.eventId);

  const got = await page.evaluate(() => window.got);
  assert.deepEqual(got.filter((g) => g[0] === 'orders').map((g) => g[1]), [order.metadata.eventId, order2.metadata.eventId]);
  assert.deepEqual(got.filter((g) => g[0] === 'prices').map((g) => g[2]), ['BRW'], 'the filter held, the snapshot after the reconnect was deduped');
});

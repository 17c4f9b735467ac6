// Browser test of the gateway dashboard (GET /), in the system's headless Chromium.
//
//   DASHBOARD_URL=http://127.0.0.1:3008/ node tests/browser/dashboard.test.mjs
//
// Env:
//   DASHBOARD_URL    the page, optionally with ?token=<JWT> (default http://127.0.0.1:3008/)
//   CHROMIUM_PATH    the browser (default /usr/bin/chromium); playwright-core never downloads one
//   SCREENSHOT_PATH  where the full-page PNG goes (default <repo>/target/screenshots/dashboard.png)
//   DASHBOARD_TIMEOUT_MS  how long the live checks may take (default 30000)
//
// Exit code 0 when every check passed, 1 otherwise (with the reasons on stderr).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const url = process.env.DASHBOARD_URL || 'http://127.0.0.1:3008/';
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const screenshotPath = process.env.SCREENSHOT_PATH
  ? path.resolve(process.env.SCREENSHOT_PATH)
  : path.join(repoRoot, 'target', 'screenshots', 'dashboard.png');
const checkTimeoutMs = Number(process.env.DASHBOARD_TIMEOUT_MS || 30000);
const CHARTS = ['events', 'connections', 'subscriptions', 'lag', 'dlq', 'latency'];
const MIN_READ_GAP_MS = 3000;   // the two reads of data-points are at least this far apart
const MIN_TAIL_ROWS = 5;

const hasToken = (() => { try { return new URL(url).searchParams.has('token'); } catch { return false; } })();
const consoleErrors = [];
const pageErrors = [];
const wsHandshakes = [];   // WebSocket handshakes: {id, request headers, response headers}
const failedRequests = [];
const failures = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log('[dashboard-test]', ...a);

// Never hang: a hard cap well above the checks' own timeout.
const watchdog = setTimeout(() => {
  console.error('[dashboard-test] FAIL: the test did not finish within ' + (checkTimeoutMs + 60000) + ' ms');
  process.exit(1);
}, checkTimeoutMs + 60000);
watchdog.unref();

if (!fs.existsSync(executablePath)) {
  console.error(`[dashboard-test] FAIL: no Chromium at ${executablePath} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
  process.exit(1);
}

/** One reading of every hook on the page. */
async function read(page) {
  return page.evaluate((charts) => {
    const out = { charts: {}, rows: [], status: null, identity: null };
    for (const c of charts) {
      const el = document.querySelector(`[data-testid="chart-${c}"]`);
      out.charts[c] = el
        ? { points: Number(el.getAttribute('data-points')), last: el.getAttribute('data-last') }
        : null;
    }
    const tail = document.querySelector('[data-testid="tail"]');
    out.tailFound = !!tail;
    if (tail) out.rows = Array.from(tail.querySelectorAll('tr[data-event-id]')).map((r) => r.getAttribute('data-event-id'));
    const st = document.querySelector('[data-testid="ws-status"]');
    out.status = st ? st.textContent.trim() : null;
    const id = document.querySelector('[data-testid="identity"]');
    out.identity = id ? id.textContent.trim() : null;
    return out;
  }, CHARTS);
}

let browser;
let page;
try {
  log(`url: ${url}`);
  log(`chromium: ${executablePath}`);
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      consoleErrors.push(msg.text() + (loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''));
    }
  });
  page.on('pageerror', (err) => pageErrors.push(String(err && err.stack || err)));
  page.on('requestfailed', (req) => failedRequests.push(`${req.method()} ${req.url()}: ${req.failure() && req.failure().errorText}`));
  page.on('response', (res) => { if (res.status() >= 400) failedRequests.push(`${res.request().method()} ${res.url()}: HTTP ${res.status()}`); });

  // The WebSocket handshakes, seen through the DevTools protocol: Chromium
  // offers permessage-deflate and the gateway (default settings) accepts it.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => wsHandshakes.push({ id: e.requestId, request: e.request.headers }));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const h = wsHandshakes.find((x) => x.id === e.requestId);
    if (h) h.response = e.response.headers;
    else wsHandshakes.push({ id: e.requestId, response: e.response.headers });
  });

  const response = await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  if (!response) failures.push('no response for the page');
  else if (!response.ok()) failures.push(`the page answered HTTP ${response.status()}`);
  const ctype = response && response.headers()['content-type'] || '';
  if (response && !/text\/html/i.test(ctype)) failures.push(`the page's content-type is "${ctype}", not text/html`);

  if (!failures.length) {
    const deadline = Date.now() + checkTimeoutMs;
    const done = {
      connected: false,
      eventsPositive: false,
      tailRows: false,
      tailChanges: false,
      identity: !hasToken,
    };
    const firstPoints = {};      // chart -> {points, at} of the first reading once connected
    const increased = {};
    let tailBaseline = null;     // the row ids of the first reading with at least MIN_TAIL_ROWS rows
    let r = null;

    while (Date.now() < deadline) {
      r = await read(page);
      const now = Date.now();
      if (r.status === 'connected') done.connected = true;
      if (done.connected) {
        for (const c of CHARTS) {
          const ch = r.charts[c];
          if (!ch || !Number.isFinite(ch.points)) continue;
          if (!firstPoints[c]) firstPoints[c] = { points: ch.points, at: now };
          else if (now - firstPoints[c].at >= MIN_READ_GAP_MS && ch.points > firstPoints[c].points) increased[c] = true;
        }
      }
      const ev = r.charts.events;
      if (ev && ev.last !== null && ev.last !== '' && Number(ev.last) > 0) done.eventsPositive = true;
      if (r.rows.length >= MIN_TAIL_ROWS) {
        done.tailRows = true;
        if (!tailBaseline) tailBaseline = { ids: new Set(r.rows), at: now };
        else if (r.rows.some((id) => !tailBaseline.ids.has(id))) done.tailChanges = true;
      }
      if (hasToken && r.identity && !/anonymous|authenticating/i.test(r.identity)) done.identity = true;
      const allCharts = CHARTS.every((c) => increased[c]);
      if (Object.values(done).every(Boolean) && allCharts) break;
      await sleep(500);
    }

    r = r || await read(page);
    if (!done.connected) failures.push(`ws-status never read "connected" (last: ${JSON.stringify(r.status)})`);
    else if (r.status !== 'connected') failures.push(`ws-status was "connected" but is now ${JSON.stringify(r.status)}`);
    for (const c of CHARTS) {
      if (!r.charts[c]) failures.push(`no [data-testid="chart-${c}"] element with data-points`);
      else if (!increased[c]) {
        failures.push(`chart-${c}: data-points did not increase (first read ${firstPoints[c] ? firstPoints[c].points : 'none'}, last ${r.charts[c].points})`);
      }
    }
    if (!done.eventsPositive) failures.push(`chart-events: data-last never became > 0 (last: ${JSON.stringify(r.charts.events && r.charts.events.last)})`);
    if (!r.tailFound) failures.push('no [data-testid="tail"] element');
    else if (!done.tailRows) failures.push(`tail: fewer than ${MIN_TAIL_ROWS} rows tr[data-event-id] (have ${r.rows.length})`);
    else if (!done.tailChanges) failures.push('tail: no new rows arrived after the first read');
    // Every frame of the run went through deflate: the events above arrived compressed.
    const header = (headers, name) => Object.entries(headers || {}).find(([k]) => k.toLowerCase() === name)?.[1] || '';
    const upgraded = wsHandshakes.filter((h) => h.response);
    if (!upgraded.length) failures.push('no WebSocket handshake response was seen (CDP Network.webSocketHandshakeResponseReceived)');
    for (const h of upgraded) {
      const offered = header(h.request, 'sec-websocket-extensions');
      const accepted = header(h.response, 'sec-websocket-extensions');
      if (!/permessage-deflate/.test(offered)) failures.push(`Chromium did not offer permessage-deflate (offered: ${JSON.stringify(offered)})`);
      if (!/permessage-deflate/.test(accepted) || !/server_no_context_takeover/.test(accepted) || !/client_no_context_takeover/.test(accepted)) {
        failures.push(`the gateway did not accept permessage-deflate with no context takeover (answered: ${JSON.stringify(accepted)})`);
      }
    }
    log(`websocket handshakes: ${upgraded.length}, extensions: ${upgraded.map((h) => JSON.stringify(header(h.response, 'sec-websocket-extensions'))).join(', ')}`);
    if (!done.identity) failures.push(`a token was given but the page did not authenticate (identity: ${JSON.stringify(r.identity)})`);

    log(`status: ${r.status}; identity: ${r.identity}; tail rows: ${r.rows.length}`);
    log('charts: ' + CHARTS.map((c) => `${c}=${r.charts[c] ? r.charts[c].points + ' pts, last ' + JSON.stringify(r.charts[c].last) : 'missing'}`).join('; '));
  }
} catch (err) {
  failures.push('error: ' + (err && err.message || err));
} finally {
  if (page) {
    try {
      fs.mkdirSync(path.dirname(screenshotPath), { recursive: true });
      await page.screenshot({ path: screenshotPath, fullPage: true, timeout: 15000 });
      console.log(`screenshot: ${screenshotPath}`);
    } catch (err) {
      failures.push('screenshot failed: ' + (err && err.message || err));
    }
  }
  if (browser) await browser.close().catch(() => {});
}

if (consoleErrors.length) failures.push(`${consoleErrors.length} console error(s):\n    ` + consoleErrors.slice(0, 20).join('\n    '));
if (pageErrors.length) failures.push(`${pageErrors.length} page error(s):\n    ` + pageErrors.slice(0, 20).join('\n    '));

if (failures.length) {
  console.error('[dashboard-test] FAIL');
  for (const f of failures) console.error('  - ' + f);
  if (failedRequests.length) console.error('  failed requests:\n    ' + failedRequests.slice(0, 20).join('\n    '));
  console.log('0 passed, 1 failed');
  process.exit(1);
}
console.log('[dashboard-test] PASS: connected, all 6 charts advancing, events/s > 0, live tail moving, no console or page errors');
console.log('1 passed, 0 failed');
process.exit(0);

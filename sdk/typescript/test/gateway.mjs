// A real `moonx-ws dev` for the tests: started on a free port (PORT=0, the
// port read from its `listening: http://ADDR/health` log line), with a
// JWT_SECRET and a PUBLISH_API_KEYS key of the test's choosing.
//
//   MOONX_WS_BIN   the binary (default <repo>/target/debug/moonx-ws; build it
//                  with `cargo build -p moonx-ws`)
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { repoRoot } from './helpers.mjs';

export const BIN = process.env.MOONX_WS_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target'), 'debug', 'moonx-ws');
const START_TIMEOUT_MS = 30_000;

/**
 * Starts a gateway: `mode` `dev` (embedded bus) or `serve` (Kafka, configured
 * through `env`); `port` to reuse an address (restart), `env` for settings.
 */
export async function startGateway({ mode = 'dev', port = 0, env = {}, secret, apiKey } = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`no moonx-ws binary at ${BIN}: run \`cargo build -p moonx-ws\` or set MOONX_WS_BIN`);
  secret ??= crypto.randomBytes(16).toString('hex');
  apiKey ??= 'test-' + crypto.randomBytes(8).toString('hex');
  const child = spawn(BIN, [mode], {
    env: { ...process.env, PORT: String(port), JWT_SECRET: secret, PUBLISH_API_KEYS: apiKey, NO_COLOR: '1', RUST_LOG: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`moonx-ws ${mode} did not start within ${START_TIMEOUT_MS} ms:\n${log}`)), START_TIMEOUT_MS);
    const onData = (chunk) => {
      log += chunk.toString();
      // eslint-disable-next-line no-control-regex
      const m = /listening: http:\/\/([^\s/]+)\/health/.exec(log.replace(/\x1b\[[0-9;]*m/g, ''));
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`moonx-ws ${mode} exited (${code}) before listening:\n${log}`));
    });
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const gw = {
    addr,
    port: Number(addr.split(':').pop()),
    http: `http://${addr}`,
    ws: `ws://${addr}/ws`,
    secret,
    apiKey,
    log: () => log,
    /** A HS256 JWT for `sub`, valid for `ttlSec`; with `iat` (seconds) when given. */
    token(sub, { roles = [], ttlSec = 3600, iat } = {}) {
      return signJwt({ sub, roles, exp: Math.floor(Date.now() / 1000) + ttlSec, ...(iat === undefined ? {} : { iat }) }, secret);
    },
    /** POST /api/events; returns the parsed answer (throws on a non-2xx). */
    async publish(body) {
      const res = await fetch(`${gw.http}/api/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
      const answer = await res.json();
      if (!res.ok) throw new Error(`publish: ${res.status} ${JSON.stringify(answer)}`);
      return answer;
    },
    /** SIGTERM (the server closes every socket with 1001) and wait for the exit. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
  return gw;
}

export function signJwt(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + crypto.createHmac('sha256', secret).update(head).digest('base64url');
}

/**
 * A TCP proxy in front of the gateway: `dropAll()` cuts every connection
 * (a network drop: no close frame), `block()` refuses new connections until
 * `unblock()`, `pause()` stops reading from the server (a client that cannot
 * keep up).
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let paused = false;
  let blocked = false;
  const server = net.createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    if (paused) upstream.pause();
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    get connections() {
      return pairs.size;
    },
    dropAll() {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
    },
    block() {
      blocked = true;
    },
    unblock() {
      blocked = false;
    },
    pause() {
      paused = true;
      for (const p of pairs) {
        p.upstream.unpipe(p.client);
        p.upstream.pause();
      }
    },
    /** Reading from the server again (what was held back flows). */
    resume() {
      paused = false;
      for (const p of pairs) {
        p.upstream.pipe(p.client);
        p.upstream.resume();
      }
    },
    close: () => new Promise((r) => { for (const p of pairs) { p.client.destroy(); p.upstream.destroy(); } server.close(r); }),
  };
}

/** Resolves when `predicate()` holds, polling; rejects after `timeoutMs` with `what`. */
export async function waitFor(predicate, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

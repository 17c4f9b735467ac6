// The browser bundle: dist/browser/moonx-ws-client.js, one ES module with the
// client (and the events entry point as dist/browser/moonx-ws-events.js).
// `ws` stays external: a browser has WebSocket and never imports it.
import { build } from 'esbuild';

for (const [entry, out] of [
  ['dist/client/index.js', 'dist/browser/moonx-ws-client.js'],
  ['dist/events/index.js', 'dist/browser/moonx-ws-events.js'],
]) {
  await build({ entryPoints: [entry], outfile: out, bundle: true, format: 'esm', platform: 'browser', target: 'es2022', external: ['ws'], sourcemap: true, logLevel: 'warning' });
}

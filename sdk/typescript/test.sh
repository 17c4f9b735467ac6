#!/usr/bin/env bash
# sdk/typescript/test.sh: everything the TypeScript SDK promises, in one call.
# Installs the locked dependencies (npm ci), builds the moonx-ws binary the
# gateway tests drive (unless MOONX_WS_BIN names one), compiles the SDK (tsc +
# the browser bundle) and runs every test: the schema vectors, the factory,
# the AsyncAPI document against the Rust sources, the client against a
# scripted server, against `moonx-ws dev`, against `moonx-ws serve` + Kafka,
# and in headless Chromium.
#
# Needs: Node >= 20 and npm; cargo (or MOONX_WS_BIN); the Kafka broker at
# KAFKA_BROKERS (default 127.0.0.1:9092); Chromium at CHROMIUM_PATH (default
# /usr/bin/chromium; `apt-get install -y chromium`). Never downloads a browser.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "sdk/typescript/test.sh: no Chromium at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM_PATH)" >&2
  exit 1
fi
if [ -z "${MOONX_WS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --locked -q -p moonx-ws)
  export MOONX_WS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/moonx-ws"
fi
cd "$HERE"
npm ci --no-audit --no-fund --loglevel=error
export CHROMIUM_PATH="$CHROMIUM"
npm test

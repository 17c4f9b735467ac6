#!/usr/bin/env python3
"""Seeds the fuzz corpora from the shared vectors (schema/vectors) and the
protocol's examples. Run once from fuzz/ (scripts/fuzz --seed); the committed
corpora are these seeds plus what the fuzzer found, minimized with
`cargo fuzz cmin`. Inputs of decode_event and legacy_migrate start with one
selector byte (the topic: see the targets)."""
import base64, hashlib, json, os, pathlib

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "schema" / "vectors"
DECODE_TOPICS = ["moonx.ws.events", "moonx.price.updates", "moonx.order.updates",
                 "moonx.portfolio.updates", "moonx.trade.updates"]
LEGACY_TOPICS = DECODE_TOPICS[1:]


def put(target, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


for sub in ["valid", "invalid", "legacy"]:
    for f in sorted((VECTORS / sub).glob("*.json")):
        v = json.loads(f.read_text())
        body = json.dumps(v["input"], separators=(",", ":")).encode()
        topic = v.get("topic", "moonx.ws.events")
        put("decode_event", bytes([DECODE_TOPICS.index(topic) if topic in DECODE_TOPICS else 5]) + body)
        if sub == "legacy":
            put("legacy_migrate", bytes([LEGACY_TOPICS.index(topic) if topic in LEGACY_TOPICS else 4]) + body)

for frame in [
    {"type": "ping"}, {"type": "ping", "id": 1}, {"type": "ping", "id": "x"},
    {"type": "subscribe", "channel": "prices"},
    {"type": "subscribe", "channel": "prices", "tokens": ["ETH", "BTC"], "id": 2},
    {"type": "subscribe", "channel": "orders", "since": "1.bW9vbngud3MuZXZlbnRz.0.42.p3", "id": 3},
    {"type": "subscribe", "channel": "prices", "tokens": None, "since": None},
    {"type": "unsubscribe", "channel": "trades", "id": 4},
    {"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln", "id": 5},
]:
    put("protocol_parse", json.dumps(frame, separators=(",", ":")).encode())

b64 = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
for pos in [f"1.{b64('moonx.ws.events')}.0.42.p3", f"1.{b64('moonx.ws.events')}.2.0.p12",
            f"1.{b64('moonx.ws.events')}.0.7.e1a2b3c4d5e6f7a8b", f"1.{b64('t')}.9223372036854775807.2147483647.p1"]:
    put("since_position", pos.encode())

"""A `websockets` client (which offers permessage-deflate by default) for
tests/deflate.rs: prints what it negotiated, subscribes to prices (its
messages are compressed once the extension is on), then prints every frame
it receives as one JSON line until it has N event frames.

usage: deflate_client.py <ws url> <events>"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str, events: int) -> None:
    async with connect(url, max_size=2**20, open_timeout=10) as ws:
        negotiated = [
            {
                "name": e.name,
                "server_no_context_takeover": e.remote_no_context_takeover,
                "client_no_context_takeover": e.local_no_context_takeover,
            }
            for e in ws.protocol.extensions
        ]
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(json.dumps({"type": "handshake", "extensions": negotiated, "header": header}), flush=True)
        await ws.send(json.dumps({"type": "subscribe", "channel": "prices", "id": "py-1"}))
        got = 0
        while got < events:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            print(json.dumps(frame), flush=True)
            if frame.get("type") == "event":
                got += 1


asyncio.run(main(sys.argv[1], int(sys.argv[2])))

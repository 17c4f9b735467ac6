"""bench/deflate-wire.py: bytes on the wire and gateway CPU per price frame,
with and without permessage-deflate (BENCHMARKS.md, "Compression").

N raw clients (offering permessage-deflate, or not) subscribe to prices on a
running gateway and count the bytes they receive (they do not inflate: the
load tool's CPU is not the point); the gateway's CPU time (/proc/PID/stat) and
its moonx_ws_frames_sent_total{channel="prices"} over the window give CPU per
frame. Needs only Python 3. Example (release build, embedded bus):

  PORT=39309 target/release/moonx-ws dev --demo --demo-rate 10 &
  python3 bench/deflate-wire.py 39309 2000 plain 15 $!
  python3 bench/deflate-wire.py 39309 2000 deflate 15 $!

usage: deflate-wire.py PORT CLIENTS plain|deflate SECONDS GATEWAY_PID
"""
import asyncio, os, sys, time, urllib.request, re
port, n, offer, secs, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "deflate", float(sys.argv[4]), int(sys.argv[5])
received = 0
def metric():
    t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(m) for m in re.findall(r'^moonx_ws_frames_sent_total\{channel="prices"\} (\S+)', t, re.M))
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
async def client(sem, ready):
    global received
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if offer else ""
        w.write(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        assert (b"permessage-deflate" in head) == offer, head
        msg = b'{"type":"subscribe","channel":"prices"}'
        w.write(bytes([0x81, 0x80 | len(msg), 0, 0, 0, 0]) + msg)
        await w.drain()
    ready.append(1)
    while True:
        b = await r.read(65536)
        if not b: return
        received += len(b)
async def main():
    global received
    sem = asyncio.Semaphore(100); ready = []
    tasks = [asyncio.create_task(client(sem, ready)) for _ in range(n)]
    while len(ready) < n: await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    received = 0; f0 = metric(); c0 = cpu(); t0 = time.time()
    await asyncio.sleep(secs)
    rec = received; f1 = metric(); c1 = cpu(); t1 = time.time()
    frames = f1 - f0
    print(f"{'deflate' if offer else 'plain'}: {n} clients, {frames:.0f} frames in {t1-t0:.1f}s, {rec/frames:.1f} bytes/frame on the wire, gateway CPU {(c1-c0)/frames*1e6:.2f} us/frame ({(c1-c0)/(t1-t0)*100:.0f}% of a core)")
    os._exit(0)
asyncio.run(main())

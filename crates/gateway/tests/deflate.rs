//! permessage-deflate (RFC 7692, issue 14 item 3) end to end: a real Python
//! `websockets` client that offers it, raw clients that check the frames'
//! bits and bytes, and a plain client beside them, all fed by the real broker
//! through `moonx-ws serve`.
//!
//! The Python client comes from `scripts/py-venv` (a git-ignored venv with a
//! pinned `websockets`). Where it cannot be installed (no network) the Python
//! test says so and skips, unless `REQUIRE_PYTHON_WS=1` (as `.ci/run` sets),
//! where it fails.

mod common;

use common::ws::Client;
use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use moonx_ws::kafka::producer::send_event;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T5: Duration = Duration::from_secs(5);
const T30: Duration = Duration::from_secs(30);
/// What the server answers to an acceptable offer.
const NEGOTIATED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// What browsers and Python's `websockets` offer.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

async fn started(prefix: &str, extra_env: Vec<(&'static str, String)>) -> (Topics, Gateway) {
    let topics = create_topics(prefix).await;
    let gw = Gateway::start(GatewayConfig { extra_env, ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    (topics, gw)
}

/// Produces `n` price events; returns each one's JSON by eventId.
async fn produce_prices(topic: &str, n: usize) -> HashMap<String, Value> {
    let p = producer();
    let mut produced = HashMap::new();
    for i in 0..n {
        let event = sample_event("price.updated", "", i);
        send_event(&p, topic, &event).await.unwrap();
        let value: Value = serde_json::from_slice(&event.to_json_bytes()).unwrap();
        produced.insert(event.metadata.event_id.to_string(), value);
    }
    produced
}

/// Checks that `frames` hold exactly the produced events, intact.
fn assert_events_intact(who: &str, frames: &[Value], produced: &HashMap<String, Value>) {
    let events: Vec<&Value> = frames.iter().filter(|f| f["type"] == "event").collect();
    assert_eq!(events.len(), produced.len(), "{who}: {frames:?}");
    for f in events {
        assert_eq!(f["channel"], "prices", "{who}: {f}");
        let id = f["event"]["metadata"]["eventId"].as_str().unwrap_or_else(|| panic!("{who}: no eventId in {f}"));
        assert_eq!(Some(&f["event"]), produced.get(id), "{who}: event {id} differs from what was produced");
    }
}

// ------------------------------------------------------------ raw client

/// A client that speaks the frames by hand, so the tests see RSV1 and the
/// exact payload bytes.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` of the 101, if any.
    extensions: Option<String>,
}

/// A received frame: its first byte (FIN, RSV1, opcode) and payload.
struct RawFrame {
    first: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    fn rsv1(&self) -> bool {
        self.first & 0x40 != 0
    }
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
}

impl RawClient {
    async fn connect(port: u16, offer: Option<&str>) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let offer = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // The head byte by byte, so that no frame byte is swallowed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tokio::time::timeout(T5, stream.read(&mut b)).await.expect("handshake answer").unwrap(), 1, "handshake");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions")).map(|(_, v)| v.trim().to_owned()));
        RawClient { stream, buf: Vec::new(), extensions }
    }

    /// Sends one masked frame.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).await.unwrap();
    }

    /// Sends a text message compressed (RSV1), in one frame.
    async fn send_compressed(&mut self, text: &str) {
        self.send(0xc1, &deflate(text.as_bytes())).await;
    }

    /// The next frame; panics after 30 s or if the connection ends.
    async fn frame(&mut self) -> RawFrame {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let frame = RawFrame { first: self.buf[0], payload: self.buf[at..at + len].to_vec() };
                    self.buf.drain(..at + len);
                    return frame;
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(T30, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                other => panic!("the connection ended or stalled: {other:?}"),
            }
        }
    }

    /// The next text message as JSON (inflated when RSV1 is set), with its
    /// frame; panics on a close frame, naming its code.
    async fn message(&mut self) -> (Value, RawFrame) {
        let f = self.frame().await;
        assert!(f.first & 0x80 != 0, "the server sends whole messages");
        if f.opcode() == 0x8 {
            panic!("closed with {}", u16::from_be_bytes([f.payload[0], f.payload[1]]));
        }
        assert_eq!(f.opcode(), 0x1, "a text frame");
        let bytes = if f.rsv1() { inflate(&f.payload) } else { f.payload.clone() };
        (serde_json::from_slice(&bytes).unwrap(), f)
    }

    /// The code of the close frame that comes next (other frames skipped).
    async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.opcode() == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

/// Deflate as RFC 7692 sends it: raw, sync-flushed, without the 4-byte tail.
fn deflate(plain: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(plain.len() + 1024);
    while c.total_in() < plain.len() as u64 || out.len() == out.capacity() {
        out.reserve(plain.len() / 4 + 1024);
        c.compress_vec(&plain[c.total_in() as usize..], &mut out, FlushCompress::Sync).unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    while d.total_in() < input.len() as u64 {
        out.reserve(4096);
        d.decompress_vec(&input[d.total_in() as usize..], &mut out, FlushDecompress::Sync).expect("the server's frame inflates");
    }
    out
}

// ------------------------------------------------------------ tests

/// The path of a Python with `websockets`, from `scripts/py-venv`; `None`
/// (the test skips) only when it cannot be installed and CI does not require it.
fn python_with_websockets() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/py-venv");
    let out = std::process::Command::new(&script).output().expect("run scripts/py-venv");
    let required = std::env::var("REQUIRE_PYTHON_WS").is_ok_and(|v| v == "1");
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!required, "REQUIRE_PYTHON_WS=1 but scripts/py-venv failed: {why}");
        eprintln!("SKIPPED: no Python websockets client (scripts/py-venv failed: {why})");
        return None;
    }
    let path = String::from_utf8(out.stdout).unwrap();
    Some(PathBuf::from(path.lines().last().expect("the python path").trim()))
}

/// Python's `websockets` offers permessage-deflate; the server accepts it
/// with no context takeover both ways, the client's (compressed) subscribe
/// works, and every price arrives intact. A plain client beside it is
/// offered nothing and gets the same events as plain frames.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_websockets_client_negotiates_deflate_and_receives_every_price_intact() {
    let Some(python) = python_with_websockets() else { return };
    let (topics, gw) = started("deflate-py", vec![]).await;
    const N: usize = 20;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/deflate_client.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(gw.ws_url())
        .arg(N.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python client");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(T30, lines.next_line()).await.expect("a line from the Python client in time").unwrap();
        serde_json::from_str(&line.expect("the Python client ended early")).unwrap()
    };

    let handshake = next_line().await;
    assert_eq!(
        handshake["extensions"],
        json!([{"name": "permessage-deflate", "server_no_context_takeover": true, "client_no_context_takeover": true}]),
        "{handshake}"
    );
    assert_eq!(handshake["header"], NEGOTIATED);
    let subscribed = next_line().await;
    assert_eq!((subscribed["type"].as_str(), subscribed["id"].as_str()), (Some("subscribed"), Some("py-1")), "{subscribed}");

    // The plain client: tungstenite offers no extension (and would fail on RSV1).
    let (ws, response) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    assert!(response.headers().get("sec-websocket-extensions").is_none(), "{response:?}");
    let mut plain = Client { ws, closed: None };
    plain.subscribe("prices").await;

    let produced = produce_prices(&topics.main, N).await;
    let mut python_frames = Vec::new();
    while python_frames.iter().filter(|f: &&Value| f["type"] == "event").count() < N {
        python_frames.push(next_line().await);
    }
    let status = tokio::time::timeout(T30, child.wait()).await.expect("the Python client ends").unwrap();
    assert!(status.success(), "{status}");
    assert_events_intact("python (deflate)", &python_frames, &produced);

    let mut plain_frames = Vec::new();
    while plain_frames.iter().filter(|f: &&Value| f["type"] == "event").count() < N {
        plain_frames.push(plain.recv(T30).await.expect("the plain client's frames"));
    }
    assert_events_intact("plain", &plain_frames, &produced);
}

/// Every connection that negotiated deflate gets the same compressed bytes
/// (RSV1 set) for an event, made once; compressed and fragmented client
/// messages are inflated and answered; a plain client gets plain frames.
#[tokio::test(flavor = "multi_thread")]
async fn compressed_frames_are_shared_and_compressed_client_messages_are_answered() {
    let (topics, gw) = started("deflate-raw", vec![]).await;
    const N: usize = 10;
    let mut a = RawClient::connect(gw.port, Some(BROWSER_OFFER)).await;
    let mut b = RawClient::connect(gw.port, Some("permessage-deflate; client_no_context_takeover; server_no_context_takeover")).await;
    let mut plain = RawClient::connect(gw.port, None).await;
    assert_eq!(a.extensions.as_deref(), Some(NEGOTIATED));
    assert_eq!(b.extensions.as_deref(), Some(NEGOTIATED));
    assert_eq!(plain.extensions, None);

    // A compressed ping in two fragments (RSV1 on the first only).
    let ping = deflate(br#"{"type":"ping","id":"fragmented"}"#);
    let (head, tail) = ping.split_at(ping.len() / 2);
    a.send(0x41, head).await;
    a.send(0x80, tail).await;
    let (pong, _) = a.message().await;
    assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("fragmented")), "{pong}");

    for (c, id) in [(&mut a, "a"), (&mut b, "b")] {
        c.send_compressed(&json!({"type": "subscribe", "channel": "prices", "id": id}).to_string()).await;
        let (reply, _) = c.message().await;
        assert_eq!((reply["type"].as_str(), reply["id"].as_str()), (Some("subscribed"), Some(id)), "{reply}");
    }
    plain.send(0x81, json!({"type": "subscribe", "channel": "prices", "id": "p"}).to_string().as_bytes()).await;
    let (reply, f) = plain.message().await;
    assert_eq!(reply["type"], "subscribed");
    assert!(!f.rsv1());

    let produced = produce_prices(&topics.main, N).await;
    let (mut from_a, mut from_b, mut from_plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..N {
        let (ea, fa) = a.message().await;
        let (eb, fb) = b.message().await;
        let (ep, fp) = plain.message().await;
        assert!(fa.rsv1() && fb.rsv1(), "event frames are compressed for deflate connections");
        assert!(!fp.rsv1(), "and plain for the plain one");
        assert_eq!(fa.payload, fb.payload, "the same compressed bytes for both");
        assert!(fa.payload.len() < fp.payload.len(), "compressed {} < plain {}", fa.payload.len(), fp.payload.len());
        assert_eq!(inflate(&fa.payload), fp.payload, "and they inflate to the plain frame");
        from_a.push(ea);
        from_b.push(eb);
        from_plain.push(ep);
    }
    assert_events_intact("a", &from_a, &produced);
    assert_events_intact("b", &from_b, &produced);
    assert_events_intact("plain", &from_plain, &produced);
}

/// A compressed message is bounded once inflated: above the hard cap (a
/// deflate bomb: 10 MiB in a few KiB) the connection is closed with 1009;
/// between WS_MAX_FRAME_BYTES and the cap the client gets an error frame and
/// stays; data that is not deflate is a protocol error (1002).
#[tokio::test(flavor = "multi_thread")]
async fn a_deflate_bomb_is_refused_with_1009() {
    let (_topics, gw) = started("deflate-bomb", vec![]).await;
    let bomb = deflate(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "a".repeat(10 * 1024 * 1024)).as_bytes());
    assert!(bomb.len() < 64 * 1024, "the bomb fits in one allowed frame: {}", bomb.len());
    let mut c = RawClient::connect(gw.port, Some(BROWSER_OFFER)).await;
    c.send(0xc1, &bomb).await;
    assert_eq!(c.close_code().await, 1009);

    // 20 KiB inflated: above the 16 KiB limit, below the 64 KiB cap.
    let mut c = RawClient::connect(gw.port, Some(BROWSER_OFFER)).await;
    c.send_compressed(&format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "b".repeat(20 * 1024))).await;
    let (error, _) = c.message().await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("bad_request")), "{error}");
    c.send_compressed(r#"{"type":"ping","id":"after"}"#).await;
    let (pong, _) = c.message().await;
    assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("after")), "{pong}");

    let mut c = RawClient::connect(gw.port, Some(BROWSER_OFFER)).await;
    c.send(0xc1, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(c.close_code().await, 1002);

    eventually("each end counted by its reason", T5, || async {
        let m = gw.metrics().await;
        let got = [
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "message_too_big")]),
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "protocol_error")]),
        ];
        if got == [1.0, 1.0] { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
}

/// With WS_PERMESSAGE_DEFLATE=false an offer is declined: no extension in
/// the answer, plain event frames, and a frame with RSV1 is a protocol error.
#[tokio::test(flavor = "multi_thread")]
async fn with_deflate_off_an_offer_gets_plain_frames() {
    let (topics, gw) = started("deflate-off", vec![("WS_PERMESSAGE_DEFLATE", "false".into())]).await;
    let mut c = RawClient::connect(gw.port, Some(BROWSER_OFFER)).await;
    assert_eq!(c.extensions, None);
    c.send(0x81, json!({"type": "subscribe", "channel": "prices"}).to_string().as_bytes()).await;
    assert_eq!(c.message().await.0["type"], "subscribed");
    let produced = produce_prices(&topics.main, 3).await;
    let mut frames = Vec::new();
    for _ in 0..3 {
        let (e, f) = c.message().await;
        assert!(!f.rsv1());
        frames.push(e);
    }
    assert_events_intact("deflate off", &frames, &produced);
    c.send_compressed(r#"{"type":"ping"}"#).await;
    assert_eq!(c.close_code().await, 1002);
}

/// A bad WS_PERMESSAGE_DEFLATE stops start-up, naming the variable.
#[test]
fn a_bad_ws_permessage_deflate_stops_start_up_naming_it() {
    let mut child = std::process::Command::new(bin())
        .args(["dev", "--port", "0"])
        .env("WS_PERMESSAGE_DEFLATE", "maybe")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("WS_PERMESSAGE_DEFLATE=maybe was accepted (the gateway started)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("WS_PERMESSAGE_DEFLATE"), "the error names the variable: {err}");
}

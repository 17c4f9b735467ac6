//! The edges of a connection, tried as a hostile or careless client would
//! (issue 9, items 5, 7, 9 and 10): the publish API's body, half-open and
//! idle sockets, clients that do not read, and frames that break the
//! WebSocket protocol. Real sockets (raw TCP where the client must misbehave
//! below the WebSocket library), the real `moonx-ws serve` and broker.

mod common;

use common::ws::Client;
use common::*;
use moonx_ws::kafka::producer::send_event;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T5: Duration = Duration::from_secs(5);
const PUBLISH_KEY: &str = "edge-test-key";

async fn started(prefix: &str, extra_env: Vec<(&'static str, String)>) -> (Topics, Gateway) {
    let topics = create_topics(prefix).await;
    let gw = Gateway::start(GatewayConfig { extra_env, ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    (topics, gw)
}

fn pid(gw: &Gateway) -> u32 {
    gw.child.as_ref().expect("running").id()
}

/// Resident memory of a process, in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Reads from a raw socket until the HTTP response head is complete (or the
/// peer closes, or `timeout`); returns the status code, if any arrived.
async fn read_status(stream: &mut TcpStream, timeout: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Waits until the peer closes the socket (EOF or reset); returns when it did.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> Option<Instant> {
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

// ---------------------------------------------------------------- item 5

/// Sends a request head, then `body` in the background (the server may stop
/// it by answering and closing), and reads the answer: (status line and
/// everything read by the end of the head, time to it).
async fn post_raw(addr: String, head: String, body: std::sync::Arc<Vec<u8>>, timeout: Duration) -> (String, Duration) {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.expect("headers");
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(64 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
        wr // kept open: the body stalls here
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    // The head and whatever part of the (small, JSON) body came with it.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") || !buf.ends_with(b"}") {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let took = started.elapsed();
    writer.abort();
    (String::from_utf8_lossy(&buf).into_owned(), took)
}

/// 200 unauthenticated publishers each announce a 2 MiB body and send it
/// slowly (stalling short of the end): each gets 401 at once, without the
/// body being read, and the gateway's memory stays flat. An authenticated
/// body that stalls gets 408 once PUBLISH_BODY_TIMEOUT_MS has passed; one
/// above PUBLISH_MAX_BODY_BYTES gets 413 before it is read; a normal one is
/// published.
#[tokio::test(flavor = "multi_thread")]
async fn publish_checks_the_key_before_reading_the_body_and_bounds_it() {
    const CONNECTIONS: usize = 200;
    const DECLARED: usize = 2 * 1024 * 1024;
    let (_topics, gw) = started(
        "edge-publish",
        vec![("PUBLISH_API_KEYS", PUBLISH_KEY.into()), ("PUBLISH_BODY_TIMEOUT_MS", "1500".into())],
    )
    .await;
    let addr = format!("127.0.0.1:{}", gw.port);
    let baseline = rss_kib(pid(&gw));

    let body = std::sync::Arc::new(vec![b'x'; DECLARED - 1]);
    let head = format!("POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n");
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(post_raw(addr.clone(), head.clone(), body.clone(), Duration::from_secs(10))))
        .collect();
    let mut peak = baseline;
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.unwrap());
        peak = peak.max(rss_kib(pid(&gw)));
    }
    for (head, took) in &answers {
        assert!(head.starts_with("HTTP/1.1 401"), "an unauthenticated publish is refused on its headers: {head:?}");
        assert!(*took < Duration::from_secs(5), "401 at once, not after the body: {took:?}");
    }
    assert!(answers[0].0.contains("API key"), "our own words: {}", answers[0].0);
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("gateway RSS: baseline {baseline} KiB, peak during {CONNECTIONS} stalled publishes {peak} KiB");
    assert!(grown_mib < 48, "RSS grew by {grown_mib} MiB (baseline {baseline} KiB, peak {peak} KiB): unauthenticated bodies were buffered");

    // Authenticated, but the body stalls: 408 after the body timeout.
    let head = format!("POST /api/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {PUBLISH_KEY}\r\nContent-Length: 1000\r\n\r\n");
    let (answer, took) = post_raw(addr.clone(), head, std::sync::Arc::new(b"[{\"type\":".to_vec()), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body times out: {answer:?}");
    assert!(answer.contains("PUBLISH_BODY_TIMEOUT_MS"), "{answer}");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(6), "408 after PUBLISH_BODY_TIMEOUT_MS (1.5 s): {took:?}");

    // Authenticated, declared above the cap: 413 without reading it.
    let head = format!("POST /api/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {PUBLISH_KEY}\r\nContent-Length: {}\r\n\r\n", 3 * 1024 * 1024);
    let (answer, took) = post_raw(addr.clone(), head, std::sync::Arc::new(Vec::new()), T5).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("PUBLISH_MAX_BODY_BYTES"), "a declared length above the cap: {answer:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Chunked (no length declared), growing past the cap: 413 once it does.
    let head = format!("POST /api/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {PUBLISH_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut chunked = Vec::new();
    for _ in 0..48 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    let (answer, _) = post_raw(addr.clone(), head, std::sync::Arc::new(chunked), T5).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "a chunked body past the cap: {answer:?}");

    // And the normal path still publishes.
    let ok = reqwest::Client::new()
        .post(format!("{}/api/events", gw.base()))
        .header("x-api-key", PUBLISH_KEY)
        .json(&serde_json::json!({"type": "price.updated", "data": sample_data("price.updated", "", 1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200, "{}", ok.text().await.unwrap_or_default());

    // Memory is back near where it started.
    let after = rss_kib(pid(&gw));
    assert!(after.saturating_sub(baseline) / 1024 < 48, "RSS after: {after} KiB, baseline {baseline} KiB");
}

// ---------------------------------------------------------------- item 7

/// Sockets that never finish their request take every connection slot:
/// `/health` and `/metrics` still answer (reserve), further upgrades get 503;
/// more stalled sockets fill the reserve, which frees itself within 1 s,
/// and beyond it sockets are closed at once; the stalled sockets are closed
/// after HTTP_HEADER_TIMEOUT_MS, an idle keep-alive connection too, and a
/// normal client connects afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn half_open_sockets_take_slots_time_out_and_leave_health_answering() {
    const SLOTS: usize = 20;
    const RESERVE: usize = 4;
    const HEADER_TIMEOUT: Duration = Duration::from_millis(6000);
    let (_topics, gw) = started(
        "edge-slowloris",
        vec![
            ("WS_MAX_CONNECTIONS", SLOTS.to_string()),
            ("HTTP_RESERVED_CONNECTIONS", RESERVE.to_string()),
            ("HTTP_HEADER_TIMEOUT_MS", HEADER_TIMEOUT.as_millis().to_string()),
        ],
    )
    .await;
    let addr = format!("127.0.0.1:{}", gw.port);

    // An idle keep-alive connection: one request, then silence.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut idle, T5).await, Some(200));
    let idle_since = Instant::now();

    // Slowloris: every remaining slot taken by an upgrade that never ends.
    let mut stalled = Vec::new();
    // Before the first connect: no socket's timer can start earlier.
    let opened = Instant::now();
    for _ in 0..SLOTS - 1 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
        stalled.push(s);
    }
    // The accept queue is FIFO: the first query below is accepted after
    // every stalled socket, so it can only land on a reserve slot.
    eventually("every main slot is taken", T5, || async {
        let m = gw.metrics().await;
        let main = metric(&m, "moonx_ws_sockets_open", &[("slot", "main")]);
        if main == SLOTS as f64 { Ok(()) } else { Err(format!("main slots in use: {main}")) }
    })
    .await;

    // At the limit: health and metrics answer, from the reserve.
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.expect("/health at the limit");
    assert_eq!(code, 200, "{body}");
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_sockets_open", &[("slot", "reserve")]) >= 1.0);
    // A WebSocket client is refused while every slot is held.
    let refused = Client::connect_with(&gw.ws_url(), &[]).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 503),
        "{:?}",
        refused.err()
    );

    // More stalled sockets: they fill the reserve, and the ones beyond it
    // are closed as soon as they are accepted.
    let flood_opened = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..RESERVE + 3 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        flood.push(s);
    }
    for s in &mut flood[RESERVE..] {
        closed_within(s, T5).await.expect("a socket beyond the reserve is closed at once");
    }
    // The reserve frees itself within its 1 s header timeout, and health
    // answers again while every main slot is still held.
    eventually("/health answers while the main slots are held", T5, || async {
        match http_get(&format!("{}/health", gw.base())).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for s in &mut flood[..RESERVE] {
        let at = closed_within(s, T5).await.expect("a stalled reserve socket is closed");
        assert!(at - flood_opened >= Duration::from_millis(800), "not before the reserve's header timeout");
    }
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_sockets_refused_total", &[]) >= 3.0);
    assert_eq!(metric(&m, "moonx_ws_sockets_open", &[("slot", "main")]), SLOTS as f64, "the main slots are still held");

    // The header timeout closes the stalled and the idle sockets.
    let limit = HEADER_TIMEOUT + Duration::from_secs(5);
    let idle_closed = closed_within(&mut idle, limit).await.expect("the idle keep-alive connection is closed");
    assert!(idle_closed - idle_since >= HEADER_TIMEOUT - Duration::from_millis(200), "not before the timeout");
    for s in &mut stalled {
        let at = closed_within(s, limit).await.expect("a socket that never finished its headers is closed");
        assert!(at - opened >= HEADER_TIMEOUT - Duration::from_millis(200), "closed before the header timeout");
    }
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_http_header_timeouts_total", &[]) >= SLOTS as f64, "counted");

    // The slots are free again: a normal client connects and is served.
    let mut c = Client::connect(&gw.ws_url()).await;
    c.subscribe("prices").await;
}

/// "Slow read": a client that pipelines requests for the dashboard and
/// never reads the responses is closed after HTTP_WRITE_TIMEOUT_MS, and
/// its slot is free again.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_http_responses_is_closed_after_the_write_timeout() {
    let (_topics, gw) = started("edge-slowread", vec![("HTTP_WRITE_TIMEOUT_MS", "1000".into())]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(format!("127.0.0.1:{}", gw.port).parse().unwrap()).await.unwrap();
    // 200 dashboards (about 50 KB each): far more than the socket buffers hold.
    s.write_all(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200)).await.unwrap();
    eventually("the slow reader's connection is closed", Duration::from_secs(20), || async {
        let m = gw.metrics().await;
        let timeouts = metric(&m, "moonx_ws_http_write_timeouts_total", &[]);
        // The only main slot still in use is this query's own.
        let open = metric(&m, "moonx_ws_sockets_open", &[("slot", "main")]);
        if timeouts == 1.0 && open == 1.0 { Ok(()) } else { Err(format!("write timeouts {timeouts}, main sockets {open}")) }
    })
    .await;
    closed_within(&mut s, T5).await.expect("the socket ends (EOF or reset) once what was sent is read");
}

/// At start-up the open-file soft limit is raised to the hard limit, and a
/// WS_MAX_CONNECTIONS that cannot fit below it is warned about and lowered
/// to what fits (so the reserve keeps its descriptors).
#[tokio::test(flavor = "multi_thread")]
async fn the_open_file_limit_is_raised_and_an_impossible_connection_limit_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("gw.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .expect("hard limit of open files");
    let soft_at_start = (hard / 2).max(64);
    let mut child = std::process::Command::new("bash")
        .args(["-c", &format!("ulimit -Sn {soft_at_start} && exec \"$0\" dev"), bin()])
        .env("PORT", port.to_string())
        .env("WS_MAX_CONNECTIONS", (hard * 2).to_string())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually("the dev gateway answers", Duration::from_secs(30), || async {
        match http_get(&format!("{base}/health")).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "soft limit raised from {soft_at_start} to the hard limit");
    let log = logs();
    assert!(log.contains("WS_MAX_CONNECTIONS") && log.contains("open-file limit"), "warned:\n{log}");
    assert!(log.contains(&format!("serving at most {} connections", hard - 32 - 256)), "lowered to what fits:\n{log}");
}

// ---------------------------------------------------------------- item 9

/// A client that keeps sending but never reads its replies: once a reply
/// has been blocked for WS_WRITE_TIMEOUT_MS the connection is dropped,
/// unsubscribed and uncounted.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let (_topics, gw) = started(
        "edge-noread",
        vec![
            ("WS_WRITE_TIMEOUT_MS", "1000".into()),
            ("WS_RATE_LIMIT_PER_SEC", "100000".into()),
            ("WS_RATE_LIMIT_BURST", "100000".into()),
        ],
    )
    .await;
    let mut c = Client::connect_small_buffer(&gw.ws_url()).await;
    c.subscribe("prices").await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_connections", &[]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_subscriptions", &[("channel", "prices")]), 1.0);

    // Pings whose 8 KiB id comes back in each pong; never read.
    let id = "p".repeat(8 * 1024);
    let ping = serde_json::json!({"type": "ping", "id": id}).to_string();
    let sender = tokio::spawn(async move {
        use futures_util::SinkExt;
        for _ in 0..5_000 {
            let send = c.ws.send(tokio_tungstenite::tungstenite::Message::Text(ping.clone().into()));
            match tokio::time::timeout(Duration::from_secs(20), send).await {
                Ok(Ok(())) => {}
                _ => break, // blocked (the server stopped reading) or dropped
            }
        }
        c
    });
    eventually("the non-reading client is dropped", Duration::from_secs(30), || async {
        let m = gw.metrics().await;
        let (conns, subs) = (metric(&m, "moonx_ws_connections", &[]), metric(&m, "moonx_ws_subscriptions", &[("channel", "prices")]));
        let timeouts = metric(&m, "moonx_ws_disconnects_total", &[("reason", "write_timeout")]);
        if conns == 0.0 && subs == 0.0 && timeouts == 1.0 { Ok(()) } else { Err(format!("connections {conns}, subscriptions {subs}, write timeouts {timeouts}")) }
    })
    .await;
    sender.abort();
}

/// A slow consumer (queue overflow) whose socket is full: the server stops
/// writing events at once and gives the `slow_consumer` error frame and the
/// 3008 close the write timeout; the client, reading again within it, sees
/// both.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_that_reads_again_sees_the_error_frame_and_3008() {
    let (topics, gw) = started("edge-slow", vec![("WS_QUEUE_CAPACITY", "1024".into())]).await;
    let mut stalled = Client::connect_small_buffer(&gw.ws_url()).await;
    stalled.subscribe("prices").await;

    // Bursts of 50 (5,000/s): far below the queue's 1,024 while the socket
    // takes frames, so the queue overflows only once the socket is full.
    let p = producer();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(90);
    for round in 0.. {
        tick.tick().await;
        let batch: Vec<_> = (round * 50..round * 50 + 50).map(|i| sample_event("price.updated", "", i)).collect();
        for r in futures_util::future::join_all(batch.iter().map(|e| send_event(&p, &topics.main, e))).await {
            r.unwrap();
        }
        if round % 20 == 19 && metric(&gw.metrics().await, "moonx_ws_slow_consumer_disconnects_total", &[]) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled client was never cut off after {} events", round * 50);
    }
    // The client stays stalled a while longer than the old one-second close
    // timeout (well within the 10 s write timeout), then reads again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut saw_error = false;
    let mut events_after_error = 0;
    while let Some(v) = stalled.recv(Duration::from_secs(10)).await {
        if v["type"] == "error" {
            assert_eq!(v["code"], "slow_consumer", "{v}");
            saw_error = true;
        } else if saw_error {
            events_after_error += 1;
        }
    }
    assert!(saw_error, "the slow_consumer error frame arrived (closed: {:?})", stalled.closed);
    assert_eq!(events_after_error, 0, "nothing after the error frame");
    let (code, reason) = stalled.closed.clone().expect("a close frame, not a dropped connection");
    assert_eq!(code, 3008, "{reason}");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_disconnects_total", &[("reason", "slow_consumer")]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_connections", &[]), 0.0);
}

/// An event frame above the WebSocket write buffer's old 256 KiB cap (a
/// valid 600 KB `system.error`; the main topic takes records up to 1 MB)
/// reaches its subscriber instead of ending the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_event_frame_is_delivered_not_a_dropped_connection() {
    let (topics, gw) = started("edge-bigframe", vec![("WS_PRESENCE_EVENTS", "false".into())]).await;
    let mut ops = Client::authed(&gw.ws_url(), "ops", &["admin"]).await;
    ops.subscribe("system").await;
    let big = "e".repeat(600 * 1000);
    let mut data = sample_data("system.error", "", 1);
    data["message"] = serde_json::Value::String(big.clone());
    let event = moonx_events::EventFactory::new("it")
        .create_from_json(&moonx_events::EventType::parse("system.error"), data, Default::default())
        .expect("a valid system.error");
    send_event(&producer(), &topics.main, &event).await.unwrap();
    let frame = ops.recv_type("event", Duration::from_secs(15)).await;
    assert_eq!(frame["event"]["data"]["message"].as_str().map(str::len), Some(big.len()));
    ops.send_json(serde_json::json!({"type": "ping", "id": 2})).await;
    assert_eq!(ops.recv_type("pong", T5).await["id"], 2, "the connection goes on");
}

// ---------------------------------------------------------------- item 10

const HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw WebSocket connection, upgraded by hand.
async fn raw_ws(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    // Read the response head byte by byte so no frame byte is swallowed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tokio::time::timeout(T5, s.read(&mut b)).await.expect("handshake answer").unwrap(), 1, "handshake");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// A client frame, masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads server frames until a close frame; returns its code. Panics if the
/// connection ends without one.
async fn close_code_received(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse whole frames in the buffer.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, mut at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
            if buf.len() < at + len {
                break;
            }
            let payload = buf[at..at + len].to_vec();
            at += len;
            buf.drain(..at);
            if opcode == 0x8 {
                assert!(payload.len() >= 2, "a close frame with a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        match tokio::time::timeout(T5, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// Frames the WebSocket layer refuses get the RFC 6455 close code, sent as a
/// close frame: reserved opcode, unmasked frame and bad continuation 1002,
/// invalid UTF-8 1007, a frame above the hard cap 1009. Each is counted by
/// its reason, none as "client closed".
#[tokio::test(flavor = "multi_thread")]
async fn frames_that_break_the_protocol_get_their_close_code() {
    let (_topics, gw) = started("edge-close", vec![]).await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("reserved data opcode", frame(0x83, b"", true), 1002, "protocol_error"),
        ("reserved control opcode", frame(0x8b, b"", true), 1002, "protocol_error"),
        ("unmasked client frame", frame(0x81, br#"{"type":"ping"}"#, false), 1002, "protocol_error"),
        ("continuation without a start", frame(0x80, b"x", true), 1002, "protocol_error"),
        ("invalid UTF-8 in text", frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d], true), 1007, "invalid_utf8"),
    ];
    for (what, bytes, expected, _) in &cases {
        let mut s = raw_ws(gw.port).await;
        s.write_all(bytes).await.unwrap();
        assert_eq!(close_code_received(&mut s).await, *expected, "{what}");
    }
    // Above the hard cap (4 × WS_MAX_FRAME_BYTES, at least 64 KiB): the
    // header alone announces 1 MiB.
    let mut s = raw_ws(gw.port).await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1024u64 * 1024).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).await.unwrap();
    assert_eq!(close_code_received(&mut s).await, 1009, "oversized frame");

    // A valid client is unaffected, and every end was counted by its reason.
    let mut c = Client::connect(&gw.ws_url()).await;
    c.send_json(serde_json::json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.recv(T5).await.unwrap()["type"], "pong");
    eventually("disconnects counted by reason", T5, || async {
        let m = gw.metrics().await;
        let got = [
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "protocol_error")]),
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "invalid_utf8")]),
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "message_too_big")]),
            metric(&m, "moonx_ws_disconnects_total", &[("reason", "client_closed")]),
        ];
        if got == [4.0, 1.0, 1.0, 0.0] { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
}

// ---------------------------------------------------------------- settings

/// Each new limit refuses a bad value at start-up, naming its variable.
#[test]
fn each_new_limit_refuses_a_bad_value_naming_its_variable() {
    for (var, bad) in [
        ("PUBLISH_MAX_BODY_BYTES", "12"),
        ("PUBLISH_BODY_TIMEOUT_MS", "0"),
        ("HTTP_HEADER_TIMEOUT_MS", "soon"),
        ("HTTP_RESERVED_CONNECTIONS", "0"),
        ("HTTP_WRITE_TIMEOUT_MS", "0"),
        ("WS_WRITE_TIMEOUT_MS", "-1"),
        ("WS_MAX_CONNECTIONS", "0"),
    ] {
        // Spawned, not waited on blindly: a gateway that accepted the value
        // would run until killed.
        let mut child = std::process::Command::new(bin())
            .args(["dev", "--port", "0"])
            .env(var, bad)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let ok = status.is_none_or(|s| s.success());
        assert!(!ok, "{var}={bad} was accepted (the gateway started)");
        assert!(err.contains(var), "{var}={bad}: the error names the variable: {err}");
    }
}

//! N WebSocket clients (tokio-tungstenite), each on its own TCP connection
//! bound to a source address of 127.0.0.2, .3, … (one address per 10,000
//! connections: one source address has about 28k ephemeral ports), each
//! subscribed to chosen channels, counting event frames and recording their
//! latency. Two protocols: moonx-ws's (which the Node baseline and the
//! fan-out floor also speak) and Centrifugo's JSON protocol v2 (connect with
//! a JWT, subscribe, replies and pushes several to a WebSocket message
//! separated by newlines, and its `{}` pings answered with `{}`).

use crate::events::{latencies_us, unix_micros};
use crate::stats::LatencyRecorder;
use futures_util::{SinkExt, StreamExt};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub const CONNECTIONS_PER_SOURCE_IP: usize = 10_000;

/// One client to open.
#[derive(Clone)]
pub struct ClientSpec {
    /// `ws://127.0.0.1:PORT/ws?...`
    pub url: String,
    /// Messages sent after connecting; each must be answered `subscribed`.
    /// Centrifugo: the channels to subscribe to.
    pub subscribe: Arc<Vec<String>>,
    pub protocol: Protocol,
}

#[derive(Clone)]
pub enum Protocol {
    Moonx,
    /// Centrifugo's JSON protocol v2, connecting with this JWT.
    Centrifugo { token: String },
}

pub struct Clients {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    pub closed: Arc<AtomicU64>,
    /// Why connections ended early (the first few).
    pub close_reasons: Arc<std::sync::Mutex<Vec<String>>>,
    pub opened: usize,
    pub failures: Vec<String>,
}

fn source_ip(index: usize) -> Ipv4Addr {
    let n = 2 + index / CONNECTIONS_PER_SOURCE_IP;
    Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8)
}

/// Opens the clients (`first_index` numbers them, for source addresses and
/// shards), `concurrency` handshakes at a time; returns once each is
/// subscribed or failed.
pub async fn open(
    target: SocketAddr,
    specs: Vec<ClientSpec>,
    first_index: usize,
    concurrency: usize,
    recorder: Arc<LatencyRecorder>,
) -> Clients {
    let (stop, stop_rx) = watch::channel(false);
    let closed = Arc::new(AtomicU64::new(0));
    let close_reasons: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let n = specs.len();
    let mut handles = Vec::with_capacity(n);
    for (i, spec) in specs.into_iter().enumerate() {
        let index = first_index + i;
        let (permits, ready_tx, mut stop_rx, recorder, closed, reasons) =
            (permits.clone(), ready_tx.clone(), stop_rx.clone(), recorder.clone(), closed.clone(), close_reasons.clone());
        handles.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore open");
            let ws = match tokio::time::timeout(Duration::from_secs(30), connect(target, index, &spec)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return;
                }
                Err(_) => {
                    let _ = ready_tx.send(Err("connect + subscribe timed out".into())).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready_tx.send(Ok(())).await;
            drop(ready_tx);
            let centrifugo = matches!(spec.protocol, Protocol::Centrifugo { .. });
            let (mut write, mut read) = ws.split();
            loop {
                tokio::select! {
                    m = read.next() => match m {
                        Some(Ok(Message::Text(t))) if centrifugo => {
                            if on_centrifugo_message(t.as_bytes(), index, &recorder) {
                                // Its ping; a connection that does not answer is closed.
                                let _ = write.send(Message::text("{}")).await;
                            }
                        }
                        Some(Ok(Message::Text(t))) => on_frame(t.as_bytes(), index, &recorder),
                        end @ (Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                            if !*stop_rx.borrow() {
                                closed.fetch_add(1, Ordering::Relaxed);
                                let why = match end {
                                    Some(Ok(Message::Close(f))) => format!("closed by the server: {f:?}"),
                                    Some(Err(e)) => format!("error: {e}"),
                                    _ => "end of stream".to_string(),
                                };
                                let mut r = reasons.lock().unwrap_or_else(|p| p.into_inner());
                                if r.len() < 10 {
                                    r.push(why);
                                }
                            }
                            return;
                        }
                        Some(Ok(_)) => {}
                    },
                    _ = stop_rx.changed() => return,
                }
            }
        }));
    }
    drop(ready_tx);
    let mut failures = Vec::new();
    let mut opened = 0;
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => {
                if failures.len() < 20 {
                    failures.push(e);
                } else if failures.len() == 20 {
                    failures.push("…".into());
                }
            }
            None => break,
        }
    }
    Clients { stop, handles, closed, close_reasons, opened, failures }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(target: SocketAddr, index: usize, spec: &ClientSpec) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    let source = SocketAddr::from((source_ip(index), 0));
    socket.bind(source).map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(target).await.map_err(|e| format!("connect from {source}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(spec.url.as_str(), stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if let Protocol::Centrifugo { token } = &spec.protocol {
        centrifugo_handshake(&mut ws, token, &spec.subscribe).await?;
        return Ok(ws);
    }
    for m in spec.subscribe.iter() {
        ws.send(Message::text(m.clone())).await.map_err(|e| format!("send: {e}"))?;
    }
    let mut acked = 0;
    while acked < spec.subscribe.len() {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let s = t.as_str();
                if s.contains("\"type\":\"subscribed\"") {
                    acked += 1;
                } else if s.contains("\"type\":\"error\"") {
                    return Err(format!("subscribe refused: {s}"));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed before subscribed".into()),
        }
    }
    Ok(ws)
}

/// Connect (command 1) and one subscribe per channel (2, 3, …), sent as one
/// newline-separated message; waits for every reply.
async fn centrifugo_handshake(ws: &mut Ws, token: &str, channels: &[String]) -> Result<(), String> {
    let mut commands = vec![serde_json::json!({"id": 1, "connect": {"token": token}}).to_string()];
    for (i, c) in channels.iter().enumerate() {
        commands.push(serde_json::json!({"id": i + 2, "subscribe": {"channel": c}}).to_string());
    }
    ws.send(Message::text(commands.join("\n"))).await.map_err(|e| format!("send: {e}"))?;
    let mut replied = 0;
    while replied < commands.len() {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().split('\n').filter(|l| !l.is_empty()) {
                    if line == "{}" {
                        let _ = ws.send(Message::text("{}")).await;
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("reply is not JSON ({e}): {line}"))?;
                    if v.get("id").is_none() {
                        continue; // a push
                    }
                    if let Some(e) = v.get("error") {
                        return Err(format!("centrifugo refused command {}: {e}", v["id"]));
                    }
                    replied += 1;
                }
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed before subscribed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed before subscribed".into()),
        }
    }
    Ok(())
}

/// One Centrifugo message: records each publication pushed; returns
/// whether it carried a ping (`{}`) to answer.
fn on_centrifugo_message(text: &[u8], index: usize, recorder: &LatencyRecorder) -> bool {
    let mut ping = false;
    for line in text.split(|&b| b == b'\n') {
        if line == b"{}" {
            ping = true;
        } else if line.starts_with(b"{\"push\":") && line.windows(6).any(|w| w == b"\"pub\":") {
            let (ts, precise) = latencies_us(line, unix_micros());
            recorder.record(index, ts, precise);
        }
    }
    ping
}

fn on_frame(text: &[u8], index: usize, recorder: &LatencyRecorder) {
    if !text.starts_with(b"{\"type\":\"event\"") {
        return;
    }
    let head = &text[..text.len().min(64)];
    if head.windows(10).any(|w| w == b"\"snapshot\"") {
        return;
    }
    let (ts, precise) = latencies_us(text, unix_micros());
    recorder.record(index, ts, precise);
}

impl Clients {
    pub fn reasons(&self) -> Vec<String> {
        self.close_reasons.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn still_open(&self) -> usize {
        self.opened.saturating_sub(self.closed.load(Ordering::Relaxed) as usize)
    }

    pub async fn close(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_messages_count_each_push_and_flag_pings() {
        let recorder = LatencyRecorder::new();
        recorder.set_recording(true);
        let now_ms = unix_micros() / 1000;
        let push = format!(r#"{{"push":{{"channel":"prices","pub":{{"data":{{"metadata":{{"timestamp":{now_ms}}}}},"offset":1}}}}}}"#);
        // Two publications and a subscribe reply in one message: both pushes count, no ping.
        let batch = format!("{push}\n{{\"id\":2,\"subscribe\":{{}}}}\n{push}");
        assert!(!on_centrifugo_message(batch.as_bytes(), 0, &recorder));
        assert_eq!(recorder.summary().window_frames, 2);
        // A ping alone, and a ping beside a push.
        assert!(on_centrifugo_message(b"{}", 0, &recorder));
        assert!(on_centrifugo_message(format!("{push}\n{{}}").as_bytes(), 0, &recorder));
        assert_eq!(recorder.summary().window_frames, 3);
        // A join push (no publication) is not a frame.
        assert!(!on_centrifugo_message(br#"{"push":{"channel":"prices","join":{"info":{}}}}"#, 0, &recorder));
        assert_eq!(recorder.summary().window_frames, 3);
    }
}

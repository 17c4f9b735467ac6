//! A real WebSocket client (tokio-tungstenite) for the tests.

use futures_util::{SinkExt, StreamExt};
use moonx_ws::deliver::auth::{sign, Claims};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Set when the server closed: (code, reason).
    pub closed: Option<(u16, String)>,
}

pub fn token(user: &str, roles: &[&str], ttl_secs: i64) -> String {
    let exp = (moonx_events::validate::now_ms() / 1000) as i64 + ttl_secs;
    sign(super::JWT_SECRET, &Claims { sub: user.into(), roles: roles.iter().map(|r| r.to_string()).collect(), exp: exp.max(0) as u64 })
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, &[]).await.expect("WebSocket connect")
    }

    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client { ws, closed: None })
    }

    /// Connects over a socket with a tiny receive buffer, so that a client
    /// that stops reading soon makes the server's writes block.
    pub async fn connect_small_buffer(url: &str) -> Client {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.unwrap();
        Client { ws, closed: None }
    }

    /// Counts event frames (without parsing them) until `n` or a pause of
    /// `idle`. Prefer `expect_event_count`: a pause is no proof of anything.
    pub async fn count_events(&mut self, n: usize, idle: Duration) -> usize {
        let mut count = 0;
        while count < n {
            match tokio::time::timeout(idle, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.starts_with("{\"type\":\"event\"") => count += 1,
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        count
    }

    /// Connects and authenticates with an `auth` message.
    pub async fn authed(url: &str, user: &str, roles: &[&str]) -> Client {
        let mut c = Self::connect(url).await;
        c.send_json(serde_json::json!({"type": "auth", "token": token(user, roles, 3600)})).await;
        let reply = c.recv_type("authenticated", Duration::from_secs(5)).await;
        assert_eq!(reply["userId"], user);
        c
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.into())).await.expect("send");
    }

    /// The next text frame, as JSON; `None` on timeout or close.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => return None,
            };
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("server frames are JSON")),
                Message::Close(f) => {
                    self.closed = Some(f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// Reads `n` event frames (other frames are skipped), failing if they
    /// do not all come within `timeout`.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(v) if v["type"] == "event" => out.push(v),
                Some(_) => {}
                None => panic!("got {} of {n} events (closed: {:?})", out.len(), self.closed),
            }
        }
        out
    }

    /// Skips frames until one of type `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(v) if v["type"] == kind => return v,
                Some(_) => continue,
                None => panic!("no {kind:?} frame within {timeout:?} (closed: {:?})", self.closed),
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) {
        self.send_json(serde_json::json!({"type": "subscribe", "channel": channel})).await;
        let r = self.recv_type_or_error(Duration::from_secs(5)).await;
        assert_eq!(r["type"], "subscribed", "subscribe {channel}: {r}");
    }

    /// The next reply that is not an event.
    pub async fn recv_type_or_error(&mut self, timeout: Duration) -> Value {
        loop {
            let v = self.recv(timeout).await.unwrap_or_else(|| panic!("no reply (closed: {:?})", self.closed));
            if v["type"] != "event" {
                return v;
            }
        }
    }

    /// Every event frame until nothing arrives for `quiet`.
    pub async fn events_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.recv(quiet).await {
            if v["type"] == "event" {
                out.push(v);
            }
        }
        out
    }

    /// Counts event frames (without parsing them) until `n` arrived; fails
    /// if that takes longer than `timeout` or the connection ends first.
    pub async fn expect_event_count(&mut self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut count = 0;
        while count < n {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.starts_with("{\"type\":\"event\"") => count += 1,
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("the connection ended after {count} of {n} event frames: {other:?}"),
                Err(_) => panic!("{count} of {n} event frames within {timeout:?}"),
            }
        }
    }

    /// The event frames before the one carrying event `marker` (which is
    /// consumed, not returned). The marker is produced after the events
    /// under test on the same ordered path, so what came before it is all
    /// that will come of them. Fails after `timeout` or on close.
    pub async fn events_until_marker(&mut self, marker: &str, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.recv(left).await else {
                panic!("marker {marker} not received within {timeout:?} (closed: {:?}); before it: {out:?}", self.closed)
            };
            if v["type"] != "event" {
                continue;
            }
            if v["event"]["metadata"]["eventId"] == marker {
                return out;
            }
            out.push(v);
        }
    }

    /// Sends a `ping` with `id` and returns every frame that arrived before
    /// its `pong`: the server answers in order, so a frame queued for this
    /// client before the ping was read comes before the pong.
    pub async fn frames_until_pong(&mut self, id: &str, timeout: Duration) -> Vec<Value> {
        self.send_json(serde_json::json!({"type": "ping", "id": id})).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.recv(left).await else {
                panic!("no pong {id:?} within {timeout:?} (closed: {:?}); before it: {out:?}", self.closed)
            };
            if v["type"] == "pong" && v["id"] == id {
                return out;
            }
            out.push(v);
        }
    }

    /// Reads every text frame until the connection ends, and returns them.
    /// Afterwards `closed` holds the close frame's (code, reason), or is
    /// `None` if the connection ended without one (EOF or reset). Fails if
    /// the connection is still open after `timeout`.
    pub async fn read_until_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the connection was still open after {timeout:?} ({} frames read)", out.len()),
                Ok(Some(Ok(Message::Text(t)))) => out.push(serde_json::from_str(&t).expect("server frames are JSON")),
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = Some(f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    eprintln!("read_until_closed: the connection ended with an error after {} frames: {e}", out.len());
                    return out;
                }
                Ok(None) => return out,
            }
        }
    }
}

/// The numbers of `order-<n>` order ids in event frames, in order.
pub fn order_numbers(frames: &[Value]) -> Vec<usize> {
    frames
        .iter()
        .map(|f| f["event"]["data"]["orderId"].as_str().unwrap().trim_start_matches("order-").parse().unwrap())
        .collect()
}

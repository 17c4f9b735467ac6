//! One task per WebSocket connection: reads client messages, answers them,
//! and writes the event frames the hub queued for it.
//!
//! Writes are batched: whatever is queued is fed to the socket and flushed
//! once. Every client error gets an error frame and the connection stays
//! open, unless the client keeps misbehaving or authenticates beyond its
//! user's connection limit (close 1008, after the error frame). A slow consumer
//! is closed with 3008, shutdown with 1001 (going away).

use super::auth::{Authenticator, Identity};
use super::dedup::RecentIds;
use super::hub::{ConnId, Hub, Outbound};
use super::protocol::{self, close_code, ErrorCode, ProtocolError, Request};
use super::{Access, Channel};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use prometheus::Histogram;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Per-connection limits (from `WsArgs`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub dedup_window: usize,
    /// Consecutive client errors after which the connection is closed.
    pub max_consecutive_errors: u32,
    /// Most tokens in a `prices` filter.
    pub max_filter_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024,
            max_subscriptions: 32,
            rate_per_sec: 20,
            rate_burst: 40,
            dedup_window: 1024,
            max_consecutive_errors: 20,
            max_filter_tokens: crate::config::DEFAULT_MAX_FILTER_TOKENS as usize,
        }
    }
}

/// Frames written per flush, at most.
const WRITE_BATCH: usize = 64;
/// How long a close handshake may take before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A token bucket: `burst` messages at once, `per_sec` sustained.
struct RateLimiter {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter { tokens: burst as f64, burst: burst as f64, per_sec: per_sec as f64, last: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

struct Session {
    id: ConnId,
    hub: Hub,
    auth: Authenticator,
    limits: Limits,
    identity: Option<Identity>,
    recent: RecentIds,
    rate: RateLimiter,
    consecutive_errors: u32,
    latency: [Histogram; 5],
    /// A subscription acknowledged to the client, to record once the reply is out.
    pending_subscription: Option<(Channel, Option<Vec<String>>)>,
    /// Set when the reply being sent is the last: the connection then closes.
    close_after_reply: Option<(u16, &'static str)>,
}

enum Exit {
    ClientClosed,
    Close(u16, &'static str),
}

/// Runs a connection to its end. `initial_token` comes from the query
/// string or the Authorization header of the upgrade request.
pub async fn run(
    socket: WebSocket,
    hub: Hub,
    auth: Authenticator,
    limits: Limits,
    initial_token: Option<String>,
    shutdown: CancellationToken,
) {
    let reg = match hub.register() {
        Ok(r) => r,
        Err(e) => {
            let mut socket = socket;
            let _ = socket.send(close(close_code::POLICY_VIOLATION, &e.to_string())).await;
            return;
        }
    };
    let metrics = hub.metrics().clone();
    let latency = Channel::ALL.map(|c| metrics.end_to_end_latency.with_label_values(&[c.as_str()]));
    let mut session = Session {
        id: reg.id,
        hub: hub.clone(),
        auth,
        recent: RecentIds::new(limits.dedup_window),
        rate: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
        limits,
        identity: None,
        consecutive_errors: 0,
        latency,
        pending_subscription: None,
        close_after_reply: None,
    };
    let (mut sink, mut stream) = socket.split();
    let mut queue = reg.queue;
    let kill = reg.kill;

    if let Some(token) = initial_token {
        let reply = session.authenticate(&token, &None).unwrap_or_else(|e| session.fail(e));
        let _ = sink.send(text(reply)).await;
    }

    let exit = loop {
        if let Some((code, reason)) = session.close_after_reply.take() {
            break Exit::Close(code, reason);
        }
        let expiry = session.identity.as_ref().map(|i| i.expires_at_ms);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Exit::Close(close_code::GOING_AWAY, "server shutting down"),
            _ = kill.cancelled() => {
                let msg = protocol::error(ErrorCode::SlowConsumer, "your queue overflowed: you were not reading fast enough", &None);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(text(msg))).await;
                break Exit::Close(close_code::SLOW_CONSUMER, "slow consumer: queue overflowed");
            }
            _ = sleep_until_ms(expiry) => {
                session.expire();
                let msg = protocol::error(ErrorCode::Unauthorized, "your token expired: private subscriptions ended, public ones continue", &None);
                if sink.send(text(msg)).await.is_err() { break Exit::ClientClosed; }
            }
            first = queue.recv() => {
                let Some(first) = first else { break Exit::Close(close_code::GOING_AWAY, "closed by the server") };
                let written = tokio::select! {
                    r = session.write_batch(&mut sink, first, &mut queue) => r,
                    _ = kill.cancelled() => Ok(()),
                };
                if written.is_err() { break Exit::ClientClosed; }
            }
            incoming = stream.next() => {
                let reply = match incoming {
                    None | Some(Err(_)) => break Exit::ClientClosed,
                    Some(Ok(Message::Close(_))) => break Exit::ClientClosed,
                    Some(Ok(Message::Text(t))) => session.on_text(&t),
                    Some(Ok(Message::Binary(_))) => Some(session.fail(ProtocolError::new(ErrorCode::BadRequest, "binary frames are not supported: send JSON text", None))),
                    Some(Ok(_)) => None, // ping/pong: answered by the WebSocket layer
                };
                if let Some(reply) = reply
                    && sink.send(text(reply)).await.is_err() { break Exit::ClientClosed; }
                if let Some((ch, tokens)) = session.pending_subscription.take() {
                    hub.subscribe(session.id, ch, tokens.as_deref());
                }
                if session.consecutive_errors >= session.limits.max_consecutive_errors {
                    break Exit::Close(close_code::POLICY_VIOLATION, "too many invalid messages");
                }
            }
        }
    };
    let reason = match exit {
        Exit::ClientClosed => "client closed",
        Exit::Close(code, reason) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close(code, reason))).await;
            reason
        }
    };
    hub.unregister(session.id, reason);
}

async fn sleep_until_ms(at_ms: Option<u64>) {
    match at_ms {
        Some(at) => {
            let now = moonx_events::validate::now_ms();
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await
        }
        None => std::future::pending().await,
    }
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

impl Session {
    async fn write_batch(
        &mut self,
        sink: &mut Sink,
        first: Outbound,
        queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
    ) -> Result<(), axum::Error> {
        let mut pending = Some(first);
        let mut fed = 0;
        // One clock read per batch: the frames of a batch are written together.
        let now_ms = moonx_events::validate::now_ms();
        while let Some(out) = pending.take() {
            if self.recent.first_time(out.event_id) {
                let lag_ms = now_ms.saturating_sub(out.timestamp_ms);
                self.latency[out.channel as usize].observe(lag_ms as f64 / 1000.0);
                sink.feed(Message::Text(out.frame.clone())).await?;
                fed += 1;
            } else {
                self.hub.metrics().duplicates_suppressed.inc();
            }
            if fed < WRITE_BATCH {
                pending = queue.try_recv().ok();
            }
        }
        sink.flush().await
    }

    /// Handles one client text frame; returns the reply, if any.
    fn on_text(&mut self, text: &str) -> Option<String> {
        if text.len() > self.limits.max_frame_bytes {
            let msg = format!("a frame of {} bytes exceeds the limit of {} (WS_MAX_FRAME_BYTES)", text.len(), self.limits.max_frame_bytes);
            return Some(self.fail(ProtocolError::new(ErrorCode::BadRequest, msg, None)));
        }
        if !self.rate.allow() {
            return Some(self.fail(ProtocolError::new(ErrorCode::RateLimited, "too many messages: slow down", None)));
        }
        let reply = protocol::parse(text).and_then(|m| self.handle(m.request, &m.id));
        match reply {
            Ok(r) => {
                self.consecutive_errors = 0;
                Some(r)
            }
            Err(e) => Some(self.fail(e)),
        }
    }

    fn fail(&mut self, e: ProtocolError) -> String {
        self.consecutive_errors += 1;
        self.hub.metrics().client_errors.with_label_values(&[e.code.as_str()]).inc();
        protocol::error(e.code, &e.message, &e.id)
    }

    fn handle(&mut self, request: Request, id: &Option<serde_json::Value>) -> Result<String, ProtocolError> {
        let err = |code, msg: String| ProtocolError::new(code, msg, id.clone());
        match request {
            Request::Ping => Ok(protocol::pong(id)),
            Request::Auth { token } => self.authenticate(&token, id),
            Request::Subscribe { channel, tokens } => {
                let ch = Channel::parse(&channel).ok_or_else(|| {
                    err(ErrorCode::UnknownChannel, format!("no channel {channel:?}: use prices, orders, portfolio, trades or system"))
                })?;
                if tokens.is_some() && ch != Channel::Prices {
                    return Err(err(ErrorCode::BadRequest, "\"tokens\" filters only the prices channel".into()));
                }
                if let Some(t) = &tokens
                    && t.len() > self.limits.max_filter_tokens
                {
                    let max = self.limits.max_filter_tokens;
                    return Err(err(ErrorCode::BadRequest, format!("a \"tokens\" filter holds at most {max} tokens (WS_MAX_FILTER_TOKENS)")));
                }
                self.check_access(ch, id)?;
                if !self.hub.is_subscribed(self.id, ch) && self.hub.subscription_count(self.id) >= self.limits.max_subscriptions {
                    return Err(err(ErrorCode::LimitExceeded, format!("at most {} subscriptions per connection (WS_MAX_SUBSCRIPTIONS)", self.limits.max_subscriptions)));
                }
                // Reply first, so that `subscribed` precedes the snapshot frames.
                let reply = protocol::subscribed(ch, tokens.as_deref(), id);
                self.pending_subscription = Some((ch, tokens));
                Ok(reply)
            }
            Request::Unsubscribe { channel } => {
                let ch = Channel::parse(&channel).ok_or_else(|| err(ErrorCode::UnknownChannel, format!("no channel {channel:?}")))?;
                self.hub.unsubscribe(self.id, ch);
                Ok(protocol::unsubscribed(ch, id))
            }
        }
    }

    fn check_access(&self, ch: Channel, id: &Option<serde_json::Value>) -> Result<(), ProtocolError> {
        let now = moonx_events::validate::now_ms();
        let valid = self.identity.as_ref().filter(|i| i.expires_at_ms > now);
        match (ch.access(), valid) {
            (Access::Anyone, _) => Ok(()),
            (_, None) => Err(ProtocolError::new(
                ErrorCode::Unauthorized,
                format!("{} is private: authenticate first (auth message, ?token= or Authorization: Bearer)", ch.as_str()),
                id.clone(),
            )),
            (Access::Admin, Some(i)) if !i.admin => {
                Err(ProtocolError::new(ErrorCode::Forbidden, "system needs the admin role", id.clone()))
            }
            _ => Ok(()),
        }
    }

    fn authenticate(&mut self, token: &str, id: &Option<serde_json::Value>) -> Result<String, ProtocolError> {
        match self.auth.verify(token) {
            Ok(identity) => {
                if let Err(e) = self.hub.set_identity(self.id, Some(identity.clone())) {
                    // Beyond the user's connection limit: refused, then closed.
                    self.close_after_reply = Some((close_code::POLICY_VIOLATION, "too many connections for this user"));
                    return Err(ProtocolError::new(ErrorCode::LimitExceeded, e.to_string(), id.clone()));
                }
                tracing::trace!(connection = self.id, user = %identity.user_id, admin = identity.admin, "authenticated");
                let reply = protocol::authenticated(&identity.user_id, identity.admin, identity.expires_at_ms, id);
                self.identity = Some(identity);
                Ok(reply)
            }
            Err(e) => Err(ProtocolError::new(ErrorCode::Unauthorized, e.to_string(), id.clone())),
        }
    }

    fn expire(&mut self) {
        self.identity = None;
        // Clearing an identity is never refused.
        let _ = self.hub.set_identity(self.id, None);
    }
}

//! One task per WebSocket connection: reads client messages, answers them,
//! and writes the event frames the hub queued for it.
//!
//! An idle session holds no buffer and no write timer (the socket takes
//! buffers per frame, writes and their timeouts are boxed while under way),
//! so a connection costs a few KiB (issue 14 item 4).
//!
//! Writes are batched: whatever is queued is fed to the socket and flushed
//! once. Every write (a batch, a reply, a close) must finish within the
//! write timeout (`WS_WRITE_TIMEOUT_MS`), or the client is judged gone and
//! its socket dropped, so a client that stops reading never holds a task,
//! a slot or its subscriptions for longer. Every client error gets an error
//! frame and the connection stays open, unless the client keeps misbehaving
//! (close 1008), or authenticates beyond its user's connection limit
//! (close 1008, after the error frame). Every end is a [`Disconnect`] value: the close code sent
//! (when one can be), the reason, and the `disconnects_total` label.
//! A frame the WebSocket layer refuses gets its RFC 6455 close code (1009
//! too big, 1002 protocol error, 1007 invalid UTF-8); a slow consumer gets
//! the `slow_consumer` error frame and 3008; shutdown 1001 (going away); a
//! revoked session 4001 ("session revoked"), and a token a revocation
//! covers is refused (`unauthorized`, the connection stays open).
//!
//! Resume (SPEC 6.1): a subscription with `since` gets its `subscribed`
//! reply (with `recovered` and `missed`), then the replayed frames, then the
//! channel's live frames; while its history is read from Kafka, the
//! channel's live frames are held (bounded) so order holds.

use super::auth::{Authenticator, Identity};
use super::dedup::RecentIds;
use super::hub::{ConnId, Hub, Outbound, ResumeStart};
use super::resume::{HistoryError, HistoryFuture, ResumeOutcome};
use super::protocol::{self, close_code, ErrorCode, ProtocolError, Request};
use super::socket::{Incoming, ReadError, Socket};
use super::entitlement::{self, Refusal};
use crate::telemetry::events::{AuthRefused, InternalEvent};
use super::Channel;
use prometheus::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a connection ended. One value gives the close code sent, the reason
/// text (close frame, log, presence event) and the metric label
/// (`moonx_ws_disconnects_total{reason}`), as centrifuge's `Disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code sent; `None` when no close frame can reach the client
    /// (it is gone, or its socket has accepted nothing for the write timeout).
    pub code: Option<u16>,
    pub reason: &'static str,
    pub label: &'static str,
}

impl Disconnect {
    /// The client sent a close frame (or finished the handshake).
    pub const CLIENT_CLOSED: Disconnect = Disconnect { code: None, reason: "client closed", label: "client_closed" };
    /// The TCP connection ended without a close frame, or failed.
    pub const CONNECTION_LOST: Disconnect = Disconnect { code: None, reason: "connection lost", label: "connection_lost" };
    /// A write blocked for longer than the write timeout: the client does not read.
    pub const WRITE_TIMEOUT: Disconnect = Disconnect { code: None, reason: "write timed out: the client is not reading", label: "write_timeout" };
    pub const SHUTDOWN: Disconnect = Disconnect { code: Some(close_code::GOING_AWAY), reason: "server shutting down", label: "shutdown" };
    /// The hub dropped the connection's queue.
    pub const SERVER_CLOSED: Disconnect = Disconnect { code: Some(close_code::GOING_AWAY), reason: "closed by the server", label: "server_closed" };
    pub const SLOW_CONSUMER: Disconnect = Disconnect { code: Some(close_code::SLOW_CONSUMER), reason: "slow consumer: queue overflowed", label: "slow_consumer" };
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect { code: Some(close_code::POLICY_VIOLATION), reason: "too many invalid messages", label: "too_many_errors" };
    /// Authenticated beyond `WS_MAX_CONNECTIONS_PER_USER` (after the error frame).
    pub const USER_CONNECTION_LIMIT: Disconnect = Disconnect { code: Some(close_code::POLICY_VIOLATION), reason: "too many connections for this user", label: "user_connection_limit" };
    pub const CONNECTION_LIMIT: Disconnect = Disconnect { code: Some(close_code::POLICY_VIOLATION), reason: "the server has reached its connection limit", label: "connection_limit" };
    /// A frame above the hard cap.
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect { code: Some(close_code::MESSAGE_TOO_BIG), reason: "frame too large", label: "message_too_big" };
    /// Reserved opcode or bits, unmasked client frame, bad continuation, …
    pub const PROTOCOL_ERROR: Disconnect = Disconnect { code: Some(PROTOCOL_ERROR_CODE), reason: "WebSocket protocol error", label: "protocol_error" };
    /// An operator revoked the user's sessions (`POST /api/sessions/revoke`).
    pub const REVOKED: Disconnect = Disconnect { code: Some(close_code::SESSION_REVOKED), reason: "session revoked", label: "revoked" };
    pub const INVALID_UTF8: Disconnect = Disconnect { code: Some(INVALID_PAYLOAD_CODE), reason: "text frame is not valid UTF-8", label: "invalid_utf8" };

    /// What a failed read means.
    fn of_read_error(e: ReadError) -> Disconnect {
        let d = match e {
            ReadError::TooBig => Disconnect::MESSAGE_TOO_BIG,
            ReadError::InvalidUtf8 => Disconnect::INVALID_UTF8,
            ReadError::Protocol => Disconnect::PROTOCOL_ERROR,
            ReadError::Lost => Disconnect::CONNECTION_LOST,
        };
        tracing::debug!(reason = d.label, "WebSocket read failed: {e:?}");
        d
    }
}

/// RFC 6455 7.4.1: the endpoint received a frame that breaks the protocol.
const PROTOCOL_ERROR_CODE: u16 = 1002;
/// RFC 6455 7.4.1: data inconsistent with the message type (invalid UTF-8 in text).
const INVALID_PAYLOAD_CODE: u16 = 1007;

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
    /// The longest one write (a batch, a reply, a close) may block.
    pub write_timeout: Duration,
    /// Accept permessage-deflate from clients that offer it (`WS_PERMESSAGE_DEFLATE`).
    pub permessage_deflate: bool,
}

impl Limits {
    /// The largest client message read at all (a frame, the frames of a
    /// message together, or a message once inflated): above it the
    /// connection is closed with 1009; between `max_frame_bytes` and it,
    /// the client gets an error frame.
    pub fn hard_cap(&self) -> usize {
        (self.max_frame_bytes * 4).max(64 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        use crate::config::defaults;
        Limits {
            max_frame_bytes: defaults::WS_MAX_FRAME_BYTES as usize,
            max_subscriptions: defaults::WS_MAX_SUBSCRIPTIONS,
            rate_per_sec: defaults::WS_RATE_LIMIT_PER_SEC,
            rate_burst: defaults::WS_RATE_LIMIT_BURST,
            dedup_window: defaults::WS_DEDUP_WINDOW,
            max_consecutive_errors: MAX_CONSECUTIVE_ERRORS,
            max_filter_tokens: crate::config::defaults::WS_MAX_FILTER_TOKENS as usize,
            write_timeout: Duration::from_millis(crate::config::defaults::WS_WRITE_TIMEOUT_MS),
            permessage_deflate: crate::config::defaults::WS_PERMESSAGE_DEFLATE,
        }
    }
}

/// Client errors in a row after which the connection is closed (1008): a
/// buggy client sees its errors first, a hostile one cannot loop for free.
const MAX_CONSECUTIVE_ERRORS: u32 = 20;

/// Frames written per flush, at most.
const WRITE_BATCH: usize = 64;
/// How long we wait for the client's answer to our close frame (which also
/// drains what it sent meanwhile, so that closing the socket sends FIN, not
/// RST) once the close frame is out.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a write did not happen.
enum WriteFailure {
    TimedOut,
    Failed,
}

impl From<WriteFailure> for Disconnect {
    fn from(f: WriteFailure) -> Disconnect {
        match f {
            WriteFailure::TimedOut => Disconnect::WRITE_TIMEOUT,
            WriteFailure::Failed => Disconnect::CONNECTION_LOST,
        }
    }
}

/// A write under the write timeout. Boxed: the write and its timer take
/// memory only while a write is under way, not in every idle session.
fn timed<'a, F>(limit: Duration, write: F) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), WriteFailure>> + Send + 'a>>
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'a,
{
    Box::pin(async move {
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!("WebSocket write failed: {e}");
                Err(WriteFailure::Failed)
            }
            Err(_) => Err(WriteFailure::TimedOut),
        }
    })
}
/// Live frames of a resuming channel held while its history is read; past
/// this the resume is abandoned (`recovered:false`) and they go out live.
const MAX_HELD_FRAMES: usize = 4096;

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

struct Session {
    id: ConnId,
    hub: Hub,
    auth: Authenticator,
    /// Shared by every connection.
    limits: std::sync::Arc<Limits>,
    identity: Option<Identity>,
    recent: RecentIds,
    rate: RateLimiter,
    consecutive_errors: u32,
    latency: [Histogram; 5],
    /// A subscription acknowledged to the client, to record once the reply is out.
    pending_subscription: Option<(Channel, Option<Vec<String>>)>,
    /// Set when the reply being sent is the last: the connection then closes.
    close_after_reply: Option<&'static Disconnect>,
    // resume (SPEC 6.1)
    /// Replayed frames to write right after the reply that announced them.
    replay: Vec<Outbound>,
    /// A resume waiting for the history: its reply and frames come when it
    /// is read; meanwhile the channel's live frames are held in `held`
    /// (other channels flow on).
    resuming: Option<Box<Resuming>>,
    /// Resumes asked for while one waits for its history (a client that
    /// re-subscribes its channels at once): started in order, one at a
    /// time, each when the one before has answered. At most one per channel.
    queued_resumes: std::collections::VecDeque<(Channel, String, Option<serde_json::Value>)>,
    held: Vec<Outbound>,
    /// Per channel, live frames at or before this offset are ones the
    /// client already has (it resumed from a position this instance had not reached).
    /// Boxed: set only by a resume.
    skip_through: Option<Box<[i64; 5]>>,
}

struct Resuming {
    channel: Channel,
    id: Option<serde_json::Value>,
    started: Instant,
    read: HistoryFuture,
}

/// Runs a connection to its end, once `upgrade` hands over the socket
/// (`None`: the upgrade failed); `deflate` when the handshake accepted
/// permessage-deflate. `initial_token` comes from the query string or the
/// Authorization header of the upgrade request; `remote` is the client's
/// address (listed by `GET /api/connections`).
///
/// The session's state is built here, before the task starts, and the task
/// uses it in place: an idle connection's task holds each value once.
#[allow(clippy::too_many_arguments)]
pub fn run<U, S>(
    upgrade: U,
    deflate: bool,
    hub: Hub,
    auth: Authenticator,
    limits: std::sync::Arc<Limits>,
    initial_token: Option<String>,
    shutdown: CancellationToken,
    remote: Option<std::net::SocketAddr>,
) -> impl std::future::Future<Output = ()> + Send
where
    U: std::future::Future<Output = Option<S>> + Send,
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let latency = Channel::ALL.map(|c| hub.metrics().end_to_end_latency.with_label_values(&[c.as_str()]));
    let session = Session {
        id: 0, // given by the hub once the socket is there
        hub,
        auth,
        recent: RecentIds::new(limits.dedup_window),
        rate: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
        limits,
        identity: None,
        consecutive_errors: 0,
        latency,
        pending_subscription: None,
        close_after_reply: None,
        replay: Vec::new(),
        resuming: None,
        queued_resumes: std::collections::VecDeque::new(),
        held: Vec::new(),
        skip_through: None,
    };
    // An async block, not an async fn: its captures are used in place,
    // where an async fn would copy its arguments into its body.
    let mut session = session;
    async move {
        let Some(socket) = upgrade.await else { return };
        let mut ws = Socket::new(socket, deflate, session.limits.hard_cap());
        let hub = session.hub.clone();
        let write_timeout = session.limits.write_timeout;
        let reg = match hub.register_from(remote) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("WebSocket refused after upgrade: {e}");
                let d = Disconnect::CONNECTION_LIMIT;
                ws.feed_close(d.code, d.reason, &[]);
                let _ = timed(write_timeout, ws.flush()).await;
                hub.metrics().disconnects.with_label_values(&[d.label]).inc();
                return;
            }
        };
        session.id = reg.id;
        let metrics = hub.metrics().clone();
        let mut queue = reg.queue;
        let kill = reg.kill;
        let revoked = reg.revoked;

        // The token's expiry, armed while there is an identity (boxed: an
        // unauthenticated connection holds no timer).
        let mut expiry: Option<(u64, std::pin::Pin<Box<tokio::time::Sleep>>)> = None;
        let mut ended: Option<Disconnect> = None;
        // The payload of the client's close frame, echoed (RFC 6455 5.5.1).
        let mut client_close = Vec::new();
        if let Some(token) = initial_token {
            let reply = session.authenticate(&token, &None).unwrap_or_else(|e| session.fail(e));
            if let Err(f) = timed(write_timeout, ws.send_text(&reply)).await {
                ended = Some(f.into());
            }
        }

        let disconnect = match ended {
            Some(d) => d,
            None => loop {
                if let Some(d) = session.close_after_reply.take() {
                    break *d;
                }
                if session.resuming.is_none()
                    && let Some((ch, since, id)) = session.queued_resumes.pop_front()
                {
                    // The next queued resume: answered now (from memory, or not
                    // recovered), or it waits for its history like the first.
                    if let Some(reply) = session.resume(ch, &since, &id) {
                        if let Err(f) = timed(write_timeout, ws.send_text(&reply)).await { break f.into(); }
                        let frames = std::mem::take(&mut session.replay);
                        if let Err(f) = timed(write_timeout, session.write_frames(&mut ws, frames)).await { break f.into(); }
                    }
                    continue;
                }
                let expires_at = session.identity.as_ref().map(|i| i.expires_at_ms);
                if expires_at != expiry.as_ref().map(|e| e.0) {
                    expiry = expires_at.map(|at| (at, Box::pin(sleep_until_ms(at))));
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Disconnect::SHUTDOWN,
                    // Condemned: no further event frame is written; the error
                    // frame and the close get a write timeout of their own.
                    _ = kill.cancelled() => break Disconnect::SLOW_CONSUMER,
                    _ = revoked.cancelled() => break Disconnect::REVOKED,
                    _ = async { expiry.as_mut().expect("guarded").1.as_mut().await }, if expiry.is_some() => {
                        expiry = None;
                        session.expire();
                        let msg = protocol::error(ErrorCode::Unauthorized, "your token expired: private subscriptions ended, public ones continue", &None);
                        if let Err(f) = timed(write_timeout, ws.send_text(&msg)).await { break f.into(); }
                    }
                    read = async { (&mut session.resuming.as_mut().expect("guarded").read).await }, if session.resuming.is_some() => {
                        let reply = session.resumed(read);
                        if let Err(f) = timed(write_timeout, ws.send_text(&reply)).await { break f.into(); }
                        let mut frames = std::mem::take(&mut session.replay);
                        frames.append(&mut session.held); // the replay, then the live frames held meanwhile
                        if let Err(f) = timed(write_timeout, session.write_frames(&mut ws, frames)).await { break f.into(); }
                    }
                    first = queue.recv() => {
                        let Some(first) = first else { break Disconnect::SERVER_CLOSED };
                        let written = tokio::select! {
                            r = timed(write_timeout, session.write_batch(&mut ws, first, &mut queue)) => r,
                            // Stop mid-batch: the writer keeps what it has not
                            // written yet, so the frames that follow stay whole.
                            _ = kill.cancelled() => Ok(()),
                            _ = revoked.cancelled() => Ok(()),
                        };
                        if let Err(f) = written { break f.into(); }
                    }
                    incoming = ws.next() => {
                        let reply = match incoming {
                            Err(e) => break Disconnect::of_read_error(e),
                            Ok(Incoming::Close(payload)) => {
                                client_close = payload;
                                break Disconnect::CLIENT_CLOSED;
                            }
                            Ok(Incoming::Text(t)) => session.on_text(&t),
                            Ok(Incoming::Binary) => Some(session.fail(ProtocolError::new(ErrorCode::BadRequest, "binary frames are not supported: send JSON text", None))),
                            Ok(Incoming::Ping(payload)) => {
                                ws.feed_pong(&payload);
                                if let Err(f) = timed(write_timeout, ws.flush()).await { break f.into(); }
                                None
                            }
                        };
                        if let Some(reply) = reply
                            && let Err(f) = timed(write_timeout, ws.send_text(&reply)).await { break f.into(); }
                        if !session.replay.is_empty() {
                            let frames = std::mem::take(&mut session.replay);
                            if let Err(f) = timed(write_timeout, session.write_frames(&mut ws, frames)).await { break f.into(); }
                        }
                        if let Some((ch, tokens)) = session.pending_subscription.take() {
                            hub.subscribe(session.id, ch, tokens.as_deref());
                        }
                        if session.consecutive_errors >= session.limits.max_consecutive_errors {
                            break Disconnect::TOO_MANY_ERRORS;
                        }
                    }
                }
            },
        };

        // Gone from delivery first: nothing more is queued while we say goodbye.
        hub.unregister(session.id, disconnect.reason);
        metrics.disconnects.with_label_values(&[disconnect.label]).inc();
        tracing::debug!(connection = session.id, reason = disconnect.label, "WebSocket connection ended");
        if let Some(code) = disconnect.code {
            // One write timeout for the goodbye as a whole (error frame + close),
            // the same patience as any other write.
            if disconnect == Disconnect::SLOW_CONSUMER {
                let msg = protocol::error(ErrorCode::SlowConsumer, "your queue overflowed: you were not reading fast enough", &None);
                ws.feed_text(&msg);
            }
            ws.feed_close(Some(code), disconnect.reason, &[]);
            if timed(write_timeout, ws.flush()).await.is_ok() {
                // The close handshake: wait for the client's close frame (reading
                // also drains its unread data, so the socket closes with FIN and
                // what we sent is not discarded by a reset).
                let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    while let Ok(m) = ws.next().await {
                        if matches!(m, Incoming::Close(_)) {
                            break;
                        }
                    }
                }))
                .await;
            }
        } else if disconnect == Disconnect::CLIENT_CLOSED {
            // The client started the close handshake: answer it.
            ws.feed_close(None, "", &client_close);
            let _ = timed(write_timeout, ws.flush()).await;
        }
    }
}

fn sleep_until_ms(at_ms: u64) -> tokio::time::Sleep {
    let now = moonx_events::validate::now_ms();
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now)))
}

impl Session {
    async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut Socket<S>,
        first: Outbound,
        queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
    ) -> std::io::Result<()> {
        let mut pending = Some(first);
        let mut fed = 0;
        // One clock read per batch: the frames of a batch are written together.
        let now_ms = moonx_events::validate::now_ms();
        while let Some(out) = pending.take() {
            if let Some(r) = self.resuming.as_ref().filter(|r| r.channel == out.channel) {
                // resume: live frames of the channel wait for its replay.
                if self.held.len() < MAX_HELD_FRAMES {
                    self.held.push(out);
                } else {
                    // Too much live traffic to hold: give the resume up, honestly.
                    let reply = protocol::subscribed_resumed(r.channel, false, 0, &r.id);
                    self.resuming = None;
                    self.hub.resume_metrics().requests.with_label_values(&["held_overflow"]).inc();
                    ws.feed_text(&reply);
                    let held = std::mem::take(&mut self.held);
                    for h in held.into_iter().chain(std::iter::once(out)) {
                        if self.recent.first_time(h.event_id) {
                            ws.feed_event(&h);
                        }
                    }
                }
            } else if out.offset >= 0 && self.skip_through.as_ref().is_some_and(|s| out.offset <= s[out.channel as usize]) {
                // resume: the client has this one from another instance.
                self.hub.metrics().duplicates_suppressed.inc();
            } else if self.recent.first_time(out.event_id) {
                let lag_ms = now_ms.saturating_sub(out.timestamp_ms);
                self.latency[out.channel as usize].observe(lag_ms as f64 / 1000.0);
                ws.feed_event(&out);
                fed += 1;
            } else {
                self.hub.metrics().duplicates_suppressed.inc();
            }
            if fed < WRITE_BATCH {
                pending = queue.try_recv().ok();
            }
        }
        ws.flush().await
    }

    /// Writes replayed frames (resume), in order, and flushes once.
    async fn write_frames<S: AsyncRead + AsyncWrite + Unpin>(&mut self, ws: &mut Socket<S>, frames: Vec<Outbound>) -> std::io::Result<()> {
        for out in frames {
            if self.recent.first_time(out.event_id) {
                ws.feed_event(&out);
            }
        }
        ws.flush().await
    }

    /// Starts a subscription with `since` on a private channel; the reply
    /// now, or `None` when it waits for the history.
    fn resume(&mut self, ch: Channel, since: &str, id: &Option<serde_json::Value>) -> Option<String> {
        let metrics = self.hub.resume_metrics().clone();
        let started = Instant::now();
        if self.hub.is_subscribed(self.id, ch) {
            // The live stream already runs: what came before it cannot be told apart.
            ResumeOutcome::NotRecovered("already_subscribed").emit(&metrics, self.id, ch, None);
            return Some(protocol::subscribed_resumed(ch, false, 0, id));
        }
        match self.hub.subscribe_resume(self.id, ch, since) {
            ResumeStart::NotRecovered(why) => {
                ResumeOutcome::NotRecovered(why).emit(&metrics, self.id, ch, None);
                Some(protocol::subscribed_resumed(ch, false, 0, id))
            }
            ResumeStart::Recovered { frames, skip_through } => {
                ResumeOutcome::Recovered { source: "memory", events: frames.len() }.emit(&metrics, self.id, ch, Some(started.elapsed()));
                self.skip_through.get_or_insert_with(|| Box::new([-1; 5]))[ch as usize] = skip_through;
                let reply = protocol::subscribed_resumed(ch, true, frames.len(), id);
                self.replay = frames;
                Some(reply)
            }
            ResumeStart::FromHistory { request, history } => {
                self.resuming = Some(Box::new(Resuming { channel: ch, id: id.clone(), started, read: history.read(request) }));
                None
            }
        }
    }

    /// The reply to a resume whose history was read; its frames go to `replay`.
    fn resumed(&mut self, read: Result<Vec<super::resume::Replayed>, HistoryError>) -> String {
        let Resuming { channel, id, started, .. } = *self.resuming.take().expect("a resume was in flight");
        let metrics = self.hub.resume_metrics().clone();
        let elapsed = Some(started.elapsed());
        if !self.hub.is_subscribed(self.id, channel) {
            // Unsubscribed (or the identity changed) while the history was read.
            ResumeOutcome::NotRecovered("unsubscribed").emit(&metrics, self.id, channel, elapsed);
            self.held.clear();
            return protocol::subscribed_resumed(channel, false, 0, &id);
        }
        match read {
            Ok(replayed) => {
                let frames = self.hub.admitted(self.id, channel, replayed);
                ResumeOutcome::Recovered { source: "kafka", events: frames.len() }.emit(&metrics, self.id, channel, elapsed);
                let reply = protocol::subscribed_resumed(channel, true, frames.len(), &id);
                self.replay = frames;
                reply
            }
            Err(e) => {
                ResumeOutcome::NotRecovered(e.label()).emit(&metrics, self.id, channel, elapsed);
                protocol::subscribed_resumed(channel, false, 0, &id)
            }
        }
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
                // Empty: a resume whose reply comes once its history is read.
                (!r.is_empty()).then_some(r)
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
            Request::Subscribe { channel, tokens, since } => {
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
                if let Some(since) = since.as_deref().filter(|_| ch != Channel::Prices) {
                    // resume (SPEC 6.1); `prices` needs none: its snapshot covers it.
                    if self.resuming.as_ref().is_some_and(|r| r.channel == ch) || self.queued_resumes.iter().any(|q| q.0 == ch) {
                        return Err(err(ErrorCode::BadRequest, format!("a resume of {} is already under way: wait for its subscribed reply", ch.as_str())));
                    }
                    if self.resuming.is_some() && ch != Channel::System {
                        // Its reply comes when its turn comes (after the one under way).
                        self.queued_resumes.push_back((ch, since.to_owned(), id.clone()));
                        return Ok(String::new());
                    }
                    if ch == Channel::System {
                        ResumeOutcome::NotRecovered("not_resumable").emit(self.hub.resume_metrics(), self.id, ch, None);
                        self.pending_subscription = Some((ch, None));
                        return Ok(protocol::subscribed_resumed(ch, false, 0, id));
                    }
                    return Ok(self.resume(ch, since, id).unwrap_or_default());
                }
                // Reply first, so that `subscribed` precedes the snapshot frames.
                let reply = protocol::subscribed(ch, tokens.as_deref(), id);
                self.pending_subscription = Some((ch, tokens));
                Ok(reply)
            }
            Request::Unsubscribe { channel } => {
                let ch = Channel::parse(&channel).ok_or_else(|| err(ErrorCode::UnknownChannel, format!("no channel {channel:?}")))?;
                // A resume still queued for it is dropped with it.
                self.queued_resumes.retain(|q| q.0 != ch);
                self.hub.unsubscribe(self.id, ch);
                Ok(protocol::unsubscribed(ch, id))
            }
        }
    }

    /// The hub's rule ([`entitlement`]), on its clock: a subscription is
    /// refused exactly when its events would not be delivered.
    fn check_access(&self, ch: Channel, id: &Option<serde_json::Value>) -> Result<(), ProtocolError> {
        match entitlement::may_subscribe(self.identity.as_ref(), ch, entitlement::now_ms()) {
            Ok(()) => Ok(()),
            Err(Refusal::Unauthenticated) => Err(ProtocolError::new(
                ErrorCode::Unauthorized,
                format!("{} is private: authenticate first (auth message, ?token= or Authorization: Bearer)", ch.as_str()),
                id.clone(),
            )),
            Err(Refusal::NotAdmin) => Err(ProtocolError::new(ErrorCode::Forbidden, "system needs the admin role", id.clone())),
        }
    }

    fn authenticate(&mut self, token: &str, id: &Option<serde_json::Value>) -> Result<String, ProtocolError> {
        match self.auth.verify(token) {
            Ok(identity) => {
                if let Err(e) = self.hub.set_identity(self.id, Some(identity.clone())) {
                    AuthRefused { connection: self.id, reason: e.label() }.emit(self.hub.metrics());
                    if e == super::hub::HubError::Revoked {
                        return Err(ProtocolError::new(ErrorCode::Unauthorized, e.to_string(), id.clone()));
                    }
                    // Beyond the user's connection limit: refused, then closed.
                    self.close_after_reply = Some(&Disconnect::USER_CONNECTION_LIMIT);
                    return Err(ProtocolError::new(ErrorCode::LimitExceeded, e.to_string(), id.clone()));
                }
                tracing::trace!(connection = self.id, user = %identity.user_id, admin = identity.admin, "authenticated");
                let reply = protocol::authenticated(&identity.user_id, identity.admin, identity.expires_at_ms, id);
                self.identity = Some(identity);
                Ok(reply)
            }
            Err(e) => {
                AuthRefused { connection: self.id, reason: e.label() }.emit(self.hub.metrics());
                Err(ProtocolError::new(ErrorCode::Unauthorized, e.to_string(), id.clone()))
            }
        }
    }

    fn expire(&mut self) {
        self.identity = None;
        // Clearing an identity is never refused.
        let _ = self.hub.set_identity(self.id, None);
    }
}

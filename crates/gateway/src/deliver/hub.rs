//! The fan-out hub: who is connected, who subscribed to what, and the one
//! place that decides which connection receives which event.
//!
//! Each event frame is serialized once and shared (reference-counted) by
//! every recipient. Each connection has a bounded queue; a connection whose
//! queue is full is cut off as a slow consumer instead of slowing the
//! others or growing memory. Entitlement is checked here, on the server,
//! for every delivery: public events to subscribers of `prices`, a user's
//! events only to connections authenticated as that user, internal events
//! only to admins, never after the token expired.
//!
//! Resume (SPEC 6.1, machinery in `resume`): a record's frame carries its
//! `pos`, and the record moves its partition's live boundary under this
//! hub's lock; a subscription with `since` reads that boundary and registers
//! under the same lock, so the replay and the live stream meet exactly. A
//! replayed frame passes the same entitlement rule as a live one.

use super::auth::Identity;
use super::resume::{At, Position, Resume, ResumeMetrics, ResumeSettings, Streams, Windows};
use super::{Audience, Channel};
use crate::pipeline::router::Route;
use crate::telemetry::Metrics;
use axum::extract::ws::Utf8Bytes;
use moonx_events::{Event, EventData};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// A frame on its way to connections: built once per event and shared by
/// every recipient's queue (an `Arc`, so a queue slot is one pointer).
pub type Outbound = Arc<Frame>;

#[derive(Debug, Clone)]
pub struct Frame {
    pub event_id: u128,
    pub timestamp_ms: u64,
    pub channel: Channel,
    /// The record's offset in its partition, -1 when unknown (resume: the
    /// session skips live frames its client already has).
    pub offset: i64,
    pub frame: Utf8Bytes,
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub queue_capacity: usize,
    pub max_connections: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings { queue_capacity: 1024, max_connections: 100_000 }
    }
}

/// A presence change of an authenticated user (for `user.connected` /
/// `user.disconnected` events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Connected { user_id: String, connection_id: String },
    Disconnected { user_id: String, connection_id: String, duration_ms: u64, reason: String },
}

pub type PresenceSink = Arc<dyn Fn(Presence) + Send + Sync>;

struct Conn {
    tx: mpsc::Sender<Outbound>,
    identity: Option<Identity>,
    channels: [bool; 5],
    kill: CancellationToken,
    /// Set with `kill`: checked on every publish, and an atomic load is
    /// cheaper than asking the token (which takes a lock).
    killed: AtomicBool,
    connected_at: std::time::Instant,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    /// Subscribers of `prices`, with their optional token filter.
    prices: HashMap<ConnId, Option<TokenFilter>>,
    /// Connections authenticated as each user.
    users: HashMap<String, HashSet<ConnId>>,
    /// Admin connections subscribed to `system`.
    operators: HashSet<ConnId>,
    /// The latest price frame per token and chain (turned into a snapshot
    /// frame when someone subscribes).
    latest_prices: BTreeMap<String, BTreeMap<u64, Outbound>>,
    // resume (SPEC 6.1): live boundaries and windows, under the same lock
    // as the subscriptions so that a resume's seam is exact.
    windows: Windows,
    resume_settings: ResumeSettings,
}

struct Inner {
    state: Mutex<State>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    settings: HubSettings,
    presence: Mutex<Option<PresenceSink>>,
    resume: Resume,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("the server has reached its connection limit")]
    TooManyConnections,
}

/// What a new connection gets from the hub.
pub struct Registration {
    pub id: ConnId,
    pub queue: mpsc::Receiver<Outbound>,
    /// Cancelled when the hub cuts the connection off (slow consumer).
    pub kill: CancellationToken,
}

impl Hub {
    pub fn new(settings: HubSettings, metrics: Arc<Metrics>) -> Self {
        let resume = Resume {
            settings: ResumeSettings::default(),
            streams: Arc::new(Streams::default()),
            history: Mutex::new(None),
            metrics: ResumeMetrics::new(&metrics.registry),
        };
        Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                next_id: AtomicU64::new(1),
                metrics,
                settings,
                presence: Mutex::new(None),
                resume,
            }),
        }
    }

    pub fn set_presence_sink(&self, sink: PresenceSink) {
        *self.inner.presence.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take delivery down with it.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn max_connections(&self) -> usize {
        self.inner.settings.max_connections
    }

    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    pub fn register(&self) -> Result<Registration, HubError> {
        let mut st = self.state();
        if st.conns.len() >= self.inner.settings.max_connections {
            return Err(HubError::TooManyConnections);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, queue) = mpsc::channel(self.inner.settings.queue_capacity);
        let kill = CancellationToken::new();
        st.conns.insert(
            id,
            Conn {
                tx,
                identity: None,
                channels: [false; 5],
                kill: kill.clone(),
                killed: AtomicBool::new(false),
                connected_at: std::time::Instant::now(),
            },
        );
        self.inner.metrics.connections.set(st.conns.len() as i64);
        Ok(Registration { id, queue, kill })
    }

    pub fn unregister(&self, id: ConnId, reason: &str) {
        let presence = {
            let mut st = self.state();
            let Some(conn) = st.conns.get(&id) else { return };
            let identity = conn.identity.clone();
            let connected_at = conn.connected_at;
            for ch in Channel::ALL {
                remove_subscription(&mut st, id, ch, &self.inner.metrics);
            }
            if let Some(ident) = &identity {
                remove_user_index(&mut st, &ident.user_id, id);
            }
            st.conns.remove(&id);
            self.inner.metrics.connections.set(st.conns.len() as i64);
            identity.map(|i| Presence::Disconnected {
                user_id: i.user_id,
                connection_id: id.to_string(),
                duration_ms: connected_at.elapsed().as_millis() as u64,
                reason: reason.to_owned(),
            })
        };
        if let Some(p) = presence {
            self.emit_presence(p);
        }
    }

    fn emit_presence(&self, p: Presence) {
        let sink = self.inner.presence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(sink) = sink {
            sink(p);
        }
    }

    /// Sets (or clears) who the connection is. A change of user, or losing
    /// the identity, ends its private subscriptions; public ones stay.
    /// Returns the private channels that were dropped.
    pub fn set_identity(&self, id: ConnId, identity: Option<Identity>) -> Vec<Channel> {
        let mut dropped = Vec::new();
        let mut presence = Vec::new();
        {
            let mut st = self.state();
            let Some(conn) = st.conns.get_mut(&id) else { return dropped };
            let old = std::mem::replace(&mut conn.identity, identity.clone());
            let same_user = old.as_ref().map(|o| &o.user_id) == identity.as_ref().map(|n| &n.user_id);
            let still_admin = identity.as_ref().is_some_and(|i| i.admin);
            let to_drop: Vec<Channel> = Channel::ALL
                .into_iter()
                .filter(|c| conn.channels[c.index()])
                .filter(|c| match c {
                    Channel::Prices => false,
                    Channel::System => !still_admin,
                    _ => !same_user || identity.is_none(),
                })
                .collect();
            for ch in &to_drop {
                remove_subscription(&mut st, id, *ch, &self.inner.metrics);
            }
            dropped = to_drop;
            if !same_user {
                if let Some(o) = &old {
                    remove_user_index(&mut st, &o.user_id, id);
                    presence.push(Presence::Disconnected {
                        user_id: o.user_id.clone(),
                        connection_id: id.to_string(),
                        duration_ms: 0,
                        reason: "identity changed".into(),
                    });
                }
                if let Some(n) = &identity {
                    st.users.entry(n.user_id.clone()).or_default().insert(id);
                    presence.push(Presence::Connected { user_id: n.user_id.clone(), connection_id: id.to_string() });
                }
            }
        }
        for p in presence {
            self.emit_presence(p);
        }
        dropped
    }

    /// Records a subscription (the session has checked access) and, for
    /// `prices`, queues the latest price of each matching token first, as
    /// snapshots. Done under the hub lock, so the live stream continues
    /// exactly after the snapshot: no gap, no duplicate.
    pub fn subscribe(&self, id: ConnId, channel: Channel, tokens: Option<&[String]>) -> usize {
        let mut st = self.state();
        let st = &mut *st;
        let Some(conn) = st.conns.get_mut(&id) else { return 0 };
        if !conn.channels[channel.index()] {
            conn.channels[channel.index()] = true;
            self.inner.metrics.subscriptions.with_label_values(&[channel.as_str()]).inc();
        }
        match channel {
            Channel::Prices => {
                let filter = tokens.map(TokenFilter::new);
                let mut queued = 0;
                for (token, chains) in &st.latest_prices {
                    if !filter.as_ref().is_none_or(|f| f.admits(token)) {
                        continue;
                    }
                    for live in chains.values() {
                        let snapshot = Arc::new(Frame {
                            frame: utf8(super::protocol::snapshot_of(live.frame.as_bytes())),
                            ..Frame::clone(live)
                        });
                        if conn.tx.try_send(snapshot).is_ok() {
                            queued += 1;
                        }
                    }
                }
                st.prices.insert(id, filter);
                queued
            }
            Channel::System => {
                st.operators.insert(id);
                0
            }
            _ => 0,
        }
    }

    pub fn unsubscribe(&self, id: ConnId, channel: Channel) -> bool {
        let mut st = self.state();
        remove_subscription(&mut st, id, channel, &self.inner.metrics)
    }

    pub fn subscription_count(&self, id: ConnId) -> usize {
        self.state().conns.get(&id).map_or(0, |c| c.channels.iter().filter(|s| **s).count())
    }

    pub fn is_subscribed(&self, id: ConnId, channel: Channel) -> bool {
        self.state().conns.get(&id).is_some_and(|c| c.channels[channel.index()])
    }

    /// Delivers one routed event to every entitled subscriber.
    /// `original` is the record's bytes when they are the envelope as-is.
    pub fn publish(&self, route: Route, event: &Event, original: Option<&[u8]>) {
        self.publish_at(route, event, original, None)
    }

    /// The frame of a routed event, exactly as live delivery builds it
    /// (resume replays build theirs here too). Private and system frames
    /// of a record with known coordinates carry `pos`.
    pub fn frame_of(&self, channel: Channel, event: &Event, original: Option<&[u8]>, at: Option<&At<'_>>) -> Outbound {
        let owned;
        let envelope = match original {
            Some(bytes) => bytes,
            None => {
                owned = event.to_json_bytes();
                &owned
            }
        };
        // Prices need no position (the snapshot covers them): their frames stay as they were.
        let pos = at.filter(|_| channel != Channel::Prices).and_then(|at| self.inner.resume.streams.position_of(at));
        Arc::new(Frame {
            event_id: event.metadata.event_id.as_u128(),
            timestamp_ms: event.metadata.timestamp,
            channel,
            offset: at.map_or(-1, |a| a.offset),
            frame: utf8(super::protocol::event_frame_at(channel, envelope, pos.as_deref())),
        })
    }

    /// [`Hub::publish`] of a record at known Kafka coordinates: the frame
    /// carries `pos`, and the record moves the partition's live boundary
    /// (and enters its resume window) under the lock that delivers it.
    pub fn publish_at(&self, route: Route, event: &Event, original: Option<&[u8]>, at: Option<At<'_>>) {
        let out = self.frame_of(route.channel, event, original, at.as_ref());
        let price_token = match &event.data {
            EventData::PriceUpdated(p) => Some((p.token.as_str(), p.chain_id)),
            _ => None,
        };
        let now_ms = crate::telemetry::coarse_clock::now_ms();
        let metrics = &self.inner.metrics;
        let mut st = self.state();
        if let Some(at) = &at {
            let st = &mut *st;
            // A redelivered record is already in the window (and its frame
            // reaches clients again, where eventId de-duplication drops it).
            if st.windows.observe(at) && matches!(route.audience, Audience::User(_)) {
                st.windows.keep(at, &route, &out, &st.resume_settings);
            }
        }
        if let (Some((token, chain)), Audience::Everyone) = (price_token, &route.audience) {
            match st.latest_prices.get_mut(token) {
                Some(chains) => {
                    chains.insert(chain, out.clone());
                }
                None => {
                    st.latest_prices.insert(token.to_owned(), BTreeMap::from([(chain, out.clone())]));
                }
            }
        }
        let st = &*st;
        let entitled = |conn: &Conn| entitled(conn, &route, now_ms);
        let mut sent = 0u64;
        let mut offer = |id: &ConnId| {
            let Some(conn) = st.conns.get(id) else { return };
            if !entitled(conn) || conn.killed.load(Ordering::Relaxed) {
                return;
            }
            match conn.tx.try_send(out.clone()) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    conn.killed.store(true, Ordering::Relaxed);
                    conn.kill.cancel();
                    metrics.slow_consumer_disconnects.inc();
                    metrics.frames_dropped.with_label_values(&["slow_consumer"]).inc();
                    tracing::warn!(connection = id, "slow consumer: queue full, disconnecting");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    metrics.frames_dropped.with_label_values(&["closed"]).inc();
                }
            }
        };
        match &route.audience {
            Audience::Everyone => {
                let token = price_token.map(|(t, _)| t);
                for (id, filter) in &st.prices {
                    let passes = match (filter, token) {
                        (Some(f), Some(t)) => f.admits(t),
                        _ => true,
                    };
                    if passes {
                        offer(id);
                    }
                }
            }
            Audience::User(u) => {
                if let Some(ids) = st.users.get(u) {
                    ids.iter().for_each(&mut offer);
                }
            }
            Audience::Operators => st.operators.iter().for_each(&mut offer),
        }
        if sent > 0 {
            metrics.frames_sent.with_label_values(&[route.channel.as_str()]).inc_by(sent);
        }
    }
}

/// Whether a subscriber receives a route: the one rule of live delivery,
/// and of resume replays.
fn entitled(conn: &Conn, route: &Route, now_ms: u64) -> bool {
    conn.channels[route.channel.index()]
        && match &route.audience {
            Audience::Everyone => true,
            Audience::User(u) => conn.identity.as_ref().is_some_and(|i| &i.user_id == u && i.expires_at_ms > now_ms),
            Audience::Operators => conn.identity.as_ref().is_some_and(|i| i.admin && i.expires_at_ms > now_ms),
        }
}

/// The `tokens` filter of a `prices` subscription (case-insensitive; a
/// handful of tokens, so a list beats a set).
#[derive(Debug, Clone)]
struct TokenFilter(Vec<String>);

impl TokenFilter {
    fn new(tokens: &[String]) -> Self {
        TokenFilter(tokens.to_vec())
    }

    fn admits(&self, token: &str) -> bool {
        self.0.iter().any(|t| t.eq_ignore_ascii_case(token))
    }
}

fn utf8(bytes: Vec<u8>) -> Utf8Bytes {
    // The frame is our own JSON around a decoded (hence UTF-8) envelope.
    Utf8Bytes::try_from(bytes::Bytes::from(bytes)).unwrap_or_else(|_| Utf8Bytes::from("{}"))
}

fn remove_subscription(st: &mut State, id: ConnId, channel: Channel, metrics: &Metrics) -> bool {
    let Some(conn) = st.conns.get_mut(&id) else { return false };
    if !std::mem::take(&mut conn.channels[channel.index()]) {
        return false;
    }
    metrics.subscriptions.with_label_values(&[channel.as_str()]).dec();
    match channel {
        Channel::Prices => {
            st.prices.remove(&id);
        }
        Channel::System => {
            st.operators.remove(&id);
        }
        _ => {}
    }
    true
}

fn remove_user_index(st: &mut State, user: &str, id: ConnId) {
    if let Some(set) = st.users.get_mut(user) {
        set.remove(&id);
        if set.is_empty() {
            st.users.remove(user);
        }
    }
}

// ---- resume (SPEC 6.1; the machinery is in `super::resume`) ----

/// How a subscription with `since` starts.
pub enum ResumeStart {
    /// Subscribed, live only: the server cannot prove nothing is missing
    /// (the reason is the `result` label of `resume_requests_total`).
    NotRecovered(&'static str),
    /// Subscribed; these frames first, then live. Live frames of the channel
    /// at or before `skip_through` are ones the client already has (this
    /// instance is behind the one that served the position).
    Recovered { frames: Vec<Outbound>, skip_through: i64 },
    /// Subscribed; read the history first (frames after `request.until`
    /// arrive live), then keep what [`Hub::admitted`] lets through.
    FromHistory { request: super::resume::HistoryRequest, history: Arc<dyn super::resume::History> },
}

impl Hub {
    /// Applies the resume settings (at start-up).
    pub fn set_resume_settings(&self, settings: ResumeSettings) {
        self.state().resume_settings = settings;
    }

    /// Where the source declares each topic's generation.
    pub fn resume_streams(&self) -> Arc<Streams> {
        self.inner.resume.streams.clone()
    }

    /// The reader of missed records beyond the window (set by the source).
    pub fn set_history(&self, history: Arc<dyn super::resume::History>) {
        *self.inner.resume.history.lock().unwrap_or_else(|p| p.into_inner()) = Some(history);
    }

    pub fn resume_metrics(&self) -> &ResumeMetrics {
        &self.inner.resume.metrics
    }

    /// Notes a record that reached no subscriber (dead-lettered, or routed
    /// nowhere): it still moves the partition's live boundary.
    pub fn note_processed(&self, at: At<'_>) {
        self.state().windows.observe(&at);
    }

    /// Subscribes `id` to a private channel and decides, under the same lock
    /// (so the seam is exact), how the events after `since` reach it.
    pub fn subscribe_resume(&self, id: ConnId, channel: Channel, since: &str) -> ResumeStart {
        let parsed = Position::parse(since);
        let now_ms = crate::telemetry::coarse_clock::now_ms();
        let resume = &self.inner.resume;
        let mut st = self.state();
        let st = &mut *st;
        let Some(conn) = st.conns.get_mut(&id) else { return ResumeStart::NotRecovered("closed") };
        if !conn.channels[channel.index()] {
            conn.channels[channel.index()] = true;
            self.inner.metrics.subscriptions.with_label_values(&[channel.as_str()]).inc();
        }
        let conn = &*conn;
        let settings = &st.resume_settings;
        let Ok(pos) = parsed else { return ResumeStart::NotRecovered("invalid") };
        if !matches!(channel, Channel::Orders | Channel::Portfolio | Channel::Trades) {
            return ResumeStart::NotRecovered("not_resumable");
        }
        if resume.streams.get(&pos.topic) != Some(pos.generation) {
            return ResumeStart::NotRecovered("other_stream");
        }
        let Some(user) = conn.identity.as_ref().filter(|i| i.expires_at_ms > now_ms).map(|i| i.user_id.clone()) else {
            return ResumeStart::NotRecovered("unauthorized");
        };
        let users_partition = match pos.generation {
            super::resume::Generation::Partitions(n) => settings.partitioner.partition_of(user.as_bytes(), n),
            super::resume::Generation::Epoch(_) => 0,
        };
        if users_partition != pos.partition {
            return ResumeStart::NotRecovered("other_partition");
        }
        if let Some(start) = resume.streams.start_of(&pos.topic, pos.partition) {
            st.windows.begin_at(&pos.topic, pos.partition, start);
        }
        let Some((live, covered)) = st.windows.boundary(&pos.topic, pos.partition, pos.offset) else {
            return ResumeStart::NotRecovered("unknown_partition");
        };
        if pos.offset >= live {
            // Another instance got further: what lies between comes live, and the client has it.
            if (pos.offset - live) as u64 > settings.max_events as u64 {
                return ResumeStart::NotRecovered("ahead_of_log");
            }
            return ResumeStart::Recovered { frames: Vec::new(), skip_through: pos.offset };
        }
        if covered {
            let frames = st.windows.collect(&pos.topic, pos.partition, pos.offset, live, channel, |r| entitled(conn, r, now_ms));
            if frames.len() > settings.max_events {
                return ResumeStart::NotRecovered("too_many");
            }
            return ResumeStart::Recovered { frames, skip_through: -1 };
        }
        if (live - pos.offset) as u64 > settings.max_scan_records {
            return ResumeStart::NotRecovered("too_old");
        }
        let Some(history) = resume.history() else { return ResumeStart::NotRecovered("no_history") };
        let request = super::resume::HistoryRequest {
            topic: pos.topic,
            partition: pos.partition,
            since: pos.offset,
            until: live,
            key: user,
            max_events: settings.max_events,
        };
        ResumeStart::FromHistory { request, history }
    }

    /// The replayed frames on `channel` that the live rule lets `id` see now.
    pub fn admitted(&self, id: ConnId, channel: Channel, replayed: Vec<super::resume::Replayed>) -> Vec<Outbound> {
        let now_ms = crate::telemetry::coarse_clock::now_ms();
        let st = self.state();
        let Some(conn) = st.conns.get(&id) else { return Vec::new() };
        replayed.into_iter().filter(|r| r.route.channel == channel && entitled(conn, &r.route, now_ms)).map(|r| r.frame).collect()
    }
}

//! The fan-out hub: who is connected, who subscribed to what, and the one
//! place that decides which connection receives which event.
//!
//! Each event frame is serialized once and shared (reference-counted) by
//! every recipient. Each connection has a bounded queue; a connection whose
//! queue is full is cut off as a slow consumer instead of slowing the
//! others or growing memory. Entitlement is checked here, on the server,
//! for every delivery, by the one rule of `super::entitlement` (the
//! session's subscription check is the same rule): public events to
//! subscribers of `prices`, a user's events only to connections
//! authenticated as that user, internal events only to admins, never after
//! the token expired. New `prices` subscribers get the latest prices first
//! (`super::prices`, under this lock).
//!
//! Bounded work per event: `prices` subscribers are indexed by filter
//! token (unfiltered subscribers, plus lowercase token -> subscribers), so
//! a price event visits only the connections that want it, whatever the
//! other clients' filters are. Each user has at most
//! `max_connections_per_user` connections, and presence is reported per
//! user, not per connection: `Connected` when a user's first connection is
//! authenticated, `Disconnected` when their last one ends.
//!
//! Revocation (`revoke_user`) is decided under the same lock as
//! authentication (`set_identity`): once a revocation is recorded, no token
//! it covers can join, and every connection it covers is cut off (close
//! 4001, see `session::Disconnect::REVOKED`) and gets no further frame.
//!
//! Resume (SPEC 6.1, machinery in `resume`): a record's frame carries its
//! `pos`, and the record moves its partition's live boundary under this
//! hub's lock; a subscription with `since` reads that boundary and registers
//! under the same lock, so the replay and the live stream meet exactly. A
//! replayed frame passes the same entitlement rule as a live one.

use super::audience::LocalAudience;
use super::auth::Identity;
use super::entitlement;
use super::revocation::Revocations;
use super::resume::{At, Position, Resume, ResumeMetrics, ResumeSettings, Streams, Windows};
use super::{Audience, Channel};
use crate::deliver::Route;
use crate::telemetry::events::{InternalEvent, SlowConsumerCut};
use crate::telemetry::Metrics;
use super::frame::utf8;
use super::prices::LatestPrices;
use moonx_events::{Event, EventData};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

// Frames have their own module (`super::frame`), shared with `resume`; named here too for the hub's users.
pub use super::frame::{Frame, Outbound};

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub queue_capacity: usize,
    pub max_connections: usize,
    /// Connections authenticated as one user, at most.
    pub max_connections_per_user: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        use crate::config::defaults;
        HubSettings {
            queue_capacity: defaults::WS_QUEUE_CAPACITY as usize,
            max_connections: defaults::WS_MAX_CONNECTIONS as usize,
            max_connections_per_user: defaults::WS_MAX_CONNECTIONS_PER_USER as usize,
        }
    }
}

/// A presence change of an authenticated user (for `user.connected` /
/// `user.disconnected` events): the user's first connection on this
/// instance opened, or their last one closed.
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
    /// Set with `kill` (or `revoke`): checked on every publish, and an
    /// atomic load is cheaper than asking the token (which takes a lock).
    killed: AtomicBool,
    /// Cancelled when the connection's session is revoked.
    revoke: CancellationToken,
    /// When it was registered (ms since the epoch), for the connections listing.
    connected_at_ms: u64,
    /// The client's address, when known.
    remote: Option<std::net::SocketAddr>,
}

/// One live connection, as `GET /api/connections` lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub connection_id: ConnId,
    pub user_id: Option<String>,
    pub admin: bool,
    pub connected_at: u64,
    pub subscriptions: Vec<Channel>,
    pub remote_address: Option<String>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    /// Subscribers of `prices`, with their optional token filter.
    prices: HashMap<ConnId, Option<TokenFilter>>,
    /// The index of `prices`: subscribers without a filter...
    prices_unfiltered: HashSet<ConnId>,
    /// ...and, per lowercase token, the subscribers whose filter names it.
    prices_by_token: HashMap<String, HashSet<ConnId>>,
    /// Connections authenticated as each user.
    users: HashMap<String, UserConns>,
    /// Admin connections subscribed to `system`.
    operators: HashSet<ConnId>,
    /// The latest price frame per token and chain (`super::prices`).
    latest_prices: LatestPrices,
    // resume (SPEC 6.1): live boundaries and windows, under the same lock
    // as the subscriptions so that a resume's seam is exact.
    windows: Windows,
    resume_settings: ResumeSettings,
    /// Users whose sessions were revoked, within the revocation window.
    revocations: Revocations,
    /// `users` and the admin connections, mirrored for the pipeline's
    /// lock-free-of-the-hub skip check (`super::audience`).
    audience: Arc<LocalAudience>,
}

/// A user's connections, and since when the user has had one.
struct UserConns {
    conns: HashSet<ConnId>,
    online_since: std::time::Instant,
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
    #[error("this user has too many connections open (WS_MAX_CONNECTIONS_PER_USER)")]
    TooManyConnectionsForUser,
    #[error("this session was revoked: sign in again to get a new token")]
    Revoked,
}

impl HubError {
    /// The metric label (`connections_rejected_total`, `auth_refusals_total`).
    pub fn label(&self) -> &'static str {
        match self {
            HubError::TooManyConnections => "max_connections",
            HubError::TooManyConnectionsForUser => "max_connections_per_user",
            HubError::Revoked => "revoked",
        }
    }
}

/// What a new connection gets from the hub.
pub struct Registration {
    pub id: ConnId,
    pub queue: mpsc::Receiver<Outbound>,
    /// Cancelled when the hub cuts the connection off (slow consumer).
    pub kill: CancellationToken,
    /// Cancelled when the user's session is revoked.
    pub revoked: CancellationToken,
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

    /// Who could receive a private event here, for the pipeline's skip check.
    pub fn local_audience(&self) -> Arc<LocalAudience> {
        self.state().audience.clone()
    }

    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    pub fn register(&self) -> Result<Registration, HubError> {
        self.register_from(None)
    }

    /// Registers a connection from `remote` (listed by `connections_of`).
    pub fn register_from(&self, remote: Option<std::net::SocketAddr>) -> Result<Registration, HubError> {
        let mut st = self.state();
        if st.conns.len() >= self.inner.settings.max_connections {
            return Err(HubError::TooManyConnections);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, queue) = mpsc::channel(self.inner.settings.queue_capacity);
        let kill = CancellationToken::new();
        let revoked = CancellationToken::new();
        st.conns.insert(
            id,
            Conn {
                tx,
                identity: None,
                channels: [false; 5],
                kill: kill.clone(),
                killed: AtomicBool::new(false),
                revoke: revoked.clone(),
                connected_at_ms: moonx_events::validate::now_ms(),
                remote,
            },
        );
        self.inner.metrics.connections.set(st.conns.len() as i64);
        Ok(Registration { id, queue, kill, revoked })
    }

    pub fn unregister(&self, id: ConnId, reason: &str) {
        let presence = {
            let mut st = self.state();
            let Some(conn) = st.conns.get(&id) else { return };
            let identity = conn.identity.clone();
            if identity.as_ref().is_some_and(|i| i.admin) {
                st.audience.operator(false);
            }
            for ch in Channel::ALL {
                remove_subscription(&mut st, id, ch, &self.inner.metrics);
            }
            let presence = identity.and_then(|i| remove_user_index(&mut st, &i.user_id, id, reason));
            st.conns.remove(&id);
            self.inner.metrics.connections.set(st.conns.len() as i64);
            presence
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
    /// Returns the private channels that were dropped; refuses (changing
    /// nothing) a connection beyond the user's limit.
    pub fn set_identity(&self, id: ConnId, identity: Option<Identity>) -> Result<Vec<Channel>, HubError> {
        let mut dropped = Vec::new();
        let mut presence = Vec::new();
        {
            let mut st = self.state();
            let st = &mut *st;
            if let Some(n) = &identity
                && st.revocations.refuses(n, moonx_events::validate::now_ms())
            {
                return Err(HubError::Revoked);
            }
            let Some(conn) = st.conns.get_mut(&id) else { return Ok(dropped) };
            let same_user = conn.identity.as_ref().map(|o| &o.user_id) == identity.as_ref().map(|n| &n.user_id);
            if let (false, Some(n)) = (same_user, &identity)
                && st.users.get(&n.user_id).is_some_and(|u| u.conns.len() >= self.inner.settings.max_connections_per_user)
            {
                let refused = HubError::TooManyConnectionsForUser;
                self.inner.metrics.connections_rejected.with_label_values(&[refused.label()]).inc();
                return Err(refused);
            }
            let old = std::mem::replace(&mut conn.identity, identity.clone());
            let (was_admin, is_admin) = (old.as_ref().is_some_and(|i| i.admin), identity.as_ref().is_some_and(|i| i.admin));
            if was_admin != is_admin {
                st.audience.operator(is_admin);
            }
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
                remove_subscription(st, id, *ch, &self.inner.metrics);
            }
            dropped = to_drop;
            if !same_user {
                if let Some(o) = &old {
                    let reason = if identity.is_some() { "identity changed" } else { "token expired" };
                    presence.extend(remove_user_index(st, &o.user_id, id, reason));
                }
                if let Some(n) = &identity {
                    let user = st.users.entry(n.user_id.clone()).or_insert_with(|| UserConns {
                        conns: HashSet::new(),
                        online_since: std::time::Instant::now(),
                    });
                    user.conns.insert(id);
                    if user.conns.len() == 1 {
                        // Before any subscription of this connection: see `super::audience`.
                        st.audience.join(&n.user_id);
                        presence.push(Presence::Connected { user_id: n.user_id.clone(), connection_id: id.to_string() });
                    }
                }
            }
        }
        for p in presence {
            self.emit_presence(p);
        }
        Ok(dropped)
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
                for snapshot in st.latest_prices.snapshots(|token| filter.as_ref().is_none_or(|f| f.admits(token))) {
                    if conn.tx.try_send(snapshot).is_ok() {
                        queued += 1;
                    }
                }
                // A new filter replaces the previous one, in the index too.
                unindex_prices(st, id);
                match &filter {
                    None => {
                        st.prices_unfiltered.insert(id);
                    }
                    Some(f) => {
                        for t in &f.0 {
                            st.prices_by_token.entry(t.clone()).or_default().insert(id);
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

    /// Sets how long a revocation lasts (at start-up, before any revocation).
    pub fn set_revocation_window(&self, window: std::time::Duration) {
        self.state().revocations = Revocations::new(window);
    }

    pub fn revocation_window(&self) -> std::time::Duration {
        self.state().revocations.window()
    }

    /// Revokes `user_id`'s sessions as of `at_ms` (ms since the epoch):
    /// remembers it for the revocation window and cuts off every connection
    /// of the user whose token it covers. Returns how many were cut off.
    /// Applying the same revocation again cuts off nothing more.
    pub fn revoke_user(&self, user_id: &str, at_ms: u64) -> usize {
        let now_ms = moonx_events::validate::now_ms();
        let mut st = self.state();
        let st = &mut *st;
        if !st.revocations.revoke(user_id, at_ms, now_ms) {
            return 0;
        }
        let Some(user) = st.users.get(user_id) else { return 0 };
        let mut cut = 0;
        for id in &user.conns {
            let Some(conn) = st.conns.get(id) else { continue };
            let covered = conn.identity.as_ref().is_some_and(|i| st.revocations.refuses(i, now_ms));
            if covered && !conn.revoke.is_cancelled() {
                conn.killed.store(true, Ordering::Relaxed);
                conn.revoke.cancel();
                cut += 1;
            }
        }
        cut
    }

    /// Whether a revocation of `user_id` is in force.
    pub fn is_revoked(&self, user_id: &str) -> bool {
        self.state().revocations.revoked_at(user_id, moonx_events::validate::now_ms()).is_some()
    }

    /// The live connections authenticated as `user_id`, oldest first.
    pub fn connections_of(&self, user_id: &str) -> Vec<ConnectionInfo> {
        let st = self.state();
        let mut list: Vec<ConnectionInfo> = st
            .users
            .get(user_id)
            .into_iter()
            .flat_map(|u| u.conns.iter())
            .filter_map(|id| st.conns.get(id).map(|c| (id, c)))
            .filter(|(_, c)| !c.revoke.is_cancelled())
            .map(|(id, c)| ConnectionInfo {
                connection_id: *id,
                user_id: c.identity.as_ref().map(|i| i.user_id.clone()),
                admin: c.identity.as_ref().is_some_and(|i| i.admin),
                connected_at: c.connected_at_ms,
                subscriptions: Channel::ALL.into_iter().filter(|ch| c.channels[ch.index()]).collect(),
                remote_address: c.remote.map(|a| a.to_string()),
            })
            .collect();
        list.sort_by_key(|c| (c.connected_at, c.connection_id));
        list
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
            deflated: Default::default(),
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
        let now_ms = entitlement::now_ms();
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
            st.latest_prices.remember(token, chain, &out);
        }
        let st = &*st;
        let entitled = |conn: &Conn| entitled(conn, &route, now_ms);
        let mut sent = 0u64;
        let mut offer = |id: &ConnId| {
            let Some(conn) = st.conns.get(id) else { return };
            if !entitled(conn) {
                return;
            }
            match conn.tx.try_send(out.clone()) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    conn.killed.store(true, Ordering::Relaxed);
                    conn.kill.cancel();
                    SlowConsumerCut { connection: *id }.emit(metrics);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    metrics.frames_dropped.with_label_values(&["closed"]).inc();
                }
            }
        };
        match &route.audience {
            Audience::Everyone => match price_token {
                Some((token, _)) => price_subscribers(st, token).for_each(&mut offer),
                // A public event that is not a price goes to every subscriber.
                None => st.prices.keys().for_each(&mut offer),
            },
            Audience::User(u) => {
                if let Some(user) = st.users.get(u) {
                    user.conns.iter().for_each(&mut offer);
                }
            }
            Audience::Operators => st.operators.iter().for_each(&mut offer),
        }
        if sent > 0 {
            metrics.frames_sent.with_label_values(&[route.channel.as_str()]).inc_by(sent);
        }
    }
}

/// Whether a connection receives a route now: subscribed to its channel,
/// not cut off (slow consumer, revoked), and entitled by the one rule
/// ([`super::entitlement`]). Live delivery, the resume window and resume
/// replays all ask here.
fn entitled(conn: &Conn, route: &Route, now_ms: u64) -> bool {
    conn.channels[route.channel.index()]
        && !conn.killed.load(Ordering::Relaxed)
        && entitlement::may_receive(conn.identity.as_ref(), &route.audience, now_ms)
}

/// The `tokens` filter of a `prices` subscription: lowercase, without
/// repeats (matching is case-insensitive).
#[derive(Debug, Clone)]
struct TokenFilter(Vec<String>);

impl TokenFilter {
    fn new(tokens: &[String]) -> Self {
        let mut lower: Vec<String> = tokens.iter().map(|t| t.to_ascii_lowercase()).collect();
        lower.sort_unstable();
        lower.dedup();
        TokenFilter(lower)
    }

    fn admits(&self, token: &str) -> bool {
        self.0.iter().any(|t| t.eq_ignore_ascii_case(token))
    }
}

/// The subscribers of `prices` that want a price of `token`: the
/// unfiltered ones and those whose filter names it, found through the
/// index (never by scanning filters).
fn price_subscribers<'a>(st: &'a State, token: &str) -> impl Iterator<Item = &'a ConnId> {
    // Filter tokens are at most MAX_FILTER_TOKEN_BYTES long: lowercase on
    // the stack, and a longer token cannot be in any filter.
    let mut buf = [0u8; super::protocol::MAX_FILTER_TOKEN_BYTES];
    let filtered = (token.len() <= buf.len())
        .then(|| {
            let lower = &mut buf[..token.len()];
            lower.copy_from_slice(token.as_bytes());
            lower.make_ascii_lowercase();
            // ASCII lowercasing keeps UTF-8 valid.
            std::str::from_utf8(lower).ok().and_then(|l| st.prices_by_token.get(l))
        })
        .flatten();
    st.prices_unfiltered.iter().chain(filtered.into_iter().flatten())
}

/// Takes a connection out of the `prices` index.
fn unindex_prices(st: &mut State, id: ConnId) {
    match st.prices.get(&id) {
        Some(Some(filter)) => {
            for t in &filter.0 {
                if let Some(set) = st.prices_by_token.get_mut(t) {
                    set.remove(&id);
                    if set.is_empty() {
                        st.prices_by_token.remove(t);
                    }
                }
            }
        }
        Some(None) => {
            st.prices_unfiltered.remove(&id);
        }
        None => {}
    }
}

fn remove_subscription(st: &mut State, id: ConnId, channel: Channel, metrics: &Metrics) -> bool {
    let Some(conn) = st.conns.get_mut(&id) else { return false };
    if !std::mem::take(&mut conn.channels[channel.index()]) {
        return false;
    }
    metrics.subscriptions.with_label_values(&[channel.as_str()]).dec();
    match channel {
        Channel::Prices => {
            unindex_prices(st, id);
            st.prices.remove(&id);
        }
        Channel::System => {
            st.operators.remove(&id);
        }
        _ => {}
    }
    true
}

/// Removes a connection from its user; when it was the user's last, the
/// user's `Disconnected`.
fn remove_user_index(st: &mut State, user: &str, id: ConnId, reason: &str) -> Option<Presence> {
    let u = st.users.get_mut(user)?;
    u.conns.remove(&id);
    if !u.conns.is_empty() {
        return None;
    }
    let online_since = u.online_since;
    st.users.remove(user);
    st.audience.leave(user);
    Some(Presence::Disconnected {
        user_id: user.to_owned(),
        connection_id: id.to_string(),
        duration_ms: online_since.elapsed().as_millis() as u64,
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonx_events::{EventFactory, EventOptions, EventType};
    use serde_json::json;
    use std::sync::Mutex as StdMutex;

    fn hub() -> Hub {
        Hub::new(HubSettings { max_connections_per_user: 2, ..HubSettings::default() }, Arc::new(Metrics::new()))
    }

    fn event(event_type: &str, user: Option<&str>, data: serde_json::Value) -> Event {
        EventFactory::new("unit")
            .create_from_json(&EventType::parse(event_type), data, EventOptions { user_id: user.map(str::to_owned), ..Default::default() })
            .unwrap()
    }

    fn price(token: &str) -> Event {
        event(
            "price.updated",
            None,
            json!({"token": token, "chainId": 1, "price": "1.00", "priceUsd": "1.00", "change24h": "0.01", "volume24h": "10"}),
        )
    }

    fn order(user: &str) -> Event {
        event(
            "order.created",
            Some(user),
            json!({"orderId": "o-1", "userId": user, "tokenIn": "ETH", "tokenOut": "USDT", "amountIn": "1", "amountOutExpected": "3000",
                   "chainId": 1, "orderType": "market", "status": "pending"}),
        )
    }

    fn identity(user: &str, admin: bool, ttl_ms: i64) -> Option<Identity> {
        let expires_at_ms = (moonx_events::validate::now_ms() as i64 + ttl_ms) as u64;
        Some(Identity { user_id: user.into(), admin, expires_at_ms, issued_at_secs: None })
    }

    /// The event ids queued for a connection so far.
    fn received(reg: &mut Registration) -> Vec<u128> {
        std::iter::from_fn(|| reg.queue.try_recv().ok()).map(|f| f.event_id).collect()
    }

    fn publish(hub: &Hub, channel: Channel, audience: Audience, e: &Event) -> u128 {
        hub.publish(Route { channel, audience }, e, None);
        e.metadata.event_id.as_u128()
    }

    #[test]
    fn private_events_follow_the_identity() {
        let hub = hub();
        let mut alice = hub.register().unwrap();
        let mut bob = hub.register().unwrap();
        let mut anon = hub.register().unwrap();
        let mut ops = hub.register().unwrap();
        let mut stale = hub.register().unwrap();
        hub.set_identity(alice.id, identity("alice", false, 60_000)).unwrap();
        hub.set_identity(bob.id, identity("bob", false, 60_000)).unwrap();
        hub.set_identity(ops.id, identity("ops", true, 60_000)).unwrap();
        hub.set_identity(stale.id, identity("alice", true, -60_000)).unwrap();
        for r in [&alice, &bob, &anon, &ops, &stale] {
            hub.subscribe(r.id, Channel::Orders, None);
            hub.subscribe(r.id, Channel::System, None);
        }

        let for_alice = publish(&hub, Channel::Orders, Audience::User("alice".into()), &order("alice"));
        let for_ops = publish(&hub, Channel::System, Audience::Operators, &order("alice"));
        assert_eq!(received(&mut alice), vec![for_alice]);
        assert_eq!(received(&mut ops), vec![for_ops]);
        for (name, r) in [("bob", &mut bob), ("anonymous", &mut anon), ("expired", &mut stale)] {
            assert_eq!(received(r), vec![], "{name} received something");
        }

        // Losing the identity ends private delivery; another user's token does not inherit it.
        assert_eq!(hub.set_identity(alice.id, None).unwrap(), vec![Channel::Orders, Channel::System]);
        publish(&hub, Channel::Orders, Audience::User("alice".into()), &order("alice"));
        assert_eq!(received(&mut alice), vec![]);
    }

    #[test]
    fn filtered_and_unfiltered_price_subscribers() {
        let hub = hub();
        let mut all = hub.register().unwrap();
        let mut eth = hub.register().unwrap();
        let mut btc_sol = hub.register().unwrap();
        hub.subscribe(all.id, Channel::Prices, None);
        hub.subscribe(eth.id, Channel::Prices, Some(&["eth".to_owned()]));
        hub.subscribe(btc_sol.id, Channel::Prices, Some(&["BTC".to_owned(), "Sol".to_owned(), "btc".to_owned()]));

        let e = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        let b = publish(&hub, Channel::Prices, Audience::Everyone, &price("btc"));
        let s = publish(&hub, Channel::Prices, Audience::Everyone, &price("SOL"));
        let x = publish(&hub, Channel::Prices, Audience::Everyone, &price("XRP"));
        assert_eq!(received(&mut all), vec![e, b, s, x]);
        assert_eq!(received(&mut eth), vec![e]);
        assert_eq!(received(&mut btc_sol), vec![b, s]);

        // A new filter replaces the old one, in the index too; unsubscribing empties it.
        hub.subscribe(eth.id, Channel::Prices, Some(&["XRP".to_owned()]));
        received(&mut eth); // the snapshot of XRP
        let e2 = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        let x2 = publish(&hub, Channel::Prices, Audience::Everyone, &price("xrp"));
        assert_eq!(received(&mut eth), vec![x2]);
        assert_eq!(received(&mut all), vec![e2, x2]);
        for r in [&all, &eth, &btc_sol] {
            hub.unsubscribe(r.id, Channel::Prices);
        }
        let st = hub.state();
        assert!(st.prices.is_empty() && st.prices_unfiltered.is_empty() && st.prices_by_token.is_empty());
    }

    /// The index's promise: a price event visits the connections that want
    /// it and no other, however many filters other clients hold.
    #[test]
    fn a_price_visits_only_the_subscribers_that_want_it() {
        let hub = Hub::new(HubSettings { max_connections: 10_000, ..HubSettings::default() }, Arc::new(Metrics::new()));
        let wide: Vec<String> = (0..64).map(|i| format!("tok{i}")).collect();
        let regs: Vec<Registration> = (0..1000).map(|_| hub.register().unwrap()).collect();
        for r in &regs {
            hub.subscribe(r.id, Channel::Prices, Some(&wide));
        }
        let plain = hub.register().unwrap();
        hub.subscribe(plain.id, Channel::Prices, None);
        let eth = hub.register().unwrap();
        hub.subscribe(eth.id, Channel::Prices, Some(&["ETH".to_owned()]));
        let st = hub.state();
        let visited: HashSet<ConnId> = price_subscribers(&st, "eth").copied().collect();
        assert_eq!(visited, HashSet::from([plain.id, eth.id]));
        assert_eq!(price_subscribers(&st, "TOK7").count(), 1001, "the 1,000 filters naming it, plus the unfiltered one");
        assert_eq!(price_subscribers(&st, &"x".repeat(100)).count(), 1, "a token longer than any filter's: unfiltered only");
    }

    #[test]
    fn presence_is_per_user_and_connections_per_user_are_capped() {
        let hub = hub();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let sink = seen.clone();
        hub.set_presence_sink(Arc::new(move |p| sink.lock().unwrap().push(p)));
        let a1 = hub.register().unwrap();
        let a2 = hub.register().unwrap();
        let a3 = hub.register().unwrap();
        hub.set_identity(a1.id, identity("alice", false, 60_000)).unwrap();
        hub.set_identity(a2.id, identity("alice", false, 60_000)).unwrap();
        assert_eq!(hub.set_identity(a3.id, identity("alice", false, 60_000)), Err(HubError::TooManyConnectionsForUser));
        assert_eq!(hub.metrics().connections_rejected.with_label_values(&["max_connections_per_user"]).get(), 1);
        hub.unregister(a3.id, "client closed");
        hub.unregister(a1.id, "client closed");
        {
            let p = seen.lock().unwrap();
            assert_eq!(p.len(), 1, "one connected for two connections, nothing for the refused one: {p:?}");
            assert!(matches!(&p[0], Presence::Connected { user_id, .. } if user_id == "alice"));
        }
        hub.unregister(a2.id, "client closed");
        let p = seen.lock().unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(matches!(&p[1], Presence::Disconnected { user_id, reason, .. } if user_id == "alice" && reason == "client closed"));
        assert!(hub.state().users.is_empty());
    }

    /// A queue that overflows cuts its connection off, counted once and
    /// logged once; the others keep receiving, and the condemned one gets
    /// nothing more.
    #[test]
    fn a_full_queue_cuts_off_that_connection_only() {
        let hub = Hub::new(HubSettings { queue_capacity: 2, ..HubSettings::default() }, Arc::new(Metrics::new()));
        let mut slow = hub.register().unwrap();
        let mut fast = hub.register().unwrap();
        hub.subscribe(slow.id, Channel::Prices, None);
        hub.subscribe(fast.id, Channel::Prices, None);
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.push(publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH")));
            assert_eq!(received(&mut fast), vec![*sent.last().unwrap()], "the reader keeps up");
        }
        assert!(slow.kill.is_cancelled(), "the third frame found the queue full");
        assert_eq!(hub.metrics().slow_consumer_disconnects.get(), 1);
        assert_eq!(hub.metrics().frames_dropped.with_label_values(&["slow_consumer"]).get(), 1);
        let later = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        assert_eq!(received(&mut slow), sent[..2].to_vec(), "what fitted, and nothing after the cut");
        assert_eq!(received(&mut fast), vec![later]);
        assert_eq!(hub.metrics().slow_consumer_disconnects.get(), 1, "cut off once");
    }

    /// A `prices` subscriber gets the latest price of each token as a
    /// snapshot, then the live stream, in that order, with nothing twice.
    #[test]
    fn snapshots_come_first_then_live_frames() {
        let hub = hub();
        let early_eth = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        let latest_eth = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        let latest_sol = publish(&hub, Channel::Prices, Audience::Everyone, &price("SOL"));
        let mut client = hub.register().unwrap();
        assert_eq!(hub.subscribe(client.id, Channel::Prices, None), 2, "one snapshot per token and chain");
        let live = publish(&hub, Channel::Prices, Audience::Everyone, &price("ETH"));
        let frames: Vec<Outbound> = std::iter::from_fn(|| client.queue.try_recv().ok()).collect();
        let ids: Vec<u128> = frames.iter().map(|f| f.event_id).collect();
        assert_eq!(ids, vec![latest_eth, latest_sol, live], "not {early_eth}: only the latest price is a snapshot");
        let snapshot = |f: &Outbound| serde_json::from_str::<serde_json::Value>(f.frame.as_str()).unwrap()["snapshot"] == true;
        assert_eq!(frames.iter().map(snapshot).collect::<Vec<_>>(), vec![true, true, false]);
    }

    /// A resume replay passes the live rule: the connection's own user, a
    /// valid token, the channel subscribed.
    #[test]
    fn replayed_frames_pass_the_live_entitlement_rule() {
        let hub = hub();
        let alice = hub.register().unwrap();
        let expired = hub.register().unwrap();
        hub.set_identity(alice.id, identity("alice", false, 60_000)).unwrap();
        hub.set_identity(expired.id, identity("alice", false, -60_000)).unwrap();
        for r in [&alice, &expired] {
            hub.subscribe(r.id, Channel::Orders, None);
        }
        let replayed = |user: &str| {
            let e = order(user);
            let route = Route { channel: Channel::Orders, audience: Audience::User(user.into()) };
            let frame = hub.frame_of(Channel::Orders, &e, None, None);
            super::super::resume::Replayed { offset: 0, route, frame }
        };
        let admitted = hub.admitted(alice.id, Channel::Orders, vec![replayed("alice"), replayed("bob")]);
        assert_eq!(admitted.len(), 1, "alice's own order only");
        assert_eq!(hub.admitted(alice.id, Channel::Trades, vec![replayed("alice")]).len(), 0, "another channel");
        assert_eq!(hub.admitted(expired.id, Channel::Orders, vec![replayed("alice")]).len(), 0, "an expired token");
    }

    #[test]
    fn a_revocation_cuts_off_the_tokens_it_covers_and_refuses_them_afterwards() {
        let hub = hub();
        let now_secs = moonx_events::validate::now_ms() / 1000;
        let with_iat = |iat: Option<u64>| identity("mallory", false, 60_000).map(|i| Identity { issued_at_secs: iat, ..i });
        let old = hub.register().unwrap();
        let fresh = hub.register().unwrap();
        let other = hub.register().unwrap();
        hub.set_identity(old.id, with_iat(Some(now_secs - 10))).unwrap();
        hub.set_identity(fresh.id, with_iat(Some(now_secs + 5))).unwrap();
        hub.set_identity(other.id, identity("bob", false, 60_000)).unwrap();
        hub.subscribe(old.id, Channel::Orders, None);
        let at = moonx_events::validate::now_ms();
        assert_eq!(hub.revoke_user("mallory", at), 1, "only the token issued before");
        assert!(old.revoked.is_cancelled() && !fresh.revoked.is_cancelled() && !other.revoked.is_cancelled());
        assert_eq!(hub.revoke_user("mallory", at), 0, "applying it again cuts off nothing more");
        let mut old = old;
        publish(&hub, Channel::Orders, Audience::User("mallory".into()), &order("mallory"));
        assert_eq!(received(&mut old), vec![], "no frame after the revocation");
        assert_eq!(hub.connections_of("mallory").len(), 1, "the listing shows the live one only");
        hub.unregister(old.id, "session revoked");
        let late = hub.register().unwrap();
        assert_eq!(hub.set_identity(late.id, with_iat(None)), Err(HubError::Revoked), "no iat: refused");
        assert_eq!(hub.set_identity(late.id, with_iat(Some(now_secs - 1))), Err(HubError::Revoked));
        assert!(hub.set_identity(late.id, with_iat(Some(now_secs + 5))).is_ok(), "issued after");
        assert!(hub.is_revoked("mallory") && !hub.is_revoked("bob"));
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
        let now_ms = entitlement::now_ms();
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
        let Some(user) = entitlement::valid(conn.identity.as_ref(), now_ms).map(|i| i.user_id.clone()) else {
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
        // Skipped records (`super::audience`) were handled too: the boundary is
        // at least the last one. The window never held this user's records
        // skipped before they connected, so those come from Kafka; none is
        // skipped after the join, which came before this subscription.
        let skips = st.audience.skip_marks(&user, &pos.topic, pos.partition);
        let live = live.max(skips.through.unwrap_or(live));
        let (live, covered) = match skips.before_join {
            Some(skipped) => (live.max(skipped), covered && pos.offset >= skipped),
            None => (live, covered),
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
        let now_ms = entitlement::now_ms();
        let st = self.state();
        let Some(conn) = st.conns.get(&id) else { return Vec::new() };
        replayed.into_iter().filter(|r| r.route.channel == channel && entitled(conn, &r.route, now_ms)).map(|r| r.frame).collect()
    }
}

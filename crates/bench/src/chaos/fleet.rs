//! The clients of a chaos run: N WebSocket clients that behave like the
//! SDK's resume loop (README "Resume after reconnect"): they keep the last
//! `pos` per private channel, reconnect (to the next gateway address on
//! failure) and subscribe again with `since`, and dedupe by `eventId`. Each
//! records every event id it received and how many copies, so the run can
//! account for every produced event at every entitled client.
//!
//! Client `i` is user `i % users`; every client subscribes to `orders`,
//! `trades` and `portfolio`, and every tenth also to `prices`.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub const PRIVATE: [&str; 3] = ["orders", "trades", "portfolio"];

/// What one client saw.
#[derive(Default)]
pub struct Seen {
    /// event id -> copies received (1 = delivered once).
    pub events: HashMap<u128, u32>,
    /// (event id, channel) of the private frames, to check the channel.
    pub channel_of: HashMap<u128, &'static str>,
    pub last_pos: HashMap<&'static str, String>,
    pub price_frames: u64,
}

pub struct Client {
    pub user: usize,
    pub prices: bool,
    pub seen: Mutex<Seen>,
    /// Subscribed to every channel at least once.
    pub ready: AtomicBool,
}

/// Counters over all clients.
#[derive(Default)]
pub struct Counters {
    pub connects: AtomicU64,
    pub failed_connects: AtomicU64,
    pub not_recovered: AtomicU64,
    pub recovered: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub error_frames: AtomicU64,
}

pub struct Fleet {
    pub clients: Vec<Arc<Client>>,
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    /// Every client drops its connection at once (reconnect storm).
    drop_all: broadcast::Sender<()>,
    /// Clients disconnect after a random lifetime and come back (soak).
    pub churn: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// Each client its own source address: reconnect cycles never run out of
/// ephemeral ports.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 20 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (1 + i % 250) as u8)
}

fn channel_name(c: &str) -> Option<&'static str> {
    PRIVATE.into_iter().find(|p| *p == c)
}

pub fn parse_id(s: &str) -> Option<u128> {
    uuid::Uuid::parse_str(s).ok().map(|u| u.as_u128())
}

impl Fleet {
    /// Starts `n` clients against `urls` (`ws://host:port/ws`; client i
    /// prefers `urls[i % len]`), `token(user)` signing their JWTs.
    pub fn start(n: usize, users: usize, urls: Vec<String>, token: impl Fn(usize) -> String) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let (drop_all, _) = broadcast::channel(4);
        let counters = Arc::new(Counters::default());
        let churn = Arc::new(AtomicBool::new(false));
        let urls = Arc::new(urls);
        let mut clients = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let user = i % users.max(1);
            let c = Arc::new(Client { user, prices: i % 10 == 0, seen: Mutex::default(), ready: AtomicBool::new(false) });
            clients.push(c.clone());
            let (urls, stop_rx, drops, counters, churn, token) =
                (urls.clone(), stop_rx.clone(), drop_all.subscribe(), counters.clone(), churn.clone(), token(user));
            handles.push(tokio::spawn(run_client(i, c, urls, token, stop_rx, drops, counters, churn)));
        }
        Fleet { clients, counters, stop, drop_all, churn, handles }
    }

    pub fn ready(&self) -> usize {
        self.clients.iter().filter(|c| c.ready.load(Ordering::Relaxed)).count()
    }

    pub fn drop_all(&self) {
        let _ = self.drop_all.send(());
    }

    pub async fn stop(self) -> Vec<Arc<Client>> {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
        self.clients
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(i: usize, url: &str) -> anyhow::Result<Ws> {
    let addr: SocketAddr = url.trim_start_matches("ws://").split('/').next().unwrap_or_default().parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(i), 0)))?;
    let stream = socket.connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    i: usize,
    me: Arc<Client>,
    urls: Arc<Vec<String>>,
    token: String,
    mut stop: watch::Receiver<bool>,
    mut drops: broadcast::Receiver<()>,
    counters: Arc<Counters>,
    churn: Arc<AtomicBool>,
) {
    use rand::Rng;
    let mut attempt = i;
    while !*stop.borrow() {
        let url = format!("{}?token={token}", urls[attempt % urls.len()]);
        let ws = tokio::time::timeout(Duration::from_secs(10), connect(i, &url)).await;
        let Ok(Ok(mut ws)) = ws else {
            counters.failed_connects.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            let backoff = rand::rng().random_range(100..600);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        let mut subs: Vec<String> = Vec::new();
        {
            let seen = me.seen.lock().unwrap_or_else(|p| p.into_inner());
            for c in PRIVATE {
                subs.push(match seen.last_pos.get(c) {
                    Some(p) => format!(r#"{{"type":"subscribe","channel":"{c}","since":"{p}"}}"#),
                    None => format!(r#"{{"type":"subscribe","channel":"{c}"}}"#),
                });
            }
        }
        if me.prices {
            subs.push(r#"{"type":"subscribe","channel":"prices"}"#.to_owned());
        }
        let expected_acks = subs.len();
        let mut ok = true;
        for s in subs {
            if ws.send(Message::text(s)).await.is_err() {
                ok = false;
                break;
            }
        }
        let lifetime = if churn.load(Ordering::Relaxed) {
            Duration::from_millis(rand::rng().random_range(2_000..15_000))
        } else {
            Duration::from_secs(1 << 30)
        };
        let die = tokio::time::sleep(lifetime);
        tokio::pin!(die);
        let mut acks = 0;
        while ok {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if on_frame(&me, t.as_str(), &counters) {
                            acks += 1;
                            if acks == expected_acks {
                                me.ready.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Some(Ok(Message::Close(Some(f)))) => {
                        if u16::from(f.code) == 3008 {
                            counters.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                        }
                        ok = false;
                    }
                    Some(Ok(_)) => {}
                    _ => ok = false,
                },
                _ = drops.recv() => ok = false,
                _ = &mut die => ok = false,
                _ = stop.changed() => ok = false,
            }
        }
        drop(ws);
        attempt += 1;
        if !*stop.borrow() {
            let backoff = rand::rng().random_range(50..300);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
    }
}

/// Records one frame; true for a `subscribed` reply.
fn on_frame(me: &Client, text: &str, counters: &Counters) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return false };
    match v["type"].as_str() {
        Some("subscribed") => {
            match v["recovered"].as_bool() {
                Some(true) => counters.recovered.fetch_add(1, Ordering::Relaxed),
                Some(false) => counters.not_recovered.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
            true
        }
        Some("event") => {
            if v["snapshot"] == true {
                return false; // the snapshot repeats the latest price: not a delivery
            }
            let channel = v["channel"].as_str().unwrap_or_default();
            let Some(id) = v["event"]["metadata"]["eventId"].as_str().and_then(parse_id) else { return false };
            let mut seen = me.seen.lock().unwrap_or_else(|p| p.into_inner());
            *seen.events.entry(id).or_insert(0) += 1;
            if channel == "prices" {
                seen.price_frames += 1;
            } else if let Some(c) = channel_name(channel) {
                seen.channel_of.insert(id, c);
                if let Some(p) = v["pos"].as_str() {
                    seen.last_pos.insert(c, p.to_owned());
                }
            }
            false
        }
        Some("error") => {
            counters.error_frames.fetch_add(1, Ordering::Relaxed);
            false
        }
        _ => false,
    }
}

//! Scenario g: a reconnect storm with resume (SPEC 6.1; moonx-ws only, the
//! baseline has no resume). N clients of N users subscribe to `orders`,
//! `trades` and `portfolio` while user events flow at a fixed rate; all
//! disconnect together, the events flow on for the gap, then all reconnect
//! at once, each channel with `since` = the last `pos` it got. Reported: the
//! time until every client has its `subscribed` replies and all its missed
//! events (all live again), the events replayed per second, how many
//! resumes were recovered, and the gateway's CPU and RSS during the storm
//! beside the steady state.

use crate::events::{user_id, Mix};
use crate::kafka;
use crate::procstat;
use crate::suite::{Suite, LIVE_COMPRESSION};
use crate::target::{Kind, JWT_SECRET};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

const CHANNELS: [&str; 3] = ["orders", "trades", "portfolio"];

#[derive(Debug, Serialize)]
pub struct ResumeRun {
    pub target: Kind,
    pub clients: usize,
    pub rate: f64,
    pub gap_secs: f64,
    /// From the first reconnect to the last client live again.
    pub seconds_until_all_live: f64,
    pub replayed_events: u64,
    pub replayed_per_sec: f64,
    pub recovered: u64,
    pub not_recovered: u64,
    pub failed_clients: u64,
    pub slow_consumer_closes: u64,
    pub steady_cpu_percent: f64,
    pub steady_rss_mib: f64,
    pub storm_cpu_percent: f64,
    pub storm_rss_mib: f64,
    pub kafka_reader_passes: f64,
    pub note: Option<String>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Phase 1 and phase 2 use different source addresses: the first phase's
/// sockets sit in TIME_WAIT on this side.
fn source(phase: u8, index: usize) -> Ipv4Addr {
    let n = index / 10_000;
    Ipv4Addr::new(127, 10 + phase, (n / 256) as u8, (2 + n % 250) as u8)
}

async fn connect(target: SocketAddr, from: Ipv4Addr, url: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let stream = socket.connect(target).await?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

fn pos_of(text: &str) -> Option<(&'static str, String)> {
    if !text.starts_with("{\"type\":\"event\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let channel = CHANNELS.into_iter().find(|c| v["channel"] == *c)?;
    Some((channel, v["pos"].as_str()?.to_owned()))
}

impl Suite {
    pub async fn resume(&self, clients: usize, rate: f64, gap_secs: f64) -> anyhow::Result<ResumeRun> {
        let t = format!("bench.resume.{}", uuid::Uuid::new_v4().simple());
        kafka::create_topic(&self.programs.brokers, &t, 6, LIVE_COMPRESSION).await?;
        let res = self.resume_on(&t, clients, rate, gap_secs).await;
        kafka::delete_topics(&self.programs.brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }

    async fn resume_on(&self, topic: &str, clients: usize, rate: f64, gap_secs: f64) -> anyhow::Result<ResumeRun> {
        // Phase 1 sockets are closed before phase 2 opens: one descriptor per client at a time.
        let fd_cap = (procstat::open_files_limit() as usize).saturating_sub(500);
        let n = clients.min(fd_cap);
        let note = (n < clients).then(|| format!("{clients} clients requested; capped at {n} by the open-files limit"));
        let target = self.start_target(Kind::Moonx, topic, "resume").await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], target.port));
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 86_400;
        let urls: Vec<String> = (0..n)
            .map(|i| {
                let claims = moonx_ws::deliver::auth::Claims { sub: user_id(i), roles: vec![], exp };
                format!("{}?token={}", target.ws_url(), moonx_ws::deliver::auth::sign(JWT_SECRET, &claims))
            })
            .collect();
        let permits = Arc::new(Semaphore::new(self.concurrency));

        // Phase 1: connected, subscribed, keeping the last pos of each channel.
        crate::suite::log(format!("resume: {n} clients connect"));
        let (stop, stop_rx) = watch::channel(false);
        let mut phase1 = Vec::with_capacity(n);
        for (i, url) in urls.iter().enumerate() {
            let (url, permits, mut stop_rx) = (url.clone(), permits.clone(), stop_rx.clone());
            phase1.push(tokio::spawn(async move {
                let permit = permits.acquire_owned().await.ok()?;
                let mut ws = connect(addr, source(0, i), &url).await.ok()?;
                for c in CHANNELS {
                    ws.send(Message::text(format!(r#"{{"type":"subscribe","channel":"{c}"}}"#))).await.ok()?;
                }
                drop(permit);
                let mut last: HashMap<&'static str, String> = HashMap::new();
                loop {
                    tokio::select! {
                        m = ws.next() => match m {
                            Some(Ok(Message::Text(t))) => if let Some((c, p)) = pos_of(t.as_str()) { last.insert(c, p); },
                            Some(Ok(_)) => {}
                            _ => return Some(last),
                        },
                        _ = stop_rx.changed() => return Some(last), // dropping the socket: all disconnect together
                    }
                }
            }));
        }
        let mix = Mix { price_share: 0.0, users: n, hot_share: 0.0 };
        let producer = crate::suite::RateProducer::start(&self.programs.brokers, topic, rate, mix, 7);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s0 = target.sample()?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s1 = target.sample()?;
        stop.send(true)?;
        let mut positions = Vec::with_capacity(n);
        for h in phase1 {
            positions.push(h.await.ok().flatten().unwrap_or_default());
        }
        crate::suite::log(format!("resume: all disconnected; {gap_secs} s gap at {rate} events/s"));
        tokio::time::sleep(Duration::from_secs_f64(gap_secs)).await;

        // Phase 2: everyone at once, with since.
        let m0 = target.metrics().await.unwrap_or_default();
        let (replayed, recovered, not_recovered, failed, slow) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (hold, hold_rx) = watch::channel(false);
        let storm_start = Instant::now();
        let c0 = target.sample()?;
        let mut phase2 = Vec::with_capacity(n);
        let (live_tx, mut live_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
        for (i, (url, last)) in urls.iter().zip(positions).enumerate() {
            let (url, mut hold_rx, live_tx) = (url.clone(), hold_rx.clone(), live_tx.clone());
            let (replayed, recovered, not_recovered, failed, slow) = (replayed.clone(), recovered.clone(), not_recovered.clone(), failed.clone(), slow.clone());
            phase2.push(tokio::spawn(async move {
                let live_at = async {
                    let mut ws = connect(addr, source(1, i), &url).await.ok()?;
                    for c in CHANNELS {
                        let msg = match last.get(c) {
                            Some(p) => format!(r#"{{"type":"subscribe","channel":"{c}","since":"{p}"}}"#),
                            None => format!(r#"{{"type":"subscribe","channel":"{c}"}}"#),
                        };
                        ws.send(Message::text(msg)).await.ok()?;
                    }
                    // Per channel: missed events still to come (None until subscribed).
                    let mut owed: HashMap<String, Option<u64>> = CHANNELS.iter().map(|c| (c.to_string(), None)).collect();
                    while owed.values().any(|o| o != &Some(0)) {
                        let Some(Ok(Message::Text(t))) = ws.next().await else { return None };
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).ok()?;
                        let channel = v["channel"].as_str().unwrap_or_default().to_owned();
                        match v["type"].as_str() {
                            Some("subscribed") => {
                                let missed = v["missed"].as_u64().unwrap_or(0);
                                match v["recovered"].as_bool() {
                                    Some(true) => recovered.fetch_add(1, Ordering::Relaxed),
                                    Some(false) => not_recovered.fetch_add(1, Ordering::Relaxed),
                                    None => 0,
                                };
                                replayed.fetch_add(missed, Ordering::Relaxed);
                                owed.insert(channel, Some(missed));
                            }
                            Some("event") => {
                                if let Some(Some(o)) = owed.get_mut(&channel) {
                                    *o = o.saturating_sub(1);
                                }
                            }
                            _ => {}
                        }
                    }
                    Some((ws, storm_start.elapsed()))
                };
                let Some((mut ws, took)) = tokio::time::timeout(Duration::from_secs(120), live_at).await.ok().flatten() else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let _ = live_tx.send(None);
                    return;
                };
                let _ = live_tx.send(Some(took));
                // Stay connected (reading) until everyone is live, to see any slow-consumer cut.
                loop {
                    tokio::select! {
                        m = ws.next() => match m {
                            Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 3008 => { slow.fetch_add(1, Ordering::Relaxed); break; }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        _ = hold_rx.changed() => break,
                    }
                }
            }));
        }
        drop(live_tx);
        let mut slowest = Duration::ZERO;
        for _ in 0..n {
            match live_rx.recv().await {
                Some(Some(took)) => slowest = slowest.max(took),
                Some(None) => {}
                None => break,
            }
        }
        let c1 = target.sample()?;
        let _ = hold.send(true);
        for h in phase2 {
            let _ = h.await;
        }
        producer.finish()?;
        let m1 = target.metrics().await.unwrap_or_default();
        target.stop().await;
        let passes = crate::target::metric_sum(&m1, "moonx_ws_resume_kafka_reader_passes_total")
            - crate::target::metric_sum(&m0, "moonx_ws_resume_kafka_reader_passes_total");
        let replayed = replayed.load(Ordering::Relaxed);
        let secs = slowest.as_secs_f64();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Ok(ResumeRun {
            target: Kind::Moonx,
            clients: n,
            rate,
            gap_secs,
            seconds_until_all_live: secs,
            replayed_events: replayed,
            replayed_per_sec: if secs > 0.0 { replayed as f64 / secs } else { 0.0 },
            recovered: recovered.load(Ordering::Relaxed),
            not_recovered: not_recovered.load(Ordering::Relaxed),
            failed_clients: failed.load(Ordering::Relaxed),
            slow_consumer_closes: slow.load(Ordering::Relaxed),
            steady_cpu_percent: procstat::cpu_percent(&s0, &s1),
            steady_rss_mib: mib(s1.rss_bytes),
            storm_cpu_percent: procstat::cpu_percent(&c0, &c1),
            storm_rss_mib: mib(c1.rss_bytes),
            kafka_reader_passes: passes,
            note,
        })
    }
}

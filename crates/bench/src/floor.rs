//! The fan-out floor (issue 14 item 2): `moonx-bench fanout-floor`, a
//! minimal WebSocket writer run as its own process, with moonx-ws's runtime
//! (tokio, multi-threaded), socket settings (TCP_NODELAY, 2 KiB read and
//! 8 KiB write buffers) and frames (`protocol::event_frame` around the load
//! tool's price events), and no routing, entitlement or per-connection
//! queue. Guarantee: every connection that subscribed gets each frame the
//! writer builds, written straight to its socket by its own task (as
//! moonx-ws's session tasks do, so a slow reader holds up only itself);
//! frames wait only in the one broadcast ring those tasks read (as moonx-ws's
//! wait in its queues when the CPUs are busy), and a connection more than
//! `RING` frames behind skips the oldest. What it
//! delivers is what this machine can write: the ceiling for moonx-ws's
//! scenario c.
//!
//! Control: one line per command on stdin, `rate <events/s>` (0 stops);
//! the process prints `listening <port>` once it accepts.

use crate::events::{Generator, Mix};
use futures_util::{SinkExt, StreamExt};
use moonx_ws::deliver::protocol::event_frame;
use moonx_ws::deliver::Channel;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Frames a connection may fall behind by (a few seconds at the top step's
/// rate) before it skips.
const RING: usize = 4096;

/// Frames written per flush, at most: moonx-ws's `WRITE_BATCH`.
const WRITE_BATCH: usize = 64;

/// A subscribe frame is a few dozen bytes; anything longer is not ours.
const MAX_SUBSCRIBE_BYTES: usize = 4096;

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let (frames_tx, _) = broadcast::channel::<Utf8Bytes>(RING);
    let ring = frames_tx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let frames = ring.subscribe();
            tokio::spawn(async move {
                if let Ok(Ok(ws)) = tokio::time::timeout(Duration::from_secs(30), accept(stream)).await {
                    writer(ws, frames).await;
                }
            });
        }
    });
    println!("listening {port}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut ticker: Option<tokio::time::Interval> = None;
    let mut generator = Generator::new(Mix::prices(), 1);
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                None => return Ok(()),
                Some(l) => {
                    let rate: f64 = l.strip_prefix("rate ").and_then(|r| r.trim().parse().ok())
                        .ok_or_else(|| anyhow::anyhow!("fanout-floor: unknown command {l:?} (expected `rate <events/s>`)"))?;
                    ticker = (rate > 0.0).then(|| {
                        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        t
                    });
                }
            },
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                // One frame per event, built once and shared, as moonx-ws does.
                let e = generator.next();
                let frame = String::from_utf8(event_frame(Channel::Prices, &e.payload)).expect("events are JSON text");
                let _ = frames_tx.send(Utf8Bytes::from(frame));
            }
        }
    }
}

/// The handshake with moonx-ws's buffer sizes, then the client's subscribe
/// frame answered as moonx-ws answers it.
async fn accept(stream: tokio::net::TcpStream) -> anyhow::Result<Ws> {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(MAX_SUBSCRIBE_BYTES))
        .max_frame_size(Some(MAX_SUBSCRIBE_BYTES));
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"subscribe\"") => {
            ws.send(Message::text(r#"{"type":"subscribed","channel":"prices"}"#)).await?;
            Ok(ws)
        }
        other => anyhow::bail!("expected a subscribe frame, got {other:?}"),
    }
}

/// Writes each frame to the connection until a write fails: every frame
/// already in the ring is fed, then one flush (moonx-ws's session writes up
/// to `WRITE_BATCH` frames per flush the same way; a flush per frame would
/// make the floor slower than the system it bounds).
async fn writer(mut ws: Ws, mut frames: broadcast::Receiver<Utf8Bytes>) {
    loop {
        let frame = match frames.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if ws.feed(Message::Text(frame)).await.is_err() {
            return;
        }
        for _ in 1..WRITE_BATCH {
            match frames.try_recv() {
                Ok(f) => {
                    if ws.feed(Message::Text(f)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

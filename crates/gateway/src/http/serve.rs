//! The accept loop of the HTTP/WebSocket port (instead of `axum::serve`),
//! so that limits hold at the socket, before any request is read:
//!
//! - Every accepted socket holds a slot of `WS_MAX_CONNECTIONS` for as long
//!   as it is open: a request still arriving, a keep-alive connection, an
//!   upgraded WebSocket (the slot travels inside the socket through the
//!   upgrade, and is freed when the socket is dropped).
//! - Once every slot is taken, up to `HTTP_RESERVED_CONNECTIONS` more sockets
//!   are served `/health` and `/metrics` only (anything else: 503, and the
//!   socket is closed after the answer), so probes and operators still get
//!   an answer on the main port. A reserve socket gets at most 1 s for its
//!   headers, so sockets that send nothing cannot hold the reserve for long.
//!   Beyond the reserve a socket is closed as soon as it is accepted, which
//!   keeps the listen backlog moving.
//!
//! Why a reserve rather than a separate listener: `/health` keeps working
//! on the one port that probes and load balancers already use, with no
//! deployment change. What it cannot do: a flood that opens new sockets
//! faster than the reserve's 1 s timeout frees them can still starve
//! probes; rate-limit new connections per address in front of the gateway
//! (load balancer, firewall) for that.
//! - A request's headers must arrive within `HTTP_HEADER_TIMEOUT_MS`, and a
//!   keep-alive connection waiting that long for its next request is closed
//!   (hyper's header read timer also runs while waiting for the next request).
//! - A response write blocked for `HTTP_WRITE_TIMEOUT_MS` (the client does
//!   not read) closes the socket.
//! - An accept error (the process is out of descriptors) does not stop the
//!   loop: it pauses briefly and accepts again.
//!
//! On shutdown the loop stops accepting, asks HTTP connections to finish
//! their request and close, and returns once every socket has been dropped.

use crate::telemetry::Metrics;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Descriptors the process needs besides client sockets (Kafka connections,
/// log and audit files, the runtime's own), for the start-up check.
pub const DESCRIPTORS_BESIDES_SOCKETS: u64 = 256;
/// Header timeout of a reserve socket (at most): a probe sends its request
/// at once, and a socket that does not must not hold the reserve for long.
pub const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of descriptors): the loop must not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Sockets served fully at once (`WS_MAX_CONNECTIONS`).
    pub max_sockets: usize,
    /// Sockets beyond those, for `/health` and `/metrics` only.
    pub reserved_sockets: usize,
    pub header_timeout: Duration,
    /// The longest an HTTP response write may stay blocked.
    pub write_timeout: Duration,
}

/// Raises the soft limit of open files to the hard limit. When the
/// configured sockets cannot all have a descriptor, warns and lowers the
/// number of main slots to what fits: otherwise accepts would fail (EMFILE)
/// before the slots run out, and the reserve could not answer `/health`.
pub fn fit_open_file_limit(settings: &mut ServeSettings) {
    let wanted = (settings.max_sockets + settings.reserved_sockets) as u64 + DESCRIPTORS_BESIDES_SOCKETS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => {
            let fits = limit.saturating_sub(settings.reserved_sockets as u64 + DESCRIPTORS_BESIDES_SOCKETS).max(1) as usize;
            tracing::warn!(
                open_file_limit = limit,
                "WS_MAX_CONNECTIONS ({}) plus HTTP_RESERVED_CONNECTIONS ({}) plus {DESCRIPTORS_BESIDES_SOCKETS} for the rest need {wanted} \
                 descriptors, above the open-file limit ({limit}): serving at most {fits} connections. Raise the hard limit \
                 (ulimit -Hn, systemd LimitNOFILE=) or lower WS_MAX_CONNECTIONS",
                settings.max_sockets,
                settings.reserved_sockets,
            );
            settings.max_sockets = fits;
        }
        Ok(limit) => tracing::info!(open_file_limit = limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot read or raise the open-file limit: {e}"),
    }
}

/// A socket and the slot it holds; the slot is freed when the socket is
/// dropped, wherever it went (an HTTP connection or an upgraded WebSocket).
/// While it serves HTTP, a write may stay blocked for `write_timeout` at
/// most (a client that does not read its responses, "slow read"); once
/// upgraded, the WebSocket session times its own writes.
struct SlottedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    open: IntGauge,
    write_timeout: Duration,
    upgraded: Arc<AtomicBool>,
    timed_out: IntCounter,
    /// Running while a write is blocked.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SlottedStream {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, open: IntGauge, write_timeout: Duration, timed_out: IntCounter) -> Self {
        open.inc();
        SlottedStream { stream, _slot: slot, open, write_timeout, upgraded: Arc::default(), timed_out, stalled: None }
    }

    /// What a blocked write returns: still pending, or an error once it has
    /// been blocked for the write timeout.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.upgraded.load(Ordering::Relaxed) {
            self.stalled = None;
            return Poll::Pending;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timed_out.inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP response write timed out")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.blocked(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl Drop for SlottedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for SlottedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlottedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.progressed(r, cx)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.progressed(r, cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.progressed(r, cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Which service a socket gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Main,
    Reserve,
}

/// Accepts and serves until `shutdown`, then waits for every socket to close.
/// `app` serves a main slot, `ops` (health and metrics) a reserve slot.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    ops: Router,
    settings: ServeSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let main = Arc::new(Semaphore::new(settings.max_sockets));
    let reserve = Arc::new(Semaphore::new(settings.reserved_sockets));
    let builder = |header_timeout: Duration| {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        Arc::new(http)
    };
    let http = builder(settings.header_timeout);
    let http_reserve = builder(settings.header_timeout.min(RESERVE_HEADER_TIMEOUT));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed (open-file limit?): {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let (slot, kind) = match main.clone().try_acquire_owned() {
            Ok(p) => (p, Slot::Main),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(p) => (p, Slot::Reserve),
                Err(_) => {
                    metrics.sockets_refused.inc();
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let label = if kind == Slot::Main { "main" } else { "reserve" };
        let io = SlottedStream::new(
            stream,
            slot,
            metrics.sockets_open.with_label_values(&[label]),
            settings.write_timeout,
            metrics.http_write_timeouts.clone(),
        );
        let (router, http) = if kind == Slot::Main { (app.clone(), http.clone()) } else { (ops.clone(), http_reserve.clone()) };
        tokio::spawn(serve_connection(io, peer, router, kind, http, metrics.clone(), shutdown.clone()));
    }
    drop(listener);
    // Every socket returns its slot when dropped: wait for all of them.
    let _ = main.acquire_many(settings.max_sockets as u32).await;
    let _ = reserve.acquire_many(settings.reserved_sockets as u32).await;
}

async fn serve_connection(
    io: SlottedStream,
    peer: std::net::SocketAddr,
    router: Router,
    kind: Slot,
    http: Arc<hyper::server::conn::http1::Builder>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let upgraded = io.upgraded.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // The client's address, for the connections listing.
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let router = router.clone();
        let upgraded = upgraded.clone();
        async move {
            let mut response = router.oneshot(req).await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                upgraded.store(true, Ordering::Relaxed);
            }
            // A refused upgrade, or any answer on a reserve slot: the
            // socket is not kept, so its slot is free at once.
            if kind == Slot::Reserve || (upgrade && response.status() != StatusCode::SWITCHING_PROTOCOLS) {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.header_timeouts.inc();
        } else {
            tracing::debug!("HTTP connection ended with an error: {e}");
        }
    }
}

//! Logs and metrics. Every notable outcome that is both logged and counted
//! is a value with one `emit()` that does both (`events`, as vector's
//! internal events do), so the log and `/metrics` never disagree.

pub mod events;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Installs the tracing subscriber: `RUST_LOG` filters, `LOG_FORMAT=json`
/// switches to JSON lines. Logs go to stderr so that `tail` and `produce`
/// keep stdout for their output.
///
/// Tokens are never logged, whatever `RUST_LOG` says: the libraries that
/// print whole frames or request heads at debug/trace (the WebSocket
/// library prints every `auth` message; HTTP parsing prints headers and
/// the upgrade's `?token=`) are capped at info by a second filter that
/// `RUST_LOG` cannot loosen.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let json = std::env::var(crate::config::env::LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter).with(never_log_frames());
    let _ = if json {
        registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    };
}

/// Targets that log frame payloads or request heads below info.
const FRAME_LOGGING_TARGETS: [&str; 6] = ["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "axum", "h2"];

/// Caps [`FRAME_LOGGING_TARGETS`] at info, and passes everything else on
/// to `RUST_LOG`'s filter.
fn never_log_frames() -> tracing_subscriber::filter::Targets {
    FRAME_LOGGING_TARGETS
        .iter()
        .fold(tracing_subscriber::filter::Targets::new().with_default(tracing::Level::TRACE), |t, target| {
            t.with_target(*target, tracing::Level::INFO)
        })
}

/// A clock read once per 10 ms by a background thread, for checks that
/// need "now" to the second, not the microsecond (token expiry, the
/// future-timestamp check). On this kind of VM a `clock_gettime` costs
/// as much as decoding a field, and the hot path would read it per record.
pub mod coarse_clock {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    static NOW_MS: AtomicU64 = AtomicU64::new(0);
    static START: Once = Once::new();

    /// Milliseconds since the epoch, at most ~10 ms old.
    pub fn now_ms() -> u64 {
        START.call_once(|| {
            NOW_MS.store(moonx_events::validate::now_ms(), Ordering::Relaxed);
            std::thread::Builder::new()
                .name("coarse-clock".into())
                .spawn(|| loop {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    NOW_MS.store(moonx_events::validate::now_ms(), Ordering::Relaxed);
                })
                .expect("spawn the coarse clock");
        });
        NOW_MS.load(Ordering::Relaxed)
    }
}

/// All the gateway's series, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_processed: IntCounterVec,
    pub events_failed: IntCounterVec,
    pub events_skipped: IntCounterVec,
    pub validation_failures: IntCounterVec,
    pub dlq_writes: IntCounterVec,
    pub dlq_write_errors: IntCounter,
    pub dlq_truncated: IntCounterVec,
    pub handler_retries: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub consumer_assigned_partitions: IntGauge,
    pub consumer_connected: IntGauge,
    /// 1 while the DLQ cannot be written (mirrors `/health`'s `dlq.failing`; set at scrape).
    pub dlq_failing: IntGauge,
    pub connections: IntGauge,
    /// `WS_MAX_CONNECTIONS`, so that alerts can compare `connections` with it.
    pub connections_max: IntGauge,
    pub connections_rejected: IntCounterVec,
    pub subscriptions: IntGaugeVec,
    pub frames_sent: IntCounterVec,
    pub frames_dropped: IntCounterVec,
    pub duplicates_suppressed: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    pub disconnects: IntCounterVec,
    pub sockets_open: IntGaugeVec,
    pub sockets_refused: IntCounter,
    pub header_timeouts: IntCounter,
    pub http_write_timeouts: IntCounter,
    pub client_errors: IntCounterVec,
    pub auth_refusals: IntCounterVec,
    pub end_to_end_latency: HistogramVec,
    pub pipeline_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("moonx_ws".into()), None).expect("valid prefix");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Metrics {
            events_consumed: reg!(counter_vec("events_consumed_total", "Records taken from Kafka (or the embedded bus), by topic.", &["topic"])),
            events_processed: reg!(counter_vec("events_processed_total", "Events routed to the WebSocket hub, by event type.", &["event_type"])),
            events_failed: reg!(counter_vec("events_failed_total", "Records that could not be routed, by event type (\"unknown\" when undecodable) and reason.", &["event_type", "reason"])),
            events_skipped: reg!(counter_vec("events_skipped_total", "Records not decoded because nobody connected to this instance could receive them (instances that do not write dead letters), by reason.", &["reason"])),
            validation_failures: reg!(counter_vec("validation_failures_total", "Validation errors, by error code.", &["code"])),
            dlq_writes: reg!(counter_vec("dlq_writes_total", "Records written to the dead-letter topic, by reason.", &["reason"])),
            dlq_write_errors: reg!(IntCounter::new("dlq_write_errors_total", "Failed attempts to write a dead letter (transient: the offset is held back; permanent: a fallback letter follows).")),
            dlq_truncated: reg!(counter_vec("dlq_truncated_total", "Dead letters the DLQ refused in full (too large, invalid), written as a fallback with a bounded prefix of the value, by reason.", &["reason"])),
            handler_retries: reg!(counter_vec("handler_retries_total", "Handler retries after a transient error, by event type.", &["event_type"])),
            consumer_lag: reg!(gauge_vec("consumer_lag", "Messages behind the high watermark, by topic and partition.", &["topic", "partition"])),
            consumer_assigned_partitions: reg!(IntGauge::new("consumer_assigned_partitions", "Partitions currently assigned to this instance.")),
            consumer_connected: reg!(IntGauge::new("consumer_connected", "1 when at least one broker connection is up.")),
            dlq_failing: reg!(IntGauge::new("dlq_failing", "1 while the dead-letter topic cannot be written (consumption is held).")),
            connections: reg!(IntGauge::new("connections", "Open WebSocket connections.")),
            connections_max: reg!(IntGauge::new("connections_max", "The configured connection limit (WS_MAX_CONNECTIONS).")),
            connections_rejected: reg!(counter_vec("connections_rejected_total", "Refused WebSocket upgrades, by reason.", &["reason"])),
            subscriptions: reg!(gauge_vec("subscriptions", "Active subscriptions, by channel.", &["channel"])),
            frames_sent: reg!(counter_vec("frames_sent_total", "Event frames queued to clients, by channel.", &["channel"])),
            frames_dropped: reg!(counter_vec("frames_dropped_total", "Event frames not delivered, by reason.", &["reason"])),
            duplicates_suppressed: reg!(IntCounter::new("duplicates_suppressed_total", "Redelivered events dropped per connection by eventId.")),
            slow_consumer_disconnects: reg!(IntCounter::new("slow_consumer_disconnects_total", "Clients closed because their queue overflowed.")),
            disconnects: reg!(counter_vec("disconnects_total", "Ended WebSocket connections, by reason (client_closed, connection_lost, write_timeout, slow_consumer, protocol_error, …).", &["reason"])),
            sockets_open: reg!(gauge_vec("sockets_open", "Accepted TCP connections open now (HTTP, WebSocket, or still sending a request), by slot: \"main\" (WS_MAX_CONNECTIONS) or \"reserve\" (HTTP_RESERVED_CONNECTIONS, /health and /metrics only).", &["slot"])),
            sockets_refused: reg!(IntCounter::new("sockets_refused_total", "Accepted TCP connections closed at once: every slot, reserve included, was taken.")),
            header_timeouts: reg!(IntCounter::new("http_header_timeouts_total", "HTTP connections closed because a request's headers did not arrive in time (or a keep-alive connection stayed idle).")),
            http_write_timeouts: reg!(IntCounter::new("http_write_timeouts_total", "HTTP connections closed because a response could not be written for HTTP_WRITE_TIMEOUT_MS (the client does not read).")),
            client_errors: reg!(counter_vec("client_errors_total", "Error frames sent to clients, by code.", &["code"])),
            auth_refusals: reg!(counter_vec("auth_refusals_total", "Tokens refused on WebSocket connections, by reason (expired, bad_signature, …, revoked, max_connections_per_user).", &["reason"])),
            end_to_end_latency: reg!(HistogramVec::new(
                HistogramOpts::new("end_to_end_latency_seconds", "Event timestamp to frame written, by channel.").buckets(latency_buckets.clone()),
                &["channel"]
            )),
            pipeline_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("pipeline_seconds", "Time to decode, validate and route one record.")
                    .buckets(vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0])
            )),
            registry,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A JSON summary for the dashboard (`GET /api/stats`): cumulative
    /// counters by label, gauges, and the latency histogram's buckets summed
    /// over channels (the page derives rates and quantiles from deltas).
    pub fn stats(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut processed = Map::new();
        let mut failed = 0.0;
        let mut dlq = 0.0;
        let mut lag = 0.0;
        let mut connections = 0.0;
        let mut subscriptions = Map::new();
        let mut le: Vec<f64> = Vec::new();
        let mut counts: Vec<u64> = Vec::new();
        let (mut count, mut sum) = (0u64, 0.0);
        for family in self.registry.gather() {
            let name = family.name().trim_start_matches("moonx_ws_");
            for m in family.get_metric() {
                let label = |k: &str| m.get_label().iter().find(|l| l.name() == k).map(|l| l.value().to_owned());
                match name {
                    "events_processed_total" => {
                        processed.insert(label("event_type").unwrap_or_default(), json!(m.get_counter().value() as u64));
                    }
                    "events_failed_total" => failed += m.get_counter().value(),
                    "dlq_writes_total" => dlq += m.get_counter().value(),
                    "consumer_lag" => lag += m.get_gauge().value(),
                    "connections" => connections = m.get_gauge().value(),
                    "subscriptions" => {
                        subscriptions.insert(label("channel").unwrap_or_default(), json!(m.get_gauge().value() as i64));
                    }
                    "end_to_end_latency_seconds" => {
                        let h = m.get_histogram();
                        let buckets = h.get_bucket();
                        if le.is_empty() {
                            le = buckets.iter().map(|b| b.upper_bound()).collect();
                            counts = vec![0; le.len()];
                        }
                        for (c, b) in counts.iter_mut().zip(buckets) {
                            *c += b.cumulative_count();
                        }
                        count += h.sample_count();
                        sum += h.sample_sum();
                    }
                    _ => {}
                }
            }
        }
        for ch in ["prices", "orders", "portfolio", "trades", "system"] {
            subscriptions.entry(ch.to_owned()).or_insert(json!(0));
        }
        json!({
            "eventsProcessed": Value::Object(processed),
            "eventsFailed": failed as u64,
            "dlqWrites": dlq as u64,
            "connections": connections as i64,
            "subscriptions": Value::Object(subscriptions),
            "consumerLag": lag as i64,
            "latencyBuckets": {"le": le, "counts": counts, "count": count, "sum": sum},
        })
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    #[test]
    fn frame_printing_targets_stay_at_info_whatever_else_is_enabled() {
        let cap = super::never_log_frames();
        for target in ["tungstenite::protocol", "tungstenite::protocol::frame", "tokio_tungstenite::compat", "hyper::proto::h1::role", "hyper_util::server", "axum::rejection"] {
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target} at debug");
            assert!(!cap.would_enable(target, &Level::TRACE), "{target} at trace");
            assert!(cap.would_enable(target, &Level::INFO), "{target} at info");
        }
        assert!(cap.would_enable("moonx_ws::pipeline", &Level::TRACE), "our own targets follow RUST_LOG");
        assert!(cap.would_enable("rdkafka::client", &Level::DEBUG));
    }
}

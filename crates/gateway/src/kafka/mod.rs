//! Kafka plumbing shared by the CLI and the gateway: client settings, the
//! topic layout of SPEC section 4 (`admin`), and the event producer
//! (`producer`). The consumer lives in `source::kafka`.

pub mod admin;
pub mod producer;

use rdkafka::ClientConfig;

/// `reconnect.backoff.max.ms`: a broker that is away is retried at least
/// every 500 ms (a connection attempt is cheap), so the gateway is back
/// within half a second of the broker (issue 15's 10 s recovery target; at
/// 2 s the reconnect alone cost up to 2 s after each outage).
const RECONNECT_BACKOFF_MAX_MS: &str = "500";

/// Settings every client of ours starts from.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "moonx-ws")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .set("socket.keepalive.enable", "true");
    c
}

/// Header names every event carries, so that tools can filter without decoding.
pub mod headers {
    pub const EVENT_TYPE: &str = "eventType";
    pub const EVENT_ID: &str = "eventId";
    pub const CORRELATION_ID: &str = "correlationId";
    pub const CONTENT_TYPE: &str = "content-type";
}

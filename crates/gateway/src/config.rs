//! Every setting, read in one place: each is a CLI flag with an environment
//! variable of the seed's name beside it (the flag wins). A bad value stops
//! start-up with a message naming the variable (see `cli::main`).

use clap::{builder::BoolishValueParser, Args};
use moonx_events::{DLQ_TOPIC, MAIN_TOPIC};
use std::time::Duration;

/// Names of the environment variables, so that code and docs agree.
pub mod env {
    pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
    pub const KAFKA_MAIN_TOPIC: &str = "KAFKA_MAIN_TOPIC";
    pub const KAFKA_CONSUMER_GROUP_ID: &str = "KAFKA_CONSUMER_GROUP_ID";
    pub const KAFKA_LEGACY_TOPICS_ENABLED: &str = "KAFKA_LEGACY_TOPICS_ENABLED";
    pub const KAFKA_STATS_INTERVAL_MS: &str = "KAFKA_STATS_INTERVAL_MS";
    pub const KAFKA_AUTO_OFFSET_RESET: &str = "KAFKA_AUTO_OFFSET_RESET";
    pub const GATEWAY_INSTANCE_ID: &str = "GATEWAY_INSTANCE_ID";
    pub const EVENT_PROCESSING_ENABLED: &str = "EVENT_PROCESSING_ENABLED";
    pub const EVENT_VALIDATION_ENABLED: &str = "EVENT_VALIDATION_ENABLED";
    pub const EVENT_DEAD_LETTER_QUEUE_ENABLED: &str = "EVENT_DEAD_LETTER_QUEUE_ENABLED";
    pub const EVENT_DEAD_LETTER_QUEUE_TOPIC: &str = "EVENT_DEAD_LETTER_QUEUE_TOPIC";
    pub const DLQ_WRITER: &str = "DLQ_WRITER";
    pub const HANDLER_MAX_ATTEMPTS: &str = "HANDLER_MAX_ATTEMPTS";
    pub const HANDLER_RETRY_BACKOFF_MS: &str = "HANDLER_RETRY_BACKOFF_MS";
    pub const ROUTE_AUDIT_FILE: &str = "ROUTE_AUDIT_FILE";
    pub const HOST: &str = "HOST";
    pub const PORT: &str = "PORT";
    pub const JWT_SECRET: &str = "JWT_SECRET";
    pub const ALLOWED_ORIGINS: &str = "ALLOWED_ORIGINS";
    pub const WS_MAX_CONNECTIONS: &str = "WS_MAX_CONNECTIONS";
    pub const WS_MAX_FRAME_BYTES: &str = "WS_MAX_FRAME_BYTES";
    pub const WS_MAX_SUBSCRIPTIONS: &str = "WS_MAX_SUBSCRIPTIONS";
    pub const WS_RATE_LIMIT_PER_SEC: &str = "WS_RATE_LIMIT_PER_SEC";
    pub const WS_RATE_LIMIT_BURST: &str = "WS_RATE_LIMIT_BURST";
    pub const WS_QUEUE_CAPACITY: &str = "WS_QUEUE_CAPACITY";
    pub const WS_DEDUP_WINDOW: &str = "WS_DEDUP_WINDOW";
    pub const WS_PRESENCE_EVENTS: &str = "WS_PRESENCE_EVENTS";
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const PUBLISH_API_KEYS: &str = "PUBLISH_API_KEYS";
    pub const ADMIN_API_KEYS: &str = "ADMIN_API_KEYS";
    pub const JWT_MAX_LIFETIME_SECS: &str = "JWT_MAX_LIFETIME_SECS";
    pub const WS_MAX_FILTER_TOKENS: &str = "WS_MAX_FILTER_TOKENS";
    pub const WS_MAX_CONNECTIONS_PER_USER: &str = "WS_MAX_CONNECTIONS_PER_USER";
    pub const WS_PRESENCE_GRACE_MS: &str = "WS_PRESENCE_GRACE_MS";
    pub const PUBLISH_MAX_BODY_BYTES: &str = "PUBLISH_MAX_BODY_BYTES";
    pub const PUBLISH_BODY_TIMEOUT_MS: &str = "PUBLISH_BODY_TIMEOUT_MS";
    pub const HTTP_HEADER_TIMEOUT_MS: &str = "HTTP_HEADER_TIMEOUT_MS";
    pub const HTTP_RESERVED_CONNECTIONS: &str = "HTTP_RESERVED_CONNECTIONS";
    pub const HTTP_WRITE_TIMEOUT_MS: &str = "HTTP_WRITE_TIMEOUT_MS";
    pub const WS_WRITE_TIMEOUT_MS: &str = "WS_WRITE_TIMEOUT_MS";
    pub const WS_PERMESSAGE_DEFLATE: &str = "WS_PERMESSAGE_DEFLATE";
    pub const REVOCATION_WINDOW_SECS: &str = "REVOCATION_WINDOW_SECS";
    pub const RESUME_WINDOW_EVENTS: &str = "RESUME_WINDOW_EVENTS";
    pub const RESUME_WINDOW_BYTES: &str = "RESUME_WINDOW_BYTES";
    pub const RESUME_MAX_EVENTS: &str = "RESUME_MAX_EVENTS";
    pub const RESUME_MAX_READERS: &str = "RESUME_MAX_READERS";
    pub const RESUME_TIMEOUT_MS: &str = "RESUME_TIMEOUT_MS";
    pub const RESUME_MAX_SCAN_RECORDS: &str = "RESUME_MAX_SCAN_RECORDS";
    pub const KAFKA_PARTITIONER: &str = "KAFKA_PARTITIONER";
    pub const SKIP_WITHOUT_LOCAL_AUDIENCE: &str = "SKIP_WITHOUT_LOCAL_AUDIENCE";
}

/// Defaults of the limits and timeouts at the edges (README: "Limits and
/// timeouts"), shared by clap and the runtime.
pub mod defaults {
    /// Largest publish body: a full batch (1,000 events) of typical size fits,
    /// and it is what the publish API accepted before this limit was named.
    pub const PUBLISH_MAX_BODY_BYTES: u32 = 2 * 1024 * 1024;
    /// Time to receive a publish body: ample for 2 MiB from a service, short
    /// enough that a stalled sender does not hold a socket for long.
    pub const PUBLISH_BODY_TIMEOUT_MS: u64 = 10_000;
    /// Time for a request's headers to arrive, and the most a keep-alive
    /// connection may sit idle between requests (slowloris).
    pub const HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
    /// Sockets kept back for `/health` and `/metrics` once every connection
    /// slot is taken, so that operators and probes still get an answer.
    pub const HTTP_RESERVED_CONNECTIONS: u32 = 32;
    /// The longest an HTTP response write may block ("slow read"): the same
    /// patience as a WebSocket write.
    pub const HTTP_WRITE_TIMEOUT_MS: u64 = WS_WRITE_TIMEOUT_MS;
    /// The longest a single write (and flush) to a WebSocket may block before
    /// the client is judged gone: generous for a slow mobile link, short
    /// enough that a client that stopped reading does not hold its slot.
    pub const WS_WRITE_TIMEOUT_MS: u64 = 10_000;
    /// Default of `WS_PERMESSAGE_DEFLATE`: on, since browsers offer it and an
    /// event frame is compressed once for every connection (bandwidth for little CPU).
    pub const WS_PERMESSAGE_DEFLATE: bool = true;
    /// Default of `WS_MAX_FILTER_TOKENS`: a watchlist is a few dozen tokens;
    /// the cap keeps one subscription's cost to the hub small.
    pub const WS_MAX_FILTER_TOKENS: u32 = 64;
    /// Default of `WS_MAX_CONNECTIONS_PER_USER`: a user's tabs and devices fit;
    /// a script opening hundreds does not.
    pub const WS_MAX_CONNECTIONS_PER_USER: u32 = 32;
    /// Default of `WS_PRESENCE_GRACE_MS`: a page reload or a network blip
    /// reconnects within a few seconds and should not count as leaving.
    pub const WS_PRESENCE_GRACE_MS: u64 = 5_000;
    /// Default of `WS_MAX_CONNECTIONS`: what one instance is sized for
    /// (about 8 KiB per idle connection: under 1 GiB in all).
    pub const WS_MAX_CONNECTIONS: u32 = 100_000;
    /// Default of `WS_MAX_FRAME_BYTES`: a client message is a small JSON
    /// request; a subscribe with a full token filter fits with room to spare.
    pub const WS_MAX_FRAME_BYTES: u32 = 16 * 1024;
    /// Default of `WS_MAX_SUBSCRIPTIONS`: five channels, re-subscribed with
    /// other filters, fit many times over; it bounds one connection's cost.
    pub const WS_MAX_SUBSCRIPTIONS: usize = 32;
    /// Default of `WS_RATE_LIMIT_PER_SEC`: a client sends a few requests a
    /// second at most (subscribe, ping); a flood is cut to this.
    pub const WS_RATE_LIMIT_PER_SEC: u32 = 20;
    /// Default of `WS_RATE_LIMIT_BURST`: a page that subscribes its channels
    /// at once on load is not throttled.
    pub const WS_RATE_LIMIT_BURST: u32 = 40;
    /// Default of `WS_QUEUE_CAPACITY`: about a second of a busy price feed
    /// per connection before it is judged a slow consumer.
    pub const WS_QUEUE_CAPACITY: u32 = 1024;
    /// Default of `WS_DEDUP_WINDOW`: more than the events a redelivery after
    /// a rebalance brings back to one connection.
    pub const WS_DEDUP_WINDOW: usize = 1024;
    /// Default of `PORT`: the seed gateway's port, which clients already use.
    pub const PORT: u16 = 3008;
    /// Default of `HANDLER_MAX_ATTEMPTS`: a transient error gets two retries
    /// before the record is dead-lettered.
    pub const HANDLER_MAX_ATTEMPTS: u32 = 3;
    /// Default of `EVENT_VALIDATION_ENABLED`: on; the contract is what
    /// protects clients from a careless producer.
    pub const EVENT_VALIDATION_ENABLED: bool = true;
    /// Default of `HANDLER_RETRY_BACKOFF_MS`: the first retry's delay (then
    /// doubled): short, since a retry holds its partition.
    pub const HANDLER_RETRY_BACKOFF_MS: u64 = 50;
    /// Default of `KAFKA_STATS_INTERVAL_MS`: lag and broker health refreshed
    /// every second, at a negligible cost.
    pub const KAFKA_STATS_INTERVAL_MS: u64 = 1000;
    /// Upper bound of `JWT_MAX_LIFETIME_SECS`: ten years keeps `exp` in
    /// milliseconds far below 2^53.
    pub const JWT_MAX_LIFETIME_SECS_LIMIT: u64 = 10 * 366 * 24 * 3600;
    /// Default of `RESUME_WINDOW_EVENTS`: a few minutes of a busy partition's private events.
    pub const RESUME_WINDOW_EVENTS: usize = 10_000;
    /// Default of `RESUME_WINDOW_BYTES`: 4 MiB of frames per partition (24 MiB for 6 partitions).
    pub const RESUME_WINDOW_BYTES: usize = 4 * 1024 * 1024;
    /// Default of `RESUME_MAX_EVENTS`: beyond this a client is better off refetching state.
    pub const RESUME_MAX_EVENTS: u32 = 5_000;
    /// Default of `RESUME_MAX_READERS`: a third of the partitions of the main topic read at once.
    pub const RESUME_MAX_READERS: u32 = 2;
    /// Default of `RESUME_MAX_SCAN_RECORDS`: about what one reader scans in a few seconds, so
    /// one very old position cannot hold a shared pass (and everyone waiting on it) for long.
    pub const RESUME_MAX_SCAN_RECORDS: u64 = 500_000;
    /// Default of `RESUME_TIMEOUT_MS`: a resume that takes longer is answered `recovered:false`.
    pub const RESUME_TIMEOUT_MS: u64 = 10_000;

    /// Default of `JWT_MAX_LIFETIME_SECS`: 30 days, longer than any session a
    /// trading front-end keeps; an `exp` beyond it is a mistake or a forgery.
    pub const JWT_MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;
    /// Default of `REVOCATION_WINDOW_SECS`: one hour, longer than the access
    /// tokens a trading front-end issues (it refreshes them sooner), and short
    /// enough that the start-up read-back of the main topic stays small.
    pub const REVOCATION_WINDOW_SECS: u64 = 3600;
    /// Default of `SKIP_WITHOUT_LOCAL_AUDIENCE`: on, so that N instances each
    /// decode only their own users' private events (the writer decodes all).
    pub const SKIP_WITHOUT_LOCAL_AUDIENCE: bool = true;
}

/// Where Kafka is.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(long = "brokers", env = env::KAFKA_BROKERS, default_value = "localhost:9092")]
    pub brokers: String,
    /// The single topic every event travels on.
    #[arg(long, env = env::KAFKA_MAIN_TOPIC, default_value = MAIN_TOPIC)]
    pub main_topic: String,
    /// The dead-letter topic.
    #[arg(long, env = env::EVENT_DEAD_LETTER_QUEUE_TOPIC, default_value = DLQ_TOPIC)]
    pub dlq_topic: String,
}

/// Settings of `serve`: the Kafka source plus everything `dev` has.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What `serve` and `dev` share: the pipeline, HTTP, WebSocket and publish API.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub ws: WsArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub resume: ResumeArgs,
}

/// Resume after reconnect (SPEC 6.1).
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// Recent private events kept in memory per partition for resume (0: always read Kafka).
    #[arg(long, env = env::RESUME_WINDOW_EVENTS, default_value_t = defaults::RESUME_WINDOW_EVENTS)]
    pub resume_window_events: usize,
    /// Bytes of frames kept in memory per partition for resume.
    #[arg(long, env = env::RESUME_WINDOW_BYTES, default_value_t = defaults::RESUME_WINDOW_BYTES)]
    pub resume_window_bytes: usize,
    /// Most missed events replayed to one subscription; beyond, `recovered:false`.
    #[arg(long, env = env::RESUME_MAX_EVENTS, default_value_t = defaults::RESUME_MAX_EVENTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub resume_max_events: u32,
    /// Kafka history readers running at once (each serves every resumer of one partition).
    #[arg(long, env = env::RESUME_MAX_READERS, default_value_t = defaults::RESUME_MAX_READERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub resume_max_readers: u32,
    /// Records of a partition a resume may scan in Kafka (live boundary minus
    /// position); an older position is answered `recovered:false` at once.
    #[arg(long, env = env::RESUME_MAX_SCAN_RECORDS, default_value_t = defaults::RESUME_MAX_SCAN_RECORDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub resume_max_scan_records: u64,
    /// Longest a resume may wait for its history before `recovered:false`.
    #[arg(long, env = env::RESUME_TIMEOUT_MS, default_value_t = defaults::RESUME_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..))]
    pub resume_timeout_ms: u64,
    /// How producers map keys to partitions: `consistent` (librdkafka's
    /// default, CRC-32; our producers) or `murmur2` (the Java client's).
    #[arg(long, env = env::KAFKA_PARTITIONER, default_value = "consistent", value_parser = ["consistent", "murmur2"])]
    pub partitioner: String,
}


/// Settings of `dev`: the embedded bus instead of Kafka.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Feed realistic price updates, plus orders and trades of a demo user.
    #[arg(long)]
    pub demo: bool,
    /// Demo price updates per second.
    #[arg(long, default_value_t = 5, requires = "demo")]
    pub demo_rate: u32,
    #[arg(long, env = env::GATEWAY_INSTANCE_ID, default_value = "dev")]
    pub instance_id: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// How the Kafka consumer behaves.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Consumer group prefix; each instance uses `<prefix>-<instance id>` so
    /// that every instance sees every partition.
    #[arg(long, env = env::KAFKA_CONSUMER_GROUP_ID, default_value = "websocket-consumers")]
    pub group_id: String,
    /// Stable id of this gateway instance (defaults to the host name). Keep it
    /// stable across restarts: the committed position belongs to it.
    #[arg(long, env = env::GATEWAY_INSTANCE_ID)]
    pub instance_id: Option<String>,
    /// Also consume and migrate the four legacy topics.
    #[arg(long, env = env::KAFKA_LEGACY_TOPICS_ENABLED, default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub legacy_topics: bool,
    /// librdkafka statistics interval (lag metric, broker health).
    #[arg(long, env = env::KAFKA_STATS_INTERVAL_MS, default_value_t = defaults::KAFKA_STATS_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(100..))]
    pub stats_interval_ms: u64,
    /// Where a new instance (no committed position yet) starts: `latest`
    /// serves the live feed; `earliest` replays the topic's retention.
    #[arg(long, env = env::KAFKA_AUTO_OFFSET_RESET, default_value = "latest", value_parser = ["latest", "earliest"])]
    pub auto_offset_reset: String,
    /// Consume events at all; when off the gateway only serves clients.
    #[arg(long, env = env::EVENT_PROCESSING_ENABLED, default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub processing: bool,
    /// Send records that cannot be processed to the dead-letter topic.
    #[arg(long, env = env::EVENT_DEAD_LETTER_QUEUE_ENABLED, default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub dlq: bool,
    /// Whether this instance writes dead letters. With several instances, let
    /// exactly one write them (each instance sees every record, so one
    /// writer is enough and gives one DLQ record per failure).
    #[arg(long, env = env::DLQ_WRITER, default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub dlq_writer: bool,
    /// On an instance that does not write dead letters, skip (without
    /// decoding) private events whose owner has no connection here.
    #[arg(long, env = env::SKIP_WITHOUT_LOCAL_AUDIENCE, default_value_t = defaults::SKIP_WITHOUT_LOCAL_AUDIENCE, value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub skip_without_local_audience: bool,
}

impl ConsumerArgs {
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(default_instance_id)
    }

    pub fn consumer_group(&self) -> String {
        format!("{}-{}", self.group_id, self.instance_id())
    }
}

/// The processing stages, whatever the source.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Validate every event against the contract before routing.
    #[arg(long, env = env::EVENT_VALIDATION_ENABLED, default_value_t = defaults::EVENT_VALIDATION_ENABLED, value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub validation: bool,
    /// Attempts of a handler on a transient error before dead-lettering.
    #[arg(long, env = env::HANDLER_MAX_ATTEMPTS, default_value_t = defaults::HANDLER_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub handler_max_attempts: u32,
    /// First retry delay; doubles on each attempt.
    #[arg(long, env = env::HANDLER_RETRY_BACKOFF_MS, default_value_t = defaults::HANDLER_RETRY_BACKOFF_MS)]
    pub handler_retry_backoff_ms: u64,
    /// Append one JSON line per routed event to this file (debugging aid,
    /// also used by the delivery tests).
    #[arg(long, env = env::ROUTE_AUDIT_FILE)]
    pub route_audit_file: Option<std::path::PathBuf>,
}

impl PipelineArgs {
    pub fn handler_retry_backoff(&self) -> Duration {
        Duration::from_millis(self.handler_retry_backoff_ms)
    }
}

/// The HTTP publish API.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// API keys accepted by `POST /api/events`, comma-separated. Unset:
    /// the publish API is off (`dev` makes one up and prints it).
    #[arg(long, env = env::PUBLISH_API_KEYS, value_delimiter = ',', hide_env_values = true)]
    pub publish_api_keys: Vec<String>,
    /// Admin API keys, comma-separated: they open the operator endpoints
    /// (`GET /api/dead-letters`), as does a JWT with the `admin` role.
    #[arg(long, env = env::ADMIN_API_KEYS, value_delimiter = ',', hide_env_values = true)]
    pub admin_api_keys: Vec<String>,
    /// Largest request body of `POST /api/events`, in bytes (413 beyond).
    #[arg(long, env = env::PUBLISH_MAX_BODY_BYTES, default_value_t = defaults::PUBLISH_MAX_BODY_BYTES, value_parser = clap::value_parser!(u32).range(1024..))]
    pub publish_max_body_bytes: u32,
    /// Time allowed to receive a publish body once the key is checked (408 after).
    #[arg(long, env = env::PUBLISH_BODY_TIMEOUT_MS, default_value_t = defaults::PUBLISH_BODY_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_body_timeout_ms: u64,
}

impl PublishArgs {
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_body_timeout_ms)
    }
}

fn default_instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on (default: 0.0.0.0 for `serve`, 127.0.0.1 for `dev`).
    #[arg(long, env = env::HOST)]
    pub host: Option<std::net::IpAddr>,
    /// Port of HTTP and WebSocket (`/ws`); 0 picks a free port.
    #[arg(long, env = env::PORT, default_value_t = defaults::PORT)]
    pub port: u16,
    /// Time for a request's headers to arrive, and the longest a keep-alive
    /// connection may wait idle for its next request.
    #[arg(long, env = env::HTTP_HEADER_TIMEOUT_MS, default_value_t = defaults::HTTP_HEADER_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Sockets reserved for `/health` and `/metrics` when all
    /// `WS_MAX_CONNECTIONS` slots are taken (every accepted socket takes one).
    #[arg(long, env = env::HTTP_RESERVED_CONNECTIONS, default_value_t = defaults::HTTP_RESERVED_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub reserved_connections: u32,
    /// The longest a write of an HTTP response may block before the socket
    /// is closed (a client that does not read).
    #[arg(long, env = env::HTTP_WRITE_TIMEOUT_MS, default_value_t = defaults::HTTP_WRITE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_write_timeout_ms: u64,
}

impl HttpArgs {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.http_write_timeout_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct WsArgs {
    /// HS256 secret of client JWTs. Without it, every client is anonymous.
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How far in the future a token's `exp` may be, in seconds; tokens
    /// beyond are refused.
    #[arg(long, env = env::JWT_MAX_LIFETIME_SECS, default_value_t = defaults::JWT_MAX_LIFETIME_SECS,
          value_parser = clap::value_parser!(u64).range(1..=defaults::JWT_MAX_LIFETIME_SECS_LIMIT))]
    pub jwt_max_lifetime_secs: u64,
    /// Allowed `Origin`s of WebSocket upgrades, comma-separated; `*` allows
    /// any. Requests without an Origin (non-browser clients) are allowed.
    #[arg(long, env = env::ALLOWED_ORIGINS, default_value = "*", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Connections at once: every accepted socket (WebSocket, HTTP, or one
    /// still sending its request) takes one of these slots.
    #[arg(long, env = env::WS_MAX_CONNECTIONS, default_value_t = defaults::WS_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest client frame accepted, in bytes.
    #[arg(long, env = env::WS_MAX_FRAME_BYTES, default_value_t = defaults::WS_MAX_FRAME_BYTES, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_frame_bytes: u32,
    #[arg(long, env = env::WS_MAX_SUBSCRIPTIONS, default_value_t = defaults::WS_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,
    /// Client messages per second, sustained.
    #[arg(long, env = env::WS_RATE_LIMIT_PER_SEC, default_value_t = defaults::WS_RATE_LIMIT_PER_SEC)]
    pub rate_limit_per_sec: u32,
    /// Client messages allowed in a burst.
    #[arg(long, env = env::WS_RATE_LIMIT_BURST, default_value_t = defaults::WS_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,
    /// Frames queued per connection before it is dropped as a slow consumer.
    #[arg(long, env = env::WS_QUEUE_CAPACITY, default_value_t = defaults::WS_QUEUE_CAPACITY, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// Recent eventIds remembered per connection to drop redeliveries.
    #[arg(long, env = env::WS_DEDUP_WINDOW, default_value_t = defaults::WS_DEDUP_WINDOW)]
    pub dedup_window: usize,
    /// Produce user.connected / user.disconnected for authenticated users.
    #[arg(long, env = env::WS_PRESENCE_EVENTS, default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub presence_events: bool,
    /// Most tokens in the `tokens` filter of a `prices` subscription.
    #[arg(long, env = env::WS_MAX_FILTER_TOKENS, default_value_t = defaults::WS_MAX_FILTER_TOKENS, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_filter_tokens: u32,
    /// Most simultaneous connections authenticated as one user (per
    /// instance); a further one is refused with an error frame and closed.
    #[arg(long, env = env::WS_MAX_CONNECTIONS_PER_USER, default_value_t = defaults::WS_MAX_CONNECTIONS_PER_USER, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,
    /// A user's `user.disconnected` waits this long after their last
    /// connection closed; reconnecting within it emits nothing.
    #[arg(long, env = env::WS_PRESENCE_GRACE_MS, default_value_t = defaults::WS_PRESENCE_GRACE_MS, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub presence_grace_ms: u64,
    /// The longest one write to a client may block; a client that does not
    /// read for this long is disconnected (no close frame can reach it).
    #[arg(long, env = env::WS_WRITE_TIMEOUT_MS, default_value_t = defaults::WS_WRITE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_ms: u64,
    /// Accept permessage-deflate (RFC 7692) from clients that offer it: event
    /// frames are compressed once and shared; `false` sends every client plain frames.
    #[arg(long, env = env::WS_PERMESSAGE_DEFLATE, default_value_t = defaults::WS_PERMESSAGE_DEFLATE, value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub permessage_deflate: bool,
    /// How long a revocation (`POST /api/sessions/revoke`) refuses the
    /// user's tokens issued before it, in seconds; also how far back an
    /// instance reads the main topic for revocations at start-up.
    #[arg(long, env = env::REVOCATION_WINDOW_SECS, default_value_t = defaults::REVOCATION_WINDOW_SECS,
          value_parser = clap::value_parser!(u64).range(1..=defaults::JWT_MAX_LIFETIME_SECS_LIMIT))]
    pub revocation_window_secs: u64,
}

impl WsArgs {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn revocation_window(&self) -> Duration {
        Duration::from_secs(self.revocation_window_secs)
    }
}

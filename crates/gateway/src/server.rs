//! Assembles and runs the gateway: metrics, hub, router, pipeline, a source
//! (the Kafka consumer, or the embedded bus of `moonx-ws dev`) and the
//! HTTP/WebSocket server (our accept loop, `http::serve`), with graceful
//! shutdown on SIGTERM or Ctrl-C (stop accepting, close clients with 1001
//! "going away", commit processed offsets, exit).

use crate::config::{CommonArgs, ConsumerArgs, KafkaArgs, ServeArgs};
use crate::deliver::auth::Authenticator;
use crate::deliver::hub::Presence;
use crate::deliver::session::Limits;
use crate::deliver::{Hub, HubSettings};
use crate::http::publish::{BodyLimits, PublishedIds};
use crate::http::serve::{fit_open_file_limit, ServeSettings};
use crate::http::{AppState, SourceHealth};
use crate::pipeline::audit::AuditLog;
use crate::pipeline::dead_letter::DeadLetterWriter;
use crate::pipeline::router::Router;
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::source::embedded::EmbeddedBus;
use crate::source::kafka::{self, ConsumerSettings, ConsumerStatus};
use crate::source::publish::Publisher;
use crate::telemetry::Metrics;
use moonx_events::payload::{UserConnected, UserDisconnected};
use moonx_events::{EventFactory, EventOptions, LEGACY_TOPICS, MAIN_TOPIC};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A cancellation token fired by SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// Where records come from.
pub enum SourceConfig {
    Kafka { kafka: KafkaArgs, consumer: ConsumerArgs },
    /// The in-memory bus of `moonx-ws dev`.
    Embedded { instance_id: String },
}

/// Everything the gateway needs, whatever the source.
pub struct GatewayConfig {
    pub source: SourceConfig,
    pub common: CommonArgs,
}

impl From<ServeArgs> for GatewayConfig {
    fn from(a: ServeArgs) -> Self {
        GatewayConfig { source: SourceConfig::Kafka { kafka: a.kafka, consumer: a.consumer }, common: a.common }
    }
}

/// What a running gateway tells its starter.
#[derive(Clone)]
pub struct Running {
    pub addr: SocketAddr,
    pub publisher: Option<Publisher>,
    pub hub: Hub,
}

/// The gateway, ready to run; register custom handlers on its router first.
pub struct Gateway {
    config: GatewayConfig,
    router: Router,
}

impl Gateway {
    pub fn new(config: impl Into<GatewayConfig>) -> Self {
        Gateway { config: config.into(), router: Router::with_built_in_handlers() }
    }

    /// Replaces the router (built-in handlers plus your registrations).
    pub fn with_router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Runs until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_with(shutdown, |_| {}).await
    }

    /// Runs until `shutdown` fires; `on_ready` is called once listening.
    pub async fn run_with(self, shutdown: CancellationToken, on_ready: impl FnOnce(Running)) -> anyhow::Result<()> {
        let GatewayConfig { source, common: CommonArgs { pipeline: pipeline_args, http, ws, publish, resume } } = self.config;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            HubSettings {
                queue_capacity: ws.queue_capacity as usize,
                max_connections: ws.max_connections as usize,
                max_connections_per_user: ws.max_connections_per_user as usize,
            },
            metrics.clone(),
        );
        hub.set_revocation_window(ws.revocation_window());
        let resume_settings = crate::deliver::resume::ResumeSettings::from_args(&resume);
        hub.set_resume_settings(resume_settings.clone());
        let (default_host, instance) = match &source {
            SourceConfig::Kafka { consumer, .. } => ([0, 0, 0, 0].into(), consumer.instance_id()),
            SourceConfig::Embedded { instance_id } => ([127, 0, 0, 1].into(), instance_id.clone()),
        };
        let mut serve_settings = ServeSettings {
            max_sockets: ws.max_connections as usize,
            reserved_sockets: http.reserved_connections as usize,
            header_timeout: http.header_timeout(),
            write_timeout: http.write_timeout(),
        };
        fit_open_file_limit(&mut serve_settings);
        let host = http.host.unwrap_or(default_host);
        let listener = tokio::net::TcpListener::bind((host, http.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{} (HOST/PORT): {e}", http.port))?;
        let addr = listener.local_addr()?;

        let audit = match &pipeline_args.route_audit_file {
            Some(p) => Some(AuditLog::open(p, instance.clone()).map_err(|e| anyhow::anyhow!("ROUTE_AUDIT_FILE {}: {e}", p.display()))?),
            None => None,
        };
        let options = PipelineOptions {
            validate: pipeline_args.validation,
            handler_max_attempts: pipeline_args.handler_max_attempts,
            handler_retry_backoff: pipeline_args.handler_retry_backoff(),
        };
        let registry = self.router.registry().clone();
        let pipeline = Pipeline::new(self.router, hub.clone(), metrics.clone(), options, audit);
        // Only an instance that does not write dead letters may leave records undecoded.
        let pipeline = Arc::new(match &source {
            SourceConfig::Kafka { consumer, .. } if !consumer.dlq_writer && consumer.skip_without_local_audience => {
                pipeline.skip_without_local_audience()
            }
            _ => pipeline,
        });

        let mut tasks = JoinSet::new();
        let mut dead_letter_ring = None;
        let (source_health, publisher) = match source {
            SourceConfig::Kafka { kafka, consumer } if consumer.processing => {
                // The revocations still in force, before serving anyone.
                let (brokers, topic, h) = (kafka.brokers.clone(), kafka.main_topic.clone(), hub.clone());
                let read_back = tokio::task::spawn_blocking(move || crate::source::revocations::read_back(&brokers, &topic, &h));
                let read_back = tokio::select! {
                    r = read_back => r?,
                    _ = shutdown.cancelled() => return Ok(()),
                };
                match read_back {
                    Ok(found) => tracing::info!(records = found.records, revocations = found.revocations, window_secs = ws.revocation_window_secs, "revocations read back"),
                    Err(e) => tracing::error!("revocations not read back (serving anyway; revoked tokens may be accepted until their revocation arrives): {e:#}"),
                }
                // The consumer declares each topic's partition count (the generation of positions).
                hub.set_history(Arc::new(crate::source::kafka_history::KafkaHistory::new(
                    &kafka.brokers,
                    pipeline.clone(),
                    resume_settings.max_readers,
                    resume_settings.timeout,
                    hub.resume_metrics().clone(),
                )));
                let mut topics = vec![kafka.main_topic.clone()];
                if consumer.legacy_topics {
                    topics.extend(LEGACY_TOPICS.iter().map(|t| t.to_string()));
                }
                let settings = ConsumerSettings {
                    brokers: kafka.brokers.clone(),
                    group_id: consumer.consumer_group(),
                    topics,
                    stats_interval_ms: consumer.stats_interval_ms,
                    auto_offset_reset: consumer.auto_offset_reset.clone(),
                };
                let status = Arc::new(ConsumerStatus { group: settings.group_id.clone(), streams: hub.resume_streams(), ..Default::default() });
                let producer = crate::kafka::producer::create_producer(&kafka.brokers)?;
                let dead_letters = if consumer.dlq && consumer.dlq_writer {
                    DeadLetterWriter::Kafka { producer: crate::kafka::producer::create_dlq_producer(&kafka.brokers)?, topic: kafka.dlq_topic.clone(), instance: instance.clone() }
                } else {
                    DeadLetterWriter::Skip
                };
                tracing::info!(
                    group = %settings.group_id, topics = ?settings.topics, brokers = %settings.brokers,
                    validation = pipeline_args.validation, dlq = consumer.dlq, dlq_writer = consumer.dlq_writer,
                    skip_without_local_audience = !consumer.dlq_writer && consumer.skip_without_local_audience,
                    "consuming as consumer group {}", settings.group_id
                );
                tasks.spawn(kafka::run(settings, pipeline, dead_letters, status.clone(), instance.clone(), shutdown.clone()));
                (SourceHealth::Kafka(status), Some(Publisher::Kafka { producer, topic: kafka.main_topic }))
            }
            SourceConfig::Kafka { .. } => {
                tracing::info!("EVENT_PROCESSING_ENABLED=false: serving clients only, consuming nothing");
                (SourceHealth::Disabled, None)
            }
            SourceConfig::Embedded { .. } => {
                let (bus, records) = EmbeddedBus::new(MAIN_TOPIC, 10_000);
                // Positions of this process's bus: a restarted dev server is another stream.
                hub.resume_streams().set(MAIN_TOPIC, crate::deliver::resume::Generation::Epoch(rand_epoch()));
                hub.resume_streams().set_start(MAIN_TOPIC, 0, 0);
                let ring = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
                dead_letter_ring = Some(ring.clone());
                let dead_letters = DeadLetterWriter::Memory { letters: ring, capacity: 1000 };
                tasks.spawn(crate::source::embedded::run(records, pipeline, dead_letters, instance.clone(), shutdown.clone()));
                (SourceHealth::Embedded, Some(Publisher::Embedded(bus)))
            }
        };

        if let (true, Some(p)) = (ws.presence_events, &publisher) {
            let grace = Duration::from_millis(ws.presence_grace_ms);
            spawn_presence_publisher(&hub, p.clone(), &instance, grace, shutdown.clone(), &mut tasks);
        }

        let state = AppState {
            hub: hub.clone(),
            metrics: metrics.clone(),
            auth: Authenticator::new(ws.jwt_secret.as_deref(), ws.jwt_max_lifetime_secs),
            limits: Arc::new(Limits {
                max_frame_bytes: ws.max_frame_bytes as usize,
                max_subscriptions: ws.max_subscriptions,
                rate_per_sec: ws.rate_limit_per_sec,
                rate_burst: ws.rate_limit_burst,
                dedup_window: ws.dedup_window,
                max_filter_tokens: ws.max_filter_tokens as usize,
                write_timeout: ws.write_timeout(),
                permessage_deflate: ws.permessage_deflate,
                ..Limits::default()
            }),
            allowed_origins: Arc::new(ws.allowed_origins.clone()),
            source: source_health,
            shutdown: shutdown.clone(),
            instance: instance.clone(),
            started: std::time::Instant::now(),
            publisher: publisher.clone(),
            publish_body: BodyLimits { max_bytes: publish.publish_max_body_bytes as usize, timeout: publish.body_timeout() },
            publish_keys: Arc::new(publish.publish_api_keys.into_iter().filter(|k| !k.is_empty()).collect()),
            admin_keys: Arc::new(publish.admin_api_keys.into_iter().filter(|k| !k.is_empty()).collect()),
            published_ids: Arc::new(std::sync::Mutex::new(PublishedIds::default())),
            factory: Arc::new(EventFactory::new("http-api").with_registry(registry.clone())),
            registry,
            dead_letters: dead_letter_ring,
        };
        tracing::info!(%addr, instance = %instance, "listening: http://{addr}/health, ws://{addr}/ws");
        let app = crate::http::router(state.clone());
        let ops = crate::http::ops_router(state);
        let server = tokio::spawn(crate::http::serve::serve(listener, app, ops, serve_settings, metrics.clone(), shutdown.clone()));
        on_ready(Running { addr, publisher, hub: hub.clone() });

        shutdown.cancelled().await;
        // Sessions close themselves with 1001 on the same signal; give them,
        // the consumer's final commit and the presence producer a moment.
        let drain = async {
            while tasks.join_next().await.is_some() {}
            // The accept loop returns once every socket is closed, upgraded
            // ones included, so their close frames are out by then.
            let _ = server.await;
        };
        if tokio::time::timeout(Duration::from_secs(15), drain).await.is_err() {
            tracing::warn!("shutdown took longer than 15 s; exiting anyway");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Publishes `user.connected` / `user.disconnected` for authenticated users
/// (to the main topic, keyed by userId) without ever blocking a session.
///
/// Presence is per user and debounced, so that connection churn cannot
/// flood the topic and the operators: the hub reports a user's first
/// connection and their last disconnection; `user.connected` is published
/// when a user who is not online comes; `user.disconnected` only once the
/// user has stayed away for `grace`, and a return within the grace
/// publishes nothing. A user's successive `user.connected` are therefore
/// more than `grace` apart, and so are their `user.disconnected`: at most
/// two presence events per user in any window of length `grace`.
fn spawn_presence_publisher(
    hub: &Hub,
    publisher: Publisher,
    instance: &str,
    grace: Duration,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Presence>(10_000);
    let metrics = hub.metrics().clone();
    hub.set_presence_sink(Arc::new(move |p| {
        if tx.try_send(p).is_err() {
            metrics.frames_dropped.with_label_values(&["presence_queue_full"]).inc();
        }
    }));
    let factory = EventFactory::new("moonx-ws");
    let instance = instance.to_owned();
    tasks.spawn(async move {
        let mut debounce = PresenceDebounce::new(grace);
        loop {
            let due = debounce.next_due();
            let ready = tokio::select! {
                p = rx.recv() => match p { Some(p) => debounce.offer(p, tokio::time::Instant::now()), None => break },
                _ = sleep_until(due) => debounce.take_due(tokio::time::Instant::now()),
                _ = shutdown.cancelled() => break,
            };
            for p in ready {
                let event = match p {
                    Presence::Connected { user_id, connection_id } => factory.create(
                        UserConnected { user_id: user_id.clone(), connection_id: format!("{instance}-{connection_id}"), instance_id: instance.clone() },
                        EventOptions::user(user_id),
                    ),
                    Presence::Disconnected { user_id, connection_id, duration_ms, reason } => factory.create(
                        UserDisconnected {
                            user_id: user_id.clone(),
                            connection_id: format!("{instance}-{connection_id}"),
                            instance_id: instance.clone(),
                            reason: Some(reason),
                            duration_ms: Some(duration_ms),
                        },
                        EventOptions::user(user_id),
                    ),
                };
                match event {
                    Ok(e) => {
                        if let Err(err) = publisher.publish(&e).await {
                            tracing::warn!("presence event not published: {err:#}");
                        }
                    }
                    Err(errs) => tracing::warn!("presence event invalid: {errs}"),
                }
            }
        }
    });
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The presence rule of [`spawn_presence_publisher`], without I/O.
struct PresenceDebounce {
    grace: Duration,
    /// Users announced as connected and not yet as disconnected.
    online: std::collections::HashSet<String>,
    /// Users whose last connection closed: when their held `Disconnected`
    /// is due (a return cancels it).
    leaving: std::collections::HashMap<String, ((tokio::time::Instant, u64), Presence)>,
    /// The same deadlines in time order (the sequence number keeps equal
    /// instants apart), so memory follows the users away, not the churn.
    deadlines: std::collections::BTreeMap<(tokio::time::Instant, u64), String>,
    sequence: u64,
}

impl PresenceDebounce {
    fn new(grace: Duration) -> Self {
        PresenceDebounce { grace, online: Default::default(), leaving: Default::default(), deadlines: Default::default(), sequence: 0 }
    }

    /// What to publish now for a change the hub reported.
    fn offer(&mut self, p: Presence, now: tokio::time::Instant) -> Vec<Presence> {
        match &p {
            Presence::Connected { user_id, .. } => {
                // Back within the grace: as if they never left.
                if let Some((due, _)) = self.leaving.remove(user_id) {
                    self.deadlines.remove(&due);
                    return vec![];
                }
                if !self.online.insert(user_id.clone()) {
                    return vec![];
                }
                vec![p]
            }
            Presence::Disconnected { user_id, .. } => {
                if !self.online.contains(user_id) {
                    return vec![];
                }
                if self.grace.is_zero() {
                    self.online.remove(user_id);
                    return vec![p];
                }
                self.sequence += 1;
                let due = (now + self.grace, self.sequence);
                self.deadlines.insert(due, user_id.clone());
                if let Some((earlier, _)) = self.leaving.insert(user_id.clone(), (due, p)) {
                    self.deadlines.remove(&earlier);
                }
                vec![]
            }
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// The held `Disconnected`s whose grace has passed.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<Presence> {
        let mut out = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let user = entry.remove();
            if let Some((_, p)) = self.leaving.remove(&user) {
                self.online.remove(&user);
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    fn connected(u: &str) -> Presence {
        Presence::Connected { user_id: u.into(), connection_id: "1".into() }
    }

    fn disconnected(u: &str) -> Presence {
        Presence::Disconnected { user_id: u.into(), connection_id: "1".into(), duration_ms: 0, reason: "client closed".into() }
    }

    #[test]
    fn churn_within_the_grace_publishes_one_connect_and_one_disconnect() {
        let grace = Duration::from_secs(5);
        let mut d = PresenceDebounce::new(grace);
        let t0 = tokio::time::Instant::now();
        let mut published = d.offer(connected("u"), t0);
        for i in 0..300 {
            let t = t0 + Duration::from_millis(i * 10);
            published.extend(d.offer(disconnected("u"), t));
            published.extend(d.take_due(t));
            published.extend(d.offer(connected("u"), t + Duration::from_millis(5)));
            assert!(d.deadlines.is_empty() && d.leaving.is_empty(), "a return leaves nothing behind");
        }
        let end = t0 + Duration::from_secs(3);
        published.extend(d.offer(disconnected("u"), end));
        assert!(d.take_due(end + grace - Duration::from_millis(1)).is_empty(), "held during the grace");
        published.extend(d.take_due(end + grace));
        assert_eq!(published, vec![connected("u"), disconnected("u")]);
        assert!(d.deadlines.is_empty() && d.leaving.is_empty() && d.online.is_empty(), "nothing retained");
    }

    #[test]
    fn a_user_away_longer_than_the_grace_is_announced_again() {
        let grace = Duration::from_secs(1);
        let mut d = PresenceDebounce::new(grace);
        let t0 = tokio::time::Instant::now();
        assert_eq!(d.offer(connected("u"), t0), vec![connected("u")]);
        assert_eq!(d.offer(connected("v"), t0), vec![connected("v")]);
        assert!(d.offer(disconnected("u"), t0).is_empty());
        assert_eq!(d.take_due(t0 + grace), vec![disconnected("u")]);
        assert_eq!(d.offer(connected("u"), t0 + grace * 2), vec![connected("u")]);
        let zero = &mut PresenceDebounce::new(Duration::ZERO);
        assert_eq!(zero.offer(connected("w"), t0), vec![connected("w")]);
        assert_eq!(zero.offer(disconnected("w"), t0), vec![disconnected("w")]);
    }
}

/// The embedded bus's epoch: random, so two runs never share one.
fn rand_epoch() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod defaults_tests {
    use crate::config::CommonArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    /// The flags' defaults and the runtime settings' defaults are the same
    /// constants: a gateway built from no flags is one built from `Default`.
    #[test]
    fn clap_and_runtime_defaults_agree() {
        let CommonArgs { pipeline, ws, .. } = Cli::try_parse_from(["moonx-ws"]).expect("no flag is required").common;
        let limits = crate::deliver::session::Limits::default();
        assert_eq!(
            (ws.max_frame_bytes as usize, ws.max_subscriptions, ws.rate_limit_per_sec, ws.rate_limit_burst, ws.dedup_window, ws.max_filter_tokens as usize, ws.write_timeout()),
            (limits.max_frame_bytes, limits.max_subscriptions, limits.rate_per_sec, limits.rate_burst, limits.dedup_window, limits.max_filter_tokens, limits.write_timeout)
        );
        let hub = crate::deliver::HubSettings::default();
        assert_eq!(
            (ws.queue_capacity as usize, ws.max_connections as usize, ws.max_connections_per_user as usize),
            (hub.queue_capacity, hub.max_connections, hub.max_connections_per_user)
        );
        let options = crate::pipeline::PipelineOptions::default();
        assert_eq!(
            (pipeline.validation, pipeline.handler_max_attempts, pipeline.handler_retry_backoff()),
            (options.validate, options.handler_max_attempts, options.handler_retry_backoff)
        );
    }
}

//! Assembles and runs the gateway: metrics, hub, router, pipeline, a source
//! (the Kafka consumer, or the embedded bus of `moonx-ws dev`) and the
//! HTTP/WebSocket server, with graceful shutdown on SIGTERM or Ctrl-C (stop
//! accepting, close clients with 1001 "going away", commit processed
//! offsets, exit).

use crate::config::{CommonArgs, ConsumerArgs, KafkaArgs, ServeArgs};
use crate::deliver::auth::Authenticator;
use crate::deliver::hub::Presence;
use crate::deliver::session::Limits;
use crate::deliver::{Hub, HubSettings};
use crate::http::{publish::PublishedIds, AppState, SourceHealth};
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
            HubSettings { queue_capacity: ws.queue_capacity as usize, max_connections: ws.max_connections },
            metrics.clone(),
        );
        let resume_settings = resume.settings();
        hub.set_resume_settings(resume_settings.clone());
        let (default_host, instance) = match &source {
            SourceConfig::Kafka { consumer, .. } => ([0, 0, 0, 0].into(), consumer.instance_id()),
            SourceConfig::Embedded { instance_id } => ([127, 0, 0, 1].into(), instance_id.clone()),
        };
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
        let pipeline = Arc::new(Pipeline::new(self.router, hub.clone(), metrics.clone(), options, audit));

        let mut tasks = JoinSet::new();
        let mut dead_letter_ring = None;
        let (source_health, publisher) = match source {
            SourceConfig::Kafka { kafka, consumer } if consumer.processing => {
                // The consumer declares each topic's partition count (the generation of positions).
                let status = Arc::new(ConsumerStatus { streams: hub.resume_streams(), ..ConsumerStatus::default() });
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
                let producer = crate::kafka::producer::create_producer(&kafka.brokers)?;
                let dead_letters = if consumer.dlq && consumer.dlq_writer {
                    DeadLetterWriter::Kafka { producer: producer.clone(), topic: kafka.dlq_topic.clone(), instance: instance.clone() }
                } else {
                    DeadLetterWriter::Skip
                };
                tracing::info!(
                    group = %settings.group_id, topics = ?settings.topics, brokers = %settings.brokers,
                    validation = pipeline_args.validation, dlq = consumer.dlq, dlq_writer = consumer.dlq_writer, "consuming"
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
            spawn_presence_publisher(&hub, p.clone(), &instance, shutdown.clone(), &mut tasks);
        }

        let state = AppState {
            hub: hub.clone(),
            metrics: metrics.clone(),
            auth: Authenticator::new(ws.jwt_secret.as_deref()),
            limits: Limits {
                max_frame_bytes: ws.max_frame_bytes as usize,
                max_subscriptions: ws.max_subscriptions,
                rate_per_sec: ws.rate_limit_per_sec,
                rate_burst: ws.rate_limit_burst,
                dedup_window: ws.dedup_window,
                ..Limits::default()
            },
            allowed_origins: Arc::new(ws.allowed_origins.clone()),
            source: source_health,
            shutdown: shutdown.clone(),
            instance: instance.clone(),
            started: std::time::Instant::now(),
            publisher: publisher.clone(),
            publish_keys: Arc::new(publish.publish_api_keys.into_iter().filter(|k| !k.is_empty()).collect()),
            published_ids: Arc::new(std::sync::Mutex::new(PublishedIds::default())),
            factory: Arc::new(EventFactory::new("http-api").with_registry(registry.clone())),
            registry,
            dead_letters: dead_letter_ring,
        };
        tracing::info!(%addr, instance = %instance, "listening: http://{addr}/health, ws://{addr}/ws");
        let app = crate::http::router(state);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        });
        on_ready(Running { addr, publisher, hub: hub.clone() });

        shutdown.cancelled().await;
        // Sessions close themselves with 1001 on the same signal; give them,
        // the consumer's final commit and the presence producer a moment.
        let drain = async {
            // Sessions run outside the server's task once upgraded: wait for
            // their close frames to be out.
            let closing = tokio::time::Instant::now() + Duration::from_secs(3);
            while hub.connection_count() > 0 && tokio::time::Instant::now() < closing {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            while tasks.join_next().await.is_some() {}
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
fn spawn_presence_publisher(hub: &Hub, publisher: Publisher, instance: &str, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
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
        loop {
            let p = tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => break },
                _ = shutdown.cancelled() => break,
            };
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
    });
}

/// The embedded bus's epoch: random, so two runs never share one.
fn rand_epoch() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

//! Assembles and runs the gateway: metrics, hub, router, pipeline, the
//! Kafka source and the HTTP/WebSocket server, with graceful shutdown on
//! SIGTERM or Ctrl-C (stop accepting, close clients with 1001 "going away",
//! commit processed offsets, exit).

use crate::config::ServeArgs;
use crate::deliver::auth::Authenticator;
use crate::deliver::hub::Presence;
use crate::deliver::session::Limits;
use crate::deliver::{Hub, HubSettings};
use crate::pipeline::audit::AuditLog;
use crate::pipeline::dead_letter::DeadLetterWriter;
use crate::pipeline::router::Router;
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::source::kafka::{self, ConsumerSettings, ConsumerStatus};
use crate::telemetry::Metrics;
use moonx_events::payload::{UserConnected, UserDisconnected};
use moonx_events::{EventFactory, EventOptions, LEGACY_TOPICS};
use std::sync::Arc;
use std::time::Duration;
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

/// The gateway, ready to run; register custom handlers on its router first.
pub struct Gateway {
    args: ServeArgs,
    router: Router,
}

impl Gateway {
    pub fn new(args: ServeArgs) -> Self {
        Gateway { args, router: Router::with_built_in_handlers() }
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
        let args = self.args;
        let instance = args.instance_id();
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            HubSettings { queue_capacity: args.ws.queue_capacity as usize, max_connections: args.ws.max_connections },
            metrics.clone(),
        );
        let listener = tokio::net::TcpListener::bind((args.http.host, args.http.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{} (PORT): {e}", args.http.host, args.http.port))?;
        let addr = listener.local_addr()?;

        let mut tasks = tokio::task::JoinSet::new();
        let consumer_status = if args.processing {
            let status = Arc::new(ConsumerStatus::default());
            let mut topics = vec![args.kafka.main_topic.clone()];
            if args.legacy_topics {
                topics.extend(LEGACY_TOPICS.iter().map(|t| t.to_string()));
            }
            let settings = ConsumerSettings {
                brokers: args.kafka.brokers.clone(),
                group_id: args.consumer_group(),
                topics,
                stats_interval_ms: args.stats_interval_ms,
                auto_offset_reset: args.auto_offset_reset.clone(),
            };
            let dead_letters = if args.dlq && args.dlq_writer {
                DeadLetterWriter::Kafka {
                    producer: crate::kafka::producer::create_producer(&args.kafka.brokers)?,
                    topic: args.kafka.dlq_topic.clone(),
                    instance: instance.clone(),
                }
            } else {
                DeadLetterWriter::Skip
            };
            let audit = match &args.route_audit_file {
                Some(p) => Some(AuditLog::open(p, instance.clone()).map_err(|e| anyhow::anyhow!("ROUTE_AUDIT_FILE {}: {e}", p.display()))?),
                None => None,
            };
            let options = PipelineOptions {
                validate: args.validation,
                handler_max_attempts: args.handler_max_attempts,
                handler_retry_backoff: args.handler_retry_backoff(),
            };
            let pipeline = Arc::new(Pipeline::new(self.router, hub.clone(), metrics.clone(), options, audit));
            tracing::info!(
                group = %settings.group_id, topics = ?settings.topics, brokers = %settings.brokers,
                validation = args.validation, dlq = args.dlq, dlq_writer = args.dlq_writer, "consuming"
            );
            tasks.spawn(kafka::run(settings, pipeline, dead_letters, status.clone(), instance.clone(), shutdown.clone()));
            Some(status)
        } else {
            tracing::info!("EVENT_PROCESSING_ENABLED=false: serving clients only, consuming nothing");
            None
        };

        if args.ws.presence_events {
            spawn_presence_producer(&hub, &args, &instance, shutdown.clone(), &mut tasks)?;
        }

        let state = crate::http::AppState {
            hub: hub.clone(),
            metrics: metrics.clone(),
            auth: Authenticator::new(args.ws.jwt_secret.as_deref()),
            limits: Limits {
                max_frame_bytes: args.ws.max_frame_bytes as usize,
                max_subscriptions: args.ws.max_subscriptions,
                rate_per_sec: args.ws.rate_limit_per_sec,
                rate_burst: args.ws.rate_limit_burst,
                dedup_window: args.ws.dedup_window,
                ..Limits::default()
            },
            allowed_origins: Arc::new(args.ws.allowed_origins.clone()),
            consumer: consumer_status,
            shutdown: shutdown.clone(),
        };
        tracing::info!(%addr, instance = %instance, "listening: http://{addr}/health, ws://{addr}/ws");
        let app = crate::http::router(state);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        });

        shutdown.cancelled().await;
        // Sessions close themselves with 1001 on the same signal; give them,
        // the consumer's final commit and the presence producer a moment.
        let drain = async {
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
/// to the main topic, keyed by userId, without ever blocking a session.
fn spawn_presence_producer(
    hub: &Hub,
    args: &ServeArgs,
    instance: &str,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Presence>(10_000);
    let metrics = hub.metrics().clone();
    hub.set_presence_sink(Arc::new(move |p| {
        if tx.try_send(p).is_err() {
            metrics.frames_dropped.with_label_values(&["presence_queue_full"]).inc();
        }
    }));
    let producer = crate::kafka::producer::create_producer(&args.kafka.brokers)?;
    let topic = args.kafka.main_topic.clone();
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
                    UserConnected { user_id: user_id.clone(), connection_id, instance_id: instance.clone() },
                    EventOptions::user(user_id),
                ),
                Presence::Disconnected { user_id, connection_id, duration_ms, reason } => factory.create(
                    UserDisconnected {
                        user_id: user_id.clone(),
                        connection_id,
                        instance_id: instance.clone(),
                        reason: Some(reason),
                        duration_ms: Some(duration_ms),
                    },
                    EventOptions::user(user_id),
                ),
            };
            match event {
                Ok(e) => {
                    if let Err(err) = crate::kafka::producer::send_event(&producer, &topic, &e).await {
                        tracing::warn!("presence event not produced: {err}");
                    }
                }
                Err(errs) => tracing::warn!("presence event invalid: {errs}"),
            }
        }
    });
    Ok(())
}

//! Registering a handler for a custom event type through the library API.
//!
//! Delivery semantics: this example runs the pipeline in-process on records
//! it makes itself (no Kafka); in `moonx-ws serve` the same router sits
//! behind the at-least-once Kafka source (see `source::kafka`).
//!
//! A `reward.granted` event (confidential: it belongs to one user) is routed
//! to its owner's `trades` channel. A handler that tried to show it to
//! everyone would be refused by the server's entitlement check, and the
//! record dead-lettered.
//!
//! Run it: `cargo run -p moonx-ws --example custom_handler`

use moonx_events::{CustomType, DataClassification, EventFactory, EventOptions, EventType};
use moonx_ws::deliver::{Audience, Channel, Hub, HubSettings};
use moonx_ws::pipeline::router::{HandlerError, Route, Router};
use moonx_ws::pipeline::{Outcome, Pipeline, PipelineOptions};
use moonx_ws::source::Record;
use moonx_ws::telemetry::Metrics;
use serde_json::json;
use std::sync::Arc;

#[tokio::main]
async fn main() {
    let mut router = Router::with_built_in_handlers();
    router
        .register(CustomType::new("reward.granted", DataClassification::Confidential), |event| {
            let owner = event.metadata.user_id.clone().ok_or_else(|| HandlerError::Permanent("no owner".into()))?;
            Ok(vec![Route { channel: Channel::Trades, audience: Audience::User(owner) }])
        })
        .expect("a new type name");
    // A buggy handler: it would leak a confidential event to everyone.
    router
        .register(CustomType::new("reward.leaked", DataClassification::Confidential), |_| {
            Ok(vec![Route { channel: Channel::Prices, audience: Audience::Everyone }])
        })
        .expect("a new type name");

    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(HubSettings::default(), metrics.clone());
    let factory = EventFactory::new("rewards-service").with_registry(router.registry().clone());
    let pipeline = Pipeline::new(router, hub, metrics.clone(), PipelineOptions::default(), None);

    let granted = factory
        .create_from_json(&EventType::parse("reward.granted"), json!({"points": 250, "userId": "user-7"}), EventOptions::default())
        .expect("valid");
    assert_eq!(granted.metadata.partition, "user-7", "custom confidential types are keyed by user");
    let leaked = factory
        .create_from_json(&EventType::parse("reward.leaked"), json!({"points": 1}), EventOptions::user("user-7"))
        .expect("valid");

    for (offset, event) in [granted, leaked].iter().enumerate() {
        let bytes = event.to_json_bytes();
        let record = Record {
            topic: moonx_events::MAIN_TOPIC,
            partition: 0,
            offset: offset as i64,
            key: Some(event.metadata.partition.as_bytes()),
            payload: Some(&bytes),
            timestamp_ms: None,
        };
        match pipeline.process(&record).await {
            Outcome::Routed { deliveries } => println!("{} routed to {deliveries} route(s)", event.metadata.event_type),
            Outcome::Failed(f) => println!("{} refused ({}): {}", event.metadata.event_type, f.reason.as_str(), f.message),
            Outcome::Skipped(reason) => println!("{} skipped ({})", event.metadata.event_type, reason.as_str()),
        }
    }
    let text = metrics.render();
    assert!(text.contains("moonx_ws_events_processed_total{event_type=\"reward.granted\"} 1"), "{text}");
    assert!(text.contains("moonx_ws_events_failed_total{event_type=\"reward.leaked\",reason=\"handler_failed\"} 1"), "{text}");
    println!("ok: the custom handler routed its event and the leaky one was refused");
}

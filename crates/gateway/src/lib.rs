//! moonx-ws: the MoonX real-time event gateway.
//!
//! Records flow through one pipeline, and each stage is a folder:
//!
//! ```text
//! source/    Kafka consumer (or the embedded bus)   → Record
//! pipeline/  decode → validate → route, or dead-letter
//! deliver/   WebSocket hub: sessions, subscriptions, auth, fan-out
//! http/      /health, /metrics, /ws
//! cli/       serve, create-topics, produce, tail
//! ```
//!
//! `config` reads every setting in one place; `telemetry` owns logs and metrics.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod deliver;
pub mod http;
pub mod kafka;
pub mod pipeline;
pub mod server;
pub mod source;
pub mod telemetry;

pub use moonx_events as events;

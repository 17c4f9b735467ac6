//! The route audit log: one JSON line per routed event (`ROUTE_AUDIT_FILE`).
//!
//! A debugging aid for operators ("did the gateway route event X, and
//! where?") that the delivery tests also read. Each line is written with one
//! unbuffered `write`, before the record's offset is stored, so a line
//! survives a SIGKILL of the gateway.

use crate::deliver::Route;
use super::Record;
use moonx_events::EventRef;
use std::io::Write;
use std::sync::Mutex;

pub struct AuditLog {
    file: Mutex<std::fs::File>,
    instance: String,
}

impl AuditLog {
    pub fn open(path: &std::path::Path, instance: String) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog { file: Mutex::new(file), instance })
    }

    pub fn record(&self, record: &Record<'_>, event: &EventRef<'_>, route: &Route) {
        let line = serde_json::json!({
            "instance": self.instance,
            "eventId": event.metadata.event_id,
            "eventType": event.metadata.event_type,
            "userId": event.metadata.user_id,
            "channel": route.channel.as_str(),
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        });
        let mut bytes = serde_json::to_vec(&line).expect("serializable");
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&bytes) {
            tracing::error!("route audit log write failed: {e}");
        }
    }
}

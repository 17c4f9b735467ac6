//! Bytes → [`Event`]. Total: any input yields an event or a typed error,
//! never a panic (see the property test in `tests/decode_never_panics.rs`).

use crate::validate::{ErrorCode, ValidationError, Validator};
use crate::{legacy, Event, EventData, EventMetadata, TypeRegistry, ValidationErrors};
use serde_json::Value;

/// Why a record could not become an event. Each variant has a stable code
/// (used as the dead-letter reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not UTF-8, or not JSON at all.
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not a valid event (every error listed).
    #[error("invalid event: {0}")]
    Invalid(ValidationErrors),
    /// A legacy message that cannot be turned into an envelope.
    #[error("legacy message cannot be migrated: {0}")]
    Legacy(#[from] legacy::LegacyError),
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::Invalid(_) => "invalid_event",
            DecodeError::Legacy(_) => "legacy_unmigratable",
        }
    }

    /// The validation errors, when there are any.
    pub fn validation_errors(&self) -> Option<&ValidationErrors> {
        match self {
            DecodeError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// How to decode a record.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions<'a> {
    pub registry: &'a TypeRegistry,
    /// Run full validation (`EVENT_VALIDATION_ENABLED`). When off, only what
    /// the typed model needs is checked.
    pub validate: bool,
    /// "Now" for the future-timestamp check; `None` skips it.
    pub now_ms: Option<u64>,
    /// The topic the record came from: on a legacy topic, messages without
    /// `metadata` are migrated.
    pub topic: Option<&'a str>,
}

impl<'a> DecodeOptions<'a> {
    pub fn new(registry: &'a TypeRegistry) -> Self {
        DecodeOptions {
            registry,
            validate: true,
            now_ms: Some(crate::validate::now_ms()),
            topic: None,
        }
    }

    pub fn topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }
}

/// Decodes, migrates (legacy messages) and validates one record.
///
/// Two paths, one verdict. The fast path decodes straight into the typed
/// model (no `Value` tree) and accepts only what [`Validator::accepts_typed`]
/// passes; anything else (errors, legacy messages, `null`s, duplicate keys)
/// takes the slow path, whose walker gives the verdict and every error. The
/// fast path never accepts what the walker would refuse (tested in
/// `tests/fast_path_agrees.rs`).
pub fn decode_event(bytes: &[u8], opts: &DecodeOptions<'_>) -> Result<Event, DecodeError> {
    if let Some(event) = decode_fast(bytes, opts) {
        return Ok(event);
    }
    decode_slow(bytes, opts)
}

/// The typed single-pass decode; `None` sends the record down the slow path.
pub fn decode_fast(bytes: &[u8], opts: &DecodeOptions<'_>) -> Option<Event> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        metadata: crate::envelope::MapOnly<EventMetadata>,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    // Legacy records are migrated on the slow path. `null` anywhere (even in
    // a string, harmlessly) also goes there: the model refuses explicit nulls
    // where typed `Option`s would quietly accept them.
    if opts.topic.is_some_and(legacy::is_legacy_topic) || contains_null(bytes) {
        return None;
    }
    // serde accepts a JSON array for a struct; the contract wants objects.
    let is_object = |raw: &RawValue| raw.get().starts_with('{');
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    // One UTF-8 check of the whole record, instead of one per string.
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: Raw<'_> = serde_json::from_str(text).ok()?;
    if !is_object(raw.data) {
        return None;
    }
    let metadata = raw.metadata.0;
    let data = EventData::from_json_str(&metadata.event_type, raw.data.get()).ok()?;
    let event = Event { metadata, data };
    let accepted = !opts.validate || Validator { registry: opts.registry, now_ms: opts.now_ms }.accepts_typed(&event);
    accepted.then_some(event)
}

fn contains_null(haystack: &[u8]) -> bool {
    static NULL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"null"));
    NULL.find(haystack).is_some()
}

/// The `Value`-based decode: migration, the full walker, every error.
pub fn decode_slow(bytes: &[u8], opts: &DecodeOptions<'_>) -> Result<Event, DecodeError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let doc = if is_legacy_shaped(&doc, opts.topic) {
        legacy::migrate(&doc, opts.topic, opts.registry)?
    } else {
        doc
    };
    if opts.validate {
        Validator { registry: opts.registry, now_ms: opts.now_ms }
            .validate(&doc)
            .map_err(DecodeError::Invalid)?;
    }
    typed_from_valid(doc).map_err(|e| DecodeError::Invalid(ValidationErrors(vec![e])))
}

/// A document without `metadata` that has a `type` (the seed's rule), or any
/// document without `metadata` on a legacy topic.
fn is_legacy_shaped(doc: &Value, topic: Option<&str>) -> bool {
    let Some(obj) = doc.as_object() else { return false };
    !obj.contains_key("metadata")
        && (obj.contains_key("type") || topic.is_some_and(legacy::is_legacy_topic))
}

/// Turns a document (validated, or trusted) into the typed model.
pub(crate) fn typed_from_valid(doc: Value) -> Result<Event, ValidationError> {
    let Value::Object(mut root) = doc else {
        return Err(type_error("", "an event must be a JSON object".into()));
    };
    let meta = root.remove("metadata").unwrap_or(Value::Null);
    let metadata: EventMetadata =
        serde_json::from_value(meta).map_err(|e| type_error("/metadata", e.to_string()))?;
    let data = root.remove("data").unwrap_or(Value::Null);
    let data = EventData::from_value(&metadata.event_type, data).map_err(|e| type_error("/data", e.to_string()))?;
    Ok(Event { metadata, data })
}

fn type_error(path: &str, message: String) -> ValidationError {
    ValidationError { path: path.into(), code: ErrorCode::Type, message }
}

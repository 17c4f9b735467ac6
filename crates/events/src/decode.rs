//! Bytes → [`Event`]. Total: any input yields an event or a typed error,
//! never a panic (see the property test in `tests/decode_never_panics.rs`).

use crate::validate::{ErrorCode, ValidationError, Validator};
use crate::borrowed::{DataSeed, EventRef, MetadataRef};
use crate::{legacy, Event, TypeRegistry, ValidationErrors};
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

/// Decodes, migrates (legacy messages) and validates one record, into the
/// owned model: [`decode_event_ref`], then [`EventRef::into_owned`]. For
/// callers that keep the event (tools, tests, fuzzing: "bytes → event or
/// error"); the gateway's hot path uses [`decode_event_ref`].
pub fn decode_event(bytes: &[u8], opts: &DecodeOptions<'_>) -> Result<Event, DecodeError> {
    decode_event_ref(bytes, opts).map(EventRef::into_owned)
}

/// Decodes, migrates (legacy messages) and validates one record, into an
/// event that borrows from `bytes`.
///
/// Two paths, one verdict. The fast path decodes in one pass straight into
/// the borrowed typed model (no `Value` tree, no `String` per field, `data`
/// parsed once) and accepts only what [`Validator::accepts_typed`] passes;
/// anything else (errors, legacy messages, `null`s, duplicate keys) takes
/// the slow path, whose walker gives the verdict and every error. The fast
/// path never accepts what the walker would refuse (tested in
/// `tests/fast_path_agrees.rs`).
pub fn decode_event_ref<'a>(bytes: &'a [u8], opts: &DecodeOptions<'_>) -> Result<EventRef<'a>, DecodeError> {
    if let Some(event) = decode_fast(bytes, opts) {
        return Ok(event);
    }
    decode_slow(bytes, opts)
}

/// The typed single-pass decode; `None` sends the record down the slow path.
pub fn decode_fast<'a>(bytes: &'a [u8], opts: &DecodeOptions<'_>) -> Option<EventRef<'a>> {
    use serde::de::DeserializeSeed;
    // Legacy records are migrated on the slow path. `null` anywhere (even in
    // a string, harmlessly) also goes there: the model refuses explicit nulls
    // where typed `Option`s would quietly accept them.
    if opts.topic.is_some_and(legacy::is_legacy_topic) || contains_null(bytes) {
        return None;
    }
    // serde accepts a JSON array for a struct; the contract wants objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    // One UTF-8 check of the whole record, instead of one per string.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let event = crate::borrowed::EnvelopeSeed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    let accepted = !opts.validate || Validator { registry: opts.registry, now_ms: opts.now_ms }.accepts_typed(&event);
    accepted.then_some(event)
}

fn contains_null(haystack: &[u8]) -> bool {
    static NULL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"null"));
    NULL.find(haystack).is_some()
}

/// The `Value`-based decode: migration, the full walker, every error.
pub fn decode_slow(bytes: &[u8], opts: &DecodeOptions<'_>) -> Result<EventRef<'static>, DecodeError> {
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

/// Turns a document (validated, or trusted) into the typed model (owning
/// its strings: they are moved out of the document, not copied).
pub(crate) fn typed_from_valid(doc: Value) -> Result<EventRef<'static>, ValidationError> {
    use serde::de::DeserializeSeed;
    use serde::Deserialize;
    let Value::Object(mut root) = doc else {
        return Err(type_error("", "an event must be a JSON object".into()));
    };
    let meta = root.remove("metadata").unwrap_or(Value::Null);
    let metadata = MetadataRef::deserialize(meta).map_err(|e| type_error("/metadata", e.to_string()))?;
    let data = root.remove("data").unwrap_or(Value::Null);
    let data = DataSeed { event_type: &metadata.event_type, objects_only: false }
        .deserialize(data)
        .map_err(|e| type_error("/data", e.to_string()))?;
    Ok(EventRef { metadata, data })
}

fn type_error(path: &str, message: String) -> ValidationError {
    ValidationError { path: path.into(), code: ErrorCode::Type, message }
}

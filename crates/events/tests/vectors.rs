//! The shared test vectors of `schema/vectors/` against both implementations
//! of the contract that live in this repository: the Rust model
//! (`decode_event` + `validate.rs`, the source of truth) and the JSON Schema
//! (`schema/envelope.schema.json` and the files it references).
//!
//! Every file is checked; all failures are collected and reported together,
//! each naming its file. See `schema/README.md` for the vector format and the
//! rule used to compare model error paths with JSON Schema error locations.

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Registry, Retrieve, Uri};
use moonx_events::decode::{decode_event, DecodeError, DecodeOptions};
use moonx_events::legacy::{self, LegacyError};
use moonx_events::validate::{Validator, MIN_TIMESTAMP_MS};
use moonx_events::{Event, EventType, TypeRegistry, MAIN_TOPIC};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The fixed "now" of every vector: 2025-11-24T16:10:00Z.
const NOW_MS: u64 = 1_764_000_600_000;

/// The codes the vectors must cover, all of `validate::ErrorCode`.
const ALL_CODES: [&str; 10] = [
    "required",
    "type",
    "format",
    "enum",
    "unknown_type",
    "classification_downgrade",
    "owner_required",
    "owner_mismatch",
    "timestamp",
    "partition_mismatch",
];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Fails the build of the validator if any `$ref` is not already in the registry.
struct NoNetwork;

impl Retrieve for NoNetwork {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("the schema must resolve offline, but it references {uri}").into())
    }
}

/// The envelope schema, with `defs.schema.json` and `data/*.schema.json`
/// registered under their `$id`s so that the relative `$ref`s resolve without
/// any network or file access.
fn envelope_validator() -> jsonschema::Validator {
    let dir = schema_dir();
    let mut resources = vec![read_json(&dir.join("defs.schema.json"))];
    let mut data_files: Vec<PathBuf> = std::fs::read_dir(dir.join("data"))
        .expect("schema/data")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    data_files.sort();
    assert_eq!(data_files.len(), 12, "schema/data must hold one schema per built-in type: {data_files:?}");
    for p in &data_files {
        let s = read_json(p);
        let t = p.file_name().unwrap().to_str().unwrap().trim_end_matches(".schema.json");
        assert!(EventType::parse(t).is_built_in(), "{}: not named after a built-in type", p.display());
        resources.push(s);
    }
    let pairs: Vec<(String, Value)> = resources
        .into_iter()
        .map(|s| (s["$id"].as_str().expect("every schema has an $id").to_owned(), s))
        .collect();
    let registry = Registry::new()
        .retriever(NoNetwork)
        .extend(pairs)
        .expect("schema URIs")
        .prepare()
        .expect("schema registry");
    let envelope = read_json(&dir.join("envelope.schema.json"));
    assert_eq!(envelope["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::options()
        .offline()
        .with_registry(&registry)
        .build(&envelope)
        .expect("the envelope schema builds offline")
}

fn escape_pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The locations JSON Schema reports, mapped onto the model's paths: a
/// `required` error is located at the missing property (its instance path
/// plus `/<property>`), every other error at its instance path.
fn schema_locations(v: &jsonschema::Validator, doc: &Value) -> Vec<(String, String)> {
    v.iter_errors(doc)
        .map(|e| {
            let mut path = e.instance_path().as_str().to_owned();
            if let ValidationErrorKind::Required { property } = e.kind() {
                path.push('/');
                path.push_str(&escape_pointer_token(property.as_str().unwrap_or_default()));
            }
            (path, format!("{} ({e})", e.kind().keyword()))
        })
        .collect()
}

fn decode(doc: &Value, topic: Option<&str>, registry: &TypeRegistry) -> Result<Event, DecodeError> {
    let bytes = serde_json::to_vec(doc).expect("a Value serializes");
    let opts = DecodeOptions { registry, validate: true, now_ms: Some(NOW_MS), topic };
    decode_event(&bytes, &opts)
}

fn error_set(err: &DecodeError) -> BTreeSet<(String, String)> {
    err.validation_errors()
        .map(|es| es.iter().map(|e| (e.path.clone(), e.code.as_str().to_owned())).collect())
        .unwrap_or_default()
}

fn expected_errors(v: &Value) -> Result<BTreeSet<(String, String)>, String> {
    let list = v.get("errors").and_then(Value::as_array).ok_or("\"errors\" must be an array")?;
    let mut set = BTreeSet::new();
    for e in list {
        let path = e.get("path").and_then(Value::as_str).ok_or("an error without \"path\"")?;
        let code = e.get("code").and_then(Value::as_str).ok_or("an error without \"code\"")?;
        if !ALL_CODES.contains(&code) {
            return Err(format!("unknown error code {code:?}"));
        }
        if !set.insert((path.to_owned(), code.to_owned())) {
            return Err(format!("duplicate error ({path}, {code})"));
        }
    }
    if set.is_empty() {
        return Err("an invalid vector must list its errors".into());
    }
    Ok(set)
}

/// Whether JSON Schema can express an error of the model (see README.md).
fn schema_expressible(path: &str, code: &str, input: &Value) -> bool {
    match code {
        "unknown_type" | "owner_mismatch" => false,
        // Only the lower bound (2020-01-01) is expressible, not "now + 5 min".
        "timestamp" => input
            .pointer(path)
            .and_then(Value::as_u64)
            .is_some_and(|ts| ts < MIN_TIMESTAMP_MS),
        // The schema pins the fixed keys ("prices", "system"); the owner's
        // key (partition == userId) compares two values, which it cannot.
        "partition_mismatch" => input
            .pointer("/metadata/eventType")
            .and_then(Value::as_str)
            .is_some_and(|t| matches!(t, "price.updated" | "system.health_check" | "system.error")),
        _ => true,
    }
}

fn show(set: &BTreeSet<(String, String)>) -> String {
    set.iter().map(|(p, c)| format!("({p:?}, {c})")).collect::<Vec<_>>().join(", ")
}

struct Ctx {
    schema: jsonschema::Validator,
    registry: TypeRegistry,
}

/// Checks a valid or invalid envelope vector.
fn check_envelope_vector(ctx: &Ctx, v: &Value) -> Result<(), String> {
    let input = v.get("input").ok_or("no \"input\"")?;
    let valid = v.get("valid").and_then(Value::as_bool).ok_or("no boolean \"valid\"")?;
    let schema_valid = match v.get("schemaValid") {
        None => valid,
        Some(Value::Bool(b)) => {
            if *b == valid {
                return Err("\"schemaValid\" equal to \"valid\" is redundant; omit it".into());
            }
            if v.get("schemaNote").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err("\"schemaValid\" needs a \"schemaNote\" saying why".into());
            }
            *b
        }
        Some(_) => return Err("\"schemaValid\" must be a boolean".into()),
    };
    let mut problems = Vec::new();

    // 1. The model.
    let decoded = decode(input, Some(MAIN_TOPIC), &ctx.registry);
    match (&decoded, valid) {
        (Ok(event), true) => {
            let reencoded = serde_json::to_value(event).map_err(|e| e.to_string())?;
            let again = Validator { registry: &ctx.registry, now_ms: Some(NOW_MS) }.validate(&reencoded);
            if let Err(e) = again {
                problems.push(format!("the decoded event re-serializes to an invalid document: {e}"));
            }
            let schema_errs = schema_locations(&ctx.schema, &reencoded);
            if !schema_errs.is_empty() {
                problems.push(format!("the re-serialized event fails the JSON Schema: {schema_errs:?}"));
            }
        }
        (Ok(_), false) => problems.push("the model accepts an invalid vector".into()),
        (Err(e), true) => problems.push(format!("the model refuses a valid vector: {} {e}", e.code())),
        (Err(e), false) => {
            let expected = expected_errors(v)?;
            if e.code() != "invalid_event" {
                problems.push(format!("expected invalid_event, the model says {} ({e})", e.code()));
            }
            let got = error_set(e);
            if got != expected {
                let missing: BTreeSet<_> = expected.difference(&got).cloned().collect();
                let extra: BTreeSet<_> = got.difference(&expected).cloned().collect();
                problems.push(format!(
                    "model errors differ: missing [{}], unexpected [{}]",
                    show(&missing),
                    show(&extra)
                ));
            }
        }
    }
    if valid && v.get("errors").is_some() {
        problems.push("a valid vector must not list errors".into());
    }

    // 2. The JSON Schema.
    let locations = schema_locations(&ctx.schema, input);
    if locations.is_empty() != schema_valid {
        problems.push(if schema_valid {
            format!("JSON Schema refuses it (schemaValid: {schema_valid}): {locations:?}")
        } else {
            "JSON Schema accepts it, but schemaValid is false".into()
        });
    } else if !valid && !schema_valid {
        // Every expressible model error is found by the schema at the same
        // path, and every schema error is at a path the model reports too.
        let expected = expected_errors(v)?;
        let schema_paths: BTreeSet<&str> = locations.iter().map(|(p, _)| p.as_str()).collect();
        let model_paths: BTreeSet<&str> = expected.iter().map(|(p, _)| p.as_str()).collect();
        for (path, code) in &expected {
            if schema_expressible(path, code, input) && !schema_paths.contains(path.as_str()) {
                problems.push(format!("JSON Schema reports nothing at {path:?} (model: {code}); it reports {locations:?}"));
            }
        }
        for (path, what) in &locations {
            if !model_paths.contains(path.as_str()) {
                problems.push(format!("JSON Schema reports {path:?}, where the model reports nothing: {what}"));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n    ")) }
}

fn legacy_reason(e: &LegacyError) -> &'static str {
    match e {
        LegacyError::NotAnObject => "not_an_object",
        LegacyError::MissingType => "missing_type",
        LegacyError::UnknownType(_) => "unknown_type",
        LegacyError::WrongTopic { .. } => "wrong_topic",
        LegacyError::MissingTimestamp => "missing_timestamp",
        LegacyError::BadTimestamp(_) => "bad_timestamp",
    }
}

/// Checks a legacy vector.
fn check_legacy_vector(ctx: &Ctx, v: &Value) -> Result<(), String> {
    let input = v.get("input").ok_or("no \"input\"")?;
    let topic = match v.get("topic") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Null) | None => None,
        Some(_) => return Err("\"topic\" must be a string or null".into()),
    };
    let decoded = decode(input, topic, &ctx.registry);
    match (v.get("expected"), v.get("expectedError").and_then(Value::as_str)) {
        (Some(expected), None) => {
            let event = decoded.map_err(|e| format!("the model refuses it: {} {e}", e.code()))?;
            let mut problems = Vec::new();
            // The migrated envelope, field by field.
            match legacy::migrate(input, topic, &ctx.registry) {
                Ok(doc) if &doc == expected => {}
                Ok(doc) => problems.push(format!(
                    "migrated envelope differs:\n      expected {expected}\n      model    {doc}"
                )),
                Err(e) => problems.push(format!("legacy::migrate refuses it: {e}")),
            }
            // Decoding the migrated envelope directly gives the same event.
            match decode(expected, Some(MAIN_TOPIC), &ctx.registry) {
                Ok(direct) if direct == event => {}
                Ok(direct) => problems.push(format!("decoding `expected` gives {direct:?}, migrating gives {event:?}")),
                Err(e) => problems.push(format!("`expected` is not a valid envelope: {e}")),
            }
            let schema_errs = schema_locations(&ctx.schema, expected);
            if !schema_errs.is_empty() {
                problems.push(format!("`expected` fails the JSON Schema: {schema_errs:?}"));
            }
            if problems.is_empty() { Ok(()) } else { Err(problems.join("\n    ")) }
        }
        (None, Some(code)) => {
            let err = match decoded {
                Ok(e) => return Err(format!("expected {code}, the model accepts it: {e:?}")),
                Err(e) => e,
            };
            if err.code() != code {
                return Err(format!("expected {code}, the model says {} ({err})", err.code()));
            }
            match (&err, v.get("legacyReason").and_then(Value::as_str)) {
                (DecodeError::Legacy(l), Some(reason)) if legacy_reason(l) != reason => {
                    return Err(format!("expected legacy reason {reason}, the model says {} ({l})", legacy_reason(l)));
                }
                (DecodeError::Legacy(_), None) => return Err("a legacy_unmigratable vector needs \"legacyReason\"".into()),
                _ => {}
            }
            if code == "invalid_event" {
                let expected = expected_errors(v)?;
                let got = error_set(&err);
                if got != expected {
                    return Err(format!("model errors differ: expected [{}], got [{}]", show(&expected), show(&got)));
                }
            } else if v.get("errors").is_some() {
                return Err("only invalid_event vectors list errors".into());
            }
            Ok(())
        }
        _ => Err("a legacy vector has exactly one of \"expected\" and \"expectedError\"".into()),
    }
}

fn vector_files(sub: &str) -> Vec<PathBuf> {
    let dir = schema_dir().join("vectors").join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        assert!(f.extension().is_some_and(|x| x == "json"), "{}: not a .json file", f.display());
    }
    files
}

#[test]
fn every_vector_agrees_with_the_model_and_the_schema() {
    let ctx = Ctx { schema: envelope_validator(), registry: TypeRegistry::new() };
    let mut failures = Vec::new();
    let mut total = 0;
    let mut valid_types = BTreeSet::new();
    let mut codes_seen = BTreeSet::new();
    let mut counts = Vec::new();

    for sub in ["valid", "invalid", "legacy"] {
        let files = vector_files(sub);
        counts.push((sub, files.len()));
        for file in files {
            total += 1;
            let name = format!("schema/vectors/{sub}/{}", file.file_name().unwrap().to_string_lossy());
            let v = read_json(&file);
            if v.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                failures.push(format!("{name}: no description"));
            }
            let result = match sub {
                "legacy" => check_legacy_vector(&ctx, &v),
                _ => {
                    let valid = v.get("valid").and_then(Value::as_bool);
                    if valid != Some(sub == "valid") {
                        Err(format!("a vector in {sub}/ must say \"valid\": {}", sub == "valid"))
                    } else {
                        check_envelope_vector(&ctx, &v)
                    }
                }
            };
            if let Err(msg) = result {
                failures.push(format!("{name}:\n    {msg}"));
            }
            if sub == "valid" {
                if let Some(t) = v.pointer("/input/metadata/eventType").and_then(Value::as_str) {
                    valid_types.insert(t.to_owned());
                }
            }
            for e in v.get("errors").and_then(Value::as_array).into_iter().flatten() {
                if let Some(c) = e.get("code").and_then(Value::as_str) {
                    codes_seen.insert(c.to_owned());
                }
            }
        }
    }

    assert!(failures.is_empty(), "{} of {total} vectors fail:\n{}", failures.len(), failures.join("\n"));
    eprintln!("vectors: {counts:?}, {total} in all");
    assert!(total >= 45, "only {total} vectors");
    let count = |s: &str| counts.iter().find(|(n, _)| *n == s).unwrap().1;
    assert!(count("invalid") >= 20, "only {} invalid vectors", count("invalid"));
    assert!(count("legacy") >= 8, "only {} legacy vectors", count("legacy"));
    for t in EventType::BUILT_IN {
        assert!(valid_types.contains(t.as_str()), "no valid vector of type {t}");
    }
    for c in ALL_CODES {
        assert!(codes_seen.contains(c), "no vector expects the error code {c}");
    }
}

#[test]
fn the_schema_resolves_offline_and_refuses_unknown_references() {
    // Built with an offline retriever and a registry of the local files only:
    // if any $ref pointed outside them, building would fail.
    let v = envelope_validator();
    assert!(!v.is_valid(&serde_json::json!({})));
    // Sanity check of the offline guard itself.
    let dangling = serde_json::json!({"$ref": "https://moonx.dev/schema/data/nope.schema.json"});
    assert!(jsonschema::options().offline().build(&dangling).is_err());
}

//! The fast decode path must never accept what the slow path (the walker,
//! the source of truth) refuses, and must produce the same event when both
//! accept. Checked on every vector and on random mutations of them.

use moonx_events::decode::{decode_fast, decode_slow, DecodeOptions};
use moonx_events::TypeRegistry;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const NOW: u64 = 1_764_000_600_000;

fn inputs() -> &'static [Value] {
    static INPUTS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    INPUTS.get_or_init(load_inputs)
}

fn load_inputs() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schema/vectors");
    let mut out = Vec::new();
    for sub in ["valid", "invalid"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
            out.push(v["input"].clone());
        }
    }
    out.sort_by_key(|v| v.to_string());
    out
}

fn check(bytes: &[u8], validate: bool) -> Result<bool, TestCaseError> {
    let registry = TypeRegistry::new();
    let opts = DecodeOptions { validate, now_ms: Some(NOW), ..DecodeOptions::new(&registry) };
    let fast = decode_fast(bytes, &opts);
    let slow = decode_slow(bytes, &opts);
    if let Some(f) = &fast {
        match &slow {
            Ok(s) => prop_assert_eq!(f, s, "fast and slow disagree on the event for {}", String::from_utf8_lossy(bytes)),
            Err(e) => prop_assert!(false, "fast accepted what slow refuses ({e}): {}", String::from_utf8_lossy(bytes)),
        }
    }
    Ok(fast.is_some())
}

#[test]
fn every_vector_agrees_and_most_valid_ones_take_the_fast_path() {
    let mut fast = 0;
    let mut valid = 0;
    for input in inputs() {
        let bytes = input.to_string().into_bytes();
        let took_fast = check(&bytes, true).unwrap();
        check(&bytes, false).unwrap();
        let registry = TypeRegistry::new();
        if decode_slow(&bytes, &DecodeOptions { now_ms: Some(NOW), ..DecodeOptions::new(&registry) }).is_ok() {
            valid += 1;
            fast += took_fast as usize;
        }
    }
    assert!(valid >= 20);
    assert!(fast * 10 >= valid * 6, "only {fast} of {valid} valid vectors took the fast path");
}

fn tricky() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("")),
        Just(json!("-1")),
        Just(json!("-0")),
        Just(json!("1e5")),
        Just(json!(" 1")),
        Just(json!(1.5)),
        Just(json!(-3)),
        Just(json!(1.0)),
        Just(json!(18446744073709551615u64)),
        Just(json!(true)),
        Just(json!({})),
        Just(json!([])),
        Just(json!(["ETH", 1, "1", "1"])),
        Just(json!("public")),
        Just(json!("restricted")),
        Just(json!("01935f3c-9a00-7a00-8000-000000000053")),
        Just(json!("{01935f3c-9a00-7a00-8000-000000000053}")),
        Just(json!("01935f3c9a007a008000000000000053")),
        Just(json!("1.0")),
        Just(json!("x")),
        Just(json!(1_500_000_000u64)),
        Just(json!(4_102_444_800_000u64)),
        Just(json!("order.created")),
        Just(json!("user-1")),
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Every (container, key) position in a document, as JSON pointers.
fn positions(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                positions(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                positions(c, p, out);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutations_never_make_the_paths_disagree(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        op in 0u8..4,
        value in tricky(),
        key in "[a-zA-Z]{1,12}",
    ) {
        let all = inputs();
        let mut doc = all[pick.index(all.len())].clone();
        let mut spots = Vec::new();
        positions(&doc, String::new(), &mut spots);
        if !spots.is_empty() {
            let spot = &spots[at.index(spots.len())];
            let (parent, last) = spot.rsplit_once('/').unwrap();
            let parent_value = doc.pointer_mut(parent).unwrap();
            match (op, parent_value) {
                (0, p) => { *p.pointer_mut(&format!("/{last}")).unwrap() = value; }
                (1, Value::Object(m)) => { m.remove(last); }
                (2, Value::Object(m)) => { m.insert(key, value); }
                (_, p) => { let v = p.pointer_mut(&format!("/{last}")).unwrap(); *v = json!([v.clone()]); }
            }
        }
        let bytes = doc.to_string().into_bytes();
        check(&bytes, true)?;
        check(&bytes, false)?;
    }
}

#[test]
fn arrays_in_place_of_objects_never_pass_the_fast_path() {
    let registry = TypeRegistry::new();
    let opts = DecodeOptions { now_ms: Some(NOW), ..DecodeOptions::new(&registry) };
    let portfolio = inputs()
        .iter()
        .find(|v| {
            v["metadata"]["eventType"] == "portfolio.updated"
                && v["data"]["holdings"].as_array().is_some_and(|h| !h.is_empty())
                && decode_slow(v.to_string().as_bytes(), &opts).is_ok()
                && !v.to_string().contains("null")
        })
        .expect("a portfolio vector with holdings")
        .clone();
    assert!(decode_fast(portfolio.to_string().as_bytes(), &opts).is_some(), "the valid portfolio takes the fast path");
    let mut holding_as_array = portfolio.clone();
    holding_as_array["data"]["holdings"][0] = json!(["ETH", 1, "1", "1"]);
    let metadata = portfolio["metadata"].as_object().unwrap();
    let mut metadata_as_array = portfolio.clone();
    metadata_as_array["metadata"] = Value::Array(metadata.values().cloned().collect());
    for doc in [holding_as_array, metadata_as_array] {
        let bytes = doc.to_string().into_bytes();
        assert!(decode_fast(&bytes, &opts).is_none(), "{doc}");
        assert!(decode_slow(&bytes, &opts).is_err(), "{doc}");
    }
}

//! Property tests: `decode_event` is total (any bytes → an event or a typed
//! error, never a panic), every event it returns is valid and round-trips,
//! and the factory only builds valid events with the right partition key.

use moonx_events::decode::{decode_event, DecodeError, DecodeOptions};
use moonx_events::partition::{partition_key, PRICES_KEY};
use moonx_events::validate::{ErrorCode, Validator};
use moonx_events::{
    CustomType, DataClassification, EventFactory, EventOptions, EventType, TypeRegistry, LEGACY_TOPICS,
    MAIN_TOPIC,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config;
use serde_json::{json, Map, Number, Value};
use std::path::Path;
use std::sync::OnceLock;

/// The "now" of the vectors (2025-11-24T16:10:00Z).
const NOW_MS: u64 = 1_764_000_600_000;

fn config(cases: u32) -> Config {
    // No regression files: they would land outside crates/events/tests.
    // PROPTEST_CASES overrides the count (e.g. for a long fuzzing run).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// A registry with two custom types, so that the custom paths are exercised too.
fn registry() -> &'static TypeRegistry {
    static R: OnceLock<TypeRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = TypeRegistry::new();
        r.register(CustomType::new("reward.granted", DataClassification::Confidential)).unwrap();
        r.register(CustomType::new("market.opened", DataClassification::Public)).unwrap();
        r
    })
}

/// Valid envelopes and legacy messages from `schema/vectors`, as mutation seeds.
fn templates() -> &'static [(Value, Option<&'static str>)] {
    static T: OnceLock<Vec<(Value, Option<&'static str>)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/vectors");
        let mut out = Vec::new();
        for sub in ["valid", "legacy"] {
            let mut files: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                let topic = v
                    .get("topic")
                    .and_then(Value::as_str)
                    .map(|t| &*Box::leak(t.to_owned().into_boxed_str()));
                out.push((v["input"].clone(), topic.or(Some(MAIN_TOPIC))));
            }
        }
        // A registered custom type.
        out.push((
            json!({"metadata": {"eventId": "01935f3c-9a00-7a00-8000-0000000000ff", "eventType": "reward.granted",
                "eventVersion": "1.0", "correlationId": "c", "timestamp": 1764000000000u64, "source": "rewards",
                "userId": "user-1", "dataClassification": "confidential", "partition": "user-1"},
                "data": {"userId": "user-1", "points": 10, "nested": {"a": [1, 2.5, null]}}}),
            Some(MAIN_TOPIC),
        ));
        assert!(out.len() >= 20, "the vectors were not found");
        out
    })
}

const TOPICS: [Option<&str>; 7] = [
    None,
    Some(MAIN_TOPIC),
    Some(LEGACY_TOPICS[0]),
    Some(LEGACY_TOPICS[1]),
    Some(LEGACY_TOPICS[2]),
    Some(LEGACY_TOPICS[3]),
    Some("some.other.topic"),
];

/// The heart of every property: decode with and without validation; never a
/// panic; a validated event re-validates and round-trips.
fn check_decode(bytes: &[u8], topic: Option<&str>, now_ms: Option<u64>) -> Result<(), TestCaseError> {
    let registry = registry();
    for validate in [true, false] {
        let opts = DecodeOptions { registry, validate, now_ms, topic };
        match decode_event(bytes, &opts) {
            Ok(event) if validate => {
                let doc = serde_json::to_value(&event).expect("an event serializes");
                let again = Validator { registry, now_ms }.validate(&doc);
                prop_assert!(again.is_ok(), "decoded {event:?} but its JSON {doc} is invalid: {:?}", again);
                let bytes = serde_json::to_vec(&event).unwrap();
                let opts = DecodeOptions { topic: Some(MAIN_TOPIC), ..opts };
                prop_assert_eq!(decode_event(&bytes, &opts), Ok(event), "an event does not round-trip");
            }
            Ok(_) => {}
            Err(e) => {
                prop_assert!(["invalid_json", "invalid_event", "legacy_unmigratable"].contains(&e.code()));
                if let DecodeError::Invalid(errs) = &e {
                    prop_assert!(!errs.is_empty(), "invalid_event without errors");
                }
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}

fn arb_now() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        6 => Just(Some(NOW_MS)),
        1 => Just(None),
        1 => any::<u64>().prop_map(Some),
        1 => Just(Some(u64::MAX)),
    ]
}

/// Strings that matter to the model, mixed with arbitrary ones.
fn arb_string() -> impl Strategy<Value = String> {
    let interesting: Vec<String> = [
        "", "price.updated", "order.created", "order.updated", "order.cancelled", "portfolio.updated",
        "trade.executed", "trade.failed", "user.connected", "user.disconnected", "system.health_check",
        "system.error", "reward.granted", "market.opened", "public", "internal", "confidential", "restricted",
        "01935f3c-9a00-7a00-8000-000000000001", "1.0", "3000.00", "-1.25", "1e5", "user-456", "market",
        "pending", "healthy", "critical", "price_update", "order_created", "portfolio", "trade", "1764000000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![select(interesting), "\\PC{0,12}", "[0-9.-]{0,8}"]
}

fn arb_key() -> impl Strategy<Value = String> {
    let keys: Vec<String> = [
        "metadata", "data", "type", "timestamp", "eventId", "eventType", "eventVersion", "correlationId",
        "causationId", "source", "userId", "dataClassification", "partition", "migratedFrom", "token", "chainId",
        "price", "priceUsd", "change24h", "volume24h", "orderId", "status", "holdings", "details",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![3 => select(keys), 1 => "[a-zA-Z]{1,8}"]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(1_764_000_000_000u64), Just(1_764_000_000), Just(0), Just(u64::MAX)].prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every JSON Pointer into `v`, the root ("") included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                pointers(child, format!("{at}/{}", escape(k)), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    AddField(Index, String, Value),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), arb_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<Index>(), arb_key(), arb_json()).prop_map(|(i, k, v)| Mutation::AddField(i, k, v)),
    ]
}

fn apply(doc: &mut Value, m: &Mutation) {
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    match m {
        Mutation::Remove(i) => {
            let p = i.get(&ptrs).as_str();
            let Some((parent, last)) = p.rsplit_once('/') else { return };
            let last = last.replace("~1", "/").replace("~0", "~");
            match doc.pointer_mut(parent) {
                Some(Value::Object(o)) => {
                    o.remove(&last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        Mutation::Replace(i, v) => {
            if let Some(slot) = doc.pointer_mut(i.get(&ptrs).as_str()) {
                *slot = v.clone();
            }
        }
        Mutation::AddField(i, k, v) => {
            if let Some(Value::Object(o)) = doc.pointer_mut(i.get(&ptrs).as_str()) {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        topic in select(TOPICS.to_vec()),
        now in arb_now(),
    ) {
        check_decode(&bytes, topic, now)?;
    }

    #[test]
    fn arbitrary_json_never_panics(doc in arb_json(), topic in select(TOPICS.to_vec()), now in arb_now()) {
        check_decode(&serde_json::to_vec(&doc).unwrap(), topic, now)?;
    }

    #[test]
    fn envelope_shaped_json_never_panics(
        metadata in prop::collection::btree_map(arb_key(), arb_json(), 0..12),
        data in arb_json(),
        topic in select(TOPICS.to_vec()),
        now in arb_now(),
    ) {
        let doc = json!({"metadata": metadata, "data": data});
        check_decode(&serde_json::to_vec(&doc).unwrap(), topic, now)?;
    }

    #[test]
    fn mutated_vectors_never_panic(
        seed in any::<Index>(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        other_topic in prop::option::weighted(0.2, select(TOPICS.to_vec())),
        now in arb_now(),
    ) {
        let (template, topic) = seed.get(templates());
        let mut doc = template.clone();
        for m in &mutations {
            apply(&mut doc, m);
        }
        check_decode(&serde_json::to_vec(&doc).unwrap(), other_topic.unwrap_or(*topic), now)?;
    }

    #[test]
    fn corrupted_bytes_of_vectors_never_panic(
        seed in any::<Index>(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0..3u8), 1..6),
        truncate in prop::option::weighted(0.3, any::<Index>()),
        now in arb_now(),
    ) {
        let (template, topic) = seed.get(templates());
        let mut bytes = serde_json::to_vec(template).unwrap();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len() + 1));
        }
        check_decode(&bytes, *topic, now)?;
    }
}

// ------------------------------------------------------------------ factory

fn decimal() -> impl Strategy<Value = String> {
    "[0-9]{1,15}(\\.[0-9]{1,10})?"
}

fn signed_decimal() -> impl Strategy<Value = String> {
    "-?[0-9]{1,6}(\\.[0-9]{1,4})?"
}

fn user_id() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,20}"
}

fn arb_price() -> impl Strategy<Value = Value> {
    ("[A-Z]{1,6}", any::<u64>(), decimal(), decimal(), signed_decimal(), decimal()).prop_map(
        |(token, chain_id, price, price_usd, change, volume)| {
            json!({"token": token, "chainId": chain_id, "price": price, "priceUsd": price_usd,
                   "change24h": change, "volume24h": volume})
        },
    )
}

fn arb_order(user: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    (
        "order-[0-9]{1,6}",
        user,
        ("[A-Z]{2,5}", "[A-Z]{2,5}"),
        (decimal(), decimal()),
        0u64..100_000,
        select(vec!["market", "limit", "stop_loss", "take_profit"]),
        select(vec!["pending", "open", "partially_filled", "filled", "cancelled", "failed", "expired"]),
        prop::option::of(decimal()),
    )
        .prop_map(|(order_id, user, (tin, tout), (ain, aout), chain, otype, status, limit)| {
            let mut d = json!({"orderId": order_id, "userId": user, "tokenIn": tin, "tokenOut": tout,
                "amountIn": ain, "amountOutExpected": aout, "chainId": chain, "orderType": otype, "status": status});
            if let Some(l) = limit {
                d["limitPrice"] = Value::String(l);
            }
            d
        })
}

fn revalidate_and_round_trip(f: &EventFactory, event: &moonx_events::Event) -> Result<(), TestCaseError> {
    let doc = serde_json::to_value(event).unwrap();
    let check = Validator::new(f.registry()).validate(&doc);
    prop_assert!(check.is_ok(), "factory output {doc} is invalid: {:?}", check);
    let opts = DecodeOptions::new(f.registry());
    prop_assert_eq!(decode_event(&serde_json::to_vec(event).unwrap(), &opts), Ok(event.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn factory_prices_are_valid_and_keyed_by_prices(data in arb_price(), raise in any::<bool>()) {
        let f = EventFactory::new("price-service");
        let options = EventOptions {
            classification: raise.then_some(DataClassification::Internal),
            ..Default::default()
        };
        let e = f.create_from_json(&EventType::PriceUpdated, data.clone(), options);
        prop_assert!(e.is_ok(), "{data}: {:?}", e);
        let e = e.unwrap();
        prop_assert_eq!(&e.metadata.partition, PRICES_KEY);
        prop_assert_eq!(e.metadata.partition.clone(), partition_key(&EventType::PriceUpdated, None, f.registry()));
        prop_assert_eq!(e.metadata.user_id.as_deref(), None);
        let expected = if raise { DataClassification::Internal } else { DataClassification::Public };
        prop_assert_eq!(e.metadata.data_classification, expected);
        prop_assert_eq!(serde_json::to_value(&e.data).unwrap(), data);
        revalidate_and_round_trip(&f, &e)?;
    }

    #[test]
    fn factory_orders_are_valid_and_keyed_by_user(
        data in arb_order(user_id()),
        raise in any::<bool>(),
        event_type in select(vec![EventType::OrderCreated, EventType::OrderUpdated, EventType::OrderCancelled]),
    ) {
        let f = EventFactory::new("order-service");
        let user = data["userId"].as_str().unwrap().to_owned();
        // order.created's data satisfies order.updated and order.cancelled too
        // (every field they require is there; extra fields are allowed).
        let options = EventOptions {
            classification: raise.then_some(DataClassification::Restricted),
            ..Default::default()
        };
        let e = f.create_from_json(&event_type, data.clone(), options);
        prop_assert!(e.is_ok(), "{data}: {:?}", e);
        let e = e.unwrap();
        prop_assert_eq!(e.metadata.user_id.as_deref(), Some(user.as_str()));
        prop_assert_eq!(&e.metadata.partition, &user);
        prop_assert_eq!(e.metadata.partition.clone(), partition_key(&event_type, Some(&user), f.registry()));
        let expected = if raise { DataClassification::Restricted } else { DataClassification::Confidential };
        prop_assert_eq!(e.metadata.data_classification, expected);
        prop_assert_eq!(&e.metadata.event_type, &event_type);
        revalidate_and_round_trip(&f, &e)?;
    }

    #[test]
    fn factory_refuses_a_foreign_owner_or_a_downgrade(
        data in arb_order(user_id()),
        other in user_id(),
        downgrade in any::<bool>(),
    ) {
        let f = EventFactory::default();
        let user = data["userId"].as_str().unwrap().to_owned();
        prop_assume!(other != user);
        let options = if downgrade {
            EventOptions { classification: Some(DataClassification::Internal), ..Default::default() }
        } else {
            EventOptions::user(other)
        };
        let errs = f.create_from_json(&EventType::OrderCreated, data, options).unwrap_err();
        let want = if downgrade { ErrorCode::ClassificationDowngrade } else { ErrorCode::OwnerMismatch };
        prop_assert!(errs.has(want), "{errs}");
        prop_assert_eq!(errs.len(), 1, "{}", errs);
    }

    #[test]
    fn factory_portfolios_are_restricted_and_keyed_by_user(
        user in user_id(),
        holdings in prop::collection::vec(("[A-Z]{1,5}", any::<u64>(), decimal(), decimal()), 0..5),
        total in decimal(),
        change in prop::option::of(signed_decimal()),
    ) {
        let f = EventFactory::new("portfolio-service");
        let holdings: Vec<Value> = holdings
            .into_iter()
            .map(|(t, c, b, v)| json!({"token": t, "chainId": c, "balance": b, "valueUsd": v}))
            .collect();
        let mut data = json!({"userId": user, "totalValueUsd": total, "holdings": holdings});
        if let Some(c) = change {
            data["change24h"] = Value::String(c);
        }
        let e = f.create_from_json(&EventType::PortfolioUpdated, data, EventOptions::default()).unwrap();
        prop_assert_eq!(e.metadata.data_classification, DataClassification::Restricted);
        prop_assert_eq!(&e.metadata.partition, &user);
        revalidate_and_round_trip(&f, &e)?;
    }
}

// ------------------------------------------------------------ deep nesting

fn all_options() -> Vec<(bool, Option<&'static str>)> {
    let mut v = Vec::new();
    for validate in [true, false] {
        for topic in TOPICS {
            v.push((validate, topic));
        }
    }
    v
}

fn assert_invalid_json(bytes: &[u8], what: &str) {
    for (validate, topic) in all_options() {
        let opts = DecodeOptions { registry: registry(), validate, now_ms: Some(NOW_MS), topic };
        match decode_event(bytes, &opts) {
            Err(e @ DecodeError::InvalidJson(_)) => assert_eq!(e.code(), "invalid_json"),
            other => panic!("{what} (validate {validate}, topic {topic:?}): expected invalid_json, got {other:?}"),
        }
    }
}

#[test]
fn ten_thousand_nested_arrays_are_refused_not_crashed() {
    let n = 10_000;
    let doc = format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_invalid_json(doc.as_bytes(), "10,000 nested arrays");
    assert_invalid_json("[".repeat(n).as_bytes(), "10,000 unclosed arrays");
}

#[test]
fn ten_thousand_nested_objects_are_refused_not_crashed() {
    let n = 10_000;
    let doc = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    assert_invalid_json(doc.as_bytes(), "10,000 nested objects");
}

#[test]
fn deep_nesting_inside_an_envelope_or_legacy_message() {
    let n = 10_000;
    let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let envelope = format!(
        r#"{{"metadata":{{"eventId":"01935f3c-9a00-7a00-8000-000000000001","eventType":"reward.granted","eventVersion":"1.0","correlationId":"c","timestamp":1764000000000,"source":"s","userId":"u","dataClassification":"confidential","partition":"u"}},"data":{{"userId":"u","deep":{deep}}}}}"#
    );
    assert_invalid_json(envelope.as_bytes(), "an envelope with 10,000 nested arrays in data");
    let legacy = format!(r#"{{"type":"price","timestamp":1764000000000,"token":"ETH","x":{deep}}}"#);
    assert_invalid_json(legacy.as_bytes(), "a legacy message with 10,000 nested arrays");

    // Within serde_json's limit (128), nesting is just data: a registered
    // custom type keeps it, and the event round-trips.
    let shallow = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let ok = envelope.replace(&deep, &shallow);
    check_decode(ok.as_bytes(), Some(MAIN_TOPIC), Some(NOW_MS)).unwrap();
    let opts = DecodeOptions { registry: registry(), validate: true, now_ms: Some(NOW_MS), topic: None };
    let event = decode_event(ok.as_bytes(), &opts).expect("100 levels are fine");
    assert_eq!(event.metadata.event_type, EventType::parse("reward.granted"));
    let legacy_ok = format!(
        r#"{{"type":"price","timestamp":1764000000000,"token":"ETH","chainId":1,"price":"1","priceUsd":"1","change24h":"0","volume24h":"0","x":{shallow}}}"#
    );
    let opts = DecodeOptions { topic: Some(LEGACY_TOPICS[0]), ..opts };
    let event = decode_event(legacy_ok.as_bytes(), &opts).expect("a legacy message with 100 levels migrates");
    assert_eq!(event.metadata.migrated_from.as_deref(), Some(LEGACY_TOPICS[0]));
}

#[test]
fn empty_and_non_utf8_input_is_invalid_json() {
    assert_invalid_json(b"", "empty input");
    assert_invalid_json(b"   ", "whitespace");
    assert_invalid_json(&[0xff, 0xfe, b'{', b'}'], "non-UTF-8 bytes");
    assert_invalid_json(b"{\"metadata\": \xff}", "non-UTF-8 inside JSON");
}

#[test]
fn an_extreme_now_does_not_panic() {
    // now + 5 min must not overflow, whatever "now" a caller passes.
    for (template, topic) in templates() {
        let bytes = serde_json::to_vec(template).unwrap();
        for now in [Some(u64::MAX), Some(u64::MAX - 1), Some(0), None] {
            check_decode(&bytes, *topic, now).unwrap();
        }
    }
}

//! The steady stream of a chaos run and its ledger: every record the broker
//! acknowledged (a delivery report, not just a send) is written down with
//! its owner (a user, or `prices` for everyone subscribed there) and its
//! channel, so every event can be looked for at every entitled client.
//! Poison records (when asked) are counted by kind; they must end in the DLQ,
//! never at a client.

use moonx_events::{EventFactory, EventOptions, EventType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who may see an event, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Prices,
    User(usize, &'static str),
}

pub struct Entry {
    pub owner: Owner,
    /// When the broker acknowledged it.
    pub acked: Instant,
}

#[derive(Default)]
pub struct Ledger {
    pub events: Mutex<HashMap<u128, Entry>>,
    pub poison: Mutex<HashMap<&'static str, u64>>,
    pub failed_sends: AtomicU64,
}

/// Kinds of poison record, cycled through.
pub const POISON_KINDS: [&str; 6] = ["not_json", "empty", "unknown_type", "invalid_schema", "bad_utf8", "large"];
/// Below the topic's `max.message.bytes` (1,000,000) with room for the batch header.
pub const LARGE_POISON_BYTES: usize = 990_000;

pub struct Maker {
    factory: EventFactory,
    types: [EventType; 5],
    seq: u64,
}

impl Maker {
    pub fn new() -> Self {
        Maker {
            factory: EventFactory::new("moonx-bench-chaos"),
            types: ["price.updated", "order.created", "order.updated", "trade.executed", "portfolio.updated"].map(EventType::parse),
            seq: 0,
        }
    }

    /// An event of type index `t` (0 price, 1–2 orders, 3 trades, 4
    /// portfolio) for `user`: (key, payload, id, owner).
    pub fn make(&mut self, t: usize, user: usize) -> (String, Vec<u8>, u128, Owner) {
        self.seq += 1;
        let seq = self.seq;
        let u = crate::events::user_id(user);
        let (data, owner) = match t {
            0 => {
                let token = crate::events::PRICE_TOKENS[(seq % 5) as usize];
                let p = format!("{}.{:02}", 3000 + seq % 100, seq % 100);
                (json!({"token": token, "chainId": 1, "price": p, "priceUsd": p, "change24h": "-1.28", "volume24h": "1284537.5"}), Owner::Prices)
            }
            1 => (
                json!({"orderId": format!("o-{seq}"), "userId": u, "tokenIn": "ETH", "tokenOut": "USDT", "amountIn": "1.5",
                       "amountOutExpected": "4532.10", "chainId": 1, "orderType": "market", "status": "pending"}),
                Owner::User(user, "orders"),
            ),
            2 => (
                json!({"orderId": format!("o-{seq}"), "userId": u, "status": "filled", "previousStatus": "open", "filledAmount": "1.5", "amountOut": "4530.02"}),
                Owner::User(user, "orders"),
            ),
            3 => (
                json!({"tradeId": format!("t-{seq}"), "orderId": format!("o-{seq}"), "userId": u, "tokenIn": "ETH", "tokenOut": "USDT",
                       "amountIn": "1.5", "amountOut": "4530.02", "price": "3020.01", "chainId": 1,
                       "txHash": "0x9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b7d9f1e", "fee": "0.003"}),
                Owner::User(user, "trades"),
            ),
            _ => (
                json!({"userId": u, "totalValueUsd": "12840.55", "change24h": "0.012",
                       "holdings": [{"token": "ETH", "chainId": 1, "balance": "3.2", "valueUsd": "9664.03"}]}),
                Owner::User(user, "portfolio"),
            ),
        };
        let user_opt = matches!(owner, Owner::User(..)).then(|| u.clone());
        let options = EventOptions { user_id: user_opt, source: Some("moonx-bench-chaos".into()), ..EventOptions::default() };
        let e = self.factory.create_from_json(&self.types[t], data, options).expect("the chaos events are valid");
        (e.metadata.partition.clone(), e.to_json_bytes(), e.metadata.event_id.as_u128(), owner)
    }
}

/// A poison record of `kind`: (key, payload).
pub fn poison(kind: &str, n: u64) -> (String, Vec<u8>) {
    let key = format!("poison-{n}");
    let payload = match kind {
        "not_json" => b"this is not json {".to_vec(),
        "empty" => Vec::new(),
        "unknown_type" => json!({"metadata": {"eventId": uuid::Uuid::new_v4().to_string(), "eventType": "no.such.type", "eventVersion": "1.0",
                                 "timestamp": 1, "source": "chaos", "partition": key, "dataClassification": "public"}, "data": {}})
            .to_string()
            .into_bytes(),
        "invalid_schema" => br#"{"metadata":{"eventType":"order.created"},"data":{"userId":7}}"#.to_vec(),
        "bad_utf8" => vec![b'{', 0xff, 0xfe, b'}'],
        _ => {
            // Incompressible, not JSON: a large record the topic still accepts.
            let mut rng = SmallRng::seed_from_u64(n);
            (0..LARGE_POISON_BYTES).map(|_| rng.random_range(b'a'..=b'z')).collect()
        }
    };
    (key, payload)
}

pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(crate::kafka::base_config(brokers)
        .set("linger.ms", "2")
        .set("enable.idempotence", "true")
        .set("compression.type", "none")
        .set("message.max.bytes", "1048576")
        .set("message.timeout.ms", "180000")
        .create()?)
}

/// Sends one record; its id goes into the ledger once the broker has it.
pub fn send(p: &FutureProducer, ledger: &Arc<Ledger>, topic: &str, key: String, payload: Vec<u8>, id: Option<(u128, Owner)>, poison: Option<&'static str>) {
    let (p, ledger, topic) = (p.clone(), ledger.clone(), topic.to_owned());
    tokio::spawn(async move {
        let r = p.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(180)).await;
        match r {
            Ok(_) => {
                if let Some((id, owner)) = id {
                    ledger.events.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Entry { owner, acked: Instant::now() });
                }
                if let Some(kind) = poison {
                    *ledger.poison.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_insert(0) += 1;
                }
            }
            Err(_) => {
                ledger.failed_sends.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// The steady stream: `rate` events/s (`price_share` prices, the rest user
/// events of `users` users), and `poison_share` poison records on top,
/// until `stop`. Large poison records at most one a second.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    p: FutureProducer,
    ledger: Arc<Ledger>,
    topic: String,
    rate: f64,
    users: usize,
    price_share: f64,
    poison_share: f64,
    stop: Arc<AtomicBool>,
) {
    let mut maker = Maker::new();
    let mut rng = SmallRng::seed_from_u64(42);
    let start = Instant::now();
    let (mut n, mut poisoned) = (0u64, 0u64);
    let mut last_large = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while n < due {
            n += 1;
            let t = if rng.random_bool(price_share) { 0 } else { rng.random_range(1..5) };
            let (key, payload, id, owner) = maker.make(t, rng.random_range(0..users));
            send(&p, &ledger, &topic, key, payload, Some((id, owner)), None);
            if poison_share > 0.0 && rng.random_bool(poison_share) {
                let mut kind = POISON_KINDS[(poisoned % POISON_KINDS.len() as u64) as usize];
                if kind == "large" {
                    if last_large.elapsed() < Duration::from_secs(1) {
                        kind = "not_json";
                    } else {
                        last_large = Instant::now();
                    }
                }
                poisoned += 1;
                let (key, payload) = poison(kind, poisoned);
                send(&p, &ledger, &topic, key, payload, None, Some(kind));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_are_valid_and_owned_where_the_gateway_routes_them_and_poison_is_not() {
        let registry = moonx_events::TypeRegistry::new();
        let opts = moonx_events::decode::DecodeOptions::new(&registry);
        let mut maker = Maker::new();
        for t in 0..5 {
            let (key, payload, id, owner) = maker.make(t, 7);
            let e = moonx_events::decode_event(&payload, &opts).expect("valid");
            assert_eq!(e.metadata.event_id.as_u128(), id);
            assert_eq!(e.metadata.partition, key);
            let ty = e.metadata.event_type.to_string();
            let expected = match ty.split('.').next() {
                Some("price") => Owner::Prices,
                Some("order") => Owner::User(7, "orders"),
                Some("trade") => Owner::User(7, "trades"),
                _ => Owner::User(7, "portfolio"),
            };
            assert_eq!(owner, expected, "{ty}");
        }
        for (n, kind) in POISON_KINDS.iter().enumerate() {
            let (_, payload) = poison(kind, n as u64);
            assert!(moonx_events::decode_event(&payload, &opts).is_err(), "{kind} decoded");
            if *kind == "large" {
                assert_eq!(payload.len(), LARGE_POISON_BYTES);
            }
        }
    }
}

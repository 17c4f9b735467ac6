//! The events the load tool produces, built with `moonx_events::EventFactory`
//! (so every one is valid and carries its partition key), each with a fresh
//! v7 `eventId` (connections drop repeats by id, so no event is reused).
//!
//! `correlationId` carries the production instant in microseconds
//! (`bench-<unix µs>`), which gives a sub-millisecond latency beside the one
//! from `metadata.timestamp` (whole milliseconds).

use moonx_events::{EventFactory, EventOptions, EventType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub const PRICE_TOKENS: [&str; 5] = ["ETH", "WBTC", "USDT", "BNB", "SOL"];

/// What to produce.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Share of `price.updated` among the events (the rest are user events).
    pub price_share: f64,
    /// Users of the user events (`user-0` … `user-{n-1}`); 0: none.
    pub users: usize,
    /// Share of the user events that go to the "hot" 10 % of the users
    /// (0: uniform).
    pub hot_share: f64,
}

impl Mix {
    pub fn prices() -> Self {
        Mix { price_share: 1.0, users: 0, hot_share: 0.0 }
    }
}

pub struct Produced {
    pub key: String,
    pub payload: Vec<u8>,
    /// Centrifugo's `centrifugo-channels` record header (publication data
    /// mode): set only when the generator was asked for it, so the records
    /// the other targets read stay exactly as before.
    pub centrifugo_channel: Option<String>,
}

/// The Centrifugo channel of an event: `prices` for prices, the
/// user-limited channel `<channel>#<userId>` (only that user may subscribe)
/// for a user event, `<channel>` being the one moonx-ws routes it to.
pub fn centrifugo_channel(event_type: &str, user: Option<&str>) -> String {
    let channel = match event_type {
        "order.created" | "order.updated" => "orders",
        "trade.executed" => "trades",
        "portfolio.updated" => "portfolio",
        _ => "prices",
    };
    match user {
        Some(u) if channel != "prices" => format!("{channel}#{u}"),
        _ => channel.to_owned(),
    }
}

pub struct Generator {
    factory: EventFactory,
    rng: SmallRng,
    mix: Mix,
    seq: u64,
    types: [EventType; 5],
    centrifugo_headers: bool,
}

pub fn user_id(i: usize) -> String {
    format!("user-{i}")
}

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Generator {
    pub fn new(mix: Mix, seed: u64) -> Self {
        Generator {
            factory: EventFactory::new("moonx-bench"),
            rng: SmallRng::seed_from_u64(seed),
            mix,
            seq: 0,
            types: [
                EventType::parse("price.updated"),
                EventType::parse("order.created"),
                EventType::parse("order.updated"),
                EventType::parse("trade.executed"),
                EventType::parse("portfolio.updated"),
            ],
            centrifugo_headers: false,
        }
    }

    /// Adds the `centrifugo-channels` header to every record (for a run
    /// whose consumer is Centrifugo).
    pub fn with_centrifugo_headers(mut self, on: bool) -> Self {
        self.centrifugo_headers = on;
        self
    }

    fn pick_user(&mut self) -> String {
        let n = self.mix.users.max(1);
        let hot = (n / 10).max(1);
        let i = if self.rng.random_bool(self.mix.hot_share.clamp(0.0, 1.0)) {
            self.rng.random_range(0..hot)
        } else {
            self.rng.random_range(0..n)
        };
        user_id(i)
    }

    pub fn next(&mut self) -> Produced {
        self.seq += 1;
        let seq = self.seq;
        let price = self.mix.users == 0 || self.rng.random_bool(self.mix.price_share.clamp(0.0, 1.0));
        let (event_type, data, user) = if price {
            let token = PRICE_TOKENS[(seq % PRICE_TOKENS.len() as u64) as usize];
            let cents = 300_000 + (seq % 10_000);
            let p = format!("{}.{:02}", cents / 100, cents % 100);
            (
                &self.types[0],
                json!({"token": token, "chainId": 1, "price": p, "priceUsd": p, "change24h": "-1.28", "volume24h": "1284537.5"}),
                None,
            )
        } else {
            let user = self.pick_user();
            let order_id = format!("o-{seq}");
            // Orders 50 %, trades 30 %, portfolio 20 %.
            let roll: f64 = self.rng.random();
            if roll < 0.25 {
                (
                    &self.types[1],
                    json!({"orderId": order_id, "userId": user, "tokenIn": "ETH", "tokenOut": "USDT", "amountIn": "1.5",
                           "amountOutExpected": "4532.10", "chainId": 1, "orderType": "market", "status": "pending"}),
                    Some(user),
                )
            } else if roll < 0.5 {
                (
                    &self.types[2],
                    json!({"orderId": order_id, "userId": user, "status": "filled", "previousStatus": "open",
                           "filledAmount": "1.5", "amountOut": "4530.02"}),
                    Some(user),
                )
            } else if roll < 0.8 {
                (
                    &self.types[3],
                    json!({"tradeId": format!("t-{seq}"), "orderId": order_id, "userId": user, "tokenIn": "ETH", "tokenOut": "USDT",
                           "amountIn": "1.5", "amountOut": "4530.02", "price": "3020.01", "chainId": 1,
                           "txHash": "0x9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b7d9f1e", "fee": "0.003"}),
                    Some(user),
                )
            } else {
                (
                    &self.types[4],
                    json!({"userId": user, "totalValueUsd": "12840.55", "change24h": "0.012",
                           "holdings": [{"token": "ETH", "chainId": 1, "balance": "3.2", "valueUsd": "9664.03"},
                                        {"token": "USDT", "chainId": 1, "balance": "3176.52", "valueUsd": "3176.52"}]}),
                    Some(user),
                )
            }
        };
        let options = EventOptions {
            user_id: user,
            correlation_id: Some(format!("bench-{}", unix_micros())),
            source: Some("moonx-bench".into()),
            ..EventOptions::default()
        };
        let centrifugo_channel = self.centrifugo_headers.then(|| centrifugo_channel(event_type.as_str(), options.user_id.as_deref()));
        let event = self.factory.create_from_json(event_type, data, options).expect("the load tool's events are valid");
        Produced { key: event.metadata.partition.clone(), payload: event.to_json_bytes(), centrifugo_channel }
    }
}

/// The two latencies of a received event frame or record, in microseconds,
/// from its `metadata.timestamp` (ms) and from the `bench-<µs>`
/// correlationId, against `now_us`. `None` when the text has neither.
pub fn latencies_us(text: &[u8], now_us: u64) -> (Option<u64>, Option<u64>) {
    let ts = find_number(text, b"\"timestamp\":").map(|ms| now_us.saturating_sub(ms * 1000));
    let precise = find_number(text, b"\"correlationId\":\"bench-").map(|us| now_us.saturating_sub(us));
    (ts, precise)
}

/// Position of `needle` (at least 2 bytes) in `hay`: scans for its second
/// byte (the first is a quote, frequent in JSON), then compares.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let key = needle[1];
    let mut i = 1;
    while i < hay.len() {
        let p = hay[i..].iter().position(|&b| b == key)?;
        i += p;
        if hay[i - 1..].starts_with(needle) {
            return Some(i - 1);
        }
        i += 1;
    }
    None
}

fn find_number(text: &[u8], needle: &[u8]) -> Option<u64> {
    let at = find(text, needle)? + needle.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_headers_only_when_asked_and_user_events_go_to_user_limited_channels() {
        let mix = Mix { price_share: 0.5, users: 10, hot_share: 0.0 };
        assert!((0..50).all(|_| Generator::new(mix.clone(), 3).next().centrifugo_channel.is_none()));
        let mut g = Generator::new(mix, 3).with_centrifugo_headers(true);
        let (mut prices, mut users) = (0, 0);
        for _ in 0..200 {
            let p = g.next();
            let channel = p.centrifugo_channel.expect("asked for");
            let text = String::from_utf8(p.payload).unwrap();
            if text.contains("\"price.updated\"") {
                assert_eq!(channel, "prices");
                prices += 1;
            } else {
                let (name, user) = channel.split_once('#').expect("user-limited");
                assert!(["orders", "trades", "portfolio"].contains(&name), "{channel}");
                assert!(text.contains(&format!("\"userId\":\"{user}\"")), "{channel} for {text}");
                users += 1;
            }
        }
        assert!(prices > 0 && users > 0);
    }

    #[test]
    fn events_are_valid_and_carry_their_times() {
        let mut g = Generator::new(Mix { price_share: 0.3, users: 100, hot_share: 0.5 }, 7);
        for _ in 0..200 {
            let p = g.next();
            let registry = moonx_events::TypeRegistry::new();
            let opts = moonx_events::decode::DecodeOptions::new(&registry);
            let e = moonx_events::decode_event(&p.payload, &opts).expect("valid");
            assert_eq!(e.metadata.partition, p.key);
            let now = unix_micros();
            let (ts, precise) = latencies_us(&p.payload, now);
            assert!(ts.unwrap() < 2_000_000 && precise.unwrap() < 2_000_000);
        }
    }
}

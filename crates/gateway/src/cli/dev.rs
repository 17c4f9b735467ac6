//! `moonx-ws dev`: the whole gateway on the embedded bus, no Kafka needed.
//! With `--demo`, a feed of realistic price updates (several tokens and
//! chains) and the orders, trades and portfolio of a demo user. Prints the
//! URLs to open and ready-to-use JWTs.

use crate::config::DevArgs;
use crate::deliver::auth::{sign, Claims};
use crate::server::{Gateway, GatewayConfig, Running, SourceConfig};
use crate::source::publish::Publisher;
use moonx_events::payload::*;
use moonx_events::{Decimal, EventFactory, EventOptions};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const DEMO_USER: &str = "demo-user";
pub const DEMO_ADMIN: &str = "demo-admin";

pub async fn run(mut args: DevArgs) -> anyhow::Result<ExitCode> {
    let common = &mut args.common;
    let secret = common.ws.jwt_secret.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string()).clone();
    if common.publish.publish_api_keys.is_empty() {
        common.publish.publish_api_keys.push(format!("dev-{}", uuid::Uuid::new_v4().simple()));
    }
    let api_key = common.publish.publish_api_keys[0].clone();
    let (demo, rate) = (args.demo, args.demo_rate.max(1));
    let config = GatewayConfig { source: SourceConfig::Embedded { instance_id: args.instance_id }, common: args.common };
    let shutdown = crate::server::shutdown_on_signals();
    let feed_stop = shutdown.clone();
    Gateway::new(config)
        .run_with(shutdown, move |running: Running| {
            print_banner(&running, &secret, &api_key, demo);
            if let (true, Some(publisher)) = (demo, running.publisher) {
                tokio::spawn(demo_feed(publisher, rate, feed_stop));
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn token(secret: &str, user: &str, roles: &[&str]) -> String {
    let exp = moonx_events::validate::now_ms() / 1000 + 7 * 24 * 3600;
    sign(secret, &Claims { sub: user.into(), roles: roles.iter().map(|r| r.to_string()).collect(), exp })
}

fn print_banner(running: &Running, secret: &str, api_key: &str, demo: bool) {
    let addr = running.addr;
    let user = token(secret, DEMO_USER, &[]);
    let admin = token(secret, DEMO_ADMIN, &["admin"]);
    println!(
        "\nmoonx-ws dev: the whole gateway on an embedded bus (no Kafka){}\n\n  \
         dashboard   http://{addr}/?token={admin}\n  \
         websocket   ws://{addr}/ws\n  \
         health      http://{addr}/health\n  \
         metrics     http://{addr}/metrics\n\n  \
         demo user JWT ({DEMO_USER}):\n    {user}\n  \
         admin JWT ({DEMO_ADMIN}, roles [admin]):\n    {admin}\n\n  \
         publish an event:\n    curl -s -H 'Authorization: Bearer {api_key}' -H 'content-type: application/json' \\\n      \
         -d '{{\"type\":\"price.updated\",\"data\":{{\"token\":\"ETH\",\"chainId\":1,\"price\":\"3000.00\",\"priceUsd\":\"3000.00\",\"change24h\":\"0.01\",\"volume24h\":\"1000000\"}}}}' \\\n      \
         http://{addr}/api/events\n\n  \
         watch it:   npx wscat -c 'ws://{addr}/ws?token={user}'  then  {{\"type\":\"subscribe\",\"channel\":\"orders\"}}\n",
        if demo { ", with the demo feed" } else { "" }
    );
}

/// A tiny deterministic PRNG: the demo needs variety, not cryptography.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dec(v: f64, places: usize) -> Decimal {
    Decimal::parse(&format!("{:.*}", places, v.max(0.0))).expect("formatted decimals parse")
}

fn signed(v: f64) -> Decimal {
    Decimal::parse(&format!("{v:.4}")).expect("formatted decimals parse")
}

struct Market {
    token: &'static str,
    chain_id: u64,
    price: f64,
    open: f64,
    volume: f64,
}

/// Price updates at `rate` per second over several tokens and chains, and
/// every few seconds an order of the demo user going through its life.
pub async fn demo_feed(publisher: Publisher, rate: u32, stop: CancellationToken) {
    let factory = EventFactory::new("demo-feed");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ moonx_events::validate::now_ms());
    let mut markets: Vec<Market> = [("ETH", 1, 3000.0), ("ETH", 137, 3001.0), ("WBTC", 1, 65000.0), ("USDT", 1, 1.0), ("USDT", 56, 1.0), ("BNB", 56, 600.0), ("SOL", 1, 150.0)]
        .into_iter()
        .map(|(token, chain_id, price)| Market { token, chain_id, price, open: price, volume: 1_000_000.0 })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut n: u64 = 0;
    let mut holdings_eth = 2.0f64;
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
        n += 1;
        let i = (rng.next() % markets.len() as u64) as usize;
        let m = &mut markets[i];
        m.price *= 1.0 + (rng.unit() - 0.5) * 0.004;
        m.volume += rng.unit() * 5000.0;
        let places = if m.price < 10.0 { 4 } else { 2 };
        let price = PriceUpdated {
            token: m.token.into(),
            chain_id: m.chain_id,
            price: dec(m.price, places),
            price_usd: dec(m.price, places),
            change24h: signed((m.price - m.open) / m.open),
            volume24h: dec(m.volume, 0),
        };
        let eth_price = markets[0].price;
        let mut events = vec![factory.create(price, EventOptions::default())];
        // Every ~3 s, an order of the demo user and what follows from it.
        if n.is_multiple_of(3 * rate as u64) {
            let id = format!("demo-order-{n}");
            let amount = 0.1 + (rng.unit() * 0.9);
            let out = amount * eth_price;
            let user = || EventOptions::user(DEMO_USER);
            events.push(factory.create(
                OrderCreated {
                    order_id: id.clone(),
                    user_id: DEMO_USER.into(),
                    token_in: "ETH".into(),
                    token_out: "USDT".into(),
                    amount_in: dec(amount, 4),
                    amount_out_expected: dec(out, 2),
                    chain_id: 1,
                    order_type: OrderType::Market,
                    status: OrderStatus::Pending,
                    limit_price: None,
                },
                user(),
            ));
            if rng.unit() < 0.85 {
                holdings_eth = (holdings_eth - amount).max(0.0) + 0.5;
                events.push(factory.create(
                    OrderUpdated {
                        order_id: id.clone(),
                        user_id: DEMO_USER.into(),
                        status: OrderStatus::Filled,
                        previous_status: Some(OrderStatus::Pending),
                        filled_amount: Some(dec(amount, 4)),
                        amount_out: Some(dec(out * 0.999, 2)),
                        tx_hash: Some(format!("0x{:064x}", rng.next())),
                    },
                    user(),
                ));
                events.push(factory.create(
                    TradeExecuted {
                        trade_id: format!("demo-trade-{n}"),
                        order_id: id,
                        user_id: DEMO_USER.into(),
                        token_in: "ETH".into(),
                        token_out: "USDT".into(),
                        amount_in: dec(amount, 4),
                        amount_out: dec(out * 0.999, 2),
                        price: dec(eth_price, 2),
                        chain_id: 1,
                        tx_hash: format!("0x{:064x}", rng.next()),
                        fee: Some(dec(out * 0.001, 2)),
                    },
                    user(),
                ));
                events.push(factory.create(
                    PortfolioUpdated {
                        user_id: DEMO_USER.into(),
                        total_value_usd: dec(holdings_eth * eth_price + 5000.0, 2),
                        holdings: vec![
                            Holding { token: "ETH".into(), chain_id: 1, balance: dec(holdings_eth, 4), value_usd: dec(holdings_eth * eth_price, 2) },
                            Holding { token: "USDT".into(), chain_id: 1, balance: dec(5000.0, 2), value_usd: dec(5000.0, 2) },
                        ],
                        change24h: Some(signed(rng.unit() * 0.02 - 0.01)),
                    },
                    user(),
                ));
            } else {
                events.push(factory.create(
                    TradeFailed {
                        order_id: id,
                        user_id: DEMO_USER.into(),
                        token_in: "ETH".into(),
                        token_out: "USDT".into(),
                        amount_in: dec(amount, 4),
                        chain_id: 1,
                        reason: "slippage exceeded".into(),
                        trade_id: None,
                        error_code: Some("SLIPPAGE".into()),
                        tx_hash: None,
                    },
                    user(),
                ));
            }
        }
        if n.is_multiple_of(10 * rate as u64) {
            events.push(factory.create(
                SystemHealthCheck { service: "demo-feed".into(), status: HealthStatus::Healthy, uptime_seconds: Some(n / rate as u64), details: None },
                EventOptions::default(),
            ));
        }
        for e in events {
            match e {
                Ok(e) => {
                    if let Err(err) = publisher.publish(&e).await {
                        tracing::warn!("demo feed: {err:#}");
                    }
                }
                Err(errs) => tracing::error!("demo feed built an invalid event: {errs}"),
            }
        }
    }
}

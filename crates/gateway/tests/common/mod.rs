//! Test support: a real broker (started by `scripts/kafka`, address in
//! `KAFKA_BROKERS`), isolated topics per test, the real `moonx-ws` binary
//! started as a process on a port the kernel picks (`PORT=0`, learned from
//! its `listening:` log line, so parallel tests never race for a port), and
//! real WebSocket / HTTP clients.
#![allow(dead_code)]

pub mod ws;

use moonx_ws::kafka::admin::{topic_layout, Admin, TopicSpec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A main topic and DLQ of the layout, under unique names.
pub struct Topics {
    pub main: String,
    pub dlq: String,
}

pub async fn create_topics(prefix: &str) -> Topics {
    create_topics_on(&brokers(), prefix).await
}

pub async fn create_topics_on(brokers: &str, prefix: &str) -> Topics {
    let main = unique(&format!("test.{prefix}"));
    let dlq = format!("{main}.dlq");
    let admin = Admin::connect(brokers, Duration::from_secs(30)).expect("admin client");
    let specs: Vec<TopicSpec> = topic_layout(&main, &dlq).into_iter().take(2).collect();
    admin
        .apply_layout(&specs, 1, false)
        .await
        .unwrap_or_else(|e| panic!("cannot create topics on {brokers} (is `scripts/kafka start` running?): {e}"));
    Topics { main, dlq }
}

/// A port that was free a moment ago. Racy (another test may take it before
/// it is used): `Gateway` does not use it; prefer `PORT=0` and the log line.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_moonx-ws")
}

/// Runs the binary with arguments and environment; returns (status, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run moonx-ws");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A `moonx-ws serve` process.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub audit: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

/// What `server.rs` logs (at info, target `moonx_ws::server`) once it is
/// bound: `listening: http://ADDR/health, ws://ADDR/ws`.
const LISTENING: &str = "listening: http://";
/// How long a started process may take to bind its port.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct GatewayConfig<'a> {
    pub topics: &'a Topics,
    pub group: String,
    pub instance: String,
    pub extra_env: Vec<(&'a str, String)>,
}

impl<'a> GatewayConfig<'a> {
    pub fn new(topics: &'a Topics) -> Self {
        GatewayConfig { topics, group: unique("it"), instance: "a".into(), extra_env: vec![] }
    }
}

pub const JWT_SECRET: &str = "test-secret-please-change";

impl Gateway {
    /// Starts `moonx-ws serve` and returns once it listens (on a port the
    /// kernel picked, unless `extra_env` sets `PORT`).
    pub fn start(cfg: GatewayConfig<'_>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = 0;
        let audit = dir.path().join("routes.jsonl");
        let log = dir.path().join("gateway.log");
        let mut env: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), brokers()),
            ("KAFKA_MAIN_TOPIC".into(), cfg.topics.main.clone()),
            ("EVENT_DEAD_LETTER_QUEUE_TOPIC".into(), cfg.topics.dlq.clone()),
            ("KAFKA_CONSUMER_GROUP_ID".into(), cfg.group.clone()),
            ("GATEWAY_INSTANCE_ID".into(), cfg.instance.clone()),
            ("KAFKA_AUTO_OFFSET_RESET".into(), "earliest".into()),
            ("HOST".into(), "127.0.0.1".into()),
            ("PORT".into(), port.to_string()),
            ("ROUTE_AUDIT_FILE".into(), audit.display().to_string()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("RUST_LOG".into(), "info,rdkafka=warn".into()),
        ];
        for (k, v) in cfg.extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v));
        }
        let mut g = Gateway { child: None, port, log, audit, env, args: vec!["serve".into()], _dir: dir };
        g.spawn_listening();
        g
    }

    /// `moonx-ws dev` with these arguments: no Kafka at all. Returns once
    /// it listens, as `start` does.
    pub fn start_dev(args: &[&str], extra_env: Vec<(&str, String)>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = 0;
        let audit = dir.path().join("routes.jsonl");
        let log = dir.path().join("gateway.log");
        let mut env: Vec<(String, String)> = vec![
            ("PORT".into(), port.to_string()),
            ("ROUTE_AUDIT_FILE".into(), audit.display().to_string()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v));
        }
        let mut all = vec!["dev".to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut g = Gateway { child: None, port, log, audit, env, args: all, _dir: dir };
        g.spawn_listening();
        g
    }

    /// The `PORT` this process is started with.
    fn configured_port(&self) -> u16 {
        self.env.iter().rev().find(|(k, _)| k == "PORT").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
    }

    /// Spawns the process and learns its port from the log. If it exits
    /// before listening (a test of a start-up failure), `port` keeps the
    /// configured value and the exit is left for the test to examine.
    fn spawn_listening(&mut self) -> Listen {
        if !self.env.iter().any(|(k, _)| k == "PORT") {
            self.env.push(("PORT".into(), "0".into()));
        }
        let from = self.log_len();
        self.spawn();
        let outcome = self.wait_listening(from);
        match outcome {
            Listen::On(port) => self.port = port,
            Listen::Exited => {
                self.port = self.configured_port();
                eprintln!("moonx-ws exited before listening; log:\n{}", &self.logs()[from..]);
            }
        }
        outcome
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// Waits for the `listening:` line written after byte `from` of the log,
    /// or for the process to exit.
    fn wait_listening(&mut self, from: usize) -> Listen {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let log = self.logs();
            if let Some(port) = log.get(from..).and_then(listening_port) {
                return Listen::On(port);
            }
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                return Listen::Exited;
            }
            if Instant::now() > deadline {
                panic!(
                    "moonx-ws did not log {LISTENING:?} within {LISTEN_TIMEOUT:?} (RUST_LOG must let `moonx_ws::server=info` through); log:\n{}",
                    log.get(from..).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin())
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn moonx-ws serve");
        self.child = Some(child);
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` answers 200 (consumer connected and assigned).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&format!("{}/health", self.base())).await {
                return;
            }
            if Instant::now() > deadline {
                panic!("gateway not healthy after 60 s; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status once it stopped.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("gateway ignored SIGTERM for 30 s; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Changes a variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Kills the process and starts it again on the same port (so clients
    /// and `base()` keep working), unless the test `set_env`'d another `PORT`. Returns once it listens. If another
    /// process took the port meanwhile, it retries once, then fails.
    pub fn restart(&mut self) {
        self.kill();
        if self.configured_port() == 0 && self.port != 0 {
            let learned = self.port.to_string();
            self.set_env("PORT", &learned);
        }
        let port = self.configured_port();
        for attempt in 1..=2 {
            let from = self.log_len();
            if let Listen::On(now) = self.spawn_listening() {
                assert!(port == 0 || now == port, "restarted on port {now}, not {port}");
                return;
            }
            let taken = self.logs().get(from..).is_some_and(|l| l.contains("cannot listen on"));
            if !taken {
                return; // a start-up failure the test wants to see
            }
            if attempt == 2 {
                panic!("port {} is taken by another process; the gateway cannot restart on it", self.port);
            }
            // The port is released as soon as its holder stops; give it that moment.
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The eventIds in the route audit log, with how often each was routed.
    pub fn routed(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for line in std::fs::read_to_string(&self.audit).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                *counts.entry(v["eventId"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.base())).await.expect("metrics").1
    }

    /// Waits until the series `name` (summed over those matching `labels`)
    /// satisfies `ok`; fails naming `what` and the last value.
    pub async fn wait_metric(&self, what: &str, name: &str, labels: &[(&str, &str)], timeout: Duration, ok: impl Fn(f64) -> bool) {
        eventually(what, timeout, || async {
            let text = http_get(&format!("{}/metrics", self.base())).await.map_err(|e| e.to_string())?.1;
            let v = metric(&text, name, labels);
            if ok(v) { Ok(()) } else { Err(format!("{name}{labels:?} = {v}")) }
        })
        .await;
    }

    /// Waits until exactly `n` events went through the pipeline to the hub
    /// (`events_processed_total` counts an event after it was offered to
    /// every entitled connection's queue). A `ping` sent after this is
    /// answered after every frame of those events, so the frames before its
    /// `pong` are all a client will ever get of them.
    pub async fn wait_events_processed(&self, n: usize) {
        self.wait_metric(&format!("{n} events processed"), "moonx_ws_events_processed_total", &[], Duration::from_secs(60), |v| {
            v == n as f64
        })
        .await;
    }
}

enum Listen {
    On(u16),
    Exited,
}

/// The port of a `listening: http://ADDR/health` line in `log`, if any.
fn listening_port(log: &str) -> Option<u16> {
    let rest = &log[log.find(LISTENING)? + LISTENING.len()..];
    let addr = &rest[..rest.find("/health")?];
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- gateway log ({}) ----\n{}", self.log.display(), self.logs());
        }
    }
}

pub async fn http_get(url: &str) -> Result<(u16, String), reqwest::Error> {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

/// Polls until `check` passes or the time is up, then asserts it.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: not true after {timeout:?}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The value of a Prometheus series (summed over series that match all `labels`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn producer() -> FutureProducer {
    producer_on(&brokers())
}

pub fn producer_on(brokers: &str) -> FutureProducer {
    moonx_ws::kafka::producer::create_producer(brokers).unwrap()
}

/// Sends raw bytes (valid or not) to a topic.
pub async fn send_raw(p: &FutureProducer, topic: &str, key: Option<&str>, payload: &[u8]) -> (i32, i64) {
    let mut rec = FutureRecord::<str, [u8]>::to(topic).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    let d = p.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    (d.partition, d.offset)
}

/// Reads every record of a topic from the beginning until `count` were read
/// or `timeout` passed.
pub type RawRecord = (i32, i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

pub async fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<RawRecord> {
    read_topic_on(&brokers(), topic, count, timeout).await
}

pub async fn read_topic_on(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<RawRecord> {
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = moonx_ws::kafka::client_config(brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                    .unwrap_or_default();
                out.push((m.partition(), m.offset(), m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
            }
            Ok(Err(e)) => eprintln!("read_topic: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Valid data for each built-in type (`n` makes ids unique).
pub fn sample_data(event_type: &str, user: &str, n: usize) -> Value {
    use serde_json::json;
    let token = ["ETH", "BTC", "USDT", "SOL"][n % 4];
    match event_type {
        "price.updated" => json!({"token": token, "chainId": 1 + (n % 3) as u64, "price": format!("{}.{:02}", 3000 + n, n % 100),
            "priceUsd": format!("{}.00", 3000 + n), "change24h": "-0.05", "volume24h": "1000000"}),
        "order.created" => json!({"orderId": format!("order-{n}"), "userId": user, "tokenIn": "ETH", "tokenOut": "USDT",
            "amountIn": "1.5", "amountOutExpected": "4500.00", "chainId": 1, "orderType": "limit", "status": "pending", "limitPrice": "3000"}),
        "order.updated" => json!({"orderId": format!("order-{n}"), "userId": user, "status": "partially_filled", "previousStatus": "open", "filledAmount": "0.5"}),
        "order.cancelled" => json!({"orderId": format!("order-{n}"), "userId": user, "reason": "user request", "cancelledBy": "user"}),
        "portfolio.updated" => json!({"userId": user, "totalValueUsd": "12345.67", "change24h": "0.01",
            "holdings": [{"token": "ETH", "chainId": 1, "balance": "2.5", "valueUsd": "7500.00"}]}),
        "trade.executed" => json!({"tradeId": format!("trade-{n}"), "orderId": format!("order-{n}"), "userId": user, "tokenIn": "ETH", "tokenOut": "USDT",
            "amountIn": "1", "amountOut": "2999.5", "price": "2999.5", "chainId": 1, "txHash": format!("0x{n:064x}"), "fee": "0.3"}),
        "trade.failed" => json!({"orderId": format!("order-{n}"), "userId": user, "tokenIn": "ETH", "tokenOut": "USDT", "amountIn": "1",
            "chainId": 1, "reason": "slippage exceeded", "errorCode": "SLIPPAGE"}),
        "user.connected" => json!({"userId": user, "connectionId": format!("c-{n}"), "instanceId": "test"}),
        "user.disconnected" => json!({"userId": user, "connectionId": format!("c-{n}"), "instanceId": "test", "reason": "client closed", "durationMs": 1234}),
        "system.health_check" => json!({"service": "price-service", "status": "healthy", "uptimeSeconds": 3600 + n, "details": {"lagMs": 3}}),
        "system.error" => json!({"service": "order-service", "errorCode": "DB_TIMEOUT", "message": format!("query {n} timed out"), "severity": "error"}),
        other => panic!("no sample for {other}"),
    }
}

pub const ALL_TYPES: [&str; 11] = [
    "price.updated", "order.created", "order.updated", "order.cancelled", "portfolio.updated",
    "trade.executed", "trade.failed", "user.connected", "user.disconnected", "system.health_check", "system.error",
];

/// Builds a valid event with the factory.
pub fn sample_event(event_type: &str, user: &str, n: usize) -> moonx_events::Event {
    moonx_events::EventFactory::new("it")
        .create_from_json(
            &moonx_events::EventType::parse(event_type),
            sample_data(event_type, user, n),
            moonx_events::EventOptions { user_id: user_scoped(event_type).then(|| user.to_owned()), ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("sample {event_type} invalid: {e}"))
}

pub fn user_scoped(event_type: &str) -> bool {
    !event_type.starts_with("price.") && !event_type.starts_with("system.")
}

/// A second broker of our own (scripts/kafka on another port), stopped on drop.
pub struct ExtraBroker {
    pub port: u16,
}

impl ExtraBroker {
    pub fn script() -> String {
        format!("{}/../../scripts/kafka", env!("CARGO_MANIFEST_DIR"))
    }

    pub fn start(port: u16) -> ExtraBroker {
        let b = ExtraBroker { port };
        b.run("start");
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn run(&self, cmd: &str) {
        let status = Command::new("bash")
            .arg(Self::script())
            .arg(cmd)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .status()
            .expect("scripts/kafka");
        assert!(status.success(), "scripts/kafka {cmd} on port {} failed", self.port);
    }
}

impl Drop for ExtraBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(Self::script()).arg("stop").env("KAFKA_PORT", self.port.to_string()).status();
    }
}

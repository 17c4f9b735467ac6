//! The systems under test, each started as its own process: `moonx-ws serve`
//! (the release binary unless told otherwise), the Node.js baseline
//! (`node bench/baseline-node/server.js`), Centrifugo v6 (its memory engine
//! and Kafka consumer in publication data mode; the config it ran with is
//! written beside the results) and the fan-out floor (`moonx-bench
//! fanout-floor`, scenario c only).

use crate::procstat;
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const JWT_SECRET: &str = "moonx-bench-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Moonx,
    Baseline,
    Centrifugo,
    /// The fan-out floor: a bare WebSocket writer, no Kafka (scenario c).
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Moonx => "moonx-ws",
            Kind::Baseline => "baseline (Node.js)",
            Kind::Centrifugo => "Centrifugo v6",
            Kind::Floor => "fan-out floor",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Kind::Moonx => "moonx",
            Kind::Baseline => "baseline",
            Kind::Centrifugo => "centrifugo",
            Kind::Floor => "floor",
        }
    }

    /// Whether it consumes Kafka (every scenario) or only writes frames
    /// (the floor, scenario c).
    pub fn consumes_kafka(self) -> bool {
        self != Kind::Floor
    }
}

/// How to start the targets.
#[derive(Debug, Clone)]
pub struct Programs {
    pub moonx_bin: PathBuf,
    pub node: String,
    pub baseline_dir: PathBuf,
    pub brokers: String,
    pub logs: PathBuf,
    /// The Centrifugo v6 binary (`bench/run` installs it).
    pub centrifugo_bin: PathBuf,
    /// This load tool, which runs the fan-out floor.
    pub bench_bin: PathBuf,
}

/// What one run of a target consumes.
pub struct Launch<'a> {
    pub topic: &'a str,
    pub from_beginning: bool,
    /// Extra environment (wins over the defaults).
    pub env: Vec<(&'a str, String)>,
    pub tag: &'a str,
}

pub struct Target {
    pub kind: Kind,
    pub port: u16,
    child: Child,
    http: reqwest::Client,
    /// The floor's command line (`rate <events/s>`).
    control: Option<std::process::ChildStdin>,
    /// Centrifugo: the topic, for the readiness probe.
    topic: String,
    brokers: String,
}

/// A free port below the ephemeral range (32768–60999 by default), so that
/// none of the load tool's thousands of client sockets can hold it.
fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let p: u16 = rng.random_range(20_000..32_000);
        let v4_free = std::net::TcpListener::bind(("0.0.0.0", p)).is_ok();
        // Node listens on `::` where IPv6 is on (checked after the v4 socket
        // is closed: a dual-stack socket would collide with it).
        let v6_taken = v4_free
            && matches!(std::net::TcpListener::bind(("::", p)), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
        if v4_free && !v6_taken {
            return p;
        }
    }
    panic!("no free port in 20000..32000");
}

impl Target {
    pub fn start(kind: Kind, programs: &Programs, launch: Launch<'_>) -> anyhow::Result<Target> {
        let port = free_port();
        let group = format!("bench-{}-{}", launch.tag, uuid::Uuid::new_v4().simple());
        let log_path = programs.logs.join(format!("{}-{}.log", kind.key(), launch.tag));
        let log = std::fs::File::create(&log_path)?;
        let mut env: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), programs.brokers.clone()),
            ("KAFKA_MAIN_TOPIC".into(), launch.topic.into()),
            ("PORT".into(), port.to_string()),
            ("HOST".into(), "127.0.0.1".into()),
        ];
        let mut cmd = match kind {
            Kind::Moonx => {
                env.extend([
                    ("KAFKA_CONSUMER_GROUP_ID".into(), group),
                    ("GATEWAY_INSTANCE_ID".into(), "bench".into()),
                    ("EVENT_DEAD_LETTER_QUEUE_TOPIC".into(), format!("{}.dlq", launch.topic)),
                    ("KAFKA_AUTO_OFFSET_RESET".into(), if launch.from_beginning { "earliest" } else { "latest" }.into()),
                    ("JWT_SECRET".into(), JWT_SECRET.into()),
                    ("WS_MAX_CONNECTIONS".into(), "1000000".into()),
                    ("WS_RATE_LIMIT_PER_SEC".into(), "1000".into()),
                    ("WS_RATE_LIMIT_BURST".into(), "1000".into()),
                    ("WS_PRESENCE_EVENTS".into(), "false".into()),
                    ("RUST_LOG".into(), "warn,rdkafka=warn".into()),
                ]);
                let mut c = Command::new(&programs.moonx_bin);
                c.arg("serve");
                c
            }
            Kind::Baseline => {
                env.extend([
                    ("KAFKA_CONSUMER_GROUP_ID".into(), group),
                    ("FROM_BEGINNING".into(), launch.from_beginning.to_string()),
                ]);
                let mut c = Command::new(&programs.node);
                c.arg(programs.baseline_dir.join("server.js"));
                c
            }
            Kind::Centrifugo => {
                anyhow::ensure!(
                    programs.centrifugo_bin.exists(),
                    "{} does not exist: bench/run installs it (go install github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION})",
                    programs.centrifugo_bin.display()
                );
                let config = centrifugo_config(port, &programs.brokers, launch.topic, &group);
                // Beside the results (out/), so a reader sees what it ran with.
                let dir = programs.logs.parent().unwrap_or(&programs.logs);
                let path = dir.join(format!("centrifugo-{}.json", launch.tag));
                std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
                let mut c = Command::new(&programs.centrifugo_bin);
                c.arg("--config").arg(&path);
                c
            }
            Kind::Floor => {
                let mut c = Command::new(&programs.bench_bin);
                c.arg("fanout-floor").arg("--port").arg(port.to_string());
                c
            }
        };
        for (k, v) in launch.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v));
        }
        if kind == Kind::Centrifugo {
            // Its settings come from the config file only.
            env.clear();
        }
        let stdin = if kind == Kind::Floor { Stdio::piped() } else { Stdio::null() };
        cmd.envs(env).stdin(stdin).stdout(log.try_clone()?).stderr(log);
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", kind.name()))?;
        let control = child.stdin.take();
        Ok(Target { kind, port, child, http: reqwest::Client::new(), control, topic: launch.topic.to_owned(), brokers: programs.brokers.clone() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self) -> String {
        match self.kind {
            Kind::Centrifugo => format!("ws://127.0.0.1:{}/connection/websocket", self.port),
            _ => format!("ws://127.0.0.1:{}/ws", self.port),
        }
    }

    /// The floor: frames per second per connection from now on (0 stops).
    pub fn set_floor_rate(&mut self, events_per_sec: f64) -> anyhow::Result<()> {
        use std::io::Write;
        let control = self.control.as_mut().ok_or_else(|| anyhow::anyhow!("{} takes no rate", self.kind.name()))?;
        writeln!(control, "rate {events_per_sec}")?;
        control.flush()?;
        Ok(())
    }

    /// Waits until the target answers `/health` as ready (consumer joined
    /// and assigned).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let mut probed = false;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("{} exited during start-up ({status})", self.kind.name());
            }
            if self.kind == Kind::Floor {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    anyhow::bail!("{} not listening after {timeout:?}", self.kind.name());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if self.kind == Kind::Centrifugo && probed {
                if self.consumed().await.unwrap_or(0) >= 1 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    anyhow::bail!("{}: its Kafka consumer did not process the probe record within {timeout:?}", self.kind.name());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await {
                let ok = r.status().is_success();
                let body = r.text().await.unwrap_or_default();
                let ready = match self.kind {
                    Kind::Moonx | Kind::Floor => ok,
                    Kind::Baseline => ok && body.contains("\"status\":\"ok\""),
                    Kind::Centrifugo => ok,
                };
                if ready && self.kind == Kind::Centrifugo {
                    // Up; ready once its consumer has the partitions.
                    let (b, t) = (self.brokers.clone(), self.topic.clone());
                    tokio::task::spawn_blocking(move || crate::kafka::produce_probe(&b, &t)).await??;
                    probed = true;
                    continue;
                }
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} not ready after {timeout:?}", self.kind.name());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        Ok(self.http.get(url).timeout(Duration::from_secs(5)).send().await?.text().await?)
    }

    /// The sum of a metric's samples (all label sets).
    pub async fn metric_sum(&self, moonx: &str, baseline: &str) -> anyhow::Result<f64> {
        let name = match self.kind {
            Kind::Moonx => moonx,
            Kind::Baseline => baseline,
            // Records its Kafka consumer processed (the probe included).
            Kind::Centrifugo => "centrifugo_consumers_messages_processed_total",
            Kind::Floor => anyhow::bail!("the fan-out floor has no metrics"),
        };
        Ok(metric_sum(&self.metrics().await?, name))
    }

    pub async fn consumed(&self) -> anyhow::Result<u64> {
        Ok(self.metric_sum("moonx_ws_events_consumed_total", "baseline_events_consumed_total").await? as u64)
    }

    pub fn sample(&self) -> anyhow::Result<procstat::ProcSample> {
        procstat::sample(self.pid())
    }

    /// SIGTERM, then SIGKILL after 3 s (nothing is measured during the
    /// shutdown; KafkaJS would wait up to 5 s for its in-flight fetch).
    pub async fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub const CENTRIFUGO_VERSION: &str = "v6.9.1";

/// Centrifugo's config for one run: its documented defaults plus what the
/// scenarios need and nothing tuned: the memory engine (the default, named),
/// the HS256 secret the clients sign with, clients may subscribe to channels
/// without a namespace (`prices`) and to user-limited ones
/// (`orders#user-3`: only user-3), Prometheus metrics and `/health` for the
/// load tool, and one Kafka consumer in publication data mode (the record
/// value is the publication's data, its channels come from the
/// `centrifugo-channels` header). A fresh consumer group starts from the
/// topic's beginning (franz-go's default), as scenario b needs; the live
/// scenarios use fresh topics.
pub fn centrifugo_config(port: u16, brokers: &str, topic: &str, group: &str) -> serde_json::Value {
    serde_json::json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "warn"},
        "engine": {"type": "memory"},
        "client": {"token": {"hmac_secret_key": JWT_SECRET}},
        "channel": {"without_namespace": {"allow_subscribe_for_client": true, "allow_user_limited_channels": true}},
        "prometheus": {"enabled": true},
        "health": {"enabled": true},
        "consumers": [{
            "name": "bench",
            "enabled": true,
            "type": "kafka",
            "kafka": {
                "brokers": brokers.split(',').collect::<Vec<_>>(),
                "topics": [topic],
                "consumer_group": group,
                "publication_data_mode": {"enabled": true, "channels_header": "centrifugo-channels"}
            }
        }]
    })
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// moonx-ws's own `end_to_end_latency_seconds` histogram (event timestamp →
/// frame written to the socket), summed over channels: (upper bound in
/// seconds, cumulative count).
pub fn written_latency_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut by_le: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("moonx_ws_end_to_end_latency_seconds_bucket{")) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += v;
    }
    let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Quantiles (as bucket upper bounds, in ms) of the difference of two
/// scrapes of [`written_latency_buckets`].
pub fn written_latency_quantiles(before: &[(f64, f64)], after: &[(f64, f64)], qs: &[f64]) -> Vec<Option<f64>> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b)))
        .collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    qs.iter()
        .map(|q| {
            if total <= 0.0 {
                return None;
            }
            delta.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| le * 1000.0)
        })
        .collect()
}

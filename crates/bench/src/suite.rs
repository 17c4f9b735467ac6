//! The scenarios of BENCHMARKS.md, each run for moonx-ws, the Node.js
//! baseline and Centrifugo v6 in one invocation (and scenario c also for the
//! fan-out floor), on fresh topics, one target at a time.

use crate::clients::{self, ClientSpec, Protocol};
use crate::events::{user_id, Generator, Mix};
use crate::kafka;
use crate::procstat::{self, ProcSample};
use crate::stats::{LatencyRecorder, Percentiles, Summary};
use crate::target::{Kind, Launch, Programs, Target, JWT_SECRET};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sizes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub consume_events: u64,
    pub consume_compression: String,
    pub fanout_clients: usize,
    /// price.updated events/s, stepped up until delivery falls behind.
    pub fanout_rates: Vec<f64>,
    pub latency_clients: usize,
    pub latency_rate: f64,
    pub latency_price_share: f64,
    pub memory_levels: Vec<usize>,
    pub private_users: usize,
    pub private_rate: f64,
    pub warmup_secs: f64,
    pub measure_secs: f64,
    pub node_hotpath_iterations: u64,
    /// Scenario g: clients reconnecting at once, user events/s, seconds away.
    pub resume_clients: usize,
    pub resume_rate: f64,
    pub resume_gap_secs: f64,
    /// Scenario e, Centrifugo: seconds between opening the connections and
    /// reading RSS, so that Go's garbage collector settles (moonx-ws and
    /// Node are read after 3 s, as before).
    pub peer_memory_settle_secs: f64,
}

impl Scale {
    pub fn full() -> Self {
        Scale {
            consume_events: 1_000_000,
            consume_compression: "gzip".into(),
            fanout_clients: 10_000,
            fanout_rates: vec![10.0, 25.0, 50.0, 100.0, 200.0, 400.0],
            latency_clients: 1_000,
            latency_rate: 10_000.0,
            latency_price_share: 0.001,
            memory_levels: vec![10_000, 50_000],
            private_users: 10_000,
            private_rate: 10_000.0,
            warmup_secs: 3.0,
            measure_secs: 10.0,
            node_hotpath_iterations: 1_000_000,
            resume_clients: 10_000,
            resume_rate: 2_000.0,
            resume_gap_secs: 10.0,
            peer_memory_settle_secs: 120.0,
        }
    }

    pub fn smoke() -> Self {
        Scale {
            consume_events: 20_000,
            consume_compression: "gzip".into(),
            fanout_clients: 200,
            fanout_rates: vec![100.0],
            latency_clients: 100,
            latency_rate: 1_000.0,
            latency_price_share: 0.01,
            memory_levels: vec![500],
            private_users: 200,
            private_rate: 500.0,
            warmup_secs: 0.5,
            measure_secs: 1.5,
            node_hotpath_iterations: 100_000,
            resume_clients: 200,
            resume_rate: 200.0,
            resume_gap_secs: 2.0,
            peer_memory_settle_secs: 5.0,
        }
    }
}

pub struct Suite {
    pub programs: Programs,
    pub scale: Scale,
    pub kinds: Vec<Kind>,
    pub criterion_dir: PathBuf,
    pub concurrency: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub hot_path: Option<HotPath>,
    pub consume: Option<Consume>,
    pub fanout: Vec<Fanout>,
    pub latency: Vec<Delivery>,
    pub memory: Vec<Memory>,
    pub private: Vec<Delivery>,
    pub resume: Option<crate::resume::ResumeRun>,
    pub skip_consume: Option<crate::skip_consume::SkipConsume>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct HotPath {
    /// criterion estimates (mean), per group/bench.
    pub moonx: Vec<CriterionResult>,
    pub baseline: Vec<NodeHotPath>,
}

#[derive(Debug, Serialize)]
pub struct CriterionResult {
    pub name: String,
    pub ns_per_element: f64,
    pub elements_per_sec: f64,
    /// What an element is: an event, or a delivered frame.
    pub element: String,
}

#[derive(Debug, Serialize)]
pub struct NodeHotPath {
    pub frame_mode: String,
    pub events: u64,
    pub us_per_event: f64,
    pub events_per_sec: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Consume {
    pub events: u64,
    pub compression: String,
    pub preload_events_per_sec: f64,
    pub bare_consumer_events_per_sec: f64,
    pub runs: Vec<ConsumeRun>,
}

#[derive(Debug, Serialize)]
pub struct ConsumeRun {
    pub target: Kind,
    pub events_per_sec: f64,
    pub seconds: f64,
    /// Of one core (200 = both cores of a 2-core machine).
    pub cpu_percent: f64,
    pub cpu_us_per_event: f64,
    pub rss_mib_end: f64,
    /// Timed from the process start (it did not answer earlier).
    pub includes_startup: bool,
}

#[derive(Debug, Serialize)]
pub struct Fanout {
    pub target: Kind,
    pub clients: usize,
    pub clients_open: usize,
    pub steps: Vec<FanoutStep>,
    /// The most frames/s delivered at a step that kept up (≥ 90% delivered,
    /// p99 ≤ 1 s, nobody cut off).
    pub sustained_frames_per_sec: f64,
    /// The most frames/s delivered at any step.
    pub max_delivered_frames_per_sec: f64,
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FanoutStep {
    pub events_per_sec: f64,
    pub offered_frames_per_sec: f64,
    pub delivered_frames_per_sec: f64,
    pub delivered_ratio: f64,
    pub latency: Percentiles,
    /// moonx-ws only: its own histogram (timestamp → frame written), ms.
    pub gateway_written_p50_le_ms: Option<f64>,
    pub gateway_written_p99_le_ms: Option<f64>,
    pub cpu_percent: f64,
    pub tool_cpu_percent: f64,
    pub rss_mib: f64,
    pub clients_closed: u64,
    /// /proc/loadavg (1, 5, 15 min) at the end of the step.
    pub load_average: String,
}

#[derive(Debug, Serialize)]
pub struct Delivery {
    pub target: Kind,
    pub clients: usize,
    pub clients_open: usize,
    pub events_per_sec: f64,
    pub produced_in_window: u64,
    pub delivered_frames: u64,
    pub delivered_frames_per_sec: f64,
    pub clients_closed: u64,
    /// Why clients were disconnected during the run (the first few).
    pub close_reasons: Vec<String>,
    pub latency: Summary,
    /// The bare consumer's produce→receive latency in the same run.
    pub kafka_floor: Summary,
    /// moonx-ws only: its own histogram (event timestamp → frame written),
    /// p50 and p99 as the upper bounds of their buckets, ms.
    pub gateway_written_p50_le_ms: Option<f64>,
    pub gateway_written_p99_le_ms: Option<f64>,
    pub cpu_percent: f64,
    pub tool_cpu_percent: f64,
    pub rss_mib: f64,
    /// /proc/loadavg (1, 5, 15 min) at the end of the window.
    pub load_average: String,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub target: Kind,
    pub rss_mib_before: f64,
    pub levels: Vec<MemoryLevel>,
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MemoryLevel {
    pub requested: usize,
    pub connections: usize,
    pub rss_mib: f64,
    pub bytes_per_connection: f64,
}

/// The events of scenario b (and b2): half prices, half user events of
/// 10,000 users, half of those to the hottest 10 %; one seed, so b and b2
/// pre-load the same sequence of keys.
pub(crate) const CONSUME_MIX: Mix = Mix { price_share: 0.5, users: 10_000, hot_share: 0.5 };
pub(crate) const CONSUME_SEED: u64 = 1;

/// `compression.type` of the topics of the live scenarios (c–f): batches are
/// stored as the producer sent them (uncompressed), so the broker, which
/// shares the CPUs, does not recompress every small batch to gzip; scenario
/// b keeps the production layout's gzip.
pub const LIVE_COMPRESSION: &str = "producer";

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn topic(tag: &str) -> String {
    format!("bench.{tag}.{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!("[bench {:>7.1}s] {}", crate::elapsed(), msg.as_ref());
}

/// A producer running on its own thread at a fixed rate.
pub(crate) struct RateProducer {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl RateProducer {
    pub(crate) fn start(brokers: &str, topic: &str, rate: f64, mix: Mix, seed: u64) -> Self {
        Self::start_with(brokers, topic, rate, Generator::new(mix, seed))
    }
    fn start_with(brokers: &str, topic: &str, rate: f64, generator: Generator) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let (b, t, s, p) = (brokers.to_owned(), topic.to_owned(), stop.clone(), produced.clone());
        let handle = std::thread::spawn(move || kafka::produce_at_rate(&b, &t, rate, generator, s, p));
        RateProducer { stop, produced, handle }
    }
    fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }
    pub(crate) fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))?
    }
}

/// The latency floor: a bare consumer on its own thread.
struct Floor {
    recorder: Arc<LatencyRecorder>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Floor {
    async fn start(brokers: &str, topic: &str) -> anyhow::Result<Floor> {
        let recorder = Arc::new(LatencyRecorder::new());
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, t, r, rd, s) = (brokers.to_owned(), topic.to_owned(), recorder.clone(), ready.clone(), stop.clone());
        let handle = std::thread::spawn(move || kafka::floor_consumer(&b, &t, r, rd, s));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.load(Ordering::Relaxed) {
            if Instant::now() > deadline || handle.is_finished() {
                anyhow::bail!("the floor consumer got no partitions");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Floor { recorder, stop, handle })
    }
    fn finish(self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.recorder.summary()
    }
}

fn self_sample() -> Option<ProcSample> {
    procstat::sample(std::process::id()).ok()
}

fn cpu(a: &Option<ProcSample>, b: &Option<ProcSample>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => procstat::cpu_percent(a, b),
        _ => 0.0,
    }
}

impl Suite {
    fn addr(t: &Target) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], t.port))
    }

    /// A target reading `topic` from its end (scenario g).
    pub(crate) async fn start_target(&self, kind: Kind, topic: &str, tag: &str) -> anyhow::Result<Target> {
        self.start(kind, topic, false, tag).await
    }

    async fn start(&self, kind: Kind, topic: &str, from_beginning: bool, tag: &str) -> anyhow::Result<Target> {
        let mut attempt = 1;
        loop {
            let mut t = Target::start(kind, &self.programs, Launch { topic, from_beginning, env: vec![], tag })?;
            match t.wait_ready(Duration::from_secs(90)).await {
                Ok(()) => return Ok(t),
                // A port taken between choosing it and listening: choose again.
                Err(e) if attempt < 3 && e.to_string().contains("exited during start-up") => {
                    log(format!("{} did not start ({e}); retrying on another port", kind.name()));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn specs(&self, kind: Kind, url: &str, n: usize, channels: &[&str], users: bool) -> Vec<ClientSpec> {
        let subscribe: Arc<Vec<String>> =
            Arc::new(channels.iter().map(|c| format!(r#"{{"type":"subscribe","channel":"{c}"}}"#)).collect());
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_400;
        let token = |i: usize| {
            let claims = moonx_ws::deliver::auth::Claims { sub: user_id(i), roles: vec![], exp };
            moonx_ws::deliver::auth::sign(JWT_SECRET, &claims)
        };
        (0..n)
            .map(|i| {
                if kind == Kind::Centrifugo {
                    // Every connection needs a token there (`sub` = user-i); a
                    // user's channels are its user-limited `<channel>#user-i`.
                    let own: Vec<String> = channels
                        .iter()
                        .map(|c| if *c == "prices" { (*c).to_owned() } else { format!("{c}#{}", user_id(i)) })
                        .collect();
                    return ClientSpec { url: url.to_owned(), subscribe: Arc::new(own), protocol: Protocol::Centrifugo { token: token(i) } };
                }
                let url = match (users, kind) {
                    (true, Kind::Moonx) => format!("{url}?token={}", token(i)),
                    (true, Kind::Baseline) => format!("{url}?userId={}", user_id(i)),
                    _ => url.to_owned(),
                };
                ClientSpec { url, subscribe: subscribe.clone(), protocol: Protocol::Moonx }
            })
            .collect()
    }

    /// Scenario a: criterion's estimates (already run by `bench/run`) and
    /// the Node baseline's `--bench-hotpath`.
    pub fn hot_path(&self) -> anyhow::Result<HotPath> {
        let mut out = HotPath::default();
        for (group, bench, elements, element) in [
            ("pipeline", "price_updated_387B", 1.0, "event"),
            ("pipeline_no_validation", "price_updated_387B", 1.0, "event"),
            ("decode", "validate", 1.0, "event"),
            ("decode", "no_validation", 1.0, "event"),
            ("fanout", "publish_1000_subscribers", 1000.0, "frame"),
        ] {
            let path = self.criterion_dir.join(group).join(bench).join("new").join("estimates.json");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let v: serde_json::Value = serde_json::from_str(&text)?;
                    let ns = v["mean"]["point_estimate"].as_f64().unwrap_or(f64::NAN) / elements;
                    out.moonx.push(CriterionResult {
                        name: format!("{group}/{bench}"),
                        ns_per_element: ns,
                        elements_per_sec: 1e9 / ns,
                        element: element.into(),
                    });
                }
                Err(e) => log(format!("no criterion estimate at {} ({e}); run `cargo bench -p moonx-ws --bench hot_path`", path.display())),
            }
        }
        if self.kinds.contains(&Kind::Baseline) {
            let modes: &[&str] = if self.scale.node_hotpath_iterations >= 1_000_000 { &["stringify", "splice"] } else { &["stringify"] };
            for mode in modes {
                log(format!("hot path: node --bench-hotpath {} (FRAME_MODE={mode})", self.scale.node_hotpath_iterations));
                let o = std::process::Command::new(&self.programs.node)
                    .arg(self.programs.baseline_dir.join("server.js"))
                    .arg("--bench-hotpath")
                    .arg(self.scale.node_hotpath_iterations.to_string())
                    .env("FRAME_MODE", mode)
                    .output()?;
                anyhow::ensure!(o.status.success(), "node --bench-hotpath failed: {}", String::from_utf8_lossy(&o.stderr));
                let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
                out.baseline.push(NodeHotPath {
                    frame_mode: mode.to_string(),
                    events: v["events"].as_u64().unwrap_or(0),
                    us_per_event: v["usPerEvent"].as_f64().unwrap_or(f64::NAN),
                    events_per_sec: v["eventsPerSec"].as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        Ok(out)
    }

    /// Scenario b: M events pre-loaded into a fresh topic, consumed with no
    /// clients, by a bare consumer, moonx-ws and the baseline in turn.
    pub async fn consume(&self) -> anyhow::Result<Consume> {
        let s = &self.scale;
        let brokers = &self.programs.brokers;
        let t = topic("consume");
        kafka::create_topic(brokers, &t, 6, &s.consume_compression).await?;
        let res = self.consume_on(&t).await;
        kafka::delete_topics(brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }

    async fn consume_on(&self, t: &str) -> anyhow::Result<Consume> {
        let s = &self.scale;
        let brokers = self.programs.brokers.clone();
        log(format!("consume: pre-loading {} events into {t}", s.consume_events));
        let (b, tt, n) = (brokers.clone(), t.to_owned(), s.consume_events);
        // The header only when Centrifugo reads this topic.
        let headers = self.kinds.contains(&Kind::Centrifugo);
        let preload = tokio::task::spawn_blocking(move || {
            kafka::preload(&b, &tt, n, Generator::new(CONSUME_MIX, CONSUME_SEED).with_centrifugo_headers(headers))
        })
        .await??;
        let mut out = Consume { events: n, compression: s.consume_compression.clone(), preload_events_per_sec: preload, ..Default::default() };
        let timeout = Duration::from_secs_f64((n as f64 / 5_000.0).max(90.0));
        let (b, tt) = (brokers.clone(), t.to_owned());
        log("consume: bare rdkafka consumer");
        out.bare_consumer_events_per_sec = tokio::task::spawn_blocking(move || kafka::bare_consume(&b, &tt, n, timeout)).await??;
        log(format!("consume: bare consumer {:.0} events/s", out.bare_consumer_events_per_sec));
        for &kind in self.kinds.iter().filter(|k| k.consumes_kafka()) {
            log(format!("consume: {}", kind.name()));
            let started = Instant::now();
            let target = Target::start(kind, &self.programs, Launch { topic: t, from_beginning: true, env: vec![], tag: "consume" })?;
            let run = self.measure_consume(&target, n, timeout, started).await;
            target.stop().await;
            let run = run?;
            log(format!("consume: {} {:.0} events/s", kind.name(), run.events_per_sec));
            out.runs.push(run);
        }
        Ok(out)
    }

    /// Polls `/metrics` from the first consumed record to the M-th. A target
    /// too busy to answer until more than half was consumed (the baseline's
    /// one thread, on a small M) is timed from its start instead (start-up
    /// included, said in `includes_startup`).
    pub(crate) async fn measure_consume(&self, target: &Target, n: u64, timeout: Duration, started: Instant) -> anyhow::Result<ConsumeRun> {
        let deadline = Instant::now() + timeout + Duration::from_secs(60);
        let mut first: Option<(Instant, u64, ProcSample)> = None;
        let at_start = target.sample()?;
        let mut includes_startup = false;
        loop {
            let c = target.consumed().await.unwrap_or(0);
            let now = Instant::now();
            if c > 0 && first.is_none() {
                first = Some(if c > n / 2 {
                    includes_startup = true;
                    (started, 0, at_start)
                } else {
                    (now, c, target.sample()?)
                });
            }
            if c >= n {
                let end = target.sample()?;
                let (t0, c0, s0) = first.expect("set above");
                let secs = now.duration_since(t0).as_secs_f64().max(1e-6);
                let rate = (c - c0) as f64 / secs;
                return Ok(ConsumeRun {
                    target: target.kind,
                    events_per_sec: rate,
                    seconds: secs,
                    cpu_percent: procstat::cpu_percent(&s0, &end),
                    cpu_us_per_event: procstat::cpu_seconds(&s0, &end) * 1e6 / (c - c0).max(1) as f64,
                    rss_mib_end: mib(end.rss_bytes),
                    includes_startup,
                });
            }
            if now > deadline {
                anyhow::bail!("{} consumed {c} of {n} before the timeout", target.kind.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Scenario c: one price stream to N subscribers of `prices`, stepping
    /// the event rate up until delivery falls behind.
    pub async fn fanout(&self, kind: Kind) -> anyhow::Result<Fanout> {
        let s = &self.scale;
        let t = topic("fanout");
        kafka::create_topic(&self.programs.brokers, &t, 6, LIVE_COMPRESSION).await?;
        let res = async {
            let mut target = self.start(kind, &t, false, "fanout").await?;
            let recorder = Arc::new(LatencyRecorder::new());
            log(format!("fan-out: {} clients on {}", s.fanout_clients, kind.name()));
            let specs = self.specs(kind, &target.ws_url(), s.fanout_clients, &["prices"], false);
            let clients = clients::open(Self::addr(&target), specs, 0, self.concurrency, recorder.clone()).await;
            let mut out = Fanout {
                target: kind,
                clients: s.fanout_clients,
                clients_open: clients.opened,
                steps: vec![],
                sustained_frames_per_sec: 0.0,
                max_delivered_frames_per_sec: 0.0,
                note: (!clients.failures.is_empty()).then(|| format!("{} clients failed: {:?}", s.fanout_clients - clients.opened, clients.failures)),
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            for &rate in &s.fanout_rates {
                let closed_before = clients.closed.load(Ordering::Relaxed);
                recorder.reset();
                let generator = Generator::new(Mix::prices(), rate as u64).with_centrifugo_headers(kind == Kind::Centrifugo);
                let producer = if kind == Kind::Floor {
                    target.set_floor_rate(rate)?;
                    None
                } else {
                    Some(RateProducer::start_with(&self.programs.brokers, &t, rate, generator))
                };
                tokio::time::sleep(Duration::from_secs_f64(s.warmup_secs)).await;
                let (a, ta) = (target.sample()?, self_sample());
                let h0 = target.metrics().await.map(|t| crate::target::written_latency_buckets(&t)).unwrap_or_default();
                recorder.set_recording(true);
                tokio::time::sleep(Duration::from_secs_f64(s.measure_secs)).await;
                recorder.set_recording(false);
                let (b, tb) = (target.sample()?, self_sample());
                let h1 = target.metrics().await.map(|t| crate::target::written_latency_buckets(&t)).unwrap_or_default();
                let written = crate::target::written_latency_quantiles(&h0, &h1, &[0.5, 0.99]);
                match producer {
                    Some(p) => {
                        p.finish()?;
                    }
                    None => target.set_floor_rate(0.0)?,
                }
                let sum = recorder.summary();
                let secs = b.at.duration_since(a.at).as_secs_f64();
                let open = clients.still_open();
                let offered = rate * clients.opened as f64;
                let delivered = sum.window_frames as f64 / secs;
                let closed = clients.closed.load(Ordering::Relaxed) - closed_before;
                let step = FanoutStep {
                    events_per_sec: rate,
                    offered_frames_per_sec: offered,
                    delivered_frames_per_sec: delivered,
                    delivered_ratio: delivered / offered.max(1e-9),
                    latency: sum.latency,
                    gateway_written_p50_le_ms: written[0],
                    gateway_written_p99_le_ms: written[1],
                    cpu_percent: procstat::cpu_percent(&a, &b),
                    tool_cpu_percent: cpu(&ta, &tb),
                    rss_mib: mib(b.rss_bytes),
                    clients_closed: closed,
                    load_average: crate::report::loadavg(),
                };
                log(format!(
                    "fan-out {}: {rate} events/s → {:.0} of {:.0} frames/s ({:.0}%), p99 {:.1} ms, cpu {:.0}%, {open} clients open",
                    kind.name(), delivered, offered, step.delivered_ratio * 100.0, step.latency.p99_ms, step.cpu_percent
                ));
                let behind = step.delivered_ratio < 0.9 || closed > 0 || step.latency.p99_ms > 1000.0;
                out.max_delivered_frames_per_sec = out.max_delivered_frames_per_sec.max(delivered);
                if !behind {
                    out.sustained_frames_per_sec = out.sustained_frames_per_sec.max(delivered);
                }
                out.steps.push(step);
                if behind {
                    break;
                }
                // Let queues drain before the next step.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            clients.close().await;
            target.stop().await;
            Ok(out)
        }
        .await;
        kafka::delete_topics(&self.programs.brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }

    /// Scenarios d and f: authenticated users with one connection each, a
    /// mixed event stream at a fixed rate, and the bare consumer's latency
    /// on the same topic in the same run.
    pub async fn delivery(&self, kind: Kind, scenario: &str, users: usize, rate: f64, mix: Mix, channels: &[&str]) -> anyhow::Result<Delivery> {
        let s = &self.scale;
        let t = topic(scenario);
        kafka::create_topic(&self.programs.brokers, &t, 6, LIVE_COMPRESSION).await?;
        let res = async {
            let target = self.start(kind, &t, false, scenario).await?;
            let floor = Floor::start(&self.programs.brokers, &t).await?;
            let recorder = Arc::new(LatencyRecorder::new());
            log(format!("{scenario}: {users} users on {}", kind.name()));
            let specs = self.specs(kind, &target.ws_url(), users, channels, true);
            let clients = clients::open(Self::addr(&target), specs, 0, self.concurrency, recorder.clone()).await;
            anyhow::ensure!(clients.opened > 0, "no client connected: {:?}", clients.failures);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let generator = Generator::new(mix, 42).with_centrifugo_headers(kind == Kind::Centrifugo);
            let producer = RateProducer::start_with(&self.programs.brokers, &t, rate, generator);
            tokio::time::sleep(Duration::from_secs_f64(s.warmup_secs)).await;
            let (a, ta, p0) = (target.sample()?, self_sample(), producer.produced());
            let h0 = target.metrics().await.map(|t| crate::target::written_latency_buckets(&t)).unwrap_or_default();
            recorder.set_recording(true);
            floor.recorder.set_recording(true);
            tokio::time::sleep(Duration::from_secs_f64(s.measure_secs)).await;
            recorder.set_recording(false);
            floor.recorder.set_recording(false);
            let (b, tb, p1) = (target.sample()?, self_sample(), producer.produced());
            let h1 = target.metrics().await.map(|t| crate::target::written_latency_buckets(&t)).unwrap_or_default();
            let written = crate::target::written_latency_quantiles(&h0, &h1, &[0.5, 0.99]);
            producer.finish()?;
            let floor = floor.finish();
            let sum = recorder.summary();
            let secs = b.at.duration_since(a.at).as_secs_f64();
            let out = Delivery {
                target: kind,
                clients: users,
                clients_open: clients.still_open(),
                events_per_sec: rate,
                produced_in_window: p1 - p0,
                delivered_frames: sum.window_frames,
                delivered_frames_per_sec: sum.window_frames as f64 / secs,
                clients_closed: clients.closed.load(Ordering::Relaxed),
                close_reasons: clients.reasons(),
                latency: sum,
                kafka_floor: floor,
                gateway_written_p50_le_ms: written[0],
                gateway_written_p99_le_ms: written[1],
                cpu_percent: procstat::cpu_percent(&a, &b),
                tool_cpu_percent: cpu(&ta, &tb),
                rss_mib: mib(b.rss_bytes),
                load_average: crate::report::loadavg(),
            };
            log(format!(
                "{scenario} {}: {:.0} frames/s, p50 {:.2} p99 {:.2} p99.9 {:.2} ms (floor p99 {:.2} ms), cpu {:.0}%",
                kind.name(), out.delivered_frames_per_sec, out.latency.latency.p50_ms, out.latency.latency.p99_ms,
                out.latency.latency.p999_ms, out.kafka_floor.latency.p99_ms, out.cpu_percent
            ));
            clients.close().await;
            target.stop().await;
            Ok(out)
        }
        .await;
        kafka::delete_topics(&self.programs.brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }

    pub async fn latency(&self, kind: Kind) -> anyhow::Result<Delivery> {
        let s = &self.scale;
        let mix = Mix { price_share: s.latency_price_share, users: s.latency_clients, hot_share: 0.0 };
        self.delivery(kind, "latency", s.latency_clients, s.latency_rate, mix, &["prices", "orders", "trades", "portfolio"]).await
    }

    pub async fn private(&self, kind: Kind) -> anyhow::Result<Delivery> {
        let s = &self.scale;
        let mix = Mix { price_share: 0.0, users: s.private_users, hot_share: 0.5 };
        self.delivery(kind, "private", s.private_users, s.private_rate, mix, &["orders", "trades", "portfolio"]).await
    }

    /// Scenario e: RSS per idle connection (subscribed to `prices`, no events).
    pub async fn memory(&self, kind: Kind) -> anyhow::Result<Memory> {
        let t = topic("memory");
        kafka::create_topic(&self.programs.brokers, &t, 6, LIVE_COMPRESSION).await?;
        let res = async {
            let target = self.start(kind, &t, false, "memory").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = target.sample()?.rss_bytes;
            // Both this process and the target hold one descriptor per connection.
            let fd_cap = (procstat::open_files_limit() as usize).saturating_sub(500);
            let mut note = None;
            let mut levels = Vec::new();
            let mut open: Vec<clients::Clients> = Vec::new();
            let mut have = 0usize;
            let recorder = Arc::new(LatencyRecorder::new());
            for &requested in &self.scale.memory_levels {
                let want = requested.min(fd_cap);
                if want < requested {
                    note = Some(format!(
                        "{requested} connections requested; capped at {want}: the open-files limit (RLIMIT_NOFILE) of this machine is {} and cannot be raised (no CAP_SYS_RESOURCE)",
                        procstat::open_files_limit()
                    ));
                }
                if want <= have {
                    continue;
                }
                log(format!("memory: {} → {want} idle connections on {}", have, kind.name()));
                let specs = self.specs(kind, &target.ws_url(), want - have, &["prices"], false);
                let c = clients::open(Self::addr(&target), specs, have, self.concurrency, recorder.clone()).await;
                if !c.failures.is_empty() {
                    note = Some(format!("{} of {} connections failed: {:?}", want - have - c.opened, want - have, c.failures));
                }
                have += c.opened;
                open.push(c);
                let settle = if kind == Kind::Centrifugo { self.scale.peer_memory_settle_secs } else { 3.0 };
                if kind == Kind::Centrifugo {
                    log(format!("memory: {settle:.0} s for Go's garbage collector to settle"));
                }
                tokio::time::sleep(Duration::from_secs_f64(settle)).await;
                let rss = target.sample()?.rss_bytes;
                let level = MemoryLevel {
                    requested,
                    connections: have,
                    rss_mib: mib(rss),
                    bytes_per_connection: rss.saturating_sub(before) as f64 / have.max(1) as f64,
                };
                log(format!("memory {}: {have} connections, {:.0} bytes each", kind.name(), level.bytes_per_connection));
                levels.push(level);
            }
            for c in open {
                c.close().await;
            }
            target.stop().await;
            Ok(Memory { target: kind, rss_mib_before: mib(before), levels, note })
        }
        .await;
        kafka::delete_topics(&self.programs.brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }
}

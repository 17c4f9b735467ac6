//! `moonx-bench chaos`: the reliability suite (issue 15, RELIABILITY.md).
//! A steady stream (prices and private events of many users) runs at a
//! fixed rate while 1,000+ resume-aware clients ([`fleet`]) are connected
//! through faults: Toxiproxy between the gateway and the broker
//! ([`toxiproxy`]), SIGKILLed gateways, a second instance to fail over to, a
//! reconnect storm, poison records, a deleted DLQ, a restarted broker.
//!
//! Guarantee of the runner: every record the broker acknowledged
//! ([`stream::Ledger`]) is looked for at every client entitled to it, and
//! counted delivered once, delivered and deduped, missing, or leaked (seen
//! by a client that is not entitled, or on another channel). A run with any
//! missing or leaked event, or a poison record that did not reach the DLQ,
//! exits non-zero. Prices are public and not resumable (the snapshot on
//! subscribe covers them): they are load, counted but not owed across a
//! disconnect.

mod fleet;
mod stream;
mod toxiproxy;

use crate::procstat;
use crate::target::{metric_sum, Kind, Launch, Programs, Target, JWT_SECRET};
use clap::Parser;
use fleet::Fleet;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::{Ledger, Owner};

/// Every scenario, in the order of the priorities.
pub const SCENARIOS: [&str; 10] =
    ["broker-unreachable", "latency", "reset", "sigkill", "storm", "poison", "broker-restart", "failover", "dlq-deleted", "bandwidth"];

#[derive(Parser)]
pub struct ChaosArgs {
    /// The broker's direct listener (producer, admin): never through the
    /// proxy, so a fault cuts the gateway off and never the stream.
    #[arg(long, default_value = "127.0.0.1:19410")]
    brokers: String,
    /// What the gateway is given as KAFKA_BROKERS: the proxy's listen address,
    /// which must also be the broker's advertised listener.
    #[arg(long, default_value = "127.0.0.1:19409")]
    proxy_listen: String,
    /// The proxy's upstream: the broker listener that advertises the proxy.
    #[arg(long, default_value = "127.0.0.1:19406")]
    upstream: String,
    #[arg(long, default_value = "http://127.0.0.1:19408")]
    toxiproxy_api: String,
    #[arg(long, default_value = "moonx-chaos-kafka")]
    proxy_name: String,
    /// Restarts the broker (the broker-restart scenario): `<script> restart`
    /// with this process's environment (KAFKA_PORT, KAFKA_ADVERTISED_PORT).
    #[arg(long, default_value = "scripts/kafka")]
    kafka_script: PathBuf,
    #[arg(long, default_value = "target/debug/moonx-ws")]
    moonx_bin: PathBuf,
    /// First of the gateways' ports (two for the failover scenario).
    #[arg(long, default_value_t = 19411)]
    gateway_port: u16,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Events per second (prices and user events), poison on top.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 0.2)]
    price_share: f64,
    /// Scenarios to run (see SCENARIOS); `soak` runs the soak instead.
    #[arg(long, value_delimiter = ',', default_value = "broker-unreachable,latency,reset,sigkill,storm,poison,broker-restart,failover,dlq-deleted,bandwidth")]
    only: Vec<String>,
    /// Fault lengths for CI (seconds instead of minutes).
    #[arg(long)]
    short: bool,
    /// Length of the soak (with `--only soak`).
    #[arg(long, default_value_t = 1800.0)]
    soak_secs: f64,
    /// Output directory (chaos.json, chaos.md, soak.png, logs/).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Serialize, Default)]
pub struct Row {
    pub scenario: String,
    pub fault: String,
    pub clients: usize,
    pub users: usize,
    pub rate: f64,
    pub produced_private: u64,
    pub produced_prices: u64,
    pub poison_produced: u64,
    pub expected_deliveries: u64,
    pub delivered_once: u64,
    /// Copies dropped by the clients' eventId dedupe (the app saw each id once).
    pub deduped_copies: u64,
    pub missing: u64,
    pub leaked: u64,
    pub price_frames: u64,
    pub resumes_recovered: u64,
    pub resumes_not_recovered: u64,
    pub connects: u64,
    pub failed_connects: u64,
    pub slow_consumer_closes: u64,
    pub failed_sends: u64,
    pub dlq_writes: Option<f64>,
    /// From the fault's end to /health 200 and consumer lag 0 on every live gateway.
    pub recover_secs: Option<f64>,
    /// From the fault's end until every event acknowledged before it is at its clients.
    pub catchup_secs: Option<f64>,
    pub peak_rss_mib: f64,
    pub samples: Vec<Sample>,
    pub growth: Option<Growth>,
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Sample {
    pub t: f64,
    pub rss_mib: f64,
    pub fds: u64,
    pub threads: u64,
}

#[derive(Debug, Serialize)]
pub struct Growth {
    pub from_secs: f64,
    pub to_secs: f64,
    pub rss_mib: (f64, f64),
    pub fds: (u64, u64),
    pub threads: (u64, u64),
    pub rss_percent: f64,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[chaos {:7.1}s] {}", crate::elapsed(), msg.as_ref());
}

struct Gw {
    port: u16,
    group: String,
    instance: String,
    starts: usize,
    target: Option<Target>,
}

/// The gateways of one scenario; live pids are shared with the sampler.
struct Cluster {
    programs: Programs,
    topic: String,
    tag: String,
    gws: Vec<Gw>,
    pids: Arc<Mutex<Vec<(usize, u32)>>>,
}

impl Cluster {
    fn launch(&mut self, k: usize) -> anyhow::Result<()> {
        let g = &mut self.gws[k];
        g.starts += 1;
        let tag = format!("{}-gw{k}-{}", self.tag, g.starts);
        let env = vec![
            ("PORT", g.port.to_string()),
            ("KAFKA_CONSUMER_GROUP_ID", g.group.clone()),
            ("GATEWAY_INSTANCE_ID", g.instance.clone()),
            ("EVENT_DEAD_LETTER_QUEUE_TOPIC", format!("{}.dlq", self.topic)),
            ("RUST_LOG", "warn,rdkafka=error,moonx_ws::source::kafka=info".into()),
        ];
        let mut t = Target::start(Kind::Moonx, &self.programs, Launch { topic: &self.topic, from_beginning: false, env, tag: &tag })?;
        t.port = g.port; // PORT above wins over the port Target picked
        let mut pids = self.pids.lock().unwrap_or_else(|p| p.into_inner());
        pids.retain(|(i, _)| *i != k);
        pids.push((k, t.pid()));
        g.target = Some(t);
        Ok(())
    }

    async fn wait_ready(&mut self, k: usize) -> anyhow::Result<()> {
        if let Some(t) = self.gws[k].target.as_mut() {
            t.wait_ready(Duration::from_secs(90)).await?;
        }
        Ok(())
    }

    fn kill(&mut self, k: usize) {
        if let Some(t) = self.gws[k].target.take() {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(t.pid().to_string()).status();
            drop(t); // reaps it
        }
        self.pids.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != k);
    }

    fn urls(&self) -> Vec<String> {
        self.gws.iter().map(|g| format!("ws://127.0.0.1:{}/ws", g.port)).collect()
    }

    /// /health 200 and consumer lag at its steady level (at most `lag_ok`
    /// records: 1.5 × the lag seen before the fault) on every live gateway;
    /// else why not.
    async fn healthy(&self, lag_ok: f64) -> Result<(), String> {
        let http = reqwest::Client::new();
        if self.gws.iter().all(|g| g.target.is_none()) {
            return Err("no gateway running".into());
        }
        for g in self.gws.iter().filter(|g| g.target.is_some()) {
            match http.get(format!("http://127.0.0.1:{}/health", g.port)).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(format!("health {}: {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => return Err(format!("health: {e}")),
            }
            let Some(t) = g.target.as_ref() else { return Err("no gateway".into()) };
            let m = t.metrics().await.map_err(|e| format!("metrics: {e}"))?;
            let lag = metric_sum(&m, "moonx_ws_consumer_lag");
            if lag > lag_ok {
                return Err(format!("consumer lag {lag}"));
            }
        }
        Ok(())
    }

    async fn metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for g in self.gws.iter().filter_map(|g| g.target.as_ref()) {
            if let Ok(m) = g.metrics().await {
                sum += metric_sum(&m, name);
            }
        }
        sum
    }

    async fn stop(&mut self) {
        for g in &mut self.gws {
            if let Some(t) = g.target.take() {
                t.stop().await;
            }
        }
    }
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// Samples the first live gateway every `every`: RSS, open fds, threads
/// (the gateway exposes no tokio task count); and the peak RSS of all.
fn sampler(pids: Arc<Mutex<Vec<(usize, u32)>>>, t0: Instant, every: Duration, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Vec<Sample>, u64)> {
    tokio::spawn(async move {
        let (mut samples, mut peak) = (Vec::new(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            let live: Vec<(usize, u32)> = pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (_, pid) in &live {
                if let Ok(s) = procstat::sample(*pid) {
                    peak = peak.max(s.rss_bytes);
                }
            }
            if let Some((_, pid)) = live.iter().min_by_key(|(k, _)| *k)
                && let Ok(s) = procstat::sample(*pid) {
                    samples.push(Sample {
                        t: t0.elapsed().as_secs_f64(),
                        rss_mib: s.rss_bytes as f64 / 1048576.0,
                        fds: fd_count(*pid),
                        threads: procstat::status_kib(*pid, "Threads:").unwrap_or(0),
                    });
                }
            tokio::time::sleep(every).await;
        }
        (samples, peak)
    })
}

/// Private events acknowledged before `before` (all when None) that are not
/// yet at every client of their user.
fn pending(ledger: &Ledger, fleet: &Fleet, users: usize, before: Option<Instant>) -> u64 {
    let events = ledger.events.lock().unwrap_or_else(|p| p.into_inner());
    let mut by_user: HashMap<usize, Vec<u128>> = HashMap::new();
    for (id, e) in events.iter() {
        if let Owner::User(u, _) = e.owner
            && before.is_none_or(|b| e.acked <= b) {
                by_user.entry(u).or_default().push(*id);
            }
    }
    let mut missing = 0;
    for c in &fleet.clients {
        let Some(ids) = by_user.get(&(c.user % users.max(1))) else { continue };
        let seen = c.seen.lock().unwrap_or_else(|p| p.into_inner());
        missing += ids.iter().filter(|id| !seen.events.contains_key(id)).count() as u64;
    }
    missing
}

fn token(user: usize) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86_400;
    let claims = moonx_ws::deliver::auth::Claims { sub: crate::events::user_id(user), roles: vec![], exp };
    moonx_ws::deliver::auth::sign(JWT_SECRET, &claims)
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not reached within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
    let logs = a.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    anyhow::ensure!(a.moonx_bin.exists(), "{} does not exist: build it first", a.moonx_bin.display());
    let tp = toxiproxy::Toxiproxy::new(&a.toxiproxy_api, &a.proxy_name);
    tp.ensure(&a.proxy_listen, &a.upstream).await?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for name in &a.only {
        anyhow::ensure!(name == "soak" || SCENARIOS.contains(&name.as_str()), "unknown scenario {name} (of {SCENARIOS:?}, soak)");
        log(format!("scenario {name}"));
        let row = match scenario(&a, &tp, name, &logs).await {
            Ok(r) => r,
            Err(e) => Row { scenario: name.clone(), failures: vec![format!("did not complete: {e:#}")], ..Row::default() },
        };
        log(format!(
            "{name}: produced {} private, expected {}, once {}, deduped {}, missing {}, leaked {}, recover {:?} s, catch-up {:?} s, failures {:?}",
            row.produced_private, row.expected_deliveries, row.delivered_once, row.deduped_copies, row.missing, row.leaked, row.recover_secs, row.catchup_secs, row.failures
        ));
        // Leave the proxy clean for the next one, whatever happened.
        tp.ensure(&a.proxy_listen, &a.upstream).await?;
        rows.push(row);
    }
    std::fs::write(a.out.join("chaos.json"), serde_json::to_string_pretty(&rows)?)?;
    let md = markdown(&a, &rows, started.elapsed().as_secs_f64());
    std::fs::write(a.out.join("chaos.md"), &md)?;
    for r in rows.iter().filter(|r| !r.samples.is_empty() && r.scenario == "soak") {
        soak_chart(&a.out.join("soak.png"), &r.samples)?;
    }
    println!("{md}");
    let failed: Vec<String> = rows.iter().flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.scenario))).collect();
    anyhow::ensure!(failed.is_empty(), "{} failure(s): {failed:#?}", failed.len());
    Ok(())
}

fn soak_chart(path: &std::path::Path, s: &[Sample]) -> anyhow::Result<()> {
    let min = |t: f64| t / 60.0;
    let series = vec![
        ("RSS (MiB)".to_string(), s.iter().map(|x| (min(x.t), x.rss_mib)).collect(), 0),
        ("open fds".to_string(), s.iter().map(|x| (min(x.t), x.fds as f64)).collect(), 1),
        ("threads".to_string(), s.iter().map(|x| (min(x.t), x.threads as f64)).collect(), 2),
    ];
    crate::chart::lines(path, "soak: moonx-ws over time", "minutes", "value", &series, false, None)
}

fn durations(short: bool) -> HashMap<&'static str, f64> {
    let full: [(&str, f64); 10] = [("broker-unreachable", 30.0), ("latency", 30.0), ("reset", 30.0), ("bandwidth", 20.0), ("sigkill", 180.0), ("poison", 30.0), ("dlq-deleted", 20.0), ("failover", 10.0), ("storm", 0.0), ("broker-restart", 0.0)];
    // CI: a third of each fault (whole seconds), one kill, failover as long.
    let scale: f64 = if short { 3.0 } else { 1.0 };
    full.into_iter()
        .map(|(k, v)| (k, match k {
            "sigkill" if short => 25.0, // one kill
            "failover" => v,
            _ => (v / scale).round(),
        }))
        .collect()
}

async fn scenario(a: &ChaosArgs, tp: &toxiproxy::Toxiproxy, name: &str, logs: &std::path::Path) -> anyhow::Result<Row> {
    let soak = name == "soak";
    let fault_secs = if soak { a.soak_secs } else { durations(a.short)[name] };
    let topic = format!("chaos.{name}.{}", uuid::Uuid::new_v4().simple());
    crate::kafka::create_topic(&a.brokers, &topic, 6, "producer").await?;
    let instances = if name == "failover" { 2 } else { 1 };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut cluster = Cluster {
        programs: Programs { moonx_bin: a.moonx_bin.clone(), node: String::new(), baseline_dir: PathBuf::new(), brokers: a.proxy_listen.clone(), logs: logs.to_path_buf(), centrifugo_bin: PathBuf::new(), bench_bin: PathBuf::new() },
        topic: topic.clone(),
        tag: name.to_owned(),
        gws: (0..instances)
            .map(|k| Gw { port: a.gateway_port + k as u16, group: format!("chaos-{run_id}-{k}"), instance: format!("chaos-{k}"), starts: 0, target: None })
            .collect(),
        pids: Arc::default(),
    };
    let res = scenario_on(a, tp, name, soak, fault_secs, &topic, &mut cluster).await;
    cluster.stop().await;
    crate::kafka::delete_topics(&a.brokers, &[topic.clone(), format!("{topic}.dlq")]).await;
    res
}

#[allow(clippy::too_many_arguments)]
async fn scenario_on(a: &ChaosArgs, tp: &toxiproxy::Toxiproxy, name: &str, soak: bool, fault_secs: f64, topic: &str, cluster: &mut Cluster) -> anyhow::Result<Row> {
    for k in 0..cluster.gws.len() {
        cluster.launch(k)?;
    }
    for k in 0..cluster.gws.len() {
        cluster.wait_ready(k).await?;
    }
    let sample_stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let sampler = sampler(cluster.pids.clone(), t0, Duration::from_millis(if soak { 5000 } else { 500 }), sample_stop.clone());
    let users = a.users.min(a.clients).max(1);
    let fleet = Fleet::start(a.clients, users, cluster.urls(), token);
    wait_for("all clients subscribed", Duration::from_secs(120), || fleet.ready() == a.clients).await?;

    // Warm-up: one event per user and private channel, so every client has
    // a position on each before the first fault.
    let producer = stream::producer(&a.brokers)?;
    let ledger = Arc::new(Ledger::default());
    let mut maker = stream::Maker::new();
    for u in 0..users {
        for t in [1, 3, 4] {
            let (key, payload, id, owner) = maker.make(t, u);
            stream::send(&producer, &ledger, topic, key, payload, Some((id, owner)), None);
        }
    }
    wait_for("every client has a position on each private channel", Duration::from_secs(120), || {
        fleet.clients.iter().all(|c| c.seen.lock().unwrap_or_else(|p| p.into_inner()).last_pos.len() == fleet::PRIVATE.len())
    })
    .await?;
    log(format!("{name}: {} clients of {users} users ready; stream at {} events/s", a.clients, a.rate));

    let poison_share = if matches!(name, "poison" | "dlq-deleted") { 0.1 } else { 0.0 };
    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(stream::run(producer.clone(), ledger.clone(), topic.to_owned(), a.rate, users, a.price_share, poison_share, stop.clone()));
    let lead = if a.short { 3.0 } else { 10.0 };
    // The lag before the fault: librdkafka reports it against the stored
    // offsets once a second, so under a steady stream it sits at about a
    // second of records, not 0. "Lag back" means back to this level.
    let lead_end = Instant::now() + Duration::from_secs_f64(lead);
    let mut steady_lag: f64 = 0.0;
    while Instant::now() < lead_end {
        steady_lag = steady_lag.max(cluster.metric("moonx_ws_consumer_lag").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut failures = Vec::new();
    let fault_desc: String;
    let pause = |s: f64| tokio::time::sleep(Duration::from_secs_f64(s));
    log(format!("{name}: fault for {fault_secs} s"));
    let fault_start = t0.elapsed().as_secs_f64();
    match name {
        "broker-unreachable" => {
            fault_desc = format!("proxy disabled {fault_secs:.0} s (connections closed, new ones refused)");
            tp.set_enabled(false).await?;
            pause(fault_secs).await;
            tp.set_enabled(true).await?;
        }
        "latency" => {
            fault_desc = format!("+1,000 ms each way on the broker link for {fault_secs:.0} s");
            tp.add_toxic("lat-down", "latency", "downstream", serde_json::json!({"latency": 1000})).await?;
            tp.add_toxic("lat-up", "latency", "upstream", serde_json::json!({"latency": 1000})).await?;
            pause(fault_secs).await;
            tp.remove_toxic("lat-down").await?;
            tp.remove_toxic("lat-up").await?;
        }
        "reset" => {
            let end = Instant::now() + Duration::from_secs_f64(fault_secs);
            let mut n = 0;
            while Instant::now() < end {
                tp.add_toxic("reset", "reset_peer", "downstream", serde_json::json!({"timeout": 0})).await?;
                pause(0.5).await;
                tp.remove_toxic("reset").await?;
                n += 1;
                pause(4.5).await;
            }
            fault_desc = format!("TCP reset of the broker connections every 5 s for {fault_secs:.0} s ({n} resets)");
        }
        "bandwidth" => {
            fault_desc = format!("broker link cut to 10 KB/s for {fault_secs:.0} s");
            tp.add_toxic("bw", "bandwidth", "downstream", serde_json::json!({"rate": 10})).await?;
            pause(fault_secs).await;
            tp.remove_toxic("bw").await?;
        }
        "sigkill" => {
            let end = Instant::now() + Duration::from_secs_f64(fault_secs);
            let mut n = 0;
            loop {
                pause(20.0_f64.min(fault_secs)).await;
                if Instant::now() > end {
                    break;
                }
                cluster.kill(0);
                n += 1;
                cluster.launch(0)?;
                cluster.wait_ready(0).await?;
            }
            fault_desc = format!("gateway SIGKILLed every 20 s for {fault_secs:.0} s ({n} kills), restarted at once");
        }
        "failover" => {
            cluster.kill(1);
            fault_desc = format!("two instances; instance 2 SIGKILLed, its clients fail over to instance 1 ({fault_secs:.0} s observed)");
            pause(fault_secs).await;
        }
        "storm" => {
            fleet.drop_all();
            fault_desc = "every client dropped at once, all reconnect with since".into();
        }
        "poison" => {
            fault_desc = format!("10 % poison records ({}) for {fault_secs:.0} s", stream::POISON_KINDS.join(", "));
            pause(fault_secs).await;
        }
        "dlq-deleted" => {
            pause(fault_secs / 2.0).await;
            crate::kafka::delete_topics(&a.brokers, &[format!("{topic}.dlq")]).await;
            fault_desc = format!("10 % poison; the DLQ topic deleted after {:.0} s of {fault_secs:.0} s", fault_secs / 2.0);
            pause(fault_secs / 2.0).await;
        }
        "broker-restart" => {
            let script = a.kafka_script.clone();
            let t = Instant::now();
            let st = tokio::task::spawn_blocking(move || std::process::Command::new(script).arg("restart").status()).await??;
            anyhow::ensure!(st.success(), "broker restart failed: {st}");
            fault_desc = format!("broker stopped (SIGTERM) and started again ({:.1} s)", t.elapsed().as_secs_f64());
        }
        "soak" => {
            fault_desc = format!("{fault_secs:.0} s at {} events/s, clients churning (connect, resume, disconnect after 2–15 s)", a.rate);
            fleet.churn.store(true, Ordering::Relaxed);
            fleet.drop_all(); // start churning now
            pause(fault_secs).await;
            fleet.churn.store(false, Ordering::Relaxed);
            fleet.drop_all(); // back to long-lived connections
        }
        _ => unreachable!("checked by run"),
    }
    let fault_end = Instant::now();
    log(format!("{name}: fault over; {} deliveries of earlier events pending", pending(&ledger, &fleet, users, Some(fault_end))));

    // Recovery: health and lag on the gateways, and the clients caught up.
    let mut recover_secs = None;
    let mut catchup_secs = None;
    let deadline = fault_end + Duration::from_secs(120);
    let lag_ok = (steady_lag * 1.5).max(20.0);
    let mut why_not = String::new();
    while Instant::now() < deadline && (recover_secs.is_none() || catchup_secs.is_none()) {
        if recover_secs.is_none() {
            match cluster.healthy(lag_ok).await {
                Ok(()) => recover_secs = Some(fault_end.elapsed().as_secs_f64()),
                Err(e) => {
                    if why_not.is_empty() || fault_end.elapsed().as_secs().is_multiple_of(5) {
                        log(format!("{name}: not recovered yet: {}", e.chars().take(300).collect::<String>()));
                    }
                    why_not = e;
                }
            }
        }
        if catchup_secs.is_none() && pending(&ledger, &fleet, users, Some(fault_end)) == 0 {
            catchup_secs = Some(fault_end.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(lead)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = stream.await;
    {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&p, Duration::from_secs(180))).await??;
    }
    // Give the in-flight delivery reports a moment to land in the ledger.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut last = u64::MAX;
    let mut still = Instant::now();
    loop {
        let p = pending(&ledger, &fleet, users, None);
        if p == 0 {
            break;
        }
        if p != last {
            last = p;
            still = Instant::now();
        }
        if still.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dlq_writes = if poison_share > 0.0 { Some(cluster.metric("moonx_ws_dlq_writes_total").await) } else { None };
    let counters = fleet.counters.clone();
    let clients = fleet.stop().await;
    sample_stop.store(true, Ordering::Relaxed);
    let (samples, peak) = sampler.await?;

    // Accounting.
    let mut row = Row { scenario: name.to_owned(), fault: fault_desc, clients: a.clients, users, rate: a.rate, ..Row::default() };
    let events = ledger.events.lock().unwrap_or_else(|p| p.into_inner());
    let mut of_user: HashMap<usize, Vec<&Arc<fleet::Client>>> = HashMap::new();
    for c in &clients {
        of_user.entry(c.user).or_default().push(c);
    }
    let mut missing_examples = Vec::new();
    for (id, e) in events.iter() {
        match e.owner {
            Owner::Prices => row.produced_prices += 1,
            Owner::User(u, channel) => {
                row.produced_private += 1;
                for c in of_user.get(&u).into_iter().flatten() {
                    row.expected_deliveries += 1;
                    let seen = c.seen.lock().unwrap_or_else(|p| p.into_inner());
                    match seen.events.get(id) {
                        None => {
                            row.missing += 1;
                            if missing_examples.len() < 5 {
                                missing_examples.push(format!("{} for user-{u} on {channel}", uuid::Uuid::from_u128(*id)));
                            }
                        }
                        Some(n) => {
                            row.delivered_once += 1;
                            row.deduped_copies += u64::from(n - 1);
                            if seen.channel_of.get(id) != Some(&channel) {
                                row.leaked += 1; // right user, wrong channel
                            }
                        }
                    }
                }
            }
        }
    }
    let mut unknown = 0u64;
    for c in &clients {
        let seen = c.seen.lock().unwrap_or_else(|p| p.into_inner());
        row.price_frames += seen.price_frames;
        for (id, n) in &seen.events {
            match events.get(id).map(|e| e.owner) {
                Some(Owner::User(u, _)) if u != c.user => row.leaked += u64::from(*n),
                Some(Owner::Prices) if !c.prices => row.leaked += u64::from(*n),
                Some(Owner::Prices) => row.deduped_copies += u64::from(n - 1),
                None => unknown += u64::from(*n),
                _ => {}
            }
        }
    }
    row.poison_produced = ledger.poison.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
    row.failed_sends = ledger.failed_sends.load(Ordering::Relaxed);
    row.resumes_recovered = counters.recovered.load(Ordering::Relaxed);
    row.resumes_not_recovered = counters.not_recovered.load(Ordering::Relaxed);
    row.connects = counters.connects.load(Ordering::Relaxed);
    row.failed_connects = counters.failed_connects.load(Ordering::Relaxed);
    row.slow_consumer_closes = counters.slow_consumer_closes.load(Ordering::Relaxed);
    row.dlq_writes = dlq_writes;
    row.recover_secs = recover_secs;
    row.catchup_secs = catchup_secs;
    row.peak_rss_mib = peak as f64 / 1048576.0;
    if row.missing > 0 {
        failures.push(format!("{} missing, e.g. {missing_examples:?}", row.missing));
    }
    if row.leaked > 0 {
        failures.push(format!("{} leaked", row.leaked));
    }
    if unknown > 0 {
        failures.push(format!("{unknown} frames of events this run did not produce"));
    }
    if name == "poison" && dlq_writes.is_some_and(|w| (w as u64) < row.poison_produced) {
        failures.push(format!("{} poison records, {:?} dead letters", row.poison_produced, dlq_writes));
    }
    if recover_secs.is_none() {
        failures.push(format!("health and lag not back within 120 s: {why_not}"));
    }
    if soak && samples.len() >= 4 {
        // Minute 5 to minute 30 of a 30-minute soak: from a sixth of the way
        // to the last sample before the churn stopped.
        let soak_end = fault_start + fault_secs;
        let during: Vec<Sample> = samples.iter().copied().filter(|x| x.t >= fault_start + fault_secs / 6.0 && x.t <= soak_end).collect();
        let (s0, s1) = (during.first().copied().unwrap_or_default(), during.last().copied().unwrap_or_default());
        row.growth = Some(Growth {
            from_secs: s0.t,
            to_secs: s1.t,
            rss_mib: (s0.rss_mib, s1.rss_mib),
            fds: (s0.fds, s1.fds),
            threads: (s0.threads, s1.threads),
            rss_percent: (s1.rss_mib / s0.rss_mib - 1.0) * 100.0,
        });
    }
    if soak {
        row.samples = samples;
    }
    row.failures = failures;
    Ok(row)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("not reached".into(), |s| format!("{s:.1} s"))
}

fn markdown(a: &ChaosArgs, rows: &[Row], secs: f64) -> String {
    let mut s = format!(
        "# moonx-bench chaos\n\n{} clients of {} users, {} events/s ({} % prices), {}; {:.0} s in all.\n\n",
        a.clients,
        a.users.min(a.clients),
        a.rate,
        a.price_share * 100.0,
        if a.short { "short (CI) fault lengths" } else { "full fault lengths" },
        secs
    );
    s += "| scenario | fault | produced (private / prices / poison) | expected deliveries | delivered once | deduped copies | missing | leaked | resumes recovered / not | health+lag back | clients caught up | peak RSS | slow-consumer closes | connects (failed) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} / {} / {} | {} | {} | {} | **{}** | **{}** | {} / {} | {} | {} | {:.1} MiB | {} | {} ({}) |\n",
            r.scenario, r.fault, r.produced_private, r.produced_prices, r.poison_produced, r.expected_deliveries, r.delivered_once, r.deduped_copies,
            r.missing, r.leaked, r.resumes_recovered, r.resumes_not_recovered, opt(r.recover_secs), opt(r.catchup_secs), r.peak_rss_mib,
            r.slow_consumer_closes, r.connects, r.failed_connects
        );
    }
    for r in rows {
        if let Some(w) = r.dlq_writes {
            s += &format!("\n{}: {} poison records produced, {} dead letters written.\n", r.scenario, r.poison_produced, w);
        }
        if let Some(g) = &r.growth {
            s += &format!(
                "\n{}: from {:.0} s to {:.0} s: RSS {:.1} → {:.1} MiB ({:+.1} %), open fds {} → {}, threads {} → {}.\n",
                r.scenario, g.from_secs, g.to_secs, g.rss_mib.0, g.rss_mib.1, g.rss_percent, g.fds.0, g.fds.1, g.threads.0, g.threads.1
            );
        }
        if !r.failures.is_empty() {
            s += &format!("\n**{} FAILED**: {}\n", r.scenario, r.failures.join("; "));
        }
    }
    s
}

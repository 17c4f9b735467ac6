//! moonx-bench: the load tool and benchmark suite of moonx-ws (issue 6,
//! BENCHMARKS.md).
//!
//! * `moonx-bench suite` runs the scenarios (b–f here; a's criterion part is
//!   run by `bench/run`, whose estimates this reads) against `moonx-ws serve`
//!   and the Node.js baseline, and writes results.json, results.md and PNG
//!   charts.
//! * `moonx-bench produce` produces events at a fixed rate, or as fast as
//!   possible, for ad-hoc runs.
//! * `moonx-bench chaos` runs the reliability suite (RELIABILITY.md,
//!   `scripts/chaos`).
#![forbid(unsafe_code)]

mod chaos;
mod chart;
mod clients;
mod events;
mod floor;
mod kafka;
mod procstat;
mod report;
mod resume;
mod skip_consume;
mod stats;
mod suite;
mod target;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;
use suite::{Results, Scale, Suite};
use target::{Kind, Programs};

static START: OnceLock<Instant> = OnceLock::new();

pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[derive(Parser)]
#[command(name = "moonx-bench", about = "Load tool and benchmark suite of moonx-ws")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the scenarios against moonx-ws and the Node.js baseline.
    Suite(Box<SuiteArgs>),
    /// Produces events (price.updated and user events) to a topic.
    Produce(ProduceArgs),
    /// Opens N WebSocket clients subscribed to channels, holds them, and
    /// reports the frames they received and their latency.
    Connect(ConnectArgs),
    /// The reliability suite (RELIABILITY.md): scenarios under injected faults.
    Chaos(Box<chaos::ChaosArgs>),
    /// The fan-out floor of scenario c (started by `suite`): accepts
    /// WebSocket clients and writes them price frames at the rate given on
    /// stdin (`rate <events/s>`).
    FanoutFloor {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Parser)]
struct ConnectArgs {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:3008")]
    addr: std::net::SocketAddr,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Channels to subscribe to.
    #[arg(long, value_delimiter = ',', default_value = "prices")]
    channels: Vec<String>,
    /// Authenticate client i as user-i with a JWT signed with this secret
    /// (moonx-ws), or pass ?userId=user-i (`--user-query`, the baseline).
    #[arg(long)]
    jwt_secret: Option<String>,
    #[arg(long)]
    user_query: bool,
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

#[derive(Parser)]
struct SuiteArgs {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The moonx-ws binary (release build for real numbers).
    #[arg(long, default_value = "target/release/moonx-ws")]
    moonx_bin: PathBuf,
    #[arg(long, default_value = "node")]
    node: String,
    #[arg(long, default_value = "bench/baseline-node")]
    baseline_dir: PathBuf,
    /// Where criterion wrote the hot-path estimates.
    #[arg(long, default_value = "target/criterion")]
    criterion_dir: PathBuf,
    /// Output directory (results.json, results.md, *.png, logs/).
    #[arg(long)]
    out: PathBuf,
    /// Small N, seconds per scenario.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, of a,b,b2,c,d,e,f,g (b2: consume with 1 % of the
    /// users connected on a non-writer instance; g: resume storm; both
    /// moonx-ws only).
    #[arg(long, value_delimiter = ',', default_value = "a,b,b2,c,d,e,f,g")]
    only: Vec<String>,
    /// Systems under test, of moonx,baseline,centrifugo,floor (floor: the
    /// fan-out floor, scenario c only).
    #[arg(long, value_delimiter = ',', default_value = "moonx,baseline")]
    targets: Vec<String>,
    /// The Centrifugo v6 binary (bench/run installs it).
    #[arg(long, default_value = ".cache/go-bin/centrifugo")]
    centrifugo_bin: PathBuf,
    /// How the gateway was built (reported).
    #[arg(long, default_value = "release")]
    profile: String,
    /// The command line to report.
    #[arg(long, default_value = "")]
    command: String,
    /// The source revision to report.
    #[arg(long, default_value = "")]
    source: String,
    /// WebSocket handshakes in flight.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    // Overrides of the scale.
    #[arg(long)]
    consume_events: Option<u64>,
    #[arg(long)]
    fanout_clients: Option<usize>,
    #[arg(long, value_delimiter = ',')]
    fanout_rates: Option<Vec<f64>>,
    #[arg(long)]
    latency_clients: Option<usize>,
    #[arg(long)]
    latency_rate: Option<f64>,
    #[arg(long, value_delimiter = ',')]
    memory_levels: Option<Vec<usize>>,
    #[arg(long)]
    private_users: Option<usize>,
    #[arg(long)]
    private_rate: Option<f64>,
    #[arg(long)]
    measure_secs: Option<f64>,
    #[arg(long)]
    resume_clients: Option<usize>,
    #[arg(long)]
    resume_rate: Option<f64>,
    #[arg(long)]
    resume_gap_secs: Option<f64>,
}

#[derive(Parser)]
struct ProduceArgs {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, env = "KAFKA_MAIN_TOPIC", default_value = "moonx.ws.events")]
    topic: String,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Number of events (as fast as possible) or seconds (at a rate).
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Share of price.updated; the rest are user events of --users users.
    #[arg(long, default_value_t = 1.0)]
    price_share: f64,
    #[arg(long, default_value_t = 1000)]
    users: usize,
}

fn main() -> anyhow::Result<()> {
    elapsed();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Suite(a) => rt.block_on(run_suite(*a)),
        Cmd::Connect(a) => rt.block_on(connect(a)),
        Cmd::Chaos(a) => rt.block_on(chaos::run(*a)),
        Cmd::FanoutFloor { port } => rt.block_on(floor::serve(port)),
        Cmd::Produce(a) => {
            let mix = events::Mix { price_share: a.price_share, users: a.users, hot_share: 0.0 };
            if a.rate <= 0.0 {
                let r = kafka::preload(&a.brokers, &a.topic, a.count, events::Generator::new(mix, 1))?;
                println!("produced {} events at {r:.0} events/s", a.count);
            } else {
                use std::sync::atomic::{AtomicBool, AtomicU64};
                use std::sync::Arc;
                let stop = Arc::new(AtomicBool::new(false));
                let s = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(a.count));
                    s.store(true, std::sync::atomic::Ordering::Relaxed);
                });
                let n = kafka::produce_at_rate(&a.brokers, &a.topic, a.rate, events::Generator::new(mix, 1), stop, Arc::new(AtomicU64::new(0)))?;
                println!("produced {n} events in {} s", a.count);
            }
            Ok(())
        }
    }
}

async fn connect(a: ConnectArgs) -> anyhow::Result<()> {
    let url = format!("ws://{}/ws", a.addr);
    let subscribe = std::sync::Arc::new(
        a.channels.iter().map(|c| format!(r#"{{"type":"subscribe","channel":"{c}"}}"#)).collect::<Vec<_>>(),
    );
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 86_400;
    let specs = (0..a.clients)
        .map(|i| {
            let url = match (&a.jwt_secret, a.user_query) {
                (Some(secret), _) => {
                    let claims = moonx_ws::deliver::auth::Claims { sub: events::user_id(i), roles: vec![], exp };
                    format!("{url}?token={}", moonx_ws::deliver::auth::sign(secret, &claims))
                }
                (None, true) => format!("{url}?userId={}", events::user_id(i)),
                (None, false) => url.clone(),
            };
            clients::ClientSpec { url, subscribe: subscribe.clone(), protocol: clients::Protocol::Moonx }
        })
        .collect();
    let recorder = std::sync::Arc::new(stats::LatencyRecorder::new());
    recorder.set_recording(true);
    let c = clients::open(a.addr, specs, 0, a.concurrency, recorder.clone()).await;
    eprintln!("{} of {} clients connected and subscribed{}", c.opened, a.clients, if c.failures.is_empty() { String::new() } else { format!("; failures: {:?}", c.failures) });
    tokio::time::sleep(std::time::Duration::from_secs_f64(a.hold_secs)).await;
    let s = recorder.summary();
    println!("{}", serde_json::to_string_pretty(&s)?);
    c.close().await;
    Ok(())
}

async fn run_suite(a: SuiteArgs) -> anyhow::Result<()> {
    let mut scale = if a.smoke { Scale::smoke() } else { Scale::full() };
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { scale.$f = v; } )* };
    }
    over!(consume_events, fanout_clients, fanout_rates, latency_clients, latency_rate, memory_levels, private_users, private_rate, measure_secs, resume_clients, resume_rate, resume_gap_secs);
    let logs = a.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let kinds: Vec<Kind> = a
        .targets
        .iter()
        .map(|t| match t.as_str() {
            "moonx" => Ok(Kind::Moonx),
            "baseline" => Ok(Kind::Baseline),
            "centrifugo" => Ok(Kind::Centrifugo),
            "floor" => Ok(Kind::Floor),
            other => Err(anyhow::anyhow!("unknown target {other}")),
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(a.moonx_bin.exists(), "{} does not exist: build it first (bench/run does)", a.moonx_bin.display());
    let suite = Suite {
        programs: Programs {
            moonx_bin: a.moonx_bin.clone(),
            node: a.node.clone(),
            baseline_dir: a.baseline_dir.clone(),
            brokers: a.brokers.clone(),
            logs,
            centrifugo_bin: a.centrifugo_bin.clone(),
            bench_bin: std::env::current_exe()?,
        },
        scale,
        kinds: kinds.clone(),
        criterion_dir: a.criterion_dir.clone(),
        concurrency: a.concurrency,
    };
    let mut machine = report::Machine::probe();
    let started_at_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut r = Results::default();
    let on = |s: &str| a.only.iter().any(|o| o == s);
    macro_rules! attempt {
        ($what:expr, $e:expr) => {
            match $e {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!("{}: {e:#}", $what);
                    eprintln!("[bench] FAILED {msg}");
                    r.errors.push(msg);
                    None
                }
            }
        };
    }
    if on("a") {
        r.hot_path = attempt!("a hot path", suite.hot_path());
    }
    if on("b") {
        r.consume = attempt!("b consume", suite.consume().await);
    }
    if on("b2") && kinds.contains(&Kind::Moonx) {
        r.skip_consume = attempt!("b2 skip-consume", suite.skip_consume().await);
    }
    for &k in &kinds {
        if on("c")
            && let Some(v) = attempt!(format!("c fan-out {}", k.key()), suite.fanout(k).await) {
                r.fanout.push(v);
            }
    }
    for &k in &kinds {
        if on("d") && k.consumes_kafka()
            && let Some(v) = attempt!(format!("d latency {}", k.key()), suite.latency(k).await) {
                r.latency.push(v);
            }
    }
    for &k in &kinds {
        if on("e") && k.consumes_kafka()
            && let Some(v) = attempt!(format!("e memory {}", k.key()), suite.memory(k).await) {
                r.memory.push(v);
            }
    }
    for &k in &kinds {
        if on("f") && k.consumes_kafka()
            && let Some(v) = attempt!(format!("f private {}", k.key()), suite.private(k).await) {
                r.private.push(v);
            }
    }
    if on("g") && kinds.contains(&Kind::Moonx) {
        let s = &suite.scale;
        r.resume = attempt!("g resume", suite.resume(s.resume_clients, s.resume_rate, s.resume_gap_secs).await);
    }
    machine.load_average_end = report::loadavg();
    let rep = report::Report {
        started_at_unix,
        command: a.command.clone(),
        source: a.source.clone(),
        profile: a.profile.clone(),
        smoke: a.smoke,
        machine,
        scale: &suite.scale,
        results: &r,
        targets: report::targets(&r),
    };
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&rep)?)?;
    let md = report::markdown(&rep);
    std::fs::write(a.out.join("results.md"), &md)?;
    if let Err(e) = report::charts(&a.out, &r) {
        eprintln!("[bench] charts failed: {e:#}");
        r.errors.push(format!("charts: {e:#}"));
    }
    println!("{md}");
    eprintln!("[bench] wrote {}/results.{{json,md}} and charts in {:.0} s", a.out.display(), elapsed());
    anyhow::ensure!(r.errors.is_empty(), "{} scenario(s) failed: {:?}", r.errors.len(), r.errors);
    Ok(())
}

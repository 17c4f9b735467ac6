//! Scenario b2: consume with 1 % of the users connected, on an instance
//! that does not write dead letters (issue 11, "skip what nobody here
//! needs"). Same data and scale as scenario b (its mix and seed, a fresh
//! 6-partition topic of the same `compression.type`, M events), but
//! moonx-ws runs with `DLQ_WRITER=false` (so `SKIP_WITHOUT_LOCAL_AUDIENCE`
//! applies), and every 100th user of the mix is connected and subscribed to
//! `orders`, `trades` and `portfolio` before the first record is consumed.
//!
//! **Order.** The gateway serves WebSockets only once its consumer runs, so
//! it cannot hold clients before it could consume a pre-loaded topic. So:
//! 1. the gateway starts on the fresh, empty topic (a fresh group, from the
//!    beginning) and the clients connect; we wait until its `connections`
//!    gauge counts them all;
//! 2. the M events are produced in ONE Kafka transaction. The gateway's
//!    consumer reads committed records only (librdkafka's default
//!    `isolation.level=read_committed`), so it sees none of them until the
//!    commit, and then all M at once: the same "everything is already in
//!    the topic" start as scenario b, with the clients in place;
//! 3. consumption is timed as in b (`/metrics`, first consumed record to
//!    the M-th), then the connected users' frames are counted;
//! 4. the bare consumer reads the same (committed) topic afterwards, so the
//!    ratio is against the same batches, transaction markers included.
//!
//! Reported: events/s as a share of the bare consumer, the share of records
//! skipped (`events_skipped_total` / `events_consumed_total`), gateway CPU
//! µs per consumed event, and the frames the connected users received
//! against the number of their events in the pre-load (the scenario fails
//! when they differ: the instance must still deliver to its own users).

use crate::clients::{self, ClientSpec};
use crate::events::{user_id, Generator};
use crate::kafka;
use crate::stats::LatencyRecorder;
use crate::suite::{log, ConsumeRun, Suite, CONSUME_MIX, CONSUME_SEED};
use crate::target::{Kind, Launch, Target, JWT_SECRET};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One user in this many is connected: 1 %, spread over the mix's users
/// (so hot and cold users in their proportion, not only the hottest 10 %).
const CONNECTED_EVERY: usize = 100;
const CHANNELS: [&str; 3] = ["orders", "trades", "portfolio"];
/// How long the connected users' frames may trail the last consumed record.
const DELIVERY_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct SkipConsume {
    pub events: u64,
    pub compression: String,
    pub mix_users: usize,
    pub connected_users: usize,
    pub preload_events_per_sec: f64,
    /// The bare consumer on this scenario's topic, after the gateway.
    pub bare_consumer_events_per_sec: f64,
    pub run: ConsumeRun,
    pub of_bare: f64,
    pub consumed: u64,
    pub skipped: u64,
    pub skipped_share: f64,
    /// Events of the connected users in the pre-load, and the frames they got.
    pub expected_frames: u64,
    pub received_frames: u64,
    pub clients_closed: u64,
}

fn transactional_producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(kafka::base_config(brokers)
        .set("linger.ms", "20")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        .set("transactional.id", format!("moonx-bench-b2-{}", uuid::Uuid::new_v4().simple()))
        // The whole pre-load is one transaction (the broker's cap is 15 min).
        .set("transaction.timeout.ms", "600000")
        .create()?)
}

/// Produces scenario b's `n` events in one transaction; returns events/s
/// (to the commit) and how many of them belong to `connected` users.
fn preload_in_one_transaction(brokers: &str, topic: &str, n: u64, connected: &HashSet<String>) -> anyhow::Result<(f64, u64)> {
    let p = transactional_producer(brokers)?;
    p.init_transactions(Duration::from_secs(30))?;
    p.begin_transaction()?;
    let mut generator = Generator::new(CONSUME_MIX, CONSUME_SEED);
    let started = Instant::now();
    let mut expected = 0u64;
    for _ in 0..n {
        let e = generator.next();
        if connected.contains(&e.key) {
            expected += 1;
        }
        loop {
            match p.send(BaseRecord::to(topic).key(&e.key).payload(&e.payload)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => std::thread::sleep(Duration::from_millis(1)),
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
    }
    p.commit_transaction(Duration::from_secs(300))?;
    Ok((n as f64 / started.elapsed().as_secs_f64(), expected))
}

impl Suite {
    /// Scenario b2 (moonx-ws only: the baseline has no skip).
    pub async fn skip_consume(&self) -> anyhow::Result<SkipConsume> {
        let s = &self.scale;
        let brokers = self.programs.brokers.clone();
        let t = format!("bench.skip-consume.{}", uuid::Uuid::new_v4().simple());
        kafka::create_topic(&brokers, &t, 6, &s.consume_compression).await?;
        let res = self.skip_consume_on(&t).await;
        kafka::delete_topics(&brokers, &[t.clone(), format!("{t}.dlq")]).await;
        res
    }

    async fn skip_consume_on(&self, t: &str) -> anyhow::Result<SkipConsume> {
        let s = &self.scale;
        let n = s.consume_events;
        let brokers = self.programs.brokers.clone();
        let timeout = Duration::from_secs_f64((n as f64 / 5_000.0).max(90.0));
        let env = vec![("DLQ_WRITER", "false".to_string()), ("SKIP_WITHOUT_LOCAL_AUDIENCE", "true".to_string())];
        let mut target = Target::start(Kind::Moonx, &self.programs, Launch { topic: t, from_beginning: true, env, tag: "skip-consume" })?;
        target.wait_ready(Duration::from_secs(90)).await?;

        let users: Vec<String> = (0..CONSUME_MIX.users).step_by(CONNECTED_EVERY).map(user_id).collect();
        log(format!("skip-consume: {} of {} users connecting to moonx-ws (DLQ_WRITER=false)", users.len(), CONSUME_MIX.users));
        let subscribe: Arc<Vec<String>> = Arc::new(CHANNELS.iter().map(|c| format!(r#"{{"type":"subscribe","channel":"{c}"}}"#)).collect());
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 86_400;
        let specs = users
            .iter()
            .map(|u| {
                let claims = moonx_ws::deliver::auth::Claims { sub: u.clone(), roles: vec![], exp };
                ClientSpec { url: format!("{}?token={}", target.ws_url(), moonx_ws::deliver::auth::sign(JWT_SECRET, &claims)), subscribe: subscribe.clone(), protocol: crate::clients::Protocol::Moonx }
            })
            .collect();
        let recorder = Arc::new(LatencyRecorder::new());
        let addr = SocketAddr::from(([127, 0, 0, 1], target.port));
        let clients = clients::open(addr, specs, 0, self.concurrency, recorder.clone()).await;
        let res = async {
            anyhow::ensure!(clients.opened == users.len(), "{} of {} clients connected: {:?}", clients.opened, users.len(), clients.failures);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let open = target.metric_sum("moonx_ws_connections", "").await.unwrap_or(0.0) as usize;
                if open >= users.len() {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the gateway counts {open} of {} connections after 30 s", users.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::ensure!(target.consumed().await? == 0, "the gateway consumed records before the pre-load was committed");

            log(format!("skip-consume: pre-loading {n} events into {t} in one transaction"));
            let (b, tt, connected) = (brokers.clone(), t.to_owned(), users.iter().cloned().collect::<HashSet<_>>());
            let (preload, expected) = tokio::task::spawn_blocking(move || preload_in_one_transaction(&b, &tt, n, &connected)).await??;
            let run = self.measure_consume(&target, n, timeout, Instant::now()).await?;
            let metrics = target.metrics().await?;
            let consumed = crate::target::metric_sum(&metrics, "moonx_ws_events_consumed_total") as u64;
            let skipped = crate::target::metric_sum(&metrics, "moonx_ws_events_skipped_total") as u64;
            let deadline = Instant::now() + DELIVERY_GRACE;
            while recorder.summary().frames < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let received = recorder.summary().frames;
            Ok((run, preload, expected, received, consumed, skipped))
        }
        .await;
        let closed = clients.closed.load(Ordering::Relaxed);
        let reasons = clients.reasons();
        clients.close().await;
        target.stop().await;
        let (run, preload, expected, received, consumed, skipped) = res?;
        log(format!(
            "skip-consume: moonx-ws {:.0} events/s, {skipped} of {consumed} skipped, {received} of {expected} events delivered to the connected users",
            run.events_per_sec
        ));
        anyhow::ensure!(
            received == expected && closed == 0,
            "the connected users received {received} of their {expected} events ({closed} clients closed: {reasons:?})"
        );

        log("skip-consume: bare rdkafka consumer on the same topic");
        let (b, tt) = (brokers.clone(), t.to_owned());
        let bare = tokio::task::spawn_blocking(move || kafka::bare_consume(&b, &tt, n, timeout)).await??;
        log(format!("skip-consume: bare consumer {bare:.0} events/s"));
        Ok(SkipConsume {
            events: n,
            compression: s.consume_compression.clone(),
            mix_users: CONSUME_MIX.users,
            connected_users: users.len(),
            preload_events_per_sec: preload,
            bare_consumer_events_per_sec: bare,
            of_bare: run.events_per_sec / bare,
            run,
            consumed,
            skipped,
            skipped_share: skipped as f64 / consumed.max(1) as f64,
            expected_frames: expected,
            received_frames: received,
            clients_closed: closed,
        })
    }
}

/// The lines of the targets table.
pub fn targets(s: &SkipConsume) -> Vec<crate::report::Target> {
    vec![
        crate::report::Target {
            scenario: "b2 consume, 1 % of users connected, non-writer".into(),
            target: "≥ 90% of the bare consumer".into(),
            measured: format!(
                "{:.0}% ({:.0} vs {:.0} events/s; {:.1}% of records skipped)",
                s.of_bare * 100.0, s.run.events_per_sec, s.bare_consumer_events_per_sec, s.skipped_share * 100.0
            ),
            met: Some(s.of_bare >= 0.9),
        },
        crate::report::Target {
            scenario: "b2 consume, 1 % of users connected, non-writer".into(),
            target: "≤ 0.2 µs CPU per skipped record".into(),
            measured: format!("{:.2} µs CPU per consumed record, all records (skipped ones are not timed apart)", s.run.cpu_us_per_event),
            met: None,
        },
    ]
}

pub fn markdown(md: &mut String, s: &SkipConsume) {
    let _ = writeln!(
        md,
        "\n## b2. Consume with 1 % of the users connected, non-writer instance\n\n{} events (scenario b's mix) produced in one transaction ({:.0} events/s) into a fresh 6-partition topic (compression.type={}) while {} of the mix's {} users were connected to moonx-ws (`DLQ_WRITER=false`), subscribed to orders, trades and portfolio; the bare consumer read the same topic afterwards.\n",
        s.events, s.preload_events_per_sec, s.compression, s.connected_users, s.mix_users
    );
    let _ = writeln!(md, "| consumer | events/s | of bare | CPU % (of one core) | CPU µs/event | records skipped | connected users' events received | RSS MiB |\n|---|---|---|---|---|---|---|---|");
    let _ = writeln!(md, "| bare rdkafka consumer | {:.0} | 100% | | | | | |", s.bare_consumer_events_per_sec);
    let _ = writeln!(
        md,
        "| moonx-ws{} | {:.0} | {:.0}% | {:.0} | {:.2} | {} of {} ({:.1}%) | {} of {} | {:.0} |",
        if s.run.includes_startup { " (timed from the commit: it did not answer /metrics earlier)" } else { "" },
        s.run.events_per_sec, s.of_bare * 100.0, s.run.cpu_percent, s.run.cpu_us_per_event,
        s.skipped, s.consumed, s.skipped_share * 100.0, s.received_frames, s.expected_frames, s.run.rss_mib_end
    );
}

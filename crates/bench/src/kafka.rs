//! Kafka side of the load tool: topics, the producer (fixed rate or as fast
//! as possible), and the bare consumer (the ceiling of scenario b and the
//! latency floor of scenarios d and f).

use crate::events::{latencies_us, unix_micros, Generator};
use crate::stats::LatencyRecorder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientConfig, Message};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", "moonx-bench");
    c
}

/// Creates a topic of `partitions` partitions with the main topic's configs
/// (SPEC section 4), `compression.type` as given.
pub async fn create_topic(brokers: &str, name: &str, partitions: i32, compression: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "3600000")
        .set("compression.type", compression)
        .set("max.message.bytes", "1000000");
    let res = admin.create_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?;
    for r in res {
        if let Err((t, e)) = r {
            anyhow::bail!("cannot create topic {t}: {e}");
        }
    }
    Ok(())
}

pub async fn delete_topics(brokers: &str, names: &[String]) {
    let Ok(admin) = base_config(brokers).create::<AdminClient<DefaultClientContext>>() else { return };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}

pub fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(base_config(brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("acks", "1")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        .create()?)
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, e: &crate::events::Produced) -> anyhow::Result<()> {
    loop {
        let mut record = BaseRecord::to(topic).key(e.key.as_str()).payload(e.payload.as_slice());
        if let Some(channel) = &e.centrifugo_channel {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "centrifugo-channels", value: Some(channel.as_str()) }));
        }
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => std::thread::sleep(Duration::from_millis(1)),
            Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
        }
    }
}

/// Produces `n` events as fast as possible; returns events/s.
pub fn preload(brokers: &str, topic: &str, n: u64, mut generator: Generator) -> anyhow::Result<f64> {
    let p = producer(brokers, 20)?;
    let t = Instant::now();
    for _ in 0..n {
        let e = generator.next();
        send(&p, topic, &e)?;
    }
    p.flush(Duration::from_secs(120))?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Produces at `rate` events/s until `stop`; returns the number produced.
/// `produced` counts as it goes.
pub fn produce_at_rate(
    brokers: &str,
    topic: &str,
    rate: f64,
    mut generator: Generator,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    let p = producer(brokers, 1)?;
    let t = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (t.elapsed().as_secs_f64() * rate) as u64;
        while n < due {
            let e = generator.next();
            send(&p, topic, &e)?;
            n += 1;
            produced.store(n, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    p.flush(Duration::from_secs(30))?;
    Ok(n)
}

fn consumer(brokers: &str, topic: &str, group: &str, offset_reset: &str) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", offset_reset)
        .set("session.timeout.ms", "10000")
        .set("enable.partition.eof", "false")
        .create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// The ceiling of scenario b: a bare consumer (no decoding) reading `expected`
/// records from the beginning. Returns (records/s from the first record to
/// the last, CPU seconds of this thread's process are measured by the caller).
pub fn bare_consume(brokers: &str, topic: &str, expected: u64, timeout: Duration) -> anyhow::Result<f64> {
    let c = consumer(brokers, topic, &format!("bench-bare-{}", uuid::Uuid::new_v4().simple()), "earliest")?;
    let deadline = Instant::now() + timeout;
    let mut n = 0u64;
    let mut bytes = 0usize;
    let mut first = None;
    while n < expected {
        if Instant::now() > deadline {
            anyhow::bail!("bare consumer: {n} of {expected} records before the timeout");
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            bytes += m.payload().map_or(0, <[u8]>::len);
            first.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    std::hint::black_box(bytes);
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((n - 1) as f64 / secs.max(1e-9))
}

/// The latency floor: a bare consumer of the topic from its end, recording
/// each record's produce→receive latency while `recorder` is recording,
/// until `stop`. Returns once it has its partitions (through `ready`).
pub fn floor_consumer(
    brokers: &str,
    topic: &str,
    recorder: Arc<LatencyRecorder>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let c = consumer(brokers, topic, &format!("bench-floor-{}", uuid::Uuid::new_v4().simple()), "latest")?;
    while !stop.load(Ordering::Relaxed) {
        if !ready.load(Ordering::Relaxed) && c.assignment().map(|a| a.count() > 0).unwrap_or(false) {
            // Resolve the "latest" positions before anything is produced.
            for _ in 0..20 {
                let _ = c.poll(Duration::from_millis(50));
            }
            ready.store(true, Ordering::Relaxed);
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50))
            && let Some(p) = m.payload() {
                let (ts, precise) = latencies_us(p, unix_micros());
                recorder.record(0, ts, precise);
            }
    }
    Ok(())
}

/// One record for Centrifugo's channel `bench-probe`, which no client
/// subscribes to: once its consumer has processed it, the consumer has its
/// partitions (Centrifugo logs nothing on assignment and its `/health` does
/// not wait for Kafka).
pub fn produce_probe(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let p = producer(brokers, 0)?;
    let probe = crate::events::Produced { key: "bench-probe".into(), payload: b"{}".to_vec(), centrifugo_channel: Some("bench-probe".into()) };
    send(&p, topic, &probe)?;
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

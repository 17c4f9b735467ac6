//! Scenario (a) of the benchmark suite (BENCHMARKS.md): the per-event hot
//! path, in process, no Kafka and no sockets.
//!
//! * `pipeline`: `Pipeline::process` (decode + validate + route through the
//!   handler map + `Hub::publish`) of a realistic 387-byte `price.updated`
//!   envelope, with a hub that has no subscribers. This is the work the Node
//!   baseline's `--bench-hotpath` measures (`bench/baseline-node/server.js`),
//!   on the same bytes.
//! * `pipeline_no_validation`: the same with `EVENT_VALIDATION_ENABLED=false`.
//! * `decode`: `moonx_events::decode::decode_event_ref` (the pipeline's
//!   borrowed decode) alone, with and without validation (no routing, no
//!   metrics).
//! * `fanout`: `Hub::publish` of one event to 1,000 subscribed connections:
//!   the cost of one publish, reported per delivered frame (the queues are
//!   drained outside the timed section).
//! * `price_filters`: `Hub::publish` of one price event to one unfiltered
//!   subscriber, alone and beside 1,000 subscribers whose 64-token filters
//!   do not name the token: with the hub's token index the two cost the
//!   same (issue 9, item 6: before it, each publish scanned every filter).
//! * `deflate`: compressing the price event frame for permessage-deflate
//!   (`deliver::socket::deflate`), done once per frame whatever the number of
//!   connections that negotiated it (issue 14, item 3); the plain and
//!   compressed sizes are printed.
//!
//! Every group reports `Throughput::Elements` (events, or frames for
//! `fanout`), so criterion prints events/s. Run:
//! `cargo bench -p moonx-ws --bench hot_path` (add `-- --quick` for a fast
//! pass). `bench/run` reads the estimates from `target/criterion/`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moonx_events::decode::{decode_event, decode_event_ref, DecodeOptions};
use moonx_events::{EventRef, TypeRegistry};
use moonx_ws::deliver::{Channel, Hub, HubSettings};
use moonx_ws::pipeline::router::{Route, Router};
use moonx_ws::pipeline::{Outcome, Pipeline, PipelineOptions};
use moonx_ws::source::Record;
use moonx_ws::telemetry::Metrics;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The baseline's `sampleEnvelope` (bench/baseline-node/server.js), byte for
/// byte: same field order, compact JSON, 387 bytes with a 13-digit timestamp.
fn sample_envelope(now_ms: u64) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"metadata":{{"eventId":"0193a4b2-7c1e-7d3f-9a42-5f8e2c6b1d07","eventType":"price.updated","#,
            r#""eventVersion":"1.0","correlationId":"b7e4c2a9-3f1d-4e8b-a6c5-2d9f0e1b7a34","timestamp":{},"#,
            r#""source":"price-service","dataClassification":"public","partition":"prices"}},"#,
            r#""data":{{"token":"ETH","chainId":1,"price":"3021.45","priceUsd":"3021.45","change24h":"-1.28","volume24h":"1284537.5"}}}}"#
        ),
        now_ms
    )
    .into_bytes()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Polls a future that completes without waiting (the pipeline's happy path
/// never sleeps: only handler retries do).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the pipeline waited on the happy path"),
    }
}

fn pipeline(validate: bool) -> Pipeline {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(HubSettings::default(), metrics.clone());
    let options = PipelineOptions { validate, ..PipelineOptions::default() };
    Pipeline::new(Router::with_built_in_handlers(), hub, metrics, options, None)
}

fn record(payload: &[u8]) -> Record<'_> {
    Record {
        topic: moonx_events::MAIN_TOPIC,
        partition: 0,
        offset: 0,
        key: Some(b"prices"),
        payload: Some(payload),
        timestamp_ms: None,
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let bytes = sample_envelope(now_ms());
    assert_eq!(bytes.len(), 387, "the envelope of the baseline's hot path");
    for (name, validate) in [("pipeline", true), ("pipeline_no_validation", false)] {
        let p = pipeline(validate);
        let rec = record(&bytes);
        match ready(p.process(&rec)) {
            Outcome::Routed { deliveries: 1 } => {}
            other => panic!("the sample envelope was not routed: {other:?}"),
        }
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(1));
        g.bench_function("price_updated_387B", |b| b.iter(|| ready(p.process(black_box(&rec)))));
        g.finish();
    }
}

fn bench_decode(c: &mut Criterion) {
    let bytes = sample_envelope(now_ms());
    let registry = TypeRegistry::new();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, validate) in [("validate", true), ("no_validation", false)] {
        let options = DecodeOptions { validate, ..DecodeOptions::new(&registry).topic(moonx_events::MAIN_TOPIC) };
        decode_event_ref(&bytes, &options).expect("the sample envelope decodes");
        g.bench_function(name, |b| b.iter(|| decode_event_ref(black_box(&bytes), black_box(&options))));
    }
    g.finish();
}

/// `Hub::publish` of one price event to `n` subscribers of `prices`.
fn bench_fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let bytes = sample_envelope(now_ms());
    let registry = TypeRegistry::new();
    let event = decode_event(&bytes, &DecodeOptions::new(&registry)).expect("decodes");
    let event = EventRef::from(&event);
    let metrics = Arc::new(Metrics::new());
    let queue_capacity = 1024;
    let hub = Hub::new(HubSettings { queue_capacity, max_connections: SUBSCRIBERS + 1, ..HubSettings::default() }, metrics.clone());
    let mut queues = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let reg = hub.register().expect("below the connection limit");
        hub.subscribe(reg.id, Channel::Prices, None);
        queues.push(reg.queue);
    }
    let route = || Route { channel: Channel::Prices, audience: moonx_ws::deliver::Audience::Everyone };
    let drain = |queues: &mut Vec<tokio::sync::mpsc::Receiver<_>>| -> usize {
        let mut n = 0;
        for q in queues.iter_mut() {
            while q.try_recv().is_ok() {
                n += 1;
            }
        }
        n
    };
    hub.publish(route(), &event, Some(&bytes));
    assert_eq!(drain(&mut queues), SUBSCRIBERS, "every subscriber got the frame");

    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("publish_1000_subscribers", |b| {
        // Time the publishes only; drain the queues between rounds (below
        // their capacity, so nobody is cut off as a slow consumer).
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let round = left.min(queue_capacity as u64 / 2);
                let t = Instant::now();
                for _ in 0..round {
                    hub.publish(route(), black_box(&event), Some(black_box(&bytes)));
                }
                timed += t.elapsed();
                let got = drain(&mut queues);
                assert_eq!(got as u64, round * SUBSCRIBERS as u64, "a frame was dropped");
                left -= round;
            }
            timed
        })
    });
    g.finish();
}

/// `Hub::publish` of a price to one subscriber, with and without a crowd of
/// wide filters that do not match it.
fn bench_price_filters(c: &mut Criterion) {
    const CROWD: usize = 1000;
    let bytes = sample_envelope(now_ms());
    let registry = TypeRegistry::new();
    let event = decode_event(&bytes, &DecodeOptions::new(&registry)).expect("decodes");
    let event = EventRef::from(&event);
    let route = || Route { channel: Channel::Prices, audience: moonx_ws::deliver::Audience::Everyone };
    let wide: Vec<String> = (0..64).map(|i| format!("never{i}")).collect();
    let mut g = c.benchmark_group("price_filters");
    g.throughput(Throughput::Elements(1));
    for (name, crowd) in [("one_subscriber", 0), ("one_subscriber_beside_1000_wide_filters", CROWD)] {
        let hub = Hub::new(HubSettings { queue_capacity: 1024, max_connections: CROWD + 1, ..HubSettings::default() }, Arc::new(Metrics::new()));
        let mut crowd_queues = Vec::new();
        for _ in 0..crowd {
            let reg = hub.register().expect("below the connection limit");
            hub.subscribe(reg.id, Channel::Prices, Some(&wide));
            crowd_queues.push(reg.queue);
        }
        let reg = hub.register().expect("below the connection limit");
        hub.subscribe(reg.id, Channel::Prices, None);
        let mut queue = reg.queue;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(512);
                    let t = Instant::now();
                    for _ in 0..round {
                        hub.publish(route(), black_box(&event), Some(black_box(&bytes)));
                    }
                    timed += t.elapsed();
                    let mut got = 0;
                    while queue.try_recv().is_ok() {
                        got += 1;
                    }
                    assert_eq!(got, round, "the subscriber got every frame");
                    assert!(crowd_queues.iter_mut().all(|q| q.try_recv().is_err()), "a non-matching filter got a frame");
                    left -= round;
                }
                timed
            })
        });
    }
    g.finish();
}

fn bench_deflate(c: &mut Criterion) {
    let frame = moonx_ws::deliver::protocol::event_frame_at(Channel::Prices, &sample_envelope(now_ms()), None);
    let compressed = moonx_ws::deliver::socket::deflate(&frame).expect("compresses");
    println!("deflate: a price event frame of {} bytes is {} bytes compressed ({:.2}x fewer)", frame.len(), compressed.len(), frame.len() as f64 / compressed.len() as f64);
    let mut g = c.benchmark_group("deflate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("price_frame_once", |b| b.iter(|| moonx_ws::deliver::socket::deflate(black_box(&frame))));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(50)
}

criterion_group! { name = benches; config = config(); targets = bench_pipeline, bench_decode, bench_fanout, bench_price_filters, bench_deflate }
criterion_main!(benches);

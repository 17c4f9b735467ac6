//! The skip path (issue 11, item 3; target: ≤ 0.2 µs CPU per skipped
//! record): `Pipeline::process` of a non-writer's pipeline on a 400-byte
//! `order.created` whose owner is not connected, with 1,000 other users
//! connected (the "1 % of the users connected" scenario's hub), and, for
//! comparison, the same record for a connected user (decoded and routed).
//!
//! Run: `cargo bench -p moonx-ws --bench skip` (add `-- --quick`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moonx_ws::deliver::auth::Identity;
use moonx_ws::deliver::{Hub, HubSettings};
use moonx_ws::pipeline::router::Router;
use moonx_ws::pipeline::skip::SkipReason;
use moonx_ws::pipeline::{Outcome, Pipeline, PipelineOptions, Record};
use moonx_ws::telemetry::Metrics;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

fn order(user: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!(
        concat!(
            r#"{{"metadata":{{"eventId":"0193a4b2-7c1e-7d3f-9a42-5f8e2c6b1d07","eventType":"order.created","#,
            r#""eventVersion":"1.0","correlationId":"b7e4c2a9-3f1d-4e8b-a6c5-2d9f0e1b7a34","timestamp":{},"#,
            r#""source":"order-service","userId":"{}","dataClassification":"confidential","partition":"{}"}},"#,
            r#""data":{{"orderId":"order-1","userId":"{}","tokenIn":"ETH","tokenOut":"USDT","amountIn":"1.5","#,
            r#""amountOutExpected":"4500.00","chainId":1,"orderType":"market","status":"pending"}}}}"#
        ),
        now, user, user, user
    )
    .into_bytes()
}

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the pipeline waited"),
    }
}

fn bench_skip(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(HubSettings { max_connections: 10_000, ..HubSettings::default() }, metrics.clone());
    let mut registrations = Vec::new();
    for i in 0..1000 {
        let r = hub.register().unwrap();
        let identity = Identity { user_id: format!("user-{i}"), admin: false, expires_at_ms: u64::MAX / 2, issued_at_secs: None };
        hub.set_identity(r.id, Some(identity)).unwrap();
        registrations.push(r);
    }
    let pipeline =
        Pipeline::new(Router::with_built_in_handlers(), hub, metrics, PipelineOptions::default(), None).skip_without_local_audience();
    let (absent, present) = (order("user-absent-42"), order("user-7"));
    let record = |payload: &'static [u8], key: &'static [u8], offset: i64| Record {
        topic: moonx_events::MAIN_TOPIC,
        partition: 0,
        offset,
        key: Some(key),
        payload: Some(payload),
        timestamp_ms: None,
    };
    let absent: &'static [u8] = Box::leak(absent.into_boxed_slice());
    let present: &'static [u8] = Box::leak(present.into_boxed_slice());
    let skipped = record(absent, b"user-absent-42", 1);
    let decoded = record(present, b"user-7", 1);
    assert!(matches!(ready(pipeline.process(&skipped)), Outcome::Skipped(SkipReason::NoLocalAudience)));
    assert!(matches!(ready(pipeline.process(&decoded)), Outcome::Routed { deliveries: 1 }));

    let mut g = c.benchmark_group("skip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("order_no_local_audience", |b| b.iter(|| ready(pipeline.process(black_box(&skipped)))));
    g.bench_function("order_owner_connected", |b| b.iter(|| ready(pipeline.process(black_box(&decoded)))));
    g.finish();
}

criterion_group!(benches, bench_skip);
criterion_main!(benches);

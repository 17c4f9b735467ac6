//! Operating it (issue 13), against the real broker, the real `moonx-ws`
//! binary and a real Prometheus server (Debian's `prometheus` package):
//! the alert rules pass their `promtool` unit tests, Prometheus loads them
//! and scrapes a running gateway, every metric the rules and the Grafana
//! dashboard use returns data (the names are read from the files, so they
//! cannot drift), and a DLQ that cannot be written makes the DLQ alert
//! pending. Also `/health` names the actual consumer group.
//!
//! Prometheus is found at `PROMETHEUS_BIN` / `PROMTOOL_BIN`, else
//! `/usr/bin/prometheus` / `/usr/bin/promtool`, else on `PATH`. When it is
//! missing the Prometheus tests fail if `REQUIRE_PROMETHEUS=1` or `CI` is
//! set, and are skipped with a loud message otherwise.

mod common;

use common::ws::Client;
use common::*;
use futures_util::StreamExt;
use moonx_ws::kafka::producer::send_event;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T60: Duration = Duration::from_secs(60);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A Prometheus binary (`prometheus` or `promtool`), or `None` when it may
/// be skipped; panics when it is missing but required.
fn prometheus_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env_var)
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/bin").join(name)])
        .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join(name)))
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    let required = std::env::var("REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(
        !required,
        "{name} is required (REQUIRE_PROMETHEUS=1 or CI is set) but was not found ({env_var}, /usr/bin, PATH): \
         apt-get install -y prometheus"
    );
    eprintln!(
        "\n*** SKIPPED: {name} not found ({env_var}, /usr/bin, PATH); `apt-get install -y prometheus` runs this test. \
         REQUIRE_PROMETHEUS=1 makes it mandatory. ***\n"
    );
    None
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let Some(promtool) = prometheus_tool("promtool", "PROMTOOL_BIN") else { return };
    let dir = deploy_dir().join("prometheus");
    for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts.test.yml"][..]] {
        let out = Command::new(&promtool).args(args).current_dir(&dir).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server of our own: scrapes the gateway every second,
/// evaluates `deploy/prometheus/alerts.yml` every second. Killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(bin: &Path, gateway_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = deploy_dir().join("prometheus/alerts.yml").canonicalize().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: moonx-ws\n    static_configs:\n      - targets: ['127.0.0.1:{gateway_port}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::from(logfile.try_clone().unwrap()))
            .stderr(Stdio::from(logfile))
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, port, log, _dir: dir };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        eventually("prometheus ready", T60, || {
            let ready = ready.clone();
            async move {
                match http_get(&ready).await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        p
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect();
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/{path}?{}", self.port, query.join("&")))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("prometheus API");
        r.json().await.expect("prometheus answers JSON")
    }

    /// The result vector of an instant query; panics if Prometheus refuses it.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.api("query", &[("query", expr)]).await;
        assert_eq!(v["status"], "success", "query {expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Every `moonx_ws_*` series name and Prometheus' own `up` in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("moonx_ws_") || (word == "up" && expr[i..].starts_with('{')) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The dashboard's queries, with its variables set to this test's values.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/moonx-ws.json")).expect("deploy/grafana/moonx-ws.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panel_without_queries(panel));
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a target without expr in {}", panel["title"]));
            out.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push((format!("variable {}", var["name"]), q.to_owned()));
        }
    }
    out
}

fn panel_without_queries(panel: &Value) -> &Vec<Value> {
    panic!("panel {} has no targets", panel["title"])
}

fn with_dashboard_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$job", "moonx-ws").replace("$instance", ".*")
}

/// `label_values(metric, label)` is Grafana's, not PromQL: query the metric.
fn as_promql(expr: &str) -> String {
    match expr.strip_prefix("label_values(") {
        Some(rest) => rest.rsplit_once(',').map(|(m, _)| m.trim().to_owned()).unwrap_or_else(|| rest.to_owned()),
        None => expr.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_the_startup_log_name_the_actual_consumer_group() {
    let topics = create_topics("ops-group").await;
    let cfg = GatewayConfig { instance: "gw-7".into(), ..GatewayConfig::new(&topics) };
    let group = format!("{}-gw-7", cfg.group);
    let gw = Gateway::start(cfg);
    gw.wait_healthy().await;
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["consumer"]["group"], group.as_str(), "{body}");
    assert!(gw.logs().contains(&format!("consuming as consumer group {group}")), "the startup log names the group:\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_every_metric_of_the_rules_and_dashboard_and_the_dlq_alert_goes_pending() {
    let Some(prometheus_bin) = prometheus_tool("prometheus", "PROMETHEUS_BIN") else { return };
    let topics = create_topics("ops-prom").await;
    let mut gw = Gateway::start(GatewayConfig {
        extra_env: vec![
            ("WS_QUEUE_CAPACITY", "16".into()),
            ("ALLOWED_ORIGINS", "https://app.example".into()),
        ],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let prom = Prometheus::start(&prometheus_bin, gw.port).await;

    // Traffic that makes every series exist: a reading client and a stalled
    // one on prices, a refused upgrade, valid events, an invalid one (a
    // dead letter with validation errors), then price bursts until the
    // stalled client is cut off as a slow consumer.
    let url = gw.ws_url();
    let mut reader = Client::connect(&url).await;
    reader.subscribe("prices").await;
    let draining = tokio::spawn(async move { while let Some(Ok(_)) = reader.ws.next().await {} });
    let mut stalled = Client::connect_small_buffer(&url).await;
    stalled.subscribe("prices").await;
    let refused = Client::connect_with(&url, &[("Origin", "https://evil.example")]).await;
    assert!(refused.is_err(), "an upgrade from a foreign origin is refused");
    let p = producer();
    let invalid = serde_json::json!({"metadata": {"eventType": "price.updated"}, "data": {"token": "ETH"}});
    send_raw(&p, &topics.main, Some("prices"), invalid.to_string().as_bytes()).await;
    let mut n = 0;
    eventually("the stalled client is cut off as a slow consumer", T60, || {
        let (p, main, gw) = (&p, &topics.main, &gw);
        let start = n;
        n += 500;
        async move {
            let events: Vec<_> = (start..start + 500).map(|i| sample_event("price.updated", "", i)).collect();
            for r in futures_util::future::join_all(events.iter().map(|e| send_event(p, main, e))).await {
                r.map_err(|e| e.to_string())?;
            }
            let m = gw.metrics().await;
            match metric(&m, "moonx_ws_slow_consumer_disconnects_total", &[]) {
                d if d >= 1.0 => Ok(()),
                d => Err(format!("{d} slow-consumer disconnects")),
            }
        }
    })
    .await;

    // The rule file is loaded and every rule evaluates without error.
    let deadline = std::time::Instant::now() + T60;
    let rule_exprs: Vec<(String, String)> = loop {
        let v = prom.api("rules", &[]).await;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let problem = if rules.len() != 8 {
            Some(format!("{} rules loaded: {v}", rules.len()))
        } else {
            rules.iter().find(|r| r["health"] != "ok").map(|bad| format!("rule not (yet) evaluated ok: {bad}"))
        };
        match problem {
            None => break rules.iter().map(|r| (r["name"].as_str().unwrap().to_owned(), r["query"].as_str().unwrap().to_owned())).collect(),
            Some(why) if std::time::Instant::now() > deadline => panic!("every rule loaded and evaluated: {why}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let dashboard = dashboard_queries();
    let mut names = BTreeSet::new();
    for (_, expr) in rule_exprs.iter().chain(&dashboard) {
        names.extend(metric_names(expr));
    }
    // Sanity of the extraction itself: the families the issue names are there.
    for must in [
        "up", "moonx_ws_consumer_lag", "moonx_ws_consumer_assigned_partitions", "moonx_ws_dlq_writes_total",
        "moonx_ws_dlq_write_errors_total", "moonx_ws_dlq_failing", "moonx_ws_slow_consumer_disconnects_total",
        "moonx_ws_end_to_end_latency_seconds_bucket", "moonx_ws_connections", "moonx_ws_connections_max",
        "moonx_ws_subscriptions", "moonx_ws_events_processed_total", "moonx_ws_events_failed_total",
        "moonx_ws_frames_sent_total", "moonx_ws_frames_dropped_total",
    ] {
        assert!(names.contains(must), "{must} is not used by the rules or the dashboard: {names:?}");
    }
    for name in &names {
        let selector = format!("{name}{{job=\"moonx-ws\"}}");
        eventually(&format!("Prometheus has data for {name}"), T60, || {
            let (prom, selector) = (&prom, selector.clone());
            async move {
                let r = prom.query(&selector).await;
                if r.is_empty() { Err("no series".into()) } else { Ok(()) }
            }
        })
        .await;
    }
    // Every dashboard query, as Grafana would send it, returns data.
    for (panel, expr) in &dashboard {
        let q = as_promql(&with_dashboard_variables(expr));
        eventually(&format!("dashboard panel {panel}: {q}"), T60, || {
            let (prom, q) = (&prom, q.clone());
            async move {
                let r = prom.query(&q).await;
                if r.is_empty() { Err("no data".into()) } else { Ok(()) }
            }
        })
        .await;
    }
    let alerts = prom.api("alerts", &[]).await;
    assert!(
        !alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "MoonxWsDeadLetterQueueUnwritable"),
        "the DLQ alert is quiet while the DLQ is writable: {alerts}"
    );
    draining.abort();

    // Now a DLQ that cannot be written (a topic name Kafka refuses, a
    // transient failure from the writer's view, as a DLQ topic that is away):
    // the next dead letter is held, the consumer holds, the alert goes pending.
    // (A DLQ that refuses the record itself, e.g. too large, is not held: the
    // writer writes a bounded fallback letter and moves on.)
    let unwritable_dlq = "no such topic!".to_owned();
    gw.set_env("EVENT_DEAD_LETTER_QUEUE_TOPIC", &unwritable_dlq);
    gw.restart();
    gw.wait_healthy().await;
    send_raw(&p, &topics.main, Some("prices"), b"{not json").await;
    let instance = format!("127.0.0.1:{}", gw.port);
    eventually("the DLQ alert is pending or firing", T60, || {
        let (prom, instance) = (&prom, &instance);
        async move {
            let v = prom.api("alerts", &[]).await;
            let found = v["data"]["alerts"].as_array().into_iter().flatten().find(|a| {
                a["labels"]["alertname"] == "MoonxWsDeadLetterQueueUnwritable" && a["labels"]["instance"] == instance.as_str()
            });
            match found {
                Some(a) if a["state"] == "pending" || a["state"] == "firing" => Ok(()),
                other => Err(format!("{other:?} in {v}")),
            }
        }
    })
    .await;
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["dlq"]["failing"], true, "{body}");
}

// ---------------------------------------------------------------- dlq

use moonx_events::{CustomType, DataClassification, EventFactory, EventType};
use moonx_ws::cli::dlq::{self, ReplayOptions, ReplayOutcome};
use moonx_ws::deliver::{Audience, Channel};
use moonx_ws::pipeline::router::{HandlerError, Route, Router};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::collections::HashMap;
use std::io::BufRead;

/// One dead letter in the DLQ format (Kafka Connect's convention): the
/// original value as-is, original key and headers, the failure in headers.
struct LetterSpec {
    id: String,
    partition: i32,
    key: Option<String>,
    value: Vec<u8>,
    reason: &'static str,
    event_type: Option<String>,
    errors: Value,
    truncated: Option<u64>,
}

/// `padding`: bytes of random (incompressible) data in an original header,
/// to make records large.
async fn write_letters(p: &rdkafka::producer::FutureProducer, dlq_topic: &str, letters: &[LetterSpec], padding: usize) {
    let pad: Vec<u8> = (0..padding).map(|_| rand::random::<u8>()).collect();
    let sends = letters.iter().map(|l| {
        let (src_topic, rest) = l.id.split_once('/').unwrap();
        let (src_partition, src_offset) = rest.split_once('/').unwrap();
        let failed_at = moonx_events::validate::now_ms().to_string();
        let errors = l.errors.to_string();
        let truncated = l.truncated.map(|t| t.to_string());
        let mut h = OwnedHeaders::new()
            .insert(Header { key: "content-type", value: Some("application/json") })
            .insert(Header { key: "x-producer", value: Some("rewards-service") });
        if padding > 0 {
            h = h.insert(Header { key: "x-padding", value: Some(pad.as_slice()) });
        }
        let mut dlq_headers: Vec<(&str, String)> = vec![
            ("dlq.id", l.id.clone()),
            ("dlq.reason", l.reason.into()),
            ("dlq.message", format!("{}: see dlq.errors", l.reason)),
            ("dlq.errors", errors),
            ("dlq.source.topic", src_topic.into()),
            ("dlq.source.partition", src_partition.into()),
            ("dlq.source.offset", src_offset.into()),
            ("dlq.source.timestamp", failed_at.clone()),
            ("dlq.attempts", "1".into()),
            ("dlq.failed_at", failed_at),
            ("dlq.instance", "gw-test".into()),
        ];
        if let Some(k) = &l.key {
            dlq_headers.push(("dlq.source.key", k.clone()));
        }
        if let Some(t) = &l.event_type {
            dlq_headers.push(("dlq.event_type", t.clone()));
        }
        if let Some(t) = truncated {
            dlq_headers.push(("dlq.payload_truncated", t));
        }
        for (k, v) in &dlq_headers {
            h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut rec = FutureRecord::<str, [u8]>::to(dlq_topic).partition(l.partition).payload(&l.value).headers(h);
        if let Some(k) = &l.key {
            rec = rec.key(k.as_str());
        }
        p.send(rec, Duration::from_secs(30))
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("write a dead letter");
    }
}

/// Every record of `topic` up to a marker produced now to each partition:
/// everything published before the call is included, nothing is waited
/// for beyond the markers.
async fn read_all_until_markers(topic: &str) -> Vec<RawRecord> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::Message;
    let p = producer();
    let consumer: StreamConsumer = moonx_ws::kafka::client_config(&brokers())
        .set("group.id", unique("marker-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let partitions = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap().topics()[0].partitions().len() as i32;
    let marker = unique("marker");
    for partition in 0..partitions {
        p.send(FutureRecord::<str, str>::to(topic).partition(partition).key("marker").payload(&marker), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut markers = 0;
    let deadline = std::time::Instant::now() + T60;
    while markers < partitions {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let m = tokio::time::timeout(left, consumer.recv()).await.expect("markers arrive within 60 s").unwrap();
        if m.payload() == Some(marker.as_bytes()) {
            markers += 1;
            continue;
        }
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push((m.partition(), m.offset(), m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
    }
    out
}

/// `dlq.replayed-from` of each record that has it, with how often it occurs.
fn replayed_from(records: &[RawRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, _, _, _, headers) in records {
        for (k, v) in headers {
            if k == "dlq.replayed-from" {
                *counts.entry(String::from_utf8_lossy(v).into_owned()).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn reward_router() -> Router {
    let mut router = Router::with_built_in_handlers();
    router
        .register(CustomType::new("reward.granted", DataClassification::Confidential), |event| {
            let owner = event.metadata.user_id.clone().ok_or_else(|| HandlerError::Permanent("no owner".into()))?;
            Ok(vec![Route { channel: Channel::Trades, audience: Audience::User(owner) }])
        })
        .expect("a new type");
    router
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_show_and_replay_redrive_a_custom_type_once_to_its_websocket_clients() {
    let topics = create_topics("ops-replay").await;
    let router = reward_router();
    let registry = router.registry().clone();
    let factory = EventFactory::new("rewards-service").with_registry(registry.clone());
    let users = ["ana", "ben", "cyd", "dee", "eve"];
    let events: Vec<_> = (0..50)
        .map(|i| {
            let user = users[i % users.len()];
            factory
                .create_from_json(&EventType::parse("reward.granted"), serde_json::json!({"points": i, "userId": user}), moonx_events::EventOptions::user(user))
                .expect("valid with the type registered")
        })
        .collect();
    // Dead-lettered while no handler knew the type. Each partition starts
    // with a letter that cannot pass today (bad JSON; a truncated value), so
    // the replay's progress is blocked behind it and must remember the
    // letters it replayed beyond.
    let mut letters = vec![
        LetterSpec {
            id: format!("{}/0/0", topics.main), partition: 0, key: Some("ana".into()), value: b"{\"metadata\": {".to_vec(),
            reason: "invalid_json", event_type: None, errors: Value::Null, truncated: None,
        },
        LetterSpec {
            id: format!("{}/1/0", topics.main), partition: 1, key: Some("ben".into()), value: vec![b'{'; 100],
            reason: "handler_failed", event_type: Some("order.created".into()), errors: Value::Null, truncated: Some(2_000_000),
        },
    ];
    for (i, e) in events.iter().enumerate() {
        letters.push(LetterSpec {
            id: format!("{}/{}/{}", topics.main, 2 + i % 4, 100 + i),
            partition: (i % 2) as i32,
            key: Some(e.metadata.partition.clone()),
            value: e.to_json_bytes().to_vec(),
            reason: "invalid_event",
            event_type: None, // unknown to the gateway that dead-lettered it
            errors: serde_json::json!([{"path": "/metadata/eventType", "code": "unknown_event_type", "message": "unknown event type reward.granted"}]),
            truncated: None,
        });
    }
    let p = producer();
    write_letters(&p, &topics.dlq, &letters, 0).await;
    // A duplicate copy (a writer crashed between writing and committing).
    write_letters(&p, &topics.dlq, &letters[5..6].iter().map(|l| LetterSpec { id: l.id.clone(), partition: 1 - l.partition, key: l.key.clone(),
        value: l.value.clone(), reason: l.reason, event_type: None, errors: l.errors.clone(), truncated: None }).collect::<Vec<_>>(), 0).await;

    // list: a summary by reason and type; duplicates counted once.
    let env = [("KAFKA_MAIN_TOPIC", topics.main.as_str()), ("EVENT_DEAD_LETTER_QUEUE_TOPIC", topics.dlq.as_str())];
    let (ok, out, err) = run_cli(&["dlq", "list", "--json"], &env);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(summary["total"], 52, "{summary}");
    assert_eq!(summary["duplicatesSkipped"], 1, "{summary}");
    let count = |reason: &str, t: &str| {
        summary["groups"].as_array().unwrap().iter().find(|g| g["reason"] == reason && g["eventType"] == t).map(|g| g["count"].as_u64().unwrap())
    };
    assert_eq!(count("invalid_event", "reward.granted"), Some(50), "the type is read from the envelope when no header names it: {summary}");
    assert_eq!(count("invalid_json", "-"), Some(1), "{summary}");
    assert_eq!(count("handler_failed", "order.created"), Some(1), "{summary}");
    let (ok, out, err) = run_cli(&["dlq", "list", "--json", "--reason", "invalid_json"], &env);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap()["total"], 1, "{out}");
    let (ok, out, err) = run_cli(&["dlq", "list", "--json", "--type", "reward.granted"], &env);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap()["total"], 50, "{out}");
    let (ok, out, err) = run_cli(&["dlq", "list", "--json", "--since", "2999-01-01T00:00:00Z"], &env);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap()["total"], 0, "{out}");
    let (ok, _, err) = run_cli(&["dlq", "list", "--since", "last tuesday"], &env);
    assert!(!ok && err.contains("not a time"), "{err}");

    // show: one letter, its errors and the original bytes.
    let (ok, out, err) = run_cli(&["dlq", "show", &letters[2].id, "--json"], &env);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["value"].as_str().unwrap().as_bytes(), letters[2].value.as_slice());
    assert_eq!(shown["errors"][0]["code"], "unknown_event_type", "{shown}");
    assert_eq!(shown["source"]["key"], "ana", "{shown}");
    let (ok, out, _) = run_cli(&["dlq", "show", &format!("{}/9/9", topics.main)], &env);
    assert!(!ok, "an unknown id is an error: {out}");

    // An in-process gateway with the custom handler registered, and a client per user.
    let port = free_port();
    let cli = moonx_ws::cli::parse_args([
        "moonx-ws", "serve", "--brokers", &brokers(), "--main-topic", &topics.main, "--dlq-topic", &topics.dlq,
        "--group-id", &unique("it"), "--instance-id", "replay", "--auto-offset-reset", "earliest", "--host", "127.0.0.1",
        "--port", &port.to_string(), "--jwt-secret", JWT_SECRET,
    ])
    .unwrap();
    let moonx_ws::cli::Command::Serve(serve) = cli.command else { panic!("serve") };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(moonx_ws::server::Gateway::new(*serve).with_router(router).run(shutdown.clone()));
    let base = format!("http://127.0.0.1:{port}");
    eventually("the in-process gateway is healthy", T60, || {
        let base = base.clone();
        async move {
            match http_get(&format!("{base}/health")).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut clients = Vec::new();
    for user in users {
        let mut c = Client::authed(&url, user, &[]).await;
        c.subscribe("trades").await;
        clients.push((user, c));
    }

    let options = ReplayOptions {
        brokers: brokers(),
        dlq_topic: topics.dlq.clone(),
        to: topics.main.clone(),
        group: unique("replay"),
        filters: Default::default(),
        dry_run: true,
    };
    // Dry run: says what would happen, publishes nothing.
    let dry = dlq::replay(&options, &registry, |_| {}).await.unwrap();
    assert_eq!((dry.replayed(), dry.still_invalid(), dry.truncated(), dry.already_replayed), (50, 1, 1, 1), "{:?}", dry.summary());
    assert!(dry.outcomes.iter().all(|o| !matches!(o, ReplayOutcome::Replayed { offset: Some(_), .. })));

    // Without the custom type (today's built-in model only) nothing passes.
    let builtin = Router::with_built_in_handlers().registry().clone();
    let refused = dlq::replay(&ReplayOptions { dry_run: true, ..options.clone() }, &builtin, |_| {}).await.unwrap();
    assert_eq!((refused.replayed(), refused.still_invalid()), (0, 51), "{:?}", refused.summary());

    let first = dlq::replay(&ReplayOptions { dry_run: false, ..options.clone() }, &registry, |_| {}).await.unwrap();
    assert_eq!((first.replayed(), first.still_invalid(), first.truncated(), first.already_replayed), (50, 1, 1, 1), "{:?}", first.summary());
    let invalid = first.outcomes.iter().find_map(|o| match o { ReplayOutcome::StillInvalid { id, reason, .. } => Some((id.clone(), reason.clone())), _ => None });
    assert_eq!(invalid, Some((letters[0].id.clone(), "invalid_json".to_owned())));

    // Every client gets exactly its own 10 events.
    for (user, c) in &mut clients {
        let expected: BTreeSet<String> = events.iter().filter(|e| e.metadata.user_id.as_deref() == Some(*user)).map(|e| e.metadata.event_id.to_string()).collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let v = c.recv(Duration::from_secs(30)).await.unwrap_or_else(|| panic!("{user}: only {} of {} events", got.len(), expected.len()));
            if v["type"] == "event" {
                assert_eq!(v["event"]["metadata"]["eventType"], "reward.granted", "{v}");
                got.push(v["event"]["metadata"]["eventId"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), expected, "{user}");
        assert_eq!(got.len(), expected.len(), "{user}: no event twice");
    }

    // A second replay publishes nothing; the unsettled letters are reported again.
    let second = dlq::replay(&ReplayOptions { dry_run: false, ..options.clone() }, &registry, |_| {}).await.unwrap();
    assert_eq!((second.replayed(), second.still_invalid(), second.truncated(), second.already_replayed), (0, 1, 1, 51), "{:?}", second.summary());

    // On the main topic: each letter exactly once, with its original key and headers.
    let records = read_all_until_markers(&topics.main).await;
    let replayed = replayed_from(&records);
    let expected_ids: BTreeSet<String> = letters[2..].iter().map(|l| l.id.clone()).collect();
    assert_eq!(replayed.keys().cloned().collect::<BTreeSet<_>>(), expected_ids);
    assert!(replayed.values().all(|&n| n == 1), "a letter published twice: {replayed:?}");
    for (_, _, key, value, headers) in records.iter().filter(|r| r.4.iter().any(|(k, _)| k == "dlq.replayed-from")) {
        let id = String::from_utf8_lossy(&headers.iter().find(|(k, _)| k == "dlq.replayed-from").unwrap().1).into_owned();
        let letter = letters.iter().find(|l| l.id == id).unwrap();
        assert_eq!(value, &letter.value, "original bytes");
        assert_eq!(key.as_deref(), letter.key.as_deref().map(str::as_bytes), "original key");
        assert!(headers.iter().any(|(k, v)| k == "x-producer" && v == b"rewards-service"), "original headers kept");
        assert!(!headers.iter().any(|(k, _)| k.starts_with("dlq.") && k != "dlq.replayed-from"), "no failure headers on the replayed record");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), gateway).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_with_sigkill_and_rerun_publishes_every_letter_exactly_once() {
    let topics = create_topics("ops-replay-kill").await;
    // Letters that pass today's built-in model: dead-lettered for a
    // transient reason (a handler that kept failing).
    // Large records (16 KiB each, incompressible) so that a batch takes
    // several produce requests: the kill below lands while one is open.
    let total = 600;
    let letters: Vec<LetterSpec> = (0..total)
        .map(|i| {
            let e = sample_event("price.updated", "", i);
            LetterSpec {
                id: format!("{}/{}/{}", topics.main, i % 6, i),
                partition: (i % 2) as i32,
                key: Some("prices".into()),
                value: e.to_json_bytes().to_vec(),
                reason: "handler_failed",
                event_type: Some("price.updated".into()),
                errors: Value::Null,
                truncated: None,
            }
        })
        .collect();
    let p = producer();
    for chunk in letters.chunks(100) {
        write_letters(&p, &topics.dlq, chunk, 16 * 1024).await;
    }
    let group = unique("replay-kill");
    let replay_cmd = || {
        let mut c = Command::new(bin());
        c.args(["dlq", "replay", "--json", "--group", &group])
            .env("KAFKA_BROKERS", brokers())
            .env("KAFKA_MAIN_TOPIC", &topics.main)
            .env("EVENT_DEAD_LETTER_QUEUE_TOPIC", &topics.dlq)
            .env("RUST_LOG", "warn");
        c
    };
    // Kill the first run in the middle of a batch: as soon as a reader that
    // also sees uncommitted records finds the first record of its second
    // batch on the main topic (a transaction is then open).
    let observer: rdkafka::consumer::StreamConsumer = moonx_ws::kafka::client_config(&brokers())
        .set("group.id", unique("observer"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", "1")
        .create()
        .unwrap();
    {
        use rdkafka::consumer::Consumer;
        observer.subscribe(&[topics.main.as_str()]).unwrap();
    }
    let mut child = replay_cmd().stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Keep reading the child's output (a closed pipe would end it by itself).
    let drain = std::thread::spawn(move || std::io::BufReader::new(stdout).lines().map_while(Result::ok).count());
    let mut seen = 0;
    while seen <= 100 {
        use rdkafka::message::{Headers, Message};
        let m = tokio::time::timeout(T60, observer.recv()).await.expect("the replay publishes within 60 s").unwrap();
        if m.headers().is_some_and(|h| h.iter().any(|h| h.key == "dlq.replayed-from")) {
            seen += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the first run was killed mid-way, not finished: {status:?}");
    drain.join().unwrap();

    let out = replay_cmd().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let second = summary["summary"]["replayed"].as_u64().unwrap() as usize;
    assert!(second > 0 && second < total, "the rerun resumed where the killed run stopped: {summary}");

    let out = replay_cmd().output().unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["summary"]["replayed"], 0, "a third run publishes nothing: {summary}");

    let replayed = replayed_from(&read_all_until_markers(&topics.main).await);
    assert_eq!(replayed.len(), total, "none lost");
    let twice: Vec<_> = replayed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "none twice: {} letters published more than once, e.g. {:?}", twice.len(), &twice[..twice.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_written_by_the_gateway_itself_are_listed_shown_and_replayed() {
    // Whatever the writer's format, `dlq` reads what the gateway wrote.
    let topics = create_topics("ops-own-letters").await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let registry = reward_router().registry().clone();
    let event = EventFactory::new("rewards-service")
        .with_registry(registry.clone())
        .create_from_json(&EventType::parse("reward.granted"), serde_json::json!({"points": 7, "userId": "fay"}), moonx_events::EventOptions::user("fay"))
        .unwrap();
    let original = event.to_json_bytes().to_vec();
    let p = producer();
    let (partition, offset) = send_raw(&p, &topics.main, Some("fay"), &original).await;
    let id = format!("{}/{partition}/{offset}", topics.main);
    let env = [("KAFKA_MAIN_TOPIC", topics.main.as_str()), ("EVENT_DEAD_LETTER_QUEUE_TOPIC", topics.dlq.as_str())];
    eventually("the gateway dead-lettered the unknown type", T60, || async {
        let (ok, out, err) = run_cli(&["dlq", "list", "--json"], &env);
        let v: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out} {err}"))?;
        if ok && v["total"] == 1 { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    let (ok, out, err) = run_cli(&["dlq", "show", &id, "--json"], &env);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["reason"], "invalid_event", "{shown}");
    assert_eq!(shown["value"].as_str().unwrap().as_bytes(), original.as_slice(), "the original bytes: {shown}");
    assert_eq!(shown["source"]["key"], "fay", "{shown}");

    let options = ReplayOptions {
        brokers: brokers(),
        dlq_topic: topics.dlq.clone(),
        to: topics.main.clone(),
        group: unique("replay-own"),
        filters: Default::default(),
        dry_run: false,
    };
    let report = dlq::replay(&options, &registry, |_| {}).await.unwrap();
    assert_eq!(report.replayed(), 1, "{:?}", report.outcomes);
    let records = read_all_until_markers(&topics.main).await;
    let replayed: Vec<_> = records.iter().filter(|r| r.4.iter().any(|(k, v)| k == "dlq.replayed-from" && v == id.as_bytes())).collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].3, original, "re-published byte for byte");
    assert_eq!(replayed[0].2.as_deref(), Some(b"fay".as_slice()), "with the original key");
}

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
use moonx_ws::kafka::admin::{Admin, TopicSpec};
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

    // Now a DLQ that refuses every record (max.message.bytes=64): the next
    // dead letter cannot be written, the consumer holds, the alert goes pending.
    let tiny_dlq = format!("{}.tiny-dlq", topics.main);
    let admin = Admin::connect(&brokers(), Duration::from_secs(30)).unwrap();
    admin
        .apply_layout(&[TopicSpec { name: tiny_dlq.clone(), partitions: 1, configs: vec![("max.message.bytes", "64")] }], 1, false)
        .await
        .unwrap();
    gw.set_env("EVENT_DEAD_LETTER_QUEUE_TOPIC", &tiny_dlq);
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

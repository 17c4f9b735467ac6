//! results.json, results.md and the PNG charts of a run.

use crate::chart;
use crate::suite::{Delivery, Results};
use crate::target::Kind;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub load_average_start: String,
    pub load_average_end: String,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("?")
                .trim()
                .to_owned(),
            memory_gib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            load_average_start: loadavg(),
            load_average_end: String::new(),
            open_files_limit: crate::procstat::open_files_limit(),
        }
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub started_at_unix: u64,
    pub command: String,
    pub source: String,
    pub profile: String,
    pub smoke: bool,
    pub machine: Machine,
    pub scale: &'a crate::suite::Scale,
    pub results: &'a Results,
    pub targets: Vec<Target>,
}

/// One line of the targets table.
#[derive(Debug, Serialize)]
pub struct Target {
    pub scenario: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn yes(b: bool) -> &'static str {
    if b { "**met**" } else { "**missed**" }
}

pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(h) = &r.hot_path
        && let Some(p) = h.moonx.iter().find(|m| m.name == "pipeline/price_updated_387B") {
            out.push(Target {
                scenario: "a hot path".into(),
                target: "≥ 2,000,000 events/s per core".into(),
                measured: format!("{} events/s ({:.2} µs/event)", fmt_rate(p.elements_per_sec), p.ns_per_element / 1000.0),
                met: Some(p.elements_per_sec >= 2e6),
            });
            if let Some(b) = h.baseline.iter().find(|b| b.frame_mode == "stringify") {
                let ratio = p.elements_per_sec / b.events_per_sec;
                out.push(Target {
                    scenario: "a hot path".into(),
                    target: "≥ 3× the baseline".into(),
                    measured: format!("{ratio:.2}× ({} vs {} events/s)", fmt_rate(p.elements_per_sec), fmt_rate(b.events_per_sec)),
                    met: Some(ratio >= 3.0),
                });
            }
        }
    if let Some(c) = &r.consume
        && let Some(m) = c.runs.iter().find(|r| r.target == Kind::Moonx) {
            let of_bare = m.events_per_sec / c.bare_consumer_events_per_sec;
            out.push(Target {
                scenario: "b consume".into(),
                target: "≥ 90% of the bare consumer".into(),
                measured: format!("{:.0}% ({} vs {} events/s)", of_bare * 100.0, fmt_rate(m.events_per_sec), fmt_rate(c.bare_consumer_events_per_sec)),
                met: Some(of_bare >= 0.9),
            });
            if let Some(b) = c.runs.iter().find(|r| r.target == Kind::Baseline) {
                let ratio = m.events_per_sec / b.events_per_sec;
                out.push(Target {
                    scenario: "b consume".into(),
                    target: "≥ 10× the baseline".into(),
                    measured: format!("{ratio:.1}× ({} vs {} events/s)", fmt_rate(m.events_per_sec), fmt_rate(b.events_per_sec)),
                    met: Some(ratio >= 10.0),
                });
            }
        }
    if let Some(s) = &r.skip_consume {
        out.extend(crate::skip_consume::targets(s));
    }
    if let Some(f) = r.fanout.iter().find(|f| f.target == Kind::Moonx) {
        out.push(Target {
            scenario: "c fan-out".into(),
            target: "≥ 2,000,000 frames/s".into(),
            measured: format!(
                "{} frames/s sustained to {} clients (peak {}; end to end, the load tool on the same CPUs)",
                fmt_rate(f.sustained_frames_per_sec), f.clients_open, fmt_rate(f.max_delivered_frames_per_sec)
            ),
            met: Some(f.sustained_frames_per_sec >= 2e6),
        });
    }
    if let Some(h) = r.hot_path.as_ref().and_then(|h| h.moonx.iter().find(|m| m.name.starts_with("fanout/"))) {
        out.push(Target {
            scenario: "c fan-out (in process)".into(),
            target: "≥ 2,000,000 frames/s".into(),
            measured: format!("{} frames/s (`Hub::publish` to 1,000 queues, one core)", fmt_rate(h.elements_per_sec)),
            met: Some(h.elements_per_sec >= 2e6),
        });
    }
    if let Some(d) = r.latency.iter().find(|d| d.target == Kind::Moonx) {
        let gap = d.latency.latency.p99_ms - d.kafka_floor.latency.p99_ms;
        out.push(Target {
            scenario: "d latency".into(),
            target: "p99 within 1 ms of the Kafka floor".into(),
            measured: format!("p99 {:.2} ms vs floor {:.2} ms: +{gap:.2} ms", d.latency.latency.p99_ms, d.kafka_floor.latency.p99_ms),
            met: Some(gap <= 1.0),
        });
    }
    out.extend(peer_targets(r));
    if let Some(m) = r.memory.iter().find(|m| m.target == Kind::Moonx) {
        for l in &m.levels {
            out.push(Target {
                scenario: "e memory".into(),
                target: "≤ 8 KiB RSS per idle connection".into(),
                measured: format!("{:.2} KiB at {} connections", l.bytes_per_connection / 1024.0, l.connections),
                met: Some(l.bytes_per_connection <= 8192.0),
            });
        }
    }
    out
}

/// Issue 14's targets against Centrifugo and the fan-out floor (rows only
/// for what ran).
fn peer_targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let fanout = |k: Kind| r.fanout.iter().find(|f| f.target == k);
    if let (Some(m), Some(c)) = (fanout(Kind::Moonx), fanout(Kind::Centrifugo).filter(|c| c.sustained_frames_per_sec > 0.0)) {
        let ratio = m.sustained_frames_per_sec / c.sustained_frames_per_sec;
        out.push(Target {
            scenario: "c fan-out".into(),
            target: "≥ 2× Centrifugo's sustained fan-out".into(),
            measured: format!("{ratio:.2}× ({} vs {} frames/s)", fmt_rate(m.sustained_frames_per_sec), fmt_rate(c.sustained_frames_per_sec)),
            met: Some(ratio >= 2.0),
        });
    }
    if let (Some(m), Some(f)) = (fanout(Kind::Moonx), fanout(Kind::Floor).filter(|f| f.sustained_frames_per_sec > 0.0)) {
        let of = m.sustained_frames_per_sec / f.sustained_frames_per_sec;
        out.push(Target {
            scenario: "c fan-out".into(),
            target: "≥ 85% of the fan-out floor".into(),
            measured: format!("{:.0}% ({} vs {} frames/s sustained)", of * 100.0, fmt_rate(m.sustained_frames_per_sec), fmt_rate(f.sustained_frames_per_sec)),
            met: Some(of >= 0.85),
        });
    }
    let latency = |k: Kind| r.latency.iter().find(|d| d.target == k);
    if let (Some(m), Some(c)) = (latency(Kind::Moonx), latency(Kind::Centrifugo)) {
        let (m, c) = (&m.latency.latency_precise, &c.latency.latency_precise);
        out.push(Target {
            scenario: "d latency".into(),
            target: "p50 and p99 at or below Centrifugo's".into(),
            measured: format!("p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms", m.p50_ms, c.p50_ms, m.p99_ms, c.p99_ms),
            met: Some(m.p50_ms <= c.p50_ms && m.p99_ms <= c.p99_ms),
        });
    }
    if let Some(c) = &r.consume {
        let run = |k: Kind| c.runs.iter().find(|r| r.target == k);
        if let (Some(m), Some(p)) = (run(Kind::Moonx), run(Kind::Centrifugo)) {
            let ratio = m.events_per_sec / p.events_per_sec;
            out.push(Target {
                scenario: "b consume".into(),
                target: "≥ 2× Centrifugo's Kafka consumer".into(),
                measured: format!("{ratio:.1}× ({} vs {} events/s)", fmt_rate(m.events_per_sec), fmt_rate(p.events_per_sec)),
                met: Some(ratio >= 2.0),
            });
        }
    }
    let memory = |k: Kind| r.memory.iter().find(|m| m.target == k).and_then(|m| m.levels.last());
    if let (Some(m), Some(c)) = (memory(Kind::Moonx), memory(Kind::Centrifugo)) {
        let ratio = m.bytes_per_connection / c.bytes_per_connection;
        out.push(Target {
            scenario: "e memory".into(),
            target: "≤ ¼ of Centrifugo's per idle connection".into(),
            measured: format!(
                "{:.2} of it ({:.2} vs {:.2} KiB at {} / {} connections)",
                ratio, m.bytes_per_connection / 1024.0, c.bytes_per_connection / 1024.0, m.connections, c.connections
            ),
            met: Some(ratio <= 0.25),
        });
    }
    out
}

/// `a / b` as a ratio, or "–" when either is missing or b is zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// A side-by-side row: measure, values (moonx, Centrifugo, baseline,
/// floor), how to print one, and whether higher is better.
type SideRow = (String, [Option<f64>; 4], Box<dyn Fn(f64) -> String>, bool);

/// Issue 14 item 5: one table, a row per scenario's headline measure, a
/// column per system, the ratios of moonx-ws to each, and the load.
fn side_by_side(md: &mut String, rep: &Report<'_>) {
    let r = rep.results;
    let kinds = [Kind::Moonx, Kind::Centrifugo, Kind::Baseline, Kind::Floor];
    let mut rows: Vec<SideRow> = Vec::new();
    if let Some(c) = &r.consume {
        let v = kinds.map(|k| c.runs.iter().find(|x| x.target == k).map(|x| x.events_per_sec));
        rows.push(("b consume, events/s".into(), v, Box::new(fmt_rate), true));
    }
    if !r.fanout.is_empty() {
        let clients = r.fanout.iter().map(|f| f.clients).max().unwrap_or(0);
        let v = kinds.map(|k| r.fanout.iter().find(|f| f.target == k).map(|f| f.sustained_frames_per_sec));
        rows.push((format!("c sustained fan-out to {clients} clients, frames/s"), v, Box::new(fmt_rate), true));
    }
    for (name, runs) in [("d latency", &r.latency), ("f private", &r.private)] {
        if runs.is_empty() {
            continue;
        }
        let get = |k: Kind, f: &dyn Fn(&Delivery) -> f64| runs.iter().find(|d| d.target == k).map(f);
        rows.push((format!("{name} p50, ms"), kinds.map(|k| get(k, &|d| d.latency.latency_precise.p50_ms)), Box::new(|v| format!("{v:.2}")), false));
        rows.push((format!("{name} p99, ms"), kinds.map(|k| get(k, &|d| d.latency.latency_precise.p99_ms)), Box::new(|v| format!("{v:.2}")), false));
        rows.push((format!("{name} delivered, frames/s"), kinds.map(|k| get(k, &|d| d.delivered_frames_per_sec)), Box::new(fmt_rate), true));
    }
    if !r.memory.is_empty() {
        let v = kinds.map(|k| r.memory.iter().find(|m| m.target == k).and_then(|m| m.levels.last()).map(|l| l.bytes_per_connection / 1024.0));
        rows.push(("e memory per idle connection (largest level), KiB".into(), v, Box::new(|v| format!("{v:.2}")), false));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "
## Side by side (issue 14)
");
    let _ = writeln!(
        md,
        "One run, one target at a time, on the same machine; load average {} at start, {} at end (per-step loads below). Ratios are moonx-ws's value divided by the other's: above 1 is better for throughput rows, below 1 for latency and memory rows.
",
        rep.machine.load_average_start, rep.machine.load_average_end
    );
    let _ = writeln!(md, "| measure | moonx-ws | Centrifugo v6 | Node baseline | fan-out floor | moonx / Centrifugo | moonx / baseline | moonx % of floor |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, v, f, higher_better) in &rows {
        let of_floor = match (v[0], v[3]) {
            (Some(m), Some(fl)) if fl > 0.0 && *higher_better => format!("{:.0}%", m / fl * 100.0),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {of_floor} |",
            cell(v[0], f), cell(v[1], f), cell(v[2], f), cell(v[3], f), ratio(v[0], v[1]), ratio(v[0], v[2])
        );
    }
    // The floor step by step.
    let moonx = r.fanout.iter().find(|f| f.target == Kind::Moonx);
    let floor = r.fanout.iter().find(|f| f.target == Kind::Floor);
    let centrifugo = r.fanout.iter().find(|f| f.target == Kind::Centrifugo);
    if let (Some(m), Some(fl)) = (moonx, floor) {
        let _ = writeln!(md, "
Fan-out step by step (delivered frames/s; a system that fell behind at a step stops there):
");
        let _ = writeln!(md, "| events/s | offered frames/s | moonx-ws | Centrifugo v6 | fan-out floor | moonx % of floor | moonx / Centrifugo | load average (moonx's step) |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for s in &m.steps {
            let at = |f: Option<&crate::suite::Fanout>| f.and_then(|f| f.steps.iter().find(|x| x.events_per_sec == s.events_per_sec)).map(|x| x.delivered_frames_per_sec);
            let (f, c) = (at(Some(fl)), at(centrifugo));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.events_per_sec, fmt_rate(s.offered_frames_per_sec), fmt_rate(s.delivered_frames_per_sec),
                cell(c, fmt_rate), cell(f, fmt_rate),
                f.filter(|f| *f > 0.0).map_or("–".into(), |f| format!("{:.0}%", s.delivered_frames_per_sec / f * 100.0)),
                ratio(Some(s.delivered_frames_per_sec), c), s.load_average
            );
        }
    }
}

fn le_pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a} / {b}"),
        _ => "–".into(),
    }
}

fn delivery_table(md: &mut String, title: &str, runs: &[Delivery]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n### {title}\n");
    let _ = writeln!(md, "| system | clients open | events/s | delivered frames/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | Kafka floor p50 / p99 / p99.9 ms | gateway CPU % | RSS MiB | load average |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for d in runs {
        let l = &d.latency.latency;
        let f = &d.kafka_floor.latency;
        let _ = writeln!(
            md,
            "| {} | {} / {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} / {:.2} / {:.2} | {:.0} | {:.0} | {} |",
            d.target.key(), d.clients_open, d.clients, fmt_rate(d.events_per_sec), fmt_rate(d.delivered_frames_per_sec),
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, f.p50_ms, f.p99_ms, f.p999_ms, d.cpu_percent, d.rss_mib, d.load_average
        );
    }
    let _ = writeln!(md, "\nLatency from `metadata.timestamp` (whole milliseconds, so each value carries 0–1 ms of rounding, the floor alike). With the µs production instant carried in `correlationId`:\n");
    let _ = writeln!(md, "| system | p50 ms | p99 ms | p99.9 ms | floor p50 ms | floor p99 ms | floor p99.9 ms | frames received / produced in window | gateway's own histogram (to frame written): p50 / p99 ≤ ms | load tool CPU % |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for d in runs {
        let l = &d.latency.latency_precise;
        let f = &d.kafka_floor.latency_precise;
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} / {} | {} | {:.0} |",
            d.target.key(), l.p50_ms, l.p99_ms, l.p999_ms, f.p50_ms, f.p99_ms, f.p999_ms, d.delivered_frames, d.produced_in_window,
            le_pair(d.gateway_written_p50_le_ms, d.gateway_written_p99_le_ms), d.tool_cpu_percent
        );
    }
}

pub fn markdown(rep: &Report<'_>) -> String {
    let r = rep.results;
    let m = &rep.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# moonx-ws benchmark results{}\n", if rep.smoke { " (smoke: small N, numbers not meaningful)" } else { "" });
    let _ = writeln!(md, "- command: `{}`", rep.command);
    let _ = writeln!(md, "- gateway build: {} profile, source {}", rep.profile, rep.source);
    let _ = writeln!(
        md,
        "- machine: {} CPUs ({}), {:.1} GiB, Linux {}, open-files limit {}; load average {} at start, {} at end",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.open_files_limit, m.load_average_start, m.load_average_end
    );
    let _ = writeln!(md, "- the load tool, the broker and the system under test share these CPUs");
    let c = Kind::Centrifugo;
    let ran_centrifugo = r.consume.as_ref().is_some_and(|x| x.runs.iter().any(|x| x.target == c))
        || r.fanout.iter().any(|x| x.target == c)
        || r.latency.iter().chain(&r.private).any(|x| x.target == c)
        || r.memory.iter().any(|x| x.target == c);
    if ran_centrifugo {
        let _ = writeln!(md, "- Centrifugo {} (built with `go install`), its config for each scenario in `centrifugo-<scenario>.json` beside these results", crate::target::CENTRIFUGO_VERSION);
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Targets\n\n| scenario | target | measured | |\n|---|---|---|---|");
    for t in &rep.targets {
        let _ = writeln!(md, "| {} | {} | {} | {} |", t.scenario, t.target, t.measured, t.met.map_or("", yes));
    }

    side_by_side(&mut md, rep);

    if let Some(h) = &r.hot_path {
        let _ = writeln!(md, "\n## a. Hot path (in process, one core)\n\n| what | µs per element | per second |\n|---|---|---|");
        for c in &h.moonx {
            let _ = writeln!(md, "| moonx-ws `{}` | {:.3} | {} {}s |", c.name, c.ns_per_element / 1000.0, fmt_rate(c.elements_per_sec), c.element);
        }
        for b in &h.baseline {
            let _ = writeln!(md, "| baseline `--bench-hotpath` FRAME_MODE={} | {:.3} | {} events |", b.frame_mode, b.us_per_event, fmt_rate(b.events_per_sec));
        }
    }
    if let Some(c) = &r.consume {
        let _ = writeln!(
            md,
            "\n## b. Consume throughput, no clients\n\n{} events pre-loaded ({} events/s) into a fresh 6-partition topic (compression.type={}); each consumer is a fresh group from the beginning.\n",
            c.events, fmt_rate(c.preload_events_per_sec), c.compression
        );
        let _ = writeln!(md, "| consumer | events/s | of bare | CPU % (of one core) | CPU µs/event | RSS MiB |\n|---|---|---|---|---|---|");
        let _ = writeln!(md, "| bare rdkafka consumer | {} | 100% | | | |", fmt_rate(c.bare_consumer_events_per_sec));
        for run in &c.runs {
            let _ = writeln!(
                md,
                "| {}{} | {} | {:.0}% | {:.0} | {:.2} | {:.0} |",
                run.target.key(),
                if run.includes_startup { " (timed from process start: it did not answer /metrics earlier)" } else { "" }, fmt_rate(run.events_per_sec), run.events_per_sec / c.bare_consumer_events_per_sec * 100.0,
                run.cpu_percent, run.cpu_us_per_event, run.rss_mib_end
            );
        }
    }
    if let Some(s) = &r.skip_consume {
        crate::skip_consume::markdown(&mut md, s);
    }
    if !r.fanout.is_empty() {
        let _ = writeln!(md, "\n## c. Fan-out: one price stream to N subscribers\n\n| system | clients | events/s | offered frames/s | delivered frames/s | delivered | p50 ms | p99 ms | gateway's own p50 / p99 ≤ ms | gateway CPU % | load tool CPU % | RSS MiB | closed | load average |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for f in &r.fanout {
            for s in &f.steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.0}% | {:.1} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
                    f.target.key(), f.clients_open, s.events_per_sec, fmt_rate(s.offered_frames_per_sec), fmt_rate(s.delivered_frames_per_sec),
                    s.delivered_ratio * 100.0, s.latency.p50_ms, s.latency.p99_ms, le_pair(s.gateway_written_p50_le_ms, s.gateway_written_p99_le_ms),
                    s.cpu_percent, s.tool_cpu_percent, s.rss_mib, s.clients_closed, s.load_average
                );
            }
            if let Some(n) = &f.note {
                let _ = writeln!(md, "\n{}: {n}", f.target.key());
            }
        }
    }
    delivery_table(
        &mut md,
        &format!(
            "d. Latency: {}% price events to every client, the rest user events to their owner",
            rep.scale.latency_price_share * 100.0
        ),
        &r.latency,
    );
    if !r.memory.is_empty() {
        let _ = writeln!(md, "\n## e. Memory per idle connection (subscribed to prices)\n\n| system | connections | RSS before MiB | RSS after MiB | bytes per connection |\n|---|---|---|---|---|");
        for m in &r.memory {
            for l in &m.levels {
                let _ = writeln!(md, "| {} | {} | {:.1} | {:.1} | {:.0} ({:.2} KiB) |", m.target.key(), l.connections, m.rss_mib_before, l.rss_mib, l.bytes_per_connection, l.bytes_per_connection / 1024.0);
            }
            if let Some(n) = &m.note {
                let _ = writeln!(md, "\n{}: {n}", m.target.key());
            }
        }
        if r.memory.iter().any(|m| m.target == Kind::Centrifugo) {
            let _ = writeln!(md, "\ncentrifugo: RSS read {:.0} s after each level's connections opened, for Go's garbage collector to settle (the others: 3 s).", rep.scale.peer_memory_settle_secs);
        }
    }
    delivery_table(&mut md, "f. Private delivery: one connection per user, JWT (moonx-ws) / ?userId= (baseline) / JWT and user-limited channels `<channel>#<user>` (Centrifugo)", &r.private);
    if let Some(g) = &r.resume {
        let _ = writeln!(md, "\n## g. Resume storm: every client reconnects at once with `since` (moonx-ws)\n");
        let _ = writeln!(md, "| clients | events/s | gap s | until all live s | replayed | replayed/s | recovered | not recovered | failed | slow-consumer closes | Kafka passes | CPU % steady → storm | RSS MiB steady → storm |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} → {:.0} | {:.1} → {:.1} |",
            g.clients, g.rate, g.gap_secs, g.seconds_until_all_live, g.replayed_events, g.replayed_per_sec, g.recovered, g.not_recovered,
            g.failed_clients, g.slow_consumer_closes, g.kafka_reader_passes, g.steady_cpu_percent, g.storm_cpu_percent, g.steady_rss_mib, g.storm_rss_mib
        );
        if let Some(n) = &g.note {
            let _ = writeln!(md, "\n{n}");
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(md, "\n## Errors\n");
        for e in &r.errors {
            let _ = writeln!(md, "- {e}");
        }
    }
    let _ = writeln!(md, "\nCharts: hot_path.png, consume.png, fanout.png, latency.png (when the scenarios ran).");
    md
}

pub fn charts(dir: &Path, r: &Results) -> anyhow::Result<()> {
    if let Some(h) = &r.hot_path {
        let mut bars: Vec<(String, f64, usize)> = h
            .moonx
            .iter()
            .filter(|c| c.element == "event")
            .map(|c| (format!("moonx-ws {}", c.name.replace("/price_updated_387B", "")), c.elements_per_sec, 0))
            .collect();
        bars.extend(h.baseline.iter().map(|b| (format!("Node baseline ({})", b.frame_mode), b.events_per_sec, 1)));
        if !bars.is_empty() {
            chart::bars(&dir.join("hot_path.png"), "a. hot path, 387-byte price.updated, one core", "events/s", &bars)?;
        }
    }
    if let Some(c) = &r.consume {
        let mut bars = vec![("bare rdkafka consumer".to_string(), c.bare_consumer_events_per_sec, 2)];
        bars.extend(c.runs.iter().map(|run| {
            let colour = match run.target {
                Kind::Moonx => 0,
                Kind::Centrifugo => 6,
                _ => 1,
            };
            (run.target.name().to_string(), run.events_per_sec, colour)
        }));
        chart::bars(&dir.join("consume.png"), &format!("b. consume {} pre-loaded events, no clients", c.events), "events/s", &bars)?;
    }
    if !r.fanout.is_empty() {
        let mut series = Vec::new();
        for (i, f) in r.fanout.iter().enumerate() {
            let colour = match f.target {
                Kind::Moonx => 0,
                Kind::Baseline => 1,
                Kind::Centrifugo => 6,
                Kind::Floor => 2,
            };
            series.push((format!("{} delivered", f.target.name()), f.steps.iter().map(|s| (s.offered_frames_per_sec, s.delivered_frames_per_sec)).collect(), colour));
            if i == 0 {
                series.push(("offered".to_string(), f.steps.iter().map(|s| (s.offered_frames_per_sec, s.offered_frames_per_sec)).collect(), 5));
            }
        }
        chart::lines(&dir.join("fanout.png"), "c. fan-out: delivered vs offered frames/s", "offered frames/s", "delivered frames/s", &series, false, None)?;
    }
    let mut series = Vec::new();
    // x: 1 = p50, 2 = p90, 3 = p99, 4 = p99.9 (evenly spaced "nines").
    let pts = |p: &crate::stats::Percentiles| vec![(1.0, p.p50_ms), (2.0, p.p90_ms), (3.0, p.p99_ms), (4.0, p.p999_ms)];
    let names = |x: f64| -> String {
        let r = x.round();
        if (x - r).abs() > 0.05 {
            return String::new();
        }
        ["", "p50", "p90", "p99", "p99.9"].get(r as usize).copied().unwrap_or("").to_string()
    };
    for (scenario, runs) in [("d", &r.latency), ("f", &r.private)] {
        for d in runs.iter() {
            let c = match (scenario, d.target) {
                ("d", Kind::Moonx) => 0,
                ("d", Kind::Baseline) => 1,
                ("d", _) => 6,
                (_, Kind::Moonx) => 3,
                (_, Kind::Baseline) => 5,
                (_, _) => 7,
            };
            series.push((format!("{scenario} {}", d.target.name()), pts(&d.latency.latency_precise), c));
            if d.target == Kind::Moonx {
                series.push((format!("{scenario} Kafka floor (bare consumer)"), pts(&d.kafka_floor.latency_precise), if scenario == "d" { 2 } else { 4 }));
            }
        }
    }
    if !series.is_empty() {
        chart::lines(&dir.join("latency.png"), "d/f. end-to-end latency percentiles (µs production clock)", "percentile", "ms (log)", &series, true, Some(&names))?;
    }
    Ok(())
}

//! Frame counters and latency histograms (hdrhistogram), sharded so that
//! thousands of client tasks on a few threads rarely meet on one lock.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 64;
/// 1 µs to 120 s, 3 significant digits.
const HIGHEST_US: u64 = 120_000_000;

struct Shard {
    frames: u64,
    window_frames: u64,
    ts: Histogram<u64>,
    precise: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

pub struct LatencyRecorder {
    recording: AtomicBool,
    shards: Vec<Mutex<Shard>>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Every event frame received since the last reset.
    pub frames: u64,
    /// Event frames received while recording.
    pub window_frames: u64,
    /// From `metadata.timestamp` (whole ms; the receipt clock is µs).
    pub latency: Percentiles,
    /// From the µs production instant in `correlationId`.
    pub latency_precise: Percentiles,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        LatencyRecorder {
            recording: AtomicBool::new(false),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { frames: 0, window_frames: 0, ts: histogram(), precise: histogram() }))
                .collect(),
        }
    }

    pub fn record(&self, shard: usize, ts_us: Option<u64>, precise_us: Option<u64>) {
        let recording = self.recording.load(Ordering::Relaxed);
        let mut s = self.shards[shard % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        s.frames += 1;
        if recording {
            s.window_frames += 1;
            if let Some(v) = ts_us {
                s.ts.saturating_record(v.max(1));
            }
            if let Some(v) = precise_us {
                s.precise.saturating_record(v.max(1));
            }
        }
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.frames = 0;
            s.window_frames = 0;
            s.ts.reset();
            s.precise.reset();
        }
    }

    pub fn summary(&self) -> Summary {
        let mut ts = histogram();
        let mut precise = histogram();
        let (mut frames, mut window_frames) = (0, 0);
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            frames += s.frames;
            window_frames += s.window_frames;
            ts.add(&s.ts).expect("same bounds");
            precise.add(&s.precise).expect("same bounds");
        }
        Summary { frames, window_frames, latency: Percentiles::of(&ts), latency_precise: Percentiles::of(&precise) }
    }
}

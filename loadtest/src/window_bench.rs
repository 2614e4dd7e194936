//! The window stage's own work, without JetStream: events/s and per-event latency at growing
//! key counts with the payments pipeline's aggregates, resident memory and disk per key, and
//! checkpoint time.

use std::sync::Arc;
use std::time::Instant;

use anom_lang::value::Value;
use anom_operators::stage::window::WindowStage;
use anom_pipeline::envelope::{Analysis, Envelope, Meta, ENVELOPE_VERSION};
use anom_pipeline::Pipeline;
use anom_runtime::checkpoint::StateStore;
use anom_runtime::{Emitter, Input, Stage};
use hdrhistogram::Histogram;

#[derive(Debug)]
pub struct WindowRun {
    pub keys: usize,
    pub events: usize,
    pub seconds: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub resident_bytes_per_key: f64,
    pub checkpoint_keys: usize,
    pub checkpoint_seconds: f64,
    pub disk_bytes_per_key: f64,
}

impl WindowRun {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn payments() -> anyhow::Result<Arc<Pipeline>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/payments.yaml");
    Ok(Arc::new(
        Pipeline::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

fn envelope(p: &Pipeline, i: usize, keys: usize) -> Vec<u8> {
    let key = format!("card-{:07}", (i * 7919) % keys);
    let t = 1_795_132_800_000i64 + (i as i64) * 20;
    Envelope {
        v: ENVELOPE_VERSION,
        meta: Meta {
            pipeline: p.name.clone(),
            version: p.version.clone(),
            key: key.clone(),
            partition: 0,
            event_time: t,
            ingest_time_us: t * 1000,
            origin_seq: i as u64 + 1,
            origin_index: 0,
        },
        data: vec![
            Value::from(key.as_str()),
            Value::Float(5.0 + (i % 400) as f64),
            Value::from("EUR"),
            Value::from("Cafe Luna"),
            Value::from(if i.is_multiple_of(50) { "FR" } else { "DE" }),
            Value::Timestamp(t),
        ],
        analysis: Analysis::default(),
        enrichment: Vec::new(),
    }
    .encode()
}

/// Runs `events_per_key` events for each of `keys` keys through one window stage.
pub fn run(keys: usize, events_per_key: usize) -> anyhow::Result<WindowRun> {
    let p = payments()?;
    let dir = tempfile::tempdir()?;
    let db = anom_runtime::checkpoint::open_db(dir.path())?;
    let store = StateStore::open(&db, "bench-window-0")?;
    let events = keys * events_per_key;
    let payloads: Vec<Vec<u8>> = (0..events).map(|i| envelope(&p, i, keys)).collect();
    let before = resident_bytes();
    let (mut stage, _) =
        WindowStage::restore(p.clone(), 0, &store, Default::default(), Default::default())?;
    let mut out = Emitter::new("window", "bench-window-0");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let started = Instant::now();
    for (i, payload) in payloads.iter().enumerate() {
        let input = Input {
            subject: "anom.payments.valid.0",
            payload,
            headers: None,
            stream_seq: i as u64 + 1,
            published_us: 0,
        };
        let t0 = Instant::now();
        stage
            .process(&input, &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        hist.record(t0.elapsed().as_nanos().max(1) as u64)?;
        out.clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(payloads);
    let resident = resident_bytes().saturating_sub(before) as f64 / keys as f64;
    // Every key is dirty: checkpoint them all (serialise, write, flush).
    let checkpoint_started = Instant::now();
    let delta = stage
        .checkpoint()
        .ok_or_else(|| anyhow::anyhow!("the window stage keeps state"))?;
    let checkpoint_keys = delta.puts.len().saturating_sub(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(store.commit(delta, events as u64))?;
    let checkpoint_seconds = checkpoint_started.elapsed().as_secs_f64();
    db.flush()?;
    let disk = db.size_on_disk()? as f64 / keys as f64;
    Ok(WindowRun {
        keys,
        events,
        seconds,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        resident_bytes_per_key: resident,
        checkpoint_keys,
        checkpoint_seconds,
        disk_bytes_per_key: disk,
    })
}

pub fn markdown(runs: &[WindowRun], baseline: Option<f64>) -> String {
    let mut out = String::from(
        "| keys | events | events/s (one core) | vs raw hop | p50 | p99 | p99.9 | resident/key | checkpoint (keys, s) | disk/key |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let ratio = baseline.map_or("n/a".into(), |b| format!("{:.1}×", r.rate() / b));
        out.push_str(&format!(
            "| {} | {} | {:.0} | {ratio} | {:.2} µs | {:.2} µs | {:.2} µs | {:.0} B | {} keys in {:.3} s | {:.0} B |\n",
            r.keys,
            r.events,
            r.rate(),
            r.p50_ns as f64 / 1000.0,
            r.p99_ns as f64 / 1000.0,
            r.p999_ns as f64 / 1000.0,
            r.resident_bytes_per_key,
            r.checkpoint_keys,
            r.checkpoint_seconds,
            r.disk_bytes_per_key,
        ));
    }
    out
}

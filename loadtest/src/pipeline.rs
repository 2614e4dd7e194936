//! The pipeline runs: throughput (as fast as events are published) and latency (fixed rate).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anom_operators::worker::{Worker, WorkerConfig};
use anom_pipeline::Pipeline;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::Args;

/// The benchmark pipeline: the routes example's shape, plus the send time for latency.
pub(crate) fn definition(
    partitions: u32,
    keyed: bool,
    detectors: bool,
    udf: Option<&std::path::Path>,
    fused: bool,
) -> String {
    // Generated file names are `file-<n>.csv`: route_id gives FILE, never panics.
    let udf = match udf {
        Some(library) => format!(
            "udfs:\n  - {{ name: route_id, library: {}, args: [string], returns: string }}\nderive:\n  file_route: route_id(fileName)\n",
            library.display()
        ),
        None => String::new(),
    };
    let detectors = if detectors {
        "detectors:
  - { name: duration_z, kind: robust_zscore, field: durationMs }
  - { name: bytes_ewma, kind: ewma, field: bytes }
  - { name: duration_shift, kind: cusum, field: durationMs }
  - { name: forest, kind: onnx, model: bench-forest.onnx, features: [durationMs, bytes], threshold: 0.7 }
decision: { alert_on: rules }
"
    } else {
        ""
    };
    let aggregates = if keyed {
        "aggregates:\n  runs_5m: count() over 5m\n  bytes_today: sum(bytes) over calendar day\n  avg_ms_30d: avg(durationMs) over 30d\n  prev_status: prev(status)\n"
    } else {
        ""
    };
    format!(
        r#"
name: bench
key: route
event_time: finishedAt
partitions: {partitions}
units:
  fused: {fused}
schema:
  route:      {{ type: string, required: true }}
  status:     {{ type: enum, values: [OK, FAILED, TIMEOUT], required: true }}
  durationMs: {{ type: int, min: 0, required: true }}
  fileName:   string
  bytes:      int
  sentUs:     int
  finishedAt: {{ type: timestamp, required: true }}
{udf}{aggregates}{detectors}rules:
  - name: failed
    when: status == 'FAILED'
    severity: critical
    message: "Route {{route}} failed on {{fileName}}"
  - name: slow
    when: durationMs > 5000 and status == 'OK'
"#
    )
}

/// Whether event `i` carries an injected anomaly: one in `alert_every` of each route's own
/// events fails, so every one starts a new occurrence of the route's alert (its route's next
/// event is fine and resolves it) and must raise exactly one firing alert record.
pub fn injected(i: usize, alert_every: usize, keys: usize) -> bool {
    let keys = keys.max(1);
    (i / keys + i % keys).is_multiple_of(alert_every.max(1))
}

/// Alert records `events` events publish: a firing per injected anomaly, and a resolution
/// per injected anomaly whose route has a later event.
pub fn expected_records(events: usize, alert_every: usize, keys: usize) -> u64 {
    (0..events)
        .filter(|i| injected(*i, alert_every, keys))
        .map(|i| if i + keys.max(1) < events { 2 } else { 1 })
        .sum()
}

/// Event `i` of `keys` distinct routes (route `i % keys`); the injected anomalies fail.
pub fn sample_event(i: usize, sent_us: i64, alert_every: usize, keys: usize) -> Bytes {
    let status = if injected(i, alert_every, keys) {
        "FAILED"
    } else {
        "OK"
    };
    Bytes::from(format!(
        r#"{{"route":"ROUTE-{:07}","status":"{status}","durationMs":{},"fileName":"file-{i:08}.csv","bytes":{},"sentUs":{sent_us},"finishedAt":"2026-11-20T10:00:00Z"}}"#,
        i % keys.max(1),
        100 + i % 4000,
        1000 + i % 100_000
    ))
}

/// A 100-tree Isolation Forest over (durationMs, bytes) of the generated events.
fn write_forest(path: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    use anom_ml::forest::{ForestParams, IsolationForest};
    let rows: Vec<f32> = (0..20_000)
        .flat_map(|i| {
            let e: serde_json::Value =
                serde_json::from_slice(&sample_event(i, 0, args.alert_every, args.keys))
                    .unwrap_or_default();
            [
                e["durationMs"].as_f64().unwrap_or(0.0) as f32,
                e["bytes"].as_f64().unwrap_or(0.0) as f32,
            ]
        })
        .collect();
    let forest = IsolationForest::fit(&rows, 2, &ForestParams::default())?;
    std::fs::write(
        path,
        forest.to_onnx(&["durationMs".into(), "bytes".into()], "anom-loadtest")?,
    )?;
    Ok(())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn start(
    url: &str,
    args: &Args,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let yaml = definition(
        args.partitions,
        args.keyed,
        args.detectors,
        args.udf.as_deref(),
        !args.per_stage,
    );
    start_with(url, args, &yaml).await
}

/// A worker running the benchmark pipeline as `yaml` defines it.
pub(crate) async fn start_with(
    url: &str,
    args: &Args,
    yaml: &str,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let pipeline = Pipeline::from_yaml(yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let state = tempfile::tempdir()?;
    if args.detectors {
        write_forest(&state.path().join("bench-forest.onnx"), args)?;
    }
    let mut config = WorkerConfig::new(url, vec![pipeline]);
    config.state_dir = state.path().to_path_buf();
    config.models_dir = state.path().to_path_buf();
    let worker = Worker::start(config, shutdown.clone()).await?;
    Ok((
        shutdown,
        tokio::spawn(async move {
            worker.run_until_shutdown().await;
            drop(state);
        }),
    ))
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub events: usize,
    pub alerts: u64,
    pub seconds: f64,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Publishes `args.events` as fast as the server acks them, and times until the last one
/// has gone through every stage (all consumers drained, every alert stored).
pub async fn throughput(url: &str, args: &Args) -> anyhow::Result<Throughput> {
    let (shutdown, worker) = start(url, args).await?;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let expected_alerts = expected_records(args.events, args.alert_every, args.keys);
    let events: Vec<Bytes> = (0..args.events)
        .map(|i| sample_event(i, 0, args.alert_every, args.keys))
        .collect();
    let started = Instant::now();
    publish_acked(&js, "anom.bench.in", events).await?;
    let mut alerts = js.get_stream("ANOM_BENCH_ALERTS").await?;
    loop {
        let stored = alerts.info().await?.state.messages;
        if stored >= expected_alerts
            && drained(
                &js,
                args.partitions,
                args.keyed,
                args.detectors,
                !args.per_stage,
            )
            .await?
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = alerts.info().await?.state.messages;
    shutdown.cancel();
    worker.await?;
    Ok(Throughput {
        events: args.events,
        alerts: stored,
        seconds,
    })
}

/// Publishes every payload to `subject` as fast as the server acks them, and returns once
/// each is stored: as `anom publish` does.
pub(crate) async fn publish_acked(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payloads: impl IntoIterator<Item = Bytes>,
) -> anyhow::Result<()> {
    let mut acks = std::collections::VecDeque::new();
    for payload in payloads {
        acks.push_back(js.publish(subject.to_string(), payload).await?);
        // Below the client's 5,000 acks in flight, or publish waits on acks never awaited.
        if acks.len() >= 4_000 {
            if let Some(a) = acks.pop_front() {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

/// Every consumer of the pipeline has nothing pending and nothing unacked.
pub(crate) async fn drained(
    js: &async_nats::jetstream::Context,
    partitions: u32,
    keyed: bool,
    detectors: bool,
    fused: bool,
) -> anyhow::Result<bool> {
    let mut consumers = vec![("ANOM_INGEST".to_string(), "bench-validate".to_string())];
    for k in 0..partitions {
        if fused {
            consumers.push(("ANOM_BENCH_VALID".into(), format!("bench-keyed-{k}")));
            continue;
        }
        // Each stage reads the output of the last one before it that runs.
        let mut upstream = "ANOM_BENCH_VALID";
        if keyed {
            consumers.push((upstream.into(), format!("bench-window-{k}")));
            upstream = "ANOM_BENCH_ENRICHED";
        }
        if detectors {
            consumers.push((upstream.into(), format!("bench-score-{k}")));
            upstream = "ANOM_BENCH_SCORED";
        }
        consumers.push((upstream.into(), format!("bench-rules-{k}")));
        consumers.push(("ANOM_BENCH_DETECTIONS".into(), format!("bench-alert-{k}")));
    }
    for (stream, name) in consumers {
        let mut c: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(&stream)
            .await?
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = c.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[derive(Debug)]
pub struct Latency {
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub samples: u64,
    pub expected_samples: u64,
    pub histogram: Histogram<u64>,
    /// Alerts for events that carried an injected anomaly, alerts for others, and injected
    /// anomalies that raised none.
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    /// CPU cores used on average and resident memory at the end: this process (generator and
    /// worker) and nats-server.
    pub cpu_self: f64,
    pub cpu_server: f64,
    pub rss_self_mib: f64,
    pub rss_server_mib: f64,
}

impl Latency {
    pub fn precision(&self) -> f64 {
        self.true_positives as f64 / (self.true_positives + self.false_positives).max(1) as f64
    }
    pub fn recall(&self) -> f64 {
        self.true_positives as f64 / (self.true_positives + self.false_negatives).max(1) as f64
    }
    /// Held the rate: kept pace, every alert arrived, p99 under 50 ms.
    pub fn sustained(&self) -> bool {
        self.achieved_rate >= self.target_rate as f64 * 0.97
            && self.samples >= self.expected_samples
            && self.histogram.value_at_quantile(0.99) <= 50_000
    }
}

/// CPU seconds used so far and resident memory (MiB) of a process, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start at ") ".
            let rest = s
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0);
    (cpu, rss)
}

/// Publishes at a fixed rate and measures publish → alert received, per alert.
pub async fn latency(url: &str, args: &Args) -> anyhow::Result<Latency> {
    latency_at(url, args, args.latency_rate, args.latency_duration, None).await
}

/// Like `latency`, at `rate` for `duration`; `server_pid` adds nats-server's CPU and memory.
pub async fn latency_at(
    url: &str,
    args: &Args,
    rate: u64,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<Latency> {
    let (shutdown, worker) = start(url, args).await?;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut alerts = client.subscribe("anom.bench.alerts").await?;
    client.flush().await?;
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let alerted = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<u64>::new(),
    ));
    let receiver = {
        let (histogram, alerted) = (histogram.clone(), alerted.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(msg) = alerts.next().await {
                let now = now_us();
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                // Resolutions carry the event that ended the alert: not a detection.
                if v["status"] != "firing" {
                    continue;
                }
                if let Some(sent) = v["event"]["sentUs"].as_i64() {
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record((now - sent).max(1) as u64);
                    }
                    n += 1;
                }
                // The event's index is in its file name: `file-<i>.csv`.
                let index = v["event"]["fileName"].as_str().and_then(|f| {
                    f.strip_prefix("file-")?
                        .strip_suffix(".csv")?
                        .parse::<u64>()
                        .ok()
                });
                if let (Some(i), Ok(mut a)) = (index, alerted.lock()) {
                    a.insert(i);
                }
            }
            n
        })
    };
    let server_before = server_pid.map(process_usage);
    let self_before = process_usage(std::process::id());
    let measured_from = Instant::now();
    // Acks are awaited off the publishing loop so pacing is not held up by them.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel(100_000);
    let acker = tokio::spawn(async move {
        while let Some(ack) = ack_rx.recv().await {
            let ack: async_nats::jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        anyhow::Ok(())
    });
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        while sent < due {
            let ack = js
                .publish(
                    "anom.bench.in",
                    sample_event(sent, now_us(), args.alert_every, args.keys),
                )
                .await?;
            ack_tx.send(ack).await?;
            sent += 1;
        }
    }
    let achieved_rate = sent as f64 / started.elapsed().as_secs_f64();
    drop(ack_tx);
    acker.await??;
    let expected_samples = (0..total)
        .filter(|i| injected(*i, args.alert_every, args.keys))
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while histogram.lock().map(|h| h.len()).unwrap_or(0) < expected_samples
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = measured_from.elapsed().as_secs_f64();
    let (self_cpu, rss_self_mib) = process_usage(std::process::id());
    let (cpu_server, rss_server_mib) = match (server_pid, server_before) {
        (Some(pid), Some((before, _))) => {
            let (cpu, rss) = process_usage(pid);
            ((cpu - before) / wall, rss)
        }
        _ => (0.0, 0.0),
    };
    shutdown.cancel();
    worker.await?;
    receiver.abort();
    let histogram = histogram
        .lock()
        .map(|h| h.clone())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let alerted = alerted
        .lock()
        .map(|a| a.clone())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let true_positives = alerted
        .iter()
        .filter(|i| injected(**i as usize, args.alert_every, args.keys))
        .count() as u64;
    Ok(Latency {
        target_rate: rate,
        achieved_rate,
        samples: histogram.len(),
        expected_samples,
        histogram,
        true_positives,
        false_positives: alerted.len() as u64 - true_positives,
        false_negatives: expected_samples.saturating_sub(true_positives),
        cpu_self: (self_cpu - self_before.0) / wall,
        cpu_server,
        rss_self_mib,
        rss_server_mib,
    })
}

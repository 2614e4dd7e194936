//! The pipeline runs: throughput (as fast as events are published) and latency (fixed rate).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anom_operators::pipeline::Pipeline;
use anom_operators::worker::{Worker, WorkerConfig};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::Args;

/// The benchmark pipeline: the routes example's shape, plus the send time for latency.
fn definition(partitions: u32, keyed: bool) -> String {
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
schema:
  route:      {{ type: string, required: true }}
  status:     {{ type: enum, values: [OK, FAILED, TIMEOUT], required: true }}
  durationMs: {{ type: int, min: 0, required: true }}
  fileName:   string
  bytes:      int
  sentUs:     int
  finishedAt: {{ type: timestamp, required: true }}
{aggregates}rules:
  - name: failed
    when: status == 'FAILED'
    severity: critical
    message: "Route {{route}} failed on {{fileName}}"
  - name: slow
    when: durationMs > 5000 and status == 'OK'
"#
    )
}

/// Event `i`; one in `alert_every` fails (and so raises one alert).
pub fn sample_event(i: usize, sent_us: i64, alert_every: usize) -> Bytes {
    let status = if i.is_multiple_of(alert_every.max(1)) {
        "FAILED"
    } else {
        "OK"
    };
    Bytes::from(format!(
        r#"{{"route":"ROUTE-{:04}","status":"{status}","durationMs":{},"fileName":"file-{i:08}.csv","bytes":{},"sentUs":{sent_us},"finishedAt":"2026-11-20T10:00:00Z"}}"#,
        i % 1000,
        100 + i % 4000,
        1000 + i % 100_000
    ))
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
    let pipeline = Pipeline::from_yaml(&definition(args.partitions, args.keyed))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let state = tempfile::tempdir()?;
    let mut config = WorkerConfig::new(url, vec![pipeline]);
    config.state_dir = state.path().to_path_buf();
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
    let expected_alerts = (0..args.events)
        .filter(|i| i.is_multiple_of(args.alert_every.max(1)))
        .count() as u64;
    let events: Vec<Bytes> = (0..args.events)
        .map(|i| sample_event(i, 0, args.alert_every))
        .collect();
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for e in events {
        acks.push_back(js.publish("anom.bench.in", e).await?);
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
    let mut alerts = js.get_stream("ANOM_BENCH_ALERTS").await?;
    loop {
        let stored = alerts.info().await?.state.messages;
        if stored >= expected_alerts && drained(&js, args.partitions, args.keyed).await? {
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

/// Every consumer of the pipeline has nothing pending and nothing unacked.
async fn drained(
    js: &async_nats::jetstream::Context,
    partitions: u32,
    keyed: bool,
) -> anyhow::Result<bool> {
    let mut consumers = vec![("ANOM_INGEST".to_string(), "bench-validate".to_string())];
    for k in 0..partitions {
        if keyed {
            consumers.push(("ANOM_BENCH_VALID".into(), format!("bench-window-{k}")));
            consumers.push(("ANOM_BENCH_ENRICHED".into(), format!("bench-rules-{k}")));
        } else {
            consumers.push(("ANOM_BENCH_VALID".into(), format!("bench-rules-{k}")));
        }
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
}

/// Publishes at a fixed rate and measures publish → alert received, per alert.
pub async fn latency(url: &str, args: &Args) -> anyhow::Result<Latency> {
    let (shutdown, worker) = start(url, args).await?;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut alerts = client.subscribe("anom.bench.alerts").await?;
    client.flush().await?;
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let receiver = {
        let histogram = histogram.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(msg) = alerts.next().await {
                let now = now_us();
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                if let Some(sent) = v["event"]["sentUs"].as_i64() {
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record((now - sent).max(1) as u64);
                    }
                    n += 1;
                }
            }
            n
        })
    };
    // Acks are awaited off the publishing loop so pacing is not held up by them.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel(100_000);
    let acker = tokio::spawn(async move {
        while let Some(ack) = ack_rx.recv().await {
            let ack: async_nats::jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        anyhow::Ok(())
    });
    let total = (args.latency_rate as f64 * args.latency_duration.as_secs_f64()) as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    while sent < total {
        tick.tick().await;
        let due =
            ((started.elapsed().as_secs_f64() * args.latency_rate as f64) as usize).min(total);
        while sent < due {
            let ack = js
                .publish(
                    "anom.bench.in",
                    sample_event(sent, now_us(), args.alert_every),
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
        .filter(|i| i.is_multiple_of(args.alert_every.max(1)))
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while histogram.lock().map(|h| h.len()).unwrap_or(0) < expected_samples
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    worker.await?;
    receiver.abort();
    let histogram = histogram
        .lock()
        .map(|h| h.clone())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(Latency {
        target_rate: args.latency_rate,
        achieved_rate,
        samples: histogram.len(),
        expected_samples,
        histogram,
    })
}

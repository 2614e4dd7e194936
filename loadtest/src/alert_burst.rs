//! `anom-loadtest alert-burst`: a burst of detections for many keys into the alert stage, and
//! how long the alert lifecycle takes to absorb it: every detection folded into its alert
//! (one firing alert per rule and key, counts adding up) and the notifications sent — against
//! a raw JetStream publish of as many messages of the same size, measured in the same run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anom_lang::value::Value;
use anom_operators::alerting::record::Alert;
use anom_operators::alerting::store::{self, Buckets, ALERTS_BUCKET};
use anom_operators::stage::validate::partition_of;
use anom_operators::worker::{Worker, WorkerConfig};
use anom_pipeline::envelope::{Analysis, Envelope, Meta, RuleHit, Verdict, ENVELOPE_VERSION};
use anom_pipeline::{Pipeline, Severity};
use async_nats::jetstream;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

fn definition(partitions: u32, hook: &str) -> String {
    format!(
        r#"
name: burst
key: host
partitions: {partitions}
# The burst goes straight into the alert stage's own input.
units:
  fused: false
schema:
  host: {{ type: string, required: true }}
  cpu:  float
rules:
  - name: cpu_high
    when: cpu > 90
    message: "{{host}} at {{cpu}}% cpu"
alerts:
  route:
    group_wait: 1s
    group_interval: 1s
  sinks:
    - type: webhook
      name: hook
      url: {hook}
"#
    )
}

/// What a run measured.
pub struct Burst {
    pub detections: usize,
    pub keys: usize,
    /// Raw JetStream publish of as many messages of the same size (msg/s).
    pub raw_rate: f64,
    /// From the first detection published until every one is folded into its alert.
    pub absorbed: Duration,
    /// From the first detection published until a notification listed every alert.
    pub notified: Duration,
    pub firing_alerts: usize,
    pub alert_records: u64,
    pub notifications: usize,
}

/// A webhook receiver: counts notifications and remembers the most alerts one listed.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicUsize>, Arc<AtomicUsize>)> {
    use axum::{routing::post, Router};
    let (count, widest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, w) = (count.clone(), widest.clone());
    let app = Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let (c, w) = (c.clone(), w.clone());
            async move {
                let n: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let alerts = n["alerts"].as_array().map_or(0, Vec::len);
                c.fetch_add(1, Ordering::SeqCst);
                w.fetch_max(alerts, Ordering::SeqCst);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, count, widest))
}

fn detection(p: &Pipeline, i: usize, keys: usize) -> (String, Bytes) {
    let key = format!("host-{:05}", i % keys);
    let partition = partition_of(&key, p.partitions);
    let cpu = 91.0 + (i % 9) as f64;
    let env = Envelope {
        v: ENVELOPE_VERSION,
        meta: Meta {
            pipeline: p.name.clone(),
            version: p.version.clone(),
            key: key.clone(),
            partition,
            event_time: 1_795_132_800_000 + i as i64,
            ingest_time_us: 1_795_132_800_000_000 + i as i64,
            origin_seq: i as u64 + 1,
            origin_index: 0,
        },
        data: vec![Value::Str(key.as_str().into()), Value::Float(cpu)],
        analysis: Analysis {
            hits: vec![RuleHit {
                rule: 0,
                name: "cpu_high".into(),
            }],
            verdict: Some(Verdict {
                severity: Severity::Warning,
                explanation: "rule cpu_high (`cpu > 90`)".into(),
            }),
            ..Analysis::default()
        },
        enrichment: Vec::new(),
    };
    (p.subjects.detections(partition), Bytes::from(env.encode()))
}

async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<(String, Bytes)>,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(4096);
    for (i, (subject, payload)) in messages.into_iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("burst-{i}").as_str(),
        );
        acks.push(js.publish_with_headers(subject, h, payload).await?);
        if acks.len() == 4096 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

pub async fn run(
    url: &str,
    detections: usize,
    keys: usize,
    partitions: u32,
) -> anyhow::Result<Burst> {
    let (hook, notifications, widest) = receiver().await?;
    let pipeline =
        Pipeline::from_yaml(&definition(partitions, &hook)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let messages: Vec<(String, Bytes)> = (0..detections)
        .map(|i| detection(&pipeline, i, keys))
        .collect();
    let size = messages.iter().map(|(_, b)| b.len()).sum::<usize>() / detections.max(1);

    // The raw baseline: the same number of messages of the same size into a plain stream.
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "RAW_BURST".into(),
        subjects: vec!["raw.burst".into()],
        ..Default::default()
    })
    .await?;
    let raw: Vec<(String, Bytes)> = (0..detections)
        .map(|_| ("raw.burst".to_string(), Bytes::from(vec![b'x'; size])))
        .collect();
    let started = Instant::now();
    publish_all(&js, raw).await?;
    let raw_rate = detections as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("RAW_BURST").await?;

    let state = tempfile::tempdir()?;
    let mut config = WorkerConfig::new(url, vec![pipeline.clone()]);
    config.state_dir = state.path().to_path_buf();
    let shutdown = CancellationToken::new();
    let worker = Worker::start(config, shutdown.clone()).await?;
    let task = tokio::spawn(worker.run_until_shutdown());
    let buckets = Buckets::open(&js, 1).await?;

    let started = Instant::now();
    let publisher = tokio::spawn({
        let js = js.clone();
        async move { publish_all(&js, messages).await }
    });
    let deadline = started + Duration::from_secs(120);
    let (mut absorbed, mut notified) = (None, None);
    let mut firing = 0;
    while (absorbed.is_none() || notified.is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if absorbed.is_none() {
            let all: Vec<Alert> = store::load_all(&buckets.alerts, ALERTS_BUCKET, "burst").await?;
            if all.iter().map(|a| a.count).sum::<u64>() == detections as u64 {
                absorbed = Some(started.elapsed());
                firing = all.len();
            }
        }
        if notified.is_none() && widest.load(Ordering::SeqCst) >= keys.min(detections) {
            notified = Some(started.elapsed());
        }
    }
    publisher.await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alert_records = js
        .get_stream("ANOM_BURST_ALERTS")
        .await?
        .info()
        .await?
        .state
        .messages;
    shutdown.cancel();
    task.await?;
    Ok(Burst {
        detections,
        keys,
        raw_rate,
        absorbed: absorbed
            .ok_or_else(|| anyhow::anyhow!("the burst was not absorbed within 120 s"))?,
        notified: notified
            .ok_or_else(|| anyhow::anyhow!("no notification listed every alert within 120 s"))?,
        firing_alerts: firing,
        alert_records,
        notifications: notifications.load(Ordering::SeqCst),
    })
}

impl Burst {
    pub fn markdown(&self) -> String {
        let rate = self.detections as f64 / self.absorbed.as_secs_f64();
        format!(
            "| measure | value |\n|---|---|\n\
             | detections, keys | {} for {} keys |\n\
             | raw JetStream publish of as many messages (same size, same run) | {:.0} msg/s ({:.2} s) |\n\
             | absorbed: every detection folded into its alert | {:.2} s ({rate:.0} detections/s, {:.2}× the raw publish rate) |\n\
             | a notification lists every alert | {:.2} s |\n\
             | firing alerts (one per rule and key) | {} |\n\
             | alert records published (changes of status) | {} |\n\
             | notifications sent | {} |\n",
            self.detections,
            self.keys,
            self.raw_rate,
            self.detections as f64 / self.raw_rate,
            self.absorbed.as_secs_f64(),
            rate / self.raw_rate,
            self.notified.as_secs_f64(),
            self.firing_alerts,
            self.alert_records,
            self.notifications,
        )
    }
}

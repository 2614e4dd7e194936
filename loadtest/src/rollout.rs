//! Rollouts under a backlog: a real coordinator and a worker (in-process), the keyed
//! benchmark pipeline, and four new versions each applied 0.2 s after a burst of N events
//! began — a threshold change, an added field, a new aggregate, a removed field. Every event
//! must be processed (the fused units' consumers drain) and none dead-lettered; the drain
//! rate is reported against a raw hop measured in the same run.

use std::time::{Duration, Instant};

use anom::agent::AgentConfig;
use anom::server::{Coordinator, CoordinatorConfig};
use anom_operators::worker::WorkerConfig;
use anom_proto::v1;
use anom_runtime::streams::StreamOptions;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{definition, publish_acked, sample_event};
use crate::Args;

pub struct Step {
    pub change: &'static str,
    pub dead_letters: u64,
    /// From the burst's first event to every unit of the pipeline at rest on the new version.
    pub seconds: f64,
}

pub struct Rollout {
    pub events: usize,
    pub baseline: f64,
    pub steps: Vec<Step>,
}

impl Rollout {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Each version applied 0.2 s after a burst of {} events began (keyed pipeline, fused units); raw JetStream hop in the same run: {:.0} msg/s\n\n\
             | change | dead letters | burst drained in | events/s | vs raw hop |\n|---|---|---|---|---|\n",
            self.events, self.baseline
        );
        for s in &self.steps {
            let rate = self.events as f64 / s.seconds;
            out.push_str(&format!(
                "| {} | {} | {:.2} s | {:.0} | {:.2} |\n",
                s.change,
                s.dead_letters,
                s.seconds,
                rate,
                rate / self.baseline
            ));
        }
        out
    }

    /// Whether the promise held: nothing dead-lettered.
    pub fn lost_nothing(&self) -> bool {
        self.steps.iter().all(|s| s.dead_letters == 0)
    }
}

/// The versions, in order: each one's change from the one before.
fn versions(partitions: u32) -> Vec<(&'static str, String)> {
    let v1 = definition(partitions, true, false, None, true);
    let threshold = v1.replace("durationMs > 5000", "durationMs > 6000");
    let added = threshold.replace(
        "  bytes:      int\n",
        "  bytes:      int\n  channel:    { type: string, default: sftp }\n",
    );
    let aggregate = added.replace(
        "  prev_status: prev(status)\n",
        "  prev_status: prev(status)\n  max_bytes_1h: max(bytes) over 1h\n",
    );
    let removed = aggregate.replace("  sentUs:     int\n", "");
    vec![
        ("first version", v1),
        ("threshold changed", threshold),
        ("field added", added),
        ("aggregate added", aggregate),
        ("field removed", removed),
    ]
}

pub async fn run(url: &str, args: &Args) -> anyhow::Result<Rollout> {
    let events = args.events;
    let size = sample_event(0, 0, 1, args.keys).len();
    eprintln!("baseline: raw JetStream hop, {events} messages of {size} B ...");
    let baseline = crate::baseline::hop(url, events, size).await?.rate();

    let state = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            listen: "127.0.0.1:0".parse()?,
            nats_url: url.to_string(),
            state_dir: state.path().join("coordinator"),
            metrics_addr: None,
            lease_ttl: Duration::from_secs(6),
            streams: StreamOptions::default(),
            models_dir: None,
            max_backtests: 1,
            http: None,
        },
        shutdown.clone(),
    )
    .await?;
    let grpc = format!("http://{}", coordinator.addr);
    let mut api = v1::pipelines_client::PipelinesClient::connect(grpc.clone()).await?;
    let cluster = v1::cluster_client::ClusterClient::connect(grpc.clone()).await?;
    let versions = versions(args.partitions);
    let apply = |yaml: &str| v1::ApplyRequest {
        definition: Some(v1::Definition {
            source: Some(v1::definition::Source::Yaml(yaml.to_string())),
            source_name: "bench.yaml".into(),
        }),
        ..Default::default()
    };
    api.apply(apply(&versions[0].1)).await?;
    let mut config = WorkerConfig::new(url.to_string(), Vec::new());
    config.state_dir = state.path().join("worker");
    config.worker_id = "bench".into();
    let worker = tokio::spawn(anom::agent::run(
        AgentConfig {
            coordinator: grpc.clone(),
            worker: config,
            roles: Vec::new(),
            capacity: 1,
        },
        shutdown.clone(),
    ));

    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    // Every unit of the pipeline runs `version` and its consumers have nothing pending.
    let at_rest = |version: u32| {
        let (js, mut cluster) = (js.clone(), cluster.clone());
        async move {
            let a = cluster
                .list_assignments(v1::ListAssignmentsRequest {
                    pipeline: "bench".into(),
                })
                .await?
                .into_inner();
            let running = !a.units.is_empty()
                && a.unassigned.is_empty()
                && a.units
                    .iter()
                    .all(|u| u.version == version && u.running_version == version);
            Ok::<bool, anyhow::Error>(running && drained(&js).await?)
        }
    };
    let wait = |version: u32, limit: Duration| {
        let at_rest = &at_rest;
        async move {
            let started = Instant::now();
            while started.elapsed() < limit {
                if at_rest(version).await.unwrap_or(false) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    anyhow::ensure!(
        wait(1, Duration::from_secs(60)).await,
        "the pipeline's units did not start"
    );
    let mut steps = Vec::new();
    let mut offset = 0;
    for (n, (change, yaml)) in versions.iter().enumerate().skip(1) {
        let version = n as u32 + 1;
        let dead_before = dead_letters(&js).await;
        eprintln!("rollout: {events} events, then version {version} ({change}) ...");
        let started = Instant::now();
        let burst = {
            let js = js.clone();
            let (alert_every, keys) = (args.alert_every, args.keys);
            tokio::spawn(async move {
                publish_acked(
                    &js,
                    "anom.bench.in",
                    (offset..offset + events).map(|i| sample_event(i, 0, alert_every, keys)),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.apply(apply(yaml)).await?;
        burst.await??;
        anyhow::ensure!(
            wait(version, Duration::from_secs(300)).await,
            "version {version} did not drain the burst"
        );
        let seconds = started.elapsed().as_secs_f64();
        let dead_letters = dead_letters(&js).await - dead_before;
        steps.push(Step {
            change,
            dead_letters,
            seconds,
        });
        offset += events;
    }
    shutdown.cancel();
    let _ = worker.await;
    coordinator.wait().await?;
    Ok(Rollout {
        events,
        baseline,
        steps,
    })
}

/// The pipeline's validate and fused consumers (whatever epoch names them) have nothing
/// pending and nothing unacked.
async fn drained(js: &async_nats::jetstream::Context) -> anyhow::Result<bool> {
    use futures::StreamExt;
    let mut seen = 0;
    for (stream, prefix) in [
        ("ANOM_INGEST", "bench-validate"),
        ("ANOM_BENCH_VALID", "bench-keyed-"),
    ] {
        let stream = js.get_stream(stream).await?;
        let mut names = stream.consumer_names();
        while let Some(name) = names.next().await {
            let name = name?;
            if !name.starts_with(prefix) {
                continue;
            }
            let info = stream.consumer_info(&name).await?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return Ok(false);
            }
            seen += 1;
        }
    }
    Ok(seen > 0)
}

/// Dead letters stored so far (the bench pipeline is the only one in this run).
async fn dead_letters(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("ANOM_DLQ").await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

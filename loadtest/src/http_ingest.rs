//! HTTP ingest against publishing over NATS, in the same run: N events of the benchmark shape
//! stored in the ingest stream, once published with JetStream acks as `anom publish` does,
//! once POSTed as NDJSON batches to a real coordinator's HTTP API (each answer comes after
//! JetStream stored its batch). Both against a raw hop measured in the same run.

use std::time::{Duration, Instant};

use anom::http::HttpConfig;
use anom::server::{Coordinator, CoordinatorConfig};
use anom_proto::v1;
use anom_runtime::streams::StreamOptions;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{definition, publish_acked, sample_event};
use crate::Args;

pub struct HttpIngest {
    pub events: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub baseline: f64,
    pub nats: f64,
    pub http: f64,
}

impl HttpIngest {
    pub fn markdown(&self) -> String {
        format!(
            "{} events of the benchmark shape stored in the ingest stream\n\n\
             | path | events/s | vs publish over NATS | vs raw hop |\n|---|---|---|---|\n\
             | raw JetStream hop (same run) | {:.0} | | 1.00 |\n\
             | publish over NATS (JetStream acks, 4,000 in flight, as `anom publish`) | {:.0} | 1.00 | {:.2} |\n\
             | HTTP ingest, NDJSON batches of {} lines, {} requests at a time | {:.0} | {:.2} | {:.2} |\n",
            self.events,
            self.baseline,
            self.nats,
            self.nats / self.baseline,
            self.batch,
            self.concurrency,
            self.http,
            self.http / self.nats,
            self.http / self.baseline,
        )
    }
}

pub async fn run(
    url: &str,
    args: &Args,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<HttpIngest> {
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
            http: Some(HttpConfig {
                listen: "127.0.0.1:0".parse()?,
                max_body_bytes: HttpConfig::DEFAULT_MAX_BODY_BYTES,
            }),
        },
        shutdown.clone(),
    )
    .await?;
    let http = coordinator
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("the coordinator serves no HTTP"))?;
    let mut api =
        v1::pipelines_client::PipelinesClient::connect(format!("http://{}", coordinator.addr))
            .await?;
    api.apply(v1::ApplyRequest {
        definition: Some(v1::Definition {
            source: Some(v1::definition::Source::Yaml(definition(
                args.partitions,
                false,
                false,
                None,
                true,
            ))),
            source_name: "bench.yaml".into(),
        }),
        ..Default::default()
    })
    .await?;

    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    eprintln!("http ingest: {events} events published over NATS ...");
    let started = Instant::now();
    publish_acked(
        &js,
        "anom.bench.in",
        (0..events).map(|i| sample_event(i, 0, args.alert_every, args.keys)),
    )
    .await?;
    let nats = events as f64 / started.elapsed().as_secs_f64();

    eprintln!("http ingest: {events} events POSTed as NDJSON batches of {batch} ...");
    let client = reqwest::Client::new();
    let endpoint = format!("http://{http}/v1/pipelines/bench/events");
    let bodies: Vec<Vec<u8>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut body = Vec::new();
            for i in chunk {
                body.extend_from_slice(&sample_event(events + i, 0, args.alert_every, args.keys));
                body.push(b'\n');
            }
            body
        })
        .collect();
    let started = Instant::now();
    let accepted: Vec<anyhow::Result<u64>> = futures::stream::iter(bodies)
        .map(|body| {
            let (client, endpoint) = (client.clone(), endpoint.clone());
            async move {
                let resp = client
                    .post(endpoint)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
                let report: serde_json::Value = resp.json().await?;
                Ok(report["accepted"].as_u64().unwrap_or(0))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut stored = 0;
    for a in accepted {
        stored += a?;
    }
    anyhow::ensure!(
        stored == events as u64,
        "HTTP ingest stored {stored} of {events} events"
    );
    shutdown.cancel();
    coordinator.wait().await?;
    Ok(HttpIngest {
        events,
        batch,
        concurrency,
        baseline,
        nats,
        http: events as f64 / seconds,
    })
}

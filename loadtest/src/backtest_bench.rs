//! `anom-loadtest backtest`: a backtest of the card-payments pipeline (pipelines/payments.yaml)
//! over N events, against a plain JetStream read of the same stream in the same run; and,
//! with `--live-impact`, the live pipeline's throughput alone and while a backtest runs.

use std::sync::Arc;
use std::time::Instant;

use anom_operators::backtest::{self, source::Reader, Range, Spec};
use anom_operators::model_registry::ModelRegistry;
use anom_pipeline::Pipeline;
use anom_runtime::metrics::Metrics;
use anom_runtime::streams::{self, StreamOptions};
use async_nats::jetstream;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

pub struct Bench {
    /// Live pipeline throughput (events/s) alone and while backtests run, when measured.
    pub live: Option<(f64, f64)>,
    pub events: usize,
    /// Plain reads of the stream, before and after the backtest (messages/s).
    pub plain: Vec<f64>,
    pub backtest_rate: f64,
    pub backtest_seconds: f64,
    pub alerts: usize,
    /// Per-batch (1,000 messages) time through the pipeline's stages, µs.
    pub batch_us: Histogram<u64>,
}

/// Card payments spread over `cards` cards and 30 days, time-ordered, with one spending
/// spike per 1,000 events.
fn payments(events: usize, cards: usize) -> Vec<Bytes> {
    let mut rng = StdRng::seed_from_u64(11);
    let start = 1_790_000_000_000i64;
    let step = 30 * 86_400_000 / events.max(1) as i64;
    (0..events)
        .map(|i| {
            let card = rng.random_range(0..cards);
            let amount = if i % 1000 == 999 {
                3_000.0
            } else {
                (rng.random_range(5.0..80.0f64) * 100.0).round() / 100.0
            };
            Bytes::from(
                serde_json::json!({
                    "card": format!("card-{card:05}"),
                    "amount": amount,
                    "merchant": "Cafe Luna",
                    "country": if rng.random_range(0..500) == 0 { "FR" } else { "DE" },
                    "at": start + i as i64 * step,
                })
                .to_string(),
            )
        })
        .collect()
}

pub async fn load(url: &str, events: usize) -> anyhow::Result<Arc<Pipeline>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/payments.yaml");
    let pipeline = Arc::new(Pipeline::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?);
    let js = jetstream::new(async_nats::connect(url).await?);
    streams::ensure(&js, &[(*pipeline).clone()], &StreamOptions::default()).await?;
    let mut acks = std::collections::VecDeque::new();
    for e in payments(events, 10_000) {
        acks.push_back(js.publish("anom.payments.in", e).await?);
        if acks.len() >= 4_000 {
            if let Some(a) = acks.pop_front() {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(pipeline)
}

/// The whole stream through the payments pipeline, as `anom backtest` would run it.
fn spec(pipeline: &Arc<Pipeline>) -> Spec {
    Spec {
        versions: vec![("bench".into(), pipeline.clone())],
        range: Range::default(),
        labels: None,
        plot: None,
        batch: 1000,
        max_rate: None,
        budget_per_day: None,
    }
}

async fn plain_read(js: &jetstream::Context) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut reader = Reader::open(js, "payments", Range::default(), 1000).await?;
    let mut n = 0;
    while let Some((batch, _)) = reader.next().await? {
        n += batch.len();
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(url: &str, events: usize, live: Option<&crate::Args>) -> anyhow::Result<Bench> {
    let pipeline = load(url, events).await?;
    let js = jetstream::new(async_nats::connect(url).await?);
    let mut plain = vec![plain_read(&js).await?];
    let metrics = Arc::new(Metrics::new());
    let models = Arc::new(ModelRegistry::new(".".into(), metrics.clone()));
    let started = Instant::now();
    let outcome = backtest::run(
        &js,
        spec(&pipeline),
        models,
        metrics,
        |_| {},
        CancellationToken::new(),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let backtest::run::Outcome::Report(report) = outcome else {
        anyhow::bail!("expected one report");
    };
    anyhow::ensure!(
        report.messages == events as u64,
        "the backtest read {} of {events} events",
        report.messages
    );
    plain.push(plain_read(&js).await?);
    let live = match live {
        Some(args) => Some(live_impact(url, &js, &pipeline, args).await?),
        None => None,
    };
    Ok(Bench {
        live,
        events,
        plain,
        backtest_rate: events as f64 / seconds,
        backtest_seconds: seconds,
        alerts: report.alerts.len(),
        batch_us: engine_batches(&pipeline, &js).await?,
    })
}

/// The live loadtest's throughput (its own nats-server and worker) alone, then while
/// backtests of the payments stream run back to back in this process.
async fn live_impact(
    url: &str,
    js: &jetstream::Context,
    pipeline: &Arc<Pipeline>,
    args: &crate::Args,
) -> anyhow::Result<(f64, f64)> {
    let live = |args: crate::Args| async move {
        let dir = tempfile::tempdir()?;
        let server = anom_runtime::natsd::Natsd::start_in(dir.path()).await?;
        let t = crate::pipeline::throughput(server.url(), &args).await?;
        server.stop().await?;
        anyhow::Ok(t.rate())
    };
    eprintln!("live throughput alone ...");
    let alone = live(args.clone()).await?;
    let stop = CancellationToken::new();
    let backtests = tokio::spawn({
        let (js, pipeline, stop) = (js.clone(), pipeline.clone(), stop.clone());
        let _ = url;
        async move {
            let metrics = Arc::new(Metrics::new());
            let models = Arc::new(ModelRegistry::new(".".into(), metrics.clone()));
            let mut runs = 0;
            while !stop.is_cancelled() {
                let spec = spec(&pipeline);
                let r = backtest::run(
                    &js,
                    spec,
                    models.clone(),
                    metrics.clone(),
                    |_| {},
                    stop.clone(),
                )
                .await;
                if r.is_ok() {
                    runs += 1;
                }
            }
            runs
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    eprintln!("live throughput while backtests run ...");
    let with = live(args.clone()).await;
    stop.cancel();
    let runs = backtests.await?;
    eprintln!("backtests completed meanwhile: {runs}");
    Ok((alone, with?))
}

/// The stages alone, batch by batch (the stream read beforehand): where the time goes.
async fn engine_batches(
    pipeline: &Arc<Pipeline>,
    js: &jetstream::Context,
) -> anyhow::Result<Histogram<u64>> {
    let mut reader = Reader::open(js, "payments", Range::default(), 1000).await?;
    let mut batches = Vec::new();
    while let Some((batch, _)) = reader.next().await? {
        batches.push(batch);
    }
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Histogram<u64>> {
        let metrics = Metrics::new();
        let models = ModelRegistry::new(".".into(), Arc::new(Metrics::new()));
        let start = backtest::Engine::first_event_ms(&pipeline, &batches[0]).unwrap_or_default();
        let mut engine = backtest::Engine::new(
            pipeline.clone(),
            backtest::Depth::Alerts,
            start,
            &models,
            &metrics,
        )?;
        let mut tap = backtest::collector::Collector::new(pipeline.clone(), None, None, None);
        let mut hist = Histogram::<u64>::new(3)?;
        for b in &batches {
            let t = Instant::now();
            engine.feed(b, &mut tap);
            hist.record(t.elapsed().as_micros() as u64)?;
        }
        Ok(hist)
    })
    .await?
}

impl Bench {
    pub fn markdown(&self) -> String {
        let plain = self.plain.iter().sum::<f64>() / self.plain.len() as f64;
        let per = |q: f64| self.batch_us.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| measure | value |\n|---|---|\n\
             | events (pipelines/payments.yaml, 10,000 cards, 30 days) | {} |\n\
             | plain JetStream read of the stream (before, after) | {} msg/s |\n\
             | backtest: read + validate → window → rules → alert lifecycle | {:.0} events/s ({:.2} s) |\n\
             | backtest ÷ plain read | {:.2}× |\n\
             | alerts that would have fired | {} |\n\
             | stages alone, per batch of 1,000: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n{}",
            self.events,
            self.plain
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.backtest_rate,
            self.backtest_seconds,
            self.backtest_rate / plain,
            self.alerts,
            per(0.5),
            per(0.99),
            self.batch_us.max() as f64 / 1000.0,
            match self.live {
                Some((alone, with)) => format!(
                    "| live pipeline throughput alone / while backtests run | {alone:.0} / {with:.0} events/s ({:.0}% slower) |\n",
                    (1.0 - with / alone) * 100.0
                ),
                None => String::new(),
            }
        )
    }
}

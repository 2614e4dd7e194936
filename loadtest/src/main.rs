//! `anom-loadtest`: how fast is Anom's pipeline, as a ratio of a raw JetStream hop measured
//! on the same machine in the same run.
//!
//! 1. baseline: publish N messages of the pipeline's event size to a stream while a plain
//!    async-nats operator moves them to a second stream (pull, republish with `Nats-Msg-Id`,
//!    await acks, ack) — the cheapest honest version of one stage;
//! 2. throughput: N events through validate → rules → alert, as fast as they are published;
//! 3. latency: events at a fixed rate, publish → alert received, as an HDR histogram.

mod alert_burst;
mod backtest_bench;
mod baseline;
mod generate;
mod http_ingest;
mod malformed;
mod pipeline;
mod report;
mod rollout;
mod window_bench;

use std::time::Duration;

use anom_runtime::natsd::Natsd;
use clap::Parser;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Print sample events for an example pipeline (JSON lines) with labelled anomalies.
    Generate {
        /// Which pipeline: payments.
        pipeline: String,
        #[arg(long, default_value_t = 400)]
        events: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// A burst of detections for many keys into the alert stage: how long the lifecycle takes
    /// to fold them into one alert per key and notify, against a raw JetStream publish.
    AlertBurst {
        #[arg(long, default_value_t = 100_000)]
        detections: usize,
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// A backtest of the card-payments pipeline over N events, against a plain JetStream read
    /// of the same stream in the same run.
    Backtest {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Also measure the live pipeline's throughput (--events of the main options is
        /// theirs) alone and while backtests run.
        #[arg(long)]
        live_impact: bool,
    },
    /// Malformed events of 17 kinds (undecodable, off-schema, missing keys, oversized, invalid
    /// UTF-8, MessagePack, deep nesting, …) spread among good ones: every bad one must be
    /// dead-lettered once with its reason and kind, every good one alert; reports the rate
    /// against a raw hop measured in the same run. Exits non-zero if a promise broke.
    Malformed {
        #[arg(long, default_value_t = 300_000)]
        good: usize,
        #[arg(long, default_value_t = 1_000_000)]
        bad: usize,
    },
    /// Rollouts under a backlog: a real coordinator and worker, four new versions (threshold,
    /// added field, new aggregate, removed field) each applied 0.2 s into a burst of --events:
    /// none may dead-letter anything. Exits non-zero if one did.
    Rollout,
    /// HTTP ingest (NDJSON batches to a real coordinator's HTTP API) against publishing over
    /// NATS with JetStream acks, --events each, and a raw hop, in the same run.
    HttpIngest {
        /// Lines per NDJSON body.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Requests in flight at a time.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// The window stage's own work at growing key counts (no JetStream), with a raw hop
    /// baseline measured in the same run.
    Window {
        /// Distinct keys, one run each.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        keys: Vec<usize>,
        /// Events per key.
        #[arg(long, default_value_t = 2)]
        events_per_key: usize,
        /// Messages for the raw hop baseline (0 skips it).
        #[arg(long, default_value_t = 200_000)]
        baseline: usize,
    },
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Anom load test: pipeline throughput and latency against a raw JetStream hop")]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Events for the throughput runs (baseline and pipeline).
    #[arg(long, default_value_t = 300_000)]
    pub events: usize,
    /// Events per second for the latency run.
    #[arg(long, default_value_t = 25_000)]
    pub latency_rate: u64,
    /// Length of the latency run.
    #[arg(long, default_value = "10s", value_parser = anom_lang::duration::parse)]
    pub latency_duration: Duration,
    /// Partitions of the benchmark pipeline.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Distinct keys (routes) in the generated events.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// One event in this many raises an alert.
    #[arg(long, default_value_t = 20)]
    pub alert_every: usize,
    /// Add the window stage: the benchmark pipeline gets four per-key aggregates.
    #[arg(long)]
    pub keyed: bool,
    /// Add the score stage: three built-in detectors per key (robust z-score, EWMA, CUSUM)
    /// and a 100-tree Isolation Forest (ONNX, trained at start) over two fields. They only
    /// score (`alert_on: rules`), so the expected alerts stay the rules'.
    #[arg(long)]
    pub detectors: bool,
    /// Run each stage as a unit of its own (`units.fused: false`, one JetStream hop per
    /// stage) instead of one fused unit per partition: what fusing saves.
    #[arg(long)]
    pub per_stage: bool,
    /// Add a derived field computed by a UDF plugin: the route_id example
    /// (`scripts/build-udfs`, or `cargo build --release -p anom-udf-route-id`), given as the
    /// path of its library; the validate stage calls it once per batch.
    #[arg(long)]
    pub udf: Option<std::path::PathBuf>,
    /// After the throughput run, raise the rate in 10% steps (5 s each) until latency (p99 over
    /// 50 ms), pace or alerts break; then report latency, CPU, memory and detection quality at
    /// 50% and 90% of the highest rate that held.
    #[arg(long)]
    pub rising: bool,
    /// Skip phases: any of baseline, throughput, latency.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANOM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    match &args.command {
        Some(Command::Generate {
            pipeline,
            events,
            seed,
        }) => {
            match pipeline.as_str() {
                "payments" => generate::payments(*events, *seed)
                    .iter()
                    .for_each(|l| println!("{l}")),
                other => anyhow::bail!("no generator for `{other}` (have: payments)"),
            }
            return Ok(());
        }
        Some(Command::Window {
            keys,
            events_per_key,
            baseline,
        }) => {
            let base = if *baseline > 0 {
                let dir = tempfile::tempdir()?;
                let server = Natsd::start_in(dir.path()).await?;
                eprintln!("baseline: raw JetStream hop, {baseline} messages ...");
                let b = baseline::hop(server.url(), *baseline, 160).await?;
                server.stop().await?;
                Some(b.rate())
            } else {
                None
            };
            let mut runs = Vec::new();
            for k in keys {
                eprintln!("window stage: {k} keys × {events_per_key} events ...");
                let (k, e) = (*k, *events_per_key);
                runs.push(tokio::task::spawn_blocking(move || window_bench::run(k, e)).await??);
            }
            if let Some(b) = base {
                println!("raw JetStream hop (160 B, same run): {b:.0} msg/s\n");
            }
            println!("{}", window_bench::markdown(&runs, base));
            return Ok(());
        }
        Some(Command::AlertBurst {
            detections,
            keys,
            partitions,
        }) => {
            let dir = tempfile::tempdir()?;
            let server = Natsd::start_in(dir.path()).await?;
            eprintln!("alert burst: {detections} detections for {keys} keys ...");
            let burst = alert_burst::run(server.url(), *detections, *keys, *partitions).await?;
            server.stop().await?;
            println!("{}", burst.markdown());
            return Ok(());
        }
        Some(Command::Backtest {
            events,
            live_impact,
        }) => {
            let dir = tempfile::tempdir()?;
            let server = Natsd::start_in(dir.path()).await?;
            eprintln!("backtest: {events} card payments ...");
            let bench =
                backtest_bench::run(server.url(), *events, live_impact.then_some(&args)).await?;
            server.stop().await?;
            println!("{}", bench.markdown());
            return Ok(());
        }
        Some(Command::HttpIngest { batch, concurrency }) => {
            let dir = tempfile::tempdir()?;
            let server = Natsd::start_in(dir.path()).await?;
            let run = http_ingest::run(server.url(), &args, *batch, *concurrency).await?;
            server.stop().await?;
            println!("{}", run.markdown());
            return Ok(());
        }
        Some(Command::Rollout) => {
            let dir = tempfile::tempdir()?;
            let server = Natsd::start_in(dir.path()).await?;
            let run = rollout::run(server.url(), &args).await?;
            server.stop().await?;
            println!("{}", run.markdown());
            anyhow::ensure!(run.lost_nothing(), "a rollout dead-lettered events (above)");
            return Ok(());
        }
        Some(Command::Malformed { good, bad }) => {
            let dir = tempfile::tempdir()?;
            let server = Natsd::start_in(dir.path()).await?;
            let run = malformed::run(server.url(), &args, *good, *bad).await?;
            server.stop().await?;
            println!("{}", run.markdown());
            anyhow::ensure!(run.held(), "bad input at scale: a promise broke (above)");
            return Ok(());
        }
        None => {}
    }
    let mut report = report::Report::new(&args);

    if !args.skip.iter().any(|s| s == "baseline") {
        let dir = tempfile::tempdir()?;
        let server = Natsd::start_in(dir.path()).await?;
        let size = pipeline::sample_event(0, 0, 1, args.keys).len();
        eprintln!(
            "baseline: raw JetStream hop, {} messages of {size} B ...",
            args.events
        );
        report.baseline = Some(baseline::hop(server.url(), args.events, size).await?);
        server.stop().await?;
    }
    if !args.skip.iter().any(|s| s == "throughput") {
        let dir = tempfile::tempdir()?;
        let server = Natsd::start_in(dir.path()).await?;
        eprintln!(
            "throughput: {} events through validate → rules → alert ...",
            args.events
        );
        report.throughput = Some(pipeline::throughput(server.url(), &args).await?);
        server.stop().await?;
    }
    if !args.skip.iter().any(|s| s == "latency") {
        let dir = tempfile::tempdir()?;
        let server = Natsd::start_in(dir.path()).await?;
        eprintln!(
            "latency: {} events/s for {:?} ...",
            args.latency_rate, args.latency_duration
        );
        report.latency = Some(pipeline::latency(server.url(), &args).await?);
        server.stop().await?;
    }
    if args.rising {
        let burst = report
            .throughput
            .as_ref()
            .map(|t| t.rate())
            .ok_or_else(|| {
                anyhow::anyhow!("--rising needs the throughput phase (do not skip it)")
            })?;
        let step = Duration::from_secs(5);
        let mut sustained = 0u64;
        for pct in (30..=150).step_by(10) {
            let rate = (burst * pct as f64 / 100.0) as u64;
            eprintln!("rising: {rate} events/s for {step:?} ...");
            let run = run_at(&args, rate, step).await?;
            let ok = run.sustained();
            report.rising.push(run);
            if !ok {
                break;
            }
            sustained = rate;
        }
        report.sustainable = Some(sustained);
        for pct in [50u64, 90] {
            let rate = sustained * pct / 100;
            eprintln!(
                "at {pct}% of the sustainable rate: {rate} events/s for {:?} ...",
                args.latency_duration
            );
            report
                .at_share
                .push((pct, run_at(&args, rate, args.latency_duration).await?));
        }
    }
    println!("{}", report.markdown());
    Ok(())
}

/// One fixed-rate run on a fresh server, with the server's CPU and memory.
async fn run_at(args: &Args, rate: u64, duration: Duration) -> anyhow::Result<pipeline::Latency> {
    let dir = tempfile::tempdir()?;
    let server = Natsd::start_in(dir.path()).await?;
    let run = pipeline::latency_at(server.url(), args, rate, duration, server.pid()).await?;
    server.stop().await?;
    Ok(run)
}

//! `anom worker`: runs stages against an existing NATS server, either every stage of the
//! given pipelines (alone) or the units a coordinator assigns (`--coordinator`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anom_operators::worker::{Worker, WorkerConfig};
use anom_runtime::streams::StreamOptions;
use tokio_util::sync::CancellationToken;

use anom::agent::{self, AgentConfig};

#[derive(clap::Args)]
pub struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
    /// Take work from this coordinator (e.g. http://127.0.0.1:50051) instead of running
    /// every stage of --pipelines.
    #[arg(long, env = "ANOM_COORDINATOR")]
    coordinator: Option<String>,
    /// Pipeline definitions (without --coordinator): a directory of YAML files or one file.
    #[arg(long, default_value = "pipelines")]
    pipelines: PathBuf,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "ANOM_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Where keyed state (windows, aggregates, timers) is checkpointed.
    #[arg(long, env = "ANOM_STATE_DIR", default_value = "anom-state")]
    state_dir: PathBuf,
    /// Where detectors' relative `model:` paths point (a new file there is swapped in while
    /// running). Default: the --pipelines directory.
    #[arg(long, env = "ANOM_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// This worker's name in the cluster, stable across restarts (default: the hostname).
    #[arg(long, env = "ANOM_WORKER_ID")]
    worker_id: Option<String>,
    /// Units this worker runs (validate, keyed — the fused per-partition units —, window,
    /// score, rules, alert — per-stage units —, sink), comma-separated; default all.
    #[arg(long, env = "ANOM_ROLES", value_delimiter = ',')]
    roles: Vec<String>,
    /// Relative share of the units this worker takes.
    #[arg(long, env = "ANOM_CAPACITY", default_value_t = 1)]
    capacity: u32,
    /// Replicas of the buckets the worker creates if missing (match the coordinator's).
    #[arg(long, env = "ANOM_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// JetStream's duplicate window of the streams this process creates: a republished
    /// message id within it is dropped. Outputs stay exactly-once after longer outages too
    /// (docs/architecture.md, "Exactly once"); a shorter window holds fewer ids in memory.
    #[arg(long, env = "ANOM_DUPLICATE_WINDOW", default_value = "2m", value_parser = anom_lang::duration::parse)]
    duplicate_window: Duration,
    /// How often keyed state is snapshotted to NATS so another worker can take it over.
    #[arg(long, default_value = "5s", value_parser = anom_lang::duration::parse)]
    snapshot_every: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            super::stop_requested().await;
            shutdown.cancel();
        }
    });
    let models_dir = args
        .models_dir
        .clone()
        .unwrap_or_else(|| super::pipelines_dir(&args.pipelines));
    let pipelines = match args.coordinator {
        Some(_) => Vec::new(),
        None => super::load_pipelines(&args.pipelines, &models_dir)?,
    };
    let mut config = WorkerConfig::new(args.nats, pipelines);
    config.metrics_addr = args.metrics_addr;
    config.state_dir = args.state_dir;
    config.models_dir = models_dir;
    config.worker_id = args.worker_id.unwrap_or_else(agent::hostname);
    config.snapshot_every = args.snapshot_every;
    config.streams = StreamOptions {
        replicas: args.replicas,
        duplicate_window: args.duplicate_window,
        ..StreamOptions::default()
    };
    match args.coordinator {
        Some(coordinator) => {
            agent::run(
                AgentConfig {
                    coordinator,
                    worker: config,
                    roles: args.roles,
                    capacity: args.capacity,
                },
                shutdown,
            )
            .await
        }
        None => {
            let worker = Worker::start(config, shutdown.clone()).await?;
            if let Some(addr) = worker.metrics_addr {
                eprintln!("metrics: http://{addr}/metrics");
            }
            worker.run_until_shutdown().await;
            Ok(())
        }
    }
}

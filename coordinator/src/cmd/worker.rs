//! `anom worker`: the stages of the given pipelines, against an existing NATS server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anom_operators::worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
    /// Pipeline definitions: a directory of YAML files or one file.
    #[arg(long, default_value = "pipelines")]
    pipelines: PathBuf,
    /// Serve Prometheus metrics at http://<addr>/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Where keyed state (windows, aggregates, timers) is checkpointed.
    #[arg(long, default_value = "anom-state")]
    state_dir: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pipelines = super::load_pipelines(&args.pipelines)?;
    let mut config = WorkerConfig::new(args.nats, pipelines);
    config.metrics_addr = args.metrics_addr;
    config.state_dir = args.state_dir;
    let shutdown = CancellationToken::new();
    let worker = Worker::start(config, shutdown.clone()).await?;
    if let Some(addr) = worker.metrics_addr {
        eprintln!("metrics: http://{addr}/metrics");
    }
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            super::stop_requested().await;
            shutdown.cancel();
        }
    });
    worker.run_until_shutdown().await;
    Ok(())
}

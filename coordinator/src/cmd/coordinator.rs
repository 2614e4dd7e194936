//! `anom coordinator`: the control plane on its own (gRPC API, pipeline versions, partition
//! assignment), for a cluster of `anom worker --coordinator` processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anom_runtime::streams::StreamOptions;
use tokio_util::sync::CancellationToken;

use anom::server::{Coordinator, CoordinatorConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Where to serve gRPC.
    #[arg(long, env = "ANOM_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
    /// Where the coordinator keeps pipeline versions and the assignment (sled).
    #[arg(long, env = "ANOM_STATE_DIR", default_value = "anom-coordinator")]
    state_dir: PathBuf,
    /// Serve the HTTP API (/v1, OpenAPI at /v1/openapi.json) and the web console (/) here.
    #[arg(long, env = "ANOM_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// The largest HTTP request body, in bytes (ingest streams it).
    #[arg(long, env = "ANOM_HTTP_MAX_BODY", default_value_t = anom::http::HttpConfig::DEFAULT_MAX_BODY_BYTES)]
    http_max_body: u64,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "ANOM_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// A worker without a heartbeat for this long loses its units.
    #[arg(long, env = "ANOM_LEASE_TTL", default_value = "6s", value_parser = anom_lang::duration::parse)]
    lease_ttl: Duration,
    /// Replicas of every stream and bucket (3 on a 3-node NATS cluster).
    #[arg(long, env = "ANOM_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// JetStream's duplicate window of the streams this process creates: a republished
    /// message id within it is dropped. Outputs stay exactly-once after longer outages too
    /// (docs/architecture.md, "Exactly once"); a shorter window holds fewer ids in memory.
    #[arg(long, env = "ANOM_DUPLICATE_WINDOW", default_value = "2m", value_parser = anom_lang::duration::parse)]
    duplicate_window: Duration,
    /// Apply the pipelines of this directory (or file) at start; unchanged ones stay as they are.
    #[arg(long)]
    pipelines: Option<PathBuf>,
    /// The workers' models directory, if this coordinator can read it: Apply and Validate
    /// then load the model files detectors name and refuse missing or mismatched ones.
    #[arg(long, env = "ANOM_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// At most this many backtests at a time (each takes up to one core, at low priority).
    #[arg(long, env = "ANOM_MAX_BACKTESTS", default_value_t = 2)]
    max_backtests: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            listen: args.listen,
            nats_url: args.nats,
            state_dir: args.state_dir,
            metrics_addr: args.metrics_addr,
            lease_ttl: args.lease_ttl,
            models_dir: args.models_dir.clone(),
            max_backtests: args.max_backtests,
            http: args.http_addr.map(|listen| anom::http::HttpConfig {
                listen,
                max_body_bytes: args.http_max_body,
            }),
            streams: StreamOptions {
                replicas: args.replicas,
                duplicate_window: args.duplicate_window,
                ..StreamOptions::default()
            },
        },
        shutdown.clone(),
    )
    .await?;
    eprintln!("coordinator: grpc://{}", coordinator.addr);
    if let Some(addr) = coordinator.http_addr {
        eprintln!("http: http://{addr}  (console: http://{addr}/; OpenAPI: http://{addr}/v1/openapi.json)");
    }
    if let Some(addr) = coordinator.metrics_addr {
        eprintln!("metrics: http://{addr}/metrics");
    }
    if let Some(dir) = &args.pipelines {
        let url = format!("http://{}", coordinator.addr);
        super::pipeline::apply_path(&url, dir, "applied at coordinator start").await?;
    }
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            super::stop_requested().await;
            shutdown.cancel();
        }
    });
    coordinator.wait().await
}

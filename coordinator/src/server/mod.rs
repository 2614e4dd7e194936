//! The coordinator: a gRPC server (package `anom.v1`, plus the standard health and reflection
//! services) over the control state in [`control`].
//!
//! | module | what it is |
//! |---|---|
//! | `control` | the state every call works on, and the rebalance that moves units |
//! | `assign` | the spreading of units over workers (pure) |
//! | `store` | the coordinator's sled database |
//! | `pipelines` | the `Pipelines` service |
//! | `cluster` | the `Cluster` service |
//! | `alerts` | the `Alerts` service: alert queries, acknowledgements, silences |
//! | `backtests` | the `Backtests` service: replays through a version, reports kept |
//! | `metrics` | `anom_coordinator_*` metrics |

pub mod alerts;
pub mod assign;
pub mod backtests;
pub mod cluster;
pub mod control;
pub mod metrics;
pub mod pipelines;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anom_proto::v1;
use anom_runtime::streams::StreamOptions;
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use control::Control;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub nats_url: String,
    pub state_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    /// How long a worker stays in the cluster without a heartbeat.
    pub lease_ttl: Duration,
    pub streams: StreamOptions,
    /// When the coordinator sees the workers' models directory (`anom up`, a shared volume),
    /// Apply and Validate also load the model files detectors name and refuse bad ones.
    pub models_dir: Option<PathBuf>,
    /// At most this many backtests run at a time.
    pub max_backtests: usize,
    /// Serve the HTTP API (crate::http) too.
    pub http: Option<crate::http::HttpConfig>,
}

/// A running coordinator.
pub struct Coordinator {
    /// Where gRPC is served (useful with port 0).
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP API is served, when it is.
    pub http_addr: Option<SocketAddr>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Coordinator {
    pub async fn start(
        config: CoordinatorConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Coordinator> {
        let client = anom_operators::worker::connect(&config.nats_url)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
        let js = async_nats::jetstream::new(client);
        let store = store::Store::open(&config.state_dir).with_context(|| {
            format!(
                "cannot open the coordinator state in {}",
                config.state_dir.display()
            )
        })?;
        let control = Control::load(store, js, config.lease_ttl, config.streams.clone()).await?;
        // Created here too, not only by workers: alerts and silences can be queried and
        // silences added before any worker has started.
        let buckets = anom_operators::alerting::Buckets::open(&control.js, config.streams.replicas)
            .await
            .context("cannot open the alert buckets")?;
        tokio::spawn(
            control
                .clone()
                .watch_leases(Duration::from_millis(250), shutdown.clone()),
        );
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let c = control.clone();
                let ready = Arc::new(AtomicBool::new(true));
                Some(
                    anom_runtime::metrics::serve_with(
                        move || c.metrics.encode(),
                        ready,
                        addr,
                        shutdown.clone(),
                    )
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
                )
            }
            None => None,
        };
        let backtests = backtests::BacktestService::open(
            control.clone(),
            config
                .models_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
            config.max_backtests,
        )
        .await
        .context("cannot open the backtest buckets")?;
        let backtests = Arc::new(backtests);
        let pipelines = Arc::new(pipelines::PipelineService {
            control: control.clone(),
            models_dir: config.models_dir.clone(),
        });
        let cluster = Arc::new(cluster::ClusterService {
            control: control.clone(),
        });
        let alerts = Arc::new(alerts::AlertService {
            control: control.clone(),
            buckets,
        });
        let http_addr = match &config.http {
            Some(http) => Some(
                crate::http::serve(
                    crate::http::App {
                        control: control.clone(),
                        js: control.js.clone(),
                        max_body_bytes: http.max_body_bytes,
                        pipelines: pipelines.clone(),
                        cluster: cluster.clone(),
                        alerts: alerts.clone(),
                        backtests: backtests.clone(),
                        rates: Default::default(),
                    },
                    http.listen,
                    shutdown.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<v1::pipelines_server::PipelinesServer<pipelines::PipelineService>>()
            .await;
        health
            .set_serving::<v1::cluster_server::ClusterServer<cluster::ClusterService>>()
            .await;
        health
            .set_serving::<v1::alerts_server::AlertsServer<alerts::AlertService>>()
            .await;
        health
            .set_serving::<v1::backtests_server::BacktestsServer<backtests::BacktestService>>()
            .await;
        // Both protocol versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("reflection service (v1alpha)")?;
        let reflection = reflection().build_v1().context("reflection service")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(v1::pipelines_server::PipelinesServer::from_arc(pipelines))
            .add_service(v1::cluster_server::ClusterServer::from_arc(cluster))
            .add_service(v1::alerts_server::AlertsServer::from_arc(alerts))
            .add_service(v1::backtests_server::BacktestsServer::from_arc(backtests))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
        let server = tokio::spawn(server);
        info!(%addr, "coordinator serving gRPC");
        Ok(Coordinator {
            addr,
            metrics_addr,
            http_addr,
            server,
        })
    }

    /// Waits for the server to stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await??;
        Ok(())
    }
}

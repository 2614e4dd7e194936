//! A worker: connects to NATS, ensures the streams, and runs every stage and sink of its
//! pipelines on the shared runtime until shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SinkDef};
use crate::runtime::{run_sink, run_stage, Binding, Runtime, RuntimeOptions};
use crate::sink::webhook::Webhook;
use crate::stage;
use crate::topology::{self, StreamOptions};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats_url: String,
    pub pipelines: Vec<Pipeline>,
    pub runtime: RuntimeOptions,
    pub streams: StreamOptions,
    /// Where to serve `/metrics`; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// How often to look for events sent to unknown pipelines.
    pub unrouted_poll: Duration,
    /// Where keyed state is kept (a sled database).
    pub state_dir: PathBuf,
}

impl WorkerConfig {
    pub fn new(nats_url: impl Into<String>, pipelines: Vec<Pipeline>) -> WorkerConfig {
        WorkerConfig {
            nats_url: nats_url.into(),
            pipelines,
            runtime: RuntimeOptions::default(),
            streams: StreamOptions::default(),
            metrics_addr: None,
            unrouted_poll: Duration::from_secs(2),
            state_dir: PathBuf::from("anom-state"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sink: {0}")]
    Sink(String),
    #[error("keyed state in {dir}: {source}")]
    State {
        dir: PathBuf,
        source: crate::checkpoint::CheckpointError,
    },
}

/// A started worker.
pub struct Worker {
    pub metrics: Arc<Metrics>,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    client: async_nats::Client,
    db: sled::Db,
}

/// Connects with settings suited to the runtime's batch sizes.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("anom-worker")
        // Above the pull batch, so a burst never overflows a subscription buffer.
        .subscription_capacity(1 << 17)
        .retry_on_initial_connect()
        .connect(url)
        .await
}

impl Worker {
    /// Starts every stage; returns once they are running.
    pub async fn start(
        config: WorkerConfig,
        shutdown: CancellationToken,
    ) -> Result<Worker, WorkerError> {
        let metrics = Arc::new(Metrics::new());
        let client = tokio::time::timeout(Duration::from_secs(30), connect(&config.nats_url))
            .await
            .unwrap_or_else(|_| {
                Err(async_nats::ConnectError::from(
                    async_nats::ConnectErrorKind::TimedOut,
                ))
            })
            .map_err(|source| WorkerError::Connect {
                url: config.nats_url.clone(),
                source,
            })?;
        let js = async_nats::jetstream::new(client.clone());
        topology::ensure(&js, &config.pipelines, &config.streams).await?;
        let metrics_addr = match config.metrics_addr {
            Some(addr) => Some(
                crate::metrics::serve(metrics.clone(), addr, shutdown.clone())
                    .await
                    .map_err(|source| WorkerError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let rt = Runtime {
            js,
            options: config.runtime.clone(),
            shutdown: shutdown.clone(),
        };
        let state_error = |source: crate::checkpoint::CheckpointError| WorkerError::State {
            dir: config.state_dir.clone(),
            source,
        };
        let db = crate::checkpoint::open_db(&config.state_dir).map_err(state_error)?;
        let mut tasks = JoinSet::new();
        for p in &config.pipelines {
            let pipeline = Arc::new(p.clone());
            for planned in stage::build(&pipeline, &metrics, &db).map_err(state_error)? {
                let m = metrics.stage(&planned.binding.pipeline, planned.binding.stage);
                tasks.spawn(run_stage(
                    rt.clone(),
                    planned.binding,
                    planned.stage,
                    m,
                    planned.state,
                ));
            }
            for sink in &pipeline.sinks {
                let SinkDef::Webhook(def) = sink;
                let webhook = Arc::new(Webhook::new(def).map_err(WorkerError::Sink)?);
                let binding = Binding {
                    pipeline: pipeline.name.clone(),
                    stage: "sink",
                    stream: pipeline.subjects.alerts_stream.clone(),
                    durable: format!("{}-sink-{}", pipeline.name, def.name),
                    filter_subject: pipeline.subjects.alerts.clone(),
                };
                tasks.spawn(run_sink(
                    rt.clone(),
                    binding,
                    webhook,
                    Webhook::options(def),
                    metrics.clone(),
                ));
            }
        }
        let known = config.pipelines.iter().map(|p| p.name.clone()).collect();
        tasks.spawn(stage::unrouted::watch(
            rt.clone(),
            known,
            metrics.clone(),
            config.unrouted_poll,
        ));
        info!(pipelines = config.pipelines.len(), "worker started");
        Ok(Worker {
            metrics,
            metrics_addr,
            tasks,
            shutdown,
            client,
            db,
        })
    }

    /// Waits for shutdown to be requested, lets every stage finish its batch, and flushes.
    pub async fn run_until_shutdown(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        let _ = self.client.flush().await;
        let db = self.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.flush()).await;
        info!("worker stopped");
    }
}

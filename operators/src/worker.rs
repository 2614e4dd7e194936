//! A worker: connects to NATS and runs units of work (a stage of a pipeline on a partition)
//! on the shared runtime.
//!
//! Alone (`Worker::start`), it creates the streams and runs every unit of its pipelines. Under
//! a coordinator (`Worker::join`), it runs what [`Worker::apply`] is given: units are started,
//! stopped (finishing their batch, committing and snapshotting their state) and restarted on a
//! new pipeline version, each fenced by its owner record (see [`anom_runtime::fence`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alerting::store::{self as alert_store, Buckets, StoreError};
use crate::layouts::{LayoutStore, LayoutsError};
use crate::model_registry::ModelRegistry;
use crate::sink::AnySink;
use crate::stage;
use anom_pipeline::unit::{self, UnitId, UnitStage};
use anom_pipeline::Pipeline;
use anom_runtime::fence::{Fence, Owners};
use anom_runtime::metrics::Metrics;
use anom_runtime::snapshot::Snapshots;
use anom_runtime::streams::{self, StreamOptions};
use anom_runtime::{run_stage, Runtime, RuntimeOptions, SnapshotPolicy};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats_url: String,
    /// The pipelines a worker without a coordinator runs.
    pub pipelines: Vec<Pipeline>,
    pub runtime: RuntimeOptions,
    pub streams: StreamOptions,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// How often to look for events sent to unknown pipelines.
    pub unrouted_poll: Duration,
    /// Where keyed state is kept (a sled database).
    pub state_dir: PathBuf,
    /// Where detectors' relative `model:` paths point.
    pub models_dir: PathBuf,
    /// This worker's name in the cluster; stable across restarts.
    pub worker_id: String,
    /// How often keyed state is snapshotted for other workers (under a coordinator). Keep it
    /// well inside the streams' duplicate window: a takeover replays up to this much.
    pub snapshot_every: Duration,
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
            models_dir: PathBuf::from("."),
            worker_id: "worker".into(),
            snapshot_every: Duration::from_secs(5),
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
    Streams(#[from] streams::StreamError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Alerts(#[from] StoreError),
    #[error(transparent)]
    Layouts(#[from] LayoutsError),
    #[error("keyed state in {dir}: {source}")]
    State {
        dir: PathBuf,
        source: anom_runtime::checkpoint::CheckpointError,
    },
    #[error("cluster state in NATS: {0}")]
    Cluster(String),
    #[error(transparent)]
    Build(#[from] stage::BuildError),
}

/// One unit the worker should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitAssignment {
    pub unit: UnitId,
    /// The pipeline version to run it at.
    pub version: u32,
    /// The epoch it is held at (0: unfenced, no coordinator).
    pub epoch: u64,
}

/// Everything a worker should run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub units: Vec<UnitAssignment>,
    /// The definitions, by pipeline name, at the versions the units name.
    pub pipelines: HashMap<String, Arc<Pipeline>>,
    /// Every pipeline that exists, for the unrouted watcher.
    pub known: Vec<String>,
}

impl Plan {
    /// Every unit of `pipelines`, unfenced: what a worker without a coordinator runs.
    pub fn everything(pipelines: &[Pipeline]) -> Plan {
        let mut plan = Plan::default();
        for p in pipelines {
            plan.units
                .extend(unit::units(p).into_iter().map(|unit| UnitAssignment {
                    unit,
                    version: 0,
                    epoch: 0,
                }));
            plan.pipelines.insert(p.name.clone(), Arc::new(p.clone()));
            plan.known.push(p.name.clone());
        }
        plan.units.push(UnitAssignment {
            unit: UnitId::unrouted(),
            version: 0,
            epoch: 0,
        });
        plan
    }
}

struct RunningUnit {
    assignment: UnitAssignment,
    /// For the unrouted watcher, which must restart when the set of pipelines changes.
    known: Vec<String>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Under a coordinator: what fences and moves state.
struct Cluster {
    owners: Owners,
    snapshots: Snapshots,
}

/// A started worker.
pub struct Worker {
    pub metrics: Arc<Metrics>,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Set once the worker runs what it was given; served as `/readyz`.
    pub ready: Arc<AtomicBool>,
    config: WorkerConfig,
    shutdown: CancellationToken,
    client: async_nats::Client,
    rt: Runtime,
    db: sled::Db,
    /// ONNX models of the detectors, loaded once per file and swapped when it changes.
    models: ModelRegistry,
    units: HashMap<UnitId, RunningUnit>,
    cluster: Option<Cluster>,
    /// Alert state, silences and the notification log (shared by every worker).
    alert_buckets: Buckets,
    /// Every pipeline version's envelope layout, for reading a rollout's backlog.
    layouts: Arc<LayoutStore>,
}

/// Runs `attempt` until it succeeds, for up to about 30 s: right after a JetStream cluster
/// forms, or while one of its nodes is down, creating a replicated bucket can be refused ("no
/// suitable peers for placement"), which is no reason for a worker to give up.
async fn retrying<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<T, WorkerError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < Duration::from_secs(30) && !shutdown.is_cancelled() => {
                warn!(error = %e, "{what} not available yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(WorkerError::Cluster(e.to_string())),
        }
    }
}

/// Connects with settings suited to the runtime's batch sizes. `url` may list several
/// servers of a cluster, comma-separated; the client fails over between them.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
        })?;
    async_nats::ConnectOptions::new()
        .name("anom-worker")
        // Above the pull batch, so a burst never overflows a subscription buffer.
        .subscription_capacity(1 << 17)
        .retry_on_initial_connect()
        .connect(servers)
        .await
}

impl Worker {
    /// A worker on its own: creates the streams of `config.pipelines` and runs all their
    /// units; returns once they are running.
    pub async fn start(
        config: WorkerConfig,
        shutdown: CancellationToken,
    ) -> Result<Worker, WorkerError> {
        let mut worker = Worker::connect(config, shutdown).await?;
        streams::ensure(
            &worker.rt.js,
            &worker.config.pipelines,
            &worker.config.streams,
        )
        .await?;
        let plan = Plan::everything(&worker.config.pipelines);
        worker.apply(plan).await?;
        info!(pipelines = worker.config.pipelines.len(), "worker started");
        Ok(worker)
    }

    /// A worker under a coordinator: runs nothing until [`Worker::apply`]; every unit is
    /// fenced and keyed state is snapshotted so it can move between workers. The coordinator
    /// creates the streams.
    pub async fn join(
        config: WorkerConfig,
        shutdown: CancellationToken,
    ) -> Result<Worker, WorkerError> {
        let mut worker = Worker::connect(config, shutdown).await?;
        worker.ready.store(false, Ordering::Relaxed);
        let (js, id, replicas) = (
            &worker.rt.js,
            &worker.config.worker_id,
            worker.config.streams.replicas,
        );
        let shutdown = worker.shutdown.clone();
        let owners = retrying("owners bucket", &shutdown, || {
            Owners::watch(js, id, replicas, shutdown.clone())
        })
        .await?;
        let snapshots = retrying("state snapshot bucket", &shutdown, || {
            Snapshots::open(js, replicas, id)
        })
        .await?;
        worker.cluster = Some(Cluster { owners, snapshots });
        Ok(worker)
    }

    async fn connect(
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
        // Short enough that a request caught by a failing server is retried soon, long enough
        // for a publish ack under load.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let ready = Arc::new(AtomicBool::new(true));
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let m = metrics.clone();
                Some(
                    anom_runtime::metrics::serve_with(
                        move || m.encode(),
                        ready.clone(),
                        addr,
                        shutdown.clone(),
                    )
                    .await
                    .map_err(|source| WorkerError::Metrics { addr, source })?,
                )
            }
            None => None,
        };
        let alert_buckets = Buckets::open(&js, config.streams.replicas).await?;
        let layouts = LayoutStore::open(&js, config.streams.replicas).await?;
        let rt = Runtime {
            js,
            options: config.runtime.clone(),
            shutdown: shutdown.clone(),
        };
        let db = anom_runtime::checkpoint::open_db(&config.state_dir).map_err(|source| {
            WorkerError::State {
                dir: config.state_dir.clone(),
                source,
            }
        })?;
        let config_models_dir = config.models_dir.clone();
        let metrics_for_models = metrics.clone();
        Ok(Worker {
            metrics,
            metrics_addr,
            ready,
            config,
            shutdown,
            client,
            rt,
            db,
            models: ModelRegistry::new(config_models_dir, metrics_for_models),
            units: HashMap::new(),
            cluster: None,
            alert_buckets,
            layouts,
        })
    }

    /// Whether every unit of `plan` is running (none failed to start or stopped since).
    pub fn runs(&self, plan: &Plan) -> bool {
        plan.units.iter().all(|a| {
            self.units
                .get(&a.unit)
                .is_some_and(|u| u.assignment == *a && !u.task.is_finished())
        })
    }

    /// The units running now.
    pub fn running(&self) -> Vec<UnitAssignment> {
        let mut v: Vec<_> = self
            .units
            .values()
            .filter(|u| !u.task.is_finished())
            .map(|u| u.assignment.clone())
            .collect();
        v.sort_by(|a, b| a.unit.cmp(&b.unit));
        v
    }

    /// Makes the running units match `plan`: stops what is no longer wanted or changed
    /// (version or epoch), then starts what is missing. Units that cannot start now (their
    /// owner record names someone else) are left out and retried on the next call.
    pub async fn apply(&mut self, plan: Plan) -> Result<(), WorkerError> {
        let wanted: HashMap<&UnitId, &UnitAssignment> =
            plan.units.iter().map(|a| (&a.unit, a)).collect();
        let mut stopping = Vec::new();
        let ids: Vec<UnitId> = self.units.keys().cloned().collect();
        for id in ids {
            let running = &self.units[&id];
            let keep = wanted.get(&id).is_some_and(|a| {
                **a == running.assignment
                    && (id.stage != UnitStage::Unrouted || running.known == plan.known)
                    && !running.task.is_finished()
            });
            if !keep {
                let u = self.units.remove(&id).expect("listed");
                info!(unit = %id, epoch = u.assignment.epoch, "unit stopping");
                u.stop.cancel();
                stopping.push(u.task);
            }
        }
        // Let go of everything first: a unit moving between partitions of this worker, or to
        // a new version, must commit before its successor restores.
        for task in stopping {
            let _ = task.await;
        }
        // A version's layout is written before any of its units runs (its envelopes must be
        // readable by the next version), and the layouts of earlier versions are read before
        // units that may find their envelopes in their input start.
        let mut unready = Vec::new();
        let mut starting: Vec<&Arc<Pipeline>> = Vec::new();
        for a in &plan.units {
            if let Some(p) = plan.pipelines.get(&a.unit.pipeline) {
                if !self.units.contains_key(&a.unit) && !starting.iter().any(|s| s.name == p.name) {
                    starting.push(p);
                }
            }
        }
        for p in starting {
            let done = async {
                self.layouts.publish(p).await?;
                self.layouts.load(&p.name).await
            };
            if let Err(e) = done.await {
                warn!(pipeline = %p.name, error = %e, "cannot share the pipeline's layout; its units wait for the next try");
                unready.push(p.name.clone());
            }
        }
        for a in &plan.units {
            if self.units.contains_key(&a.unit) {
                continue;
            }
            if a.unit.stage == UnitStage::Unrouted {
                let stop = self.shutdown.child_token();
                let Some(fence) = self.fence(a).await else {
                    continue;
                };
                let rt = Runtime {
                    shutdown: stop.clone(),
                    ..self.rt.clone()
                };
                let task = tokio::spawn(stage::unrouted::watch(
                    rt,
                    plan.known.clone(),
                    self.metrics.clone(),
                    self.config.unrouted_poll,
                    fence,
                ));
                self.units.insert(
                    a.unit.clone(),
                    RunningUnit {
                        assignment: a.clone(),
                        known: plan.known.clone(),
                        stop,
                        task,
                    },
                );
                continue;
            }
            let Some(pipeline) = plan.pipelines.get(&a.unit.pipeline) else {
                warn!(unit = %a.unit, "no definition for the unit's pipeline; not started");
                continue;
            };
            if unready.contains(&pipeline.name) {
                continue;
            }
            match self.start_unit(pipeline, a).await {
                Ok(Some(running)) => {
                    info!(unit = %a.unit, version = a.version, epoch = a.epoch, "unit started");
                    self.units.insert(a.unit.clone(), running);
                }
                Ok(None) => {}
                Err(e) => warn!(unit = %a.unit, error = %e, "cannot start unit"),
            }
        }
        self.metrics.units_running.set(self.units.len() as i64);
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn fence(&self, a: &UnitAssignment) -> Option<Fence> {
        match &self.cluster {
            None => Some(Fence::open()),
            Some(c) => {
                let fence = c
                    .owners
                    .fence(&a.unit.key(), a.epoch, Duration::from_secs(10))
                    .await;
                if fence.is_none() {
                    warn!(unit = %a.unit, epoch = a.epoch, "the owner record names another worker; not starting the unit");
                }
                fence
            }
        }
    }

    async fn start_unit(
        &self,
        pipeline: &Arc<Pipeline>,
        a: &UnitAssignment,
    ) -> Result<Option<RunningUnit>, WorkerError> {
        let Some(fence) = self.fence(a).await else {
            return Ok(None);
        };
        let stop = self.shutdown.child_token();
        let rt = Runtime {
            shutdown: stop.clone(),
            ..self.rt.clone()
        };
        let state_error = |source| WorkerError::State {
            dir: self.config.state_dir.clone(),
            source,
        };
        let task = match &a.unit.stage {
            UnitStage::Sink(name) => {
                let Some(def) = pipeline.sinks.iter().find(|s| s.name() == name) else {
                    warn!(unit = %a.unit, "the pipeline has no such sink; not started");
                    return Ok(None);
                };
                let sink = AnySink::build(def)?;
                tokio::spawn(crate::alerting::notifier::run(
                    rt,
                    self.alert_buckets.clone(),
                    pipeline.clone(),
                    def.clone(),
                    sink,
                    fence,
                    self.metrics.clone(),
                ))
            }
            _ => {
                let snapshots = match &self.cluster {
                    Some(c) if a.unit.stage.is_keyed() => {
                        let name = stage::durable_name(&a.unit);
                        let store = anom_runtime::checkpoint::StateStore::open(&self.db, &name)
                            .map_err(state_error)?;
                        match c.snapshots.restore_if_newer(&name, &store).await {
                            Ok(Some(seq)) => {
                                info!(unit = %a.unit, seq, "state restored from snapshot")
                            }
                            Ok(None) => {}
                            Err(e) => {
                                // Starting from older state would replay past the duplicate
                                // window: better to retry on the next assignment.
                                warn!(unit = %a.unit, error = %e, "cannot read the unit's snapshot; not started");
                                return Ok(None);
                            }
                        }
                        Some(SnapshotPolicy {
                            snapshots: c.snapshots.clone(),
                            name,
                            every: self.config.snapshot_every,
                        })
                    }
                    _ => None,
                };
                // The alert stage owns its keys' alerts: it starts from what the bucket holds,
                // read once the unit's earlier owner can no longer ack (see `take_over`).
                let stored_alerts = if matches!(a.unit.stage, UnitStage::Alert | UnitStage::Keyed) {
                    let binding = stage::binding(pipeline, &a.unit, fence.clone())
                        .expect("an alert or keyed unit has a binding");
                    if let Err(e) = rt.take_over(&binding).await {
                        warn!(unit = %a.unit, error = %e, "cannot take the unit's consumer over; not started");
                        return Ok(None);
                    }
                    match alert_store::load_alerts(&self.alert_buckets.alerts, &pipeline.name).await
                    {
                        Ok(all) => stage::alert::owned(pipeline, a.unit.partition, all),
                        Err(e) => {
                            warn!(unit = %a.unit, error = %e, "cannot read the pipeline's alerts; not started");
                            return Ok(None);
                        }
                    }
                } else {
                    Vec::new()
                };
                let Some(planned) = stage::build_unit(
                    pipeline,
                    &a.unit,
                    fence,
                    &self.metrics,
                    &self.db,
                    &self.models,
                    stage::Prior {
                        snapshots,
                        alerts: stored_alerts,
                        layouts: self.layouts.layouts(),
                    },
                )?
                else {
                    return Ok(None);
                };
                let m = self
                    .metrics
                    .stage(&planned.binding.pipeline, planned.binding.stage);
                tokio::spawn(run_stage(
                    rt,
                    planned.binding,
                    planned.stage,
                    m,
                    planned.state,
                    planned.log,
                ))
            }
        };
        Ok(Some(RunningUnit {
            assignment: a.clone(),
            known: Vec::new(),
            stop,
            task,
        }))
    }

    /// Waits for shutdown to be requested, then stops every unit.
    pub async fn run_until_shutdown(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }

    /// Stops every unit (each finishes its batch and commits), flushes, and returns.
    pub async fn stop(mut self) {
        for u in self.units.values() {
            u.stop.cancel();
        }
        for (_, u) in self.units.drain() {
            let _ = u.task.await;
        }
        let _ = self.client.flush().await;
        let db = self.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.flush()).await;
        info!("worker stopped");
    }
}

//! A worker under a coordinator: registers, keeps its lease by heartbeat, and runs what its
//! assignment stream says. When the coordinator is unreachable it keeps running its current
//! units and retries; the owner records in NATS (not the coordinator) decide whether it may
//! go on publishing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anom_operators::worker::{Plan, UnitAssignment, Worker, WorkerConfig};
use anom_pipeline::unit::{UnitId, UnitStage};
use anom_pipeline::Pipeline;
use anom_proto::v1;
use anom_proto::v1::cluster_client::ClusterClient;
use anom_proto::v1::pipelines_client::PipelinesClient;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinator: String,
    pub worker: WorkerConfig,
    pub roles: Vec<String>,
    pub capacity: u32,
}

/// A channel to the coordinator (connects lazily, reconnects by itself).
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("coordinator URL `{url}`: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Compiled definitions by (name, version, digest), fetched from the coordinator the first
/// time an assignment names them: assignments carry references only, so they stay small
/// however large or many the definitions are, and a new generation fetches and recompiles
/// only what changed.
#[derive(Default)]
struct Definitions(HashMap<(String, u32, String), Arc<Pipeline>>);

impl Definitions {
    /// The plan an assignment describes. A definition that cannot be fetched now is left
    /// out (its units do not start) and fetched again on the next try: see [`Plan`]'s
    /// completeness check in `run`.
    async fn plan(&mut self, api: &mut PipelinesClient<Channel>, a: &v1::Assignment) -> Plan {
        let mut plan = Plan {
            known: a.known_pipelines.clone(),
            ..Plan::default()
        };
        for r in &a.versions {
            let key = (r.name.clone(), r.version, r.digest.clone());
            let compiled = match self.0.get(&key) {
                Some(c) => c.clone(),
                None => match fetch(api, r).await {
                    Ok(c) => {
                        let c = Arc::new(c);
                        self.0.insert(key, c.clone());
                        c
                    }
                    Err(e) => {
                        warn!(pipeline = %r.name, version = r.version, error = %e, "cannot load an assigned definition; its units wait");
                        continue;
                    }
                },
            };
            plan.pipelines.insert(r.name.clone(), compiled);
        }
        // Only what the assignment names is kept: old versions are not needed again.
        self.0.retain(|(name, version, _), _| {
            a.versions
                .iter()
                .any(|r| &r.name == name && r.version == *version)
        });
        for u in &a.units {
            let Some(stage) = UnitStage::parse(&u.stage, &u.sink) else {
                warn!(stage = %u.stage, "unknown stage in assignment; skipped (is this worker older than the coordinator?)");
                continue;
            };
            plan.units.push(UnitAssignment {
                unit: UnitId {
                    pipeline: u.pipeline.clone(),
                    stage,
                    partition: u.partition,
                },
                version: u.version,
                epoch: u.epoch,
            });
        }
        plan
    }
}

/// Whether `plan` has the definition of every pipeline `a` names.
fn complete(plan: &Plan, a: &v1::Assignment) -> bool {
    a.versions
        .iter()
        .all(|r| plan.pipelines.contains_key(&r.name))
}

/// One version's definition, from the coordinator, compiled.
async fn fetch(api: &mut PipelinesClient<Channel>, r: &v1::VersionRef) -> anyhow::Result<Pipeline> {
    let request = api.get(v1::GetPipelineRequest {
        name: r.name.clone(),
        version: r.version,
    });
    let v = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .map_err(|_| anyhow::anyhow!("the coordinator did not answer Pipelines.Get in 10 s"))?
        .map_err(|e| anyhow::anyhow!("Pipelines.Get: {}", e.message()))?
        .into_inner();
    if v.digest != r.digest {
        anyhow::bail!(
            "the coordinator sent version {} with digest {}, expected {}",
            v.version,
            v.digest,
            r.digest
        );
    }
    Pipeline::from_yaml(&v.yaml).map_err(|e| anyhow::anyhow!("does not compile here: {e}"))
}

/// Runs the worker until `shutdown`; then stops its units (committing and snapshotting
/// their state) and leaves the cluster so they move at once.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let id = config.worker.worker_id.clone();
    let mut worker = Worker::join(config.worker.clone(), shutdown.clone()).await?;
    if let Some(addr) = worker.metrics_addr {
        eprintln!("metrics: http://{addr}/metrics");
    }
    let channel = channel(&config.coordinator)?;
    let mut client = ClusterClient::new(channel.clone());
    let mut api = PipelinesClient::new(channel);
    let running: Running = Arc::default();
    let mut definitions = Definitions::default();
    let register = v1::RegisterRequest {
        worker_id: id.clone(),
        roles: config.roles.clone(),
        capacity: config.capacity,
        metrics_addr: worker
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        hostname: hostname(),
    };
    let mut announced = false;
    let mut plan = Plan::default();
    let mut assigned = v1::Assignment::default();
    'session: while !shutdown.is_cancelled() {
        let lease = match tokio::time::timeout(
            Duration::from_secs(5),
            client.register(register.clone()),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                warn!(error = %e.message(), "cannot register with the coordinator; retrying (current units keep running)");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                warn!("coordinator did not answer; retrying (current units keep running)");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = match client
            .watch_assignments(v1::WorkerId {
                worker_id: id.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => {
                warn!(error = %e.message(), "cannot watch the assignment; retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        if !announced {
            info!(worker = %id, coordinator = %config.coordinator, "joined the cluster");
            announced = true;
        }
        let session = shutdown.child_token();
        let beat = tokio::spawn(heartbeat(
            client.clone(),
            id.clone(),
            Duration::from_millis(lease.heartbeat_interval_ms.max(100)),
            running.clone(),
            session.clone(),
        ));
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = session.cancelled() => break, // the heartbeat lost the coordinator
                // A newer assignment comes first: the units of this plan may be gone (a
                // deleted pipeline's units stop on their own, and restarting them would only
                // wait on fences that will not be granted).
                _ = retry.tick() => match stream.next().now_or_never() {
                    Some(n) => n,
                    None => {
                        // A unit that could not start (its snapshot unreadable for a moment,
                        // its definition not fetched yet, say) or stopped is tried again,
                        // without waiting for the next assignment.
                        if !complete(&plan, &assigned) {
                            plan = definitions.plan(&mut api, &assigned).await;
                        }
                        if !worker.runs(&plan) {
                            if let Err(e) = worker.apply(plan.clone()).await {
                                warn!(error = %e, "cannot apply the assignment");
                            }
                            report(&running, &worker);
                        }
                        continue;
                    }
                },
                n = stream.next() => n,
            };
            match next {
                Some(Ok(assignment)) => {
                    plan = definitions.plan(&mut api, &assignment).await;
                    assigned = assignment;
                    if let Err(e) = worker.apply(plan.clone()).await {
                        warn!(error = %e, "cannot apply the assignment");
                    }
                    report(&running, &worker);
                }
                Some(Err(e)) => {
                    warn!(error = %e.message(), "assignment stream failed; reconnecting");
                    break;
                }
                None => {
                    warn!("coordinator closed the assignment stream; reconnecting");
                    break;
                }
            }
        }
        session.cancel();
        let _ = beat.await;
        if shutdown.is_cancelled() {
            break 'session;
        }
        pause(&shutdown, Duration::from_millis(500)).await;
    }
    worker.stop().await;
    // Units were committed and snapshotted above: let them move now instead of after the
    // lease.
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        client.leave(v1::WorkerId { worker_id: id }),
    )
    .await;
    Ok(())
}

/// What the worker runs, as the heartbeat reports it; a change is reported at once, so the
/// coordinator sees a rollout as it happens.
#[derive(Default)]
struct Reported {
    units: std::sync::Mutex<Vec<v1::Unit>>,
    changed: tokio::sync::Notify,
}

type Running = Arc<Reported>;

fn report(running: &Running, worker: &Worker) {
    let units = worker
        .running()
        .into_iter()
        .map(|a| v1::Unit {
            pipeline: a.unit.pipeline.clone(),
            stage: a.unit.stage.name().to_string(),
            partition: a.unit.partition,
            sink: match &a.unit.stage {
                anom_pipeline::unit::UnitStage::Sink(s) => s.clone(),
                _ => String::new(),
            },
            version: a.version,
            ..Default::default()
        })
        .collect();
    let mut reported = running.units.lock().unwrap();
    if *reported != units {
        *reported = units;
        running.changed.notify_one();
    }
}

async fn heartbeat(
    mut client: ClusterClient<Channel>,
    id: String,
    every: Duration,
    running: Running,
    session: CancellationToken,
) {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = session.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = running.changed.notified() => {}
        }
        let units = running.units.lock().unwrap().clone();
        let beat = client.heartbeat(v1::HeartbeatRequest {
            worker_id: id.clone(),
            running_units: units.len() as u32,
            running: units,
        });
        match tokio::time::timeout(every * 2, beat).await {
            Ok(Ok(r)) if r.get_ref().known => failures = 0,
            Ok(Ok(_)) => {
                warn!("the coordinator does not know this worker; registering again");
                session.cancel();
                return;
            }
            _ => {
                failures += 1;
                if failures >= 3 {
                    warn!("coordinator unreachable; reconnecting (current units keep running)");
                    session.cancel();
                    return;
                }
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// This machine's name: the default worker id (a StatefulSet pod's name).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

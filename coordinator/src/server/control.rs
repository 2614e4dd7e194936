//! The control state every gRPC call works on: pipelines and their versions, workers and
//! their leases, and who owns which unit at which epoch. One lock guards it all; every change
//! is written to sled (and unit owners to the NATS KV bucket workers fence on) before anyone
//! is told about it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anom_pipeline::unit::{self, UnitId, UnitStage};
use anom_pipeline::Pipeline;
use anom_proto::v1;
use anom_runtime::fence::Owner;
use async_nats::jetstream::kv;
use tokio::sync::{watch, Mutex, MutexGuard};
use tracing::{info, warn};

use super::assign::{spread, Slot};
use super::metrics::CoordinatorMetrics;
use super::store::{Counters, OwnerRecord, PipelineRecord, Store, StoreError, WorkerRecord};

/// A worker as the coordinator knows it.
pub struct Member {
    pub record: WorkerRecord,
    pub lease_until: Instant,
    pub last_heartbeat_ms: i64,
    pub running_units: u32,
    /// What its last heartbeat said it runs, with versions.
    pub running: Vec<v1::Unit>,
}

impl Member {
    pub fn alive(&self, now: Instant) -> bool {
        self.lease_until > now
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub worker: String,
    pub epoch: u64,
}

pub struct State {
    pub pipelines: BTreeMap<String, PipelineRecord>,
    /// The current version of every pipeline that is not deleted, compiled.
    pub compiled: HashMap<String, Arc<Pipeline>>,
    pub workers: BTreeMap<String, Member>,
    pub owners: BTreeMap<UnitId, Owned>,
    pub counters: Counters,
    /// Units no live worker can run.
    pub unassigned: Vec<UnitId>,
    /// A rebalance could not write every owner record; try again.
    pub dirty: bool,
}

impl State {
    /// Every unit that should run: all units of active pipelines, plus the cluster-wide
    /// unrouted watcher.
    pub fn wanted_units(&self) -> Vec<UnitId> {
        let mut units = vec![UnitId::unrouted()];
        for (name, record) in &self.pipelines {
            if record.paused || record.deleted {
                continue;
            }
            if let Some(p) = self.compiled.get(name) {
                units.extend(unit::units(p));
            }
        }
        units
    }

    pub fn current_version(&self, pipeline: &str) -> u32 {
        self.pipelines
            .get(pipeline)
            .map_or(0, |p| p.current().version)
    }

    /// The versions other than the current one that `stage` units of `pipeline` run at, as
    /// their owners report (0: an owner that has not reported the unit running yet). Empty
    /// when every assigned unit runs the current version. Units nobody runs do not count
    /// (what they will read waits for an owner, who starts at the current version), nor do
    /// workers too old to report versions.
    pub fn behind(&self, pipeline: &str, stage: &str) -> Vec<u32> {
        let now = std::time::Instant::now();
        let current = self.current_version(pipeline);
        let mut older: Vec<u32> = self
            .owners
            .iter()
            .filter(|(u, _)| u.pipeline == pipeline && u.stage.name() == stage)
            .filter_map(|(u, o)| {
                let m = self.workers.get(&o.worker).filter(|m| m.alive(now))?;
                if m.running.is_empty() && m.running_units > 0 {
                    return None;
                }
                let version = m
                    .running
                    .iter()
                    .find(|r| reports(r, u))
                    .map_or(0, |r| r.version);
                (version != current).then_some(version)
            })
            .collect();
        older.sort_unstable();
        older.dedup();
        older
    }

    /// What `worker` should run now.
    pub fn assignment_of(&self, worker: &str) -> v1::Assignment {
        let units: Vec<v1::Unit> = self
            .owners
            .iter()
            .filter(|(_, o)| o.worker == worker)
            .map(|(u, o)| self.unit_message(u, Some(o)))
            .collect();
        let mut names: Vec<&str> = units.iter().map(|u| u.pipeline.as_str()).collect();
        names.sort();
        names.dedup();
        // By reference: the definitions themselves could outgrow a gRPC message.
        let versions = names
            .into_iter()
            .filter_map(|n| self.pipelines.get(n))
            .map(|p| v1::VersionRef {
                name: p.name.clone(),
                version: p.current().version,
                digest: p.current().digest.clone(),
            })
            .collect();
        v1::Assignment {
            generation: self.counters.generation,
            units,
            versions,
            known_pipelines: self
                .pipelines
                .values()
                .filter(|p| !p.deleted)
                .map(|p| p.name.clone())
                .collect(),
        }
    }

    pub fn unit_message(&self, u: &UnitId, owner: Option<&Owned>) -> v1::Unit {
        v1::Unit {
            pipeline: u.pipeline.clone(),
            stage: u.stage.name().to_string(),
            partition: u.partition,
            sink: match &u.stage {
                UnitStage::Sink(s) => s.clone(),
                _ => String::new(),
            },
            version: self.current_version(&u.pipeline),
            epoch: owner.map_or(0, |o| o.epoch),
            worker_id: owner.map_or(String::new(), |o| o.worker.clone()),
            running_version: owner
                .and_then(|o| self.workers.get(&o.worker))
                .and_then(|m| m.running.iter().find(|r| reports(r, u)))
                .map_or(0, |r| r.version),
        }
    }
}

/// Whether a worker's report of a running unit is of unit `u`.
pub fn reports(r: &v1::Unit, u: &UnitId) -> bool {
    r.pipeline == u.pipeline
        && r.partition == u.partition
        && r.stage == u.stage.name()
        && match &u.stage {
            UnitStage::Sink(s) => r.sink == *s,
            _ => true,
        }
}

/// The shared control state and what it talks to.
pub struct Control {
    state: Mutex<State>,
    pub store: Store,
    pub js: async_nats::jetstream::Context,
    owners_kv: kv::Store,
    changed: watch::Sender<u64>,
    pub lease_ttl: Duration,
    pub metrics: CoordinatorMetrics,
    pub streams: anom_runtime::streams::StreamOptions,
}

impl Control {
    /// Loads the stored state. Workers known before a restart get one lease period to come
    /// back before their units move.
    pub async fn load(
        store: Store,
        js: async_nats::jetstream::Context,
        lease_ttl: Duration,
        streams: anom_runtime::streams::StreamOptions,
    ) -> anyhow::Result<Arc<Control>> {
        let loaded = store.load()?;
        let owners_kv = anom_runtime::fence::owners_bucket(&js, streams.replicas)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the unit owners bucket: {e}"))?;
        let mut compiled = HashMap::new();
        for (name, p) in &loaded.pipelines {
            if p.deleted {
                continue;
            }
            match Pipeline::from_yaml(&p.current().yaml) {
                Ok(c) => {
                    compiled.insert(name.clone(), Arc::new(c));
                }
                Err(e) => {
                    warn!(pipeline = %name, error = %e, "a stored pipeline no longer compiles; not running it")
                }
            }
        }
        let now = Instant::now();
        let workers = loaded
            .workers
            .into_values()
            .map(|record| {
                (
                    record.id.clone(),
                    Member {
                        record,
                        lease_until: now + lease_ttl,
                        last_heartbeat_ms: 0,
                        running_units: 0,
                        running: Vec::new(),
                    },
                )
            })
            .collect();
        let owners = loaded
            .owners
            .into_iter()
            .filter_map(|o| {
                let stage = UnitStage::parse(&o.stage, &o.sink)?;
                Some((
                    UnitId {
                        pipeline: o.pipeline,
                        stage,
                        partition: o.partition,
                    },
                    Owned {
                        worker: o.worker,
                        epoch: o.epoch,
                    },
                ))
            })
            .collect();
        let generation = loaded.counters.generation;
        let state = State {
            pipelines: loaded.pipelines,
            compiled,
            workers,
            owners,
            counters: loaded.counters,
            unassigned: Vec::new(),
            dirty: false,
        };
        let control = Arc::new(Control {
            state: Mutex::new(state),
            store,
            js,
            owners_kv,
            changed: watch::channel(generation).0,
            lease_ttl,
            metrics: CoordinatorMetrics::new(),
            streams,
        });
        // Pipelines applied before a restart need their streams (a new NATS cluster, say).
        {
            let state = control.state.lock().await;
            let pipelines: Vec<Pipeline> = state.compiled.values().map(|p| (**p).clone()).collect();
            anom_runtime::streams::ensure(&control.js, &pipelines, &control.streams).await?;
            control.observe(&state);
        }
        Ok(control)
    }

    pub async fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().await
    }

    /// Resolves when the assignment changed after `seen`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Recomputes who runs what, records new owners (NATS KV, then sled), and tells every
    /// watcher. `force` announces a new generation even if no owner changed (a new pipeline
    /// version changes what units run).
    pub async fn rebalance(&self, state: &mut State, force: bool, why: &str) {
        let now = Instant::now();
        let slots: Vec<Slot> = state
            .workers
            .values()
            .filter(|m| m.alive(now))
            .map(|m| Slot {
                id: m.record.id.clone(),
                roles: m.record.roles.clone(),
                capacity: m.record.capacity,
            })
            .collect();
        let wanted = state.wanted_units();
        let current: BTreeMap<UnitId, String> = state
            .owners
            .iter()
            .map(|(u, o)| (u.clone(), o.worker.clone()))
            .collect();
        let next = spread(&wanted, &slots, &current);
        let mut changed = 0usize;
        let mut failed = false;
        // Units leaving the plan (paused, deleted, no able worker): their records go, which
        // stops the old owner at once.
        let gone: Vec<UnitId> = state
            .owners
            .keys()
            .filter(|u| !next.contains_key(*u))
            .cloned()
            .collect();
        for u in gone {
            match self.owners_kv.purge(u.key()).await {
                Ok(()) => {
                    state.owners.remove(&u);
                    changed += 1;
                }
                Err(e) => {
                    warn!(unit = %u, error = %e, "cannot remove the unit's owner record");
                    failed = true;
                }
            }
        }
        for (u, worker) in &next {
            if state.owners.get(u).is_some_and(|o| &o.worker == worker) {
                continue;
            }
            let epoch = state.counters.epoch + 1;
            let record = serde_json::to_vec(&Owner {
                worker: worker.clone(),
                epoch,
            })
            .expect("owner serializes");
            match self.owners_kv.put(u.key(), record.into()).await {
                Ok(_) => {
                    state.counters.epoch = epoch;
                    state.owners.insert(
                        u.clone(),
                        Owned {
                            worker: worker.clone(),
                            epoch,
                        },
                    );
                    changed += 1;
                }
                Err(e) => {
                    warn!(unit = %u, error = %e, "cannot write the unit's owner record; will retry");
                    failed = true;
                }
            }
        }
        state.dirty = failed;
        state.unassigned = wanted
            .into_iter()
            .filter(|u| !next.contains_key(u))
            .collect();
        if changed > 0 || force {
            state.counters.generation += 1;
            self.metrics.rebalances.inc();
            if let Err(e) = self.persist_owners(state).await {
                warn!(error = %e, "cannot store the assignment");
            }
            info!(
                why,
                moved = changed,
                generation = state.counters.generation,
                workers = slots.len(),
                units = state.owners.len(),
                unassigned = state.unassigned.len(),
                "assignment changed"
            );
            self.changed.send_replace(state.counters.generation);
        }
        self.observe(state);
    }

    async fn persist_owners(&self, state: &State) -> Result<(), StoreError> {
        let owners: Vec<(String, OwnerRecord)> = state
            .owners
            .iter()
            .map(|(u, o)| {
                (
                    u.key(),
                    OwnerRecord {
                        pipeline: u.pipeline.clone(),
                        stage: u.stage.name().to_string(),
                        sink: match &u.stage {
                            UnitStage::Sink(s) => s.clone(),
                            _ => String::new(),
                        },
                        partition: u.partition,
                        worker: o.worker.clone(),
                        epoch: o.epoch,
                    },
                )
            })
            .collect();
        self.store.put_owners(&owners, &state.counters).await
    }

    /// Updates the gauges.
    pub fn observe(&self, state: &State) {
        let now = Instant::now();
        let alive = state.workers.values().filter(|m| m.alive(now)).count();
        self.metrics.set_workers(alive, state.workers.len() - alive);
        self.metrics
            .set_units(state.owners.len(), state.unassigned.len());
        self.metrics
            .pipelines
            .set(state.pipelines.values().filter(|p| !p.deleted).count() as i64);
        self.metrics
            .generation
            .set(state.counters.generation as i64);
    }

    /// Every `tick`: moves the units of workers whose lease ran out, and retries failed
    /// owner writes. Runs until `shutdown`.
    pub async fn watch_leases(
        self: Arc<Self>,
        tick: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let mut state = self.lock().await;
            let now = Instant::now();
            let expired: Vec<String> = state
                .workers
                .values()
                .filter(|m| !m.alive(now))
                .map(|m| m.record.id.clone())
                .collect();
            if !expired.is_empty() {
                // Forgotten, durably: a coordinator restarted later must not count them alive
                // for a grace period. One that comes back registers again.
                for id in &expired {
                    state.workers.remove(id);
                    if let Err(e) = self.store.remove_worker(id).await {
                        warn!(worker = %id, error = %e, "cannot forget the worker");
                    }
                }
                info!(workers = ?expired, "lease expired");
                self.rebalance(&mut state, false, "lease expired").await;
            } else if state.dirty {
                self.rebalance(&mut state, false, "retry").await;
            } else {
                self.observe(&state);
            }
        }
    }
}

//! The coordinator's Prometheus metrics (`anom_coordinator_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

pub struct CoordinatorMetrics {
    registry: Registry,
    pub workers: Family<StateLabels, Gauge>,
    pub units: Family<StateLabels, Gauge>,
    pub pipelines: Gauge,
    pub generation: Gauge,
    pub rebalances: Counter,
    pub applies: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    pub fn new() -> CoordinatorMetrics {
        let mut registry = Registry::with_prefix("anom_coordinator");
        let workers = Family::default();
        registry.register(
            "workers",
            "Registered workers, by lease state (live, expired)",
            workers.clone(),
        );
        let units = Family::default();
        registry.register(
            "units",
            "Units of work, assigned or with no worker able to run them",
            units.clone(),
        );
        let pipelines = Gauge::default();
        registry.register("pipelines", "Pipelines not deleted", pipelines.clone());
        let generation = Gauge::default();
        registry.register(
            "assignment_generation",
            "Generation of the current assignment; increases with every change",
            generation.clone(),
        );
        let rebalances = Counter::default();
        registry.register(
            "rebalances",
            "Assignment changes announced to workers",
            rebalances.clone(),
        );
        let applies = Counter::default();
        registry.register(
            "pipeline_versions_applied",
            "New pipeline versions stored",
            applies.clone(),
        );
        CoordinatorMetrics {
            registry,
            workers,
            units,
            pipelines,
            generation,
            rebalances,
            applies,
        }
    }

    pub fn set_workers(&self, live: usize, expired: usize) {
        for (state, n) in [("live", live), ("expired", expired)] {
            self.workers
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    pub fn set_units(&self, assigned: usize, unassigned: usize) {
        for (state, n) in [("assigned", assigned), ("unassigned", unassigned)] {
            self.units
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

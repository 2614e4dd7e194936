//! The stages of the data plane, and the one registry that builds them for a pipeline. What
//! feeds what is the pipeline's [`Topology`]; each stage here only turns its input into its
//! outputs. Validate also computes the fields UDF plugins derive (`derive:`, UDF calls in
//! conditions, `kind: udf` detectors), in batches, before anything is partitioned downstream.

pub mod alert;
pub mod rules;
pub mod score;
pub mod unrouted;
pub mod validate;
pub mod window;

use std::sync::Arc;

use crate::model_registry::ModelRegistry;
use anom_pipeline::topology::Topology;
use anom_pipeline::unit::{UnitId, UnitStage};
use anom_pipeline::Pipeline;
use anom_runtime::checkpoint::{CheckpointError, StateStore};
use anom_runtime::fence::Fence;
use anom_runtime::metrics::Metrics;
use anom_runtime::timebase::Timebase;
use anom_runtime::{Binding, SnapshotPolicy, Stage, StateBinding};

/// One stage to run: where it reads, what it is, and where its state lives (keyed stages).
pub struct Planned {
    pub binding: Binding,
    pub stage: Box<dyn Stage>,
    pub state: Option<StateBinding>,
}

/// What a unit starts from besides its sled state: where its snapshots go (keyed stages
/// under a coordinator) and, for an alert stage, its partition's stored alerts.
#[derive(Default)]
pub struct Prior {
    pub snapshots: Option<SnapshotPolicy>,
    pub alerts: Vec<crate::alerting::record::Alert>,
}

/// The consumer (and state tree) base name of a unit: `<pipeline>-<stage>[-<partition>]`.
pub fn durable_name(unit: &UnitId) -> String {
    match &unit.stage {
        UnitStage::Validate => format!("{}-validate", unit.pipeline),
        UnitStage::Sink(name) => format!("{}-sink-{name}", unit.pipeline),
        UnitStage::Unrouted => "unrouted".to_string(),
        stage => format!("{}-{}-{}", unit.pipeline, stage.name(), unit.partition),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    State(#[from] CheckpointError),
    #[error(transparent)]
    Score(#[from] score::ScoreError),
}

/// Where the stage of one unit reads, as the pipeline's [`Topology`] says (validate, window,
/// score, rules or alert; `None` for sinks and the unrouted watcher, which the worker runs).
pub fn binding(pipeline: &Pipeline, unit: &UnitId, fence: Fence) -> Option<Binding> {
    let input = Topology::of(pipeline)
        .input(&unit.stage, unit.partition)?
        .clone();
    Some(Binding {
        pipeline: pipeline.name.clone(),
        stage: unit.stage.name(),
        stream: input.stream,
        durable: durable_name(unit),
        filter_subject: input.subject,
        fence,
    })
}

/// Builds the stage of one unit of `pipeline` (validate, window, score, rules or alert; sinks
/// and the unrouted watcher are run by the worker). A keyed stage is restored from `db`,
/// which the caller has already brought up to date with any newer snapshot; an alert stage
/// starts from the alerts of its partition (`prior.alerts`).
pub fn build_unit(
    pipeline: &Arc<Pipeline>,
    unit: &UnitId,
    fence: Fence,
    metrics: &Arc<Metrics>,
    db: &sled::Db,
    models: &ModelRegistry,
    prior: Prior,
) -> Result<Option<Planned>, BuildError> {
    let Prior {
        snapshots,
        alerts: stored_alerts,
    } = prior;
    let Some(binding) = binding(pipeline, unit, fence) else {
        return Ok(None);
    };
    let k = unit.partition;
    let durable = binding.durable.clone();
    let keyed_state = |restored_seq: u64, store: StateStore| StateBinding {
        store,
        interval: pipeline.state.checkpoint_interval,
        restored_seq,
        snapshots: snapshots.clone().map(|p| SnapshotPolicy {
            name: durable.clone(),
            ..p
        }),
    };
    Ok(Some(match &unit.stage {
        UnitStage::Validate => Planned {
            binding,
            stage: Box::new(validate::Validate::new(pipeline.clone())),
            state: None,
        },
        UnitStage::Window => {
            let store = StateStore::open(db, &durable)?;
            let late = metrics.stage(&pipeline.name, window::NAME).late_events;
            let (stage, restored_seq) =
                window::WindowStage::restore(pipeline.clone(), k, &store, late, Timebase::Wall)?;
            Planned {
                binding,
                stage: Box::new(stage),
                state: Some(keyed_state(restored_seq, store)),
            }
        }
        UnitStage::Score => {
            let store = StateStore::open(db, &durable)?;
            let (stage, restored_seq) =
                score::ScoreStage::restore(pipeline.clone(), k, &store, models, metrics)?;
            Planned {
                binding,
                stage: Box::new(stage),
                state: Some(keyed_state(restored_seq, store)),
            }
        }
        UnitStage::Rules => Planned {
            binding,
            stage: Box::new(rules::Rules::new(pipeline.clone())),
            state: None,
        },
        UnitStage::Alert => Planned {
            binding,
            stage: Box::new(alert::AlertStage::new(
                pipeline.clone(),
                metrics,
                stored_alerts,
                Timebase::Wall,
            )),
            state: None,
        },
        UnitStage::Sink(_) | UnitStage::Unrouted => return Ok(None),
    }))
}

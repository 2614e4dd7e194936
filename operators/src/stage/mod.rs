//! The stages of the data plane, and the one registry that builds them for a pipeline. What
//! feeds what is the pipeline's [`Topology`]; each stage here only turns its input into its
//! outputs. Validate also computes the fields UDF plugins derive (`derive:`, UDF calls in
//! conditions, `kind: udf` detectors), in batches, before anything is partitioned downstream.

pub mod alert;
pub mod chain;
pub mod rules;
pub mod score;
pub mod unrouted;
pub mod validate;
pub mod window;

use std::sync::Arc;

use crate::model_registry::ModelRegistry;
use anom_pipeline::layout::Layouts;
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
    /// Where a stage without state keeps its output marks (see `anom_runtime::replay`).
    pub log: Option<StateStore>,
}

/// What a unit starts from besides its sled state: where its snapshots go (keyed stages
/// under a coordinator) and, for an alert stage, its partition's stored alerts.
#[derive(Default)]
pub struct Prior {
    pub snapshots: Option<SnapshotPolicy>,
    pub alerts: Vec<crate::alerting::record::Alert>,
    /// The layouts of the pipeline's other versions: what lets the unit read the envelopes
    /// they left in its input.
    pub layouts: Layouts,
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
    let topology = Topology::of(pipeline);
    let input = topology.input(&unit.stage, unit.partition)?.clone();
    // A fused unit takes over from the per-stage unit that read its input before.
    let predecessors = match (&unit.stage, topology.chain.first()) {
        (UnitStage::Keyed, Some(first)) => vec![durable_name(&UnitId {
            stage: first.clone(),
            ..unit.clone()
        })],
        _ => Vec::new(),
    };
    // Validate is the only writer of its pipeline's events into the valid stream: chained,
    // their order survives a failover (`units: ordered: true`).
    let ordered = (unit.stage == UnitStage::Validate && pipeline.units.ordered).then(|| {
        anom_runtime::Ordered {
            stream: pipeline.subjects.valid_stream.clone(),
            subject_prefix: pipeline.subjects.valid_prefix(),
        }
    });
    Some(Binding {
        pipeline: pipeline.name.clone(),
        stage: unit.stage.name(),
        stream: input.stream,
        durable: durable_name(unit),
        filter_subject: input.subject,
        fence,
        predecessors,
        ordered,
    })
}

/// The sections of a fused unit's tree: each keyed stage's state under its own prefix.
const WINDOW_SECTION: &[u8] = b"w/";
const SCORE_SECTION: &[u8] = b"s/";

/// The stages of partition `k` of a fused pipeline as one [`chain::Chain`], restored from
/// `store` (the unit's tree); also the sequence that state reflects. A tree still empty
/// takes the state of the per-stage window and score units the pipeline ran before, once.
/// From `prior`: the partition's stored alerts and the layouts of other versions (the chain's
/// input may hold their envelopes); its snapshots are the caller's.
// The unit's parts as build_unit has them; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn build_chain(
    pipeline: &Arc<Pipeline>,
    k: u32,
    store: &StateStore,
    db: &sled::Db,
    models: &ModelRegistry,
    metrics: &Arc<Metrics>,
    prior: Prior,
    timebase: Timebase,
) -> Result<(chain::Chain, u64), BuildError> {
    let Prior {
        mut alerts,
        layouts,
        ..
    } = prior;
    if store.is_empty() {
        adopt_per_stage_state(pipeline, k, store, db)?;
    }
    let topology = Topology::of(pipeline);
    let mut links = Vec::new();
    for stage in &topology.chain {
        links.push(match stage {
            UnitStage::Window => {
                let late = metrics.stage(&pipeline.name, window::NAME).late_events;
                let section = store.section(WINDOW_SECTION);
                let (w, _) = window::WindowStage::restore(
                    pipeline.clone(),
                    k,
                    &section,
                    late,
                    timebase.clone(),
                )?;
                let w = w.reading(layouts.clone());
                chain::Link::new(stage.clone(), Box::new(w), Some(WINDOW_SECTION))
            }
            UnitStage::Score => {
                let section = store.section(SCORE_SECTION);
                let (s, _) =
                    score::ScoreStage::restore(pipeline.clone(), k, &section, models, metrics)?;
                let s = s.reading(layouts.clone());
                chain::Link::new(stage.clone(), Box::new(s), Some(SCORE_SECTION))
            }
            UnitStage::Rules => chain::Link::new(
                stage.clone(),
                Box::new(rules::Rules::new(pipeline.clone()).reading(layouts.clone())),
                None,
            ),
            UnitStage::Alert => chain::Link::new(
                stage.clone(),
                Box::new(
                    alert::AlertStage::with_positions(
                        pipeline.clone(),
                        metrics,
                        std::mem::take(&mut alerts),
                        timebase.clone(),
                        true,
                    )
                    .reading(layouts.clone()),
                ),
                None,
            ),
            _ => continue,
        });
    }
    let seq = store.last_seq()?;
    Ok((chain::Chain::new(pipeline, k, links, seq), seq))
}

/// Copies the trees of partition `k`'s per-stage window and score units into a fused unit's
/// empty tree, at the window's sequence (the fused unit reads the window's input). The
/// score's state is a little behind (its input lagged the window's); it is what there is.
fn adopt_per_stage_state(
    pipeline: &Pipeline,
    k: u32,
    store: &StateStore,
    db: &sled::Db,
) -> Result<(), CheckpointError> {
    let tree = |stage: UnitStage| -> Result<Option<StateStore>, CheckpointError> {
        let name = durable_name(&UnitId {
            pipeline: pipeline.name.clone(),
            stage,
            partition: k,
        });
        let exists = db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes());
        Ok(if exists {
            Some(StateStore::open(db, &name)?)
        } else {
            None
        })
    };
    let window = tree(UnitStage::Window)?;
    let seq = match &window {
        Some(w) => w.last_seq()?,
        None => 0,
    };
    if seq == 0 {
        return Ok(());
    }
    let mut parts = vec![(WINDOW_SECTION, window.expect("checked above"))];
    if let Some(score) = tree(UnitStage::Score)? {
        parts.push((SCORE_SECTION, score));
    }
    store.adopt(&parts, seq)
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
        layouts,
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
    // Not moved with the unit: a unit taken over on another worker replays from a recent
    // snapshot or ack floor, well within the duplicate window.
    let marks_log = || StateStore::open(db, &format!("{durable}-marks"));
    Ok(Some(match &unit.stage {
        UnitStage::Validate => Planned {
            binding,
            stage: Box::new(validate::Validate::new(pipeline.clone())),
            state: None,
            log: Some(marks_log()?),
        },
        UnitStage::Window => {
            let store = StateStore::open(db, &durable)?;
            let late = metrics.stage(&pipeline.name, window::NAME).late_events;
            let (stage, restored_seq) =
                window::WindowStage::restore(pipeline.clone(), k, &store, late, Timebase::Wall)?;
            Planned {
                binding,
                stage: Box::new(stage.reading(layouts)),
                state: Some(keyed_state(restored_seq, store)),
                log: None,
            }
        }
        UnitStage::Score => {
            let store = StateStore::open(db, &durable)?;
            let (stage, restored_seq) =
                score::ScoreStage::restore(pipeline.clone(), k, &store, models, metrics)?;
            Planned {
                binding,
                stage: Box::new(stage.reading(layouts)),
                state: Some(keyed_state(restored_seq, store)),
                log: None,
            }
        }
        UnitStage::Rules => Planned {
            binding,
            stage: Box::new(rules::Rules::new(pipeline.clone()).reading(layouts)),
            state: None,
            log: Some(marks_log()?),
        },
        UnitStage::Alert => Planned {
            binding,
            stage: Box::new(
                alert::AlertStage::new(pipeline.clone(), metrics, stored_alerts, Timebase::Wall)
                    .reading(layouts),
            ),
            state: None,
            log: Some(marks_log()?),
        },
        UnitStage::Keyed => {
            let store = StateStore::open(db, &durable)?;
            let (stage, restored_seq) = build_chain(
                pipeline,
                k,
                &store,
                db,
                models,
                metrics,
                Prior {
                    snapshots: None,
                    alerts: stored_alerts,
                    layouts,
                },
                Timebase::Wall,
            )?;
            Planned {
                binding,
                stage: Box::new(stage),
                state: Some(keyed_state(restored_seq, store)),
                log: None,
            }
        }
        UnitStage::Sink(_) | UnitStage::Unrouted => return Ok(None),
    }))
}

//! The stages of the data plane, and the one registry that builds them for a pipeline.
//!
//! ```text
//! anom.<p>.in ─[validate]→ anom.<p>.valid.<k> ─[window]→ anom.<p>.enriched.<k> ─[rules]→ anom.<p>.detections.<k> ─[alert]→ anom.<p>.alerts ─[sinks]
//!      └──────────── refused inputs, with reasons ───────────→ anom.<p>.dlq
//! ```
//! The window stage runs only for pipelines with aggregates or absence rules; otherwise
//! rules reads `anom.<p>.valid.<k>` directly.

pub mod alert;
pub mod rules;
pub mod unrouted;
pub mod validate;
pub mod window;

use std::sync::Arc;

use crate::checkpoint::{CheckpointError, StateStore};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::runtime::{Binding, Stage, StateBinding};
use crate::subjects::INGEST_STREAM;

/// One stage to run: where it reads, what it is, and where its state lives (keyed stages).
pub struct Planned {
    pub binding: Binding,
    pub stage: Box<dyn Stage>,
    pub state: Option<StateBinding>,
}

/// Every stage a pipeline runs: validate once; per partition window (keyed pipelines only),
/// rules and alert. Keyed stages are restored from `db`.
pub fn build(
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
    db: &sled::Db,
) -> Result<Vec<Planned>, CheckpointError> {
    let s = &pipeline.subjects;
    let binding =
        |stage: &'static str, stream: &str, durable: String, filter_subject: String| Binding {
            pipeline: pipeline.name.clone(),
            stage,
            stream: stream.to_string(),
            durable,
            filter_subject,
        };
    let mut stages = vec![Planned {
        binding: binding(
            validate::NAME,
            INGEST_STREAM,
            format!("{}-validate", pipeline.name),
            s.input.clone(),
        ),
        stage: Box::new(validate::Validate::new(pipeline.clone())),
        state: None,
    }];
    for k in 0..pipeline.partitions {
        let rules_input = if pipeline.is_keyed() {
            let durable = format!("{}-window-{k}", pipeline.name);
            let store = StateStore::open(db, &durable)?;
            let late = metrics.stage(&pipeline.name, window::NAME).late_events;
            let (stage, restored_seq) =
                window::WindowStage::restore(pipeline.clone(), k, &store, late)?;
            stages.push(Planned {
                binding: binding(window::NAME, &s.valid_stream, durable, s.valid(k)),
                stage: Box::new(stage),
                state: Some(StateBinding {
                    store,
                    interval: pipeline.state.checkpoint_interval,
                    restored_seq,
                }),
            });
            (s.enriched_stream.as_str(), s.enriched(k))
        } else {
            (s.valid_stream.as_str(), s.valid(k))
        };
        stages.push(Planned {
            binding: binding(
                rules::NAME,
                rules_input.0,
                format!("{}-rules-{k}", pipeline.name),
                rules_input.1,
            ),
            stage: Box::new(rules::Rules::new(pipeline.clone())),
            state: None,
        });
        stages.push(Planned {
            binding: binding(
                alert::NAME,
                &s.detections_stream,
                format!("{}-alert-{k}", pipeline.name),
                s.detections(k),
            ),
            stage: Box::new(alert::AlertStage::new(pipeline.clone(), metrics)),
            state: None,
        });
    }
    Ok(stages)
}

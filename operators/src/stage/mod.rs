//! The stages of the data plane, and the one registry that builds them for a pipeline.
//!
//! ```text
//! anom.<p>.in ─[validate]→ anom.<p>.valid.<k> ─[rules]→ anom.<p>.detections.<k> ─[alert]→ anom.<p>.alerts ─[sinks]
//!      └──────────── refused inputs, with reasons ───────────→ anom.<p>.dlq
//! ```

pub mod alert;
pub mod rules;
pub mod unrouted;
pub mod validate;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::runtime::{Binding, Stage};
use crate::subjects::INGEST_STREAM;

/// Every (binding, stage) a pipeline runs: validate once, rules and alert per partition.
pub fn build(pipeline: &Arc<Pipeline>, metrics: &Arc<Metrics>) -> Vec<(Binding, Box<dyn Stage>)> {
    let s = &pipeline.subjects;
    let mut stages: Vec<(Binding, Box<dyn Stage>)> = vec![(
        Binding {
            pipeline: pipeline.name.clone(),
            stage: validate::NAME,
            stream: INGEST_STREAM.to_string(),
            durable: format!("{}-validate", pipeline.name),
            filter_subject: s.input.clone(),
        },
        Box::new(validate::Validate::new(pipeline.clone())),
    )];
    for k in 0..pipeline.partitions {
        stages.push((
            Binding {
                pipeline: pipeline.name.clone(),
                stage: rules::NAME,
                stream: s.valid_stream.clone(),
                durable: format!("{}-rules-{k}", pipeline.name),
                filter_subject: s.valid(k),
            },
            Box::new(rules::Rules::new(pipeline.clone())),
        ));
        stages.push((
            Binding {
                pipeline: pipeline.name.clone(),
                stage: alert::NAME,
                stream: s.detections_stream.clone(),
                durable: format!("{}-alert-{k}", pipeline.name),
                filter_subject: s.detections(k),
            },
            Box::new(alert::AlertStage::new(pipeline.clone(), metrics)),
        ));
    }
    stages
}

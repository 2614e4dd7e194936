//! rules: evaluates the pipeline's compiled rule conditions on each event and forwards the
//! events that hit at least one, with the hits appended to their envelope.

use std::sync::Arc;

use crate::envelope::{Envelope, RuleHit};
use crate::pipeline::Pipeline;
use crate::rejection::{RejectKind, Rejection};
use crate::runtime::{Emitter, Input, Stage};

pub const NAME: &str = "rules";

pub struct Rules {
    pipeline: Arc<Pipeline>,
}

impl Rules {
    pub fn new(pipeline: Arc<Pipeline>) -> Rules {
        Rules { pipeline }
    }
}

/// Decodes an envelope this pipeline version can read; its `data` is typed per the schema.
pub fn open(pipeline: &Pipeline, payload: &[u8]) -> Result<Envelope, Rejection> {
    let mut env = Envelope::decode(payload)
        .map_err(|e| Rejection::new(RejectKind::Envelope, e.to_string()))?;
    if env.meta.version != pipeline.version {
        return Err(Rejection::new(
            RejectKind::Envelope,
            format!(
                "envelope was validated by version {} of pipeline `{}`, this worker runs version {}",
                env.meta.version, pipeline.name, pipeline.version
            ),
        ));
    }
    pipeline.schema.retype(&mut env.data);
    Ok(env)
}

impl Stage for Rules {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let p = &*self.pipeline;
        let mut env = open(p, input.payload)?;
        // Rules see one row: the event's fields, then its key's aggregates (see RowScope).
        let mut row = std::mem::take(&mut env.data);
        row.extend(env.enrichment.iter().cloned());
        p.scope.retype(&mut row);
        for (i, rule) in p.rules.iter().enumerate() {
            if rule.condition().is_some_and(|c| c.matches(&row)) {
                env.analysis.hits.push(RuleHit {
                    rule: i as u32,
                    name: rule.name.clone(),
                });
            }
        }
        row.truncate(p.schema.len());
        env.data = row;
        if !env.analysis.hits.is_empty() {
            out.emit(
                p.subjects.detections(env.meta.partition),
                format!(
                    "{}:{NAME}:{}:{}",
                    p.name, env.meta.origin_seq, env.meta.origin_index
                ),
                env.encode(),
            );
        }
        Ok(())
    }
}

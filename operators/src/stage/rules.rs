//! rules: evaluates the pipeline's compiled rule conditions on each event (rules may use
//! detector scores by name), decides with the detector flags whether the event alerts
//! (`decide`), and forwards the events that do with their hits and verdict.

use std::sync::Arc;

use crate::envelope::{DetectorScore, Envelope, RuleHit, Verdict};
use crate::pipeline::{AlertOn, Pipeline};
use crate::rejection::{RejectKind, Rejection};
use crate::runtime::{Emitter, Input, Stage};
use crate::value::Value;

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
        // Rules see one row: the event's fields, its key's aggregates, then the detectors'
        // scores (null for a detector that did not score it; see RowScope).
        let mut row = std::mem::take(&mut env.data);
        row.extend(env.enrichment.iter().cloned());
        if p.has_detectors() {
            row.resize(p.enriched_width(), Value::Null);
            row.resize(p.enriched_width() + p.detectors.len(), Value::Null);
            for s in &env.analysis.scores {
                if let Some(v) = row.get_mut(p.enriched_width() + s.detector as usize) {
                    *v = Value::Float(s.score);
                }
            }
        }
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
        env.analysis.verdict = decide(p, &env);
        if env.analysis.verdict.is_some() {
            out.emit(
                p.subjects.detections(env.meta.partition),
                env.meta.output_id(NAME),
                env.encode(),
            );
        }
        Ok(())
    }
}

/// The decision step: whether the event's rule hits and detector flags raise alerts (as the
/// pipeline's `decision.alert_on` says), with the highest severity among the causes that do
/// and every cause in words.
pub fn decide(p: &Pipeline, env: &Envelope) -> Option<Verdict> {
    let hits = &env.analysis.hits;
    let flagged: Vec<&DetectorScore> = env.analysis.scores.iter().filter(|s| s.flagged).collect();
    let alerts = match p.alert_on {
        AlertOn::Any => !hits.is_empty() || !flagged.is_empty(),
        AlertOn::Rules => !hits.is_empty(),
        AlertOn::Detectors => !flagged.is_empty(),
        AlertOn::Both => !hits.is_empty() && !flagged.is_empty(),
    };
    if !alerts {
        return None;
    }
    let mut severity = None;
    let mut causes = Vec::new();
    if p.alert_on.rules_alert() {
        for hit in hits {
            if let Some(rule) = p.rules.get(hit.rule as usize) {
                severity = severity.max(Some(rule.severity));
                causes.push(format!("rule {} (`{}`)", rule.name, rule.when));
            }
        }
    }
    if p.alert_on.detectors_alert() {
        for s in &flagged {
            if let Some(d) = p.detectors.get(s.detector as usize) {
                severity = severity.max(Some(d.severity));
                causes.push(format!("{} ({}): {}", d.name, d.kind_name(), s.explanation));
            }
        }
    }
    Some(Verdict {
        severity: severity.unwrap_or_default(),
        explanation: causes.join("; "),
    })
}

//! rules: evaluates the pipeline's compiled rule conditions on each event (rules may use
//! detector scores by name), decides with the detector flags whether the event alerts
//! (`decide`), and forwards the events that do with their hits and verdict, plus the events
//! that end a condition (a rule that held on the key's previous event and no longer does, a
//! detector back under its threshold): the alert stage resolves alerts on those.

use std::collections::HashMap;
use std::sync::Arc;

use crate::envelope::{DetectorScore, Envelope, RuleHit, Verdict};
use crate::pipeline::{AlertOn, Pipeline};
use crate::rejection::{RejectKind, Rejection};
use crate::runtime::{Emitter, Input, Stage};
use crate::value::Value;

pub const NAME: &str = "rules";

pub struct Rules {
    pipeline: Arc<Pipeline>,
    /// Per alert subject (the key and the pipeline's alert labels, hashed): which causes held
    /// on its last event (bit i: rule i; then one bit per detector). A subject not here is
    /// unknown (this process just started), so its next event is forwarded in case it ends
    /// an alert raised before.
    active: HashMap<u64, u128>,
}

impl Rules {
    pub fn new(pipeline: Arc<Pipeline>) -> Rules {
        Rules {
            pipeline,
            active: HashMap::new(),
        }
    }
}

/// The causes that hold on an event, as bits (see [`Rules`]); causes past the 128th are not
/// tracked (their alerts still resolve by `resolve_timeout` or by hand).
pub(crate) fn active_causes(p: &Pipeline, env: &Envelope) -> u128 {
    if p.alert_on == AlertOn::Both && env.analysis.verdict.is_none() {
        return 0;
    }
    let bit = |i: usize| if i < 128 { 1u128 << i } else { 0 };
    let mut bits = 0;
    if p.alert_on.rules_alert() {
        for h in &env.analysis.hits {
            bits |= bit(h.rule as usize);
        }
    }
    if p.alert_on.detectors_alert() {
        for s in &env.analysis.scores {
            if detector_holds(p, s) {
                bits |= bit(p.rules.len() + s.detector as usize);
            }
        }
    }
    bits
}

/// Whether a detector's reading holds: it flagged the event, or the score is still across
/// its threshold.
pub(crate) fn detector_holds(p: &Pipeline, s: &DetectorScore) -> bool {
    s.flagged
        || p.detectors
            .get(s.detector as usize)
            .is_some_and(|d| d.flags(s.score))
}

/// The key and the values of the pipeline's alert labels, hashed.
fn subject(p: &Pipeline, key: &str, data: &[Value]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key.as_bytes());
    for (_, index) in &p.alerting.labels {
        h.update(&[0x1f]);
        if let Some(v) = data.get(*index).filter(|v| !v.is_null()) {
            h.update(v.to_string().as_bytes());
        }
    }
    h.digest()
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
        let holds = active_causes(p, &env);
        let before = self
            .active
            .insert(subject(p, &env.meta.key, &env.data), holds);
        let ends_something = before.is_none_or(|b| b & !holds != 0);
        if env.analysis.verdict.is_some() || ends_something {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::validate::Validate;

    const YAML: &str = r#"
name: svc
key: host
partitions: 1
schema:
  host:   { type: string, required: true }
  cpu:    float
  region: string
rules:
  - name: cpu_high
    when: cpu > 90
alerts:
  labels: [region]
"#;

    fn input(payload: &[u8], seq: u64) -> Input<'_> {
        Input {
            subject: "anom.svc.in",
            payload,
            headers: None,
            stream_seq: seq,
            published_us: 1_700_000_000_000_000,
        }
    }

    /// Which of `events` (host, cpu, region) the rules stage forwards.
    fn forwarded(events: &[(&str, f64, &str)]) -> Vec<bool> {
        let p = Arc::new(Pipeline::from_yaml(YAML).unwrap());
        let (mut validate, mut rules) = (Validate::new(p.clone()), Rules::new(p));
        events
            .iter()
            .enumerate()
            .map(|(i, (host, cpu, region))| {
                let json = format!(r#"{{"host":"{host}","cpu":{cpu},"region":"{region}"}}"#);
                let mut out = Emitter::new("validate", "test");
                validate
                    .process(&input(json.as_bytes(), i as u64 + 1), &mut out)
                    .unwrap();
                let env = out.outputs()[0].payload.clone();
                let mut out = Emitter::new("rules", "test");
                rules.process(&input(&env, i as u64 + 1), &mut out).unwrap();
                !out.outputs().is_empty()
            })
            .collect()
    }

    #[test]
    fn forwards_hits_and_the_events_that_end_them_once() {
        assert_eq!(
            forwarded(&[
                ("a", 10.0, "eu"), // unknown since start: may end an alert raised before
                ("a", 20.0, "eu"), // nothing held, nothing ends
                ("a", 95.0, "eu"), // hit
                ("a", 96.0, "eu"), // hit
                ("a", 50.0, "eu"), // ends it
                ("a", 40.0, "eu"), // nothing to end
                ("a", 95.0, "us"), // hit (another alert: region is one of its labels)
                ("a", 50.0, "eu"), // nothing held in eu
                ("a", 50.0, "us"), // ends the us one
            ]),
            [true, false, true, true, true, false, true, false, true]
        );
    }
}

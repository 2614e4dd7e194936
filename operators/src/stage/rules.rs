//! rules: evaluates the pipeline's compiled rule conditions on each event (rules may use
//! detector scores by name), decides with the detector flags whether the event alerts
//! (`decide`), and forwards the events that do with their hits and verdict, plus the events
//! that end a condition (a rule that held on the key's previous event and no longer does, a
//! detector back under its threshold): the alert stage resolves alerts on those.

use std::collections::HashMap;
use std::sync::Arc;

use anom_lang::value::Value;
use anom_pipeline::envelope::{DetectorScore, Envelope, RuleHit, Verdict};
use anom_pipeline::layout::{Layouts, Reader};
use anom_pipeline::rejection::Rejection;
use anom_pipeline::{AlertOn, Pipeline};
use anom_runtime::{Emitter, Input, Stage};

pub const NAME: &str = anom_pipeline::unit::names::RULES;

pub struct Rules {
    pipeline: Arc<Pipeline>,
    held: Held,
    reader: Reader,
}

/// Per alert subject (the key and the pipeline's alert labels, hashed): which causes held on
/// its last event. A subject not here is unknown (this process just started, or it was
/// forgotten), so its next event is forwarded in case it ends an alert raised before.
///
/// Subjects silent for longer than the pipeline's state TTL (in event time) are forgotten,
/// like the keys of the window and score stages: forgetting one costs at most one forwarded
/// event, and the map stays bounded by the subjects seen within the TTL.
struct Held {
    last: HashMap<u64, Last>,
    ttl_ms: i64,
    /// The newest event time seen, and when the map was last swept (event time, ms).
    newest_ms: i64,
    swept_ms: i64,
}

/// What a subject's last event held, and when it happened.
#[derive(Debug, Clone, Copy)]
struct Last {
    /// Bit i: rule i; then one bit per detector (see [`active_causes`]).
    causes: u128,
    event_ms: i64,
}

/// Subjects past the TTL are swept every tenth of the TTL of event time, and at most every
/// 10 s: a replay that runs through days in seconds sweeps a few dozen times per TTL, not on
/// every other batch, and a subject overstays by at most a tenth of its TTL.
const MIN_SWEEP_INTERVAL_MS: i64 = 10_000;

impl Held {
    /// Records what `subject` holds now and returns what it held on its last event.
    fn remember(&mut self, subject: u64, causes: u128, event_ms: i64) -> Option<u128> {
        self.newest_ms = self.newest_ms.max(event_ms);
        if self.swept_ms == i64::MIN {
            self.swept_ms = self.newest_ms;
        } else if self.newest_ms.saturating_sub(self.swept_ms)
            >= MIN_SWEEP_INTERVAL_MS.max(self.ttl_ms / 10)
        {
            self.swept_ms = self.newest_ms;
            let horizon = self.newest_ms.saturating_sub(self.ttl_ms);
            self.last.retain(|_, l| l.event_ms >= horizon);
        }
        self.last
            .insert(subject, Last { causes, event_ms })
            .map(|l| l.causes)
    }
}

impl Rules {
    /// Reads envelopes of other versions of the pipeline through `layouts` (a rollout's
    /// backlog); without, only its own version's.
    pub fn reading(mut self, layouts: Layouts) -> Self {
        self.reader = Reader::new(layouts);
        self
    }

    pub fn new(pipeline: Arc<Pipeline>) -> Rules {
        Rules {
            held: Held {
                last: HashMap::new(),
                ttl_ms: i64::try_from(pipeline.state.ttl.as_millis()).unwrap_or(i64::MAX),
                newest_ms: i64::MIN,
                swept_ms: i64::MIN,
            },
            pipeline,
            reader: Reader::default(),
        }
    }

    /// How many subjects are remembered (for tests).
    pub fn subjects(&self) -> usize {
        self.held.last.len()
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

impl Stage for Rules {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let pipeline = self.pipeline.clone();
        let p = &*pipeline;
        let mut env = self.reader.open(p, input.payload)?;
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
        let subject = subject(p, &env.meta.key, &env.data);
        let before = self.held.remember(subject, holds, env.meta.event_time);
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
    use anom_testkit::fixtures::HOSTS;

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

    #[test]
    fn subjects_silent_past_the_ttl_are_forgotten() {
        let p = Pipeline::from_yaml(&format!("{YAML}state: {{ ttl: 1m }}\n")).unwrap();
        let mut rules = Rules::new(Arc::new(p));
        // A new subject every second of event time for 1,000 s.
        for i in 0..1_000u64 {
            rules.held.remember(i, 0, i as i64 * 1_000);
        }
        // Those within the TTL of the newest event stay, give or take one sweep interval.
        let kept = rules.subjects();
        assert!((60..=71).contains(&kept), "{kept} subjects kept");
        // A forgotten subject is unknown again (its next event is forwarded); a recent one
        // still knows what it held.
        assert_eq!(rules.held.remember(0, 0, 1_000_000), None);
        assert_eq!(rules.held.remember(999, 1, 1_000_000), Some(0));
    }

    #[test]
    fn the_decision_step_follows_alert_on() {
        use anom_pipeline::envelope::{
            Analysis, DetectorScore, Envelope, Meta, RuleHit, ENVELOPE_VERSION,
        };
        use anom_pipeline::Severity;
        let env = |hit: bool, flagged: bool| Envelope {
            v: ENVELOPE_VERSION,
            meta: Meta {
                pipeline: "hosts".into(),
                version: String::new(),
                key: "h".into(),
                partition: 0,
                event_time: 0,
                ingest_time_us: 0,
                origin_seq: 1,
                origin_index: 0,
            },
            data: vec![],
            analysis: Analysis {
                hits: if hit {
                    vec![RuleHit {
                        rule: 0,
                        name: "unusual_and_slow".into(),
                    }]
                } else {
                    vec![]
                },
                scores: vec![DetectorScore {
                    detector: 1,
                    score: if flagged { 0.99 } else { 0.2 },
                    flagged,
                    explanation: if flagged {
                        "odd combination".into()
                    } else {
                        String::new()
                    },
                    contributions: vec![],
                }],
                ..Analysis::default()
            },
            enrichment: vec![],
        };
        let cases = [
            ("any", [false, true, true, true]),
            ("rules", [false, false, true, true]),
            ("detectors", [false, true, false, true]),
            ("both", [false, false, false, true]),
        ];
        for (mode, expected) in cases {
            let p =
                Pipeline::from_yaml(&format!("{HOSTS}decision: {{ alert_on: {mode} }}\n")).unwrap();
            let got: Vec<bool> = [(false, false), (false, true), (true, false), (true, true)]
                .iter()
                .map(|&(hit, flagged)| decide(&p, &env(hit, flagged)).is_some())
                .collect();
            assert_eq!(got, expected, "alert_on: {mode}");
        }
        // Severity is the highest among the causes that alert; the explanation names them all.
        let p = Pipeline::from_yaml(HOSTS).unwrap();
        let v = decide(&p, &env(true, true)).unwrap();
        assert_eq!(v.severity, Severity::Critical);
        assert_eq!(
            v.explanation,
            "rule unusual_and_slow (`latency_unusual > 0.9 and latencyMs > 500`); combo (half_space_trees): odd combination"
        );
        let p = Pipeline::from_yaml(&format!("{HOSTS}decision: {{ alert_on: rules }}\n")).unwrap();
        assert_eq!(
            decide(&p, &env(true, true)).unwrap().severity,
            Severity::Warning
        );
    }
}

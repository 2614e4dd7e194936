//! alert: turns each rule hit and each flagged detector (as the decision step allows) into an
//! alert record with its message and explanation, and publishes it to `anom.<p>.alerts`, the
//! stream every sink reads from.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use std::time::Duration;

use std::collections::HashMap;

use crate::alert::{rfc3339_ms, rfc3339_us, Alert, AlertStatus, Detection, Source};
use crate::duration;
use crate::envelope::{DetectorScore, Envelope};
use crate::metrics::{AlertLabels, Metrics, PipelineLabels};
use crate::pipeline::template::Context;
use crate::pipeline::{DetectorSpec, Pipeline, Rule, RuleKind, Severity};
use crate::rejection::Rejection;
use crate::runtime::{Emitter, Input, Stage};
use crate::subjects::INGEST_STREAM;
use crate::value::Value;

pub const NAME: &str = "alert";

pub struct AlertStage {
    pipeline: Arc<Pipeline>,
    /// Alert counters by severity, resolved once.
    alerts: HashMap<Severity, Counter>,
    latency: Histogram,
}

impl AlertStage {
    pub fn new(pipeline: Arc<Pipeline>, metrics: &Metrics) -> AlertStage {
        let alerts = [Severity::Info, Severity::Warning, Severity::Critical]
            .into_iter()
            .filter(|s| {
                pipeline.rules.iter().any(|r| r.severity == *s)
                    || pipeline.detectors.iter().any(|d| d.severity == *s)
            })
            .map(|s| {
                let c = metrics.alerts.get_or_create_owned(&AlertLabels {
                    pipeline: pipeline.name.clone(),
                    severity: s.to_string(),
                });
                (s, c)
            })
            .collect();
        let latency = metrics
            .ingest_to_alert_seconds
            .get_or_create_owned(&PipelineLabels {
                pipeline: pipeline.name.clone(),
            });
        AlertStage {
            pipeline,
            alerts,
            latency,
        }
    }

    fn record(&self, env: &Envelope, cause: Cause<'_>, now_us: i64) -> Alert {
        let p = &*self.pipeline;
        let (name, severity, template, labels) = match cause {
            Cause::Rule(r) => (&r.name, r.severity, &r.message, &r.labels),
            Cause::Detector(d, _) => (&d.name, d.severity, &d.message, &d.labels),
        };
        let severity_text = severity.to_string();
        // Messages and explanations may name fields and aggregates: one row with both.
        let mut row = env.data.clone();
        row.resize(p.schema.len(), Value::Null);
        row.extend(env.enrichment.iter().cloned());
        row.resize(p.enriched_width(), Value::Null);
        row.extend(std::iter::repeat_n(Value::Null, p.detectors.len()));
        for s in &env.analysis.scores {
            if let Some(v) = row.get_mut(p.enriched_width() + s.detector as usize) {
                *v = Value::Float(s.score);
            }
        }
        p.scope.retype(&mut row);
        let absence = env.analysis.absence.as_ref();
        let silence =
            absence.map(|a| duration::format(Duration::from_millis(a.silent_ms.max(0) as u64)));
        let message = template.render(
            &row,
            &Context {
                key: &env.meta.key,
                rule: name,
                severity: &severity_text,
                silence: silence.as_deref(),
            },
        );
        let (id, status) = match absence {
            // One absence alert per silent gap: the gap is named by the key's last event.
            Some(a) => {
                let id = format!(
                    "{}:{}:{}:{}:{}",
                    p.name, name, env.meta.key, env.meta.origin_seq, env.meta.origin_index
                );
                if a.resolved {
                    (format!("{id}:resolved"), AlertStatus::Resolved)
                } else {
                    (id, AlertStatus::Firing)
                }
            }
            None => (
                format!(
                    "{}:{}:{}:{}",
                    p.name, name, env.meta.origin_seq, env.meta.origin_index
                ),
                AlertStatus::Firing,
            ),
        };
        let (explanation, detection) = match cause {
            Cause::Rule(rule) => (explain(p, rule, env, &row), None),
            Cause::Detector(d, s) => (
                s.explanation.clone(),
                Some(Detection {
                    kind: d.kind_name().to_string(),
                    score: s.score,
                    threshold: Some(d.threshold).filter(|t| t.is_finite()),
                    contributions: s.contributions.clone(),
                }),
            ),
        };
        // Several causes on one event: each alert also says what else fired.
        let verdict = env
            .analysis
            .verdict
            .as_ref()
            .filter(|v| v.explanation.contains("; "))
            .map(|v| v.explanation.clone());
        Alert {
            id,
            pipeline: p.name.clone(),
            pipeline_version: p.version.clone(),
            rule: name.clone(),
            severity,
            status,
            key: env.meta.key.clone(),
            message,
            explanation,
            event_time: rfc3339_ms(env.meta.event_time),
            ingest_time: rfc3339_us(env.meta.ingest_time_us),
            raised_at: rfc3339_us(now_us),
            labels: labels.clone(),
            // Silence has no event; a stale field's detection carries the event that showed it.
            event: if absence.is_some() && env.data.is_empty() {
                serde_json::Map::new()
            } else {
                p.scope
                    .display_names()
                    .zip(&row)
                    .take(p.enriched_width())
                    .map(|(name, v)| (name.to_string(), v.to_json()))
                    .collect()
            },
            source: Source {
                stream: INGEST_STREAM.to_string(),
                sequence: env.meta.origin_seq,
                index: env.meta.origin_index,
            },
            detection,
            verdict,
            starts_at: String::new(),
            updated_at: String::new(),
            ends_at: None,
            count: 1,
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_by: None,
            history: Vec::new(),
            version: 0,
        }
    }
}

/// What raised an alert.
#[derive(Clone, Copy)]
enum Cause<'a> {
    Rule(&'a Rule),
    Detector(&'a DetectorSpec, &'a DetectorScore),
}

/// Why it fired, in words: "`durationMs > 5000` held for key SFTP-A: durationMs = 7200",
/// "no event from key SFTP-A since 2026-11-20T10:00:00Z (silent 20m, limit 20m)".
fn explain(p: &Pipeline, rule: &Rule, env: &Envelope, row: &[Value]) -> String {
    let key = &env.meta.key;
    match &rule.kind {
        RuleKind::Absence(a) => {
            let note = env.analysis.absence.as_ref();
            let since = note.map_or_else(String::new, |n| rfc3339_ms(n.last_seen_ms));
            let silent = note.map_or_else(String::new, |n| {
                duration::format(Duration::from_millis(n.silent_ms.max(0) as u64))
            });
            let limit = duration::format(a.after);
            let resolved = note.is_some_and(|n| n.resolved);
            match a.stale.and_then(|f| Some((p.scope.name(f)?, row.get(f)?))) {
                Some((field, value)) if resolved => {
                    format!("`{field}` changed to {value} for key {key} after {silent} unchanged (limit {limit})")
                }
                Some((field, value)) => {
                    format!("`{field}` has stayed {value} for key {key} since {since} ({silent}, limit {limit})")
                }
                None if resolved => format!(
                    "key {key} sent an event again after {silent} of silence (limit {limit})"
                ),
                None => format!(
                    "no event from key {key} since {since} (silent {silent}, limit {limit})"
                ),
            }
        }
        RuleKind::Condition(condition) => {
            let values: Vec<String> = condition
                .fields()
                .into_iter()
                .filter_map(|i| {
                    let name = p.scope.name(i)?;
                    let value = row.get(i)?;
                    Some(if value.is_null() {
                        format!("{name} is missing")
                    } else {
                        format!("{name} = {value}")
                    })
                })
                .collect();
            if values.is_empty() {
                format!("`{}` held for key {key}", rule.when)
            } else {
                format!("`{}` held for key {key}: {}", rule.when, values.join(", "))
            }
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Stage for AlertStage {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let p = &*self.pipeline;
        let env = super::rules::open(p, input.payload)?;
        let now = now_us();
        // Absence detections come from the window stage's timers and always alert; the
        // others alert as the decision step said (see `rules::decide`).
        let rules_alert = env.analysis.absence.is_some() || p.alert_on.rules_alert();
        let mut causes = Vec::new();
        for hit in env.analysis.hits.iter().filter(|_| rules_alert) {
            if let Some(rule) = p.rules.get(hit.rule as usize) {
                causes.push(Cause::Rule(rule));
            }
        }
        if p.alert_on.detectors_alert() {
            for s in env.analysis.scores.iter().filter(|s| s.flagged) {
                if let Some(d) = p.detectors.get(s.detector as usize) {
                    causes.push(Cause::Detector(d, s));
                }
            }
        }
        for cause in causes {
            let alert = self.record(&env, cause, now);
            if let Some(c) = self.alerts.get(&alert.severity) {
                c.inc();
            }
            self.latency
                .observe((now - env.meta.ingest_time_us).max(0) as f64 / 1e6);
            let json = serde_json::to_vec(&alert).unwrap_or_default();
            out.emit(p.subjects.alerts.clone(), alert.id, json);
        }
        Ok(())
    }
}

//! alert: the owner of its partition's alerts. Each rule hit and flagged detector (as the
//! decision step allows) becomes a detection of one alert identity; the lifecycle
//! (`alerting::lifecycle`) folds detections into that alert, resolves it when its condition
//! stops holding, and applies users' acknowledgements (commands on this stage's input). Every
//! change is written to the `ANOM_ALERTS` bucket and every change of status published on
//! `anom.<p>.alerts`, both as outputs: published before the inputs that caused them are acked.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::alerting::lifecycle::{At, Lifecycle, Timing};
use crate::alerting::record::{rfc3339_ms, rfc3339_us, Alert, AlertStatus, Detection, Source};
use crate::alerting::store::{alert_key, kv_subject, Command, ALERTS_BUCKET, COMMAND_HEADER};
use crate::stage::validate::partition_of;
use anom_lang::duration;
use anom_lang::expr::CompiledExpr;
use anom_lang::value::Value;
use anom_pipeline::envelope::{DetectorScore, Envelope};
use anom_pipeline::layout::{Layouts, Reader};
use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::subjects::INGEST_STREAM;
use anom_pipeline::template::Context;
use anom_pipeline::{AlertOn, DetectorSpec, Pipeline, Rule, RuleKind, Severity};
use anom_runtime::metrics::{AlertLabels, Metrics, PipelineLabels};
use anom_runtime::timebase::Timebase;
use anom_runtime::{Emitter, Input, Stage};

pub const NAME: &str = anom_pipeline::unit::names::ALERT;

pub struct AlertStage {
    pipeline: Arc<Pipeline>,
    lifecycle: Lifecycle,
    /// `$KV.ANOM_ALERTS.<pipeline>.`: where alert records are written.
    kv_prefix: String,
    /// Alert counters by severity, resolved once.
    alerts: HashMap<Severity, Counter>,
    latency: Histogram,
    timebase: Timebase,
    /// Run inside a fused unit: its inputs' positions are the unit's (see `Tracking`).
    chained: bool,
    reader: Reader,
}

impl AlertStage {
    /// Reads envelopes of other versions of the pipeline through `layouts` (a rollout's
    /// backlog); without, only its own version's.
    pub fn reading(mut self, layouts: Layouts) -> Self {
        self.reader = Reader::new(layouts);
        self
    }

    /// `stored`: the alerts of the bucket this partition owns (see [`owned`]).
    /// `timebase`: the wall clock live, event time in a backtest.
    pub fn new(
        pipeline: Arc<Pipeline>,
        metrics: &Metrics,
        stored: Vec<Alert>,
        timebase: Timebase,
    ) -> AlertStage {
        Self::with_positions(pipeline, metrics, stored, timebase, false)
    }

    /// An alert stage inside a fused unit (`chained`) or a unit of its own. Stored alerts
    /// whose positions are of the other kind start them over: they cannot be compared.
    pub fn with_positions(
        pipeline: Arc<Pipeline>,
        metrics: &Metrics,
        mut stored: Vec<Alert>,
        timebase: Timebase,
        chained: bool,
    ) -> AlertStage {
        for a in &mut stored {
            if a.tracking.chained != chained {
                a.tracking.applied = 0;
                a.tracking.chained = chained;
            }
        }
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
        let lifecycle =
            Lifecycle::new(stored, pipeline.alerting.resolve_timeout, timebase.now_ms());
        let kv_prefix = kv_subject(ALERTS_BUCKET, &alert_key(&pipeline.name, ""));
        AlertStage {
            pipeline,
            lifecycle,
            kv_prefix,
            alerts,
            latency,
            timebase,
            chained,
            reader: Reader::default(),
        }
    }

    /// Writes and publishes what changed.
    fn publish(&mut self, out: &mut Emitter, now_ms: i64, flush: bool) {
        let p = &*self.pipeline;
        let mut changes = self.lifecycle.take_changes(now_ms, flush);
        for a in changes.transitions.iter_mut().chain(&mut changes.updates) {
            a.tracking.chained = self.chained;
        }
        for a in &changes.transitions {
            if a.status == AlertStatus::Firing
                && a.history
                    .last()
                    .is_some_and(|t| t.status == AlertStatus::Firing)
            {
                if let Some(c) = self.alerts.get(&a.severity) {
                    c.inc();
                }
                if let Some(ingest_ms) = crate::alerting::silence::millis(&a.ingest_time) {
                    self.latency
                        .observe((now_ms - ingest_ms).max(0) as f64 / 1e3);
                }
            }
        }
        // Each change of status goes on the alert stream before its state is written: one
        // connection keeps the order, so a stored state never runs ahead of its record.
        let records: Vec<(&Alert, Vec<u8>)> = changes
            .transitions
            .iter()
            .chain(&changes.updates)
            .map(|a| (a, serde_json::to_vec(a).unwrap_or_default()))
            .collect();
        for (a, json) in &records[..changes.transitions.len()] {
            // Named by occurrence and status, not version: a status change published again
            // after a restart (with fewer coalesced updates before it) is still a duplicate.
            let msg_id = format!("{}:{}:{}", a.id, a.tracking.started, a.status);
            out.emit(p.subjects.alerts.clone(), msg_id, json.clone());
        }
        for (a, json) in records {
            out.emit(
                format!("{}{}", self.kv_prefix, a.id),
                format!(
                    "kv:{}:{}:{}:{}",
                    p.name, a.id, a.version, a.tracking.applied
                ),
                json,
            );
        }
    }

    /// The alert record of one detection (its lifecycle fields are the lifecycle's to set).
    fn record(&self, env: &Envelope, row: &[Value], cause: Cause<'_>, now_us: i64) -> Alert {
        let p = &*self.pipeline;
        let (name, severity, template, labels) = match cause {
            Cause::Rule(r) => (&r.name, r.severity, &r.message, &r.labels),
            Cause::Detector(d, _) => (&d.name, d.severity, &d.message, &d.labels),
        };
        let severity_text = severity.to_string();
        let absence = env.analysis.absence.as_ref();
        let silence =
            absence.map(|a| duration::format(Duration::from_millis(a.silent_ms.max(0) as u64)));
        let message = template.render(
            row,
            &Context {
                key: &env.meta.key,
                rule: name,
                severity: &severity_text,
                silence: silence.as_deref(),
            },
        );
        // Absence alerts have no event: their identity has no event labels.
        let event_row =
            (!matches!(cause, Cause::Rule(r) if r.condition().is_none())).then_some(row);
        let (id, labels) = identity(p, name, severity, labels, &env.meta.key, event_row);
        let (explanation, detection) = match cause {
            Cause::Rule(rule) => (explain(p, rule, env, row), None),
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
            status: AlertStatus::Firing,
            key: env.meta.key.clone(),
            message,
            explanation,
            event_time: rfc3339_ms(env.meta.event_time),
            ingest_time: rfc3339_us(env.meta.ingest_time_us),
            raised_at: rfc3339_us(now_us),
            labels,
            // Silence has no event; a stale field's detection carries the event that showed it.
            event: if absence.is_some() && env.data.is_empty() {
                serde_json::Map::new()
            } else {
                p.scope
                    .display_names()
                    .zip(row)
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
            tracking: Default::default(),
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
            format!(
                "`{}` held for key {key}{}",
                rule.when,
                condition_values(p, condition, row)
            )
        }
    }
}

/// ": durationMs = 7200, status = OK": the values of the fields a condition reads.
fn condition_values(p: &Pipeline, condition: &CompiledExpr, row: &[Value]) -> String {
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
        String::new()
    } else {
        format!(": {}", values.join(", "))
    }
}

/// One row with the event's fields, its key's aggregates and the detectors' scores: messages,
/// explanations and alert labels may name any of them.
fn alert_row(p: &Pipeline, env: &Envelope) -> Vec<Value> {
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
    row
}

impl Stage for AlertStage {
    fn process(&mut self, input: &Input<'_>, _out: &mut Emitter) -> Result<(), Rejection> {
        if input.header(COMMAND_HEADER).is_some() {
            let now_ms = self.timebase.now_ms();
            let c: Command = serde_json::from_slice(input.payload).map_err(|e| {
                Rejection::new(
                    RejectKind::Envelope,
                    format!("alert command: expected {{alert, action, by, request}}: {e}"),
                )
            })?;
            self.lifecycle.command(
                &c,
                At {
                    event_ms: now_ms,
                    now_ms,
                    seq: input.stream_seq,
                },
            );
            return Ok(());
        }
        let pipeline = self.pipeline.clone();
        let p = &*pipeline;
        let env = self.reader.open(p, input.payload)?;
        let row = alert_row(p, &env);
        let key = env.meta.key.as_str();
        let event_ms = env.meta.event_time;
        self.timebase.observe(event_ms);
        let now = self.timebase.now_us();
        let now_ms = now / 1000;
        let at = At {
            event_ms,
            now_ms,
            seq: input.stream_seq,
        };
        // Absence detections come from the window stage's timers and always alert.
        if let Some(note) = &env.analysis.absence {
            for hit in &env.analysis.hits {
                let Some(rule) = p.rules.get(hit.rule as usize) else {
                    continue;
                };
                if note.resolved {
                    let id = alert_id(p, &rule.name, key, None);
                    let why = explain(p, rule, &env, &row);
                    let ended_by = self.record(&env, &row, Cause::Rule(rule), now);
                    self.lifecycle
                        .cleared(&id, &why, Some(ended_by), Timing::default(), at);
                } else {
                    let a = self.record(&env, &row, Cause::Rule(rule), now);
                    self.lifecycle.detected(a, Timing::default(), true, at);
                }
            }
            return Ok(());
        }
        // With `alert_on: both`, causes count only on events the decision step let alert.
        let gate = env.analysis.verdict.is_some() || p.alert_on != AlertOn::Both;
        if p.alert_on.rules_alert() {
            for (i, rule) in p.rules.iter().enumerate() {
                let Some(condition) = rule.condition() else {
                    continue;
                };
                let hit = gate && env.analysis.hits.iter().any(|h| h.rule as usize == i);
                let timing = Timing {
                    for_: rule.for_,
                    keep_firing_for: rule.keep_firing_for,
                };
                if hit {
                    let a = self.record(&env, &row, Cause::Rule(rule), now);
                    self.lifecycle.detected(a, timing, true, at);
                    continue;
                }
                let id = alert_id(p, &rule.name, key, Some(&row));
                if self.lifecycle.is_tracking(&id) {
                    let values = condition_values(p, condition, &row);
                    let why = format!("`{}` no longer holds for key {key}{values}", rule.when);
                    let ended_by = self.record(&env, &row, Cause::Rule(rule), now);
                    self.lifecycle
                        .cleared(&id, &why, Some(ended_by), timing, at);
                }
            }
        }
        if p.alert_on.detectors_alert() {
            for score in &env.analysis.scores {
                let Some(d) = p.detectors.get(score.detector as usize) else {
                    continue;
                };
                // Flagged: the event that took the key across; above: still across.
                if gate && (score.flagged || d.flags(score.score)) {
                    let a = self.record(&env, &row, Cause::Detector(d, score), now);
                    self.lifecycle
                        .detected(a, Timing::default(), score.flagged, at);
                    continue;
                }
                let id = alert_id(p, &d.name, key, Some(&row));
                if self.lifecycle.is_tracking(&id) {
                    let why = format!(
                        "{} score {:.3} is back on the usual side of its threshold {} for key {key}",
                        d.name, score.score, d.threshold
                    );
                    let ended_by = self.record(&env, &row, Cause::Detector(d, score), now);
                    self.lifecycle
                        .cleared(&id, &why, Some(ended_by), Timing::default(), at);
                }
            }
        }
        Ok(())
    }

    fn end_batch(&mut self, out: &mut Emitter) {
        self.publish(out, self.timebase.now_ms(), false);
    }

    fn tick(&mut self, now_ms: i64, out: &mut Emitter) {
        self.lifecycle.tick(now_ms);
        self.publish(out, now_ms, true);
    }
}

/// The alerts of the bucket that `partition` of `pipeline` owns: those of its keys.
pub fn owned(pipeline: &Pipeline, partition: u32, stored: Vec<Alert>) -> Vec<Alert> {
    stored
        .into_iter()
        .filter(|a| partition_of(&a.key, pipeline.partitions) == partition)
        .collect()
}

/// An alert's identity and labels. The id is a fingerprint of the pipeline, the rule or
/// detector, the key and the labels the pipeline names (`alerts.labels`, read from `row`;
/// absence alerts have no event, so none); the labels add the rule's own and `severity`.
pub fn identity(
    p: &Pipeline,
    name: &str,
    severity: Severity,
    own: &BTreeMap<String, String>,
    key: &str,
    row: Option<&[Value]>,
) -> (String, BTreeMap<String, String>) {
    let mut labels = own.clone();
    for (label, index) in &p.alerting.labels {
        labels.insert(label.clone(), label_value(row, *index));
    }
    labels.insert("pipeline".into(), p.name.clone());
    labels.insert("rule".into(), name.to_string());
    labels.insert("key".into(), key.to_string());
    labels.insert("severity".into(), severity.to_string());
    (alert_id(p, name, key, row), labels)
}

/// The id alone (see [`identity`]), without building the labels: what checking whether an
/// event ends an alert needs.
pub fn alert_id(p: &Pipeline, name: &str, key: &str, row: Option<&[Value]>) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [p.name.as_str(), name, key] {
        hasher.update(part.as_bytes());
        hasher.update(&[0x1f]);
    }
    for (label, index) in &p.alerting.labels {
        hasher.update(label.as_bytes());
        hasher.update(&[0x1e]);
        hasher.update(label_value(row, *index).as_bytes());
        hasher.update(&[0x1f]);
    }
    format!("{:016x}", hasher.digest())
}

/// An alert label's value: the field's text, empty when missing or null.
fn label_value(row: Option<&[Value]>, index: usize) -> String {
    row.and_then(|r| r.get(index))
        .filter(|v| !v.is_null())
        .map(ToString::to_string)
        .unwrap_or_default()
}

//! Gathers what one engine tells (events, detections, alerts) into a [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::labels::{Labels, Marked};
use super::report::{AlertRow, Cause, Confusion, Report, Series};
use super::scoring;
use super::thresholds::{self, Recorded};
use super::Tap;
use crate::alerting::record::{Alert, AlertStatus};
use anom_pipeline::envelope::Envelope;
use anom_pipeline::schema::FieldType;
use anom_pipeline::Pipeline;

/// Which key's series to plot, of which field or aggregate (defaults: the key with the most
/// alerts, the first numeric field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlotSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The field a plot shows when none is named: the first numeric field that is not the
/// event time.
pub fn default_plot_field(p: &Pipeline) -> Option<String> {
    p.schema
        .fields()
        .iter()
        .enumerate()
        .find(|(i, f)| {
            matches!(f.ty, FieldType::Int | FieldType::Float) && Some(*i) != p.event_time
        })
        .map(|(_, f)| f.name.clone())
}

pub struct Collector {
    pipeline: Arc<Pipeline>,
    labels: Option<Labels>,
    /// Events a labels field marks anomalous (filled from the raw events by the run).
    pub marked: Marked,
    events: u64,
    rejected: BTreeMap<String, u64>,
    late: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    /// Rules, then detectors: detections and alerts.
    causes: Vec<Cause>,
    alerts: Vec<AlertRow>,
    /// Alert id → its latest occurrence in `alerts`.
    open: HashMap<String, usize>,
    /// With labels: per key, (event time, labelled, detected).
    series: HashMap<String, Vec<(i64, bool, bool)>>,
    /// The current batch's events by origin, to mark their detections.
    recent: HashMap<(u64, u32), (String, usize)>,
    /// The plot: its field's index in the scope, and values per key.
    plot: Option<(String, usize, Option<String>)>,
    values: HashMap<String, Vec<(i64, f64)>>,
    /// The named key's every numeric value and score (see `Series::lines`).
    lines: BTreeMap<String, Vec<(i64, f64)>>,
    detections_at: HashMap<String, Vec<i64>>,
    /// Per detector: every score it gave, for the thresholds (empty without detectors).
    recorded: Vec<Recorded>,
    budget_per_day: Option<f64>,
}

impl Collector {
    pub fn new(
        pipeline: Arc<Pipeline>,
        labels: Option<Labels>,
        plot: Option<PlotSpec>,
        budget_per_day: Option<f64>,
    ) -> Collector {
        let p = &*pipeline;
        let mut causes: Vec<Cause> = p
            .rules
            .iter()
            .map(|r| Cause {
                name: r.name.clone(),
                kind: if r.condition().is_some() {
                    "rule"
                } else {
                    "absence"
                }
                .into(),
                ..Cause::default()
            })
            .collect();
        causes.extend(p.detectors.iter().map(|d| Cause {
            name: d.name.clone(),
            kind: "detector".into(),
            ..Cause::default()
        }));
        let plot = plot.and_then(|spec| {
            let field = match spec.field {
                Some(f) => f,
                None => default_plot_field(p)?,
            };
            let index = p
                .scope
                .index_of(&field)
                .filter(|&i| i < p.enriched_width())?;
            Some((field, index, spec.key))
        });
        let recorded = vec![Recorded::default(); p.detectors.len()];
        Collector {
            pipeline,
            labels,
            marked: Marked::default(),
            events: 0,
            rejected: BTreeMap::new(),
            late: 0,
            first_ms: None,
            last_ms: None,
            causes,
            alerts: Vec::new(),
            open: HashMap::new(),
            series: HashMap::new(),
            recent: HashMap::new(),
            plot,
            values: HashMap::new(),
            lines: BTreeMap::new(),
            detections_at: HashMap::new(),
            recorded,
            budget_per_day,
        }
    }

    /// Whether the raw events must be read for a labels field.
    pub fn label_field(&self) -> Option<&str> {
        match &self.labels {
            Some(Labels::Field(f)) => Some(f),
            _ => None,
        }
    }

    /// A batch is done: its events can no longer be detected.
    pub fn end_batch(&mut self) {
        self.recent.clear();
    }

    fn value(&self, env: &Envelope, index: usize) -> Option<f64> {
        let width = self.pipeline.schema.len();
        let v = if index < width {
            env.data.get(index)
        } else {
            env.enrichment.get(index - width)
        }?;
        v.as_number()
    }

    /// Per key, its events' times in order (what the window score counts rows of).
    fn rows(&self) -> HashMap<String, Vec<i64>> {
        self.series
            .iter()
            .map(|(k, s)| {
                let mut t: Vec<i64> = s.iter().map(|e| e.0).collect();
                t.sort_unstable();
                (k.clone(), t)
            })
            .collect()
    }

    /// The report, once the run is over.
    pub fn report(mut self) -> Report {
        let p = self.pipeline.clone();
        let scores = self.labels.take().map(|labels| {
            let windows = match &labels {
                Labels::Windows(w) => w.clone(),
                Labels::Field(_) => {
                    let runs: Vec<(String, Vec<(i64, bool)>)> = self
                        .series
                        .iter()
                        .map(|(k, s)| (k.clone(), s.iter().map(|e| (e.0, e.1)).collect()))
                        .collect();
                    scoring::windows_of_runs(runs.iter().map(|(k, s)| (k.as_str(), &s[..])))
                }
            };
            let mut events = Confusion::default();
            for s in self.series.values() {
                for &(_, labelled, detected) in s {
                    match (labelled, detected) {
                        (true, true) => events.true_positives += 1,
                        (false, true) => events.false_positives += 1,
                        (true, false) => events.false_negatives += 1,
                        (false, false) => events.true_negatives += 1,
                    }
                }
            }
            let alerts: Vec<(&str, i64)> = self
                .alerts
                .iter()
                .map(|a| (a.key.as_str(), a.fired_ms))
                .collect();
            scoring::score(events, &windows, &self.rows(), &alerts)
        });
        let rows = self.rows();
        let thresholds = {
            let days = match (self.first_ms, self.last_ms) {
                (Some(a), Some(b)) => (b - a) as f64 / 86_400_000.0,
                _ => 0.0,
            };
            let ctx = thresholds::Context {
                windows: scores.as_ref().map(|s| (&s.windows[..], &rows)),
                days,
                budget_per_day: self.budget_per_day,
            };
            p.detectors
                .iter()
                .zip(&self.recorded)
                .filter_map(|(d, rec)| thresholds::analyse(d, rec, &ctx))
                .collect()
        };
        let plot = self.plot.take().and_then(|(field, _, key)| {
            let key = key.or_else(|| {
                let mut by_key: HashMap<&str, u64> = HashMap::new();
                for a in &self.alerts {
                    *by_key.entry(a.key.as_str()).or_default() += 1;
                }
                by_key
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                    .map(|(k, _)| k.to_string())
                    .or_else(|| self.values.keys().min().cloned())
            })?;
            let windows = scores
                .as_ref()
                .map(|s| {
                    s.windows
                        .iter()
                        .filter(|w| w.key.as_deref().is_none_or(|k| k == key))
                        .map(|w| (w.start_ms, w.end_ms))
                        .collect()
                })
                .unwrap_or_default();
            Some(Series {
                points: self.values.remove(&key).unwrap_or_default(),
                detections: self.detections_at.remove(&key).unwrap_or_default(),
                alerts: self
                    .alerts
                    .iter()
                    .filter(|a| a.key == key)
                    .map(|a| a.fired_ms)
                    .collect(),
                windows,
                field,
                key,
                lines: std::mem::take(&mut self.lines),
            })
        });
        // Absences skip the rules stage, so records do not come out in event-time order.
        self.alerts
            .sort_by(|a, b| (a.fired_ms, &a.id).cmp(&(b.fired_ms, &b.id)));
        let mut alerts_per_day = BTreeMap::new();
        for a in &self.alerts {
            let day = jiff::Timestamp::from_millisecond(a.fired_ms)
                .map(|t| t.strftime("%Y-%m-%d").to_string())
                .unwrap_or_default();
            *alerts_per_day.entry(day).or_default() += 1;
        }
        Report {
            pipeline: p.name.clone(),
            digest: p.version.clone(),
            events: self.events,
            rejected: self.rejected,
            late: self.late,
            first_event_ms: self.first_ms,
            last_event_ms: self.last_ms,
            causes: self.causes,
            alerts_per_1000_events: if self.events == 0 {
                0.0
            } else {
                self.alerts.len() as f64 * 1000.0 / self.events as f64
            },
            alerts: self.alerts,
            alerts_per_day,
            scores,
            thresholds,
            plot,
            ..Report::default()
        }
    }
}

fn millis(rfc3339: &str) -> Option<i64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

impl Tap for Collector {
    fn wants_events(&self) -> bool {
        self.labels.is_some() || self.plot.is_some() || !self.recorded.is_empty()
    }

    fn seen(&mut self) {
        self.events += 1;
    }

    fn event(&mut self, env: &Envelope) {
        let t = env.meta.event_time;
        self.first_ms = Some(self.first_ms.map_or(t, |f| f.min(t)));
        self.last_ms = Some(self.last_ms.map_or(t, |l| l.max(t)));
        let key = &env.meta.key;
        if let Some((_, index, only)) = &self.plot {
            if only.as_ref().is_none_or(|k| k == key) {
                if let Some(v) = self.value(env, *index) {
                    self.values.entry(key.clone()).or_default().push((t, v));
                }
            }
            // Every value only for a key named beforehand: for all keys it would be the
            // whole range in memory.
            if only.as_ref() == Some(key) {
                let p = &*self.pipeline;
                let names = p.scope.display_names().take(p.enriched_width());
                for (i, (name, v)) in names.zip(super::numeric_row(p, env)).enumerate() {
                    // Numbers only: a timestamp or a boolean as a number is no series.
                    let numeric = p.schema.fields().get(i).is_none_or(|f| {
                        matches!(f.ty, FieldType::Int | FieldType::Float) && Some(i) != p.event_time
                    });
                    if let (true, Some(v)) = (numeric, v) {
                        self.lines.entry(name.to_string()).or_default().push((t, v));
                    }
                }
                for s in &env.analysis.scores {
                    if let Some(d) = p.detectors.get(s.detector as usize) {
                        self.lines
                            .entry(format!("score:{}", d.name))
                            .or_default()
                            .push((t, s.score));
                    }
                }
            }
        }
        for s in &env.analysis.scores {
            if let Some(rec) = self.recorded.get_mut(s.detector as usize) {
                rec.push(key, t, s.score);
            }
        }
        let labelled = match &self.labels {
            None => return,
            Some(Labels::Field(_)) => self
                .marked
                .origins
                .contains(&(env.meta.origin_seq, env.meta.origin_index)),
            Some(Labels::Windows(w)) => w.iter().any(|w| w.covers(key, t)),
        };
        let series = self.series.entry(key.clone()).or_default();
        series.push((t, labelled, false));
        self.recent.insert(
            (env.meta.origin_seq, env.meta.origin_index),
            (key.clone(), series.len() - 1),
        );
    }

    fn detection(&mut self, env: &Envelope) {
        let p = &*self.pipeline;
        if env.analysis.absence.is_some() {
            for h in &env.analysis.hits {
                if let Some(c) = self.causes.get_mut(h.rule as usize) {
                    c.detections += 1;
                }
            }
            return;
        }
        for h in &env.analysis.hits {
            if let Some(c) = self.causes.get_mut(h.rule as usize) {
                c.detections += 1;
            }
        }
        for s in &env.analysis.scores {
            if crate::stage::rules::detector_holds(p, s) {
                if let Some(c) = self.causes.get_mut(p.rules.len() + s.detector as usize) {
                    c.detections += 1;
                    c.flags += u64::from(s.flagged);
                }
            }
        }
        if self.plot.is_some() {
            self.detections_at
                .entry(env.meta.key.clone())
                .or_default()
                .push(env.meta.event_time);
        }
        if let Some((key, i)) = self
            .recent
            .get(&(env.meta.origin_seq, env.meta.origin_index))
        {
            if let Some(e) = self.series.get_mut(key).and_then(|s| s.get_mut(*i)) {
                e.2 = true;
            }
        }
    }

    fn alert(&mut self, a: Alert) {
        let at = millis(&a.event_time).unwrap_or_default();
        match a.status {
            AlertStatus::Firing => {
                if let Some(c) = self.causes.iter_mut().find(|c| c.name == a.rule) {
                    c.alerts += 1;
                }
                self.open.insert(a.id.clone(), self.alerts.len());
                self.alerts.push(AlertRow {
                    id: a.id,
                    rule: a.rule,
                    severity: a.severity.to_string(),
                    key: a.key,
                    fired_ms: at,
                    resolved_ms: None,
                    count: a.count,
                    message: a.message,
                    explanation: a.explanation,
                });
            }
            AlertStatus::Resolved => {
                if let Some(row) = self.open.remove(&a.id).and_then(|i| self.alerts.get_mut(i)) {
                    // The event that ended it (a timeout keeps the last detection's).
                    row.resolved_ms = Some(at);
                    row.count = a.count;
                }
            }
            AlertStatus::Acknowledged => {}
        }
    }

    fn rejected(&mut self, kind: &str) {
        *self.rejected.entry(kind.to_string()).or_default() += 1;
    }

    fn late(&mut self) {
        self.late += 1;
    }
}

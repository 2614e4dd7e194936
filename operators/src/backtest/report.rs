//! What a backtest found, as data (JSON): [`super::render`] turns it into Markdown and HTML.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::labels::Window;
use super::source::Range;
use super::thresholds::DetectorThresholds;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub pipeline: String,
    /// The version run: its number in the coordinator, or "draft".
    pub version: String,
    /// Content hash of the definition run.
    pub digest: String,
    pub range: Range,
    /// The stream read.
    pub stream: String,
    /// Raw messages read.
    pub messages: u64,
    /// Valid events that went through the rules.
    pub events: u64,
    /// Refused inputs (or NDJSON lines) by reason kind.
    pub rejected: BTreeMap<String, u64>,
    pub late: u64,
    /// Event time of the first and last event seen (epoch ms).
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    /// Wall time the run took, and raw messages per second through the pipeline.
    pub seconds: f64,
    pub messages_per_s: f64,
    /// Per rule and detector: events it flagged and alerts it raised.
    pub causes: Vec<Cause>,
    /// The alerts that would have fired, in order.
    pub alerts: Vec<AlertRow>,
    /// Alerts raised per day (UTC date of the event that raised them).
    pub alerts_per_day: BTreeMap<String, u64>,
    /// Alerts per 1,000 events.
    pub alerts_per_1000_events: f64,
    /// Given labels: how the detections compare with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// Per detector with a threshold: what other thresholds would have given, the best one
    /// against the labels and the one within the alert budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<DetectorThresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plot: Option<Series>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    pub name: String,
    /// "rule", "absence" or "detector".
    pub kind: String,
    /// Events it held on (a rule hit; a detector's score across its threshold).
    pub detections: u64,
    /// Detectors: events it flagged (each opened an episode past the cool-down).
    #[serde(default)]
    pub flags: u64,
    pub alerts: u64,
}

/// One alert that would have fired.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub key: String,
    /// Event time of the event that raised it (epoch ms).
    pub fired_ms: i64,
    /// Event time of the event that resolved it, if it did within the range (an alert that
    /// timed out: its last detection's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
    /// Detections it absorbed (repeats).
    pub count: u64,
    pub message: String,
    pub explanation: String,
}

/// Counts of events by label and detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub true_negatives: u64,
}

impl Confusion {
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    pub fn recall(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        (p + r > 0.0).then(|| 2.0 * p * r / (p + r))
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Per event: flagged by a rule or detector vs labelled anomalous.
    pub events: Confusion,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// The labelled windows, and how the alerts fell against them.
    pub windows: Vec<Window>,
    pub windows_detected: u64,
    pub windows_missed: u64,
    /// Alerts raised outside every window (after each key's probation period).
    pub false_alerts: u64,
    /// Alerts in a key's probation period (its first 15% of events, at most 750): not scored.
    #[serde(default)]
    pub probation_alerts: u64,
    /// From a window's start to its first alert (ms), over detected windows.
    pub time_to_detect: Option<Latency>,
    /// Numenta Anomaly Benchmark style score, standard profile: 100 detects every window at
    /// its start with no false alert, 0 detects nothing; false alerts and late detections
    /// cost (see docs/backtests.md).
    pub window_score: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// A key's series of one field, with its detections, for the plot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub key: String,
    pub field: String,
    /// (event time ms, value).
    pub points: Vec<(i64, f64)>,
    /// Event times of the key's detections.
    pub detections: Vec<i64>,
    /// Event times the key's alerts fired at.
    pub alerts: Vec<i64>,
    /// Labelled windows of this key.
    pub windows: Vec<(i64, i64)>,
    /// When the plot names its key: the key's every numeric field and aggregate by name, and
    /// each detector's score (`score:<detector>`), at each of its events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lines: BTreeMap<String, Vec<(i64, f64)>>,
}

/// Two versions over the same range, and the alerts only one of them raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: Report,
    pub b: Report,
    pub only_a: Vec<AlertRow>,
    pub only_b: Vec<AlertRow>,
}

impl Comparison {
    /// Matches alerts by identity and the event that raised them.
    pub fn new(a: Report, b: Report) -> Comparison {
        let ids = |r: &Report| {
            r.alerts
                .iter()
                .map(|x| (x.id.clone(), x.fired_ms))
                .collect::<std::collections::HashSet<_>>()
        };
        let (in_a, in_b) = (ids(&a), ids(&b));
        let only = |r: &Report, other: &std::collections::HashSet<(String, i64)>| {
            r.alerts
                .iter()
                .filter(|x| !other.contains(&(x.id.clone(), x.fired_ms)))
                .cloned()
                .collect()
        };
        Comparison {
            only_a: only(&a, &in_b),
            only_b: only(&b, &in_a),
            a,
            b,
        }
    }
}

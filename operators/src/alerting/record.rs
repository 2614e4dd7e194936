//! The alert record: one alert's current state, kept in the `ANOM_ALERTS` key-value bucket
//! and published on `anom.<pipeline>.alerts` at every change of status. JSON, so any
//! language can read it; its fields are documented in docs/alerts.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use anom_pipeline::Severity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The alert's identity (a fingerprint of pipeline, rule or detector, key and the labels
    /// the pipeline names): it stays the same while the alert fires again, is acknowledged
    /// and resolves, so receivers can update one record instead of creating another.
    pub id: String,
    pub pipeline: String,
    pub pipeline_version: String,
    /// The rule or detector that raised it.
    pub rule: String,
    pub severity: Severity,
    /// `firing`, `acknowledged` (someone is on it; it still fires) or `resolved`.
    #[serde(default)]
    pub status: AlertStatus,
    pub key: String,
    /// The rule's message template, rendered for the latest detection.
    pub message: String,
    /// Why it fired, in words: the condition and the values it saw.
    pub explanation: String,
    /// RFC 3339 times of the latest detection.
    pub event_time: String,
    pub ingest_time: String,
    pub raised_at: String,
    /// Every label: `pipeline`, `rule`, `key`, `severity`, the rule's own labels and the
    /// event fields the pipeline names in `alerts.labels`. Routes, silences and inhibitions
    /// match on these.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The validated event of the latest detection (empty for a silent key).
    pub event: serde_json::Map<String, serde_json::Value>,
    /// Where that event is in the ingest stream.
    pub source: Source,
    /// For a detector's alert: its score and what drove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
    /// When the event raised more than this alert: every cause, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// When this occurrence started firing (RFC 3339, wall clock).
    #[serde(default)]
    pub starts_at: String,
    /// When it last changed (a detection, an acknowledgement, a resolution).
    #[serde(default)]
    pub updated_at: String,
    /// When it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Detections folded into this occurrence.
    #[serde(default)]
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    /// What ended it: the end condition in words, `resolve_timeout`, or who resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// Its transitions, oldest first (the last 50).
    #[serde(default)]
    pub history: Vec<Transition>,
    /// Bumped on every change.
    #[serde(default)]
    pub version: u64,
    /// Positions in the alert stage's input: what makes its updates exactly-once across
    /// restarts.
    #[serde(default)]
    pub tracking: Tracking,
}

/// Where an alert's state stands in its alert stage's input: positions in a fused unit's
/// input, or stream sequences of `ANOM_<P>_DETECTIONS` for a unit of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// The detection that started this occurrence: names its status changes on the alert
    /// stream (`<id>:<started>:<status>`), the same however often they are published.
    pub started: u64,
    /// The last input applied: a redelivered input at or before it changes nothing.
    pub applied: u64,
    /// Whether the positions are a fused unit's (input sequence × 256 + hand-off, see
    /// `stage::chain`) rather than an alert unit's own input sequences: a pipeline switched
    /// between the two cannot compare them, so its alert stage starts them over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chained: bool,
}

impl Tracking {
    /// Whether the input at `seq` is already reflected (0: not an input, never).
    pub fn applied(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.applied
    }
}

/// One change of an alert's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: String,
    pub status: AlertStatus,
    /// `anom` for the pipeline's own decisions, else the user who acknowledged or resolved.
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The detector's kind: robust_zscore, ewma, …, onnx.
    pub kind: String,
    pub score: f64,
    /// None when a model's label decides.
    pub threshold: Option<f64>,
    /// Multivariate detectors: the inputs that drove the score, with their shares (0..1),
    /// largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributions: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    #[default]
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Resolved => "resolved",
        }
    }

    /// Firing or acknowledged: the condition still holds.
    pub fn is_active(self) -> bool {
        self != AlertStatus::Resolved
    }
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlertStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "firing" => Ok(AlertStatus::Firing),
            "acknowledged" => Ok(AlertStatus::Acknowledged),
            "resolved" => Ok(AlertStatus::Resolved),
            _ => Err(format!(
                "expected firing, acknowledged or resolved, found `{s}`"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub stream: String,
    pub sequence: u64,
    pub index: u32,
}

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Microseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339_us(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(|_| us.to_string(), |t| t.to_string())
}

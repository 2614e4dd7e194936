//! The alert record: what Anom publishes on `anom.<pipeline>.alerts` and sends to sinks.
//! JSON, so any language can read it; its fields are documented in docs/alerts.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pipeline::Severity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable identity: `<pipeline>:<rule or detector>:<ingest sequence>:<index>`. The same event and rule
    /// always give the same id, so receivers can deduplicate on it.
    pub id: String,
    pub pipeline: String,
    pub pipeline_version: String,
    /// The rule or detector that raised it.
    pub rule: String,
    pub severity: Severity,
    /// `firing`, or `resolved` when the condition ended (a silent key sent data again).
    #[serde(default)]
    pub status: AlertStatus,
    pub key: String,
    /// The rule's message template, rendered.
    pub message: String,
    /// Why it fired, in words: the condition and the values it saw.
    pub explanation: String,
    /// RFC 3339.
    pub event_time: String,
    pub ingest_time: String,
    pub raised_at: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The validated event.
    pub event: serde_json::Map<String, serde_json::Value>,
    /// Where the event is in the ingest stream.
    pub source: Source,
    /// For a detector's alert: its score and what drove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
    /// When the event raised more than this alert: every cause, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
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
    Resolved,
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

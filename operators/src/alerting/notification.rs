//! A notification: what one sink receives for one group of alerts. The webhook sink POSTs it
//! as JSON (the body documented in docs/alerts.md); Slack, email and PagerDuty format it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alerting::record::Alert;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable: a notification re-sent after a crash carries the same id (the webhook's
    /// `Idempotency-Key`), so receivers can drop the repeat.
    pub id: String,
    pub pipeline: String,
    /// The sink it is for.
    pub sink: String,
    /// `firing` when any alert in it still fires (or is acknowledged), else `resolved`.
    pub status: GroupStatus,
    /// Identifies the group: the route and the values of its `group_by` labels.
    pub group_key: String,
    /// The `group_by` labels and their values, shared by every alert in the group.
    pub group_labels: BTreeMap<String, String>,
    /// The group's alerts, firing ones first, each with its own status.
    pub alerts: Vec<Alert>,
    /// How many notifications this group had before (0 for the first).
    pub sequence: u64,
    /// RFC 3339.
    pub sent_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Firing,
    Resolved,
}

impl Notification {
    /// Alerts with the given status (firing includes acknowledged).
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|a| a.status.is_active())
    }

    pub fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|a| !a.status.is_active())
    }

    /// One line for titles and subjects: "[FIRING:3] payments: big_spend (critical)".
    pub fn title(&self) -> String {
        let firing = self.firing().count();
        let head = match self.status {
            GroupStatus::Firing => format!("[FIRING:{firing}]"),
            GroupStatus::Resolved => "[RESOLVED]".to_string(),
        };
        let mut rules: Vec<&str> = self.alerts.iter().map(|a| a.rule.as_str()).collect();
        rules.dedup();
        let severity = self
            .alerts
            .iter()
            .map(|a| a.severity)
            .max()
            .unwrap_or_default();
        format!(
            "{head} {}: {} ({severity})",
            self.pipeline,
            rules.join(", ")
        )
    }
}

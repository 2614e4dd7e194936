//! Silences: "do not notify about alerts matching these labels between these times". A
//! silenced alert still fires and is listed; only its notifications are held back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use anom_pipeline::matcher::{self, Matcher};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub pipeline: String,
    /// All must hold for an alert to be silenced.
    pub matchers: Vec<Matcher>,
    /// RFC 3339.
    pub starts_at: String,
    pub ends_at: String,
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    pub created_at: String,
}

impl Silence {
    /// Whether it is in force at `now_ms` (epoch milliseconds).
    pub fn is_active(&self, now_ms: i64) -> bool {
        match (millis(&self.starts_at), millis(&self.ends_at)) {
            (Some(start), Some(end)) => start <= now_ms && now_ms < end,
            _ => false,
        }
    }

    /// Whether it is over (expired, or ended by hand).
    pub fn is_expired(&self, now_ms: i64) -> bool {
        millis(&self.ends_at).is_none_or(|end| end <= now_ms)
    }

    pub fn mutes(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        !self.matchers.is_empty()
            && self.is_active(now_ms)
            && matcher::all_match(&self.matchers, labels)
    }

    /// `active`, `pending` (starts later) or `expired`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        if self.is_expired(now_ms) {
            "expired"
        } else if self.is_active(now_ms) {
            "active"
        } else {
            "pending"
        }
    }
}

/// RFC 3339 to epoch milliseconds.
pub fn millis(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutes_matching_alerts_only_while_active() {
        let s = Silence {
            id: "s1".into(),
            pipeline: "p".into(),
            matchers: vec![Matcher::parse("rule=cpu").unwrap()],
            starts_at: "2026-11-21T10:00:00Z".into(),
            ends_at: "2026-11-21T11:00:00Z".into(),
            created_by: "ana".into(),
            comment: String::new(),
            created_at: "2026-11-21T09:00:00Z".into(),
        };
        let at = |t: &str| millis(t).unwrap();
        let cpu: BTreeMap<String, String> = [("rule".to_string(), "cpu".to_string())].into();
        let mem: BTreeMap<String, String> = [("rule".to_string(), "mem".to_string())].into();
        assert!(s.mutes(&cpu, at("2026-11-21T10:30:00Z")));
        assert!(!s.mutes(&mem, at("2026-11-21T10:30:00Z")));
        assert!(!s.mutes(&cpu, at("2026-11-21T09:59:59Z")));
        assert!(!s.mutes(&cpu, at("2026-11-21T11:00:00Z")));
        assert_eq!(s.state(at("2026-11-21T09:00:00Z")), "pending");
        assert_eq!(s.state(at("2026-11-21T10:00:00Z")), "active");
        assert_eq!(s.state(at("2026-11-21T11:00:00Z")), "expired");
    }
}

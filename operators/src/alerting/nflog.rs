//! The notification log: per (sink, group), what was last sent, so that a notifier started
//! again (after a crash, a move to another worker, a new pipeline version) sends what is new
//! and nothing twice. Kept in the `ANOM_NFLOG` bucket.
//!
//! A notification is logged as `pending` before it is sent and cleared once delivered (or
//! dead-lettered): a notifier that finds a pending one sends it again, with the same id.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::notification::Notification;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub group_key: String,
    /// Firing (or acknowledged) alerts last notified, as `<id>@<starts_at>`: a new
    /// occurrence of the same alert is news.
    pub firing: BTreeSet<String>,
    pub resolved: BTreeSet<String>,
    pub acknowledged: BTreeSet<String>,
    /// When the last notification was sent (epoch ms).
    pub sent_ms: i64,
    /// Notifications sent to this group so far.
    pub sequence: u64,
    /// Logged, not yet delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Notification>,
}

/// What a group holds now, in the entry's terms.
#[derive(Debug, Default, PartialEq)]
pub struct Current {
    pub firing: BTreeSet<String>,
    pub resolved: BTreeSet<String>,
    pub acknowledged: BTreeSet<String>,
    /// Some firing alert is not acknowledged (only those repeat).
    pub unacknowledged: bool,
}

/// Whether the group needs a notification now (Alertmanager's dedup stage, plus
/// acknowledgements for sinks that are told of them).
pub fn needs_update(
    entry: Option<&Entry>,
    now: &Current,
    send_resolved: bool,
    send_acknowledged: bool,
    repeat_ms: i64,
    now_ms: i64,
) -> bool {
    let Some(entry) = entry else {
        return !now.firing.is_empty();
    };
    if !now.firing.is_subset(&entry.firing) {
        return true;
    }
    // All resolved: tell the sink (even one that does not want resolutions: it clears the
    // log), unless it never heard of them.
    if now.firing.is_empty() {
        return !entry.firing.is_empty();
    }
    if send_resolved && !now.resolved.is_subset(&entry.resolved) {
        return true;
    }
    if send_acknowledged && !now.acknowledged.is_subset(&entry.acknowledged) {
        return true;
    }
    now.unacknowledged && now_ms - entry.sent_ms >= repeat_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn current(firing: &[&str], resolved: &[&str]) -> Current {
        Current {
            firing: set(firing),
            resolved: set(resolved),
            acknowledged: BTreeSet::new(),
            unacknowledged: !firing.is_empty(),
        }
    }

    #[test]
    fn dedups_like_alertmanager() {
        let entry = Entry {
            firing: set(&["a", "b"]),
            sent_ms: 1_000,
            ..Entry::default()
        };
        let e = Some(&entry);
        // First time: only when something fires.
        assert!(needs_update(
            None,
            &current(&["a"], &[]),
            true,
            false,
            10,
            0
        ));
        assert!(!needs_update(
            None,
            &current(&[], &["a"]),
            true,
            false,
            10,
            0
        ));
        // Nothing new before repeat; a new alert; repeat after the interval.
        assert!(!needs_update(
            e,
            &current(&["a", "b"], &[]),
            true,
            false,
            10_000,
            2_000
        ));
        assert!(needs_update(
            e,
            &current(&["a", "c"], &[]),
            true,
            false,
            10_000,
            2_000
        ));
        assert!(needs_update(
            e,
            &current(&["a", "b"], &[]),
            true,
            false,
            10_000,
            11_000
        ));
        // A resolution is news to sinks that want it; all resolved is news to every sink.
        assert!(needs_update(
            e,
            &current(&["a"], &["b"]),
            true,
            false,
            10_000,
            2_000
        ));
        assert!(!needs_update(
            e,
            &current(&["a"], &["b"]),
            false,
            false,
            10_000,
            2_000
        ));
        assert!(needs_update(
            e,
            &current(&[], &["a", "b"]),
            false,
            false,
            10_000,
            2_000
        ));
        // Acknowledged alerts do not repeat; acknowledgements are news where asked for.
        let mut acked = current(&["a", "b"], &[]);
        acked.acknowledged = set(&["a", "b"]);
        acked.unacknowledged = false;
        assert!(!needs_update(e, &acked, true, false, 10_000, 11_000));
        assert!(needs_update(e, &acked, true, true, 10_000, 2_000));
    }
}

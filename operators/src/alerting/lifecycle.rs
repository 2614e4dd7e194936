//! The lifecycle of alerts: one record per identity that goes firing → acknowledged →
//! resolved, folds repeated detections into itself, and resolves when its end condition is
//! met (the condition stopped holding, after `keep_firing_for`), after `resolve_timeout`
//! without detections, or by hand.
//!
//! Pure logic: the alert stage feeds it detections, clears, commands and clock ticks and
//! publishes what [`Lifecycle::take_changes`] returns.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::alerting::record::{rfc3339_ms, Alert, AlertStatus, Tracking, Transition};

use super::silence::millis;
use super::store::{Action, Command};

/// The most transitions an alert keeps in its history.
const HISTORY: usize = 50;

/// How long a resolved alert stays in memory (it stays in the bucket for its retention).
const KEEP_RESOLVED_MS: i64 = 3_600_000;

/// Non-status changes of one alert (a new count, the latest event) are written at most
/// this often; status changes are written at once.
pub const UPDATE_EVERY_MS: i64 = 1_000;

/// When something happens to an alert: the event's time, the wall clock, and the position
/// of the input in the alert stage's stream (0 for clock ticks).
#[derive(Debug, Clone, Copy, Default)]
pub struct At {
    pub event_ms: i64,
    pub now_ms: i64,
    pub seq: u64,
}

/// The end-condition settings of the rule or detector behind an alert.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// The condition must hold this long (event time) before the alert fires.
    pub for_: Duration,
    /// It keeps firing this long after the condition stopped holding.
    pub keep_firing_for: Duration,
}

struct Tracked {
    alert: Alert,
    /// Wall clock of the latest detection (for `resolve_timeout`).
    detected_ms: i64,
    /// While the condition holds but `for` has not passed: since when (event time).
    pending_since: Option<i64>,
    /// After the condition stopped holding, during `keep_firing_for`: since when (event
    /// time, wall clock), and for how long it keeps firing.
    clearing_since: Option<(i64, i64, Duration)>,
    /// Wall clock of the last write of this alert.
    written_ms: i64,
    /// Changed since the last write.
    dirty: bool,
}

/// What changed: alerts to write to the bucket and, for status changes, to publish.
#[derive(Debug, Default)]
pub struct Changes {
    /// New status: published on the alert stream (and written).
    pub transitions: Vec<Alert>,
    /// Written to the bucket only.
    pub updates: Vec<Alert>,
}

pub struct Lifecycle {
    alerts: HashMap<String, Tracked>,
    resolve_timeout: Option<Duration>,
    /// Status changes not yet taken, in order, each as it was when it happened.
    transitions: Vec<Alert>,
    applied_requests: BTreeSet<String>,
}

impl Lifecycle {
    /// Starts from the alerts already stored (those this partition owns).
    pub fn new(stored: Vec<Alert>, resolve_timeout: Option<Duration>, now_ms: i64) -> Lifecycle {
        let alerts = stored
            .into_iter()
            .map(|alert| {
                let detected_ms = millis(&alert.raised_at).unwrap_or(now_ms);
                let id = alert.id.clone();
                let t = Tracked {
                    alert,
                    detected_ms,
                    pending_since: None,
                    clearing_since: None,
                    written_ms: now_ms,
                    dirty: false,
                };
                (id, t)
            })
            .collect();
        Lifecycle {
            alerts,
            resolve_timeout,
            transitions: Vec::new(),
            applied_requests: BTreeSet::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id).map(|t| &t.alert)
    }

    /// Whether the alert is firing or acknowledged (or waiting out its `for`).
    pub fn is_tracking(&self, id: &str) -> bool {
        self.alerts
            .get(id)
            .is_some_and(|t| t.alert.status.is_active() || t.pending_since.is_some())
    }

    /// The condition holds for `detected` (a freshly rendered record, its `id` the identity)
    /// at event time `event_ms`. `new_episode`: this detection may start a new occurrence
    /// (a rule hit, a detector's crossing), not only extend a firing one.
    pub fn detected(&mut self, detected: Alert, timing: Timing, new_episode: bool, at: At) {
        let At {
            event_ms, now_ms, ..
        } = at;
        let id = detected.id.clone();
        let tracked = self.alerts.get_mut(&id);
        if tracked
            .as_ref()
            .is_some_and(|t| t.alert.tracking.applied(at.seq))
        {
            return; // already in the stored state: a redelivery after a restart
        }
        match tracked {
            Some(t) if t.alert.status.is_active() && t.pending_since.is_none() => {
                let a = &mut t.alert;
                a.count += 1;
                refresh(a, detected);
                a.tracking.applied = at.seq;
                a.updated_at = rfc3339_ms(now_ms);
                a.version += 1;
                t.detected_ms = now_ms;
                t.clearing_since = None;
                t.dirty = true;
            }
            _ if !new_episode => {}
            tracked => {
                let pending_since = tracked
                    .as_ref()
                    .and_then(|t| t.pending_since)
                    .unwrap_or(event_ms);
                if (event_ms - pending_since) < timing.for_.as_millis() as i64 {
                    let t = self.alerts.entry(id).or_insert_with(|| Tracked {
                        // Not fired yet: stored nowhere, counted as resolved.
                        alert: Alert {
                            status: AlertStatus::Resolved,
                            ..detected
                        },
                        detected_ms: now_ms,
                        pending_since: None,
                        clearing_since: None,
                        written_ms: 0,
                        dirty: false,
                    });
                    t.pending_since = Some(pending_since);
                    return;
                }
                let previous = self.alerts.remove(&id);
                let mut a = detected;
                // A stored but never fired record (pending) has version 0 and no history.
                let (version, mut history) = previous
                    .filter(|p| p.alert.status == AlertStatus::Resolved)
                    .map(|p| (p.alert.version, p.alert.history))
                    .unwrap_or_default();
                a.status = AlertStatus::Firing;
                a.starts_at = rfc3339_ms(now_ms);
                a.updated_at = a.starts_at.clone();
                a.ends_at = None;
                a.count = 1;
                a.acknowledged_by = None;
                a.acknowledged_at = None;
                a.resolved_by = None;
                a.version = version + 1;
                a.tracking = Tracking {
                    started: at.seq,
                    applied: at.seq,
                    ..a.tracking
                };
                push(
                    &mut history,
                    Transition {
                        at: a.starts_at.clone(),
                        status: AlertStatus::Firing,
                        by: "anom".into(),
                        note: a.explanation.clone(),
                    },
                );
                a.history = history;
                self.transitions.push(a.clone());
                self.alerts.insert(
                    id,
                    Tracked {
                        alert: a,
                        detected_ms: now_ms,
                        pending_since: None,
                        clearing_since: None,
                        written_ms: now_ms,
                        dirty: true,
                    },
                );
            }
        }
    }

    /// The condition no longer holds for alert `id` at event time `event_ms`; `why` says so
    /// in words ("`durationMs > 5000` no longer holds for key A: durationMs = 120"). `ended_by`:
    /// the record of the event that showed it, whose event context the resolved alert keeps.
    pub fn cleared(
        &mut self,
        id: &str,
        why: &str,
        ended_by: Option<Alert>,
        timing: Timing,
        at: At,
    ) {
        let At {
            event_ms, now_ms, ..
        } = at;
        let Some(t) = self.alerts.get_mut(id) else {
            return;
        };
        // An event ingested before the one the alert last took its state from cannot end it.
        // After a crash the rules stage replays its input with an empty memory and may pass on
        // such an event it had not passed on before: a new position in this stage's input,
        // which `applied` does not catch (it resolved an alert with an older event in
        // crash_recovery, about one run in six).
        if ended_by.as_ref().is_some_and(|e| {
            e.source.stream == t.alert.source.stream && e.source.sequence < t.alert.source.sequence
        }) {
            return;
        }
        t.pending_since = None;
        if !t.alert.status.is_active() || t.alert.tracking.applied(at.seq) {
            return;
        }
        t.alert.tracking.applied = at.seq;
        let (since, _, keep) =
            *t.clearing_since
                .get_or_insert((event_ms, now_ms, timing.keep_firing_for));
        if event_ms - since >= keep.as_millis() as i64 {
            if let Some(e) = ended_by {
                let a = &mut t.alert;
                (a.event, a.source, a.event_time, a.ingest_time) =
                    (e.event, e.source, e.event_time, e.ingest_time);
            }
            self.resolve(id, "anom", why.to_string(), now_ms);
        }
    }

    /// A user's acknowledgement or resolution. A command already applied (same request id)
    /// or for an alert that is not active changes nothing.
    pub fn command(&mut self, c: &Command, at: At) {
        let now_ms = at.now_ms;
        if !self.applied_requests.insert(c.request.clone()) {
            return;
        }
        let Some(t) = self.alerts.get_mut(&c.alert) else {
            return;
        };
        if t.alert.tracking.applied(at.seq) {
            return;
        }
        t.alert.tracking.applied = at.seq.max(t.alert.tracking.applied);
        match (c.action, t.alert.status) {
            (Action::Acknowledge, AlertStatus::Firing) => {
                let a = &mut t.alert;
                let at = rfc3339_ms(now_ms);
                a.status = AlertStatus::Acknowledged;
                a.acknowledged_by = Some(c.by.clone());
                a.acknowledged_at = Some(at.clone());
                a.updated_at = at.clone();
                a.version += 1;
                push(
                    &mut a.history,
                    Transition {
                        at,
                        status: AlertStatus::Acknowledged,
                        by: c.by.clone(),
                        note: c.comment.clone(),
                    },
                );
                self.transitions.push(a.clone());
                t.dirty = true;
            }
            (Action::Resolve, s) if s.is_active() => {
                let why = if c.comment.is_empty() {
                    format!("resolved by {}", c.by)
                } else {
                    format!("resolved by {}: {}", c.by, c.comment)
                };
                let by = c.by.clone();
                self.resolve(&c.alert.clone(), &by, why, now_ms);
            }
            _ => {}
        }
    }

    /// Time passing: `resolve_timeout`, `keep_firing_for` when no event of the key came to
    /// end it, and forgetting long-resolved alerts.
    pub fn tick(&mut self, now_ms: i64) {
        let mut due = Vec::new();
        for (id, t) in &self.alerts {
            if !t.alert.status.is_active() {
                continue;
            }
            if let Some((_, wall, keep)) = t.clearing_since {
                if now_ms - wall >= keep.as_millis() as i64 {
                    due.push((
                        id.clone(),
                        "the condition no longer holds (after keep_firing_for)".to_string(),
                    ));
                    continue;
                }
            }
            if let Some(timeout) = self.resolve_timeout {
                if now_ms - t.detected_ms >= timeout.as_millis() as i64 {
                    due.push((
                        id.clone(),
                        format!(
                            "no detection for {} (resolve_timeout)",
                            anom_lang::duration::format(timeout)
                        ),
                    ));
                }
            }
        }
        for (id, why) in due {
            self.resolve(&id, "anom", why, now_ms);
        }
        self.alerts.retain(|_, t| {
            t.alert.status.is_active()
                || t.pending_since.is_some()
                || t.dirty
                || now_ms - t.detected_ms < KEEP_RESOLVED_MS
        });
        // Requests are unique per call; a day of them is plenty to drop redeliveries.
        if self.applied_requests.len() > 100_000 {
            self.applied_requests.clear();
        }
    }

    fn resolve(&mut self, id: &str, by: &str, why: String, now_ms: i64) {
        let Some(t) = self.alerts.get_mut(id) else {
            return;
        };
        let a = &mut t.alert;
        let at = rfc3339_ms(now_ms);
        a.status = AlertStatus::Resolved;
        a.ends_at = Some(at.clone());
        a.updated_at = at.clone();
        a.resolved_by = Some(why.clone());
        a.version += 1;
        push(
            &mut a.history,
            Transition {
                at,
                status: AlertStatus::Resolved,
                by: by.to_string(),
                note: why,
            },
        );
        self.transitions.push(a.clone());
        t.clearing_since = None;
        t.dirty = true;
    }

    /// What to write and publish now: every status change, and the other changed alerts not
    /// written in the last [`UPDATE_EVERY_MS`] (all of them when `flush`).
    pub fn take_changes(&mut self, now_ms: i64, flush: bool) -> Changes {
        let mut changes = Changes::default();
        for a in std::mem::take(&mut self.transitions) {
            if let Some(t) = self.alerts.get_mut(&a.id) {
                if t.alert.version == a.version {
                    t.dirty = false;
                    t.written_ms = now_ms;
                }
            }
            changes.transitions.push(a);
        }
        for t in self.alerts.values_mut() {
            if t.dirty && (flush || now_ms - t.written_ms >= UPDATE_EVERY_MS) {
                changes.updates.push(t.alert.clone());
                t.dirty = false;
                t.written_ms = now_ms;
            }
        }
        changes
    }
}

/// The latest detection's context replaces the previous one.
fn refresh(a: &mut Alert, d: Alert) {
    a.pipeline_version = d.pipeline_version;
    a.severity = d.severity;
    a.message = d.message;
    // A detector still across its threshold has no new explanation: keep the crossing's.
    if !d.explanation.is_empty() {
        a.explanation = d.explanation;
        a.detection = d.detection;
    }
    a.event_time = d.event_time;
    a.ingest_time = d.ingest_time;
    a.raised_at = d.raised_at;
    a.event = d.event;
    a.source = d.source;
    a.verdict = d.verdict;
}

fn push(history: &mut Vec<Transition>, t: Transition) {
    history.push(t);
    if history.len() > HISTORY {
        history.drain(..history.len() - HISTORY);
    }
}

#[cfg(test)]
mod tests;

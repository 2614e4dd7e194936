use super::*;
use crate::alert::Source;
use crate::pipeline::Severity;

fn detection(id: &str, explanation: &str) -> Alert {
    Alert {
        id: id.into(),
        pipeline: "p".into(),
        pipeline_version: "v1".into(),
        rule: "slow".into(),
        severity: Severity::Warning,
        status: AlertStatus::Firing,
        key: "k".into(),
        message: "m".into(),
        explanation: explanation.into(),
        event_time: String::new(),
        ingest_time: String::new(),
        raised_at: String::new(),
        labels: Default::default(),
        event: Default::default(),
        source: Source {
            stream: "S".into(),
            sequence: 1,
            index: 0,
        },
        detection: None,
        verdict: None,
        starts_at: String::new(),
        updated_at: String::new(),
        ends_at: None,
        count: 0,
        acknowledged_by: None,
        acknowledged_at: None,
        resolved_by: None,
        history: Vec::new(),
        version: 0,
    }
}

fn statuses(c: &Changes) -> Vec<(String, AlertStatus, u64)> {
    c.transitions
        .iter()
        .map(|a| (a.id.clone(), a.status, a.version))
        .collect()
}

const T0: i64 = 1_763_000_000_000;

#[test]
fn repeated_detections_update_one_alert_and_a_clear_resolves_it() {
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    for i in 0..5 {
        l.detected(
            detection("a", &format!("d{i}")),
            Timing::default(),
            true,
            T0 + i,
            T0 + i,
        );
    }
    let c = l.take_changes(T0 + 10, false);
    assert_eq!(statuses(&c), vec![("a".into(), AlertStatus::Firing, 1)]);
    assert!(c.updates.is_empty(), "coalesced until UPDATE_EVERY_MS");
    let c = l.take_changes(T0 + 10 + UPDATE_EVERY_MS, false);
    assert_eq!(c.updates.len(), 1);
    assert_eq!((c.updates[0].count, c.updates[0].version), (5, 5));
    assert_eq!(c.updates[0].explanation, "d4");
    l.cleared("a", "back in range", T0 + 20, T0 + 20);
    let c = l.take_changes(T0 + 21, false);
    assert_eq!(statuses(&c), vec![("a".into(), AlertStatus::Resolved, 6)]);
    assert_eq!(
        c.transitions[0].resolved_by.as_deref(),
        Some("back in range")
    );
    assert_eq!(c.transitions[0].history.len(), 2);
    // Firing again is a new occurrence of the same alert, its history kept.
    l.detected(
        detection("a", "again"),
        Timing::default(),
        true,
        T0 + 30,
        T0 + 30,
    );
    let c = l.take_changes(T0 + 31, false);
    assert_eq!(statuses(&c), vec![("a".into(), AlertStatus::Firing, 7)]);
    assert_eq!(
        (c.transitions[0].count, c.transitions[0].history.len()),
        (1, 3)
    );
}

#[test]
fn for_waits_in_event_time_and_keep_firing_for_damps_a_clear() {
    let timing = Timing {
        for_: Duration::from_secs(60),
        keep_firing_for: Duration::from_secs(30),
    };
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    l.detected(detection("a", "x"), timing, true, T0, T0);
    l.detected(detection("a", "x"), timing, true, T0 + 59_000, T0 + 1);
    assert!(
        l.take_changes(T0 + 2, true).transitions.is_empty(),
        "pending for 59s"
    );
    l.detected(detection("a", "x"), timing, true, T0 + 60_000, T0 + 3);
    assert_eq!(l.take_changes(T0 + 4, false).transitions.len(), 1);
    // A clear starts keep_firing_for; a detection inside it cancels the clear.
    l.cleared("a", "ok", T0 + 70_000, T0 + 5);
    l.detected(detection("a", "x"), timing, true, T0 + 80_000, T0 + 6);
    l.cleared("a", "ok", T0 + 90_000, T0 + 7);
    l.cleared("a", "ok", T0 + 119_999, T0 + 8);
    assert!(l.take_changes(T0 + 9, true).transitions.is_empty());
    l.cleared("a", "ok", T0 + 120_000, T0 + 10);
    assert_eq!(
        statuses(&l.take_changes(T0 + 11, true))[0].1,
        AlertStatus::Resolved
    );
    // A pending alert whose condition stops holding starts over.
    l.detected(detection("b", "x"), timing, true, T0, T0);
    l.cleared("b", "ok", T0 + 30_000, T0);
    l.detected(detection("b", "x"), timing, true, T0 + 61_000, T0);
    assert!(l.take_changes(T0, true).transitions.is_empty());
}

#[test]
fn keep_firing_for_ends_on_the_wall_clock_when_the_key_goes_quiet() {
    let timing = Timing {
        for_: Duration::ZERO,
        keep_firing_for: Duration::from_secs(30),
    };
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    l.detected(detection("a", "x"), timing, true, T0, T0);
    l.cleared("a", "ok", T0 + 1_000, T0 + 1_000);
    l.tick(T0 + 30_999);
    assert_eq!(
        l.take_changes(T0, true).transitions.len(),
        1,
        "only the firing"
    );
    l.tick(T0 + 31_000);
    assert_eq!(
        statuses(&l.take_changes(T0, true))[0].1,
        AlertStatus::Resolved
    );
}

#[test]
fn acknowledge_and_resolve_by_hand_once_per_request() {
    let mut l = Lifecycle::new(Vec::new(), Some(Duration::from_secs(300)), T0);
    l.detected(detection("a", "x"), Timing::default(), true, T0, T0);
    l.take_changes(T0, true);
    let ack = Command {
        alert: "a".into(),
        action: Action::Acknowledge,
        by: "ana".into(),
        comment: "on it".into(),
        request: "r1".into(),
    };
    l.command(&ack, T0 + 1);
    l.command(&ack, T0 + 2);
    let c = l.take_changes(T0 + 3, true);
    assert_eq!(
        statuses(&c),
        vec![("a".into(), AlertStatus::Acknowledged, 2)]
    );
    assert_eq!(c.transitions[0].acknowledged_by.as_deref(), Some("ana"));
    // Still acknowledged while it keeps firing.
    l.detected(detection("a", "x"), Timing::default(), true, T0 + 4, T0 + 4);
    assert_eq!(l.get("a").unwrap().status, AlertStatus::Acknowledged);
    // resolve_timeout counts from the latest detection.
    l.tick(T0 + 4 + 299_999);
    assert!(l.take_changes(T0, true).transitions.is_empty());
    let resolve = Command {
        action: Action::Resolve,
        request: "r2".into(),
        ..ack.clone()
    };
    l.command(&resolve, T0 + 5);
    let c = l.take_changes(T0 + 6, true);
    assert_eq!(statuses(&c)[0].1, AlertStatus::Resolved);
    assert_eq!(
        c.transitions[0].resolved_by.as_deref(),
        Some("resolved by ana: on it")
    );
    // Commands for resolved or unknown alerts change nothing.
    l.command(
        &Command {
            request: "r3".into(),
            ..ack.clone()
        },
        T0 + 7,
    );
    l.command(
        &Command {
            alert: "zz".into(),
            request: "r4".into(),
            ..ack
        },
        T0 + 7,
    );
    assert!(l.take_changes(T0 + 8, true).transitions.is_empty());
}

#[test]
fn resolve_timeout_resolves_alerts_without_detections() {
    let mut l = Lifecycle::new(Vec::new(), Some(Duration::from_secs(60)), T0);
    l.detected(detection("a", "x"), Timing::default(), true, T0, T0);
    l.take_changes(T0, true);
    l.tick(T0 + 60_000);
    let c = l.take_changes(T0 + 60_000, true);
    assert_eq!(statuses(&c)[0].1, AlertStatus::Resolved);
    assert_eq!(
        c.transitions[0].resolved_by.as_deref(),
        Some("no detection for 1m (resolve_timeout)")
    );
}

#[test]
fn a_continuing_detection_does_not_reopen_a_resolved_alert() {
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    l.detected(detection("a", "x"), Timing::default(), false, T0, T0);
    assert!(l.take_changes(T0, true).transitions.is_empty());
    assert!(!l.is_tracking("a"));
}

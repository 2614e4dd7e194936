use super::*;
use crate::alerting::record::{Source, Tracking};
use anom_pipeline::Severity;

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
        tracking: Default::default(),
    }
}

fn statuses(c: &Changes) -> Vec<(String, AlertStatus, u64)> {
    c.transitions
        .iter()
        .map(|a| (a.id.clone(), a.status, a.version))
        .collect()
}

const T0: i64 = 1_763_000_000_000;

fn at(event_ms: i64, now_ms: i64) -> At {
    At {
        event_ms,
        now_ms,
        seq: 0,
    }
}

#[test]
fn repeated_detections_update_one_alert_and_a_clear_resolves_it() {
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    for i in 0..5 {
        l.detected(
            detection("a", &format!("d{i}")),
            Timing::default(),
            true,
            at(T0 + i, T0 + i),
        );
    }
    let c = l.take_changes(T0 + 10, false);
    assert_eq!(statuses(&c), vec![("a".into(), AlertStatus::Firing, 1)]);
    assert!(c.updates.is_empty(), "coalesced until UPDATE_EVERY_MS");
    let c = l.take_changes(T0 + 10 + UPDATE_EVERY_MS, false);
    assert_eq!(c.updates.len(), 1);
    assert_eq!((c.updates[0].count, c.updates[0].version), (5, 5));
    assert_eq!(c.updates[0].explanation, "d4");
    l.cleared(
        "a",
        "back in range",
        None,
        Timing::default(),
        at(T0 + 20, T0 + 20),
    );
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
        at(T0 + 30, T0 + 30),
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
    l.detected(detection("a", "x"), timing, true, at(T0, T0));
    l.detected(detection("a", "x"), timing, true, at(T0 + 59_000, T0 + 1));
    assert!(
        l.take_changes(T0 + 2, true).transitions.is_empty(),
        "pending for 59s"
    );
    l.detected(detection("a", "x"), timing, true, at(T0 + 60_000, T0 + 3));
    assert_eq!(l.take_changes(T0 + 4, false).transitions.len(), 1);
    // A clear starts keep_firing_for; a detection inside it cancels the clear.
    l.cleared("a", "ok", None, timing, at(T0 + 70_000, T0 + 5));
    l.detected(detection("a", "x"), timing, true, at(T0 + 80_000, T0 + 6));
    l.cleared("a", "ok", None, timing, at(T0 + 90_000, T0 + 7));
    l.cleared("a", "ok", None, timing, at(T0 + 119_999, T0 + 8));
    assert!(l.take_changes(T0 + 9, true).transitions.is_empty());
    l.cleared("a", "ok", None, timing, at(T0 + 120_000, T0 + 10));
    assert_eq!(
        statuses(&l.take_changes(T0 + 11, true))[0].1,
        AlertStatus::Resolved
    );
    // A pending alert whose condition stops holding starts over.
    l.detected(detection("b", "x"), timing, true, at(T0, T0));
    l.cleared("b", "ok", None, timing, at(T0 + 30_000, T0));
    l.detected(detection("b", "x"), timing, true, at(T0 + 61_000, T0));
    assert!(l.take_changes(T0, true).transitions.is_empty());
}

#[test]
fn keep_firing_for_ends_on_the_wall_clock_when_the_key_goes_quiet() {
    let timing = Timing {
        for_: Duration::ZERO,
        keep_firing_for: Duration::from_secs(30),
    };
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    l.detected(detection("a", "x"), timing, true, at(T0, T0));
    l.cleared("a", "ok", None, timing, at(T0 + 1_000, T0 + 1_000));
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
    l.detected(detection("a", "x"), Timing::default(), true, at(T0, T0));
    l.take_changes(T0, true);
    let ack = Command {
        alert: "a".into(),
        action: Action::Acknowledge,
        by: "ana".into(),
        comment: "on it".into(),
        request: "r1".into(),
    };
    l.command(&ack, at(T0 + 1, T0 + 1));
    l.command(&ack, at(T0 + 2, T0 + 2));
    let c = l.take_changes(T0 + 3, true);
    assert_eq!(
        statuses(&c),
        vec![("a".into(), AlertStatus::Acknowledged, 2)]
    );
    assert_eq!(c.transitions[0].acknowledged_by.as_deref(), Some("ana"));
    // Still acknowledged while it keeps firing.
    l.detected(
        detection("a", "x"),
        Timing::default(),
        true,
        at(T0 + 4, T0 + 4),
    );
    assert_eq!(l.get("a").unwrap().status, AlertStatus::Acknowledged);
    // resolve_timeout counts from the latest detection.
    l.tick(T0 + 4 + 299_999);
    assert!(l.take_changes(T0, true).transitions.is_empty());
    let resolve = Command {
        action: Action::Resolve,
        request: "r2".into(),
        ..ack.clone()
    };
    l.command(&resolve, at(T0 + 5, T0 + 5));
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
        at(T0 + 7, T0 + 7),
    );
    l.command(
        &Command {
            alert: "zz".into(),
            request: "r4".into(),
            ..ack
        },
        at(T0 + 7, T0 + 7),
    );
    assert!(l.take_changes(T0 + 8, true).transitions.is_empty());
}

#[test]
fn resolve_timeout_resolves_alerts_without_detections() {
    let mut l = Lifecycle::new(Vec::new(), Some(Duration::from_secs(60)), T0);
    l.detected(detection("a", "x"), Timing::default(), true, at(T0, T0));
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
    l.detected(detection("a", "x"), Timing::default(), false, at(T0, T0));
    assert!(l.take_changes(T0, true).transitions.is_empty());
    assert!(!l.is_tracking("a"));
}

#[test]
fn inputs_already_in_the_stored_state_change_nothing() {
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    let input = |seq| At {
        event_ms: T0,
        now_ms: T0,
        seq,
    };
    l.detected(detection("a", "x"), Timing::default(), true, input(10));
    l.detected(detection("a", "x"), Timing::default(), true, input(11));
    let stored = l.take_changes(T0, true).updates;
    assert_eq!(
        stored[0].tracking,
        Tracking {
            started: 10,
            applied: 11,
            ..Default::default()
        }
    );
    // A restart: the stored alert comes back and inputs 10..=12 are delivered again.
    let mut l = Lifecycle::new(stored, None, T0);
    l.detected(detection("a", "x"), Timing::default(), true, input(10));
    l.detected(detection("a", "x"), Timing::default(), true, input(11));
    l.cleared("a", "ok", None, Timing::default(), input(11));
    assert!(l.take_changes(T0, true).updates.is_empty(), "nothing new");
    l.cleared("a", "ok", None, Timing::default(), input(12));
    let c = l.take_changes(T0, true);
    assert_eq!(c.transitions.len(), 1);
    assert_eq!(c.transitions[0].count, 2);
    assert_eq!(
        c.transitions[0].tracking,
        Tracking {
            started: 10,
            applied: 12,
            ..Default::default()
        }
    );
}

#[test]
fn keep_firing_for_holds_for_an_alert_loaded_after_a_restart() {
    let timing = Timing {
        for_: Duration::ZERO,
        keep_firing_for: Duration::from_secs(30),
    };
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    l.detected(detection("a", "x"), timing, true, at(T0, T0));
    let stored = l.take_changes(T0, true).transitions;
    // The restarted stage has seen no detection yet: the rule's setting still applies.
    let mut l = Lifecycle::new(stored, None, T0);
    l.cleared("a", "ok", None, timing, at(T0 + 1_000, T0 + 1_000));
    assert!(l.take_changes(T0, true).transitions.is_empty());
    l.cleared("a", "ok", None, timing, at(T0 + 31_000, T0 + 31_000));
    assert_eq!(
        statuses(&l.take_changes(T0, true))[0].1,
        AlertStatus::Resolved
    );
}

#[test]
fn an_event_ingested_before_the_alerts_latest_cannot_end_it() {
    let mut l = Lifecycle::new(Vec::new(), None, T0);
    let from = |sequence| {
        let mut a = detection("a", "x");
        a.source.sequence = sequence;
        a
    };
    let input = |seq| At {
        event_ms: T0,
        now_ms: T0,
        seq,
    };
    l.detected(from(2479), Timing::default(), true, input(1));
    l.take_changes(T0, true);
    // A replayed older event, at a new position of the input: ignored.
    l.cleared("a", "ok", Some(from(2429)), Timing::default(), input(2));
    assert!(l.take_changes(T0, true).transitions.is_empty());
    assert!(l.is_tracking("a"));
    // The key's next event ends it.
    l.cleared("a", "ok", Some(from(2529)), Timing::default(), input(3));
    let c = l.take_changes(T0, true);
    assert_eq!(statuses(&c), vec![("a".into(), AlertStatus::Resolved, 2)]);
    assert_eq!(c.transitions[0].source.sequence, 2529);
}

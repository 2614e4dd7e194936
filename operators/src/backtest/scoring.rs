//! Scoring detections against labels: per event (precision, recall, F1), per labelled
//! window (detected or missed, time to detect) and the window score of the Numenta Anomaly
//! Benchmark, which rewards alerts early in a window and charges alerts outside any.

use super::labels::Window;
use super::report::{Confusion, Latency, Scores};

/// The NAB standard profile: a detected window earns up to 1, a false alert costs up to
/// 0.11, a missed window costs 1.
pub const A_TP: f64 = 1.0;
pub const A_FP: f64 = 0.11;
pub const A_FN: f64 = 1.0;

/// NAB's scaled sigmoid of an alert's position `y` relative to a window's end: -1 (the
/// window's start) earns ~0.987, 0 (its end) earns 0, and after the end the value falls
/// towards -1.
pub fn sigmoid(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// The windows a labels field implies: per key, each run of consecutive labelled events
/// (in event time) from its first to its last event. `events`: per key, (time, labelled)
/// in event-time order.
pub fn windows_of_runs<'a>(
    events: impl IntoIterator<Item = (&'a str, &'a [(i64, bool)])>,
) -> Vec<Window> {
    let mut windows = Vec::new();
    for (key, series) in events {
        let mut run: Option<(i64, i64)> = None;
        for &(t, labelled) in series {
            run = match (run, labelled) {
                (None, true) => Some((t, t)),
                (Some((s, _)), true) => Some((s, t)),
                (Some((s, e)), false) => {
                    windows.push(window(key, s, e));
                    None
                }
                (None, false) => None,
            };
        }
        if let Some((s, e)) = run {
            windows.push(window(key, s, e));
        }
    }
    windows.sort_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
    windows
}

fn window(key: &str, start_ms: i64, end_ms: i64) -> Window {
    Window {
        key: Some(key.to_string()),
        start_ms,
        end_ms,
        label: None,
    }
}

/// Scores `alerts` (key, event time raised) against `windows`, with the per-event counts.
pub fn score(events: Confusion, windows: &[Window], alerts: &[(&str, i64)]) -> Scores {
    let mut first: Vec<Option<i64>> = vec![None; windows.len()];
    let mut false_alerts = 0u64;
    let mut raw = 0.0;
    let mut alerts: Vec<(&str, i64)> = alerts.to_vec();
    alerts.sort_by_key(|a| a.1);
    for &(key, t) in &alerts {
        match windows.iter().position(|w| w.covers(key, t)) {
            Some(i) => {
                // Only a window's first alert counts; later ones in it are neither.
                if first[i].is_none() {
                    first[i] = Some(t);
                    raw += A_TP * sigmoid(position(&windows[i], t));
                }
            }
            None => {
                false_alerts += 1;
                // After a window of the key: less costly the closer it follows it.
                let before = windows
                    .iter()
                    .filter(|w| w.key.as_deref().is_none_or(|k| k == key) && w.end_ms < t)
                    .max_by_key(|w| w.end_ms);
                let y = before.map_or(1.0, |w| position(w, t));
                raw += A_FP * sigmoid(y);
            }
        }
    }
    let detected: Vec<i64> = windows
        .iter()
        .zip(&first)
        .filter_map(|(w, f)| f.map(|t| t - w.start_ms))
        .collect();
    let missed = (windows.len() - detected.len()) as u64;
    raw -= A_FN * missed as f64;
    let n = windows.len() as f64;
    let (null, perfect) = (-A_FN * n, A_TP * sigmoid(-1.0) * n);
    Scores {
        precision: events.precision(),
        recall: events.recall(),
        f1: events.f1(),
        events,
        windows: windows.to_vec(),
        windows_detected: detected.len() as u64,
        windows_missed: missed,
        false_alerts,
        time_to_detect: latency(detected),
        window_score: (!windows.is_empty()).then(|| 100.0 * (raw - null) / (perfect - null)),
    }
}

/// Where `t` lies relative to a window's end, in window lengths (start: -1, end: 0).
fn position(w: &Window, t: i64) -> f64 {
    let len = w.end_ms - w.start_ms;
    if len == 0 {
        // A one-event window: an alert on it is at its start.
        return if t <= w.end_ms {
            -1.0
        } else {
            (t - w.end_ms) as f64 / 1000.0
        };
    }
    (t - w.end_ms) as f64 / len as f64
}

fn latency(mut ms: Vec<i64>) -> Option<Latency> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_unstable();
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2] as f64
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) as f64 / 2.0
    };
    Some(Latency {
        mean_ms: ms.iter().sum::<i64>() as f64 / n as f64,
        median_ms: median,
        max_ms: ms[n - 1] as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, start_ms: i64, end_ms: i64) -> Window {
        window(key, start_ms, end_ms)
    }

    #[test]
    fn event_counts_give_precision_recall_and_f1() {
        let c = Confusion {
            true_positives: 6,
            false_positives: 2,
            false_negatives: 4,
            true_negatives: 88,
        };
        assert_eq!(c.precision(), Some(0.75));
        assert_eq!(c.recall(), Some(0.6));
        let f1 = c.f1().unwrap();
        assert!((f1 - 2.0 * 0.75 * 0.6 / 1.35).abs() < 1e-12, "{f1}");
        assert_eq!(Confusion::default().precision(), None);
    }

    #[test]
    fn runs_of_labelled_events_become_windows_per_key() {
        let a = [(1, false), (2, true), (3, true), (4, false), (5, true)];
        let b = [(1, true)];
        let got = windows_of_runs([("a", &a[..]), ("b", &b[..])]);
        assert_eq!(got, vec![w("b", 1, 1), w("a", 2, 3), w("a", 5, 5)]);
    }

    #[test]
    fn a_perfect_detector_scores_100_and_a_silent_one_0() {
        let windows = [w("a", 1_000, 2_000), w("b", 5_000, 6_000)];
        let perfect = score(
            Confusion::default(),
            &windows,
            &[("a", 1_000), ("b", 5_000)],
        );
        assert!((perfect.window_score.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(perfect.windows_detected, 2);
        assert_eq!(perfect.time_to_detect.unwrap().max_ms, 0.0);
        let silent = score(Confusion::default(), &windows, &[]);
        assert_eq!(silent.window_score, Some(0.0));
        assert_eq!(silent.windows_missed, 2);
        assert_eq!(silent.time_to_detect, None);
    }

    #[test]
    fn later_detection_earns_less_and_false_alerts_cost_by_distance() {
        let windows = [w("a", 1_000, 2_000)];
        // Halfway through: y = -0.5.
        let half = score(Confusion::default(), &windows, &[("a", 1_500)]);
        let expected = 100.0 * (sigmoid(-0.5) + 1.0) / (sigmoid(-1.0) + 1.0);
        assert!((half.window_score.unwrap() - expected).abs() < 1e-9);
        assert_eq!(half.time_to_detect.unwrap().mean_ms, 500.0);
        // The window's second alert changes nothing; another key's alert in the same time
        // range is a false alert with no window of its own before it (full cost).
        let noisy = score(
            Confusion::default(),
            &windows,
            &[("a", 1_000), ("a", 1_900), ("b", 1_500)],
        );
        assert_eq!(noisy.false_alerts, 1);
        let raw = sigmoid(-1.0) + A_FP * sigmoid(1.0);
        let expected = 100.0 * (raw + 1.0) / (sigmoid(-1.0) + 1.0);
        assert!((noisy.window_score.unwrap() - expected).abs() < 1e-9);
        // A false alert right after the window costs less than one long after it.
        let near = score(
            Confusion::default(),
            &windows,
            &[("a", 1_000), ("a", 2_100)],
        );
        let far = score(
            Confusion::default(),
            &windows,
            &[("a", 1_000), ("a", 9_000)],
        );
        assert!(near.window_score > far.window_score);
        assert!(far.window_score < perfect_score());
    }

    fn perfect_score() -> Option<f64> {
        Some(100.0)
    }

    #[test]
    fn windows_without_a_key_apply_to_every_key() {
        let windows = [Window {
            key: None,
            start_ms: 0,
            end_ms: 10,
            label: Some("outage".into()),
        }];
        let s = score(Confusion::default(), &windows, &[("x", 5), ("y", 20)]);
        assert_eq!((s.windows_detected, s.false_alerts), (1, 1));
    }
}

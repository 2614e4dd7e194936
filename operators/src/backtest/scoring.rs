//! Scoring detections against labels: per event (precision, recall, F1), per labelled
//! window (detected or missed, time to detect) and the window score of the Numenta Anomaly
//! Benchmark ([`anom_ml::benchmark`]: by rows of each key, with its probation period), which
//! rewards alerts early in a window and charges alerts outside any.

use std::collections::HashMap;

use super::labels::Window;
use super::report::{Confusion, Latency, Scores};
use anom_ml::benchmark::{self, Outcome};

pub use anom_ml::benchmark::{sigmoid, A_FN, A_FP, A_TP};

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

/// The windows of `key` among `windows`, as (start, end): its own and those of every key,
/// in order. Overlapping ones are merged (NAB's windows never overlap).
pub fn windows_of(windows: &[Window], key: &str) -> Vec<(i64, i64)> {
    let mut own: Vec<(i64, i64)> = windows
        .iter()
        .filter(|w| w.key.as_deref().is_none_or(|k| k == key))
        .map(|w| (w.start_ms, w.end_ms))
        .collect();
    own.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(own.len());
    for (s, e) in own {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// The NAB outcome of `alerts` (key, event time) on the keys' rows (`rows`: per key, its
/// events' times in order). A window of a key with no events is missed; a window without a
/// key counts once per key that has events.
pub fn outcome(
    windows: &[Window],
    rows: &HashMap<String, Vec<i64>>,
    alerts: &[(&str, i64)],
) -> Outcome {
    let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for &(k, t) in alerts {
        by_key.entry(k).or_default().push(t);
    }
    let mut keys: Vec<&String> = rows.keys().collect();
    keys.sort();
    let mut total = Outcome::default();
    for key in keys {
        let times = &rows[key];
        let own = windows_of(windows, key);
        let alerts = by_key.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        total.add(&benchmark::score_series(times, &own, alerts));
    }
    for w in windows {
        if let Some(k) = &w.key {
            if !rows.contains_key(k) {
                total.add(&Outcome {
                    raw: -A_FN,
                    windows: 1,
                    detections: vec![None],
                    ..Outcome::default()
                });
            }
        }
    }
    total
}

/// Scores `alerts` (key, event time raised) against `windows` on the keys' rows, with the
/// per-event counts.
pub fn score(
    events: Confusion,
    windows: &[Window],
    rows: &HashMap<String, Vec<i64>>,
    alerts: &[(&str, i64)],
) -> Scores {
    let o = outcome(windows, rows, alerts);
    let detected: Vec<i64> = o.detections.iter().flatten().copied().collect();
    Scores {
        precision: events.precision(),
        recall: events.recall(),
        f1: events.f1(),
        events,
        windows: windows.to_vec(),
        windows_detected: o.detected(),
        windows_missed: o.windows - o.detected(),
        false_alerts: o.false_alerts,
        probation_alerts: o.probation_alerts,
        time_to_detect: latency(detected),
        window_score: o.score(),
    }
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

    /// One key `a` with a row every 1,000 ms from 0 to 99,000 (probation: 15 rows).
    fn rows() -> HashMap<String, Vec<i64>> {
        HashMap::from([("a".to_string(), (0..100).map(|i| i * 1000).collect())])
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
        let windows = [w("a", 40_000, 49_000), w("a", 70_000, 79_000)];
        let perfect = score(
            Confusion::default(),
            &windows,
            &rows(),
            &[("a", 40_000), ("a", 70_000)],
        );
        assert!((perfect.window_score.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(perfect.windows_detected, 2);
        assert_eq!(perfect.time_to_detect.unwrap().max_ms, 0.0);
        let silent = score(Confusion::default(), &windows, &rows(), &[]);
        assert_eq!(silent.window_score, Some(0.0));
        assert_eq!(silent.windows_missed, 2);
        assert_eq!(silent.time_to_detect, None);
    }

    #[test]
    fn hand_computed_window_score() {
        // Window rows 40..=49 (width 10). An alert on row 45: p = −(49 − 45 + 1)/10 = −0.5.
        // A false alert on row 52: p = (52 − 49)/9. One in probation (row 3) counts for
        // nothing; another key's alert with no rows is ignored.
        let windows = [w("a", 40_000, 49_000)];
        let s = score(
            Confusion::default(),
            &windows,
            &rows(),
            &[("a", 3_000), ("a", 45_000), ("a", 52_000), ("b", 45_000)],
        );
        let raw = sigmoid(-0.5) + A_FP * sigmoid(3.0 / 9.0);
        let expected = 100.0 * (raw + 1.0) / (sigmoid(-1.0) + 1.0);
        assert!((s.window_score.unwrap() - expected).abs() < 1e-9, "{s:?}");
        assert_eq!((s.false_alerts, s.probation_alerts), (1, 1));
        assert_eq!(s.time_to_detect.unwrap().median_ms, 5_000.0);
    }

    #[test]
    fn windows_without_a_key_apply_to_every_key_and_a_key_without_rows_misses_its_own() {
        let windows = [
            Window {
                key: None,
                start_ms: 50_000,
                end_ms: 59_000,
                label: Some("outage".into()),
            },
            w("gone", 0, 10),
        ];
        let s = score(Confusion::default(), &windows, &rows(), &[("a", 55_000)]);
        assert_eq!((s.windows_detected, s.windows_missed), (1, 1));
        assert_eq!(windows_of(&windows, "a"), vec![(50_000, 59_000)]);
    }
}

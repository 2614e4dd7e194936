//! The window score of the Numenta Anomaly Benchmark (NAB), standard profile: how a set of
//! alerts on one series compares with its labelled anomaly windows.
//!
//! The rules, as NAB's `Sweeper` applies them, by row (one row per event of the series):
//! - the first `min(⌊0.15 · rows⌋, 750)` rows are a probation period: alerts there count for
//!   nothing;
//! - an alert in a window earns `A_TP · σ(p)`, where `p = −(right − i + 1) / width` is its
//!   position in rows (−1 on the window's first row, towards 0 on its last) and
//!   `σ(y) = 2 / (1 + e^(5y)) − 1`; only the window's first alert counts;
//! - an alert outside every window costs `A_FP · σ(p)` (negative): `p = 1` (full cost, σ ≈ −0.99)
//!   before the series' first window, otherwise `p = (i − right) / (width − 1)` of the window
//!   before it, so an alert just after a window costs little; `σ = −1` from `p > 3` (and
//!   after a one-row window);
//! - a window with no alert costs `A_FN`.
//!
//! Summed over series, the raw score is normalised so that a detector that never alerts
//! scores 0 and one that alerts on the first row of every window scores 100:
//! `100 · (raw − null) / (perfect − null)`, `null = −A_FN · windows`,
//! `perfect = A_TP · σ(−1) · windows`.

/// Standard profile weights.
pub const A_TP: f64 = 1.0;
pub const A_FP: f64 = 0.11;
pub const A_FN: f64 = 1.0;
/// The share of a series' rows, and their largest number, that are a probation period.
pub const PROBATION_SHARE: f64 = 0.15;
pub const PROBATION_MAX: usize = 750;

/// NAB's scaled sigmoid: 0.987 at −1 (a window's start), 0 at 0 (its end), −0.987 at 1,
/// and exactly −1 beyond 3.
pub fn sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        return -1.0;
    }
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// The number of probation rows of a series of `rows` rows.
pub fn probation(rows: usize) -> usize {
    ((PROBATION_SHARE * rows as f64).floor() as usize).min(PROBATION_MAX)
}

/// How one series' alerts compare with its windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The unnormalised score (sum of the terms above).
    pub raw: f64,
    pub windows: u64,
    /// Per window, in order: the delay from its start to its first alert (ms), if any.
    pub detections: Vec<Option<i64>>,
    /// Alerts outside every window (after probation).
    pub false_alerts: u64,
    /// Alerts after probation.
    pub alerts: u64,
    /// Alerts during probation (not scored).
    pub probation_alerts: u64,
}

impl Outcome {
    pub fn detected(&self) -> u64 {
        self.detections.iter().filter(|d| d.is_some()).count() as u64
    }

    /// Adds another series' outcome (for a corpus).
    pub fn add(&mut self, other: &Outcome) {
        self.raw += other.raw;
        self.windows += other.windows;
        self.detections.extend_from_slice(&other.detections);
        self.false_alerts += other.false_alerts;
        self.alerts += other.alerts;
        self.probation_alerts += other.probation_alerts;
    }

    /// The median delay from a window's start to its first alert, over detected windows.
    pub fn median_time_to_detect_ms(&self) -> Option<f64> {
        let mut d: Vec<i64> = self.detections.iter().flatten().copied().collect();
        if d.is_empty() {
            return None;
        }
        d.sort_unstable();
        let n = d.len();
        Some(if n % 2 == 1 {
            d[n / 2] as f64
        } else {
            (d[n / 2 - 1] + d[n / 2]) as f64 / 2.0
        })
    }

    /// The normalised window score; `None` without windows.
    pub fn score(&self) -> Option<f64> {
        if self.windows == 0 {
            return None;
        }
        let n = self.windows as f64;
        let (null, perfect) = (-A_FN * n, A_TP * sigmoid(-1.0) * n);
        Some(100.0 * (self.raw - null) / (perfect - null))
    }
}

/// Scores one series. `times`: its rows' event times, ascending; `windows`: `(start, end)`
/// in ms, inclusive, in order and disjoint; `alerts`: event times of its alerts, each mapped to
/// the first row at or after it.
pub fn score_series(times: &[i64], windows: &[(i64, i64)], alerts: &[i64]) -> Outcome {
    // Each window as rows [left, right].
    let rows: Vec<(usize, usize)> = windows
        .iter()
        .map(|&(s, e)| {
            let left = times.partition_point(|&t| t < s);
            let right = times.partition_point(|&t| t <= e);
            (left, right.max(left + 1) - 1)
        })
        .collect();
    let probation = probation(times.len());
    let mut out = Outcome {
        windows: windows.len() as u64,
        detections: vec![None; windows.len()],
        ..Outcome::default()
    };
    let mut alerts: Vec<usize> = alerts
        .iter()
        .map(|&t| times.partition_point(|&r| r < t))
        .filter(|&i| i < times.len())
        .collect();
    let all = alerts.len();
    alerts.retain(|&i| i >= probation);
    out.probation_alerts = (all - alerts.len()) as u64;
    alerts.sort_unstable();
    for i in alerts {
        out.alerts += 1;
        match rows.iter().position(|&(l, r)| l <= i && i <= r) {
            Some(w) => {
                if out.detections[w].is_none() {
                    let (l, r) = rows[w];
                    let width = (r - l + 1) as f64;
                    out.detections[w] = Some(times[i] - windows[w].0);
                    out.raw += A_TP * sigmoid(-((r - i + 1) as f64) / width);
                }
            }
            None => {
                out.false_alerts += 1;
                let before = rows.iter().rev().find(|&&(_, r)| r < i);
                let p = match before {
                    None => 1.0,
                    // NAB divides by the window's width less one: after a one-row window,
                    // every false alert costs the full weight.
                    Some(&(l, r)) if l == r => f64::INFINITY,
                    Some(&(l, r)) => (i - r) as f64 / (r - l) as f64,
                };
                out.raw += A_FP * sigmoid(p);
            }
        }
    }
    out.raw -= A_FN * out.detections.iter().filter(|d| d.is_none()).count() as f64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows every 5 minutes from 0.
    fn rows(n: usize) -> Vec<i64> {
        (0..n as i64).map(|i| i * 300_000).collect()
    }

    fn at(row: i64) -> i64 {
        row * 300_000
    }

    #[test]
    fn the_sigmoid_matches_nab() {
        assert!((sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert_eq!(sigmoid(0.0), 0.0);
        assert!((sigmoid(1.0) + 0.986_614_298_151_430_3).abs() < 1e-12);
        assert_eq!(sigmoid(3.5), -1.0);
    }

    #[test]
    fn probation_is_15_percent_up_to_750_rows() {
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(10_320), 750);
        assert_eq!(probation(10), 1);
    }

    #[test]
    fn hand_computed_cases() {
        // 1,000 rows (probation 150); one window on rows 400..=499 (width 100).
        let t = rows(1000);
        let w = [(at(400), at(499))];
        // An alert on the window's first row: σ(−100/100) = σ(−1).
        let first = score_series(&t, &w, &[at(400)]);
        assert!((first.raw - sigmoid(-1.0)).abs() < 1e-12);
        assert!((first.score().unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(first.detections, vec![Some(0)]);
        // On row 450: p = −(499 − 450 + 1)/100 = −0.5; a second alert in the window is nothing.
        let mid = score_series(&t, &w, &[at(450), at(460)]);
        assert!((mid.raw - sigmoid(-0.5)).abs() < 1e-12, "{}", mid.raw);
        assert_eq!((mid.alerts, mid.false_alerts), (2, 0));
        // Normalised: 100 · (σ(−0.5) + 1) / (σ(−1) + 1) = 100 · 1.8483 / 1.9866 ≈ 93.037.
        assert!(
            (mid.score().unwrap() - 93.036_864).abs() < 1e-5,
            "{:?}",
            mid.score()
        );
        // Nothing: −1, score 0.
        let none = score_series(&t, &w, &[]);
        assert_eq!(none.raw, -1.0);
        assert_eq!(none.score(), Some(0.0));
        // A false alert before the window costs 0.11 · σ(1); one in probation costs nothing.
        let early = score_series(&t, &w, &[at(100), at(200), at(400)]);
        let raw = A_FP * sigmoid(1.0) + sigmoid(-1.0);
        assert!((early.raw - raw).abs() < 1e-12);
        assert_eq!((early.alerts, early.false_alerts), (2, 1));
        // After the window: p = (i − 499) / 99; 10 rows after costs 0.11 · σ(10/99), far
        // after (p > 3) the full 0.11.
        let near = score_series(&t, &w, &[at(400), at(509)]);
        assert!((near.raw - (sigmoid(-1.0) + A_FP * sigmoid(10.0 / 99.0))).abs() < 1e-12);
        let far = score_series(&t, &w, &[at(400), at(900)]);
        assert!((far.raw - (sigmoid(-1.0) - A_FP)).abs() < 1e-12);
        assert!(near.raw > far.raw);
    }

    #[test]
    fn alerts_between_rows_count_on_the_next_row_and_outcomes_add_up() {
        let t = rows(100);
        let w = [(at(50), at(59))];
        // 1 ms after row 49 is row 50, the window's first row.
        let o = score_series(&t, &w, &[at(49) + 1]);
        assert_eq!(o.detections, vec![Some(0)]);
        let mut corpus = o.clone();
        corpus.add(&score_series(&t, &w, &[]));
        assert_eq!((corpus.windows, corpus.detected()), (2, 1));
        let expected = 100.0 * (sigmoid(-1.0) - 1.0 + 2.0) / (2.0 * sigmoid(-1.0) + 2.0);
        assert!((corpus.score().unwrap() - expected).abs() < 1e-12);
    }
}

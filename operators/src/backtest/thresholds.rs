//! Thresholds chosen by backtest: "what should my threshold be?".
//!
//! During a run the collector records, per detector and key, every score the score stage gave
//! (event time, score). Since a detector's state never depends on its threshold, replaying
//! those scores through the detector's episodes and cool-down ([`Episode`], exactly as the
//! score stage flags) at another threshold gives exactly the flags the stage would have
//! raised with it. Each detector gets a curve — flags per day (and, with labels, the window
//! score) against the threshold — the threshold with the best window score, and the most
//! sensitive one that keeps within an alert budget (`--budget 5/day`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::labels::Window;
use super::scoring;
use anom_ml::detector::episode::Episode;
use anom_pipeline::definition::Direction;
use anom_pipeline::{DetectorKind, DetectorSpec};

/// One detector's scores: per key, (event time, score) in event-time order.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub keys: HashMap<String, Vec<(i64, f32)>>,
}

impl Recorded {
    pub fn push(&mut self, key: &str, t: i64, score: f64) {
        match self.keys.get_mut(key) {
            Some(v) => v.push((t, score as f32)),
            None => {
                self.keys.insert(key.to_string(), vec![(t, score as f32)]);
            }
        }
    }

    fn scores(&self) -> Vec<f32> {
        let mut all: Vec<f32> = self.keys.values().flatten().map(|e| e.1).collect();
        all.sort_by(f32::total_cmp);
        all
    }
}

/// What one threshold would have given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub threshold: f64,
    /// Events flagged (each opens an episode past the cool-down; each would alert).
    pub flags: u64,
    pub flags_per_day: f64,
    /// With labels: the NAB window score of these flags, windows detected, flags outside
    /// every window, and the median delay to detect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_detected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_flags: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_time_to_detect_ms: Option<f64>,
}

/// One detector's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectorThresholds {
    pub detector: String,
    pub kind: String,
    /// "above" or "below": which side of the threshold is anomalous.
    pub anomalous: String,
    /// Events it scored.
    pub scored: u64,
    /// Its configured threshold, and what it gave.
    pub current: Point,
    /// With labels: the threshold with the best window score (the less sensitive on a tie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Point>,
    /// With a budget: the most sensitive threshold whose flags per day stay within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_budget: Option<Point>,
    /// Every threshold tried, from the most to the least sensitive.
    pub curve: Vec<Point>,
}

/// Per key, its events' times in order (the rows the window score counts).
pub type Rows = HashMap<String, Vec<i64>>;

/// The run's context: labels (windows and the keys' rows) and the span of event time.
pub struct Context<'a> {
    pub windows: Option<(&'a [Window], &'a Rows)>,
    pub days: f64,
    pub budget_per_day: Option<f64>,
}

/// Scores of calibrated detectors are tail probabilities on a fixed scale: a grid of them.
/// Others (models, UDFs, `calibration: none`) use the quantiles of the scores they gave.
const GRID_STEP: f64 = 0.025;
const QUANTILES: [f64; 19] = [
    0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999,
    0.99995, 0.99998, 0.99999, 0.999_995,
];

/// The answer for one detector, or `None` when its flags do not depend on a threshold (a
/// model that labels its rows).
pub fn analyse(
    spec: &DetectorSpec,
    rec: &Recorded,
    ctx: &Context<'_>,
) -> Option<DetectorThresholds> {
    if !spec.threshold.is_finite() {
        return None;
    }
    let above = spec.anomalous == Direction::Above;
    let calibrated = matches!(&spec.kind, DetectorKind::Online(d) if d.calibrated());
    let mut candidates: Vec<f64> = if calibrated {
        (1..=(1.0 / GRID_STEP) as u32)
            // Rounded: 0.3, not 0.30000000000000004.
            .map(|i| (f64::from(i) * GRID_STEP * 1000.0).round() / 1000.0)
            .collect()
    } else {
        let all = rec.scores();
        QUANTILES
            .iter()
            .filter_map(|&q| {
                let q = if above { q } else { 1.0 - q };
                let i = ((all.len() as f64 - 1.0) * q).round() as usize;
                all.get(i).map(|&s| f64::from(s))
            })
            .collect()
    };
    candidates.push(spec.threshold);
    // From the most sensitive to the least.
    candidates.sort_by(|a, b| {
        if above {
            a.total_cmp(b)
        } else {
            b.total_cmp(a)
        }
    });
    candidates.dedup();
    let curve: Vec<Point> = candidates
        .iter()
        .map(|&t| point(spec, rec, ctx, t, above))
        .collect();
    let current = curve
        .iter()
        .find(|p| p.threshold == spec.threshold)
        .cloned()
        .unwrap_or_default();
    let best = ctx.windows.and_then(|_| {
        curve
            .iter()
            .filter(|p| p.window_score.is_some())
            // max_by keeps the last of equals: the least sensitive.
            .max_by(|a, b| a.window_score.unwrap().total_cmp(&b.window_score.unwrap()))
            .cloned()
    });
    let within_budget = ctx.budget_per_day.and_then(|budget| {
        curve
            .iter()
            .filter(|p| p.flags_per_day <= budget)
            // The most flags within the budget; on a tie the more sensitive (first).
            .fold(None::<&Point>, |acc, p| match acc {
                Some(a) if a.flags >= p.flags => Some(a),
                _ => Some(p),
            })
            .cloned()
    });
    Some(DetectorThresholds {
        detector: spec.name.clone(),
        kind: spec.kind_name().to_string(),
        anomalous: if above { "above" } else { "below" }.into(),
        scored: rec.keys.values().map(|v| v.len() as u64).sum(),
        current,
        best,
        within_budget,
        curve,
    })
}

/// Flags (key, event time) at threshold `t`.
pub fn flags<'a>(
    spec: &DetectorSpec,
    rec: &'a Recorded,
    t: f64,
    above: bool,
) -> Vec<(&'a str, i64)> {
    let mut out = Vec::new();
    for (key, scores) in &rec.keys {
        let mut episode = Episode::default();
        for &(at, s) in scores {
            let s = f64::from(s);
            let anomalous = if above { s >= t } else { s <= t };
            if episode.step(anomalous, at, spec.cooldown_ms) {
                out.push((key.as_str(), at));
            }
        }
    }
    out
}

fn point(spec: &DetectorSpec, rec: &Recorded, ctx: &Context<'_>, t: f64, above: bool) -> Point {
    let flagged = flags(spec, rec, t, above);
    let n = flagged.len() as u64;
    let mut p = Point {
        threshold: t,
        flags: n,
        flags_per_day: n as f64 / ctx.days.max(1.0 / 24.0),
        ..Point::default()
    };
    if let Some((windows, rows)) = ctx.windows {
        let o = scoring::outcome(windows, rows, &flagged);
        p.window_score = o.score();
        p.windows_detected = Some(o.detected());
        p.false_flags = Some(o.false_alerts);
        p.median_time_to_detect_ms = o.median_time_to_detect_ms();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use anom_pipeline::Pipeline;

    fn pipeline() -> Pipeline {
        Pipeline::from_yaml(
            "name: t\nkey: k\nevent_time: at\nschema:\n  k: string\n  x: float\n  at: timestamp\ndetectors:\n  - name: d\n    field: x\n    cooldown: 0s\n",
        )
        .unwrap()
    }

    #[test]
    fn replayed_flags_follow_episodes_and_the_threshold() {
        let p = pipeline();
        let spec = &p.detectors[0];
        let mut rec = Recorded::default();
        // Two episodes above 0.5 (one of them with two events), one event at 0.9.
        for (i, s) in [0.1, 0.6, 0.7, 0.2, 0.9, 0.3].iter().enumerate() {
            rec.push("a", i as i64 * 60_000, *s);
        }
        assert_eq!(flags(spec, &rec, 0.5, true).len(), 2);
        assert_eq!(flags(spec, &rec, 0.8, true), vec![("a", 240_000)]);
        assert_eq!(flags(spec, &rec, 0.05, true).len(), 1, "one long episode");
    }

    #[test]
    fn the_best_threshold_and_the_budget_are_read_off_the_curve() {
        let p = pipeline();
        let spec = &p.detectors[0];
        let mut rec = Recorded::default();
        let mut rows = Vec::new();
        // 100 events a minute apart: noise scoring 0.3 at every 10th event, a true anomaly
        // scoring 0.8 at event 60 (labelled 58..=62).
        for i in 0..100i64 {
            let s = if i == 60 {
                0.8
            } else if i % 10 == 5 {
                0.3
            } else {
                0.0
            };
            rec.push("a", i * 60_000, s);
            rows.push(i * 60_000);
        }
        let windows = [Window {
            key: Some("a".into()),
            start_ms: 58 * 60_000,
            end_ms: 62 * 60_000,
            label: None,
        }];
        let rows = HashMap::from([("a".to_string(), rows)]);
        let ctx = Context {
            windows: Some((&windows, &rows)),
            days: 1.0,
            budget_per_day: Some(5.0),
        };
        let t = analyse(spec, &rec, &ctx).unwrap();
        let best = t.best.unwrap();
        // Above 0.3 and up to 0.8, only the anomaly is flagged: the highest such threshold.
        assert_eq!(best.threshold, 0.8, "{:?}", t.curve);
        assert_eq!((best.flags, best.windows_detected), (1, Some(1)));
        // At 0.3 and below, 9 noise flags after probation (rows 15..) cost: worse.
        let low = t.curve.iter().find(|p| p.threshold == 0.25).unwrap();
        assert!(low.window_score < best.window_score);
        assert_eq!(low.flags, 11);
        // Budget 5/day: 11 flags is too many, 1 fits.
        assert_eq!(t.within_budget.unwrap().flags, 1);
        assert_eq!(t.current.threshold, 0.5);
    }
}

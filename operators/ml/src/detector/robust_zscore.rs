//! Robust z-score: how many median absolute deviations (MADs) a value lies from the median of
//! the key's last `window` values.
//!
//! Catches spikes and dips against a baseline that one outlier cannot move (the median and MAD
//! ignore up to half the window), and follows level changes within about `window / 2` events.
//! Parameters: `window` (values kept per key, default 128) and `limit` (MADs at which the score
//! reaches the default threshold 0.99, default 6 ≈ 4σ for normal noise, high enough for the
//! heavy tails of real metrics). `warmup` defaults to 30 values. The score is
//! `squash(|x − median| / MAD / limit)`. When more than half the window is one value (MAD 0),
//! the mean absolute deviation, rescaled to a MAD, stands in; a window of one value only scores
//! any other value 1.
//!
//! The state is the window in arrival order (`window` floats); the sorted copy that makes each
//! update O(window) memory moves instead of a sort is rebuilt after deserializing.

use serde::{Deserialize, Serialize};

use super::stats::{deviation, floor_scale};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

/// MAD per mean absolute deviation for a normal distribution (0.6745 / 0.7979).
const MAD_PER_MEAN_AD: f64 = 0.845_347_532_057_065_9;

#[derive(Debug, Clone)]
pub struct Config {
    pub window: usize,
    pub limit: f64,
    pub warmup: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    seen: u32,
    /// The oldest value's index in `ring` once it is full.
    head: u32,
    ring: Vec<f64>,
    #[serde(skip)]
    sorted: Vec<f64>,
}

impl PartialEq for State {
    // The sorted copy is derived data.
    fn eq(&self, other: &Self) -> bool {
        self.seen == other.seen && self.head == other.head && self.ring == other.ring
    }
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        let window = p.int("window", 128, 3, 100_000)? as usize;
        let limit = p.f64("limit", 6.0, 0.0, 1e6, true)?;
        Ok(Config {
            window,
            limit,
            warmup: warmup.unwrap_or(30).max(3),
        })
    }

    pub(crate) fn new_state(&self) -> State {
        State::default()
    }

    pub(crate) fn fits(&self, s: &State) -> bool {
        s.ring.len() <= self.window && (s.head as usize) < self.window.max(1)
    }

    pub(crate) fn update(&self, s: &mut State, x: f64) -> Reading {
        if s.sorted.len() != s.ring.len() {
            s.sorted = s.ring.clone();
            s.sorted.sort_by(f64::total_cmp);
        }
        let reading = if s.seen >= self.warmup && !s.sorted.is_empty() {
            let (median, mad) = median_mad(&s.sorted);
            let scale = floor_scale(mad, median);
            let dev = deviation(x, median, scale);
            let side = if dev >= 0.0 { 1.0 } else { -1.0 };
            Reading {
                score: squash(dev.abs() / self.limit),
                strength: dev.abs() / self.limit,
                warm: true,
                expected: median,
                deviation: dev,
                unit: Unit::Mads,
                limit: Some(median + side * self.limit * scale),
                basis: Basis::RecentMedian,
                contributions: Vec::new(),
                tail: None,
            }
        } else {
            Reading::cold(Unit::Mads)
        };
        self.push(s, x);
        reading
    }

    fn push(&self, s: &mut State, x: f64) {
        s.seen = s.seen.saturating_add(1);
        if s.ring.len() < self.window {
            s.ring.push(x);
        } else {
            let h = s.head as usize;
            let old = std::mem::replace(&mut s.ring[h], x);
            s.head = ((h + 1) % self.window) as u32;
            let at = s.sorted.partition_point(|v| v.total_cmp(&old).is_lt());
            s.sorted.remove(at);
        }
        let at = s.sorted.partition_point(|v| v.total_cmp(&x).is_lt());
        s.sorted.insert(at, x);
    }
}

/// Median and MAD of a sorted, non-empty slice. The absolute deviations below and above the
/// median are two ascending runs walking outwards, so their median is a merge of n/2 steps.
fn median_mad(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        sorted[n / 2 - 1] / 2.0 + sorted[n / 2] / 2.0
    };
    let split = sorted.partition_point(|v| *v < median);
    let (mut lo, mut hi) = (split, split); // next left is lo - 1, next right is hi
    let mut next = || {
        let l = (lo > 0).then(|| median - sorted[lo - 1]);
        let r = (hi < n).then(|| sorted[hi] - median);
        match (l, r) {
            (Some(a), Some(b)) if a <= b => {
                lo -= 1;
                a
            }
            (Some(a), None) => {
                lo -= 1;
                a
            }
            (_, Some(b)) => {
                hi += 1;
                b
            }
            (None, None) => 0.0,
        }
    };
    let k = n / 2;
    let mut prev = 0.0;
    for _ in 0..k {
        prev = next();
    }
    let kth = next();
    let mut mad = if n % 2 == 1 {
        kth
    } else {
        prev / 2.0 + kth / 2.0
    };
    if mad <= 0.0 {
        // Mostly one value: the mean absolute deviation still sees the rest.
        let mean_ad = sorted
            .iter()
            .map(|v| (v - median).abs() / n as f64)
            .sum::<f64>();
        mad = mean_ad * MAD_PER_MEAN_AD;
    }
    (median, mad)
}

#[cfg(test)]
mod tests {
    use super::super::{Detector, Kind, State as AnyState};
    use super::*;
    use serde_json::{json, Value};

    fn det(params: Value, warmup: u32) -> Detector {
        Detector::new(
            Kind::RobustZscore,
            &super::super::uncalibrated(params),
            Some(warmup),
            1,
        )
        .unwrap()
    }

    #[test]
    fn median_and_mad_by_hand() {
        assert_eq!(median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), (3.0, 1.0));
        // Median 2.5; deviations 0.5, 0.5, 1.5, 1.5 → MAD 1.
        assert_eq!(median_mad(&[1.0, 2.0, 3.0, 4.0]), (2.5, 1.0));
        // Four of five equal: MAD 0, the mean absolute deviation (10/5 = 2) stands in.
        let (m, mad) = median_mad(&[5.0, 5.0, 5.0, 5.0, 15.0]);
        assert_eq!(m, 5.0);
        assert!((mad - 2.0 * MAD_PER_MEAN_AD).abs() < 1e-12);
    }

    #[test]
    fn constant_series_scores_zero() {
        let d = det(Value::Null, 5);
        let mut s = d.new_state();
        for i in 0..50 {
            let r = d.update(&mut s, &[7.0], i);
            assert_eq!(r.score, 0.0);
            assert_eq!(r.warm, i >= 5);
        }
    }

    #[test]
    fn spike_after_warmup_is_flagged_with_its_deviation() {
        let d = det(json!({"window": 5, "limit": 6}), 5);
        let mut s = d.new_state();
        for (i, x) in [1.0, 2.0, 3.0, 4.0, 100.0].into_iter().enumerate() {
            assert!(!d.update(&mut s, &[x], i as i64).warm, "warming up");
        }
        // Window 1,2,3,4,100: median 3, MAD 1 → 13 is 10 MADs above.
        let r = d.update(&mut s, &[13.0], 5);
        assert!(r.warm);
        assert_eq!((r.expected, r.deviation), (3.0, 10.0));
        assert_eq!(r.limit, Some(9.0));
        assert!(r.score > d.default_threshold());
        // Window now 2,3,4,100,13: median 4, MAD 2; 3 is half a MAD below.
        let r = d.update(&mut s, &[3.0], 6);
        assert_eq!((r.expected, r.deviation), (4.0, -0.5));
        assert!(r.score < 0.2);
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(json!({"window": 16}), 4);
        let mut a = d.new_state();
        for i in 0..40 {
            d.update(&mut a, &[(i * 7 % 11) as f64], i);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        assert_eq!(a, b);
        for i in 40..80 {
            let x = [(i * 5 % 13) as f64 + if i == 60 { 50.0 } else { 0.0 }];
            assert_eq!(d.update(&mut a, &x, i), d.update(&mut b, &x, i));
        }
    }

    #[test]
    fn params_are_checked() {
        let e = Detector::new(Kind::RobustZscore, &json!({"window": 2}), None, 1).unwrap_err();
        assert!(e
            .to_string()
            .contains("`window` expects a whole number in [3, 100000]"));
        let e = Detector::new(Kind::RobustZscore, &json!({"limit": -1}), None, 1).unwrap_err();
        assert!(e.to_string().contains("`limit`"), "{e}");
    }
}

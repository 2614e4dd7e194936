//! EWMA control chart: how many σ a value lies from the exponentially weighted moving average
//! of the key's values, σ being the square root of the exponentially weighted variance.
//!
//! Catches spikes and sudden jumps against a baseline that follows slow change. Parameters:
//! `alpha` (weight of each new value, default 0.05: a memory of about 20 events) and `limit`
//! (σ at which the score reaches the default threshold 0.99, default 4). `warmup` defaults to 30
//! values, over which mean and variance are computed exactly. After warm-up a value moves the
//! statistics by at most 4σ (Huber-style clipping) so a single outlier neither drags the mean
//! nor widens the band for the next 1/alpha events. The score is `squash(|x − mean| / σ / limit)`.

use serde::{Deserialize, Serialize};

use super::stats::{deviation, MeanVar};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

/// Residuals beyond this many σ are clipped when learning.
const CLIP: f64 = 4.0;

#[derive(Debug, Clone)]
pub struct Config {
    pub alpha: f64,
    pub limit: f64,
    pub warmup: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    stats: MeanVar,
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        Ok(Config {
            alpha: p.f64("alpha", 0.05, 0.0, 1.0, true)?,
            limit: p.f64("limit", 4.0, 0.0, 1e6, true)?,
            warmup: warmup.unwrap_or(30).max(2),
        })
    }

    pub(crate) fn new_state(&self) -> State {
        State::default()
    }

    pub(crate) fn update(&self, s: &mut State, x: f64) -> Reading {
        let m = &mut s.stats;
        let reading = if m.n >= self.warmup {
            let sigma = m.sigma();
            let dev = deviation(x, m.mean, sigma);
            let side = if dev >= 0.0 { 1.0 } else { -1.0 };
            Reading {
                score: squash(dev.abs() / self.limit),
                strength: dev.abs() / self.limit,
                warm: true,
                expected: m.mean,
                deviation: dev,
                unit: Unit::Sigma,
                limit: Some(m.mean + side * self.limit * sigma),
                basis: Basis::Ewma,
                contributions: Vec::new(),
                tail: None,
            }
        } else {
            Reading::cold(Unit::Sigma)
        };
        m.update(x, self.warmup, self.alpha, CLIP);
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Detector, Kind, State as AnyState};
    use serde_json::{json, Value};

    fn det(params: Value, warmup: u32) -> Detector {
        Detector::new(
            Kind::Ewma,
            &super::super::uncalibrated(params),
            Some(warmup),
            1,
        )
        .unwrap()
    }

    #[test]
    fn constant_series_scores_zero() {
        let d = det(Value::Null, 10);
        let mut s = d.new_state();
        for i in 0..100 {
            let r = d.update(&mut s, &[-3.5], i);
            assert_eq!((r.score, r.warm), (0.0, i >= 10));
        }
    }

    #[test]
    fn spike_by_hand() {
        // Warm-up 2, 4 → mean 3, σ 1 (population). 9 is 6σ above; the limit line is 3 + 4σ.
        let d = det(json!({"alpha": 0.5}), 2);
        let mut s = d.new_state();
        assert!(!d.update(&mut s, &[2.0], 0).warm);
        assert!(!d.update(&mut s, &[4.0], 1).warm);
        let r = d.update(&mut s, &[9.0], 2);
        assert_eq!((r.expected, r.deviation, r.limit), (3.0, 6.0, Some(7.0)));
        assert!(r.score > d.default_threshold());
        // Learning clips the residual at 4σ: mean 3 + 0.5·4 = 5.
        let r = d.update(&mut s, &[5.0], 3);
        assert_eq!(r.expected, 5.0);
        assert_eq!(r.score, 0.0);
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(Value::Null, 5);
        let mut a = d.new_state();
        for i in 0..30 {
            d.update(&mut a, &[(i % 4) as f64], i);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        for i in 30..60 {
            let x = [(i % 5) as f64 * if i == 45 { 20.0 } else { 1.0 }];
            assert_eq!(d.update(&mut a, &x, i), d.update(&mut b, &x, i));
        }
    }

    #[test]
    fn params_are_checked() {
        let e = Detector::new(Kind::Ewma, &json!({"alpha": 0}), None, 1).unwrap_err();
        assert!(
            e.to_string().contains("`alpha` expects a number in (0, 1]"),
            "{e}"
        );
        let e = Detector::new(Kind::Ewma, &json!({"lambda": 0.1}), None, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("valid parameters: calibration, learn, average, alpha, limit"),
            "{e}"
        );
    }
}

//! Two-sided CUSUM on standardised values: catches level shifts and drifts too small for a
//! per-value test, once enough evidence accumulates.
//!
//! Each value is standardised against a slowly learning mean and σ (`z = (x − mean) / σ`, capped
//! at ±`clip` so one spike cannot fake a shift) and accumulated: `S⁺ = max(0, S⁺ + z − k)`,
//! `S⁻ = max(0, S⁻ − z − k)`. The score is `squash(max(S⁺, S⁻) / h)`, so it reaches the default
//! threshold 0.99 exactly when a sum crosses the decision interval `h`; then both sums reset and
//! the baseline jumps to the mean of the run that built the evidence, so a lasting shift alerts
//! once rather than for as long as it lasts. Parameters: `k` (slack in σ, default 1: tuned to
//! shifts of 2σ and more, which keeps daily cycles and heavy-tailed noise from adding up), `h`
//! (decision interval, default 8), `alpha` (baseline learning rate, default 0.05: a memory of
//! about 20 events, so the baseline follows slow cycles but not a sudden shift),
//! `clip` (cap on |z|, default 3). `warmup` defaults to 30 values (exact mean and σ). The
//! baseline keeps learning (slowly, residuals clipped at `clip` σ) while evidence accumulates,
//! so that its σ includes the series' slow ordinary movements (daily cycles) that would
//! otherwise read as shifts.

use serde::{Deserialize, Serialize};

use super::stats::{deviation, fin, MeanVar};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

#[derive(Debug, Clone)]
pub struct Config {
    pub k: f64,
    pub h: f64,
    pub alpha: f64,
    pub clip: f64,
    pub warmup: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    stats: MeanVar,
    pos: f64,
    neg: f64,
    /// Events since both sums were last 0, and the sum of their values.
    run: u32,
    run_sum: f64,
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        Ok(Config {
            k: p.f64("k", 1.0, 0.0, 100.0, false)?,
            h: p.f64("h", 8.0, 0.0, 1e6, true)?,
            alpha: p.f64("alpha", 0.05, 0.0, 1.0, true)?,
            clip: p.f64("clip", 3.0, 0.0, 1e6, true)?,
            warmup: warmup.unwrap_or(30).max(2),
        })
    }

    pub(crate) fn new_state(&self) -> State {
        State::default()
    }

    pub(crate) fn update(&self, s: &mut State, x: f64) -> Reading {
        if s.stats.n < self.warmup {
            s.stats.update(x, self.warmup, self.alpha, self.clip);
            return Reading::cold(Unit::Sigma);
        }
        let (mean, sigma) = (s.stats.mean, s.stats.sigma());
        let z = deviation(x, mean, sigma).clamp(-self.clip, self.clip);
        s.pos = (s.pos + z - self.k).max(0.0);
        s.neg = (s.neg - z - self.k).max(0.0);
        if s.pos == 0.0 && s.neg == 0.0 {
            s.run = 0;
            s.run_sum = 0.0;
        } else {
            s.run = s.run.saturating_add(1);
            s.run_sum = fin(s.run_sum + x);
        }
        let stat = s.pos.max(s.neg);
        let run = s.run;
        let run_mean = if run > 0 {
            s.run_sum / f64::from(run)
        } else {
            x
        };
        let reading = Reading {
            score: squash(stat / self.h),
            strength: stat / self.h,
            warm: true,
            expected: mean,
            deviation: deviation(run_mean, mean, sigma),
            unit: Unit::Sigma,
            limit: None,
            basis: Basis::Level { run },
            contributions: Vec::new(),
            tail: None,
        };
        if stat >= self.h {
            // Signalled: the run's mean is the new normal.
            s.stats.mean = fin(run_mean);
            s.pos = 0.0;
            s.neg = 0.0;
            s.run = 0;
            s.run_sum = 0.0;
        } else {
            s.stats.update(x, self.warmup, self.alpha, self.clip);
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Detector, Kind, State as AnyState};
    use serde_json::{json, Value};

    fn det(params: Value, warmup: u32) -> Detector {
        Detector::new(
            Kind::Cusum,
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
            let r = d.update(&mut s, &[1e6], i);
            assert_eq!((r.score, r.warm), (0.0, i >= 10));
        }
    }

    #[test]
    fn level_shift_by_hand() {
        // Warm-up 9, 11 → mean 10, σ 1. k 0.5, h 5, clip 3: a shift to 12 (z 2) adds 1.5 a
        // step: 1.5, 3, 4.5, 6 → signals at the 4th value, then the baseline is 12.
        // alpha 1e-12: the baseline's learning is invisible at this precision.
        let d = det(json!({"k": 0.5, "h": 5, "alpha": 1e-12}), 2);
        let mut s = d.new_state();
        d.update(&mut s, &[9.0], 0);
        d.update(&mut s, &[11.0], 1);
        let mut scores = vec![];
        for i in 0..4 {
            let r = d.update(&mut s, &[12.0], 2 + i);
            scores.push(r.score);
            if i == 3 {
                assert_eq!(r.basis, super::Basis::Level { run: 4 });
                assert!((r.expected - 10.0).abs() < 1e-9 && (r.deviation - 2.0).abs() < 1e-9);
            }
        }
        assert!(
            scores[..3].iter().all(|s| *s < d.default_threshold()),
            "{scores:?}"
        );
        assert!(scores[3] > d.default_threshold(), "{scores:?}");
        let r = d.update(&mut s, &[12.0], 6);
        assert_eq!(r.expected, 12.0);
        assert!(r.score < 1e-6, "{r:?}");
    }

    #[test]
    fn one_spike_is_not_a_shift() {
        let d = det(Value::Null, 2);
        let mut s = d.new_state();
        d.update(&mut s, &[9.0], 0);
        d.update(&mut s, &[11.0], 1);
        let r = d.update(&mut s, &[1000.0], 2);
        assert!(r.score < 0.5, "{r:?}");
        assert!(d.update(&mut s, &[10.0], 3).score < r.score);
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(Value::Null, 5);
        let mut a = d.new_state();
        for i in 0..30 {
            d.update(&mut a, &[(i % 3) as f64], i);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        for i in 30..80 {
            let x = [(i % 3) as f64 + if i > 50 { 3.0 } else { 0.0 }];
            assert_eq!(d.update(&mut a, &x, i), d.update(&mut b, &x, i));
        }
    }

    #[test]
    fn params_are_checked() {
        let e = Detector::new(Kind::Cusum, &json!({"h": "high"}), None, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("`h` expects a number in (0, 1000000]"),
            "{e}"
        );
    }
}

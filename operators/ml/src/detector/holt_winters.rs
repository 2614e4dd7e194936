//! Holt-Winters (additive level, damped trend and season) one-step forecast with a band from
//! the forecast errors.
//!
//! Catches values outside the forecast band: spikes and dips relative to where the series was
//! heading and where its season puts it, and seasonal breaks (a missing daily peak). The season
//! is placed by event time, not by event count, so irregular sampling and gaps are fine: the
//! `period` (default `1d`) is cut into `season_length` slots (default 48, i.e. half-hourly), and a
//! value updates its slot's seasonal term. Each value `x` is forecast as
//! `level + damping·trend + season[slot]`; the error `e = x − forecast` is scored against the
//! exponentially weighted mean absolute error (σ ≈ 1.25 × that), and learning uses `e` clipped at
//! 3σ (robust Holt-Winters after Gelper, Fried & Croux 2010) so an outlier does not bend the
//! forecast. Parameters: `alpha` (level, default 0.05), `beta` (trend, default 0.01), `gamma`
//! (season, default 0.1), `damping` (default 0.98), `period`, `season_length`, `limit` (σ at which
//! the score reaches the default threshold 0.99, default 4). `warmup` defaults to
//! `2 × season_length` values (96), and a value is only scored once its slot has been seen. The
//! score is `squash(|e| / σ / limit)`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::stats::{deviation, fin, floor_scale, SIGMA_PER_MEAN_AD};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

const CLIP: f64 = 3.0;
/// Smallest weight of a new error in the error scale.
const ERR_ALPHA: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct Config {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub damping: f64,
    pub period_ms: i64,
    pub season_length: usize,
    pub limit: f64,
    pub warmup: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    n: u32,
    level: f64,
    trend: f64,
    /// NaN for slots not seen yet.
    season: Vec<f64>,
    /// Exponentially weighted mean absolute (clipped) forecast error.
    err: f64,
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        let period = p.parsed("period", Duration::from_secs(86_400), |text| {
            anom_lang::duration::parse(text)
                .and_then(|d| {
                    if d.as_millis() == 0 {
                        Err("a duration above 0".into())
                    } else {
                        Ok(d)
                    }
                })
                .map_err(|e| format!("a duration such as `1d` or `1w` ({e})"))
        })?;
        let season_length = p.int("season_length", 48, 1, 10_000)? as usize;
        Ok(Config {
            alpha: p.f64("alpha", 0.05, 0.0, 1.0, true)?,
            beta: p.f64("beta", 0.01, 0.0, 1.0, false)?,
            gamma: p.f64("gamma", 0.1, 0.0, 1.0, false)?,
            damping: p.f64("damping", 0.98, 0.0, 1.0, false)?,
            period_ms: period.as_millis().min(i64::MAX as u128) as i64,
            season_length,
            limit: p.f64("limit", 4.0, 0.0, 1e6, true)?,
            warmup: warmup.unwrap_or(2 * season_length as u32).max(2),
        })
    }

    pub(crate) fn new_state(&self) -> State {
        State {
            season: vec![f64::NAN; self.season_length],
            ..State::default()
        }
    }

    pub(crate) fn fits(&self, s: &State) -> bool {
        s.season.len() == self.season_length
    }

    fn slot(&self, t_ms: i64) -> usize {
        let phase = t_ms.rem_euclid(self.period_ms) as i128;
        (phase * self.season_length as i128 / i128::from(self.period_ms)) as usize
    }

    pub(crate) fn update(&self, s: &mut State, x: f64, t_ms: i64) -> Reading {
        let slot = self.slot(t_ms);
        if s.n == 0 {
            s.level = x;
        }
        let seen = !s.season[slot].is_nan();
        if !seen {
            s.season[slot] = fin(x - s.level);
        }
        let forecast = s.level + self.damping * s.trend + s.season[slot];
        let e = x - forecast;
        let sigma = floor_scale(s.err * SIGMA_PER_MEAN_AD, forecast);
        let warm = s.n >= self.warmup && seen;
        let reading = if warm {
            let dev = deviation(x, forecast, sigma);
            let side = if dev >= 0.0 { 1.0 } else { -1.0 };
            Reading {
                score: squash(dev.abs() / self.limit),
                strength: dev.abs() / self.limit,
                warm: true,
                expected: fin(forecast),
                deviation: dev,
                unit: Unit::Sigma,
                limit: Some(fin(forecast + side * self.limit * sigma)),
                basis: Basis::Forecast,
                contributions: Vec::new(),
                tail: None,
            }
        } else {
            Reading::cold(Unit::Sigma)
        };
        // Clipping only once the error scale means something.
        let e = if s.n >= self.warmup {
            e.clamp(-CLIP * sigma, CLIP * sigma)
        } else {
            e
        };
        let cleaned = forecast + e;
        let level = self.alpha * (cleaned - s.season[slot])
            + (1.0 - self.alpha) * (s.level + self.damping * s.trend);
        s.trend = fin(self.beta * (level - s.level) + (1.0 - self.beta) * self.damping * s.trend);
        s.level = fin(level);
        s.season[slot] =
            fin(self.gamma * (cleaned - s.level) + (1.0 - self.gamma) * s.season[slot]);
        s.n = s.n.saturating_add(1);
        if seen {
            let a = ERR_ALPHA.max(1.0 / f64::from(s.n));
            s.err = fin(s.err + a * (fin(e.abs()) - s.err));
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Detector, Kind, State as AnyState};
    use super::*;
    use serde_json::{json, Value};

    const HOUR: i64 = 3_600_000;

    fn det(params: Value, warmup: Option<u32>) -> Detector {
        Detector::new(
            Kind::HoltWinters,
            &super::super::uncalibrated(params),
            warmup,
            1,
        )
        .unwrap()
    }

    #[test]
    fn slots_follow_event_time() {
        let mut p = Params::new(Kind::HoltWinters, &Value::Null).unwrap();
        let c = Config::new(&mut p, None).unwrap();
        assert_eq!((c.slot(0), c.slot(HOUR / 2 - 1), c.slot(HOUR)), (0, 0, 2));
        assert_eq!((c.slot(23 * HOUR), c.slot(-1)), (46, 47));
        assert_eq!(c.warmup, 96);
    }

    #[test]
    fn constant_series_scores_zero() {
        let d = det(Value::Null, Some(10));
        let mut s = d.new_state();
        for i in 0..200 {
            let r = d.update(&mut s, &[5.0], i * HOUR);
            assert_eq!(r.score, 0.0);
            // Warm-up is 10 values, but each hour's slot is first seen on day one.
            assert_eq!(r.warm, i >= 24, "{i}");
        }
    }

    /// A daily sine around 50 (amplitude 20) with ±1 alternating noise, hourly.
    fn sine(h: i64) -> f64 {
        let phase = (h % 24) as f64 / 24.0 * std::f64::consts::TAU;
        50.0 + 20.0 * phase.sin() + if h % 2 == 0 { 1.0 } else { -1.0 }
    }

    #[test]
    fn follows_the_season_and_flags_a_break() {
        let d = det(Value::Null, None);
        let mut s = d.new_state();
        for h in 0..24 * 14 {
            let r = d.update(&mut s, &[sine(h)], h * HOUR);
            if h >= 24 * 7 {
                assert!(r.score < 0.9, "hour {h}: {r:?}");
            }
        }
        // The 06:00 peak (70) does not come: 50 is ~20 below the forecast.
        let h = 24 * 14 + 6;
        let r = d.update(&mut s, &[50.0], h * HOUR);
        assert!(r.score > d.default_threshold(), "{r:?}");
        assert!(
            (r.expected - sine(h)).abs() < 3.0 && r.deviation < 0.0,
            "{r:?}"
        );
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(json!({"season_length": 12, "period": "12h"}), None);
        let mut a = d.new_state();
        for h in 0..100 {
            d.update(&mut a, &[sine(h)], h * HOUR);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        for h in 100..200 {
            let x = [sine(h) + if h == 150 { 40.0 } else { 0.0 }];
            assert_eq!(
                d.update(&mut a, &x, h * HOUR),
                d.update(&mut b, &x, h * HOUR)
            );
        }
    }

    #[test]
    fn params_are_checked() {
        let e = Detector::new(Kind::HoltWinters, &json!({"period": "daily"}), None, 1).unwrap_err();
        assert!(e.to_string().contains("`period` expects a duration"), "{e}");
        let e =
            Detector::new(Kind::HoltWinters, &json!({"season_length": 0}), None, 1).unwrap_err();
        assert!(e.to_string().contains("`season_length`"), "{e}");
    }
}

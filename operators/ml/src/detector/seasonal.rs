//! Seasonal baseline: compares each value with the history of its hour of the week (or of the
//! day), so that a busy Monday morning is judged against Monday mornings and a quiet night
//! against nights.
//!
//! Catches values that are ordinary for the series but wrong for the time (a daytime load at
//! 3 am, a missing weekday peak) as well as plain spikes. Each bucket keeps a robust location and
//! scale: an exponentially weighted mean and mean absolute residual, residuals clipped at 3σ once
//! a bucket has a few values, the weight never below 1/n so early values average plainly. A
//! bucket with fewer than `min_count` values falls back to the key's overall baseline. Because a
//! bucket sees few values, its σ is never taken below half the σ pooled over all buckets. A
//! shift shared by all buckets follows the residuals quickly (weight 0.05, residuals clipped at
//! 3σ), so that after a lasting level change the key alerts for tens of events, not until every
//! hour of the week has relearnt it; the baseline is `bucket mean + shift`.
//! Parameters: `season` (`week`: 168 hour-of-week buckets, the default; `day`: 24 hour-of-day
//! buckets), `timezone` (IANA name for the bucket boundaries, default `UTC`), `alpha` (bucket
//! learning rate, default 0.1), `min_count` (default 4), `limit` (σ at which the score reaches the
//! default threshold 0.99, default 5). `warmup` defaults to 30 values. The score is
//! `squash(|x − baseline| / σ / limit)`.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::stats::{deviation, fin, Robust};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

const CLIP: f64 = 3.0;
/// Learning rate of the overall and pooled statistics.
const GLOBAL_ALPHA: f64 = 0.02;
/// Learning rate of the shift shared by all buckets.
const SHIFT_ALPHA: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct Config {
    pub weekly: bool,
    pub timezone: Option<TimeZone>,
    pub alpha: f64,
    pub min_count: u32,
    pub limit: f64,
    pub warmup: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    global: Robust,
    /// Residuals from the value's own (learned) bucket, over all buckets.
    pooled: Robust,
    /// How far the whole series has moved since the buckets learned it.
    shift: f64,
    buckets: Vec<Robust>,
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        let weekly = p.choice("season", "week", &["week", "day"])? == "week";
        let timezone = p.parsed("timezone", None, |name| {
            if name == "UTC" {
                return Ok(None);
            }
            TimeZone::get(name)
                .map(Some)
                .map_err(|_| "an IANA time zone name such as `Europe/Paris` or `UTC`".into())
        })?;
        Ok(Config {
            weekly,
            timezone,
            alpha: p.f64("alpha", 0.1, 0.0, 1.0, true)?,
            min_count: p.int("min_count", 4, 1, 1_000_000)? as u32,
            limit: p.f64("limit", 5.0, 0.0, 1e6, true)?,
            warmup: warmup.unwrap_or(30).max(2),
        })
    }

    fn buckets(&self) -> usize {
        if self.weekly {
            168
        } else {
            24
        }
    }

    pub(crate) fn new_state(&self) -> State {
        State {
            buckets: vec![Robust::default(); self.buckets()],
            ..State::default()
        }
    }

    pub(crate) fn fits(&self, s: &State) -> bool {
        s.buckets.len() == self.buckets()
    }

    /// (weekday with Monday 0, hour) of `t_ms` in the configured time zone.
    fn when(&self, t_ms: i64) -> (u8, u8) {
        let offset_ms = match &self.timezone {
            None => 0,
            Some(tz) => Timestamp::from_millisecond(t_ms)
                .map(|t| i64::from(tz.to_offset(t).seconds()) * 1000)
                .unwrap_or(0),
        };
        let local = t_ms.saturating_add(offset_ms);
        const DAY: i64 = 86_400_000;
        let days = local.div_euclid(DAY);
        let hour = (local.rem_euclid(DAY) / 3_600_000) as u8;
        // 1970-01-01 was a Thursday.
        let weekday = (days + 3).rem_euclid(7) as u8;
        (weekday, hour)
    }

    pub(crate) fn update(&self, s: &mut State, x: f64, t_ms: i64) -> Reading {
        let (weekday, hour) = self.when(t_ms);
        let b = if self.weekly {
            usize::from(weekday) * 24 + usize::from(hour)
        } else {
            usize::from(hour)
        };
        let bucket_ready = s.buckets[b].n >= self.min_count;
        let (expected, sigma, basis) = if bucket_ready {
            let bucket = &s.buckets[b];
            let sigma = bucket.sigma().max(0.5 * s.pooled.sigma());
            let weekday = self.weekly.then_some(weekday);
            (
                fin(bucket.mean + s.shift),
                sigma,
                Basis::Bucket { weekday, hour },
            )
        } else {
            (s.global.mean, s.global.sigma(), Basis::Global)
        };
        let dev = deviation(x, expected, sigma);
        let reading = if s.global.n >= self.warmup {
            let side = if dev >= 0.0 { 1.0 } else { -1.0 };
            Reading {
                score: squash(dev.abs() / self.limit),
                strength: dev.abs() / self.limit,
                warm: true,
                expected,
                deviation: dev,
                unit: Unit::Sigma,
                limit: Some(fin(expected + side * self.limit * sigma)),
                basis,
                contributions: Vec::new(),
                tail: None,
            }
        } else {
            Reading::cold(Unit::Sigma)
        };
        if bucket_ready {
            s.pooled.update(x - expected, GLOBAL_ALPHA, CLIP);
            s.shift = fin(s.shift + SHIFT_ALPHA * dev.clamp(-CLIP, CLIP) * sigma);
        }
        s.buckets[b].update(x - s.shift, self.alpha, CLIP);
        s.global.update(x, GLOBAL_ALPHA, CLIP);
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::super::{explain, Detector, Kind, State as AnyState};
    use super::*;
    use serde_json::{json, Value};

    const HOUR: i64 = 3_600_000;
    /// Monday 2024-01-01 00:00 UTC.
    const MONDAY: i64 = 1_704_067_200_000;

    fn det(params: Value, warmup: u32) -> Detector {
        Detector::new(
            Kind::Seasonal,
            &super::super::uncalibrated(params),
            Some(warmup),
            1,
        )
        .unwrap()
    }

    #[test]
    fn buckets_by_hour_and_weekday() {
        let mut p = Params::new(Kind::Seasonal, &Value::Null).unwrap();
        let c = Config::new(&mut p, None).unwrap();
        assert_eq!(c.when(MONDAY), (0, 0));
        assert_eq!(c.when(MONDAY + 6 * 24 * HOUR + 23 * HOUR), (6, 23));
        assert_eq!(c.when(MONDAY - HOUR), (6, 23));
        let v = json!({"timezone": "Asia/Tokyo"});
        let mut p = Params::new(Kind::Seasonal, &v).unwrap();
        let c = Config::new(&mut p, None).unwrap();
        assert_eq!(c.when(MONDAY), (0, 9));
    }

    #[test]
    fn constant_series_scores_zero() {
        let d = det(Value::Null, 5);
        let mut s = d.new_state();
        for i in 0..500 {
            let r = d.update(&mut s, &[42.0], MONDAY + i * 1_800_000);
            assert_eq!((r.score, r.warm), (0.0, i >= 5));
        }
    }

    /// Hourly values: 100 by day (08–20h), 10 by night, ±1 alternating by hour and by day.
    fn daily(h: i64) -> f64 {
        let base = if (8..20).contains(&(h % 24)) {
            100.0
        } else {
            10.0
        };
        base + if (h + h / 24) % 2 == 0 { 1.0 } else { -1.0 }
    }

    #[test]
    fn a_daytime_value_at_night_is_flagged_and_explained() {
        let d = det(json!({"season": "day", "min_count": 3}), 24);
        let mut s = d.new_state();
        for h in 0..24 * 7 {
            let r = d.update(&mut s, &[daily(h)], MONDAY + h * HOUR);
            if h >= 24 * 4 {
                assert!(r.score < 0.5, "hour {h}: {r:?}");
            }
        }
        // Monday 03:00 of the next week at a daytime level.
        let t = MONDAY + (24 * 7 + 3) * HOUR;
        let r = d.update(&mut s, &[100.0], t);
        assert!(r.score > d.default_threshold(), "{r:?}");
        assert_eq!(
            r.basis,
            Basis::Bucket {
                weekday: None,
                hour: 3
            }
        );
        assert!((r.expected - 10.0).abs() < 1.0, "{r:?}");
        let text = explain(&d, &r, &["load"], &[100.0]);
        assert!(
            text.starts_with("load 100 is ")
                && text.contains("above the 03:00 hour-of-day baseline ("),
            "{text}"
        );
    }

    #[test]
    fn empty_buckets_fall_back_to_the_global_baseline() {
        let d = det(json!({"min_count": 2}), 3);
        let mut s = d.new_state();
        for i in 0..5 {
            d.update(&mut s, &[10.0], MONDAY + i * 60_000);
        }
        let r = d.update(&mut s, &[10.0], MONDAY + 5 * HOUR);
        assert_eq!((r.basis, r.expected, r.score), (Basis::Global, 10.0, 0.0));
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(json!({"timezone": "Europe/Paris"}), 10);
        let mut a = d.new_state();
        for h in 0..300 {
            d.update(&mut a, &[daily(h)], MONDAY + h * HOUR);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        for h in 300..400 {
            let x = [daily(h) * if h == 350 { 5.0 } else { 1.0 }];
            let t = MONDAY + h * HOUR;
            assert_eq!(d.update(&mut a, &x, t), d.update(&mut b, &x, t));
        }
    }

    #[test]
    fn params_are_checked() {
        let e = Detector::new(Kind::Seasonal, &json!({"season": "month"}), None, 1).unwrap_err();
        assert!(
            e.to_string().contains("`season` expects one of week, day"),
            "{e}"
        );
        let e = Detector::new(
            Kind::Seasonal,
            &json!({"timezone": "Mars/Olympus"}),
            None,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("IANA"), "{e}");
    }
}

//! `auto`: the detector to use when you do not know your data. Per key it runs what the
//! built-in kinds see — spikes and dips against the recent median (`robust_zscore`), values
//! unusual for the hour of the week (`seasonal`, weekly, falling back to the key's overall
//! baseline where an hour has too little history), lasting changes of level (`cusum`) and
//! values outside anything the key has shown (its range) — calibrates each against the key's
//! own history ([`super::calibrate`]) and keeps the rarest, corrected for looking in several
//! places at once (Bonferroni: the tail is multiplied by the number of views). One calibrated
//! score, no parameters required; the reading (and so the explanation) is the rarest view's.

use serde::{Deserialize, Serialize};

use super::calibrate;
use super::{cusum, robust_zscore, seasonal, Basis, DetectorError, Kind, Params, Reading, Unit};

/// The views, in the order of [`State::views`].
const VIEWS: usize = 4;
/// Readings averaged by each view's calibration: longer than a single kind's (5), since the
/// rarest of four views is more often a fluke of one.
const AVERAGE: usize = 10;

#[derive(Debug, Clone)]
pub struct Config {
    spike: robust_zscore::Config,
    season: seasonal::Config,
    level: cusum::Config,
    calibration: calibrate::Config,
    warmup: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    spike: robust_zscore::State,
    season: seasonal::State,
    level: cusum::State,
    range: Range,
    /// One calibration per view.
    views: Vec<calibrate::State>,
}

/// The key's smallest and largest values; judged from its warm-up on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Range {
    n: u32,
    lo: f64,
    hi: f64,
}

impl Range {
    /// How far outside the range `x` lies, in ranges (0 inside); then learns `x`.
    fn update(&mut self, x: f64, warmup: u32) -> Option<f64> {
        let out = (self.n >= warmup).then(|| {
            let width = (self.hi - self.lo)
                .max(self.hi.abs().max(self.lo.abs()) * 1e-9)
                .max(1e-12);
            ((x - self.hi).max(self.lo - x) / width).max(0.0)
        });
        if self.n == 0 {
            (self.lo, self.hi) = (x, x);
        } else {
            self.lo = self.lo.min(x);
            self.hi = self.hi.max(x);
        }
        self.n = self.n.saturating_add(1);
        out
    }
}

impl Config {
    pub(crate) fn new(p: &mut Params, warmup: Option<u32>) -> Result<Config, DetectorError> {
        let d = calibrate::Config::default();
        let calibration = calibrate::Config {
            learn: p.int("learn", u64::from(d.learn), 0, 1_000_000)? as u32,
            average: p.int("average", AVERAGE as u64, 1, 1_000)? as usize,
            memory: d.memory,
        };
        let timezone = p.value("timezone").cloned();
        let season_params = match timezone {
            Some(tz) => serde_json::json!({ "season": "week", "timezone": tz }),
            None => serde_json::json!({ "season": "week" }),
        };
        let defaults = serde_json::Value::Null;
        let spike =
            robust_zscore::Config::new(&mut Params::new(Kind::RobustZscore, &defaults)?, warmup)?;
        let season =
            seasonal::Config::new(&mut Params::new(Kind::Seasonal, &season_params)?, warmup)
                .map_err(|e| match e {
                    DetectorError::BadParam {
                        name,
                        expected,
                        found,
                        ..
                    } => DetectorError::BadParam {
                        kind: Kind::Auto,
                        name,
                        expected,
                        found,
                    },
                    other => other,
                })?;
        let level = cusum::Config::new(&mut Params::new(Kind::Cusum, &defaults)?, warmup)?;
        Ok(Config {
            spike,
            season,
            level,
            calibration,
            warmup: warmup.unwrap_or(30).max(3),
        })
    }

    pub(crate) fn new_state(&self) -> State {
        State {
            season: self.season.new_state(),
            views: vec![calibrate::State::default(); VIEWS],
            ..State::default()
        }
    }

    pub(crate) fn fits(&self, s: &State) -> bool {
        self.spike.fits(&s.spike)
            && self.season.fits(&s.season)
            && s.views.len() == VIEWS
            && s.views.iter().all(|v| v.fits(&self.calibration))
    }

    pub(crate) fn update(&self, s: &mut State, x: f64, t_ms: i64) -> Reading {
        let readings = [
            self.spike.update(&mut s.spike, x),
            self.season.update(&mut s.season, x, t_ms),
            self.level.update(&mut s.level, x),
        ];
        let (lo, hi) = (s.range.lo, s.range.hi);
        let range = s.range.update(x, self.warmup);
        // The rarest view, by its calibrated log10 tail.
        let mut best: Option<(f64, usize)> = None;
        for (i, cal) in s.views.iter_mut().enumerate() {
            let strength = match (i, &range) {
                (3, Some(out)) => Some(range_strength(*out)),
                (3, None) => None,
                (i, _) => readings[i].warm.then_some(readings[i].strength),
            };
            let Some(strength) = strength else { continue };
            if let Some(log10_tail) = self.calibration.log10_tail(cal, strength) {
                if best.is_none_or(|(b, _)| log10_tail < b) {
                    best = Some((log10_tail, i));
                }
            }
        }
        let Some((log10_tail, view)) = best else {
            return Reading::cold(Unit::Sigma);
        };
        let log10_tail = (log10_tail + (VIEWS as f64).log10()).min(0.0);
        let score = calibrate::score_of_log10_tail(log10_tail);
        let mut r = match view {
            3 => {
                let above = x > (lo + hi) / 2.0;
                Reading {
                    score,
                    strength: 0.0,
                    warm: true,
                    expected: if above { hi } else { lo },
                    deviation: if above { x - hi } else { x - lo },
                    unit: Unit::Value,
                    limit: None,
                    basis: Basis::Range,
                    contributions: Vec::new(),
                    tail: None,
                }
            }
            i => readings[i].clone(),
        };
        r.score = score;
        r.strength = 0.0;
        r.tail = Some(calibrate::tail_of_score(score));
        r
    }
}

/// A value outside the range counts as at least as strong as one at a kind's limit, more the
/// farther out it is.
fn range_strength(out: f64) -> f64 {
    if out > 0.0 {
        1.0 + 10.0 * out
    } else {
        0.0
    }
}

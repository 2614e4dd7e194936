//! Built-in online anomaly detectors, one state per (detector, key).
//!
//! A [`Detector`] is compiled once from what the user wrote in the pipeline (`kind`, `params`,
//! `warmup`) and shared by every key; each key owns a small serde-friendly [`State`] that the
//! caller keeps (in sled) and passes to [`Detector::update`] with the key's events in event-time
//! order. `update` scores the observation against the state *before* learning from it and
//! returns a [`Reading`]; [`explain`] turns a reading into a sentence a person can act on.
//!
//! Scores are comparable across kinds: each detector reduces an observation to a native
//! statistic `s ≥ 0` (MADs from the median, σ from the EWMA, the CUSUM sum, …), divides it by
//! its alarm level (the kind's `limit` or `h` parameter) and squashes `r = s / limit` with
//! [`squash`]: `score = 1 − 100^(−r²)`. So a value at the limit scores exactly the default
//! threshold [`DEFAULT_THRESHOLD`] (0.99) whatever the kind, `r = 0.81` scores 0.95, `r = 0.71`
//! 0.9, `r = 0.5` 0.68, and a value equal to the baseline scores exactly 0. A user who wants more
//! alerts lowers the threshold (or the limit); both mean the same thing for every kind.
//!
//! Non-finite inputs (NaN, ±∞) and observations with the wrong number of values are ignored:
//! the state is left untouched and the reading is cold (score 0). A state that does not fit the
//! detector (another kind, or parameters changed since it was saved) is reset.

pub mod auto;
pub mod calibrate;
pub mod cusum;
pub mod episode;
pub mod eval;
pub mod ewma;
pub mod half_space_trees;
pub mod holt_winters;
pub mod labelled;
pub mod robust_zscore;
pub mod seasonal;
mod stats;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default alert threshold of every calibrated kind: a tail probability of 10^−5 for
/// the key (see [`calibrate`]).
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// The default threshold with `calibration: none`: the score of a value at the kind's limit.
pub const RAW_THRESHOLD: f64 = 0.99;

/// Maps `r`, a native statistic divided by its limit, to a score in `[0, 1]`:
/// `1 − 100^(−r²)`. Monotone in `|r|`; 0 at `r = 0`, 0.99 at `r = 1`, 0.9 at `r = √½`.
/// Squared so that ordinary noise (r ≤ 0.3) stays below 0.35.
pub fn squash(r: f64) -> f64 {
    if !r.is_finite() {
        return if r.is_nan() { 0.0 } else { 1.0 };
    }
    let s = 1.0 - (-(r * r) * 100f64.ln()).exp();
    s.clamp(0.0, 1.0)
}

/// The inverse of [`squash`]: the `r` at which a score is reached (for documentation and the
/// explanation of a threshold).
pub fn unsquash(score: f64) -> f64 {
    let s = score.clamp(0.0, 1.0 - 1e-16);
    (-(1.0 - s).ln() / 100f64.ln()).sqrt()
}

/// The detector kinds, as users name them in the pipeline (`kind: robust_zscore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Auto,
    RobustZscore,
    Ewma,
    Cusum,
    Seasonal,
    HoltWinters,
    HalfSpaceTrees,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Auto,
        Kind::RobustZscore,
        Kind::Ewma,
        Kind::Cusum,
        Kind::Seasonal,
        Kind::HoltWinters,
        Kind::HalfSpaceTrees,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Auto => "auto",
            Kind::RobustZscore => "robust_zscore",
            Kind::Ewma => "ewma",
            Kind::Cusum => "cusum",
            Kind::Seasonal => "seasonal",
            Kind::HoltWinters => "holt_winters",
            Kind::HalfSpaceTrees => "half_space_trees",
        }
    }

    pub fn parse(text: &str) -> Result<Kind, DetectorError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| DetectorError::UnknownKind {
                kind: text.to_string(),
                valid: names(Kind::ALL.iter().map(|k| k.name())),
            })
    }

    /// Takes `fields: [a, b, …]` (any number of dimensions) rather than one `field`.
    pub fn multivariate(self) -> bool {
        self == Kind::HalfSpaceTrees
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorError {
    #[error("unknown detector kind `{kind}`; valid kinds: {valid}")]
    UnknownKind { kind: String, valid: String },
    #[error("{kind}: `params` must be a mapping of parameter names to values, found {found}")]
    ParamsNotAMapping { kind: Kind, found: String },
    #[error("{kind}: unknown parameter `{name}`; valid parameters: {valid}")]
    UnknownParam {
        kind: Kind,
        name: String,
        valid: String,
    },
    #[error("{kind}: parameter `{name}` expects {expected}, found {found}")]
    BadParam {
        kind: Kind,
        name: String,
        expected: String,
        found: String,
    },
    #[error("{kind}: `warmup` must be at least {min}, found {found}")]
    BadWarmup { kind: Kind, min: u32, found: u32 },
    #[error("{kind} takes {expected}, found {found} field(s)")]
    Dims {
        kind: Kind,
        expected: &'static str,
        found: usize,
    },
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// Reads a detector's `params` mapping: each getter records the name as valid, and
/// [`Params::finish`] rejects whatever the detector did not ask for.
pub(crate) struct Params<'a> {
    kind: Kind,
    map: Option<&'a serde_json::Map<String, Value>>,
    known: Vec<&'static str>,
}

impl<'a> Params<'a> {
    pub(crate) fn new(kind: Kind, value: &'a Value) -> Result<Params<'a>, DetectorError> {
        let map = match value {
            Value::Null => None,
            Value::Object(m) => Some(m),
            other => {
                return Err(DetectorError::ParamsNotAMapping {
                    kind,
                    found: describe(other),
                })
            }
        };
        Ok(Params {
            kind,
            map,
            known: Vec::new(),
        })
    }

    fn raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.known.push(name);
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    fn bad(&self, name: &str, expected: String, v: &Value) -> DetectorError {
        DetectorError::BadParam {
            kind: self.kind,
            name: name.to_string(),
            expected,
            found: describe(v),
        }
    }

    /// A number in `[lo, hi]` (bounds inclusive unless `open_lo`).
    pub(crate) fn f64(
        &mut self,
        name: &'static str,
        default: f64,
        lo: f64,
        hi: f64,
        open_lo: bool,
    ) -> Result<f64, DetectorError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        let expected = || {
            let l = if open_lo { "(" } else { "[" };
            format!("a number in {l}{lo}, {hi}]")
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x <= hi && (x > lo || (!open_lo && x == lo)) => Ok(x),
            _ => Err(self.bad(name, expected(), v)),
        }
    }

    /// A whole number in `[lo, hi]`.
    pub(crate) fn int(
        &mut self,
        name: &'static str,
        default: u64,
        lo: u64,
        hi: u64,
    ) -> Result<u64, DetectorError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(x),
            _ => Err(self.bad(name, format!("a whole number in [{lo}, {hi}]"), v)),
        }
    }

    /// One of `choices`.
    pub(crate) fn choice(
        &mut self,
        name: &'static str,
        default: &'static str,
        choices: &[&'static str],
    ) -> Result<&'static str, DetectorError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        v.as_str()
            .and_then(|s| choices.iter().find(|c| **c == s).copied())
            .ok_or_else(|| self.bad(name, format!("one of {}", choices.join(", ")), v))
    }

    /// A string, checked by `parse` (whose error says what was expected).
    pub(crate) fn parsed<T>(
        &mut self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, DetectorError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        match v.as_str() {
            Some(s) => parse(s).map_err(|e| self.bad(name, e, v)),
            None => Err(self.bad(name, "a string".into(), v)),
        }
    }

    /// The raw value, for parameters with a structure of their own (checked by the caller).
    pub(crate) fn value(&mut self, name: &'static str) -> Option<&'a Value> {
        self.raw(name)
    }

    pub(crate) fn error(&self, name: &str, expected: String, v: &Value) -> DetectorError {
        self.bad(name, expected, v)
    }

    pub(crate) fn finish(self) -> Result<(), DetectorError> {
        let Some(map) = self.map else {
            return Ok(());
        };
        match map.keys().find(|k| !self.known.contains(&k.as_str())) {
            None => Ok(()),
            Some(name) => Err(DetectorError::UnknownParam {
                kind: self.kind,
                name: name.clone(),
                valid: names(self.known.iter().copied()),
            }),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The unit of [`Reading::deviation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Median absolute deviations.
    Mads,
    /// Standard deviations (or a robust estimate of one).
    Sigma,
    /// log2 of how much rarer the point's region is than a typical point's (half-space trees).
    Bits,
    /// The value's own units.
    Value,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Mads => " MADs",
            Unit::Sigma => "σ",
            Unit::Bits => " bits",
            Unit::Value => "",
        }
    }
}

/// What [`Reading::expected`] is: the baseline the observation was compared to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Basis {
    /// Not warm yet: nothing to compare to.
    WarmingUp,
    /// The median of the key's recent window.
    RecentMedian,
    /// The exponentially weighted moving average.
    Ewma,
    /// The CUSUM reference level; `run` events have accumulated evidence of a shift.
    Level { run: u32 },
    /// A seasonal bucket: `weekday` 0 = Monday (None for hour-of-day buckets), `hour` 0..24.
    Bucket { weekday: Option<u8>, hour: u8 },
    /// The key's overall baseline (its seasonal bucket had too few observations).
    Global,
    /// The Holt-Winters one-step forecast.
    Forecast,
    /// The mass of the point's region in the reference window (half-space trees).
    Mass,
    /// The range of values the key has shown: `expected` is its edge on the value's side.
    Range,
}

/// The result of one [`Detector::update`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// In `[0, 1]`; 0 while warming up. Compare to the detector's threshold.
    pub score: f64,
    /// The kind's own statistic divided by its alarm level (`limit`, or `h`): 1 at the limit.
    /// What calibration learns the distribution of; 0 when cold.
    #[serde(default)]
    pub strength: f64,
    /// The state had seen enough events to judge this one.
    pub warm: bool,
    /// The baseline the value was compared to (univariate), in the value's units; 0 when cold.
    pub expected: f64,
    /// Signed distance from `expected`, in `unit`s.
    pub deviation: f64,
    pub unit: Unit,
    /// The control limit on the deviation's side, in the value's units, where the kind has one.
    pub limit: Option<f64>,
    pub basis: Basis,
    /// Multivariate: each dimension's share of the anomaly, summing to 1; empty for univariate
    /// kinds and for unremarkable readings (half-space trees: score below 0.5).
    pub contributions: Vec<f64>,
    /// Calibrated: how rare the reading is for this key (a tail probability).
    #[serde(default)]
    pub tail: Option<f64>,
}

impl Reading {
    fn cold(unit: Unit) -> Reading {
        Reading {
            score: 0.0,
            strength: 0.0,
            warm: false,
            expected: 0.0,
            deviation: 0.0,
            unit,
            limit: None,
            basis: Basis::WarmingUp,
            contributions: Vec::new(),
            tail: None,
        }
    }
}

/// One key's state, for any kind: the kind's statistics and, when calibrated, the
/// distribution of the key's readings. Serialize it with `rmp_serde::to_vec` (structs as
/// arrays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    kind: KindState,
    calibration: Option<calibrate::State>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum KindState {
    Auto(auto::State),
    RobustZscore(robust_zscore::State),
    Ewma(ewma::State),
    Cusum(cusum::State),
    Seasonal(seasonal::State),
    HoltWinters(holt_winters::State),
    HalfSpaceTrees(half_space_trees::State),
}

#[derive(Debug, Clone)]
enum Imp {
    Auto(auto::Config),
    RobustZscore(robust_zscore::Config),
    Ewma(ewma::Config),
    Cusum(cusum::Config),
    Seasonal(seasonal::Config),
    HoltWinters(holt_winters::Config),
    HalfSpaceTrees(half_space_trees::Config),
}

/// A compiled detector: parameters checked, defaults filled in, random trees grown. Immutable
/// and shared by all keys.
#[derive(Debug, Clone)]
pub struct Detector {
    kind: Kind,
    dims: usize,
    imp: Imp,
    /// `None` with `calibration: none`: scores are the kind's squashed statistic.
    calibration: Option<calibrate::Config>,
}

impl Detector {
    /// `params` is the mapping the user wrote (`Null` = all defaults); unknown or mistyped
    /// parameters are errors naming the parameter, what was expected and the valid names.
    /// `dims` is the number of fields: 1 for univariate kinds.
    pub fn new(
        kind: Kind,
        params: &Value,
        warmup: Option<u32>,
        dims: usize,
    ) -> Result<Detector, DetectorError> {
        match (kind.multivariate(), dims) {
            (false, 1) => {}
            (true, 1..=64) => {}
            (false, found) => {
                return Err(DetectorError::Dims {
                    kind,
                    expected: "exactly one field (`field`)",
                    found,
                })
            }
            (true, found) => {
                return Err(DetectorError::Dims {
                    kind,
                    expected: "between 1 and 64 fields (`fields`)",
                    found,
                })
            }
        }
        let mut p = Params::new(kind, params)?;
        // `auto` calibrates each of its views itself.
        let calibration = match kind {
            Kind::Auto => "auto",
            _ => p.choice("calibration", "likelihood", &["likelihood", "none"])?,
        };
        let calibration = match calibration {
            "none" | "auto" => None,
            _ => {
                let d = calibrate::Config::default();
                Some(calibrate::Config {
                    learn: p.int("learn", u64::from(d.learn), 0, 1_000_000)? as u32,
                    average: p.int("average", d.average as u64, 1, 1_000)? as usize,
                    memory: d.memory,
                })
            }
        };
        let imp = match kind {
            Kind::Auto => Imp::Auto(auto::Config::new(&mut p, warmup)?),
            Kind::RobustZscore => Imp::RobustZscore(robust_zscore::Config::new(&mut p, warmup)?),
            Kind::Ewma => Imp::Ewma(ewma::Config::new(&mut p, warmup)?),
            Kind::Cusum => Imp::Cusum(cusum::Config::new(&mut p, warmup)?),
            Kind::Seasonal => Imp::Seasonal(seasonal::Config::new(&mut p, warmup)?),
            Kind::HoltWinters => Imp::HoltWinters(holt_winters::Config::new(&mut p, warmup)?),
            Kind::HalfSpaceTrees => {
                Imp::HalfSpaceTrees(half_space_trees::Config::new(&mut p, warmup, dims)?)
            }
        };
        p.finish()?;
        Ok(Detector {
            kind,
            dims,
            imp,
            calibration,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// [`DEFAULT_THRESHOLD`] when calibrated, else [`RAW_THRESHOLD`].
    pub fn default_threshold(&self) -> f64 {
        if self.calibrated() {
            DEFAULT_THRESHOLD
        } else {
            RAW_THRESHOLD
        }
    }

    /// Whether scores are calibrated tail probabilities (else the kind's squashed statistic).
    pub fn calibrated(&self) -> bool {
        self.calibration.is_some() || self.kind == Kind::Auto
    }

    pub fn new_state(&self) -> State {
        let kind = match &self.imp {
            Imp::Auto(c) => KindState::Auto(c.new_state()),
            Imp::RobustZscore(c) => KindState::RobustZscore(c.new_state()),
            Imp::Ewma(c) => KindState::Ewma(c.new_state()),
            Imp::Cusum(c) => KindState::Cusum(c.new_state()),
            Imp::Seasonal(c) => KindState::Seasonal(c.new_state()),
            Imp::HoltWinters(c) => KindState::HoltWinters(c.new_state()),
            Imp::HalfSpaceTrees(c) => KindState::HalfSpaceTrees(c.new_state()),
        };
        State {
            kind,
            calibration: self.calibration.map(|_| calibrate::State::default()),
        }
    }

    /// Whether `state` was made by this detector with its current parameters.
    pub fn fits(&self, state: &State) -> bool {
        let kind = match (&self.imp, &state.kind) {
            (Imp::Auto(c), KindState::Auto(s)) => c.fits(s),
            (Imp::RobustZscore(c), KindState::RobustZscore(s)) => c.fits(s),
            (Imp::Ewma(_), KindState::Ewma(_)) => true,
            (Imp::Cusum(_), KindState::Cusum(_)) => true,
            (Imp::Seasonal(c), KindState::Seasonal(s)) => c.fits(s),
            (Imp::HoltWinters(c), KindState::HoltWinters(s)) => c.fits(s),
            (Imp::HalfSpaceTrees(c), KindState::HalfSpaceTrees(s)) => c.fits(s),
            _ => false,
        };
        kind && match (&self.calibration, &state.calibration) {
            (Some(c), Some(s)) => s.fits(c),
            (None, None) => true,
            _ => false,
        }
    }

    /// Feeds one observation (`dims` values; event time in epoch ms, used by `seasonal` and
    /// `holt_winters`) and scores it against the state before the update.
    pub fn update(&self, state: &mut State, x: &[f64], t_ms: i64) -> Reading {
        let unit = match self.kind {
            Kind::RobustZscore => Unit::Mads,
            Kind::HalfSpaceTrees => Unit::Bits,
            _ => Unit::Sigma,
        };
        if x.len() != self.dims || x.iter().any(|v| !v.is_finite()) {
            return Reading::cold(unit);
        }
        if !self.fits(state) {
            *state = self.new_state();
        }
        let mut r = match (&self.imp, &mut state.kind) {
            (Imp::Auto(c), KindState::Auto(s)) => c.update(s, x[0], t_ms),
            (Imp::RobustZscore(c), KindState::RobustZscore(s)) => c.update(s, x[0]),
            (Imp::Ewma(c), KindState::Ewma(s)) => c.update(s, x[0]),
            (Imp::Cusum(c), KindState::Cusum(s)) => c.update(s, x[0]),
            (Imp::Seasonal(c), KindState::Seasonal(s)) => c.update(s, x[0], t_ms),
            (Imp::HoltWinters(c), KindState::HoltWinters(s)) => c.update(s, x[0], t_ms),
            (Imp::HalfSpaceTrees(c), KindState::HalfSpaceTrees(s)) => c.update(s, x),
            _ => unreachable!("the state was reset to fit above"),
        };
        if let (Some(c), Some(s), true) = (&self.calibration, &mut state.calibration, r.warm) {
            match c.update(s, r.strength) {
                Some(score) => {
                    r.score = score;
                    r.tail = Some(calibrate::tail_of_score(score));
                }
                None => {
                    r.score = 0.0;
                    r.warm = false;
                }
            }
        }
        // The detectors' arithmetic is finite for finite input; this is the last guard.
        if !r.score.is_finite() {
            r.score = 0.0;
        }
        r.score = r.score.clamp(0.0, 1.0);
        r
    }

    /// A sentence a person can act on; see [`explain`].
    pub fn explain(&self, reading: &Reading, names: &[&str], values: &[f64]) -> String {
        explain(self, reading, names, values)
    }
}

/// A sentence a person can act on, e.g. "durationMs 9,200 is 4.1 MADs above its recent median
/// (1,850)". `names` and `values` are the fields and the observation the reading came from.
pub fn explain(detector: &Detector, reading: &Reading, names: &[&str], values: &[f64]) -> String {
    let name = names.first().copied().unwrap_or("value");
    let value = values.first().copied().unwrap_or(f64::NAN);
    if !reading.warm {
        return format!(
            "{name} {}: {} is still learning this key's baseline",
            num(value),
            detector.kind()
        );
    }
    let d = reading.deviation;
    let side = if d >= 0.0 { "above" } else { "below" };
    let dev = format!("{}{}", dec1(d.abs()), reading.unit.suffix());
    let expected = num(reading.expected);
    let limit = reading
        .limit
        .map(|l| format!(", limit {}", num(l)))
        .unwrap_or_default();
    let text = match reading.basis {
        Basis::WarmingUp => format!("{name} {}: no baseline yet", num(value)),
        Basis::RecentMedian => {
            format!(
                "{name} {} is {dev} {side} its recent median ({expected})",
                num(value)
            )
        }
        Basis::Ewma => format!(
            "{name} {} is {dev} {side} its EWMA ({expected}{limit})",
            num(value)
        ),
        Basis::Level { run } => {
            if reading.score >= detector.default_threshold() {
                format!(
                    "level shift: {name} has run {dev} {side} {expected} for {run} event{}",
                    if run == 1 { "" } else { "s" }
                )
            } else {
                format!(
                    "{name} {} is {dev} {side} its level ({expected}); no sustained shift",
                    num(value)
                )
            }
        }
        Basis::Bucket { weekday, hour } => {
            let bucket = match weekday {
                Some(w) => format!("{} {hour:02}:00", WEEKDAYS[w as usize % 7]),
                None => format!("{hour:02}:00 hour-of-day"),
            };
            format!(
                "{name} {} is {dev} {side} the {bucket} baseline ({expected})",
                num(value)
            )
        }
        Basis::Global => format!(
            "{name} {} is {dev} {side} its overall baseline ({expected}; this hour has too little history)",
            num(value)
        ),
        Basis::Forecast => format!(
            "{name} {} is {dev} {side} its forecast ({expected}{limit})",
            num(value)
        ),
        Basis::Mass => {
            let combo = names
                .iter()
                .zip(values)
                .map(|(n, v)| format!("{n} {}", num(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            let top = reading
                .contributions
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, c)| {
                    format!(
                        " ({} contributes {:.0}%)",
                        names.get(i).copied().unwrap_or("?"),
                        c * 100.0
                    )
                })
                .unwrap_or_default();
            let rarity = 2f64.powf(d.max(0.0));
            if reading.score >= detector.default_threshold() {
                format!(
                    "unusual combination of {combo}{top}: {}× rarer than typical",
                    num(rarity)
                )
            } else {
                format!("{combo} is a usual combination")
            }
        }
        Basis::Range => format!(
            "{name} {} is {} {side} anything this key has shown ({} {expected})",
            num(value),
            num(d.abs()),
            if d >= 0.0 { "highest" } else { "lowest" }
        ),
    };
    match reading.tail {
        // Calibrated: how rare that is for this key.
        Some(tail) if tail > 1.000_001e-10 => {
            format!("{text}; about 1 in {} for this key", num(1.0 / tail))
        }
        Some(_) => format!("{text}; rarer than 1 in 10,000,000,000 for this key"),
        None => text,
    }
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn dec1(x: f64) -> String {
    if x >= 100.0 {
        group(x.round(), 0)
    } else {
        format!("{x:.1}")
    }
}

/// A number for people: thousands separators from 1,000 on, otherwise 3 significant digits
/// (at most 2 decimals above 1), trailing zeros dropped.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a >= 999.5 {
        return group(x.round(), 0);
    }
    if a == 0.0 {
        return "0".into();
    }
    let decimals = if a >= 100.0 {
        0
    } else if a >= 1.0 {
        2 - (a.log10().floor() as i32).min(1) as usize
    } else {
        // 3 significant digits for small magnitudes.
        (2 - a.log10().floor() as i32).clamp(0, 12) as usize
    };
    let s = format!("{x:.decimals$}");
    trim(s)
}

fn trim(s: String) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        s
    }
}

fn group(x: f64, _decimals: usize) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::with_capacity(s.len() + s.len() / 3 + 1);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && s != "0" {
        out.insert(0, '-');
    }
    out
}

/// `params` with `calibration: none`, for tests of a kind's own statistic.
#[cfg(test)]
pub(crate) fn uncalibrated(params: Value) -> Value {
    let mut map = match params {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    map.insert("calibration".into(), Value::from("none"));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn squash_is_anchored_at_the_alarm_level() {
        assert_eq!(squash(0.0), 0.0);
        assert!((squash(1.0) - 0.99).abs() < 1e-12);
        assert!((squash(0.5f64.sqrt()) - 0.9).abs() < 1e-12);
        assert!((squash(unsquash(0.95)) - 0.95).abs() < 1e-12);
        assert!(squash(0.99) < 0.99 && squash(1.01) > 0.99);
        assert_eq!(squash(-2.0), squash(2.0));
        assert_eq!(squash(f64::INFINITY), 1.0);
        assert_eq!(squash(f64::NAN), 0.0);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(num(9200.4), "9,200");
        assert_eq!(num(1_234_567.0), "1,234,567");
        assert_eq!(num(-5000.0), "-5,000");
        assert_eq!(num(150.0), "150");
        assert_eq!(num(21.5), "21.5");
        assert_eq!(num(3.14659), "3.15");
        assert_eq!(num(0.012345), "0.0123");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(999.7), "1,000");
    }

    #[test]
    fn kinds_parse_and_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Ok(k));
        }
        let e = Kind::parse("zscore").unwrap_err().to_string();
        assert!(
            e.contains("`zscore`") && e.contains("half_space_trees"),
            "{e}"
        );
        assert!(Kind::HalfSpaceTrees.multivariate() && !Kind::Ewma.multivariate());
    }

    #[test]
    fn params_errors_name_the_parameter_and_the_valid_ones() {
        let e = Detector::new(Kind::RobustZscore, &json!({"windw": 10}), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`windw`") && e.contains("window"), "{e}");
        let e = Detector::new(Kind::Ewma, &json!({"alpha": "fast"}), None, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`alpha`") && e.contains("a number in (0, 1]"),
            "{e}"
        );
        let e = Detector::new(Kind::Ewma, &json!([1, 2]), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mapping"), "{e}");
        let e = Detector::new(Kind::Cusum, &Value::Null, None, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one field"), "{e}");
    }

    #[test]
    fn ignored_inputs_leave_the_state_alone() {
        let d = Detector::new(Kind::Ewma, &Value::Null, Some(2), 1).unwrap();
        let mut s = d.new_state();
        d.update(&mut s, &[1.0], 0);
        let before = s.clone();
        assert!(!d.update(&mut s, &[f64::NAN], 0).warm);
        assert!(!d.update(&mut s, &[1.0, 2.0], 0).warm);
        assert_eq!(s, before);
    }

    #[test]
    fn a_foreign_state_is_reset() {
        let z = Detector::new(Kind::RobustZscore, &Value::Null, None, 1).unwrap();
        let e = Detector::new(Kind::Ewma, &Value::Null, None, 1).unwrap();
        let mut s = z.new_state();
        let r = e.update(&mut s, &[1.0], 0);
        assert!(!r.warm);
        assert!(matches!(s.kind, KindState::Ewma(_)));
    }

    #[test]
    fn explanations_read_well() {
        let d = Detector::new(Kind::Ewma, &Value::Null, None, 1).unwrap();
        let r = Reading {
            score: 1.0,
            strength: 1.0,
            warm: true,
            expected: 150.0,
            deviation: 3.2,
            unit: Unit::Sigma,
            limit: Some(480.0),
            basis: Basis::Ewma,
            contributions: vec![],
            tail: None,
        };
        assert_eq!(
            explain(&d, &r, &["amount"], &[5000.0]),
            "amount 5,000 is 3.2σ above its EWMA (150, limit 480)"
        );
        let h = Detector::new(Kind::HalfSpaceTrees, &Value::Null, None, 3).unwrap();
        let r = Reading {
            score: 1.0,
            strength: 1.0,
            warm: true,
            expected: 0.0,
            deviation: 4.0,
            unit: Unit::Bits,
            limit: None,
            basis: Basis::Mass,
            contributions: vec![0.71, 0.2, 0.09],
            tail: None,
        };
        assert_eq!(
            explain(&h, &r, &["cpu", "mem", "net"], &[97.0, 12.0, 3.0]),
            "unusual combination of cpu 97, mem 12, net 3 (cpu contributes 71%): 16× rarer than typical"
        );
    }

    fn all_detectors() -> Vec<Detector> {
        Kind::ALL
            .iter()
            .map(|&k| {
                let dims = if k.multivariate() { 2 } else { 1 };
                Detector::new(k, &Value::Null, Some(5), dims).unwrap()
            })
            .collect()
    }

    /// Strictly online: a score at event t uses nothing after t, so the scores of a prefix
    /// are the first scores of the whole, for every kind, calibrated or not.
    #[test]
    fn scores_of_a_prefix_are_the_first_scores_of_the_whole() {
        let xs: Vec<(f64, f64, i64)> = (0..1000i64)
            .map(|i| {
                let wave = ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
                let spike = if i % 97 == 0 { 40.0 } else { 0.0 };
                (
                    50.0 + 10.0 * wave + ((i * 37) % 11) as f64 + spike,
                    (i % 13) as f64,
                    i,
                )
            })
            .collect();
        for params in [Value::Null, uncalibrated(Value::Null)] {
            for kind in Kind::ALL {
                if kind == Kind::Auto && !params.is_null() {
                    continue; // always calibrated
                }
                let dims = if kind.multivariate() { 2 } else { 1 };
                let d = Detector::new(kind, &params, Some(5), dims).unwrap();
                let run = |n: usize| {
                    let mut s = d.new_state();
                    xs[..n]
                        .iter()
                        .map(|&(a, b, i)| {
                            let x = [a, b];
                            d.update(&mut s, &x[..dims], 1_700_000_000_000 + i * 300_000)
                        })
                        .collect::<Vec<_>>()
                };
                let whole = run(xs.len());
                assert!(whole.iter().filter(|r| r.warm).count() > 300, "{kind}");
                for n in [1, 150, 260, 433, 699, 999] {
                    assert_eq!(run(n)[..], whole[..n], "{kind} {params}: prefix of {n}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn scores_are_finite_and_in_range(
            xs in proptest::collection::vec(
                (prop_oneof![
                    -1e300f64..1e300,
                    -1e6f64..1e6,
                    Just(0.0),
                    Just(f64::MAX),
                    Just(f64::MIN),
                    Just(f64::MIN_POSITIVE),
                    Just(1e-300),
                ], -1e9f64..1e9, 0i64..600_000),
                1..400,
            )
        ) {
            for d in all_detectors() {
                let mut s = d.new_state();
                let mut t = 1_700_000_000_000i64;
                for &(a, b, dt) in &xs {
                    t += dt;
                    let x = [a, b];
                    let r = d.update(&mut s, &x[..d.dims()], t);
                    prop_assert!(r.score.is_finite() && (0.0..=1.0).contains(&r.score),
                        "{}: score {} for {:?}", d.kind(), r.score, x);
                    prop_assert!(!r.deviation.is_nan(), "{}: deviation NaN", d.kind());
                    if !r.contributions.is_empty() {
                        let sum: f64 = r.contributions.iter().sum();
                        prop_assert!((sum - 1.0).abs() < 1e-9, "contributions sum {}", sum);
                    }
                }
            }
        }
    }
}

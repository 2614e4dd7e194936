//! Half-Space Trees (Tan, Ting & Liu, "Fast anomaly detection for streaming data", IJCAI 2011)
//! for multivariate streams: catches unusual combinations of fields, including ones where each
//! field alone is ordinary.
//!
//! A fixed random forest (grown from `seed`, the same for every key, kept in the [`Config`])
//! cuts a work space around the normalised feature ranges into half-spaces: each internal node
//! halves a random dimension's range. Each key's state counts how many of its values fell into
//! each node: the `reference` masses of the last complete window of `window` values and the
//! `latest` masses of the window being filled; a full latest window becomes the reference. A
//! value descends each tree until a node's reference mass falls below `window / 10` (or the
//! leaf), and its density there is `(mass + ½) · 2^depth`. The native statistic is how many
//! times rarer the value's region is than a typical reference value's, in bits: the mean over
//! the reference window's values of their log2 density minus the value's, both averaged over
//! trees (a geometric mean, so that one coarse tree cannot hide what the others see). The score
//! is `squash(bits / limit)`.
//! Each dimension's contribution is its share of the mass lost at the splits on that dimension
//! along the value's paths (`log2` of parent over child mass); it is worked out for scores from
//! [`EXPLAIN_FROM`] (0.5) on, and left empty below, where there is nothing to explain.
//!
//! Feature ranges come from the `ranges` parameter (`[[lo, hi], …]`, one pair per field) or are
//! learned as the min and max of the first `warmup` values (default 50; 0 when `ranges` is
//! given); scoring starts once a first window is complete. Parameters: `trees` (default 25),
//! `depth` (default 8), `window` (default 250), `limit` (bits, default 7: 128 times rarer than
//! typical), `seed` (default 1), `ranges`. A key's state holds `2 × trees × (2^(depth+1) − 1)`
//! counters (25,550 with the defaults, most of them small: ~26 KB as MessagePack); lower `trees`
//! or `depth` for very many keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stats::{fin, SplitMix};
use super::{squash, Basis, DetectorError, Params, Reading, Unit};

/// The most dimensions a detector accepts (checked in `Detector::new`), so per-update scratch
/// space lives on the stack.
const MAX_DIMS: usize = 64;
/// Contributions are worked out from this score on (an empty list below).
pub const EXPLAIN_FROM: f64 = 0.5;

#[derive(Debug, Clone)]
pub struct Config {
    pub trees: usize,
    pub depth: usize,
    pub window: u32,
    pub limit: f64,
    pub seed: u64,
    pub ranges: Option<Vec<(f64, f64)>>,
    pub warmup: u32,
    dims: usize,
    size_limit: u16,
    /// Per tree, per internal node (heap order: children of i are 2i+1 and 2i+2).
    splits: Vec<Split>,
    /// `log2(r + 0.5)` and `log2(r + 1)` for every mass `r` a window can hold: a log per tree
    /// level would otherwise dominate the update.
    log_half: Vec<f64>,
    log_one: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    at: f32,
    dim: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    seen: u32,
    /// Learned ranges (empty when configured).
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Values in the latest window.
    filled: u32,
    reference: Vec<u16>,
    latest: Vec<u16>,
    /// Mass-weighted mean log2 density of the reference window; 0 until there is one.
    typical: f64,
}

impl Config {
    pub(crate) fn new(
        p: &mut Params,
        warmup: Option<u32>,
        dims: usize,
    ) -> Result<Config, DetectorError> {
        let trees = p.int("trees", 25, 1, 1000)? as usize;
        let depth = p.int("depth", 8, 1, 15)? as usize;
        let window = p.int("window", 250, 10, u64::from(u16::MAX))? as u32;
        let limit = p.f64("limit", 7.0, 0.0, 1e6, true)?;
        let seed = p.int("seed", 1, 0, u64::MAX)?;
        let ranges = match p.value("ranges") {
            None => None,
            Some(v) => Some(parse_ranges(v, dims).ok_or_else(|| {
                p.error(
                    "ranges",
                    format!("a list of {dims} [low, high] pairs of numbers with low < high, one per field"),
                    v,
                )
            })?),
        };
        let default_warmup = if ranges.is_some() { 0 } else { 50 };
        let mut warmup = warmup.unwrap_or(default_warmup);
        if ranges.is_none() && warmup < 2 {
            // Learning a range takes at least two values.
            warmup = 2;
        }
        let mut c = Config {
            trees,
            depth,
            window,
            limit,
            seed,
            ranges,
            warmup,
            dims,
            size_limit: (window / 10).max(1) as u16,
            splits: Vec::new(),
            log_half: (0..=window).map(|r| (f64::from(r) + 0.5).log2()).collect(),
            log_one: (0..=window).map(|r| (f64::from(r) + 1.0).log2()).collect(),
        };
        c.grow();
        Ok(c)
    }

    fn internal(&self) -> usize {
        (1 << self.depth) - 1
    }

    fn nodes(&self) -> usize {
        (1 << (self.depth + 1)) - 1
    }

    /// Grows the forest in the unit cube: each tree's work space is, per dimension, a random
    /// `s ± 2·max(s, 1 − s)` (the paper's construction, which always covers [0, 1]).
    fn grow(&mut self) {
        let mut rng = SplitMix(self.seed);
        let internal = self.internal();
        self.splits = vec![Split { at: 0.0, dim: 0 }; self.trees * internal];
        for t in 0..self.trees {
            let mut space: Vec<(f64, f64)> = (0..self.dims)
                .map(|_| {
                    let s = rng.unit();
                    let w = 2.0 * s.max(1.0 - s);
                    (s - w, s + w)
                })
                .collect();
            self.split(&mut rng, t * internal, 0, &mut space);
        }
    }

    fn split(&mut self, rng: &mut SplitMix, base: usize, node: usize, space: &mut [(f64, f64)]) {
        if node >= self.internal() {
            return;
        }
        let q = rng.below(self.dims);
        let (lo, hi) = space[q];
        let mid = lo / 2.0 + hi / 2.0;
        // f32: a split only needs to be the same for every key, and 8-byte nodes keep the
        // forest's hot part in cache.
        self.splits[base + node] = Split {
            at: mid as f32,
            dim: q as u32,
        };
        space[q] = (lo, mid);
        self.split(rng, base, 2 * node + 1, space);
        space[q] = (mid, hi);
        self.split(rng, base, 2 * node + 2, space);
        space[q] = (lo, hi);
    }

    pub(crate) fn new_state(&self) -> State {
        let n = self.trees * self.nodes();
        State {
            reference: vec![0; n],
            latest: vec![0; n],
            ..State::default()
        }
    }

    pub(crate) fn fits(&self, s: &State) -> bool {
        let n = self.trees * self.nodes();
        let ranges_ok = match &self.ranges {
            Some(_) => s.lo.is_empty(),
            None => s.lo.len() == self.dims && s.hi.len() == self.dims || s.seen == 0,
        };
        s.reference.len() == n && s.latest.len() == n && ranges_ok
    }

    pub(crate) fn update(&self, s: &mut State, x: &[f64]) -> Reading {
        if self.ranges.is_none() && s.seen < self.warmup {
            if s.lo.is_empty() {
                s.lo = x.to_vec();
                s.hi = x.to_vec();
            }
            for (q, &v) in x.iter().enumerate() {
                s.lo[q] = s.lo[q].min(v);
                s.hi[q] = s.hi[q].max(v);
            }
            s.seen = s.seen.saturating_add(1);
            return Reading::cold(Unit::Bits);
        }
        s.seen = s.seen.saturating_add(1);
        let mut u = [0.0f64; MAX_DIMS];
        for (q, &v) in x.iter().enumerate() {
            let (lo, hi) = match &self.ranges {
                Some(r) => r[q],
                None => (s.lo[q], s.hi[q]),
            };
            let width = fin(hi - lo).max(lo.abs() * 1e-9).max(1e-12);
            u[q] = (v - lo) / width;
        }
        let warm = s.typical > 0.0;
        let (nodes, internal) = (self.nodes(), self.internal());
        let window = self.window as u16;
        let mut log_density = 0.0;
        // Trees advance level by level in groups of LANES so the CPU overlaps their
        // independent memory loads instead of walking one tree's chain at a time.
        const LANES: usize = 8;
        for t0 in (0..self.trees).step_by(LANES) {
            let lanes = LANES.min(self.trees - t0);
            let mut at = [0usize; LANES];
            let mut scored = [false; LANES];
            for d in 0..=self.depth {
                for j in 0..lanes {
                    let (base, ibase) = ((t0 + j) * nodes, (t0 + j) * internal);
                    let node = at[j];
                    // A window of `window` values puts at most `window` in a node.
                    let counter = &mut s.latest[base + node];
                    *counter = counter.saturating_add(1).min(window);
                    // min: a state saved under a larger window must not index past the tables.
                    let r = s.reference[base + node].min(window);
                    if !scored[j] && (d == self.depth || r < self.size_limit) {
                        log_density += self.log_half[usize::from(r)] + d as f64;
                        scored[j] = true;
                    }
                    if d == self.depth {
                        continue;
                    }
                    let split = self.splits[ibase + node];
                    let q = split.dim as usize;
                    let child = if u[q] < f64::from(split.at) {
                        2 * node + 1
                    } else {
                        2 * node + 2
                    };
                    at[j] = child;
                }
            }
        }
        let reading = if warm {
            let bits = (s.typical - log_density / self.trees as f64).max(0.0);
            let score = squash(bits / self.limit);
            // Attribution walks the trees again: only worth it when there is something to
            // explain, and skipping it keeps ordinary updates fast.
            let contributions = if score >= EXPLAIN_FROM {
                self.contributions(&s.reference, &u[..self.dims])
            } else {
                Vec::new()
            };
            Reading {
                score,
                strength: bits / self.limit,
                warm: true,
                expected: 0.0,
                deviation: bits,
                unit: Unit::Bits,
                limit: None,
                basis: Basis::Mass,
                contributions,
                tail: None,
            }
        } else {
            Reading::cold(Unit::Bits)
        };
        s.filled += 1;
        if s.filled >= self.window {
            std::mem::swap(&mut s.reference, &mut s.latest);
            s.latest.fill(0);
            s.filled = 0;
            s.typical = self.typical(&s.reference);
        }
        reading
    }

    /// Each dimension's share of the mass lost at its splits along the value's paths down to
    /// the nodes that scored it (`log2` of parent over child mass, +1 each).
    fn contributions(&self, reference: &[u16], u: &[f64]) -> Vec<f64> {
        let (nodes, internal) = (self.nodes(), self.internal());
        let window = self.window as u16;
        let mut credit = [0.0f64; MAX_DIMS];
        for t in 0..self.trees {
            let (base, ibase) = (t * nodes, t * internal);
            let mut node = 0;
            for _ in 0..self.depth {
                let r = reference[base + node].min(window);
                if r < self.size_limit {
                    break;
                }
                let split = self.splits[ibase + node];
                let q = split.dim as usize;
                let child = if u[q] < f64::from(split.at) {
                    2 * node + 1
                } else {
                    2 * node + 2
                };
                let rc = reference[base + child].min(window);
                credit[q] += self.log_one[usize::from(r)] - self.log_one[usize::from(rc)];
                node = child;
            }
        }
        let total: f64 = credit[..self.dims].iter().sum();
        if total > 0.0 {
            credit[..self.dims].iter().map(|c| c / total).collect()
        } else {
            vec![1.0 / self.dims as f64; self.dims]
        }
    }

    /// The mean log2 density of the reference window's own values (over values and trees):
    /// each tree's terminal nodes partition the window, a node holding `r` of the `W` values.
    /// Never below 1 once there is a reference (a one-value node at depth 0 has log2 1.5).
    fn typical(&self, reference: &[u16]) -> f64 {
        let nodes = self.nodes();
        let mut sum = 0.0;
        let mut stack = Vec::with_capacity(2 * self.depth + 2);
        for t in 0..self.trees {
            let tree = &reference[t * nodes..(t + 1) * nodes];
            let w = f64::from(tree[0]);
            if w == 0.0 {
                continue;
            }
            stack.push((0usize, 0usize));
            while let Some((node, d)) = stack.pop() {
                let r = tree[node];
                if r == 0 {
                    continue;
                }
                if d == self.depth || r < self.size_limit {
                    let r = f64::from(r);
                    sum += r / w * ((r + 0.5).log2() + d as f64);
                } else {
                    stack.push((2 * node + 1, d + 1));
                    stack.push((2 * node + 2, d + 1));
                }
            }
        }
        (sum / self.trees as f64).max(f64::MIN_POSITIVE)
    }
}

fn parse_ranges(v: &Value, dims: usize) -> Option<Vec<(f64, f64)>> {
    let list = v.as_array()?;
    if list.len() != dims {
        return None;
    }
    list.iter()
        .map(|pair| {
            let pair = pair.as_array()?;
            match pair.as_slice() {
                [lo, hi] => {
                    let (lo, hi) = (lo.as_f64()?, hi.as_f64()?);
                    (lo.is_finite() && hi.is_finite() && lo < hi).then_some((lo, hi))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::stats::SplitMix;
    use super::super::{explain, Detector, Kind, State as AnyState};
    use super::*;
    use serde_json::json;

    fn det(params: Value, warmup: Option<u32>, dims: usize) -> Detector {
        Detector::new(
            Kind::HalfSpaceTrees,
            &super::super::uncalibrated(params),
            warmup,
            dims,
        )
        .unwrap()
    }

    #[test]
    fn the_forest_depends_only_on_the_seed() {
        let a = det(json!({"seed": 7}), None, 3);
        let b = det(json!({"seed": 7}), None, 3);
        let c = det(json!({"seed": 8}), None, 3);
        let cfg = |d: &Detector| match &d.imp {
            super::super::Imp::HalfSpaceTrees(c) => c.splits.clone(),
            _ => unreachable!(),
        };
        assert_eq!(cfg(&a), cfg(&b));
        assert_ne!(cfg(&a), cfg(&c));
    }

    #[test]
    fn constant_series_scores_zero() {
        let d = det(json!({"window": 20}), Some(5), 2);
        let mut s = d.new_state();
        for i in 0..100 {
            let r = d.update(&mut s, &[3.0, -1.0], i);
            assert_eq!(r.score, 0.0, "{i}");
            // 5 values learn the ranges, 20 fill the first window.
            assert_eq!(r.warm, i >= 25, "{i}");
        }
    }

    /// Two correlated fields: a ~ N(50, 12²), b = a ± 3.
    fn pair(i: i64) -> [f64; 2] {
        let mut rng = SplitMix(i as u64);
        let a = 50.0 + 12.0 * rng.normal();
        [a, a + ((i * 13 % 7) - 3) as f64]
    }

    #[test]
    fn an_unusual_combination_is_flagged_and_attributed() {
        let d = det(json!({"ranges": [[0, 100], [0, 100]]}), None, 2);
        let mut s = d.new_state();
        let mut flagged = 0;
        for i in 0..1000 {
            let r = d.update(&mut s, &pair(i), i);
            assert_eq!(r.warm, i >= 250);
            if r.score >= d.default_threshold() {
                flagged += 1;
            }
        }
        // Ordinary values are rarely flagged (the edges of the cloud, if anything).
        assert!(flagged <= 5, "{flagged} of 750 ordinary values flagged");
        // Each field is ordinary alone, together they are not: a high, b low.
        let r = d.update(&mut s, &[95.0, 5.0], 1000);
        assert!(r.score > d.default_threshold(), "{r:?}");
        assert_eq!(r.contributions.len(), 2);
        assert!((r.contributions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let text = explain(&d, &r, &["cpu", "mem"], &[95.0, 5.0]);
        assert!(
            text.starts_with("unusual combination of cpu 95, mem 5 ("),
            "{text}"
        );
        // Far out along one field: that field gets the credit.
        let r = d.update(&mut s, &[50.0, 400.0], 1001);
        assert!(r.score > d.default_threshold(), "{r:?}");
        assert!(r.contributions[1] > 0.5, "{r:?}");
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let d = det(json!({"window": 30, "depth": 5, "trees": 5}), Some(10), 2);
        let mut a = d.new_state();
        for i in 0..100 {
            d.update(&mut a, &pair(i), i);
        }
        let mut b: AnyState = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        assert_eq!(a, b);
        for i in 100..200 {
            let x = if i == 150 { [90.0, 0.0] } else { pair(i) };
            assert_eq!(d.update(&mut a, &x, i), d.update(&mut b, &x, i));
        }
    }

    #[test]
    fn params_are_checked() {
        let e =
            Detector::new(Kind::HalfSpaceTrees, &json!({"ranges": [[0, 1]]}), None, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("`ranges` expects a list of 2 [low, high] pairs"),
            "{e}"
        );
        let e = Detector::new(Kind::HalfSpaceTrees, &json!({"depth": 20}), None, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("`depth` expects a whole number in [1, 15]"),
            "{e}"
        );
        let e = Detector::new(Kind::HalfSpaceTrees, &Value::Null, None, 65).unwrap_err();
        assert!(e.to_string().contains("between 1 and 64"), "{e}");
    }
}

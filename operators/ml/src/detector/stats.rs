//! Small numeric pieces the detectors share.

use serde::{Deserialize, Serialize};

/// σ per mean absolute deviation for a normal distribution (√(π/2)).
pub(crate) const SIGMA_PER_MEAN_AD: f64 = 1.253_314_137_315_500_3;

/// Keeps a statistic finite: NaN becomes 0 and ±∞ the largest finite value, so that one
/// absurd input cannot poison a key's state for good.
pub(crate) fn fin(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::MAX, f64::MAX)
    }
}

/// A scale never below a tiny fraction of the level it measures: a constant series has scale
/// 0, and dividing by it would turn the first rounding difference into an infinite deviation.
pub(crate) fn floor_scale(scale: f64, center: f64) -> f64 {
    let s = fin(scale);
    s.max(center.abs() * 1e-9).max(1e-12)
}

/// `(x − center) / scale`, never NaN (the scale is positive; an overflow saturates).
pub(crate) fn deviation(x: f64, center: f64, scale: f64) -> f64 {
    let d = (x - center) / scale;
    if d.is_nan() {
        0.0
    } else {
        d
    }
}

/// Mean and variance: exact (Welford) for the first `exact` observations, then exponentially
/// weighted with residuals clipped at `clip` σ, so one wild value moves neither much.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MeanVar {
    pub n: u32,
    pub mean: f64,
    pub var: f64,
}

impl MeanVar {
    pub fn sigma(&self) -> f64 {
        floor_scale(self.var.sqrt(), self.mean)
    }

    pub fn update(&mut self, x: f64, exact: u32, alpha: f64, clip: f64) {
        self.n = self.n.saturating_add(1);
        if self.n <= exact.max(1) {
            let n = f64::from(self.n);
            let d = x - self.mean;
            self.mean = fin(self.mean + d / n);
            // Population variance via the Welford recurrence on var directly.
            self.var = fin(self.var + (d * (x - self.mean) - self.var) / n);
            return;
        }
        let s = self.sigma();
        let r = (x - self.mean).clamp(-clip * s, clip * s);
        self.mean = fin(self.mean + alpha * r);
        self.var = fin(self.var + alpha * (r * r * (1.0 - alpha) - self.var));
    }
}

/// Location and scale by exponentially weighted mean and mean absolute residual, with the
/// weight never below `1/n` so that the first observations are averaged plainly, and residuals
/// clipped at `clip` scales once a few observations are in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Robust {
    pub n: u32,
    pub mean: f64,
    pub mad: f64,
}

impl Robust {
    /// A σ-equivalent scale.
    pub fn sigma(&self) -> f64 {
        floor_scale(self.mad * SIGMA_PER_MEAN_AD, self.mean)
    }

    pub fn update(&mut self, x: f64, alpha: f64, clip: f64) {
        self.n = self.n.saturating_add(1);
        if self.n == 1 {
            self.mean = x;
            self.mad = 0.0;
            return;
        }
        let a = alpha.max(1.0 / f64::from(self.n));
        let mut r = x - self.mean;
        if self.n > 5 {
            let c = clip * self.sigma();
            r = r.clamp(-c, c);
        }
        self.mean = fin(self.mean + a * r);
        self.mad = fin(self.mad + a * (fin(r.abs()) - self.mad));
    }
}

/// SplitMix64: a tiny, fully specified generator, so the forest grown from a seed is the same
/// on every machine and in every version (the per-key masses depend on it).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanvar_is_exact_during_warmup() {
        let mut m = MeanVar::default();
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            m.update(x, 100, 0.1, 3.0);
        }
        assert_eq!(m.mean, 5.0);
        assert!((m.var - 4.0).abs() < 1e-12);
    }

    #[test]
    fn robust_starts_as_a_plain_mean() {
        let mut r = Robust::default();
        for x in [1.0, 3.0] {
            r.update(x, 0.01, 3.0);
        }
        assert_eq!(r.mean, 2.0);
        assert_eq!(r.mad, 1.0);
    }

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // First output of SplitMix64 seeded with 0, as published with the algorithm.
        assert_eq!(SplitMix(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }
}

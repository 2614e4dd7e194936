//! Calibration: turns a kind's raw statistic into how rare it is *for this key*, so that one
//! threshold means the same rarity for every kind, key and series.
//!
//! The approach is the anomaly likelihood of Ahmad et al. (Numenta, 2017). Each reading's
//! strength (the kind's statistic over its limit, [`super::Reading::strength`]) is averaged over
//! the key's last `average` readings; the key keeps the mean and variance of those averages
//! (exact for the first `memory`, then exponentially weighted with that memory). A reading's
//! rarity is the upper tail probability `p` of its average under the normal distribution of the
//! earlier averages, and its score is `−log10(p) / 10`, clipped to [0, 1]: a score of 0.5 means
//! one in 100,000, 1 means one in 10^10 or rarer. The average makes a short burst count more
//! than one wild value among calm ones and a series that is always noisy score its noise as
//! usual, and the distribution is estimated only from readings before the one scored: strictly
//! online.
//!
//! A key is scored once it has `learn` averages behind it (before that the reading is cold).
//! The spread never counts as less than [`MIN_SPREAD`] (in strength units, where 1 is the
//! kind's limit), so a series with no noise at all does not turn the first rounding
//! difference into an alert.

use serde::{Deserialize, Serialize};

/// The smallest standard deviation of the averaged strengths the tail is computed with.
pub const MIN_SPREAD: f64 = 0.05;
/// Tail probabilities are floored here: a score of 1.
const MIN_LOG10_TAIL: f64 = -10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Readings averaged (the short-term window).
    pub average: usize,
    /// Averages seen before the key is scored.
    pub learn: u32,
    /// Averages the distribution remembers (exact until then, then exponential).
    pub memory: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            average: 5,
            learn: 200,
            memory: 2000,
        }
    }
}

/// One key's calibration state (~`average` floats and four numbers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last `average` strengths, oldest at `head` once full.
    recent: Vec<f64>,
    head: u32,
    /// Averages folded into the distribution.
    n: u32,
    mean: f64,
    var: f64,
}

impl State {
    /// Whether this state was made with `cfg`'s window.
    pub fn fits(&self, cfg: &Config) -> bool {
        self.recent.len() <= cfg.average && (self.head as usize) < cfg.average.max(1)
    }
}

impl Config {
    /// Scores `strength` (≥ 0; NaN counts as 0) against the key's history, then learns it.
    /// `None` while the key is still learning.
    pub fn update(&self, s: &mut State, strength: f64) -> Option<f64> {
        self.log10_tail(s, strength).map(score_of_log10_tail)
    }

    /// [`Config::update`] as `log10 p`, the tail probability itself (≤ 0).
    pub fn log10_tail(&self, s: &mut State, strength: f64) -> Option<f64> {
        let x = if strength.is_nan() {
            0.0
        } else {
            strength.clamp(0.0, 1e6)
        };
        if s.recent.len() < self.average {
            s.recent.push(x);
        } else {
            let h = s.head as usize;
            s.recent[h] = x;
            s.head = ((h + 1) % self.average) as u32;
        }
        let avg = s.recent.iter().sum::<f64>() / s.recent.len() as f64;
        let tail = (s.n >= self.learn).then(|| {
            let sd = s.var.max(0.0).sqrt().max(MIN_SPREAD);
            log10_upper_tail((avg - s.mean) / sd)
        });
        // Learn the average (exact, then exponential with `memory`).
        s.n = s.n.saturating_add(1);
        let w = 1.0 / f64::from(s.n.min(self.memory));
        let d = avg - s.mean;
        s.mean += w * d;
        s.var = (1.0 - w) * (s.var + w * d * d);
        tail
    }
}

/// `−log10(p) / 10` clipped to [0, 1].
pub fn score_of_log10_tail(log10_p: f64) -> f64 {
    (log10_p.max(MIN_LOG10_TAIL) / MIN_LOG10_TAIL).clamp(0.0, 1.0)
}

/// The tail probability a score stands for (for explanations): `10^(−10 · score)`.
pub fn tail_of_score(score: f64) -> f64 {
    10f64.powf(MIN_LOG10_TAIL * score.clamp(0.0, 1.0))
}

/// `log10 P(Z > z)` for a standard normal `Z`, without underflow: `P(Z > z) = erfc(z/√2)/2`
/// with erfc in the exponential form of Numerical Recipes' `erfcc` (relative error < 1.2e-7
/// everywhere), whose logarithm stays finite for any z.
pub fn log10_upper_tail(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    let x = z / std::f64::consts::SQRT_2;
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.5 * ax);
    let poly = -ax * ax - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ln_erfc_ax = t.ln() + poly; // ln erfc(|x|)
    let ln_tail = if x >= 0.0 {
        ln_erfc_ax - std::f64::consts::LN_2
    } else {
        // erfc(−a) = 2 − erfc(a)
        (1.0 - ln_erfc_ax.exp() / 2.0).ln()
    };
    (ln_tail / std::f64::consts::LN_10).min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_tail_is_right() {
        // Reference values of P(Z > z).
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_9),
            (3.0, 1.349_898_032e-3),
            (5.0, 2.866_515_719e-7),
            (-1.0, 0.841_344_746_1),
        ] {
            let got = 10f64.powf(log10_upper_tail(z));
            assert!((got / p - 1.0).abs() < 1e-6, "z {z}: {got} vs {p}");
        }
        // Far out it neither underflows nor loses its order: log10 P(Z > 40) ≈ −349.43.
        let far = log10_upper_tail(40.0);
        assert!((far + 349.43).abs() < 0.01, "{far}");
        assert_eq!(log10_upper_tail(f64::NAN), 0.0);
        assert_eq!(log10_upper_tail(-1e300), 0.0);
    }

    #[test]
    fn scores_map_tails_on_a_log_scale() {
        assert_eq!(score_of_log10_tail(0.0), 0.0);
        assert_eq!(score_of_log10_tail(-5.0), 0.5);
        assert_eq!(score_of_log10_tail(-30.0), 1.0);
        assert!((tail_of_score(0.5) - 1e-5).abs() < 1e-18);
    }

    fn cfg() -> Config {
        Config {
            average: 4,
            learn: 20,
            memory: 2000,
        }
    }

    #[test]
    fn cold_while_learning_then_usual_values_score_low_and_rare_ones_high() {
        let c = cfg();
        let mut s = State::default();
        let mut noise = 0.0f64;
        for i in 0..200 {
            noise = (noise + 0.37).fract();
            let r = c.update(&mut s, 0.2 + 0.2 * noise);
            assert_eq!(r.is_some(), i >= 20, "at {i}");
            if let Some(score) = r {
                assert!(score < 0.2, "usual value scored {score} at {i}");
            }
        }
        let spike = c.update(&mut s, 8.0).unwrap();
        assert!(spike > 0.9, "{spike}");
    }

    #[test]
    fn a_noisy_key_is_judged_by_its_own_noise() {
        // The same strength is rare for a calm key and usual for a noisy one.
        let c = cfg();
        let (mut calm, mut noisy) = (State::default(), State::default());
        for i in 0..300 {
            c.update(&mut calm, 0.1);
            c.update(&mut noisy, f64::from(i * 37 % 11) / 2.0);
        }
        let (a, b) = (
            c.update(&mut calm, 3.0).unwrap(),
            c.update(&mut noisy, 3.0).unwrap(),
        );
        assert!(a > 0.5 && b < 0.1, "calm {a}, noisy {b}");
    }

    #[test]
    fn scores_of_a_prefix_are_the_first_scores_of_the_whole() {
        let c = cfg();
        let xs: Vec<f64> = (0..300).map(|i| ((i * 37 % 101) as f64) / 50.0).collect();
        let run = |n: usize| {
            let mut s = State::default();
            xs[..n]
                .iter()
                .map(|&x| c.update(&mut s, x))
                .collect::<Vec<_>>()
        };
        let whole = run(300);
        for n in [1, 21, 150, 299] {
            assert_eq!(run(n)[..], whole[..n]);
        }
    }
}

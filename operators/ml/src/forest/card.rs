//! The model card: what a model was trained on and how it scores its own training set.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::isolation::{ForestError, IsolationForest};

/// Bins of [`ScoreDistribution::histogram`].
pub const HISTOGRAM_BINS: usize = 20;

/// Why a model card could not be built, written or read.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Scoring the training rows failed (ragged rows).
    #[error(transparent)]
    Forest(#[from] ForestError),
    /// The rows' width differs from the forest's.
    #[error("expected rows of {expected} features (the forest's), found n_features = {found}")]
    Features { expected: usize, found: usize },
    /// One name per feature is needed.
    #[error("expected {expected} feature names (one per feature), found {found}")]
    FeatureNames { expected: usize, found: usize },
    /// No training rows to describe.
    #[error("expected at least one training row to score, found none")]
    NoRows,
    /// Contamination outside (0, 0.5], the range scikit-learn accepts.
    #[error("contamination must be in (0, 0.5], found {0}")]
    Contamination(f64),
    /// The training range ends before it starts.
    #[error("training range must not end before it starts, found from {from_ms} ms to {to_ms} ms")]
    Range { from_ms: i64, to_ms: i64 },
    /// A time stamp jiff cannot represent.
    #[error("{what}: {ms} ms since the epoch is out of range: {source}")]
    Timestamp {
        what: &'static str,
        ms: i64,
        source: jiff::Error,
    },
    /// Writing or reading the card file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The card file is not a model card.
    #[error("{path}: not a model card: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What the card says beyond what the forest and rows tell.
#[derive(Clone, Debug)]
pub struct CardContext<'a> {
    /// Pipeline the model scores for.
    pub pipeline: &'a str,
    /// That pipeline's version (its definition's content hash).
    pub pipeline_version: &'a str,
    /// Event time of the first training row, ms since the epoch.
    pub from_ms: i64,
    /// Event time of the last training row, ms since the epoch.
    pub to_ms: i64,
    /// When the model was made, ms since the epoch.
    pub created_at_ms: i64,
}

/// A point in time, as a number for programs and as RFC 3339 for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instant {
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
    /// The same instant in RFC 3339, UTC.
    pub rfc3339: String,
}

/// The forest's parameters as fitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestSummary {
    /// Number of trees.
    pub trees: usize,
    /// ψ: rows per tree actually drawn.
    pub sample_size: usize,
    /// Depth limit of the trees.
    pub max_depth: usize,
    /// Seed the forest was grown from.
    pub seed: u64,
}

/// Quantiles of the training scores (linear interpolation, numpy's default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
}

/// Equal-width bins over [min, max] of the training scores; the last bin includes max.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Lower edge of the first bin (the lowest score).
    pub lo: f64,
    /// Upper edge of the last bin (the highest score).
    pub hi: f64,
    /// Scores per bin, [`HISTOGRAM_BINS`] of them.
    pub counts: Vec<u64>,
}

/// How the model scores its own training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreDistribution {
    /// Lowest training score.
    pub min: f64,
    /// Highest training score.
    pub max: f64,
    /// Mean training score.
    pub mean: f64,
    /// Selected quantiles.
    pub quantiles: Quantiles,
    /// Shape of the whole distribution.
    pub histogram: Histogram,
}

/// Describes a trained model; written as JSON beside it ([`ModelCard::path_beside`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Pipeline the model scores for.
    pub pipeline: String,
    /// That pipeline's version when the model was trained.
    pub pipeline_version: String,
    /// Always "isolation_forest" for now; says how to read the score.
    pub model: String,
    /// Feature names in the model's input column order.
    pub features: Vec<String>,
    /// Event time of the first training row.
    pub training_from: Instant,
    /// Event time of the last training row.
    pub training_to: Instant,
    /// Training rows.
    pub samples: usize,
    /// How the forest was grown.
    pub forest: ForestSummary,
    /// Scores of the training rows.
    pub scores: ScoreDistribution,
    /// Expected share of anomalies the threshold was chosen for.
    pub contamination: f64,
    /// Scores above this are anomalies: the (1 − contamination) quantile of training scores.
    pub threshold: f64,
    /// Training rows scoring above the threshold.
    pub flagged_in_training: usize,
    /// When the model was made.
    pub created_at: Instant,
}

impl ModelCard {
    /// Scores the training `rows` (row-major, `n_features` wide) with `forest` and describes
    /// the result; the threshold is the (1 − `contamination`) quantile of those scores.
    pub fn build(
        forest: &IsolationForest,
        rows: &[f32],
        n_features: usize,
        feature_names: &[String],
        contamination: f64,
        context: &CardContext<'_>,
    ) -> Result<ModelCard, CardError> {
        if n_features != forest.n_features() {
            return Err(CardError::Features {
                expected: forest.n_features(),
                found: n_features,
            });
        }
        if feature_names.len() != n_features {
            return Err(CardError::FeatureNames {
                expected: n_features,
                found: feature_names.len(),
            });
        }
        // Negated so that NaN is refused too.
        if !(contamination > 0.0 && contamination <= 0.5) {
            return Err(CardError::Contamination(contamination));
        }
        if context.to_ms < context.from_ms {
            return Err(CardError::Range {
                from_ms: context.from_ms,
                to_ms: context.to_ms,
            });
        }
        let mut scores = forest.score_batch(rows)?;
        if scores.is_empty() {
            return Err(CardError::NoRows);
        }
        scores.sort_by(f64::total_cmp);
        let threshold = quantile(&scores, 1.0 - contamination);
        let flagged = scores.len() - scores.partition_point(|&s| s <= threshold);
        let p = forest.params();
        Ok(ModelCard {
            pipeline: context.pipeline.into(),
            pipeline_version: context.pipeline_version.into(),
            model: "isolation_forest".into(),
            features: feature_names.to_vec(),
            training_from: instant("training from", context.from_ms)?,
            training_to: instant("training to", context.to_ms)?,
            samples: scores.len(),
            forest: ForestSummary {
                trees: p.trees,
                sample_size: forest.sample_size(),
                max_depth: forest.max_depth(),
                seed: p.seed,
            },
            scores: distribution(&scores),
            contamination,
            threshold,
            flagged_in_training: flagged,
            created_at: instant("created at", context.created_at_ms)?,
        })
    }

    /// Where the card of `model` goes: `dir/name.onnx` → `dir/name.card.json`.
    pub fn path_beside(model: &Path) -> PathBuf {
        model.with_extension("card.json")
    }

    /// Writes the card as pretty JSON beside `model`, returning the card's path.
    pub fn write_beside(&self, model: &Path) -> Result<PathBuf, CardError> {
        let path = Self::path_beside(model);
        let mut json = serde_json::to_string_pretty(self).expect("a card serializes");
        json.push('\n');
        std::fs::write(&path, json).map_err(|source| CardError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Reads the card beside `model`.
    pub fn read_beside(model: &Path) -> Result<ModelCard, CardError> {
        let path = Self::path_beside(model);
        let text = std::fs::read_to_string(&path).map_err(|source| CardError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| CardError::Json { path, source })
    }
}

impl fmt::Display for ModelCard {
    /// A few lines for a CLI to print after training.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scores;
        writeln!(
            f,
            "{} for pipeline {} (version {})",
            self.model.replace('_', " "),
            self.pipeline,
            self.pipeline_version
        )?;
        writeln!(f, "  features: {}", self.features.join(", "))?;
        writeln!(
            f,
            "  trained on {} samples from {} to {}",
            self.samples, self.training_from.rfc3339, self.training_to.rfc3339
        )?;
        writeln!(
            f,
            "  {} trees, sample size {}, max depth {}, seed {}",
            self.forest.trees, self.forest.sample_size, self.forest.max_depth, self.forest.seed
        )?;
        writeln!(
            f,
            "  training scores: min {:.4}, p50 {:.4}, p99 {:.4}, max {:.4}",
            s.min, s.quantiles.p50, s.quantiles.p99, s.max
        )?;
        write!(
            f,
            "  threshold {:.4} (contamination {}) flags {} of {} training samples",
            self.threshold, self.contamination, self.flagged_in_training, self.samples
        )
    }
}

fn instant(what: &'static str, ms: i64) -> Result<Instant, CardError> {
    let at = jiff::Timestamp::from_millisecond(ms).map_err(|source| CardError::Timestamp {
        what,
        ms,
        source,
    })?;
    Ok(Instant {
        ms,
        rfc3339: at.to_string(),
    })
}

/// The q quantile of ascending `sorted`, interpolating linearly between neighbours.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let below = pos.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let frac = pos - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * frac
}

fn distribution(sorted: &[f64]) -> ScoreDistribution {
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let mut counts = vec![0u64; HISTOGRAM_BINS];
    let width = (max - min) / HISTOGRAM_BINS as f64;
    for &s in sorted {
        // All scores land in bin 0 when they are equal (width 0).
        let bin = if width > 0.0 {
            (((s - min) / width) as usize).min(HISTOGRAM_BINS - 1)
        } else {
            0
        };
        counts[bin] += 1;
    }
    ScoreDistribution {
        min,
        max,
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        quantiles: Quantiles {
            p50: quantile(sorted, 0.5),
            p90: quantile(sorted, 0.9),
            p95: quantile(sorted, 0.95),
            p99: quantile(sorted, 0.99),
            p99_9: quantile(sorted, 0.999),
        },
        histogram: Histogram {
            lo: min,
            hi: max,
            counts,
        },
    }
}

//! Isolation Forest anomaly models trained in Rust and written as standard ONNX-ML.
//!
//! [`IsolationForest::fit`] grows the forest of Liu, Ting & Zhou (2008) the way scikit-learn
//! does; [`IsolationForest::to_onnx`] writes it as a `TreeEnsembleRegressor` followed by `Mul`
//! and `Pow`, so any ONNX-ML runtime computes the same score; [`ModelCard`] records what the
//! model was trained on and the score threshold suggested for a chosen contamination.

mod card;
mod isolation;
#[cfg(feature = "onnx")]
mod onnx;

pub use card::{
    CardContext, CardError, ForestSummary, Histogram, Instant, ModelCard, Quantiles,
    ScoreDistribution, HISTOGRAM_BINS,
};
pub use isolation::{ForestError, ForestParams, IsolationForest};

/// Name of the exported graph's input: float [N, n_features].
pub const INPUT_NAME: &str = "features";
/// Name of the exported graph's output: float [N, 1], the anomaly score.
pub const OUTPUT_NAME: &str = "score";

#[cfg(all(test, feature = "onnx"))]
mod tests;

//! Isolation Forest anomaly models trained in Rust and written as standard ONNX-ML.
//!
//! [`IsolationForest::fit`] grows the forest of Liu, Ting & Zhou (2008) the way scikit-learn
//! does; [`IsolationForest::to_onnx`] writes it as a `TreeEnsembleRegressor` followed by `Mul`
//! and `Pow`, so any ONNX-ML runtime computes the same score; [`ModelCard`] records what the
//! model was trained on and the score threshold suggested for a chosen contamination.

mod card;
mod isolation;
mod onnx;

pub use card::{
    CardContext, CardError, ForestSummary, Histogram, Instant, ModelCard, Quantiles,
    ScoreDistribution, HISTOGRAM_BINS,
};
pub use isolation::{ForestError, ForestParams, IsolationForest};
pub use onnx::{INPUT_NAME, OUTPUT_NAME};

#[cfg(test)]
mod tests;

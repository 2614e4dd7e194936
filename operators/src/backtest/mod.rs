//! Backtests: a stretch of a pipeline's raw events, replayed through a pipeline version (or
//! two, side by side) with the same stage code as live, in event time, with throwaway state
//! and nothing sent anywhere. What would have fired, how often, and (given labels) how well.
//!
//! ```text
//! history stream ─[source]→ batches ─[engine per version]→ tap ─[collector]→ report ─[render]
//!                                                                  ↑ labels (a field, or windows)
//! ```
//! `anom train` uses the same [`Engine`] up to the aggregates ([`Depth::Enriched`]).

pub mod collector;
pub mod engine;
pub mod labels;
pub mod plot;
pub mod render;
pub mod report;
pub mod run;
pub mod scoring;
pub mod source;
pub mod thresholds;

pub use engine::{Depth, Engine, Raw, Tap};
pub use labels::Labels;
pub use report::{Comparison, Report};
pub use run::{run, Progress, Spec};
pub use source::{Position, Range};

use crate::stage::score::ScoreError;
use anom_lang::value::Value;
use anom_pipeline::envelope::Envelope;
use anom_pipeline::Pipeline;
use anom_runtime::checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("temporary state: {0}")]
    State(#[from] CheckpointError),
    #[error("temporary state directory: {0}")]
    Dir(#[from] std::io::Error),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("reading {stream}: {message}")]
    Read { stream: String, message: String },
    #[error("labels: {0}")]
    Labels(String),
    #[error("the backtest was cancelled")]
    Cancelled,
}

/// A [`Tap`] that only wants each event (what `anom train` reads features from).
pub struct OnEvent<F>(pub F);

impl<F: FnMut(&Envelope)> Tap for OnEvent<F> {
    fn event(&mut self, env: &Envelope) {
        (self.0)(env)
    }
}

/// The row detectors read (fields, then aggregates), as numbers; `None` where a value is
/// missing or not numeric.
pub fn numeric_row(pipeline: &Pipeline, env: &Envelope) -> Vec<Option<f64>> {
    let mut row = env.data.clone();
    row.resize(pipeline.schema.len(), Value::Null);
    row.extend(env.enrichment.iter().cloned());
    pipeline.scope.retype(&mut row);
    row.iter().map(Value::as_number).collect()
}

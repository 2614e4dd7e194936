//! Scoring rows with ONNX models — scikit-learn exports among them — through tract.
//!
//! [`Model::load`] parses a model with [`onnx`] (tract's ONNX loader plus the ai.onnx.ml
//! operators skl2onnx needs and tract lacks: `TreeEnsembleRegressor`, `LabelEncoder`), checks
//! that it takes one float matrix `[N, n_features]`, fixes N as a symbol and optimises the
//! graph once. [`Model::run`] then scores any number of rows in one pass. A `Model` is cheap
//! to clone and can be shared between threads.

#[cfg(feature = "onnx")]
mod attrs;
#[cfg(feature = "onnx")]
mod engine;
#[cfg(feature = "onnx")]
mod label_encoder;
#[cfg(all(test, feature = "onnx"))]
mod testing;
#[cfg(feature = "onnx")]
mod tree_ensemble;

#[cfg(feature = "onnx")]
pub use engine::onnx;

use std::path::{Path, PathBuf};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("ONNX model has no graph")]
    NoGraph,
    #[error("model uses operators this build cannot run: {}", .0.join(", "))]
    Unsupported(Vec<String>),
    #[error("model has {} inputs ({}), expected exactly one [N, features] float input", .0.len(), .0.join(", "))]
    Inputs(Vec<String>),
    #[error("model input {name} is {found}, expected float (f32)")]
    InputType { name: String, found: String },
    #[error("model input {name} has shape {found}, expected [N, features]")]
    InputShape { name: String, found: String },
    #[error("model expects {model} input features, the caller declares {declared}")]
    Features { model: usize, declared: usize },
    #[error("model output {name} is {found}, expected float, integer or string elements")]
    OutputType { name: String, found: String },
    #[error("model output {name} has shape {found}, expected [N] or [N, fixed width]")]
    OutputShape { name: String, found: String },
    #[error("cannot prepare the model with {features} input features: {reason}")]
    Prepare { features: usize, reason: String },
    #[error("{found} input values for {rows} rows of {features} features, expected {}", .rows * .features)]
    Rows {
        rows: usize,
        features: usize,
        found: usize,
    },
    #[error("scoring failed: {0}")]
    Run(String),
    #[error("this build of Anom cannot run ONNX models: it was built without the `onnx` feature (on by default)")]
    NotBuilt,
}

/// The element type of a model output, as [`Model::run`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementKind {
    /// f32 (doubles are narrowed).
    Float,
    /// i64 (narrower integers and booleans are widened).
    Int,
    Str,
}

/// One model output: its ONNX name, element type and columns per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputInfo {
    pub name: String,
    pub kind: ElementKind,
    pub width: usize,
}

/// One output's values for a run, row-major: row `r` is `values[r * width..(r + 1) * width]`.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputData {
    Float { width: usize, values: Vec<f32> },
    Int { width: usize, values: Vec<i64> },
    Str { width: usize, values: Vec<String> },
}

impl OutputData {
    /// Columns per row.
    pub fn width(&self) -> usize {
        match self {
            OutputData::Float { width, .. }
            | OutputData::Int { width, .. }
            | OutputData::Str { width, .. } => *width,
        }
    }
}

/// A loaded, optimised model. Clones share the plan.
#[derive(Clone, Debug)]
pub struct Model {
    plan: Plan,
    n_features: usize,
    outputs: Vec<OutputInfo>,
}

#[cfg(feature = "onnx")]
use engine::Plan;

/// Without the `onnx` feature no model can be loaded, so there is no plan to hold.
#[cfg(not(feature = "onnx"))]
#[derive(Clone, Debug)]
enum Plan {}

impl Model {
    /// Loads the ONNX file at `path`; see [`Model::from_bytes`].
    pub fn load(path: &Path, n_features: usize) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Model::from_bytes(&bytes, n_features)
    }

    /// Loads a serialized ONNX model, checks it has one float input of shape [N, n_features]
    /// (N symbolic or any) and outputs of fixed width, and optimises it once for any N.
    pub fn from_bytes(bytes: &[u8], n_features: usize) -> Result<Model, ModelError> {
        #[cfg(feature = "onnx")]
        return engine::load(bytes, n_features);
        #[cfg(not(feature = "onnx"))]
        {
            let _ = (bytes, n_features);
            Err(ModelError::NotBuilt)
        }
    }

    /// The features per row the model was loaded for.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The model's outputs, in the order [`Model::run`] returns them.
    pub fn outputs(&self) -> &[OutputInfo] {
        &self.outputs
    }

    /// Scores `rows` (row-major, `n_rows` × n_features) in one run; one value set per output.
    pub fn run(&self, rows: &[f32], n_rows: usize) -> Result<Vec<OutputData>, ModelError> {
        #[cfg(feature = "onnx")]
        return engine::run(self, rows, n_rows);
        #[cfg(not(feature = "onnx"))]
        {
            let _ = (rows, n_rows);
            match self.plan {}
        }
    }
}

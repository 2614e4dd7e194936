//! Anomaly scoring: the built-in online [`detector`]s (one small state per key), ONNX
//! [`model`]s run with tract (with the ai.onnx.ml operators scikit-learn exports need), and the
//! isolation [`forest`] that `anom train` fits and writes as ONNX. Pure: no I/O but reading
//! model files.

pub mod benchmark;
pub mod detector;
pub mod forest;
pub mod model;

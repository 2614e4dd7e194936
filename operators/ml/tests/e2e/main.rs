//! The ML crate's end-to-end tests, one binary: the exported forest and scikit-learn models
//! against independent evaluators (Python, in the project-local venv).

mod forest_onnx;
mod sklearn_models;

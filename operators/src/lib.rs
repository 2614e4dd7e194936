//! Anom's operators: the stages a pipeline's units run ([`stage`]), alert delivery ([`sink`],
//! [`alerting`]), the [`backtest`] engine that runs the same stages in-process over history,
//! and the [`worker`] that runs units on the shared runtime (`anom-runtime`).
//!
//! Data flows one way: a pipeline definition (`anom-pipeline`) is checked and compiled into a
//! plan; the plan's stages run on one shared runtime that reads and writes JetStream; events
//! travel between stages in an envelope (`anom_pipeline::envelope`).

pub mod alerting;
pub mod backtest;
pub mod layouts;
pub mod model_registry;
pub mod sink;
pub mod stage;
pub mod worker;

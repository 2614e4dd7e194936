//! Anom's data plane.
//!
//! Data flows one way: a pipeline definition ([`pipeline`]) is checked and compiled into a
//! plan; the plan's stages ([`stage`]) run on one shared runtime ([`runtime`]) that reads and
//! writes JetStream; events travel between stages in an [`envelope`].

pub mod aggregate;
pub mod alert;
pub mod alerting;
pub mod backtest;
pub mod checkpoint;
pub mod detector;
pub mod duration;
pub mod envelope;
pub mod event;
pub mod expr;
pub mod fence;
pub mod forest;
pub mod metrics;
pub mod model;
pub mod natsd;
pub mod pipeline;
pub mod rejection;
pub mod runtime;
pub mod sink;
pub mod snapshot;
pub mod stage;
pub mod subjects;
pub mod suggest;
pub mod timebase;
pub mod topology;
pub mod udf;
pub mod unit;
pub mod value;
pub mod worker;

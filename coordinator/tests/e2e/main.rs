//! The coordinator's end-to-end tests, one binary: each module starts what it needs (a real
//! nats-server on a free loopback port, workers, coordinators, receivers) with temporary
//! storage.

mod alerting_e2e;
mod alerts_api;
mod anom_up;
mod backtests;
mod cli;
mod console;
mod control_plane;
mod crash_recovery;
mod detector_quality;
mod detectors_e2e;
mod http_api;
mod http_ingest;
mod keyed_e2e;
mod multi_node;
mod ordering;
mod pipeline_e2e;
mod prometheus;
mod rollout;
mod support;
mod udf_e2e;

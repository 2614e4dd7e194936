//! The control plane: the coordinator's gRPC [`server`] and its [`http`] API (pipeline versions, partition
//! assignment, alerts, backtests) and the [`agent`] a worker runs to take its assignments
//! from it. The `anom` binary (src/main.rs, src/cmd/) is the command line over both; tests
//! can start a coordinator in-process with [`server::Coordinator::start`].

pub mod agent;
pub mod http;
pub mod server;
pub mod time;

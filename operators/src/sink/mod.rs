//! Alert sinks: where alert records go besides the NATS alert stream. Each runs on the
//! shared sink runtime (`runtime::run_sink`): a durable consumer of the pipeline's alert
//! stream, acked per alert once delivered or dead-lettered.

pub mod webhook;

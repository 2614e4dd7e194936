//! The runtime's end-to-end tests, one binary: a replicated stream on a real 3-node cluster,
//! and the Grafana dashboard against the metrics the code exports.

mod dashboard;
mod nats_cluster;
mod natsd;

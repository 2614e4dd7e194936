//! One module per subcommand.

pub mod check;
pub mod cluster;
pub mod coordinator;
pub mod detectors;
pub mod pipeline;
pub mod publish;
pub mod tail;
pub mod train;
pub mod up;
pub mod worker;

use std::path::Path;

use anom_operators::pipeline::{load_dir, Pipeline};

/// Default NATS URL of every command that talks to a server.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Default coordinator address of every command that talks to one.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

/// Loads a pipelines directory or a single file, turning definition errors into one message.
pub fn load_pipelines(path: &Path) -> anyhow::Result<Vec<Pipeline>> {
    let loaded = if path.is_dir() {
        load_dir(path)
    } else {
        Pipeline::load(path).map(|p| vec![p])
    };
    loaded.map_err(|e| anyhow::anyhow!("invalid pipeline definition:\n{e}"))
}

/// The directory relative model paths point into by default: the pipelines directory (or the
/// directory of a single pipeline file).
pub fn pipelines_dir(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map_or_else(|| ".".into(), Path::to_path_buf)
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_requested() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

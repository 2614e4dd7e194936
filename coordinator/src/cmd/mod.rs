//! One module per subcommand.

pub mod alerts;
pub mod backtest;
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

use anom_operators::model_registry::check_models;
use anom_pipeline::{load_dir, Pipeline};

/// Default NATS URL of every command that talks to a server.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Default coordinator address of every command that talks to one.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

/// Loads a pipelines directory or a single file, and checks the model files their detectors
/// name (relative to `models_dir`), turning every problem into one message.
pub fn load_pipelines(path: &Path, models_dir: &Path) -> anyhow::Result<Vec<Pipeline>> {
    let loaded = if path.is_dir() {
        load_dir(path)
    } else {
        Pipeline::load(path).map(|p| vec![p])
    };
    let pipelines = loaded.map_err(|e| anyhow::anyhow!("invalid pipeline definition:\n{e}"))?;
    let mut problems = Vec::new();
    if pipelines.iter().any(Pipeline::has_detectors) {
        for file in pipeline::files(path)? {
            let text = std::fs::read_to_string(&file)?;
            let Ok(p) = Pipeline::from_yaml(&text) else {
                continue;
            };
            let mut errors = anom_pipeline::located(check_models(&p, models_dir), &text);
            for e in &mut errors.0 {
                e.file = Some(file.clone());
                problems.push(e.to_string());
            }
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "invalid pipeline definition:\n{}",
        problems.join("\n")
    );
    Ok(pipelines)
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

pub use anom::time::parse_time;

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

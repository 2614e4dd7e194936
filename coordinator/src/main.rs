//! `anom`: run Anom locally (`anom up`), run a worker, publish events, watch alerts.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anom",
    version,
    about = "Anom: anomaly detection on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local nats-server, the coordinator and a worker, and load pipelines/.
    Up(cmd::up::Args),
    /// Run the coordinator: gRPC API, pipeline versions, partition assignment.
    Coordinator(cmd::coordinator::Args),
    /// Run stages: those a coordinator assigns (--coordinator), or every stage of --pipelines.
    Worker(cmd::worker::Args),
    /// Manage pipelines through the coordinator: apply, list, get, history, diff, ...
    Pipeline(cmd::pipeline::Args),
    /// The workers of the cluster and their leases.
    Workers(cmd::cluster::WorkersArgs),
    /// Which worker runs which unit (stage and partition), at which epoch.
    Assignments(cmd::cluster::AssignmentsArgs),
    /// Publish events from a JSON-lines or CSV file to a pipeline.
    Publish(cmd::publish::Args),
    /// Watch alerts (or dead letters) as they happen.
    Tail(cmd::tail::Args),
    /// Alerts through the coordinator: list, get, ack, resolve, and silences.
    Alerts(cmd::alerts::Args),
    /// Check pipeline definitions and report every problem.
    Check(cmd::check::Args),
    /// Fit an Isolation Forest on a range of a pipeline's input stream, write it as ONNX
    /// with a model card, and optionally add it to the pipeline.
    Train(cmd::train::Args),
    /// Replay a stretch of a pipeline's events through a version (or a draft, or two side by
    /// side): what would have fired, how noisy, and how it scores against labels.
    Backtest(cmd::backtest::Args),
    /// The built-in detectors: `eval` reports their precision, recall and F1.
    Detectors(cmd::detectors::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print for a reader (`anom tail alerts | head`) stop when it goes, as Unix
    // tools do: Rust ignores SIGPIPE, so each print would fail and panic instead. The servers
    // (up, coordinator, worker) and `train`, which talks to Python over pipes, keep ignoring
    // it: a peer gone must be an error they report, not a silent stop.
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Coordinator(_) | Command::Worker(_) | Command::Train(_)
    ) {
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: at the start of main, before any thread; SIG_DFL installs no handler.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANOM_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,async_nats=error,anom=info,anom_operators=info,anom_runtime=info,anom_pipeline=info,anom_ml=info,anom_udf=info",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => cmd::up::run(args).await,
            Command::Worker(args) => cmd::worker::run(args).await,
            Command::Coordinator(args) => cmd::coordinator::run(args).await,
            Command::Pipeline(args) => cmd::pipeline::run(args).await,
            Command::Workers(args) => cmd::cluster::workers(args).await,
            Command::Assignments(args) => cmd::cluster::assignments(args).await,
            Command::Publish(args) => cmd::publish::run(args).await,
            Command::Tail(args) => cmd::tail::run(args).await,
            Command::Alerts(args) => cmd::alerts::run(args).await,
            Command::Check(args) => cmd::check::run(args),
            Command::Train(args) => cmd::train::run(args).await,
            Command::Backtest(args) => cmd::backtest::run(args).await,
            Command::Detectors(args) => cmd::detectors::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

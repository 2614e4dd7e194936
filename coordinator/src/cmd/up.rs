//! `anom up`: the embedded default. Starts a local nats-server (store under `.anom/`), the
//! coordinator and one worker with every role in this process, applies `pipelines/` through
//! the coordinator's API (as `anom pipeline apply` would), prints alerts as they are raised,
//! and with `--demo` replays each pipeline's sample file so alerts appear at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anom_operators::alerting::record::Alert;
use anom_operators::worker::WorkerConfig;
use anom_pipeline::subjects::input_subject;
use anom_pipeline::Pipeline;
use anom_runtime::natsd::{Natsd, NatsdOptions};
use anom_runtime::streams::StreamOptions;
use anyhow::Context as _;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use anom::agent::AgentConfig;
use anom::server::{Coordinator, CoordinatorConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline definitions: a directory of YAML files.
    #[arg(long, default_value = "pipelines")]
    pipelines: PathBuf,
    /// Where nats-server keeps its JetStream store and log, and workers their keyed state.
    #[arg(long, default_value = ".anom")]
    data_dir: PathBuf,
    /// Client port of the local nats-server (0 picks a free one).
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// Serve the worker's Prometheus metrics here.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Serve the coordinator's gRPC API here (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Where the coordinator serves its HTTP API (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Publish each pipeline's sample file (pipelines/samples/<name>.jsonl or .csv) at start.
    #[arg(long)]
    demo: bool,
    /// Events per second for --demo.
    #[arg(long, default_value_t = 50.0)]
    demo_rate: f64,
    /// Apply the pipeline files even over versions applied since through the API (by default
    /// those are kept, and said so).
    #[arg(long)]
    reapply_files: bool,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = anom_lang::duration::parse)]
    exit_after: Option<Duration>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pipelines = super::load_pipelines(&args.pipelines, &super::pipelines_dir(&args.pipelines))?;
    let natsd = Natsd::start(NatsdOptions {
        port: args.nats_port,
        dir: args.data_dir.join("nats"),
    })
    .await
    .context("cannot start nats-server")?;
    let url = natsd.url().to_string();

    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            listen: args.grpc_addr,
            nats_url: url.clone(),
            state_dir: args.data_dir.join("coordinator"),
            metrics_addr: None,
            lease_ttl: Duration::from_secs(6),
            models_dir: Some(super::pipelines_dir(&args.pipelines)),
            max_backtests: 2,
            http: Some(anom::http::HttpConfig {
                listen: args.http_addr,
                max_body_bytes: anom::http::HttpConfig::DEFAULT_MAX_BODY_BYTES,
            }),
            streams: StreamOptions::default(),
        },
        shutdown.clone(),
    )
    .await?;
    let grpc = format!("http://{}", coordinator.addr);
    super::pipeline::apply_files_keeping_newer(&grpc, &args.pipelines, args.reapply_files).await?;
    let mut config = WorkerConfig::new(url.clone(), Vec::new());
    config.metrics_addr = Some(args.metrics_addr);
    config.state_dir = args.data_dir.join("state");
    config.models_dir = super::pipelines_dir(&args.pipelines);
    config.worker_id = "local".into();
    let worker = tokio::spawn(anom::agent::run(
        AgentConfig {
            coordinator: grpc.clone(),
            worker: config,
            roles: Vec::new(),
            capacity: 1,
        },
        shutdown.clone(),
    ));

    println!("Anom is up.");
    println!("  NATS          {url}   (store: {})", natsd.dir().display());
    println!("  coordinator   {grpc}   (anom pipeline list, anom workers, anom assignments)");
    if let Some(addr) = coordinator.http_addr {
        println!("  console       http://{addr}/   (pipelines, alerts, events, backtests)");
        println!(
            "  HTTP API      http://{addr}/v1   (POST /v1/pipelines/<name>/events; /v1/openapi.json)"
        );
    }
    if args.metrics_addr.port() != 0 {
        println!("  metrics       http://{}/metrics", args.metrics_addr);
    }
    for p in &pipelines {
        println!(
            "  pipeline      {:<10} publish to {:<22} alerts on {}  (dead letters: {})",
            p.name, p.subjects.input, p.subjects.alerts, p.subjects.dlq
        );
    }
    println!("Alerts are printed below; in another terminal: `anom tail alerts`, `anom publish --pipeline <name> --file events.jsonl`.");
    println!("Ctrl-C stops everything.\n");

    let client = async_nats::connect(&url).await?;
    let mut alerts = client.subscribe("anom.*.alerts").await?;
    let printer = tokio::spawn(async move {
        while let Some(msg) = alerts.next().await {
            match serde_json::from_slice::<Alert>(&msg.payload) {
                Ok(a) => println!("ALERT {}", super::tail::alert_line(&a)),
                Err(_) => println!(
                    "ALERT {}",
                    super::tail::printable(&String::from_utf8_lossy(&msg.payload))
                ),
            }
        }
    });

    if args.demo {
        let js = async_nats::jetstream::new(client.clone());
        let samples = args.pipelines.join("samples");
        for p in &pipelines {
            let js = js.clone();
            let file = sample_file(&samples, p);
            let rate = args.demo_rate;
            let name = p.name.clone();
            tokio::spawn(async move {
                let Some(file) = file else { return };
                let events = if file.extension().is_some_and(|e| e == "csv") {
                    super::publish::read_csv(&file)
                } else {
                    super::publish::read_jsonl(&file)
                };
                match events {
                    Ok(events) => {
                        let n = events.len();
                        match super::publish::publish(
                            &js,
                            &input_subject(&name),
                            events,
                            Some(rate),
                            None,
                        )
                        .await
                        {
                            Ok(_) => {
                                eprintln!("demo: published {n} events from {}", file.display())
                            }
                            Err(e) => eprintln!("demo: {e:#}"),
                        }
                    }
                    Err(e) => eprintln!("demo: {e:#}"),
                }
            });
        }
    }

    tokio::spawn({
        let shutdown = shutdown.clone();
        let exit_after = args.exit_after;
        async move {
            match exit_after {
                Some(d) => {
                    tokio::select! {
                        _ = super::stop_requested() => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                None => super::stop_requested().await,
            }
            shutdown.cancel();
        }
    });
    match worker.await {
        Ok(Err(e)) => eprintln!("worker: {e:#}"),
        Err(e) => eprintln!("worker: {e}"),
        Ok(Ok(())) => {}
    }
    let _ = coordinator.wait().await;
    printer.abort();
    let _ = client.flush().await;
    natsd.stop().await.context("stopping nats-server")?;
    println!("Anom stopped.");
    Ok(())
}

fn sample_file(dir: &Path, p: &Pipeline) -> Option<PathBuf> {
    ["jsonl", "csv"]
        .iter()
        .map(|ext| dir.join(format!("{}.{ext}", p.name)))
        .find(|f| f.is_file())
}

//! The coordinator tests' own harness: an [`Env`] (a real nats-server on a free loopback
//! port with a temporary store), workers in-process or as `anom` processes, coordinators, and
//! gRPC helpers. What every crate's tests share comes from `anom_testkit`, re-exported here.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anom_operators::worker::{Worker, WorkerConfig};
use anom_pipeline::load_dir;
use anom_runtime::metrics::Metrics;
use anom_runtime::natsd::Natsd;
pub use anom_testkit::{
    alerts, free_addr, notifications, publish_events, read_stream, repo_root, smtp, stream_len,
    venv_python, wait_for, Receiver,
};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub natsd: Natsd,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let natsd = Natsd::start_in(&dir.path().join("nats"))
            .await
            .expect("nats-server starts (run scripts/install-nats-server.sh)");
        Env { natsd, dir }
    }

    pub fn url(&self) -> String {
        self.natsd.url().to_string()
    }

    pub async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(self.natsd.url())
            .await
            .expect("connect");
        jetstream::new(client)
    }

    /// Writes a pipeline file into the temp dir and returns the directory holding it.
    pub fn pipeline_dir(&self, name: &str, yaml: &str) -> PathBuf {
        let dir = self.dir.path().join("pipelines");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
        dir
    }
}

/// A worker running in the test process.
pub struct Running {
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops it the way Ctrl-C does: every stage finishes its batch and checkpoints.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// Starts a worker on the pipelines in `dir`, with its state in the env's temp dir.
pub async fn start_worker(env: &Env, dir: &Path) -> Running {
    let mut config = WorkerConfig::new(env.url(), load_dir(dir).expect("test pipelines are valid"));
    config.unrouted_poll = Duration::from_millis(200);
    config.state_dir = env.dir.path().join("state");
    config.models_dir = dir.to_path_buf();
    let shutdown = CancellationToken::new();
    let worker = Worker::start(config, shutdown.clone())
        .await
        .expect("worker starts");
    let metrics = worker.metrics.clone();
    Running {
        metrics,
        shutdown,
        task: tokio::spawn(worker.run_until_shutdown()),
    }
}

/// An `anom worker` process on the pipelines in `dir` (state in `dir/state`), for tests that
/// kill it; killed when dropped.
#[allow(dead_code)]
pub fn spawn_worker(url: &str, dir: &Path) -> tokio::process::Child {
    spawn_worker_with(url, dir, &[])
}

/// As [`spawn_worker`], with more arguments.
pub fn spawn_worker_with(url: &str, dir: &Path, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["worker", "--nats", url, "--pipelines"])
        .arg(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .env("ANOM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom worker starts")
}

/// An `anom coordinator` process on `addr`, its state in `state_dir`.
pub fn spawn_coordinator(
    nats: &str,
    addr: SocketAddr,
    state_dir: &Path,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["coordinator", "--nats", nats, "--listen", &addr.to_string()])
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env("ANOM_LOG", "warn,anom=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom coordinator starts")
}

/// An `anom worker --coordinator` process named `id`, its state in `state_dir`.
pub fn spawn_cluster_worker(
    nats: &str,
    coordinator: SocketAddr,
    id: &str,
    state_dir: &Path,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["worker", "--nats", nats, "--worker-id", id])
        .args(["--coordinator", &format!("http://{coordinator}")])
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env("ANOM_LOG", "warn,anom_operators::worker=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom worker starts")
}

/// A gRPC channel to a coordinator, once it answers its health check.
pub async fn coordinator_channel(addr: SocketAddr) -> tonic::transport::Channel {
    let url = format!("http://{addr}");
    let healthy = wait_for(Duration::from_secs(60), || async {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        h.check(tonic_health::pb::HealthCheckRequest {
            service: "anom.v1.Pipelines".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
    })
    .await;
    assert!(healthy, "coordinator at {addr} serves");
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect_lazy()
}

/// The services a coordinator lists through gRPC reflection, as grpcurl would see them.
pub async fn grpc_services(ch: &tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut r = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("a service list")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// Units assigned, and units every live worker reports running, as the coordinator sees
/// them.
pub async fn cluster_view(
    ch: &tonic::transport::Channel,
) -> Option<(usize, usize, usize, Vec<String>)> {
    use anom_proto::v1;
    let mut c = v1::cluster_client::ClusterClient::new(ch.clone());
    let a = c
        .list_assignments(v1::ListAssignmentsRequest::default())
        .await
        .ok()?
        .into_inner();
    let w = c
        .list_workers(v1::ListWorkersRequest {})
        .await
        .ok()?
        .into_inner();
    let live: Vec<String> = w
        .workers
        .iter()
        .filter(|w| w.alive)
        .map(|w| w.worker_id.clone())
        .collect();
    let running = w
        .workers
        .iter()
        .filter(|w| w.alive)
        .map(|w| w.running_units as usize)
        .sum();
    Some((a.units.len(), a.unassigned.len(), running, live))
}

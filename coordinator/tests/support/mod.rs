//! Test harness: a real nats-server on a free loopback port with a temporary store, a real
//! HTTP webhook receiver, and helpers to read streams back.
#![allow(dead_code)]

#[allow(dead_code)]
#[path = "../../../operators/tests/support/smtp.rs"]
pub mod smtp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anom_operators::metrics::Metrics;
use anom_operators::natsd::Natsd;
use anom_operators::pipeline::load_dir;
use anom_operators::worker::{Worker, WorkerConfig};
use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
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
    tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["worker", "--nats", url, "--pipelines"])
        .arg(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("ANOM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom worker starts")
}

/// Publishes JSON events to `subject` and waits until JetStream has stored every one.
pub async fn publish_events(js: &jetstream::Context, subject: &str, events: &[serde_json::Value]) {
    let mut acks = Vec::new();
    for e in events {
        acks.push(
            js.publish(subject.to_string(), bytes::Bytes::from(e.to_string()))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// The repository's root (for pipelines/ and its samples).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A stored message as read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub headers: HashMap<String, String>,
}

/// Every message currently in `stream` (optionally only `subject`), in order.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: Option<&str>,
) -> Vec<Stored> {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.unwrap_or_default().to_string(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    let mut pending = consumer
        .clone()
        .info()
        .await
        .map(|i| i.num_pending)
        .unwrap_or(0);
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            let headers = m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                v.first()
                                    .map(|v| v.as_str().to_string())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Stored {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers,
            });
        }
        if got == 0 {
            break;
        }
        pending = pending.saturating_sub(got);
    }
    out
}

/// Every alert record (JSON) in `stream`; none if the stream does not exist yet.
pub async fn alerts(js: &jetstream::Context, stream: &str) -> Vec<serde_json::Value> {
    match js.get_stream(stream).await {
        Ok(_) => read_stream(js, stream, None)
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// How many messages `stream` holds (0 if it cannot be read now).
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Polls `check` until it returns true or `limit` passes; returns whether it did.
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests a receiver got: headers (lowercase names) and JSON body.
pub type Recorded = Arc<Mutex<Vec<(HashMap<String, String>, serde_json::Value)>>>;

/// A real HTTP server that records the JSON bodies POSTed to it.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Recorded,
    /// The HTTP status it answers with (200 unless changed).
    pub status: Arc<std::sync::atomic::AtomicU16>,
    /// How long it takes to answer, in ms (0 unless changed); a request is recorded when it
    /// arrives.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listens on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr) -> Receiver {
        Self::start_recording(
            addr,
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(200.into()),
            Arc::new(0.into()),
        )
        .await
    }

    async fn start_recording(
        addr: SocketAddr,
        bodies: Recorded,
        status: Arc<std::sync::atomic::AtomicU16>,
        delay_ms: Arc<std::sync::atomic::AtomicU64>,
    ) -> Receiver {
        use axum::{routing::post, Router};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let recorded = bodies.clone();
        let answer = status.clone();
        let delay = delay_ms.clone();
        let app = Router::new().route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let recorded = recorded.clone();
                    let answer = answer.clone();
                    let delay = delay.clone();
                    async move {
                        let h = headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect();
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        recorded.lock().unwrap().push((h, json));
                        let wait = delay.load(std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK)
                    }
                },
            ),
        );
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Receiver {
            addr,
            bodies,
            status,
            delay_ms,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stops listening; the port is closed, so deliveries fail with connection refused.
    pub async fn stop(&self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Listens again on the same port, keeping what was recorded.
    pub async fn restart(&self) -> Receiver {
        Self::start_recording(
            self.addr,
            self.bodies.clone(),
            self.status.clone(),
            self.delay_ms.clone(),
        )
        .await
    }

    /// Waits until at least `n` requests arrived (or `limit` passes); returns whether they did.
    pub async fn wait_for_ids(&self, n: usize, limit: Duration) -> bool {
        wait_for(limit, || {
            let receiver = self.clone();
            async move { receiver.ids().len() >= n }
        })
        .await
    }

    /// The JSON bodies received, by their `id`: every copy of each, in arrival order.
    pub fn bodies_by_id(&self) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
        let mut by_id: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            Default::default();
        for (_, b) in self.bodies.lock().unwrap().iter() {
            let id = b["id"].as_str().unwrap_or_default().to_string();
            by_id.entry(id).or_default().push(b.clone());
        }
        by_id
    }

    pub fn ids(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, b)| b.get("id").and_then(|v| v.as_str()).map(str::to_string))
            .collect()
    }
}

/// The notifications a receiver got, in arrival order: each one's group `rule` label and the
/// (key, status) of its alerts.
pub fn notifications(
    receiver: &Receiver,
) -> Vec<(String, std::collections::BTreeSet<(String, String)>)> {
    receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| {
            let alerts = n["alerts"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    (
                        a["key"].as_str().unwrap_or_default().to_string(),
                        a["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let rule = n["group_labels"]["rule"].as_str().unwrap_or_default();
            (rule.to_string(), alerts)
        })
        .collect()
}

/// A free loopback port (for a receiver that must start later on a known port).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
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

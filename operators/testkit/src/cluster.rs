//! A JetStream cluster of local nats-servers, for tests of replicated streams and fail-over.
//!
//! [`Cluster`] starts several servers (`n0`, `n1`, ...) as one JetStream cluster named
//! `anom`. Each node has its own store under
//! `dir/n{i}/`, and its own client, route and monitoring ports on 127.0.0.1. Route ports must
//! be known before the nodes start (each node is told the others' with `--routes`), so all
//! ports are picked by binding `127.0.0.1:0` and releasing the listeners; if a port was taken
//! meanwhile, the whole start is tried again with new ports. [`Cluster::kill`] SIGKILLs a
//! node, [`Cluster::restart`] starts it again with the same ports and store, and
//! [`Cluster::wait_ready`] waits until every live node is healthy and they agree on a meta
//! leader. Dropping the cluster kills every node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anom_runtime::natsd::{find_binary, read_ports_file, NatsdError};
use tokio::process::{Child, Command};

/// The cluster name every [`Cluster`] node is started with.
pub const CLUSTER_NAME: &str = "anom";

/// How often [`Cluster::start`] picks new ports when one was taken before a node bound it.
const START_ATTEMPTS: usize = 5;

/// One node of a [`Cluster`]: its ports and store stay the same across restarts.
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    dir: PathBuf,
    /// None while the node is killed.
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }
}

/// A JetStream cluster of nats-server child processes on 127.0.0.1 (see the module doc).
pub struct Cluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `n` nodes with their stores under `dir` and returns once every node listens.
    /// JetStream needs a moment more to elect a meta leader: call [`Cluster::wait_ready`].
    pub async fn start(n: usize, dir: &Path) -> Result<Cluster, NatsdError> {
        let binary = find_binary()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| NatsdError::Io(std::io::Error::other(e)))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(3 * n)?;
            let nodes = (0..n)
                .map(|i| Node {
                    name: format!("n{i}"),
                    client_port: ports[3 * i],
                    cluster_port: ports[3 * i + 1],
                    http_port: ports[3 * i + 2],
                    dir: dir.join(format!("n{i}")),
                    child: None,
                })
                .collect();
            let mut cluster = Cluster {
                binary: binary.clone(),
                nodes,
                http: http.clone(),
            };
            let mut failed = None;
            for i in 0..n {
                if let Err(e) = cluster.spawn(i) {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_none() {
                for i in 0..n {
                    if let Err(e) = cluster.wait_listening(i).await {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(cluster),
                // Someone took one of our ports between its release and the bind: new ports.
                Some(NatsdError::Exited { ref log, .. })
                    if attempt < START_ATTEMPTS && log_says_port_taken(log) =>
                {
                    drop(cluster);
                    continue;
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Number of nodes, live or killed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL (`nats://127.0.0.1:port`), killed ones included; pass it to
    /// `async_nats::connect` to reach whichever nodes are up.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The client URLs joined by commas, as the `nats` CLI and most NATS clients take them.
    /// async-nats parses a `&str` as a single address: give it [`Cluster::urls`] instead.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Node `i`'s server name (`n{i}`), as JetStream reports leaders and peers.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with this server name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s monitoring endpoint (`http://127.0.0.1:port`: `/healthz`, `/jsz`, ...).
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    /// Whether node `i` was started and not killed since.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.child.is_some())
    }

    /// Kills node `i` with SIGKILL (no lame-duck mode, no flush) and waits until it is gone.
    pub async fn kill(&mut self, i: usize) -> Result<(), NatsdError> {
        let node = self.nodes.get_mut(i).ok_or(NatsdError::NoSuchNode(i))?;
        if let Some(mut child) = node.child.take() {
            // tokio's kill is SIGKILL, then waits for the process.
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts node `i` again with the same ports and store (SIGKILLing it first if it still
    /// runs) and returns once it listens.
    pub async fn restart(&mut self, i: usize) -> Result<(), NatsdError> {
        self.kill(i).await?;
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    /// Waits until the cluster is ready for JetStream work: every live node's `/healthz`
    /// says ok (JetStream on and current, and so are the stream and consumer replicas the
    /// node holds) and every live node's `/jsz` names the same meta leader, a live node.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), NatsdError> {
        let started = Instant::now();
        loop {
            let last = match self.ready_once().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if started.elapsed() > timeout {
                return Err(NatsdError::NotReady { timeout, last });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Why the cluster is not ready yet, if it is not.
    async fn ready_once(&self) -> Result<(), String> {
        let mut leaders = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let base = self.monitor_url(i);
            let health = self
                .http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .map_err(|e| format!("{}: /healthz: {e}", node.name))?;
            if !health.status().is_success() {
                let status = health.status();
                let body = health.text().await.unwrap_or_default();
                return Err(format!("{}: /healthz {status}: {}", node.name, body.trim()));
            }
            let jsz: serde_json::Value = self
                .http
                .get(format!("{base}/jsz"))
                .send()
                .await
                .map_err(|e| format!("{}: /jsz: {e}", node.name))?
                .json()
                .await
                .map_err(|e| format!("{}: /jsz: {e}", node.name))?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if leader.is_empty() {
                return Err(format!("{} knows no JetStream meta leader", node.name));
            }
            leaders.push((node.name.as_str(), leader.to_string()));
        }
        let Some((_, leader)) = leaders.first() else {
            return Err("no node is running".into());
        };
        if let Some((name, other)) = leaders.iter().find(|(_, l)| l != leader) {
            return Err(format!(
                "nodes disagree on the meta leader: {name} names {other}, another {leader}"
            ));
        }
        if !leaders.iter().any(|(name, _)| name == leader) {
            return Err(format!("the meta leader {leader} is not a live node"));
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<(), NatsdError> {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = self.nodes.get_mut(i).ok_or(NatsdError::NoSuchNode(i))?;
        std::fs::create_dir_all(node.dir.join("jetstream"))?;
        let ports_dir = node.dir.join("ports");
        // The ports file of the previous run names the same ports but not a live process.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(node.client_port.to_string())
            .arg("-m")
            .arg(node.http_port.to_string())
            .arg("--server_name")
            .arg(&node.name)
            .arg("-js")
            .arg("-sd")
            .arg(node.dir.join("jetstream"))
            .arg("--cluster_name")
            .arg(CLUSTER_NAME)
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port));
        if !routes.is_empty() {
            command.arg("--routes").arg(&routes);
        }
        let child = command
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(node.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsdError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `i` has written its ports file, i.e. all its listeners are up.
    async fn wait_listening(&mut self, i: usize) -> Result<(), NatsdError> {
        let limit = Duration::from_secs(20);
        let started = Instant::now();
        let node = self.nodes.get_mut(i).ok_or(NatsdError::NoSuchNode(i))?;
        let ports_dir = node.dir.join("ports");
        let log = node.log();
        loop {
            let Some(child) = node.child.as_mut() else {
                return Err(NatsdError::NoSuchNode(i));
            };
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Err(NatsdError::Exited {
                    status: status.to_string(),
                    log,
                });
            }
            if read_ports_file(&ports_dir) == Some(node.client_port) {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(NatsdError::Timeout(limit));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
/// `count` distinct free ports on 127.0.0.1: all are bound at once, then released.
fn free_ports(count: usize) -> Result<Vec<u16>, NatsdError> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ports)
}

fn log_says_port_taken(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| text.contains("address already in use"))
}

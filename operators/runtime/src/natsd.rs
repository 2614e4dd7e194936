//! A local `nats-server` process with JetStream on, for `anom up`, `anom-loadtest` and tests
//! (the tests' JetStream cluster is `anom_testkit::cluster`).
//!
//! The binary is found, in order: `$ANOM_NATS_SERVER`, the project-local
//! `.tools/bin/nats-server` that `scripts/install-nats-server.sh` installs (searched upwards
//! from the current directory and from the running executable), then `PATH`.
//! The server listens on loopback only. With port 0 it picks a free port itself and reports
//! it through a ports file, so parallel tests never race for a port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error("nats-server not found: looked at $ANOM_NATS_SERVER, .tools/bin/nats-server and PATH; run scripts/install-nats-server.sh")]
    NotFound,
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited before it was ready ({status}); its log is {log}")]
    Exited { status: String, log: PathBuf },
    #[error("nats-server did not report its port within {0:?}")]
    Timeout(Duration),
    #[error("the nats cluster was not ready within {timeout:?}: {last}")]
    NotReady { timeout: Duration, last: String },
    #[error("the cluster has no node {0}")]
    NoSuchNode(usize),
    #[error(
        "port {port} on 127.0.0.1 is taken by another process: stop it, or start with another port"
    )]
    PortTaken { port: u16 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Locates the nats-server binary (see the module doc for the search order).
pub fn find_binary() -> Result<PathBuf, NatsdError> {
    if let Some(p) = std::env::var_os("ANOM_NATS_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".tools/bin/nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(NatsdError::NotFound)
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct NatsdOptions {
    /// Client port on 127.0.0.1; 0 lets the server pick a free one.
    pub port: u16,
    /// JetStream store directory; the server's log and ports file go beside it.
    pub dir: PathBuf,
}

/// A running nats-server child process; killed when dropped.
pub struct Natsd {
    child: Child,
    url: String,
    port: u16,
    dir: PathBuf,
}

impl Natsd {
    pub async fn start(options: NatsdOptions) -> Result<Natsd, NatsdError> {
        let binary = find_binary()?;
        let dir = options.dir;
        std::fs::create_dir_all(dir.join("jetstream"))?;
        // One server per store: a server an earlier run left behind (its owner killed with
        // SIGKILL) still writes there; stop it before another opens the same files.
        stop_orphan(&dir).await;
        if options.port != 0 && std::net::TcpListener::bind(("127.0.0.1", options.port)).is_err() {
            return Err(NatsdError::PortTaken { port: options.port });
        }
        let ports_dir = dir.join("ports");
        // A stale ports file from an earlier run would report the wrong port.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log = dir.join("nats-server.log");
        let port_arg = if options.port == 0 {
            "-1".to_string()
        } else {
            options.port.to_string()
        };
        let mut command = Command::new(&binary);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child.
        unsafe {
            // The server dies with its owner, even when the owner is killed with SIGKILL.
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(&port_arg)
            .arg("-js")
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsdError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join(PID_FILE), pid.to_string())?;
        }
        let mut server = Natsd {
            child,
            url: String::new(),
            port: 0,
            dir,
        };
        let port = server.wait_for_port(&ports_dir, &log).await?;
        server.port = port;
        server.url = format!("nats://127.0.0.1:{port}");
        Ok(server)
    }

    /// Starts a server on a free port with its store in `dir` (usually a temp dir).
    pub async fn start_in(dir: &Path) -> Result<Natsd, NatsdError> {
        Self::start(NatsdOptions {
            port: 0,
            dir: dir.to_path_buf(),
        })
        .await
    }

    async fn wait_for_port(&mut self, ports_dir: &Path, log: &Path) -> Result<u16, NatsdError> {
        let limit = Duration::from_secs(20);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(NatsdError::Exited {
                    status: status.to_string(),
                    log: log.to_path_buf(),
                });
            }
            if let Some(port) = read_ports_file(ports_dir) {
                // The ports file is written once the listener is up; JetStream may need a
                // moment more, which clients absorb by retrying their first request.
                return Ok(port);
            }
            if started.elapsed() > limit {
                return Err(NatsdError::Timeout(limit));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's process id (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server gracefully (SIGTERM lets JetStream flush), killing it after 10 s.
    pub async fn stop(mut self) -> Result<(), NatsdError> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        self.child.kill().await?;
        Ok(())
    }
}

/// Beside the store: the pid of the server that owns it.
const PID_FILE: &str = "nats-server.pid";

/// Stops the nats-server named by `dir`'s pid file if it still runs (checked by its command
/// line naming this store, so a reused pid is left alone).
async fn stop_orphan(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let store = dir.join("jetstream");
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let line = String::from_utf8_lossy(&c).replace('\0', " ");
        line.contains("nats-server") && line.contains(&*store.to_string_lossy())
    });
    if !ours {
        return;
    }
    eprintln!(
        "nats-server: stopping pid {pid}, left running on {} by an earlier run",
        store.display()
    );
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid);
    let started = Instant::now();
    while alive() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive() {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    }
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

pub fn read_ports_file(dir: &Path) -> Option<u16> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(&path).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            let url = value.get("nats")?.get(0)?.as_str()?;
            return url.rsplit(':').next()?.parse().ok();
        }
    }
    None
}

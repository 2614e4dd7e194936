//! What Anom's tests share: a JetStream [`cluster`] of real nats-servers, a real HTTP
//! [`receiver`], a real [`smtp`] server, the example UDF [`plugins`] built on demand, reading
//! [`stream`]s back, [`wait`]ing without timed assertions, and shared [`fixtures`]. A
//! dev-dependency only: nothing here ships in a library or binary.

pub mod cluster;
pub mod fixtures;
pub mod plugins;
pub mod receiver;
pub mod smtp;
pub mod stream;
pub mod wait;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use receiver::{notifications, Receiver, Recorded};
pub use stream::{alerts, publish_events, read_stream, stream_len, Stored};
pub use wait::wait_for;

/// The repository's root (for scripts/, pipelines/ and its samples).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("operators/testkit sits two levels below the root")
        .to_path_buf()
}

/// The interpreter of a project-local Python environment, `scripts/<name>/venv` (made on
/// first use). A broken environment fails the test: what it serves would otherwise go
/// untested without anyone noticing.
pub fn venv_python(name: &str) -> PathBuf {
    let script = repo_root().join("scripts").join(name).join("venv");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A free loopback port (for a receiver that must start later on a known port).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

//! A real SMTP server for tests: scripts/smtp/server.py (aiosmtpd) in the project's own
//! virtualenv, on a free loopback port.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// scripts/smtp/server.py, listening on a free loopback port; killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl SmtpServer {
    pub async fn start(args: &[&str]) -> SmtpServer {
        let root = crate::repo_root();
        let python = crate::venv_python("smtp");
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("scripts/smtp/server.py"))
            .args(["--port", "0", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP server is ready within 30 s")
            .unwrap()
            .expect("the SMTP server prints `ready <port>`");
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected `ready <port>`, found `{line}`"));
        SmtpServer {
            port,
            dir,
            _child: child,
        }
    }

    /// The messages received so far, oldest first: (envelope, raw message).
    pub fn received(&self) -> Vec<(Value, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 1.. {
            let base = self.dir.path().join(i.to_string());
            let (Ok(meta), Ok(eml)) = (
                std::fs::read(base.with_extension("json")),
                std::fs::read(base.with_extension("eml")),
            ) else {
                break;
            };
            out.push((serde_json::from_slice(&meta).unwrap(), eml));
        }
        out
    }
}

//! `anom up --demo` as a new user runs it: a local nats-server, the example pipelines, sample
//! events flowing, alerts printed; Ctrl-C stops it cleanly.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anom_up_demo_shows_alerts_for_every_example_pipeline_and_stops_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_anom"))
        .current_dir(crate::support::repo_root())
        .args([
            "up",
            "--demo",
            "--demo-rate",
            "500",
            "--nats-port",
            "0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--exit-after",
            "120s",
            "--data-dir",
        ])
        .arg(data.path())
        .env("ANOM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom up starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pipelines: BTreeSet<String> = ["routes", "expenses", "iot", "payments", "hosts"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut alerted = BTreeSet::new();
    let mut banner = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.strip_prefix("ALERT ") {
                // "<time> [<severity>] <pipeline>/<rule> <key>: <message>"
                if let Some(p) = rest
                    .split_whitespace()
                    .nth(2)
                    .and_then(|s| s.split('/').next())
                {
                    alerted.insert(p.to_string());
                }
            }
            if alerted == pipelines {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        seen,
        "alerts from every example pipeline; saw {alerted:?}\n{banner}"
    );
    assert!(banner.contains("publish to anom.routes.in"), "{banner}");
    assert!(banner.contains("alerts on anom.routes.alerts"), "{banner}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "anom up stops within 30 s of Ctrl-C; it printed:\n{rest}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on Ctrl-C: {status:?}");
    assert!(rest.contains("Anom stopped."), "{rest}");
}

/// `kill -9` of `anom up` leaves no nats-server behind, and the next start on the same data
/// directory comes up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_anom_up_leaves_no_nats_server_and_starts_again() {
    let data = tempfile::tempdir().unwrap();
    let up = |exit_after: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_anom"));
        c.current_dir(crate::support::repo_root())
            .args(["up", "--nats-port", "0", "--metrics-addr", "127.0.0.1:0"])
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
                "--exit-after",
                exit_after,
                "--data-dir",
            ])
            .arg(data.path())
            .env("ANOM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let mut child = up("120s").spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("publish to anom.") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true));
    let pid: u32 = std::fs::read_to_string(data.path().join("nats/nats-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(15), async {
        // Gone, or a zombie waiting to be reaped.
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(stopped.is_ok(), "nats-server {pid} outlived anom up");
    let again = up("3s").output().await.unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A version applied through the API survives a restart of `anom up` (which says it kept it),
/// until `--reapply-files` asks for the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_a_version_applied_through_the_api() {
    let data = tempfile::tempdir().unwrap();
    let grpc = crate::support::free_addr();
    let up = |extra: &[&str], exit_after: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_anom"));
        c.current_dir(crate::support::repo_root())
            .args(["up", "--nats-port", "0", "--metrics-addr", "127.0.0.1:0"])
            .args([
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                &grpc.to_string(),
                "--exit-after",
                exit_after,
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .env("ANOM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let first = up(&[], "2s").output().await.unwrap();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(out.contains("routes: version 1 applied from"), "{out}");
    // While it is down, nothing serves gRPC: bring it up once more and apply through the API.
    let mut running = up(&[], "120s").spawn().unwrap();
    let ch = crate::support::coordinator_channel(grpc).await;
    let yaml = std::fs::read_to_string(crate::support::repo_root().join("pipelines/routes.yaml"))
        .unwrap()
        + "# changed through the API\n";
    let mut api = anom_proto::v1::pipelines_client::PipelinesClient::new(ch);
    let v = api
        .apply(anom_proto::v1::ApplyRequest {
            definition: Some(anom_proto::v1::Definition {
                source: Some(anom_proto::v1::definition::Source::Yaml(yaml)),
                source_name: "routes.yaml".into(),
            }),
            comment: "raise the limit".into(),
            author: "ana".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version.unwrap().version, 2);
    running.start_kill().unwrap();
    running.wait().await.unwrap();

    let again = up(&[], "2s").output().await.unwrap();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        out.contains("routes: keeping version 2") && out.contains("by ana: \"raise the limit\""),
        "{out}"
    );
    assert!(out.contains("iot: unchanged (version 1)"), "{out}");
    let forced = up(&["--reapply-files"], "2s").output().await.unwrap();
    let out = String::from_utf8_lossy(&forced.stdout);
    assert!(out.contains("routes: version 3 applied from"), "{out}");
}

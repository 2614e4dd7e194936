//! A worker process killed with SIGKILL in the middle of 10,000 events and started again:
//! every alert is raised, none twice.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use support::{read_stream, repo_root, wait_for, Env, Receiver};
use tokio::process::{Child, Command};

const EVENTS: usize = 10_000;

fn event(i: usize) -> serde_json::Value {
    let status = if i % 10 == 3 { "FAILED" } else { "OK" };
    let duration = if i.is_multiple_of(37) {
        9000
    } else {
        100 + (i % 300) as i64
    };
    serde_json::json!({
        "route": format!("R-{}", i % 50),
        "status": status,
        "durationMs": duration,
        "fileName": format!("f-{i}.csv"),
        "finishedAt": "2026-11-20T10:00:00Z",
    })
}

/// (rule, fileName) of every alert the routes rules must raise, by plain code.
fn expected() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for i in 0..EVENTS {
        let e = event(i);
        let file = e["fileName"].as_str().unwrap().to_string();
        if e["durationMs"].as_i64().unwrap() > 5000 && e["status"] == "OK" {
            out.insert(("slow_route".to_string(), file.clone()));
        }
        if e["status"] == "FAILED" {
            out.insert(("failed_route".to_string(), file));
        }
    }
    out
}

fn spawn_worker(url: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["worker", "--nats", url, "--pipelines"])
        .arg(dir)
        .env("ANOM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom worker starts")
}

async fn alert_count(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("ANOM_ROUTES_ALERTS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The worker has created its streams and its first consumer.
async fn worker_ready(js: &async_nats::jetstream::Context) -> bool {
    let Ok(stream) = js.get_stream("ANOM_INGEST").await else {
        return false;
    };
    stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("routes-validate")
        .await
        .is_ok()
        && js.get_stream("ANOM_ROUTES_ALERTS").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_alert_and_duplicates_none() {
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let yaml = std::fs::read_to_string(repo_root().join("pipelines/routes.yaml"))
        .unwrap()
        .replace(
            "alerts:\n  sinks: []\n",
            &format!("alerts:\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n      backoff: 50ms\n", receiver.url()),
        );
    let dir = env.pipeline_dir("routes", &yaml);
    let expected = expected();
    let js = env.js().await;

    let mut worker = spawn_worker(&env.url(), &dir);
    assert!(
        wait_for(Duration::from_secs(30), || worker_ready(&js)).await,
        "worker creates its streams"
    );
    // Publish at a steady pace so the kill lands while events are still arriving.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..EVENTS {
                acks.push(
                    js.publish("anom.routes.in", Bytes::from(event(i).to_string()))
                        .await
                        .unwrap(),
                );
                if i % 100 == 99 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        })
    };
    let quarter = expected.len() as u64 / 4;
    assert!(
        wait_for(Duration::from_secs(60), || {
            let js = js.clone();
            async move { alert_count(&js).await >= quarter }
        })
        .await,
        "the worker raises alerts"
    );
    worker.start_kill().expect("SIGKILL");
    worker.wait().await.unwrap();
    let at_kill = alert_count(&js).await;
    assert!(
        !publisher.is_finished(),
        "killed while events were still arriving"
    );
    assert!(
        at_kill < expected.len() as u64,
        "killed before all alerts were raised ({at_kill})"
    );

    let mut worker = spawn_worker(&env.url(), &dir);
    publisher.await.unwrap();
    let total = expected.len() as u64;
    assert!(
        wait_for(Duration::from_secs(90), || {
            let js = js.clone();
            async move { alert_count(&js).await >= total }
        })
        .await,
        "all alerts raised after the restart ({} of {total})",
        alert_count(&js).await
    );
    assert!(
        wait_for(Duration::from_secs(60), || {
            let receiver = receiver.clone();
            async move { receiver.ids().into_iter().collect::<BTreeSet<_>>().len() as u64 >= total }
        })
        .await,
        "all alerts reach the webhook"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let alerts: Vec<serde_json::Value> = read_stream(&js, "ANOM_ROUTES_ALERTS", None)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(alerts.len(), expected.len(), "no alert duplicated on NATS");
    let got: BTreeSet<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["event"]["fileName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "no alert missing");
    let ids: BTreeSet<String> = alerts
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), expected.len());
    // The webhook is at-least-once across a crash: every alert arrives, and a repeat carries
    // the same Idempotency-Key.
    let hooked: BTreeSet<String> = receiver.ids().into_iter().collect();
    assert_eq!(hooked, ids);
    assert!(read_stream(&js, "ANOM_DLQ", None).await.is_empty());
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

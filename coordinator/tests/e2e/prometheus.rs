//! A real Prometheus server scrapes a running worker's /metrics, and the series come back
//! through its HTTP API.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{free_addr, repo_root, wait_for, Env};
use anom_operators::worker::{Worker, WorkerConfig};
use anom_pipeline::load_dir;
use bytes::Bytes;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The value of an instant query's first sample, if any.
async fn query(http: &reqwest::Client, prom: &str, promql: &str) -> Option<f64> {
    let body: serde_json::Value = http
        .get(format!("http://{prom}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_worker_and_answers_queries_about_it() {
    let env = Env::start().await;
    let dir = env.pipeline_dir(
        "routes",
        &std::fs::read_to_string(repo_root().join("pipelines/routes.yaml")).unwrap(),
    );
    let mut config = WorkerConfig::new(env.url(), load_dir(&dir).unwrap());
    config.state_dir = env.dir.path().join("state");
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let shutdown = CancellationToken::new();
    let worker = Worker::start(config, shutdown.clone()).await.unwrap();
    let target = worker.metrics_addr.expect("metrics are served");
    let task = tokio::spawn(worker.run_until_shutdown());

    let prom_addr = free_addr();
    let prom_dir = env.dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: anom\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (scripts/install-prometheus.sh)");

    let js = env.js().await;
    let events =
        std::fs::read_to_string(repo_root().join("pipelines/samples/routes.jsonl")).unwrap();
    let n = events.lines().count();
    for line in events.lines() {
        js.publish("anom.routes.in", Bytes::from(line.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish("anom.routes.in", Bytes::from_static(b"{not json"))
        .await
        .unwrap()
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let prom = prom_addr.to_string();
    let seen = wait_for(Duration::from_secs(60), || {
        let (http, prom) = (http.clone(), prom.clone());
        async move {
            query(
                &http,
                &prom,
                r#"sum(anom_events_in_total{pipeline="routes",stage="validate"})"#,
            )
            .await
                == Some(n as f64 + 1.0)
                && query(&http, &prom, r#"sum(anom_alerts_total{pipeline="routes"})"#).await
                    == Some(4.0)
        }
    })
    .await;
    assert!(seen, "Prometheus has the worker's counters");
    assert_eq!(
        query(
            &http,
            &prom,
            r#"sum(anom_dead_letters_total{pipeline="routes",reason="decode"})"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        query(
            &http,
            &prom,
            r#"sum(anom_ingest_to_alert_seconds_count{pipeline="routes"})"#
        )
        .await,
        Some(4.0)
    );
    assert_eq!(
        query(
            &http,
            &prom,
            r#"count(anom_consumer_pending{pipeline="routes",stage="keyed"})"#
        )
        .await,
        Some(4.0),
        "one lag series per partition"
    );
    assert!(
        query(
            &http,
            &prom,
            r#"max(anom_checkpoint_last_timestamp_seconds{pipeline="routes"})"#
        )
        .await
        .unwrap_or(0.0)
            > 1.7e9
    );
    assert_eq!(query(&http, &prom, r#"anom_build_info"#).await, Some(1.0));
    prometheus.start_kill().unwrap();
    let _ = prometheus.wait().await;
    shutdown.cancel();
    task.await.unwrap();
}

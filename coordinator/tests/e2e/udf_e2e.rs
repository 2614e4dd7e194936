//! UDF plugins end to end, against a real nats-server and worker: the example plugins of
//! pipelines/udfs (built by the test) derive a field a rule uses and score events for a
//! `kind: udf` detector; an event a UDF panics on, or scores outside [0, 1], is dead-lettered
//! with its reason while the others alert and the worker keeps going.

#[allow(dead_code)]
use anom_testkit::plugins as udfs;

use std::time::Duration;

use crate::support::{publish_events, read_stream, start_worker, wait_for, Env};
use anom_pipeline::Pipeline;

fn pipeline() -> String {
    format!(
        r#"name: transfers
key: route
event_time: finishedAt
partitions: 2
schema:
  route:      {{ type: string, required: true }}
  durationMs: {{ type: int, required: true }}
  fileName:   {{ type: string, required: true }}
  bytes:      {{ type: int, required: true }}
  finishedAt: {{ type: timestamp, required: true }}
udfs:
  - name: route_id
    library: {}
    args: [string]
    returns: string
  - name: transfer_score
    library: {}
    args: [int, int]
    returns: float
derive:
  file_route: route_id(fileName)
rules:
  - name: misrouted
    when: file_route != route
    message: "{{fileName}} belongs to {{file_route}}, not {{route}}"
detectors:
  - name: slow_transfer
    kind: udf
    udf: transfer_score
    features: [bytes, durationMs]
    threshold: 0.9
alerts:
  sinks: []
"#,
        udfs::plugin("route_id").display(),
        udfs::plugin("transfer_score").display()
    )
}

fn event(route: &str, file: &str, bytes: i64, ms: i64, minute: u32) -> serde_json::Value {
    serde_json::json!({
        "route": route, "fileName": file, "bytes": bytes, "durationMs": ms,
        "finishedAt": format!("2026-11-20T10:{minute:02}:00Z"),
    })
}

async fn alerts(js: &async_nats::jetstream::Context) -> Vec<serde_json::Value> {
    crate::support::alerts(js, "ANOM_TRANSFERS_ALERTS").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_fields_and_udf_scores_alert_and_udf_failures_are_dead_lettered() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("transfers", &pipeline());
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;

    publish_events(
        &js,
        "anom.transfers.in",
        &[
            // Fine: the file is the route's, ~100 KB/s (score 0.5).
            event("SFTP-BANK-A", "sftp-bank-a-0001.csv", 100_000, 1000, 0),
            // Misrouted: its file name says SFTP-BANK-B.
            event("SFTP-BANK-A", "sftp-bank-b-0002.csv", 100_000, 1000, 1),
            // route_id panics: no sequence in the name.
            event("SFTP-BANK-C", "broken.csv", 100_000, 1000, 2),
            // A negative size scores outside [0, 1].
            event("SFTP-BANK-D", "sftp-bank-d-0003.csv", -500_000, 1000, 3),
            // 1 KB in 10 s: the detector flags it.
            event("API-PAYROLL", "api-payroll-0004.csv", 1_000, 10_000, 4),
        ],
    )
    .await;
    let dead = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            read_stream(&js, "ANOM_DLQ", Some("anom.transfers.dlq"))
                .await
                .len()
                >= 2
        }
    })
    .await;
    assert!(dead, "the events a UDF failed on are dead-lettered");
    let alerted = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move { alerts(&js).await.len() >= 2 }
    })
    .await;
    assert!(alerted, "the other events alert");

    // The worker is still there: a later misrouted file alerts too.
    publish_events(
        &js,
        "anom.transfers.in",
        &[event(
            "API-PAYROLL",
            "sftp-bank-a-0005.csv",
            100_000,
            1000,
            5,
        )],
    )
    .await;
    let later = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move { alerts(&js).await.len() >= 3 }
    })
    .await;
    assert!(later, "events after the failures are processed");

    let alerts = alerts(&js).await;
    let fired: Vec<(String, String, String)> = alerts
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
                a["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        fired.contains(&(
            "misrouted".into(),
            "SFTP-BANK-A".into(),
            "sftp-bank-b-0002.csv belongs to SFTP-BANK-B, not SFTP-BANK-A".into()
        )),
        "{fired:?}"
    );
    assert!(
        fired
            .iter()
            .any(|(rule, key, _)| rule == "slow_transfer" && key == "API-PAYROLL"),
        "{fired:?}"
    );
    assert!(
        fired.contains(&(
            "misrouted".into(),
            "API-PAYROLL".into(),
            "sftp-bank-a-0005.csv belongs to SFTP-BANK-A, not API-PAYROLL".into()
        )),
        "{fired:?}"
    );
    // Neither the fine event nor the dead-lettered ones alerted.
    assert!(
        fired
            .iter()
            .all(|(_, key, _)| key != "SFTP-BANK-C" && key != "SFTP-BANK-D"),
        "{fired:?}"
    );
    assert_eq!(fired.len(), 3, "{fired:?}");

    let dlq = read_stream(&js, "ANOM_DLQ", Some("anom.transfers.dlq")).await;
    assert_eq!(dlq.len(), 2);
    let reasons: Vec<(&str, &str)> = dlq
        .iter()
        .map(|m| {
            (
                m.headers["Anom-Reason-Kind"].as_str(),
                m.headers["Anom-Reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        reasons[0],
        ("udf", "route_id(fileName): udf `route_id` panicked")
    );
    assert_eq!(reasons[1].0, "udf");
    assert!(
        reasons[1]
            .1
            .starts_with("transfer_score(bytes, durationMs): udf `transfer_score` scored -"),
        "{reasons:?}"
    );
    assert!(reasons[1].1.ends_with("outside [0, 1]"), "{reasons:?}");
    // The original event is kept.
    let kept: serde_json::Value = serde_json::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(kept["fileName"], "broken.csv");

    let text = worker.metrics.encode();
    let udf_dead: u64 = text
        .lines()
        .filter(|l| l.starts_with("anom_dead_letters_total{") && l.contains("reason=\"udf\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(udf_dead, 2);
    worker.stop().await;
}

#[test]
fn a_signature_mismatch_is_a_clear_definition_error() {
    let lib = udfs::plugin("route_id").display().to_string();
    let text = pipeline().replacen("args: [string]", "args: [int]", 1);
    let e = Pipeline::from_yaml(&text).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "line 12: udfs[0]: udf `route_id` takes (int) -> string but library {lib} takes (string) -> string"
        )
    );
}

#[test]
fn the_example_pipeline_compiles_with_the_example_plugins() {
    let path = crate::support::repo_root().join("pipelines/udfs/transfers.yaml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for lib in ["route_id", "transfer_score"] {
        let written = format!("pipelines/udfs/lib/libudf_{lib}.so");
        assert!(text.contains(&written), "{written}");
        text = text.replace(&written, &udfs::plugin(lib).display().to_string());
    }
    let p = Pipeline::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.derives.len(), 3);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.detectors[0].kind_name(), "udf");
}

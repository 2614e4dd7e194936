//! Detection quality at the defaults, through the real backtest path: the 31 labelled series
//! (operators/ml/data/labelled-series) are published to a pipeline on a real nats-server, one
//! event per row in time order, and a backtest with the labelled windows replays them through
//! the pipeline with every built-in univariate kind at its defaults. The report's per-detector
//! figures at the configured threshold are the quality table of docs/detectors.md; this test
//! asserts their floors, so a detector that regresses fails the suite.

use std::collections::BTreeMap;

use crate::backtests::{apply, backtest, report_text, setup, version};
use anom_proto::v1;
use anom_proto::v1::backtests_client::BacktestsClient;

const NAB: &str = r#"
name: nab
key: series
event_time: ts
partitions: 1
# The series span 2011–2015 in one stream: keys stay idle for years between their events.
state: { ttl: 3650d }
schema:
  series: { type: string, required: true }
  ts: { type: timestamp, required: true }
  value: { type: float, required: true }
detectors:
  - { name: auto, field: value }
  - { name: robust_zscore, kind: robust_zscore, field: value }
  - { name: ewma, kind: ewma, field: value }
  - { name: cusum, kind: cusum, field: value }
  - { name: seasonal, kind: seasonal, field: value }
  - { name: holt_winters, kind: holt_winters, field: value }
decision:
  alert_on: detectors
"#;

/// Floors per detector at its defaults: (window score, most flags per 1,000 events, fewest
/// windows detected of 57). A few points under today's figures (docs/detectors.md), far above
/// a detector that never alerts (score 0) and what these kinds scored before calibration
/// (−221 to −12 on this half).
const FLOORS: [(&str, f64, f64, u64); 6] = [
    ("auto", 60.0, 2.0, 48),
    ("robust_zscore", 47.0, 2.0, 37),
    ("ewma", 39.0, 2.0, 33),
    ("cusum", 32.0, 2.0, 29),
    ("seasonal", 56.0, 2.0, 42),
    ("holt_winters", 44.0, 2.0, 35),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_at_its_defaults_scores_above_its_floor_on_the_labelled_series() {
    let s = setup().await;
    assert_eq!(apply(&s.channel, NAB).await, 1);
    let js = s.env.js().await;
    let dir = crate::support::repo_root().join("operators/ml/data/labelled-series");
    let corpus = anom_ml::detector::labelled::load(&dir).unwrap();
    assert_eq!(corpus.len(), 31);
    // One stream of all rows in time order (ties by key), as a live feed would carry them.
    let mut rows: Vec<(i64, &str, f64)> = corpus
        .iter()
        .flat_map(|c| {
            c.times
                .iter()
                .zip(&c.values)
                .map(|(&t, &v)| (t, c.key.as_str(), v))
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    // Acks awaited per 1,000: the client caps publishes in flight without an awaited ack.
    for batch in rows.chunks(1_000) {
        let mut acks = Vec::with_capacity(batch.len());
        for &(t, key, v) in batch {
            let ts = jiff::Timestamp::from_millisecond(t).unwrap();
            let event = serde_json::json!({"series": key, "ts": ts.to_string(), "value": v});
            acks.push(
                js.publish("anom.nab.in", event.to_string().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
    }
    let windows = std::fs::read_to_string(dir.join("windows.json")).unwrap();
    let mut c = BacktestsClient::new(s.channel.clone());
    let (status, report) = backtest(
        &mut c,
        v1::StartBacktestRequest {
            pipeline: "nab".into(),
            target: version(1),
            labels_windows_json: windows,
            budget_per_day: 5.0,
            ..Default::default()
        },
    )
    .await;
    let r = &report["report"];
    assert_eq!(
        r["events"].as_u64(),
        Some(rows.len() as u64),
        "{}",
        r["rejected"]
    );
    let events = rows.len() as f64;

    // The report's thresholds replay each detector's scores through its episodes: at its own
    // threshold they must flag exactly what the score stage flagged.
    let flagged: BTreeMap<&str, u64> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["flags"].as_u64().unwrap()))
        .collect();
    let mut table = String::from(
        "| kind | window score | flags per 1,000 events | windows detected | median time to detect | false flags | best threshold (score) | within 5/day |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut failures = Vec::new();
    for t in r["thresholds"].as_array().unwrap() {
        let name = t["detector"].as_str().unwrap();
        let cur = &t["current"];
        let flags = cur["flags"].as_u64().unwrap();
        assert_eq!(Some(&flags), flagged.get(name), "{name}: replay vs stage");
        let score = cur["window_score"].as_f64().unwrap();
        let per_1000 = 1000.0 * flags as f64 / events;
        let detected = cur["windows_detected"].as_u64().unwrap();
        let ttd = cur["median_time_to_detect_ms"]
            .as_f64()
            .map_or("–".into(), |ms| format!("{:.1} h", ms / 3.6e6));
        table.push_str(&format!(
            "| {name} | {score:.1} | {per_1000:.2} | {detected} of 57 | {ttd} | {} | {} ({:.1}) | {} |\n",
            cur["false_flags"],
            t["best"]["threshold"],
            t["best"]["window_score"].as_f64().unwrap_or(f64::NAN),
            t["within_budget"]["threshold"],
        ));
        let (_, min_score, max_rate, min_detected) = FLOORS
            .iter()
            .find(|f| f.0 == name)
            .unwrap_or_else(|| panic!("no floor for {name}"));
        if score < *min_score || per_1000 > *max_rate || detected < *min_detected {
            failures.push(format!(
                "{name}: score {score:.1} (floor {min_score}), {per_1000:.2} flags per 1,000 (at most {max_rate}), {detected} windows (at least {min_detected})"
            ));
        }
    }
    println!("{table}");
    assert_eq!(r["thresholds"].as_array().unwrap().len(), FLOORS.len());
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
    // The backtest's own score of its alerts (all detectors together) uses the same windows.
    assert_eq!(r["scores"]["windows"].as_array().unwrap().len(), 57);
    // The HTML report draws each detector's threshold curve, its best threshold marked.
    let html = report_text(&mut c, &status.id, "html").await.unwrap();
    assert_eq!(
        html.matches("flags per day and window score by threshold")
            .count(),
        FLOORS.len()
    );
    assert_eq!(
        html.matches("best window score: threshold").count(),
        FLOORS.len()
    );
}

//! Backtests against a real nats-server, a coordinator process (the `Backtests` service) and
//! a worker process: the same alerts as the live run (event time), A/B, labels scored on
//! hand-made cases, absence in event time, errors, cancel, and no effect on live state or
//! sinks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    coordinator_channel, free_addr, publish_events, spawn_coordinator, stream_len, wait_for, Env,
    Receiver,
};
use anom_operators::backtest::scoring::{sigmoid, A_FP};
use anom_proto::v1;
use anom_proto::v1::backtests_client::BacktestsClient;
use futures::StreamExt;
use tonic::transport::Channel;

const T0: i64 = 1_793_577_600_000; // 2026-11-02T00:00:00Z
const MIN: i64 = 60_000;

fn pay(big: u32, extra: &str) -> String {
    format!(
        r#"name: pay
key: card
event_time: at
partitions: 2
allowed_lateness: 1d
retention: 30d
schema:
  card: {{ type: string, required: true }}
  amount: {{ type: float, required: true }}
  at: {{ type: timestamp, required: true }}
aggregates:
  spent_1h: sum(amount) over 1h
rules:
  - name: big
    when: amount > {big}
    message: "{{card}} paid {{amount}}"
  - name: hourly
    when: spent_1h > 1500
    severity: critical
{extra}"#
    )
}

/// 12 cards, 40 payments each, five minutes apart; amounts vary so that rules fire and
/// resolve many times.
fn payments() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for i in 0..40i64 {
        for c in 0..12i64 {
            let amount = ((i * 37 + c * 101) % 97) as f64 * 7.0;
            out.push(serde_json::json!({
                "card": format!("card-{c:02}"),
                "amount": amount,
                "at": T0 + i * 5 * MIN + c * 1000,
            }));
        }
    }
    out
}

/// The firings a threshold rule `amount > t` gives per card, by the model of the lifecycle:
/// it fires on the first matching event and resolves on the next one that does not match.
fn big_firings(events: &[serde_json::Value], t: f64) -> BTreeSet<(String, i64)> {
    let mut firing: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for e in events {
        let card = e["card"].as_str().unwrap().to_string();
        let hit = e["amount"].as_f64().unwrap() > t;
        let was = firing.insert(card.clone(), hit).unwrap_or(false);
        if hit && !was {
            out.insert((card, e["at"].as_i64().unwrap()));
        }
    }
    out
}

pub(crate) async fn apply(channel: &Channel, yaml: &str) -> u32 {
    let mut c = v1::pipelines_client::PipelinesClient::new(channel.clone());
    c.apply(v1::ApplyRequest {
        definition: Some(v1::Definition {
            source: Some(v1::definition::Source::Yaml(yaml.to_string())),
            source_name: "pay.yaml".into(),
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .version
    .unwrap()
    .version
}

pub(crate) fn version(v: u32) -> Option<v1::BacktestTarget> {
    Some(v1::BacktestTarget {
        source: Some(v1::backtest_target::Source::Version(v)),
    })
}

fn draft(yaml: &str) -> Option<v1::BacktestTarget> {
    Some(v1::BacktestTarget {
        source: Some(v1::backtest_target::Source::Draft(v1::Definition {
            source: Some(v1::definition::Source::Yaml(yaml.to_string())),
            source_name: "draft.yaml".into(),
        })),
    })
}

/// Starts a backtest, follows it to its end, and returns the final status and JSON report.
pub(crate) async fn backtest(
    c: &mut BacktestsClient<Channel>,
    req: v1::StartBacktestRequest,
) -> (v1::BacktestStatus, serde_json::Value) {
    let started = c.start(req).await.unwrap().into_inner();
    assert_eq!(started.state, "running");
    let mut updates = c
        .watch(v1::BacktestId {
            id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = started;
    while let Some(s) = updates.next().await {
        last = s.unwrap();
    }
    assert_eq!(last.state, "done", "{last:?}");
    let report = report_text(c, &last.id, "json").await.unwrap();
    (last, serde_json::from_str(&report).unwrap())
}

/// A report, its chunks joined (each at most 1 MiB, the last one marked).
pub(crate) async fn report_text(
    c: &mut BacktestsClient<Channel>,
    id: &str,
    format: &str,
) -> Result<String, tonic::Status> {
    let mut chunks = c
        .get_report(v1::GetReportRequest {
            id: id.to_string(),
            format: format.into(),
        })
        .await?
        .into_inner();
    let (mut text, mut n, mut last) = (String::new(), 0, false);
    while let Some(chunk) = chunks.message().await? {
        assert!(!last, "a chunk after the last");
        assert_eq!(chunk.chunk, n);
        assert!(chunk.content.len() <= 1 << 20);
        text.push_str(&chunk.content);
        (n, last) = (n + 1, chunk.last);
    }
    assert!(last, "no last chunk");
    Ok(text)
}

fn firings(report: &serde_json::Value) -> BTreeSet<(String, String, i64)> {
    report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
                a["fired_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn millis(rfc3339: &serde_json::Value) -> i64 {
    rfc3339
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

pub(crate) struct Setup {
    pub env: Env,
    pub addr: SocketAddr,
    pub channel: Channel,
    _coordinator: tokio::process::Child,
}

pub(crate) async fn setup() -> Setup {
    let env = Env::start().await;
    let addr: SocketAddr = free_addr();
    let coordinator = spawn_coordinator(&env.url(), addr, &env.dir.path().join("coordinator"), &[]);
    let channel = coordinator_channel(addr).await;
    Setup {
        env,
        addr,
        channel,
        _coordinator: coordinator,
    }
}

/// Everything the live pipeline wrote, as counts per stream and bucket.
async fn live_state(js: &async_nats::jetstream::Context) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for s in [
        "ANOM_PAY_VALID",
        "ANOM_PAY_ENRICHED",
        "ANOM_PAY_DETECTIONS",
        "ANOM_PAY_ALERTS",
        "KV_ANOM_ALERTS",
        "KV_ANOM_NFLOG",
        "ANOM_DLQ",
    ] {
        out.push((s.to_string(), stream_len(js, s).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backtest_raises_what_live_raised_compares_versions_and_leaves_live_alone() {
    let s = setup().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let sink = format!(
        "alerts:\n  route:\n    group_wait: 200ms\n    group_interval: 500ms\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n",
        receiver.url()
    );
    let v1_yaml = pay(500, &sink);
    assert_eq!(apply(&s.channel, &v1_yaml).await, 1);
    let mut worker = crate::support::spawn_cluster_worker(
        &s.env.url(),
        s.addr,
        "w1",
        &s.env.dir.path().join("w1"),
        &[],
    );
    let js = s.env.js().await;
    let ch = s.channel.clone();
    let running = wait_for(Duration::from_secs(60), || async {
        crate::support::cluster_view(&ch)
            .await
            .is_some_and(|(assigned, unassigned, running, _)| {
                assigned > 1 && unassigned == 0 && running == assigned
            })
    })
    .await;
    assert!(running, "{:?}", crate::support::cluster_view(&ch).await);
    let events = payments();
    publish_events(&js, "anom.pay.in", &events).await;

    // Live: wait until every status change is out and the notifications have settled.
    let expected_big = big_firings(&events, 500.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stream_len(&js, "ANOM_PAY_ALERTS").await;
        if now > 0 && now == last && stream_len(&js, "ANOM_PAY_VALID").await == 480 {
            break;
        }
        last = now;
        assert!(
            std::time::Instant::now() < deadline,
            "the live run did not settle"
        );
    }
    let live = crate::support::alerts(&js, "ANOM_PAY_ALERTS").await;
    let live_fired: BTreeSet<(String, String, i64)> = live
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
                millis(&a["event_time"]),
            )
        })
        .collect();
    let live_big: BTreeSet<(String, i64)> = live_fired
        .iter()
        .filter(|f| f.0 == "big")
        .map(|f| (f.1.clone(), f.2))
        .collect();
    assert_eq!(
        live_big, expected_big,
        "the live run itself follows the model"
    );
    assert!(live_fired.iter().any(|f| f.0 == "hourly"));
    let live_resolved: BTreeMap<(String, i64), i64> = {
        // Pair each resolution with the firing before it, per alert id.
        let mut open: BTreeMap<String, (String, i64)> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for a in &live {
            let id = a["id"].as_str().unwrap().to_string();
            match a["status"].as_str().unwrap() {
                "firing" => {
                    open.insert(
                        id,
                        (
                            a["key"].as_str().unwrap().to_string(),
                            millis(&a["event_time"]),
                        ),
                    );
                }
                "resolved" => {
                    if let Some(f) = open.remove(&id) {
                        out.insert(f, millis(&a["event_time"]));
                    }
                }
                _ => {}
            }
        }
        out
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let notified = receiver.ids().len();
    assert!(notified > 0);
    let before = live_state(&js).await;

    // The backtest of the current version over everything: the very same alerts.
    let mut c = BacktestsClient::new(s.channel.clone());
    let (status, report) = backtest(
        &mut c,
        v1::StartBacktestRequest {
            pipeline: "pay".into(),
            target: version(0),
            plot_key: "card-03".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(status.read, 480);
    assert_eq!(
        report["report"]["stream"], "ANOM_PAY_HISTORY",
        "read from the pipeline's own history"
    );
    let r = &report["report"];
    assert_eq!(r["events"], 480);
    assert_eq!(
        firings(r),
        live_fired,
        "the backtest raises what live raised, at the same events"
    );
    let resolved: BTreeMap<(String, i64), i64> = r["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["resolved_ms"].is_i64())
        .map(|a| {
            (
                (
                    a["key"].as_str().unwrap().to_string(),
                    a["fired_ms"].as_i64().unwrap(),
                ),
                a["resolved_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        resolved, live_resolved,
        "and resolves them at the same events"
    );
    let big = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "big")
        .unwrap();
    assert_eq!(big["alerts"], expected_big.len());
    let detections = events
        .iter()
        .filter(|e| e["amount"].as_f64().unwrap() > 500.0)
        .count();
    assert_eq!(big["detections"], detections);
    let per_day: u64 = r["alerts_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_day as usize, live_fired.len());
    let noise = r["alerts_per_1000_events"].as_f64().unwrap();
    assert!((noise - live_fired.len() as f64 * 1000.0 / 480.0).abs() < 1e-9);
    assert_eq!(r["plot"]["key"], "card-03");
    assert_eq!(r["plot"]["points"].as_array().unwrap().len(), 40);

    // People's formats.
    for (format, needle) in [("markdown", "| big | rule |"), ("html", "<svg")] {
        let text = report_text(&mut c, &status.id, format).await.unwrap();
        assert!(text.contains(needle), "{format}: {text}");
    }

    // A/B: version 2 lowers `big` to 300; the alerts only it raises are the model's.
    assert_eq!(apply(&s.channel, &pay(300, &sink)).await, 2);
    let (_, ab) = backtest(
        &mut c,
        v1::StartBacktestRequest {
            pipeline: "pay".into(),
            target: version(1),
            compare: version(2),
            ..Default::default()
        },
    )
    .await;
    let ab = &ab["comparison"];
    // Without labels or a plot, events are counted without being looked at.
    assert_eq!(
        (ab["a"]["events"].as_u64(), ab["b"]["events"].as_u64()),
        (Some(480), Some(480))
    );
    assert_eq!(ab["a"]["first_event_ms"], T0);
    let only = |side: &str| -> BTreeSet<(String, i64)> {
        ab[side]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule"] == "big")
            .map(|a| {
                (
                    a["key"].as_str().unwrap().to_string(),
                    a["fired_ms"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let low = big_firings(&events, 300.0);
    assert_eq!(
        only("only_b"),
        low.difference(&expected_big).cloned().collect()
    );
    assert_eq!(
        only("only_a"),
        expected_big.difference(&low).cloned().collect()
    );
    assert!(ab["only_a"]
        .as_array()
        .unwrap()
        .iter()
        .chain(ab["only_b"].as_array().unwrap())
        .all(|a| a["rule"] == "big"));

    // Nothing live moved: no stream or bucket got a message, no sink a notification.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live_state(&js).await, before);
    assert_eq!(receiver.ids().len(), notified);

    let list = c
        .list(v1::ListBacktestsRequest {
            pipeline: "pay".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .backtests;
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].id, status.id, "newest first");
    assert_eq!(list[0].versions, "1 vs 2");
    worker.kill().await.ok();
}

const LABELLED: &str = r#"name: pay
key: card
event_time: at
schema:
  card: { type: string, required: true }
  amount: { type: float, required: true }
  at: { type: timestamp, required: true }
rules:
  - name: big
    when: amount > 500
absence:
  - name: quiet
    after: 20m
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_scored_absence_runs_in_event_time_and_bad_requests_are_refused() {
    let s = setup().await;
    assert_eq!(apply(&s.channel, LABELLED).await, 1);
    let js = s.env.js().await;
    // One card, one payment a minute; `fraud` marks 2, 3, 4 and 8; `big` flags 2, 3 and 7.
    let amounts = [
        10.0, 10.0, 900.0, 900.0, 10.0, 10.0, 10.0, 900.0, 10.0, 10.0,
    ];
    let fraud = [2, 3, 4, 8];
    let mut events: Vec<serde_json::Value> = amounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({
                "card": "k", "amount": a, "at": T0 + i as i64 * MIN,
                "fraud": fraud.contains(&i),
            })
        })
        .collect();
    // Then 45 minutes of silence, and one more payment: `quiet` fires in event time (the
    // replay takes milliseconds) and resolves on that payment.
    events.push(
        serde_json::json!({"card": "k", "amount": 10.0, "at": T0 + 54 * MIN, "fraud": false}),
    );
    publish_events(&js, "anom.pay.in", &events).await;
    // The stream keeps the other messages of the subject too: a malformed one is counted.
    publish_events(&js, "anom.pay.in", &[serde_json::json!({"card": "k"})]).await;
    let mut c = BacktestsClient::new(s.channel.clone());

    let expected_score = {
        // Window 1 (2–4 min) detected at its start; `big` at 7 min follows it by 1.5 window
        // lengths; `quiet` (at 29 min) long after any window costs the full false-alert
        // weight; window 2 (8 min) is missed.
        let raw = sigmoid(-1.0) + A_FP * sigmoid(1.5) - A_FP - 1.0;
        100.0 * (raw + 2.0) / (2.0 * sigmoid(-1.0) + 2.0)
    };
    let windows = serde_json::json!([
        {"key": "k", "start": T0 + 2 * MIN, "end": T0 + 4 * MIN, "label": "takeover"},
        {"start": jiff::Timestamp::from_millisecond(T0 + 8 * MIN).unwrap().to_string(), "end": T0 + 8 * MIN},
    ]);
    for labels in [
        ("fraud".to_string(), String::new()),
        (String::new(), windows.to_string()),
    ] {
        let (_, report) = backtest(
            &mut c,
            v1::StartBacktestRequest {
                pipeline: "pay".into(),
                target: version(1),
                labels_field: labels.0.clone(),
                labels_windows_json: labels.1.clone(),
                ..Default::default()
            },
        )
        .await;
        let r = &report["report"];
        assert_eq!(r["events"], 11);
        assert_eq!(r["rejected"]["schema"], 1, "{r}");
        let sc = &r["scores"];
        assert_eq!(
            sc["events"],
            serde_json::json!({"true_positives": 2, "false_positives": 1, "false_negatives": 2, "true_negatives": 6}),
            "{labels:?}"
        );
        assert!((sc["precision"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((sc["recall"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        assert!((sc["f1"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(
            (
                sc["windows_detected"].as_u64(),
                sc["windows_missed"].as_u64()
            ),
            (Some(1), Some(1))
        );
        // `big` at 7 min is outside; `quiet` fired at 29 min is outside too.
        assert_eq!(sc["false_alerts"], 2);
        assert_eq!(sc["time_to_detect"]["max_ms"], 0.0);
        let got = sc["window_score"].as_f64().unwrap();
        assert!(
            (got - expected_score).abs() < 1e-6,
            "window score {got}, expected {expected_score}"
        );
        let quiet: Vec<_> = r["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule"] == "quiet")
            .collect();
        assert_eq!(quiet.len(), 1, "{r}");
        assert_eq!(
            quiet[0]["fired_ms"],
            T0 + 29 * MIN,
            "20 minutes after the last payment, in event time"
        );
        assert_eq!(quiet[0]["resolved_ms"], T0 + 54 * MIN, "{}", r["alerts"]);
    }

    // The command: progress on stderr, the report where asked, the list.
    let html = s.env.dir.path().join("report.html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["backtest", "--coordinator", &format!("http://{}", s.addr)])
        .args([
            "--pipeline",
            "pay",
            "--version",
            "1",
            "--label-field",
            "fraud",
        ])
        .args(["--plot-key", "k", "--out"])
        .arg(&html)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("12 messages") && stderr.contains("alerts: 3"),
        "{stderr}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && page.contains("Window score"),
        "{page}"
    );
    assert_eq!(
        page.matches("alert fired at").count(),
        3,
        "big twice and quiet, on key k"
    );
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args([
            "backtest",
            "list",
            "--coordinator",
            &format!("http://{}", s.addr),
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" done ")).count(),
        3,
        "{listed}"
    );

    // A draft that does not compile, labels that do not parse, a version that does not exist,
    // a plot field that is not there: refused with what was expected.
    let refused = |r: Result<tonic::Response<v1::BacktestStatus>, tonic::Status>| r.unwrap_err();
    let e = refused(
        c.start(v1::StartBacktestRequest {
            pipeline: "pay".into(),
            target: draft(&LABELLED.replace("amount > 500", "amount >> 500")),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("draft.yaml:10:19: rules[0].when"),
        "{}",
        e.message()
    );
    let e = refused(
        c.start(v1::StartBacktestRequest {
            pipeline: "pay".into(),
            labels_windows_json: r#"[{"start": "soon", "end": 5}]"#.into(),
            ..Default::default()
        })
        .await,
    );
    assert!(
        e.message()
            .contains("window 1: `start` must be an RFC 3339 time"),
        "{}",
        e.message()
    );
    let e = refused(
        c.start(v1::StartBacktestRequest {
            pipeline: "pay".into(),
            target: version(7),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("has no version 7 (it has 1..=1)"),
        "{}",
        e.message()
    );
    let e = refused(
        c.start(v1::StartBacktestRequest {
            pipeline: "pay".into(),
            plot_field: "amuont".into(),
            ..Default::default()
        })
        .await,
    );
    assert!(e.message().contains("found `amuont`"), "{}", e.message());

    // A slow backtest (5 events a second) is cancelled.
    let started = c
        .start(v1::StartBacktestRequest {
            pipeline: "pay".into(),
            max_rate: 5.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = c
        .cancel(v1::BacktestId {
            id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, "cancelled");
    let e = report_text(&mut c, &started.id, "json").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

const FLAP: &str = r#"name: flap
key: k
event_time: at
schema:
  k: { type: string, required: true }
  x: { type: float, required: true }
  at: { type: timestamp, required: true }
rules:
  - name: high
    when: x > 0.5
    message: "{k}: x is {x}, above its limit of 0.5 (a deliberately long message: reports grow)"
"#;

/// A report far above gRPC's 4 MiB message limit is fetched whole, in chunks, in every format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_twenty_thousand_alerts_is_fetched_in_chunks() {
    let s = setup().await;
    assert_eq!(apply(&s.channel, FLAP).await, 1);
    let js = s.env.js().await;
    // 100 keys, 400 events each, x alternating 1, 0: every other event fires, the next resolves.
    let events: Vec<serde_json::Value> = (0..400i64)
        .flat_map(|i| {
            (0..100).map(move |k| {
                serde_json::json!({"k": format!("key-{k:03}"), "x": (i + 1) % 2, "at": T0 + i * MIN + k})
            })
        })
        .collect();
    publish_events(&js, "anom.flap.in", &events).await;
    let mut c = BacktestsClient::new(s.channel.clone());
    let (status, report) = backtest(
        &mut c,
        v1::StartBacktestRequest {
            pipeline: "flap".into(),
            target: version(1),
            ..Default::default()
        },
    )
    .await;
    let r = &report["report"];
    assert_eq!(r["events"], 40_000);
    assert_eq!(r["alerts"].as_array().unwrap().len(), 20_000);
    let json = report_text(&mut c, &status.id, "json").await.unwrap();
    assert!(
        json.len() > 4 << 20,
        "{} bytes: not above the limit",
        json.len()
    );
    for (format, needle) in [("markdown", "… and 19900 more"), ("html", "</html>")] {
        let text = report_text(&mut c, &status.id, format).await.unwrap();
        assert!(text.contains(needle), "{format}");
    }
    // The command writes it as it arrives.
    let out = s.env.dir.path().join("flap.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["backtest", "show", &status.id, "--format", "json", "--out"])
        .arg(&out)
        .args(["--coordinator", &format!("http://{}", s.addr)])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), json);
}

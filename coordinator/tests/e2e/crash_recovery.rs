//! A worker process killed with SIGKILL in the middle of 10,000 events and started again:
//! every change of every alert is published once, and the notification log neither loses
//! nor repeats a notification.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{read_stream, repo_root, spawn_worker, stream_len, wait_for, Env, Receiver};
use bytes::Bytes;

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

/// Every change of status the routes rules must publish, by plain code: (rule, fileName of
/// the event behind it, status). A (rule, route) alert fires on a hit and resolves on the
/// route's next event that does not hit. Also returns the alerts still firing at the end.
/// (rule, fileName, status) per change of status, and the (rule, route) alerts still firing.
type Expected = (
    BTreeSet<(String, String, String)>,
    BTreeSet<(String, String)>,
);

fn expected() -> Expected {
    let mut out = BTreeSet::new();
    let mut firing: BTreeSet<(String, String)> = BTreeSet::new();
    for i in 0..EVENTS {
        let e = event(i);
        let route = e["route"].as_str().unwrap().to_string();
        let file = e["fileName"].as_str().unwrap().to_string();
        let slow = e["durationMs"].as_i64().unwrap() > 5000 && e["status"] == "OK";
        let failed = e["status"] == "FAILED";
        for (rule, hit) in [("slow_route", slow), ("failed_route", failed)] {
            let alert = (rule.to_string(), route.clone());
            if hit && firing.insert(alert.clone()) {
                out.insert((rule.to_string(), file.clone(), "firing".to_string()));
            } else if !hit && firing.remove(&alert) {
                out.insert((rule.to_string(), file.clone(), "resolved".to_string()));
            }
        }
    }
    (out, firing)
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
            &format!("alerts:\n  inhibit: []\n  route:\n    group_wait: 200ms\n    group_interval: 300ms\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n      backoff: 50ms\n", receiver.url()),
        );
    let dir = env.pipeline_dir("routes", &yaml);
    let (expected, still_firing) = expected();
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
    // A duplicate would follow shortly after; give it the chance to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts: Vec<serde_json::Value> = read_stream(&js, "ANOM_ROUTES_ALERTS", None)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(alerts.len(), expected.len(), "no change published twice");
    let got: BTreeSet<(String, String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["event"]["fileName"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        got == expected,
        "no change missing; published but not expected: {:?}; expected but not published: {:?}",
        got.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&got).collect::<Vec<_>>()
    );

    // Notifications: wait until each rule's group has reported its final firing alerts.
    let final_firing = |rule: &str| -> BTreeSet<String> {
        still_firing
            .iter()
            .filter(|(r, _)| r == rule)
            .map(|(_, route)| route.clone())
            .collect()
    };
    let settled = wait_for(Duration::from_secs(60), || {
        let receiver = receiver.clone();
        let want = [
            ("slow_route", final_firing("slow_route")),
            ("failed_route", final_firing("failed_route")),
        ];
        async move {
            let last = last_notified(&receiver);
            want.iter()
                .all(|(rule, routes)| last.get(*rule) == Some(routes))
        }
    })
    .await;
    assert!(
        settled,
        "the last notification of each rule lists the alerts still firing: {:?} vs {still_firing:?}",
        last_notified(&receiver)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The log is durable: after the kill, pending notifications were sent again with their
    // ids, none was lost (every group's sequence has no gap) and a repeat is the same
    // notification (same id, same body), which the Idempotency-Key lets receivers drop.
    let by_id = receiver.bodies_by_id();
    for copies in by_id.values() {
        assert!(
            copies.iter().all(|c| c["alerts"] == copies[0]["alerts"]),
            "a repeat is the same notification"
        );
    }
    let mut sequences: std::collections::BTreeMap<String, BTreeSet<u64>> = Default::default();
    for b in by_id.values().map(|copies| &copies[0]) {
        sequences
            .entry(b["group_key"].as_str().unwrap().to_string())
            .or_default()
            .insert(b["sequence"].as_u64().unwrap());
    }
    assert_eq!(sequences.len(), 2, "one group per rule: {sequences:?}");
    for (group, seqs) in &sequences {
        let n = seqs.len() as u64;
        assert_eq!(*seqs, (0..n).collect(), "no notification of {group} lost");
    }
    assert!(read_stream(&js, "ANOM_DLQ", None).await.is_empty());
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

/// Per rule, the firing alerts (routes) of the last notification the receiver got.
fn last_notified(receiver: &Receiver) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut last: std::collections::BTreeMap<String, (u64, BTreeSet<String>)> = Default::default();
    for (_, n) in receiver.bodies.lock().unwrap().iter() {
        let rule = n["group_labels"]["rule"].as_str().unwrap().to_string();
        let seq = n["sequence"].as_u64().unwrap();
        let firing = n["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] != "resolved")
            .map(|a| a["key"].as_str().unwrap().to_string())
            .collect();
        if last.get(&rule).is_none_or(|(s, _)| seq >= *s) {
            last.insert(rule, (seq, firing));
        }
    }
    last.into_iter().map(|(r, (_, f))| (r, f)).collect()
}

const KEYED: &str = r#"
name: spend
key: user
event_time: at
partitions: 4
units:
  publish_enriched: true
schema:
  user:   { type: string, required: true }
  amount: { type: int, required: true }
  at:     { type: timestamp, required: true }
aggregates:
  n: count()
  n_1h: count() over 1h
  total: sum(amount)
  today: sum(amount) over calendar day
  last_amount: prev(amount)
rules:
  - name: every_25th
    when: n % 25 == 0
  - name: big_day
    when: today > 12000 and last_amount > 900
"#;

const KEYED_EVENTS: usize = 100_000;

fn keyed_event(i: usize) -> Bytes {
    // 1,000 users; times advance 3 s per event over ~3.5 days, so windows roll.
    let at = 1_795_132_800_000i64 + i as i64 * 3_000;
    Bytes::from(format!(
        r#"{{"user":"u{}","amount":{},"at":{at}}}"#,
        (i * 7919) % 1000,
        (i * 31) % 997
    ))
}

/// Publishes every keyed event at a steady pace.
async fn publish_keyed(js: async_nats::jetstream::Context) {
    let mut acks = Vec::new();
    for i in 0..KEYED_EVENTS {
        acks.push(js.publish("anom.spend.in", keyed_event(i)).await.unwrap());
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Waits until the pipeline has gone through all events, then returns the alert ids and the
/// last aggregate values seen per user.
async fn outcome(
    js: &async_nats::jetstream::Context,
) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
    let done = wait_for(Duration::from_secs(300), || async {
        stream_len(js, "ANOM_SPEND_ENRICHED").await >= KEYED_EVENTS as u64
    })
    .await;
    assert!(
        done,
        "all events enriched ({} of {KEYED_EVENTS})",
        stream_len(js, "ANOM_SPEND_ENRICHED").await
    );
    // Alerts trail the enriched stream; wait until their count stops moving.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stream_len(js, "ANOM_SPEND_ALERTS").await;
        if now == last {
            break;
        }
        last = now;
    }
    // Each change of status: the alert, its new status, and the event behind it.
    let ids: Vec<String> = read_stream(js, "ANOM_SPEND_ALERTS", None)
        .await
        .iter()
        .map(|m| {
            let a = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap();
            format!("{}:{}:{}", a["id"], a["status"], a["source"]["sequence"])
        })
        .collect();
    let mut finals = std::collections::BTreeMap::new();
    for m in read_stream(js, "ANOM_SPEND_ENRICHED", None).await {
        let env = anom_pipeline::envelope::Envelope::decode(&m.payload).unwrap();
        finals.insert(
            env.meta.key.clone(),
            env.enrichment.iter().map(|v| v.to_string()).collect(),
        );
    }
    (ids, finals)
}

/// The keyed stream through a worker (started with `extra` arguments) left alone: the
/// outcome the disturbed runs must equal.
async fn undisturbed(
    extra: &[&str],
) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
    let calm = Env::start().await;
    let calm_dir = calm.pipeline_dir("spend", KEYED);
    let calm_js = calm.js().await;
    let mut worker = crate::support::spawn_worker_with(&calm.url(), &calm_dir, extra);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            calm_js.get_stream("ANOM_SPEND_ALERTS").await.is_ok()
        })
        .await
    );
    publish_keyed(calm_js.clone()).await;
    let outcome = outcome(&calm_js).await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_during_a_keyed_stream_give_the_same_alerts_and_aggregates_as_an_undisturbed_run(
) {
    let (calm_ids, calm_finals) = undisturbed(&[]).await;
    assert!(
        calm_ids.len() > 4100,
        "both rules fire and resolve: {}",
        calm_ids.len()
    );

    // The same stream, with the worker killed every 1.5 s while it runs.
    let rough = Env::start().await;
    let rough_dir = rough.pipeline_dir("spend", KEYED);
    let js = rough.js().await;
    let mut worker = spawn_worker(&rough.url(), &rough_dir);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_SPEND_ALERTS").await.is_ok()
        })
        .await
    );
    let publisher = tokio::spawn(publish_keyed(js.clone()));
    let mut kills = 0;
    while kills < 5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        worker.start_kill().unwrap();
        worker.wait().await.unwrap();
        kills += 1;
        worker = spawn_worker(&rough.url(), &rough_dir);
    }
    publisher.await.unwrap();
    let (ids, finals) = outcome(&js).await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;

    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no change published twice");
    assert_eq!(ids.len(), calm_ids.len(), "no change missing");
    assert_eq!(unique, calm_ids.iter().collect::<BTreeSet<_>>());
    assert_eq!(finals.len(), 1000);
    assert_eq!(
        finals, calm_finals,
        "final aggregates equal the undisturbed run's"
    );
}

/// A worker SIGKILLed and kept down longer than the streams' duplicate window (5 s here,
/// 2 minutes by default) while events keep arriving: after its restart nothing it had
/// already published is published again — no event validated twice, no alert change twice —
/// and nothing is missing; the aggregates equal an undisturbed run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_down_longer_than_the_duplicate_window_publishes_nothing_twice_and_loses_nothing()
{
    let window = ["--duplicate-window", "5s"];
    let (calm_ids, calm_finals) = undisturbed(&window).await;

    let rough = Env::start().await;
    let rough_dir = rough.pipeline_dir("spend", KEYED);
    let js = rough.js().await;
    let mut worker = crate::support::spawn_worker_with(&rough.url(), &rough_dir, &window);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_SPEND_ALERTS").await.is_ok()
        })
        .await
    );
    let publisher = tokio::spawn(publish_keyed(js.clone()));
    // Killed mid-stream, with outputs published but their inputs not yet acked or
    // checkpointed; down for 8 s, past the window, while the publisher goes on.
    assert!(
        wait_for(Duration::from_secs(60), || async {
            stream_len(&js, "ANOM_SPEND_ENRICHED").await > 5_000
        })
        .await
    );
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let at_kill = stream_len(&js, "ANOM_SPEND_ENRICHED").await;
    assert!(
        at_kill < KEYED_EVENTS as u64,
        "killed mid-stream ({at_kill})"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    worker = crate::support::spawn_worker_with(&rough.url(), &rough_dir, &window);
    publisher.await.unwrap();
    let (ids, finals) = outcome(&js).await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;

    assert_eq!(
        stream_len(&js, "ANOM_SPEND_VALID").await,
        KEYED_EVENTS as u64,
        "every event validated once"
    );
    assert_eq!(
        stream_len(&js, "ANOM_SPEND_ENRICHED").await,
        KEYED_EVENTS as u64,
        "every event enriched once"
    );
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no change published twice");
    assert_eq!(ids.len(), calm_ids.len(), "no change missing");
    assert_eq!(unique, calm_ids.iter().collect::<BTreeSet<_>>());
    assert_eq!(
        finals, calm_finals,
        "final aggregates equal the undisturbed run's"
    );
}

//! Keyed windows, aggregates and absence against a real nats-server: the payments seed cases
//! with exact expected alerts, absence firing and resolving, late events, and state that
//! survives a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    alerts, publish_events as publish, read_stream, repo_root, start_worker, wait_for, Env,
};
use anom_runtime::timebase::wall_ms;

/// Waits (up to 20 s) until `stream` holds at least `n` alerts.
async fn alerts_reach(js: &async_nats::jetstream::Context, stream: &str, n: usize) -> bool {
    wait_for(Duration::from_secs(20), || async move {
        alerts(js, stream).await.len() >= n
    })
    .await
}

fn ms(at: &str) -> i64 {
    at.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// The payments rules by plain code over the whole history (every sample event falls on one
/// Berlin calendar day and far from any 5-minute pane edge that would matter).
fn expected_payment_alerts(events: &[serde_json::Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        let card = e["card"].as_str().unwrap();
        let at = ms(e["at"].as_str().unwrap());
        let history: Vec<&serde_json::Value> =
            events[..=i].iter().filter(|h| h["card"] == card).collect();
        let tx_5m = history
            .iter()
            .filter(|h| ms(h["at"].as_str().unwrap()) > at - 300_000)
            .count();
        let amounts: Vec<f64> = history
            .iter()
            .map(|h| h["amount"].as_f64().unwrap())
            .collect();
        let spent: f64 = amounts.iter().sum();
        let avg = spent / amounts.len() as f64;
        let amount = e["amount"].as_f64().unwrap();
        let mut hit = |rule: &str| {
            out.insert((
                rule.to_string(),
                card.to_string(),
                e["at"].as_str().unwrap().to_string(),
            ));
        };
        if tx_5m > 5 {
            hit("velocity");
        }
        if spent > 2000.0 {
            hit("daily_limit");
        }
        if amounts.len() >= 10 && amount > 5.0 * avg {
            hit("spike");
        }
        if history.len() >= 2 {
            let prev = history[history.len() - 2];
            if prev["country"] != e["country"] && at - ms(prev["at"].as_str().unwrap()) < 3_600_000
            {
                hit("impossible_travel");
            }
        }
    }
    out
}

/// The alert stream the hits should give: a (rule, card) alert fires on its first hit and
/// resolves on the card's next event that does not hit. Returns the firing transitions as
/// (rule, card, at of the firing event) and the number of resolutions.
fn expected_transitions(
    events: &[serde_json::Value],
    hits: &BTreeSet<(String, String, String)>,
) -> (BTreeSet<(String, String, String)>, usize) {
    let mut firing = BTreeSet::new();
    let mut resolved = 0;
    let mut active: BTreeSet<(String, String)> = BTreeSet::new();
    for e in events {
        let card = e["card"].as_str().unwrap().to_string();
        let at = e["at"].as_str().unwrap().to_string();
        for rule in ["daily_limit", "impossible_travel", "spike", "velocity"] {
            let subject = (rule.to_string(), card.clone());
            if hits.contains(&(rule.to_string(), card.clone(), at.clone())) {
                if active.insert(subject) {
                    firing.insert((rule.to_string(), card.clone(), at.clone()));
                }
            } else if active.remove(&subject) {
                resolved += 1;
            }
        }
    }
    (firing, resolved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_sample_raises_exactly_the_expected_velocity_daily_spike_and_travel_alerts() {
    payments_sample("").await;
}

/// The same pipeline with each stage a unit of its own, reading the last one's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_sample_raises_the_same_alerts_with_a_unit_per_stage() {
    payments_sample("\nunits:\n  fused: false\n").await;
}

async fn payments_sample(units: &str) {
    let env = Env::start().await;
    let yaml = std::fs::read_to_string(repo_root().join("pipelines/payments.yaml")).unwrap();
    let yaml = format!("{yaml}{units}");
    let dir = env.pipeline_dir("payments", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(repo_root().join("pipelines/samples/payments.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let expected = expected_payment_alerts(&events);
    let rules: BTreeSet<&str> = expected.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(
        rules,
        ["daily_limit", "impossible_travel", "spike", "velocity"]
            .into_iter()
            .collect()
    );
    publish(&js, "anom.payments.in", &events).await;

    // One alert per (rule, card) while it keeps hitting, resolved when it stops.
    let (expected, resolutions) = expected_transitions(&events, &expected);
    assert!(resolutions > 0, "the sample ends some conditions");
    let n = expected.len() + resolutions;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move { alerts(&js, "ANOM_PAYMENTS_ALERTS").await.len() >= n }
        })
        .await,
        "alerts arrive: expected {expected:?}, got {:?}",
        alerts(&js, "ANOM_PAYMENTS_ALERTS")
            .await
            .iter()
            .map(|a| (
                a["rule"].to_string(),
                a["key"].to_string(),
                a["event"]["at"].to_string()
            ))
            .collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = alerts(&js, "ANOM_PAYMENTS_ALERTS").await;
    let triples: BTreeSet<(String, String, String)> = got
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
                a["event"]["at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), n, "no duplicates");
    assert_eq!(
        got.iter().filter(|a| a["status"] == "resolved").count(),
        resolutions
    );
    // The event's `at` is rendered back as RFC 3339; compare as instants.
    let norm = |s: &BTreeSet<(String, String, String)>| -> BTreeSet<(String, String, i64)> {
        s.iter()
            .map(|(r, k, at)| (r.clone(), k.clone(), ms(at)))
            .collect()
    };
    assert_eq!(norm(&triples), norm(&expected));
    let velocity = got.iter().find(|a| a["rule"] == "velocity").unwrap();
    assert_eq!(
        velocity["event"]["tx_5m"], 6,
        "aggregates travel with the alert: {velocity}"
    );
    assert!(velocity["message"]
        .as_str()
        .unwrap()
        .ends_with("6 payments within 5 minutes"));
    // Fused, nothing between the stages is written to JetStream; per stage, every hop is.
    let per_stage = units.contains("fused: false");
    for stream in ["ANOM_PAYMENTS_ENRICHED", "ANOM_PAYMENTS_DETECTIONS"] {
        assert_eq!(js.get_stream(stream).await.is_ok(), per_stage, "{stream}");
    }
    worker.stop().await;
}

const SILENCE: &str = r#"
name: feeds
key: route
event_time: at
partitions: 2
allowed_lateness: 1m
units:
  publish_enriched: true
schema:
  route: { type: string, required: true }
  at:    { type: timestamp, required: true }
aggregates:
  files_today: count() over calendar day
absence:
  - name: silent
    after: 2s
    keys: [SFTP-BANK-A]
    message: "No file from {key} for {silence}"
"#;

fn feed(route: &str, at_ms: i64) -> serde_json::Value {
    serde_json::json!({"route": route, "at": jiff::Timestamp::from_millisecond(at_ms).unwrap().to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absence_fires_once_per_gap_for_declared_and_seen_keys_and_resolves_when_data_returns() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("feeds", SILENCE);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    publish(&js, "anom.feeds.in", &[feed("SFTP-BANK-B", wall_ms())]).await;

    // Both keys go silent: the declared one never spoke, the other spoke once.
    assert!(
        alerts_reach(&js, "ANOM_FEEDS_ALERTS", 2).await,
        "absence fires"
    );
    // Silent for longer: still one alert per key and gap.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing = alerts(&js, "ANOM_FEEDS_ALERTS").await;
    assert_eq!(firing.len(), 2, "{firing:?}");
    let keys: BTreeSet<&str> = firing.iter().map(|a| a["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["SFTP-BANK-A", "SFTP-BANK-B"].into_iter().collect());
    for a in &firing {
        assert_eq!(a["status"], "firing");
        assert_eq!(a["rule"], "silent");
        assert!(a["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("No file from {} for ", a["key"].as_str().unwrap())));
        assert!(
            a["explanation"].as_str().unwrap().contains("limit 2s"),
            "{a}"
        );
    }

    // B speaks again: its absence resolves, and a new gap can fire again later.
    publish(&js, "anom.feeds.in", &[feed("SFTP-BANK-B", wall_ms())]).await;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move {
                alerts(&js, "ANOM_FEEDS_ALERTS")
                    .await
                    .iter()
                    .any(|a| a["status"] == "resolved")
            }
        })
        .await,
        "absence resolves"
    );
    let all = alerts(&js, "ANOM_FEEDS_ALERTS").await;
    let resolved: Vec<_> = all.iter().filter(|a| a["status"] == "resolved").collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["key"], "SFTP-BANK-B");
    let fired_b = firing.iter().find(|a| a["key"] == "SFTP-BANK-B").unwrap();
    // The same alert, resolved: one identity through its lifecycle.
    assert_eq!(resolved[0]["id"], fired_b["id"]);
    assert!(resolved[0]["explanation"].as_str().is_some());
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move {
                alerts(&js, "ANOM_FEEDS_ALERTS")
                    .await
                    .iter()
                    .filter(|a| a["key"] == "SFTP-BANK-B" && a["status"] == "firing")
                    .count()
                    == 2
            }
        })
        .await,
        "a new gap fires again"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_go_to_the_late_subject_counted_and_leave_the_state_alone() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("feeds", &SILENCE.replace("after: 2s", "after: 1h"));
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let t = ms("2026-11-20T10:00:00Z");
    // In order, slightly out of order (within 1m), then 2 minutes late.
    let events = [
        feed("R", t),
        feed("R", t + 10_000),
        feed("R", t - 30_000),
        feed("R", t - 120_000),
        feed("R", t + 20_000),
    ];
    publish(&js, "anom.feeds.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move { read_stream(&js, "ANOM_FEEDS_ENRICHED", None).await.len() >= 4 }
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = read_stream(&js, "ANOM_LATE", Some("anom.feeds.late")).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].headers["Anom-Reason-Kind"], "late");
    assert!(
        late[0].headers["Anom-Reason"].contains("is 2m10s behind"),
        "{:?}",
        late[0].headers
    );
    let original = anom_pipeline::envelope::Envelope::decode(&late[0].payload).unwrap();
    assert_eq!(
        original.meta.event_time,
        t - 120_000,
        "the late event itself is kept"
    );
    let text = worker.metrics.encode();
    assert!(
        text.contains("anom_late_events_total{pipeline=\"feeds\",stage=\"window\"} 1"),
        "{text}"
    );
    // The four accepted events counted 1, 2, 3, 4 files today; the late one none.
    let enriched = read_stream(&js, "ANOM_FEEDS_ENRICHED", None).await;
    let counts: Vec<i64> = enriched
        .iter()
        .map(|m| {
            let env = anom_pipeline::envelope::Envelope::decode(&m.payload).unwrap();
            match env.enrichment[0] {
                anom_lang::value::Value::Int(n) => n,
                ref other => panic!("count is an int, found {other:?}"),
            }
        })
        .collect();
    assert_eq!(counts, vec![1, 2, 3, 4]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_state_survives_a_restart() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("feeds", &SILENCE.replace("after: 2s", "after: 1h"));
    let js = env.js().await;
    let t = ms("2026-11-20T10:00:00Z");
    let worker = start_worker(&env, &dir).await;
    publish(
        &js,
        "anom.feeds.in",
        &(0..5).map(|i| feed("R", t + i * 1000)).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move { read_stream(&js, "ANOM_FEEDS_ENRICHED", None).await.len() >= 5 }
        })
        .await
    );
    worker.stop().await;
    let worker = start_worker(&env, &dir).await;
    publish(&js, "anom.feeds.in", &[feed("R", t + 10_000)]).await;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let js = js.clone();
            async move { read_stream(&js, "ANOM_FEEDS_ENRICHED", None).await.len() >= 6 }
        })
        .await
    );
    let enriched = read_stream(&js, "ANOM_FEEDS_ENRICHED", None).await;
    let last = anom_pipeline::envelope::Envelope::decode(&enriched[5].payload).unwrap();
    assert_eq!(
        last.enrichment[0],
        anom_lang::value::Value::Int(6),
        "the count continues after the restart"
    );
    assert_eq!(enriched.len(), 6, "nothing reprocessed twice");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_event_clock_a_gap_in_replayed_history_fires_and_resolves_when_the_key_returns() {
    let env = Env::start().await;
    let def = SILENCE
        .replace("after: 2s", "after: 10m\n    clock: event")
        .replace("keys: [SFTP-BANK-A]", "keys: []");
    let dir = env.pipeline_dir("feeds", &def);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let t = ms("2026-11-20T10:00:00Z");
    // History replayed fast: a file every 5 minutes, then 30 minutes of silence, then files again.
    let events: Vec<_> = [0, 5, 10, 40, 45]
        .iter()
        .map(|m| feed("SFTP-BANK-A", t + m * 60_000))
        .collect();
    publish(&js, "anom.feeds.in", &events).await;
    assert!(alerts_reach(&js, "ANOM_FEEDS_ALERTS", 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = alerts(&js, "ANOM_FEEDS_ALERTS").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[1]["status"], "resolved");
    // The gap is measured in event time: silent from 10:10 to 10:40.
    assert!(
        got[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("since 2026-11-20T10:10:00Z (silent 30m, limit 10m)"),
        "{}",
        got[0]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_field_fires_once_while_it_keeps_its_value_and_resolves_when_it_changes() {
    let env = Env::start().await;
    let def = r#"
name: sensors
key: device
event_time: at
schema:
  device:      { type: string, required: true }
  temperature: { type: float, required: true }
  at:          { type: timestamp, required: true }
absence:
  - name: stuck
    stale: temperature
    after: 10m
    severity: warning
"#;
    let dir = env.pipeline_dir("sensors", def);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let t = ms("2026-11-20T10:00:00Z");
    let reading = |minute: i64, temperature: f64| {
        serde_json::json!({"device": "d1", "temperature": temperature,
            "at": jiff::Timestamp::from_millisecond(t + minute * 60_000).unwrap().to_string()})
    };
    // 4.2 from 10:00 to 10:25 (stuck from 10:10 on), then it moves again.
    let events: Vec<_> = [
        (0, 4.2),
        (5, 4.2),
        (10, 4.2),
        (15, 4.2),
        (20, 4.2),
        (25, 4.2),
        (30, 4.6),
        (35, 4.4),
    ]
    .iter()
    .map(|(m, v)| reading(*m, *v))
    .collect();
    publish(&js, "anom.sensors.in", &events).await;
    assert!(alerts_reach(&js, "ANOM_SENSORS_ALERTS", 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = alerts(&js, "ANOM_SENSORS_ALERTS").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(
        got[0]["message"],
        "d1: `temperature` has not changed for 10m"
    );
    assert!(
        got[0]["explanation"].as_str().unwrap().contains(
            "`temperature` has stayed 4.2 for key d1 since 2026-11-20T10:00:00Z (10m, limit 10m)"
        ),
        "{}",
        got[0]
    );
    assert_eq!(got[1]["status"], "resolved");
    assert_eq!(got[1]["id"], got[0]["id"], "one alert, resolved");
    assert_eq!(got[1]["event"]["temperature"], 4.6);
    worker.stop().await;
}

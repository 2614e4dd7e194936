//! End to end against a real nats-server: events in, alerts out on NATS and at a real
//! webhook receiver; bad input dead-lettered with reasons; a receiver that is down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{read_stream, repo_root, start_worker, wait_for, Env, Receiver};
use bytes::Bytes;

/// The example routes pipeline, with a webhook sink added; `route` is the body of its
/// `alerts.route` (grouping) section.
fn routes_with_webhook(url: &str, route: &str) -> String {
    let yaml = std::fs::read_to_string(repo_root().join("pipelines/routes.yaml")).unwrap();
    let sink = format!(
        "alerts:\n  route:\n{route}  sinks:\n    - type: webhook\n      name: ops\n      url: {url}\n      backoff: 100ms\n      max_backoff: 500ms\n      max_attempts: 100\n"
    );
    let replaced = yaml.replace("alerts:\n  sinks: []\n", &sink);
    assert_ne!(
        replaced, yaml,
        "routes.yaml has an empty sinks list to replace"
    );
    replaced
}

fn sample_events() -> Vec<serde_json::Value> {
    std::fs::read_to_string(repo_root().join("pipelines/samples/routes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The alert stream the routes rules must give for these events, computed here by plain
/// code: a (rule, route) alert fires on the first event that hits it and resolves on the
/// route's next event that does not. Returns (rule, route, file, status) per transition and
/// each alert's final status.
#[allow(clippy::type_complexity)]
fn expected_alerts(
    events: &[serde_json::Value],
) -> (
    BTreeSet<(String, String, String, String)>,
    BTreeMap<(String, String), String>,
) {
    let mut transitions = BTreeSet::new();
    let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut fired_on: BTreeMap<(String, String), String> = BTreeMap::new();
    for e in events {
        let route = e["route"].as_str().unwrap().to_string();
        let file = e["fileName"].as_str().unwrap().to_string();
        let status = e["status"].as_str().unwrap();
        let slow = e["durationMs"].as_i64().unwrap() > 5000 && status == "OK";
        let failed = status == "FAILED" || status == "TIMEOUT";
        for (rule, hit) in [("slow_route", slow), ("failed_route", failed)] {
            let alert = (rule.to_string(), route.clone());
            let firing = last.get(&alert).is_some_and(|s| s == "firing");
            if hit && !firing {
                transitions.insert((rule.into(), route.clone(), file.clone(), "firing".into()));
                fired_on.insert(alert.clone(), file.clone());
                last.insert(alert, "firing".into());
            } else if !hit && firing {
                // A resolved alert carries the event that ended it.
                transitions.insert((rule.into(), route.clone(), file.clone(), "resolved".into()));
                last.insert(alert, "resolved".into());
            }
        }
    }
    (transitions, last)
}

/// What the routes sample gives a webhook grouping by rule (the default) when its first 23
/// events (to 08:22) come before the first flush and the rest after it:
/// 1. `slow_route` firing: AS2-SUPPLIER-X resolved (slow at 08:07, fine at 08:11) and
///    API-PAYROLL firing (slow at 08:22). `failed_route` sends nothing: its only alert
///    (AS2 failed at 08:15) resolved at 08:19, before the group's first flush.
/// 2. `slow_route` resolved: API-PAYROLL fine again at 08:26, one group interval later.
///    AS2's TIMEOUT at 08:31 fires and resolves at 08:35 within its new group's wait: nothing.
fn sample_notifications() -> Vec<(String, BTreeSet<(String, String)>)> {
    let alerts = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect::<BTreeSet<_>>()
    };
    vec![
        (
            "slow_route".into(),
            alerts(&[("AS2-SUPPLIER-X", "resolved"), ("API-PAYROLL", "firing")]),
        ),
        ("slow_route".into(), alerts(&[("API-PAYROLL", "resolved")])),
    ]
}

fn transition(a: &serde_json::Value) -> (String, String, String, String) {
    (
        a["rule"].as_str().unwrap().to_string(),
        a["key"].as_str().unwrap().to_string(),
        a["event"]["fileName"].as_str().unwrap().to_string(),
        a["status"].as_str().unwrap().to_string(),
    )
}

async fn publish_all(js: &async_nats::jetstream::Context, subject: &str, payloads: Vec<Bytes>) {
    let mut acks = Vec::new();
    for p in payloads {
        acks.push(js.publish(subject.to_string(), p).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

async fn alerts_in_stream(js: &async_nats::jetstream::Context) -> Vec<serde_json::Value> {
    read_stream(js, "ANOM_ROUTES_ALERTS", None)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_events_raise_exactly_the_expected_alerts_on_nats_and_webhook() {
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let route = "    group_wait: 2s\n    group_interval: 2s\n";
    let dir = env.pipeline_dir("routes", &routes_with_webhook(&receiver.url(), route));
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;

    let events = sample_events();
    let (expected, last) = expected_alerts(&events);
    assert!(expected.len() >= 4, "the sample has slow and failed runs");
    assert!(
        expected.iter().any(|t| t.3 == "resolved"),
        "and routes that recover"
    );
    assert!(
        last.values().all(|s| s == "resolved"),
        "every route recovers"
    );
    let as_bytes = |events: &[serde_json::Value]| {
        events
            .iter()
            .map(|e| Bytes::from(e.to_string()))
            .collect::<Vec<_>>()
    };
    publish_all(&js, "anom.routes.in", as_bytes(&events[..23])).await;
    assert!(
        receiver.wait_for_ids(1, Duration::from_secs(30)).await,
        "the first flush notifies"
    );
    publish_all(&js, "anom.routes.in", as_bytes(&events[23..])).await;
    let want = sample_notifications();
    let arrived = receiver
        .wait_for_ids(want.len(), Duration::from_secs(30))
        .await;
    assert!(
        arrived,
        "webhook got {} of {} notifications",
        receiver.ids().len(),
        want.len()
    );
    // Anything extra would arrive within a group interval or two; give it the chance to.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let on_nats = alerts_in_stream(&js).await;
    let transitions: Vec<_> = on_nats.iter().map(transition).collect();
    assert_eq!(
        transitions.len(),
        expected.len(),
        "one alert per (rule, route), a record per change of status: {transitions:?}"
    );
    assert_eq!(transitions.into_iter().collect::<BTreeSet<_>>(), expected);

    assert_eq!(
        crate::support::notifications(&receiver),
        want,
        "exactly these notifications, in order"
    );
    let bodies = receiver.bodies.lock().unwrap().clone();
    let statuses: Vec<_> = bodies.iter().map(|(_, b)| b["status"].clone()).collect();
    assert_eq!(statuses, ["firing", "resolved"]);
    assert_eq!(bodies[0].1["group_key"], bodies[1].1["group_key"]);
    assert_eq!(
        (
            bodies[0].1["sequence"].clone(),
            bodies[1].1["sequence"].clone()
        ),
        (0.into(), 1.into())
    );
    for (headers, body) in &bodies {
        assert_eq!(
            headers.get("idempotency-key").map(String::as_str),
            body["id"].as_str()
        );
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(body["pipeline"], "routes");
        assert_eq!(body["sink"], "ops");
        assert_eq!(
            body["group_labels"],
            serde_json::json!({"rule": "slow_route"})
        );
        for a in body["alerts"].as_array().unwrap() {
            let message = a["message"].as_str().unwrap();
            let key = a["key"].as_str().unwrap();
            assert!(message.contains(key), "message names the route: {message}");
            let explanation = a["explanation"].as_str().unwrap();
            assert!(
                explanation.contains("durationMs = "),
                "explanation shows the values: {explanation}"
            );
            let on_record = on_nats.iter().rev().find(|r| r["id"] == a["id"]).unwrap();
            assert_eq!(a["starts_at"], on_record["starts_at"]);
        }
    }
    let slow = on_nats
        .iter()
        .find(|b| b["rule"] == "slow_route" && b["status"] == "firing")
        .unwrap();
    assert_eq!(
        slow["message"].as_str().unwrap(),
        format!(
            "Route {} took {} ms to deliver {} (limit 5000 ms)",
            slow["key"].as_str().unwrap(),
            slow["event"]["durationMs"],
            slow["event"]["fileName"].as_str().unwrap()
        )
    );
    assert_eq!(slow["severity"], "warning");
    assert_eq!(slow["labels"]["rule"], "slow_route");
    assert_eq!(slow["labels"]["severity"], "warning");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_reasons_and_counted_while_good_events_still_alert() {
    let env = Env::start().await;
    let dir = env.pipeline_dir(
        "routes",
        &std::fs::read_to_string(repo_root().join("pipelines/routes.yaml"))
            .unwrap()
            .replace("partitions: 4", "partitions: 2\nmax_event_bytes: 2048"),
    );
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;

    let good = |route: &str, status: &str, ms: i64| {
        serde_json::json!({"route": route, "status": status, "durationMs": ms, "fileName": format!("{route}.csv"), "finishedAt": "2026-11-20T10:00:00Z"}).to_string()
    };
    let oversized = format!(
        r#"{{"route":"BIG","status":"OK","durationMs":1,"fileName":"{}","finishedAt":"2026-11-20T10:00:00Z"}}"#,
        "x".repeat(4000)
    );
    let msgpack = rmp_serde::to_vec_named(&serde_json::json!({
        "route": "MSGPACK-ROUTE", "status": "FAILED", "durationMs": 10, "fileName": "m.csv", "finishedAt": "2026-11-20T10:00:00Z"
    }))
    .unwrap();
    let ndjson = format!(
        "{}\n{{\"route\": \"NDJSON-BAD\", \"status\": \"OK\"\n{}\n",
        good("NDJSON-1", "FAILED", 5),
        good("NDJSON-2", "OK", 9000)
    );
    let inputs: Vec<(&str, Bytes)> = vec![
        ("good", Bytes::from(good("BEFORE", "FAILED", 100))),
        (
            "decode",
            Bytes::from_static(b"{\"route\": \"X\", \"status\": "),
        ),
        (
            "schema",
            Bytes::from(
                r#"{"route":"X","status":"OK","durationMs":"slow","finishedAt":"2026-11-20T10:00:00Z"}"#,
            ),
        ),
        (
            "schema",
            Bytes::from(
                r#"{"route":"X","status":"DONE","durationMs":1,"finishedAt":"2026-11-20T10:00:00Z"}"#,
            ),
        ),
        (
            "schema",
            Bytes::from(r#"{"route":"X","durationMs":1,"finishedAt":"2026-11-20T10:00:00Z"}"#),
        ),
        (
            "schema",
            Bytes::from(
                r#"{"route":null,"status":"OK","durationMs":1,"finishedAt":"2026-11-20T10:00:00Z"}"#,
            ),
        ),
        (
            "schema",
            Bytes::from(
                r#"{"route":"X","status":"OK","durationMs":-5,"finishedAt":"2026-11-20T10:00:00Z"}"#,
            ),
        ),
        ("too_large", Bytes::from(oversized)),
        ("decode", Bytes::from_static(b"\xff\xfe not json")),
        ("good", Bytes::from(msgpack)),
        ("ndjson", Bytes::from(ndjson)),
        ("good", Bytes::from(good("AFTER", "TIMEOUT", 30000))),
    ];
    for (_, payload) in &inputs {
        js.publish("anom.routes.in", payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish("anom.routez.in", Bytes::from(good("TYPO", "FAILED", 1)))
        .await
        .unwrap()
        .await
        .unwrap();

    // 9 rejected messages + 1 bad NDJSON line + 1 for the unknown pipeline.
    let dlq_ok = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move { read_stream(&js, "ANOM_DLQ", None).await.len() >= 9 }
    })
    .await;
    assert!(dlq_ok, "dead letters arrive");
    // Five good events raise five alerts (BEFORE, MSGPACK, NDJSON-1, NDJSON-2, AFTER).
    let alerts_ok = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move { alerts_in_stream(&js).await.len() >= 5 }
    })
    .await;
    assert!(alerts_ok, "good events around the bad ones still alert");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let keys: BTreeSet<String> = alerts_in_stream(&js)
        .await
        .iter()
        .map(|a| a["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["AFTER", "BEFORE", "MSGPACK-ROUTE", "NDJSON-1", "NDJSON-2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    let dlq = read_stream(&js, "ANOM_DLQ", Some("anom.routes.dlq")).await;
    let kinds: Vec<&str> = dlq
        .iter()
        .map(|m| m.headers["Anom-Reason-Kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "decode",
            "schema",
            "schema",
            "schema",
            "schema",
            "schema",
            "too_large",
            "decode",
            "decode"
        ],
        "reasons: {:?}",
        dlq.iter()
            .map(|m| &m.headers["Anom-Reason"])
            .collect::<Vec<_>>()
    );
    let reason = |i: usize| dlq[i].headers["Anom-Reason"].clone();
    assert!(
        reason(1).contains("field `durationMs`: expected int, found string \"slow\""),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).contains("`DONE` is not one of the allowed values (OK, FAILED, TIMEOUT)"),
        "{}",
        reason(2)
    );
    assert!(
        reason(3).contains("missing required field `status`"),
        "{}",
        reason(3)
    );
    assert!(
        reason(4).contains("missing required field `route`"),
        "{}",
        reason(4)
    );
    assert!(reason(5).contains("below the minimum 0"), "{}", reason(5));
    assert!(
        reason(6).contains("larger than the pipeline's max_event_bytes (2048)"),
        "{}",
        reason(6)
    );
    // The original bytes are kept, and a bad NDJSON line is dead-lettered alone, with its line.
    assert_eq!(dlq[1].payload, inputs[2].1);
    assert_eq!(dlq[8].headers["Anom-Source-Line"], "2");
    assert_eq!(
        &dlq[8].payload[..],
        b"{\"route\": \"NDJSON-BAD\", \"status\": \"OK\""
    );

    let unknown = read_stream(&js, "ANOM_DLQ", Some("anom.routez.dlq")).await;
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].headers["Anom-Reason-Kind"], "unknown_pipeline");
    assert!(unknown[0].headers["Anom-Reason"].contains("did you mean `routes`?"));

    let text = worker.metrics.encode();
    let count = |reason: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("anom_dead_letters_total{")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("schema"), 5);
    assert_eq!(count("decode"), 3);
    assert_eq!(count("too_large"), 1);
    assert_eq!(count("unknown_pipeline"), 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_webhook_that_was_down_once_it_is_back() {
    let env = Env::start().await;
    let receiver = Receiver::start(crate::support::free_addr()).await;
    receiver.stop().await;
    let route = "    group_wait: 1s\n";
    let dir = env.pipeline_dir("routes", &routes_with_webhook(&receiver.url(), route));
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;

    // The sample to 08:22: its first notification (see `sample_notifications`).
    let events = sample_events();
    let want = vec![sample_notifications().remove(0)];
    publish_all(
        &js,
        "anom.routes.in",
        events[..23]
            .iter()
            .map(|e| Bytes::from(e.to_string()))
            .collect(),
    )
    .await;

    // The alerts are on NATS, and the sink is failing and retrying.
    let retried = wait_for(Duration::from_secs(30), || {
        let text = worker.metrics.encode();
        async move {
            text.lines().any(|l| {
                l.starts_with("anom_sink_deliveries_total{")
                    && l.contains("outcome=\"retried\"")
                    && !l.ends_with(" 0")
            })
        }
    })
    .await;
    assert!(retried, "deliveries to the stopped receiver are retried");
    assert!(receiver.ids().is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let receiver = receiver.restart().await;
    let arrived = receiver
        .wait_for_ids(want.len(), Duration::from_secs(30))
        .await;
    assert!(
        arrived,
        "every notification delivered once the receiver is back ({} of {})",
        receiver.ids().len(),
        want.len()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids = receiver.ids();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no notification delivered twice");
    assert_eq!(crate::support::notifications(&receiver), want);
    let dead = read_stream(&js, "ANOM_DLQ", None).await;
    assert!(dead.is_empty(), "nothing was dead-lettered");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_keeps_failing_gets_its_alerts_dead_lettered_after_its_attempts() {
    let env = Env::start().await;
    let failing = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    failing
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let refusing = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    refusing
        .status
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let yaml = std::fs::read_to_string(repo_root().join("pipelines/routes.yaml")).unwrap().replace(
        "alerts:\n  sinks: []\n",
        &format!(
            "alerts:\n  route:\n    group_wait: 100ms\n  sinks:\n    - type: webhook\n      name: flaky\n      url: {}\n      max_attempts: 3\n      backoff: 50ms\n    - type: webhook\n      name: strict\n      url: {}\n      max_attempts: 3\n      backoff: 50ms\n",
            failing.url(),
            refusing.url()
        ),
    );
    let dir = env.pipeline_dir("routes", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let event = r#"{"route":"R1","status":"FAILED","durationMs":1,"fileName":"f.csv","finishedAt":"2026-11-20T10:00:00Z"}"#;
    publish_all(&js, "anom.routes.in", vec![Bytes::from(event)]).await;

    let dead = wait_for(Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            read_stream(&js, "ANOM_DLQ", Some("anom.routes.dlq"))
                .await
                .len()
                >= 2
        }
    })
    .await;
    assert!(dead, "both sinks dead-letter the notification");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dlq = read_stream(&js, "ANOM_DLQ", Some("anom.routes.dlq")).await;
    assert_eq!(dlq.len(), 2);
    let alert = alerts_in_stream(&js).await[0].clone();
    for m in &dlq {
        assert_eq!(m.headers["Anom-Reason-Kind"], "delivery");
        assert_eq!(m.headers["Anom-Stage"], "sink");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            body["alerts"][0]["id"], alert["id"],
            "the notification itself is kept"
        );
    }
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|m| m.headers["Anom-Reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"sink `flaky`: 3 attempts failed, last: HTTP 503 Service Unavailable"),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"sink `strict`: HTTP 400 Bad Request"),
        "{reasons:?}"
    );
    // 503 is retried up to max_attempts; 400 is not retried at all.
    assert_eq!(failing.ids().len(), 3);
    assert_eq!(refusing.ids().len(), 1);
    worker.stop().await;
}

//! The alert lifecycle and notifications end to end, against a real nats-server, real HTTP
//! receivers and a real SMTP server: silences and inhibitions hold back exactly what they
//! should; Slack, PagerDuty and email get the alert, its acknowledgement and its resolution;
//! a burst of detections makes one alert per (rule, key) and few notifications; a worker
//! killed while notifications are in flight neither loses nor repeats one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{
    publish_events, read_stream, spawn_worker, start_worker, wait_for, Env, Receiver,
};
use anom_operators::alerting::record::Alert;
use anom_operators::alerting::store::{self, Action, Buckets, Command, ALERTS_BUCKET};
use anom_operators::alerting::Silence;
use anom_pipeline::Pipeline;
use anom_runtime::timebase::wall_ms;

const SVC: &str = r#"
name: svc
key: host
partitions: 2
schema:
  host:   { type: string, required: true }
  cpu:    { type: float, default: 0 }
  errors: { type: int, default: 0 }
rules:
  - name: cpu_high
    when: cpu > 90
    severity: warning
    message: "{host} runs at {cpu}% cpu"
  - name: errors_critical
    when: errors > 100
    severity: critical
    message: "{host} logged {errors} errors"
"#;

fn svc(alerts: &str) -> String {
    format!("{SVC}alerts:\n{alerts}")
}

fn host(name: &str, cpu: f64, errors: i64) -> serde_json::Value {
    serde_json::json!({"host": name, "cpu": cpu, "errors": errors})
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

async fn put_silence(buckets: &Buckets, s: &Silence) {
    buckets
        .silences
        .put(
            format!("{}.{}", s.pipeline, s.id),
            serde_json::to_vec(s).unwrap().into(),
        )
        .await
        .unwrap();
}

/// Per group (its `rule` label), the (key, status) of the alerts of each notification, in
/// the order they arrived.
fn by_group(receiver: &Receiver) -> BTreeMap<String, Vec<BTreeSet<(String, String)>>> {
    let mut out: BTreeMap<String, Vec<BTreeSet<(String, String)>>> = BTreeMap::new();
    for (rule, alerts) in crate::support::notifications(receiver) {
        out.entry(rule).or_default().push(alerts);
    }
    out
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_and_inhibitions_hold_back_exactly_what_they_match() {
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let yaml = svc(&format!(
        "  route:\n    group_wait: 500ms\n    group_interval: 1s\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n",
        receiver.url()
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let buckets = Buckets::open(&js, 1).await.unwrap();

    // h1's cpu alert is silenced; h3's is inhibited by its critical error alert (the default
    // inhibition: a critical alert mutes the warnings of its key).
    let mut silence = Silence {
        id: "maintenance-h1".into(),
        pipeline: "svc".into(),
        matchers: vec!["rule=cpu_high".parse().unwrap(), "key=h1".parse().unwrap()],
        starts_at: rfc3339(wall_ms() - 60_000),
        ends_at: rfc3339(wall_ms() + 3_600_000),
        created_by: "ana".into(),
        comment: "kernel upgrade".into(),
        created_at: rfc3339(wall_ms()),
    };
    put_silence(&buckets, &silence).await;
    let events = [
        host("h1", 95.0, 0),
        host("h2", 95.0, 0),
        host("h3", 95.0, 500),
    ];
    publish_events(&js, "anom.svc.in", &events).await;
    assert!(receiver.wait_for_ids(2, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        by_group(&receiver),
        BTreeMap::from([
            ("cpu_high".to_string(), vec![set(&[("h2", "firing")])]),
            (
                "errors_critical".to_string(),
                vec![set(&[("h3", "firing")])]
            ),
        ])
    );
    let on_nats = read_stream(&js, "ANOM_SVC_ALERTS", None).await;
    assert_eq!(on_nats.len(), 4, "muted alerts still fire and are listed");

    // The silence ends: h1 is news for its group.
    silence.ends_at = rfc3339(wall_ms());
    put_silence(&buckets, &silence).await;
    assert!(receiver.wait_for_ids(3, Duration::from_secs(20)).await);
    // h3's errors end: its critical alert resolves, and its cpu alert is no longer muted.
    publish_events(&js, "anom.svc.in", &[host("h3", 95.0, 0)]).await;
    assert!(receiver.wait_for_ids(5, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        by_group(&receiver),
        BTreeMap::from([
            (
                "cpu_high".to_string(),
                vec![
                    set(&[("h2", "firing")]),
                    set(&[("h1", "firing"), ("h2", "firing")]),
                    set(&[("h1", "firing"), ("h2", "firing"), ("h3", "firing")]),
                ]
            ),
            (
                "errors_critical".to_string(),
                vec![set(&[("h3", "firing")]), set(&[("h3", "resolved")])]
            ),
        ])
    );
    let text = worker.metrics.encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("anom_sink_deliveries_total{")
                && l.contains("outcome=\"delivered\"")
                && l.ends_with(" 5")),
        "{text}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_stage_starts_from_the_newest_state_even_when_an_older_write_landed_last() {
    let env = Env::start().await;
    let yaml = svc("  sinks: []\n");
    let pipeline = Pipeline::from_yaml(&yaml).unwrap();
    let rule = &pipeline.rules[0];
    let (id, labels) = anom_operators::stage::alert::identity(
        &pipeline,
        &rule.name,
        rule.severity,
        &rule.labels,
        "h1",
        None,
    );
    let js = env.js().await;
    let buckets = Buckets::open(&js, 1).await.unwrap();
    // Version 5 (7 detections), then a retried write of version 3 landing after it.
    for (version, count) in [(5, 7), (3, 2)] {
        let record = serde_json::json!({
            "id": id, "pipeline": "svc", "pipeline_version": pipeline.version,
            "rule": "cpu_high", "severity": "warning", "status": "firing", "key": "h1",
            "message": "m", "explanation": "e", "event_time": "", "ingest_time": "",
            "raised_at": rfc3339(wall_ms()), "labels": labels, "event": {},
            "source": {"stream": "ANOM_INGEST", "sequence": 1, "index": 0},
            "starts_at": rfc3339(wall_ms()), "updated_at": rfc3339(wall_ms()),
            "count": count, "version": version, "tracking": {"started": 0, "applied": 0},
        });
        buckets
            .alerts
            .put(
                format!("svc.{id}"),
                serde_json::to_vec(&record).unwrap().into(),
            )
            .await
            .unwrap();
    }
    let dir = env.pipeline_dir("svc", &yaml);
    let worker = start_worker(&env, &dir).await;
    publish_events(&js, "anom.svc.in", &[host("h1", 99.0, 0)]).await;
    // The detection folds into version 5's alert: count 8, version 6 (not 3 + 1).
    let folded = wait_for(Duration::from_secs(20), || async {
        store::get_alert(&buckets.alerts, "svc", &id)
            .await
            .unwrap()
            .is_some_and(|a| a.version == 6 && a.count == 8)
    })
    .await;
    assert!(
        folded,
        "{:?}",
        store::get_alert(&buckets.alerts, "svc", &id).await.unwrap()
    );
    assert!(
        read_stream(&js, "ANOM_SVC_ALERTS", None).await.is_empty(),
        "still the same firing alert: no new status"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_gets_the_same_notification_until_it_recovers() {
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    receiver.status.store(500, Ordering::SeqCst);
    let yaml = svc(&format!(
        "  route:\n    group_wait: 100ms\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n      backoff: 100ms\n      max_backoff: 200ms\n",
        receiver.url()
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    publish_events(&js, "anom.svc.in", &[host("h1", 99.0, 0)]).await;
    assert!(
        receiver.wait_for_ids(3, Duration::from_secs(20)).await,
        "retried while the receiver fails"
    );
    receiver.status.store(200, Ordering::SeqCst);
    let delivered = wait_for(Duration::from_secs(20), || async {
        worker.metrics.encode().lines().any(|l| {
            l.starts_with("anom_sink_deliveries_total{")
                && l.contains("outcome=\"delivered\"")
                && l.ends_with(" 1")
        })
    })
    .await;
    assert!(delivered, "delivered once it recovers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: BTreeSet<String> = receiver.ids().into_iter().collect();
    assert_eq!(
        ids.len(),
        1,
        "every attempt is the same notification: {ids:?}"
    );
    assert!(read_stream(&js, "ANOM_DLQ", None).await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_pagerduty_and_email_follow_an_alert_through_acknowledgement_and_resolution() {
    let env = Env::start().await;
    let slack = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let pager = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let smtp = crate::support::smtp::SmtpServer::start(&[]).await;
    let yaml = svc(&format!(
        "  route:\n    group_wait: 200ms\n    group_interval: 500ms\n  sinks:\n    - type: slack\n      name: chat\n      url: {}\n      rate_limit: 10/s\n    - type: pagerduty\n      name: pager\n      url: {}\n      routing_key: test-key\n    - type: email\n      name: mail\n      to: [ops@example.com]\n      from: anom@example.com\n      smtp: {{ host: 127.0.0.1, port: {}, tls: none }}\n",
        slack.url(),
        pager.url(),
        smtp.port
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let pipeline = Pipeline::from_yaml(&yaml).unwrap();

    publish_events(&js, "anom.svc.in", &[host("db-1", 10.0, 250)]).await;
    let fired = wait_for(Duration::from_secs(20), || async {
        slack.bodies.lock().unwrap().len() == 1
            && pager.bodies.lock().unwrap().len() == 1
            && smtp.received().len() == 1
    })
    .await;
    assert!(fired, "every sink hears of the alert");
    let alert: Alert = {
        let buckets = Buckets::open(&js, 1).await.unwrap();
        let all: Vec<Alert> = store::load_all(&buckets.alerts, ALERTS_BUCKET, "svc")
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        all[0].clone()
    };
    let slack_text = slack.bodies.lock().unwrap()[0].1.to_string();
    assert!(
        slack_text.contains("db-1 logged 250 errors"),
        "{slack_text}"
    );
    assert!(
        // Slack's markup escapes `>`.
        slack_text.contains("`errors &gt; 100` held for key db-1: errors = 250"),
        "Slack shows why: {slack_text}"
    );
    let trigger = pager.bodies.lock().unwrap()[0].1.clone();
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], alert.id.as_str());
    assert_eq!(trigger["routing_key"], "test-key");
    assert_eq!(trigger["payload"]["severity"], "critical");
    let (_, mail) = &smtp.received()[0];
    let mail = String::from_utf8_lossy(mail).to_string();
    assert!(
        mail.contains("Subject: [FIRING:1] svc: errors_critical (critical)"),
        "{mail}"
    );

    // Acknowledged: PagerDuty is told; people in Slack and mail are not paged again.
    let command = |action, request: &str| Command {
        alert: alert.id.clone(),
        action,
        by: "ana".into(),
        comment: "looking".into(),
        request: request.into(),
    };
    store::send_command(&js, &pipeline, "db-1", &command(Action::Acknowledge, "r1"))
        .await
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || async {
            pager.bodies.lock().unwrap().len() == 2
        })
        .await,
        "PagerDuty hears of the acknowledgement"
    );
    let ack = pager.bodies.lock().unwrap()[1].1.clone();
    assert_eq!(ack["event_action"], "acknowledge");
    assert_eq!(ack["dedup_key"], alert.id.as_str());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(slack.bodies.lock().unwrap().len(), 1);
    assert_eq!(smtp.received().len(), 1);

    // Resolved by hand: every sink hears of it.
    store::send_command(&js, &pipeline, "db-1", &command(Action::Resolve, "r2"))
        .await
        .unwrap();
    let resolved = wait_for(Duration::from_secs(20), || async {
        slack.bodies.lock().unwrap().len() == 2
            && pager.bodies.lock().unwrap().len() == 3
            && smtp.received().len() == 2
    })
    .await;
    assert!(resolved, "every sink hears of the resolution");
    assert_eq!(pager.bodies.lock().unwrap()[2].1["event_action"], "resolve");
    let (_, mail) = &smtp.received()[1];
    assert!(String::from_utf8_lossy(mail).contains("Subject: [RESOLVED] svc: errors_critical"));

    let changes: Vec<serde_json::Value> = read_stream(&js, "ANOM_SVC_ALERTS", None)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let statuses: Vec<&str> = changes
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "acknowledged", "resolved"]);
    let last = &changes[2];
    assert_eq!(last["acknowledged_by"], "ana");
    assert_eq!(last["resolved_by"], "resolved by ana: looking");
    let by: Vec<&str> = last["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["anom", "ana", "ana"]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_detections_makes_one_alert_per_rule_and_key_and_few_notifications() {
    const KEYS: usize = 1_000;
    const EVENTS: usize = 20_000;
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let yaml = svc(&format!(
        "  route:\n    group_wait: 1s\n    group_interval: 1s\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n",
        receiver.url()
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let worker = start_worker(&env, &dir).await;
    let js = env.js().await;
    let events: Vec<serde_json::Value> = (0..EVENTS)
        .map(|i| host(&format!("h{}", i % KEYS), 91.0 + (i % 9) as f64, 0))
        .collect();
    for chunk in events.chunks(2_000) {
        publish_events(&js, "anom.svc.in", chunk).await;
    }

    // Every detection is folded into its alert: the counts add up to the events.
    let buckets = Buckets::open(&js, 1).await.unwrap();
    let counted = wait_for(Duration::from_secs(120), || async {
        let all: Vec<Alert> = store::load_all(&buckets.alerts, ALERTS_BUCKET, "svc")
            .await
            .unwrap_or_default();
        all.iter().map(|a| a.count).sum::<u64>() == EVENTS as u64
    })
    .await;
    let all: Vec<Alert> = store::load_all(&buckets.alerts, ALERTS_BUCKET, "svc")
        .await
        .unwrap();
    assert!(
        counted,
        "{} alerts count {} detections",
        all.len(),
        all.iter().map(|a| a.count).sum::<u64>()
    );
    assert_eq!(all.len(), KEYS);
    assert!(all.iter().all(|a| a.count == (EVENTS / KEYS) as u64));
    let on_nats = read_stream(&js, "ANOM_SVC_ALERTS", None).await;
    assert_eq!(on_nats.len(), KEYS, "one firing alert per (rule, key)");

    // One group (by rule): its first flush and at most a few more as alerts keep arriving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let groups = by_group(&receiver);
    let notifications = &groups["cpu_high"];
    assert!(
        notifications.len() <= 5,
        "a bounded number of notifications: {}",
        notifications.len()
    );
    let keys: BTreeSet<&String> = notifications
        .iter()
        .flat_map(|n| n.iter().map(|(k, _)| k))
        .collect();
    assert_eq!(keys.len(), KEYS, "every alert was notified");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_notifications_in_flight_sends_each_once_after_restart() {
    const HOSTS: usize = 10;
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    // Slow to answer: the notifications are in flight when the worker dies.
    receiver.delay_ms.store(5_000, Ordering::SeqCst);
    let yaml = svc(&format!(
        "  route:\n    group_by: ['...']\n    group_wait: 100ms\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n      timeout: 20s\n",
        receiver.url()
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let js = env.js().await;
    let mut worker = spawn_worker(&env.url(), &dir);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_SVC_ALERTS").await.is_ok()
        })
        .await
    );
    let events: Vec<_> = (0..HOSTS)
        .map(|i| host(&format!("h{i}"), 99.0, 0))
        .collect();
    publish_events(&js, "anom.svc.in", &events).await;
    assert!(
        receiver.wait_for_ids(4, Duration::from_secs(30)).await,
        "notifications are on their way"
    );
    let in_flight: BTreeSet<String> = receiver.ids().into_iter().collect();
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();

    receiver.delay_ms.store(0, Ordering::SeqCst);
    let mut worker = spawn_worker(&env.url(), &dir);
    // Every group notified, and what was in flight at the kill sent again: the restarted
    // notifier first waits out its predecessor's request (sink timeout + 1 s), so when all
    // ten were in flight, "all ids seen" alone held before any resend.
    let all_in = wait_for(Duration::from_secs(90), || async {
        let by_id = receiver.bodies_by_id();
        by_id.len() == HOSTS
            && in_flight
                .iter()
                .all(|id| by_id.get(id).is_some_and(|c| c.len() >= 2))
    })
    .await;
    assert!(
        all_in,
        "every group notified: {:?}",
        receiver.bodies_by_id().keys()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let by_id = receiver.bodies_by_id();
    assert_eq!(by_id.len(), HOSTS, "one notification per group, none new");
    for (id, copies) in &by_id {
        assert!(
            copies.iter().all(|c| c["alerts"] == copies[0]["alerts"]),
            "a re-sent notification is the same one: {id}"
        );
        assert_eq!(copies[0]["sequence"], 0);
    }
    // What was in flight at the kill was sent again, with its id (receivers drop repeats by
    // the Idempotency-Key); what had not left yet was sent once.
    for id in &in_flight {
        assert_eq!(by_id[id].len(), 2, "{id} re-sent once after the restart");
    }
    assert!(by_id.values().all(|copies| copies.len() <= 2));
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

/// A worker that stops (SIGTERM: a rollout, a scale-down) while notifications are in flight
/// lets each finish and logs it: after the restart nothing is sent twice, and nothing is
/// lost. Only a crash (the test above) can repeat one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_notifications_in_flight_sends_each_exactly_once() {
    const HOSTS: usize = 10;
    let env = Env::start().await;
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    receiver.delay_ms.store(3_000, Ordering::SeqCst);
    let yaml = svc(&format!(
        "  route:\n    group_by: ['...']\n    group_wait: 100ms\n  sinks:\n    - type: webhook\n      name: ops\n      url: {}\n      timeout: 5s\n",
        receiver.url()
    ));
    let dir = env.pipeline_dir("svc", &yaml);
    let js = env.js().await;
    let mut worker = spawn_worker(&env.url(), &dir);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_SVC_ALERTS").await.is_ok()
        })
        .await
    );
    let events: Vec<_> = (0..HOSTS)
        .map(|i| host(&format!("h{i}"), 99.0, 0))
        .collect();
    publish_events(&js, "anom.svc.in", &events).await;
    assert!(
        receiver.wait_for_ids(4, Duration::from_secs(30)).await,
        "notifications are on their way"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = worker.wait().await.unwrap();
    assert!(status.success(), "a clean stop: {status:?}");

    receiver.delay_ms.store(0, Ordering::SeqCst);
    let mut worker = spawn_worker(&env.url(), &dir);
    let all_in = wait_for(Duration::from_secs(60), || async {
        receiver.ids().into_iter().collect::<BTreeSet<_>>().len() == HOSTS
    })
    .await;
    assert!(all_in, "every group notified: {:?}", receiver.ids());
    // Longer than a notification found pending would wait for its earlier owner before
    // being re-sent (the sink's timeout + 1 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let by_id = receiver.bodies_by_id();
    assert_eq!(by_id.len(), HOSTS, "one notification per group, none new");
    for (id, copies) in &by_id {
        assert_eq!(copies.len(), 1, "{id} sent once");
    }
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

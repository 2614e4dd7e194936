//! The sinks against real receivers on 127.0.0.1: an HTTP server (axum) stands in for a
//! webhook receiver, Slack and PagerDuty, answering what each test asks; a real SMTP server
//! (aiosmtpd, scripts/smtp/server.py in the project's own virtualenv) receives the mails.
//! Each test sends one notification and checks what arrived and the delivery outcome.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anom_operators::alerting::record::{Alert, AlertStatus, Detection, Source};
use anom_operators::alerting::{GroupStatus, Notification};
use anom_operators::sink::{AnySink, Delivery};
use anom_pipeline::{Pipeline, Severity, SinkDef};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{KeyInit, Mac};
use serde_json::Value;

const HOOK_SECRET: &str = "s3cr3t-for-the-hook";
const PD_KEY: &str = "R0UTING0KEY0FOR0TESTS000000000000";

/// Every test starts here: the environment variables the sinks read are set before any test
/// does anything else (setting them while another thread reads the environment is unsound).
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("ANOM_TEST_HOOK_SECRET", HOOK_SECRET);
        std::env::set_var("ANOM_TEST_PD_KEY", PD_KEY);
        std::env::set_var("ANOM_TEST_SMTP_PASSWORD", "hunter2");
    });
}

/// Builds the one sink declared by `sink` (YAML, the entry of `alerts.sinks`).
fn build(sink: &str) -> AnySink {
    let yaml =
        format!(
        "name: payments\nkey: account\nschema:\n  account: {{ type: string, required: true }}\n  \
         amount: {{ type: float, required: true }}\nrules:\n  - name: big_spend\n    \
         when: amount > 5000\nalerts:\n  sinks:\n{}",
        sink.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let p = Pipeline::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let def: &SinkDef = &p.sinks[0];
    AnySink::build(def).unwrap_or_else(|e| panic!("{e}"))
}

fn alert(i: usize, status: AlertStatus) -> Alert {
    let key = format!("acct-{i}");
    Alert {
        id: format!("a{i:04}f00d"),
        pipeline: "payments".into(),
        pipeline_version: "1".into(),
        rule: "big_spend".into(),
        severity: if i == 0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        status,
        key: key.clone(),
        message: format!("{key} spent 9000 <EUR> & more"),
        explanation: format!("amount 9000 > 5000 (alert {i})"),
        event_time: "2026-05-01T10:00:00Z".into(),
        ingest_time: "2026-05-01T10:00:01Z".into(),
        raised_at: "2026-05-01T10:00:01Z".into(),
        labels: BTreeMap::from([
            ("rule".to_string(), "big_spend".to_string()),
            ("key".to_string(), key.clone()),
        ]),
        event: serde_json::json!({"account": key, "amount": 9000.0})
            .as_object()
            .unwrap()
            .clone(),
        source: Source {
            stream: "ANOM_payments".into(),
            sequence: 42,
            index: 0,
        },
        detection: (i == 0).then(|| Detection {
            kind: "robust_zscore".into(),
            score: 7.25,
            threshold: Some(3.5),
            contributions: vec![],
        }),
        verdict: None,
        starts_at: "2026-05-01T10:00:01Z".into(),
        updated_at: "2026-05-01T10:00:01Z".into(),
        ends_at: (status == AlertStatus::Resolved).then(|| "2026-05-01T11:00:00Z".into()),
        count: 3,
        acknowledged_by: (status == AlertStatus::Acknowledged).then(|| "ana".into()),
        acknowledged_at: None,
        resolved_by: None,
        history: vec![],
        version: 1,
        tracking: Default::default(),
    }
}

fn notification(alerts: Vec<Alert>) -> Notification {
    let status = if alerts.iter().any(|a| a.status.is_active()) {
        GroupStatus::Firing
    } else {
        GroupStatus::Resolved
    };
    Notification {
        id: "payments.ops.3f2a.7".into(),
        pipeline: "payments".into(),
        sink: "ops".into(),
        status,
        group_key: "0:rule=big_spend".into(),
        group_labels: BTreeMap::from([("rule".to_string(), "big_spend".to_string())]),
        alerts,
        sequence: 7,
        sent_at: "2026-05-01T10:00:11Z".into(),
    }
}

fn firing(n: usize) -> Notification {
    notification((0..n).map(|i| alert(i, AlertStatus::Firing)).collect())
}

// ---------------------------------------------------------------------------------------
// The HTTP receiver.

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the receiver answers to its `n`th request (from 0): a status and a body.
type Answer = dyn Fn(usize) -> (u16, &'static str) + Send + Sync;

struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port), answers with `answer` after `delay`.
    async fn start(
        answer: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
        delay: Duration,
    ) -> Receiver {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let seen = requests.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                let answer = answer.clone();
                async move {
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Request {
                            path: uri.path().to_string(),
                            headers,
                            body,
                        });
                        seen.len() - 1
                    };
                    tokio::time::sleep(delay).await;
                    let (status, body) = answer(n);
                    (StatusCode::from_u16(status).unwrap(), body)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            requests,
            task,
        }
    }

    async fn answering(status: u16, body: &'static str) -> Receiver {
        Receiver::start(move |_| (status, body), Duration::ZERO).await
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn assert_retry(d: &Delivery, reason_contains: &str) {
    match d {
        Delivery::Retry(r) if r.contains(reason_contains) => {}
        other => panic!("expected Retry(..{reason_contains}..), found {other:?}"),
    }
}

fn assert_fail(d: &Delivery, reason_contains: &str) {
    match d {
        Delivery::Fail(r) if r.contains(reason_contains) => {}
        other => panic!("expected Fail(..{reason_contains}..), found {other:?}"),
    }
}

fn hex_hmac(secret: &[u8], message: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Webhook.

#[tokio::test]
async fn webhook_posts_the_notification_signed_with_its_id_as_idempotency_key() {
    init();
    let r = Receiver::answering(204, "").await;
    let sink = build(&format!(
        "- type: webhook\n  name: ops\n  url: {}/hook\n  secret_env: ANOM_TEST_HOOK_SECRET\n  \
         headers: {{ X-Team: payments }}",
        r.url
    ));
    let n = firing(2);
    assert_eq!(sink.send(&n).await, Delivery::Delivered);
    let got = r.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.path, "/hook");
    assert_eq!(req.headers["idempotency-key"], "payments.ops.3f2a.7");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-team"], "payments");
    let back: Notification = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(back, n);

    // The receiver's check: recompute the MAC over "<t>.<body>" and compare; `t` is recent.
    let sig = req.headers["x-anom-signature"].to_str().unwrap();
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("expected `t=<t>,v1=<hex>`, found `{sig}`"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t.parse::<u64>().unwrap()) < 60, "{sig}");
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&req.body);
    assert_eq!(v1, hex_hmac(HOOK_SECRET.as_bytes(), &signed));
    assert_ne!(v1, hex_hmac(b"another secret", &signed));
}

#[tokio::test]
async fn webhook_without_a_secret_is_unsigned_and_an_unset_secret_env_is_an_error() {
    init();
    let r = Receiver::answering(200, "").await;
    let sink = build(&format!("- type: webhook\n  name: ops\n  url: {}/", r.url));
    assert_eq!(sink.send(&firing(1)).await, Delivery::Delivered);
    assert!(r.requests()[0].headers.get("x-anom-signature").is_none());

    let yaml = format!(
        "name: p\nkey: k\nschema:\n  k: string\nalerts:\n  sinks:\n    - type: webhook\n      \
         name: ops\n      url: {}/\n      secret_env: ANOM_TEST_NEVER_SET_9F3B\n",
        r.url
    );
    let p = Pipeline::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let e = AnySink::build(&p.sinks[0])
        .err()
        .expect("an unset secret_env is refused");
    assert_eq!(
        e.to_string(),
        "sink `ops`: environment variable `ANOM_TEST_NEVER_SET_9F3B` (from `secret_env`) is not \
         set; expected the secret"
    );
}

#[tokio::test]
async fn webhook_retries_server_errors_and_fails_client_errors() {
    init();
    let r = Receiver::answering(500, "boom").await;
    let sink = build(&format!("- type: webhook\n  name: ops\n  url: {}/", r.url));
    assert_retry(&sink.send(&firing(1)).await, "500");

    let r = Receiver::answering(400, "bad").await;
    let sink = build(&format!("- type: webhook\n  name: ops\n  url: {}/", r.url));
    assert_fail(&sink.send(&firing(1)).await, "400");
}

#[tokio::test]
async fn webhook_retries_a_closed_port() {
    init();
    // Bound then dropped: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink = build(&format!(
        "- type: webhook\n  name: ops\n  url: http://127.0.0.1:{port}/\n  timeout: 2s"
    ));
    let started = Instant::now();
    let d = sink.send(&firing(1)).await;
    assert!(matches!(d, Delivery::Retry(_)), "{d:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn webhook_retries_a_receiver_slower_than_its_timeout() {
    init();
    let r = Receiver::start(|_| (200, ""), Duration::from_secs(3)).await;
    let sink = build(&format!(
        "- type: webhook\n  name: ops\n  url: {}/\n  timeout: 300ms",
        r.url
    ));
    let started = Instant::now();
    assert_retry(&sink.send(&firing(1)).await, "timed out");
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// Slack.

#[tokio::test]
async fn slack_posts_a_title_and_each_alert_with_why_it_fired() {
    init();
    let r = Receiver::answering(200, "ok").await;
    let sink = build(&format!(
        "- type: slack\n  name: chat\n  url: {}/services/T0/B0/x\n  channel: '#payments'\n  \
         username: anom",
        r.url
    ));
    let mut alerts: Vec<Alert> = (0..12).map(|i| alert(i, AlertStatus::Firing)).collect();
    alerts[1].status = AlertStatus::Acknowledged;
    alerts[1].acknowledged_by = Some("ana".into());
    let n = notification(alerts);
    assert_eq!(sink.send(&n).await, Delivery::Delivered);
    let body = r.requests()[0].json();
    assert_eq!(body["text"], n.title());
    assert_eq!(body["text"], "[FIRING:12] payments: big_spend (critical)");
    assert_eq!(body["channel"], "#payments");
    assert_eq!(body["username"], "anom");
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["color"], "#d62728", "critical is red");
    let texts: Vec<String> = attachment["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["text"]["text"]
                .as_str()
                .or(b["elements"][0]["text"].as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    // Title, 10 alerts, "and 2 more", the footer.
    assert_eq!(texts.len(), 13, "{texts:#?}");
    assert!(texts[0].contains("[FIRING:12] payments"));
    let first = &texts[1];
    for part in [
        "*critical*",
        "`acct-0`",
        "firing",
        "acct-0 spent 9000 &lt;EUR&gt; &amp; more",
        "_Why:_ amount 9000 &gt; 5000 (alert 0)",
        "robust_zscore score 7.25 (threshold 3.50)",
    ] {
        assert!(first.contains(part), "{part:?} not in {first:?}");
    }
    assert!(texts[2].contains("acknowledged by ana"), "{}", texts[2]);
    assert!(texts[10].contains("amount 9000 &gt; 5000 (alert 9)"));
    assert_eq!(texts[11], "and 2 more");
    assert!(texts[12].contains("notification payments.ops.3f2a.7"));
}

#[tokio::test]
async fn slack_colours_a_resolved_group_green() {
    init();
    let r = Receiver::answering(200, "ok").await;
    let sink = build(&format!("- type: slack\n  name: chat\n  url: {}/", r.url));
    let n = notification(vec![alert(0, AlertStatus::Resolved)]);
    assert_eq!(sink.send(&n).await, Delivery::Delivered);
    let body = r.requests()[0].json();
    assert!(body["text"].as_str().unwrap().starts_with("[RESOLVED]"));
    assert_eq!(body["attachments"][0]["color"], "#2eb886");
    assert!(body.get("channel").is_none());
}

#[tokio::test]
async fn slack_retries_its_rate_limit_and_fails_what_it_refuses() {
    init();
    for (status, answer, retry) in [
        (429, "rate_limited", true),
        (500, "rollup_error", true),
        (404, "no_service", false),
        (400, "invalid_payload", false),
        (403, "action_prohibited", false),
    ] {
        let r = Receiver::answering(status, answer).await;
        let sink = build(&format!("- type: slack\n  name: chat\n  url: {}/", r.url));
        let d = sink.send(&firing(1)).await;
        if retry {
            assert_retry(&d, answer);
        } else {
            assert_fail(&d, answer);
        }
    }
}

// ---------------------------------------------------------------------------------------
// PagerDuty.

fn pagerduty(url: &str) -> AnySink {
    build(&format!(
        "- type: pagerduty\n  name: pd\n  routing_key_env: ANOM_TEST_PD_KEY\n  url: {url}/v2/enqueue"
    ))
}

#[tokio::test]
async fn pagerduty_sends_one_event_per_alert_with_its_action_and_dedup_key() {
    init();
    let r = Receiver::answering(
        202,
        r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#,
    )
    .await;
    let sink = pagerduty(&r.url);
    let n = notification(vec![
        alert(0, AlertStatus::Firing),
        alert(1, AlertStatus::Acknowledged),
        alert(2, AlertStatus::Resolved),
    ]);
    assert_eq!(sink.send(&n).await, Delivery::Delivered);
    let events: Vec<Value> = r.requests().iter().map(|r| r.json()).collect();
    assert_eq!(events.len(), 3);
    assert!(r.requests().iter().all(|r| r.path == "/v2/enqueue"));
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "acknowledge", "resolve"]);
    for (e, a) in events.iter().zip(&n.alerts) {
        assert_eq!(e["dedup_key"], a.id.as_str());
        assert_eq!(e["routing_key"], PD_KEY);
    }
    let p = &events[0]["payload"];
    assert_eq!(p["summary"], "acct-0 spent 9000 <EUR> & more");
    assert_eq!(p["source"], "acct-0");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["component"], "payments");
    assert_eq!(p["group"], "big_spend");
    assert_eq!(p["class"], "robust_zscore");
    assert_eq!(p["timestamp"], "2026-05-01T10:00:01Z");
    let details = &p["custom_details"];
    assert_eq!(details["explanation"], "amount 9000 > 5000 (alert 0)");
    assert_eq!(details["labels"]["key"], "acct-0");
    assert_eq!(details["count"], 3);
    assert_eq!(details["event"]["amount"], 9000.0);
    assert_eq!(details["detection"]["score"], 7.25);
    // Only a trigger carries a payload.
    assert!(events[1].get("payload").is_none() && events[2].get("payload").is_none());
}

#[tokio::test]
async fn pagerduty_cuts_long_summaries_to_its_limit() {
    init();
    let r = Receiver::answering(202, "{}").await;
    let mut a = alert(1, AlertStatus::Firing);
    a.message = "é".repeat(2000);
    assert_eq!(
        pagerduty(&r.url).send(&notification(vec![a])).await,
        Delivery::Delivered
    );
    let summary = r.requests()[0].json()["payload"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(summary.chars().count(), 1024);
    assert_eq!(r.requests()[0].json()["payload"]["severity"], "warning");
}

#[tokio::test]
async fn pagerduty_retries_throttling_and_fails_invalid_events() {
    init();
    // Throttled at the second event: the attempt stops there and asks for a retry.
    let r = Receiver::start(
        |n| {
            if n == 1 {
                (429, r#"{"status":"throttle event"}"#)
            } else {
                (202, "{}")
            }
        },
        Duration::ZERO,
    )
    .await;
    assert_retry(&pagerduty(&r.url).send(&firing(3)).await, "429");
    assert_eq!(r.requests().len(), 2);

    let r = Receiver::answering(503, "").await;
    assert_retry(&pagerduty(&r.url).send(&firing(1)).await, "503");

    let r = Receiver::answering(
        400,
        r#"{"status":"invalid event","message":"Event object is invalid"}"#,
    )
    .await;
    let d = pagerduty(&r.url).send(&firing(2)).await;
    assert_fail(&d, "Event object is invalid");
    // Both were tried: an invalid event does not hold back the others.
    assert_eq!(r.requests().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Email, through a real SMTP server.

fn email_sink(port: u16, extra: &str) -> AnySink {
    build(&format!(
        "- type: email\n  name: mail\n  to: [ops@example.com, 'Ana Lyst <ana@example.org>']\n  \
         from: 'Anom <anom@example.com>'\n  smtp: {{ host: 127.0.0.1, port: {port}, tls: none{extra} }}\n  \
         timeout: 5s"
    ))
}

#[tokio::test]
async fn email_sends_text_and_html_with_every_alert_and_why() {
    init();
    let smtp = anom_testkit::smtp::SmtpServer::start(&["--auth", "anom:hunter2"]).await;
    let sink = email_sink(
        smtp.port,
        ", username: anom, password_env: ANOM_TEST_SMTP_PASSWORD",
    );
    let mut alerts = vec![
        alert(0, AlertStatus::Firing),
        alert(1, AlertStatus::Resolved),
    ];
    alerts[1].key = "<script>alert(1)</script>".into();
    let n = notification(alerts);
    assert_eq!(sink.send(&n).await, Delivery::Delivered);

    let received = smtp.received();
    assert_eq!(received.len(), 1);
    let (envelope, raw) = &received[0];
    assert_eq!(envelope["mail_from"], "anom@example.com");
    assert_eq!(
        envelope["rcpt_tos"],
        serde_json::json!(["ops@example.com", "ana@example.org"])
    );
    assert_eq!(
        envelope["user"], "anom",
        "logged in with the password from the environment"
    );

    let m = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parsable message");
    assert_eq!(m.subject(), Some(n.title().as_str()));
    assert_eq!(
        m.subject(),
        Some("[FIRING:1] payments: big_spend (critical)")
    );
    let to: Vec<&str> = m
        .to()
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|a| a.address.as_deref().unwrap())
        .collect();
    assert_eq!(to, ["ops@example.com", "ana@example.org"]);
    assert_eq!(
        m.from().unwrap().first().unwrap().name.as_deref(),
        Some("Anom")
    );
    assert_eq!(m.message_id(), Some("payments.ops.3f2a.7@example.com"));
    assert_eq!(
        m.header_raw("X-Anom-Notification-Id").map(str::trim),
        Some("payments.ops.3f2a.7")
    );
    assert!(m
        .header_raw("Content-Type")
        .unwrap()
        .contains("multipart/alternative"));

    let text = m.body_text(0).unwrap();
    for part in [
        "[FIRING:1] payments: big_spend (critical)",
        "Group: rule=big_spend",
        "critical · acct-0 · firing",
        "acct-0 spent 9000 <EUR> & more",
        "Why: amount 9000 > 5000 (alert 0)",
        "Score: robust_zscore score 7.25 (threshold 3.50)",
        "Why: amount 9000 > 5000 (alert 1)",
        "Ended: 2026-05-01T11:00:00Z",
        "Notification payments.ops.3f2a.7 (number 8 of this group)",
    ] {
        assert!(
            text.contains(part),
            "{part:?} not in the text part:\n{text}"
        );
    }
    let html = m.body_html(0).unwrap();
    for part in [
        "<table",
        "<th>Why</th>",
        "acct-0 spent 9000 &lt;EUR&gt; &amp; more",
        "amount 9000 &gt; 5000 (alert 0)",
        "amount 9000 &gt; 5000 (alert 1)",
        "<td>2026-05-01T10:00:01Z</td><td>2026-05-01T11:00:00Z</td>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(
            html.contains(part),
            "{part:?} not in the HTML part:\n{html}"
        );
    }
    assert!(!html.contains("<script>"), "the key is escaped:\n{html}");
}

#[tokio::test]
async fn email_retries_a_transient_refusal_then_delivers() {
    init();
    let smtp =
        anom_testkit::smtp::SmtpServer::start(&["--fail-code", "451", "--fail-count", "1"]).await;
    let sink = email_sink(smtp.port, "");
    assert_retry(&sink.send(&firing(1)).await, "451");
    assert!(smtp.received().is_empty());
    assert_eq!(sink.send(&firing(1)).await, Delivery::Delivered);
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn email_fails_a_permanent_refusal() {
    init();
    let smtp =
        anom_testkit::smtp::SmtpServer::start(&["--fail-code", "550", "--fail-count", "1"]).await;
    assert_fail(&email_sink(smtp.port, "").send(&firing(1)).await, "550");
}

#[tokio::test]
async fn email_retries_when_no_server_listens_or_starttls_is_missing() {
    init();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = email_sink(port, "").send(&firing(1)).await;
    assert!(matches!(d, Delivery::Retry(_)), "{d:?}");

    // `tls: starttls` (the default) refuses a server that does not offer STARTTLS, rather
    // than sending in clear: a configuration error, not worth retrying.
    let smtp = anom_testkit::smtp::SmtpServer::start(&[]).await;
    let sink = build(&format!(
        "- type: email\n  name: mail\n  to: [ops@example.com]\n  from: anom@example.com\n  \
         smtp: {{ host: 127.0.0.1, port: {} }}",
        smtp.port
    ));
    assert_fail(&sink.send(&firing(1)).await, "STARTTLS");
    assert!(smtp.received().is_empty());
}

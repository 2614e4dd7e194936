//! Sends each alert of a notification to PagerDuty's Events API v2, one event per alert.
//!
//! The alert's id is the event's `dedup_key`, so PagerDuty keeps one incident per alert: a
//! firing alert `trigger`s it (again: PagerDuty folds repeats into the open incident), an
//! acknowledged one `acknowledge`s it and a resolved one `resolve`s it. Only a trigger carries
//! a `payload` (summary, source, severity, component, group, class, custom details).
//!
//! PagerDuty answers 202. 429 (its throttling) and 5xx are retried, 400 (an invalid event)
//! fails. Events are sent one by one: at the first retryable answer the attempt stops and
//! asks for a retry, which re-sends every event of the notification; the ones already
//! accepted are harmless repeats under their dedup key.

use serde_json::{json, Value};

use super::render::{self, truncate};
use super::{http_client, http_delivery, Delivery};
use crate::alerting::record::{Alert, AlertStatus};
use crate::alerting::Notification;
use anom_pipeline::{PagerDutyDef, Severity};

/// PagerDuty's limits on a summary and a dedup key.
const SUMMARY_CHARS: usize = 1024;
const DEDUP_KEY_CHARS: usize = 255;

pub struct PagerDuty {
    name: String,
    url: reqwest::Url,
    routing_key: String,
    client: reqwest::Client,
}

impl PagerDuty {
    pub fn new(def: &PagerDutyDef) -> Result<PagerDuty, String> {
        let routing_key = super::secret(
            def.routing_key.as_ref(),
            def.routing_key_env.as_deref(),
            "routing_key_env",
        )?
        .ok_or("expected `routing_key` or `routing_key_env`")?;
        Ok(PagerDuty {
            name: def.name.clone(),
            url: reqwest::Url::parse(&def.url).map_err(|e| format!("bad url: {e}"))?,
            routing_key,
            client: http_client(def.timeout)?,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, n: &Notification) -> Delivery {
        let mut failed = Vec::new();
        for a in &n.alerts {
            let request = self.client.post(self.url.clone()).json(&self.event(n, a));
            match http_delivery(request.send().await).await {
                Delivery::Delivered => {}
                Delivery::Retry(reason) => {
                    return Delivery::Retry(format!("alert {}: {reason}", a.id));
                }
                Delivery::Fail(reason) => failed.push(format!("alert {}: {reason}", a.id)),
            }
        }
        if failed.is_empty() {
            Delivery::Delivered
        } else {
            Delivery::Fail(failed.join("; "))
        }
    }

    /// The event for alert `a` of `n`.
    pub fn event(&self, n: &Notification, a: &Alert) -> Value {
        let action = match a.status {
            AlertStatus::Firing => "trigger",
            AlertStatus::Acknowledged => "acknowledge",
            AlertStatus::Resolved => "resolve",
        };
        let mut event = json!({
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": truncate(&a.id, DEDUP_KEY_CHARS),
        });
        if a.status == AlertStatus::Firing {
            event["payload"] = payload(n, a);
            event["client"] = json!("Anom");
        }
        event
    }
}

fn payload(n: &Notification, a: &Alert) -> Value {
    let summary = if a.message.trim().is_empty() {
        format!("{}: {} on {}", n.pipeline, a.rule, a.key)
    } else {
        a.message.clone()
    };
    let mut details = json!({
        "explanation": a.explanation,
        "labels": a.labels,
        "count": a.count,
        "event": a.event,
        "pipeline": n.pipeline,
        "rule": a.rule,
        "key": a.key,
    });
    if let Some(d) = &a.detection {
        details["detection"] = json!(d);
        details["score"] = json!(render::detection(d));
    }
    let mut payload = json!({
        "summary": truncate(&summary, SUMMARY_CHARS),
        // PagerDuty requires a non-empty source.
        "source": if a.key.is_empty() { &n.pipeline } else { &a.key },
        "severity": match a.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        },
        "component": n.pipeline,
        "group": a.rule,
        "class": a.detection.as_ref().map_or("rule", |d| d.kind.as_str()),
        "custom_details": details,
    });
    // An ISO 8601 time; PagerDuty refuses the event when it is malformed.
    if !a.starts_at.is_empty() && a.starts_at.parse::<jiff::Timestamp>().is_ok() {
        payload["timestamp"] = json!(a.starts_at);
    }
    payload
}

//! Sinks: where notifications go besides the pipeline's NATS alert stream. Each sink of a
//! pipeline is run by its own notifier (`alerting::notifier`), which routes, groups, silences
//! and retries; a sink only turns one [`Notification`] into one delivery attempt.
//!
//! - [`webhook`]: the notification as JSON, optionally HMAC-signed;
//! - [`slack`]: a message through an incoming webhook;
//! - [`email`]: a plain-text and HTML mail over SMTP;
//! - [`pagerduty`]: one Events API v2 event per alert.

pub mod email;
pub mod pagerduty;
pub mod render;
pub mod slack;
pub mod webhook;

use std::time::Duration;

use crate::alerting::Notification;
use anom_pipeline::sinks::Secret;
use anom_pipeline::SinkDef;

/// Outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered,
    /// Worth trying again (timeout, connection refused, 5xx, 429).
    Retry(String),
    /// Trying again will not help (4xx): dead-letter now.
    Fail(String),
}

/// A configured sink, ready to send.
pub enum AnySink {
    Webhook(webhook::Webhook),
    Slack(slack::Slack),
    Email(email::Email),
    PagerDuty(pagerduty::PagerDuty),
}

#[derive(Debug, thiserror::Error)]
#[error("sink `{sink}`: {reason}")]
pub struct SinkError {
    pub sink: String,
    pub reason: String,
}

impl AnySink {
    /// Makes the sink of a checked definition; reads the secrets it names from the
    /// environment, so this fails when one is unset.
    pub fn build(def: &SinkDef) -> Result<AnySink, SinkError> {
        let error = |reason: String| SinkError {
            sink: def.name().to_string(),
            reason,
        };
        Ok(match def {
            SinkDef::Webhook(d) => AnySink::Webhook(webhook::Webhook::new(d).map_err(error)?),
            SinkDef::Slack(d) => AnySink::Slack(slack::Slack::new(d).map_err(error)?),
            SinkDef::Email(d) => AnySink::Email(email::Email::new(d).map_err(error)?),
            SinkDef::PagerDuty(d) => {
                AnySink::PagerDuty(pagerduty::PagerDuty::new(d).map_err(error)?)
            }
        })
    }

    pub fn name(&self) -> &str {
        match self {
            AnySink::Webhook(s) => s.name(),
            AnySink::Slack(s) => s.name(),
            AnySink::Email(s) => s.name(),
            AnySink::PagerDuty(s) => s.name(),
        }
    }

    /// One attempt to deliver `n`.
    pub async fn send(&self, n: &Notification) -> Delivery {
        match self {
            AnySink::Webhook(s) => s.send(n).await,
            AnySink::Slack(s) => s.send(n).await,
            AnySink::Email(s) => s.send(n).await,
            AnySink::PagerDuty(s) => s.send(n).await,
        }
    }
}

/// A secret given inline or by the name of an environment variable (`env_field` names that
/// field in messages); `None` when neither is set.
pub(crate) fn secret(
    inline: Option<&Secret>,
    env: Option<&str>,
    env_field: &str,
) -> Result<Option<String>, String> {
    match (inline, env) {
        (Some(s), _) => Ok(Some(s.0.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Ok(_) => Err(format!(
                "environment variable `{var}` (from `{env_field}`) is empty; expected the secret"
            )),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "environment variable `{var}` (from `{env_field}`) is not set; expected the secret"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "environment variable `{var}` (from `{env_field}`) is not valid UTF-8"
            )),
        },
        (None, None) => Ok(None),
    }
}

/// The HTTP client of a sink: `timeout` bounds each request, connecting included.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("anom/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// How an HTTP answer maps to a delivery outcome: 2xx delivered; 408, 429 and 5xx retried;
/// other statuses failed.
pub fn http_outcome(result: Result<reqwest::Response, reqwest::Error>) -> Delivery {
    match result {
        Ok(r) => status_outcome(r.status(), ""),
        Err(e) => error_outcome(&e),
    }
}

/// As [`http_outcome`], with the start of the answer's body in the reason of a failure (Slack
/// and PagerDuty say there what was wrong: `invalid_payload`, `no_service`, …).
pub async fn http_delivery(result: Result<reqwest::Response, reqwest::Error>) -> Delivery {
    match result {
        Ok(r) if r.status().is_success() => Delivery::Delivered,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            status_outcome(status, &render::truncate(body.trim(), 300))
        }
        Err(e) => error_outcome(&e),
    }
}

fn status_outcome(status: reqwest::StatusCode, body: &str) -> Delivery {
    let reason = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    };
    if status.is_success() {
        Delivery::Delivered
    } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Delivery::Retry(reason)
    } else {
        Delivery::Fail(reason)
    }
}

/// An error and its causes in one line: the Display of reqwest's and lettre's errors omits
/// the cause (connection refused, …).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

fn error_outcome(e: &reqwest::Error) -> Delivery {
    let reason = error_chain(e);
    if e.is_timeout() {
        Delivery::Retry(format!("timed out: {reason}"))
    } else {
        // Connection refused or reset, DNS, TLS: the receiver or the way to it may recover.
        Delivery::Retry(reason)
    }
}

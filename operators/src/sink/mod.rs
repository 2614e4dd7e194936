//! Sinks: where notifications go besides the pipeline's NATS alert stream. Each sink of a
//! pipeline is run by its own notifier (`alerting::notifier`), which routes, groups, silences
//! and retries; a sink only turns one [`Notification`] into one delivery attempt.

pub mod webhook;

use crate::alerting::Notification;
use crate::pipeline::SinkDef;

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
}

#[derive(Debug, thiserror::Error)]
#[error("sink `{sink}`: {reason}")]
pub struct SinkError {
    pub sink: String,
    pub reason: String,
}

impl AnySink {
    pub fn build(def: &SinkDef) -> Result<AnySink, SinkError> {
        let error = |reason: String| SinkError {
            sink: def.name().to_string(),
            reason,
        };
        Ok(match def {
            SinkDef::Webhook(d) => AnySink::Webhook(webhook::Webhook::new(d).map_err(error)?),
        })
    }

    pub fn name(&self) -> &str {
        match self {
            AnySink::Webhook(s) => s.name(),
        }
    }

    /// One attempt to deliver `n`.
    pub async fn send(&self, n: &Notification) -> Delivery {
        match self {
            AnySink::Webhook(s) => s.send(n).await,
        }
    }
}

/// How an HTTP answer maps to a delivery outcome: 2xx delivered; 408, 429 and 5xx retried;
/// other statuses failed.
pub fn http_outcome(result: Result<reqwest::Response, reqwest::Error>) -> Delivery {
    match result {
        Ok(r) if r.status().is_success() => Delivery::Delivered,
        Ok(r) => {
            let status = r.status();
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Delivery::Retry(format!("HTTP {status}"))
            } else {
                Delivery::Fail(format!("HTTP {status}"))
            }
        }
        Err(e) if e.is_timeout() => Delivery::Retry(format!("timed out: {e}")),
        Err(e) => Delivery::Retry(format!("{e}")),
    }
}

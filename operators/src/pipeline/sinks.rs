//! Sink definitions: where notifications go besides the pipeline's NATS alert stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkDef {
    Webhook(WebhookDef),
}

impl SinkDef {
    pub fn name(&self) -> &str {
        match self {
            SinkDef::Webhook(d) => &d.name,
        }
    }

    /// Whether the sink is told when alerts resolve.
    pub fn send_resolved(&self) -> bool {
        match self {
            SinkDef::Webhook(d) => d.send_resolved,
        }
    }

    /// Whether the sink is told when alerts are acknowledged (PagerDuty is).
    pub fn send_acknowledged(&self) -> bool {
        match self {
            SinkDef::Webhook(_) => false,
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            SinkDef::Webhook(d) => Retry {
                max_attempts: d.max_attempts,
                backoff: d.backoff,
                max_backoff: d.max_backoff,
            },
        }
    }

    /// At most this many notifications per period; more wait (and merge into their group).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        match self {
            SinkDef::Webhook(d) => d.rate_limit,
        }
    }
}

/// How a failing delivery is retried before it goes to the dead-letter subject.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// `30/m`, `1/s`, `500/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected `<count>/<s|m|h>` such as `30/m`, found `{s}`");
        let (count, per) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let per = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => crate::duration::parse(other).map_err(|_| err())?,
        };
        if count == 0 || per.is_zero() {
            return Err(err());
        }
        Ok(RateLimit { count, per })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// POSTs each notification as JSON to a URL, retrying with backoff, then dead-letters it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// Identifier of the sink, unique in the pipeline.
    pub name: String,
    /// http:// or https:// URL.
    pub url: String,
    /// Per-request timeout (default 5s).
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Attempts before the notification goes to the dead-letter subject (default 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled on each attempt (default 200ms).
    #[serde(default = "default_backoff", with = "crate::duration")]
    pub backoff: Duration,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_max_backoff", with = "crate::duration")]
    pub max_backoff: Duration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Also notify when alerts resolve (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most notifications per period, e.g. `30/m` (default: no limit).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn default_max_attempts() -> u32 {
    10
}
pub(crate) fn default_backoff() -> Duration {
    Duration::from_millis(200)
}
pub(crate) fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Checks the sinks of a definition; `error(path, message)` reports each problem.
pub(crate) fn check(sinks: &[SinkDef], error: &mut dyn FnMut(String, String)) {
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let path = format!("alerts.sinks[{i}]");
        let name = s.name();
        if names.contains(&name) {
            error(
                format!("{path}.name"),
                format!("sink `{name}` is declared twice"),
            );
        }
        if !super::valid_pipeline_name(name) {
            error(
                format!("{path}.name"),
                format!("`{name}` is not a valid sink name: expected lowercase letters, digits, `_` and `-`"),
            );
        }
        names.push(name);
        if s.retry().max_attempts == 0 {
            error(
                format!("{path}.max_attempts"),
                "expected at least 1 attempt".into(),
            );
        }
        match s {
            SinkDef::Webhook(w) => check_url(&format!("{path}.url"), &w.url, error),
        }
    }
}

pub(crate) fn check_url(path: &str, url: &str, error: &mut dyn FnMut(String, String)) {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => error(
            path.to_string(),
            format!(
                "expected an http:// or https:// URL, found scheme `{}`",
                u.scheme()
            ),
        ),
        Err(e) => error(path.to_string(), format!("expected a URL: {e}")),
    }
}

//! Sink definitions: where notifications go besides the pipeline's NATS alert stream.
//!
//! Credentials (a webhook's signing key, a Slack webhook URL, a PagerDuty routing key, an
//! SMTP password) can be named by environment variable (`*_env`) instead of written here; the
//! worker reads them when it starts the sink, so the definition stored in NATS holds none.

use crate::diagnostics::Diagnostics;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// One entry of `alerts.sinks`, chosen by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkDef {
    /// `type: webhook`: the notification as JSON, POSTed to a URL.
    Webhook(WebhookDef),
    /// `type: slack`: a message through a Slack incoming webhook.
    Slack(SlackDef),
    /// `type: email`: a mail over SMTP.
    Email(EmailDef),
    /// `type: pagerduty`: one PagerDuty Events API v2 event per alert.
    #[serde(rename = "pagerduty")]
    PagerDuty(PagerDutyDef),
}

/// The settings every sink has, borrowed from its definition.
struct Common<'a> {
    name: &'a str,
    timeout: Duration,
    retry: Retry,
    send_resolved: bool,
    rate_limit: Option<RateLimit>,
}

macro_rules! common {
    ($d:expr, $rate_limit:expr) => {
        Common {
            name: &$d.name,
            timeout: $d.timeout,
            retry: Retry {
                max_attempts: $d.max_attempts,
                backoff: $d.backoff,
                max_backoff: $d.max_backoff,
            },
            send_resolved: $d.send_resolved,
            rate_limit: $rate_limit,
        }
    };
}

impl SinkDef {
    fn common(&self) -> Common<'_> {
        match self {
            SinkDef::Webhook(d) => common!(d, d.rate_limit),
            SinkDef::Slack(d) => common!(d, Some(d.rate_limit)),
            SinkDef::Email(d) => common!(d, d.rate_limit),
            SinkDef::PagerDuty(d) => common!(d, d.rate_limit),
        }
    }

    pub fn name(&self) -> &str {
        self.common().name
    }

    /// The `type` it was declared with.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkDef::Webhook(_) => "webhook",
            SinkDef::Slack(_) => "slack",
            SinkDef::Email(_) => "email",
            SinkDef::PagerDuty(_) => "pagerduty",
        }
    }

    /// Whether the sink is told when alerts resolve.
    pub fn send_resolved(&self) -> bool {
        self.common().send_resolved
    }

    /// Whether the sink is told when alerts are acknowledged (PagerDuty is).
    /// Webhooks (machines that track status) and PagerDuty (which has an acknowledge
    /// action) are; people reading Slack or mail are not paged again for it.
    pub fn send_acknowledged(&self) -> bool {
        matches!(self, SinkDef::Webhook(_) | SinkDef::PagerDuty(_))
    }

    pub fn retry(&self) -> Retry {
        self.common().retry
    }

    /// At most this many notifications per period; more wait (and merge into their group).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.common().rate_limit
    }

    /// How long one delivery attempt may take.
    pub fn timeout(&self) -> Duration {
        self.common().timeout
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
            other => anom_lang::duration::parse(other).map_err(|_| err())?,
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

/// A secret written into the definition. Its `Debug` hides it, so definitions can be logged.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
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
    /// Signs each request with this key: header `X-Anom-Signature: t=<unix seconds>,v1=<hex
    /// HMAC-SHA256 of "<t>.<body>">`, so the receiver can check it came from Anom and is
    /// recent. Prefer `secret_env`, which keeps the key out of the definition.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Name of the environment variable holding the signing key, read by the worker when the
    /// sink starts (it refuses to start the sink when the variable is unset).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Per-request timeout (default 5s).
    #[serde(default = "default_timeout", with = "anom_lang::duration")]
    pub timeout: Duration,
    /// Attempts before the notification goes to the dead-letter subject (default 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled on each attempt (default 200ms).
    #[serde(default = "default_backoff", with = "anom_lang::duration")]
    pub backoff: Duration,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_max_backoff", with = "anom_lang::duration")]
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

/// Posts each notification to a Slack channel through an incoming webhook: a title and, per
/// alert (the first 10), its severity, key, message, why it fired and its status, in a bar
/// coloured by the highest severity (green once resolved).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackDef {
    /// Identifier of the sink, unique in the pipeline.
    pub name: String,
    /// The incoming webhook's URL (`https://hooks.slack.com/services/...`). It is a secret:
    /// prefer `url_env`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Name of the environment variable holding the webhook URL, read when the sink starts.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Channel to post to (`#ops`, `@user`) instead of the webhook's own. Only legacy
    /// webhooks honour it; a Slack app's webhook always posts to the channel it was made for.
    #[serde(default)]
    pub channel: Option<String>,
    /// Name to post as, where the webhook allows it (legacy webhooks).
    #[serde(default)]
    pub username: Option<String>,
    /// Per-request timeout (default 5s).
    #[serde(default = "default_timeout", with = "anom_lang::duration")]
    pub timeout: Duration,
    /// Attempts before the notification goes to the dead-letter subject (default 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled on each attempt (default 200ms).
    #[serde(default = "default_backoff", with = "anom_lang::duration")]
    pub backoff: Duration,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_max_backoff", with = "anom_lang::duration")]
    pub max_backoff: Duration,
    /// Also notify when alerts resolve (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most notifications per period (default `1/s`, the rate Slack documents for incoming
    /// webhooks; faster posts are refused with HTTP 429).
    #[serde(default = "one_per_second")]
    pub rate_limit: RateLimit,
}

/// Mails each notification over SMTP: the title as subject, a plain-text and an HTML part
/// listing the alerts (severity, key, message, why, when it started and ended).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailDef {
    /// Identifier of the sink, unique in the pipeline.
    pub name: String,
    /// Recipients: `ops@example.com` or `Ops <ops@example.com>`.
    #[serde(default)]
    pub to: Vec<String>,
    /// Sender, in the same forms as `to`.
    pub from: String,
    /// The mail server to hand messages to.
    pub smtp: SmtpDef,
    /// How long one attempt (connecting, the SMTP dialogue, sending) may take (default 10s).
    #[serde(default = "default_smtp_timeout", with = "anom_lang::duration")]
    pub timeout: Duration,
    /// Attempts before the notification goes to the dead-letter subject (default 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled on each attempt (default 200ms).
    #[serde(default = "default_backoff", with = "anom_lang::duration")]
    pub backoff: Duration,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_max_backoff", with = "anom_lang::duration")]
    pub max_backoff: Duration,
    /// Also notify when alerts resolve (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most notifications per period, e.g. `10/m` (default: no limit).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// An SMTP server (a relay or submission server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpDef {
    /// Host name or IP address, e.g. `smtp.example.com`.
    pub host: String,
    /// Port (default by `tls`: 587 for starttls, 465 for tls, 25 for none).
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is encrypted (default starttls).
    #[serde(default)]
    pub tls: SmtpTls,
    /// User to log in as; needs `password_env`.
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password, read when the sink starts.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// How an SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; a server that does not offer it is an error.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption: for a relay on the same machine.
    None,
}

impl SmtpDef {
    /// The port to connect to: the given one, else the usual one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

/// Sends each alert of a notification to PagerDuty's Events API v2: a `trigger` event while it
/// fires (with its message, key, severity, rule and why it fired), `acknowledge` once
/// acknowledged and `resolve` once resolved, all under the alert's id as `dedup_key`, so
/// PagerDuty keeps one incident per alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyDef {
    /// Identifier of the sink, unique in the pipeline.
    pub name: String,
    /// The integration key of the PagerDuty service (Events API v2). Prefer
    /// `routing_key_env`, which keeps it out of the definition.
    #[serde(default)]
    pub routing_key: Option<Secret>,
    /// Name of the environment variable holding the integration key, read when the sink
    /// starts.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Events API endpoint (default `https://events.pagerduty.com/v2/enqueue`; EU accounts
    /// may use `https://events.eu.pagerduty.com/v2/enqueue`).
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// Per-request timeout (default 5s); a notification sends one request per alert.
    #[serde(default = "default_timeout", with = "anom_lang::duration")]
    pub timeout: Duration,
    /// Attempts before the notification goes to the dead-letter subject (default 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled on each attempt (default 200ms).
    #[serde(default = "default_backoff", with = "anom_lang::duration")]
    pub backoff: Duration,
    /// Longest retry delay (default 30s).
    #[serde(default = "default_max_backoff", with = "anom_lang::duration")]
    pub max_backoff: Duration,
    /// Also resolve the incidents of resolved alerts (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most notifications per period, e.g. `60/m` (default: no limit). PagerDuty throttles a
    /// service's events on its side too, answering 429, which is retried.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_smtp_timeout() -> Duration {
    Duration::from_secs(10)
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
fn one_per_second() -> RateLimit {
    RateLimit {
        count: 1,
        per: Duration::from_secs(1),
    }
}
pub(crate) fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// Checks the sinks of a definition.
pub(crate) fn check(sinks: &[SinkDef], diags: &mut Diagnostics) {
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let path = format!("alerts.sinks[{i}]");
        let name = s.name();
        if names.contains(&name) {
            diags.report(
                format!("{path}.name"),
                format!("sink `{name}` is declared twice"),
            );
        }
        if !super::valid_pipeline_name(name) {
            diags.report(
                format!("{path}.name"),
                format!("`{name}` is not a valid sink name: expected lowercase letters, digits, `_` and `-`"),
            );
        }
        names.push(name);
        if s.retry().max_attempts == 0 {
            diags.report(
                format!("{path}.max_attempts"),
                "expected at least 1 attempt",
            );
        }
        if s.timeout().is_zero() {
            diags.report(
                format!("{path}.timeout"),
                "expected a timeout above 0, such as `5s`",
            );
        }
        match s {
            SinkDef::Webhook(w) => {
                check_url(&format!("{path}.url"), &w.url, diags);
                check_secret(
                    &path,
                    ("secret", w.secret.as_ref()),
                    ("secret_env", w.secret_env.as_deref()),
                    false,
                    diags,
                );
            }
            SinkDef::Slack(d) => {
                if let Some(url) = &d.url {
                    check_url(&format!("{path}.url"), &url.0, diags);
                }
                check_secret(
                    &path,
                    ("url", d.url.as_ref()),
                    ("url_env", d.url_env.as_deref()),
                    true,
                    diags,
                );
                for (field, value) in [("channel", &d.channel), ("username", &d.username)] {
                    if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                        diags.report(
                            format!("{path}.{field}"),
                            "expected a name, found an empty string",
                        );
                    }
                }
            }
            SinkDef::Email(d) => check_email(&path, d, diags),
            SinkDef::PagerDuty(d) => {
                check_url(&format!("{path}.url"), &d.url, diags);
                check_secret(
                    &path,
                    ("routing_key", d.routing_key.as_ref()),
                    ("routing_key_env", d.routing_key_env.as_deref()),
                    true,
                    diags,
                );
            }
        }
    }
}

/// A secret given either inline (`field`) or by environment variable (`env_field`), not both;
/// `required`: one of them must be.
fn check_secret(
    path: &str,
    (field, inline): (&str, Option<&Secret>),
    (env_field, env): (&str, Option<&str>),
    required: bool,
    diags: &mut Diagnostics,
) {
    match (inline, env) {
        (Some(_), Some(_)) => diags.report(
            path.to_string(),
            format!("expected `{field}` or `{env_field}`, found both"),
        ),
        (None, None) if required => diags.report(
            path.to_string(),
            format!("expected `{field}` or `{env_field}`, found neither"),
        ),
        (Some(s), None) if s.0.is_empty() => diags.report(
            format!("{path}.{field}"),
            "expected a value, found an empty string",
        ),
        (None, Some(var)) => check_env_name(&format!("{path}.{env_field}"), var, diags),
        _ => {}
    }
}

fn check_env_name(path: &str, name: &str, diags: &mut Diagnostics) {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        diags.report(
            path.to_string(),
            format!("expected the name of an environment variable (letters, digits and `_`, such as `SMTP_PASSWORD`), found `{name}`"),
        );
    }
}

fn check_email(path: &str, d: &EmailDef, diags: &mut Diagnostics) {
    if d.to.is_empty() {
        diags.report(format!("{path}.to"), "expected at least one address");
    }
    for (i, to) in d.to.iter().enumerate() {
        check_address(&format!("{path}.to[{i}]"), to, diags);
    }
    check_address(&format!("{path}.from"), &d.from, diags);
    let smtp = &d.smtp;
    let host = smtp.host.trim();
    if host.is_empty() || host.contains(|c: char| c == '/' || c == '@' || c.is_whitespace()) {
        diags.report(
            format!("{path}.smtp.host"),
            format!(
                "expected a host name or IP address such as `smtp.example.com`, found `{}`",
                smtp.host
            ),
        );
    } else if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        diags.report(
            format!("{path}.smtp.host"),
            format!("expected a host name without a port (the port goes in `smtp.port`), found `{host}`"),
        );
    }
    if smtp.port == Some(0) {
        diags.report(
            format!("{path}.smtp.port"),
            "expected a port from 1 to 65535, found 0",
        );
    }
    match (&smtp.username, &smtp.password_env) {
        (Some(_), None) => diags.report(
            format!("{path}.smtp"),
            "`username` needs `password_env`: expected both or neither",
        ),
        (None, Some(_)) => diags.report(
            format!("{path}.smtp"),
            "`password_env` needs `username`: expected both or neither",
        ),
        (Some(user), Some(var)) => {
            if user.is_empty() {
                diags.report(
                    format!("{path}.smtp.username"),
                    "expected a user name, found an empty string",
                );
            }
            check_env_name(&format!("{path}.smtp.password_env"), var, diags);
            // lettre would log in over the plain connection: only acceptable when the
            // password never leaves the machine.
            if smtp.tls == SmtpTls::None && !is_loopback(host) {
                diags.report(
                    format!("{path}.smtp.tls"),
                    format!("`tls: none` would send the password unencrypted to `{host}`: expected `starttls` or `tls` (or a loopback host)"),
                );
            }
        }
        (None, None) => {}
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_address(path: &str, address: &str, diags: &mut Diagnostics) {
    // lettre's own reason ("Invalid input") adds nothing to the example.
    if address.parse::<lettre::message::Mailbox>().is_err() {
        diags.report(
            path.to_string(),
            format!("expected an email address such as `ops@example.com` or `Ops <ops@example.com>`, found `{address}`"),
        );
    }
}

pub(crate) fn check_url(path: &str, url: &str, diags: &mut Diagnostics) {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => diags.report(
            path.to_string(),
            format!(
                "expected an http:// or https:// URL, found scheme `{}`",
                u.scheme()
            ),
        ),
        Err(e) => diags.report(path.to_string(), format!("expected a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pipeline;

    const PIPELINE: &str = r#"
name: routes
key: route
schema:
  route: { type: string, required: true }
  durationMs: { type: int, required: true }
rules:
  - name: slow
    when: durationMs > 5000
alerts:
  sinks:
"#;

    fn with_sinks(sinks: &str) -> String {
        let indented: String = sinks.lines().map(|l| format!("    {l}\n")).collect();
        format!("{PIPELINE}{indented}")
    }

    fn sinks(yaml: &str) -> Vec<SinkDef> {
        Pipeline::from_yaml(&with_sinks(yaml))
            .unwrap_or_else(|e| panic!("{e}"))
            .sinks
    }

    fn errors(yaml: &str) -> Vec<String> {
        match Pipeline::from_yaml(&with_sinks(yaml)) {
            Ok(_) => panic!("expected the definition to be rejected"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn assert_error(yaml: &str, expected: &str) {
        let e = errors(yaml);
        assert!(
            e.iter().any(|e| e.contains(expected)),
            "expected an error containing {expected:?}, got {e:?}"
        );
    }

    #[test]
    fn an_unknown_type_lists_the_sink_types() {
        assert_error(
            "- type: pager\n  name: ops\n",
            "unknown variant `pager`, expected one of `webhook`, `slack`, `email`, `pagerduty`",
        );
    }

    #[test]
    fn every_type_loads_with_its_defaults() {
        let s = sinks(
            "- type: webhook\n  name: hook\n  url: http://127.0.0.1:9/h\n  secret_env: HOOK_SECRET\n\
             - type: slack\n  name: chat\n  url: https://hooks.slack.com/services/T/B/x\n  channel: '#ops'\n\
             - type: email\n  name: mail\n  to: [ops@example.com, 'Ana <ana@example.com>']\n  from: anom@example.com\n  smtp: { host: smtp.example.com, username: anom, password_env: SMTP_PASSWORD }\n\
             - type: pagerduty\n  name: pd\n  routing_key_env: PD_KEY\n  send_resolved: false\n",
        );
        let kinds: Vec<&str> = s.iter().map(|s| s.kind()).collect();
        assert_eq!(kinds, ["webhook", "slack", "email", "pagerduty"]);
        assert_eq!(s[1].rate_limit(), Some("1/s".parse().unwrap()));
        assert_eq!(s[0].rate_limit(), None);
        assert!(s[1].send_resolved() && s[2].send_resolved() && !s[3].send_resolved());
        assert_eq!(s[2].timeout(), Duration::from_secs(10));
        assert_eq!(s[3].retry().max_attempts, 10);
        let SinkDef::Email(e) = &s[2] else {
            panic!("expected an email sink, found {:?}", s[2])
        };
        assert_eq!((e.smtp.tls, e.smtp.port()), (SmtpTls::Starttls, 587));
        let SinkDef::PagerDuty(p) = &s[3] else {
            panic!("expected a pagerduty sink, found {:?}", s[3])
        };
        assert_eq!(p.url, "https://events.pagerduty.com/v2/enqueue");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = sinks("- type: pagerduty\n  name: pd\n  routing_key: R0UTINGKEY\n");
        assert!(!format!("{s:?}").contains("R0UTINGKEY"));
    }

    #[test]
    fn an_email_sink_needs_recipients() {
        assert_error(
            "- type: email\n  name: mail\n  from: anom@example.com\n  smtp: { host: localhost, tls: none }\n",
            "alerts.sinks[0].to: expected at least one address",
        );
    }

    #[test]
    fn email_addresses_are_checked() {
        assert_error(
            "- type: email\n  name: mail\n  to: [ops@example.com, not-an-address]\n  from: anom@example.com\n  smtp: { host: localhost }\n",
            "alerts.sinks[0].to[1]: expected an email address such as `ops@example.com` or `Ops <ops@example.com>`, found `not-an-address`",
        );
        assert_error(
            "- type: email\n  name: mail\n  to: [ops@example.com]\n  from: 'anom at example'\n  smtp: { host: localhost }\n",
            "alerts.sinks[0].from: expected an email address",
        );
    }

    #[test]
    fn smtp_settings_are_checked() {
        let email = |smtp: &str| {
            format!("- type: email\n  name: mail\n  to: [ops@example.com]\n  from: anom@example.com\n  smtp: {smtp}\n")
        };
        assert_error(
            &email("{ host: 'smtp.example.com:587' }"),
            "alerts.sinks[0].smtp.host: expected a host name without a port (the port goes in `smtp.port`), found `smtp.example.com:587`",
        );
        assert_error(
            &email("{ host: 'smtp://smtp.example.com' }"),
            "alerts.sinks[0].smtp.host: expected a host name or IP address",
        );
        assert_error(
            &email("{ host: smtp.example.com, username: anom }"),
            "alerts.sinks[0].smtp: `username` needs `password_env`: expected both or neither",
        );
        assert_error(
            &email("{ host: smtp.example.com, username: anom, password_env: 'my password' }"),
            "alerts.sinks[0].smtp.password_env: expected the name of an environment variable",
        );
        assert_error(
            &email("{ host: smtp.example.com, tls: none, username: anom, password_env: PW }"),
            "alerts.sinks[0].smtp.tls: `tls: none` would send the password unencrypted to `smtp.example.com`",
        );
        assert_error(
            &email("{ host: smtp.example.com, tls: ssl }"),
            "unknown variant `ssl`, expected one of `starttls`, `tls`, `none`",
        );
        // On loopback a plain login is fine.
        sinks(&email(
            "{ host: 127.0.0.1, port: 2525, tls: none, username: anom, password_env: PW }",
        ));
    }

    #[test]
    fn urls_are_checked() {
        assert_error(
            "- type: slack\n  name: chat\n  url: hooks.slack.com/services/x\n",
            "alerts.sinks[0].url: expected a URL: relative URL without a base",
        );
        assert_error(
            "- type: pagerduty\n  name: pd\n  routing_key: k\n  url: ftp://x/y\n",
            "alerts.sinks[0].url: expected an http:// or https:// URL, found scheme `ftp`",
        );
    }

    #[test]
    fn secrets_are_given_once() {
        assert_error(
            "- type: pagerduty\n  name: pd\n",
            "alerts.sinks[0]: expected `routing_key` or `routing_key_env`, found neither",
        );
        assert_error(
            "- type: slack\n  name: chat\n  url: https://x/y\n  url_env: SLACK_URL\n",
            "alerts.sinks[0]: expected `url` or `url_env`, found both",
        );
        assert_error(
            "- type: webhook\n  name: hook\n  url: https://x/y\n  secret: ''\n",
            "alerts.sinks[0].secret: expected a value, found an empty string",
        );
    }

    #[test]
    fn timeouts_and_attempts_are_checked() {
        assert_error(
            "- type: slack\n  name: chat\n  url: https://x/y\n  timeout: 0s\n  max_attempts: 0\n",
            "alerts.sinks[0].timeout: expected a timeout above 0",
        );
        assert_error(
            "- type: slack\n  name: chat\n  url: https://x/y\n  max_attempts: 0\n",
            "alerts.sinks[0].max_attempts: expected at least 1 attempt",
        );
        assert_error(
            "- type: slack\n  name: chat\n  url: https://x/y\n  rate_limit: fast\n",
            "expected `<count>/<s|m|h>` such as `30/m`, found `fast`",
        );
    }
}

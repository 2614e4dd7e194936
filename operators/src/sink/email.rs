//! Mails each notification over SMTP (lettre, rustls).
//!
//! The subject is the notification's title; the body is `multipart/alternative`: plain text,
//! and HTML with a table of the alerts (status, severity, key, message, why, started, ended).
//! The `Message-ID` is made from the notification id, so a notification re-sent after a crash
//! is the same message to the mail system (and to clients that drop duplicates);
//! `X-Anom-Notification-Id` carries the id as is, and `References` names one made-up message
//! per group, so mail clients thread a group's notifications together.
//!
//! SMTP 4xx answers, timeouts and connection or TLS errors are retried; 5xx answers (an
//! unknown recipient, a refused sender) and client errors (the server does not offer
//! STARTTLS or a login mechanism lettre speaks) are failures that retrying cannot fix.

use std::fmt::Write;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue, References};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::render::{self, html_escape};
use super::Delivery;
use crate::alerting::record::Alert;
use crate::alerting::{GroupStatus, Notification};
use anom_pipeline::{EmailDef, Severity, SmtpTls};

/// Alerts listed in one mail; the rest are counted.
pub const MAX_ALERTS: usize = 100;

/// The header carrying the notification id.
pub const NOTIFICATION_ID_HEADER: &str = "X-Anom-Notification-Id";

pub struct Email {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
}

impl Email {
    pub fn new(def: &EmailDef) -> Result<Email, String> {
        let from: Mailbox = def.from.parse().map_err(|e| {
            format!(
                "from: expected an email address, found `{}` ({e})",
                def.from
            )
        })?;
        let to = def
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| format!("to: expected an email address, found `{t}` ({e})"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("to: expected at least one address".into());
        }
        let smtp = &def.smtp;
        let host = smtp.host.trim().to_string();
        let tls_parameters =
            || TlsParameters::new(host.clone()).map_err(|e| format!("smtp tls: {e}"));
        let tls = match smtp.tls {
            // Required, not opportunistic: a server (or someone in between) that drops the
            // STARTTLS offer must not get the mail, and the password, in clear.
            SmtpTls::Starttls => Tls::Required(tls_parameters()?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(smtp.port())
            .tls(tls)
            .timeout(Some(def.timeout));
        if let Some(user) = &smtp.username {
            let password = super::secret(None, smtp.password_env.as_deref(), "smtp.password_env")?
                .ok_or("smtp: `username` needs `password_env`")?;
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Email {
            name: def.name.clone(),
            from,
            to,
            transport: builder.build(),
            timeout: def.timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, n: &Notification) -> Delivery {
        let message = match self.message(n) {
            Ok(m) => m,
            Err(e) => return Delivery::Fail(format!("cannot build the message: {e}")),
        };
        // lettre's timeout bounds each socket operation; this bounds the whole attempt.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Delivery::Delivered,
            Ok(Err(e)) => outcome(&e),
            Err(_) => Delivery::Retry(format!(
                "timed out after {}",
                anom_lang::duration::format(self.timeout)
            )),
        }
    }

    /// The mail for `n`.
    pub fn message(&self, n: &Notification) -> Result<Message, lettre::error::Error> {
        let domain = self.from.email.domain();
        let group = xxhash_rust::xxh3::xxh3_64(
            format!("{}\u{0}{}\u{0}{}", n.pipeline, n.sink, n.group_key).as_bytes(),
        );
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(n.title())
            .message_id(Some(format!("<{}@{domain}>", msg_id_part(&n.id))))
            .header(References::from(format!("<group-{group:016x}@{domain}>")))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
                n.id.clone(),
            ));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder.multipart(MultiPart::alternative_plain_html(text(n), html(n)))
    }
}

/// The delivery outcome of an SMTP error.
fn outcome(e: &lettre::transport::smtp::Error) -> Delivery {
    let reason = super::error_chain(e);
    if e.is_permanent() || e.is_client() {
        Delivery::Fail(reason)
    } else {
        // 4xx (greylisting, a full queue), timeouts, refused or dropped connections, TLS.
        Delivery::Retry(reason)
    }
}

/// `id` with the characters a Message-ID's left part cannot hold replaced by `-`.
fn msg_id_part(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut s = s.trim_matches('.').to_string();
    while s.contains("..") {
        s = s.replace("..", ".");
    }
    if s.is_empty() {
        "anom".into()
    } else {
        s
    }
}

fn group_text(n: &Notification) -> String {
    if n.group_labels.is_empty() {
        return "(all alerts)".into();
    }
    n.group_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plain-text part.
pub fn text(n: &Notification) -> String {
    let mut out = format!(
        "{}\n\nPipeline: {}\nGroup: {}\n",
        n.title(),
        n.pipeline,
        group_text(n)
    );
    for a in n.alerts.iter().take(MAX_ALERTS) {
        let _ = write!(
            out,
            "\n{} · {} · {}\n  {}\n",
            a.severity,
            a.key,
            render::status(a),
            a.message
        );
        if !a.explanation.is_empty() {
            let _ = writeln!(out, "  Why: {}", a.explanation);
        }
        if let Some(d) = &a.detection {
            let _ = writeln!(out, "  Score: {}", render::detection(d));
        }
        if a.count > 1 {
            let _ = writeln!(out, "  Detections: {}", a.count);
        }
        let _ = write!(out, "  Started: {}", a.starts_at);
        if let Some(ended) = &a.ends_at {
            let _ = write!(out, "   Ended: {ended}");
        }
        out.push('\n');
        if !a.labels.is_empty() {
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  Labels: {}", labels.join(", "));
        }
    }
    if n.alerts.len() > MAX_ALERTS {
        let _ = writeln!(out, "\n…and {} more.", n.alerts.len() - MAX_ALERTS);
    }
    let _ = writeln!(
        out,
        "\nNotification {} (number {} of this group), sent {}.",
        n.id,
        n.sequence + 1,
        n.sent_at
    );
    out
}

/// The HTML part: the same, with the alerts in a table. Every value is escaped.
pub fn html(n: &Notification) -> String {
    let e = html_escape;
    let head_color = match (n.status, n.firing().map(|a| a.severity).max()) {
        (GroupStatus::Resolved, _) => "#2e7d32",
        (_, Some(s)) => severity_color(s),
        _ => "#1565c0",
    };
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n\
         <body style=\"font-family: sans-serif; font-size: 14px;\">\n",
    );
    let _ = writeln!(
        out,
        "<h2 style=\"color: {head_color};\">{}</h2>\n<p>Pipeline <b>{}</b> · group {}</p>",
        e(&n.title()),
        e(&n.pipeline),
        e(&group_text(n))
    );
    out.push_str(
        "<table cellpadding=\"6\" style=\"border-collapse: collapse;\" border=\"1\">\n\
         <tr><th>Status</th><th>Severity</th><th>Key</th><th>Message</th><th>Why</th>\
         <th>Started</th><th>Ended</th></tr>\n",
    );
    for a in n.alerts.iter().take(MAX_ALERTS) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td style=\"color: {}; font-weight: bold;\">{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&render::status(a)),
            severity_color(a.severity),
            a.severity,
            e(&a.key),
            e(&a.message),
            why_html(a),
            e(&a.starts_at),
            e(a.ends_at.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>\n");
    if n.alerts.len() > MAX_ALERTS {
        let _ = writeln!(out, "<p>…and {} more.</p>", n.alerts.len() - MAX_ALERTS);
    }
    let _ = writeln!(
        out,
        "<p style=\"color: #666; font-size: 12px;\">Notification {} (number {} of this group), \
         sent {}.</p>\n</body></html>",
        e(&n.id),
        n.sequence + 1,
        e(&n.sent_at)
    );
    out
}

fn why_html(a: &Alert) -> String {
    let mut why = html_escape(&a.explanation);
    if let Some(d) = &a.detection {
        let _ = write!(
            why,
            "<br><small>{}</small>",
            html_escape(&render::detection(d))
        );
    }
    why
}

fn severity_color(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "#c62828",
        Severity::Warning => "#ef6c00",
        Severity::Info => "#1565c0",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_ids_hold_only_allowed_characters() {
        assert_eq!(super::msg_id_part("pay/ments:ab 12"), "pay/ments-ab-12");
        assert_eq!(super::msg_id_part("..a...b.."), "a.b");
        assert_eq!(super::msg_id_part("<>"), "--");
    }
}

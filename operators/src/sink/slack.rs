//! Posts each notification to Slack through an incoming webhook.
//!
//! The message: `text` is the title (what Slack shows in notifications), and one attachment,
//! its bar coloured by the highest severity firing (green once the group resolved), holds
//! Block Kit sections: the title, then per alert (the first [`MAX_ALERTS`]) its severity,
//! key, status, message, why it fired and its detection's score, then "and N more".
//!
//! Slack answers 200 `ok`. 429 (its rate limit, about one post per second per webhook) and
//! 5xx are retried; other 4xx (400 `invalid_payload`, 403 `action_prohibited`, 404
//! `no_service` or `channel_not_found`, 410 `channel_is_archived`) are failures that
//! retrying cannot fix.

use serde_json::{json, Value};

use super::render::{self, truncate};
use super::{http_client, http_delivery, Delivery};
use crate::alerting::record::Alert;
use crate::alerting::{GroupStatus, Notification};
use anom_pipeline::{Severity, SlackDef};

/// Alerts listed in one message; Slack allows 50 blocks and long messages are unreadable.
pub const MAX_ALERTS: usize = 10;

/// Slack's limit on a section's text.
const SECTION_CHARS: usize = 3000;

pub struct Slack {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    channel: Option<String>,
    username: Option<String>,
}

impl Slack {
    pub fn new(def: &SlackDef) -> Result<Slack, String> {
        let url = super::secret(def.url.as_ref(), def.url_env.as_deref(), "url_env")?
            .ok_or("expected `url` or `url_env`")?;
        // Not quoted in the message: the URL is the webhook's credential.
        let url = reqwest::Url::parse(&url).map_err(|e| format!("bad url: {e}"))?;
        Ok(Slack {
            name: def.name.clone(),
            url,
            client: http_client(def.timeout)?,
            channel: def.channel.clone(),
            username: def.username.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, n: &Notification) -> Delivery {
        let body = self.payload(n);
        let request = self.client.post(self.url.clone()).json(&body);
        http_delivery(request.send().await).await
    }

    /// The JSON posted for `n`.
    pub fn payload(&self, n: &Notification) -> Value {
        let title = n.title();
        let mut blocks = vec![json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("*{}*", escape(&title)) },
        })];
        for a in n.alerts.iter().take(MAX_ALERTS) {
            blocks.push(json!({
                "type": "section",
                "text": { "type": "mrkdwn", "text": alert_text(a) },
            }));
        }
        if n.alerts.len() > MAX_ALERTS {
            blocks.push(json!({
                "type": "context",
                "elements": [{
                    "type": "mrkdwn",
                    "text": format!("and {} more", n.alerts.len() - MAX_ALERTS),
                }],
            }));
        }
        let group: Vec<String> = n
            .group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        blocks.push(json!({
            "type": "context",
            "elements": [{
                "type": "mrkdwn",
                "text": escape(&format!(
                    "pipeline {} · group {} · notification {}",
                    n.pipeline,
                    if group.is_empty() { "(all)".to_string() } else { group.join(", ") },
                    n.id
                )),
            }],
        }));
        let mut body = json!({
            "text": title,
            "attachments": [{ "color": color(n), "fallback": title, "blocks": blocks }],
        });
        if let Some(c) = &self.channel {
            body["channel"] = json!(c);
        }
        if let Some(u) = &self.username {
            body["username"] = json!(u);
        }
        body
    }
}

/// One alert as mrkdwn: `*critical* · `acct-1` · firing`, then its message, why and score.
fn alert_text(a: &Alert) -> String {
    let mut text = format!(
        "*{}* · `{}` · {}\n{}",
        a.severity,
        escape(&a.key).replace('`', "'"),
        escape(&render::status(a)),
        escape(&truncate(&a.message, 500)),
    );
    if !a.explanation.is_empty() {
        text.push_str(&format!(
            "\n_Why:_ {}",
            escape(&truncate(&a.explanation, 1500))
        ));
    }
    if let Some(d) = &a.detection {
        text.push_str(&format!("\n_Score:_ {}", escape(&render::detection(d))));
    }
    if let Some(ended) = &a.ends_at {
        text.push_str(&format!("\nstarted {} · ended {}", a.starts_at, ended));
    } else if !a.starts_at.is_empty() {
        text.push_str(&format!("\nstarted {}", a.starts_at));
    }
    truncate(&text, SECTION_CHARS)
}

/// Slack's attachment colours: green once resolved, else by the highest severity firing.
fn color(n: &Notification) -> &'static str {
    if n.status == GroupStatus::Resolved {
        return "#2eb886";
    }
    match n.firing().map(|a| a.severity).max() {
        Some(Severity::Critical) => "#d62728",
        Some(Severity::Warning) => "#daa038",
        _ => "#439fe0",
    }
}

/// The three characters Slack's mrkdwn wants escaped (the rest, like `*`, it shows as is
/// only when not paired; alert text is short prose, so that is left alone).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

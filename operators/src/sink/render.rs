//! Words shared by the sinks that format notifications for people (Slack, email,
//! PagerDuty): an alert's status, its detection, and text cut to a receiver's limits.

use crate::alerting::record::{Alert, AlertStatus, Detection};

/// `firing`, `acknowledged by ana` or `resolved`.
pub fn status(a: &Alert) -> String {
    match (a.status, &a.acknowledged_by) {
        (AlertStatus::Acknowledged, Some(by)) => format!("acknowledged by {by}"),
        (status, _) => status.to_string(),
    }
}

/// `robust_zscore score 4.21 (threshold 3.00); drivers: amount 62%, hour 30%`.
pub fn detection(d: &Detection) -> String {
    let mut text = format!("{} score {:.2}", d.kind, d.score);
    if let Some(t) = d.threshold {
        text.push_str(&format!(" (threshold {t:.2})"));
    }
    if !d.contributions.is_empty() {
        let drivers: Vec<String> = d
            .contributions
            .iter()
            .take(5)
            .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
            .collect();
        text.push_str("; drivers: ");
        text.push_str(&drivers.join(", "));
    }
    text
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` safe inside HTML elements and quoted attributes.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 4), "hél…");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            html_escape(r#"<b a="1">&'</b>"#),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;&lt;/b&gt;"
        );
    }
}

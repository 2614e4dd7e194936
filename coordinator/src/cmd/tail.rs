//! `anom tail alerts|dlq`: print alerts or dead letters as they arrive.

use anom_operators::alerting::record::{Alert, AlertStatus};
use anom_pipeline::subjects::headers;
use anyhow::Context as _;
use futures::StreamExt;

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    Alerts,
    Dlq,
}

#[derive(clap::Args)]
pub struct Args {
    /// What to watch.
    what: What,
    /// Only this pipeline (default: all).
    #[arg(long)]
    pipeline: Option<String>,
    /// Print each record as JSON instead of one line of text.
    #[arg(long)]
    json: bool,
    /// NATS server URL.
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.nats)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats))?;
    let pipeline = args.pipeline.as_deref().unwrap_or("*");
    let subject = match args.what {
        What::Alerts => format!("anom.{pipeline}.alerts"),
        What::Dlq => format!("anom.{pipeline}.dlq"),
    };
    let mut sub = client.subscribe(subject.clone()).await?;
    // Once flushed, the server knows the subscription: nothing published after this is missed.
    client.flush().await?;
    eprintln!("watching {subject} (Ctrl-C to stop)");
    loop {
        let msg = tokio::select! {
            _ = super::stop_requested() => return Ok(()),
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        match args.what {
            What::Alerts if args.json => println!("{}", String::from_utf8_lossy(&msg.payload)),
            What::Alerts => match serde_json::from_slice::<Alert>(&msg.payload) {
                Ok(a) => println!("{}", alert_line(&a)),
                Err(_) => println!("{}", String::from_utf8_lossy(&msg.payload)),
            },
            What::Dlq => {
                let h = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default()
                };
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "subject": msg.subject.as_str(),
                            "reason": h(headers::REASON),
                            "kind": h(headers::REASON_KIND),
                            "stage": h(headers::STAGE),
                            "payload": String::from_utf8_lossy(&msg.payload),
                        })
                    );
                } else {
                    println!(
                        "{} [{}] {}: {}",
                        msg.subject,
                        printable(&h(headers::REASON_KIND)),
                        printable(&h(headers::REASON)),
                        printable(&String::from_utf8_lossy(&msg.payload))
                    );
                }
            }
        }
    }
}

/// One line per alert: `[critical] routes/failed_route SFTP-BANK-A: Route … failed`. What
/// came from events (key, message, explanation) is [`printable`].
pub fn alert_line(a: &Alert) -> String {
    let head = format!(
        "{} [{}] {}/{} {}",
        printable(&a.event_time),
        a.severity,
        a.pipeline,
        a.rule,
        printable(&a.key)
    );
    match a.status {
        AlertStatus::Firing => format!(
            "{head}: {}\n    why: {}",
            printable(&a.message),
            printable(&a.explanation)
        ),
        AlertStatus::Acknowledged => format!(
            "{head}: acknowledged by {}",
            printable(a.acknowledged_by.as_deref().unwrap_or("?"))
        ),
        AlertStatus::Resolved => format!(
            "{head}: resolved: {}",
            printable(a.resolved_by.as_deref().unwrap_or(""))
        ),
    }
}

/// Text from events as the terminal should show it: control characters (escape sequences,
/// newlines, carriage returns) escaped as `\u{1b}`, `\n`, … so an event cannot move the
/// cursor, recolour the terminal or forge a line.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("card-1"), "card-1");
        assert_eq!(printable("a\u{1b}[31mred\nb\r"), "a\\u{1b}[31mred\\nb\\r");
        assert_eq!(printable("Zürich ✓"), "Zürich ✓");
    }
}

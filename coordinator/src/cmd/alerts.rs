//! `anom alerts …`: list, inspect, acknowledge and resolve alerts, and manage silences,
//! through the coordinator's `Alerts` service.

use std::time::Duration;

use anom_lang::duration;
use anom_proto::v1;
use anom_proto::v1::alerts_client::AlertsClient;
use tonic::transport::Channel;

use super::pipeline::time;
use anom::server::pipelines::timestamp;
use anom_runtime::timebase::wall_ms;

#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Alerts, newest change first.
    List {
        /// Only this pipeline's alerts (default: every pipeline).
        #[arg(short, long)]
        pipeline: Option<String>,
        /// Only these statuses: firing, acknowledged, resolved (comma-separated).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only these severities: info, warning, critical (comma-separated).
        #[arg(long, value_delimiter = ',')]
        severity: Vec<String>,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only this rule or detector.
        #[arg(long)]
        rule: Option<String>,
        /// Label matchers that must all hold: `label=value`, `label!=value`, `label=~regex`,
        /// `label!~regex` (repeatable).
        #[arg(long = "match", short = 'm')]
        matchers: Vec<String>,
        /// Only alerts that changed since then: an age (`30m`, `1h`, `2d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON record per line (the full alert records) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every field of one alert, and its history. ID may be a unique prefix.
    Get {
        pipeline: String,
        id: String,
        /// The record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a firing alert: someone is on it (it still fires and can resolve).
    Ack(Action),
    /// Resolve an alert by hand.
    Resolve(Action),
    /// Silences: hold back notifications for matching alerts for a while.
    Silence {
        #[command(subcommand)]
        command: SilenceCommand,
    },
}

#[derive(clap::Args)]
struct Action {
    pipeline: String,
    /// The alert's id (or a unique prefix of it).
    id: String,
    /// Who you are (default: $USER).
    #[arg(long)]
    by: Option<String>,
    #[arg(short, long, default_value = "")]
    comment: String,
}

#[derive(clap::Subcommand)]
enum SilenceCommand {
    /// Silence alerts matching every --match, from now (or --starts) for --for or until
    /// --until.
    Add {
        #[arg(short, long)]
        pipeline: String,
        /// A label matcher (repeatable; at least one): `rule=cpu_high`, `key=~web-.*`.
        #[arg(long = "match", short = 'm', required = true)]
        matchers: Vec<String>,
        /// How long (`2h`, `30m`, `1d`).
        #[arg(
            long = "for",
            conflicts_with = "until",
            required_unless_present = "until"
        )]
        duration: Option<String>,
        /// When it ends (RFC 3339, e.g. 2026-11-21T18:00:00Z).
        #[arg(long)]
        until: Option<String>,
        /// When it starts (RFC 3339; default: now).
        #[arg(long)]
        starts: Option<String>,
        /// Who you are (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[arg(short, long, default_value = "")]
        comment: String,
    },
    /// Silences in force or pending (--all: expired ones too).
    List {
        #[arg(short, long)]
        pipeline: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// End a silence now (it stays listed with --all).
    Expire { pipeline: String, id: String },
}

fn client(url: &str) -> anyhow::Result<AlertsClient<Channel>> {
    Ok(AlertsClient::new(anom::agent::channel(url)?))
}

fn fail(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// `--by`, else `$USER`.
fn who(by: Option<String>) -> anyhow::Result<String> {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("--by: expected who you are, found nothing ($USER is not set either)")
        })
}

fn rfc3339(flag: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t: jiff::Timestamp = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "{flag}: expected an RFC 3339 time such as 2026-11-21T18:00:00Z, found `{text}`"
        )
    })?;
    Ok(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    duration::parse(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// How long ago, coarsely: `45s`, `12m`, `3h5m`, `2d4h`.
fn age(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = jiff::Timestamp::now().as_second();
    let secs = (now - t.seconds).max(0) as u64;
    let coarse = match secs {
        s if s >= 86_400 => s - s % 3600,
        s if s >= 3600 => s - s % 60,
        s => s,
    };
    duration::format(Duration::from_secs(coarse))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Prints rows as columns as wide as their widest cell; the last column is not padded.
fn table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The alert named by `id`, which may be a unique prefix of one of the pipeline's alert ids
/// (the table shows them shortened).
async fn find_alert(
    c: &mut AlertsClient<Channel>,
    pipeline: &str,
    id: &str,
) -> anyhow::Result<v1::Alert> {
    let get = |id: &str| v1::GetAlertRequest {
        pipeline: pipeline.to_string(),
        id: id.to_string(),
    };
    match c.get(get(id)).await {
        Ok(a) => return Ok(a.into_inner()),
        // An unknown pipeline is reported by the List below.
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(fail(s)),
    }
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list(v1::ListAlertsRequest {
                pipeline: pipeline.to_string(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .map_err(fail)?
            .into_inner();
        found.extend(
            page.alerts
                .into_iter()
                .map(|a| a.id)
                .filter(|a| a.starts_with(id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    match found.as_slice() {
        [one] => Ok(c.get(get(one)).await.map_err(fail)?.into_inner()),
        [] => anyhow::bail!("pipeline `{pipeline}` has no alert `{id}`"),
        many => anyhow::bail!(
            "`{id}` is ambiguous: expected a prefix of one alert of `{pipeline}`, found {} ({})",
            many.len(),
            many.join(", ")
        ),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut c = client(&args.coordinator)?;
    match args.command {
        Command::List {
            pipeline,
            status,
            severity,
            key,
            rule,
            matchers,
            since,
            limit,
            json,
        } => {
            let from = since
                .map(|s| {
                    super::parse_time(&s, wall_ms()).map_err(|e| anyhow::anyhow!("--since: {e}"))
                })
                .transpose()?
                .and_then(timestamp);
            let mut request = v1::ListAlertsRequest {
                pipeline: pipeline.unwrap_or_default(),
                status,
                severity,
                key: key.unwrap_or_default(),
                rule: rule.unwrap_or_default(),
                matchers,
                from,
                ..Default::default()
            };
            let mut alerts = Vec::new();
            let mut total = 0;
            while alerts.len() < limit {
                request.page_size = (limit - alerts.len()).min(1000) as u32;
                let page = c.list(request.clone()).await.map_err(fail)?.into_inner();
                total = page.total;
                alerts.extend(page.alerts);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            if json {
                for a in &alerts {
                    println!("{}", a.json);
                }
                return Ok(());
            }
            let mut rows = vec![[
                "ID", "PIPELINE", "RULE", "KEY", "SEVERITY", "STATUS", "SINCE", "COUNT", "MESSAGE",
            ]
            .map(String::from)
            .to_vec()];
            for a in &alerts {
                rows.push(vec![
                    short(&a.id).to_string(),
                    a.pipeline.clone(),
                    a.rule.clone(),
                    a.key.clone(),
                    a.severity.clone(),
                    a.status.clone(),
                    age(&a.starts_at),
                    a.count.to_string(),
                    a.message.clone(),
                ]);
            }
            table(&rows);
            if (total as usize) > alerts.len() {
                eprintln!(
                    "showing {} of {total} alerts (--limit to see more)",
                    alerts.len()
                );
            }
        }
        Command::Get { pipeline, id, json } => {
            let a = find_alert(&mut c, &pipeline, &id).await?;
            if json {
                let v: serde_json::Value = serde_json::from_str(&a.json)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_alert(&a);
            }
        }
        Command::Ack(action) => act(&mut c, action, true).await?,
        Command::Resolve(action) => act(&mut c, action, false).await?,
        Command::Silence { command } => silence(&mut c, command).await?,
    }
    Ok(())
}

fn print_alert(a: &v1::Alert) {
    let field = |name: &str, value: &str| {
        if !value.is_empty() {
            println!("{:<16}{value}", format!("{name}:"));
        }
    };
    field("id", &a.id);
    field("pipeline", &a.pipeline);
    field("rule", &a.rule);
    field("key", &a.key);
    field("severity", &a.severity);
    field("status", &a.status);
    field("message", &a.message);
    field("explanation", &a.explanation);
    field(
        "starts at",
        &format!("{} ({} ago)", time(&a.starts_at), age(&a.starts_at)),
    );
    field("updated at", &time(&a.updated_at));
    if a.ends_at.is_some() {
        field("ends at", &time(&a.ends_at));
    }
    field("count", &a.count.to_string());
    if !a.acknowledged_by.is_empty() {
        field(
            "acknowledged",
            &format!("by {} at {}", a.acknowledged_by, time(&a.acknowledged_at)),
        );
    }
    field("resolved by", &a.resolved_by);
    let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    field("labels", &labels.join(", "));
    field("version", &a.version.to_string());
    if let Ok(record) = serde_json::from_str::<serde_json::Value>(&a.json) {
        for name in ["event", "detection", "verdict"] {
            match record.get(name) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => field(name, s),
                Some(v) => field(name, &v.to_string()),
            }
        }
    }
    if !a.history.is_empty() {
        println!("history:");
        let rows: Vec<Vec<String>> = a
            .history
            .iter()
            .map(|t| {
                vec![
                    format!("  {}", time(&t.at)),
                    t.status.clone(),
                    t.by.clone(),
                    t.note.clone(),
                ]
            })
            .collect();
        table(&rows);
    }
}

async fn act(c: &mut AlertsClient<Channel>, action: Action, ack: bool) -> anyhow::Result<()> {
    let id = find_alert(c, &action.pipeline, &action.id).await?.id;
    let request = v1::AlertActionRequest {
        pipeline: action.pipeline,
        id,
        by: who(action.by)?,
        comment: action.comment,
    };
    let r = if ack {
        c.acknowledge(request).await
    } else {
        c.resolve(request).await
    }
    .map_err(fail)?
    .into_inner();
    let a = r.alert.unwrap_or_default();
    if r.applied {
        println!(
            "{}: {} ({}/{} {})",
            a.id, a.status, a.pipeline, a.rule, a.key
        );
    } else {
        println!("{}: {}", a.id, r.note);
    }
    Ok(())
}

async fn silence(c: &mut AlertsClient<Channel>, command: SilenceCommand) -> anyhow::Result<()> {
    match command {
        SilenceCommand::Add {
            pipeline,
            matchers,
            duration,
            until,
            starts,
            by,
            comment,
        } => {
            let request = v1::AddSilenceRequest {
                pipeline,
                matchers,
                starts_at: starts.map(|s| rfc3339("--starts", &s)).transpose()?,
                ends_at: until.map(|s| rfc3339("--until", &s)).transpose()?,
                duration: duration
                    .map(|d| -> anyhow::Result<prost_types::Duration> {
                        let d = parse_duration("--for", &d)?;
                        Ok(prost_types::Duration {
                            seconds: d.as_secs() as i64,
                            nanos: d.subsec_nanos() as i32,
                        })
                    })
                    .transpose()?,
                created_by: who(by)?,
                comment,
            };
            let s = c.add_silence(request).await.map_err(fail)?.into_inner();
            println!(
                "silence {} added to {}: {} from {} until {} ({})",
                s.id,
                s.pipeline,
                s.matchers.join(", "),
                time(&s.starts_at),
                time(&s.ends_at),
                s.state
            );
        }
        SilenceCommand::List { pipeline, all } => {
            let r = c
                .list_silences(v1::ListSilencesRequest {
                    pipeline: pipeline.unwrap_or_default(),
                    include_expired: all,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let mut rows = vec![[
                "ID", "PIPELINE", "STATE", "MATCHERS", "STARTS", "ENDS", "BY", "COMMENT",
            ]
            .map(String::from)
            .to_vec()];
            for s in &r.silences {
                rows.push(vec![
                    s.id.clone(),
                    s.pipeline.clone(),
                    s.state.clone(),
                    s.matchers.join(","),
                    time(&s.starts_at),
                    time(&s.ends_at),
                    s.created_by.clone(),
                    s.comment.clone(),
                ]);
            }
            table(&rows);
        }
        SilenceCommand::Expire { pipeline, id } => {
            let s = c
                .expire_silence(v1::ExpireSilenceRequest { pipeline, id })
                .await
                .map_err(fail)?
                .into_inner();
            println!("silence {} expired at {}", s.id, time(&s.ends_at));
        }
    }
    Ok(())
}

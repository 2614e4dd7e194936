//! `anom backtest`: replays a stretch of a pipeline's events through one of its versions (or
//! a draft), or two side by side, on the coordinator, with progress; and lists, shows and
//! cancels backtests.

use std::path::PathBuf;
use std::time::Duration;

use anom_proto::v1;
use anom_proto::v1::backtests_client::BacktestsClient;
use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use super::parse_time;
use super::pipeline::time;
use anom::server::pipelines::timestamp;
use anom_runtime::timebase::wall_ms;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Run,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Backtests kept, newest first.
    List {
        /// Only this pipeline's.
        #[arg(short, long)]
        pipeline: Option<String>,
    },
    /// A finished backtest's report.
    Show {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Stops a running backtest.
    Cancel { id: String },
}

#[derive(clap::Args)]
struct Run {
    /// The pipeline whose events to replay.
    #[arg(short, long)]
    pipeline: Option<String>,
    /// The version to run (default: the current one).
    #[arg(long, conflicts_with = "file")]
    version: Option<u32>,
    /// Run this draft definition instead of a stored version.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Also run this version over the same events and compare.
    #[arg(long, conflicts_with = "compare_file")]
    compare_version: Option<u32>,
    /// Also run this draft over the same events and compare.
    #[arg(long)]
    compare_file: Option<PathBuf>,
    /// Start of the range (when the stream stored the events): RFC 3339 or an age (30d).
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive), same forms. Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Start of the range as a stream sequence.
    #[arg(long, conflicts_with = "from")]
    from_seq: Option<u64>,
    /// End of the range as a stream sequence (exclusive).
    #[arg(long, conflicts_with = "to")]
    to_seq: Option<u64>,
    /// Labelled anomaly windows: a JSON file of {start, end, key?, label?}.
    #[arg(long, conflicts_with = "label_field")]
    labels: Option<PathBuf>,
    /// Labels from the events: this field is true on anomalous ones.
    #[arg(long)]
    label_field: Option<String>,
    /// Plot this key's series in the report, with its detections and alerts.
    #[arg(long)]
    plot_key: Option<String>,
    /// Plot this field or aggregate (default: the first numeric field; alone: of the key with
    /// the most alerts).
    #[arg(long)]
    plot_field: Option<String>,
    /// At most this many events a second (default: as fast as it goes).
    #[arg(long)]
    max_rate: Option<f64>,
    /// An alert budget (`5/day`, `2/h`, `10/week`): the report suggests, for each detector,
    /// the most sensitive threshold that keeps within it.
    #[arg(long, value_parser = parse_budget)]
    budget: Option<f64>,
    /// Start it and print its id without waiting.
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(clap::Args)]
struct Output {
    /// markdown (default), json or html (default for an --out ending in .html).
    #[arg(long)]
    format: Option<String>,
    /// Write the report here instead of printing it.
    #[arg(short, long)]
    out: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut c = BacktestsClient::new(anom::agent::channel(&args.coordinator)?);
    match args.command {
        Some(Command::List { pipeline }) => list(&mut c, pipeline).await,
        Some(Command::Show { id, output }) => report(&mut c, &id, &output).await,
        Some(Command::Cancel { id }) => {
            let s = c
                .cancel(v1::BacktestId { id })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!("{}: {}", s.id, s.state);
            Ok(())
        }
        None => start(&mut c, args.run).await,
    }
}

fn draft(path: &PathBuf) -> anyhow::Result<v1::BacktestTarget> {
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(v1::BacktestTarget {
        source: Some(v1::backtest_target::Source::Draft(v1::Definition {
            source: Some(v1::definition::Source::Yaml(yaml)),
            source_name: path.display().to_string(),
        })),
    })
}

fn version(v: Option<u32>) -> v1::BacktestTarget {
    v1::BacktestTarget {
        source: Some(v1::backtest_target::Source::Version(v.unwrap_or(0))),
    }
}

async fn start(c: &mut BacktestsClient<Channel>, run: Run) -> anyhow::Result<()> {
    let Some(pipeline) = run.pipeline.clone() else {
        anyhow::bail!("expected --pipeline NAME (or a subcommand: list, show, cancel)");
    };
    let now = wall_ms();
    let at = |t: &Option<String>| {
        t.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map(|ms| ms.and_then(timestamp))
    };
    let labels_windows_json = match &run.labels {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    let target = match &run.file {
        Some(path) => draft(path)?,
        None => version(run.version),
    };
    let compare = match (&run.compare_file, run.compare_version) {
        (Some(path), _) => Some(draft(path)?),
        (None, Some(v)) => Some(version(Some(v))),
        (None, None) => None,
    };
    let started = c
        .start(v1::StartBacktestRequest {
            pipeline,
            target: Some(target),
            compare,
            from: at(&run.from)?,
            to: at(&run.to)?,
            from_sequence: run.from_seq.unwrap_or(0),
            to_sequence: run.to_seq.unwrap_or(0),
            labels_field: run.label_field.clone().unwrap_or_default(),
            labels_windows_json,
            plot_key: run.plot_key.clone().unwrap_or_default(),
            plot_field: run.plot_field.clone().unwrap_or_default(),
            max_rate: run.max_rate.unwrap_or(0.0),
            budget_per_day: run.budget.unwrap_or(0.0),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let id = started.id.clone();
    if run.detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!(
        "backtest {id}: {} version {}",
        started.pipeline, started.versions
    );
    let bar = ProgressBar::new(1000);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {percent:>3}%  {msg}",
    )?);
    let mut updates = c
        .watch(v1::BacktestId { id: id.clone() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut last = started;
    loop {
        tokio::select! {
            _ = super::stop_requested() => {
                bar.abandon_with_message("cancelling");
                let s = c.cancel(v1::BacktestId { id: id.clone() }).await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
                anyhow::bail!("backtest {id} {}", s.state);
            }
            next = updates.next() => match next {
                Some(Ok(s)) => {
                    bar.set_position((s.fraction * 1000.0) as u64);
                    bar.set_message(format!(
                        "{} events, {:.0}/s, ETA {}",
                        s.read,
                        s.messages_per_s,
                        anom_lang::duration::format(Duration::from_secs_f64(s.eta_seconds.max(0.0)))
                    ));
                    last = s;
                }
                Some(Err(s)) => anyhow::bail!("{}", s.message()),
                None => break,
            }
        }
    }
    bar.finish_and_clear();
    if last.state != "done" {
        anyhow::bail!(
            "backtest {id} {}{}",
            last.state,
            if last.error.is_empty() {
                String::new()
            } else {
                format!(": {}", last.error)
            }
        );
    }
    eprintln!(
        "backtest {id}: {} messages in {:.1} s ({:.0}/s), alerts: {}",
        last.read,
        last.finished_at.map_or(0.0, |f| {
            let c = last.created_at.unwrap_or_default();
            (f.seconds - c.seconds) as f64 + f64::from(f.nanos - c.nanos) / 1e9
        }),
        last.messages_per_s,
        last.alerts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    report(c, &id, &run.output).await
}

async fn report(c: &mut BacktestsClient<Channel>, id: &str, output: &Output) -> anyhow::Result<()> {
    let format = output.format.clone().unwrap_or_else(|| {
        match output
            .out
            .as_ref()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
        {
            Some("html") => "html".into(),
            Some("json") => "json".into(),
            _ => "markdown".into(),
        }
    });
    let mut chunks = c
        .get_report(v1::GetReportRequest {
            id: id.to_string(),
            format,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    // Written as it arrives: a report of any size never sits whole in memory twice.
    let mut sink: Box<dyn std::io::Write> = match &output.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut last = false;
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        sink.write_all(chunk.content.as_bytes())?;
        last = chunk.last;
    }
    sink.flush()?;
    anyhow::ensure!(last, "the report of {id} ended before its last chunk");
    if let Some(path) = &output.out {
        eprintln!("report: {}", path.display());
    }
    Ok(())
}

async fn list(c: &mut BacktestsClient<Channel>, pipeline: Option<String>) -> anyhow::Result<()> {
    let all = c
        .list(v1::ListBacktestsRequest {
            pipeline: pipeline.unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .backtests;
    println!(
        "{:<40} {:<12} {:<10} {:>10} {:>10}  STARTED",
        "ID", "VERSIONS", "STATE", "EVENTS", "ALERTS"
    );
    for b in all {
        println!(
            "{:<40} {:<12} {:<10} {:>10} {:>10}  {}",
            b.id,
            b.versions,
            b.state,
            b.read,
            b.alerts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            time(&b.created_at)
        );
    }
    Ok(())
}

/// `5/day`, `2/h`, `10/week` (or a bare number: per day) as alerts per day.
fn parse_budget(text: &str) -> Result<f64, String> {
    let (n, per) = text.split_once('/').unwrap_or((text, "day"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of alerts such as 5/day, found `{text}`"))?;
    let days = match per.trim() {
        "d" | "day" => 1.0,
        "h" | "hour" => 1.0 / 24.0,
        "w" | "week" => 7.0,
        other => {
            return Err(format!(
                "expected alerts per day, h or week (5/day), found `/{other}`"
            ))
        }
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!(
            "expected a positive number of alerts, found `{text}`"
        ));
    }
    Ok(n / days)
}

#[cfg(test)]
mod tests {
    use super::parse_budget;

    #[test]
    fn budgets_read_as_alerts_per_day() {
        assert_eq!(parse_budget("5/day"), Ok(5.0));
        assert_eq!(parse_budget("2/h"), Ok(48.0));
        assert_eq!(parse_budget("14/week"), Ok(2.0));
        assert_eq!(parse_budget("3"), Ok(3.0));
        assert!(parse_budget("5/month").unwrap_err().contains("`/month`"));
        assert!(parse_budget("lots/day")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_budget("0/day").is_err());
    }
}

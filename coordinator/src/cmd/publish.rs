//! `anom publish`: send events from a JSON-lines or CSV file to a pipeline's input subject,
//! with JetStream acks (nothing is fire-and-forget) and a progress bar.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anom_pipeline::csv::CsvEvents;
use anom_pipeline::subjects::input_subject;
use anyhow::Context as _;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline to publish to (subject anom.<pipeline>.in).
    #[arg(long)]
    pipeline: String,
    /// JSON lines: one event object per line.
    #[arg(long, conflicts_with = "csv", required_unless_present = "csv")]
    file: Option<PathBuf>,
    /// CSV with a header row; numbers and true/false become JSON numbers and booleans.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Events per second (default: as fast as the server acknowledges).
    #[arg(long)]
    rate: Option<f64>,
    /// NATS server URL.
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let events = match (&args.file, &args.csv) {
        (Some(f), _) => read_jsonl(f)?,
        (None, Some(c)) => read_csv(c)?,
        (None, None) => anyhow::bail!("give --file or --csv"),
    };
    let client = async_nats::connect(&args.nats)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats))?;
    let js = async_nats::jetstream::new(client);
    let bar = ProgressBar::new(events.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let n = publish(
        &js,
        &input_subject(&args.pipeline),
        events,
        args.rate,
        Some(&bar),
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {n} events to {} in {secs:.2}s ({:.0}/s)",
        input_subject(&args.pipeline),
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Publishes `events` to `subject`, keeping many acks in flight (awaited in order), paced
/// to `rate` events/s if given. Returns how many the server acknowledged.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    events: Vec<Bytes>,
    rate: Option<f64>,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<usize> {
    const IN_FLIGHT: usize = 2048;
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    let started = Instant::now();
    let mut confirmed = 0usize;
    for (i, event) in events.into_iter().enumerate() {
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let ack = js
            .publish(subject.to_string(), event)
            .await
            .with_context(|| format!("cannot publish to {subject}"))?;
        acks.push_back(ack);
        // Below the client's 5,000 acks in flight, or publishing waits on acks never awaited.
        while acks.len() >= IN_FLIGHT {
            confirm_oldest(&mut acks, subject, bar).await?;
            confirmed += 1;
        }
    }
    while !acks.is_empty() {
        confirm_oldest(&mut acks, subject, bar).await?;
        confirmed += 1;
    }
    Ok(confirmed)
}

async fn confirm_oldest(
    acks: &mut VecDeque<async_nats::jetstream::context::PublishAckFuture>,
    subject: &str,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    if let Some(ack) = acks.pop_front() {
        ack.await.with_context(|| {
            format!("{subject}: no stream accepted the event (is a worker running?)")
        })?;
        if let Some(bar) = bar {
            bar.inc(1);
        }
    }
    Ok(())
}

/// One event per non-empty line, sent as it is written.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| Bytes::copy_from_slice(l.as_bytes()))
        .collect())
}

/// Each row becomes a JSON object keyed by the header row (`anom_pipeline::csv`: empty cells
/// are left out, numbers and true/false typed). A row that cannot become an event stops the
/// publish before anything is sent, with its line.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows = CsvEvents::new(std::io::BufReader::new(file))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for row in rows {
        let event = row
            .event
            .map_err(|r| anyhow::anyhow!("{}: {}", path.display(), r.reason))?;
        events.push(Bytes::from(event));
    }
    Ok(events)
}

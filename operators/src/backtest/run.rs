//! One backtest: read the range once, run it through each version's engine on a thread of
//! its own (at a lower CPU priority than live work), collect, report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::collector::{Collector, PlotSpec};
use super::report::{Comparison, Report};
use super::source::{Range, Reader};
use super::{BacktestError, Depth, Engine, Labels, Raw};
use crate::model_registry::ModelRegistry;
use anom_pipeline::Pipeline;
use anom_runtime::metrics::Metrics;

/// What to run.
pub struct Spec {
    /// One version (a report) or two (a comparison), each with the name it is reported by
    /// (its version number, or "draft").
    pub versions: Vec<(String, Arc<Pipeline>)>,
    pub range: Range,
    pub labels: Option<Labels>,
    pub plot: Option<PlotSpec>,
    /// Raw messages per batch.
    pub batch: usize,
    /// At most this many messages a second (None: as fast as it goes).
    pub max_rate: Option<f64>,
    /// Alerts a day a detector's suggested threshold must keep within (`--budget 5/day`).
    pub budget_per_day: Option<f64>,
}

/// Where a running backtest stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub read: u64,
    /// 0..=1.
    pub fraction: f64,
    pub messages_per_s: f64,
    pub eta_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Report(Box<Report>),
    Comparison(Box<Comparison>),
}

/// Runs `spec`; `progress` is told about four times a second. Stops with
/// [`BacktestError::Cancelled`] when `cancel` fires.
pub async fn run(
    js: &jetstream::Context,
    spec: Spec,
    models: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    mut progress: impl FnMut(Progress),
    cancel: CancellationToken,
) -> Result<Outcome, BacktestError> {
    let Some((_, first)) = spec.versions.first() else {
        return Ok(Outcome::Report(Box::default()));
    };
    let pipeline_name = first.name.clone();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<Raw>>(8);
    let versions = spec.versions.clone();
    let (labels, plot) = (spec.labels.clone(), spec.plot.clone());
    let budget = spec.budget_per_day;
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("backtest".into())
        .spawn(move || {
            let _ = done_tx.send(process(
                rx, versions, labels, plot, budget, &models, &metrics,
            ));
        })?;
    let read = forward(
        js,
        &pipeline_name,
        &spec,
        &tx,
        started,
        &mut progress,
        &cancel,
    )
    .await;
    drop(tx);
    let reports = done.await.map_err(|_| BacktestError::Read {
        stream: pipeline_name.clone(),
        message: "the backtest thread stopped without a result".into(),
    })??;
    if cancel.is_cancelled() {
        return Err(BacktestError::Cancelled);
    }
    let (stream, messages) = read?;
    let seconds = started.elapsed().as_secs_f64();
    progress(Progress {
        read: messages,
        fraction: 1.0,
        messages_per_s: messages as f64 / seconds.max(1e-9),
        eta_s: Some(0.0),
    });
    let mut reports: Vec<Report> = reports
        .into_iter()
        .map(|mut r| {
            r.range = spec.range;
            r.stream = stream.clone();
            r.messages = messages;
            r.seconds = seconds;
            r.messages_per_s = messages as f64 / seconds.max(1e-9);
            r
        })
        .collect();
    Ok(match (reports.pop(), reports.pop()) {
        (Some(b), Some(a)) => Outcome::Comparison(Box::new(Comparison::new(a, b))),
        (Some(a), None) => Outcome::Report(Box::new(a)),
        _ => Outcome::Report(Box::default()),
    })
}

/// Reads the range and hands it to the engine thread; returns the stream read and how many
/// messages.
async fn forward(
    js: &jetstream::Context,
    pipeline: &str,
    spec: &Spec,
    tx: &mpsc::Sender<Vec<Raw>>,
    started: Instant,
    progress: &mut impl FnMut(Progress),
    cancel: &CancellationToken,
) -> Result<(String, u64), BacktestError> {
    let mut reader = Reader::open(js, pipeline, spec.range, spec.batch.max(1)).await?;
    let mut last_told = Instant::now();
    let mut read = 0;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(BacktestError::Cancelled),
            next = reader.next() => next?,
        };
        let Some((batch, at)) = next else { break };
        read = at.read;
        // The engine thread may be slower than the read: this waits for room.
        if tx.send(batch).await.is_err() {
            break;
        }
        if let Some(rate) = spec.max_rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(at.read as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if last_told.elapsed() >= Duration::from_millis(250) {
            last_told = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            progress(Progress {
                read: at.read,
                fraction: at.fraction,
                messages_per_s: at.read as f64 / secs.max(1e-9),
                eta_s: (at.fraction > 0.0).then(|| secs * (1.0 - at.fraction) / at.fraction),
            });
        }
    }
    Ok((reader.stream, read))
}

/// The engine thread: every batch through every version.
#[allow(clippy::too_many_arguments)]
fn process(
    mut rx: mpsc::Receiver<Vec<Raw>>,
    versions: Vec<(String, Arc<Pipeline>)>,
    labels: Option<Labels>,
    plot: Option<PlotSpec>,
    budget: Option<f64>,
    models: &ModelRegistry,
    metrics: &Metrics,
) -> Result<Vec<Report>, BacktestError> {
    lower_priority();
    let mut runs: Vec<(Engine, Collector)> = Vec::new();
    while let Some(batch) = rx.blocking_recv() {
        if runs.is_empty() {
            for (_, p) in &versions {
                let start = Engine::first_event_ms(p, &batch).unwrap_or_default();
                let engine = Engine::new(p.clone(), Depth::Alerts, start, models, metrics)?;
                runs.push((
                    engine,
                    Collector::new(p.clone(), labels.clone(), plot.clone(), budget),
                ));
            }
        }
        for (engine, collector) in &mut runs {
            if let Some(field) = collector.label_field().map(str::to_string) {
                for raw in &batch {
                    collector.marked.read(&field, raw.stream_seq, &raw.payload);
                }
            }
            engine.feed(&batch, collector);
            collector.end_batch();
        }
    }
    Ok(runs
        .into_iter()
        .zip(&versions)
        .map(|((mut engine, mut collector), (version, _))| {
            engine.finish(&mut collector);
            let report = collector.report();
            Report {
                version: version.clone(),
                // Without labels or a plot, events are counted, not looked at.
                first_event_ms: report.first_event_ms.or(Some(engine.start_ms())),
                last_event_ms: report.last_event_ms.or(Some(engine.now_ms())),
                ..report
            }
        })
        .collect())
}

/// Backtests share machines with live work: their thread runs at nice 10, so the live
/// stages keep the CPU when both want it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id (gettid) with a valid niceness.
    unsafe {
        let tid = nix::libc::syscall(nix::libc::SYS_gettid) as nix::libc::id_t;
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, 10);
    }
}

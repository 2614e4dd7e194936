//! The `Backtests` service: starts backtests (see `anom_operators::backtest`) in this
//! process, streams their progress, cancels them, and keeps their reports: a status record
//! per backtest in the `ANOM_BACKTESTS` bucket, the report in the `ANOM_BACKTEST_REPORTS`
//! object store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anom_operators::backtest::collector::PlotSpec;
use anom_operators::backtest::run::Outcome;
use anom_operators::backtest::{self, render, BacktestError, Labels, Position, Range, Spec};
use anom_operators::model_registry::ModelRegistry;
use anom_pipeline::Pipeline;
use anom_proto::v1;
use anom_runtime::metrics::Metrics;
use async_nats::jetstream::{self, kv, object_store};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::control::Control;
use super::pipelines::{compile, definition_text, not_found, timestamp};
use anom_runtime::timebase::wall_ms;

pub const STATUS_BUCKET: &str = "ANOM_BACKTESTS";
pub const REPORT_BUCKET: &str = "ANOM_BACKTEST_REPORTS";

/// A backtest's status as kept in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pipeline: String,
    pub state: String,
    pub versions: String,
    pub read: u64,
    pub fraction: f64,
    pub messages_per_s: f64,
    pub eta_s: f64,
    pub alerts: Vec<u64>,
    pub error: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

impl Record {
    fn message(&self) -> v1::BacktestStatus {
        v1::BacktestStatus {
            id: self.id.clone(),
            pipeline: self.pipeline.clone(),
            state: self.state.clone(),
            versions: self.versions.clone(),
            read: self.read,
            fraction: self.fraction,
            messages_per_s: self.messages_per_s,
            eta_seconds: self.eta_s,
            alerts: self.alerts.clone(),
            error: self.error.clone(),
            created_at: timestamp(self.created_ms),
            finished_at: self.finished_ms.and_then(timestamp),
        }
    }

    fn is_final(&self) -> bool {
        self.state != "running"
    }
}

struct Running {
    status: watch::Receiver<Record>,
    cancel: CancellationToken,
}

pub struct BacktestService {
    control: Arc<Control>,
    statuses: kv::Store,
    reports: object_store::ObjectStore,
    running: Arc<Mutex<HashMap<String, Running>>>,
    models: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    max_running: usize,
}

impl BacktestService {
    pub async fn open(
        control: Arc<Control>,
        models_dir: PathBuf,
        max_running: usize,
    ) -> anyhow::Result<BacktestService> {
        let js = &control.js;
        let replicas = control.streams.replicas;
        let statuses = match js.get_key_value(STATUS_BUCKET).await {
            Ok(s) => s,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: STATUS_BUCKET.into(),
                    description: "the status of every backtest".into(),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await?
            }
        };
        let reports = match js.get_object_store(REPORT_BUCKET).await {
            Ok(r) => r,
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: REPORT_BUCKET.into(),
                    description: Some("backtest reports, one JSON object per backtest".into()),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await?
            }
        };
        let metrics = Arc::new(Metrics::new());
        Ok(BacktestService {
            models: Arc::new(ModelRegistry::new(models_dir, metrics.clone())),
            metrics,
            control,
            statuses,
            reports,
            running: Arc::default(),
            max_running: max_running.max(1),
        })
    }

    /// The pipeline a target names: a stored version or a draft of the same pipeline.
    async fn resolve(
        &self,
        pipeline: &str,
        target: Option<v1::BacktestTarget>,
        what: &str,
    ) -> Result<(String, Arc<Pipeline>), Status> {
        let (label, yaml, source) = match target.and_then(|t| t.source) {
            Some(v1::backtest_target::Source::Draft(d)) => {
                let (text, source) = definition_text(Some(d))?;
                ("draft".to_string(), text, source)
            }
            version => {
                let wanted = match version {
                    Some(v1::backtest_target::Source::Version(v)) => v,
                    _ => 0,
                };
                let state = self.control.lock().await;
                let record = state
                    .pipelines
                    .get(pipeline)
                    .ok_or_else(|| not_found(pipeline))?;
                let v = if wanted == 0 {
                    record.current()
                } else {
                    record
                        .versions
                        .iter()
                        .find(|v| v.version == wanted)
                        .ok_or_else(|| {
                            Status::not_found(format!(
                                "{what}: pipeline `{pipeline}` has no version {wanted} (it has 1..={})",
                                record.current().version
                            ))
                        })?
                };
                (
                    v.version.to_string(),
                    v.yaml.clone(),
                    format!("{pipeline} version {}", v.version),
                )
            }
        };
        let p = compile(&yaml, &source).map_err(|e| {
            Status::invalid_argument(format!("{what}: invalid pipeline definition:\n{e}"))
        })?;
        if p.name != pipeline {
            return Err(Status::invalid_argument(format!(
                "{what}: expected a definition of pipeline `{pipeline}`, found one of `{}`",
                p.name
            )));
        }
        Ok((label, Arc::new(p)))
    }

    async fn stored(&self, id: &str) -> Result<Record, Status> {
        let entry = self
            .statuses
            .get(id)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read backtest {id}: {e}")))?
            .ok_or_else(|| Status::not_found(format!("no backtest `{id}`")))?;
        let mut r: Record = serde_json::from_slice(&entry)
            .map_err(|e| Status::internal(format!("backtest {id}: unreadable record: {e}")))?;
        if !r.is_final() && !self.running.lock().unwrap().contains_key(id) {
            // Its coordinator stopped while it ran.
            r.state = "interrupted".into();
        }
        Ok(r)
    }
}

async fn put(statuses: &kv::Store, r: &Record) {
    match serde_json::to_vec(r) {
        Ok(json) => {
            if let Err(e) = statuses.put(&r.id, json.into()).await {
                warn!(backtest = %r.id, error = %e, "cannot store the backtest's status");
            }
        }
        Err(e) => warn!(backtest = %r.id, error = %e, "cannot encode the backtest's status"),
    }
}

fn time_position(t: Option<prost_types::Timestamp>) -> Option<Position> {
    t.map(|t| Position::Time(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
}

#[tonic::async_trait]
impl v1::backtests_server::Backtests for BacktestService {
    async fn start(
        &self,
        request: Request<v1::StartBacktestRequest>,
    ) -> Result<Response<v1::BacktestStatus>, Status> {
        let req = request.into_inner();
        if req.pipeline.is_empty() {
            return Err(Status::invalid_argument(
                "pipeline: expected a pipeline name, found none",
            ));
        }
        let mut versions = vec![self.resolve(&req.pipeline, req.target, "target").await?];
        if let Some(compare) = req.compare {
            versions.push(
                self.resolve(&req.pipeline, Some(compare), "compare")
                    .await?,
            );
        }
        if !(req.budget_per_day.is_finite() && req.budget_per_day >= 0.0) {
            return Err(Status::invalid_argument(format!(
                "budget_per_day: expected a number of alerts per day (0: none), found {}",
                req.budget_per_day
            )));
        }
        let labels = match (req.labels_field.as_str(), req.labels_windows_json.as_str()) {
            ("", "") => None,
            (field, "") => Some(Labels::Field(field.to_string())),
            ("", json) => Some(
                Labels::windows_from_json(json)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            _ => {
                return Err(Status::invalid_argument(
                    "labels: expected a labels field or a windows file, found both",
                ))
            }
        };
        let range = Range {
            from: time_position(req.from)
                .or((req.from_sequence > 0).then_some(Position::Seq(req.from_sequence))),
            to: time_position(req.to)
                .or((req.to_sequence > 0).then_some(Position::Seq(req.to_sequence))),
        };
        if let (Some(Position::Time(a)), Some(Position::Time(b))) = (range.from, range.to) {
            if b <= a {
                return Err(Status::invalid_argument(format!(
                    "range: expected `to` after `from`, found {} ≤ {}",
                    anom_operators::alerting::record::rfc3339_ms(b),
                    anom_operators::alerting::record::rfc3339_ms(a)
                )));
            }
        }
        // A plot looks at every event (a decode each): only when asked for.
        let plot = (!req.plot_key.is_empty() || !req.plot_field.is_empty()).then(|| PlotSpec {
            key: Some(req.plot_key).filter(|k| !k.is_empty()),
            field: Some(req.plot_field).filter(|f| !f.is_empty()),
        });
        if let (Some(field), Some((_, p))) = (
            plot.as_ref().and_then(|p| p.field.as_ref()),
            versions.first(),
        ) {
            if p.scope
                .index_of(field)
                .is_none_or(|i| i >= p.enriched_width())
            {
                return Err(Status::invalid_argument(format!(
                    "plot_field: expected a field or aggregate of `{}`, found `{field}`",
                    p.name
                )));
            }
        }
        let id = format!(
            "{}-{}-{:04x}",
            req.pipeline,
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S"),
            rand::random::<u16>()
        );
        let record = Record {
            id: id.clone(),
            pipeline: req.pipeline.clone(),
            state: "running".into(),
            versions: versions
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(" vs "),
            created_ms: wall_ms(),
            ..Record::default()
        };
        let (tx, rx) = watch::channel(record.clone());
        let cancel = CancellationToken::new();
        {
            let mut running = self.running.lock().unwrap();
            if running.len() >= self.max_running {
                return Err(Status::resource_exhausted(format!(
                    "{} backtests are running (at most {}); try again when one ends",
                    running.len(),
                    self.max_running
                )));
            }
            running.insert(
                id.clone(),
                Running {
                    status: rx,
                    cancel: cancel.clone(),
                },
            );
        }
        put(&self.statuses, &record).await;
        let spec = Spec {
            versions,
            range,
            labels,
            plot,
            batch: 1000,
            max_rate: Some(req.max_rate).filter(|r| *r > 0.0),
            budget_per_day: Some(req.budget_per_day).filter(|b| *b > 0.0),
        };
        let (js, statuses, reports, running) = (
            self.control.js.clone(),
            self.statuses.clone(),
            self.reports.clone(),
            self.running.clone(),
        );
        let (models, metrics) = (self.models.clone(), self.metrics.clone());
        info!(backtest = %id, pipeline = %record.pipeline, versions = %record.versions, "backtest started");
        tokio::spawn(async move {
            let outcome = backtest::run(
                &js,
                spec,
                models,
                metrics,
                |p| {
                    tx.send_modify(|r| {
                        r.read = p.read;
                        r.fraction = p.fraction;
                        r.messages_per_s = p.messages_per_s;
                        r.eta_s = p.eta_s.unwrap_or(0.0);
                    })
                },
                cancel,
            )
            .await;
            let mut last = tx.borrow().clone();
            last.finished_ms = Some(wall_ms());
            match outcome {
                Ok(outcome) => {
                    last.alerts = match &outcome {
                        Outcome::Report(r) => vec![r.alerts.len() as u64],
                        Outcome::Comparison(c) => {
                            vec![c.a.alerts.len() as u64, c.b.alerts.len() as u64]
                        }
                    };
                    let saved = match serde_json::to_vec(&outcome) {
                        Ok(json) => reports
                            .put(format!("{}.json", last.id).as_str(), &mut json.as_slice())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match saved {
                        Ok(()) => last.state = "done".into(),
                        Err(e) => {
                            last.state = "failed".into();
                            last.error = format!("cannot store the report: {e}");
                        }
                    }
                }
                Err(BacktestError::Cancelled) => last.state = "cancelled".into(),
                Err(e) => {
                    last.state = "failed".into();
                    last.error = e.to_string();
                }
            }
            info!(backtest = %last.id, state = %last.state, read = last.read, "backtest ended");
            put(&statuses, &last).await;
            running.lock().unwrap().remove(&last.id);
            let _ = tx.send(last);
        });
        Ok(Response::new(record.message()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::BacktestStatus, Status>> + Send>>;
    type GetReportStream = Pin<Box<dyn Stream<Item = Result<v1::BacktestReport, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<v1::BacktestId>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().id;
        let rx = self
            .running
            .lock()
            .unwrap()
            .get(&id)
            .map(|r| r.status.clone());
        let Some(rx) = rx else {
            let r = self.stored(&id).await?;
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                r.message()
            )]))));
        };
        // The current status, then every change (at most four a second) until the final one.
        let stream =
            futures::stream::unfold((rx, true, false), |(mut rx, first, ended)| async move {
                if ended {
                    return None;
                }
                if !first {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    if rx.changed().await.is_err() {
                        // The run's task is gone; its last word is in the channel.
                        let r = rx.borrow().clone();
                        return Some((Ok(r.message()), (rx, false, true)));
                    }
                }
                let r = rx.borrow_and_update().clone();
                let done = r.is_final();
                Some((Ok(r.message()), (rx, false, done)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<v1::BacktestId>,
    ) -> Result<Response<v1::BacktestStatus>, Status> {
        let id = request.into_inner().id;
        let rx = self.running.lock().unwrap().get(&id).map(|r| {
            r.cancel.cancel();
            r.status.clone()
        });
        match rx {
            Some(mut rx) => {
                let ended = rx.wait_for(Record::is_final).await.map(|r| r.clone());
                match ended {
                    Ok(r) => Ok(Response::new(r.message())),
                    Err(_) => Ok(Response::new(self.stored(&id).await?.message())),
                }
            }
            None => Ok(Response::new(self.stored(&id).await?.message())),
        }
    }

    async fn list(
        &self,
        request: Request<v1::ListBacktestsRequest>,
    ) -> Result<Response<v1::ListBacktestsResponse>, Status> {
        let pipeline = request.into_inner().pipeline;
        let mut keys = self
            .statuses
            .keys()
            .await
            .map_err(|e| Status::unavailable(format!("cannot list backtests: {e}")))?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(r) = self.stored(&key).await {
                if pipeline.is_empty() || r.pipeline == pipeline {
                    records.push(r);
                }
            }
        }
        records.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        Ok(Response::new(v1::ListBacktestsResponse {
            backtests: records.iter().map(Record::message).collect(),
        }))
    }

    async fn get_report(
        &self,
        request: Request<v1::GetReportRequest>,
    ) -> Result<Response<Self::GetReportStream>, Status> {
        let req = request.into_inner();
        let r = self.stored(&req.id).await?;
        if r.state != "done" {
            return Err(Status::failed_precondition(format!(
                "backtest {} is {}: no report{}",
                r.id,
                r.state,
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.error)
                }
            )));
        }
        let mut object = self
            .reports
            .get(format!("{}.json", r.id).as_str())
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the report of {}: {e}", r.id)))?;
        let mut json = Vec::new();
        object
            .read_to_end(&mut json)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the report of {}: {e}", r.id)))?;
        let format = if req.format.is_empty() {
            "json"
        } else {
            req.format.as_str()
        };
        let content = match format {
            "json" => String::from_utf8_lossy(&json).into_owned(),
            "markdown" | "md" | "html" => {
                let outcome: Outcome = serde_json::from_slice(&json)
                    .map_err(|e| Status::internal(format!("unreadable report of {}: {e}", r.id)))?;
                match (&outcome, format) {
                    (Outcome::Report(r), "html") => render::html(r),
                    (Outcome::Report(r), _) => render::markdown(r),
                    (Outcome::Comparison(c), "html") => render::html_comparison(c),
                    (Outcome::Comparison(c), _) => render::markdown_comparison(c),
                }
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "format: expected json, markdown or html, found `{other}`"
                )))
            }
        };
        let chunks = chunks(&content, REPORT_CHUNK);
        let n = chunks.len();
        let messages: Vec<Result<v1::BacktestReport, Status>> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                Ok(v1::BacktestReport {
                    id: r.id.clone(),
                    format: format.to_string(),
                    content: text.to_string(),
                    chunk: i as u32,
                    last: i + 1 == n,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }
}

/// Bytes of report per message: well under gRPC's default 4 MiB limit.
const REPORT_CHUNK: usize = 1 << 20;

/// `text` cut into pieces of at most `max` bytes on character boundaries (at least one piece).
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod chunk_tests {
    use super::chunks;

    #[test]
    fn chunks_cut_on_character_boundaries_and_join_back() {
        let text = "aé".repeat(1000); // 3,000 bytes, 2-byte characters at odd offsets
        let parts = chunks(&text, 100);
        assert!(parts.iter().all(|p| p.len() <= 100 && !p.is_empty()));
        assert_eq!(parts.concat(), text);
        assert_eq!(chunks("", 100), vec![""]);
    }
}

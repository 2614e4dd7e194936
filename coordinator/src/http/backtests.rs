//! `/v1/backtests…`: the `Backtests` service over HTTP. Progress is a server-sent event
//! stream; a report is answered whole, in the format asked for.

use std::convert::Infallible;

use anom_proto::v1;
use anom_proto::v1::backtests_server::Backtests;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::Request;
use utoipa::{IntoParams, ToSchema};

use super::access::{self, Identity, Scope};
use super::problem::{answer, Problem};
use super::query::{self, typed};
use super::App;
use crate::time::rfc3339;

/// Where a backtest stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BacktestStatus {
    pub id: String,
    pub pipeline: String,
    /// `running`, `done`, `failed`, `cancelled` or `interrupted` (the coordinator stopped
    /// during it).
    pub state: String,
    /// What runs: `3`, `draft`, `3 vs 4`.
    pub versions: String,
    /// Events read so far.
    pub read: u64,
    /// 0..1.
    pub fraction: f64,
    pub messages_per_s: f64,
    pub eta_seconds: f64,
    /// Alerts that would have fired, per version in order.
    pub alerts: Vec<u64>,
    pub error: String,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<v1::BacktestStatus> for BacktestStatus {
    fn from(s: v1::BacktestStatus) -> BacktestStatus {
        BacktestStatus {
            created_at: rfc3339(&s.created_at),
            finished_at: rfc3339(&s.finished_at),
            id: s.id,
            pipeline: s.pipeline,
            state: s.state,
            versions: s.versions,
            read: s.read,
            fraction: s.fraction,
            messages_per_s: s.messages_per_s,
            eta_seconds: s.eta_seconds,
            alerts: s.alerts,
            error: s.error,
        }
    }
}

/// Which definition a backtest runs: a stored version, or a draft (not stored).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A stored version (0 or absent: the current one)...
    pub version: Option<u32>,
    /// ...or a draft as YAML text...
    pub draft: Option<String>,
    /// ...or a draft as JSON.
    #[schema(value_type = Option<Object>)]
    pub draft_definition: Option<Value>,
}

impl Target {
    fn message(self, field: &str) -> Result<v1::BacktestTarget, Problem> {
        use v1::backtest_target::Source;
        let source = match (self.version, self.draft, self.draft_definition) {
            (v, None, None) => Source::Version(v.unwrap_or(0)),
            (None, Some(yaml), None) => Source::Draft(draft(yaml)),
            (None, None, Some(json)) => {
                Source::Draft(draft(serde_norway::to_string(&json).map_err(|e| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("{field}.draft_definition: cannot convert to YAML: {e}"),
                    )
                })?))
            }
            _ => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("{field}: expected one of `version`, `draft` (YAML) and `draft_definition` (JSON), found several"),
                ))
            }
        };
        Ok(v1::BacktestTarget {
            source: Some(source),
        })
    }
}

fn draft(yaml: String) -> v1::Definition {
    v1::Definition {
        source: Some(v1::definition::Source::Yaml(yaml)),
        source_name: "<draft>".into(),
    }
}

/// A backtest to start.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Default: the current version.
    #[serde(default)]
    pub target: Option<Target>,
    /// Also run this one over the same events, and report the alerts only one raised.
    #[serde(default)]
    pub compare: Option<Target>,
    /// The range by when the stream stored the events: RFC 3339 or an age (`7d`)...
    pub from: Option<String>,
    pub to: Option<String>,
    /// ...or by stream sequence.
    #[serde(default)]
    pub from_sequence: u64,
    #[serde(default)]
    pub to_sequence: u64,
    /// A field of the events that is true for anomalous ones...
    #[serde(default)]
    pub labels_field: String,
    /// ...or labelled windows: `[{"start": ..., "end": ..., "key": ..., "label": ...}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub labels_windows: Option<Value>,
    /// Plot a series: `plot_key` and/or `plot_field`, or `plot: true` for the default one
    /// (the key with the most alerts, the first numeric field).
    #[serde(default)]
    pub plot: bool,
    #[serde(default)]
    pub plot_key: String,
    #[serde(default)]
    pub plot_field: String,
    /// At most this many events a second (0: as fast as it goes).
    #[serde(default)]
    pub max_rate: f64,
    /// Also suggest, per detector, the most sensitive threshold within this many alerts a day.
    #[serde(default)]
    pub budget_per_day: f64,
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/backtests", tag = "backtests",
    params(("pipeline" = String, Path)),
    request_body = StartBody,
    responses(
        (status = 202, description = "Started; follow it at /v1/backtests/{id}/progress", body = BacktestStatus),
        (status = 400, description = "A draft that does not compile, bad labels or a bad range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline or version", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "As many backtests as allowed already run", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn start(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    body: Result<Json<StartBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<BacktestStatus>), Problem> {
    access::check(&Identity::of(&headers), Scope::Write, Some(&pipeline))?;
    let Json(b) = body.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} (expected {{\"target\": {{\"version\": 2}}, \"from\": \"7d\"}})",
                e.body_text()
            ),
        )
    })?;
    let mut plot_field = b.plot_field;
    if b.plot && b.plot_key.is_empty() && plot_field.is_empty() {
        let compiled = app.control.lock().await.compiled.get(&pipeline).cloned();
        plot_field = compiled
            .as_deref()
            .and_then(anom_operators::backtest::collector::default_plot_field)
            .unwrap_or_default();
    }
    let s = answer(
        app.backtests
            .start(Request::new(v1::StartBacktestRequest {
                pipeline,
                target: Some(b.target.unwrap_or_default().message("target")?),
                compare: b.compare.map(|c| c.message("compare")).transpose()?,
                from: query::timestamp("from", b.from.as_deref())?,
                to: query::timestamp("to", b.to.as_deref())?,
                from_sequence: b.from_sequence,
                to_sequence: b.to_sequence,
                labels_field: b.labels_field,
                labels_windows_json: b.labels_windows.map(|w| w.to_string()).unwrap_or_default(),
                plot_key: b.plot_key,
                plot_field,
                max_rate: b.max_rate,
                budget_per_day: b.budget_per_day,
            }))
            .await,
    )?;
    Ok((StatusCode::ACCEPTED, Json(s.into())))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this pipeline's (default: all).
    pub pipeline: Option<String>,
}

#[utoipa::path(get, path = "/v1/backtests", tag = "backtests", params(ListQuery),
    responses((status = 200, description = "Every backtest kept, newest first", body = Vec<BacktestStatus>)))]
pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<BacktestStatus>>, Problem> {
    let q: ListQuery = typed(query.as_deref())?;
    let pipeline = q.pipeline.unwrap_or_default();
    access::check_filter(&headers, Scope::Read, &pipeline)?;
    let r = answer(
        app.backtests
            .list(Request::new(v1::ListBacktestsRequest { pipeline }))
            .await,
    )?;
    Ok(Json(r.backtests.into_iter().map(Into::into).collect()))
}

async fn watch(
    app: &App,
    id: String,
) -> Result<impl Stream<Item = Result<v1::BacktestStatus, tonic::Status>>, Problem> {
    answer(
        app.backtests
            .watch(Request::new(v1::BacktestId { id }))
            .await,
    )
}

#[utoipa::path(get, path = "/v1/backtests/{id}", tag = "backtests",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Where it stands now", body = BacktestStatus),
        (status = 404, description = "No such backtest", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BacktestStatus>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let mut statuses = Box::pin(watch(&app, id.clone()).await?);
    match statuses.try_next().await.map_err(Problem::from)? {
        Some(s) => Ok(Json(s.into())),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no backtest `{id}`"),
        )),
    }
}

#[utoipa::path(get, path = "/v1/backtests/{id}/progress", tag = "backtests",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "text/event-stream: a `status` event (a BacktestStatus) about four times a second until the final one", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such backtest", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn progress(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let statuses = watch(&app, id).await?;
    Ok(Sse::new(statuses.filter_map(|s| async move {
        let s = BacktestStatus::from(s.ok()?);
        Event::default().event("status").json_data(&s).ok().map(Ok)
    })))
}

#[utoipa::path(post, path = "/v1/backtests/{id}/cancel", tag = "backtests",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Its final status", body = BacktestStatus),
        (status = 404, description = "No such backtest", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BacktestStatus>, Problem> {
    access::check(&Identity::of(&headers), Scope::Write, None)?;
    let s = answer(
        app.backtests
            .cancel(Request::new(v1::BacktestId { id }))
            .await,
    )?;
    Ok(Json(s.into()))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `json` (default: the Report or Comparison of docs/backtests.md), `markdown` or `html`.
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/v1/backtests/{id}/report", tag = "backtests",
    params(("id" = String, Path), ReportQuery),
    responses(
        (status = 200, description = "The report, whole", content(
            (Object = "application/json"), (String = "text/markdown"), (String = "text/html"))),
        (status = 404, description = "No such backtest", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "It runs, or did not finish", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn report(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let q: ReportQuery = typed(query.as_deref())?;
    let format = q.format.unwrap_or_else(|| "json".into());
    let content_type = match format.as_str() {
        "json" => "application/json",
        "markdown" | "md" => "text/markdown; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        other => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("format: expected json, markdown or html, found `{other}`"),
            ))
        }
    };
    let chunks = answer(
        app.backtests
            .get_report(Request::new(v1::GetReportRequest { id, format }))
            .await,
    )?;
    let content: String = chunks
        .map_ok(|c| c.content)
        .try_collect::<Vec<_>>()
        .await
        .map_err(Problem::from)?
        .concat();
    Ok(([(header::CONTENT_TYPE, content_type)], content).into_response())
}

//! `/v1/alerts…` and `/v1/silences`: the `Alerts` service over HTTP, and the alerts' changes
//! live as server-sent events.
//!
//! An alert is answered as its record, exactly as stored and as published on
//! `anom.<pipeline>.alerts` (docs/alerts.md): one shape of an alert everywhere.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use anom_operators::alerting::store::ALERTS_BUCKET;
use anom_proto::v1;
use anom_proto::v1::alerts_server::Alerts;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::Request;
use utoipa::{IntoParams, ToSchema};

use super::access::{self, Identity, Scope};
use super::problem::{answer, Problem};
use super::query::{self, typed, Params};
use super::App;
use crate::time::{rfc3339, timestamp};

/// A page of alerts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertPage {
    /// Each alert's record as stored (docs/alerts.md), newest change first.
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Value>,
    /// Pass as `page_token` for the next page; empty on the last.
    pub next_page_token: String,
    /// How many alerts match, over all pages.
    pub total: u32,
}

/// What became of an acknowledgement or a resolution.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertAction {
    /// The alert as the stage left it (applied) or as it was when the command was sent.
    #[schema(value_type = Object)]
    pub alert: Value,
    /// False when the pipeline's alert stage has not applied it (yet): see `note`. The
    /// command is stored and takes effect when the stage reads it.
    pub applied: bool,
    pub note: String,
}

/// Who acknowledges or resolves, and why.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Who (required): shown in the alert and its history.
    pub by: String,
    #[serde(default)]
    pub comment: String,
}

/// A silence: notifications held back for alerts matching every matcher between two times.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Silence {
    pub id: String,
    pub pipeline: String,
    pub matchers: Vec<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub created_at: Option<String>,
    /// `active`, `pending` (starts later) or `expired`.
    pub state: String,
}

impl From<v1::Silence> for Silence {
    fn from(s: v1::Silence) -> Silence {
        Silence {
            starts_at: rfc3339(&s.starts_at),
            ends_at: rfc3339(&s.ends_at),
            created_at: rfc3339(&s.created_at),
            id: s.id,
            pipeline: s.pipeline,
            matchers: s.matchers,
            created_by: s.created_by,
            comment: s.comment,
            state: s.state,
        }
    }
}

/// A new silence.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    /// At least one: `label=value`, `label!=value`, `label=~regex`, `label!~regex`.
    pub matchers: Vec<String>,
    /// RFC 3339 (default: now).
    pub starts_at: Option<String>,
    /// Exactly one of `ends_at` (RFC 3339) and `duration` (`2h`, `30m`).
    pub ends_at: Option<String>,
    pub duration: Option<String>,
    /// Who silences (required).
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// The filters of `GET /v1/alerts`; `status`, `severity` and `matcher` may be repeated (or
/// comma-separated, for status and severity).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[allow(dead_code)] // Documents the parameters; they are read by name from `Params`.
pub struct AlertQuery {
    /// Default: every pipeline.
    pipeline: Option<String>,
    /// `firing`, `acknowledged`, `resolved`; any of those given.
    status: Option<String>,
    /// `info`, `warning`, `critical`; any of those given.
    severity: Option<String>,
    /// Exact key.
    key: Option<String>,
    /// Exact rule or detector name.
    rule: Option<String>,
    /// A label matcher that must hold (repeatable).
    matcher: Option<String>,
    /// From (inclusive): RFC 3339 or an age (`7d`).
    from: Option<String>,
    /// To (exclusive): RFC 3339 or an age.
    to: Option<String>,
    /// `updated_at` (default) or `starts_at`: which time `from` and `to` test.
    time_field: Option<String>,
    /// At most this many (default 100, at most 1000).
    page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", params(AlertQuery),
    responses(
        (status = 200, description = "The alerts matching every filter, newest change first", body = AlertPage),
        (status = 400, description = "A filter that does not parse", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<AlertPage>, Problem> {
    let q = Params::parse(query.as_deref())?;
    q.only(&[
        "pipeline",
        "status",
        "severity",
        "key",
        "rule",
        "matcher",
        "from",
        "to",
        "time_field",
        "page_size",
        "page_token",
    ])?;
    let pipeline = q.one("pipeline")?.unwrap_or_default();
    access::check_filter(&headers, Scope::Read, &pipeline)?;
    let time = |name: &str| query::timestamp(name, q.one(name)?.as_deref());
    let time_field = match q.one("time_field")?.as_deref() {
        None | Some("updated_at") => v1::TimeField::UpdatedAt,
        Some("starts_at") => v1::TimeField::StartsAt,
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("time_field: expected `updated_at` or `starts_at`, found `{other}`"),
            ))
        }
    };
    let r = answer(
        app.alerts
            .list(Request::new(v1::ListAlertsRequest {
                pipeline,
                status: q.listed("status"),
                severity: q.listed("severity"),
                key: q.one("key")?.unwrap_or_default(),
                rule: q.one("rule")?.unwrap_or_default(),
                matchers: q.all("matcher"),
                from: time("from")?,
                to: time("to")?,
                time_field: time_field as i32,
                page_size: q.number("page_size")?.unwrap_or(0),
                page_token: q.one("page_token")?.unwrap_or_default(),
            }))
            .await,
    )?;
    Ok(Json(AlertPage {
        alerts: r.alerts.iter().map(record).collect(),
        next_page_token: r.next_page_token,
        total: r.total,
    }))
}

/// An alert's record as stored.
fn record(a: &v1::Alert) -> Value {
    serde_json::from_str(&a.json).unwrap_or(Value::Null)
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/alerts/{id}", tag = "alerts",
    params(("pipeline" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "The alert's record with its history (docs/alerts.md)", body = Object),
        (status = 404, description = "No such pipeline or alert", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pipeline, id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let a = answer(
        app.alerts
            .get(Request::new(v1::GetAlertRequest { pipeline, id }))
            .await,
    )?;
    Ok(Json(record(&a)))
}

/// Acknowledge or resolve.
#[derive(Debug, Clone, Copy)]
enum Action {
    Acknowledge,
    Resolve,
}

async fn act(
    app: App,
    headers: HeaderMap,
    (pipeline, id): (String, String),
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
    action: Action,
) -> Result<Json<AlertAction>, Problem> {
    access::check(&Identity::of(&headers), Scope::Write, Some(&pipeline))?;
    let Json(body) = body.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} (expected {{\"by\": \"who\", \"comment\": \"why\"}})",
                e.body_text()
            ),
        )
    })?;
    let request = Request::new(v1::AlertActionRequest {
        pipeline,
        id,
        by: body.by,
        comment: body.comment,
    });
    let r = answer(match action {
        Action::Acknowledge => app.alerts.acknowledge(request).await,
        Action::Resolve => app.alerts.resolve(request).await,
    })?;
    Ok(Json(AlertAction {
        alert: r.alert.as_ref().map(record).unwrap_or(Value::Null),
        applied: r.applied,
        note: r.note,
    }))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/alerts/{id}/acknowledge", tag = "alerts",
    params(("pipeline" = String, Path), ("id" = String, Path)),
    request_body = ActionBody,
    responses(
        (status = 200, description = "Acknowledged (or stored for the stage to apply: see `applied`)", body = AlertAction),
        (status = 400, description = "No `by`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline or alert", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Already acknowledged or resolved", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn acknowledge(
    State(app): State<App>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AlertAction>, Problem> {
    act(app, headers, path, body, Action::Acknowledge).await
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/alerts/{id}/resolve", tag = "alerts",
    params(("pipeline" = String, Path), ("id" = String, Path)),
    request_body = ActionBody,
    responses(
        (status = 200, description = "Resolved (or stored for the stage to apply: see `applied`)", body = AlertAction),
        (status = 400, description = "No `by`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline or alert", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Already resolved", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn resolve(
    State(app): State<App>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AlertAction>, Problem> {
    act(app, headers, path, body, Action::Resolve).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SilenceQuery {
    /// Default: every pipeline.
    pub pipeline: Option<String>,
    /// Expired silences too.
    #[serde(default)]
    pub include_expired: bool,
}

#[utoipa::path(get, path = "/v1/silences", tag = "alerts", params(SilenceQuery),
    responses((status = 200, description = "Silences, newest first", body = Vec<Silence>)))]
pub async fn silences(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Silence>>, Problem> {
    let q: SilenceQuery = typed(query.as_deref())?;
    let pipeline = q.pipeline.unwrap_or_default();
    access::check_filter(&headers, Scope::Read, &pipeline)?;
    let r = answer(
        app.alerts
            .list_silences(Request::new(v1::ListSilencesRequest {
                pipeline,
                include_expired: q.include_expired,
            }))
            .await,
    )?;
    Ok(Json(r.silences.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/silences", tag = "alerts",
    params(("pipeline" = String, Path)),
    request_body = SilenceBody,
    responses(
        (status = 201, description = "The silence, in force from `starts_at`", body = Silence),
        (status = 400, description = "No matcher, a matcher that does not parse, no `created_by`, or an end before the start", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_silence(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    body: Result<Json<SilenceBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Silence>), Problem> {
    access::check(&Identity::of(&headers), Scope::Write, Some(&pipeline))?;
    let Json(body) = body.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} (expected {{\"matchers\": [\"rule=cpu_high\"], \"duration\": \"2h\", \"created_by\": \"who\"}})",
                e.body_text()
            ),
        )
    })?;
    let time = |name: &str, t: Option<String>| -> Result<Option<prost_types::Timestamp>, Problem> {
        t.map(|t| {
            t.parse::<jiff::Timestamp>()
                .map(|t| timestamp(t.as_millisecond()))
                .map_err(|_| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{name}: expected an RFC 3339 time (2026-11-01T00:00:00Z), found `{t}`"
                        ),
                    )
                })
        })
        .transpose()
    };
    let duration = body
        .duration
        .map(|d| {
            anom_lang::duration::parse(&d)
                .map(|d| prost_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                })
                .map_err(|_| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("duration: expected a duration such as `2h` or `30m`, found `{d}`"),
                    )
                })
        })
        .transpose()?;
    let s = answer(
        app.alerts
            .add_silence(Request::new(v1::AddSilenceRequest {
                pipeline,
                matchers: body.matchers,
                starts_at: time("starts_at", body.starts_at)?,
                ends_at: time("ends_at", body.ends_at)?,
                duration,
                created_by: body.created_by,
                comment: body.comment,
            }))
            .await,
    )?;
    Ok((StatusCode::CREATED, Json(s.into())))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/silences/{id}/expire", tag = "alerts",
    params(("pipeline" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "Ended now; the record is kept", body = Silence),
        (status = 404, description = "No such silence", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn expire_silence(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pipeline, id)): Path<(String, String)>,
) -> Result<Json<Silence>, Problem> {
    access::check(&Identity::of(&headers), Scope::Write, Some(&pipeline))?;
    let s = answer(
        app.alerts
            .expire_silence(Request::new(v1::ExpireSilenceRequest { pipeline, id }))
            .await,
    )?;
    Ok(Json(s.into()))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Only this pipeline's alerts (default: every pipeline's).
    pub pipeline: Option<String>,
}

/// `GET /v1/alerts/live`: every change of an alert from now on, as a server-sent event
/// `alert` whose data is the alert's record. A record older than one already sent for the
/// same alert (the store may show a retried write late, see `ALERT_HISTORY`) is skipped.
#[utoipa::path(get, path = "/v1/alerts/live", tag = "alerts", params(LiveQuery),
    responses(
        (status = 200, description = "text/event-stream: `alert` events, each an alert's record; a comment every 15 s keeps the connection open", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn live(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let LiveQuery { pipeline } = typed(query.as_deref())?;
    access::check(&Identity::of(&headers), Scope::Read, pipeline.as_deref())?;
    if let Some(p) = &pipeline {
        if !app.control.lock().await.pipelines.contains_key(p) {
            return Err(crate::server::pipelines::not_found(p).into());
        }
    }
    let subject = match &pipeline {
        Some(p) => format!("{p}.>"),
        None => ">".to_string(),
    };
    let changes = app
        .alerts
        .buckets
        .alerts
        .watch(subject)
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("alert store `{ALERTS_BUCKET}`: {e}"),
            )
        })?;
    let mut sent: HashMap<String, u64> = HashMap::new();
    let events = changes.filter_map(move |change| {
        let event = change.ok().and_then(|change| {
            let record: Value = serde_json::from_slice(&change.value).ok()?;
            let version = record.get("version").and_then(Value::as_u64).unwrap_or(0);
            let last = sent.entry(change.key.clone()).or_insert(0);
            if version != 0 && version <= *last {
                return None;
            }
            *last = version;
            Event::default().event("alert").json_data(&record).ok()
        });
        std::future::ready(event.map(Ok))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

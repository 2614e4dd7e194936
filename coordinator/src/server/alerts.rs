//! The `Alerts` service: queries over the `ANOM_ALERTS` bucket, acknowledgements and
//! resolutions carried to the pipeline's alert stage, and silences.
//!
//! The alert stage of each partition is the only writer of its alerts, so Acknowledge and
//! Resolve never write the bucket: they send a [`Command`] to that stage and watch the
//! alert's key until the stage has applied it. Silences have no such owner (the notifiers
//! only read them), so they are written here directly.
//!
//! Every call reads the buckets afresh instead of keeping a copy: the workers change alerts
//! all the time and the coordinator would otherwise need to follow every change.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use anom_operators::alerting::record::{rfc3339_ms, Alert, AlertStatus};
use anom_operators::alerting::store::{
    self, alert_key, Buckets, StoreError, ALERTS_BUCKET, SILENCES_BUCKET,
};
use anom_operators::alerting::{silence, Action, Command, Silence};
use anom_operators::stage::validate::partition_of;
use anom_pipeline::matcher::{self, Matcher};
use anom_pipeline::unit::UnitStage;
use anom_pipeline::{Pipeline, Severity};
use anom_proto::v1;
use anom_proto::v1::alerts_server::Alerts;
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value as Json;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::control::Control;
use super::pipelines::not_found;
use anom_runtime::timebase::wall_ms;

/// How long Acknowledge and Resolve wait for the alert stage (less when the call's own
/// deadline is shorter).
pub const COMMAND_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A pipeline's alerts, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounts {
    pub firing: u64,
    pub acknowledged: u64,
    /// Occurrences that started since the time asked for.
    pub started: u64,
}

pub struct AlertService {
    pub control: Arc<Control>,
    pub buckets: Buckets,
}

/// What `List` keeps, parsed and checked once per call.
struct Filter {
    statuses: Vec<AlertStatus>,
    severities: Vec<Severity>,
    key: String,
    rule: String,
    matchers: Vec<Matcher>,
    /// Nanoseconds since the epoch: from (inclusive), to (exclusive).
    from: Option<i128>,
    to: Option<i128>,
    starts_at: bool,
}

impl Filter {
    fn parse(req: &v1::ListAlertsRequest) -> Result<Filter, Status> {
        let statuses = req
            .status
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<AlertStatus>()
                    .map_err(|e| Status::invalid_argument(format!("status[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let severities = req
            .severity
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_severity(s)
                    .map_err(|e| Status::invalid_argument(format!("severity[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let (from, to) = (req.from.as_ref().map(nanos), req.to.as_ref().map(nanos));
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                return Err(Status::invalid_argument(format!(
                    "to: expected a time after from ({}), found {}",
                    show_nanos(f),
                    show_nanos(t)
                )));
            }
        }
        Ok(Filter {
            statuses,
            severities,
            key: req.key.clone(),
            rule: req.rule.clone(),
            matchers: parse_matchers(&req.matchers)?,
            from,
            to,
            starts_at: req.time_field() == v1::TimeField::StartsAt,
        })
    }

    fn keeps(&self, a: &Alert) -> bool {
        if !self.statuses.is_empty() && !self.statuses.contains(&a.status) {
            return false;
        }
        if !self.severities.is_empty() && !self.severities.contains(&a.severity) {
            return false;
        }
        if (!self.key.is_empty() && a.key != self.key)
            || (!self.rule.is_empty() && a.rule != self.rule)
        {
            return false;
        }
        if !matcher::all_match(&self.matchers, &a.labels) {
            return false;
        }
        if self.from.is_none() && self.to.is_none() {
            return true;
        }
        let field = if self.starts_at {
            &a.starts_at
        } else {
            &a.updated_at
        };
        // An alert without that time cannot be said to fall in the range.
        let Some(t) = rfc3339_nanos(field) else {
            return false;
        };
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    match s {
        "info" => Ok(Severity::Info),
        "warning" => Ok(Severity::Warning),
        "critical" => Ok(Severity::Critical),
        _ => Err(format!("expected info, warning or critical, found `{s}`")),
    }
}

fn parse_matchers(texts: &[String]) -> Result<Vec<Matcher>, Status> {
    texts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Matcher::parse(m).map_err(|e| Status::invalid_argument(format!("matchers[{i}]: {e}")))
        })
        .collect()
}

/// Where a page ends: the sort key of its last alert. Pages are cut by key, not by offset,
/// so alerts that appear while a client pages through do not shift the pages after them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    /// updated_at, newest first.
    updated: Reverse<i128>,
    pipeline: String,
    id: String,
}

impl Cursor {
    fn of(a: &Alert) -> Cursor {
        Cursor {
            // Alerts without a readable time sort last.
            updated: Reverse(rfc3339_nanos(&a.updated_at).unwrap_or(i128::MIN)),
            pipeline: a.pipeline.clone(),
            id: a.id.clone(),
        }
    }

    /// Opaque to clients: hex of the key as JSON.
    fn token(&self) -> String {
        let json = serde_json::to_vec(&(self.updated.0, &self.pipeline, &self.id))
            .expect("cursors serialize");
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn parse(token: &str) -> Result<Cursor, Status> {
        let bad = || {
            Status::invalid_argument(format!(
                "page_token: expected the next_page_token of a previous List, found `{token}`"
            ))
        };
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(bad());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let (updated, pipeline, id): (i128, String, String) =
            serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(Cursor {
            updated: Reverse(updated),
            pipeline,
            id,
        })
    }
}

/// RFC 3339 to nanoseconds since the epoch.
fn rfc3339_nanos(text: &str) -> Option<i128> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_nanosecond())
}

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn show_nanos(n: i128) -> String {
    jiff::Timestamp::from_nanosecond(n).map_or_else(|_| n.to_string(), |t| t.to_string())
}

fn proto_time(text: &str) -> Option<prost_types::Timestamp> {
    let t = text.parse::<jiff::Timestamp>().ok()?;
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// An alert record as the API gives it: the main fields typed, and the record as JSON.
fn alert_message(a: &Alert, json: String) -> v1::Alert {
    v1::Alert {
        id: a.id.clone(),
        pipeline: a.pipeline.clone(),
        rule: a.rule.clone(),
        key: a.key.clone(),
        severity: a.severity.to_string(),
        status: a.status.to_string(),
        message: a.message.clone(),
        explanation: a.explanation.clone(),
        starts_at: proto_time(&a.starts_at),
        updated_at: proto_time(&a.updated_at),
        ends_at: a.ends_at.as_deref().and_then(proto_time),
        count: a.count,
        acknowledged_by: a.acknowledged_by.clone().unwrap_or_default(),
        acknowledged_at: a.acknowledged_at.as_deref().and_then(proto_time),
        resolved_by: a.resolved_by.clone().unwrap_or_default(),
        labels: a.labels.clone().into_iter().collect(),
        history: a
            .history
            .iter()
            .map(|t| v1::AlertTransition {
                at: proto_time(&t.at),
                status: t.status.to_string(),
                by: t.by.clone(),
                note: t.note.clone(),
            })
            .collect(),
        version: a.version,
        pipeline_version: a.pipeline_version.clone(),
        json,
    }
}

/// A stored record, decoded, with its JSON kept as stored: a coordinator older than the
/// workers still passes on the fields it does not know.
struct Stored {
    alert: Alert,
    json: Json,
}

impl Stored {
    fn decode(key: &str, json: Json) -> Result<Stored, StoreError> {
        let alert = Alert::deserialize(&json).map_err(|source| StoreError::Decode {
            bucket: ALERTS_BUCKET,
            key: key.to_string(),
            source,
        })?;
        Ok(Stored { alert, json })
    }

    fn message(&self) -> v1::Alert {
        alert_message(&self.alert, self.json.to_string())
    }
}

fn silence_message(s: &Silence, now_ms: i64) -> v1::Silence {
    v1::Silence {
        id: s.id.clone(),
        pipeline: s.pipeline.clone(),
        matchers: s.matchers.iter().map(ToString::to_string).collect(),
        starts_at: proto_time(&s.starts_at),
        ends_at: proto_time(&s.ends_at),
        created_by: s.created_by.clone(),
        comment: s.comment.clone(),
        created_at: proto_time(&s.created_at),
        state: s.state(now_ms).to_string(),
    }
}

/// The bucket key of a silence (see [`store`]).
fn silence_key(pipeline: &str, id: &str) -> String {
    format!("{pipeline}.{id}")
}

/// Ids become bucket keys: refuse what a key cannot hold (it could not name a record).
fn check_name(what: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: expected a name, found nothing"
        )));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
    {
        return Err(Status::invalid_argument(format!(
            "{what}: expected letters, digits, `-`, `_` or `=`, found `{value}`"
        )));
    }
    Ok(())
}

fn required(what: &str, value: &str, expected: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: expected {expected}, found nothing"
        )));
    }
    Ok(())
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

/// Every record of `pipeline` in a bucket, as (key, JSON).
async fn read_bucket(
    bucket: &kv::Store,
    name: &'static str,
    pipeline: &str,
) -> Result<Vec<(String, Json)>, StoreError> {
    store::scan(bucket, name, pipeline)
        .await?
        .into_iter()
        .filter(|(_, bytes)| !bytes.is_empty()) // deleted
        .map(|(key, bytes)| {
            let json = store::decode(name, &key, &bytes)?;
            Ok((key, json))
        })
        .collect()
}

/// The command is in the stage's input but not applied.
fn accepted_note(why: &str) -> String {
    format!(
        "accepted; the pipeline's alert stage has not applied it yet: {why}. It takes effect when the stage reads it."
    )
}

/// A fresh random id, hex (`bytes` random bytes).
fn random_id(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// The deadline the client gave the call (`grpc-timeout`), if any: tonic ends the call when
/// it passes, so a wait must end before it to answer at all.
fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl AlertService {
    /// NOT_FOUND unless the coordinator knows the pipeline (deleted ones count: their alerts
    /// are kept).
    async fn known(&self, name: &str) -> Result<(), Status> {
        let state = self.control.lock().await;
        if state.pipelines.contains_key(name) {
            Ok(())
        } else {
            Err(not_found(name))
        }
    }

    /// The pipelines a query without one covers: those not deleted. A deleted pipeline's
    /// alerts and silences stay in the buckets, but no stage ends them any more: they are
    /// only listed when asked for by name.
    async fn listed_pipelines(&self) -> Vec<String> {
        let state = self.control.lock().await;
        state
            .pipelines
            .values()
            .filter(|p| !p.deleted)
            .map(|p| p.name.clone())
            .collect()
    }

    /// A pipeline whose alert stage can take commands.
    async fn running(&self, name: &str) -> Result<Arc<Pipeline>, Status> {
        let state = self.control.lock().await;
        let record = state.pipelines.get(name).ok_or_else(|| not_found(name))?;
        if record.deleted {
            return Err(Status::failed_precondition(format!(
                "pipeline `{name}` is deleted: its alert stage no longer runs (apply it again first)"
            )));
        }
        state.compiled.get(name).cloned().ok_or_else(|| {
            Status::failed_precondition(format!(
                "pipeline `{name}`: its current version does not compile, so its alert stage does not run"
            ))
        })
    }

    /// Why the alert stage that owns `key` cannot apply a command now, if it cannot (the
    /// pipeline is paused, or no worker runs that stage): then there is nothing to wait for.
    async fn stage_down(&self, pipeline: &Pipeline, key: &str) -> Option<String> {
        let state = self.control.lock().await;
        if state
            .pipelines
            .get(&pipeline.name)
            .is_some_and(|p| p.paused)
        {
            return Some(format!("pipeline `{}` is paused", pipeline.name));
        }
        let unit = anom_pipeline::topology::Topology::of(pipeline).unit_running(
            pipeline,
            &UnitStage::Alert,
            partition_of(key, pipeline.partitions),
        );
        (!state.owners.contains_key(&unit)).then(|| {
            format!(
                "no worker runs its alert stage for partition {}",
                unit.partition
            )
        })
    }

    /// Every alert of `pipeline`. A record that does not decode is left out (and logged)
    /// rather than failing the whole list; Get still reports it.
    async fn load(&self, pipeline: &str) -> Result<Vec<Stored>, Status> {
        Ok(read_bucket(&self.buckets.alerts, ALERTS_BUCKET, pipeline)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter_map(|(key, json)| {
                Stored::decode(&key, json)
                    .inspect_err(|e| warn!(error = %e, "alert record left out of the list"))
                    .ok()
            })
            .collect())
    }

    /// How many of `pipeline`'s alerts fire, are acknowledged, and started since `since_ms`
    /// (for the console's overview).
    pub async fn counts(&self, pipeline: &str, since_ms: i64) -> Result<AlertCounts, Status> {
        let mut counts = AlertCounts::default();
        for stored in self.load(pipeline).await? {
            let a = &stored.alert;
            match a.status {
                AlertStatus::Firing => counts.firing += 1,
                AlertStatus::Acknowledged => counts.acknowledged += 1,
                AlertStatus::Resolved => {}
            }
            let started = a
                .starts_at
                .parse::<jiff::Timestamp>()
                .map_or(i64::MIN, |t| t.as_millisecond());
            if started >= since_ms {
                counts.started += 1;
            }
        }
        Ok(counts)
    }

    /// The stored alert and the bucket revision it is at, or NOT_FOUND.
    async fn entry(&self, pipeline: &str, id: &str) -> Result<(Stored, u64), Status> {
        let key = alert_key(pipeline, id);
        let entry = self
            .buckets
            .alerts
            .entry(key.clone())
            .await
            .map_err(|e| Status::unavailable(format!("alert store `{ALERTS_BUCKET}`: {e}")))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| {
                Status::not_found(format!("pipeline `{pipeline}` has no alert `{id}`"))
            })?;
        let json: Json = serde_json::from_slice(&entry.value).map_err(|source| {
            Status::internal(
                StoreError::Decode {
                    bucket: ALERTS_BUCKET,
                    key: key.clone(),
                    source,
                }
                .to_string(),
            )
        })?;
        let stored = Stored::decode(&key, json).map_err(|e| Status::internal(e.to_string()))?;
        Ok((stored, entry.revision))
    }

    /// Sends `action` to the alert's stage and waits until the stage has applied it.
    async fn act(
        &self,
        request: Request<v1::AlertActionRequest>,
        action: Action,
    ) -> Result<Response<v1::AlertActionResponse>, Status> {
        let wait = client_deadline(request.metadata())
            .map_or(COMMAND_WAIT, |d| COMMAND_WAIT.min(d.mul_f64(0.8)));
        let req = request.into_inner();
        check_name("pipeline", &req.pipeline)?;
        check_name("id", &req.id)?;
        required("by", &req.by, "who acknowledges or resolves the alert")?;
        let pipeline = self.running(&req.pipeline).await?;
        let (before, revision) = self.entry(&req.pipeline, &req.id).await?;
        let (target, verb) = match action {
            Action::Acknowledge => (AlertStatus::Acknowledged, "acknowledge"),
            Action::Resolve => (AlertStatus::Resolved, "resolve"),
        };
        let a = &before.alert;
        match (action, a.status) {
            (_, AlertStatus::Resolved) => {
                return Err(Status::failed_precondition(format!(
                    "cannot {verb} alert `{}`: expected a firing{} alert, found it resolved{}",
                    a.id,
                    if action == Action::Resolve {
                        " or acknowledged"
                    } else {
                        ""
                    },
                    a.ends_at
                        .as_deref()
                        .map(|t| format!(" at {t}"))
                        .unwrap_or_default()
                )))
            }
            (Action::Acknowledge, AlertStatus::Acknowledged) => {
                return Err(Status::failed_precondition(format!(
                    "cannot acknowledge alert `{}`: expected a firing alert, found it acknowledged by {}{}",
                    a.id,
                    a.acknowledged_by.as_deref().unwrap_or("someone"),
                    a.acknowledged_at
                        .as_deref()
                        .map(|t| format!(" at {t}"))
                        .unwrap_or_default()
                )))
            }
            _ => {}
        }
        // Watching from the revision after the one read: a change the stage makes at any
        // time after that read is seen, even one made before the watch starts.
        let mut changes = self
            .buckets
            .alerts
            .watch_from_revision(alert_key(&req.pipeline, &req.id), revision + 1)
            .await
            .map_err(|e| Status::unavailable(format!("alert store `{ALERTS_BUCKET}`: {e}")))?;
        let command = Command {
            alert: req.id.clone(),
            action,
            by: req.by.clone(),
            comment: req.comment.clone(),
            request: format!("api-{}", random_id(16)),
        };
        store::send_command(&self.control.js, &pipeline, &a.key, &command)
            .await
            .map_err(unavailable)?;
        let accepted = |why: String| v1::AlertActionResponse {
            alert: Some(before.message()),
            applied: false,
            note: accepted_note(&why),
        };
        if let Some(why) = self.stage_down(&pipeline, &a.key).await {
            return Ok(Response::new(accepted(why)));
        }
        let version = a.version;
        let applied = tokio::time::timeout(wait, async {
            while let Some(change) = changes.next().await {
                let Ok(change) = change else { continue };
                let Ok(json) = serde_json::from_slice::<Json>(&change.value) else {
                    continue;
                };
                let Ok(now) = Stored::decode(&change.key, json) else {
                    continue;
                };
                // The target status, or resolved (nothing can follow it): the stage has
                // decided. A plain new detection (still firing) is not the answer.
                if now.alert.version > version
                    && (now.alert.status == target || now.alert.status == AlertStatus::Resolved)
                {
                    return Some(now);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        Ok(Response::new(match applied {
            Some(now) if now.alert.status == target => v1::AlertActionResponse {
                alert: Some(now.message()),
                applied: true,
                note: String::new(),
            },
            Some(now) => v1::AlertActionResponse {
                note: format!(
                    "the alert resolved ({}) before the {verb} request was applied",
                    now.alert
                        .resolved_by
                        .as_deref()
                        .unwrap_or("by the pipeline")
                ),
                alert: Some(now.message()),
                applied: false,
            },
            None => accepted(format!("it did not within {:.1} s", wait.as_secs_f64())),
        }))
    }
}

#[tonic::async_trait]
impl Alerts for AlertService {
    async fn list(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let req = request.into_inner();
        let filter = Filter::parse(&req)?;
        let page = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size: expected at most {MAX_PAGE}, found {n}"
                )))
            }
            n => n,
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(Cursor::parse(&req.page_token)?)
        };
        let pipelines: Vec<String> = if req.pipeline.is_empty() {
            self.listed_pipelines().await
        } else {
            check_name("pipeline", &req.pipeline)?;
            self.known(&req.pipeline).await?;
            vec![req.pipeline.clone()]
        };
        let mut matched: Vec<(Cursor, Stored)> = Vec::new();
        for p in &pipelines {
            matched.extend(
                self.load(p)
                    .await?
                    .into_iter()
                    .filter(|s| filter.keeps(&s.alert))
                    .map(|s| (Cursor::of(&s.alert), s)),
            );
        }
        matched.sort_by(|a, b| a.0.cmp(&b.0));
        let total = matched.len() as u32;
        let start = after.map_or(0, |c| matched.partition_point(|(k, _)| *k <= c));
        let rest = &matched[start..];
        let next_page_token = if rest.len() > page {
            rest[page - 1].0.token()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListAlertsResponse {
            alerts: rest.iter().take(page).map(|(_, s)| s.message()).collect(),
            next_page_token,
            total,
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetAlertRequest>,
    ) -> Result<Response<v1::Alert>, Status> {
        let req = request.into_inner();
        check_name("pipeline", &req.pipeline)?;
        check_name("id", &req.id)?;
        self.known(&req.pipeline).await?;
        let (stored, _) = self.entry(&req.pipeline, &req.id).await?;
        Ok(Response::new(stored.message()))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AlertActionRequest>,
    ) -> Result<Response<v1::AlertActionResponse>, Status> {
        self.act(request, Action::Acknowledge).await
    }

    async fn resolve(
        &self,
        request: Request<v1::AlertActionRequest>,
    ) -> Result<Response<v1::AlertActionResponse>, Status> {
        self.act(request, Action::Resolve).await
    }

    async fn add_silence(
        &self,
        request: Request<v1::AddSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let req = request.into_inner();
        check_name("pipeline", &req.pipeline)?;
        if req.matchers.is_empty() {
            return Err(Status::invalid_argument(
                "matchers: expected at least one label matcher such as `rule=cpu_high`, found none",
            ));
        }
        let matchers = parse_matchers(&req.matchers)?;
        required("created_by", &req.created_by, "who creates the silence")?;
        let now = wall_ms();
        let starts = req.starts_at.as_ref().map_or(now, timestamp_ms);
        let ends = match (&req.ends_at, &req.duration) {
            (Some(end), None) => timestamp_ms(end),
            (None, Some(d)) => {
                let ms = d.seconds * 1000 + i64::from(d.nanos) / 1_000_000;
                if ms <= 0 {
                    return Err(Status::invalid_argument(format!(
                        "duration: expected a positive duration, found {}.{:09} s",
                        d.seconds, d.nanos
                    )));
                }
                starts + ms
            }
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "expected one of ends_at and duration, found both",
                ))
            }
            (None, None) => {
                return Err(Status::invalid_argument(
                    "expected ends_at or duration, found neither",
                ))
            }
        };
        if ends <= starts {
            return Err(Status::invalid_argument(format!(
                "ends_at: expected a time after starts_at ({}), found {}",
                rfc3339_ms(starts),
                rfc3339_ms(ends)
            )));
        }
        if ends <= now {
            return Err(Status::invalid_argument(format!(
                "ends_at: expected a time in the future (now is {}), found {}",
                rfc3339_ms(now),
                rfc3339_ms(ends)
            )));
        }
        // Known and not deleted: a silence for a pipeline that does not run would be a typo.
        {
            let state = self.control.lock().await;
            if state.pipelines.get(&req.pipeline).is_none_or(|p| p.deleted) {
                return Err(not_found(&req.pipeline));
            }
        }
        let silence = Silence {
            id: random_id(8),
            pipeline: req.pipeline,
            matchers,
            starts_at: rfc3339_ms(starts),
            ends_at: rfc3339_ms(ends),
            created_by: req.created_by,
            comment: req.comment,
            created_at: rfc3339_ms(now),
        };
        let body = serde_json::to_vec(&silence).expect("silences serialize");
        self.buckets
            .silences
            .create(silence_key(&silence.pipeline, &silence.id), body.into())
            .await
            .map_err(|e| Status::unavailable(format!("alert store `{SILENCES_BUCKET}`: {e}")))?;
        Ok(Response::new(silence_message(&silence, now)))
    }

    async fn list_silences(
        &self,
        request: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        let req = request.into_inner();
        let pipelines: Vec<String> = if req.pipeline.is_empty() {
            self.listed_pipelines().await
        } else {
            check_name("pipeline", &req.pipeline)?;
            self.known(&req.pipeline).await?;
            vec![req.pipeline]
        };
        let now = wall_ms();
        let mut silences: Vec<Silence> = Vec::new();
        for p in &pipelines {
            let all = read_bucket(&self.buckets.silences, SILENCES_BUCKET, p)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|(key, json)| {
                    Silence::deserialize(&json).map_err(|source| {
                        Status::internal(
                            StoreError::Decode {
                                bucket: SILENCES_BUCKET,
                                key,
                                source,
                            }
                            .to_string(),
                        )
                    })
                })
                .collect::<Result<Vec<Silence>, Status>>()?;
            silences.extend(
                all.into_iter()
                    .filter(|s| req.include_expired || !s.is_expired(now)),
            );
        }
        silences.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(Response::new(v1::ListSilencesResponse {
            silences: silences.iter().map(|s| silence_message(s, now)).collect(),
        }))
    }

    async fn expire_silence(
        &self,
        request: Request<v1::ExpireSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let req = request.into_inner();
        check_name("pipeline", &req.pipeline)?;
        check_name("id", &req.id)?;
        self.known(&req.pipeline).await?;
        let key = silence_key(&req.pipeline, &req.id);
        let missing = || {
            Status::not_found(format!(
                "pipeline `{}` has no silence `{}`",
                req.pipeline, req.id
            ))
        };
        let store_error = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("alert store `{SILENCES_BUCKET}`: {e}"))
        };
        // Compare-and-set on the revision read: a concurrent change is retried on its result,
        // not overwritten.
        for _ in 0..10 {
            let entry = self
                .buckets
                .silences
                .entry(key.clone())
                .await
                .map_err(|e| store_error(&e))?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(missing)?;
            let mut silence: Silence = store::decode(SILENCES_BUCKET, &key, &entry.value)
                .map_err(|e| Status::internal(e.to_string()))?;
            let now = wall_ms();
            if silence.is_expired(now) {
                return Err(Status::failed_precondition(format!(
                    "silence `{}` already expired at {}",
                    silence.id, silence.ends_at
                )));
            }
            // A pending silence ends before it starts: it never was in force.
            if silence::millis(&silence.starts_at).is_none_or(|s| s > now) {
                silence.starts_at = rfc3339_ms(now);
            }
            silence.ends_at = rfc3339_ms(now);
            let body = serde_json::to_vec(&silence).expect("silences serialize");
            match self
                .buckets
                .silences
                .update(&key, body.into(), entry.revision)
                .await
            {
                Ok(_) => return Ok(Response::new(silence_message(&silence, now))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_error(&e)),
            }
        }
        Err(Status::aborted(format!(
            "silence `{}` kept changing while it was being expired; try again",
            req.id
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_bad_ones_say_what_was_expected() {
        let c = Cursor {
            updated: Reverse(1_790_000_000_123_456_789),
            pipeline: "payments".into(),
            id: "a1b2".into(),
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), c);
        let err = Cursor::parse("zz").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "page_token: expected the next_page_token of a previous List, found `zz`"
        );
    }

    #[test]
    fn the_newest_change_sorts_first() {
        let at = |t: &str, id: &str| Cursor {
            updated: Reverse(rfc3339_nanos(t).unwrap()),
            pipeline: "p".into(),
            id: id.into(),
        };
        // String order would put ".5Z" before "Z"; time order does not.
        let mut v = [
            at("2026-11-21T10:00:00Z", "b"),
            at("2026-11-21T10:00:00.5Z", "c"),
            at("2026-11-21T10:00:00Z", "a"),
        ];
        v.sort();
        let ids: Vec<&str> = v.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }

    #[test]
    fn a_client_deadline_is_read_from_grpc_timeout() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(client_deadline(&m), None);
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(client_deadline(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(client_deadline(&m), Some(Duration::from_secs(2)));
    }
}

//! Reading back what a pipeline kept, and resending what it refused:
//!
//! - `GET /v1/pipelines/{p}/events`: its raw events over a time range (from its history
//!   stream when it keeps one, else the ingest stream), decoded by the current schema, by key;
//! - `GET /v1/pipelines/{p}/dead-letters`: its dead letters with their reasons;
//! - `POST /v1/pipelines/{p}/dead-letters/replay`: chosen dead letters sent again to the
//!   pipeline's input, after the definition was fixed, so nothing a user sent stays stuck.
//!
//! Reads go through the backtest engine's reader (one range-reading code); nothing extra is
//! stored on the hot path. A read scans at most [`MAX_SCAN`] messages and answers the newest
//! `limit` of what it scanned, saying whether it covered the whole range.

use std::collections::VecDeque;
use std::time::Duration;

use anom_operators::backtest::source::{stream_of, Position, Range, Reader};
use anom_operators::stage::validate::key_text;
use anom_pipeline::envelope::Envelope;
use anom_pipeline::event::{decode_all, sniff, Format};
use anom_pipeline::subjects::{dlq_subject, headers, input_subject, DLQ_STREAM, INGEST_STREAM};
use anom_pipeline::Pipeline;
use async_nats::HeaderMap as NatsHeaders;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::access::{self, Identity, Scope};
use super::problem::Problem;
use super::query::{time_ms, typed};
use super::App;

/// The most messages one read scans.
pub const MAX_SCAN: u64 = 200_000;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Why an event was (or would now be) refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Refused {
    pub kind: String,
    pub reason: String,
}

/// One event as the stream stored it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoredEvent {
    /// Its message's sequence in the stream read.
    pub sequence: u64,
    /// When the stream stored it (RFC 3339).
    pub stored_at: String,
    /// Its line in an NDJSON batch.
    pub line: Option<u64>,
    pub key: Option<String>,
    /// Decoded by the current schema...
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
    /// ...or, when the current schema refuses it, its text and why.
    pub raw: Option<String>,
    pub refused: Option<Refused>,
}

/// A read of a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub stream: String,
    /// The newest `limit` events of what was scanned, oldest first.
    pub events: Vec<StoredEvent>,
    /// Messages scanned.
    pub scanned: u64,
    /// False when the scan stopped at its limit before the range's end: narrow the range.
    pub complete: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// From (inclusive): RFC 3339 or an age (`15m`, default).
    pub from: Option<String>,
    /// To (exclusive): RFC 3339 or an age (default: now).
    pub to: Option<String>,
    /// Only this key's events.
    pub key: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A dead letter: a refused input with its reason.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// Its sequence in `ANOM_DLQ`: what replay takes.
    pub sequence: u64,
    pub stored_at: String,
    /// `decode`, `schema`, `too_large`, `missing_key`, `version`, ...
    pub kind: String,
    pub reason: String,
    /// The stage that refused it (`validate`, `http`, `window`, ...).
    pub stage: String,
    /// Where it was read from.
    pub source_subject: String,
    pub source_sequence: Option<u64>,
    pub line: Option<u64>,
    pub content_type: Option<String>,
    /// The refused bytes as text (UTF-8)...
    pub payload: Option<String>,
    /// ...or in hex when they are not text (MessagePack, an internal envelope).
    pub payload_hex: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// The newest `limit` of what was scanned, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    pub scanned: u64,
    pub complete: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// From (inclusive): RFC 3339 or an age (default `7d`).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Only this kind of reason.
    pub kind: Option<String>,
    /// Only those this stage refused.
    pub stage: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Which dead letters to send again.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Their sequences in `ANOM_DLQ` (`sequence` of the listing).
    pub sequences: Vec<u64>,
    /// Keep them in the dead-letter stream after resending (default: removed once the input
    /// stored the event, so the list shows what is still stuck).
    #[serde(default)]
    pub keep: bool,
}

/// What a replay did.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ReplayReport {
    /// Sent to the pipeline's input and stored.
    pub replayed: Vec<u64>,
    /// Not sent: the current definition still refuses them (why).
    pub still_refused: Vec<ReplayRefusal>,
    /// Not dead letters of this pipeline (or no longer kept).
    pub not_found: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayRefusal {
    pub sequence: u64,
    pub kind: String,
    pub reason: String,
}

fn bad(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

fn unavailable(stream: &str, e: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read {stream}: {e}"),
    )
}

async fn compiled(app: &App, pipeline: &str) -> Result<std::sync::Arc<Pipeline>, Problem> {
    let state = app.control.lock().await;
    state
        .compiled
        .get(pipeline)
        .cloned()
        .ok_or_else(|| crate::server::pipelines::not_found(pipeline).into())
}

/// The range of a query: `from` (default `default_from` ago) to `to` (default open).
fn range(from: Option<&str>, to: Option<&str>, default_from: &str) -> Result<Range, Problem> {
    let at = |name: &str, t: &str| time_ms(name, t).map(Position::Time);
    Ok(Range {
        from: Some(at("from", from.unwrap_or(default_from))?),
        to: to.map(|t| at("to", t)).transpose()?,
    })
}

fn limit(l: Option<usize>) -> Result<usize, Problem> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(bad("limit: expected at least 1, found 0".into())),
        Some(n) if n > MAX_LIMIT => Err(bad(format!(
            "limit: expected at most {MAX_LIMIT}, found {n}"
        ))),
        Some(n) => Ok(n),
    }
}

fn rfc3339_us(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Scans `subject` of `stream` over `range`, keeping the newest `keep` items `each` makes.
async fn scan<T>(
    app: &App,
    stream: &str,
    subject: &str,
    range: Range,
    keep: usize,
    mut each: impl FnMut(&anom_operators::backtest::Raw, &mut VecDeque<T>),
) -> Result<(VecDeque<T>, u64, bool), Problem> {
    let mut reader = Reader::open_on(&app.js, stream, subject, range, 1_000)
        .await
        .map_err(|e| unavailable(stream, e))?;
    let mut kept = VecDeque::with_capacity(keep + 1);
    let mut scanned = 0u64;
    while let Some((batch, _)) = reader.next().await.map_err(|e| unavailable(stream, e))? {
        for raw in &batch {
            each(raw, &mut kept);
            while kept.len() > keep {
                kept.pop_front();
            }
        }
        scanned += batch.len() as u64;
        if scanned >= MAX_SCAN {
            return Ok((kept, scanned, false));
        }
    }
    Ok((kept, scanned, true))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/events", tag = "history",
    params(("pipeline" = String, Path), EventQuery),
    responses(
        (status = 200, description = "Its newest events in the range, decoded by the current schema", body = EventPage),
        (status = 400, description = "A bad range or limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let q: EventQuery = typed(query.as_deref())?;
    let p = compiled(&app, &pipeline).await?;
    let range = range(q.from.as_deref(), q.to.as_deref(), "15m")?;
    let keep = limit(q.limit)?;
    let stream = stream_of(&app.js, &pipeline).await;
    let (events, scanned, complete) = scan(
        &app,
        &stream,
        &input_subject(&pipeline),
        range,
        keep,
        |raw, kept| {
            let format = sniff(
                raw.headers
                    .as_ref()
                    .and_then(|h| h.get(headers::CONTENT_TYPE))
                    .map(|v| v.as_str()),
                &raw.payload,
            );
            decode_all(&p.schema, &raw.payload, format, p.max_event_bytes, |d| {
                let row = d.row.and_then(|row| Ok((key_text(&p, &row)?, row)));
                let stored = StoredEvent {
                    sequence: raw.stream_seq,
                    stored_at: rfc3339_us(raw.published_us),
                    line: d.line.map(|l| l as u64),
                    key: None,
                    event: None,
                    raw: None,
                    refused: None,
                };
                let stored = match row {
                    Ok((key, row)) => {
                        if q.key.as_ref().is_some_and(|k| *k != key) {
                            return;
                        }
                        StoredEvent {
                            key: Some(key),
                            event: Some(Value::Object(
                                p.schema
                                    .fields()
                                    .iter()
                                    .zip(&row)
                                    .map(|(f, v)| (f.name.clone(), v.to_json()))
                                    .collect(),
                            )),
                            ..stored
                        }
                    }
                    // A key filter cannot tell an undecodable event's key.
                    Err(_) if q.key.is_some() => return,
                    Err(r) => StoredEvent {
                        raw: Some(String::from_utf8_lossy(d.bytes).into_owned()),
                        refused: Some(Refused {
                            kind: r.kind.as_str().to_string(),
                            reason: r.reason,
                        }),
                        ..stored
                    },
                };
                kept.push_back(stored);
            });
        },
    )
    .await?;
    Ok(Json(EventPage {
        stream,
        events: events.into(),
        scanned,
        complete,
    }))
}

fn header(h: &Option<NatsHeaders>, name: &str) -> Option<String> {
    h.as_ref()?.get(name).map(|v| v.as_str().to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/dead-letters", tag = "history",
    params(("pipeline" = String, Path), DeadLetterQuery),
    responses(
        (status = 200, description = "Its newest dead letters in the range, with their reasons", body = DeadLetterPage),
        (status = 400, description = "A bad range or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn dead_letters(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterPage>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let q: DeadLetterQuery = typed(query.as_deref())?;
    let range = range(q.from.as_deref(), q.to.as_deref(), "7d")?;
    let keep = limit(q.limit)?;
    let (letters, scanned, complete) = scan(
        &app,
        DLQ_STREAM,
        &dlq_subject(&pipeline),
        range,
        keep,
        |raw, kept| {
            let h = |name| header(&raw.headers, name);
            let kind = h(headers::REASON_KIND).unwrap_or_default();
            let stage = h(headers::STAGE).unwrap_or_default();
            if q.kind.as_ref().is_some_and(|k| *k != kind)
                || q.stage.as_ref().is_some_and(|s| *s != stage)
            {
                return;
            }
            let text = std::str::from_utf8(&raw.payload).ok().map(String::from);
            kept.push_back(DeadLetter {
                sequence: raw.stream_seq,
                stored_at: rfc3339_us(raw.published_us),
                kind,
                reason: h(headers::REASON).unwrap_or_default(),
                stage,
                source_subject: h(headers::SOURCE_SUBJECT).unwrap_or_default(),
                source_sequence: h(headers::SOURCE_SEQUENCE).and_then(|s| s.parse().ok()),
                line: h(headers::SOURCE_LINE).and_then(|s| s.parse().ok()),
                content_type: h(headers::CONTENT_TYPE),
                payload_hex: text.is_none().then(|| hex(&raw.payload)),
                payload: text,
            });
        },
    )
    .await?;
    Ok(Json(DeadLetterPage {
        dead_letters: letters.into(),
        scanned,
        complete,
    }))
}

/// The raw event a dead letter stands for: its own bytes when it was refused as sent (by
/// validate, HTTP ingest or the unrouted watcher), else the event the refused envelope was
/// made from, read back from the ingest stream.
async fn original(
    app: &App,
    p: &Pipeline,
    letter: &async_nats::jetstream::message::StreamMessage,
) -> Result<(Bytes, Option<String>), String> {
    let content_type = letter
        .headers
        .get(headers::CONTENT_TYPE)
        .map(|v| v.as_str().to_string());
    let source = letter
        .headers
        .get(headers::SOURCE_SUBJECT)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    if source.is_empty() || source.ends_with(".in") {
        return Ok((letter.payload.clone(), content_type));
    }
    let env = Envelope::decode(&letter.payload)
        .map_err(|e| format!("an internal envelope that does not decode: {e}"))?;
    let ingest = app
        .js
        .get_stream(INGEST_STREAM)
        .await
        .map_err(|e| format!("cannot read {INGEST_STREAM}: {e}"))?;
    let raw = ingest
        .get_raw_message(env.meta.origin_seq)
        .await
        .map_err(|e| {
            format!(
                "its event ({INGEST_STREAM} sequence {}) is no longer kept: {e}",
                env.meta.origin_seq
            )
        })?;
    let ct = raw
        .headers
        .get(headers::CONTENT_TYPE)
        .map(|v| v.as_str().to_string());
    let format = sniff(ct.as_deref(), &raw.payload);
    let mut found = None;
    decode_all(&p.schema, &raw.payload, format, usize::MAX, |d| {
        if d.index == env.meta.origin_index {
            found = Some(Bytes::copy_from_slice(d.bytes));
        }
    });
    let bytes = found.ok_or_else(|| {
        format!(
            "{INGEST_STREAM} sequence {} has no event {}",
            env.meta.origin_seq, env.meta.origin_index
        )
    })?;
    Ok((bytes, ct.filter(|_| format != Format::Json)))
}

/// Waits (a while) until the pipeline's validate units run its current version: a replay
/// checked against the fixed definition but read by a validate still on the old one would
/// only be dead-lettered again.
async fn switched(app: &App, pipeline: &str) -> Result<(), Problem> {
    let deadline = tokio::time::Instant::now() + SWITCH_WAIT;
    loop {
        let (current, behind) = {
            let state = app.control.lock().await;
            (
                state.current_version(pipeline),
                state.behind(pipeline, anom_pipeline::unit::names::VALIDATE),
            )
        };
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "pipeline `{pipeline}` still validates with version {} (not the current {current}) after {} s: nothing was replayed; try again once the workers run version {current}",
                    behind
                        .iter()
                        .map(|v| if *v == 0 { "none yet".to_string() } else { v.to_string() })
                        .collect::<Vec<_>>()
                        .join(", "),
                    SWITCH_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a replay waits for the workers to switch to the current version.
const SWITCH_WAIT: Duration = Duration::from_secs(15);

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/dead-letters/replay", tag = "history",
    params(("pipeline" = String, Path)),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "What was sent again, what the current definition still refuses, and what was not found", body = ReplayReport),
        (status = 400, description = "No sequences", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workers still validate with an older version (nothing replayed)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReplayReport>, Problem> {
    access::check(&Identity::of(&headers), Scope::Write, Some(&pipeline))?;
    let Json(body) = body.map_err(|e| {
        bad(format!(
            "{} (expected {{\"sequences\": [12, 13]}})",
            e.body_text()
        ))
    })?;
    if body.sequences.is_empty() {
        return Err(bad(
            "sequences: expected the dead letters' sequences to replay, found none".into(),
        ));
    }
    if body.sequences.len() > MAX_LIMIT {
        return Err(bad(format!(
            "sequences: expected at most {MAX_LIMIT} a request, found {}",
            body.sequences.len()
        )));
    }
    let p = compiled(&app, &pipeline).await?;
    switched(&app, &pipeline).await?;
    let dlq = app
        .js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| unavailable(DLQ_STREAM, e))?;
    let subject = dlq_subject(&pipeline);
    let mut report = ReplayReport::default();
    for seq in body.sequences {
        let letter = match dlq.get_raw_message(seq).await {
            Ok(m) if m.subject.as_str() == subject => m,
            _ => {
                report.not_found.push(seq);
                continue;
            }
        };
        let refuse = |report: &mut ReplayReport, kind: &str, reason: String| {
            report.still_refused.push(ReplayRefusal {
                sequence: seq,
                kind: kind.into(),
                reason,
            })
        };
        let (bytes, content_type) = match original(&app, &p, &letter).await {
            Ok(o) => o,
            Err(why) => {
                refuse(&mut report, "gone", why);
                continue;
            }
        };
        // Checked as validate will check it: sending what is still refused would only
        // dead-letter it again.
        let format = sniff(content_type.as_deref(), &bytes);
        let mut verdict = Ok(());
        decode_all(&p.schema, &bytes, format, p.max_event_bytes, |d| {
            if verdict.is_ok() {
                verdict = d.row.and_then(|row| key_text(&p, &row).map(drop));
            }
        });
        if let Err(r) = verdict {
            refuse(&mut report, r.kind.as_str(), r.reason);
            continue;
        }
        let mut h = NatsHeaders::new();
        // Replaying the same dead letter twice within the duplicate window stores it once.
        h.insert("Nats-Msg-Id", format!("replay:{seq}").as_str());
        if let Some(ct) = &content_type {
            h.insert(headers::CONTENT_TYPE, ct.as_str());
        }
        let stored = async {
            app.js
                .publish_with_headers(input_subject(&pipeline), h, bytes)
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(10), stored).await {
            Ok(Ok(_)) => {
                if !body.keep {
                    let _ = dlq.delete_message(seq).await;
                }
                report.replayed.push(seq);
            }
            Ok(Err(e)) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("JetStream did not store the replay of dead letter {seq}: {e}"),
                )
                .with("replayed", &report.replayed))
            }
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "JetStream did not confirm the replay of dead letter {seq} within 10 s"
                    ),
                )
                .with("replayed", &report.replayed))
            }
        }
    }
    Ok(Json(report))
}

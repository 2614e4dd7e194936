//! `POST /v1/pipelines/{pipeline}/events`: events over HTTP, for applications that speak
//! only HTTP.
//!
//! The body is read as it arrives, one event at a time, on a blocking thread (CSV and line
//! splitting are synchronous readers), and handed over a bounded channel to the publisher:
//! memory holds one event and the publish window, whatever the body's size. Each event is
//! checked against the pipeline's current schema at the edge, so the answer can say which
//! lines were refused and why; accepted events are published to `anom.<pipeline>.in` (the
//! subject publishers over NATS use, so they take the same path through the pipeline),
//! refused ones to `anom.<pipeline>.dlq` with the same reason headers the validate stage
//! writes. The answer comes once JetStream has stored every one of them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anom_pipeline::csv::{CsvError, CsvEvents};
use anom_pipeline::event::{decode_all, decode_json_at, Format};
use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::subjects::{dlq_subject, headers, input_subject};
use anom_pipeline::Pipeline;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa::ToSchema;

use super::access::{self, Identity, Scope};
use super::problem::Problem;
use super::App;

/// The formats a body may be in, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one event.
    Json,
    /// `application/x-ndjson` (or `ndjson`, `jsonl`, `x-jsonlines`): one event per line.
    Ndjson,
    /// `text/csv`: a header row naming the fields, then one event per row.
    Csv,
    /// `application/msgpack` (or `x-msgpack`, `vnd.msgpack`): one map, or several
    /// concatenated.
    MsgPack,
}

pub const ACCEPTED_TYPES: &str =
    "application/json, application/x-ndjson, text/csv, application/msgpack";

impl BodyFormat {
    pub fn of(content_type: &str) -> Option<BodyFormat> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(match essence.as_str() {
            "application/json" => BodyFormat::Json,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines" => BodyFormat::Ndjson,
            "text/csv" => BodyFormat::Csv,
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                BodyFormat::MsgPack
            }
            _ => return None,
        })
    }
}

/// A refused event of the body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Refusal {
    /// Its line in the body (NDJSON, CSV; the header row of a CSV is line 1), or its position
    /// among the body's events (1-based) for MessagePack.
    pub line: u64,
    /// The reason's kind, as on the dead letter (`decode`, `schema`, `too_large`, ...).
    pub kind: String,
    pub reason: String,
}

/// What became of a body's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestReport {
    /// Events stored in the pipeline's input.
    pub accepted: u64,
    /// Events refused (each stored in the dead-letter subject with its reason).
    pub refused: u64,
    /// The first refusals (at most 1,000), in body order.
    pub refusals: Vec<Refusal>,
}

/// Most refusals listed in an answer; all of them are counted and dead-lettered.
const LISTED: usize = 1_000;
/// Publishes awaiting their acknowledgement (below the client's limit of 5,000).
const WINDOW: usize = 4_000;

/// One event read from the body, checked.
struct Item {
    line: u64,
    payload: Bytes,
    verdict: Result<(), Rejection>,
}

/// Why reading the body stopped early.
enum Stop {
    TooLarge(u64),
    Unreadable(String),
    BadCsvHeader(String),
}

#[utoipa::path(
    post,
    path = "/v1/pipelines/{pipeline}/events",
    tag = "ingest",
    params(
        ("pipeline" = String, Path, description = "The pipeline to send to"),
        ("Idempotency-Key" = Option<String>, Header, description = "Sent again with the same key within the duplicate window (2 minutes by default), a body's events are stored once"),
    ),
    request_body(
        description = "One JSON event, NDJSON, CSV with a header row, or MessagePack",
        content(
            (String = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/msgpack"),
        ),
    ),
    responses(
        (status = 200, description = "Every event stored: accepted in the input, refused in the dead-letter subject", body = IngestReport),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the limit (events before the limit were stored; see `accepted`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A Content-Type other than the four accepted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No event of the body was accepted (the refusals are listed)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "JetStream did not store the events", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn post_events(
    State(app): State<App>,
    Path(pipeline): Path<String>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestReport>, Problem> {
    access::check(
        &Identity::of(&request_headers),
        Scope::Write,
        Some(&pipeline),
    )?;
    let compiled = {
        let state = app.control.lock().await;
        match state.compiled.get(&pipeline) {
            Some(p) => p.clone(),
            None => {
                let mut names: Vec<&str> = state.compiled.keys().map(String::as_str).collect();
                names.sort_unstable();
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no pipeline named `{pipeline}` (pipelines: {}){}",
                        names.join(", "),
                        anom_lang::suggest::did_you_mean(&pipeline, names.iter().copied())
                    ),
                ));
            }
        }
    };
    let content_type = request_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = match content_type {
        None => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the request has no Content-Type: expected one of {ACCEPTED_TYPES}"),
            ))
        }
        Some(ct) => BodyFormat::of(ct).ok_or_else(|| {
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type `{ct}` is not accepted: expected one of {ACCEPTED_TYPES}"),
            )
        })?,
    };
    let limit = app.max_body_bytes;
    let declared = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(too_large(n, limit, 0));
    }
    let idempotency = request_headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let (tx, mut rx) = mpsc::channel::<Item>(1024);
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let reading = tokio::task::spawn_blocking(move || {
        let input = Limited {
            inner: SyncIoBridge::new(reader),
            read: 0,
            limit,
            over: Arc::new(AtomicBool::new(false)),
            broken: Arc::new(AtomicBool::new(false)),
        };
        read_body(input, format, &compiled, &tx)
    });

    let js = &app.js;
    let (input, dlq) = (input_subject(&pipeline), dlq_subject(&pipeline));
    let mut acks = VecDeque::new();
    let mut report = IngestReport {
        accepted: 0,
        refused: 0,
        refusals: Vec::new(),
    };
    let mut n = 0u64;
    let mut failed: Option<String> = None;
    while let Some(item) = rx.recv().await {
        n += 1;
        let mut h = async_nats::HeaderMap::new();
        if let Some(key) = &idempotency {
            h.insert("Nats-Msg-Id", format!("http:{pipeline}:{key}:{n}").as_str());
        }
        if format == BodyFormat::MsgPack {
            h.insert(headers::CONTENT_TYPE, "application/msgpack");
        }
        let subject = match &item.verdict {
            Ok(()) => {
                report.accepted += 1;
                input.clone()
            }
            Err(r) => {
                report.refused += 1;
                if report.refusals.len() < LISTED {
                    report.refusals.push(Refusal {
                        line: item.line,
                        kind: r.kind.as_str().to_string(),
                        reason: r.reason.clone(),
                    });
                }
                h.insert(headers::REASON, one_line(&r.reason).as_str());
                h.insert(headers::REASON_KIND, r.kind.as_str());
                h.insert(headers::STAGE, "http");
                h.insert(headers::SOURCE_SUBJECT, input.as_str());
                h.insert(headers::SOURCE_LINE, item.line.to_string().as_str());
                dlq.clone()
            }
        };
        match js.publish_with_headers(subject, h, item.payload).await {
            Ok(ack) => acks.push_back(ack),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
        if acks.len() >= WINDOW {
            if let Some(a) = acks.pop_front() {
                if let Err(e) = a.await {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
    }
    drop(rx);
    for a in acks {
        if let Err(e) = a.await {
            failed.get_or_insert(e.to_string());
        }
    }
    if let Some(e) = failed {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("JetStream did not store the events: {e}; send the body again (with an Idempotency-Key, what was stored is not stored twice)"),
        ));
    }
    let stopped = reading
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match stopped {
        Some(Stop::TooLarge(read)) => return Err(too_large(read, limit, report.accepted)),
        Some(Stop::Unreadable(e)) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )
            .with("accepted", report.accepted))
        }
        Some(Stop::BadCsvHeader(e)) => {
            return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e))
        }
        None => {}
    }
    if report.accepted == 0 {
        let detail = if report.refused == 0 {
            "the body holds no event".to_string()
        } else {
            format!(
                "none of the body's {} events was accepted (each is in {dlq} with its reason); the first: line {}: {}",
                report.refused, report.refusals[0].line, report.refusals[0].reason
            )
        };
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
            .with("accepted", 0)
            .with("refused", report.refused)
            .with("refusals", &report.refusals));
    }
    Ok(Json(report))
}

fn too_large(read: u64, limit: u64, accepted: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body is larger than the limit of {limit} bytes (at least {read}); {accepted} events before the limit were stored; send the rest in another request"
        ),
    )
    .with("accepted", accepted)
    .with("limit_bytes", limit)
}

fn one_line(reason: &str) -> String {
    let s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1_000)
        .collect();
    s
}

/// A reader that fails past `limit` bytes, so a body without a Content-Length is bounded too.
/// `over` tells, once a reader above it (the CSV reader) has turned the failure into its own.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: Arc<AtomicBool>,
    /// The body could not be read (the client went away): what follows is not an event.
    broken: Arc<AtomicBool>,
}

const OVER_LIMIT: &str = "the body is larger than the limit";

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| {
            self.broken.store(true, Ordering::Relaxed);
        })?;
        self.read += n as u64;
        if self.read > self.limit {
            self.over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(OVER_LIMIT));
        }
        Ok(n)
    }
}

fn stop_of(e: &std::io::Error, read: u64) -> Stop {
    if e.to_string() == OVER_LIMIT {
        Stop::TooLarge(read)
    } else {
        Stop::Unreadable(e.to_string())
    }
}

/// Reads every event of the body in `format` and sends it, checked, to the publisher.
/// Returns why it stopped early, if it did.
fn read_body<R: Read>(
    mut input: Limited<R>,
    format: BodyFormat,
    pipeline: &Arc<Pipeline>,
    tx: &mpsc::Sender<Item>,
) -> Option<Stop> {
    let schema = &pipeline.schema;
    let max = pipeline.max_event_bytes;
    let send = |item: Item| tx.blocking_send(item).is_ok();
    match format {
        BodyFormat::Json => {
            let mut event = Vec::new();
            let cap = max as u64 + 1;
            if let Err(e) = (&mut input).take(cap).read_to_end(&mut event) {
                return Some(stop_of(&e, input.read));
            }
            let verdict = if event.len() > max {
                Err(Rejection::new(
                    RejectKind::TooLarge,
                    format!(
                        "event is over {max} bytes, larger than the pipeline's max_event_bytes; send events one per line as NDJSON"
                    ),
                ))
            } else if event.iter().all(u8::is_ascii_whitespace) {
                return None;
            } else {
                decode_json_at(schema, &event, 1).map(|_| ())
            };
            send(Item {
                line: 1,
                payload: Bytes::from(event),
                verdict,
            });
            None
        }
        BodyFormat::Ndjson => {
            let mut reader = BufReader::with_capacity(64 * 1024, &mut input);
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                number += 1;
                let (len, ended) = match read_line(&mut reader, &mut line, max) {
                    Ok(r) => r,
                    Err(e) => {
                        drop(reader);
                        return Some(stop_of(&e, input.read));
                    }
                };
                if len == 0 && !ended {
                    return None;
                }
                let text = line.trim_ascii();
                if len <= max && text.is_empty() {
                    continue;
                }
                // A line over the limit is not held: its dead letter keeps its first bytes.
                let verdict = if len > max {
                    Err(Rejection::new(
                        RejectKind::TooLarge,
                        format!(
                            "event is {len} bytes, larger than the pipeline's max_event_bytes ({max})"
                        ),
                    ))
                } else {
                    decode_json_at(schema, text, number as usize).map(|_| ())
                };
                if !send(Item {
                    line: number,
                    payload: Bytes::copy_from_slice(text),
                    verdict,
                }) {
                    return None;
                }
            }
        }
        BodyFormat::Csv => {
            let (over, broken) = (input.over.clone(), input.broken.clone());
            let mut rows = match CsvEvents::new(&mut input) {
                Ok(rows) => rows,
                Err(_) if over.load(Ordering::Relaxed) => return Some(Stop::TooLarge(input.read)),
                Err(CsvError::Header(e)) if broken.load(Ordering::Relaxed) => {
                    return Some(Stop::Unreadable(e))
                }
                Err(e) => return Some(Stop::BadCsvHeader(e.to_string())),
            };
            #[allow(clippy::while_let_on_iterator)] // `rows.cells()` is read inside
            while let Some(row) = rows.next() {
                // The reader's failure came back as a row: it is not one.
                if over.load(Ordering::Relaxed) || broken.load(Ordering::Relaxed) {
                    break;
                }
                let payload = row.payload(&rows.cells());
                let verdict = match &row.event {
                    Ok(event) if event.len() > max => Err(Rejection::new(
                        RejectKind::TooLarge,
                        format!(
                            "event is {} bytes as JSON, larger than the pipeline's max_event_bytes ({max})",
                            event.len()
                        ),
                    )),
                    Ok(event) => decode_json_at(schema, event, 1).map(|_| ()),
                    Err(r) => Err(r.clone()),
                };
                if !send(Item {
                    line: row.line,
                    payload: Bytes::from(payload),
                    verdict,
                }) {
                    return None;
                }
            }
            drop(rows);
            if over.load(Ordering::Relaxed) {
                Some(Stop::TooLarge(input.read))
            } else if broken.load(Ordering::Relaxed) {
                Some(Stop::Unreadable(
                    "the body ended before its last row".into(),
                ))
            } else {
                None
            }
        }
        BodyFormat::MsgPack => {
            // Concatenated maps cannot be split without decoding them, so the body is read
            // whole (it is bounded by the limit).
            let mut body = Vec::new();
            if let Err(e) = input.read_to_end(&mut body) {
                return Some(stop_of(&e, input.read));
            }
            let mut items = Vec::new();
            decode_all(schema, &body, Format::MsgPack, max, |d| {
                items.push(Item {
                    line: d.index as u64 + 1,
                    payload: Bytes::copy_from_slice(d.bytes),
                    verdict: d.row.map(|_| ()),
                })
            });
            for item in items {
                if !send(item) {
                    break;
                }
            }
            None
        }
    }
}

/// Reads one line into `line` (without its `\n`), keeping at most `max + 1` bytes of it: a
/// longer line is consumed to its end but not held. Returns its length and whether a `\n`
/// ended it.
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    line.clear();
    let mut len = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((len, false));
        }
        let (chunk, ended) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        len += chunk.len();
        let used = chunk.len() + usize::from(ended);
        reader.consume(used);
        if ended {
            return Ok((len, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_their_formats_with_parameters_and_any_case() {
        assert_eq!(BodyFormat::of("application/json"), Some(BodyFormat::Json));
        assert_eq!(
            BodyFormat::of("Application/X-NDJSON; charset=utf-8"),
            Some(BodyFormat::Ndjson)
        );
        assert_eq!(
            BodyFormat::of("text/csv;header=present"),
            Some(BodyFormat::Csv)
        );
        assert_eq!(
            BodyFormat::of("application/vnd.msgpack"),
            Some(BodyFormat::MsgPack)
        );
        assert_eq!(BodyFormat::of("text/plain"), None);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_consumed_but_not_held() {
        let body = format!("{}\nshort\nlast", "x".repeat(100_000));
        let mut reader = BufReader::with_capacity(1024, body.as_bytes());
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).unwrap(),
            (100_000, true)
        );
        assert_eq!(line.len(), 11);
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), (5, true));
        assert_eq!(line, b"short");
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), (4, false));
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), (0, false));
    }

    /// A body that fails after `good` bytes, as when the client goes away mid-upload.
    struct Cut {
        good: std::io::Cursor<Vec<u8>>,
    }

    impl Read for Cut {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.good.read(buf)? {
                0 => Err(std::io::Error::other("connection reset")),
                n => Ok(n),
            }
        }
    }

    fn read_all(
        body: impl Read,
        format: BodyFormat,
        limit: u64,
    ) -> (Vec<(u64, bool)>, Option<Stop>) {
        let p = Arc::new(
            Pipeline::from_yaml("name: t\nkey: user\nschema:\n  user: string\n  amount: int\n")
                .unwrap(),
        );
        let (tx, mut rx) = mpsc::channel(1024);
        let input = Limited {
            inner: body,
            read: 0,
            limit,
            over: Arc::new(AtomicBool::new(false)),
            broken: Arc::new(AtomicBool::new(false)),
        };
        let stop = read_body(input, format, &p, &tx);
        drop(tx);
        let mut items = Vec::new();
        while let Ok(i) = rx.try_recv() {
            items.push((i.line, i.verdict.is_ok()));
        }
        (items, stop)
    }

    #[test]
    fn a_body_cut_short_keeps_its_whole_rows_and_dead_letters_nothing_of_the_failure() {
        let cut = || Cut {
            good: std::io::Cursor::new(b"user,amount\nann,1\nbob,2\ncid,".to_vec()),
        };
        let (items, stop) = read_all(cut(), BodyFormat::Csv, 1 << 20);
        assert_eq!(items, [(2, true), (3, true)]);
        assert!(matches!(stop, Some(Stop::Unreadable(_))));
        // Over the limit: the rows before it are kept, the rest is refused as too large.
        let body = "user,amount\nann,1\nbob,2\n".to_string() + &"cid,3\n".repeat(100);
        let (items, stop) = read_all(body.as_bytes(), BodyFormat::Csv, 30);
        assert!(items.iter().all(|(_, ok)| *ok), "{items:?}");
        assert!(matches!(stop, Some(Stop::TooLarge(_))));
        let (items, stop) = read_all(body.as_bytes(), BodyFormat::Ndjson, 10);
        assert!(items.is_empty());
        assert!(matches!(stop, Some(Stop::TooLarge(_))));
    }
}

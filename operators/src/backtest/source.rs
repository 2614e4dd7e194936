//! Reading a stretch of a pipeline's raw events: from its history stream when it keeps one
//! (`retention:` in the definition), else from the shared ingest stream.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{BacktestError, Raw};
use anom_pipeline::subjects::{history_stream, input_subject, INGEST_STREAM};

/// One end of a range: a time the stream stored the event at (epoch ms) or a sequence of
/// the stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Time(i64),
    Seq(u64),
}

/// `from` inclusive, `to` exclusive; open ends: the start of the stream, what it holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from: Option<Position>,
    pub to: Option<Position>,
}

/// Where a read stands.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadProgress {
    pub read: u64,
    /// 0..=1: by sequence, or by time when the range ends at a time.
    pub fraction: f64,
    /// Storage time of the last message read (epoch ms).
    pub stored_ms: i64,
}

/// The stream a pipeline's raw events are read from.
pub async fn stream_of(js: &jetstream::Context, pipeline: &str) -> String {
    let history = history_stream(pipeline);
    match js.get_stream(&history).await {
        Ok(_) => history,
        Err(_) => INGEST_STREAM.to_string(),
    }
}

/// Reads the raw events of one pipeline in a range, a batch at a time.
pub struct Reader {
    /// The stream read.
    pub stream: String,
    messages: pull::Stream,
    range: Range,
    batch: usize,
    total: u64,
    now_ms: i64,
    from_ms: Option<i64>,
    first_ms: Option<i64>,
    progress: ReadProgress,
    done: bool,
}

impl Reader {
    /// Starts reading `pipeline`'s events in `range`, in batches of up to `batch`.
    pub async fn open(
        js: &jetstream::Context,
        pipeline: &str,
        range: Range,
        batch: usize,
    ) -> Result<Reader, BacktestError> {
        let name = stream_of(js, pipeline).await;
        Reader::open_on(js, &name, &input_subject(pipeline), range, batch).await
    }

    /// Starts reading the messages of `stream` on `subject` in `range` (the HTTP API reads
    /// dead letters this way too).
    pub async fn open_on(
        js: &jetstream::Context,
        name: &str,
        subject: &str,
        range: Range,
        batch: usize,
    ) -> Result<Reader, BacktestError> {
        let name = name.to_string();
        let err = |message: String| BacktestError::Read {
            stream: name.clone(),
            message,
        };
        let stream = js.get_stream(&name).await.map_err(|e| err(e.to_string()))?;
        let deliver_policy = match range.from {
            Some(Position::Time(ms)) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                    .map_err(|e| err(e.to_string()))?,
            },
            Some(Position::Seq(seq)) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.max(1),
            },
            None => DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(pull::Config {
                ack_policy: AckPolicy::None,
                deliver_policy,
                filter_subject: subject.to_string(),
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut info_of = consumer.clone();
        // What is there now: messages published later are not part of the run.
        let total = info_of
            .info()
            .await
            .map_err(|e| err(e.to_string()))?
            .num_pending;
        let batch = batch.clamp(1, 10_000);
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Reader {
            stream: name.clone(),
            messages,
            range,
            batch,
            total,
            now_ms: jiff::Timestamp::now().as_millisecond(),
            from_ms: match range.from {
                Some(Position::Time(ms)) => Some(ms),
                _ => None,
            },
            first_ms: None,
            progress: ReadProgress::default(),
            done: total == 0,
        })
    }

    /// The next batch and where the read stands; `None` at the end of the range.
    pub async fn next(&mut self) -> Result<Option<(Vec<Raw>, ReadProgress)>, BacktestError> {
        let mut pending = Vec::with_capacity(self.batch);
        while !self.done && pending.len() < self.batch {
            let Some(m) = self.messages.next().await else {
                self.done = true;
                break;
            };
            let m = m.map_err(|e| BacktestError::Read {
                stream: self.stream.clone(),
                message: e.to_string(),
            })?;
            let Ok(info) = m.info() else { continue };
            let published_us = (info.published.unix_timestamp_nanos() / 1000) as i64;
            let seq = info.stream_sequence;
            let past_end = match self.range.to {
                Some(Position::Time(to)) => published_us / 1000 >= to,
                Some(Position::Seq(to)) => seq >= to,
                None => false,
            };
            if past_end {
                self.done = true;
                break;
            }
            let read = self.progress.read + 1;
            self.done = read >= self.total || info.pending == 0;
            let stored_ms = published_us / 1000;
            let start = *self
                .first_ms
                .get_or_insert(self.from_ms.unwrap_or(stored_ms));
            let end = match self.range.to {
                Some(Position::Time(to)) => Some(to.min(self.now_ms)).filter(|&e| e > start),
                _ => None,
            };
            self.progress = ReadProgress {
                read,
                fraction: match end {
                    Some(end) => (stored_ms - start) as f64 / (end - start) as f64,
                    None => read as f64 / self.total.max(1) as f64,
                }
                .clamp(0.0, 1.0),
                stored_ms,
            };
            pending.push(Raw {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                stream_seq: seq,
                published_us,
            });
        }
        if self.done {
            self.progress.fraction = 1.0;
        }
        Ok((!pending.is_empty()).then_some((pending, self.progress)))
    }
}

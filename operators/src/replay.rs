//! Replaying a stretch of a pipeline's raw events in-process, through the same stage code as
//! live (validate, then window per partition), with its own throwaway state: what `anom
//! train` computes its features with, so a model sees exactly what the live detector will.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use crate::checkpoint::{CheckpointError, StateStore};
use crate::envelope::Envelope;
use crate::pipeline::Pipeline;
use crate::runtime::{Emitter, Input, Stage};
use crate::stage::{rules, validate::Validate, window::WindowStage};
use crate::subjects::INGEST_STREAM;
use crate::value::Value;

/// The stages of one pipeline up to its enriched events, with state in a temporary store.
pub struct Replay {
    pipeline: Arc<Pipeline>,
    validate: Validate,
    windows: Vec<WindowStage>,
    out: Emitter,
    stage_out: Emitter,
    // Declared last: dropped after the stages that use it.
    _db: sled::Db,
    _dir: tempfile::TempDir,
}

/// A raw event as the ingest stream holds it.
pub struct Raw {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    pub stream_seq: u64,
    pub published_us: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("temporary state: {0}")]
    State(#[from] CheckpointError),
    #[error("temporary state directory: {0}")]
    Dir(#[from] std::io::Error),
    #[error("reading {stream}: {message}")]
    Read { stream: String, message: String },
}

impl Replay {
    pub fn new(pipeline: Arc<Pipeline>) -> Result<Replay, ReplayError> {
        let dir = tempfile::tempdir()?;
        let db = crate::checkpoint::open_db(dir.path())?;
        let mut windows = Vec::new();
        if pipeline.is_keyed() {
            for k in 0..pipeline.partitions {
                let store = StateStore::open(&db, &format!("replay-window-{k}"))?;
                let (stage, _) =
                    WindowStage::restore(pipeline.clone(), k, &store, Counter::default())?;
                windows.push(stage);
            }
        }
        Ok(Replay {
            validate: Validate::new(pipeline.clone()),
            windows,
            out: Emitter::new("validate", "replay"),
            stage_out: Emitter::new("window", "replay"),
            pipeline,
            _db: db,
            _dir: dir,
        })
    }

    /// Runs one raw input through validate and window; `each` sees every enriched envelope
    /// (its `data` typed per the schema). Refused and late events are skipped, as live.
    pub fn feed(&mut self, raw: &Raw, mut each: impl FnMut(&Envelope)) {
        let p = self.pipeline.clone();
        let input = Input {
            subject: &raw.subject,
            payload: &raw.payload,
            headers: raw.headers.as_ref(),
            stream_seq: raw.stream_seq,
            published_us: raw.published_us,
        };
        self.out.clear();
        if self.validate.process(&input, &mut self.out).is_err() {
            return;
        }
        // Pipelines with UDF-derived fields emit at the end of a batch.
        self.validate.end_batch(&mut self.out);
        for o in self.out.outputs() {
            let Some(k) = o
                .subject
                .rsplit('.')
                .next()
                .and_then(|k| k.parse::<u32>().ok())
                .filter(|_| o.subject.starts_with(&format!("anom.{}.valid.", p.name)))
            else {
                continue; // dead letters
            };
            match self.windows.get_mut(k as usize) {
                None => {
                    if let Ok(env) = rules::open(&p, &o.payload) {
                        each(&env);
                    }
                }
                Some(window) => {
                    self.stage_out.clear();
                    let input = Input {
                        subject: &o.subject,
                        payload: &o.payload,
                        headers: None,
                        stream_seq: raw.stream_seq,
                        published_us: raw.published_us,
                    };
                    if window.process(&input, &mut self.stage_out).is_err() {
                        continue;
                    }
                    let enriched = p.subjects.enriched(k);
                    for w in self.stage_out.outputs() {
                        if w.subject == enriched {
                            if let Ok(env) = rules::open(&p, &w.payload) {
                                each(&env);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The row detectors read (fields, then aggregates), as numbers; `None` where a value is
/// missing or not numeric.
pub fn numeric_row(pipeline: &Pipeline, env: &Envelope) -> Vec<Option<f64>> {
    let mut row = env.data.clone();
    row.resize(pipeline.schema.len(), Value::Null);
    row.extend(env.enrichment.iter().cloned());
    pipeline.scope.retype(&mut row);
    row.iter()
        .map(|v| match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Timestamp(t) => Some(*t as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        })
        .collect()
}

/// Reads the raw events of `pipeline` from the ingest stream, from `from_ms` (inclusive,
/// epoch ms of storage; `None`: the start) to `to_ms` (exclusive; `None`: what is there now).
pub async fn read_ingest(
    js: &jetstream::Context,
    pipeline: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    mut each: impl FnMut(Raw),
) -> Result<u64, ReplayError> {
    let err = |message: String| ReplayError::Read {
        stream: INGEST_STREAM.to_string(),
        message,
    };
    let stream = js
        .get_stream(INGEST_STREAM)
        .await
        .map_err(|e| err(e.to_string()))?;
    let deliver_policy = match from_ms {
        Some(ms) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .map_err(|e| err(e.to_string()))?,
        },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy,
            filter_subject: crate::subjects::input_subject(pipeline),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut pending = consumer
        .clone()
        .info()
        .await
        .map_err(|e| err(e.to_string()))?
        .num_pending;
    let mut read = 0;
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| err(e.to_string()))?;
            got += 1;
            let Ok(info) = m.info() else { continue };
            pending = info.pending;
            let published_us = (info.published.unix_timestamp_nanos() / 1000) as i64;
            if to_ms.is_some_and(|to| published_us / 1000 >= to) {
                return Ok(read);
            }
            let raw = Raw {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                stream_seq: info.stream_sequence,
                published_us,
            };
            read += 1;
            each(raw);
        }
        if got == 0 {
            break;
        }
    }
    Ok(read)
}

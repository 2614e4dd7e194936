//! The JetStream streams a set of pipelines needs, created or updated at start.
//!
//! | stream | subjects | holds |
//! |---|---|---|
//! | `ANOM_INGEST` | `anom.*.in` | raw events as published, for every pipeline (and unknown ones) |
//! | `ANOM_DLQ` | `anom.*.dlq` | refused inputs with their reason headers |
//! | `ANOM_LATE` | `anom.*.late` | events later than their pipeline's allowed lateness |
//! | `ANOM_<P>_VALID` | `anom.<p>.valid.<k>` | validated envelopes, by partition |
//! | `ANOM_<P>_ENRICHED` | `anom.<p>.enriched.<k>` | envelopes with their key's aggregates (keyed pipelines) |
//! | `ANOM_<P>_SCORED` | `anom.<p>.scored.<k>` | envelopes with detector scores (pipelines with detectors) |
//! | `ANOM_<P>_DETECTIONS` | `anom.<p>.detections.<k>` | envelopes with rule hits |
//! | `ANOM_<P>_ALERTS` | `anom.<p>.alerts` | alert records (JSON), the source of truth for sinks |

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::pipeline::Pipeline;
use crate::subjects::{
    history_stream, DLQ_STREAM, DLQ_SUBJECTS, INGEST_STREAM, INGEST_SUBJECTS, LATE_STREAM,
    LATE_SUBJECTS,
};

/// Retention of the streams.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// How long raw events stay in the ingest stream (replays and backtests read them).
    pub ingest_max_age: Duration,
    /// How long inter-stage messages stay.
    pub internal_max_age: Duration,
    /// Window in which a republished `Nats-Msg-Id` is recognised as a duplicate.
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            ingest_max_age: Duration::from_secs(7 * 86_400),
            internal_max_age: Duration::from_secs(86_400),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create stream {stream}: {source}")]
pub struct TopologyError {
    pub stream: String,
    #[source]
    pub source: async_nats::Error,
}

/// Creates or updates every stream `pipelines` use.
pub async fn ensure(
    js: &jetstream::Context,
    pipelines: &[Pipeline],
    options: &StreamOptions,
) -> Result<(), TopologyError> {
    let (kept, internal) = (options.ingest_max_age, options.internal_max_age);
    let mut streams: Vec<(String, String, Duration)> = vec![
        (INGEST_STREAM.into(), INGEST_SUBJECTS.into(), kept),
        (DLQ_STREAM.into(), DLQ_SUBJECTS.into(), kept),
        (LATE_STREAM.into(), LATE_SUBJECTS.into(), kept),
    ];
    for p in pipelines {
        let s = &p.subjects;
        streams.push((s.valid_stream.clone(), s.valid_all(), internal));
        if p.is_keyed() {
            streams.push((s.enriched_stream.clone(), s.enriched_all(), internal));
        }
        if p.has_detectors() {
            streams.push((s.scored_stream.clone(), s.scored_all(), internal));
        }
        streams.push((s.detections_stream.clone(), s.detections_all(), internal));
        streams.push((s.alerts_stream.clone(), s.alerts.clone(), kept));
    }
    for (name, subject, max_age) in streams {
        ensure_stream(js, &name, vec![subject], max_age, options).await?;
    }
    for p in pipelines {
        if let Some(retention) = p.retention {
            ensure_history(js, p, retention, options).await?;
        }
    }
    Ok(())
}

/// A pipeline's own history: a stream without subjects that the server fills from the
/// ingest stream (its messages, sequence order and headers), kept for `retention`. The
/// ingest stream's age limit is the cluster's; a history's is the pipeline's.
async fn ensure_history(
    js: &jetstream::Context,
    p: &Pipeline,
    retention: Duration,
    options: &StreamOptions,
) -> Result<(), TopologyError> {
    let name = history_stream(&p.name);
    let config = stream::Config {
        name: name.clone(),
        max_age: retention,
        storage: stream::StorageType::File,
        num_replicas: options.replicas,
        sources: Some(vec![stream::Source {
            name: INGEST_STREAM.to_string(),
            filter_subject: Some(p.subjects.input.clone()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| TopologyError {
            stream: name,
            source: e.into(),
        })
}

async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
    max_age: Duration,
    options: &StreamOptions,
) -> Result<(), TopologyError> {
    let config = stream::Config {
        name: name.to_string(),
        subjects,
        max_age,
        storage: stream::StorageType::File,
        duplicate_window: options.duplicate_window,
        num_replicas: options.replicas,
        ..Default::default()
    };
    // Right after a server starts, JetStream may briefly answer "unavailable"; retry.
    let mut last = None;
    for attempt in 0..50 {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100 * (attempt.min(10) + 1))).await;
            }
        }
    }
    Err(TopologyError {
        stream: name.to_string(),
        source: last
            .map(Into::into)
            .unwrap_or_else(|| "unknown error".into()),
    })
}

//! The JetStream streams a set of pipelines needs ([`Topology::streams`]), created or updated
//! at start.
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

use anom_pipeline::topology::{shared_streams, Keep, StreamSpec, Topology};
use anom_pipeline::Pipeline;

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
pub struct StreamError {
    pub stream: String,
    #[source]
    pub source: async_nats::Error,
}

/// Creates or updates every stream `pipelines` use: the shared ones, then each pipeline's
/// (as its [`Topology`] lists them); histories last, once the ingest stream they copy exists.
pub async fn ensure(
    js: &jetstream::Context,
    pipelines: &[Pipeline],
    options: &StreamOptions,
) -> Result<(), StreamError> {
    let mut specs = shared_streams();
    for p in pipelines {
        specs.extend(Topology::of(p).streams);
    }
    specs.sort_by_key(|s| matches!(s.keep, Keep::History(_)));
    for spec in specs {
        match spec.keep {
            Keep::History(retention) => ensure_history(js, &spec, retention, options).await?,
            Keep::Kept => ensure_stream(js, &spec, options.ingest_max_age, options).await?,
            Keep::Internal => ensure_stream(js, &spec, options.internal_max_age, options).await?,
        }
    }
    Ok(())
}

/// A pipeline's own history: a stream without subjects that the server fills from the
/// ingest stream (its messages, sequence order and headers), kept for `retention`. The
/// ingest stream's age limit is the cluster's; a history's is the pipeline's.
async fn ensure_history(
    js: &jetstream::Context,
    spec: &StreamSpec,
    retention: Duration,
    options: &StreamOptions,
) -> Result<(), StreamError> {
    let config = stream::Config {
        name: spec.name.clone(),
        max_age: retention,
        storage: stream::StorageType::File,
        num_replicas: options.replicas,
        sources: Some(
            spec.source
                .iter()
                .map(|(name, subject)| stream::Source {
                    name: name.clone(),
                    filter_subject: Some(subject.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| StreamError {
            stream: spec.name.clone(),
            source: e.into(),
        })
}

async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
    max_age: Duration,
    options: &StreamOptions,
) -> Result<(), StreamError> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
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
    Err(StreamError {
        stream: spec.name.clone(),
        source: last
            .map(Into::into)
            .unwrap_or_else(|| "unknown error".into()),
    })
}

//! `GET /v1/overview`: every pipeline at a glance, for the console's first page: events
//! stored and their rate, dead letters, what waits to be processed, alerts.
//!
//! Counts come from the streams (per-subject message counts of `ANOM_INGEST` and `ANOM_DLQ`),
//! the consumers' pending counts, and the alert bucket; the rate is the change in stored
//! events since the previous overview (any caller's) at least a second before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anom_pipeline::subjects::{dlq_subject, input_subject, DLQ_STREAM, INGEST_STREAM};
use anom_pipeline::topology::Topology;
use anom_proto::v1;
use anom_proto::v1::pipelines_server::Pipelines;
use anom_runtime::timebase::wall_ms;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tonic::Request;
use utoipa::ToSchema;

use super::access::{self, Identity, Scope};
use super::problem::{answer, Problem};
use super::App;
use crate::time::rfc3339;

/// One pipeline at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineGlance {
    pub name: String,
    pub description: String,
    pub version: u32,
    pub paused: bool,
    pub partitions: u32,
    pub updated_at: Option<String>,
    /// Raw events the ingest stream holds for it.
    pub events: u64,
    /// Events a second stored since the previous overview (null on the first).
    pub events_per_s: Option<f64>,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Messages its consumers have not processed yet: raw events waiting for validation,
    /// plus envelopes between its stages.
    pub lag: u64,
    pub alerts_firing: u64,
    pub alerts_acknowledged: u64,
    /// Alert occurrences started in the last 24 hours.
    pub alerts_24h: u64,
    /// Its units, and those no worker runs.
    pub units: u32,
    pub unassigned: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub pipelines: Vec<PipelineGlance>,
    pub workers: u32,
    pub workers_alive: u32,
}

/// The previous count of stored events per pipeline, for the rate.
#[derive(Debug, Default, Clone)]
pub struct Rates(Arc<Mutex<HashMap<String, Sample>>>);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    events: u64,
    rate: Option<f64>,
}

impl Rates {
    fn observe(&self, pipeline: &str, events: u64, now: Instant) -> Option<f64> {
        let mut samples = self.0.lock().unwrap();
        let s = samples.entry(pipeline.to_string()).or_insert(Sample {
            at: now,
            events,
            rate: None,
        });
        let elapsed = now.duration_since(s.at);
        if elapsed >= Duration::from_secs(1) {
            // A stream that lost messages to its age limit counts fewer: no negative rate.
            s.rate = Some(events.saturating_sub(s.events) as f64 / elapsed.as_secs_f64());
            s.at = now;
            s.events = events;
        }
        s.rate
    }
}

async fn subject_counts(app: &App, stream: &str, filter: &str) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    let Ok(s) = app.js.get_stream(stream).await else {
        return counts;
    };
    let Ok(mut subjects) = s.info_with_subjects(filter).await else {
        return counts;
    };
    while let Some(Ok((subject, n))) = subjects.next().await {
        counts.insert(subject, n as u64);
    }
    counts
}

/// The consumers of `stream` and their pending messages.
async fn consumers(app: &App, stream: &str) -> Vec<(String, u64)> {
    let Ok(s) = app.js.get_stream(stream).await else {
        return Vec::new();
    };
    let mut consumers = s.consumers();
    let mut all = Vec::new();
    while let Some(Ok(info)) = consumers.next().await {
        all.push((info.name, info.num_pending));
    }
    all
}

#[utoipa::path(get, path = "/v1/overview", tag = "pipelines",
    responses((status = 200, description = "Every pipeline at a glance", body = Overview)))]
pub async fn overview(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Overview>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let list = answer(
        app.pipelines
            .list(Request::new(v1::ListPipelinesRequest {
                include_deleted: false,
            }))
            .await,
    )?;
    let ingested = subject_counts(&app, INGEST_STREAM, "anom.*.in").await;
    // Listed once: every pipeline's validate consumer reads the shared ingest stream.
    let ingest_consumers = consumers(&app, INGEST_STREAM).await;
    let dead = subject_counts(&app, DLQ_STREAM, "anom.*.dlq").await;
    let (compiled, units, workers, alive) = {
        let state = app.control.lock().await;
        let now = Instant::now();
        let mut units: HashMap<String, (u32, u32)> = HashMap::new();
        for u in state.owners.keys() {
            units.entry(u.pipeline.clone()).or_default().0 += 1;
        }
        for u in &state.unassigned {
            let e = units.entry(u.pipeline.clone()).or_default();
            e.0 += 1;
            e.1 += 1;
        }
        (
            state.compiled.clone(),
            units,
            state.workers.len() as u32,
            state.workers.values().filter(|m| m.alive(now)).count() as u32,
        )
    };
    let now = Instant::now();
    let day_ago = wall_ms() - 86_400_000;
    let mut pipelines = Vec::with_capacity(list.pipelines.len());
    for p in list.pipelines {
        let events = ingested.get(&input_subject(&p.name)).copied().unwrap_or(0);
        let validate = format!("{}-validate", p.name);
        let mut lag: u64 = ingest_consumers
            .iter()
            .filter(|(name, _)| name.starts_with(&validate))
            .map(|(_, n)| n)
            .sum();
        if let Some(c) = compiled.get(&p.name) {
            for s in Topology::of(c)
                .streams
                .iter()
                .filter(|s| s.source.is_none())
            {
                lag += consumers(&app, &s.name)
                    .await
                    .iter()
                    .map(|(_, n)| n)
                    .sum::<u64>();
            }
        }
        let alerts = app
            .alerts
            .counts(&p.name, day_ago)
            .await
            .unwrap_or_default();
        let (n_units, unassigned) = units.get(&p.name).copied().unwrap_or_default();
        pipelines.push(PipelineGlance {
            events_per_s: app.rates.observe(&p.name, events, now),
            events,
            dead_letters: dead.get(&dlq_subject(&p.name)).copied().unwrap_or(0),
            lag,
            alerts_firing: alerts.firing,
            alerts_acknowledged: alerts.acknowledged,
            alerts_24h: alerts.started,
            units: n_units,
            unassigned,
            updated_at: rfc3339(&p.updated_at),
            name: p.name,
            description: p.description,
            version: p.current_version,
            paused: p.paused,
            partitions: p.partitions,
        });
    }
    Ok(Json(Overview {
        pipelines,
        workers,
        workers_alive: alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_change_over_at_least_a_second_and_never_negative() {
        let rates = Rates::default();
        let t0 = Instant::now();
        assert_eq!(rates.observe("p", 100, t0), None);
        // Too soon to say: the previous rate (none yet) stands.
        assert_eq!(
            rates.observe("p", 150, t0 + Duration::from_millis(300)),
            None
        );
        assert_eq!(
            rates.observe("p", 300, t0 + Duration::from_secs(2)),
            Some(100.0)
        );
        assert_eq!(
            rates.observe("p", 310, t0 + Duration::from_millis(2500)),
            Some(100.0)
        );
        // Messages aged out of the stream: zero, not negative.
        assert_eq!(
            rates.observe("p", 10, t0 + Duration::from_secs(4)),
            Some(0.0)
        );
    }
}

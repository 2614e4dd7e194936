//! Every metric Anom exports, named in one place (`anom_<what>_<unit>`, counters `_total`),
//! and the `/metrics` endpoint (OpenMetrics text).
//!
//! Labels are bounded: pipeline, stage, sink, severity, reason kind; never a key or an event
//! field. Stages resolve their label sets once at start (`StageMetrics`), so the hot path only
//! increments atomics.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub pipeline: String,
    pub stage: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub pipeline: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub pipeline: String,
    pub sink: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub pipeline: String,
    pub stage: String,
    /// The durable consumer: one per (pipeline, stage, partition).
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    pub pipeline: String,
    pub detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLoadLabels {
    pub pipeline: String,
    pub detector: String,
    /// loaded, swapped (a new file replaced the running model) or failed.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The registry and every metric family of one process.
pub struct Metrics {
    pub registry: Registry,
    pub events_in: Family<StageLabels, Counter>,
    pub events_out: Family<StageLabels, Counter>,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    pub publish_retries: Family<StageLabels, Counter>,
    pub replays_suppressed: Family<StageLabels, Counter>,
    pub batch_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub alerts: Family<AlertLabels, Counter>,
    pub ingest_to_alert_seconds: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    pub sink_deliveries: Family<SinkLabels, Counter>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub checkpoint_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub checkpoint_entries: Family<StageLabels, Counter>,
    pub checkpoint_bytes: Family<StageLabels, Gauge>,
    pub state_keys: Family<StageLabels, Gauge>,
    pub late_events: Family<StageLabels, Counter>,
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    pub checkpoint_timestamp: Family<StageLabels, Gauge>,
    pub units_running: Gauge,
    pub detector_scores: Family<DetectorLabels, Counter>,
    pub detector_flags: Family<DetectorLabels, Counter>,
    pub model_inference_seconds: Family<DetectorLabels, Histogram, fn() -> Histogram>,
    pub model_loads: Family<ModelLoadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("anom");
        let events_in = Family::default();
        registry.register("events_in", "Messages read by a stage", events_in.clone());
        let events_out = Family::default();
        registry.register(
            "events_out",
            "Messages a stage published downstream",
            events_out.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "dead_letters",
            "Inputs sent to the dead-letter subject, by reason",
            dead_letters.clone(),
        );
        let publish_retries = Family::default();
        registry.register(
            "publish_retries",
            "Publishes retried after a failed or missing JetStream ack",
            publish_retries.clone(),
        );
        let replays_suppressed = Family::default();
        registry.register(
            "replays_suppressed",
            "Outputs of replayed inputs not published again: found in their stream after a restart (see replay.rs)",
            replays_suppressed.clone(),
        );
        let batch_seconds =
            Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "batch_duration_seconds",
            "Time a stage spends processing one batch, publishing excluded",
            batch_seconds.clone(),
        );
        let alerts = Family::default();
        registry.register("alerts", "Alerts raised, by severity", alerts.clone());
        let ingest_to_alert_seconds =
            Family::<PipelineLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "ingest_to_alert_seconds",
            "From the ingest stream storing an event to its alert being published",
            ingest_to_alert_seconds.clone(),
        );
        let sink_deliveries = Family::default();
        registry.register(
            "sink_deliveries",
            "Alert deliveries by sink and outcome (delivered, retried, dead_lettered)",
            sink_deliveries.clone(),
        );
        let checkpoint_seconds =
            Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "checkpoint_duration_seconds",
            "Time to write and flush one checkpoint of keyed state",
            checkpoint_seconds.clone(),
        );
        let checkpoint_entries = Family::default();
        registry.register(
            "checkpoint_entries",
            "State entries written or deleted by checkpoints",
            checkpoint_entries.clone(),
        );
        let checkpoint_bytes = Family::default();
        registry.register(
            "checkpoint_last_bytes",
            "Bytes written by the latest checkpoint",
            checkpoint_bytes.clone(),
        );
        let state_keys = Family::default();
        registry.register(
            "state_keys",
            "Keys held by a keyed stage",
            state_keys.clone(),
        );
        let late_events = Family::default();
        registry.register(
            "late_events",
            "Events later than the allowed lateness, sent to anom.<p>.late",
            late_events.clone(),
        );
        let consumer_pending = Family::default();
        registry.register(
            "consumer_pending",
            "Messages waiting for a consumer (its lag), as of its latest delivery",
            consumer_pending.clone(),
        );
        let checkpoint_timestamp = Family::default();
        registry.register(
            "checkpoint_last_timestamp_seconds",
            "When the latest checkpoint was committed (Unix time); its age is time() minus this",
            checkpoint_timestamp.clone(),
        );
        let units_running = Gauge::default();
        registry.register(
            "worker_units",
            "Units of work (a stage of a pipeline on a partition) this worker runs",
            units_running.clone(),
        );
        let detector_scores = Family::default();
        registry.register(
            "detector_scores",
            "Events a detector scored (built-in detectors: past their warm-up)",
            detector_scores.clone(),
        );
        let detector_flags = Family::default();
        registry.register(
            "detector_flags",
            "Events a detector flagged as anomalous",
            detector_flags.clone(),
        );
        let model_inference_seconds =
            Family::<DetectorLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "model_inference_seconds",
            "Time of one batched ONNX model run",
            model_inference_seconds.clone(),
        );
        let model_loads = Family::default();
        registry.register(
            "model_loads",
            "ONNX model loads by outcome (loaded, swapped, failed)",
            model_loads.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Anom build", build_info.clone());
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        Metrics {
            registry,
            events_in,
            events_out,
            dead_letters,
            publish_retries,
            replays_suppressed,
            batch_seconds,
            alerts,
            ingest_to_alert_seconds,
            sink_deliveries,
            build_info,
            checkpoint_seconds,
            checkpoint_entries,
            checkpoint_bytes,
            state_keys,
            late_events,
            consumer_pending,
            checkpoint_timestamp,
            units_running,
            detector_scores,
            detector_flags,
            model_inference_seconds,
            model_loads,
        }
    }

    /// The metrics a stage touches on every batch, resolved once.
    pub fn stage(&self, pipeline: &str, stage: &str) -> StageMetrics {
        let labels = StageLabels {
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
        };
        StageMetrics {
            events_in: self.events_in.get_or_create_owned(&labels),
            events_out: self.events_out.get_or_create_owned(&labels),
            publish_retries: self.publish_retries.get_or_create_owned(&labels),
            replays_suppressed: self.replays_suppressed.get_or_create_owned(&labels),
            batch_seconds: self.batch_seconds.get_or_create_owned(&labels),
            checkpoint_seconds: self.checkpoint_seconds.get_or_create_owned(&labels),
            checkpoint_entries: self.checkpoint_entries.get_or_create_owned(&labels),
            checkpoint_bytes: self.checkpoint_bytes.get_or_create_owned(&labels),
            state_keys: self.state_keys.get_or_create_owned(&labels),
            late_events: self.late_events.get_or_create_owned(&labels),
            checkpoint_timestamp: self.checkpoint_timestamp.get_or_create_owned(&labels),
            consumer_pending: self.consumer_pending.clone(),
            dead_letters: self.dead_letters.clone(),
            pipeline: labels.pipeline,
            stage: labels.stage,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone)]
pub struct StageMetrics {
    pub events_in: Counter,
    pub events_out: Counter,
    pub publish_retries: Counter,
    pub replays_suppressed: Counter,
    pub batch_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub checkpoint_entries: Counter,
    pub checkpoint_bytes: Gauge,
    pub state_keys: Gauge,
    pub late_events: Counter,
    pub checkpoint_timestamp: Gauge,
    consumer_pending: Family<ConsumerLabels, Gauge>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    pipeline: String,
    stage: String,
}

impl StageMetrics {
    pub fn checkpointed(&self, done: &crate::checkpoint::Committed, keys: usize) {
        self.checkpoint_seconds.observe(done.duration.as_secs_f64());
        self.checkpoint_entries.inc_by(done.entries as u64);
        self.checkpoint_bytes.set(done.bytes as i64);
        self.state_keys.set(keys as i64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.checkpoint_timestamp.set(now);
    }

    /// The lag gauge of one consumer, resolved once by its stage loop.
    pub fn pending(&self, consumer: &str) -> Gauge {
        self.consumer_pending.get_or_create_owned(&ConsumerLabels {
            pipeline: self.pipeline.clone(),
            stage: self.stage.clone(),
            consumer: consumer.to_string(),
        })
    }

    pub fn dead_letter(&self, pipeline: &str, reason: &str) {
        // Dead letters are rare; resolving the label set here keeps the struct small.
        let pipeline = if pipeline.is_empty() {
            &self.pipeline
        } else {
            pipeline
        };
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                pipeline: pipeline.to_string(),
                stage: self.stage.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Serves `GET /metrics` on `addr` until the token is cancelled. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    serve_with(move || metrics.encode(), ready, addr, shutdown).await
}

/// Serves `GET /metrics` (what `render` returns), `GET /healthz` (the process answers) and
/// `GET /readyz` (200 once `ready` is set, 503 before) on `addr` until the token is
/// cancelled. Returns the bound address.
pub async fn serve_with(
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    ready: Arc<std::sync::atomic::AtomicBool>,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::http::StatusCode;
    use axum::{routing::get, Router};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}

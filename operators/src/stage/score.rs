//! score: runs the pipeline's detectors on every event, between window and rules.
//!
//! Built-in detectors keep per-key statistics (`anom_ml::detector`), held in memory and
//! checkpointed to sled like the window stage's aggregates; ONNX models (`anom_ml::model`) are
//! run once per batch over every event that needs them. Each event leaves with one
//! [`DetectorScore`] per detector that scored it; the rules stage decides what alerts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::model_registry::{ModelRegistry, ModelScore, ScoringError, WatchedModel};
use anom_lang::value::Value;
use anom_ml::detector::episode::Episode;
use anom_ml::detector::{self, Reading};
use anom_pipeline::envelope::{DetectorScore, Envelope};
use anom_pipeline::layout::{Layouts, Reader};
use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::{DetectorKind, DetectorSpec, Pipeline};
use anom_runtime::checkpoint::{CheckpointError, StateDelta, StateStore, KEY_PREFIX, META_KEY};
use anom_runtime::metrics::{DetectorLabels, Metrics};
use anom_runtime::{Emitter, Held, Input, Stage};

pub const NAME: &str = anom_pipeline::unit::names::SCORE;

/// Everything kept for one key: one state per built-in detector (by detector index; `None`
/// for models).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyState {
    last_event_ms: i64,
    detectors: Vec<Option<detector::State>>,
    /// Per detector: the key's anomalous episode and last alert. Only the event that opens
    /// an episode past the detector's cool-down is flagged, so a level shift or a long
    /// excursion raises one alert, not one per event.
    #[serde(default)]
    episodes: Vec<Episode>,
}

impl KeyState {
    /// Whether a score crossing the threshold (`above`) at event time `t` alerts for
    /// detector `i` (see [`Episode::step`]).
    fn opens(&mut self, i: usize, above: bool, t: i64, cooldown_ms: i64) -> bool {
        if self.episodes.len() <= i {
            self.episodes.resize(i + 1, Episode::default());
        }
        self.episodes[i].step(above, t, cooldown_ms)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PartitionMeta {
    max_event_ms: i64,
    /// Which detector definitions the stored states belong to (their signatures).
    detectors: Vec<String>,
    /// Per model detector: the running mean of each input, what an input is replaced by to
    /// see how much it contributed to a score.
    typical: Vec<Vec<RunningMean>>,
}

/// A mean that follows slow drift: exact for the first `HORIZON` values, then exponential.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct RunningMean {
    n: u32,
    mean: f64,
}

impl RunningMean {
    const HORIZON: u32 = 10_000;

    fn add(&mut self, x: f64) {
        self.n = (self.n + 1).min(Self::HORIZON);
        self.mean += (x - self.mean) / self.n as f64;
    }
}

/// One event waiting for the batch's model runs.
struct Waiting {
    env: Envelope,
    held: Held,
    /// The event's model inputs, per model detector (empty when an input is missing).
    features: Vec<Vec<f32>>,
}

/// One model detector, resolved for this stage.
struct ModelSlot {
    detector: usize,
    model: Arc<WatchedModel>,
    inference: Histogram,
}

pub struct ScoreStage {
    pipeline: Arc<Pipeline>,
    keys: HashMap<String, KeyState>,
    dirty: HashSet<String>,
    evicted: Vec<String>,
    meta: PartitionMeta,
    models: Vec<ModelSlot>,
    waiting: Vec<Waiting>,
    scored: Vec<Counter>,
    flagged: Vec<Counter>,
    subject: String,
    ttl_ms: i64,
    last_eviction_ms: i64,
    max_dirty: usize,
    touched: bool,
    /// Reused per event: one detector's inputs.
    x: Vec<f64>,
    reader: Reader,
}

impl ScoreStage {
    /// Reads envelopes of other versions of the pipeline through `layouts` (a rollout's
    /// backlog); without, only its own version's.
    pub fn reading(mut self, layouts: Layouts) -> Self {
        self.reader = Reader::new(layouts);
        self
    }

    /// Builds the stage of one partition from its stored state, loading its models through
    /// `models`. Returns it with the source sequence that state reflects.
    pub fn restore(
        pipeline: Arc<Pipeline>,
        partition: u32,
        store: &StateStore,
        models: &ModelRegistry,
        metrics: &Metrics,
    ) -> Result<(ScoreStage, u64), ScoreError> {
        let p = &*pipeline;
        let labels = |d: &DetectorSpec| DetectorLabels {
            pipeline: p.name.clone(),
            detector: d.name.clone(),
        };
        let mut slots = Vec::new();
        for (i, d) in p.detectors.iter().enumerate() {
            if let DetectorKind::Model(m) = &d.kind {
                let model = models
                    .get(&p.name, &d.name, m, d.inputs.len())
                    .map_err(|source| ScoreError::Model {
                        detector: d.name.clone(),
                        source,
                    })?;
                slots.push(ModelSlot {
                    detector: i,
                    model,
                    inference: metrics
                        .model_inference_seconds
                        .get_or_create_owned(&labels(d)),
                });
            }
        }
        let mut stage = ScoreStage {
            keys: HashMap::new(),
            dirty: HashSet::new(),
            evicted: Vec::new(),
            meta: PartitionMeta {
                max_event_ms: i64::MIN,
                detectors: p.detectors.iter().map(|d| d.signature.clone()).collect(),
                typical: slots
                    .iter()
                    .map(|s| vec![RunningMean::default(); p.detectors[s.detector].inputs.len()])
                    .collect(),
            },
            models: slots,
            waiting: Vec::new(),
            scored: p
                .detectors
                .iter()
                .map(|d| metrics.detector_scores.get_or_create_owned(&labels(d)))
                .collect(),
            flagged: p
                .detectors
                .iter()
                .map(|d| metrics.detector_flags.get_or_create_owned(&labels(d)))
                .collect(),
            subject: p.subjects.scored(partition),
            ttl_ms: p.state.ttl.as_millis() as i64,
            last_eviction_ms: 0,
            max_dirty: p.state.checkpoint_max_keys,
            touched: true,
            x: Vec::new(),
            reader: Reader::default(),
            pipeline: pipeline.clone(),
        };
        // A new pipeline version keeps the state of every detector whose definition did not
        // change (matched by signature, so reordering or adding detectors keeps it).
        let mut from: Vec<Option<usize>> = (0..p.detectors.len()).map(Some).collect();
        let mut stored = Vec::new();
        for entry in store.entries() {
            let (k, v) = entry?;
            if k == META_KEY {
                if let Ok(meta) = rmp_serde::from_slice::<PartitionMeta>(&v) {
                    stage.meta.max_event_ms = meta.max_event_ms;
                    from = stage
                        .meta
                        .detectors
                        .iter()
                        .map(|sig| meta.detectors.iter().position(|s| s == sig))
                        .collect();
                    // Typical values belong to the model detectors, in their order.
                    let old_models: Vec<&String> = meta
                        .detectors
                        .iter()
                        .filter(|s| s.starts_with("onnx|"))
                        .collect();
                    for (slot, typical) in stage.models.iter().zip(&mut stage.meta.typical) {
                        let sig = &p.detectors[slot.detector].signature;
                        if let Some(j) = old_models.iter().position(|s| *s == sig) {
                            if let Some(t) = meta.typical.get(j) {
                                *typical = t.clone();
                            }
                        }
                    }
                }
            } else if let Some(key) = k.strip_prefix(KEY_PREFIX) {
                if let Ok(state) = rmp_serde::from_slice::<KeyState>(&v) {
                    stored.push((String::from_utf8_lossy(key).into_owned(), state));
                }
            }
        }
        for (key, old) in stored {
            let detectors = p
                .detectors
                .iter()
                .zip(&from)
                .map(|(d, from)| match (&d.kind, from) {
                    (DetectorKind::Online(_), Some(j)) => old.detectors.get(*j).cloned().flatten(),
                    (DetectorKind::Online(det), None) => Some(det.new_state()),
                    (DetectorKind::Model(_) | DetectorKind::Udf(_), _) => None,
                })
                .collect();
            let episodes = from
                .iter()
                .map(|from| {
                    from.and_then(|j| old.episodes.get(j).copied())
                        .unwrap_or_default()
                })
                .collect();
            stage.keys.insert(
                key,
                KeyState {
                    last_event_ms: old.last_event_ms,
                    detectors,
                    episodes,
                },
            );
        }
        Ok((stage, store.last_seq()?))
    }

    fn new_key(&self, t_ms: i64) -> KeyState {
        KeyState {
            last_event_ms: t_ms,
            detectors: self
                .pipeline
                .detectors
                .iter()
                .map(|d| match &d.kind {
                    DetectorKind::Online(det) => Some(det.new_state()),
                    DetectorKind::Model(_) | DetectorKind::Udf(_) => None,
                })
                .collect(),
            episodes: vec![Episode::default(); self.pipeline.detectors.len()],
        }
    }

    /// Keys silent for longer than the pipeline's state TTL (in event time) are forgotten.
    fn evict(&mut self) {
        let horizon = self.meta.max_event_ms.saturating_sub(self.ttl_ms);
        let old: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, s)| s.last_event_ms < horizon)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            self.keys.remove(&key);
            self.dirty.remove(&key);
            self.evicted.push(key);
        }
    }

    /// Runs each model over the batch's waiting events and fills in their scores.
    fn run_models(&mut self, out: &mut Emitter) {
        let p = self.pipeline.clone();
        let mut failed: Vec<Option<String>> = vec![None; self.waiting.len()];
        for (slot_index, slot) in self.models.iter().enumerate() {
            let spec = &p.detectors[slot.detector];
            let meaning = match &spec.kind {
                DetectorKind::Model(m) => m,
                DetectorKind::Online(_) | DetectorKind::Udf(_) => continue,
            };
            let width = spec.inputs.len();
            let rows: Vec<usize> = (0..self.waiting.len())
                .filter(|&i| !self.waiting[i].features[slot_index].is_empty())
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut matrix = Vec::with_capacity(rows.len() * width);
            for &i in &rows {
                matrix.extend_from_slice(&self.waiting[i].features[slot_index]);
            }
            let started = Instant::now();
            let scored = slot.model.score(meaning, &matrix, rows.len());
            slot.inference.observe(started.elapsed().as_secs_f64());
            let scores: Vec<Option<ModelScore>> = match scored {
                Ok(s) if s.len() == rows.len() => s.into_iter().map(Some).collect(),
                // The whole batch failed: retry row by row, so that one bad row does not
                // take the others with it.
                _ => rows
                    .iter()
                    .enumerate()
                    .map(|(r, &i)| {
                        let one = &matrix[r * width..(r + 1) * width];
                        match slot.model.score(meaning, one, 1) {
                            Ok(mut s) if s.len() == 1 => s.pop(),
                            Ok(s) => {
                                failed[i] = Some(format!(
                                    "model of detector `{}` returned {} rows for 1",
                                    spec.name,
                                    s.len()
                                ));
                                None
                            }
                            Err(e) => {
                                failed[i] = Some(format!("model of detector `{}`: {e}", spec.name));
                                None
                            }
                        }
                    })
                    .collect(),
            };
            // Typical values learn from the whole batch first, so that the first batches
            // can already be explained (one row moves a mean of many only slightly).
            for &i in &rows {
                for (m, &x) in self.meta.typical[slot_index]
                    .iter_mut()
                    .zip(&self.waiting[i].features[slot_index])
                {
                    m.add(x as f64);
                }
            }
            for (&i, s) in rows.iter().zip(&scores) {
                let Some(s) = s else { continue };
                let above = match s.label_anomalous {
                    Some(label) => label,
                    None => spec.flags(s.score),
                };
                let meta = &self.waiting[i].env.meta;
                let flagged = self.keys.get_mut(&meta.key).is_some_and(|k| {
                    k.opens(slot.detector, above, meta.event_time, spec.cooldown_ms)
                });
                self.scored[slot.detector].inc();
                let mut contributions = Vec::new();
                let mut explanation = String::new();
                if flagged {
                    self.flagged[slot.detector].inc();
                    let features = &self.waiting[i].features[slot_index];
                    contributions = contributions_of(
                        &slot.model,
                        meaning,
                        spec,
                        features,
                        &self.meta.typical[slot_index],
                        s.score,
                    );
                    explanation = explain_model(
                        spec,
                        s,
                        features,
                        &self.meta.typical[slot_index],
                        &contributions,
                    );
                }
                self.waiting[i].env.analysis.scores.push(DetectorScore {
                    detector: slot.detector as u32,
                    score: s.score,
                    flagged,
                    explanation,
                    contributions,
                });
            }
        }
        for (w, failure) in std::mem::take(&mut self.waiting).into_iter().zip(failed) {
            if let Some(reason) = failure {
                out.reject_held(&w.held, &p.name, &Rejection::new(RejectKind::Model, reason));
                continue;
            }
            let mut env = w.env;
            env.analysis.scores.sort_by_key(|s| s.detector);
            out.emit(self.subject.clone(), env.meta.output_id(NAME), env.encode());
        }
    }
}

/// How much each input moved the score: the score drop when that input alone is replaced by
/// its typical value, as shares of the total (inputs that lowered it count as zero).
fn contributions_of(
    model: &WatchedModel,
    meaning: &anom_pipeline::ModelRef,
    spec: &DetectorSpec,
    features: &[f32],
    typical: &[RunningMean],
    score: f64,
) -> Vec<(String, f64)> {
    let width = features.len();
    let mut probes = Vec::with_capacity(width * width);
    for j in 0..width {
        let mut row = features.to_vec();
        if typical[j].n > 0 {
            row[j] = typical[j].mean as f32;
        }
        probes.extend_from_slice(&row);
    }
    let Ok(probed) = model.score(meaning, &probes, width) else {
        return Vec::new();
    };
    let gains: Vec<f64> = probed
        .iter()
        .map(|s| {
            let drop = match spec.anomalous {
                anom_pipeline::Direction::Above => score - s.score,
                anom_pipeline::Direction::Below => s.score - score,
            };
            drop.max(0.0)
        })
        .collect();
    let total: f64 = gains.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return Vec::new();
    }
    let mut shares: Vec<(String, f64)> = spec
        .input_names
        .iter()
        .cloned()
        .zip(gains.iter().map(|g| g / total))
        .filter(|(_, share)| *share > 0.0)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

/// "fraud_model scored 0.83 (threshold 0.6); mostly amount 5,000 (typically 150, 71%) and
/// tx_5m 7 (typically 1.2, 20%)".
fn explain_model(
    spec: &DetectorSpec,
    s: &ModelScore,
    features: &[f32],
    typical: &[RunningMean],
    contributions: &[(String, f64)],
) -> String {
    let mut text = match s.label_anomalous {
        Some(_) => format!(
            "model {} labelled the event anomalous (score {})",
            spec.name,
            detector::num(s.score)
        ),
        None => format!(
            "model {} scored {} ({} {})",
            spec.name,
            detector::num(s.score),
            match spec.anomalous {
                anom_pipeline::Direction::Above => "threshold",
                anom_pipeline::Direction::Below => "at or below",
            },
            detector::num(spec.threshold)
        ),
    };
    let parts: Vec<String> = contributions
        .iter()
        .take(3)
        .filter_map(|(name, share)| {
            let j = spec.input_names.iter().position(|n| n == name)?;
            let typical = typical
                .get(j)
                .filter(|t| t.n > 0)
                .map_or_else(String::new, |t| {
                    format!("typically {}, ", detector::num(t.mean))
                });
            Some(format!(
                "{name} {} ({typical}{:.0}%)",
                detector::num(features[j] as f64),
                share * 100.0
            ))
        })
        .collect();
    if !parts.is_empty() {
        text.push_str("; mostly ");
        text.push_str(&parts.join(", "));
    }
    text
}

/// The multivariate readings of a built-in detector: its inputs by share, largest first.
fn shares(spec: &DetectorSpec, reading: &Reading) -> Vec<(String, f64)> {
    let mut shares: Vec<(String, f64)> = spec
        .input_names
        .iter()
        .cloned()
        .zip(reading.contributions.iter().copied())
        .filter(|(_, s)| *s > 0.0)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    State(#[from] CheckpointError),
    #[error("detector `{detector}`: {source}")]
    Model {
        detector: String,
        #[source]
        source: ScoringError,
    },
}

impl Stage for ScoreStage {
    fn process(&mut self, input: &Input<'_>, _out: &mut Emitter) -> Result<(), Rejection> {
        self.touched = true;
        let p = self.pipeline.clone();
        let mut env = self.reader.open(&p, input.payload)?;
        let t = env.meta.event_time;
        self.meta.max_event_ms = self.meta.max_event_ms.max(t);
        // Detectors read one row: the event's fields, then its key's aggregates.
        let mut row = std::mem::take(&mut env.data);
        row.extend(env.enrichment.iter().cloned());
        p.scope.retype(&mut row);
        let mut state = match self.keys.remove(&env.meta.key) {
            Some(s) => s,
            None => self.new_key(t),
        };
        state.last_event_ms = state.last_event_ms.max(t);
        let mut features = Vec::with_capacity(self.models.len());
        for (i, spec) in p.detectors.iter().enumerate() {
            self.x.clear();
            self.x.extend(
                spec.inputs
                    .iter()
                    .map(|&j| row.get(j).and_then(Value::as_number).unwrap_or(f64::NAN)),
            );
            let complete = self.x.iter().all(|v| v.is_finite());
            match &spec.kind {
                DetectorKind::Online(det) => {
                    let Some(Some(ds)) = state.detectors.get_mut(i) else {
                        continue;
                    };
                    if !complete {
                        continue; // a missing input: nothing to learn or score
                    }
                    let reading = det.update(ds, &self.x, t);
                    if !reading.warm {
                        continue;
                    }
                    self.scored[i].inc();
                    let flagged = state.opens(i, spec.flags(reading.score), t, spec.cooldown_ms);
                    let (explanation, contributions) = if flagged {
                        self.flagged[i].inc();
                        let names: Vec<&str> =
                            spec.input_names.iter().map(String::as_str).collect();
                        (
                            detector::explain(det, &reading, &names, &self.x),
                            shares(spec, &reading),
                        )
                    } else {
                        (String::new(), Vec::new())
                    };
                    env.analysis.scores.push(DetectorScore {
                        detector: i as u32,
                        score: reading.score,
                        flagged,
                        explanation,
                        contributions,
                    });
                }
                // Scored by the validate stage, which dead-lettered events it could not score.
                DetectorKind::Udf(_) => {
                    let Some(&score) = self.x.first().filter(|v| v.is_finite()) else {
                        continue;
                    };
                    self.scored[i].inc();
                    let flagged = state.opens(i, spec.flags(score), t, spec.cooldown_ms);
                    let explanation = if flagged {
                        self.flagged[i].inc();
                        format!("{} = {score:.3}", spec.input_names[0])
                    } else {
                        String::new()
                    };
                    env.analysis.scores.push(DetectorScore {
                        detector: i as u32,
                        score,
                        flagged,
                        explanation,
                        contributions: Vec::new(),
                    });
                }
                DetectorKind::Model(_) => features.push(if complete {
                    self.x.iter().map(|&v| v as f32).collect()
                } else {
                    Vec::new()
                }),
            }
        }
        self.dirty.insert(env.meta.key.clone());
        self.keys.insert(env.meta.key.clone(), state);
        row.truncate(p.schema.len());
        env.data = row;
        self.waiting.push(Waiting {
            env,
            held: if self.models.is_empty() {
                Held::default()
            } else {
                input.hold()
            },
            features,
        });
        Ok(())
    }

    fn end_batch(&mut self, out: &mut Emitter) {
        self.run_models(out);
        if self.meta.max_event_ms.saturating_sub(self.last_eviction_ms) >= 60_000 {
            self.last_eviction_ms = self.meta.max_event_ms;
            self.evict();
        }
    }

    fn checkpoint(&mut self) -> Option<StateDelta> {
        if !std::mem::take(&mut self.touched) {
            return None;
        }
        Some(StateDelta::of_keys(
            &self.keys,
            &mut self.dirty,
            &mut self.evicted,
            &self.meta,
        ))
    }

    fn checkpoint_due(&self) -> bool {
        self.dirty.len() >= self.max_dirty
    }
}

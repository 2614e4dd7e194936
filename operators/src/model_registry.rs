//! Models as detectors use them: loaded once per file for the whole worker, scored in
//! batches, and swapped for a new version when the file changes — between two batches, so
//! no event is dropped or scored half by one model and half by the other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use anom_ml::model::{ElementKind, Model, ModelError, OutputData};
use anom_pipeline::{DetectorKind, ModelOutput, ModelRef, Pipeline};
use anom_runtime::metrics::{Metrics, ModelLoadLabels};

/// How often model files are checked for a new version.
const POLL: Duration = Duration::from_secs(1);

/// One row's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelScore {
    pub score: f64,
    /// `label_score` models: whether the label says anomalous.
    pub label_anomalous: Option<bool>,
}

/// The models of one worker, by file.
pub struct ModelRegistry {
    dir: PathBuf,
    metrics: Arc<Metrics>,
    loaded: Mutex<HashMap<(PathBuf, usize), Weak<WatchedModel>>>,
}

impl ModelRegistry {
    /// Relative model paths are resolved against `dir`.
    pub fn new(dir: PathBuf, metrics: Arc<Metrics>) -> ModelRegistry {
        ModelRegistry {
            dir,
            metrics,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve(&self.dir, path)
    }

    /// The model at `m.path` with `n_features` inputs: the one already loaded, or loaded now
    /// (and from then on watched for new versions).
    pub fn get(
        &self,
        pipeline: &str,
        detector: &str,
        m: &ModelRef,
        n_features: usize,
    ) -> Result<Arc<WatchedModel>, ScoringError> {
        let path = self.resolve(&m.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = loaded
            .get(&(path.clone(), n_features))
            .and_then(Weak::upgrade)
        {
            return Ok(model);
        }
        let labels = |outcome: &str| ModelLoadLabels {
            pipeline: pipeline.to_string(),
            detector: detector.to_string(),
            outcome: outcome.to_string(),
        };
        let stamp = Stamp::of(&path);
        let model = match Model::load(&path, n_features) {
            Ok(model) => model,
            Err(e) => {
                self.metrics
                    .model_loads
                    .get_or_create(&labels("failed"))
                    .inc();
                return Err(e.into());
            }
        };
        check_outputs(&model, m)?;
        self.metrics
            .model_loads
            .get_or_create(&labels("loaded"))
            .inc();
        info!(model = %path.display(), pipeline, detector, "model loaded");
        let watched = Arc::new(WatchedModel {
            path: path.clone(),
            n_features,
            current: RwLock::new(Arc::new(model)),
        });
        loaded.insert((path, n_features), Arc::downgrade(&watched));
        let weak = Arc::downgrade(&watched);
        let swapped = self
            .metrics
            .model_loads
            .get_or_create_owned(&labels("swapped"));
        let failed = self
            .metrics
            .model_loads
            .get_or_create_owned(&labels("failed"));
        let meaning = m.clone();
        // A plain thread: loading and optimising a model is blocking work, and the watch
        // ends by itself once no detector holds the model any more.
        let spawned = std::thread::Builder::new()
            .name("anom-model-watch".into())
            .spawn(move || {
                let mut stamp = stamp;
                loop {
                    std::thread::sleep(POLL);
                    let Some(model) = weak.upgrade() else { return };
                    let now = Stamp::of(&model.path);
                    if now == stamp || now.is_none() {
                        continue;
                    }
                    stamp = now;
                    let loaded = Model::load(&model.path, model.n_features)
                        .map_err(ScoringError::from)
                        .and_then(|new| check_outputs(&new, &meaning).map(|()| new));
                    match loaded {
                        Ok(new) => {
                            *model.current.write().unwrap_or_else(|e| e.into_inner()) =
                                Arc::new(new);
                            swapped.inc();
                            info!(model = %model.path.display(), "new model version swapped in");
                        }
                        Err(e) => {
                            failed.inc();
                            warn!(model = %model.path.display(), error = %e, "new model version not loaded; keeping the running one");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot watch the model file for new versions");
        }
        Ok(watched)
    }
}

/// Loads every model `pipeline` names (relative to `dir`) and checks its inputs and outputs
/// against the detector: the problems, at `detectors[i].model`, with what was expected.
pub fn check_models(pipeline: &Pipeline, dir: &Path) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, d) in pipeline.detectors.iter().enumerate() {
        let DetectorKind::Model(m) = &d.kind else {
            continue;
        };
        let path = resolve(dir, &m.path);
        let checked = Model::load(&path, d.inputs.len())
            .map_err(ScoringError::from)
            .and_then(|model| check_outputs(&model, m));
        if let Err(e) = checked {
            let e = e.to_string();
            let shown = path.display().to_string();
            problems.push((
                format!("detectors[{i}].model"),
                if e.contains(&shown) {
                    e
                } else {
                    format!("{shown}: {e}")
                },
            ));
        }
    }
    problems
}

/// `path` as written in a pipeline: absolute, or relative to `dir`.
pub fn resolve(dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq)]
struct Stamp(Option<(u64, SystemTime)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?))),
        )
    }

    fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

/// Checks that the model has the outputs the detector's `output:` meaning needs.
pub fn check_outputs(model: &Model, m: &ModelRef) -> Result<(), ScoringError> {
    Plan::of(model, m).map(|_| ())
}

/// Which outputs hold what, for one model and one meaning.
struct Plan {
    score: usize,
    label: Option<usize>,
}

impl Plan {
    fn of(model: &Model, m: &ModelRef) -> Result<Plan, ScoringError> {
        let outputs = model.outputs();
        let names = || {
            outputs
                .iter()
                .map(|o| format!("{} ({:?})", o.name, o.kind).to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |wanted: &Option<String>, float: bool, what: &str| {
            let found = match wanted {
                Some(name) => outputs.iter().position(|o| &o.name == name),
                None => outputs.iter().position(|o| {
                    (o.kind == ElementKind::Float) == float && o.kind != ElementKind::Str
                }),
            };
            found.ok_or_else(|| {
                ScoringError::Outputs(match wanted {
                    Some(name) => format!(
                        "expected an output named `{name}` ({what}), the model has: {}",
                        names()
                    ),
                    None => format!(
                        "expected a {} output ({what}), the model has: {}",
                        if float { "float" } else { "integer" },
                        names()
                    ),
                })
            })
        };
        let score = find(&m.score_output, true, "the score")?;
        let label = match m.output {
            ModelOutput::LabelScore => Some(find(&m.label_output, false, "the label")?),
            _ => None,
        };
        Ok(Plan { score, label })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model's outputs do not fit the detector's `output:` meaning.
    #[error("{0}")]
    Outputs(String),
}

/// A loaded model and the file it came from.
pub struct WatchedModel {
    path: PathBuf,
    n_features: usize,
    current: RwLock<Arc<Model>>,
}

impl WatchedModel {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version running now.
    pub fn current(&self) -> Arc<Model> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Scores `n_rows` rows (row-major) with the current version, as `m` says to read the
    /// model's outputs.
    pub fn score(
        &self,
        m: &ModelRef,
        rows: &[f32],
        n_rows: usize,
    ) -> Result<Vec<ModelScore>, ScoringError> {
        let model = self.current();
        let plan = Plan::of(&model, m)?;
        let outputs = model.run(rows, n_rows)?;
        let score = outputs.get(plan.score).ok_or_else(|| {
            ScoringError::Outputs("the model returned fewer outputs than it declares".into())
        })?;
        let width = self.n_features;
        let mut scores: Vec<ModelScore> = match m.output {
            ModelOutput::Reconstruction => {
                let OutputData::Float { width: w, values } = score else {
                    return Err(ScoringError::Outputs(
                        "expected the reconstruction as floats".into(),
                    ));
                };
                let w = *w;
                if w != width {
                    return Err(ScoringError::Outputs(format!(
                        "a reconstruction must have as many columns as the model has inputs ({width}), found {w}"
                    )));
                }
                values
                    .chunks(w)
                    .zip(rows.chunks(width))
                    .map(|(out, input)| ModelScore {
                        score: out
                            .iter()
                            .zip(input)
                            .map(|(o, i)| ((o - i) as f64).powi(2))
                            .sum::<f64>()
                            / width as f64,
                        label_anomalous: None,
                    })
                    .collect()
            }
            _ => {
                let OutputData::Float { width: w, values } = score else {
                    return Err(ScoringError::Outputs("expected the score as floats".into()));
                };
                values
                    .chunks((*w).max(1))
                    .map(|row| ModelScore {
                        score: row.first().copied().unwrap_or(f32::NAN) as f64,
                        label_anomalous: None,
                    })
                    .collect()
            }
        };
        if let Some(label) = plan.label {
            let Some(OutputData::Int {
                width: w,
                values: labels,
            }) = outputs.get(label)
            else {
                return Err(ScoringError::Outputs(
                    "expected the label as integers".into(),
                ));
            };
            for (s, row) in scores.iter_mut().zip(labels.chunks((*w).max(1))) {
                s.label_anomalous = row.first().map(|l| *l == m.anomaly_label);
            }
        }
        if scores.len() != n_rows {
            return Err(ScoringError::Outputs(format!(
                "expected {n_rows} scores, the model returned {}",
                scores.len()
            )));
        }
        Ok(scores)
    }
}

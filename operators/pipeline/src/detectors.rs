//! Detectors as the score stage runs them: each definition checked once, its inputs resolved
//! to row indexes (fields, then aggregates), built-in detectors compiled, model references
//! kept for the worker to load.

use crate::diagnostics::Diagnostics;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::definition::{DetectorDef, Direction, ModelOutput, Severity};
use super::scope::RowScope;
use super::template::Template;
use anom_lang::expr::Scope;
use anom_lang::value::ValueType;
use anom_ml::detector::{Detector, Kind};

/// One compiled detector.
#[derive(Debug, Clone)]
pub struct DetectorSpec {
    pub name: String,
    /// Row indexes (fields, then aggregates) of its inputs, in order.
    pub inputs: Vec<usize>,
    /// The inputs' names, for explanations.
    pub input_names: Vec<String>,
    pub threshold: f64,
    /// After an alert of a key, its next episodes stay silent this long (event time, ms).
    pub cooldown_ms: i64,
    pub anomalous: Direction,
    pub severity: Severity,
    pub message: Template,
    pub labels: BTreeMap<String, String>,
    pub kind: DetectorKind,
    /// The definition's parts that shape its state: a new pipeline version keeps the per-key
    /// state of every detector whose signature did not change.
    pub signature: String,
}

#[derive(Debug, Clone)]
pub enum DetectorKind {
    /// A built-in detector keeping per-key statistics.
    Online(Arc<Detector>),
    /// An ONNX model, loaded by the worker.
    Model(ModelRef),
    /// A user-defined function: the validate stage computes its score into a hidden field
    /// (the detector's only input) and dead-letters events it cannot score in [0, 1].
    Udf(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    /// As written: relative to the worker's models directory, or absolute.
    pub path: String,
    pub output: ModelOutput,
    pub score_output: Option<String>,
    pub label_output: Option<String>,
    pub anomaly_label: i64,
}

impl DetectorSpec {
    /// Whether `score` crosses the threshold.
    pub fn flags(&self, score: f64) -> bool {
        match self.anomalous {
            Direction::Above => score >= self.threshold,
            Direction::Below => score <= self.threshold,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            DetectorKind::Online(d) => d.kind().name(),
            DetectorKind::Model(_) => "onnx",
            DetectorKind::Udf(_) => "udf",
        }
    }
}

/// Compiles `defs` against the row scope (fields and aggregates). `udf_scores` gives, per
/// detector, the row index of a `kind: udf` detector's score (`None` for other kinds, or
/// when its UDF use failed and was reported). Problems come back as (path, message) pairs.
pub fn compile(
    defs: &[DetectorDef],
    scope: &RowScope,
    udf_scores: &[Option<usize>],
    diags: &mut Diagnostics,
) -> Vec<DetectorSpec> {
    let mut specs = Vec::new();
    let mut failed = false;
    let mut names: Vec<&str> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let path = format!("detectors[{i}]");
        let mut error = |at: &str, message: String| {
            failed = true;
            diags.report(format!("{path}{at}"), message)
        };
        if !super::schema::valid_field_name(&d.name) {
            error(".name", format!("`{}` is not a valid detector name: expected letters, digits and `_`, not starting with a digit (rules use it as a name)", d.name));
        } else if scope.index_of(&d.name).is_some() {
            error(
                ".name",
                format!("`{}` is already the name of a field or aggregate", d.name),
            );
        } else if names.contains(&d.name.as_str()) {
            error(".name", format!("detector `{}` is declared twice", d.name));
        }
        names.push(&d.name);

        if d.kind == "udf" {
            // Its UDF use was compiled with the derived fields (problems reported there).
            let Some(Some(index)) = udf_scores.get(i) else {
                continue;
            };
            for (key, set) in [
                ("field", d.field.is_some()),
                ("model", d.model.is_some()),
                ("warmup", d.warmup.is_some()),
                ("params", !d.params.is_null()),
            ] {
                if set {
                    error(
                        &format!(".{key}"),
                        format!("`{key}` does not apply to udf detectors"),
                    );
                }
            }
            let threshold = match d.threshold {
                Some(t) if (0.0..=1.0).contains(&t) => t,
                Some(t) => {
                    error(
                        ".threshold",
                        format!("a udf detector scores in [0, 1]: expected a threshold in that range, found {t}"),
                    );
                    continue;
                }
                None => {
                    error(
                        ".threshold",
                        "expected the score at which an event is anomalous (`threshold: 0.8`)"
                            .into(),
                    );
                    continue;
                }
            };
            let udf = d.udf.clone().unwrap_or_default();
            let text = d.message.clone().unwrap_or_else(|| {
                format!("{{key}}: {udf}({}) scored high", d.features.join(", "))
            });
            let message = match Template::compile(&text, scope) {
                Ok(t) => t,
                Err(e) => {
                    error(".message", e.to_string());
                    continue;
                }
            };
            specs.push(DetectorSpec {
                name: d.name.clone(),
                inputs: vec![*index],
                input_names: vec![format!("{udf}({})", d.features.join(", "))],
                threshold,
                cooldown_ms: d.cooldown.map_or(0, |c| c.as_millis() as i64),
                anomalous: d.anomalous,
                severity: d.severity,
                message,
                labels: d.labels.clone(),
                signature: format!("udf|{udf}|{}", d.features.join(",")),
                kind: DetectorKind::Udf(udf),
            });
            continue;
        }

        let model = d.kind == "onnx";
        let kind = if model {
            None
        } else {
            match Kind::parse(&d.kind) {
                Ok(k) => Some(k),
                Err(_) => {
                    let known = Kind::ALL.iter().map(|k| k.name()).chain(["onnx", "udf"]);
                    error(
                        ".kind",
                        format!(
                            "unknown detector kind `{}`: expected one of {}{}",
                            d.kind,
                            Kind::ALL
                                .iter()
                                .map(|k| k.name())
                                .chain(["onnx", "udf"])
                                .collect::<Vec<_>>()
                                .join(", "),
                            anom_lang::suggest::did_you_mean(&d.kind, known)
                        ),
                    );
                    continue;
                }
            }
        };
        let multivariate = model || kind.is_some_and(Kind::multivariate);

        // Inputs: `field` for univariate detectors, `features` for the others.
        let (written, at): (Vec<&String>, &str) = match (multivariate, &d.field) {
            (false, Some(f)) if d.features.is_empty() => (vec![f], ".field"),
            (false, None) if !d.features.is_empty() => {
                error(
                    ".features",
                    format!(
                        "a {} detector watches one value: expected `field: <name>`",
                        d.kind
                    ),
                );
                continue;
            }
            (false, _) => {
                error(
                    ".field",
                    format!(
                        "expected the numeric field or aggregate a {} detector watches (`field: amount`)",
                        d.kind
                    ),
                );
                continue;
            }
            (true, None) if !d.features.is_empty() => (d.features.iter().collect(), ".features"),
            (true, _) => {
                error(
                    ".features",
                    format!(
                        "expected the list of numeric fields and aggregates the {} detector reads (`features: [a, b]`)",
                        d.kind
                    ),
                );
                continue;
            }
        };
        let mut inputs = Vec::new();
        for (j, name) in written.iter().enumerate() {
            let at = if at == ".features" {
                format!(".features[{j}]")
            } else {
                at.to_string()
            };
            match scope.field(name) {
                None => error(
                    &at,
                    format!(
                        "unknown field or aggregate `{name}`{}",
                        anom_lang::suggest::did_you_mean(name, scope.names())
                    ),
                ),
                Some(info)
                    if info.ty.is_numeric()
                        || info.ty == ValueType::Timestamp
                        || info.ty == ValueType::Bool =>
                {
                    inputs.push(info.index)
                }
                Some(info) => error(
                    &at,
                    format!("`{name}` is a {}: a detector needs a number", info.ty),
                ),
            }
        }
        if inputs.len() != written.len() {
            continue;
        }

        let threshold;
        let detector_kind = match kind {
            Some(kind) => {
                for (key, set) in [
                    ("model", d.model.is_some()),
                    ("score_output", d.score_output.is_some()),
                    ("label_output", d.label_output.is_some()),
                    ("output", d.output != ModelOutput::Score),
                ] {
                    if set {
                        error(
                            &format!(".{key}"),
                            format!("`{key}` applies to onnx detectors, not {}", d.kind),
                        );
                    }
                }
                match Detector::new(kind, &d.params, d.warmup, inputs.len()) {
                    Ok(detector) => {
                        threshold = d.threshold.unwrap_or(detector.default_threshold());
                        if !(0.0..=1.0).contains(&threshold) {
                            error(
                                ".threshold",
                                format!("built-in detectors score in [0, 1]: expected a threshold in that range, found {threshold}"),
                            );
                        }
                        DetectorKind::Online(Arc::new(detector))
                    }
                    Err(e) => {
                        error(".params", e.to_string());
                        continue;
                    }
                }
            }
            None => {
                let Some(model_path) = &d.model else {
                    error(
                        ".model",
                        "expected the ONNX model file (`model: models/fraud.onnx`)".into(),
                    );
                    continue;
                };
                if d.warmup.is_some() || !d.params.is_null() {
                    error(
                        if d.warmup.is_some() {
                            ".warmup"
                        } else {
                            ".params"
                        },
                        "onnx detectors score from the first event and take no params".into(),
                    );
                }
                threshold = match (d.threshold, d.output) {
                    (Some(t), _) => t,
                    // The label decides; the score is only reported.
                    (None, ModelOutput::LabelScore) => f64::NAN,
                    (None, _) => {
                        error(
                            ".threshold",
                            "expected the model score at which an event is anomalous (`threshold: 0.6`)".into(),
                        );
                        continue;
                    }
                };
                DetectorKind::Model(ModelRef {
                    path: model_path.clone(),
                    output: d.output,
                    score_output: d.score_output.clone(),
                    label_output: d.label_output.clone(),
                    anomaly_label: d.anomaly_label,
                })
            }
        };
        let input_names: Vec<String> = inputs
            .iter()
            .map(|&i| scope.name(i).unwrap_or_default().to_string())
            .collect();
        let text = d
            .message
            .clone()
            .unwrap_or_else(|| format!("{{key}}: unusual {}", input_names.join(", ")));
        let message = match Template::compile(&text, scope) {
            Ok(t) => t,
            Err(e) => {
                error(".message", e.to_string());
                continue;
            }
        };
        let signature = format!(
            "{}|{}|{:?}|{}|{:?}",
            d.kind,
            d.params,
            d.warmup,
            input_names.join(","),
            d.model
        );
        let cooldown_ms = match (&detector_kind, d.cooldown) {
            (_, Some(c)) => c.as_millis() as i64,
            (DetectorKind::Online(_), None) => anom_ml::detector::episode::DEFAULT_COOLDOWN_MS,
            (_, None) => 0,
        };
        specs.push(DetectorSpec {
            name: d.name.clone(),
            inputs,
            input_names,
            threshold,
            cooldown_ms,
            anomalous: d.anomalous,
            severity: d.severity,
            message,
            labels: d.labels.clone(),
            kind: detector_kind,
            signature,
        });
    }
    if failed {
        Vec::new()
    } else {
        specs
    }
}

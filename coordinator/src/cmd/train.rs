//! `anom train`: fits an Isolation Forest on a stretch of a pipeline's own input stream,
//! replayed through the same validate and window code as live (so its features are exactly
//! what the live detector will see), writes it as ONNX with a model card, and with --apply
//! adds it to the pipeline as a new version.

use std::path::PathBuf;
use std::sync::Arc;

use anom_ml::forest::{CardContext, ForestParams, IsolationForest, ModelCard};
use anom_operators::backtest::source::{self, Position, Range};
use anom_operators::backtest::{numeric_row, Depth, Engine, OnEvent};
use anom_operators::model_registry::ModelRegistry;
use anom_pipeline::envelope::Envelope;
use anom_pipeline::Pipeline;
use anom_proto::v1;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::parse_time;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline whose input stream to learn from.
    #[arg(long)]
    pipeline: String,
    /// Fields and aggregates the model reads, in order (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    features: Vec<String>,
    /// Start of the training range: RFC 3339 (2026-11-01T00:00:00Z) or an age (7d, 12h).
    /// Default: the start of the stream.
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive), same forms. Default: now.
    #[arg(long)]
    to: Option<String>,
    /// The pipeline definition to compute features with; default: its current version from
    /// the coordinator.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    #[arg(long, env = "ANOM_COORDINATOR", default_value = super::DEFAULT_COORDINATOR)]
    coordinator: String,
    #[arg(long, env = "ANOM_NATS_URL", default_value = super::DEFAULT_NATS)]
    nats: String,
    /// Trees in the forest.
    #[arg(long, default_value_t = 100)]
    trees: usize,
    /// Rows each tree is grown from.
    #[arg(long, default_value_t = 256)]
    sample_size: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Expected share of anomalies: the suggested threshold flags this share of the
    /// training events.
    #[arg(long, default_value_t = 0.01)]
    contamination: f64,
    /// The detector's name in the pipeline.
    #[arg(long)]
    detector: Option<String>,
    /// Where detectors' relative model paths point (where the model is written).
    #[arg(long, env = "ANOM_MODELS_DIR", default_value = "pipelines")]
    models_dir: PathBuf,
    /// The model file, relative to --models-dir; default models/<pipeline>-<detector>.onnx.
    #[arg(long)]
    out: Option<String>,
    /// Add (or update) the detector in the pipeline and apply it as a new version.
    #[arg(long)]
    apply: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let yaml = match &args.file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?,
        None => {
            let mut c = v1::pipelines_client::PipelinesClient::new(anom::agent::channel(
                &args.coordinator,
            )?);
            c.get(v1::GetPipelineRequest {
                name: args.pipeline.clone(),
                version: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner()
            .yaml
        }
    };
    let pipeline = Arc::new(
        Pipeline::from_yaml(&yaml)
            .map_err(|e| anyhow::anyhow!("invalid pipeline definition:\n{e}"))?,
    );
    anyhow::ensure!(
        pipeline.name == args.pipeline,
        "the definition is of pipeline `{}`, not `{}`",
        pipeline.name,
        args.pipeline
    );
    let mut columns = Vec::new();
    for f in &args.features {
        let Some(i) = pipeline
            .scope
            .index_of(f)
            .filter(|&i| i < pipeline.enriched_width())
        else {
            anyhow::bail!(
                "unknown field or aggregate `{f}` in pipeline `{}`{}",
                pipeline.name,
                anom_lang::suggest::did_you_mean(
                    f,
                    pipeline.scope.names().take(pipeline.enriched_width())
                )
            );
        };
        columns.push(i);
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let from_ms = args
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let to_ms = args.to.as_deref().map(|t| parse_time(t, now)).transpose()?;

    // Replay and collect the feature rows.
    let client = anom_operators::worker::connect(&args.nats)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats))?;
    let js = async_nats::jetstream::new(client);
    let metrics = Arc::new(anom_runtime::metrics::Metrics::new());
    let models = ModelRegistry::new(args.models_dir.clone(), metrics.clone());
    let mut rows: Vec<f32> = Vec::new();
    let (mut events, mut skipped) = (0u64, 0u64);
    let (mut first_ms, mut last_ms) = (i64::MAX, i64::MIN);
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(
        "{spinner} replaying: {pos} events ({per_sec})",
    )?);
    let range = Range {
        from: from_ms.map(Position::Time),
        to: to_ms.map(Position::Time),
    };
    let mut reader = source::Reader::open(&js, &pipeline.name, range, 1000).await?;
    let mut engine: Option<Engine> = None;
    while let Some((batch, at)) = reader.next().await? {
        bar.set_position(at.read);
        let engine = match &mut engine {
            Some(e) => e,
            None => {
                let start = Engine::first_event_ms(&pipeline, &batch).unwrap_or_default();
                engine.insert(Engine::new(
                    pipeline.clone(),
                    Depth::Enriched,
                    start,
                    &models,
                    &metrics,
                )?)
            }
        };
        engine.feed(
            &batch,
            &mut OnEvent(|env: &Envelope| {
                events += 1;
                let row = numeric_row(&pipeline, env);
                let values: Option<Vec<f32>> = columns
                    .iter()
                    .map(|&i| row.get(i).copied().flatten().map(|v| v as f32))
                    .collect();
                match values {
                    Some(v) if v.iter().all(|x| x.is_finite()) => {
                        rows.extend(v);
                        first_ms = first_ms.min(env.meta.event_time);
                        last_ms = last_ms.max(env.meta.event_time);
                    }
                    _ => skipped += 1,
                }
            }),
        );
    }
    let read = bar.position();
    bar.finish_and_clear();
    let n = rows.len() / columns.len();
    anyhow::ensure!(
        n > 0,
        "no usable events: read {read} messages of pipeline `{}` in the range, {events} valid, {skipped} missing a feature",
        pipeline.name
    );

    let params = ForestParams {
        trees: args.trees,
        sample_size: args.sample_size,
        seed: args.seed,
        ..ForestParams::default()
    };
    let forest = IsolationForest::fit(&rows, columns.len(), &params)?;
    let detector = args
        .detector
        .clone()
        .unwrap_or_else(|| format!("{}_forest", pipeline.name.replace('-', "_")));
    let relative = args
        .out
        .clone()
        .unwrap_or_else(|| format!("models/{}-{detector}.onnx", pipeline.name));
    let path = args.models_dir.join(&relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let onnx = export(
        &forest,
        &args.features,
        &format!("anom train --pipeline {}", pipeline.name),
    )?;
    let card = ModelCard::build(
        &forest,
        &rows,
        columns.len(),
        &args.features,
        args.contamination,
        &CardContext {
            pipeline: &pipeline.name,
            pipeline_version: &pipeline.version,
            from_ms: first_ms,
            to_ms: last_ms,
            created_at_ms: now,
        },
    )?;
    // Write both beside the target and rename: a watching worker never reads half a file.
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, &onnx).with_context(|| format!("cannot write {}", tmp.display()))?;
    let card_path = card.write_beside(&path)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "trained on {n} events ({skipped} skipped for a missing feature) of pipeline {}",
        pipeline.name
    );
    println!("{card}");
    println!("model: {}", path.display());
    println!("card:  {}", card_path.display());

    let threshold = card.threshold;
    let updated = with_detector(&yaml, &detector, &relative, &args.features, threshold)?;
    if args.apply {
        let mut c =
            v1::pipelines_client::PipelinesClient::new(anom::agent::channel(&args.coordinator)?);
        let r = c
            .apply(v1::ApplyRequest {
                definition: Some(v1::Definition {
                    source: Some(v1::definition::Source::Yaml(updated)),
                    source_name: format!("{} + {detector}", pipeline.name),
                }),
                comment: format!(
                    "anom train: detector {detector} ({} trees on {n} events, threshold {threshold:.4})",
                    args.trees
                ),
                author: std::env::var("USER").unwrap_or_default(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let v = r.version.unwrap_or_default();
        println!(
            "{}: version {} applied with detector {detector}",
            v.name, v.version
        );
    } else {
        println!("\nTo use it, add to the pipeline (or run again with --apply):\n");
        println!(
            "{}",
            detector_yaml(&detector, &relative, &args.features, threshold)
        );
    }
    Ok(())
}

fn detector_yaml(name: &str, model: &str, features: &[String], threshold: f64) -> String {
    format!(
        "  - name: {name}\n    kind: onnx\n    model: {model}\n    features: [{}]\n    threshold: {threshold:.6}\n",
        features.join(", ")
    )
}

/// The definition with the detector added, or replaced if one of that name exists. Text is
/// appended when the file has no `detectors:` yet, so its comments and layout stay; otherwise
/// the document is rewritten from its parsed form.
fn with_detector(
    yaml: &str,
    name: &str,
    model: &str,
    features: &[String],
    threshold: f64,
) -> anyhow::Result<String> {
    let has_detectors = yaml.lines().any(|l| l.starts_with("detectors:"));
    if !has_detectors {
        let mut text = yaml.trim_end().to_string();
        text.push_str("\ndetectors:\n");
        text.push_str(&detector_yaml(name, model, features, threshold));
        return Ok(text);
    }
    let mut doc: serde_norway::Value = serde_norway::from_str(yaml)?;
    let entry: serde_norway::Value = serde_norway::from_str(
        &detector_yaml(name, model, features, threshold)
            .replacen("  - ", "", 1)
            .replace("\n    ", "\n"),
    )?;
    let list = doc
        .get_mut("detectors")
        .and_then(|d| d.as_sequence_mut())
        .context("`detectors:` is not a list")?;
    match list
        .iter_mut()
        .find(|d| d.get("name").and_then(|n| n.as_str()) == Some(name))
    {
        Some(existing) => *existing = entry,
        None => list.push(entry),
    }
    Ok(serde_norway::to_string(&doc)?)
}

/// The forest as an ONNX model file.
#[cfg(feature = "onnx")]
fn export(forest: &IsolationForest, features: &[String], note: &str) -> anyhow::Result<Vec<u8>> {
    Ok(forest.to_onnx(features, note)?)
}

#[cfg(not(feature = "onnx"))]
fn export(_: &IsolationForest, _: &[String], _: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::bail!(
        "anom train writes an ONNX model: this build of anom has no `onnx` feature (on by default)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name: p\nkey: k\n# a comment\nschema:\n  k: string\n  x: float\n";

    #[test]
    fn adds_the_detector_keeping_comments() {
        let out = with_detector(BASE, "f", "models/p-f.onnx", &["x".into()], 0.61).unwrap();
        assert!(out.contains("# a comment"), "{out}");
        let p = Pipeline::from_yaml(&out).unwrap();
        assert_eq!(p.detectors.len(), 1);
        assert_eq!(p.detectors[0].name, "f");
        assert_eq!(p.detectors[0].threshold, 0.61);
    }

    #[test]
    fn replaces_a_detector_of_the_same_name() {
        let once = with_detector(BASE, "f", "models/a.onnx", &["x".into()], 0.5).unwrap();
        let twice = with_detector(&once, "f", "models/b.onnx", &["x".into()], 0.7).unwrap();
        let p = Pipeline::from_yaml(&twice).unwrap();
        assert_eq!(p.detectors.len(), 1);
        assert_eq!(p.detectors[0].threshold, 0.7);
        assert!(twice.contains("models/b.onnx") && !twice.contains("models/a.onnx"));
        let other = with_detector(&twice, "g", "models/c.onnx", &["x".into()], 0.9).unwrap();
        assert_eq!(Pipeline::from_yaml(&other).unwrap().detectors.len(), 2);
    }
}

//! The exported Isolation Forest, run by onnx's reference evaluator (an implementation
//! independent of ours) through scripts/ml/onnx_reference_eval.py, scores like the Rust
//! forest; scikit-learn's own Isolation Forest on the same data ranks the outliers alike.

use std::path::{Path, PathBuf};
use std::process::Command;

use anom_ml::forest::{ForestParams, IsolationForest, INPUT_NAME, OUTPUT_NAME};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tract_onnx::pb::ModelProto;

const FEATURES: usize = 4;
const INLIERS: usize = 2000;
const OUTLIERS: usize = 6;

/// A standard-normal cluster followed by `OUTLIERS` rows 8 to 12 standard deviations out.
fn training_rows() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows = Vec::new();
    for _ in 0..INLIERS * FEATURES {
        // Box–Muller.
        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
        rows.push(((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32);
    }
    for k in 0..OUTLIERS {
        for f in 0..FEATURES {
            let sign = if (k + f) % 2 == 0 { 1.0 } else { -1.0 };
            rows.push(sign * if f == k % FEATURES { 12.0 } else { 8.0 });
        }
    }
    rows
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project-local Python with onnx and scikit-learn (created on first use).
fn python() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/ml/venv"))
        .output()
        .expect("run scripts/ml/venv");
    assert!(
        out.status.success(),
        "scripts/ml/venv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Values of a float or int list attribute of the graph's first node, as f64.
fn attribute(model: &ModelProto, name: &str) -> Vec<f64> {
    let node = &model.graph.as_ref().unwrap().node[0];
    let a = node.attribute.iter().find(|a| a.name == name).unwrap();
    if a.floats.is_empty() {
        a.ints.iter().map(|&i| i as f64).collect()
    } else {
        a.floats.iter().map(|&f| f64::from(f)).collect()
    }
}

#[test]
fn the_reference_evaluator_and_scikit_learn_agree_with_the_rust_forest() {
    let rows = training_rows();
    let params = ForestParams {
        seed: 5,
        ..ForestParams::default()
    };
    let forest = IsolationForest::fit(&rows, FEATURES, &params).unwrap();
    let names: Vec<String> = ["cpu", "mem", "disk", "net"].map(String::from).to_vec();
    let bytes = forest.to_onnx(&names, "integration test").unwrap();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    assert_eq!(graph.input[0].name, INPUT_NAME);
    assert_eq!(graph.output[0].name, OUTPUT_NAME);

    // Rows to score: every 20th inlier, the outliers, then rows sitting exactly on the root
    // threshold of the first trees (where `<=` and `<` part ways), and one NaN row.
    let mut eval: Vec<Vec<f32>> = rows
        .chunks_exact(FEATURES)
        .step_by(20)
        .take(INLIERS / 20)
        .map(<[f32]>::to_vec)
        .collect();
    let inliers = eval.len();
    eval.extend(
        rows.chunks_exact(FEATURES)
            .skip(INLIERS)
            .map(<[f32]>::to_vec),
    );
    let (node_ids, features, thresholds) = (
        attribute(&model, "nodes_nodeids"),
        attribute(&model, "nodes_featureids"),
        attribute(&model, "nodes_values"),
    );
    let roots: Vec<usize> = (0..node_ids.len())
        .filter(|&i| node_ids[i] == 0.0)
        .collect();
    assert_eq!(roots.len(), params.trees);
    for (k, &root) in roots.iter().take(20).enumerate() {
        let mut row = eval[k].clone();
        row[features[root] as usize] = thresholds[root] as f32;
        eval.push(row);
    }
    eval.push(vec![f32::NAN, 0.0, 0.0, 0.0]);
    let flat: Vec<f32> = eval.concat();
    let rust = forest.score_batch(&flat).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("forest.onnx");
    std::fs::write(&model_path, &bytes).unwrap();
    let input_path = dir.path().join("input.json");
    let train: Vec<&[f32]> = rows.chunks_exact(FEATURES).collect();
    let request = json!({
        // serde_json writes NaN as null, which numpy reads back as NaN.
        "features": eval,
        "sklearn": {
            "train": train,
            "trees": params.trees,
            "sample_size": params.sample_size,
            "seed": params.seed,
        },
    });
    std::fs::write(&input_path, request.to_string()).unwrap();
    let out = Command::new(python())
        .arg(repo_root().join("scripts/ml/onnx_reference_eval.py"))
        .arg(&model_path)
        .arg(&input_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_reference_eval.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let reference = floats(&reply["outputs"][OUTPUT_NAME]);
    assert_eq!(reference.len(), eval.len());
    let worst = rust
        .iter()
        .zip(&reference)
        .map(|(r, o)| (r - o).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "largest |rust - onnx reference| over {} rows: {worst:e}",
        eval.len()
    );
    for (i, (r, o)) in rust.iter().zip(&reference).enumerate() {
        assert!(
            (r - o).abs() <= 1e-5,
            "row {i} {:?}: rust {r}, onnx reference {o}",
            eval[i]
        );
    }

    // scikit-learn grows other random trees, so only the ranking is compared.
    let sklearn = floats(&reply["sklearn_score"]);
    for (who, scores) in [("rust", &rust), ("sklearn", &sklearn)] {
        let top_inlier = scores[..inliers].iter().copied().fold(0.0, f64::max);
        let low_outlier = scores[inliers..inliers + OUTLIERS]
            .iter()
            .copied()
            .fold(1.0, f64::min);
        assert!(
            low_outlier > top_inlier,
            "{who}: outlier {low_outlier} <= inlier {top_inlier}"
        );
    }
    // Same algorithm, same ψ and depth: the inliers' typical score agrees closely too.
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (ours, theirs) = (mean(&rust[..inliers]), mean(&sklearn[..inliers]));
    eprintln!("mean inlier score: rust {ours}, sklearn {theirs}");
    assert!(
        (ours - theirs).abs() < 0.01,
        "mean inlier score: rust {ours}, sklearn {theirs}"
    );
}

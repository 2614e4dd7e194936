//! scikit-learn models exported with skl2onnx score in tract as they do in scikit-learn.
//!
//! Trains the reference models with scripts/ml/sklearn_reference.py (in the project-local
//! venv scripts/ml/venv makes), loads each with `Model::load` and compares every output on
//! every test row with what scikit-learn itself predicted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anom_ml::model::{ElementKind, Model, OutputData};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program args` and returns its stdout, failing the test with its stderr otherwise.
fn run(program: &Path, args: &[&Path]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {:?} failed ({}):\n{}",
        program.display(),
        args,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn reference_models(dir: &Path) -> Value {
    let python = run(&repo_root().join("scripts/ml/venv"), &[]);
    let python = PathBuf::from(python.trim());
    let script = repo_root().join("scripts/ml/sklearn_reference.py");
    run(&python, &[&script, dir]);
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// float32 against scikit-learn's float64: equal within 1e-5, absolute near zero and relative
/// for larger magnitudes.
fn close(got: f32, want: f64) -> bool {
    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0)
}

#[test]
fn sklearn_models_score_as_in_sklearn() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_models(dir.path());
    let n_features = reference["n_features"].as_u64().unwrap() as usize;
    let inputs: Vec<f32> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let n_rows = inputs.len() / n_features;
    assert!(n_rows >= 500, "only {n_rows} reference rows");

    let models = reference["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "isolation_forest",
            "autoencoder",
            "gradient_boosting",
            "random_forest"
        ]
    );
    let mut anomalies = 0;
    for spec in models {
        let name = spec["name"].as_str().unwrap();
        let model = Model::load(&dir.path().join(spec["file"].as_str().unwrap()), n_features)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = spec["outputs"].as_array().unwrap();
        let onnx_names: Vec<&str> = expected
            .iter()
            .map(|o| o["onnx_name"].as_str().unwrap())
            .collect();
        let declared: Vec<&str> = model.outputs().iter().map(|o| o.name.as_str()).collect();
        assert_eq!(declared, onnx_names, "{name}: outputs");

        let got = model.run(&inputs, n_rows).unwrap();
        for ((out, info), want) in got.iter().zip(model.outputs()).zip(expected) {
            let what = format!(
                "{name}.{} ({})",
                info.name,
                want["sklearn"].as_str().unwrap()
            );
            let rows = want["values"].as_array().unwrap();
            assert_eq!(rows.len(), n_rows, "{what}: reference rows");
            let width = rows[0].as_array().unwrap().len();
            assert_eq!(out.width(), width, "{what}: width");
            assert_eq!(info.width, width, "{what}: declared width");
            let wanted = rows.iter().flat_map(|r| r.as_array().unwrap().iter());
            match (out, want["kind"].as_str().unwrap()) {
                (OutputData::Int { values, .. }, "int") => {
                    assert_eq!(info.kind, ElementKind::Int);
                    for (i, (g, w)) in values.iter().zip(wanted).enumerate() {
                        assert_eq!(*g, w.as_i64().unwrap(), "{what}: row {}", i / width);
                    }
                    anomalies += values.iter().filter(|&&l| l == -1).count();
                }
                (OutputData::Float { values, .. }, "float") => {
                    assert_eq!(info.kind, ElementKind::Float);
                    for (i, (g, w)) in values.iter().zip(wanted).enumerate() {
                        let w = w.as_f64().unwrap();
                        assert!(
                            close(*g, w),
                            "{what}: row {} column {}: tract {g}, scikit-learn {w}",
                            i / width,
                            i % width
                        );
                    }
                }
                (out, kind) => panic!("{what}: got {out:?}, expected {kind}"),
            }
        }

        // A single row and a 64-row slice through the same loaded model give the same scores.
        let whole = &got;
        for (start, len) in [(7, 1), (100, 64)] {
            let part = model
                .run(&inputs[start * n_features..(start + len) * n_features], len)
                .unwrap();
            for (p, w) in part.iter().zip(whole) {
                let width = w.width();
                let range = start * width..(start + len) * width;
                match (p, w) {
                    (OutputData::Float { values: a, .. }, OutputData::Float { values: b, .. }) => {
                        assert_eq!(a[..], b[range], "{name}: rows {start}..+{len}")
                    }
                    (OutputData::Int { values: a, .. }, OutputData::Int { values: b, .. }) => {
                        assert_eq!(a[..], b[range], "{name}: rows {start}..+{len}")
                    }
                    other => panic!("{name}: mismatched kinds {other:?}"),
                }
            }
        }
    }
    // The data has outliers and the forest must flag some, or the labels prove little.
    assert!(
        anomalies > 10,
        "isolation forest flagged only {anomalies} rows"
    );
}

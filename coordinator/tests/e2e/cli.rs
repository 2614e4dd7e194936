//! The `anom` commands a user types: check, worker, publish (JSON lines and CSV), tail.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{repo_root, wait_for, Env};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn anom() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anom"));
    c.env("ANOM_LOG", "warn").kill_on_drop(true);
    c
}

#[tokio::test]
async fn check_reports_a_bad_definition_with_its_file_line_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("pipelines/routes.yaml"))
        .unwrap()
        .replace("when: durationMs > 5000", "when: durationMS > 5000");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = anom().arg("check").arg(&file).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes.yaml:24:11: rules[1].when: column 1: unknown field `durationMS`, did you mean `durationMs`?"),
        "{stderr}"
    );

    let ok = anom()
        .arg("check")
        .arg(repo_root().join("pipelines"))
        .output()
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    for name in ["routes", "expenses", "iot"] {
        assert!(stdout.contains(&format!("ok  {name}")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_jsonl_and_csv_then_tail_the_alerts() {
    let env = Env::start().await;
    let url = env.url();
    let mut worker = anom()
        .args(["worker", "--nats", &url, "--pipelines"])
        .arg(repo_root().join("pipelines"))
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let js = env.js().await;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.get_stream("ANOM_EXPENSES_ALERTS").await.is_ok() }
        })
        .await
    );
    let mut tail = anom()
        .args([
            "tail",
            "alerts",
            "--json",
            "--pipeline",
            "expenses",
            "--nats",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `tail` says when it is subscribed.
    let mut tail_err = BufReader::new(tail.stderr.take().unwrap()).lines();
    let ready = tail_err.next_line().await.unwrap().unwrap_or_default();
    assert!(ready.contains("watching anom.expenses.alerts"), "{ready}");

    let out = anom()
        .args(["publish", "--pipeline", "expenses", "--nats", &url, "--csv"])
        .arg(repo_root().join("pipelines/samples/expenses.csv"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("published 30 events to anom.expenses.in")
    );
    let out = anom()
        .args([
            "publish",
            "--pipeline",
            "routes",
            "--rate",
            "200",
            "--nats",
            &url,
            "--file",
        ])
        .arg(repo_root().join("pipelines/samples/routes.jsonl"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 40 events to anom.routes.in"));

    // The expenses sample has two expenses of at least 1000 and two that need review, each
    // by a different user: four alerts fire.
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut rules = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(30), async {
        while rules.len() < 4 {
            let Ok(Some(line)) = lines.next_line().await else {
                break;
            };
            let alert: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(alert["pipeline"], "expenses", "--pipeline filters");
            // Alerts also print when they resolve (the user's next expense is fine).
            if alert["status"] == "firing" {
                rules.push(alert["rule"].as_str().unwrap().to_string());
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "tail printed {rules:?}");
    rules.sort();
    assert_eq!(
        rules,
        vec![
            "large_expense",
            "large_expense",
            "very_large_expense",
            "very_large_expense"
        ]
    );
    tail.start_kill().unwrap();
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

#[tokio::test]
async fn check_loads_the_models_detectors_name() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"name: points
key: id
schema:
  id: { type: string, required: true }
  x: float
  y: float
  z: float
detectors:
  - name: forest
    kind: onnx
    model: models/points.onnx
    features: [x, y, z]
    threshold: 0.6
"#;
    let file = dir.path().join("points.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = anom().arg("check").arg(&file).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("points.yaml:11:12: detectors[0].model: cannot read model file")
            && stderr.contains("models/points.onnx: No such file"),
        "{stderr}"
    );

    // A model with two inputs for a detector that declares three.
    let rows: Vec<f32> = (0..200).flat_map(|i| [i as f32, (i % 7) as f32]).collect();
    let forest =
        anom_ml::forest::IsolationForest::fit(&rows, 2, &anom_ml::forest::ForestParams::default())
            .unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(
        dir.path().join("models/points.onnx"),
        forest.to_onnx(&["x".into(), "y".into()], "test").unwrap(),
    )
    .unwrap();
    let out = anom().arg("check").arg(&file).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("detectors[0].model: ")
            && stderr.contains("model expects 2 input features, the caller declares 3"),
        "{stderr}"
    );

    std::fs::write(&file, yaml.replace("[x, y, z]", "[x, y]")).unwrap();
    let out = anom().arg("check").arg(&file).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn detectors_eval_prints_quality_per_detector() {
    let out = anom()
        .args(["detectors", "eval", "--points", "1500"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "robust_zscore",
        "ewma",
        "cusum",
        "seasonal",
        "holt_winters",
        "half_space_trees",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(kind)),
            "{kind}: {stdout}"
        );
    }
    assert!(
        stdout.contains("precision") && stdout.contains("recall"),
        "{stdout}"
    );
}

/// `anom … | head`: once the reader has gone, the command stops as a Unix tool does (by
/// SIGPIPE), without a panic message.
#[test]
fn a_closed_stdout_stops_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .env("ANOM_LOG", "warn")
        .current_dir(repo_root())
        .args(["check", "pipelines/"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {stderr}", out.status);
}

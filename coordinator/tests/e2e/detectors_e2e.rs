//! Detectors against a real nats-server: built-in online detectors learning each key's usual
//! behaviour (state kept across a restart), rules using their scores, an ONNX model trained
//! by Anom scoring in batches and swapped for a new file under load without losing or
//! repeating an event, and `anom train` learning from the pipeline's own input stream.

use std::path::Path;
use std::time::Duration;

use crate::support::{alerts, publish_events as publish, start_worker, stream_len, wait_for, Env};
use anom_ml::forest::{ForestParams, IsolationForest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HOSTS: &str = r#"
name: hosts
key: host
event_time: at
partitions: 2
units:
  publish_enriched: true
schema:
  host: { type: string, required: true }
  latencyMs: { type: float, required: true }
  errors: { type: int, default: 0 }
  at: { type: timestamp, required: true }
detectors:
  - name: latency_unusual
    kind: robust_zscore
    field: latencyMs
    warmup: 20
    # The kind's own statistic: this test counts readings to the end of a 20-event warm-up.
    params: { calibration: none }
    severity: warning
rules:
  - name: slow_and_failing
    when: errors > 0 and latency_unusual > 0.5
    severity: critical
    message: "{host}: {errors} errors while latency is unusual ({latencyMs} ms)"
"#;

/// `n` ordinary readings of `host` from minute `start`: latency 100 ms ± a few, no errors.
fn ordinary(host: &str, start: usize, n: usize) -> Vec<serde_json::Value> {
    (start..start + n)
        .map(|i| {
            serde_json::json!({
                "host": host,
                "latencyMs": 100.0 + ((i * 7) % 11) as f64 - 5.0,
                "at": at(i),
            })
        })
        .collect()
}

fn at(minute: usize) -> String {
    format!("2026-11-20T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_detectors_learn_each_key_and_survive_a_restart() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("hosts", HOSTS);
    let js = env.js().await;
    let worker = start_worker(&env, &dir).await;

    // Two hosts, each learning its own baseline: 15 readings, then a restart mid-warm-up.
    let mut events = ordinary("web-1", 0, 15);
    events.extend(ordinary("web-2", 0, 15));
    publish(&js, "anom.hosts.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(20), || async {
            stream_len(&js, "ANOM_HOSTS_ENRICHED").await >= 30
        })
        .await
    );
    worker.stop().await;
    let worker = start_worker(&env, &dir).await;

    // 15 more each: warm now only if the first 15 were kept across the restart.
    let mut events = ordinary("web-1", 15, 15);
    events.extend(ordinary("web-2", 15, 15));
    // web-1 spikes; web-2 spikes *and* reports errors (the rule uses the score).
    events.push(serde_json::json!({"host": "web-1", "latencyMs": 900.0, "at": at(30)}));
    events
        .push(serde_json::json!({"host": "web-2", "latencyMs": 650.0, "errors": 3, "at": at(30)}));
    // An ordinary reading with errors does not meet the rule: the score is low.
    events
        .push(serde_json::json!({"host": "web-1", "latencyMs": 101.0, "errors": 2, "at": at(31)}));
    publish(&js, "anom.hosts.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(20), || async {
            alerts(&js, "ANOM_HOSTS_ALERTS").await.len() >= 3
        })
        .await,
        "alerts: {:?}",
        alerts(&js, "ANOM_HOSTS_ALERTS").await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = alerts(&js, "ANOM_HOSTS_ALERTS").await;
    // web-1's next, ordinary reading ends its episode: that alert also resolves.
    let resolved: Vec<_> = got.iter().filter(|a| a["status"] == "resolved").collect();
    assert_eq!(resolved.len(), 1, "{got:#?}");
    assert_eq!(
        (&resolved[0]["rule"], &resolved[0]["key"]),
        (&"latency_unusual".into(), &"web-1".into())
    );
    assert!(resolved[0]["resolved_by"]
        .as_str()
        .unwrap()
        .contains("back on the usual side of its threshold"));
    let mut seen: Vec<(String, String)> = got
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("latency_unusual".into(), "web-1".into()),
            ("latency_unusual".into(), "web-2".into()),
            ("slow_and_failing".into(), "web-2".into()),
        ],
        "{got:#?}"
    );
    let spike = got
        .iter()
        .find(|a| a["rule"] == "latency_unusual" && a["key"] == "web-1")
        .unwrap();
    let explanation = spike["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("latencyMs") && explanation.contains("900"),
        "{explanation}"
    );
    assert_eq!(spike["detection"]["kind"], "robust_zscore");
    let score = spike["detection"]["score"].as_f64().unwrap();
    assert!(score > 0.9 && score <= 1.0, "{score}");
    // The event raised two alerts on web-2: each says what else fired.
    let both = got
        .iter()
        .find(|a| a["rule"] == "slow_and_failing")
        .unwrap();
    assert_eq!(both["severity"], "critical");
    assert!(
        both["verdict"]
            .as_str()
            .unwrap()
            .contains("latency_unusual"),
        "{both:#?}"
    );
    worker.stop().await;
}

/// A standard normal draw (Box-Muller).
fn gauss(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-9), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// A forest trained in Rust on a cloud around (center, center), written to `path`.
fn forest_file(path: &Path, center: f32, seed: u64) -> IsolationForest {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for _ in 0..2000u32 {
        rows.extend([center + gauss(&mut rng), center + gauss(&mut rng)]);
    }
    let forest = IsolationForest::fit(
        &rows,
        2,
        &ForestParams {
            seed,
            ..ForestParams::default()
        },
    )
    .unwrap();
    let bytes = forest
        .to_onnx(&["x".to_string(), "y".to_string()], "test")
        .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Written beside and renamed, as `anom train` does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    forest
}

const POINTS: &str = r#"
# threshold: set by the test
name: points
key: id
partitions: 2
units:
  publish_enriched: true
schema:
  id: { type: string, required: true }
  x: { type: float, required: true }
  y: { type: float, required: true }
detectors:
  - name: forest
    kind: onnx
    model: models/points.onnx
    features: [x, y]
    threshold: THRESHOLD
    severity: critical
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_model_scores_and_is_swapped_under_load_without_losing_events() {
    let env = Env::start().await;
    let models = env.dir.path().join("pipelines/models");
    let a = forest_file(&models.join("points.onnx"), 0.0, 1);
    // The next version, learnt once the cloud had moved to (9, 9); written later.
    let b = forest_file(&models.join("next.onnx"), 9.0, 2);
    let mut rng = StdRng::seed_from_u64(3);
    let ordinary: Vec<[f32; 2]> = (0..3200)
        .map(|_| [0.5 * gauss(&mut rng), 0.5 * gauss(&mut rng)])
        .collect();
    // One threshold between what each model finds ordinary and what it finds unusual.
    let usual = (0..200)
        .map(|i| a.score(&ordinary[i]))
        .chain([b.score(&[9.1, 8.9])])
        .fold(0.0, f64::max);
    let unusual = a.score(&[9.0, 0.2]).min(b.score(&[-4.0, -4.0]));
    assert!(usual < unusual, "{usual} {unusual}");
    let threshold = (usual + unusual) / 2.0;
    let dir = env.pipeline_dir(
        "points",
        &POINTS.replace("THRESHOLD", &threshold.to_string()),
    );
    let js = env.js().await;
    let worker = start_worker(&env, &dir).await;

    // Load spreads over 50 keys; ids from 1000 are keys of their own (no open episode).
    let point = |id: usize, x: f64, y: f64| {
        let key = if id >= 1000 { id } else { id % 50 };
        serde_json::json!({"id": format!("p{key}"), "x": x, "y": y})
    };
    // Ordinary points, and one far away.
    let mut events: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            let [x, y] = ordinary[i];
            point(i, x as f64, y as f64)
        })
        .collect();
    events.push(point(7, 9.0, 0.2));
    publish(&js, "anom.points.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(20), || async {
            stream_len(&js, "ANOM_POINTS_ENRICHED").await >= 201
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = alerts(&js, "ANOM_POINTS_ALERTS").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["event"]["x"], 9.0);
    let detection = &got[0]["detection"];
    assert_eq!(detection["kind"], "onnx");
    // x alone made it unusual.
    assert_eq!(detection["contributions"][0][0], "x", "{detection}");
    let explanation = got[0]["explanation"].as_str().unwrap();
    assert!(explanation.contains("mostly x 9"), "{explanation}");

    // Under load: a new model (the cluster moved to (9, 9)) replaces the file; every event
    // is scored exactly once, by one model or the other.
    let load: Vec<serde_json::Value> = (200..3200)
        .map(|i| {
            let [x, y] = ordinary[i];
            point(i, x as f64, y as f64)
        })
        .collect();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in load.chunks(100) {
                publish(&js, "anom.points.in", chunk).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::rename(models.join("next.onnx"), models.join("points.onnx")).unwrap();
    publisher.await.unwrap();
    let swapped = || {
        worker.metrics.encode().lines().any(|l| {
            l.starts_with("anom_model_loads_total{")
                && l.contains("outcome=\"swapped\"")
                && l.ends_with(" 1")
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || async { swapped() }).await,
        "{}",
        worker.metrics.encode()
    );
    assert!(
        wait_for(Duration::from_secs(30), || async {
            stream_len(&js, "ANOM_POINTS_ENRICHED").await >= 3201
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_len(&js, "ANOM_POINTS_ENRICHED").await, 3201);
    assert_eq!(stream_len(&js, "ANOM_DLQ").await, 0);

    // After the swap, (9, 9) is ordinary and (0, 0)-like points are the outliers. New keys:
    // a key of the load that the old model flagged would be resolved by its next point.
    let before = alerts(&js, "ANOM_POINTS_ALERTS").await.len();
    publish(
        &js,
        "anom.points.in",
        &[point(5001, 9.1, 8.9), point(5002, -4.0, -4.0)],
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(20), || async {
            stream_len(&js, "ANOM_POINTS_ENRICHED").await >= 3203
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = alerts(&js, "ANOM_POINTS_ALERTS").await;
    let last: Vec<&serde_json::Value> = after[before..].iter().collect();
    assert!(
        last.iter().all(|a| a["event"]["x"] != 9.1),
        "the new model finds (9.1, 8.9) ordinary: {last:#?}"
    );
    assert!(
        last.iter().any(|a| a["event"]["x"] == -4.0),
        "the new model flags (-4, -4): {last:#?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anom_train_learns_from_the_input_stream() {
    let env = Env::start().await;
    let yaml = r#"
name: readings
key: sensor
event_time: at
partitions: 2
schema:
  sensor: { type: string, required: true }
  value: { type: float, required: true }
  at: { type: timestamp, required: true }
aggregates:
  avg_10m: avg(value) over 10m
"#;
    let dir = env.pipeline_dir("readings", yaml);
    let js = env.js().await;
    let worker = start_worker(&env, &dir).await;
    let mut rng = StdRng::seed_from_u64(5);
    let events: Vec<serde_json::Value> = (0..600)
        .map(|i| {
            serde_json::json!({
                "sensor": format!("s{}", i % 6),
                "value": 20.0 + 0.5 * gauss(&mut rng) as f64,
                "at": format!("2026-11-20T{:02}:{:02}:{:02}Z", 8 + i / 3600, (i / 60) % 60, i % 60),
            })
        })
        .collect();
    publish(&js, "anom.readings.in", &events).await;
    worker.stop().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args([
            "train",
            "--pipeline",
            "readings",
            "--features",
            "value,avg_10m",
        ])
        .arg("-f")
        .arg(dir.join("readings.yaml"))
        .args([
            "--nats",
            &env.url(),
            "--trees",
            "50",
            "--contamination",
            "0.02",
        ])
        .arg("--models-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("trained on 600 events"), "{stdout}");
    let model = dir.join("models/readings-readings_forest.onnx");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.with_extension("card.json")).unwrap()).unwrap();
    assert_eq!(card["samples"], 600, "{card:#}");
    assert_eq!(card["features"], serde_json::json!(["value", "avg_10m"]));
    // The printed snippet is a valid detector for the pipeline.
    let snippet = stdout
        .split("To use it, add to the pipeline (or run again with --apply):\n\n")
        .nth(1)
        .unwrap();
    let with = format!("{yaml}detectors:\n{snippet}");
    let p = anom_pipeline::Pipeline::from_yaml(&with).unwrap();
    assert_eq!(p.detectors[0].name, "readings_forest");
    // The model loads and tells an outlier from the usual.
    let m = anom_ml::model::Model::load(&model, 2).unwrap();
    let scores = m.run(&[20.0, 20.0, 35.0, 20.0], 2).unwrap();
    let anom_ml::model::OutputData::Float { values: s, .. } = &scores[0] else {
        panic!("a float score: {scores:?}")
    };
    let threshold = card["threshold"].as_f64().unwrap();
    assert!(
        (s[0] as f64) < threshold && (s[1] as f64) > threshold,
        "{s:?} {threshold}"
    );
}

/// The hosts example with its sample file: each labelled anomaly is found, by the detector
/// meant for it, and the rest of the 800 readings stay quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_example_finds_its_labelled_anomalies() {
    let env = Env::start().await;
    let yaml =
        std::fs::read_to_string(crate::support::repo_root().join("pipelines/hosts.yaml")).unwrap();
    // The scored events leave the fused units for the test to read.
    let yaml = format!("{yaml}\nunits:\n  publish_enriched: true\n");
    let dir = env.pipeline_dir("hosts", &yaml);
    let js = env.js().await;
    let worker = start_worker(&env, &dir).await;
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(crate::support::repo_root().join("pipelines/samples/hosts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    publish(&js, "anom.hosts.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(30), || async {
            stream_len(&js, "ANOM_HOSTS_ENRICHED").await >= events.len() as u64
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = alerts(&js, "ANOM_HOSTS_ALERTS").await;
    // Firing records: each episode resolves too when readings are usual again.
    let mut seen: Vec<(String, String, String)> = got
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| {
            (
                a["key"].as_str().unwrap().to_string(),
                a["rule"].as_str().unwrap().to_string(),
                a["event"]["at"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    worker.stop().await;
    let found = |key: &str, by: &str, at: &str| {
        seen.iter()
            .any(|(k, r, t)| k == key && r == by && t.starts_with(at))
    };
    // web-2's spike, web-1's errors with a spike (rule on the score, and the detector),
    // web-3's shift (within 5 minutes of its start), web-4's odd cpu/memory mix.
    for (key, by, at) in [
        ("web-2", "latency_spike", "2026-11-20T14:30"),
        ("web-1", "failing_and_slow", "2026-11-20T14:50"),
        ("web-1", "latency_spike", "2026-11-20T14:50"),
        ("web-3", "latency_shift", "2026-11-20T14:4"),
        ("web-4", "resources_unusual", "2026-11-20T15:00"),
    ] {
        assert!(found(key, by, at), "{key} {by} {at}: {seen:#?}");
    }
    // One alert per episode: web-3's 40 shifted readings raise one spike and one shift, and
    // the 1,760 readings at most three alerts beyond the labelled ones.
    let spikes_on_web3 = seen
        .iter()
        .filter(|(k, r, _)| k == "web-3" && r == "latency_spike")
        .count();
    assert_eq!(spikes_on_web3, 1, "{seen:#?}");
    assert!(seen.len() <= 9, "{seen:#?}");
}

/// Runs scripts/ml/sklearn_reference.py (scikit-learn + skl2onnx in the project-local venv)
/// into `dir`; returns its reference.json.
fn sklearn_models(dir: &Path) -> serde_json::Value {
    let root = crate::support::repo_root();
    let out = std::process::Command::new(crate::support::venv_python("ml"))
        .arg(root.join("scripts/ml/sklearn_reference.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

/// scikit-learn's IsolationForest and MLP autoencoder, exported by skl2onnx and used as they
/// are: the pipeline flags exactly the rows scikit-learn labels anomalous, and exactly the
/// rows whose reconstruction error (from scikit-learn's own predictions) is above the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scikit_learn_models_run_unchanged_in_a_pipeline() {
    let env = Env::start().await;
    let models = env.dir.path().join("pipelines/models");
    let reference = sklearn_models(&models);
    let inputs: Vec<Vec<f64>> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let output = |model: &str, name: &str| -> Vec<Vec<f64>> {
        let m = reference["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == model)
            .unwrap();
        let o = m["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["sklearn"] == name)
            .unwrap();
        o["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r.as_array() {
                Some(r) => r.iter().map(|v| v.as_f64().unwrap()).collect(),
                None => vec![r.as_f64().unwrap()],
            })
            .collect()
    };
    let labels = output("isolation_forest", "predict");
    let anomalous: Vec<usize> = (0..inputs.len())
        .filter(|&i| labels[i][0] == -1.0)
        .collect();
    // Reconstruction errors as scikit-learn computes them; the threshold sits in the widest
    // gap of the top decile, so float32 rounding cannot move a row across it.
    let predicted = output("autoencoder", "predict");
    let errors: Vec<f64> = inputs
        .iter()
        .zip(&predicted)
        .map(|(x, p)| x.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / x.len() as f64)
        .collect();
    let mut sorted = errors.clone();
    sorted.sort_by(f64::total_cmp);
    let top = sorted.len() * 9 / 10;
    let (gap, at) = (top..sorted.len() - 1)
        .map(|i| (sorted[i + 1] - sorted[i], i))
        .fold((0.0, top), |best, g| if g.0 > best.0 { g } else { best });
    assert!(gap > 1e-3, "{gap}");
    let threshold = (sorted[at] + sorted[at + 1]) / 2.0;
    let unusual: Vec<usize> = (0..inputs.len())
        .filter(|&i| errors[i] > threshold)
        .collect();
    assert!(!anomalous.is_empty() && !unusual.is_empty());

    let features = (0..8)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let schema: String = (0..8).map(|i| format!("  f{i}: float\n")).collect();
    let yaml = format!(
        r#"
name: sk
key: row
partitions: 2
units:
  publish_enriched: true
schema:
  row: {{ type: string, required: true }}
{schema}detectors:
  - name: forest
    kind: onnx
    model: models/isolation_forest.onnx
    features: [{features}]
    output: label_score
    anomalous: below
  - name: autoencoder
    kind: onnx
    model: models/autoencoder.onnx
    features: [{features}]
    output: reconstruction
    threshold: {threshold}
"#
    );
    let dir = env.pipeline_dir("sk", &yaml);
    let js = env.js().await;
    let worker = start_worker(&env, &dir).await;
    // One key per row: each row is its own episode.
    let events: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut e = serde_json::json!({ "row": format!("r{i}") });
            for (j, v) in x.iter().enumerate() {
                e[format!("f{j}")] = serde_json::json!(v);
            }
            e
        })
        .collect();
    publish(&js, "anom.sk.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(30), || async {
            stream_len(&js, "ANOM_SK_ENRICHED").await >= inputs.len() as u64
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = alerts(&js, "ANOM_SK_ALERTS").await;
    worker.stop().await;
    let rows = |by: &str| -> Vec<usize> {
        let mut r: Vec<usize> = got
            .iter()
            .filter(|a| a["rule"] == by)
            .map(|a| a["key"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        r.sort();
        r
    };
    assert_eq!(rows("forest"), anomalous);
    assert_eq!(rows("autoencoder"), unusual);
    let one = got.iter().find(|a| a["rule"] == "forest").unwrap();
    assert!(
        one["explanation"]
            .as_str()
            .unwrap()
            .starts_with("model forest labelled the event anomalous"),
        "{one:#}"
    );
}

/// `anom train --apply` against a coordinator that sees the models directory: the definition
/// comes from the coordinator, the model is written there, checked by the coordinator, and the
/// detector becomes version 2 of the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anom_train_applies_the_detector_as_a_new_version() {
    let env = Env::start().await;
    let models_dir = env.dir.path().join("pipelines");
    std::fs::create_dir_all(&models_dir).unwrap();
    let addr = crate::support::free_addr();
    let _coordinator = crate::support::spawn_coordinator(
        &env.url(),
        addr,
        &env.dir.path().join("coordinator"),
        &["--models-dir", models_dir.to_str().unwrap()],
    );
    let _ = crate::support::coordinator_channel(addr).await;
    let coordinator = format!("http://{addr}");
    let anom = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
            .args(args)
            .env("ANOM_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = env.dir.path().join("readings.yaml");
    std::fs::write(
        &file,
        "name: readings\nkey: sensor\nschema:\n  sensor: { type: string, required: true }\n  value: { type: float, required: true }\n",
    )
    .unwrap();
    let (ok, _, err) = anom(&[
        "pipeline",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--coordinator",
        &coordinator,
    ]);
    assert!(ok, "{err}");
    // A detector naming a model file that is not there is refused by this coordinator.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap()
            + "detectors:\n  - { name: f, kind: onnx, model: models/none.onnx, features: [value], threshold: 0.6 }\n",
    )
    .unwrap();
    let (ok, _, err) = anom(&[
        "pipeline",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--coordinator",
        &coordinator,
    ]);
    assert!(!ok);
    assert!(
        err.contains("detectors[0].model") && err.contains("models/none.onnx"),
        "{err}"
    );

    let js = env.js().await;
    let mut rng = StdRng::seed_from_u64(9);
    let events: Vec<serde_json::Value> = (0..400)
        .map(|i| serde_json::json!({"sensor": format!("s{}", i % 4), "value": 5.0 + gauss(&mut rng) as f64}))
        .collect();
    publish(&js, "anom.readings.in", &events).await;
    let (ok, out, err) = anom(&[
        "train",
        "--pipeline",
        "readings",
        "--features",
        "value",
        "--nats",
        &env.url(),
        "--coordinator",
        &coordinator,
        "--models-dir",
        models_dir.to_str().unwrap(),
        "--apply",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("trained on 400 events"), "{out}");
    assert!(
        out.contains("readings: version 2 applied with detector readings_forest"),
        "{out}"
    );
    let (ok, yaml, err) = anom(&["pipeline", "get", "readings", "--coordinator", &coordinator]);
    assert!(ok, "{err}");
    let p = anom_pipeline::Pipeline::from_yaml(&yaml).unwrap();
    assert_eq!(p.detectors.len(), 1);
    assert_eq!(p.detectors[0].name, "readings_forest");
    assert!(models_dir
        .join("models/readings-readings_forest.onnx")
        .exists());
}

//! Pipeline definitions more than one crate's tests compile.

/// Hosts with an aggregate, three detectors (built-in, half-space trees, an ONNX model) and a
/// rule that reads a detector's score.
pub const HOSTS: &str = r#"
name: hosts
key: host
schema:
  host: { type: string, required: true }
  latencyMs: float
  cpu: float
  region: string
aggregates:
  avg_latency_1h: avg(latencyMs) over 1h
detectors:
  - name: latency_unusual
    kind: robust_zscore
    field: latencyMs
  - name: combo
    kind: half_space_trees
    features: [cpu, avg_latency_1h]
    threshold: 0.95
    severity: critical
  - name: model
    kind: onnx
    model: models/m.onnx
    features: [cpu, latencyMs]
    output: label_score
rules:
  - name: unusual_and_slow
    when: latency_unusual > 0.9 and latencyMs > 500
"#;

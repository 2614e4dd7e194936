//! Scoring throughput of ONNX models through `anom_operators::model` at batch sizes 1, 64
//! and 1024: a synthetic 100-tree × 8-feature TreeEnsembleRegressor built here (no Python
//! needed), and — when ANOM_BENCH_MODELS names a directory written by
//! scripts/ml/sklearn_reference.py — scikit-learn's IsolationForest (100 trees) and MLP
//! autoencoder as skl2onnx exports them.

use std::path::PathBuf;

use anom_operators::model::Model;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};

const FEATURES: usize = 8;
const TREES: usize = 100;
const DEPTH: u32 = 8;
const BATCHES: [usize; 3] = [1, 64, 1024];

/// A small deterministic generator, so every run scores the same forest and rows.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    }
}

fn ints(name: &str, values: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values,
        ..Default::default()
    }
}

fn floats(name: &str, values: Vec<f32>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: values,
        ..Default::default()
    }
}

fn tensor_type(elem: DataType, dims: Vec<Dim>) -> Option<pb::TypeProto> {
    let dim = dims.into_iter().map(|d| Dimension {
        value: Some(d),
        ..Default::default()
    });
    Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: elem as i32,
            shape: Some(pb::TensorShapeProto { dim: dim.collect() }),
        })),
        ..Default::default()
    })
}

/// 100 complete trees of depth 8 (255 branches, 256 leaves each) with random features and
/// thresholds, one target, SUM — an IsolationForest-sized ensemble in one node.
fn synthetic_forest() -> Vec<u8> {
    let mut rng = Lcg(0x5eed);
    let (mut tree_ids, mut node_ids, mut features, mut modes, mut values) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut true_ids, mut false_ids) = (vec![], vec![]);
    let (mut target_trees, mut target_nodes, mut weights) = (vec![], vec![], vec![]);
    let branches = (1i64 << DEPTH) - 1;
    for tree in 0..TREES as i64 {
        // Heap order: node i has children 2i+1 and 2i+2; the last level are leaves.
        for node in 0..(2 * branches + 1) {
            tree_ids.push(tree);
            node_ids.push(node);
            if node < branches {
                features.push((rng.next() % FEATURES as u64) as i64);
                modes.push(b"BRANCH_LEQ".to_vec());
                values.push(rng.unit());
                true_ids.push(2 * node + 1);
                false_ids.push(2 * node + 2);
            } else {
                features.push(0);
                modes.push(b"LEAF".to_vec());
                values.push(0.0);
                true_ids.push(0);
                false_ids.push(0);
                target_trees.push(tree);
                target_nodes.push(node);
                weights.push(rng.unit());
            }
        }
    }
    let n_weights = weights.len();
    let node = pb::NodeProto {
        op_type: "TreeEnsembleRegressor".into(),
        domain: "ai.onnx.ml".into(),
        input: vec!["X".into()],
        output: vec!["Y".into()],
        attribute: vec![
            pb::AttributeProto {
                name: "n_targets".into(),
                r#type: AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            },
            ints("nodes_treeids", tree_ids),
            ints("nodes_nodeids", node_ids),
            ints("nodes_featureids", features),
            pb::AttributeProto {
                name: "nodes_modes".into(),
                r#type: AttributeType::Strings as i32,
                strings: modes,
                ..Default::default()
            },
            floats("nodes_values", values),
            ints("nodes_truenodeids", true_ids),
            ints("nodes_falsenodeids", false_ids),
            ints("target_treeids", target_trees),
            ints("target_nodeids", target_nodes),
            ints("target_ids", vec![0; n_weights]),
            floats("target_weights", weights),
        ],
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "synthetic_forest".into(),
        node: vec![node],
        input: vec![pb::ValueInfoProto {
            name: "X".into(),
            r#type: tensor_type(
                DataType::Float,
                vec![Dim::DimParam("N".into()), Dim::DimValue(FEATURES as i64)],
            ),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "Y".into(),
            r#type: tensor_type(
                DataType::Float,
                vec![Dim::DimParam("N".into()), Dim::DimValue(1)],
            ),
            ..Default::default()
        }],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: "".into(),
                version: 17,
            },
            pb::OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

fn rows(n: usize) -> Vec<f32> {
    let mut rng = Lcg(42);
    (0..n * FEATURES).map(|_| rng.unit() * 2.0).collect()
}

fn bench_model(c: &mut Criterion, name: &str, model: &Model) {
    let mut group = c.benchmark_group(name);
    for batch in BATCHES {
        let input = rows(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &input, |b, input| {
            b.iter(|| model.run(input, batch).unwrap())
        });
    }
    group.finish();
}

fn models(c: &mut Criterion) {
    let forest = Model::from_bytes(&synthetic_forest(), FEATURES).expect("synthetic forest");
    bench_model(c, "synthetic_forest_100x8", &forest);

    let Some(dir) = std::env::var_os("ANOM_BENCH_MODELS").map(PathBuf::from) else {
        eprintln!(
            "ANOM_BENCH_MODELS is unset: skipping the scikit-learn models \
             (write them with scripts/ml/sklearn_reference.py DIR)"
        );
        return;
    };
    for (name, file) in [
        ("sklearn_isolation_forest", "isolation_forest.onnx"),
        ("sklearn_autoencoder", "autoencoder.onnx"),
    ] {
        let model = Model::load(&dir.join(file), FEATURES).unwrap_or_else(|e| panic!("{e}"));
        bench_model(c, name, &model);
    }
}

criterion_group!(benches, models);
criterion_main!(benches);

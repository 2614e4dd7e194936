//! Export as a standard ONNX-ML graph: TreeEnsembleRegressor → Mul → Pow. Compiled with
//! the `onnx` feature (on by default).

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::isolation::{ForestError, IsolationForest};

use super::{INPUT_NAME, OUTPUT_NAME};

const ML_DOMAIN: &str = "ai.onnx.ml";

impl IsolationForest {
    /// Encodes the forest as an ONNX model (ir_version 8; opsets "" 17 and "ai.onnx.ml" 3).
    ///
    /// The graph takes `features` (float [N, n_features], columns in `feature_names` order)
    /// and yields `score` (float [N, 1]) equal to [`IsolationForest::score`]: a
    /// `TreeEnsembleRegressor` sums each tree's (depth + c(leaf size)) / trees into the mean
    /// path length, `Mul` by −1/c(ψ) and `Pow(2, ·)` turn that into the score. Feature
    /// names and the forest's parameters are kept in `metadata_props`; `producer_note` is
    /// appended to the model's `doc_string`.
    pub fn to_onnx(
        &self,
        feature_names: &[String],
        producer_note: &str,
    ) -> Result<Vec<u8>, ForestError> {
        if feature_names.len() != self.n_features() {
            return Err(ForestError::FeatureNames {
                expected: self.n_features(),
                found: feature_names.len(),
            });
        }
        let ensemble = self.ensemble_node("mean_path_length");
        let scale = NodeProto {
            input: vec!["mean_path_length".into(), "neg_inv_c".into()],
            output: vec!["exponent".into()],
            name: "scale_by_c_psi".into(),
            op_type: "Mul".into(),
            ..Default::default()
        };
        let power = NodeProto {
            input: vec!["two".into(), "exponent".into()],
            output: vec![OUTPUT_NAME.into()],
            name: "two_to_the".into(),
            op_type: "Pow".into(),
            ..Default::default()
        };
        let names = format!("[{}]", feature_names.join(", "));
        let doc = format!(
            "Isolation Forest anomaly score s(x) = 2^(-E[h(x)]/c(psi)) in (0, 1), higher = \
             more anomalous; input columns: {names}. {producer_note}"
        );
        let p = self.params();
        let max_depth = self.max_depth().to_string();
        let metadata = [
            (
                "feature_names",
                serde_json::to_string(feature_names).expect("strings serialize"),
            ),
            ("model", "isolation_forest".into()),
            ("trees", p.trees.to_string()),
            ("sample_size", self.sample_size().to_string()),
            ("max_depth", max_depth),
            ("seed", p.seed.to_string()),
        ];
        let graph = GraphProto {
            node: vec![ensemble, scale, power],
            name: "isolation_forest".into(),
            initializer: vec![scalar("neg_inv_c", self.neg_inv_c), scalar("two", 2.0)],
            doc_string: doc.clone(),
            input: vec![float_value(
                INPUT_NAME,
                &[Dim::Symbol("N"), Dim::Fixed(self.n_features() as i64)],
            )],
            output: vec![float_value(OUTPUT_NAME, &[Dim::Symbol("N"), Dim::Fixed(1)])],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: 17,
                },
                OperatorSetIdProto {
                    domain: ML_DOMAIN.into(),
                    version: 3,
                },
            ],
            producer_name: "anom".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc,
            graph: Some(graph),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.into(),
                    value,
                })
                .collect(),
            ..Default::default()
        };
        Ok(model.encode_to_vec())
    }

    /// The TreeEnsembleRegressor holding every tree, node ids local to each tree.
    fn ensemble_node(&self, output: &str) -> NodeProto {
        let n = self.nodes.len();
        let mut tree_ids = Vec::with_capacity(n);
        let mut node_ids = Vec::with_capacity(n);
        let mut feature_ids = Vec::with_capacity(n);
        let mut values = Vec::with_capacity(n);
        let mut modes = Vec::with_capacity(n);
        let mut true_ids = Vec::with_capacity(n);
        let mut false_ids = Vec::with_capacity(n);
        let (mut target_trees, mut target_nodes, mut weights) =
            (Vec::new(), Vec::new(), Vec::new());
        for (tree, &root) in self.roots.iter().enumerate() {
            let end = self
                .roots
                .get(tree + 1)
                .map_or(self.nodes.len(), |&next| next as usize);
            for (at, node) in self.nodes[root as usize..end].iter().enumerate() {
                tree_ids.push(tree as i64);
                node_ids.push(at as i64);
                if node.is_leaf() {
                    feature_ids.push(0);
                    values.push(0.0);
                    modes.push(b"LEAF".to_vec());
                    true_ids.push(0);
                    false_ids.push(0);
                    target_trees.push(tree as i64);
                    target_nodes.push(at as i64);
                    weights.push(node.value);
                } else {
                    let left = i64::from(node.left - root);
                    feature_ids.push(i64::from(node.feature));
                    values.push(node.value);
                    // The fit sends x <= threshold left.
                    modes.push(b"BRANCH_LEQ".to_vec());
                    true_ids.push(left);
                    false_ids.push(left + 1);
                }
            }
        }
        let targets = weights.len();
        NodeProto {
            input: vec![INPUT_NAME.into()],
            output: vec![output.into()],
            name: "isolation_trees".into(),
            op_type: "TreeEnsembleRegressor".into(),
            domain: ML_DOMAIN.into(),
            attribute: vec![
                ints("nodes_treeids", tree_ids),
                ints("nodes_nodeids", node_ids),
                ints("nodes_featureids", feature_ids),
                floats("nodes_values", values),
                strings("nodes_modes", modes),
                ints("nodes_truenodeids", true_ids),
                ints("nodes_falsenodeids", false_ids),
                // NaN goes to the false branch, as in IsolationForest::score.
                ints("nodes_missing_value_tracks_true", vec![0; n]),
                ints("target_treeids", target_trees),
                ints("target_nodeids", target_nodes),
                ints("target_ids", vec![0; targets]),
                floats("target_weights", weights),
                int("n_targets", 1),
                string("aggregate_function", "SUM"),
                string("post_transform", "NONE"),
            ],
            ..Default::default()
        }
    }
}

enum Dim {
    Symbol(&'static str),
    Fixed(i64),
}

fn float_value(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Symbol(s) => dimension::Value::DimParam((*s).into()),
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn scalar(name: &str, value: f32) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        float_data: vec![value],
        ..Default::default()
    }
}

fn attribute(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..Default::default()
    }
}

fn ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints,
        ..attribute(name, AttributeType::Ints)
    }
}

fn floats(name: &str, floats: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats,
        ..attribute(name, AttributeType::Floats)
    }
}

fn strings(name: &str, strings: Vec<Vec<u8>>) -> AttributeProto {
    AttributeProto {
        strings,
        ..attribute(name, AttributeType::Strings)
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        i,
        ..attribute(name, AttributeType::Int)
    }
}

fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        s: s.as_bytes().to_vec(),
        ..attribute(name, AttributeType::String)
    }
}

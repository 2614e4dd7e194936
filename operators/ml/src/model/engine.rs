//! The tract side of [`Model`]: loading, checking and optimising an ONNX graph, and running
//! it on a batch of rows. Compiled with the `onnx` feature (on by default).

use std::sync::Arc;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{dims, DimLike};

use super::{label_encoder, tree_ensemble, ElementKind, Model, ModelError, OutputData, OutputInfo};

/// The optimised graph a [`Model`] runs.
pub(super) type Plan = Arc<TypedRunnableModel>;

/// tract's ONNX loader with Anom's ai.onnx.ml operators registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    tree_ensemble::register(&mut onnx.op_register);
    label_encoder::register(&mut onnx.op_register);
    onnx
}

/// Loads a serialized ONNX model (see [`Model::from_bytes`]).
pub(super) fn load(bytes: &[u8], n_features: usize) -> Result<Model, ModelError> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
    let onnx = onnx();
    let graph = proto.graph.as_ref().ok_or(ModelError::NoGraph)?;
    check_operators(&onnx, graph)?;
    check_input(graph, n_features)?;

    let prepare = |e: TractError| ModelError::Prepare {
        features: n_features,
        reason: format!("{e:#}"),
    };
    let mut model = onnx.model_for_proto_model(&proto).map_err(prepare)?;
    let batch = model.sym("N");
    model
        .set_input_fact(0, f32::fact(dims!(batch, n_features)).into())
        .map_err(prepare)?;
    let model = model.into_optimized().map_err(prepare)?;
    let outputs = model
        .output_outlets()
        .map_err(prepare)?
        .iter()
        .map(|&outlet| output_info(&model, outlet))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = model.into_runnable().map_err(prepare)?;
    Ok(Model {
        plan,
        n_features,
        outputs,
    })
}

/// Scores a batch (see [`Model::run`]).
pub(super) fn run(
    model: &Model,
    rows: &[f32],
    n_rows: usize,
) -> Result<Vec<OutputData>, ModelError> {
    if rows.len() != n_rows * model.n_features {
        return Err(ModelError::Rows {
            rows: n_rows,
            features: model.n_features,
            found: rows.len(),
        });
    }
    if n_rows == 0 {
        return Ok(model.outputs.iter().map(empty).collect());
    }
    let run = |e: TractError| ModelError::Run(format!("{e:#}"));
    let input = Tensor::from_shape(&[n_rows, model.n_features], rows).map_err(run)?;
    let results = model.plan.run(tvec!(input.into_tvalue())).map_err(run)?;
    results
        .iter()
        .zip(&model.outputs)
        .map(|(tensor, info)| collect(tensor, info, n_rows))
        .collect()
}

fn empty(info: &OutputInfo) -> OutputData {
    let width = info.width;
    match info.kind {
        ElementKind::Float => OutputData::Float {
            width,
            values: vec![],
        },
        ElementKind::Int => OutputData::Int {
            width,
            values: vec![],
        },
        ElementKind::Str => OutputData::Str {
            width,
            values: vec![],
        },
    }
}

/// Names every operator no registered builder knows, so the error lists them all at once
/// instead of tract failing on the first.
fn check_operators(onnx: &tract_onnx::Onnx, graph: &pb::GraphProto) -> Result<(), ModelError> {
    let mut unknown: Vec<String> = graph
        .node
        .iter()
        .filter(|node| !onnx.op_register.0.contains_key(&node.op_type))
        .map(|node| match node.domain.as_str() {
            "" | "ai.onnx" => node.op_type.clone(),
            domain => format!("{domain}.{}", node.op_type),
        })
        .collect();
    unknown.sort();
    unknown.dedup();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Unsupported(unknown))
    }
}

fn check_input(graph: &pb::GraphProto, n_features: usize) -> Result<(), ModelError> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Inputs(
            inputs.iter().map(|i| i.name.clone()).collect(),
        ));
    };
    let name = input.name.clone();
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(ModelError::InputType {
            name,
            found: "not a tensor".into(),
        });
    };
    if tensor.elem_type != pb::tensor_proto::DataType::Float as i32 {
        let found = pb::tensor_proto::DataType::try_from(tensor.elem_type)
            .map(|t| format!("{t:?}").to_lowercase())
            .unwrap_or_else(|_| format!("element type {}", tensor.elem_type));
        return Err(ModelError::InputType { name, found });
    }
    // A declared shape must be [N, n_features]; an undeclared one is left to tract to check.
    if let Some(shape) = &tensor.shape {
        let dims: Vec<String> = shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Dim::DimValue(v)) => v.to_string(),
                Some(Dim::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        if dims.len() != 2 {
            return Err(ModelError::InputShape {
                name,
                found: format!("[{}]", dims.join(", ")),
            });
        }
        if let Some(Dim::DimValue(width)) = &shape.dim[1].value {
            if *width as usize != n_features {
                return Err(ModelError::Features {
                    model: *width as usize,
                    declared: n_features,
                });
            }
        }
    }
    Ok(())
}

fn output_info(model: &TypedModel, outlet: OutletId) -> Result<OutputInfo, ModelError> {
    let name = model
        .outlet_label(outlet)
        .unwrap_or(&model.node(outlet.node).name)
        .to_string();
    let fact = model
        .outlet_fact(outlet)
        .map_err(|e| ModelError::Run(format!("{e:#}")))?;
    let kind = match fact.datum_type {
        DatumType::F16 | DatumType::F32 | DatumType::F64 => ElementKind::Float,
        DatumType::Bool
        | DatumType::I8
        | DatumType::I16
        | DatumType::I32
        | DatumType::I64
        | DatumType::U8
        | DatumType::U16
        | DatumType::U32
        // tract types int64 tensors that may hold shapes as TDim; they hold plain integers here.
        | DatumType::TDim => ElementKind::Int,
        DatumType::String => ElementKind::Str,
        other => return Err(ModelError::OutputType { name, found: format!("{other:?}") }),
    };
    let shape_error = || ModelError::OutputShape {
        name: name.clone(),
        found: format!("{:?}", fact.shape),
    };
    if fact.rank() == 0 {
        return Err(shape_error());
    }
    let mut width = 1;
    for dim in fact.shape.iter().skip(1) {
        width *= dim.to_usize().map_err(|_| shape_error())?;
    }
    Ok(OutputInfo { name, kind, width })
}

fn collect(tensor: &TValue, info: &OutputInfo, n_rows: usize) -> Result<OutputData, ModelError> {
    let run = |e: TractError| ModelError::Run(format!("{e:#}"));
    if tensor.len() != n_rows * info.width {
        return Err(ModelError::Run(format!(
            "output {} has shape {:?}, expected {n_rows} rows of {}",
            info.name,
            tensor.shape(),
            info.width
        )));
    }
    let width = info.width;
    Ok(match info.kind {
        ElementKind::Float => {
            let cast = tensor.cast_to::<f32>().map_err(run)?;
            let values = cast
                .try_as_plain_ram()
                .map_err(run)?
                .as_slice::<f32>()
                .map_err(run)?
                .to_vec();
            OutputData::Float { width, values }
        }
        ElementKind::Int => {
            let cast = tensor.cast_to::<i64>().map_err(run)?;
            let values = cast
                .try_as_plain_ram()
                .map_err(run)?
                .as_slice::<i64>()
                .map_err(run)?
                .to_vec();
            OutputData::Int { width, values }
        }
        ElementKind::Str => {
            let plain = tensor.try_as_plain_ram().map_err(run)?;
            OutputData::Str {
                width,
                values: plain.as_slice::<String>().map_err(run)?.to_vec(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::path::Path;
    use tract_onnx::pb::tensor_proto::DataType;

    /// Two trees over 3 features, two targets, written with every attribute spelling the
    /// regressor accepts. Tree 0: x0 < 1 ? (x2 == 7 ? leaf 3 : leaf 4) : leaf 2.
    /// Tree 1: x1 >= 0 ? leaf 1 : leaf 2, NaN → true.
    fn regressor(extra: Vec<pb::AttributeProto>) -> Vec<u8> {
        let mut attributes = vec![
            int("n_targets", 2),
            ints("nodes_treeids", &[0, 0, 0, 0, 0, 1, 1, 1]),
            ints("nodes_nodeids", &[0, 1, 2, 3, 4, 0, 1, 2]),
            ints("nodes_featureids", &[0, 2, 0, 0, 0, 1, 0, 0]),
            strings(
                "nodes_modes",
                &[
                    "BRANCH_LT",
                    "BRANCH_EQ",
                    "LEAF",
                    "LEAF",
                    "LEAF",
                    "BRANCH_GTE",
                    "LEAF",
                    "LEAF",
                ],
            ),
            doubles_tensor(
                "nodes_values_as_tensor",
                &[1.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            ),
            ints("nodes_truenodeids", &[1, 3, 0, 0, 0, 1, 0, 0]),
            ints("nodes_falsenodeids", &[2, 4, 0, 0, 0, 2, 0, 0]),
            ints("nodes_missing_value_tracks_true", &[0, 0, 0, 0, 0, 1, 0, 0]),
            ints("target_treeids", &[0, 0, 0, 0, 1, 1]),
            ints("target_nodeids", &[2, 3, 3, 4, 1, 2]),
            ints("target_ids", &[0, 0, 1, 1, 0, 1]),
            doubles_tensor(
                "target_weights_as_tensor",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
            ),
        ];
        attributes.extend(extra);
        single_op_model("TreeEnsembleRegressor", attributes, 3, DataType::Float)
    }

    fn floats_of(output: &OutputData) -> &[f32] {
        match output {
            OutputData::Float { values, .. } => values,
            other => panic!("expected floats, got {other:?}"),
        }
    }

    #[test]
    fn regressor_parsed_from_onnx_scores_any_batch_size() {
        let model = Model::from_bytes(&regressor(vec![]), 3).unwrap();
        assert_eq!(
            model.outputs(),
            [OutputInfo {
                name: "Y".into(),
                kind: ElementKind::Float,
                width: 2
            }]
        );
        // Row 0: tree 0 → x0=0 < 1, x2=7 == 7 → leaf 3 (t0 += 2, t1 += 4); tree 1 → x1=5 ≥ 0 → leaf 1 (t0 += 16).
        // Row 1: tree 0 → x0=2 → leaf 2 (t0 += 1); tree 1 → x1=-1 → leaf 2 (t1 += 32).
        // Row 2: tree 0 → x0=0, x2=6 → leaf 4 (t1 += 8); tree 1 → x1=NaN tracks true → leaf 1 (t0 += 16).
        let rows = [0.0, 5.0, 7.0, 2.0, -1.0, 7.0, 0.0, f32::NAN, 6.0];
        let expected = [18.0, 4.0, 1.0, 32.0, 16.0, 8.0];
        let out = model.run(&rows, 3).unwrap();
        assert_eq!(
            out,
            [OutputData::Float {
                width: 2,
                values: expected.to_vec()
            }]
        );
        // The same loaded model at batch sizes 1 and 64.
        let out = model.run(&rows[3..6], 1).unwrap();
        assert_eq!(floats_of(&out[0]), &expected[2..4]);
        let many: Vec<f32> = rows.iter().copied().cycle().take(64 * 3 * 3).collect();
        let out = model.run(&many, 192).unwrap();
        let want: Vec<f32> = expected.iter().copied().cycle().take(192 * 2).collect();
        assert_eq!(floats_of(&out[0]), want);
    }

    #[test]
    fn regressor_attributes_for_aggregate_base_values_and_post_transform() {
        let model = Model::from_bytes(
            &regressor(vec![
                string("aggregate_function", "AVERAGE"),
                doubles_tensor("base_values_as_tensor", &[-9.0, -18.0]),
                string("post_transform", "LOGISTIC"),
            ]),
            3,
        )
        .unwrap();
        // Row 0 sums to [18, 4]: halved [9, 2], plus base [0, -16], logistic [0.5, σ(-16)].
        let out = model.run(&[0.0, 5.0, 7.0], 1).unwrap();
        let y = floats_of(&out[0]);
        assert_eq!(y[0], 0.5);
        assert_eq!(y[1], (1.0 / (1.0 + 16f64.exp())) as f32);
    }

    #[test]
    fn label_encoder_from_onnx_with_default() {
        let bytes = single_op_model(
            "LabelEncoder",
            vec![
                floats("keys_floats", &[1.5, -2.0]),
                strings("values_strings", &["high", "low"]),
                string("default_string", "other"),
            ],
            2,
            DataType::String,
        );
        let model = Model::from_bytes(&bytes, 2).unwrap();
        assert_eq!(
            model.outputs(),
            [OutputInfo {
                name: "Y".into(),
                kind: ElementKind::Str,
                width: 2
            }]
        );
        let out = model.run(&[1.5, 0.0, -2.0, 1.5], 2).unwrap();
        let want = ["high", "other", "low", "high"].map(String::from).to_vec();
        assert_eq!(
            out,
            [OutputData::Str {
                width: 2,
                values: want
            }]
        );
    }

    #[test]
    fn label_encoder_spec_defaults() {
        let bytes = |values: pb::AttributeProto, output| {
            single_op_model(
                "LabelEncoder",
                vec![floats("keys_floats", &[1.0]), values],
                1,
                output,
            )
        };
        let model =
            Model::from_bytes(&bytes(ints("values_int64s", &[5]), DataType::Int64), 1).unwrap();
        assert_eq!(
            model.run(&[1.0, 2.0], 2).unwrap(),
            [OutputData::Int {
                width: 1,
                values: vec![5, -1]
            }]
        );
        let model =
            Model::from_bytes(&bytes(floats("values_floats", &[5.0]), DataType::Float), 1).unwrap();
        let out = model.run(&[2.0], 1).unwrap();
        assert!(floats_of(&out[0])[0] == 0.0 && floats_of(&out[0])[0].is_sign_negative());
        let model = Model::from_bytes(
            &bytes(strings("values_strings", &["a"]), DataType::String),
            1,
        )
        .unwrap();
        let out = model.run(&[2.0], 1).unwrap();
        assert_eq!(
            out,
            [OutputData::Str {
                width: 1,
                values: vec!["_Unused".into()]
            }]
        );
    }

    #[test]
    fn load_errors_say_what_was_expected() {
        let err = |r: Result<Model, ModelError>| r.unwrap_err().to_string();
        assert_eq!(
            err(Model::from_bytes(&regressor(vec![]), 5)),
            "model expects 3 input features, the caller declares 5"
        );
        assert_eq!(
            err(Model::from_bytes(
                &single_op_model("Frobnicate", vec![], 3, DataType::Float),
                3
            )),
            "model uses operators this build cannot run: ai.onnx.ml.Frobnicate"
        );
        let missing = Path::new("/nonexistent/anom/model.onnx");
        let message = err(Model::load(missing, 3));
        assert!(
            message.starts_with("cannot read model file /nonexistent/anom/model.onnx: "),
            "{message}"
        );
        assert_eq!(
            err(Model::from_bytes(&regressor(vec![string("aggregate_function", "MEDIAN")]), 3)),
            "cannot prepare the model with 3 input features: Building node  (TreeEnsembleRegressor): \
             TreeEnsembleRegressor: attribute aggregate_function is \"MEDIAN\", expected one of SUM, AVERAGE, MIN, MAX"
                .to_string()
        );
        let model = Model::from_bytes(&regressor(vec![]), 3).unwrap();
        assert_eq!(
            model.run(&[1.0; 4], 2).unwrap_err().to_string(),
            "4 input values for 2 rows of 3 features, expected 6"
        );
    }

    #[test]
    fn models_are_shared_between_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<Model>();
        let model = Model::from_bytes(&regressor(vec![]), 3).unwrap();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let model = model.clone();
                std::thread::spawn(move || model.run(&[2.0, -1.0, 7.0], 1).unwrap())
            })
            .collect();
        for handle in handles {
            assert_eq!(floats_of(&handle.join().unwrap()[0]), [1.0, 32.0]);
        }
    }
}

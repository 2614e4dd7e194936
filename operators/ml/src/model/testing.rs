//! Hand-built one-operator ONNX models for the tests: input `X` float [N, features] → one
//! ai.onnx.ml node → output `Y`, serialized as a file would hold them.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};

pub fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    attr(name, AttributeType::Ints, |a| a.ints = values.to_vec())
}

pub fn int(name: &str, value: i64) -> pb::AttributeProto {
    attr(name, AttributeType::Int, |a| a.i = value)
}

pub fn floats(name: &str, values: &[f32]) -> pb::AttributeProto {
    attr(name, AttributeType::Floats, |a| a.floats = values.to_vec())
}

pub fn string(name: &str, value: &str) -> pb::AttributeProto {
    attr(name, AttributeType::String, |a| {
        a.s = value.as_bytes().to_vec()
    })
}

pub fn strings(name: &str, values: &[&str]) -> pb::AttributeProto {
    attr(name, AttributeType::Strings, |a| {
        a.strings = values.iter().map(|s| s.as_bytes().to_vec()).collect()
    })
}

/// A double tensor attribute, the `*_as_tensor` / `*_tensor` spelling.
pub fn doubles_tensor(name: &str, values: &[f64]) -> pb::AttributeProto {
    attr(name, AttributeType::Tensor, |a| {
        a.t = Some(pb::TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Double as i32,
            double_data: values.to_vec(),
            ..Default::default()
        })
    })
}

fn attr(
    name: &str,
    kind: AttributeType,
    set: impl FnOnce(&mut pb::AttributeProto),
) -> pb::AttributeProto {
    let mut a = pb::AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..Default::default()
    };
    set(&mut a);
    a
}

fn value_info(name: &str, elem: DataType, dims: Option<&[Dim]>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: dims.map(|dims| pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model `Y = op_type(X)` over `features` float columns, `op_type` in ai.onnx.ml.
pub fn single_op_model(
    op_type: &str,
    attributes: Vec<pb::AttributeProto>,
    features: i64,
    output: DataType,
) -> Vec<u8> {
    let node = pb::NodeProto {
        op_type: op_type.into(),
        domain: "ai.onnx.ml".into(),
        input: vec!["X".into()],
        output: vec!["Y".into()],
        attribute: attributes,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "test".into(),
        node: vec![node],
        input: vec![value_info(
            "X",
            DataType::Float,
            Some(&[Dim::DimParam("N".into()), Dim::DimValue(features)]),
        )],
        output: vec![value_info("Y", output, None)],
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

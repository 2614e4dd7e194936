//! Reading ai.onnx.ml attributes that exist in two spellings: a plain list (`floats`, `ints`,
//! `strings`) and, from ai.onnx.ml opset 3 on, a `*_as_tensor` / `*_tensor` variant that may
//! carry doubles. Both ops here read theirs through these helpers so the choice is made once.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;

/// Attribute problems found while building an op from its ONNX node.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttrError {
    #[error("{op}: attribute {attr} is required but absent")]
    Missing { op: &'static str, attr: String },
    #[error("{op}: attribute {attr} has {found} entries, expected {expected} ({why})")]
    Length {
        op: &'static str,
        attr: String,
        expected: usize,
        found: usize,
        why: &'static str,
    },
    #[error("{op}: attribute {attr} is {found:?}, expected one of {expected}")]
    Value {
        op: &'static str,
        attr: String,
        expected: &'static str,
        found: String,
    },
    #[error("{op}: both {a} and {b} are set, expected only one")]
    Both {
        op: &'static str,
        a: String,
        b: String,
    },
}

/// A float list given either as `name` (floats) or `name_as_tensor`, widened to f64 so a
/// double tensor keeps its precision.
pub(super) fn floats(
    ctx: &ParsingContext,
    node: &NodeProto,
    op: &'static str,
    name: &str,
) -> TractResult<Option<Vec<f64>>> {
    let tensor_name = format!("{name}_as_tensor");
    let plain = node.get_attr_opt_slice::<f32>(name)?;
    let tensor = node.get_attr_opt::<&TensorProto>(&tensor_name)?;
    match (plain, tensor) {
        (Some(_), Some(_)) => Err(AttrError::Both {
            op,
            a: name.to_string(),
            b: tensor_name,
        }
        .into()),
        (Some(values), None) => Ok(Some(values.iter().map(|&v| v as f64).collect())),
        (None, Some(proto)) => Ok(Some(tensor_values::<f64>(ctx, proto)?)),
        (None, None) => Ok(None),
    }
}

/// Like [`floats`] but the attribute must be present.
pub(super) fn required_floats(
    ctx: &ParsingContext,
    node: &NodeProto,
    op: &'static str,
    name: &str,
) -> TractResult<Vec<f64>> {
    floats(ctx, node, op, name)?.ok_or_else(|| {
        AttrError::Missing {
            op,
            attr: format!("{name} (or {name}_as_tensor)"),
        }
        .into()
    })
}

/// A required integer list.
pub(super) fn required_ints(
    node: &NodeProto,
    op: &'static str,
    name: &str,
) -> TractResult<Vec<i64>> {
    match node.get_attr_opt_slice::<i64>(name)? {
        Some(values) => Ok(values.to_vec()),
        None => Err(AttrError::Missing {
            op,
            attr: name.to_string(),
        }
        .into()),
    }
}

/// Every value of a tensor attribute, converted to `T`.
pub(super) fn tensor_values<T: Datum + Clone>(
    ctx: &ParsingContext,
    proto: &TensorProto,
) -> TractResult<Vec<T>> {
    let tensor = ctx.load_tensor(proto)?;
    let cast = tensor.cast_to::<T>()?;
    Ok(cast.try_as_plain_ram()?.as_slice::<T>()?.to_vec())
}

/// Checks that a per-node (or per-target) attribute has one entry per node.
pub(super) fn expect_len<T>(
    op: &'static str,
    attr: &str,
    values: &[T],
    expected: usize,
    why: &'static str,
) -> Result<(), AttrError> {
    if values.len() == expected {
        Ok(())
    } else {
        Err(AttrError::Length {
            op,
            attr: attr.to_string(),
            expected,
            found: values.len(),
            why,
        })
    }
}

//! `LabelEncoder` (ai.onnx.ml), which tract does not ship: maps each input element to the
//! value paired with an equal key, or to the default. skl2onnx's IsolationForest uses it to
//! turn leaf ids into their path-length corrections.
//!
//! Keys and values come as `keys_int64s` / `keys_floats` / `keys_strings` (and the `values_*`
//! counterparts) or, from opset 4, as `keys_tensor` / `values_tensor` with `default_tensor`.
//! Float keys match bit for bit, as the spec asks, except that every NaN matches a NaN key.

use std::collections::HashMap;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;

use super::attrs::{self, AttrError};

const OP: &str = "LabelEncoder";

pub(super) fn register(register: &mut OnnxOpRegister) {
    register.insert(OP, parse);
}

/// The keys, in the input's element type.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Keys {
    Int(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Str(Vec<String>),
}

/// The values, in the output's element type.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Values {
    Int(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Str(Vec<String>),
}

impl Keys {
    fn len(&self) -> usize {
        match self {
            Keys::Int(k) => k.len(),
            Keys::Float(k) => k.len(),
            Keys::Double(k) => k.len(),
            Keys::Str(k) => k.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Keys::Int(_) => DatumType::I64,
            Keys::Float(_) => DatumType::F32,
            Keys::Double(_) => DatumType::F64,
            Keys::Str(_) => DatumType::String,
        }
    }
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Double(v) => v.len(),
            Values::Str(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Values::Int(_) => DatumType::I64,
            Values::Float(_) => DatumType::F32,
            Values::Double(_) => DatumType::F64,
            Values::Str(_) => DatumType::String,
        }
    }
}

/// A key as hashed: floats by their bits, with one canonical NaN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyBits {
    Int(i64),
    Bits(u64),
    Str(String),
}

fn float_bits(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

/// A compiled encoder: key → position in `values`, whose last entry is the default.
#[derive(Debug, PartialEq)]
pub(super) struct Encoder {
    input: DatumType,
    index: HashMap<KeyBits, usize>,
    /// The values followed by the default, so a miss is just the last position.
    values: Values,
}

/// Problems in an encoder's keys, values or default.
#[derive(Debug, thiserror::Error)]
pub(super) enum EncoderError {
    #[error("LabelEncoder: {keys} keys but {values} values, expected as many of each")]
    Counts { keys: usize, values: usize },
    #[error("LabelEncoder: default is {found:?}, expected a {expected:?} like the values")]
    DefaultType {
        expected: DatumType,
        found: DatumType,
    },
    #[error("LabelEncoder: {what} is a {found:?} tensor, expected int64, float, double or string")]
    TensorType {
        what: &'static str,
        found: DatumType,
    },
    #[error("LabelEncoder: input is {found:?}, expected {expected:?} like the keys")]
    InputType {
        expected: DatumType,
        found: DatumType,
    },
}

impl Encoder {
    /// Builds the encoder; `default` must have the values' type.
    pub(super) fn new(keys: Keys, values: Values, default: Values) -> TractResult<Encoder> {
        if keys.len() != values.len() {
            return Err(EncoderError::Counts {
                keys: keys.len(),
                values: values.len(),
            }
            .into());
        }
        let input = keys.datum_type();
        let bits: Vec<KeyBits> = match keys {
            Keys::Int(k) => k.into_iter().map(KeyBits::Int).collect(),
            Keys::Float(k) => k
                .into_iter()
                .map(|v| KeyBits::Bits(float_bits(v as f64)))
                .collect(),
            Keys::Double(k) => k
                .into_iter()
                .map(|v| KeyBits::Bits(float_bits(v)))
                .collect(),
            Keys::Str(k) => k.into_iter().map(KeyBits::Str).collect(),
        };
        // A repeated key maps to its last value, as in the reference's dict(zip(keys, values)).
        let mut index = HashMap::with_capacity(bits.len());
        for (i, key) in bits.into_iter().enumerate() {
            index.insert(key, i);
        }
        let values = match (values, default) {
            (Values::Int(mut v), Values::Int(d)) => {
                v.extend(d);
                Values::Int(v)
            }
            (Values::Float(mut v), Values::Float(d)) => {
                v.extend(d);
                Values::Float(v)
            }
            (Values::Double(mut v), Values::Double(d)) => {
                v.extend(d);
                Values::Double(v)
            }
            (Values::Str(mut v), Values::Str(d)) => {
                v.extend(d);
                Values::Str(v)
            }
            (v, d) => {
                return Err(EncoderError::DefaultType {
                    expected: v.datum_type(),
                    found: d.datum_type(),
                }
                .into());
            }
        };
        Ok(Encoder {
            input,
            index,
            values,
        })
    }

    fn output_type(&self) -> DatumType {
        self.values.datum_type()
    }

    /// The position in `values` each input element maps to.
    fn positions(&self, input: &Tensor) -> TractResult<Vec<usize>> {
        let miss = self.values.len() - 1;
        let lookup = |k: KeyBits| self.index.get(&k).copied().unwrap_or(miss);
        let plain = input.try_as_plain_ram()?;
        Ok(match input.datum_type() {
            DatumType::I64 => plain
                .as_slice::<i64>()?
                .iter()
                .map(|&k| lookup(KeyBits::Int(k)))
                .collect(),
            DatumType::F32 => plain
                .as_slice::<f32>()?
                .iter()
                .map(|&k| lookup(KeyBits::Bits(float_bits(k as f64))))
                .collect(),
            DatumType::F64 => plain
                .as_slice::<f64>()?
                .iter()
                .map(|&k| lookup(KeyBits::Bits(float_bits(k))))
                .collect(),
            DatumType::String => plain
                .as_slice::<String>()?
                .iter()
                // Lookups by &str would need a borrowed key type; strings are rare enough here.
                .map(|k| lookup(KeyBits::Str(k.clone())))
                .collect(),
            other => bail!(EncoderError::InputType {
                expected: self.input,
                found: other
            }),
        })
    }

    /// Whether inputs of type `dt` can be looked up: the keys' type, or for int64 keys any
    /// integer (tract types int64 shape-like tensors as TDim).
    fn accepts(&self, dt: DatumType) -> bool {
        dt == self.input
            || (self.input == DatumType::I64
                && matches!(
                    dt,
                    DatumType::TDim | DatumType::I32 | DatumType::I16 | DatumType::I8
                ))
    }

    /// Encodes every element of `input`, keeping its shape.
    pub(super) fn encode(&self, input: &Tensor) -> TractResult<Tensor> {
        ensure!(
            self.accepts(input.datum_type()),
            EncoderError::InputType {
                expected: self.input,
                found: input.datum_type()
            }
        );
        let input = input.cast_to_dt(self.input)?;
        let positions = self.positions(&input)?;
        let shape = input.shape();
        fn gather<T: Datum + Clone>(
            values: &[T],
            positions: &[usize],
            shape: &[usize],
        ) -> TractResult<Tensor> {
            let out: Vec<T> = positions.iter().map(|&p| values[p].clone()).collect();
            Ok(tract_ndarray::ArrayD::from_shape_vec(shape, out)?.into_tensor())
        }
        match &self.values {
            Values::Int(v) => gather(v, &positions, shape),
            Values::Float(v) => gather(v, &positions, shape),
            Values::Double(v) => gather(v, &positions, shape),
            Values::Str(v) => gather(v, &positions, shape),
        }
    }
}

fn tensor_keys(ctx: &ParsingContext, what: &'static str, proto: &TensorProto) -> TractResult<Keys> {
    let tensor = ctx.load_tensor(proto)?;
    let plain = tensor.try_as_plain_ram()?;
    Ok(match tensor.datum_type() {
        DatumType::I64 | DatumType::I32 | DatumType::I16 | DatumType::I8 => {
            Keys::Int(attrs::tensor_values::<i64>(ctx, proto)?)
        }
        DatumType::F32 => Keys::Float(plain.as_slice::<f32>()?.to_vec()),
        DatumType::F64 => Keys::Double(plain.as_slice::<f64>()?.to_vec()),
        DatumType::String => Keys::Str(plain.as_slice::<String>()?.to_vec()),
        other => bail!(EncoderError::TensorType { what, found: other }),
    })
}

fn tensor_values(
    ctx: &ParsingContext,
    what: &'static str,
    proto: &TensorProto,
) -> TractResult<Values> {
    Ok(match tensor_keys(ctx, what, proto)? {
        Keys::Int(v) => Values::Int(v),
        Keys::Float(v) => Values::Float(v),
        Keys::Double(v) => Values::Double(v),
        Keys::Str(v) => Values::Str(v),
    })
}

/// Exactly one of the spellings of a key or value list.
fn one_of<T>(what: &'static str, found: Vec<(&'static str, Option<T>)>) -> TractResult<T> {
    let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
    let mut present = found.into_iter().filter_map(|(n, v)| v.map(|v| (n, v)));
    match (present.next(), present.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some((a, _)), Some((b, _))) => Err(AttrError::Both {
            op: OP,
            a: a.into(),
            b: b.into(),
        }
        .into()),
        (None, _) => Err(AttrError::Missing {
            op: OP,
            attr: format!("{what} (one of {})", names.join(", ")),
        }
        .into()),
    }
}

fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let keys = one_of(
        "keys",
        vec![
            (
                "keys_int64s",
                node.get_attr_opt_slice::<i64>("keys_int64s")?
                    .map(|k| Keys::Int(k.to_vec())),
            ),
            (
                "keys_floats",
                node.get_attr_opt_slice::<f32>("keys_floats")?
                    .map(|k| Keys::Float(k.to_vec())),
            ),
            (
                "keys_strings",
                node.get_attr_opt_vec::<String>("keys_strings")?
                    .map(Keys::Str),
            ),
            (
                "keys_tensor",
                node.get_attr_opt::<&TensorProto>("keys_tensor")?
                    .map(|t| tensor_keys(ctx, "keys_tensor", t))
                    .transpose()?,
            ),
        ],
    )?;
    let values = one_of(
        "values",
        vec![
            (
                "values_int64s",
                node.get_attr_opt_slice::<i64>("values_int64s")?
                    .map(|v| Values::Int(v.to_vec())),
            ),
            (
                "values_floats",
                node.get_attr_opt_slice::<f32>("values_floats")?
                    .map(|v| Values::Float(v.to_vec())),
            ),
            (
                "values_strings",
                node.get_attr_opt_vec::<String>("values_strings")?
                    .map(Values::Str),
            ),
            (
                "values_tensor",
                node.get_attr_opt::<&TensorProto>("values_tensor")?
                    .map(|t| tensor_values(ctx, "values_tensor", t))
                    .transpose()?,
            ),
        ],
    )?;
    let default = match node.get_attr_opt::<&TensorProto>("default_tensor")? {
        Some(t) => tensor_values(ctx, "default_tensor", t)?,
        // The spec's defaults: -1, -0.0 and "_Unused".
        None => match values {
            Values::Int(_) => Values::Int(vec![node.get_attr_opt("default_int64")?.unwrap_or(-1)]),
            Values::Float(_) => {
                Values::Float(vec![node.get_attr_opt("default_float")?.unwrap_or(-0.0)])
            }
            Values::Double(_) => Values::Double(vec![node
                .get_attr_opt::<f32>("default_float")?
                .unwrap_or(-0.0) as f64]),
            Values::Str(_) => Values::Str(vec![node
                .get_attr_opt::<String>("default_string")?
                .unwrap_or_else(|| "_Unused".into())]),
        },
    };
    ensure!(
        default.len() == 1,
        AttrError::Length {
            op: OP,
            attr: "default_tensor".into(),
            expected: 1,
            found: default.len(),
            why: "a single default value"
        }
    );
    let encoder = Arc::new(Encoder::new(keys, values, default)?);
    Ok((expand(LabelEncoder { encoder }), vec![]))
}

/// The inference-time form: same shape in and out, types from the keys and values.
#[derive(Debug, Clone)]
struct LabelEncoder {
    encoder: Arc<Encoder>,
}

impl Expansion for LabelEncoder {
    fn name(&self) -> StaticName {
        OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        // tract infers int64 tensors feeding on shapes as TDim, so integer keys accept either
        // and the typed op checks.
        if self.encoder.input != DatumType::I64 {
            s.equals(&inputs[0].datum_type, self.encoder.input)?;
        }
        s.equals(&outputs[0].datum_type, self.encoder.output_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            LabelEncoderOp {
                encoder: self.encoder.clone(),
            },
            inputs,
        )
    }
}

/// The typed, runnable op.
#[derive(Debug, Clone)]
struct LabelEncoderOp {
    encoder: Arc<Encoder>,
}

// Equal only when sharing one encoder; see TreeEnsembleRegressorOp.
impl PartialEq for LabelEncoderOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.encoder, &other.encoder)
    }
}
impl Eq for LabelEncoderOp {}

impl Op for LabelEncoderOp {
    fn name(&self) -> StaticName {
        OP.into()
    }

    op_as_typed_op!();
}

impl EvalOp for LabelEncoderOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.encoder.encode(&input)?.into_tvalue()))
    }
}

impl TypedOp for LabelEncoderOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            self.encoder.accepts(inputs[0].datum_type),
            EncoderError::InputType {
                expected: self.encoder.input,
                found: inputs[0].datum_type
            }
        );
        Ok(tvec!(self
            .encoder
            .output_type()
            .fact(inputs[0].shape.iter())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        // Element-wise: every axis passes through unchanged, which lets tract move reshapes
        // across it.
        AxesMapping::natural(inputs, outputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(encoder: &Encoder, input: Tensor) -> Tensor {
        encoder.encode(&input).unwrap()
    }

    #[test]
    fn int_keys_to_float_values_with_default() {
        let encoder = Encoder::new(
            Keys::Int(vec![4, 6, 10]),
            Values::Float(vec![1.0, 3.0, 22.0]),
            Values::Float(vec![-0.0]),
        )
        .unwrap();
        let out = encode(&encoder, tensor2(&[[10i64], [4], [5], [6]]));
        assert_eq!(out, tensor2(&[[22f32], [1.0], [-0.0], [3.0]]));
        // The default keeps its sign: -0.0, not 0.0.
        let plain = out.try_as_plain_ram().unwrap();
        assert!(plain.as_slice::<f32>().unwrap()[2].is_sign_negative());
    }

    #[test]
    fn string_keys_to_int_values() {
        let encoder = Encoder::new(
            Keys::Str(vec!["a".into(), "b".into()]),
            Values::Int(vec![7, 8]),
            Values::Int(vec![-1]),
        )
        .unwrap();
        let input = tensor1(&["b".to_string(), "zz".to_string(), "a".to_string()]);
        assert_eq!(encode(&encoder, input), tensor1(&[8i64, -1, 7]));
    }

    #[test]
    fn float_keys_match_bitwise_and_nan_matches_nan() {
        let encoder = Encoder::new(
            Keys::Float(vec![0.5, f32::NAN, 0.0]),
            Values::Str(vec!["half".into(), "missing".into(), "zero".into()]),
            Values::Str(vec!["_Unused".into()]),
        )
        .unwrap();
        let input = tensor1(&[0.5f32, -f32::NAN, 0.0, -0.0, 0.25]);
        let expected: Vec<String> = ["half", "missing", "zero", "_Unused", "_Unused"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(encode(&encoder, input), tensor1(&expected));
    }

    #[test]
    fn double_keys_and_values() {
        let encoder = Encoder::new(
            Keys::Double(vec![0.1, 0.2]),
            Values::Double(vec![1.5, 2.5]),
            Values::Double(vec![9.0]),
        )
        .unwrap();
        assert_eq!(
            encode(&encoder, tensor1(&[0.2f64, 0.1, 0.3])),
            tensor1(&[2.5f64, 1.5, 9.0])
        );
    }

    #[test]
    fn rejects_mismatched_inputs_and_defaults() {
        let encoder = Encoder::new(
            Keys::Int(vec![1]),
            Values::Int(vec![2]),
            Values::Int(vec![0]),
        )
        .unwrap();
        assert_eq!(
            encoder.encode(&tensor1(&[1f32])).unwrap_err().to_string(),
            "LabelEncoder: input is F32, expected I64 like the keys"
        );
        let err = Encoder::new(
            Keys::Int(vec![1]),
            Values::Int(vec![2]),
            Values::Float(vec![0.0]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LabelEncoder: default is F32, expected a I64 like the values"
        );
        let err = Encoder::new(
            Keys::Int(vec![1, 2]),
            Values::Int(vec![2]),
            Values::Int(vec![0]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LabelEncoder: 2 keys but 1 values, expected as many of each"
        );
    }
}

//! Rows to Arrow columns and back, and the batch call with its per-row fallback.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{make_array, Array, ArrayRef};
use arrow_data::ArrayData;

use super::UdfType;
use super::{RowFailure, Udf};
use anom_lang::value::Value;

/// One column of `ty` from `values`. A value of another type is passed as null (the pipeline
/// checked the argument types when it loaded, so this only happens to nulls).
pub fn column<'a>(ty: UdfType, values: impl ExactSizeIterator<Item = &'a Value>) -> ArrayData {
    let n = values.len();
    let array: ArrayRef = match ty {
        UdfType::String => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for v in values {
                match v {
                    Value::Str(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        UdfType::Int => {
            let mut b = Int64Builder::with_capacity(n);
            for v in values {
                b.append_option(match v {
                    Value::Int(i) | Value::Timestamp(i) => Some(*i),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        UdfType::Float => {
            let mut b = Float64Builder::with_capacity(n);
            for v in values {
                b.append_option(match v {
                    Value::Float(f) => Some(*f),
                    Value::Int(i) => Some(*i as f64),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        UdfType::Bool => {
            let mut b = BooleanBuilder::with_capacity(n);
            for v in values {
                b.append_option(match v {
                    Value::Bool(x) => Some(*x),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
    };
    array.to_data()
}

/// The value at `row` of a result array of `ty` (checked by [`Udf::call`]).
fn value_at(array: &dyn Array, ty: UdfType, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match ty {
        UdfType::String => Value::Str(Arc::from(array.as_string::<i32>().value(row))),
        UdfType::Int => Value::Int(array.as_primitive::<Int64Type>().value(row)),
        UdfType::Float => Value::Float(array.as_primitive::<Float64Type>().value(row)),
        UdfType::Bool => Value::Bool(array.as_boolean().value(row)),
    }
}

/// Calls `udf` over `rows` rows (`args`: one column per argument) and returns one outcome
/// per row. When the batch fails as a whole (a panic in one row fails them all), each row is
/// called alone so that only the rows that fail on their own are lost.
pub fn run(udf: &Udf, args: &[ArrayData], rows: usize) -> Vec<Result<Value, RowFailure>> {
    if rows == 0 {
        return Vec::new();
    }
    match udf.call(args, rows) {
        Ok(result) => values(udf, &result),
        Err(_) if rows > 1 => (0..rows)
            .map(|i| {
                let one: Vec<ArrayData> = args.iter().map(|a| a.slice(i, 1)).collect();
                match udf.call(&one, 1) {
                    Ok(result) => values(udf, &result).pop().expect("one row"),
                    Err(error) => Err(RowFailure::Call {
                        udf: udf.name.clone(),
                        error,
                    }),
                }
            })
            .collect(),
        Err(error) => vec![Err(RowFailure::Call {
            udf: udf.name.clone(),
            error,
        })],
    }
}

fn values(udf: &Udf, result: &ArrayData) -> Vec<Result<Value, RowFailure>> {
    let array = make_array(result.clone());
    (0..array.len())
        .map(|i| match value_at(array.as_ref(), udf.returns, i) {
            Value::Null => Err(RowFailure::Null {
                udf: udf.name.clone(),
            }),
            v => Ok(v),
        })
        .collect()
}

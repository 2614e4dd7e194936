//! Loading and calling the example plugins of pipelines/udfs (built by the tests).

use std::sync::Arc;

use super::*;
use crate::batch::column;
use anom_lang::value::Value;
use anom_testkit::plugins::plugin;

fn load(lib: &str, name: &str, args: &[UdfType], returns: UdfType) -> Result<Udf, UdfError> {
    Udf::load(name, &plugin(lib), args, returns)
}

fn strs(values: &[Option<&str>]) -> Vec<Value> {
    values
        .iter()
        .map(|v| v.map_or(Value::Null, |s| Value::Str(Arc::from(s))))
        .collect()
}

#[test]
fn a_declared_signature_that_matches_loads_and_the_library_is_opened_once() {
    let udf = load("add_one", "add_one", &[UdfType::Int], UdfType::Int).unwrap();
    assert_eq!(udf.returns, UdfType::Int);
    let again = load("add_one", "plus", &[UdfType::Int], UdfType::Int).unwrap();
    assert!(Arc::ptr_eq(&udf.library, &again.library));
    let score = load(
        "transfer_score",
        "transfer_score",
        &[UdfType::Int, UdfType::Int],
        UdfType::Float,
    );
    assert!(score.is_ok(), "{score:?}");
}

#[test]
fn an_argument_type_mismatch_names_what_the_library_takes() {
    let e = load("route_id", "route_id", &[UdfType::Int], UdfType::String).unwrap_err();
    let lib = plugin("route_id").display().to_string();
    assert_eq!(
        e.to_string(),
        format!("udf `route_id` takes (int) -> string but library {lib} takes (string) -> string")
    );
}

#[test]
fn a_return_type_mismatch_is_an_error() {
    let e = load("add_one", "add_one", &[UdfType::Int], UdfType::Float).unwrap_err();
    let lib = plugin("add_one").display().to_string();
    assert_eq!(
        e.to_string(),
        format!("udf `add_one` takes (int) -> float but library {lib} takes (int) -> int")
    );
}

#[test]
fn declaring_more_or_fewer_arguments_than_the_library_takes_is_an_error() {
    let e = load(
        "add_one",
        "add_one",
        &[UdfType::Int, UdfType::Int],
        UdfType::Int,
    )
    .unwrap_err();
    assert!(
        e.to_string().ends_with("takes fewer than 2 arguments"),
        "{e}"
    );
    let e = load("transfer_score", "s", &[UdfType::Int], UdfType::Float).unwrap_err();
    assert!(e.to_string().ends_with("takes (int, int) -> float"), "{e}");
}

#[test]
fn a_missing_library_or_no_arguments_is_an_error() {
    let e = Udf::load(
        "f",
        std::path::Path::new("./no/such/libx.so"),
        &[UdfType::Int],
        UdfType::Int,
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "library ./no/such/libx.so not found");
    let e = load("add_one", "f", &[], UdfType::Int).unwrap_err();
    assert_eq!(e, UdfError::NoArguments);
}

#[test]
fn a_batch_maps_each_row_back_and_a_null_result_is_a_row_failure() {
    let udf = load("add_one", "add_one", &[UdfType::Int], UdfType::Int).unwrap();
    let rows = [Value::Int(1), Value::Null, Value::Timestamp(41)];
    let out = run(&udf, &[column(UdfType::Int, rows.iter())], rows.len());
    assert_eq!(out[0], Ok(Value::Int(2)));
    assert_eq!(
        out[1],
        Err(RowFailure::Null {
            udf: "add_one".into()
        })
    );
    assert_eq!(out[2], Ok(Value::Int(42)));
    assert!(run(&udf, &[column(UdfType::Int, [].iter())], 0).is_empty());
}

#[test]
fn a_panic_fails_only_the_rows_that_panic() {
    let udf = load("route_id", "route_id", &[UdfType::String], UdfType::String).unwrap();
    let rows = strs(&[
        Some("sftp-bank-a-0001.csv"),
        Some("README"),
        Some("api-payroll-0002.csv"),
    ]);
    let out = run(&udf, &[column(UdfType::String, rows.iter())], rows.len());
    assert_eq!(out[0], Ok(Value::Str(Arc::from("SFTP-BANK-A"))));
    assert_eq!(
        out[1].as_ref().unwrap_err().to_string(),
        "udf `route_id` panicked"
    );
    assert_eq!(out[2], Ok(Value::Str(Arc::from("API-PAYROLL"))));
}

#[test]
fn a_float_udf_takes_mixed_numeric_columns_and_may_return_null() {
    let udf = load(
        "transfer_score",
        "transfer_score",
        &[UdfType::Int, UdfType::Int],
        UdfType::Float,
    )
    .unwrap();
    let bytes = [Value::Int(100_000), Value::Int(5)];
    let ms = [Value::Int(1000), Value::Int(0)];
    let out = run(
        &udf,
        &[
            column(UdfType::Int, bytes.iter()),
            column(UdfType::Int, ms.iter()),
        ],
        2,
    );
    assert_eq!(out[0], Ok(Value::Float(0.5)));
    assert!(matches!(out[1], Err(RowFailure::Null { .. })));
}

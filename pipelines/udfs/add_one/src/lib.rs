//! The trivial UDF: `add_one(x) = x + 1`. The benchmark uses it to measure what calling a
//! plugin costs per event, with next to no work inside.

use arroyo_udf_plugin::udf;

#[udf]
fn add_one(x: i64) -> i64 {
    x.wrapping_add(1)
}

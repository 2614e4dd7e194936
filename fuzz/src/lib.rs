//! The bodies of Anom's fuzz targets (docs/fuzzing.md): each takes an input, runs a part of
//! Anom that reads what users send or write, and checks what must hold whatever the input —
//! beyond "does not panic". The `fuzz_targets/` binaries are thin libFuzzer wrappers.

pub mod csv;
pub mod definition;
pub mod event;
pub mod expr;

#[cfg(test)]
mod short;

//! User-defined functions: compiled plugins built with Arroyo's `arroyo-udf-plugin` crate
//! (the `#[udf]` macro), loaded as dynamic libraries and called over the Arrow C data
//! interface.
//!
//! - [`library`]: loading a plugin once per process, the ABI it exports (`__run`), and the
//!   load-time check of its signature against the pipeline's declaration.
//! - [`batch`]: rows in, Arrow arrays across, one outcome per row back; a batch that fails
//!   is retried row by row so that one bad event does not take the others with it.
//!
//! A pipeline declares its UDFs under `udfs:` and uses them in `derive:` fields, in rule
//! conditions and as `kind: udf` detectors; all three become derived fields computed by the
//! validate stage, in batches (see `pipeline::udfs`).

#[cfg(feature = "plugins")]
pub mod batch;
#[cfg(feature = "plugins")]
pub mod library;

use std::fmt;
use std::sync::Arc;

use anom_lang::value::Value;
#[cfg(feature = "plugins")]
use arrow_schema::DataType;

#[cfg(feature = "plugins")]
pub use batch::run;
#[cfg(feature = "plugins")]
pub use library::UdfLibrary;

/// A declared UDF resolved to its library, its signature checked: what the hot path calls.
#[derive(Debug, Clone)]
pub struct Udf {
    pub name: String,
    pub args: Vec<UdfType>,
    pub returns: UdfType,
    pub library: Arc<UdfLibrary>,
}

/// Without the `plugins` feature no library can be loaded, so a [`Udf`] never exists.
#[cfg(not(feature = "plugins"))]
#[derive(Debug)]
pub struct UdfLibrary {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "plugins"))]
impl Udf {
    /// This build cannot load plugins: every declared UDF is refused, saying why.
    pub fn load(
        _name: &str,
        _path: &std::path::Path,
        _args: &[UdfType],
        _returns: UdfType,
    ) -> Result<Udf, UdfError> {
        Err(UdfError::NotBuilt)
    }
}

/// Calls `udf` on `rows` rows: `args` holds, per argument in the UDF's order, that argument's
/// value in every row. One outcome per row (see [`batch::run`] for how failures are split).
pub fn apply<'a, I>(
    udf: &Udf,
    args: impl IntoIterator<Item = I>,
    rows: usize,
) -> Vec<Result<Value, RowFailure>>
where
    I: ExactSizeIterator<Item = &'a Value>,
{
    #[cfg(feature = "plugins")]
    {
        let columns: Vec<_> = udf
            .args
            .iter()
            .zip(args)
            .map(|(&ty, values)| batch::column(ty, values))
            .collect();
        run(udf, &columns, rows)
    }
    #[cfg(not(feature = "plugins"))]
    {
        let _ = (args, rows);
        match udf.library.never {}
    }
}

/// Why one row got no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowFailure {
    /// The call failed for this row alone (a panic in the function, a malformed result).
    #[error("udf `{udf}` {error}")]
    Call { udf: String, error: CallError },
    #[error("udf `{udf}` returned null")]
    Null { udf: String },
}

/// Why one call failed as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The function panicked (the plugin caught it and returned `RunResult::Err`).
    #[error("panicked")]
    Panicked,
    #[error("returned an array that cannot be imported: {0}")]
    Import(String),
    #[error("returned {found} rows for {expected}")]
    Rows { expected: usize, found: usize },
    #[error("returned {found} instead of {expected}")]
    Type { expected: String, found: String },
}

/// The types a UDF's arguments and result can have, named as the pipeline's field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdfType {
    /// Arrow Utf8; `&str` arguments and `String` results in the plugin.
    String,
    /// Arrow Int64; `i64` in the plugin. Timestamp fields are passed as epoch milliseconds.
    Int,
    /// Arrow Float64; `f64` in the plugin.
    Float,
    /// Arrow Boolean; `bool` in the plugin.
    Bool,
}

impl UdfType {
    pub const ALL: [UdfType; 4] = [UdfType::String, UdfType::Int, UdfType::Float, UdfType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            UdfType::String => "string",
            UdfType::Int => "int",
            UdfType::Float => "float",
            UdfType::Bool => "bool",
        }
    }

    #[cfg(feature = "plugins")]
    pub fn arrow(self) -> DataType {
        match self {
            UdfType::String => DataType::Utf8,
            UdfType::Int => DataType::Int64,
            UdfType::Float => DataType::Float64,
            UdfType::Bool => DataType::Boolean,
        }
    }

    #[cfg(feature = "plugins")]
    pub fn from_arrow(t: &DataType) -> Option<UdfType> {
        UdfType::ALL.into_iter().find(|u| u.arrow() == *t)
    }

    /// The Rust type the `#[udf]` function uses for it.
    pub fn rust(self) -> &'static str {
        match self {
            UdfType::String => "&str / String",
            UdfType::Int => "i64",
            UdfType::Float => "f64",
            UdfType::Bool => "bool",
        }
    }

    pub fn value_type(self) -> anom_lang::value::ValueType {
        use anom_lang::value::ValueType;
        match self {
            UdfType::String => ValueType::Str,
            UdfType::Int => ValueType::Int,
            UdfType::Float => ValueType::Float,
            UdfType::Bool => ValueType::Bool,
        }
    }
}

impl fmt::Display for UdfType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `(string, int)`, as signatures are shown in messages.
pub fn show_args(args: &[UdfType]) -> String {
    let names: Vec<&str> = args.iter().map(|t| t.name()).collect();
    format!("({})", names.join(", "))
}

/// Why a plugin cannot be used as declared: reported as a definition error at load time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UdfError {
    #[error("this build of Anom cannot load UDF plugins: it was built without the `udf` feature (on by default)")]
    NotBuilt,
    #[error("library {path} not found")]
    NotFound { path: String },
    #[error("library {path} cannot be loaded: {reason}")]
    Load { path: String, reason: String },
    #[error("library {path} is not an Arroyo UDF plugin: it exports no `__run` (build it with arroyo-udf-plugin's #[udf], crate-type cdylib; async UDFs are not supported)")]
    NotAPlugin { path: String },
    #[error("a UDF takes at least one argument (the #[udf] macro needs one)")]
    NoArguments,
    #[error("udf `{name}` takes {declared} but library {path} {found}")]
    Signature {
        name: String,
        path: String,
        declared: String,
        found: String,
    },
}

#[cfg(all(test, feature = "plugins"))]
mod tests;

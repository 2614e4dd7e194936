//! Loading a UDF plugin and checking it against its declaration.
//!
//! What `arroyo-udf-plugin` 0.2's `#[udf]` exports is one symbol,
//! `extern "C-unwind" fn __run(args: FfiArrays) -> RunResult`, and nothing that describes the
//! function: Arroyo's own host takes the signature from the UDF's source. We have only the
//! library, so the signature is checked by calling it at load time:
//! 1. with empty arrays of the declared argument types: a plugin converts each argument to the
//!    array type it expects and panics (caught on its side: `RunResult::Err`) on another one,
//!    or on a missing argument; the empty result array it returns carries the return type;
//! 2. with one-row arrays of nulls for all arguments but the last, which is empty: the plugin
//!    zips its arguments, so it returns no row when it reads the last one and one row when it
//!    takes fewer arguments than declared.
//!
//! When the first call fails, the plugin's real signature is searched among the supported
//! types (a few dozen calls at most, each one a caught panic in the plugin that its panic hook
//! prints to stderr) so the error can say what the library takes.
//!
//! Ownership follows `arroyo-udf-common`'s `FfiArrays::from_vec/into_vec`: the host leaks the
//! argument vector before the call and the plugin frees it (both sides use the system
//! allocator), the result array is released by the plugin's own release callback.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{new_empty_array, new_null_array, Array};
use arrow_data::ArrayData;

use super::{show_args, CallError, Udf, UdfError, UdfType};

/// One argument or result across the C data interface (`arroyo_udf_common::FfiArraySchema`).
#[repr(C)]
struct FfiArraySchema(FFI_ArrowArray, FFI_ArrowSchema);

/// The arguments of one call (`arroyo_udf_common::FfiArrays`): a leaked
/// `Vec<FfiArraySchema>` the plugin takes back with `Vec::from_raw_parts`.
#[repr(C)]
struct FfiArrays {
    ptr: *mut FfiArraySchema,
    len: usize,
    capacity: usize,
    error: bool,
}

/// What `__run` returns (`arroyo_udf_common::RunResult`); `Err` means the function panicked.
#[repr(C)]
#[allow(dead_code)] // built by the plugin, never here
enum RunResult {
    Ok(FfiArraySchema),
    Err,
}

type RunFn = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;

/// A loaded plugin library, kept for the life of the process: unloading Rust code that may
/// have registered thread-locals or a panic hook is not safe.
pub struct UdfLibrary {
    path: PathBuf,
    run: RunFn,
    _library: libloading::Library,
}

impl fmt::Debug for UdfLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdfLibrary")
            .field("path", &self.path)
            .finish()
    }
}

/// Libraries loaded so far, by canonical path: each is opened once per process, however many
/// pipelines (or versions of one) use it.
static LOADED: LazyLock<Mutex<HashMap<PathBuf, Arc<UdfLibrary>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl UdfLibrary {
    /// Opens the plugin at `path` (once per process) and finds its entry point.
    pub fn open(path: &Path) -> Result<Arc<UdfLibrary>, UdfError> {
        let shown = path.display().to_string();
        let canonical = path.canonicalize().map_err(|_| UdfError::NotFound {
            path: shown.clone(),
        })?;
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.get(&canonical) {
            return Ok(l.clone());
        }
        // SAFETY: loading a library runs its initialisers; a UDF plugin is trusted code the
        // operator chose to deploy, like the worker binary itself.
        let library =
            unsafe { libloading::Library::new(&canonical) }.map_err(|e| UdfError::Load {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        // SAFETY: `__run` is the symbol `#[udf]` exports with exactly this type.
        let run = unsafe { library.get::<RunFn>(b"__run\0") }
            .map(|s| *s)
            .map_err(|_| UdfError::NotAPlugin { path: shown })?;
        let l = Arc::new(UdfLibrary {
            path: canonical.clone(),
            run,
            _library: library,
        });
        loaded.insert(canonical, l.clone());
        Ok(l)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls the function once over `args` (equal-length columns) and returns its result
    /// array, unchecked.
    pub fn call(&self, args: &[ArrayData]) -> Result<ArrayData, CallError> {
        let mut exported = Vec::with_capacity(args.len());
        for a in args {
            let (array, schema) = to_ffi(a).map_err(|e| CallError::Import(e.to_string()))?;
            exported.push(FfiArraySchema(array, schema));
        }
        let mut exported = std::mem::ManuallyDrop::new(exported);
        let arrays = FfiArrays {
            ptr: exported.as_mut_ptr(),
            len: exported.len(),
            capacity: exported.capacity(),
            error: false,
        };
        // SAFETY: the vector is leaked (ManuallyDrop) and handed over as `from_vec` does; the
        // plugin frees it and releases the arrays, and catches panics in the function itself.
        match unsafe { (self.run)(arrays) } {
            RunResult::Err => Err(CallError::Panicked),
            RunResult::Ok(FfiArraySchema(array, schema)) => {
                // SAFETY: a valid array and schema exported by the plugin, owned by us now.
                unsafe { from_ffi(array, &schema) }.map_err(|e| CallError::Import(e.to_string()))
            }
        }
    }
}

impl Udf {
    /// Loads `path` and checks that it takes `args` and returns `returns`.
    pub fn load(
        name: &str,
        path: &Path,
        args: &[UdfType],
        returns: UdfType,
    ) -> Result<Udf, UdfError> {
        if args.is_empty() {
            return Err(UdfError::NoArguments);
        }
        let library = UdfLibrary::open(path)?;
        let mismatch = |found: String| UdfError::Signature {
            name: name.to_string(),
            path: path.display().to_string(),
            declared: format!("{} -> {returns}", show_args(args)),
            found,
        };
        let result_type = match probe_types(&library, args) {
            Ok(t) => t,
            Err(_) => {
                return Err(mismatch(match search_signature(&library, args.len()) {
                    Some((found, ret)) => format!("takes {} -> {ret}", show_args(&found)),
                    None => format!(
                    "does not accept {}: it takes other types, or more arguments (supported: {})",
                    show_args(args),
                    supported()
                ),
                }))
            }
        };
        let found_returns = match UdfType::from_arrow(&result_type) {
            Some(t) => t,
            None => {
                return Err(mismatch(format!(
                    "returns arrow {result_type}, which Anom does not map (supported: {})",
                    supported()
                )))
            }
        };
        if args.len() > 1 && !reads_last_argument(&library, args) {
            return Err(mismatch(format!(
                "takes fewer than {} arguments",
                args.len()
            )));
        }
        if found_returns != returns {
            return Err(mismatch(format!(
                "takes {} -> {found_returns}",
                show_args(args)
            )));
        }
        Ok(Udf {
            name: name.to_string(),
            args: args.to_vec(),
            returns,
            library,
        })
    }

    /// Calls the function over `args` (one column per argument, `rows` long) and checks the
    /// result's length and type.
    pub fn call(&self, args: &[ArrayData], rows: usize) -> Result<ArrayData, CallError> {
        let result = self.library.call(args)?;
        if result.len() != rows {
            return Err(CallError::Rows {
                expected: rows,
                found: result.len(),
            });
        }
        if *result.data_type() != self.returns.arrow() {
            return Err(CallError::Type {
                expected: self.returns.arrow().to_string(),
                found: result.data_type().to_string(),
            });
        }
        Ok(result)
    }
}

fn supported() -> String {
    UdfType::ALL
        .iter()
        .map(|t| format!("{t} ({})", t.rust()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Calls the plugin with empty columns of `args`; its result's type if it accepts them.
fn probe_types(
    library: &UdfLibrary,
    args: &[UdfType],
) -> Result<arrow_schema::DataType, CallError> {
    let empty: Vec<ArrayData> = args
        .iter()
        .map(|t| new_empty_array(&t.arrow()).to_data())
        .collect();
    let result = library.call(&empty)?;
    Ok(result.data_type().clone())
}

/// Whether the plugin reads the last of `args`: every other column has one (null) row and the
/// last none, so a plugin that zips all of them returns no row.
fn reads_last_argument(library: &UdfLibrary, args: &[UdfType]) -> bool {
    let last = args.len() - 1;
    let columns: Vec<ArrayData> = args
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == last {
                new_empty_array(&t.arrow()).to_data()
            } else {
                new_null_array(&t.arrow(), 1).to_data()
            }
        })
        .collect();
    matches!(library.call(&columns), Ok(r) if r.is_empty())
}

/// Looks for the argument types the plugin takes, among the supported ones, with `arity` or
/// one more argument; gives up past a few dozen calls.
fn search_signature(library: &UdfLibrary, arity: usize) -> Option<(Vec<UdfType>, String)> {
    const MAX_CALLS: usize = 84; // every combination of up to 3 arguments (4 + 16 + 64)
    let mut calls = 0;
    for n in [arity, arity + 1] {
        let combinations = UdfType::ALL.len().checked_pow(n as u32)?;
        for mut code in 0..combinations {
            calls += 1;
            if calls > MAX_CALLS {
                return None;
            }
            let mut types = Vec::with_capacity(n);
            for _ in 0..n {
                types.push(UdfType::ALL[code % UdfType::ALL.len()]);
                code /= UdfType::ALL.len();
            }
            if let Ok(t) = probe_types(library, &types) {
                let ret = UdfType::from_arrow(&t)
                    .map_or_else(|| format!("arrow {t}"), |r| r.name().to_string());
                return Some((types, ret));
            }
        }
    }
    None
}

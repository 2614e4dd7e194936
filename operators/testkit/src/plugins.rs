//! The example UDF plugins (pipelines/udfs/*), built on first use by the tests themselves
//! with the cargo and target directory that built them: `cargo test` alone is enough.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The library of example plugin `name` (`route_id` → pipelines/udfs/route_id), debug build.
pub fn plugin(name: &str) -> PathBuf {
    build(name, false)
}

/// The library of example plugin `name`, built with `--release` when `release`.
pub fn build(name: &str, release: bool) -> PathBuf {
    // One cargo at a time from this process (cargo would serialise them anyway).
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let root = crate::repo_root();
    // Test and bench executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test executable's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable is in <target>/<profile>/deps");
    let package = format!("anom-udf-{}", name.replace('_', "-"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--locked", "--quiet", "-p", &package])
        .arg("--target-dir")
        .arg(target)
        .arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cargo runs to build {package}: {e}"));
    assert!(out.status.success(), "building {package} failed");
    let lib_name = format!("udf_{name}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == lib_name.as_str())
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| {
            f.extension()
                .is_some_and(|e| e == "so" || e == "dylib" || e == "dll")
        })
        .unwrap_or_else(|| panic!("cargo built no library for {package}"))
}

//! Generates the gRPC code from anom.proto. protoc comes from the protoc-bin-vendored crate,
//! so building needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For the reflection service, so grpcurl can list and describe everything.
        .file_descriptor_set_path(out.join("anom_descriptor.bin"))
        .compile_protos(&["anom.proto"], &["."])?;
    println!("cargo:rerun-if-changed=anom.proto");
    Ok(())
}

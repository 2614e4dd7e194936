//! The coordinator's gRPC API, package `anom.v1` (see `anom.proto` beside this crate).

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("anom.v1");

    /// The encoded descriptors of `anom.proto`, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("anom_descriptor");
}

//! Generated protobuf messages and gRPC services of `waitroom.v1`, and the
//! codec they are generated with (`codec`).

// The codec the generated services use: here, beside them, so the lowest
// layer reaches up to nothing.
pub mod codec;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("waitroom.v1");
}
pub use generated::*;

/// Encoded descriptors of the protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("waitroom_descriptor");

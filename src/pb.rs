//! Generated protobuf messages and gRPC services of `waitroom.v1`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("waitroom.v1");

/// Encoded descriptors of the protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("waitroom_descriptor");

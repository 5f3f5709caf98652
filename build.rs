//! Generates the gRPC code from `proto/` with `protox`, so building needs no
//! `protoc`, and keeps the descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/waitroom/v1/queue_service.proto",
        "proto/waitroom/v1/queue_admin_service.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("waitroom_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::pb::codec::SmallBufferCodec")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

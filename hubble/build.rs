//! Generates the Rust types and the gRPC client and server of Hubble's
//! flow and observer API from `proto/` (protoc from `cargo xtask setup`),
//! and their protobuf-JSON mapping (pbjson: the JSON Hubble's `-o json`
//! prints, with the .proto field names).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("hubble.bin");
    let protos = ["proto/flow/flow.proto", "proto/observer/observer.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["proto"])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        .build(&[".flow", ".observer"])?;
    Ok(())
}

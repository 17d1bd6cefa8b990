//! Generates Flower's protobuf types from the descriptor set dumped out of the flwr 1.42.0 wheel
//! (the wheel ships no .proto files; see shared/notes/flower-fleet-api.md). No protoc needed.

use prost::Message;

fn main() {
    let path = "proto/flwr_1_42_0.fds.bin";
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(path).expect("the Flower descriptor set is in the crate");
    let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice())
        .expect("a valid FileDescriptorSet");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generates the Flower types");
}

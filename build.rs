//! Generates the gRPC code for `proto/raft.proto` (the peer RPCs) and for the etcd v3 subset under
//! `proto/etcd/` (packages `mvccpb` and `etcdserverpb`, the client API) at build time.
//!
//! `protox` parses the .proto files in pure Rust and hands a `FileDescriptorSet` to
//! `tonic-prost-build`, so building this crate never needs a system `protoc`.

use std::error::Error;

const PROTO_DIR: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/raft.proto",
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/v3lockpb/v3lock.proto",
    "proto/etcd/v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // compile_fds cannot know which files a descriptor set came from, so say it here: rebuild when
    // anything under proto/ changes, and not on every unrelated source edit.
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile(PROTO_FILES, [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

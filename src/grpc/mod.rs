//! The gRPC transport (placeholder while the module is built up).

pub mod convert;

/// The code generated from `proto/raft.proto` (package `raftlog.v1`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("raftlog.v1");
}

//! The etcd v3 API: the generated wire types ([`pb`]) of the subset rust-raft-log serves.
//!
//! This module owns the wire contract only. The key-value semantics live in [`crate::kv`]; serving
//! the services on the node's gRPC server belongs to the node.

pub mod authority;
pub mod members;
pub mod pb;
pub mod server;

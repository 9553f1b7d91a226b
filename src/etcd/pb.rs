//! The code generated from `proto/etcd/` (etcd's v3 wire contract): messages, tonic servers and
//! clients.
//!
//! The two packages are sibling modules because `rpc.proto` refers to `.mvccpb.KeyValue`, which
//! prost emits as `super::mvccpb::KeyValue`. Rust field names are prost's snake_case of etcd's
//! proto names (`dbSize` → `db_size`, `isLearner` → `is_learner`, `peerURLs` → `peer_ur_ls`,
//! `ID` → `id`); the wire numbers are etcd's.

/// etcd's `mvccpb` package: `KeyValue`, `Event`.
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: the `KV`, `Cluster` (MemberList) and `Maintenance` (Status)
/// services and their messages.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

//! The etcd v3 API of the subset rust-raft-log serves.
//!
//! - [`pb`]: the generated wire types and tonic services/clients (the wire contract).
//! - [`server`]: the `KV`, `Maintenance.Status` and `Cluster.MemberList` handlers on the node's
//!   gRPC server (validation, proposals, ReadIndex reads, forwarding to the leader), and the
//!   filter that answers every other method UNIMPLEMENTED by name.
//! - [`members`]: cluster and member ids derived from the static config.
//! - [`authority`]: the accept-side repair of etcdctl's URL-valued HTTP/2 `:authority`.
//!
//! The key-value semantics live in [`crate::kv`]; docs/ETCD_COMPAT.md lists every difference.

pub mod authority;
pub mod members;
pub mod pb;
pub mod server;

//! The key-value state machine: etcd v3 semantics over the replicated log.
//!
//! This module owns the store ([`KvStore`]), the checks a request passes before it is proposed
//! ([`validate`]), the bytes a write takes in a log entry ([`encode_command`]), the typed result
//! handed back to the proposer ([`KvResponse`], the store's `StateMachine::Response`), the store's
//! snapshots ([`KvSnapshotView`], [`KvStore::restore_from`], via
//! [`crate::state_machine::Snapshot`]; byte layout in `docs/FORMAT.md`), its hash for etcd's
//! `HashKV` ([`KvStore::hash_kv`]), and the error type of the layer ([`KvError`], with etcd's gRPC
//! codes and texts).
//!
//! Everything here is pure and deterministic: no I/O, no clock, no randomness, no hash-map
//! iteration order. Every replica that applies the same committed commands in the same order ends
//! in the same state and produces the same responses, including for commands that do not
//! decode (they give an error response, never a panic).
//!
//! # Semantics (as etcd's clients see them)
//! - One cluster-wide `revision`, 1 for the empty store. Each command that changes something
//!   advances it by exactly one, whatever the number of keys it touches (a Txn is one revision); a
//!   command that changes nothing (a read, a delete that matches nothing) leaves it alone.
//! - Per key: `create_revision` (revision of the put that created it after it was absent),
//!   `mod_revision` (revision of its last put), `version` (1 at creation, +1 per put; a delete
//!   removes the key, and a later put starts again at 1).
//! - History (MVCC): reads may name an older `revision`. Revisions below the compaction point answer
//!   etcd's "required revision has been compacted"; above the current one "is a future revision".
//!   The store compacts on an explicit Compact and, to bound memory, automatically keeps only the
//!   last [`HISTORY_REVISIONS_DEFAULT`] revisions (like etcd's revision-mode auto-compaction).
//!   The retention is part of the replicated semantics: every replica must use the same one.
//! - Leases (etcd's): a lease is an ID with a granted TTL, replicated through the log
//!   ([`KvStore::lease_grant`], [`KvStore::lease_revoke`]). A put naming a lease attaches the key
//!   to it (a lease that does not exist: "requested lease not found"), a put without one detaches
//!   it, `ignore_lease` keeps the key's lease, a delete detaches. Revoking a lease deletes every
//!   key attached to it in one write, at one revision. When a lease expires is not the store's
//!   business: the leader decides it with its clock and proposes a revoke (`crate::etcd::lease`).
//!   Leases are part of snapshots.

mod command;
mod events;
mod members;
mod sink;
mod snapshot;
mod store;
mod validate;

#[cfg(test)]
mod cost_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod snapshot_tests;

pub use self::command::{
    decode_command, encode_command, encode_compact, encode_lease_grant, encode_lease_revoke,
    encode_member_record, Applied, Command, KvResponse, COMMAND_FRAMING_BYTES,
};
pub use self::events::{key_in_range, HistoryEvents};
pub use self::members::{MemberRecord, MemberTable};
pub use self::sink::EventSink;
pub use self::snapshot::{KvHash, KvSnapshotView, SNAPSHOT_BUFFER_BYTES, SNAPSHOT_FIELD_BYTES_MAX};
pub use self::store::{KvStore, HISTORY_REVISIONS_DEFAULT, LEASE_TTL_MAX_S};
pub use self::validate::validate;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 3 * 1024 * 1024 / 2;

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// The limits checked before a request is proposed. Both are etcd's flags of the same meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest encoded request accepted for proposal (etcd: `--max-request-bytes`). Keys and values
    /// are bounded by it: they travel inside the request.
    pub request_bytes_max: usize,
    /// Most compares, success ops or failure ops in one Txn (etcd: `--max-txn-ops`). Checked on
    /// each of the three lists, as etcd does, and nested Txns share the budget left by their
    /// parent.
    pub txn_ops_max: usize,
}

/// What the gRPC transport accepts beyond the request limit (etcd: max request bytes + 512 KiB);
/// above it the transport refuses the message before any handler sees it.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

impl KvLimits {
    /// The largest gRPC message the etcd services decode: etcd's default request limit plus its
    /// gRPC overhead, however low `request_bytes_max` was set (small segments lower it), so that a
    /// request between the two is answered with etcd's "request is too large" rather than the
    /// transport's own error.
    pub fn transport_bytes_max(&self) -> usize {
        self.request_bytes_max.max(REQUEST_BYTES_MAX_DEFAULT) + GRPC_OVERHEAD_BYTES
    }

    /// These limits, with `request_bytes_max` lowered (if needed) so that an accepted request's
    /// command (one kind byte and the encoded request) fits one log entry of at most
    /// `entry_payload_max_bytes`: with small segments, a request etcd's limit allows must still be
    /// refused before it is proposed, never by the durable write.
    pub fn fitting_entries_of(self, entry_payload_max_bytes: usize) -> KvLimits {
        KvLimits {
            request_bytes_max: self
                .request_bytes_max
                .min(entry_payload_max_bytes.saturating_sub(COMMAND_FRAMING_BYTES)),
            ..self
        }
    }
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            txn_ops_max: TXN_OPS_MAX_DEFAULT,
        }
    }
}

/// Errors of the key-value layer. The messages are etcd's exact texts (clients match on them), and
/// [`KvError::to_status`] gives etcd's gRPC code for each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A range, put, delete or compare with an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value`/`ignore_lease` on a key that does not exist, or an empty op in a
    /// Txn (etcd answers both with this text).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a non-empty value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a nonzero lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A Txn with more compares, success ops or failure ops than `txn_ops_max`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A Txn that writes one key twice (two puts, or a put inside a range the Txn deletes).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An encoded request larger than `request_bytes_max`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A read or compaction at a revision below the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction at a revision above the current one.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put naming, or a revoke of, a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of an ID that is in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above [`LEASE_TTL_MAX_S`] (etcd's `MaxLeaseTTL`).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A log entry payload that is not a command of this store (corrupt, or written by another
    /// state machine). Every replica answers it the same way and changes nothing.
    #[error("rust-raft-log: log entry is not a key-value command: {reason}")]
    BadCommand { reason: String },
}

impl KvError {
    /// etcd's gRPC status for this error: the same code and message etcd's server sends, so that
    /// etcd's client libraries recognise it (they map on the message text).
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            KvError::EmptyKey
            | KvError::KeyNotFound
            | KvError::ValueProvided
            | KvError::LeaseProvided
            | KvError::TooManyOps
            | KvError::DuplicateKey
            | KvError::RequestTooLarge => Code::InvalidArgument,
            KvError::Compacted | KvError::FutureRevision => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::LeaseExists => Code::FailedPrecondition,
            KvError::LeaseTtlTooLarge => Code::OutOfRange,
            KvError::BadCommand { .. } => Code::Internal,
        };
        tonic::Status::new(code, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_etcds_codes_and_texts() {
        let cases = [
            (
                KvError::EmptyKey,
                tonic::Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                KvError::KeyNotFound,
                tonic::Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                KvError::ValueProvided,
                tonic::Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                KvError::LeaseProvided,
                tonic::Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                KvError::TooManyOps,
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                KvError::DuplicateKey,
                tonic::Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                KvError::RequestTooLarge,
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                KvError::Compacted,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                KvError::FutureRevision,
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                KvError::LeaseNotFound,
                tonic::Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                KvError::LeaseExists,
                tonic::Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                KvError::LeaseTtlTooLarge,
                tonic::Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
        ];
        for (error, code, message) in cases {
            let status = error.to_status();
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), message, "{error:?}");
        }
    }

    #[test]
    fn default_limits_are_etcds() {
        let limits = KvLimits::default();
        assert_eq!(limits.request_bytes_max, 1_572_864);
        assert_eq!(limits.txn_ops_max, 128);
    }
}

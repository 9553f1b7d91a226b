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

/// etcd's `v3lockpb` package: the server-side `Lock` service.
#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's `v3electionpb` package: the server-side `Election` service.
#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

#[cfg(test)]
mod tests {
    //! The wire contract: service paths and field numbers must be etcd's, or etcdctl and etcd's
    //! client libraries silently read the wrong fields. Expected bytes are written out by hand
    //! from etcd's published `rpc.proto` / `kv.proto` field numbers.

    use prost::Message;
    use tonic::server::NamedService;

    use super::etcdserverpb::{
        cluster_server::ClusterServer, compare, kv_server::KvServer,
        maintenance_server::MaintenanceServer, request_op, Compare, Member, PutRequest,
        RangeRequest, RequestOp, StatusResponse,
    };
    use super::mvccpb::KeyValue;

    #[test]
    fn services_have_etcds_names() {
        struct Nothing;
        assert_eq!(<KvServer<Nothing> as NamedService>::NAME, "etcdserverpb.KV");
        assert_eq!(
            <ClusterServer<Nothing> as NamedService>::NAME,
            "etcdserverpb.Cluster"
        );
        assert_eq!(
            <MaintenanceServer<Nothing> as NamedService>::NAME,
            "etcdserverpb.Maintenance"
        );
    }

    #[test]
    fn messages_use_etcds_field_numbers() {
        // PutRequest: key = 1, value = 2, lease = 3, prev_kv = 4, ignore_value = 5, ignore_lease = 6.
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        };
        assert_eq!(
            put.encode_to_vec(),
            [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 7, 0x20, 1, 0x28, 1, 0x30, 1]
        );
        // RangeRequest: limit = 3, serializable = 7, count_only = 9, max_create_revision = 13.
        let range = RangeRequest {
            limit: 2,
            serializable: true,
            count_only: true,
            max_create_revision: 5,
            ..RangeRequest::default()
        };
        assert_eq!(range.encode_to_vec(), [0x18, 2, 0x38, 1, 0x48, 1, 0x68, 5]);
        // Compare: key = 3, mod_revision = 6 (in the oneof), range_end = 64.
        let compare = Compare {
            key: b"a".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(9)),
            range_end: b"b".to_vec(),
            ..Compare::default()
        };
        assert_eq!(
            compare.encode_to_vec(),
            [0x1a, 1, b'a', 0x30, 9, 0x82, 0x04, 1, b'b']
        );
        // RequestOp: request_txn = 4 (an empty TxnRequest is still present on the wire).
        let op = RequestOp {
            request: Some(request_op::Request::RequestTxn(Default::default())),
        };
        assert_eq!(op.encode_to_vec(), [0x22, 0]);
        // KeyValue: version = 4, lease = 6.
        let kv = KeyValue {
            version: 3,
            lease: 1,
            ..KeyValue::default()
        };
        assert_eq!(kv.encode_to_vec(), [0x20, 3, 0x30, 1]);
        // StatusResponse: dbSize = 3, raftTerm = 6, dbSizeInUse = 9, isLearner = 10.
        let status = StatusResponse {
            db_size: 1,
            raft_term: 2,
            db_size_in_use: 3,
            is_learner: true,
            ..StatusResponse::default()
        };
        assert_eq!(status.encode_to_vec(), [0x18, 1, 0x30, 2, 0x48, 3, 0x50, 1]);
        // Member: ID = 1, peerURLs = 3, isLearner = 5.
        let member = Member {
            id: 1,
            peer_ur_ls: vec!["u".to_owned()],
            is_learner: true,
            ..Member::default()
        };
        assert_eq!(member.encode_to_vec(), [0x08, 1, 0x1a, 1, b'u', 0x28, 1]);
    }
}

//! Tests of the key-value store's snapshots (`snapshot.rs`) and of its HashKV hash.
//!
//! The reference for the streaming code is the code it replaced: the in-memory encoder and
//! decoder of format version 1 (one `Vec` of everything, decoded from one slice), kept here in
//! [`in_memory`] and extended by hand to format 2 (leases) from `docs/FORMAT.md`. Random workloads check that the streamed bytes are the old encoder's, that the
//! streaming restore builds exactly the store the old decoder built (whatever sizes the reader
//! hands its bytes in), and that a view taken before more writes still writes the bytes of a store
//! that stopped at that moment.

use std::io::{self, Read};

use proptest::prelude::*;

use super::snapshot::{CHECKSUM_BYTES, FORMAT_VERSION, HEADER_BYTES, MAGIC};
use super::{
    encode_command, KvError, KvHash, KvStore, SNAPSHOT_BUFFER_BYTES, SNAPSHOT_FIELD_BYTES_MAX,
};
use crate::etcdpb::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::state_machine::{Snapshot, SnapshotError, StateMachine};
use crate::types::{EntryType, LogEntry, LogIndex, Term};

/// The encoder and decoder of format version 1 as they were before snapshots were streamed,
/// adapted to the store's shared (`Arc`) keys, values and histories, and to format 2: a leased
/// live version (flag 2, its lease after `version`) and the lease table after the keys.
mod in_memory {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::super::snapshot::{CHECKSUM_BYTES, FORMAT_VERSION, MAGIC};
    use super::super::store::{
        version_size_bytes, KeyMap, LeaseMap, LeaseState, Live, Version, REVISION_INITIAL,
    };
    use super::super::KvStore;
    use crate::state_machine::SnapshotError;

    pub(super) fn encode(store: &KvStore) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&store.revision.to_le_bytes());
        out.extend_from_slice(&store.compact_revision.to_le_bytes());
        out.extend_from_slice(&store.history_revisions.to_le_bytes());
        out.extend_from_slice(&(store.keys.len() as u64).to_le_bytes());
        for (key, history) in &store.keys {
            put_bytes(&mut out, key);
            out.extend_from_slice(&(history.len() as u32).to_le_bytes());
            for version in history.iter() {
                out.extend_from_slice(&version.mod_revision.to_le_bytes());
                match &version.live {
                    None => out.push(0),
                    Some(live) => {
                        out.push(if live.lease == 0 { 1 } else { 2 });
                        out.extend_from_slice(&live.create_revision.to_le_bytes());
                        out.extend_from_slice(&live.version.to_le_bytes());
                        if live.lease != 0 {
                            out.extend_from_slice(&live.lease.to_le_bytes());
                        }
                        put_bytes(&mut out, &live.value);
                    }
                }
            }
        }
        out.extend_from_slice(&(store.leases.len() as u64).to_le_bytes());
        for (id, lease) in &store.leases {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&lease.ttl_s.to_le_bytes());
        }
        out.extend_from_slice(&(store.members.len() as u32).to_le_bytes());
        for (node, record) in &store.members {
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&(record.peer_urls.len() as u32).to_le_bytes());
            for url in &record.peer_urls {
                put_bytes(&mut out, url.as_bytes());
            }
        }
        let checksum = crc32c::crc32c(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        offset: usize,
    }

    impl<'a> Reader<'a> {
        fn corrupt(&self, what: impl Into<String>) -> SnapshotError {
            SnapshotError::Corrupt {
                offset: self.offset as u64,
                what: what.into(),
            }
        }

        fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
            if self.bytes.len() - self.offset < len {
                return Err(self.corrupt(format!("{what}: {len} bytes needed")));
            }
            let taken = &self.bytes[self.offset..self.offset + len];
            self.offset += len;
            Ok(taken)
        }

        fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
            let mut array = [0u8; N];
            array.copy_from_slice(self.take(N, what)?);
            Ok(array)
        }

        fn i64(&mut self, what: &str) -> Result<i64, SnapshotError> {
            self.array(what).map(i64::from_le_bytes)
        }

        fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
            self.array(what).map(u32::from_le_bytes)
        }

        fn bytes(&mut self, what: &str) -> Result<&'a [u8], SnapshotError> {
            let len = self.u32(what)? as usize;
            self.take(len, what)
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
        if bytes.len() < MAGIC.len() + 4 + CHECKSUM_BYTES {
            return Err(SnapshotError::Corrupt {
                offset: 0,
                what: "too short".to_owned(),
            });
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        let mut stored = [0u8; CHECKSUM_BYTES];
        stored.copy_from_slice(checksum);
        if u32::from_le_bytes(stored) != crc32c::crc32c(body) {
            return Err(SnapshotError::Corrupt {
                offset: body.len() as u64,
                what: "checksum".to_owned(),
            });
        }
        let mut reader = Reader {
            bytes: body,
            offset: 0,
        };
        if reader.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(reader.corrupt("magic"));
        }
        if reader.u32("format version")? != FORMAT_VERSION {
            return Err(reader.corrupt("format version"));
        }
        let revision = reader.i64("revision")?;
        let compact_revision = reader.i64("compact_revision")?;
        let history_revisions = reader.i64("history_revisions")?;
        if revision < REVISION_INITIAL || compact_revision < -1 || compact_revision > revision {
            return Err(reader.corrupt("revisions"));
        }
        let key_count = u64::from_le_bytes(reader.array("key count")?);
        let mut keys = KeyMap::new();
        let mut size_bytes = 0i64;
        let mut previous_key: Option<&[u8]> = None;
        for _ in 0..key_count {
            let key = reader.bytes("key")?;
            if key.is_empty() || previous_key.is_some_and(|previous| previous >= key) {
                return Err(reader.corrupt("key order"));
            }
            previous_key = Some(key);
            let count = reader.u32("version count")?;
            if count == 0 {
                return Err(reader.corrupt("a key without versions"));
            }
            let mut history: Vec<Version> = Vec::new();
            for _ in 0..count {
                let mod_revision = reader.i64("mod_revision")?;
                let live = match reader.array::<1>("live flag")? {
                    [0] => None,
                    [flag @ (1 | 2)] => {
                        let create_revision = reader.i64("create_revision")?;
                        let version = reader.i64("version")?;
                        let lease = if flag == 2 { reader.i64("lease")? } else { 0 };
                        let value = Arc::from(reader.bytes("value")?);
                        Some(Live {
                            create_revision,
                            version,
                            lease,
                            value,
                        })
                    }
                    _ => return Err(reader.corrupt("live flag")),
                };
                let increasing = history
                    .last()
                    .is_none_or(|last| last.mod_revision < mod_revision);
                if mod_revision < 1 || mod_revision > revision || !increasing {
                    return Err(reader.corrupt("mod_revision"));
                }
                let version = Version { mod_revision, live };
                size_bytes += version_size_bytes(key, &version);
                history.push(version);
            }
            keys.insert(Arc::from(key), history);
        }
        let lease_count = u64::from_le_bytes(reader.array("lease count")?);
        let mut leases = LeaseMap::new();
        for _ in 0..lease_count {
            let id = reader.i64("lease id")?;
            let ttl_s = reader.i64("lease ttl")?;
            let keys = keys
                .iter()
                .filter(|(_, history)| {
                    history
                        .last()
                        .and_then(|version| version.live.as_ref())
                        .is_some_and(|live| live.lease == id)
                })
                .map(|(key, _)| Arc::clone(key))
                .collect();
            leases.insert(id, LeaseState { ttl_s, keys });
        }
        let member_count = reader.u32("member count")?;
        let mut members = crate::kv::MemberTable::new();
        for _ in 0..member_count {
            let node = reader.u32("member id")?;
            let urls = reader.u32("url count")?;
            let mut peer_urls = Vec::new();
            for _ in 0..urls {
                let url = reader.bytes("url")?;
                peer_urls.push(String::from_utf8_lossy(url).into_owned());
            }
            members.insert(node, crate::kv::MemberRecord { peer_urls });
        }
        if reader.offset != body.len() {
            return Err(reader.corrupt("bytes after the lease table"));
        }
        let mut changes: Vec<(i64, Arc<[u8]>)> = keys
            .iter()
            .flat_map(|(key, history)| {
                history
                    .iter()
                    .filter(|version| version.mod_revision > compact_revision)
                    .map(move |version| (version.mod_revision, Arc::clone(key)))
                    .collect::<Vec<_>>()
            })
            .collect();
        changes.sort();
        Ok(KvStore {
            revision,
            compact_revision,
            history_revisions,
            keys,
            changes: VecDeque::from(changes),
            size_bytes,
            leases,
            members,
            sink: Default::default(),
            views: Default::default(),
        })
    }
}

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Op {
    Put(usize, Value),
    /// Deletes `[KEYS[from], KEYS[to])` (a single key when `to <= from`).
    Delete(usize, usize),
    /// Compacts to `revision() - back` (refusals are part of the workload).
    Compact(i64),
    /// A txn that puts and then fails: rolled back whole.
    FailingTxn(usize),
    /// Grants lease `LEASES[i]` (refused if it exists).
    Grant(usize),
    /// Puts a key attached to lease `LEASES[i]` (refused if it does not exist).
    LeasedPut(usize, usize),
    /// Revokes lease `LEASES[i]`, deleting its keys (refused if it does not exist).
    Revoke(usize),
}

const LEASES: [i64; 3] = [7, 0x1234_5678_9abc, i64::MAX];

#[derive(Clone, Debug)]
enum Value {
    Small(Vec<u8>),
    /// Longer than the reader's and writer's buffer: crosses its boundaries.
    Long(u8),
}

const KEYS: [&str; 7] = ["a", "ab", "b", "ba", "c", "d", "long-key-0123456789"];

fn put_op(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..PutRequest::default()
        })),
    }
}

fn delete_op(key: &[u8], range_end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: false,
        })),
    }
}

fn apply(store: &mut KvStore, op: &Op) {
    // Refusals (compactions out of range, the failing txn) are part of the workload.
    let _ = match op {
        Op::Put(key, value) => {
            let value = match value {
                Value::Small(bytes) => bytes.clone(),
                Value::Long(byte) => vec![*byte; 2 * SNAPSHOT_BUFFER_BYTES + 17],
            };
            store.apply(&put_op(KEYS[*key].as_bytes(), value)).map(drop)
        }
        Op::Delete(from, to) => {
            let range_end = if to <= from { "" } else { KEYS[*to] };
            store
                .apply(&delete_op(KEYS[*from].as_bytes(), range_end.as_bytes()))
                .map(drop)
        }
        Op::Compact(back) => store.compact(store.revision() - back).map(drop),
        Op::FailingTxn(key) => {
            let leased = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"leased".to_vec(),
                    lease: 9, // not one of LEASES: never granted
                    ..PutRequest::default()
                })),
            };
            let txn = TxnRequest {
                compare: Vec::new(),
                success: vec![put_op(KEYS[*key].as_bytes(), b"doomed".to_vec()), leased],
                failure: Vec::new(),
            };
            let op = RequestOp {
                request: Some(Request::RequestTxn(txn)),
            };
            store.apply(&op).map(drop)
        }
        Op::Grant(lease) => store.lease_grant(LEASES[*lease], 30).map(drop),
        Op::LeasedPut(key, lease) => {
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: KEYS[*key].as_bytes().to_vec(),
                    value: b"leased".to_vec(),
                    lease: LEASES[*lease],
                    ..PutRequest::default()
                })),
            };
            store.apply(&put).map(drop)
        }
        Op::Revoke(lease) => store.lease_revoke(LEASES[*lease]).map(drop),
    };
}

fn replay(history_revisions: i64, ops: &[Op]) -> KvStore {
    let mut store = KvStore::with_history_revisions(history_revisions);
    for op in ops {
        apply(&mut store, op);
    }
    store
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let value = prop_oneof![
        12 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::Small),
        1 => any::<u8>().prop_map(Value::Long),
    ];
    prop_oneof![
        8 => (key.clone(), value).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (key.clone(), key.clone()).prop_map(|(from, to)| Op::Delete(from, to)),
        1 => (0i64..6).prop_map(Op::Compact),
        1 => key.clone().prop_map(Op::FailingTxn),
        1 => (0..LEASES.len()).prop_map(Op::Grant),
        2 => (key, 0..LEASES.len()).prop_map(|(k, l)| Op::LeasedPut(k, l)),
        1 => (0..LEASES.len()).prop_map(Op::Revoke),
    ]
}

fn history_revisions() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![0i64, 3, 100])
}

/// A reader that hands out its bytes in pieces of 1 to 7 bytes, interrupted now and then, and
/// optionally fails for good after `fail_at` bytes.
struct Trickle<'a> {
    bytes: &'a [u8],
    calls: usize,
    fail_at: Option<usize>,
    read: usize,
}

impl<'a> Trickle<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Trickle {
            bytes,
            calls: 0,
            fail_at: None,
            read: 0,
        }
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(5) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.fail_at.is_some_and(|at| self.read >= at) {
            return Err(io::Error::other("injected read failure"));
        }
        let mut len = (self.calls % 7 + 1).min(buf.len()).min(self.bytes.len());
        if let Some(at) = self.fail_at {
            len = len.min(at - self.read);
        }
        buf[..len].copy_from_slice(&self.bytes[..len]);
        self.bytes = &self.bytes[len..];
        self.read += len;
        Ok(len)
    }
}

fn restore(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
    KvStore::restore_from(&mut &*bytes)
}

fn sample() -> KvStore {
    let mut store = KvStore::with_history_revisions(4);
    for (i, key) in ["a", "b", "c", "a", "b", "d", "a"].iter().enumerate() {
        store
            .apply(&put_op(key.as_bytes(), vec![i as u8; i]))
            .expect("put");
    }
    store.apply(&delete_op(b"c", b"")).expect("delete");
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn streaming_restore_matches_the_in_memory_restore(
        history_revisions in history_revisions(),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let store = replay(history_revisions, &ops);
        let bytes = store.snapshot();
        prop_assert!(bytes == in_memory::encode(&store), "the stream is not format version 2");
        let expected = in_memory::decode(&bytes).expect("the old decoder reads it");
        let restored = restore(&bytes).expect("restore");
        restored.check_invariants();
        prop_assert_eq!(&restored, &expected);
        let trickled = KvStore::restore_from(&mut Trickle::new(&bytes)).expect("restore");
        prop_assert_eq!(&trickled, &expected);
        prop_assert_eq!(restored.hash_kv(0), store.hash_kv(0));
    }

    #[test]
    fn a_view_writes_the_state_of_its_moment(
        history_revisions in history_revisions(),
        before in prop::collection::vec(op(), 0..30),
        after in prop::collection::vec(op(), 1..30),
    ) {
        let mut store = replay(history_revisions, &before);
        let view = store.snapshot_view();
        for op in &after {
            apply(&mut store, op);
        }
        // A store that stopped where the view was taken, built on its own (sharing nothing).
        let stopped = replay(history_revisions, &before);
        let mut bytes = Vec::new();
        let written = view.write_to(&mut bytes).expect("write");
        prop_assert_eq!(written, bytes.len() as u64);
        prop_assert!(bytes == in_memory::encode(&stopped), "the view changed with later writes");
        prop_assert_eq!(view.hash_kv(0), stopped.hash_kv(0));
        prop_assert_eq!(view.revision(), stopped.revision());
        store.check_invariants();
        prop_assert!(store.snapshot() == in_memory::encode(&store));
    }

    #[test]
    fn hash_kv_at_a_revision_is_the_hash_of_the_store_at_that_revision(
        ops in prop::collection::vec(op(), 1..40),
        cut in 0usize..40,
    ) {
        // Without compaction, the versions at or below r are exactly what a store that stopped
        // at r holds.
        let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::Compact(_))).collect();
        let cut = cut.min(ops.len());
        let stopped = replay(0, &ops[..cut]);
        let store = replay(0, &ops);
        prop_assert_eq!(
            store.hash_kv(stopped.revision()).map(|hash| hash.hash),
            stopped.hash_kv(0).map(|hash| hash.hash)
        );
    }
}

#[test]
fn a_compaction_that_drops_nothing_copies_nothing_a_view_shares() {
    // Every key written once: compacting to the newest revision visits them all and drops none
    // (each newest version is live). With a view alive, that must not copy the view's nodes.
    let mut store = KvStore::with_history_revisions(0);
    for i in 0..1_000u32 {
        store
            .apply(&put_op(&i.to_be_bytes(), vec![1; 16]))
            .expect("put");
    }
    let view = store.snapshot_view();
    store.compact(store.revision()).expect("compact");
    assert!(view.shares_map_with(&store));
    // One key written again: compacting now drops its older version, which copies its path.
    store
        .apply(&put_op(&7u32.to_be_bytes(), vec![2; 16]))
        .expect("put");
    let view = store.snapshot_view();
    store.compact(store.revision()).expect("compact");
    assert!(!view.shares_map_with(&store));
    store.check_invariants();
    let mut request = RangeRequest {
        key: 7u32.to_be_bytes().to_vec(),
        ..RangeRequest::default()
    };
    request.revision = view.revision();
    assert_eq!(store.range(&request).expect("range").kvs[0].value, [2; 16]);
}

#[test]
fn a_view_shares_the_store_instead_of_copying_it() {
    let mut store = KvStore::new();
    for i in 0..10_000u32 {
        store
            .apply(&put_op(&i.to_be_bytes(), vec![1; 16]))
            .expect("put");
    }
    let view = store.snapshot_view();
    // Taking the view copied nothing: it holds the store's own map.
    assert!(view.shares_map_with(&store));
    store
        .apply(&put_op(&7u32.to_be_bytes(), vec![2; 16]))
        .expect("put");
    // The write copied the nodes on its path (the map is no longer the same) but not the values
    // of the keys it did not touch, nor the view's version of the key it changed.
    assert!(!view.shares_map_with(&store));
    assert!(view.shares_value_with(&store, &8u32.to_be_bytes()));
    assert!(!view.shares_value_with(&store, &7u32.to_be_bytes()));
    let mut request = RangeRequest {
        key: 7u32.to_be_bytes().to_vec(),
        ..RangeRequest::default()
    };
    assert_eq!(store.range(&request).expect("range").kvs[0].value, [2; 16]);
    request.revision = view.revision();
    assert_eq!(store.range(&request).expect("range").kvs[0].value, [1; 16]);
}

#[test]
fn a_restored_store_reads_and_writes_like_the_original() {
    let original = sample();
    let bytes = original.snapshot();
    let mut restored = KvStore::new();
    restored.restore(&bytes).expect("restore");
    restored.check_invariants();
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.revision(), original.revision());
    assert_eq!(restored.size_bytes(), original.size_bytes());
    for revision in original.compact_revision()..=original.revision() {
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..RangeRequest::default()
        };
        assert_eq!(
            restored.range(&request),
            original.range(&request),
            "at {revision}"
        );
    }
    // Both go on identically, automatic compaction included.
    let mut original = original;
    for i in 0..6u8 {
        let op = put_op(&[b'a' + i % 3], vec![i]);
        assert_eq!(restored.apply(&op), original.apply(&op));
        restored.check_invariants();
    }
    assert_eq!(restored.snapshot(), original.snapshot());
}

#[test]
fn values_longer_than_the_buffer_cross_its_boundaries() {
    let mut store = KvStore::with_history_revisions(0);
    for (i, len) in [
        SNAPSHOT_BUFFER_BYTES - 1,
        SNAPSHOT_BUFFER_BYTES,
        3 * SNAPSHOT_BUFFER_BYTES + 5,
        0,
    ]
    .into_iter()
    .enumerate()
    {
        let value: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
        store.apply(&put_op(&[b'k', i as u8], value)).expect("put");
    }
    let bytes = store.snapshot();
    assert_eq!(bytes, in_memory::encode(&store));
    let restored = KvStore::restore_from(&mut Trickle::new(&bytes)).expect("restore");
    assert_eq!(restored, in_memory::decode(&bytes).expect("decode"));
}

#[test]
fn every_damaged_byte_is_refused_and_leaves_the_store_alone() {
    let bytes = sample().snapshot();
    let mut store = sample();
    let before = store.clone();
    for offset in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x40;
        let error = store
            .restore(&damaged)
            .expect_err("a flipped bit must be detected");
        assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error}");
        assert_eq!(
            store, before,
            "a failed restore changed the store (offset {offset})"
        );
    }
    for len in 0..bytes.len() {
        let error = store
            .restore(&bytes[..len])
            .expect_err("a truncated payload must be refused");
        assert!(
            matches!(error, SnapshotError::Corrupt { offset, .. } if offset <= len as u64),
            "truncated to {len}: {error}"
        );
        assert_eq!(store, before, "truncated to {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let error = store
        .restore(&longer)
        .expect_err("a byte after the checksum");
    assert!(error.to_string().contains("after the checksum"), "{error}");
    assert_eq!(store, before);
}

#[test]
fn a_failing_reader_is_an_io_error_and_leaves_the_store_alone() {
    let bytes = sample().snapshot();
    let mut store = sample();
    let before = store.clone();
    for fail_at in [
        0,
        1,
        HEADER_BYTES,
        bytes.len() - CHECKSUM_BYTES,
        bytes.len(),
    ] {
        let mut reader = Trickle::new(&bytes);
        reader.fail_at = Some(fail_at);
        let error = store
            .restore_from(&mut reader)
            .expect_err("the reader fails");
        assert!(
            matches!(&error, SnapshotError::Io { offset, .. } if *offset <= fail_at as u64),
            "failing at {fail_at}: {error}"
        );
        assert_eq!(store, before, "failing at {fail_at}");
    }
}

/// A payload with a valid header whose first key claims `key_len` bytes and is followed by
/// `then`.
fn payload_claiming_a_key_of(key_len: u32, then: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for field in [1i64, -1, 0] {
        bytes.extend_from_slice(&field.to_le_bytes());
    }
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(bytes.len(), HEADER_BYTES);
    bytes.extend_from_slice(&key_len.to_le_bytes());
    bytes.extend_from_slice(then);
    bytes
}

#[test]
fn lengths_are_checked_before_allocating() {
    // A 4 GiB key is refused by its length, before anything is allocated or read for it.
    let bytes = payload_claiming_a_key_of(u32::MAX, &[]);
    let error = restore(&bytes).expect_err("bogus length");
    let text = error.to_string();
    assert!(text.contains("key length 4294967295 is beyond"), "{text}");
    // A key of the largest allowed length whose bytes never come: refused as truncated after
    // reading what there was (gathered piece by piece, not allocated from the length).
    let max = SNAPSHOT_FIELD_BYTES_MAX as u32;
    let bytes = payload_claiming_a_key_of(max, b"partial");
    let error = restore(&bytes).expect_err("truncated key");
    assert!(
        matches!(&error, SnapshotError::Corrupt { offset, what }
            if *offset == (HEADER_BYTES + 4 + 7) as u64 && what.contains("the payload ends")),
        "{error}"
    );
}

#[test]
fn the_writer_refuses_what_the_reader_would_refuse() {
    let mut store = KvStore::new();
    store
        .apply(&put_op(b"huge", vec![0; SNAPSHOT_FIELD_BYTES_MAX + 1]))
        .expect("the store itself takes any size");
    let error = store
        .snapshot_view()
        .write_to(&mut io::sink())
        .expect_err("beyond the snapshot's limit");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}

/// `(mod_revision, live: (create_revision, version, value))`.
type VersionFields<'a> = (i64, Option<(i64, i64, &'a [u8])>);

/// The bytes the hash covers for one key, built by hand from `docs/FORMAT.md`.
fn key_record(key: &[u8], versions: &[VersionFields<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(versions.len() as u32).to_le_bytes());
    for (mod_revision, live) in versions {
        out.extend_from_slice(&mod_revision.to_le_bytes());
        match live {
            None => out.push(0),
            Some((create_revision, version, value)) => {
                out.push(1);
                out.extend_from_slice(&create_revision.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

#[test]
fn hash_kv_is_the_crc32c_of_the_kept_versions_up_to_the_revision() {
    let mut store = KvStore::with_history_revisions(0);
    store.apply(&put_op(b"b", b"1".to_vec())).expect("put"); // 2
    store.apply(&put_op(b"a", b"x".to_vec())).expect("put"); // 3
    store.apply(&put_op(b"b", b"22".to_vec())).expect("put"); // 4
    store.apply(&delete_op(b"a", b"")).expect("delete"); // 5
    let mut at_5 = key_record(b"a", &[(3, Some((3, 1, b"x"))), (5, None)]);
    at_5.extend(key_record(
        b"b",
        &[(2, Some((2, 1, b"1"))), (4, Some((2, 2, b"22")))],
    ));
    assert_eq!(
        store.hash_kv(0),
        Ok(KvHash {
            hash: crc32c::crc32c(&at_5),
            revision: 5,
            compact_revision: -1,
        })
    );
    let mut at_3 = key_record(b"a", &[(3, Some((3, 1, b"x")))]);
    at_3.extend(key_record(b"b", &[(2, Some((2, 1, b"1")))]));
    assert_eq!(
        store.hash_kv(3).map(|hash| hash.hash),
        Ok(crc32c::crc32c(&at_3))
    );
    assert_eq!(
        store.hash_kv(1).map(|hash| hash.hash),
        Ok(0),
        "nothing at 1"
    );
    // At the current revision: the payload's key records, between the header and the lease
    // table (here only its count, 0; then the member table's count, 0).
    let payload = store.snapshot();
    let lease_table = payload.len() - CHECKSUM_BYTES - 4 - 8;
    assert_eq!(&payload[lease_table..lease_table + 8], 0u64.to_le_bytes());
    assert_eq!(&payload[HEADER_BYTES..lease_table], at_5);
}

#[test]
fn hash_kv_takes_etcds_revision_arguments() {
    let mut store = KvStore::with_history_revisions(0);
    for i in 0..6u8 {
        store.apply(&put_op(b"k", vec![i])).expect("put"); // 2..=7
    }
    store.compact(4).expect("compact");
    assert_eq!(store.hash_kv(0).map(|hash| hash.revision), Ok(7));
    assert_eq!(store.hash_kv(0).map(|hash| hash.compact_revision), Ok(4));
    assert_eq!(store.hash_kv(3), Err(KvError::Compacted));
    assert_eq!(store.hash_kv(4).map(|hash| hash.revision), Ok(4));
    assert_eq!(store.hash_kv(7).map(|hash| hash.revision), Ok(7));
    assert_eq!(store.hash_kv(8), Err(KvError::FutureRevision));
    assert_ne!(store.hash_kv(4), store.hash_kv(5));
}

fn entry(index: u64, payload: Vec<u8>) -> LogEntry {
    LogEntry {
        term: Term(1),
        index: LogIndex(index),
        entry_type: EntryType::Normal,
        payload,
    }
}

#[test]
fn hash_kv_is_equal_for_a_replayed_and_a_restored_store() {
    let mut leader = KvStore::with_history_revisions(5);
    let mut replica = KvStore::with_history_revisions(5);
    let mut restored_midway = None;
    for i in 0..40u64 {
        let op = if i % 7 == 3 {
            delete_op(&[b'a' + (i % 4) as u8], b"")
        } else {
            put_op(&[b'a' + (i % 5) as u8], i.to_le_bytes().to_vec())
        };
        let _ = leader.apply(&op);
        let _ = StateMachine::apply(&mut replica, &entry(i + 1, encode_command(&op)));
        if i == 20 {
            restored_midway = Some((restore(&leader.snapshot()).expect("restore"), i));
        }
    }
    // One store restored at step 20 and then fed the rest of the log like the others.
    let (mut late, from) = restored_midway.expect("restored at step 20");
    for i in from + 1..40 {
        let op = if i % 7 == 3 {
            delete_op(&[b'a' + (i % 4) as u8], b"")
        } else {
            put_op(&[b'a' + (i % 5) as u8], i.to_le_bytes().to_vec())
        };
        let _ = late.apply(&op);
    }
    let restored = restore(&leader.snapshot()).expect("restore");
    let hash = leader.hash_kv(0).expect("hash");
    assert_eq!(replica.hash_kv(0), Ok(hash));
    assert_eq!(restored.hash_kv(0), Ok(hash));
    assert_eq!(late.hash_kv(0), Ok(hash));
    for revision in leader.compact_revision()..=leader.revision() {
        assert_eq!(
            late.hash_kv(revision),
            leader.hash_kv(revision),
            "at {revision}"
        );
    }
}

#[test]
fn hash_kv_differs_after_one_differing_put() {
    let mut one = sample();
    let mut other = sample();
    assert_eq!(one.hash_kv(0), other.hash_kv(0));
    let before = one.revision();
    one.apply(&put_op(b"b", b"one".to_vec())).expect("put");
    other.apply(&put_op(b"b", b"other".to_vec())).expect("put");
    assert_eq!(one.revision(), other.revision());
    assert_ne!(
        one.hash_kv(0).map(|hash| hash.hash),
        other.hash_kv(0).map(|hash| hash.hash)
    );
    // Up to the revision before the differing put they still agree.
    assert_eq!(one.hash_kv(before), other.hash_kv(before));
}

/// A store with two leases, keys attached to them, one revoked lease's keys gone.
fn leased_sample() -> KvStore {
    let mut store = KvStore::with_history_revisions(0);
    store.lease_grant(7, 60).expect("grant");
    store.lease_grant(9, 5).expect("grant");
    store.lease_grant(11, 5).expect("grant");
    for (key, lease) in [("a", 7), ("b", 9), ("c", 0), ("d", 11)] {
        let put = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                lease,
                ..PutRequest::default()
            })),
        };
        store.apply(&put).expect("put");
    }
    store.lease_revoke(11).expect("revoke");
    store
}

#[test]
fn leases_and_their_keys_survive_a_round_trip() {
    let store = leased_sample();
    let restored = restore(&store.snapshot()).expect("restore");
    restored.check_invariants();
    assert_eq!(restored, store);
    assert_eq!(restored.leases().collect::<Vec<_>>(), vec![(7, 60), (9, 5)]);
    assert_eq!(restored.lease_keys(7), vec![b"a".to_vec()]);
    assert_eq!(restored.lease_keys(9), vec![b"b".to_vec()]);
    // The restored store revokes like the original: the key goes, at one new revision.
    let mut restored = restored;
    let revision = restored.revision();
    restored.lease_revoke(9).expect("revoke");
    assert_eq!(restored.revision(), revision + 1);
    let range = restored
        .range(&RangeRequest {
            key: b"b".to_vec(),
            ..RangeRequest::default()
        })
        .expect("range");
    assert!(range.kvs.is_empty(), "{range:?}");
}

/// `store`'s payload as format 1 wrote it: the same bytes without the lease and member tables,
/// with version 1 in the header. Only valid for a store without leases or members.
fn as_format_1(store: &KvStore) -> Vec<u8> {
    assert_eq!(store.leases().count(), 0);
    assert!(store.member_table().is_empty());
    let bytes = store.snapshot();
    let mut old = bytes[..bytes.len() - CHECKSUM_BYTES - 4 - 8].to_vec();
    old[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1u32.to_le_bytes());
    let checksum = crc32c::crc32c(&old);
    old.extend_from_slice(&checksum.to_le_bytes());
    old
}

#[test]
fn format_1_payloads_still_load_as_stores_without_leases() {
    let store = sample();
    let old = as_format_1(&store);
    let restored = restore(&old).expect("a format 1 payload loads");
    restored.check_invariants();
    assert_eq!(restored, store);
    assert_eq!(restored.hash_kv(0), store.hash_kv(0));
}

#[test]
fn an_unknown_format_version_is_refused_by_name() {
    let mut bytes = sample().snapshot();
    bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&4u32.to_le_bytes());
    let text = restore(&bytes).expect_err("version 4").to_string();
    assert!(text.contains("unknown format version 4"), "{text}");
    assert!(text.contains("1 to 3"), "{text}");
}

#[test]
fn a_key_attached_to_a_lease_the_table_lacks_is_corrupt() {
    let store = leased_sample();
    let bytes = store.snapshot();
    // Drop lease 9 from the table (the last 16 bytes before the empty member table) and fix the
    // count.
    let body_end = bytes.len() - CHECKSUM_BYTES - 4;
    let table_start = body_end - 8 - 2 * 16;
    let mut damaged = bytes[..table_start].to_vec();
    damaged.extend_from_slice(&1u64.to_le_bytes());
    damaged.extend_from_slice(&bytes[table_start + 8..table_start + 8 + 16]);
    damaged.extend_from_slice(&0u32.to_le_bytes());
    let checksum = crc32c::crc32c(&damaged);
    damaged.extend_from_slice(&checksum.to_le_bytes());
    let text = restore(&damaged)
        .expect_err("key b names lease 9")
        .to_string();
    assert!(text.contains("lease 9"), "{text}");
}

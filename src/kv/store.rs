//! [`KvStore`]: the in-memory MVCC key-value store with etcd's semantics.
//!
//! Layout: every key maps to its history, a vector of versions in increasing `mod_revision`; a
//! version is either live (value, `create_revision`, `version`) or a tombstone (the key was deleted
//! at that revision). A queue of `(revision, key)` in write order says which keys a compaction has
//! to visit, so compaction costs what it removes, not the size of the store.
//!
//! The map is persistent (`imbl::OrdMap`, a B+ tree of up to 16 entries per node, nodes shared
//! behind `Arc`s); keys and values are `Arc<[u8]>`. Cloning the map is one reference count, and a
//! write copies only the nodes on its path that a clone still shares: the leaf (its keys' `Arc`s
//! and its histories' vectors, whose values stay shared) and the branches above it. That is what
//! makes [`KvStore::snapshot_view`] O(1): the view keeps the map of that moment while the store
//! goes on (see `snapshot.rs`). With no view alive nothing is shared and a write copies nothing.
//!
//! Measured with `cost_tests` (100,000 keys, thread CPU time, on a 2-core machine shared with
//! other builds) against the previous `BTreeMap<Vec<u8>, Vec<Version>>`: three sets of 9 to 15
//! interleaved runs put the median ratio of a put's cost at 0.98, 1.00 and 1.11, of a single-key
//! range at 0.92 to 1.03 (the same-code baseline row itself moved by up to 1.2 between the two
//! binaries). Keeping each history behind its own `Arc` (a copied leaf then bumps 16 counts
//! instead of cloning 16 vectors) measured 1.02 to 1.14 on puts and 1.06 to 1.14 on ranges, and
//! helped only while a view is alive: a put that is the first in its leaf since the view cost
//! about 5.8 µs with inline histories and 3.9 µs with `Arc`ed ones (1.5 µs with no view), while
//! over one view held for 200,000 puts the two were alike (about 2.1 to 2.5 µs). Views are
//! occasional and puts are not, so histories are inline. Measured again on 2026-12-07, with the
//! node snapshotting about once a second (3 interleaved runs each, 2 cores, load 3.4 to 6.6; the
//! medians over runs of each run's median): `Arc`ed histories took 0.78x the CPU of inline ones
//! for a put first in its leaf since a view (6.7 against 8.5 µs), but 1.32x for a put without a
//! view (2.8 against 2.1 µs) and 1.37x over one view held for 200,000 puts (4.9 against 3.6 µs):
//! still inline. (BENCHMARKS.md, "Snapshot cost", has the runs.)
//!
//! Invariants (checked by `check_invariants` in tests):
//! - `revision >= 1`; `-1 <= compact_revision <= revision` (-1: never compacted).
//! - Every history is non-empty, strictly increasing in `mod_revision`, every `mod_revision <=
//!   revision`, and does not start with a tombstone at or below `compact_revision`.
//! - A live version's `create_revision <= mod_revision` and `version >= 1`; consecutive live
//!   versions of one incarnation share `create_revision` and have increasing versions; a new
//!   incarnation has `create_revision == mod_revision`.
//! - `size_bytes` is the sum of [`version_size_bytes`] over all stored versions.
//! - The change queue holds one `(mod_revision, key)` per stored version above `compact_revision`,
//!   in non-decreasing revision order.
//!
//! Writes run inside a write transaction at revision `revision + 1`. Every version a transaction
//! adds also enters the change queue, so the queue's tail since the transaction began is its undo
//! log: an error anywhere in a Txn rolls every key back exactly (etcd checks a Txn before executing
//! it; rolling back also covers the cases no check foresees).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use super::sink::SinkSlot;
use super::KvError;
use crate::etcdpb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::etcdpb::mvccpb::KeyValue;

/// How many revisions of history the store keeps by default: reads at `revision - 100_000` or
/// later are served, older ones answer "compacted". 100,000 superseded versions of 8-byte keys
/// with 256-byte values are about 30 MB of keys and values (`size_bytes`), plus heap overhead.
pub const HISTORY_REVISIONS_DEFAULT: i64 = 100_000;

/// The revision of an empty store (etcd's).
pub(super) const REVISION_INITIAL: i64 = 1;

/// Bytes counted per stored version besides its key and value (revisions, version, the vector
/// slot), so that `size_bytes` grows with history even for empty values.
const VERSION_OVERHEAD_BYTES: i64 = 32;

/// A key as the store holds it: shared by the map, the change queue and snapshot views.
pub(super) type Key = Arc<[u8]>;

/// A key's versions in increasing `mod_revision`, inline in the map's leaf: copying a shared leaf
/// clones its vectors (the values inside stay shared). See the module docs for why not an `Arc`.
pub(super) type History = Vec<Version>;

/// Every key with its history, in key order.
pub(super) type KeyMap = OrdMap<Key, History>;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Version {
    pub(super) mod_revision: i64,
    /// `None`: the key was deleted at `mod_revision`.
    pub(super) live: Option<Live>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Live {
    pub(super) create_revision: i64,
    pub(super) version: i64,
    /// The lease the key is attached to at this version (0: none).
    pub(super) lease: i64,
    /// Shared: a copied leaf (copy on write) and an `ignore_value` put copy only the pointer.
    pub(super) value: Arc<[u8]>,
}

/// Every lease by ID, in ID order. Persistent like [`KeyMap`], so a snapshot view clones it in
/// O(1).
pub(super) type LeaseMap = OrdMap<i64, LeaseState>;

/// A lease as the replicated state knows it: its granted TTL and the keys attached to it. Its
/// deadline is not here: expiry is decided by the leader's clock, outside the log (see
/// `crate::etcd::lease`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LeaseState {
    /// The TTL granted, in seconds (already raised to the minimum by the proposer).
    pub(super) ttl_s: i64,
    /// The keys whose newest version is live and names this lease. Derived from the key map
    /// (`check_invariants` recomputes it); kept so that a revoke costs its keys, not the store.
    pub(super) keys: imbl::OrdSet<Key>,
}

/// etcd's `MaxLeaseTTL`: a grant above it answers "too large lease TTL".
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;

/// The key-value state machine. See the [module docs](super) for the semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    pub(super) revision: i64,
    /// Reads below this revision answer `Compacted`; -1 before the first compaction (etcd's value).
    pub(super) compact_revision: i64,
    /// Automatic compaction keeps this many revisions; 0 keeps everything.
    pub(super) history_revisions: i64,
    pub(super) keys: KeyMap,
    /// One entry per stored version above `compact_revision`, in write order: the keys a
    /// compaction up to a revision must visit.
    pub(super) changes: VecDeque<(i64, Key)>,
    pub(super) size_bytes: i64,
    pub(super) leases: LeaseMap,
    /// Peer URLs of members added at run time (`super::members`): replicated, in snapshots, never
    /// in the key space.
    pub(super) members: super::MemberTable,
    /// Who hears each commit's events (the watch hub); not part of the state (see `events.rs`).
    pub(super) sink: SinkSlot,
    /// Cloned into every snapshot view: a count above 1 means a view may still share the map's
    /// nodes, so that a write that may change nothing should look before it asks for a mutable
    /// path (which copies the shared nodes on it). Not part of the state (all tokens are equal).
    pub(super) views: Arc<()>,
}

/// A write transaction in progress at revision `rev`.
struct WriteTxn {
    rev: i64,
    changed: bool,
    /// Length of the change queue when the transaction began: the entries after it are the
    /// versions this transaction added (compaction only runs at commit).
    changes_len: usize,
    size_bytes: i64,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new()
    }
}

impl KvStore {
    /// An empty store at revision 1 keeping [`HISTORY_REVISIONS_DEFAULT`] revisions of history.
    pub fn new() -> KvStore {
        KvStore::with_history_revisions(HISTORY_REVISIONS_DEFAULT)
    }

    /// An empty store that compacts automatically to keep `history_revisions` revisions (0: keep
    /// all history until an explicit compaction, as etcd does by default). Every replica of a
    /// cluster must use the same value: compaction changes what reads answer.
    pub fn with_history_revisions(history_revisions: i64) -> KvStore {
        assert!(
            history_revisions >= 0,
            "history_revisions must not be negative: {history_revisions}"
        );
        KvStore {
            revision: REVISION_INITIAL,
            compact_revision: -1,
            history_revisions,
            keys: KeyMap::new(),
            changes: VecDeque::new(),
            size_bytes: 0,
            leases: LeaseMap::new(),
            members: super::MemberTable::new(),
            sink: SinkSlot::default(),
            views: Arc::default(),
        }
    }

    /// The member address registry (`super::members`): node id -> peer URLs.
    pub fn member_table(&self) -> &super::MemberTable {
        &self.members
    }

    /// The current store revision (1 for an empty store; +1 per write that changed something).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction (-1 before any): reads below it answer `Compacted`.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Logical size of the stored data in bytes: keys and values of every version kept, plus a
    /// fixed overhead per version. Reported as etcd's `dbSize`.
    pub fn size_bytes(&self) -> i64 {
        self.size_bytes
    }

    /// Serves a read at the current or an older revision. The response header carries only the
    /// store revision; the node fills cluster id, member id and raft term.
    ///
    /// # Errors
    /// `EmptyKey`; `FutureRevision`/`Compacted` for a revision outside the history kept.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        if request.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        let at = self.read_revision(request.revision, self.revision)?;
        Ok(self.range_at(request, at, self.revision))
    }

    /// Applies one committed operation (put, delete range, txn, or a range read through the log).
    /// Either the whole operation takes effect at revision `revision() + 1` (or nothing changes and
    /// the revision stays), or it fails and the store is exactly as before.
    ///
    /// # Errors
    /// etcd's errors for the operation (`LeaseNotFound`, `KeyNotFound` for `ignore_value` on a
    /// missing key, `EmptyKey`, revision errors of ranges inside a txn).
    pub fn apply(&mut self, op: &RequestOp) -> Result<ResponseOp, KvError> {
        // etcd evaluates every compare of a Txn, nested ones included, on the state before the Txn
        // runs, then executes the chosen branches; the path records those choices in order.
        let mut path = Vec::new();
        if let Some(Request::RequestTxn(txn)) = &op.request {
            self.txn_path(txn, &mut path);
        }
        let mut txn = self.begin();
        let mut path = path.into_iter();
        match self.apply_op(&mut txn, op, &mut path) {
            Ok(response) => {
                assert!(
                    path.next().is_none(),
                    "txn execution consumed fewer compare results than were computed"
                );
                self.commit(txn);
                Ok(response)
            }
            Err(error) => {
                self.rollback(txn);
                Err(error)
            }
        }
    }

    /// Compacts the history: reads below `revision` will answer `Compacted`; the state at
    /// `revision` and later stays readable.
    ///
    /// # Errors
    /// `Compacted` if `revision` is not above the last compaction, `FutureRevision` if it is above
    /// the current revision (etcd's checks, in etcd's order).
    pub fn compact(&mut self, revision: i64) -> Result<CompactionResponse, KvError> {
        if revision <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        self.compact_to(revision);
        Ok(CompactionResponse {
            header: header(self.revision),
        })
    }

    /// Maps a request's `revision` to the revision to read at (`None`: the newest state), given
    /// the `current` revision of the reader (inside a write txn that already wrote, the txn's).
    fn read_revision(&self, revision: i64, current: i64) -> Result<Option<i64>, KvError> {
        if revision <= 0 {
            return Ok(None);
        }
        if revision > current {
            return Err(KvError::FutureRevision);
        }
        if revision < self.compact_revision {
            return Err(KvError::Compacted);
        }
        Ok(Some(revision))
    }

    /// The keys of `[key, range_end)` with etcd's conventions, with their histories.
    fn scan<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Key, &'a History)> + 'a {
        // A single key is one search; `range(key..=key)` would search twice (both bounds).
        let single = if range_end.is_empty() {
            self.keys.get_key_value(key)
        } else {
            None
        };
        let bounds = if range_end.is_empty() {
            None
        } else {
            range_bounds(key, range_end)
        };
        single.into_iter().chain(
            bounds
                .into_iter()
                .flat_map(move |bounds| self.keys.range::<_, [u8]>(bounds)),
        )
    }

    fn range_at(&self, request: &RangeRequest, at: Option<i64>, observed: i64) -> RangeResponse {
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        // etcd reads everything when it must sort or filter and truncates afterwards; otherwise it
        // reads one key beyond the limit to learn `more`. `count` is always the whole range.
        let fetch_max = if request.sort_order() != SortOrder::None || filtered {
            usize::MAX
        } else if request.limit > 0 {
            usize::try_from(request.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        } else {
            usize::MAX
        };
        let mut count: i64 = 0;
        let mut kvs = Vec::new();
        for (key, history) in self.scan(&request.key, &request.range_end) {
            let Some(kv) = visible(key, history, at) else {
                continue;
            };
            count += 1;
            if !request.count_only && kvs.len() < fetch_max {
                kvs.push(kv);
            }
        }
        let bounds_ok = |kv: &KeyValue| {
            (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
                && (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
                && (request.max_create_revision == 0
                    || kv.create_revision <= request.max_create_revision)
                && (request.min_create_revision == 0
                    || kv.create_revision >= request.min_create_revision)
        };
        if filtered {
            kvs.retain(bounds_ok);
        }
        sort_kvs(&mut kvs, request.sort_order(), request.sort_target());
        let mut more = false;
        if request.limit > 0 {
            let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        RangeResponse {
            header: header(observed),
            kvs,
            more,
            count,
        }
    }

    fn txn_path(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn.compare.iter().all(|compare| self.compare(compare));
        path.push(succeeded);
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.txn_path(nested, path);
            }
        }
    }

    /// etcd's compare: it must hold for every key of the range; on a range without keys it is
    /// evaluated against an all-zero record, except that a VALUE compare then always fails (a
    /// missing value cannot be told from an empty one).
    fn compare(&self, compare: &Compare) -> bool {
        let mut any = false;
        for (key, history) in self.scan(&compare.key, &compare.range_end) {
            if let Some(kv) = visible(key, history, None) {
                any = true;
                if !compare_kv(compare, &kv) {
                    return false;
                }
            }
        }
        if any {
            return true;
        }
        compare.target() != CompareTarget::Value && compare_kv(compare, &KeyValue::default())
    }

    fn begin(&self) -> WriteTxn {
        WriteTxn {
            rev: self.revision + 1,
            changed: false,
            changes_len: self.changes.len(),
            size_bytes: self.size_bytes,
        }
    }

    fn commit(&mut self, txn: WriteTxn) {
        if !txn.changed {
            return;
        }
        self.revision = txn.rev;
        self.reattach_leases(txn.changes_len);
        // Before compaction: the versions this revision replaced may be compacted right below.
        self.publish_events(txn.rev, txn.changes_len);
        if self.history_revisions > 0 {
            let target = self.revision - self.history_revisions;
            if target > self.compact_revision {
                self.compact_to(target);
            }
        }
    }

    fn rollback(&mut self, txn: WriteTxn) {
        // Each queue entry since `changes_len` is one version this transaction pushed (a second
        // write of a key in the transaction replaced that version in place), so popping one
        // version per entry restores every history.
        while self.changes.len() > txn.changes_len {
            let Some((revision, key)) = self.changes.pop_back() else {
                break;
            };
            let history = self
                .keys
                .get_mut(&*key)
                .unwrap_or_else(|| panic!("rollback: no history for {key:?}"));
            let popped = history.pop();
            assert!(
                popped.as_ref().is_some_and(|v| v.mod_revision == revision),
                "rollback of revision {revision} popped {popped:?} of {key:?}"
            );
            if history.is_empty() {
                self.keys.remove(&*key);
            }
        }
        self.size_bytes = txn.size_bytes;
    }

    fn apply_op(
        &mut self,
        txn: &mut WriteTxn,
        op: &RequestOp,
        path: &mut std::vec::IntoIter<bool>,
    ) -> Result<ResponseOp, KvError> {
        let response = match &op.request {
            Some(Request::RequestRange(range)) => {
                if range.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                // etcd: a write txn that already wrote reads at its own, new revision.
                let current = if txn.changed { txn.rev } else { self.revision };
                let at = self.read_revision(range.revision, current)?;
                Response::ResponseRange(self.range_at(range, at, current))
            }
            Some(Request::RequestPut(put)) => Response::ResponsePut(self.put(txn, put)?),
            Some(Request::RequestDeleteRange(delete)) => {
                Response::ResponseDeleteRange(self.delete(txn, delete)?)
            }
            Some(Request::RequestTxn(nested)) => {
                Response::ResponseTxn(self.txn(txn, nested, path)?)
            }
            // etcd answers an op without a request with "key not found".
            None => return Err(KvError::KeyNotFound),
        };
        Ok(ResponseOp {
            response: Some(response),
        })
    }

    fn put(&mut self, txn: &mut WriteTxn, put: &PutRequest) -> Result<PutResponse, KvError> {
        if put.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(KvError::LeaseNotFound);
        }
        // One map search for a put to an existing key: the store is in the path of every write.
        let KvStore {
            keys,
            changes,
            size_bytes,
            ..
        } = self;
        if let Some((key, history)) = keys.get_key_value_mut(put.key.as_slice()) {
            let (live, prev_kv) = next_live(put, txn.rev, last_live(history))?;
            push_version(history, changes, size_bytes, txn, key, Some(live));
            return Ok(PutResponse {
                header: header(txn.rev),
                prev_kv,
            });
        }
        let (live, prev_kv) = next_live(put, txn.rev, None)?;
        let key = Key::from(put.key.as_slice());
        let mut history = Vec::with_capacity(1);
        push_version(&mut history, changes, size_bytes, txn, &key, Some(live));
        keys.insert(key, history);
        Ok(PutResponse {
            header: header(txn.rev),
            prev_kv,
        })
    }

    fn delete(
        &mut self,
        txn: &mut WriteTxn,
        delete: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, KvError> {
        if delete.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        let deleted: Vec<KeyValue> = self
            .scan(&delete.key, &delete.range_end)
            .filter_map(|(key, history)| visible(key, history, None))
            .collect();
        for kv in &deleted {
            self.tombstone(txn, &kv.key);
        }
        Ok(DeleteRangeResponse {
            header: header(if txn.changed { txn.rev } else { self.revision }),
            deleted: i64::try_from(deleted.len()).unwrap_or(i64::MAX),
            prev_kvs: if delete.prev_kv { deleted } else { Vec::new() },
        })
    }

    fn txn(
        &mut self,
        write: &mut WriteTxn,
        txn: &TxnRequest,
        path: &mut std::vec::IntoIter<bool>,
    ) -> Result<TxnResponse, KvError> {
        let succeeded = path
            .next()
            .expect("txn_path computes one compare result per txn the execution visits");
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.apply_op(write, op, path)?);
        }
        Ok(TxnResponse {
            header: header(if write.changed {
                write.rev
            } else {
                self.revision
            }),
            succeeded,
            responses,
        })
    }

    /// Records the deletion of `key`, which exists, at the transaction's revision (see
    /// [`push_version`]).
    fn tombstone(&mut self, txn: &mut WriteTxn, key: &[u8]) {
        let (key, history) = self
            .keys
            .get_key_value_mut(key)
            .unwrap_or_else(|| panic!("tombstone of {key:?}: the key has no history"));
        push_version(
            history,
            &mut self.changes,
            &mut self.size_bytes,
            txn,
            key,
            None,
        );
    }

    /// Moves each key the committed transaction wrote from the lease of its previous version to
    /// the lease of its new one. Done once at commit, from the versions the transaction pushed
    /// (the change queue's tail since `changes_len`), so a rolled-back transaction has nothing to
    /// undo here; and before compaction, which may drop the previous versions.
    fn reattach_leases(&mut self, changes_len: usize) {
        if self.leases.is_empty() {
            return;
        }
        let KvStore {
            keys,
            changes,
            leases,
            ..
        } = self;
        for (revision, key) in changes.range(changes_len..) {
            let Some(history) = keys.get(&**key) else {
                continue;
            };
            let lease_of = |version: Option<&Version>| {
                version
                    .and_then(|version| version.live.as_ref())
                    .map_or(0, |live| live.lease)
            };
            let new = lease_of(history.last());
            let before = history
                .len()
                .checked_sub(2)
                .and_then(|i| history.get(i))
                .filter(|version| version.mod_revision < *revision);
            let old = lease_of(before);
            if old == new {
                continue;
            }
            if let Some(lease) = leases.get_mut(&old) {
                lease.keys.remove(&**key);
            }
            if let Some(lease) = leases.get_mut(&new) {
                lease.keys.insert(Arc::clone(key));
            }
        }
    }

    /// Grants lease `id` with a TTL of `ttl_s` seconds (the proposer chose the ID and applied the
    /// minimum TTL; a TTL below 1 is taken as 1 so that a lease always lives a moment). The
    /// revision does not change: a lease is not a key.
    ///
    /// # Errors
    /// `LeaseTtlTooLarge` above [`LEASE_TTL_MAX_S`], `LeaseExists` for an ID in use, and
    /// `BadCommand` for ID 0 (the proposer always picks one).
    pub fn lease_grant(&mut self, id: i64, ttl_s: i64) -> Result<LeaseGrantResponse, KvError> {
        if id == 0 {
            return Err(KvError::BadCommand {
                reason: "a lease grant without an ID".to_owned(),
            });
        }
        if ttl_s > LEASE_TTL_MAX_S {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists);
        }
        let ttl_s = ttl_s.max(1);
        self.leases.insert(
            id,
            LeaseState {
                ttl_s,
                keys: imbl::OrdSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: header(self.revision),
            id,
            ttl: ttl_s,
            error: String::new(),
        })
    }

    /// Revokes lease `id`: every key attached to it is deleted in one write transaction, at one
    /// revision (none if no key is attached), exactly as a delete of those keys would be.
    ///
    /// # Errors
    /// `LeaseNotFound`.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, KvError> {
        let Some(lease) = self.leases.remove(&id) else {
            return Err(KvError::LeaseNotFound);
        };
        let mut txn = self.begin();
        for key in &lease.keys {
            self.tombstone(&mut txn, key);
        }
        self.commit(txn);
        Ok(LeaseRevokeResponse {
            header: header(self.revision),
        })
    }

    /// The granted TTL of lease `id`, in seconds, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|lease| lease.ttl_s)
    }

    /// The keys attached to lease `id`, in key order (empty for a missing lease).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|lease| lease.keys.iter().map(|key| key.to_vec()).collect())
            .unwrap_or_default()
    }

    /// Every lease as `(id, granted TTL in seconds)`, in ID order.
    pub fn leases(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(id, lease)| (*id, lease.ttl_s))
    }

    fn compact_to(&mut self, revision: i64) {
        assert!(
            revision > self.compact_revision && revision <= self.revision,
            "compaction to {revision} outside ({}, {}]",
            self.compact_revision,
            self.revision
        );
        self.compact_revision = revision;
        while self
            .changes
            .front()
            .is_some_and(|(changed, _)| *changed <= revision)
        {
            let Some((_, key)) = self.changes.pop_front() else {
                break;
            };
            self.compact_key(&key, revision);
        }
    }

    /// Drops the versions of `key` that no read at `revision` or later can see: every version
    /// superseded at or before `revision`, and the newest one too if it is a tombstone.
    fn compact_key(&mut self, key: &[u8], revision: i64) {
        // While a snapshot view may be alive, decide on a shared reference first: `get_mut`
        // copies the leaf and branches the view still shares, and many keys compaction visits
        // have nothing to drop (those not written since: with 100,000 keys written uniformly at
        // random and 100,000 revisions kept, e^-1, about a third). Without a view, one search.
        if Arc::strong_count(&self.views) > 1
            && self
                .keys
                .get(key)
                .is_none_or(|history| compaction_drop(history, revision) == 0)
        {
            return;
        }
        let Some(history) = self.keys.get_mut(key) else {
            return;
        };
        let drop = compaction_drop(history, revision);
        if drop == 0 {
            return;
        }
        let freed: i64 = history[..drop]
            .iter()
            .map(|version| version_size_bytes(key, version))
            .sum();
        history.drain(..drop);
        self.size_bytes -= freed;
        if history.is_empty() {
            self.keys.remove(key);
        }
    }

    /// Asserts the invariants of the module docs (O(size); tests call it after every step).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert!(
            self.revision >= REVISION_INITIAL,
            "revision {}",
            self.revision
        );
        assert!(
            self.compact_revision <= self.revision,
            "compact {} > revision {}",
            self.compact_revision,
            self.revision
        );
        let mut size = 0;
        for (key, history) in &self.keys {
            assert!(!history.is_empty(), "empty history for {key:?}");
            for pair in history.windows(2) {
                assert!(
                    pair[0].mod_revision < pair[1].mod_revision,
                    "history of {key:?} not increasing: {history:?}"
                );
                match (&pair[0].live, &pair[1].live) {
                    // The same incarnation: +1 per revision (a key written twice in one txn
                    // skips a version).
                    (Some(a), Some(b)) if a.create_revision == b.create_revision => {
                        assert!(a.version < b.version, "{key:?}: {history:?}");
                    }
                    // A new incarnation (after a tombstone, or a delete and a put in one txn),
                    // at version 1, or more if one txn put the key several times.
                    (_, Some(b)) => {
                        assert!(b.version >= 1, "{key:?}: {history:?}");
                        assert_eq!(b.create_revision, pair[1].mod_revision, "{key:?}");
                    }
                    (_, None) => {}
                }
            }
            let first = &history[0];
            assert!(
                !(first.live.is_none() && first.mod_revision <= self.compact_revision),
                "{key:?} keeps a compacted tombstone: {history:?}"
            );
            for version in history.iter() {
                assert!(
                    version.mod_revision <= self.revision,
                    "{key:?}: {history:?}"
                );
                if let Some(live) = &version.live {
                    assert!(live.create_revision <= version.mod_revision, "{key:?}");
                    assert!(live.version >= 1, "{key:?}");
                }
                size += version_size_bytes(key, version);
            }
        }
        assert_eq!(size, self.size_bytes, "size_bytes out of step");
        let mut attached: std::collections::BTreeMap<i64, Vec<Key>> =
            self.leases.keys().map(|id| (*id, Vec::new())).collect();
        for (key, history) in &self.keys {
            if let Some(live) = history.last().and_then(|version| version.live.as_ref()) {
                if live.lease != 0 {
                    attached
                        .get_mut(&live.lease)
                        .unwrap_or_else(|| {
                            panic!(
                                "{key:?} is attached to lease {} that does not exist",
                                live.lease
                            )
                        })
                        .push(Arc::clone(key));
                }
            }
        }
        for (id, keys) in attached {
            let indexed: Vec<Key> = self.leases[&id].keys.iter().cloned().collect();
            assert_eq!(indexed, keys, "the key set of lease {id} is out of step");
        }
        let above_compaction = self
            .keys
            .values()
            .flat_map(|history| history.iter())
            .filter(|version| version.mod_revision > self.compact_revision)
            .count();
        assert_eq!(
            self.changes.len(),
            above_compaction,
            "the change queue must hold one entry per version above the compaction point"
        );
        assert!(
            self.changes
                .iter()
                .zip(self.changes.iter().skip(1))
                .all(|(a, b)| a.0 <= b.0),
            "the change queue must be in revision order"
        );
    }
}

/// How many of a history's oldest versions a compaction at `revision` drops: every version
/// superseded at or before `revision`, and the newest one at or below it too if it is a tombstone.
fn compaction_drop(history: &[Version], revision: i64) -> usize {
    let at_or_below = history.partition_point(|version| version.mod_revision <= revision);
    if at_or_below == 0 {
        return 0;
    }
    if history[at_or_below - 1].live.is_none() {
        at_or_below
    } else {
        at_or_below - 1
    }
}

/// Appends a version of `key` at the transaction's revision to its `history`, with its change-queue
/// entry. A second write of the same key in one transaction replaces the first in place (one
/// version per key and revision, one queue entry per version).
fn push_version(
    history: &mut Vec<Version>,
    changes: &mut VecDeque<(i64, Key)>,
    size_bytes: &mut i64,
    txn: &mut WriteTxn,
    key: &Key,
    live: Option<Live>,
) {
    let version = Version {
        mod_revision: txn.rev,
        live,
    };
    let added = version_size_bytes(key, &version);
    match history.last_mut() {
        Some(last) if last.mod_revision == txn.rev => {
            *size_bytes -= version_size_bytes(key, last);
            *last = version;
        }
        _ => {
            history.push(version);
            changes.push_back((txn.rev, Arc::clone(key)));
        }
    }
    *size_bytes += added;
    txn.changed = true;
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

pub(super) fn version_size_bytes(key: &[u8], version: &Version) -> i64 {
    let value = version.live.as_ref().map_or(0, |live| live.value.len());
    i64::try_from(key.len() + value).unwrap_or(i64::MAX / 4) + VERSION_OVERHEAD_BYTES
}

/// The record of `key` visible at revision `at` (`None`: newest), if the key was live then.
fn visible(key: &[u8], history: &[Version], at: Option<i64>) -> Option<KeyValue> {
    let version = match at {
        None => history.last()?,
        Some(at) => {
            let at_or_below = history.partition_point(|version| version.mod_revision <= at);
            history.get(at_or_below.checked_sub(1)?)?
        }
    };
    let live = version.live.as_ref()?;
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision: version.mod_revision,
        version: live.version,
        value: live.value.to_vec(),
        lease: live.lease,
    })
}

/// The newest version of a history if it is live: `(mod_revision, record)`.
fn last_live(history: &[Version]) -> Option<(i64, &Live)> {
    let version = history.last()?;
    version
        .live
        .as_ref()
        .map(|live| (version.mod_revision, live))
}

/// The record a put writes at revision `rev` over `prev` (the key's live record, if any), and the
/// previous record if the put asked for it.
///
/// # Errors
/// `KeyNotFound` for `ignore_value`/`ignore_lease` on a key that is not live.
fn next_live(
    put: &PutRequest,
    rev: i64,
    prev: Option<(i64, &Live)>,
) -> Result<(Live, Option<KeyValue>), KvError> {
    let Some((prev_mod_revision, prev_live)) = prev else {
        if put.ignore_value || put.ignore_lease {
            return Err(KvError::KeyNotFound);
        }
        let live = Live {
            create_revision: rev,
            version: 1,
            lease: put.lease,
            value: Arc::from(put.value.as_slice()),
        };
        return Ok((live, None));
    };
    let prev_kv = put.prev_kv.then(|| KeyValue {
        key: put.key.clone(),
        create_revision: prev_live.create_revision,
        mod_revision: prev_mod_revision,
        version: prev_live.version,
        value: prev_live.value.to_vec(),
        lease: prev_live.lease,
    });
    let live = Live {
        create_revision: prev_live.create_revision,
        version: prev_live.version + 1,
        // etcd: a put without `ignore_lease` sets the lease it names, 0 detaching the key.
        lease: if put.ignore_lease {
            prev_live.lease
        } else {
            put.lease
        },
        value: if put.ignore_value {
            Arc::clone(&prev_live.value)
        } else {
            Arc::from(put.value.as_slice())
        },
    };
    Ok((live, prev_kv))
}

/// A key range as `BTreeMap::range` takes it.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// etcd's key-range conventions as map bounds; `None` for a range that holds no key.
/// - empty `range_end`: the single key `key` ([`KvStore::scan`] looks it up directly);
/// - `range_end == "\0"`: every key `>= key` (so `key == "\0"` with it means all keys);
/// - otherwise `[key, range_end)`, empty when `range_end <= key`.
fn range_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// etcd's sort step: with no order but a target other than KEY it sorts ascending; KEY ascending
/// is the scan order already. The sort is stable, so ties stay in key order (etcd's Go sort is not
/// stable: its order of ties is unspecified).
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let by_target = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| by_target(b, a)),
        _ => kvs.sort_by(by_target),
    }
}

/// One compare against one record. An operand of another kind than the target (or none) counts
/// as zero / empty, as in etcd.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let int_operand = |want: fn(&TargetUnion) -> Option<i64>| {
        compare.target_union.as_ref().and_then(want).unwrap_or(0)
    };
    let ordering = match compare.target() {
        CompareTarget::Value => {
            let operand: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(operand)
        }
        CompareTarget::Version => kv.version.cmp(&int_operand(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&int_operand(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_operand(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int_operand(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match compare.result() {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

// The node shares the store with its gRPC handlers across threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<KvStore>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::compare::{CompareResult as R, CompareTarget as T};

    fn put_op(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..PutRequest::default()
            })),
        }
    }

    fn delete_op(key: &str, range_end: &str, prev_kv: bool) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end.as_bytes().to_vec(),
                prev_kv,
            })),
        }
    }

    fn range_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            })),
        }
    }

    fn txn_op(
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare,
                success,
                failure,
            })),
        }
    }

    fn put(store: &mut KvStore, key: &str, value: &str) -> PutResponse {
        match apply(store, &put_op(key, value)) {
            Response::ResponsePut(put) => put,
            other => panic!("put answered {other:?}"),
        }
    }

    fn apply(store: &mut KvStore, op: &RequestOp) -> Response {
        let response = store
            .apply(op)
            .unwrap_or_else(|error| panic!("{op:?} failed: {error}"));
        store.check_invariants();
        response.response.expect("a response for every op")
    }

    fn txn(store: &mut KvStore, op: &RequestOp) -> TxnResponse {
        match apply(store, op) {
            Response::ResponseTxn(txn) => txn,
            other => panic!("txn answered {other:?}"),
        }
    }

    fn get(store: &KvStore, key: &str) -> Option<KeyValue> {
        let response = store.range(&request(key, "")).expect("range");
        assert!(response.kvs.len() <= 1);
        response.kvs.into_iter().next()
    }

    fn request(key: &str, range_end: &str) -> RangeRequest {
        RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..RangeRequest::default()
        }
    }

    fn keys(response: &RangeResponse) -> Vec<String> {
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn revision_of(header: &Option<ResponseHeader>) -> i64 {
        header.as_ref().map_or(-100, |header| header.revision)
    }

    /// A store holding a=1 (rev 2), b=2 (rev 3), c=3 (rev 4), b=22 (rev 5), d="" (rev 6).
    fn abcd() -> KvStore {
        let mut store = KvStore::new();
        for (key, value) in [("a", "1"), ("b", "2"), ("c", "3"), ("b", "22"), ("d", "")] {
            put(&mut store, key, value);
        }
        store
    }

    #[test]
    fn an_empty_store_is_at_revision_one() {
        let store = KvStore::new();
        assert_eq!(store.revision(), 1);
        let all = store.range(&request("\0", "\0")).expect("range");
        assert_eq!((all.kvs.len(), all.count, all.more), (0, 0, false));
        assert_eq!(revision_of(&all.header), 1);
        assert_eq!(store.size_bytes(), 0);
    }

    #[test]
    fn puts_advance_the_revision_and_count_versions() {
        let mut store = KvStore::new();
        let first = put(&mut store, "k", "v1");
        assert_eq!(revision_of(&first.header), 2);
        put(&mut store, "other", "x");
        put(&mut store, "k", "v2");
        let kv = get(&store, "k").expect("k exists");
        assert_eq!(
            (
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.value.as_slice()
            ),
            (2, 4, 2, b"v2".as_slice())
        );
        assert_eq!(kv.lease, 0);
        assert_eq!(store.revision(), 4);
    }

    #[test]
    fn a_delete_resets_the_key_and_a_recreated_key_starts_at_version_one() {
        let mut store = KvStore::new();
        put(&mut store, "k", "v1");
        put(&mut store, "k", "v2");
        let Response::ResponseDeleteRange(deleted) = apply(&mut store, &delete_op("k", "", false))
        else {
            panic!("not a delete response");
        };
        assert_eq!(deleted.deleted, 1);
        assert_eq!(revision_of(&deleted.header), 4);
        assert_eq!(get(&store, "k"), None);
        put(&mut store, "k", "v3");
        let kv = get(&store, "k").expect("k recreated");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn a_delete_that_matches_nothing_changes_no_revision() {
        let mut store = abcd();
        let before = store.clone();
        let Response::ResponseDeleteRange(deleted) = apply(&mut store, &delete_op("x", "z", true))
        else {
            panic!("not a delete response");
        };
        assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (0, 0));
        assert_eq!(revision_of(&deleted.header), 6);
        assert_eq!(store, before);
    }

    #[test]
    fn delete_range_removes_every_key_in_range_at_one_revision_with_prev_kvs() {
        let mut store = abcd();
        let Response::ResponseDeleteRange(deleted) = apply(&mut store, &delete_op("b", "d", true))
        else {
            panic!("not a delete response");
        };
        assert_eq!(deleted.deleted, 2);
        let prev: Vec<_> = deleted
            .prev_kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision))
            .collect();
        assert_eq!(
            prev,
            vec![
                (b"b".to_vec(), b"22".to_vec(), 5),
                (b"c".to_vec(), b"3".to_vec(), 4)
            ]
        );
        assert_eq!(store.revision(), 7);
        let all = store.range(&request("\0", "\0")).expect("range");
        assert_eq!(keys(&all), vec!["a", "d"]);
        // Without prev_kv only the count comes back.
        let Response::ResponseDeleteRange(deleted) = apply(&mut store, &delete_op("a", "", false))
        else {
            panic!("not a delete response");
        };
        assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (1, 0));
    }

    #[test]
    fn range_modes_follow_etcds_key_conventions() {
        let mut store = abcd();
        put(&mut store, "ab", "x");
        put(&mut store, "a\u{7f}", "y");
        let cases: &[(&str, &str, &[&str])] = &[
            ("b", "", &["b"]),                                    // single key
            ("zz", "", &[]),                                      // missing single key
            ("a", "c", &["a", "ab", "a\u{7f}", "b"]),             // [key, range_end)
            ("a", "b", &["a", "ab", "a\u{7f}"]),                  // prefix "a": range_end = "a" + 1
            ("b", "\0", &["b", "c", "d"]),                        // from key
            ("\0", "\0", &["a", "ab", "a\u{7f}", "b", "c", "d"]), // all keys
            ("c", "b", &[]),                                      // range_end before key
            ("c", "c", &[]),                                      // empty interval
        ];
        for (key, range_end, want) in cases {
            let response = store.range(&request(key, range_end)).expect("range");
            assert_eq!(keys(&response), *want, "range {key:?}..{range_end:?}");
            assert_eq!(
                response.count,
                want.len() as i64,
                "count of {key:?}..{range_end:?}"
            );
            assert!(!response.more);
        }
    }

    #[test]
    fn limit_truncates_sets_more_and_leaves_count_whole() {
        let store = abcd();
        let mut limited = request("\0", "\0");
        limited.limit = 2;
        let response = store.range(&limited).expect("range");
        assert_eq!(keys(&response), vec!["a", "b"]);
        assert!(response.more);
        assert_eq!(response.count, 4);
        limited.limit = 4;
        let response = store.range(&limited).expect("range");
        assert_eq!(
            (response.kvs.len(), response.more, response.count),
            (4, false, 4)
        );
    }

    #[test]
    fn count_only_and_keys_only() {
        let store = abcd();
        let mut counted = request("a", "c");
        counted.count_only = true;
        counted.limit = 1;
        let response = store.range(&counted).expect("range");
        assert_eq!(
            (response.kvs.len(), response.count, response.more),
            (0, 2, false)
        );
        let mut keys_only = request("a", "c");
        keys_only.keys_only = true;
        let response = store.range(&keys_only).expect("range");
        assert_eq!(keys(&response), vec!["a", "b"]);
        assert!(response.kvs.iter().all(|kv| kv.value.is_empty()));
        assert_eq!(response.kvs[1].version, 2, "keys_only keeps the metadata");
    }

    #[test]
    fn sort_orders_every_target_and_sorts_before_the_limit() {
        let store = abcd(); // a: v1 c2 m2 "1"; b: v2 c3 m5 "22"; c: v1 c4 m4 "3"; d: v1 c6 m6 ""
        let sorted = |order: SortOrder, target: SortTarget, limit: i64| {
            let mut request = request("\0", "\0");
            request.sort_order = order as i32;
            request.sort_target = target as i32;
            request.limit = limit;
            keys(&store.range(&request).expect("range"))
        };
        use SortOrder::{Ascend as Up, Descend as Down, None as Unsorted};
        assert_eq!(sorted(Down, SortTarget::Key, 0), ["d", "c", "b", "a"]);
        assert_eq!(sorted(Up, SortTarget::Key, 0), ["a", "b", "c", "d"]);
        // Ties keep key order (stable sort), whatever the direction.
        assert_eq!(sorted(Down, SortTarget::Version, 0), ["b", "a", "c", "d"]);
        assert_eq!(sorted(Up, SortTarget::Create, 0), ["a", "b", "c", "d"]);
        assert_eq!(sorted(Up, SortTarget::Mod, 0), ["a", "c", "b", "d"]);
        assert_eq!(sorted(Down, SortTarget::Mod, 0), ["d", "b", "c", "a"]);
        assert_eq!(sorted(Up, SortTarget::Value, 0), ["d", "a", "b", "c"]);
        // Sorting happens over the whole range, then the limit cuts: the two newest keys.
        assert_eq!(sorted(Down, SortTarget::Mod, 2), ["d", "b"]);
        // A target other than KEY with order NONE sorts ascending, but (etcd's quirk) only over
        // the limit + 1 keys read in key order: a, b, c by mod revision is a, c, b.
        assert_eq!(sorted(Unsorted, SortTarget::Mod, 2), ["a", "c"]);
        assert_eq!(sorted(Unsorted, SortTarget::Mod, 0), ["a", "c", "b", "d"]);
    }

    #[test]
    fn revision_filters_drop_keys_but_not_count() {
        let store = abcd();
        let mut filtered = request("\0", "\0");
        filtered.min_mod_revision = 4;
        filtered.max_mod_revision = 5;
        let response = store.range(&filtered).expect("range");
        assert_eq!(keys(&response), vec!["b", "c"]);
        assert_eq!(response.count, 4);
        let mut filtered = request("\0", "\0");
        filtered.min_create_revision = 3;
        filtered.max_create_revision = 4;
        filtered.limit = 1;
        let response = store.range(&filtered).expect("range");
        assert_eq!(keys(&response), vec!["b"]);
        assert!(response.more);
    }

    #[test]
    fn reads_at_older_revisions_see_the_past() {
        let mut store = abcd();
        apply(&mut store, &delete_op("a", "", false)); // rev 7
        let at = |revision: i64, key: &str| {
            let mut request = request(key, "");
            request.revision = revision;
            store
                .range(&request)
                .expect("range")
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        };
        assert_eq!(at(1, "a"), None);
        assert_eq!(at(2, "a").as_deref(), Some("1"));
        assert_eq!(at(6, "a").as_deref(), Some("1"));
        assert_eq!(at(7, "a"), None);
        assert_eq!(at(4, "b").as_deref(), Some("2"));
        assert_eq!(at(5, "b").as_deref(), Some("22"));
        assert_eq!(at(0, "b").as_deref(), Some("22"));
        let mut future = request("a", "");
        future.revision = 8;
        assert_eq!(store.range(&future), Err(KvError::FutureRevision));
    }

    #[test]
    fn compaction_discards_history_below_its_revision_only() {
        let mut store = KvStore::with_history_revisions(0);
        put(&mut store, "a", "1"); // 2
        put(&mut store, "a", "2"); // 3
        put(&mut store, "b", "1"); // 4
        apply(&mut store, &delete_op("b", "", false)); // 5
        put(&mut store, "a", "3"); // 6
        let size_before = store.size_bytes();
        assert_eq!(store.compact(7), Err(KvError::FutureRevision));
        store.compact(5).expect("compact");
        store.check_invariants();
        assert!(store.size_bytes() < size_before, "compaction freed nothing");
        let read_at = |store: &KvStore, revision: i64| {
            let mut request = request("\0", "\0");
            request.revision = revision;
            store.range(&request).map(|response| keys(&response))
        };
        assert_eq!(read_at(&store, 4), Err(KvError::Compacted));
        assert_eq!(read_at(&store, 5), Ok(vec!["a".to_owned()]));
        let mut at5 = request("a", "");
        at5.revision = 5;
        assert_eq!(store.range(&at5).expect("range").kvs[0].value, b"2");
        assert_eq!(store.compact(5), Err(KvError::Compacted));
        assert_eq!(store.compact(3), Err(KvError::Compacted));
        store.compact(6).expect("compact to current");
        assert_eq!(get(&store, "a").map(|kv| kv.version), Some(3));
        store.check_invariants();
    }

    #[test]
    fn automatic_compaction_keeps_the_configured_history() {
        let mut store = KvStore::with_history_revisions(3);
        for i in 0..10 {
            put(&mut store, "k", &i.to_string()); // revisions 2..=11
        }
        assert_eq!(store.compact_revision(), 8);
        let mut old = request("k", "");
        old.revision = 7;
        assert_eq!(store.range(&old), Err(KvError::Compacted));
        old.revision = 8;
        assert_eq!(store.range(&old).expect("range").kvs[0].value, b"6");
        // Only the versions readable at 8..=11 remain.
        assert_eq!(store.keys[b"k".as_slice()].len(), 4);
    }

    #[test]
    fn put_prev_kv_and_ignore_value() {
        let mut store = KvStore::new();
        let first = put(&mut store, "k", "v1");
        assert_eq!(first.prev_kv, None);
        let mut with_prev = put_op("k", "v2");
        if let Some(Request::RequestPut(put)) = &mut with_prev.request {
            put.prev_kv = true;
        }
        let Response::ResponsePut(second) = apply(&mut store, &with_prev) else {
            panic!("not a put response");
        };
        let prev = second.prev_kv.expect("prev_kv asked for");
        assert_eq!(
            (prev.value.as_slice(), prev.version, prev.mod_revision),
            (b"v1".as_slice(), 1, 2)
        );
        let keep_value = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            })),
        };
        apply(&mut store, &keep_value);
        let kv = get(&store, "k").expect("k");
        assert_eq!(
            (kv.value.as_slice(), kv.version, kv.mod_revision),
            (b"v2".as_slice(), 3, 4)
        );
    }

    #[test]
    fn failing_puts_change_nothing() {
        let mut store = abcd();
        let before = store.clone();
        let missing = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"missing".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            })),
        };
        assert_eq!(store.apply(&missing), Err(KvError::KeyNotFound));
        let leased = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                lease: 42,
                ..PutRequest::default()
            })),
        };
        assert_eq!(store.apply(&leased), Err(KvError::LeaseNotFound));
        assert_eq!(store.apply(&put_op("", "v")), Err(KvError::EmptyKey));
        assert_eq!(
            store.apply(&RequestOp { request: None }),
            Err(KvError::KeyNotFound)
        );
        assert_eq!(store, before);
    }

    #[test]
    fn a_txn_is_one_revision_whatever_its_ops() {
        let mut store = abcd();
        let response = txn(
            &mut store,
            &txn_op(
                vec![],
                vec![
                    put_op("x", "1"),
                    put_op("y", "2"),
                    delete_op("a", "", false),
                ],
                vec![],
            ),
        );
        assert!(response.succeeded);
        assert_eq!(revision_of(&response.header), 7);
        assert_eq!(store.revision(), 7);
        for key in ["x", "y"] {
            let kv = get(&store, key).expect("written");
            assert_eq!((kv.create_revision, kv.mod_revision), (7, 7));
        }
        assert_eq!(get(&store, "a"), None);
        // A txn that only reads changes nothing.
        let response = txn(&mut store, &txn_op(vec![], vec![range_op("x")], vec![]));
        assert_eq!(revision_of(&response.header), 7);
        assert_eq!(store.revision(), 7);
    }

    #[test]
    fn reads_inside_a_txn_see_its_earlier_writes() {
        let mut store = abcd();
        let response = txn(
            &mut store,
            &txn_op(vec![], vec![put_op("a", "new"), range_op("a")], vec![]),
        );
        let Some(Response::ResponseRange(range)) = &response.responses[1].response else {
            panic!("not a range response: {response:?}");
        };
        assert_eq!(range.kvs[0].value, b"new");
        assert_eq!(range.kvs[0].mod_revision, 7);
        assert_eq!(revision_of(&range.header), 7);
        // After a write, the txn's own new revision is readable by number, the one before it
        // shows the old state, and the one after is in the future.
        let at = |revision: i64| RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                revision,
                ..RangeRequest::default()
            })),
        };
        let response = txn(
            &mut store,
            &txn_op(vec![], vec![put_op("a", "newer"), at(8), at(7)], vec![]),
        );
        let values: Vec<_> = response.responses[1..]
            .iter()
            .map(|op| match &op.response {
                Some(Response::ResponseRange(range)) => range.kvs[0].value.clone(),
                other => panic!("not a range response: {other:?}"),
            })
            .collect();
        assert_eq!(values, [b"newer".to_vec(), b"new".to_vec()]);
        let before = store.clone();
        let future = txn_op(vec![], vec![put_op("a", "x"), at(10)], vec![]);
        assert_eq!(store.apply(&future), Err(KvError::FutureRevision));
        assert_eq!(store, before);
    }

    fn compare(key: &str, result: R, target: T, operand: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(operand),
            range_end: Vec::new(),
        }
    }

    #[test]
    fn compare_results_for_every_target() {
        let store = abcd(); // b: version 2, create 3, mod 5, value "22", lease 0
        let operands = [
            (
                T::Value,
                TargetUnion::Value(b"22".to_vec()),
                TargetUnion::Value(b"3".to_vec()),
                TargetUnion::Value(b"1".to_vec()),
            ),
            (
                T::Version,
                TargetUnion::Version(2),
                TargetUnion::Version(3),
                TargetUnion::Version(1),
            ),
            (
                T::Create,
                TargetUnion::CreateRevision(3),
                TargetUnion::CreateRevision(4),
                TargetUnion::CreateRevision(2),
            ),
            (
                T::Mod,
                TargetUnion::ModRevision(5),
                TargetUnion::ModRevision(6),
                TargetUnion::ModRevision(4),
            ),
            (
                T::Lease,
                TargetUnion::Lease(0),
                TargetUnion::Lease(1),
                TargetUnion::Lease(-1),
            ),
        ];
        for (target, equal, above, below) in operands {
            let cases = [
                (R::Equal, &equal, true),
                (R::Equal, &above, false),
                (R::NotEqual, &equal, false),
                (R::NotEqual, &below, true),
                (R::Greater, &below, true),
                (R::Greater, &equal, false),
                (R::Less, &above, true),
                (R::Less, &equal, false),
            ];
            for (result, operand, want) in cases {
                let c = compare("b", result, target, operand.clone());
                assert_eq!(store.compare(&c), want, "{target:?} {result:?} {operand:?}");
            }
        }
    }

    #[test]
    fn compares_on_missing_keys_and_ranges() {
        let store = abcd();
        // A missing key compares as version/create/mod 0, but a VALUE compare always fails.
        assert!(store.compare(&compare(
            "zz",
            R::Equal,
            T::Version,
            TargetUnion::Version(0)
        )));
        assert!(store.compare(&compare(
            "zz",
            R::Equal,
            T::Create,
            TargetUnion::CreateRevision(0)
        )));
        assert!(!store.compare(&compare(
            "zz",
            R::Equal,
            T::Value,
            TargetUnion::Value(Vec::new())
        )));
        assert!(!store.compare(&compare(
            "zz",
            R::NotEqual,
            T::Value,
            TargetUnion::Value(b"x".to_vec())
        )));
        // Over a range every key must satisfy the compare: a, b, c have versions 1, 2, 1.
        let mut over = compare("a", R::Less, T::Version, TargetUnion::Version(3));
        over.range_end = b"d".to_vec();
        assert!(store.compare(&over));
        over.target_union = Some(TargetUnion::Version(2));
        assert!(!store.compare(&over));
        // An operand of another kind than the target counts as zero.
        let mismatched = compare("a", R::Greater, T::Version, TargetUnion::ModRevision(100));
        assert!(store.compare(&mismatched));
    }

    #[test]
    fn txn_runs_the_failure_branch_when_a_compare_fails() {
        let mut store = abcd();
        let op = txn_op(
            vec![
                compare("a", R::Equal, T::Value, TargetUnion::Value(b"1".to_vec())),
                compare("b", R::Equal, T::Version, TargetUnion::Version(1)),
            ],
            vec![put_op("s", "yes")],
            vec![put_op("f", "no"), range_op("a")],
        );
        let response = txn(&mut store, &op);
        assert!(!response.succeeded);
        assert_eq!(response.responses.len(), 2);
        assert!(get(&store, "s").is_none());
        assert_eq!(get(&store, "f").map(|kv| kv.value), Some(b"no".to_vec()));
    }

    #[test]
    fn nested_txn_compares_see_the_state_before_the_outer_txn() {
        let mut store = abcd();
        // The outer success puts a=2 first; the nested compare a == "1" still holds (etcd
        // evaluates every compare before executing), so the nested success branch runs.
        let nested = txn_op(
            vec![compare(
                "a",
                R::Equal,
                T::Value,
                TargetUnion::Value(b"1".to_vec()),
            )],
            vec![put_op("n", "then")],
            vec![put_op("n", "else")],
        );
        let response = txn(
            &mut store,
            &txn_op(vec![], vec![put_op("a", "2"), nested], vec![]),
        );
        let Some(Response::ResponseTxn(inner)) = &response.responses[1].response else {
            panic!("not a txn response: {response:?}");
        };
        assert!(inner.succeeded);
        assert_eq!(get(&store, "n").map(|kv| kv.value), Some(b"then".to_vec()));
        assert_eq!(store.revision(), 7);
    }

    #[test]
    fn a_failing_op_rolls_the_whole_txn_back() {
        let mut store = abcd();
        let before = store.clone();
        let leased = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"z".to_vec(),
                lease: 9,
                ..PutRequest::default()
            })),
        };
        let op = txn_op(
            vec![],
            vec![
                put_op("a", "changed"),
                delete_op("b", "", false),
                put_op("new", "x"),
                leased,
            ],
            vec![],
        );
        assert_eq!(store.apply(&op), Err(KvError::LeaseNotFound));
        assert_eq!(store, before);
        store.check_invariants();
        // The store carries on normally afterwards.
        assert_eq!(revision_of(&put(&mut store, "a", "next").header), 7);
    }

    #[test]
    fn a_key_written_twice_in_one_txn_keeps_one_version_per_revision() {
        let mut store = abcd();
        txn(
            &mut store,
            &txn_op(vec![], vec![put_op("a", "x"), put_op("a", "y")], vec![]),
        );
        let kv = get(&store, "a").expect("a");
        assert_eq!(
            (kv.value.as_slice(), kv.version, kv.mod_revision),
            (b"y".as_slice(), 3, 7)
        );
        txn(
            &mut store,
            &txn_op(
                vec![],
                vec![delete_op("a", "", false), put_op("a", "z")],
                vec![],
            ),
        );
        let kv = get(&store, "a").expect("a");
        assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 8, 8));
    }

    #[test]
    fn range_errors() {
        let store = abcd();
        assert_eq!(store.range(&request("", "")), Err(KvError::EmptyKey));
    }

    fn leased_put(key: &str, value: &str, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                lease,
                ..PutRequest::default()
            })),
        }
    }

    #[test]
    fn grant_checks_the_id_and_the_ttl_and_keeps_the_revision() {
        let mut store = abcd();
        let granted = store.lease_grant(5, 60).expect("grant");
        assert_eq!((granted.id, granted.ttl), (5, 60));
        assert_eq!(revision_of(&granted.header), 6);
        assert_eq!(store.revision(), 6, "a grant writes no key");
        assert_eq!(store.lease_grant(5, 10), Err(KvError::LeaseExists));
        assert_eq!(
            store.lease_grant(6, LEASE_TTL_MAX_S + 1),
            Err(KvError::LeaseTtlTooLarge)
        );
        assert!(matches!(
            store.lease_grant(0, 10),
            Err(KvError::BadCommand { .. })
        ));
        // The TTL floor of the store is one second; the proposer applies etcd's minimum.
        assert_eq!(store.lease_grant(7, 0).map(|r| r.ttl), Ok(1));
        assert_eq!(
            store.lease_grant(8, LEASE_TTL_MAX_S).map(|r| r.ttl),
            Ok(LEASE_TTL_MAX_S)
        );
        assert_eq!(
            store.leases().map(|(id, _)| id).collect::<Vec<_>>(),
            [5, 7, 8]
        );
        store.check_invariants();
    }

    #[test]
    fn puts_attach_detach_and_keep_leases_like_etcd() {
        let mut store = abcd();
        store.lease_grant(1, 60).expect("grant");
        store.lease_grant(2, 60).expect("grant");
        apply(&mut store, &leased_put("a", "x", 1));
        assert_eq!(get(&store, "a").map(|kv| kv.lease), Some(1));
        assert_eq!(store.lease_keys(1), [b"a".to_vec()]);
        // Another lease replaces the attachment.
        apply(&mut store, &leased_put("a", "y", 2));
        assert_eq!(store.lease_keys(1), Vec::<Vec<u8>>::new());
        assert_eq!(store.lease_keys(2), [b"a".to_vec()]);
        // ignore_lease keeps it, prev_kv reports it.
        let keep = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                value: b"z".to_vec(),
                ignore_lease: true,
                prev_kv: true,
                ..PutRequest::default()
            })),
        };
        let Response::ResponsePut(kept) = apply(&mut store, &keep) else {
            panic!("not a put response");
        };
        assert_eq!(kept.prev_kv.map(|kv| kv.lease), Some(2));
        assert_eq!(get(&store, "a").map(|kv| kv.lease), Some(2));
        // A put without a lease detaches.
        put(&mut store, "a", "plain");
        assert_eq!(get(&store, "a").map(|kv| kv.lease), Some(0));
        assert!(store.lease_keys(2).is_empty());
        // A delete detaches.
        apply(&mut store, &leased_put("b", "x", 2));
        apply(&mut store, &delete_op("b", "", false));
        assert!(store.lease_keys(2).is_empty());
        // A missing lease fails the put and changes nothing.
        let before = store.clone();
        assert_eq!(
            store.apply(&leased_put("c", "x", 3)),
            Err(KvError::LeaseNotFound)
        );
        assert_eq!(store, before);
    }

    #[test]
    fn a_rolled_back_txn_leaves_the_lease_attachments_alone() {
        let mut store = abcd();
        store.lease_grant(1, 60).expect("grant");
        apply(&mut store, &leased_put("c", "x", 1));
        let before = store.clone();
        let op = txn_op(
            vec![],
            vec![
                leased_put("a", "x", 1),
                delete_op("c", "", false),
                leased_put("b", "x", 99),
            ],
            vec![],
        );
        assert_eq!(store.apply(&op), Err(KvError::LeaseNotFound));
        assert_eq!(store, before);
        assert_eq!(store.lease_keys(1), [b"c".to_vec()]);
        store.check_invariants();
    }

    #[test]
    fn txn_lease_compares_see_the_keys_lease() {
        let mut store = abcd();
        store.lease_grant(4, 60).expect("grant");
        apply(&mut store, &leased_put("a", "x", 4));
        let on_lease = |id| compare("a", R::Equal, T::Lease, TargetUnion::Lease(id));
        assert!(store.compare(&on_lease(4)));
        assert!(!store.compare(&on_lease(0)));
        let response = txn(
            &mut store,
            &txn_op(vec![on_lease(4)], vec![put_op("hit", "1")], vec![]),
        );
        assert!(response.succeeded);
    }

    #[test]
    fn revoke_deletes_every_attached_key_at_one_revision() {
        let mut store = abcd(); // revision 6
        store.lease_grant(1, 60).expect("grant");
        store.lease_grant(2, 60).expect("grant");
        let op = txn_op(
            vec![],
            vec![
                leased_put("x", "1", 1),
                leased_put("y", "2", 1),
                leased_put("z", "3", 2),
            ],
            vec![],
        );
        txn(&mut store, &op); // revision 7
        apply(&mut store, &leased_put("a", "new", 1)); // revision 8
        let revoked = store.lease_revoke(1).expect("revoke");
        assert_eq!(revision_of(&revoked.header), 9);
        assert_eq!(store.revision(), 9);
        for key in ["a", "x", "y"] {
            assert_eq!(get(&store, key), None, "{key} outlived its lease");
        }
        assert_eq!(get(&store, "z").map(|kv| kv.lease), Some(2));
        assert_eq!(store.lease_ttl(1), None);
        // The deletions are ordinary tombstones at the one revision: history still reads them.
        let mut at8 = request("a", "");
        at8.revision = 8;
        assert_eq!(store.range(&at8).expect("range").kvs[0].value, b"new");
        for key in ["a", "x", "y"] {
            let history = &store.keys[key.as_bytes()];
            let last = history.last().expect("a version");
            assert_eq!((last.mod_revision, last.live.is_none()), (9, true), "{key}");
        }
        store.check_invariants();
        assert_eq!(store.lease_revoke(1), Err(KvError::LeaseNotFound));
        // A lease without keys is revoked without a new revision.
        store.lease_grant(3, 60).expect("grant");
        store.lease_revoke(3).expect("revoke");
        assert_eq!(store.revision(), 9);
    }

    #[test]
    fn lease_commands_are_deterministic_across_replicas() {
        use crate::etcdpb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
        use crate::kv::{encode_lease_grant, encode_lease_revoke};
        use crate::state_machine::StateMachine;
        use crate::types::{EntryType, LogEntry, LogIndex, Term};
        let mut payloads = Vec::new();
        for i in 0..40i64 {
            payloads.push(match i % 5 {
                0 => encode_lease_grant(&LeaseGrantRequest {
                    id: i % 3 + 1,
                    ttl: i,
                }),
                1 | 2 => crate::kv::encode_command(&leased_put(
                    ["a", "b", "c"][(i % 3) as usize],
                    "v",
                    i % 4,
                )),
                3 => crate::kv::encode_command(&delete_op("a", "", false)),
                _ => encode_lease_revoke(&LeaseRevokeRequest { id: i % 3 + 1 }),
            });
        }
        let run = || {
            let mut store = KvStore::new();
            let answers: Vec<_> = payloads
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    let entry = LogEntry {
                        term: Term(1),
                        index: LogIndex(i as u64 + 1),
                        entry_type: EntryType::Normal,
                        payload: payload.clone(),
                    };
                    let answer = StateMachine::apply(&mut store, &entry);
                    store.check_invariants();
                    answer
                })
                .collect();
            (store, answers)
        };
        let (a, answers_a) = run();
        let (b, answers_b) = run();
        assert_eq!(answers_a, answers_b);
        assert_eq!(a, b);
        use crate::state_machine::Snapshot;
        assert!(a.snapshot() == b.snapshot(), "equal stores, equal bytes");
    }
}

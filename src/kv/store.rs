//! [`KvStore`]: the in-memory MVCC key-value store with etcd's semantics.
//!
//! Layout: every key maps to its history, a vector of versions in increasing `mod_revision`; a
//! version is either live (value, `create_revision`, `version`) or a tombstone (the key was deleted
//! at that revision). A queue of `(revision, key)` in write order says which keys a compaction has
//! to visit, so compaction costs what it removes, not the size of the store.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - `revision >= 1`; `compact_revision < revision` or both are the initial values.
//! - Every history is non-empty, strictly increasing in `mod_revision`, every `mod_revision <=
//!   revision`, and does not start with a tombstone at or below `compact_revision`.
//! - A live version's `create_revision <= mod_revision` and `version >= 1`; consecutive live
//!   versions of one incarnation count up by one.
//! - `size_bytes` is the sum of [`version_size_bytes`] over all stored versions.
//!
//! Writes run inside a write transaction at revision `revision + 1`: the first time a key is touched
//! its history length is recorded, so an error anywhere in a Txn rolls every key back exactly
//! (etcd checks a Txn before executing it; rolling back also covers the cases no check foresees).

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use super::KvError;
use crate::etcd::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::etcd::pb::mvccpb::KeyValue;

/// How many revisions of history the store keeps by default: reads at `revision - 100_000` or
/// later are served, older ones answer "compacted". 100,000 revisions of 256-byte values cost
/// about 30 MiB.
pub const HISTORY_REVISIONS_DEFAULT: i64 = 100_000;

/// Bytes counted per stored version besides its key and value (revisions, version, the vector
/// slot), so that `size_bytes` grows with history even for empty values.
const VERSION_OVERHEAD_BYTES: i64 = 32;

/// The store revision of an empty store, as in etcd.
const REVISION_INITIAL: i64 = 1;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    mod_revision: i64,
    /// `None`: the key was deleted at `mod_revision`.
    live: Option<Live>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Live {
    create_revision: i64,
    version: i64,
    value: Vec<u8>,
}

/// The key-value state machine. See the [module docs](super) for the semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    revision: i64,
    /// Reads below this revision answer `Compacted`; -1 before the first compaction (etcd's value).
    compact_revision: i64,
    /// Automatic compaction keeps this many revisions; 0 keeps everything.
    history_revisions: i64,
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Every write, in order: the keys a compaction up to a revision must visit.
    changes: VecDeque<(i64, Vec<u8>)>,
    size_bytes: i64,
}

/// A write transaction in progress at revision `rev`.
struct WriteTxn {
    rev: i64,
    changed: bool,
    /// `(key, history length before this transaction)`, one per key the transaction touched.
    undo: Vec<(Vec<u8>, usize)>,
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
            keys: BTreeMap::new(),
            changes: VecDeque::new(),
            size_bytes: 0,
        }
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
        let at = self.read_revision(request.revision)?;
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

    /// Maps a request's `revision` to the revision to read at: `None` for the newest state.
    fn read_revision(&self, revision: i64) -> Result<Option<i64>, KvError> {
        if revision <= 0 {
            return Ok(None);
        }
        if revision > self.revision {
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
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<Version>)> + 'a {
        range_bounds(key, range_end)
            .into_iter()
            .flat_map(move |bounds| self.keys.range::<[u8], _>(bounds))
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

    /// The newest live record of `key`, including writes of the transaction in progress.
    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.keys
            .get_key_value(key)
            .and_then(|(key, history)| visible(key, history, None))
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
            undo: Vec::new(),
            changes_len: self.changes.len(),
            size_bytes: self.size_bytes,
        }
    }

    fn commit(&mut self, txn: WriteTxn) {
        if !txn.changed {
            return;
        }
        self.revision = txn.rev;
        if self.history_revisions > 0 {
            let target = self.revision - self.history_revisions;
            if target > self.compact_revision {
                self.compact_to(target);
            }
        }
    }

    fn rollback(&mut self, txn: WriteTxn) {
        for (key, len) in txn.undo.into_iter().rev() {
            if len == 0 {
                self.keys.remove(&key);
            } else if let Some(history) = self.keys.get_mut(&key) {
                history.truncate(len);
            }
        }
        self.changes.truncate(txn.changes_len);
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
                let at = self.read_revision(range.revision)?;
                let observed = if txn.changed { txn.rev } else { self.revision };
                Response::ResponseRange(self.range_at(range, at, observed))
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
        if put.lease != 0 {
            return Err(KvError::LeaseNotFound);
        }
        let prev = self.latest(&put.key);
        if (put.ignore_value || put.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let value = match (&prev, put.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => put.value.clone(),
        };
        let live = match &prev {
            Some(prev) => Live {
                create_revision: prev.create_revision,
                version: prev.version + 1,
                value,
            },
            None => Live {
                create_revision: txn.rev,
                version: 1,
                value,
            },
        };
        self.write(txn, &put.key, Some(live));
        Ok(PutResponse {
            header: header(txn.rev),
            prev_kv: if put.prev_kv { prev } else { None },
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
            self.write(txn, &kv.key, None);
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

    /// Records a new version of `key` at the transaction's revision. A second write of the same
    /// key in one transaction replaces the first (one version per key and revision).
    fn write(&mut self, txn: &mut WriteTxn, key: &[u8], live: Option<Live>) {
        let version = Version {
            mod_revision: txn.rev,
            live,
        };
        let added = version_size_bytes(key, &version);
        let history = self.keys.entry(key.to_vec()).or_default();
        match history.last_mut() {
            Some(last) if last.mod_revision == txn.rev => {
                self.size_bytes -= version_size_bytes(key, last);
                *last = version;
            }
            _ => {
                txn.undo.push((key.to_vec(), history.len()));
                history.push(version);
                self.changes.push_back((txn.rev, key.to_vec()));
            }
        }
        self.size_bytes += added;
        txn.changed = true;
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
        let Some(history) = self.keys.get_mut(key) else {
            return;
        };
        let at_or_below = history.partition_point(|version| version.mod_revision <= revision);
        if at_or_below == 0 {
            return;
        }
        let newest_is_tombstone = history[at_or_below - 1].live.is_none();
        let drop = if newest_is_tombstone {
            at_or_below
        } else {
            at_or_below - 1
        };
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
                if let (Some(a), Some(b)) = (&pair[0].live, &pair[1].live) {
                    assert_eq!(a.create_revision, b.create_revision, "{key:?}: {history:?}");
                    assert_eq!(a.version + 1, b.version, "{key:?}: {history:?}");
                }
                if let (None, Some(b)) = (&pair[0].live, &pair[1].live) {
                    assert_eq!(b.version, 1, "{key:?}: {history:?}");
                    assert_eq!(b.create_revision, pair[1].mod_revision, "{key:?}");
                }
            }
            let first = &history[0];
            assert!(
                !(first.live.is_none() && first.mod_revision <= self.compact_revision),
                "{key:?} keeps a compacted tombstone: {history:?}"
            );
            for version in history {
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
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

fn version_size_bytes(key: &[u8], version: &Version) -> i64 {
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
        value: live.value.clone(),
        lease: 0,
    })
}

/// etcd's key-range conventions as map bounds; `None` for a range that holds no key.
/// - empty `range_end`: the single key `key`;
/// - `range_end == "\0"`: every key `>= key` (so `key == "\0"` with it means all keys);
/// - otherwise `[key, range_end)`, empty when `range_end <= key`.
fn range_bounds<'a>(
    key: &'a [u8],
    range_end: &'a [u8],
) -> Option<(Bound<&'a [u8]>, Bound<&'a [u8]>)> {
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

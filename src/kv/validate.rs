//! The checks etcd's gRPC layer makes before a request reaches Raft, with etcd's errors.
//!
//! A request refused here is never proposed, so it has no effect anywhere. The store re-checks
//! what it needs at apply time (a command in the log may not have been validated by this
//! version), so these checks are about answering like etcd, not about the store's safety.

use std::collections::BTreeSet;

use prost::Message;

use super::{KvError, KvLimits};
use crate::etcdpb::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Checks `op` as etcd does before proposing it: empty keys, `ignore_value` with a value,
/// `ignore_lease` with a lease, the txn op count (per list, nested txns sharing their parent's
/// remaining budget), keys written twice in one txn, then the encoded size.
///
/// # Errors
/// The first violation found, with etcd's error.
pub fn validate(op: &RequestOp, limits: &KvLimits) -> Result<(), KvError> {
    match &op.request {
        Some(Request::RequestRange(range)) => check_range(range)?,
        Some(Request::RequestPut(put)) => check_put(put)?,
        Some(Request::RequestDeleteRange(delete)) => check_delete(delete)?,
        Some(Request::RequestTxn(txn)) => {
            check_txn(txn, limits.txn_ops_max)?;
            // After the per-op checks, as etcd does, so the overlap check never sees a huge txn.
            check_intervals(&txn.success)?;
            check_intervals(&txn.failure)?;
        }
        None => return Err(KvError::KeyNotFound),
    }
    // etcd bounds the encoded Raft request; ours is the RequestOp, a few bytes of framing apart.
    if op.encoded_len() > limits.request_bytes_max {
        return Err(KvError::RequestTooLarge);
    }
    Ok(())
}

fn check_range(range: &RangeRequest) -> Result<(), KvError> {
    if range.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

fn check_put(put: &PutRequest) -> Result<(), KvError> {
    if put.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(delete: &DeleteRangeRequest) -> Result<(), KvError> {
    if delete.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

fn check_txn(txn: &TxnRequest, ops_max: usize) -> Result<(), KvError> {
    let ops = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if ops > ops_max {
        return Err(KvError::TooManyOps);
    }
    if txn.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(Request::RequestRange(range)) => check_range(range)?,
            Some(Request::RequestPut(put)) => check_put(put)?,
            Some(Request::RequestDeleteRange(delete)) => check_delete(delete)?,
            Some(Request::RequestTxn(nested)) => check_txn(nested, ops_max - ops)?,
            None => return Err(KvError::KeyNotFound),
        }
    }
    Ok(())
}

/// A key range a txn deletes: a single key when `range_end` is empty, else `[key, range_end)`
/// compared as plain bytes. Like etcd's check, a range_end of "\0" (from key) is taken literally
/// and so overlaps nothing: etcd accepts such txns, and the store applies them correctly.
struct Deleted {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

impl Deleted {
    fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            self.key == key
        } else {
            self.key.as_slice() <= key && key < self.range_end.as_slice()
        }
    }
}

/// etcd's rule: within one list of ops (and the txns nested in it) no key may be put twice or put
/// inside a deleted range. A nested txn's success and failure branches exclude each other, so a key
/// put in both is fine. Returns the keys put and the ranges deleted, for the parent's check.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Deleted>), KvError> {
    let mut deleted: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(delete)) => Some(Deleted {
                key: delete.key.clone(),
                range_end: delete.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let overlaps = |deleted: &[Deleted], key: &[u8]| deleted.iter().any(|d| d.contains(key));
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_intervals(&nested.success)?;
        let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || overlaps(&deleted, key) {
                return Err(KvError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for key in puts_else {
            let clash = puts.contains(&key) && !puts_then.contains(&key);
            if clash || overlaps(&deleted, &key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key);
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || overlaps(&deleted, &put.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::Compare;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            })),
        }
    }

    fn delete(key: &str, range_end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end.as_bytes().to_vec(),
                prev_kv: false,
            })),
        }
    }

    fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare,
                success,
                failure,
            })),
        }
    }

    fn check(op: &RequestOp) -> Result<(), KvError> {
        validate(op, &KvLimits::default())
    }

    #[test]
    fn empty_keys_are_refused_everywhere() {
        let range = RequestOp {
            request: Some(Request::RequestRange(RangeRequest::default())),
        };
        assert_eq!(check(&range), Err(KvError::EmptyKey));
        assert_eq!(check(&put("")), Err(KvError::EmptyKey));
        assert_eq!(check(&delete("", "")), Err(KvError::EmptyKey));
        let compare = Compare::default();
        assert_eq!(
            check(&txn(vec![compare], vec![], vec![])),
            Err(KvError::EmptyKey)
        );
        assert_eq!(
            check(&txn(vec![], vec![put("")], vec![])),
            Err(KvError::EmptyKey)
        );
    }

    #[test]
    fn ignore_flags_refuse_an_explicit_value_or_lease() {
        let mut op = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..PutRequest::default()
        };
        let wrap = |put: &PutRequest| RequestOp {
            request: Some(Request::RequestPut(put.clone())),
        };
        assert_eq!(check(&wrap(&op)), Err(KvError::ValueProvided));
        op.value.clear();
        assert_eq!(check(&wrap(&op)), Ok(()));
        op.ignore_lease = true;
        op.lease = 5;
        assert_eq!(check(&wrap(&op)), Err(KvError::LeaseProvided));
    }

    #[test]
    fn an_empty_op_is_key_not_found_as_in_etcd() {
        assert_eq!(
            check(&RequestOp { request: None }),
            Err(KvError::KeyNotFound)
        );
        let empty = RequestOp { request: None };
        assert_eq!(
            check(&txn(vec![], vec![empty], vec![])),
            Err(KvError::KeyNotFound)
        );
    }

    #[test]
    fn txn_op_count_is_bounded_per_list_and_nested_txns_share_the_budget() {
        let puts = |prefix: &str, n: usize| {
            (0..n)
                .map(|i| put(&format!("{prefix}{i}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(check(&txn(vec![], puts("k", 128), puts("k", 128))), Ok(()));
        assert_eq!(
            check(&txn(vec![], puts("k", 129), vec![])),
            Err(KvError::TooManyOps)
        );
        // The outer txn uses 100 of 128, so a nested txn may have at most 28 ops per list.
        let mut outer = puts("outer", 99);
        outer.push(txn(vec![], puts("inner", 28), vec![]));
        assert_eq!(check(&txn(vec![], outer.clone(), vec![])), Ok(()));
        outer[99] = txn(vec![], puts("inner", 29), vec![]);
        assert_eq!(check(&txn(vec![], outer, vec![])), Err(KvError::TooManyOps));
    }

    #[test]
    fn a_key_written_twice_in_one_txn_is_a_duplicate() {
        assert_eq!(
            check(&txn(vec![], vec![put("a"), put("a")], vec![])),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(&txn(vec![], vec![delete("a", "c"), put("b")], vec![])),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(&txn(vec![], vec![delete("a", "c"), put("c")], vec![])),
            Ok(())
        );
        // The same key in success and failure: only one branch runs.
        assert_eq!(check(&txn(vec![], vec![put("a")], vec![put("a")])), Ok(()));
        // ... also inside a nested txn, but not against a put of the parent.
        let nested = txn(vec![], vec![put("a")], vec![put("a")]);
        assert_eq!(check(&txn(vec![], vec![nested.clone()], vec![])), Ok(()));
        assert_eq!(
            check(&txn(vec![], vec![nested, put("a")], vec![])),
            Err(KvError::DuplicateKey)
        );
        let nested_delete = txn(vec![], vec![delete("a", "")], vec![]);
        assert_eq!(
            check(&txn(vec![], vec![nested_delete, put("a")], vec![])),
            Err(KvError::DuplicateKey)
        );
    }

    #[test]
    fn requests_above_the_byte_limit_are_too_large() {
        let limits = KvLimits {
            request_bytes_max: 100,
            txn_ops_max: 128,
        };
        let mut op = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 90],
            ..PutRequest::default()
        };
        let wrap = |put: &PutRequest| RequestOp {
            request: Some(Request::RequestPut(put.clone())),
        };
        assert_eq!(validate(&wrap(&op), &limits), Ok(()));
        op.value = vec![7; 100];
        assert_eq!(validate(&wrap(&op), &limits), Err(KvError::RequestTooLarge));
        // The default: 1.5 MiB of value is refused, 1 MiB passes.
        op.value = vec![7; 1_572_864];
        assert_eq!(check(&wrap(&op)), Err(KvError::RequestTooLarge));
        op.value = vec![7; 1 << 20];
        assert_eq!(check(&wrap(&op)), Ok(()));
    }
}

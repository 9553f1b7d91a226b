//! Randomized check of [`KvStore`] against a model that states etcd's rules as plainly as
//! possible: a `BTreeMap` of the current records, a revision counter, and a copy of the map at
//! every revision (for historical reads). Random puts, deletes, ranges, txns and compactions go to
//! the store, to the model, and (as log entry bytes) to a second store; after every step the
//! store must match the model at the newest and at a random older revision, its invariants must
//! hold, the second store must be equal with identical responses (determinism), and a store
//! restored from a snapshot must read the same and give the same HashKV hash.
//!
//! proptest shrinks a failure to a minimal sequence of operations, prints it, and saves the seed
//! under `proptest-regressions/` so the failure reproduces on the next run.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{encode_command, Applied, KvError, KvStore};
use crate::etcdpb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::state_machine::{Snapshot, StateMachine};
use crate::types::{EntryType, LogEntry, LogIndex, Term};

const HISTORY_REVISIONS: i64 = 6;

#[derive(Clone, Debug, PartialEq)]
struct Record {
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    value: Vec<u8>,
}

type State = BTreeMap<Vec<u8>, Record>;

#[derive(Clone, Debug)]
enum Simple {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    /// A put naming a lease: fails, and takes its whole txn down with it.
    LeasedPut(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Step {
    Simple(Simple),
    /// If `key`'s version compares `result` to `version`, run `success`, else `failure`.
    Txn {
        key: Vec<u8>,
        result: CompareResult,
        version: i64,
        success: Vec<Simple>,
        failure: Vec<Simple>,
    },
    Compact(i64),
}

struct Model {
    revision: i64,
    state: State,
    /// `history[r]` is the state at revision r (index 0 unused).
    history: Vec<State>,
}

fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == [0] {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            state: State::new(),
            history: vec![State::new(), State::new()],
        }
    }

    /// Applies a simple op at revision `at`; returns whether it changed anything.
    fn simple(&mut self, op: &Simple, at: i64) -> Result<bool, KvError> {
        Ok(match op {
            Simple::LeasedPut(_) => return Err(KvError::LeaseNotFound),
            Simple::Put(key, value) => {
                let record = match self.state.get(key) {
                    Some(old) => Record {
                        create_revision: old.create_revision,
                        mod_revision: at,
                        version: old.version + 1,
                        value: value.clone(),
                    },
                    None => Record {
                        create_revision: at,
                        mod_revision: at,
                        version: 1,
                        value: value.clone(),
                    },
                };
                self.state.insert(key.clone(), record);
                true
            }
            Simple::Delete(start, range_end) => {
                let before = self.state.len();
                self.state.retain(|key, _| !in_range(key, start, range_end));
                self.state.len() != before
            }
        })
    }

    /// Applies a step; returns the error the store must answer (compactions are not modelled:
    /// their outcome is taken from the store).
    fn step(&mut self, step: &Step) -> Result<(), KvError> {
        let at = self.revision + 1;
        let changed = match step {
            Step::Simple(op) => self.simple(op, at)?,
            Step::Txn {
                key,
                result,
                version,
                success,
                failure,
            } => {
                let current = self.state.get(key).map_or(0, |record| record.version);
                let holds = match result {
                    CompareResult::Equal => current == *version,
                    CompareResult::NotEqual => current != *version,
                    CompareResult::Greater => current > *version,
                    CompareResult::Less => current < *version,
                };
                let ops = if holds { success } else { failure };
                let before = self.state.clone();
                let mut changed = false;
                for op in ops {
                    match self.simple(op, at) {
                        Ok(op_changed) => changed |= op_changed,
                        Err(error) => {
                            // A txn is atomic: nothing of it stays.
                            self.state = before;
                            return Err(error);
                        }
                    }
                }
                changed
            }
            Step::Compact(_) => false,
        };
        if changed {
            self.revision = at;
            self.history.push(self.state.clone());
        }
        Ok(())
    }
}

fn to_op(op: &Simple) -> RequestOp {
    let request = match op {
        Simple::Put(key, value) => Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..PutRequest::default()
        }),
        Simple::Delete(key, range_end) => Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            prev_kv: true,
        }),
        Simple::LeasedPut(key) => Request::RequestPut(PutRequest {
            key: key.clone(),
            value: b"leased".to_vec(),
            lease: 1,
            ..PutRequest::default()
        }),
    };
    RequestOp {
        request: Some(request),
    }
}

fn to_request(step: &Step) -> RequestOp {
    match step {
        Step::Simple(op) => to_op(op),
        Step::Txn {
            key,
            result,
            version,
            success,
            failure,
        } => RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![Compare {
                    result: *result as i32,
                    target: CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::Version(*version)),
                    range_end: Vec::new(),
                }],
                success: success.iter().map(to_op).collect(),
                failure: failure.iter().map(to_op).collect(),
            })),
        },
        Step::Compact(_) => unreachable!("compactions are not RequestOps"),
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "ab", "b", "ba", "c", "d"]).prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "", "b", "c", "e", "\0"]).prop_map(|k| k.as_bytes().to_vec())
}

fn simple() -> impl Strategy<Value = Simple> {
    prop_oneof![
        3 => (key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Simple::Put(k, v)),
        1 => (key(), range_end()).prop_map(|(k, e)| Simple::Delete(k, e)),
        1 => key().prop_map(Simple::LeasedPut),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ]);
    prop_oneof![
        6 => simple().prop_map(Step::Simple),
        3 => (
            key(),
            result,
            0i64..3,
            prop::collection::vec(simple(), 0..4),
            prop::collection::vec(simple(), 0..4),
        )
            .prop_map(|(key, result, version, success, failure)| Step::Txn {
                key,
                result,
                version,
                success,
                failure,
            }),
        1 => (0i64..40).prop_map(Step::Compact),
    ]
}

/// The store's view of `[key, range_end)` at `revision` (0: newest), as model records.
fn read(store: &KvStore, revision: i64) -> Result<State, KvError> {
    let response = store.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    })?;
    assert_eq!(response.count, response.kvs.len() as i64);
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                Record {
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: kv.value,
                },
            )
        })
        .collect())
}

fn entry(index: u64, payload: Vec<u8>) -> LogEntry {
    LogEntry {
        term: Term(1),
        index: LogIndex(index),
        entry_type: EntryType::Normal,
        payload,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_store_follows_the_model(
        steps in prop::collection::vec(step(), 1..60),
        probes in prop::collection::vec(0i64..64, 60),
    ) {
        let mut store = KvStore::with_history_revisions(HISTORY_REVISIONS);
        let mut replica = KvStore::with_history_revisions(HISTORY_REVISIONS);
        let mut model = Model::new();
        for (i, step) in steps.iter().enumerate() {
            let (result, payload) = match step {
                Step::Compact(revision) => {
                    let request = crate::etcdpb::etcdserverpb::CompactionRequest {
                        revision: *revision,
                        physical: false,
                    };
                    (
                        store.compact(*revision).map(Applied::Compact),
                        super::encode_compact(&request),
                    )
                }
                other => {
                    let op = to_request(other);
                    (store.apply(&op).map(Applied::Op), encode_command(&op))
                }
            };
            let replica_result = StateMachine::apply(&mut replica, &entry(i as u64 + 1, payload));
            prop_assert_eq!(&replica_result, &result, "step {} {:?}", i, step);
            let expected = model.step(step);
            if !matches!(step, Step::Compact(_)) {
                prop_assert_eq!(
                    result.as_ref().err(),
                    expected.as_ref().err(),
                    "outcome of step {} {:?}",
                    i,
                    step
                );
            }
            store.check_invariants();
            prop_assert_eq!(&store, &replica, "replicas diverged at step {}", i);
            prop_assert_eq!(store.revision(), model.revision, "revision after step {} {:?}", i, step);
            prop_assert_eq!(read(&store, 0), Ok(model.state.clone()), "state after step {} {:?}", i, step);
            // A read in the past: served from history, or refused below the compaction point.
            let revision = 1 + probes[i] % model.revision;
            let expected = if revision < store.compact_revision() {
                Err(KvError::Compacted)
            } else {
                Ok(model.history[revision as usize].clone())
            };
            prop_assert_eq!(read(&store, revision), expected, "read at {} after step {}", revision, i);
            // A store restored from a snapshot is indistinguishable from the original.
            let mut snapshot = Vec::new();
            prop_assert!(store.snapshot_view().write_to(&mut snapshot).is_ok());
            let restored = KvStore::restore_from(&mut snapshot.as_slice());
            prop_assert!(restored.is_ok(), "restore after step {}: {:?}", i, restored.err());
            let restored = restored.expect("checked");
            restored.check_invariants();
            prop_assert_eq!(restored.snapshot(), snapshot);
            prop_assert_eq!(read(&restored, revision), read(&store, revision));
            prop_assert_eq!(restored.hash_kv(0), store.hash_kv(0));
            prop_assert_eq!(replica.hash_kv(revision), store.hash_kv(revision));
            prop_assert!(
                store.revision() - store.compact_revision() <= HISTORY_REVISIONS
                    || store.compact_revision() < 0,
                "history beyond retention: revision {} compacted {}",
                store.revision(),
                store.compact_revision()
            );
        }
    }
}

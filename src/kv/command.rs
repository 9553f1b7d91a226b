//! The bytes of a key-value command in a log entry, and the typed result of applying one.
//!
//! A command is one kind byte followed by the protobuf encoding of the etcd request:
//!
//! ```text
//! +------+--------------------------------------+
//! | kind | protobuf (prost) of the request      |
//! +------+--------------------------------------+
//!   0x01   etcdserverpb.RequestOp   (put, delete range, txn, range)
//!   0x02   etcdserverpb.CompactionRequest
//!   0x03   etcdserverpb.LeaseGrantRequest   (ID chosen by the proposer, never 0; TTL raised to
//!                                            the minimum by the proposer)
//!   0x04   etcdserverpb.LeaseRevokeRequest  (a client's revoke, or the leader's on expiry)
//!   0x05   etcdserverpb.Member  (a member's peer URLs, `id` = the Raft node id: see
//!                                `super::members`; outside the key space)
//! ```
//!
//! The result of applying an entry ([`KvResponse`]) goes to the proposer as a value, on the same
//! thread (`StateMachine::Response`): it is never encoded.
//!
//! These bytes are replicated and re-applied after restarts, so kinds are never renumbered; new
//! ones get new numbers. Bytes that do not decode yield `KvError::BadCommand` with a reason that
//! depends only on the bytes, so every replica answers the same.

use prost::Message;

use super::{KvError, KvStore};
use crate::etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, Member, RequestOp, ResponseOp,
};
use crate::state_machine::StateMachine;
use crate::types::{EntryType, LogEntry};

const COMMAND_OP: u8 = 0x01;
const COMMAND_COMPACT: u8 = 0x02;
const COMMAND_LEASE_GRANT: u8 = 0x03;
const COMMAND_LEASE_REVOKE: u8 = 0x04;
const COMMAND_MEMBER: u8 = 0x05;

/// A decoded command: what a Normal log entry of the key-value store carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Op(RequestOp),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    /// A member's peer URLs (`super::members`).
    Member(Member),
}

/// The result of applying a command, as the proposer receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    Op(ResponseOp),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// A NoOp entry (a new leader's first entry): nothing changed, nobody waits for it.
    Nothing,
}

/// What [`KvStore`] answers for an applied entry (`StateMachine::Response`).
pub type KvResponse = Result<Applied, KvError>;

/// Bytes a command adds to the encoded request it carries (the kind byte).
pub const COMMAND_FRAMING_BYTES: usize = 1;

/// The log entry payload for a put, delete range, txn (or a range read through the log).
pub fn encode_command(op: &RequestOp) -> Vec<u8> {
    encode_with_kind(COMMAND_OP, op)
}

/// The log entry payload for a compaction (etcd replicates compactions through Raft too).
pub fn encode_compact(request: &CompactionRequest) -> Vec<u8> {
    encode_with_kind(COMMAND_COMPACT, request)
}

/// The log entry payload for a lease grant; `request.id` must be the ID the proposer chose.
pub fn encode_lease_grant(request: &LeaseGrantRequest) -> Vec<u8> {
    assert_ne!(
        request.id, 0,
        "the proposer chooses a lease ID before proposing"
    );
    encode_with_kind(COMMAND_LEASE_GRANT, request)
}

/// The log entry payload for a lease revoke.
pub fn encode_lease_revoke(request: &LeaseRevokeRequest) -> Vec<u8> {
    encode_with_kind(COMMAND_LEASE_REVOKE, request)
}

/// The command payload that records `peer_urls` for `node`: kind `0x05`, then an
/// `etcdserverpb.Member` whose `id` is the Raft node id and whose `peerURLs` are the URLs (the
/// other fields are unused).
pub fn encode_member_record(node: u32, peer_urls: &[String]) -> Vec<u8> {
    let member = Member {
        id: u64::from(node),
        peer_ur_ls: peer_urls.to_vec(),
        ..Member::default()
    };
    encode_with_kind(COMMAND_MEMBER, &member)
}

fn encode_with_kind(kind: u8, message: &impl Message) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(COMMAND_FRAMING_BYTES + message.encoded_len());
    bytes.push(kind);
    message.encode_raw(&mut bytes);
    bytes
}

/// Decodes a log entry payload.
///
/// # Errors
/// `BadCommand` for an empty payload, an unknown kind byte or a body that is not valid protobuf.
pub fn decode_command(payload: &[u8]) -> Result<Command, KvError> {
    let Some((&kind, body)) = payload.split_first() else {
        return Err(bad("empty payload"));
    };
    match kind {
        COMMAND_OP => RequestOp::decode(body)
            .map(Command::Op)
            .map_err(|error| bad(&format!("RequestOp does not decode: {error}"))),
        COMMAND_COMPACT => CompactionRequest::decode(body)
            .map(Command::Compact)
            .map_err(|error| bad(&format!("CompactionRequest does not decode: {error}"))),
        COMMAND_LEASE_GRANT => LeaseGrantRequest::decode(body)
            .map(Command::LeaseGrant)
            .map_err(|error| bad(&format!("LeaseGrantRequest does not decode: {error}"))),
        COMMAND_LEASE_REVOKE => LeaseRevokeRequest::decode(body)
            .map(Command::LeaseRevoke)
            .map_err(|error| bad(&format!("LeaseRevokeRequest does not decode: {error}"))),
        COMMAND_MEMBER => Member::decode(body)
            .map(Command::Member)
            .map_err(|error| bad(&format!("Member does not decode: {error}"))),
        other => Err(bad(&format!("unknown command kind {other:#04x}"))),
    }
}

fn bad(reason: &str) -> KvError {
    KvError::BadCommand {
        reason: reason.to_owned(),
    }
}

impl KvStore {
    /// Applies a decoded command (see [`KvStore::apply`] and [`KvStore::compact`]).
    pub fn apply_command(&mut self, command: &Command) -> Result<Applied, KvError> {
        match command {
            Command::Op(op) => self.apply(op).map(Applied::Op),
            Command::Compact(request) => self.compact(request.revision).map(Applied::Compact),
            Command::LeaseGrant(request) => self
                .lease_grant(request.id, request.ttl)
                .map(Applied::LeaseGrant),
            Command::LeaseRevoke(request) => {
                self.lease_revoke(request.id).map(Applied::LeaseRevoke)
            }
            Command::Member(member) => {
                let (node, record) = super::members::check_member(member).map_err(|e| bad(&e))?;
                self.members.insert(node, record);
                Ok(Applied::Nothing)
            }
        }
    }
}

impl StateMachine for KvStore {
    type Response = KvResponse;

    fn member_record(node: crate::types::NodeId, peer_urls: &[String]) -> Option<Vec<u8>> {
        Some(encode_member_record(node.0, peer_urls))
    }

    fn is_member_record(payload: &[u8]) -> bool {
        payload.first() == Some(&COMMAND_MEMBER)
    }

    fn member_urls(&self) -> std::collections::BTreeMap<crate::types::NodeId, Vec<String>> {
        self.members
            .iter()
            .map(|(node, record)| (crate::types::NodeId(*node), record.peer_urls.clone()))
            .collect()
    }

    /// NoOp and ConfChange entries change nothing ([`Applied::Nothing`]); a Normal entry is decoded as a command
    /// and applied, and its result (or a deterministic `BadCommand` error) is the response.
    fn apply(&mut self, entry: &LogEntry) -> KvResponse {
        match entry.entry_type {
            // A membership change is the Raft core's business (it took effect when appended);
            // the key-value state does not change.
            EntryType::NoOp | EntryType::ConfChange => Ok(Applied::Nothing),
            EntryType::Normal => match decode_command(&entry.payload) {
                Ok(command) => self.apply_command(&command),
                Err(e) => {
                    // Committed, so every node reaches the same verdict and changes nothing; but a
                    // committed entry no client of this store could have written means a bug or a
                    // writer that should not exist (issue 16: a forged AppendEntries), so say so.
                    tracing::error!(
                        index = entry.index.0,
                        term = entry.term.0,
                        payload_bytes = entry.payload.len(),
                        "committed entry {} does not decode as a key-value command; nothing \
                         applied: {e}",
                        entry.index.0
                    );
                    Err(e)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::{request_op::Request, response_op::Response, PutRequest};
    use crate::types::{LogIndex, Term};

    fn put_op(key: &[u8], value: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..PutRequest::default()
            })),
        }
    }

    fn entry(entry_type: EntryType, payload: Vec<u8>) -> LogEntry {
        LogEntry {
            term: Term(1),
            index: LogIndex(1),
            entry_type,
            payload,
        }
    }

    #[test]
    fn commands_round_trip() {
        let op = put_op(b"k", b"v");
        assert_eq!(decode_command(&encode_command(&op)), Ok(Command::Op(op)));
        let compact = CompactionRequest {
            revision: 7,
            physical: true,
        };
        assert_eq!(
            decode_command(&encode_compact(&compact)),
            Ok(Command::Compact(compact))
        );
    }

    #[test]
    fn lease_commands_round_trip_and_apply() {
        let grant = LeaseGrantRequest {
            ttl: 60,
            id: 0x1234,
        };
        assert_eq!(
            decode_command(&encode_lease_grant(&grant)),
            Ok(Command::LeaseGrant(grant))
        );
        let revoke = LeaseRevokeRequest { id: 0x1234 };
        assert_eq!(
            decode_command(&encode_lease_revoke(&revoke)),
            Ok(Command::LeaseRevoke(revoke))
        );
        let mut store = KvStore::new();
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_lease_grant(&grant)),
        );
        assert!(
            matches!(&answer, Ok(Applied::LeaseGrant(r)) if r.id == 0x1234 && r.ttl == 60),
            "{answer:?}"
        );
        let again = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_lease_grant(&grant)),
        );
        assert_eq!(again, Err(KvError::LeaseExists));
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_lease_revoke(&revoke)),
        );
        assert!(matches!(answer, Ok(Applied::LeaseRevoke(_))), "{answer:?}");
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_lease_revoke(&revoke)),
        );
        assert_eq!(answer, Err(KvError::LeaseNotFound));
    }

    #[test]
    fn undecodable_payloads_are_deterministic_errors_that_change_nothing() {
        for payload in [vec![], vec![0x7f, 1, 2], vec![COMMAND_OP, 0xff, 0xff, 0xff]] {
            let mut a = KvStore::new();
            let mut b = KvStore::new();
            let answer_a = StateMachine::apply(&mut a, &entry(EntryType::Normal, payload.clone()));
            let answer_b = StateMachine::apply(&mut b, &entry(EntryType::Normal, payload.clone()));
            assert_eq!(answer_a, answer_b, "payload {payload:?}");
            assert!(
                matches!(answer_a, Err(KvError::BadCommand { .. })),
                "payload {payload:?} gave {answer_a:?}"
            );
            assert_eq!(a, KvStore::new(), "payload {payload:?} changed the store");
        }
    }

    #[test]
    fn apply_answers_the_op_response_the_compaction_or_the_error() {
        let mut store = KvStore::new();
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&put_op(b"k", b"v"))),
        );
        assert!(
            matches!(&answer, Ok(Applied::Op(r)) if matches!(r.response, Some(Response::ResponsePut(_)))),
            "{answer:?}"
        );
        let leased = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                lease: 3,
                ..PutRequest::default()
            })),
        };
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&leased)),
        );
        assert_eq!(answer, Err(KvError::LeaseNotFound));
        let compact = CompactionRequest {
            revision: 2,
            physical: false,
        };
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_compact(&compact)),
        );
        assert!(matches!(answer, Ok(Applied::Compact(_))), "{answer:?}");
    }

    #[test]
    fn noop_entries_change_nothing_and_answer_nothing() {
        let mut store = KvStore::new();
        assert_eq!(
            StateMachine::apply(&mut store, &entry(EntryType::NoOp, Vec::new())),
            Ok(Applied::Nothing)
        );
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn a_put_entry_applies_and_answers_its_response() {
        let mut store = KvStore::new();
        let answer = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&put_op(b"k", b"v"))),
        );
        let Ok(Applied::Op(ResponseOp {
            response: Some(Response::ResponsePut(put)),
        })) = answer
        else {
            panic!("unexpected response {answer:?}");
        };
        assert_eq!(put.header.map(|h| h.revision), Some(2));
        assert_eq!(store.revision(), 2);
    }
}

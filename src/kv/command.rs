//! The bytes of a key-value command in a log entry, and of its result handed to the proposer.
//!
//! A command is one kind byte followed by the protobuf encoding of the etcd request:
//!
//! ```text
//! +------+--------------------------------------+
//! | kind | protobuf (prost) of the request      |
//! +------+--------------------------------------+
//!   0x01   etcdserverpb.RequestOp   (put, delete range, txn, range)
//!   0x02   etcdserverpb.CompactionRequest
//! ```
//!
//! A result is one kind byte followed by its body:
//!
//! ```text
//!   0x00   etcdserverpb.ResponseOp            (protobuf)
//!   0x01   etcdserverpb.CompactionResponse    (protobuf)
//!   0x02   an error: one code byte (ERROR_CODES), then for BadCommand the reason in UTF-8
//! ```
//!
//! These bytes are replicated and re-applied after restarts, so kinds and error codes are never
//! renumbered; new ones get new numbers. Bytes that do not decode yield `KvError::BadCommand`
//! with a reason that depends only on the bytes, so every replica answers the same.

use prost::Message;

use super::{KvError, KvStore};
use crate::etcd::pb::etcdserverpb::{CompactionRequest, CompactionResponse, RequestOp, ResponseOp};
use crate::state_machine::StateMachine;
use crate::types::{EntryType, LogEntry};

const COMMAND_OP: u8 = 0x01;
const COMMAND_COMPACT: u8 = 0x02;

const RESPONSE_OP: u8 = 0x00;
const RESPONSE_COMPACT: u8 = 0x01;
const RESPONSE_ERROR: u8 = 0x02;

/// A decoded command: what a Normal log entry of the key-value store carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Op(RequestOp),
    Compact(CompactionRequest),
}

/// The result of applying a command, as the proposer receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    Op(ResponseOp),
    Compact(CompactionResponse),
}

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
        other => Err(bad(&format!("unknown command kind {other:#04x}"))),
    }
}

fn bad(reason: &str) -> KvError {
    KvError::BadCommand {
        reason: reason.to_owned(),
    }
}

/// The stable code of each error in a result's bytes.
const ERROR_CODES: &[(u8, KvError)] = &[
    (1, KvError::EmptyKey),
    (2, KvError::KeyNotFound),
    (3, KvError::ValueProvided),
    (4, KvError::LeaseProvided),
    (5, KvError::TooManyOps),
    (6, KvError::DuplicateKey),
    (7, KvError::RequestTooLarge),
    (8, KvError::Compacted),
    (9, KvError::FutureRevision),
    (10, KvError::LeaseNotFound),
];
const ERROR_CODE_BAD_COMMAND: u8 = 11;

/// The bytes of an apply result (see the module docs).
pub fn encode_response(result: &Result<Applied, KvError>) -> Vec<u8> {
    match result {
        Ok(Applied::Op(response)) => encode_with_kind(RESPONSE_OP, response),
        Ok(Applied::Compact(response)) => encode_with_kind(RESPONSE_COMPACT, response),
        Err(KvError::BadCommand { reason }) => {
            let mut bytes = vec![RESPONSE_ERROR, ERROR_CODE_BAD_COMMAND];
            bytes.extend_from_slice(reason.as_bytes());
            bytes
        }
        Err(error) => {
            let code = ERROR_CODES
                .iter()
                .find(|(_, known)| known == error)
                .map(|(code, _)| *code)
                .unwrap_or_else(|| panic!("{error:?} has no code in ERROR_CODES"));
            vec![RESPONSE_ERROR, code]
        }
    }
}

/// Decodes the bytes [`StateMachine::apply`] returned for a key-value command back into the
/// result (on the node that proposed it, to answer the client).
///
/// # Errors
/// The applied command's error; `BadCommand` if the bytes are not a result of this module (for
/// example the empty response of a NoOp entry).
pub fn decode_response(bytes: &[u8]) -> Result<Applied, KvError> {
    let Some((&kind, body)) = bytes.split_first() else {
        return Err(bad("empty response: the entry was not a key-value command"));
    };
    match kind {
        RESPONSE_OP => ResponseOp::decode(body)
            .map(Applied::Op)
            .map_err(|error| bad(&format!("ResponseOp does not decode: {error}"))),
        RESPONSE_COMPACT => CompactionResponse::decode(body)
            .map(Applied::Compact)
            .map_err(|error| bad(&format!("CompactionResponse does not decode: {error}"))),
        RESPONSE_ERROR => match body.split_first() {
            Some((&ERROR_CODE_BAD_COMMAND, reason)) => Err(KvError::BadCommand {
                reason: String::from_utf8_lossy(reason).into_owned(),
            }),
            Some((&code, [])) => Err(ERROR_CODES
                .iter()
                .find(|(known, _)| *known == code)
                .map(|(_, error)| error.clone())
                .unwrap_or_else(|| bad(&format!("unknown error code {code}")))),
            _ => Err(bad("malformed error response")),
        },
        other => Err(bad(&format!("unknown response kind {other:#04x}"))),
    }
}

/// [`decode_response`] for the result of an op command (put, delete range, txn, range): the
/// response, or the error the client gets (with [`KvError::to_status`]).
///
/// # Errors
/// As [`decode_response`]; a compaction's result is `BadCommand` here (decode it with
/// [`decode_response`]).
pub fn decode_apply_result(bytes: &[u8]) -> Result<ResponseOp, KvError> {
    match decode_response(bytes)? {
        Applied::Op(response) => Ok(response),
        Applied::Compact(_) => Err(bad("a compaction result where an op result was expected")),
    }
}

impl KvStore {
    /// Applies a decoded command (see [`KvStore::apply`] and [`KvStore::compact`]).
    pub fn apply_command(&mut self, command: &Command) -> Result<Applied, KvError> {
        match command {
            Command::Op(op) => self.apply(op).map(Applied::Op),
            Command::Compact(request) => self.compact(request.revision).map(Applied::Compact),
        }
    }
}

impl StateMachine for KvStore {
    /// NoOp entries change nothing and answer nothing; a Normal entry is decoded as a command and
    /// applied, and its result (or a deterministic `BadCommand` error) is encoded for
    /// [`decode_response`].
    fn apply(&mut self, entry: &LogEntry) -> Vec<u8> {
        match entry.entry_type {
            EntryType::NoOp => Vec::new(),
            EntryType::Normal => {
                let result =
                    decode_command(&entry.payload).and_then(|command| self.apply_command(&command));
                encode_response(&result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::pb::etcdserverpb::{request_op::Request, response_op::Response, PutRequest};
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
    fn every_error_round_trips_through_response_bytes() {
        for (_, error) in ERROR_CODES {
            let bytes = encode_response(&Err(error.clone()));
            assert_eq!(decode_response(&bytes), Err(error.clone()));
        }
        let error = bad("why");
        assert_eq!(
            decode_response(&encode_response(&Err(error.clone()))),
            Err(error)
        );
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
                matches!(decode_response(&answer_a), Err(KvError::BadCommand { .. })),
                "payload {payload:?} gave {:?}",
                decode_response(&answer_a)
            );
            assert_eq!(a, KvStore::new(), "payload {payload:?} changed the store");
        }
    }

    #[test]
    fn decode_apply_result_gives_the_op_response_or_the_error() {
        let mut store = KvStore::new();
        let bytes = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&put_op(b"k", b"v"))),
        );
        let response = decode_apply_result(&bytes).expect("a put response");
        assert!(matches!(response.response, Some(Response::ResponsePut(_))));
        let leased = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                lease: 3,
                ..PutRequest::default()
            })),
        };
        let bytes = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&leased)),
        );
        assert_eq!(decode_apply_result(&bytes), Err(KvError::LeaseNotFound));
        let compact = CompactionRequest {
            revision: 2,
            physical: false,
        };
        let bytes = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_compact(&compact)),
        );
        assert!(matches!(decode_response(&bytes), Ok(Applied::Compact(_))));
        assert!(matches!(
            decode_apply_result(&bytes),
            Err(KvError::BadCommand { .. })
        ));
    }

    #[test]
    fn the_identity_state_machine_answers_empty() {
        assert!(StateMachine::apply(&mut (), &entry(EntryType::Normal, vec![1, 2])).is_empty());
    }

    #[test]
    fn noop_entries_change_nothing_and_answer_empty() {
        let mut store = KvStore::new();
        assert!(StateMachine::apply(&mut store, &entry(EntryType::NoOp, Vec::new())).is_empty());
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn a_put_entry_applies_and_answers_its_response() {
        let mut store = KvStore::new();
        let bytes = StateMachine::apply(
            &mut store,
            &entry(EntryType::Normal, encode_command(&put_op(b"k", b"v"))),
        );
        let Ok(Applied::Op(ResponseOp {
            response: Some(Response::ResponsePut(put)),
        })) = decode_response(&bytes)
        else {
            panic!("unexpected response {:?}", decode_response(&bytes));
        };
        assert_eq!(put.header.map(|h| h.revision), Some(2));
        assert_eq!(store.revision(), 2);
    }
}

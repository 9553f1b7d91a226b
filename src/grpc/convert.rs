//! Lossless conversion between the core's messages ([`crate::raft::message`]) and the wire types
//! generated from `proto/raft.proto`.
//!
//! This module owns the boundary between untrusted bytes and the core. It holds no protocol logic,
//! but everything that could make the core panic or allocate without bound is refused here, with a
//! [`ConvertError`] naming the message and field:
//! - a missing `route` (proto3 message fields may be absent on the wire);
//! - an entry type this version does not know (never mapped to a default);
//! - more entries, or more payload bytes, than [`Limits`] allows;
//! - AppendEntries whose entries are not contiguous from `prev_log_index + 1`, or whose terms are
//!   not non-decreasing within `[prev_log_term, term]` (a well-formed leader never sends those; the
//!   durable log asserts contiguity, so such input must not get that far).
//!
//! Invariant: for every envelope the core can produce (entries contiguous, terms ordered, within
//! the limits), `decode_envelope(encode_envelope(e)) == Ok(e)`; the property tests below check it,
//! through the real prost encoding.

use crate::driver::{NodeStatus, ProposeOutcome};
use crate::grpc::proto as pb;
use crate::raft::message::{
    AppendEntries, AppendEntriesResponse, Envelope, Message, RequestVote, RequestVoteResponse,
    TimeoutNow,
};
use crate::raft::Role;
use crate::types::{EntryType, LogEntry, LogIndex, NodeId, Term};

/// The most entries one AppendEntries may carry (the config's `max_entries_per_query` bound).
pub const ENTRIES_PER_MESSAGE_MAX: usize = crate::config::MAX_ENTRIES_PER_QUERY_MAX as usize;
/// The largest payload of one entry by default: the storage format's per-entry bound (16 MiB). The
/// node lowers [`Limits::entry_payload_bytes_max`] to what its segments hold
/// (`ClusterConfig::entry_payload_max_bytes`), so an entry the log could not store is refused
/// before it reaches the core.
pub const ENTRY_PAYLOAD_BYTES_MAX: usize = crate::storage::format::ENTRY_PAYLOAD_MAX;
/// The most payload bytes one AppendEntries may carry in total.
pub const MESSAGE_PAYLOAD_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The bounds applied to decoded messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub entries_per_message_max: usize,
    pub entry_payload_bytes_max: usize,
    pub message_payload_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries_per_message_max: ENTRIES_PER_MESSAGE_MAX,
            entry_payload_bytes_max: ENTRY_PAYLOAD_BYTES_MAX,
            message_payload_bytes_max: MESSAGE_PAYLOAD_BYTES_MAX,
        }
    }
}

/// Why a wire message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("the proposal was refused ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("{message}: required field `{field}` is missing")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message}.{field}: unknown enum value {value}")]
    UnknownEnumValue {
        message: &'static str,
        field: &'static str,
        value: i32,
    },
    #[error("AppendEntries carries {count} entries, above the limit of {max}")]
    TooManyEntries { count: usize, max: usize },
    #[error("AppendEntries entry {index}: payload of {bytes} bytes is above the limit of {max}")]
    EntryTooLarge {
        index: u64,
        bytes: usize,
        max: usize,
    },
    #[error("AppendEntries carries {bytes} payload bytes, above the limit of {max}")]
    BatchTooLarge { bytes: u64, max: u64 },
    #[error(
        "AppendEntries entry at position {position} has index {index}, expected {expected} \
         (entries must be contiguous from prev_log_index + 1)"
    )]
    NonContiguous {
        position: usize,
        index: u64,
        expected: u64,
    },
    #[error(
        "AppendEntries entry {index} has term {entry_term}, outside [{term_min}, {term_max}] \
         (terms must not decrease and not exceed the request's term)"
    )]
    EntryTermOutOfOrder {
        index: u64,
        entry_term: u64,
        term_min: u64,
        term_max: u64,
    },
    #[error("AppendEntriesResponse is a `declined` marker, not an answer")]
    DeclinedMarker,
}

/// One peer message in wire form: the RPC it travels on decides which variant it is.
#[derive(Clone, Debug, PartialEq)]
pub enum WireMessage {
    RequestVote(pb::RequestVoteRequest),
    RequestVoteResponse(pb::RequestVoteResponse),
    AppendEntries(pb::AppendEntriesRequest),
    AppendEntriesResponse(pb::AppendEntriesResponse),
    TimeoutNow(pb::TimeoutNowRequest),
    /// A message this transport does not carry (yet): InstallSnapshot, whose bytes need a
    /// streamed transfer. [`crate::grpc::peers::Peers::send`] refuses it before encoding.
    NotCarried(&'static str),
}

fn route(from: NodeId, to: NodeId) -> Option<pb::Route> {
    Some(pb::Route {
        from: from.0,
        to: to.0,
    })
}

/// The (from, to) of a message's route.
pub fn unroute(
    route: Option<pb::Route>,
    message: &'static str,
) -> Result<(NodeId, NodeId), ConvertError> {
    let route = route.ok_or(ConvertError::MissingField {
        message,
        field: "route",
    })?;
    Ok((NodeId(route.from), NodeId(route.to)))
}

/// Encodes an outbound envelope. Never fails: everything the core produces is representable, or
/// named as not carried.
pub fn encode_envelope(envelope: Envelope) -> WireMessage {
    let Envelope { from, to, msg } = envelope;
    let route = route(from, to);
    match msg {
        Message::RequestVote(m) => WireMessage::RequestVote(pb::RequestVoteRequest {
            route,
            term: m.term.0,
            candidate_id: m.candidate_id.0,
            last_log_index: m.last_log_index.0,
            last_log_term: m.last_log_term.0,
            pre_vote: m.pre_vote,
            leader_transfer: m.leader_transfer,
        }),
        Message::RequestVoteResponse(m) => {
            WireMessage::RequestVoteResponse(pb::RequestVoteResponse {
                route,
                term: m.term.0,
                vote_granted: m.vote_granted,
                pre_vote: m.pre_vote,
                // Set by the voter's Raft service, not by the core (crate::grpc::gate).
                sender_not_member: false,
            })
        }
        Message::AppendEntries(m) => WireMessage::AppendEntries(pb::AppendEntriesRequest {
            route,
            term: m.term.0,
            leader_id: m.leader_id.0,
            prev_log_index: m.prev_log_index.0,
            prev_log_term: m.prev_log_term.0,
            entries: m.entries.into_iter().map(encode_entry).collect(),
            leader_commit: m.leader_commit.0,
            read_seq: m.read_seq,
        }),
        Message::AppendEntriesResponse(m) => {
            WireMessage::AppendEntriesResponse(pb::AppendEntriesResponse {
                route,
                term: m.term.0,
                success: m.success,
                last_log_index: m.last_log_index.0,
                conflict_term: m.conflict_term.map(|t| t.0),
                conflict_index: m.conflict_index.map(|i| i.0),
                read_seq: m.read_seq,
                declined: false,
            })
        }
        Message::InstallSnapshot(_) => WireMessage::NotCarried("InstallSnapshot"),
        Message::TimeoutNow(m) => WireMessage::TimeoutNow(pb::TimeoutNowRequest {
            route,
            term: m.term.0,
            leader_id: m.leader_id.0,
        }),
    }
}

/// The stream's stand-in for an answer the follower declined to give (see `declined` in
/// proto/raft.proto): it keeps one response per request, in order.
pub fn declined_append_entries_response(from: NodeId, to: NodeId) -> pb::AppendEntriesResponse {
    pb::AppendEntriesResponse {
        route: route(from, to),
        declined: true,
        ..Default::default()
    }
}

/// Decodes an inbound wire message, enforcing `limits` and the well-formedness rules in the
/// module docs.
///
/// # Errors
/// A [`ConvertError`] naming what is wrong; the message must then be dropped (and the RPC answered
/// with `INVALID_ARGUMENT`), never passed on in part.
pub fn decode_envelope(wire: WireMessage, limits: &Limits) -> Result<Envelope, ConvertError> {
    match wire {
        WireMessage::RequestVote(m) => decode_request_vote(m),
        WireMessage::RequestVoteResponse(m) => decode_request_vote_response(m),
        WireMessage::AppendEntries(m) => decode_append_entries(m, limits),
        WireMessage::AppendEntriesResponse(m) => decode_append_entries_response(m),
        WireMessage::TimeoutNow(m) => decode_timeout_now(m),
        WireMessage::NotCarried(what) => Err(ConvertError::MissingField {
            message: what,
            field: "wire encoding",
        }),
    }
}

pub fn decode_request_vote(m: pb::RequestVoteRequest) -> Result<Envelope, ConvertError> {
    let (from, to) = unroute(m.route, "RequestVoteRequest")?;
    Ok(Envelope {
        from,
        to,
        msg: Message::RequestVote(RequestVote {
            term: Term(m.term),
            candidate_id: NodeId(m.candidate_id),
            last_log_index: LogIndex(m.last_log_index),
            last_log_term: Term(m.last_log_term),
            pre_vote: m.pre_vote,
            leader_transfer: m.leader_transfer,
        }),
    })
}

pub fn decode_timeout_now(m: pb::TimeoutNowRequest) -> Result<Envelope, ConvertError> {
    let (from, to) = unroute(m.route, "TimeoutNowRequest")?;
    Ok(Envelope {
        from,
        to,
        msg: Message::TimeoutNow(TimeoutNow {
            term: Term(m.term),
            leader_id: NodeId(m.leader_id),
        }),
    })
}

pub fn decode_request_vote_response(m: pb::RequestVoteResponse) -> Result<Envelope, ConvertError> {
    let (from, to) = unroute(m.route, "RequestVoteResponse")?;
    Ok(Envelope {
        from,
        to,
        msg: Message::RequestVoteResponse(RequestVoteResponse {
            term: Term(m.term),
            vote_granted: m.vote_granted,
            pre_vote: m.pre_vote,
        }),
    })
}

pub fn decode_append_entries(
    m: pb::AppendEntriesRequest,
    limits: &Limits,
) -> Result<Envelope, ConvertError> {
    let (from, to) = unroute(m.route, "AppendEntriesRequest")?;
    // Check every bound before building anything from the entries.
    if m.entries.len() > limits.entries_per_message_max {
        return Err(ConvertError::TooManyEntries {
            count: m.entries.len(),
            max: limits.entries_per_message_max,
        });
    }
    let mut batch_bytes: u64 = 0;
    let mut term_min = m.prev_log_term;
    for (position, e) in m.entries.iter().enumerate() {
        // prev_log_index + 1 + position cannot overflow unless prev_log_index is near u64::MAX;
        // checked arithmetic turns that into a refusal instead of a wrap.
        let expected = m
            .prev_log_index
            .checked_add(1 + position as u64)
            .unwrap_or(0);
        if expected == 0 || e.index != expected {
            return Err(ConvertError::NonContiguous {
                position,
                index: e.index,
                expected,
            });
        }
        if e.term < term_min || e.term > m.term {
            return Err(ConvertError::EntryTermOutOfOrder {
                index: e.index,
                entry_term: e.term,
                term_min,
                term_max: m.term,
            });
        }
        term_min = e.term;
        if e.payload.len() > limits.entry_payload_bytes_max {
            return Err(ConvertError::EntryTooLarge {
                index: e.index,
                bytes: e.payload.len(),
                max: limits.entry_payload_bytes_max,
            });
        }
        batch_bytes += e.payload.len() as u64;
    }
    if batch_bytes > limits.message_payload_bytes_max {
        return Err(ConvertError::BatchTooLarge {
            bytes: batch_bytes,
            max: limits.message_payload_bytes_max,
        });
    }
    let entries = m
        .entries
        .into_iter()
        .map(decode_entry)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope {
        from,
        to,
        msg: Message::AppendEntries(AppendEntries {
            term: Term(m.term),
            leader_id: NodeId(m.leader_id),
            prev_log_index: LogIndex(m.prev_log_index),
            prev_log_term: Term(m.prev_log_term),
            entries,
            leader_commit: LogIndex(m.leader_commit),
            read_seq: m.read_seq,
        }),
    })
}

pub fn decode_append_entries_response(
    m: pb::AppendEntriesResponse,
) -> Result<Envelope, ConvertError> {
    let (from, to) = unroute(m.route, "AppendEntriesResponse")?;
    if m.declined {
        return Err(ConvertError::DeclinedMarker);
    }
    Ok(Envelope {
        from,
        to,
        msg: Message::AppendEntriesResponse(AppendEntriesResponse {
            term: Term(m.term),
            success: m.success,
            last_log_index: LogIndex(m.last_log_index),
            conflict_term: m.conflict_term.map(Term),
            conflict_index: m.conflict_index.map(LogIndex),
            read_seq: m.read_seq,
        }),
    })
}

pub fn encode_entry(e: LogEntry) -> pb::LogEntry {
    let entry_type = match e.entry_type {
        EntryType::Normal => pb::EntryType::Normal,
        EntryType::NoOp => pb::EntryType::NoOp,
        EntryType::ConfChange => pb::EntryType::ConfChange,
    };
    pb::LogEntry {
        term: e.term.0,
        index: e.index.0,
        entry_type: entry_type as i32,
        payload: e.payload,
    }
}

pub fn decode_entry(e: pb::LogEntry) -> Result<LogEntry, ConvertError> {
    let entry_type = match pb::EntryType::try_from(e.entry_type) {
        Ok(pb::EntryType::Normal) => EntryType::Normal,
        Ok(pb::EntryType::NoOp) => EntryType::NoOp,
        Ok(pb::EntryType::ConfChange) => EntryType::ConfChange,
        Err(_) => {
            return Err(ConvertError::UnknownEnumValue {
                message: "LogEntry",
                field: "entry_type",
                value: e.entry_type,
            })
        }
    };
    Ok(LogEntry {
        term: Term(e.term),
        index: LogIndex(e.index),
        entry_type,
        payload: e.payload,
    })
}

pub fn encode_propose_outcome(outcome: ProposeOutcome) -> pb::ProposeResponse {
    use pb::propose_response::Outcome;
    let outcome = match outcome {
        ProposeOutcome::Committed { index, term } => Outcome::Committed(pb::Committed {
            index: index.0,
            term: term.0,
        }),
        ProposeOutcome::NotLeader {
            leader,
            leader_address,
        } => Outcome::NotLeader(pb::NotLeader {
            leader_id: leader.map(|l| l.0),
            leader_address: leader_address.unwrap_or_default(),
        }),
    };
    pb::ProposeResponse {
        outcome: Some(outcome),
    }
}

/// A ProposeStream answer for a proposal refused with `status` (what the unary Propose would have
/// failed with).
pub fn encode_propose_refused(status: &tonic::Status) -> pb::ProposeResponse {
    pb::ProposeResponse {
        outcome: Some(pb::propose_response::Outcome::Refused(pb::Refused {
            code: status.code() as u32,
            message: status.message().to_string(),
        })),
    }
}

/// Decodes a Propose or ProposeStream answer; a ProposeStream refusal is
/// [`ConvertError::Refused`] with the status code and message the unary call would have failed with.
pub fn decode_propose_outcome(m: pb::ProposeResponse) -> Result<ProposeOutcome, ConvertError> {
    use pb::propose_response::Outcome;
    match m.outcome {
        Some(Outcome::Committed(c)) => Ok(ProposeOutcome::Committed {
            index: LogIndex(c.index),
            term: Term(c.term),
        }),
        Some(Outcome::NotLeader(n)) => Ok(ProposeOutcome::NotLeader {
            leader: n.leader_id.map(NodeId),
            leader_address: (!n.leader_address.is_empty()).then_some(n.leader_address),
        }),
        Some(Outcome::Refused(r)) => Err(ConvertError::Refused {
            code: tonic::Code::from(r.code as i32),
            message: r.message,
        }),
        None => Err(ConvertError::MissingField {
            message: "ProposeResponse",
            field: "outcome",
        }),
    }
}

pub fn encode_role(role: Role) -> pb::Role {
    match role {
        Role::Follower => pb::Role::Follower,
        Role::PreCandidate => pb::Role::PreCandidate,
        Role::Candidate => pb::Role::Candidate,
        Role::Leader => pb::Role::Leader,
    }
}

pub fn decode_role(value: i32) -> Result<Role, ConvertError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Follower) => Ok(Role::Follower),
        Ok(pb::Role::PreCandidate) => Ok(Role::PreCandidate),
        Ok(pb::Role::Candidate) => Ok(Role::Candidate),
        Ok(pb::Role::Leader) => Ok(Role::Leader),
        // UNSPECIFIED is what an absent field decodes to: as unusable as an unknown value.
        Ok(pb::Role::Unspecified) | Err(_) => Err(ConvertError::UnknownEnumValue {
            message: "StatusResponse",
            field: "role",
            value,
        }),
    }
}

pub fn encode_status(s: NodeStatus) -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: s.node_id.0,
        role: encode_role(s.role) as i32,
        term: s.term.0,
        leader_id: s.leader.map(|l| l.0),
        commit_index: s.commit_index.0,
        applied_index: s.applied_index.0,
        first_log_index: s.first_log_index.0,
        last_log_index: s.last_log_index.0,
        peers: s
            .peers
            .into_iter()
            .map(|(id, m)| pb::PeerProgress {
                node_id: id.0,
                match_index: m.0,
            })
            .collect(),
        lead_transferee: s.lead_transferee.map(|t| t.0),
    }
}

pub fn decode_status(m: pb::StatusResponse) -> Result<NodeStatus, ConvertError> {
    Ok(NodeStatus {
        node_id: NodeId(m.node_id),
        role: decode_role(m.role)?,
        term: Term(m.term),
        leader: m.leader_id.map(NodeId),
        commit_index: LogIndex(m.commit_index),
        applied_index: LogIndex(m.applied_index),
        first_log_index: LogIndex(m.first_log_index),
        last_log_index: LogIndex(m.last_log_index),
        peers: m
            .peers
            .into_iter()
            .map(|p| (NodeId(p.node_id), LogIndex(p.match_index)))
            .collect(),
        lead_transferee: m.lead_transferee.map(NodeId),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    /// Encodes to wire bytes and back, as the network would.
    fn through_bytes(wire: &WireMessage) -> WireMessage {
        fn again<M: prost::Message + Default>(m: &M) -> M {
            M::decode(m.encode_to_vec().as_slice()).expect("prost decodes what it encoded")
        }
        match wire {
            WireMessage::RequestVote(m) => WireMessage::RequestVote(again(m)),
            WireMessage::RequestVoteResponse(m) => WireMessage::RequestVoteResponse(again(m)),
            WireMessage::AppendEntries(m) => WireMessage::AppendEntries(again(m)),
            WireMessage::AppendEntriesResponse(m) => WireMessage::AppendEntriesResponse(again(m)),
            WireMessage::TimeoutNow(m) => WireMessage::TimeoutNow(again(m)),
            WireMessage::NotCarried(what) => WireMessage::NotCarried(what),
        }
    }

    fn append(
        prev: u64,
        prev_term: u64,
        term: u64,
        entry_terms: &[u64],
    ) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest {
            route: route(NodeId(1), NodeId(2)),
            term,
            leader_id: 1,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: entry_terms
                .iter()
                .enumerate()
                .map(|(i, &t)| pb::LogEntry {
                    term: t,
                    index: prev + 1 + i as u64,
                    entry_type: 0,
                    payload: vec![7; 3],
                })
                .collect(),
            leader_commit: prev,
            read_seq: 0,
        }
    }

    #[test]
    fn unknown_entry_type_is_refused_not_defaulted() {
        let mut m = append(4, 1, 2, &[2]);
        m.entries[0].entry_type = 9;
        assert_eq!(
            decode_append_entries(m, &Limits::default()),
            Err(ConvertError::UnknownEnumValue {
                message: "LogEntry",
                field: "entry_type",
                value: 9
            })
        );
    }

    #[test]
    fn missing_route_is_refused_for_every_message() {
        let limits = Limits::default();
        for wire in [
            WireMessage::RequestVote(pb::RequestVoteRequest::default()),
            WireMessage::RequestVoteResponse(pb::RequestVoteResponse::default()),
            WireMessage::AppendEntries(pb::AppendEntriesRequest::default()),
            WireMessage::AppendEntriesResponse(pb::AppendEntriesResponse::default()),
            WireMessage::TimeoutNow(pb::TimeoutNowRequest::default()),
        ] {
            let err = decode_envelope(wire.clone(), &limits).expect_err("no route");
            assert!(
                matches!(err, ConvertError::MissingField { field: "route", .. }),
                "{wire:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn oversized_batches_are_refused() {
        let limits = Limits {
            entries_per_message_max: 2,
            entry_payload_bytes_max: 4,
            message_payload_bytes_max: 5,
        };
        assert_eq!(
            decode_append_entries(append(0, 0, 1, &[1, 1, 1]), &limits),
            Err(ConvertError::TooManyEntries { count: 3, max: 2 })
        );
        let mut big = append(0, 0, 1, &[1]);
        big.entries[0].payload = vec![0; 5];
        assert_eq!(
            decode_append_entries(big, &limits),
            Err(ConvertError::EntryTooLarge {
                index: 1,
                bytes: 5,
                max: 4
            })
        );
        // Two entries of 3 bytes each: each is fine, together they exceed 5.
        assert_eq!(
            decode_append_entries(append(0, 0, 1, &[1, 1]), &limits),
            Err(ConvertError::BatchTooLarge { bytes: 6, max: 5 })
        );
    }

    #[test]
    fn entries_must_be_contiguous_after_prev_log_index() {
        let mut m = append(10, 1, 1, &[1, 1, 1]);
        m.entries[2].index = 14;
        assert_eq!(
            decode_append_entries(m, &Limits::default()),
            Err(ConvertError::NonContiguous {
                position: 2,
                index: 14,
                expected: 13
            })
        );
        let mut m = append(10, 1, 1, &[1]);
        m.entries[0].index = 10;
        assert!(matches!(
            decode_append_entries(m, &Limits::default()),
            Err(ConvertError::NonContiguous { position: 0, .. })
        ));
        // An index sequence that would wrap around u64 is refused, not wrapped.
        let mut m = append(0, 0, 1, &[1]);
        m.prev_log_index = u64::MAX;
        m.entries[0].index = 0;
        assert!(matches!(
            decode_append_entries(m, &Limits::default()),
            Err(ConvertError::NonContiguous { expected: 0, .. })
        ));
    }

    #[test]
    fn entry_terms_must_not_decrease_or_exceed_the_request_term() {
        assert_eq!(
            decode_append_entries(append(5, 3, 4, &[3, 2]), &Limits::default()),
            Err(ConvertError::EntryTermOutOfOrder {
                index: 7,
                entry_term: 2,
                term_min: 3,
                term_max: 4
            })
        );
        assert!(matches!(
            decode_append_entries(append(5, 3, 4, &[5]), &Limits::default()),
            Err(ConvertError::EntryTermOutOfOrder { entry_term: 5, .. })
        ));
        assert!(matches!(
            decode_append_entries(append(5, 3, 4, &[2]), &Limits::default()),
            Err(ConvertError::EntryTermOutOfOrder { entry_term: 2, .. })
        ));
        assert!(decode_append_entries(append(5, 3, 4, &[3, 3, 4]), &Limits::default()).is_ok());
    }

    #[test]
    fn heartbeat_round_trips() {
        let hb = Envelope {
            from: NodeId(1),
            to: NodeId(3),
            msg: Message::AppendEntries(AppendEntries {
                term: Term(7),
                leader_id: NodeId(1),
                prev_log_index: LogIndex(100),
                prev_log_term: Term(6),
                entries: vec![],
                leader_commit: LogIndex(99),
                read_seq: 5,
            }),
        };
        let wire = through_bytes(&encode_envelope(hb.clone()));
        assert_eq!(decode_envelope(wire, &Limits::default()), Ok(hb));
    }

    #[test]
    fn operator_messages_round_trip() {
        for outcome in [
            ProposeOutcome::Committed {
                index: LogIndex(42),
                term: Term(3),
            },
            ProposeOutcome::NotLeader {
                leader: Some(NodeId(2)),
                leader_address: Some("127.0.0.1:18002".into()),
            },
            ProposeOutcome::NotLeader {
                leader: None,
                leader_address: None,
            },
        ] {
            let m = pb::ProposeResponse::decode(
                encode_propose_outcome(outcome.clone())
                    .encode_to_vec()
                    .as_slice(),
            )
            .expect("decodes");
            assert_eq!(decode_propose_outcome(m), Ok(outcome));
        }
        assert!(decode_propose_outcome(pb::ProposeResponse::default()).is_err());

        for role in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ] {
            let status = NodeStatus {
                node_id: NodeId(1),
                role,
                term: Term(4),
                leader: Some(NodeId(1)),
                commit_index: LogIndex(10),
                applied_index: LogIndex(9),
                first_log_index: LogIndex(1),
                last_log_index: LogIndex(11),
                peers: vec![(NodeId(2), LogIndex(10)), (NodeId(3), LogIndex(8))],
                lead_transferee: (role == Role::Leader).then_some(NodeId(3)),
            };
            let m = pb::StatusResponse::decode(
                encode_status(status.clone()).encode_to_vec().as_slice(),
            )
            .expect("decodes");
            assert_eq!(decode_status(m), Ok(status));
        }
        assert!(decode_status(pb::StatusResponse::default()).is_err());
    }

    fn arb_entries(prev: u64, prev_term: u64) -> impl Strategy<Value = (Vec<LogEntry>, u64)> {
        // Term increments (0 keeps the term) and payloads; the request term is at least the last
        // entry's term.
        (
            proptest::collection::vec(
                (
                    0u64..3,
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..64),
                ),
                0..20,
            ),
            0u64..3,
        )
            .prop_map(move |(specs, extra)| {
                let mut term = prev_term;
                let mut entries = Vec::with_capacity(specs.len());
                for (i, (bump, noop, payload)) in specs.into_iter().enumerate() {
                    term += bump;
                    entries.push(LogEntry {
                        term: Term(term),
                        index: LogIndex(prev + 1 + i as u64),
                        entry_type: if noop {
                            EntryType::NoOp
                        } else {
                            EntryType::Normal
                        },
                        payload,
                    });
                }
                (entries, term + extra)
            })
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let ids = (any::<u32>(), any::<u32>());
        let request_vote = (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(t, c, i, lt, pv, lx)| {
                Message::RequestVote(RequestVote {
                    term: Term(t),
                    candidate_id: NodeId(c),
                    last_log_index: LogIndex(i),
                    last_log_term: Term(lt),
                    pre_vote: pv,
                    leader_transfer: lx,
                })
            });
        let timeout_now = (any::<u64>(), any::<u32>()).prop_map(|(t, l)| {
            Message::TimeoutNow(TimeoutNow {
                term: Term(t),
                leader_id: NodeId(l),
            })
        });
        let vote_response = (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(t, g, pv)| {
            Message::RequestVoteResponse(RequestVoteResponse {
                term: Term(t),
                vote_granted: g,
                pre_vote: pv,
            })
        });
        let append = (
            0u64..u64::MAX / 2,
            0u64..1000,
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_flat_map(|(prev, prev_term, leader, commit, read_seq)| {
                arb_entries(prev, prev_term).prop_map(move |(entries, term)| {
                    Message::AppendEntries(AppendEntries {
                        term: Term(term),
                        leader_id: NodeId(leader),
                        prev_log_index: LogIndex(prev),
                        prev_log_term: Term(prev_term),
                        entries,
                        leader_commit: LogIndex(commit),
                        read_seq,
                    })
                })
            });
        let append_response = (
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(t, ok, last, ct, ci, read_seq)| {
                Message::AppendEntriesResponse(AppendEntriesResponse {
                    term: Term(t),
                    success: ok,
                    last_log_index: LogIndex(last),
                    conflict_term: ct.map(Term),
                    conflict_index: ci.map(LogIndex),
                    read_seq,
                })
            });
        (
            ids,
            prop_oneof![
                request_vote,
                vote_response,
                append,
                append_response,
                timeout_now
            ],
        )
            .prop_map(|((from, to), msg)| Envelope {
                from: NodeId(from),
                to: NodeId(to),
                msg,
            })
    }

    proptest! {
        // proptest prints the failing case and persists its seed under proptest-regressions/.
        #[test]
        fn every_core_message_round_trips_through_the_wire(envelope in arb_envelope()) {
            let wire = through_bytes(&encode_envelope(envelope.clone()));
            prop_assert_eq!(decode_envelope(wire, &Limits::default()), Ok(envelope));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let limits = Limits::default();
            if let Ok(m) = pb::AppendEntriesRequest::decode(bytes.as_slice()) {
                let _ = decode_append_entries(m, &limits);
            }
            if let Ok(m) = pb::RequestVoteRequest::decode(bytes.as_slice()) {
                let _ = decode_request_vote(m);
            }
            if let Ok(m) = pb::AppendEntriesResponse::decode(bytes.as_slice()) {
                let _ = decode_append_entries_response(m);
            }
        }
    }
}

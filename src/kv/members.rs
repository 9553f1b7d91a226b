//! The member address registry: the peer URLs of members added at run time, replicated through
//! the log as a key-value command (kind `0x05`) and kept in the store's snapshots (format 3).
//!
//! The consensus core's configuration entries name nodes by id only (5 bytes, docs/FORMAT.md); the
//! address a new member listens on comes with etcd's `MemberAdd` (its peer URL) and must be known
//! to every server that may lead later, and to a server that catches up from a snapshot. So it
//! lives in the replicated state, beside the keys, but outside the key space: it never shows in a
//! range, a watch or a `HashKV`, and recording it does not move the revision.
//!
//! Invariants: node ids are never 0; a record is only ever replaced (etcd's `MemberUpdate`), never
//! removed, so the highest id ever recorded stays known and a removed member's id is not handed
//! out again; every URL is at most [`MEMBER_URL_BYTES_MAX`] bytes and a record holds at most
//! [`MEMBER_URLS_MAX`] of them.

use std::collections::BTreeMap;

use crate::etcdpb::etcdserverpb::Member;

/// The longest peer URL a record holds.
pub const MEMBER_URL_BYTES_MAX: usize = 1024;
/// The most peer URLs one record holds.
pub const MEMBER_URLS_MAX: usize = 16;

/// What the registry knows of one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    /// Its peer URLs (`http://ip:port`), the first of which the other servers connect to.
    pub peer_urls: Vec<String>,
}

/// Node id (the Raft id, not etcd's member id) -> record.
pub type MemberTable = BTreeMap<u32, MemberRecord>;

/// Checks a decoded record command; returns the node id and the record.
///
/// # Errors
/// A text naming what is wrong: a node id of 0 or beyond u32, no URL, too many, or one too long.
pub fn check_member(member: &Member) -> Result<(u32, MemberRecord), String> {
    let node = u32::try_from(member.id)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| format!("member record names node {} (1..=u32::MAX)", member.id))?;
    if member.peer_ur_ls.is_empty() || member.peer_ur_ls.len() > MEMBER_URLS_MAX {
        return Err(format!(
            "member record for node {node} has {} peer URLs (1..={MEMBER_URLS_MAX})",
            member.peer_ur_ls.len()
        ));
    }
    if let Some(long) = member
        .peer_ur_ls
        .iter()
        .find(|u| u.len() > MEMBER_URL_BYTES_MAX)
    {
        return Err(format!(
            "member record for node {node} has a {}-byte peer URL (max {MEMBER_URL_BYTES_MAX})",
            long.len()
        ));
    }
    Ok((
        node,
        MemberRecord {
            peer_urls: member.peer_ur_ls.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{decode_command, encode_member_record, Applied, Command, KvStore};
    use crate::state_machine::StateMachine;
    use crate::types::{EntryType, LogEntry, LogIndex, Term};

    fn entry(payload: Vec<u8>) -> LogEntry {
        LogEntry {
            term: Term(1),
            index: LogIndex(1),
            entry_type: EntryType::Normal,
            payload,
        }
    }

    #[test]
    fn a_record_is_applied_outside_the_key_space_and_survives_a_snapshot() {
        let mut store = KvStore::new();
        let before = store.hash_kv(0).expect("hash");
        let payload = encode_member_record(4, &["http://127.0.0.1:18004".to_string()]);
        assert!(matches!(decode_command(&payload), Ok(Command::Member(_))));
        let applied = StateMachine::apply(&mut store, &entry(payload));
        assert_eq!(applied, Ok(Applied::Nothing));
        assert_eq!(store.revision(), 1, "a record does not move the revision");
        assert_eq!(store.hash_kv(0).expect("hash"), before, "nor the HashKV");
        assert_eq!(
            store.member_table().get(&4).map(|r| r.peer_urls.clone()),
            Some(vec!["http://127.0.0.1:18004".to_string()])
        );
        // MemberUpdate replaces the URLs.
        let update = encode_member_record(4, &["http://127.0.0.1:18014".to_string()]);
        StateMachine::apply(&mut store, &entry(update)).expect("update");
        let mut bytes = Vec::new();
        store.snapshot_view().write_to(&mut bytes).expect("write");
        let restored = KvStore::restore_from(&mut bytes.as_slice()).expect("restore");
        assert_eq!(restored.member_table(), store.member_table());
        assert_eq!(
            restored.member_table()[&4].peer_urls,
            vec!["http://127.0.0.1:18014".to_string()]
        );
    }

    #[test]
    fn bad_records_are_refused_alike_everywhere() {
        let mut store = KvStore::new();
        for payload in [
            encode_member_record(0, &["http://a:1".to_string()]),
            encode_member_record(5, &[]),
            encode_member_record(5, &["x".repeat(MEMBER_URL_BYTES_MAX + 1)]),
        ] {
            assert!(StateMachine::apply(&mut store, &entry(payload)).is_err());
        }
        assert!(store.member_table().is_empty());
    }
}

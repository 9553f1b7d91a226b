//! The persistent Raft state: `raft_state.meta` and [`RaftState`], its only writer.
//!
//! This module owns the state file's bytes and the protocol that makes every update atomic and
//! durable. The authoritative description is docs/FORMAT.md, "State file"; in short:
//!
//! ```text
//! file (8192 bytes) = slot 0 (4096 bytes) ‖ slot 1 (4096 bytes); a slot = 64-byte record ‖ zeros
//!
//!  0      4        8              16          20             28             36     37         40         48           56        60    64
//!  +------+--------+--------------+-----------+--------------+--------------+------+----------+----------+------------+---------+-----+
//!  |magic |version | current_term | voted_for | commit_index | last_applied |state | reserved | sequence | cluster_id | node_id | crc |
//!  | u32  | u32    | u64          | u32 (0=∅) | u64          | u64          | u8   | 3 zero   | u64      | u64        | u32     | u32 |
//!  +------+--------+--------------+-----------+--------------+--------------+------+----------+----------+------------+---------+-----+
//! ```
//! Version 1 (before the identity) had 12 zero bytes where version 2 has `cluster_id` and
//! `node_id`; it is read as a record without identity, which the node adopts (see
//! [`RaftState::open_checked`]).
//!
//! # Invariants
//! - An update writes only the slot that does *not* hold the current state (slot
//!   `sequence mod 2`), as one write linked to an fdatasync, and returns after the fdatasync
//!   completed. So at every instant one slot holds a complete, durable, checksummed record of the
//!   latest acknowledged state, and a crash mid-write leaves the old or the new state, never a mix.
//! - The valid slot with the larger sequence is the state; a slot with a *newer* version than
//!   this build's stops the open (it may hold a newer state than the other slot). Version 0 is
//!   never written: it is what a write torn right after the magic leaves, an invalid slot.
//! - After a failed write or sync the handle is poisoned: no retry (fsyncgate, STYLE §3).
//! - Terms never decrease and a vote, once cast in a term, never changes within it (Raft §5.1,
//!   §5.2); [`RaftState::save`] asserts both, since breaking them is a bug in the caller.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::raft::{HardState, Role};
use crate::storage::file::{LogFile, Vfs, WriteAt};
use crate::storage::format::STATE_FILE_NAME;
use crate::types::{LogIndex, NodeId, Term};

/// "RSTA" (Raft STAte) read as a big-endian word; stored little-endian (bytes `41 54 53 52`).
pub const STATE_MAGIC: u32 = 0x5253_5441;
/// The state file version this code writes (and the newest it reads).
pub const STATE_VERSION: u32 = 2;
/// The oldest version this code reads: version 1 records carry no identity.
pub const STATE_VERSION_OLDEST: u32 = 1;
/// Bytes of one record (the checksummed part of a slot).
pub const STATE_RECORD_SIZE: usize = 64;
/// Bytes of one slot: one page, so a slot write never shares a page (or a sector) with the other.
pub const STATE_SLOT_SIZE: usize = 4096;
/// The whole file: two slots.
pub const STATE_FILE_SIZE: usize = 2 * STATE_SLOT_SIZE;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 4;
const CURRENT_TERM_OFFSET: usize = 8;
const VOTED_FOR_OFFSET: usize = 16;
const COMMIT_INDEX_OFFSET: usize = 20;
const LAST_APPLIED_OFFSET: usize = 28;
const SERVER_STATE_OFFSET: usize = 36;
const RESERVED1_OFFSET: usize = 37;
const SEQUENCE_OFFSET: usize = 40;
const CLUSTER_ID_OFFSET: usize = 48;
const NODE_ID_OFFSET: usize = 56;
const CRC_OFFSET: usize = 60;

const _: () = {
    // The seed's fields in the seed's order and sizes, then sequence, reserved, checksum last.
    assert!(VERSION_OFFSET == MAGIC_OFFSET + 4);
    assert!(CURRENT_TERM_OFFSET == VERSION_OFFSET + 4);
    assert!(VOTED_FOR_OFFSET == CURRENT_TERM_OFFSET + 8);
    assert!(COMMIT_INDEX_OFFSET == VOTED_FOR_OFFSET + 4);
    assert!(LAST_APPLIED_OFFSET == COMMIT_INDEX_OFFSET + 8);
    assert!(SERVER_STATE_OFFSET == LAST_APPLIED_OFFSET + 8);
    assert!(RESERVED1_OFFSET == SERVER_STATE_OFFSET + 1);
    assert!(SEQUENCE_OFFSET == RESERVED1_OFFSET + 3);
    assert!(CLUSTER_ID_OFFSET == SEQUENCE_OFFSET + 8);
    assert!(NODE_ID_OFFSET == CLUSTER_ID_OFFSET + 8);
    assert!(CRC_OFFSET == NODE_ID_OFFSET + 4);
    assert!(CRC_OFFSET == STATE_RECORD_SIZE - 4);
    assert!(STATE_RECORD_SIZE <= STATE_SLOT_SIZE);
    assert!(STATE_FILE_SIZE == 8192);
};

/// The role a server was in, as recorded in the state file (the seed's "server state" byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ServerState {
    #[default]
    Follower = 0,
    Candidate = 1,
    Leader = 2,
    PreCandidate = 3,
}

impl ServerState {
    pub fn from_u8(value: u8) -> Option<ServerState> {
        match value {
            0 => Some(ServerState::Follower),
            1 => Some(ServerState::Candidate),
            2 => Some(ServerState::Leader),
            3 => Some(ServerState::PreCandidate),
            _ => None,
        }
    }
}

impl From<Role> for ServerState {
    fn from(role: Role) -> ServerState {
        match role {
            Role::Follower => ServerState::Follower,
            Role::PreCandidate => ServerState::PreCandidate,
            Role::Candidate => ServerState::Candidate,
            Role::Leader => ServerState::Leader,
        }
    }
}

impl From<ServerState> for Role {
    fn from(state: ServerState) -> Role {
        match state {
            ServerState::Follower => Role::Follower,
            ServerState::PreCandidate => Role::PreCandidate,
            ServerState::Candidate => Role::Candidate,
            ServerState::Leader => Role::Leader,
        }
    }
}

/// Whose state a state file is: the cluster's id and this node's id. Zero in both means
/// "unknown" (a version 1 file, or one created by a tool without an identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: u32,
}

impl Identity {
    pub fn is_known(&self) -> bool {
        *self != Identity::default()
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} of cluster {:016x}",
            self.node_id, self.cluster_id
        )
    }
}

/// The state the file records (Raft Figure 2's persistent state plus the seed's extras and the
/// directory's identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PersistentState {
    pub current_term: Term,
    /// `None` is stored as node id 0, so node ids must start at 1.
    pub voted_for: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub server_state: ServerState,
    /// Whose state this is (written since version 2).
    pub identity: Identity,
}

impl PersistentState {
    /// The part the consensus core needs.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.current_term,
            vote: self.voted_for,
            commit: self.commit_index,
        }
    }

    /// This state with the core's hard state applied.
    pub fn with_hard_state(self, hard: HardState) -> PersistentState {
        PersistentState {
            current_term: hard.term,
            voted_for: hard.vote,
            commit_index: hard.commit,
            ..self
        }
    }
}

/// One decoded slot: the state and the sequence number of the write that stored it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateRecord {
    pub state: PersistentState,
    pub sequence: u64,
}

/// Why one slot does not hold a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("bad magic {found:#010x} (expected {STATE_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported version {found} (this build reads versions {STATE_VERSION_OLDEST} to {STATE_VERSION})")]
    BadVersion { found: u32 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("reserved bytes are not zero")]
    NonZeroReserved,
    #[error("unknown server state {value}")]
    BadServerState { value: u8 },
}

/// Errors of the state file layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: is {len} bytes long, a state file is {STATE_FILE_SIZE}")]
    BadLength { path: PathBuf, len: u64 },
    #[error("{path}: not a raft_state.meta file (bad magic {slot0:#010x} / {slot1:#010x}, expected {STATE_MAGIC:#010x})")]
    NotAStateFile {
        path: PathBuf,
        slot0: u32,
        slot1: u32,
    },
    #[error("{path}: slot {slot} has state file version {found}; this build reads versions {STATE_VERSION_OLDEST} to {STATE_VERSION} (written by a newer rust-raft-log?)")]
    UnsupportedVersion {
        path: PathBuf,
        slot: usize,
        found: u32,
    },
    #[error(
        "{path}: no valid slot (slot 0: {slot0}; slot 1: {slot1}); inspect it with `segdump state`"
    )]
    NoValidSlot {
        path: PathBuf,
        slot0: SlotError,
        slot1: SlotError,
    },
    #[error("{path}: an earlier write or fdatasync failed; the state is no longer written (restart the node)")]
    Poisoned { path: PathBuf },
    /// The directory belongs to another node or cluster.
    #[error(
        "data directory {} belongs to {found}, but this is {expected}: a node must never use \
         another node's log and votes. Point log_directory at this node's own directory; to reuse \
         this one for {expected} anyway, move it away first, and the node starts empty \
         (docs/FORMAT.md, \"Identity\")",
        .dir.display()
    )]
    WrongIdentity {
        dir: PathBuf,
        found: Identity,
        expected: Identity,
    },
    /// The log has entries but the state file is missing: starting would forget term and vote.
    #[error(
        "data directory {} has log entries ({first}..={last}) but no raft_state.meta: starting \
         would forget the term and the votes this node cast. Restore raft_state.meta from a \
         backup, or move the directory away to start this node empty (docs/FORMAT.md, \
         \"Identity\")",
        .dir.display()
    )]
    MissingWithLog {
        dir: PathBuf,
        first: LogIndex,
        last: LogIndex,
    },
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Encodes a record into the first [`STATE_RECORD_SIZE`] bytes of `slot` and zeroes the rest.
///
/// # Panics
/// If `slot` is not [`STATE_SLOT_SIZE`] bytes, or `voted_for` is `Some(NodeId(0))` (0 encodes
/// "no vote"): programmer errors.
pub fn encode_slot(record: &StateRecord, slot: &mut [u8]) {
    assert_eq!(
        slot.len(),
        STATE_SLOT_SIZE,
        "a state slot is {STATE_SLOT_SIZE} bytes"
    );
    let s = &record.state;
    let vote = match s.voted_for {
        Some(NodeId(0)) => panic!("node id 0 cannot be stored as a vote: 0 means 'no vote'"),
        Some(NodeId(id)) => id,
        None => 0,
    };
    slot.fill(0);
    slot[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&STATE_MAGIC.to_le_bytes());
    slot[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&STATE_VERSION.to_le_bytes());
    slot[CURRENT_TERM_OFFSET..CURRENT_TERM_OFFSET + 8]
        .copy_from_slice(&s.current_term.0.to_le_bytes());
    slot[VOTED_FOR_OFFSET..VOTED_FOR_OFFSET + 4].copy_from_slice(&vote.to_le_bytes());
    slot[COMMIT_INDEX_OFFSET..COMMIT_INDEX_OFFSET + 8]
        .copy_from_slice(&s.commit_index.0.to_le_bytes());
    slot[LAST_APPLIED_OFFSET..LAST_APPLIED_OFFSET + 8]
        .copy_from_slice(&s.last_applied.0.to_le_bytes());
    slot[SERVER_STATE_OFFSET] = s.server_state as u8;
    slot[SEQUENCE_OFFSET..SEQUENCE_OFFSET + 8].copy_from_slice(&record.sequence.to_le_bytes());
    slot[CLUSTER_ID_OFFSET..CLUSTER_ID_OFFSET + 8]
        .copy_from_slice(&s.identity.cluster_id.to_le_bytes());
    slot[NODE_ID_OFFSET..NODE_ID_OFFSET + 4].copy_from_slice(&s.identity.node_id.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..CRC_OFFSET]);
    slot[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes one slot (at least [`STATE_RECORD_SIZE`] bytes; the padding after the record is not
/// checked, it carries no meaning).
///
/// # Errors
/// The first failed check, in the order magic, version, checksum, reserved bytes, server state.
pub fn decode_slot(slot: &[u8]) -> Result<StateRecord, SlotError> {
    assert!(
        slot.len() >= STATE_RECORD_SIZE,
        "a state slot needs {STATE_RECORD_SIZE} bytes, got {}",
        slot.len()
    );
    let magic = get_u32(slot, MAGIC_OFFSET);
    if magic != STATE_MAGIC {
        return Err(SlotError::BadMagic { found: magic });
    }
    let version = get_u32(slot, VERSION_OFFSET);
    if !(STATE_VERSION_OLDEST..=STATE_VERSION).contains(&version) {
        return Err(SlotError::BadVersion { found: version });
    }
    let stored = get_u32(slot, CRC_OFFSET);
    let computed = crc32c::crc32c(&slot[..CRC_OFFSET]);
    if stored != computed {
        return Err(SlotError::BadChecksum { stored, computed });
    }
    // Version 1 reserved (zero) the bytes version 2 uses for the identity.
    let reserved_v1 = if version == 1 {
        &slot[CLUSTER_ID_OFFSET..CRC_OFFSET]
    } else {
        &[][..]
    };
    let reserved = slot[RESERVED1_OFFSET..SEQUENCE_OFFSET]
        .iter()
        .chain(reserved_v1);
    if reserved.into_iter().any(|&b| b != 0) {
        return Err(SlotError::NonZeroReserved);
    }
    let value = slot[SERVER_STATE_OFFSET];
    let server_state = ServerState::from_u8(value).ok_or(SlotError::BadServerState { value })?;
    let vote = get_u32(slot, VOTED_FOR_OFFSET);
    Ok(StateRecord {
        state: PersistentState {
            current_term: Term(get_u64(slot, CURRENT_TERM_OFFSET)),
            voted_for: (vote != 0).then_some(NodeId(vote)),
            commit_index: LogIndex(get_u64(slot, COMMIT_INDEX_OFFSET)),
            last_applied: LogIndex(get_u64(slot, LAST_APPLIED_OFFSET)),
            server_state,
            identity: Identity {
                cluster_id: get_u64(slot, CLUSTER_ID_OFFSET),
                node_id: get_u32(slot, NODE_ID_OFFSET),
            },
        },
        sequence: get_u64(slot, SEQUENCE_OFFSET),
    })
}

/// Both slots of a state file, decoded (what `segdump state` prints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFileView {
    pub slots: [Result<StateRecord, SlotError>; 2],
}

impl StateFileView {
    /// Decodes a whole state file's bytes.
    ///
    /// # Errors
    /// [`StateError::BadLength`] if `bytes` is not [`STATE_FILE_SIZE`] long (`path` is for the
    /// message only).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<StateFileView, StateError> {
        if bytes.len() != STATE_FILE_SIZE {
            return Err(StateError::BadLength {
                path: path.to_path_buf(),
                len: bytes.len() as u64,
            });
        }
        Ok(StateFileView {
            slots: [
                decode_slot(&bytes[..STATE_SLOT_SIZE]),
                decode_slot(&bytes[STATE_SLOT_SIZE..]),
            ],
        })
    }

    /// The current state: the valid slot with the larger sequence, and its slot number.
    ///
    /// # Errors
    /// A version this build does not know in either slot; no valid slot (with both reasons).
    pub fn current(&self, path: &Path) -> Result<(usize, StateRecord), StateError> {
        for (slot, r) in self.slots.iter().enumerate() {
            // Only a *newer* version stops the open. A torn write over a zeroed slot can leave
            // the magic with version 0 (the version bytes were not reached): that slot is simply
            // invalid, and the other one holds the state.
            if let Err(SlotError::BadVersion { found }) = r {
                if *found < STATE_VERSION {
                    continue;
                }
                return Err(StateError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    slot,
                    found: *found,
                });
            }
        }
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().ok().map(|rec| (i, *rec)))
            .max_by_key(|(_, rec)| rec.sequence);
        if let Some(found) = best {
            return Ok(found);
        }
        match &self.slots {
            [Err(SlotError::BadMagic { found: a }), Err(SlotError::BadMagic { found: b })] => {
                Err(StateError::NotAStateFile {
                    path: path.to_path_buf(),
                    slot0: *a,
                    slot1: *b,
                })
            }
            [Err(a), Err(b)] => Err(StateError::NoValidSlot {
                path: path.to_path_buf(),
                slot0: a.clone(),
                slot1: b.clone(),
            }),
            // Unreachable: `best` is None only when both slots are errors.
            _ => unreachable!("a valid slot exists but was not chosen"),
        }
    }
}

/// The persistent Raft state of one node, backed by `<node dir>/raft_state.meta`.
pub struct RaftState {
    path: PathBuf,
    file: Arc<dyn LogFile>,
    current: StateRecord,
    /// Reused for every write: one slot's bytes.
    slot_buf: Vec<u8>,
    poisoned: bool,
}

impl std::fmt::Debug for RaftState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftState")
            .field("path", &self.path)
            .field("current", &self.current)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl RaftState {
    /// Opens `<node_dir>/raft_state.meta` through the production file layer (io_uring), creating
    /// the directory and the file if needed.
    ///
    /// # Errors
    /// As [`RaftState::open_with`].
    pub fn open(node_dir: &Path) -> Result<RaftState, StateError> {
        RaftState::open_with(&crate::storage::uring::UringVfs, node_dir)
    }

    /// Opens (or creates) the state file in `node_dir` through `vfs`. A new file holds the initial
    /// state (term 0, no vote, indexes 0, Follower) and is created under a temporary name, synced
    /// and renamed into place, so the final name never refers to a file without a valid slot.
    ///
    /// # Errors
    /// I/O errors (with the path and the operation); a file of the wrong length; no valid slot;
    /// a slot of an unknown version.
    pub fn open_with(vfs: &dyn Vfs, node_dir: &Path) -> Result<RaftState, StateError> {
        let path = node_dir.join(STATE_FILE_NAME);
        vfs.create_dir_all(node_dir)
            .map_err(io_err(node_dir, "create directory"))?;
        let names = vfs
            .list_dir(node_dir)
            .map_err(io_err(node_dir, "list directory"))?;
        if !names.iter().any(|n| n == STATE_FILE_NAME) {
            Self::create(vfs, node_dir, &path)?;
        }
        let file = vfs.open(&path).map_err(io_err(&path, "open"))?;
        let view = StateFileView::decode(&path, file.bytes())?;
        let (_, current) = view.current(&path)?;
        Ok(RaftState {
            path,
            file,
            current,
            slot_buf: vec![0; STATE_SLOT_SIZE],
            poisoned: false,
        })
    }

    /// Opens the state file of a node directory whose log is already open, checking that the
    /// directory is this node's (`expected`):
    /// - no state file: created with `expected`, unless the log holds entries (`log_range` is
    ///   `Some((first, last))`): then [`StateError::MissingWithLog`];
    /// - a file without identity (version 1, or created without one): the identity is adopted,
    ///   written durably at once (as version 2), and a warning is logged;
    /// - another identity: [`StateError::WrongIdentity`].
    ///
    /// # Errors
    /// As [`RaftState::open_with`], and the two above.
    pub fn open_checked(
        vfs: &dyn Vfs,
        node_dir: &Path,
        expected: Identity,
        log_range: Option<(LogIndex, LogIndex)>,
    ) -> Result<RaftState, StateError> {
        vfs.create_dir_all(node_dir)
            .map_err(io_err(node_dir, "create directory"))?;
        let names = vfs
            .list_dir(node_dir)
            .map_err(io_err(node_dir, "list directory"))?;
        let exists = names.iter().any(|n| n == STATE_FILE_NAME);
        if !exists {
            if let Some((first, last)) = log_range {
                return Err(StateError::MissingWithLog {
                    dir: node_dir.to_path_buf(),
                    first,
                    last,
                });
            }
        }
        let mut state = RaftState::open_with(vfs, node_dir)?;
        let found = state.state().identity;
        if !found.is_known() {
            if exists {
                tracing::warn!(
                    path = %state.path().display(),
                    "the state file has no identity (written before format version 2): adopting {expected}"
                );
            }
            let adopted = PersistentState {
                identity: expected,
                ..*state.state()
            };
            state.save(adopted)?;
        } else if found != expected {
            return Err(StateError::WrongIdentity {
                dir: node_dir.to_path_buf(),
                found,
                expected,
            });
        }
        Ok(state)
    }

    fn create(vfs: &dyn Vfs, node_dir: &Path, path: &Path) -> Result<(), StateError> {
        let tmp = node_dir.join(format!("{STATE_FILE_NAME}.tmp"));
        vfs.create_zeroed(&tmp, STATE_FILE_SIZE as u64)
            .map_err(io_err(&tmp, "create"))?;
        let initial = StateRecord {
            state: PersistentState::default(),
            sequence: 1,
        };
        let mut slot = vec![0u8; STATE_SLOT_SIZE];
        encode_slot(&initial, &mut slot);
        {
            let file = vfs.open(&tmp).map_err(io_err(&tmp, "open"))?;
            file.write_durable(&[WriteAt {
                offset: Self::slot_offset(initial.sequence),
                bytes: &slot,
            }])
            .map_err(io_err(&tmp, "write + fdatasync"))?;
        }
        vfs.rename(&tmp, path)
            .map_err(io_err(path, "rename into place"))?;
        vfs.sync_dir(node_dir)
            .map_err(io_err(node_dir, "fsync directory"))
    }

    fn slot_offset(sequence: u64) -> u64 {
        (sequence % 2) * STATE_SLOT_SIZE as u64
    }

    /// The current (latest durable) state.
    pub fn state(&self) -> &PersistentState {
        &self.current.state
    }

    /// The sequence number of the current state's write (grows by one per [`RaftState::save`]).
    pub fn sequence(&self) -> u64 {
        self.current.sequence
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `new` the durable state: returns after its slot write and fdatasync completed.
    /// A save of an unchanged state still writes (the caller asked for durability).
    ///
    /// # Errors
    /// [`StateError::Io`] if the write or fdatasync failed (the handle is poisoned from then on:
    /// the slot may hold the old or the new record after a crash, and nothing is retried);
    /// [`StateError::Poisoned`] for every save after such a failure.
    ///
    /// # Panics
    /// If `new` lowers the term, changes a vote already cast in the same term, or votes for node
    /// 0: each is a bug in the caller that would break Raft's safety (§5.1, §5.2).
    pub fn save(&mut self, new: PersistentState) -> Result<(), StateError> {
        let (record, offset) = self.prepare_save(new)?;
        let result = self.file.write_durable(&[WriteAt {
            offset,
            bytes: &self.slot_buf,
        }]);
        self.finish_save(record, result)
    }

    /// [`RaftState::save`] without blocking the thread: the slot write and its fdatasync go
    /// through [`LogFile::start_durable_write`] (production: the io_uring waited on by the
    /// runtime's reactor), and the state is current once the returned future resolved `Ok`. The
    /// append engine runs it beside the log's write.
    ///
    /// # Errors
    /// As [`RaftState::save`]. # Panics: as [`RaftState::save`].
    pub async fn save_async(&mut self, new: PersistentState) -> Result<(), StateError> {
        let (record, offset) = self.prepare_save(new)?;
        let slot = std::mem::take(&mut self.slot_buf);
        let (result, slot) = Arc::clone(&self.file)
            .start_durable_write(offset, slot)
            .await;
        self.slot_buf = slot;
        self.finish_save(record, result)
    }

    /// The checks of a save and the encoded slot (in `slot_buf`): the record and its offset.
    fn prepare_save(&mut self, new: PersistentState) -> Result<(StateRecord, u64), StateError> {
        let old = self.current.state;
        assert!(
            new.current_term >= old.current_term,
            "term must never decrease: {} -> {}",
            old.current_term,
            new.current_term
        );
        if new.current_term == old.current_term {
            if let Some(voted) = old.voted_for {
                assert!(
                    new.voted_for == Some(voted),
                    "vote in term {} changed from {voted} to {:?}",
                    old.current_term,
                    new.voted_for
                );
            }
        }
        assert!(
            !old.identity.is_known() || new.identity == old.identity,
            "the state file's identity changed from {} to {}",
            old.identity,
            new.identity
        );
        if self.poisoned {
            return Err(StateError::Poisoned {
                path: self.path.clone(),
            });
        }
        let record = StateRecord {
            state: new,
            sequence: self.current.sequence + 1,
        };
        self.slot_buf.resize(STATE_SLOT_SIZE, 0);
        encode_slot(&record, &mut self.slot_buf);
        // The target slot is the one not holding `self.current` (sequence parity differs), so a
        // torn write can only damage the slot whose contents are already superseded.
        Ok((record, Self::slot_offset(record.sequence)))
    }

    fn finish_save(
        &mut self,
        record: StateRecord,
        result: io::Result<()>,
    ) -> Result<(), StateError> {
        if let Err(source) = result {
            // fsyncgate: the page cache may already have dropped the write; never retry.
            self.poisoned = true;
            return Err(StateError::Io {
                path: self.path.clone(),
                op: "write + fdatasync",
                source,
            });
        }
        self.current = record;
        Ok(())
    }

    /// Drops the file's write side (see [`LogFile::release_io`]).
    pub fn release_io(&self) {
        self.file.release_io();
    }

    /// Convenience: saves the core's hard state, keeping the other fields.
    ///
    /// # Errors
    /// As [`RaftState::save`].
    pub fn save_hard_state(&mut self, hard: HardState) -> Result<(), StateError> {
        self.save(self.current.state.with_hard_state(hard))
    }

    /// [`RaftState::save_hard_state`] through [`RaftState::save_async`].
    ///
    /// # Errors
    /// As [`RaftState::save`].
    pub async fn save_hard_state_async(&mut self, hard: HardState) -> Result<(), StateError> {
        self.save_async(self.current.state.with_hard_state(hard))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistentState {
        PersistentState {
            current_term: Term(7),
            voted_for: Some(NodeId(3)),
            commit_index: LogIndex(0x0102_0304_0506_0708),
            last_applied: LogIndex(41),
            server_state: ServerState::Candidate,
            identity: Identity {
                cluster_id: 0x1122_3344_5566_7788,
                node_id: 5,
            },
        }
    }

    #[test]
    fn slot_round_trips_with_documented_layout() {
        let rec = StateRecord {
            state: sample(),
            sequence: 9,
        };
        let mut slot = vec![0xee; STATE_SLOT_SIZE];
        encode_slot(&rec, &mut slot);
        assert_eq!(&slot[0..4], &[0x41, 0x54, 0x53, 0x52]);
        assert_eq!(&slot[4..8], &2u32.to_le_bytes());
        assert_eq!(&slot[8..16], &7u64.to_le_bytes());
        assert_eq!(&slot[16..20], &3u32.to_le_bytes());
        assert_eq!(&slot[20..28], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&slot[28..36], &41u64.to_le_bytes());
        assert_eq!(slot[36], 1);
        assert_eq!(&slot[40..48], &9u64.to_le_bytes());
        assert_eq!(&slot[48..56], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&slot[56..60], &5u32.to_le_bytes());
        assert!(slot[64..].iter().all(|&b| b == 0));
        assert_eq!(decode_slot(&slot), Ok(rec));
    }

    /// A version 1 record (identity bytes reserved as zero) is still read, as a record without
    /// identity; non-zero bytes there in version 1 are damage.
    #[test]
    fn a_version_1_slot_reads_without_identity() {
        let rec = StateRecord {
            state: PersistentState {
                identity: Identity::default(),
                ..sample()
            },
            sequence: 3,
        };
        let mut slot = vec![0; STATE_SLOT_SIZE];
        encode_slot(&rec, &mut slot);
        slot[4..8].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&slot[..CRC_OFFSET]);
        slot[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_slot(&slot), Ok(rec));
        slot[50] = 1;
        let crc = crc32c::crc32c(&slot[..CRC_OFFSET]);
        slot[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_slot(&slot), Err(SlotError::NonZeroReserved));
    }

    #[test]
    fn every_byte_flip_in_a_record_is_detected() {
        let mut slot = vec![0; STATE_SLOT_SIZE];
        encode_slot(
            &StateRecord {
                state: sample(),
                sequence: 2,
            },
            &mut slot,
        );
        for byte in 0..STATE_RECORD_SIZE {
            let mut bad = slot.clone();
            bad[byte] ^= 0x04;
            assert!(decode_slot(&bad).is_err(), "flip in byte {byte} undetected");
        }
    }

    #[test]
    fn newest_valid_slot_wins_and_unknown_version_stops() {
        let path = Path::new("x/raft_state.meta");
        let mut bytes = vec![0u8; STATE_FILE_SIZE];
        let old = StateRecord {
            state: PersistentState::default(),
            sequence: 4,
        };
        let new = StateRecord {
            state: sample(),
            sequence: 5,
        };
        encode_slot(&old, &mut bytes[..STATE_SLOT_SIZE]);
        encode_slot(&new, &mut bytes[STATE_SLOT_SIZE..]);
        let view = StateFileView::decode(path, &bytes).unwrap();
        assert_eq!(view.current(path).unwrap(), (1, new));
        bytes[STATE_SLOT_SIZE + 4] = 3; // slot 1 claims version 3
        let view = StateFileView::decode(path, &bytes).unwrap();
        assert!(matches!(
            view.current(path),
            Err(StateError::UnsupportedVersion {
                slot: 1,
                found: 3,
                ..
            })
        ));
    }
}

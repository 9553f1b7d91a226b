//! Snapshot files: a state machine's state at a log index, durable, checksummed and streamed.
//!
//! This module owns the `snapshot_<index>.snap` files of a node directory, their temporary
//! siblings (`.snap.tmp` while a local snapshot is written, `.snap.recv` while one is received
//! from the leader) and the one decoder of their bytes, which the reader, [`verify`], the
//! receiver and `segdump snapshot` all run. docs/FORMAT.md, "Snapshot file", is the authoritative
//! description; in short (little endian, CRC-32C):
//!
//! ```text
//! file    = header ‖ chunk* ‖ end marker ‖ trailer            (nothing after the trailer)
//!
//! header  0        8         12           16           24           32          40            44           48
//!         +--------+---------+------------+------------+------------+-----------+-------------+------------+----------------+----------------+--------------+-----+
//!         | magic  | version | header_len | cluster_id | last_index | last_term | payload_kind| voter count| voter ids      | learner count  | learner ids  | crc |
//!         |RRLSNAP1| u32 = 1 | u32        | u64        | u64        | u64       | u32         | u32 (v)    | v × u32        | u32 (l)        | l × u32      | u32 |
//!         +--------+---------+------------+------------+------------+-----------+-------------+------------+----------------+----------------+--------------+-----+
//!         header_len = 56 + 4 (v + l); crc = CRC-32C of the header's bytes before it
//! chunk   len u32 (1 ..= CHUNK_MAX) ‖ crc u32 = CRC-32C(bytes) ‖ bytes
//! end     len u32 = 0 ‖ crc u32 = 0
//! trailer payload_bytes u64 ‖ payload_crc u32 ‖ chunk_count u32 ‖ crc u32 (of the 16 bytes before it)
//! ```
//!
//! # Invariants
//! - A file under a final name (`snapshot_<index>.snap`) was complete and fdatasync'ed before it
//!   got that name (write to a temporary name, fdatasync, rename, directory fsync), so after a
//!   crash the final name refers to nothing or to a complete snapshot; anything else found there
//!   is damage, reported, never repaired silently.
//! - No length read from disk (or from the wire) is used before it is checked against its bound
//!   (`CHUNK_MAX`, [`SNAPSHOT_HEADER_MAX_BYTES`]) and, when reading a file, against the bytes the
//!   file still holds; nothing is allocated from an unchecked length, and no byte from disk can
//!   make this code panic.
//! - Payload bytes are handed out only after the CRC of their chunk checked out; the whole
//!   payload is good only once the trailer checked out too (the reader's `read` returned `Ok(0)`):
//!   a consumer applies a snapshot only then.
//! - A writer or receiver whose write or fdatasync failed is poisoned: it never retries and never
//!   renames its file into place (fsyncgate, STYLE §3). Dropping an unfinished one removes its
//!   temporary file (best effort; [`remove_temp_files`] removes what a crash leaves).
//! - Neither the reader, nor the receiver, nor [`read_file_range`] holds a whole file in memory:
//!   at most one chunk (`CHUNK_MAX` + 8 bytes) or one requested range.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::file::{AppendFile, ReadFile, Vfs};
use crate::types::{LogIndex, NodeId, Term};

/// The first 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RRLSNAP1";
/// The snapshot file format version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// `payload_kind` of an opaque payload (tests, tools).
pub const PAYLOAD_KIND_OPAQUE: u32 = 0;
/// `payload_kind` of a key-value store payload (`src/kv`).
pub const PAYLOAD_KIND_KV: u32 = 1;
/// The largest chunk a file may hold.
pub const CHUNK_MAX: usize = 1 << 20;
/// The size at which [`SnapshotWriter`] cuts its chunks.
pub const CHUNK_TARGET_BYTES: usize = 256 << 10;
/// Voters plus learners a header may list.
pub const SNAPSHOT_MEMBERS_MAX: usize = 1024;
/// Bytes of a chunk's (and the end marker's) header: `len`, `crc`.
pub const CHUNK_HEADER_BYTES: usize = 8;
/// Bytes of the trailer.
pub const TRAILER_BYTES: usize = 20;
/// Bytes of a header that lists no member (the fixed fields, both counts and the CRC).
pub const SNAPSHOT_HEADER_MIN_BYTES: usize = 56;
/// Bytes of the largest header: [`SNAPSHOT_MEMBERS_MAX`] members.
pub const SNAPSHOT_HEADER_MAX_BYTES: usize = SNAPSHOT_HEADER_MIN_BYTES + 4 * SNAPSHOT_MEMBERS_MAX;
/// The most bytes one [`read_file_range`] returns (a larger request gets this many).
pub const RANGE_BYTES_MAX: usize = 4 << 20;
/// A saved snapshot (docs/FORMAT.md, "Saved snapshot") is a snapshot file, zero bytes up to a
/// multiple of this, and a SHA-256 of everything before it: etcd's `snapshot save` (3.4.23 and
/// later) refuses a stream whose length is not 32 more than a multiple of 512.
pub const SAVED_ALIGN_BYTES: u64 = 512;
/// Bytes of the SHA-256 that ends a saved snapshot.
pub const SAVED_DIGEST_BYTES: usize = crate::storage::sha256::DIGEST_BYTES;

/// Zero bytes a saved snapshot puts after a snapshot file of `file_len` bytes.
pub fn saved_padding_bytes(file_len: u64) -> u64 {
    (SAVED_ALIGN_BYTES - file_len % SAVED_ALIGN_BYTES) % SAVED_ALIGN_BYTES
}

/// Bytes a saved snapshot adds after a snapshot file of `file_len` bytes (padding and digest).
pub fn saved_suffix_bytes(file_len: u64) -> u64 {
    saved_padding_bytes(file_len) + SAVED_DIGEST_BYTES as u64
}

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 8;
const HEADER_LEN_OFFSET: usize = 12;
const CLUSTER_ID_OFFSET: usize = 16;
const LAST_INDEX_OFFSET: usize = 24;
const LAST_TERM_OFFSET: usize = 32;
const PAYLOAD_KIND_OFFSET: usize = 40;
const VOTER_COUNT_OFFSET: usize = 44;
const VOTERS_OFFSET: usize = 48;
/// Magic, version and header length: what must be read to know the header's length.
const HEADER_START_BYTES: usize = 16;

const TRAILER_PAYLOAD_BYTES_OFFSET: usize = 0;
const TRAILER_PAYLOAD_CRC_OFFSET: usize = 8;
const TRAILER_CHUNK_COUNT_OFFSET: usize = 12;
const TRAILER_CRC_OFFSET: usize = 16;

const _: () = {
    // The header's fixed fields back to back in the documented order, the counts after them.
    assert!(MAGIC_OFFSET == 0 && SNAPSHOT_MAGIC.len() == 8);
    assert!(VERSION_OFFSET == MAGIC_OFFSET + 8);
    assert!(HEADER_LEN_OFFSET == VERSION_OFFSET + 4);
    assert!(HEADER_START_BYTES == HEADER_LEN_OFFSET + 4);
    assert!(CLUSTER_ID_OFFSET == HEADER_START_BYTES);
    assert!(LAST_INDEX_OFFSET == CLUSTER_ID_OFFSET + 8);
    assert!(LAST_TERM_OFFSET == LAST_INDEX_OFFSET + 8);
    assert!(PAYLOAD_KIND_OFFSET == LAST_TERM_OFFSET + 8);
    assert!(VOTER_COUNT_OFFSET == PAYLOAD_KIND_OFFSET + 4);
    assert!(VOTERS_OFFSET == VOTER_COUNT_OFFSET + 4);
    // No member: voter count, learner count, CRC.
    assert!(SNAPSHOT_HEADER_MIN_BYTES == VOTERS_OFFSET + 4 + 4);
    assert!(SNAPSHOT_HEADER_MAX_BYTES <= u32::MAX as usize);
    assert!(TRAILER_PAYLOAD_CRC_OFFSET == TRAILER_PAYLOAD_BYTES_OFFSET + 8);
    assert!(TRAILER_CHUNK_COUNT_OFFSET == TRAILER_PAYLOAD_CRC_OFFSET + 4);
    assert!(TRAILER_CRC_OFFSET == TRAILER_CHUNK_COUNT_OFFSET + 4);
    assert!(TRAILER_BYTES == TRAILER_CRC_OFFSET + 4);
    assert!(CHUNK_TARGET_BYTES >= 1 && CHUNK_TARGET_BYTES <= CHUNK_MAX);
    assert!(CHUNK_MAX <= u32::MAX as usize);
    assert!(RANGE_BYTES_MAX >= CHUNK_MAX);
};

// ---------------------------------------------------------------------------------------------
// Metadata and errors
// ---------------------------------------------------------------------------------------------

/// What a snapshot covers: the log up to `index` (whose entry has `term`), the configuration in
/// force at `index`, and how to read the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes (Raft §7 "last included index").
    pub index: LogIndex,
    /// The term of that entry ("last included term").
    pub term: Term,
    /// The cluster the snapshot belongs to (docs/FORMAT.md, "Identity").
    pub cluster_id: u64,
    /// [`PAYLOAD_KIND_OPAQUE`] or [`PAYLOAD_KIND_KV`].
    pub payload_kind: u32,
    /// The voting members at `index` (at least one).
    pub voters: Vec<NodeId>,
    /// The non-voting members at `index`.
    pub learners: Vec<NodeId>,
}

impl SnapshotMeta {
    /// Checks what a header must satisfy: index and term >= 1, a known payload kind, at least
    /// one voter, at most [`SNAPSHOT_MEMBERS_MAX`] members, no member id 0 and none listed twice.
    ///
    /// # Errors
    /// The first rule broken, in words.
    pub fn check(&self) -> Result<(), String> {
        if self.index.0 == 0 {
            return Err("last index is 0 (a snapshot covers at least entry 1)".into());
        }
        if self.term.0 == 0 {
            return Err("last term is 0 (every entry has a term >= 1)".into());
        }
        if self.payload_kind != PAYLOAD_KIND_OPAQUE && self.payload_kind != PAYLOAD_KIND_KV {
            return Err(format!("unknown payload kind {}", self.payload_kind));
        }
        if self.voters.is_empty() {
            return Err("no voter".into());
        }
        let members = self.voters.len() + self.learners.len();
        if members > SNAPSHOT_MEMBERS_MAX {
            return Err(format!(
                "{members} members, at most {SNAPSHOT_MEMBERS_MAX} fit a header"
            ));
        }
        let mut ids: Vec<u32> = self
            .voters
            .iter()
            .chain(&self.learners)
            .map(|n| n.0)
            .collect();
        if ids.contains(&0) {
            return Err("member id 0 (node ids start at 1)".into());
        }
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("member {} is listed twice", w[0]));
        }
        Ok(())
    }

    /// The header's length in bytes for this member list.
    fn header_bytes(&self) -> usize {
        SNAPSHOT_HEADER_MIN_BYTES + 4 * (self.voters.len() + self.learners.len())
    }
}

/// What a complete, valid snapshot file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub meta: SnapshotMeta,
    pub payload_bytes: u64,
    /// CRC-32C of the whole payload (as the trailer records it).
    pub payload_crc: u32,
    pub chunk_count: u32,
    pub file_bytes: u64,
}

/// What is wrong with a snapshot file's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("bad magic {found:02x?} (expected \"RRLSNAP1\"): not a snapshot file")]
    BadMagic { found: [u8; 8] },
    #[error("snapshot format version {found}; this build reads version {SNAPSHOT_VERSION} (written by a newer rust-raft-log?)")]
    UnsupportedVersion { found: u32 },
    #[error(
        "header length {len} is outside [{SNAPSHOT_HEADER_MIN_BYTES}, {SNAPSHOT_HEADER_MAX_BYTES}]"
    )]
    HeaderLength { len: u32 },
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("header length {len} does not fit its member counts ({detail})")]
    HeaderLayout { len: u32, detail: String },
    #[error("invalid header: {0}")]
    BadMeta(String),
    #[error("chunk {chunk} has length {len}, above the maximum {CHUNK_MAX}")]
    ChunkLength { chunk: u32, len: u32 },
    #[error("chunk {chunk} ({len} bytes) checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChunkChecksum {
        chunk: u32,
        len: u32,
        stored: u32,
        computed: u32,
    },
    #[error("more chunks than a u32 counts")]
    TooManyChunks,
    #[error("end-of-payload marker carries checksum {crc:#010x}, must be 0")]
    EndMarker { crc: u32 },
    #[error("trailer checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    TrailerChecksum { stored: u32, computed: u32 },
    #[error("the trailer counts {stored} payload bytes, the chunks hold {counted}")]
    PayloadBytes { stored: u64, counted: u64 },
    #[error(
        "the trailer records payload checksum {stored:#010x}, the chunks give {computed:#010x}"
    )]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("the trailer counts {stored} chunks, the file holds {counted}")]
    ChunkCount { stored: u32, counted: u32 },
    #[error("{bytes} byte(s) follow the trailer")]
    TrailingBytes { bytes: u64 },
    #[error("the padding of a saved snapshot holds a non-zero byte at {at}")]
    SavedPadding { at: u64 },
    #[error(
        "the SHA-256 of a saved snapshot does not match: stored {stored}, computed {computed}"
    )]
    SavedDigest { stored: String, computed: String },
    #[error("the file ends at byte {len}, inside the {unit}, which needs bytes up to {needed}")]
    Truncated { len: u64, unit: String, needed: u64 },
    #[error("the file name says index {name_index}, the header says {header_index}")]
    NameMismatch {
        name_index: LogIndex,
        header_index: LogIndex,
    },
}

/// Errors of the snapshot file layer: what went wrong, in which file, at which byte.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// The file's bytes are not a valid snapshot: `offset` is where the damaged unit starts (or,
    /// for a truncation, where the file ends).
    #[error("{}: damaged snapshot at byte {offset}: {damage}; inspect it with `segdump snapshot verify {}`", path.display(), path.display())]
    Damaged {
        path: PathBuf,
        offset: u64,
        damage: Damage,
    },
    /// A transfer piece that does not start where the receiver stands.
    #[error("{}: piece at offset {offset} is out of order: {received} bytes received so far, resume from offset {received}", path.display())]
    OutOfOrder {
        path: PathBuf,
        offset: u64,
        received: u64,
    },
    /// The received header is another snapshot than the one announced.
    #[error("{}: received snapshot of index {found_index} term {found_term}, expected index {expected_index} term {expected_term}", path.display())]
    WrongSnapshot {
        path: PathBuf,
        expected_index: LogIndex,
        expected_term: Term,
        found_index: LogIndex,
        found_term: Term,
    },
    /// `finish` before the whole file arrived.
    #[error("{}: transfer incomplete: {received} bytes received, still expecting the {missing}", path.display())]
    Incomplete {
        path: PathBuf,
        received: u64,
        missing: String,
    },
    #[error("{}: invalid snapshot metadata: {reason}", path.display())]
    InvalidMeta { path: PathBuf, reason: String },
    #[error("{}: offset {offset} lies past the end of the file ({len} bytes)", path.display())]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    #[error("{}: an earlier write or fdatasync failed; the file is abandoned (no retry)", path.display())]
    Poisoned { path: PathBuf },
}

impl SnapshotFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SnapshotFileError::Io { path, .. }
            | SnapshotFileError::Damaged { path, .. }
            | SnapshotFileError::OutOfOrder { path, .. }
            | SnapshotFileError::WrongSnapshot { path, .. }
            | SnapshotFileError::Incomplete { path, .. }
            | SnapshotFileError::InvalidMeta { path, .. }
            | SnapshotFileError::OutOfRange { path, .. }
            | SnapshotFileError::Poisoned { path } => path,
        }
    }

    /// The damage, if this is a [`SnapshotFileError::Damaged`].
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            SnapshotFileError::Damaged { damage, .. } => Some(damage),
            _ => None,
        }
    }

    /// The `SnapshotFileError` an `io::Error` of this module's `Read`/`Write` impls wraps.
    pub fn from_io(e: &io::Error) -> Option<&SnapshotFileError> {
        e.get_ref()?.downcast_ref::<SnapshotFileError>()
    }
}

impl From<SnapshotFileError> for io::Error {
    fn from(e: SnapshotFileError) -> io::Error {
        let kind = match &e {
            SnapshotFileError::Io { source, .. } => source.kind(),
            SnapshotFileError::Damaged {
                damage: Damage::Truncated { .. },
                ..
            } => io::ErrorKind::UnexpectedEof,
            SnapshotFileError::Damaged { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> SnapshotFileError + 'a {
    move |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        op,
        source: Arc::new(source),
    }
}

// ---------------------------------------------------------------------------------------------
// File naming
// ---------------------------------------------------------------------------------------------

const NAME_PREFIX: &str = "snapshot_";
const NAME_SUFFIX: &str = ".snap";
const NAME_DIGITS_MIN: usize = 20;
const TEMP_SUFFIX: &str = ".tmp";
const RECEIVE_SUFFIX: &str = ".recv";

/// `snapshot_<index, zero-padded to at least 20 digits>.snap` (every u64 fits 20 digits).
pub fn snapshot_file_name(index: LogIndex) -> String {
    format!(
        "{NAME_PREFIX}{:0width$}{NAME_SUFFIX}",
        index.0,
        width = NAME_DIGITS_MIN
    )
}

/// The name a local snapshot is written under before it is complete.
pub fn snapshot_temp_name(index: LogIndex) -> String {
    format!("{}{TEMP_SUFFIX}", snapshot_file_name(index))
}

/// The name a snapshot received from the leader is written under before it is complete.
pub fn snapshot_receive_name(index: LogIndex) -> String {
    format!("{}{RECEIVE_SUFFIX}", snapshot_file_name(index))
}

/// The index of a snapshot file name. Only the canonical spelling ([`snapshot_file_name`] of an
/// index >= 1) is a snapshot, so one index has one name; temporary files, other paddings, signs
/// and suffixes are `None`. Callers sort by the number.
pub fn parse_snapshot_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() < NAME_DIGITS_MIN || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = digits.parse().ok()?;
    if index == 0 || snapshot_file_name(LogIndex(index)) != name {
        return None;
    }
    Some(LogIndex(index))
}

/// Whether `name` is a temporary snapshot file ([`snapshot_temp_name`],
/// [`snapshot_receive_name`]).
pub fn is_snapshot_temp_name(name: &str) -> bool {
    let base = name
        .strip_suffix(TEMP_SUFFIX)
        .or_else(|| name.strip_suffix(RECEIVE_SUFFIX));
    base.and_then(parse_snapshot_file_name).is_some()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// The header bytes of a snapshot file for `meta` (the layout of docs/FORMAT.md, "Snapshot
/// files"), checksum included. [`SnapshotWriter`] writes files with it; tests build headers
/// with it.
pub fn encode_header(meta: &SnapshotMeta) -> Vec<u8> {
    let len = meta.header_bytes();
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(&SNAPSHOT_MAGIC);
    h.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&meta.cluster_id.to_le_bytes());
    h.extend_from_slice(&meta.index.0.to_le_bytes());
    h.extend_from_slice(&meta.term.0.to_le_bytes());
    h.extend_from_slice(&meta.payload_kind.to_le_bytes());
    for list in [&meta.voters, &meta.learners] {
        h.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            h.extend_from_slice(&id.0.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(h.len(), len, "header encoding disagrees with its length");
    h
}

/// The end marker followed by the trailer.
fn encode_end(
    payload_bytes: u64,
    payload_crc: u32,
    chunk_count: u32,
) -> [u8; CHUNK_HEADER_BYTES + TRAILER_BYTES] {
    let mut b = [0u8; CHUNK_HEADER_BYTES + TRAILER_BYTES];
    let t = &mut b[CHUNK_HEADER_BYTES..];
    t[TRAILER_PAYLOAD_BYTES_OFFSET..TRAILER_PAYLOAD_CRC_OFFSET]
        .copy_from_slice(&payload_bytes.to_le_bytes());
    t[TRAILER_PAYLOAD_CRC_OFFSET..TRAILER_CHUNK_COUNT_OFFSET]
        .copy_from_slice(&payload_crc.to_le_bytes());
    t[TRAILER_CHUNK_COUNT_OFFSET..TRAILER_CRC_OFFSET].copy_from_slice(&chunk_count.to_le_bytes());
    let crc = crc32c::crc32c(&t[..TRAILER_CRC_OFFSET]);
    t[TRAILER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// The decoder (the one place that judges a snapshot's bytes)
// ---------------------------------------------------------------------------------------------

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(w))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let w: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// Where the decoder stands: which unit of the file it expects next.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Magic, version, header length.
    HeaderStart,
    /// The rest of a header of `len` bytes.
    HeaderRest {
        len: usize,
    },
    /// A chunk header or the end marker.
    ChunkHead,
    /// The bytes of a chunk whose header said `len` and `crc`.
    ChunkBody {
        len: usize,
        crc: u32,
    },
    Trailer,
    Done,
}

/// What a unit turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    HeaderStart,
    Header,
    ChunkHead,
    /// A chunk whose CRC checked out: its bytes are payload.
    Payload,
    End,
    Trailer,
}

/// An incremental decoder: fed one unit at a time (exactly [`Decoder::need`] bytes), it checks
/// each before the next is asked for. The reader, `verify` and the receiver all run it.
#[derive(Clone, Debug)]
struct Decoder {
    stage: Stage,
    /// File offset of the next unit.
    offset: u64,
    header_start: [u8; HEADER_START_BYTES],
    meta: Option<SnapshotMeta>,
    payload_bytes: u64,
    payload_crc: u32,
    chunk_count: u32,
    /// Offset of the chunk header of the chunk body expected (for its errors).
    chunk_offset: u64,
}

impl Decoder {
    fn new() -> Decoder {
        Decoder {
            stage: Stage::HeaderStart,
            offset: 0,
            header_start: [0; HEADER_START_BYTES],
            meta: None,
            payload_bytes: 0,
            payload_crc: 0,
            chunk_count: 0,
            chunk_offset: 0,
        }
    }

    /// Bytes of the next unit (0 once the trailer was checked).
    fn need(&self) -> usize {
        match self.stage {
            Stage::HeaderStart => HEADER_START_BYTES,
            Stage::HeaderRest { len } => len - HEADER_START_BYTES,
            Stage::ChunkHead => CHUNK_HEADER_BYTES,
            Stage::ChunkBody { len, .. } => len,
            Stage::Trailer => TRAILER_BYTES,
            Stage::Done => 0,
        }
    }

    /// Where the file may end or a receiver may commit: after the header and after each chunk
    /// (the expected unit is a chunk header), and after the trailer.
    fn at_boundary(&self) -> bool {
        matches!(self.stage, Stage::ChunkHead | Stage::Done)
    }

    /// The unit expected, in words (for truncation and incomplete transfers).
    fn expected_unit(&self) -> String {
        match self.stage {
            Stage::HeaderStart | Stage::HeaderRest { .. } => "header".into(),
            Stage::ChunkHead => format!(
                "header of chunk {} (or the end marker)",
                u64::from(self.chunk_count) + 1
            ),
            Stage::ChunkBody { len, .. } => format!(
                "bytes of chunk {} ({len} bytes)",
                u64::from(self.chunk_count) + 1
            ),
            Stage::Trailer => "trailer".into(),
            Stage::Done => "nothing (the file is complete)".into(),
        }
    }

    fn summary(&self) -> Option<SnapshotSummary> {
        match (&self.stage, &self.meta) {
            (Stage::Done, Some(meta)) => Some(SnapshotSummary {
                meta: meta.clone(),
                payload_bytes: self.payload_bytes,
                payload_crc: self.payload_crc,
                chunk_count: self.chunk_count,
                file_bytes: self.offset,
            }),
            _ => None,
        }
    }

    /// Checks the next unit, `bytes` (exactly [`Decoder::need`] of them), and moves on. On
    /// damage returns the offset it lies at; the decoder must not be fed again then (the
    /// receiver restores a clone taken at its last commit).
    ///
    /// # Panics
    /// If `bytes` is not [`Decoder::need`] bytes long, or the decoder is done: a caller's bug.
    fn take(&mut self, bytes: &[u8]) -> Result<Unit, (u64, Damage)> {
        assert!(
            self.stage != Stage::Done,
            "snapshot decoder fed after the trailer"
        );
        assert_eq!(
            bytes.len(),
            self.need(),
            "snapshot decoder fed {} bytes for a unit of {}",
            bytes.len(),
            self.need()
        );
        let at = self.offset;
        let unit = match self.stage.clone() {
            Stage::HeaderStart => self.take_header_start(bytes)?,
            Stage::HeaderRest { len } => self.take_header_rest(bytes, len)?,
            Stage::ChunkHead => self.take_chunk_head(bytes)?,
            Stage::ChunkBody { len, crc } => self.take_chunk_body(bytes, len, crc)?,
            Stage::Trailer => self.take_trailer(bytes)?,
            Stage::Done => unreachable!("checked above"),
        };
        self.offset = at + bytes.len() as u64;
        Ok(unit)
    }

    fn take_header_start(&mut self, b: &[u8]) -> Result<Unit, (u64, Damage)> {
        let layout = |detail: &str| {
            (
                0,
                Damage::HeaderLayout {
                    len: 0,
                    detail: detail.into(),
                },
            )
        };
        let magic: [u8; 8] = b
            .get(MAGIC_OFFSET..VERSION_OFFSET)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(|| layout("short header start"))?;
        if magic != SNAPSHOT_MAGIC {
            return Err((MAGIC_OFFSET as u64, Damage::BadMagic { found: magic }));
        }
        let version = u32_at(b, VERSION_OFFSET).ok_or_else(|| layout("short header start"))?;
        if version != SNAPSHOT_VERSION {
            return Err((
                VERSION_OFFSET as u64,
                Damage::UnsupportedVersion { found: version },
            ));
        }
        let len = u32_at(b, HEADER_LEN_OFFSET).ok_or_else(|| layout("short header start"))?;
        if !(SNAPSHOT_HEADER_MIN_BYTES..=SNAPSHOT_HEADER_MAX_BYTES).contains(&(len as usize)) {
            return Err((HEADER_LEN_OFFSET as u64, Damage::HeaderLength { len }));
        }
        self.header_start.copy_from_slice(b);
        self.stage = Stage::HeaderRest { len: len as usize };
        Ok(Unit::HeaderStart)
    }

    fn take_header_rest(&mut self, rest: &[u8], len: usize) -> Result<Unit, (u64, Damage)> {
        let mut h = Vec::with_capacity(len);
        h.extend_from_slice(&self.header_start);
        h.extend_from_slice(rest);
        let crc_at = len - 4;
        let stored = u32_at(&h, crc_at).unwrap_or_default();
        let computed = crc32c::crc32c(&h[..crc_at]);
        if stored != computed {
            return Err((crc_at as u64, Damage::HeaderChecksum { stored, computed }));
        }
        let meta = parse_header_fields(&h).map_err(|d| (VOTER_COUNT_OFFSET as u64, d))?;
        meta.check()
            .map_err(|reason| (CLUSTER_ID_OFFSET as u64, Damage::BadMeta(reason)))?;
        self.meta = Some(meta);
        self.stage = Stage::ChunkHead;
        Ok(Unit::Header)
    }

    fn take_chunk_head(&mut self, b: &[u8]) -> Result<Unit, (u64, Damage)> {
        let len = u32_at(b, 0).unwrap_or_default();
        let crc = u32_at(b, 4).unwrap_or_default();
        if len == 0 {
            if crc != 0 {
                return Err((self.offset, Damage::EndMarker { crc }));
            }
            self.stage = Stage::Trailer;
            return Ok(Unit::End);
        }
        if len as usize > CHUNK_MAX {
            return Err((
                self.offset,
                Damage::ChunkLength {
                    chunk: self.chunk_count.saturating_add(1),
                    len,
                },
            ));
        }
        self.chunk_offset = self.offset;
        self.stage = Stage::ChunkBody {
            len: len as usize,
            crc,
        };
        Ok(Unit::ChunkHead)
    }

    fn take_chunk_body(
        &mut self,
        b: &[u8],
        len: usize,
        stored: u32,
    ) -> Result<Unit, (u64, Damage)> {
        let chunk = self
            .chunk_count
            .checked_add(1)
            .ok_or((self.chunk_offset, Damage::TooManyChunks))?;
        let computed = crc32c::crc32c(b);
        if computed != stored {
            return Err((
                self.chunk_offset,
                Damage::ChunkChecksum {
                    chunk,
                    len: len as u32,
                    stored,
                    computed,
                },
            ));
        }
        self.chunk_count = chunk;
        self.payload_bytes += len as u64;
        // The whole payload's CRC from the chunk's (as the writer derives it): one pass over
        // the bytes, not two.
        self.payload_crc = crc32c::crc32c_combine(self.payload_crc, computed, b.len());
        self.stage = Stage::ChunkHead;
        Ok(Unit::Payload)
    }

    fn take_trailer(&mut self, t: &[u8]) -> Result<Unit, (u64, Damage)> {
        let at = self.offset;
        let field = |o| u32_at(t, o).unwrap_or_default();
        let stored = field(TRAILER_CRC_OFFSET);
        let computed = crc32c::crc32c(t.get(..TRAILER_CRC_OFFSET).unwrap_or_default());
        if stored != computed {
            return Err((at, Damage::TrailerChecksum { stored, computed }));
        }
        let payload_bytes = u64_at(t, TRAILER_PAYLOAD_BYTES_OFFSET).unwrap_or_default();
        if payload_bytes != self.payload_bytes {
            return Err((
                at,
                Damage::PayloadBytes {
                    stored: payload_bytes,
                    counted: self.payload_bytes,
                },
            ));
        }
        let payload_crc = field(TRAILER_PAYLOAD_CRC_OFFSET);
        if payload_crc != self.payload_crc {
            return Err((
                at,
                Damage::PayloadChecksum {
                    stored: payload_crc,
                    computed: self.payload_crc,
                },
            ));
        }
        let chunk_count = field(TRAILER_CHUNK_COUNT_OFFSET);
        if chunk_count != self.chunk_count {
            return Err((
                at,
                Damage::ChunkCount {
                    stored: chunk_count,
                    counted: self.chunk_count,
                },
            ));
        }
        self.stage = Stage::Done;
        Ok(Unit::Trailer)
    }
}

/// Decodes and checks the header at the start of a snapshot file: `bytes` are the file's first
/// bytes, at least the header's length (any bytes after it are ignored). The receiver of a
/// transfer reads the configuration the snapshot recorded this way once the file is durable.
///
/// # Errors
/// A text naming what is wrong (too few bytes, bad magic, version, length, CRC or fields).
pub fn decode_header(bytes: &[u8]) -> Result<SnapshotMeta, String> {
    let mut d = Decoder::new();
    let start = bytes.get(..HEADER_START_BYTES).ok_or_else(|| {
        format!(
            "{} bytes are too few for a snapshot header's start ({HEADER_START_BYTES})",
            bytes.len()
        )
    })?;
    d.take(start)
        .map_err(|(at, damage)| format!("{damage} at offset {at}"))?;
    let rest = bytes
        .get(HEADER_START_BYTES..HEADER_START_BYTES + d.need())
        .ok_or_else(|| {
            format!(
                "{} bytes are too few for the snapshot header of {} bytes",
                bytes.len(),
                HEADER_START_BYTES + d.need()
            )
        })?;
    d.take(rest)
        .map_err(|(at, damage)| format!("{damage} at offset {at}"))?;
    d.meta
        .ok_or_else(|| "the snapshot header decoded to nothing".to_string())
}

/// The fields of a header whose length and CRC checked out.
fn parse_header_fields(h: &[u8]) -> Result<SnapshotMeta, Damage> {
    let len = h.len() as u32;
    let layout = |detail: String| Damage::HeaderLayout { len, detail };
    let short = || layout("fields past the header's end".into());
    let voter_count = u32_at(h, VOTER_COUNT_OFFSET).ok_or_else(short)? as usize;
    // Every count is bounded by the bytes the header has before it is used.
    let room = (h.len() - SNAPSHOT_HEADER_MIN_BYTES) / 4;
    if voter_count > room {
        return Err(layout(format!("{voter_count} voters")));
    }
    let learner_count_at = VOTERS_OFFSET + 4 * voter_count;
    let learner_count = u32_at(h, learner_count_at).ok_or_else(short)? as usize;
    if learner_count > room - voter_count
        || SNAPSHOT_HEADER_MIN_BYTES + 4 * (voter_count + learner_count) != h.len()
    {
        return Err(layout(format!(
            "{voter_count} voters and {learner_count} learners need {} bytes",
            SNAPSHOT_HEADER_MIN_BYTES as u64 + 4 * (voter_count as u64 + learner_count as u64)
        )));
    }
    let ids = |from: usize, count: usize| -> Result<Vec<NodeId>, Damage> {
        (0..count)
            .map(|i| u32_at(h, from + 4 * i).map(NodeId).ok_or_else(short))
            .collect()
    };
    Ok(SnapshotMeta {
        index: LogIndex(u64_at(h, LAST_INDEX_OFFSET).ok_or_else(short)?),
        term: Term(u64_at(h, LAST_TERM_OFFSET).ok_or_else(short)?),
        cluster_id: u64_at(h, CLUSTER_ID_OFFSET).ok_or_else(short)?,
        payload_kind: u32_at(h, PAYLOAD_KIND_OFFSET).ok_or_else(short)?,
        voters: ids(VOTERS_OFFSET, voter_count)?,
        learners: ids(learner_count_at + 4, learner_count)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes one snapshot: [`SnapshotWriter::create`], the payload through [`std::io::Write`], then
/// [`SnapshotWriter::finish`]. The payload's size need not be known; the writer cuts it into
/// chunks of [`CHUNK_TARGET_BYTES`]. `Send`: it runs on a plain thread off the event loop.
///
/// The file is written as `snapshot_<index>.snap.tmp` and renamed into place only by `finish`,
/// after it is complete and fdatasync'ed. Run one writer per index at a time: `create` replaces
/// a leftover temporary file of its index, whoever still writes it.
pub struct SnapshotWriter {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: Option<Box<dyn AppendFile>>,
    /// The chunk being filled: room for its header, then its payload bytes.
    chunk: Vec<u8>,
    payload_bytes: u64,
    payload_crc: u32,
    chunk_count: u32,
    poisoned: bool,
    /// Set once the temporary file was renamed: nothing is left to clean up.
    renamed: bool,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<SnapshotWriter>();
    assert_send::<SnapshotReader>();
    assert_send::<SnapshotReceiver>();
};

/// Creates `path` for appending; a stale file of that name (a crash's leftover) is removed first.
fn create_fresh(vfs: &dyn Vfs, path: &Path) -> Result<Box<dyn AppendFile>, SnapshotFileError> {
    match vfs.create_append(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            vfs.remove(path)
                .map_err(io_err(path, "remove stale temporary file"))?;
            vfs.create_append(path).map_err(io_err(path, "create"))
        }
        Err(e) => Err(io_err(path, "create")(e)),
    }
}

/// Renames the complete, synced temporary file `from` to its final name `to` and fsyncs `dir`:
/// durable when this returns. `renamed` is set as soon as the rename happened (the temporary
/// file is then gone, nothing is left to clean up), even if the directory fsync fails.
fn put_in_place(
    vfs: &dyn Vfs,
    dir: &Path,
    from: &Path,
    to: &Path,
    renamed: &mut bool,
) -> Result<(), SnapshotFileError> {
    vfs.rename(from, to)
        .map_err(io_err(to, "rename into place"))?;
    *renamed = true;
    vfs.sync_dir(dir).map_err(io_err(dir, "fsync directory"))
}

impl SnapshotWriter {
    /// Starts the snapshot `meta` describes in `dir`: creates `snapshot_<index>.snap.tmp`
    /// (replacing a stale one) and writes the header.
    ///
    /// # Errors
    /// [`SnapshotFileError::InvalidMeta`] if `meta` breaks [`SnapshotMeta::check`]; I/O errors.
    pub fn create(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotWriter, SnapshotFileError> {
        let final_path = dir.join(snapshot_file_name(meta.index));
        meta.check()
            .map_err(|reason| SnapshotFileError::InvalidMeta {
                path: final_path.clone(),
                reason,
            })?;
        let tmp_path = dir.join(snapshot_temp_name(meta.index));
        let file = create_fresh(&*vfs, &tmp_path)?;
        let mut w = SnapshotWriter {
            vfs,
            dir: dir.to_path_buf(),
            tmp_path,
            final_path,
            file: Some(file),
            chunk: Vec::with_capacity(CHUNK_HEADER_BYTES + CHUNK_TARGET_BYTES),
            payload_bytes: 0,
            payload_crc: 0,
            chunk_count: 0,
            poisoned: false,
            renamed: false,
        };
        w.chunk.resize(CHUNK_HEADER_BYTES, 0);
        w.append(&encode_header(meta))?;
        Ok(w)
    }

    /// Writes the rest of the file out at a background writer's pace, a small window at a time
    /// ([`AppendFile::pace_writeback`]): the node's own snapshots, on their own thread.
    pub fn pace_writeback(&mut self) {
        if let Some(file) = self.file.as_mut() {
            file.pace_writeback();
        }
    }

    /// Payload bytes written so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes + (self.chunk.len() - CHUNK_HEADER_BYTES) as u64
    }

    /// The name the snapshot gets once finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Appends to the temporary file; a failure poisons the writer.
    fn append(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        if self.poisoned {
            return Err(SnapshotFileError::Poisoned {
                path: self.tmp_path.clone(),
            });
        }
        let file = self.file.as_mut().expect("the file is open until finish");
        if let Err(e) = file.append(bytes) {
            self.poisoned = true;
            return Err(io_err(&self.tmp_path, "append")(e));
        }
        Ok(())
    }

    /// Writes the chunk being filled, if it holds any byte.
    fn emit_chunk(&mut self) -> Result<(), SnapshotFileError> {
        let len = self.chunk.len() - CHUNK_HEADER_BYTES;
        if len == 0 {
            return Ok(());
        }
        let Some(count) = self.chunk_count.checked_add(1) else {
            self.poisoned = true;
            return Err(SnapshotFileError::InvalidMeta {
                path: self.tmp_path.clone(),
                reason: "the payload needs more chunks than a u32 counts".into(),
            });
        };
        let bytes = &self.chunk[CHUNK_HEADER_BYTES..];
        let crc = crc32c::crc32c(bytes);
        // The whole payload's CRC from the chunk's, without a second pass over the bytes
        // (CRC-32C of A || B from those of A and B and B's length: O(log len) work).
        let payload_crc = crc32c::crc32c_combine(self.payload_crc, crc, len);
        self.chunk[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.chunk[4..CHUNK_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        let chunk = std::mem::take(&mut self.chunk);
        let r = self.append(&chunk);
        self.chunk = chunk;
        self.chunk.truncate(CHUNK_HEADER_BYTES);
        r?;
        self.chunk_count = count;
        self.payload_bytes += len as u64;
        self.payload_crc = payload_crc;
        Ok(())
    }

    /// Completes the file and puts it in place: the last chunk, the end marker and the trailer,
    /// fdatasync, rename to `snapshot_<index>.snap` (replacing a snapshot of the same index),
    /// directory fsync. Returns the final path; the snapshot is durable when this returns.
    ///
    /// # Errors
    /// I/O errors, [`SnapshotFileError::Poisoned`] after an earlier failure. Unless the error
    /// came from the final directory fsync (the file is then complete under its final name, but
    /// the name may not survive a power loss), nothing is under the final name, and the
    /// temporary file is removed.
    pub fn finish(mut self) -> Result<PathBuf, SnapshotFileError> {
        self.emit_chunk()?;
        let end = encode_end(self.payload_bytes, self.payload_crc, self.chunk_count);
        self.append(&end)?;
        let mut file = self.file.take().expect("the file is open until finish");
        if let Err(e) = file.sync_data() {
            // fsyncgate: the file's durable state is unknown; it must never get the final name.
            self.poisoned = true;
            return Err(io_err(&self.tmp_path, "fdatasync")(e));
        }
        drop(file);
        put_in_place(
            &*self.vfs,
            &self.dir,
            &self.tmp_path,
            &self.final_path,
            &mut self.renamed,
        )?;
        Ok(self.final_path.clone())
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(SnapshotFileError::Poisoned {
                path: self.tmp_path.clone(),
            }
            .into());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let room = CHUNK_HEADER_BYTES + CHUNK_TARGET_BYTES - self.chunk.len();
            let n = room.min(rest.len());
            self.chunk.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.chunk.len() == CHUNK_HEADER_BYTES + CHUNK_TARGET_BYTES {
                self.emit_chunk()?;
            }
        }
        Ok(buf.len())
    }

    /// Hands the buffered bytes to the file as a chunk. This is not durability: only
    /// [`SnapshotWriter::finish`] makes the snapshot durable.
    fn flush(&mut self) -> io::Result<()> {
        self.emit_chunk().map_err(io::Error::from)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort and not synced: a power loss may bring the file back, and the next
            // start's `remove_temp_files` removes it.
            self.file = None;
            let _ = self.vfs.remove(&self.tmp_path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads a snapshot's payload through [`std::io::Read`], checking every chunk's CRC before its
/// bytes are handed out and the trailer at the end. Damage is an `io::Error` that wraps the
/// [`SnapshotFileError`] ([`SnapshotFileError::from_io`]), and every later read repeats it. The
/// payload is good only once `read` returned `Ok(0)`. Holds at most one chunk in memory.
pub struct SnapshotReader {
    file: Box<dyn ReadFile>,
    path: PathBuf,
    file_len: u64,
    decoder: Decoder,
    meta: SnapshotMeta,
    /// The last unit read; while `payload_len > 0`, a verified chunk's bytes.
    buf: Vec<u8>,
    payload_len: usize,
    served: usize,
    failed: Option<SnapshotFileError>,
    done: bool,
    /// The SHA-256 of the bytes read so far, while the file may be a saved snapshot: not under a
    /// canonical name (a node's own files never carry the suffix) and of a length a saved
    /// snapshot has.
    digest: Option<crate::storage::sha256::Sha256>,
}

impl SnapshotReader {
    /// Opens `path` and checks its header (and that a canonical file name agrees with it).
    ///
    /// # Errors
    /// I/O errors; [`SnapshotFileError::Damaged`] for a bad or truncated header, or a header
    /// whose index differs from the file name's.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotReader, SnapshotFileError> {
        let file = vfs.open_read(path).map_err(io_err(path, "open"))?;
        let file_len = file.len_bytes();
        let mut r = SnapshotReader {
            file,
            path: path.to_path_buf(),
            file_len,
            decoder: Decoder::new(),
            meta: SnapshotMeta {
                index: LogIndex(0),
                term: Term(0),
                cluster_id: 0,
                payload_kind: 0,
                voters: Vec::new(),
                learners: Vec::new(),
            },
            buf: Vec::new(),
            payload_len: 0,
            served: 0,
            failed: None,
            done: false,
            digest: None,
        };
        let name_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_snapshot_file_name);
        if name_index.is_none() && file_len % SAVED_ALIGN_BYTES == SAVED_DIGEST_BYTES as u64 {
            r.digest = Some(crate::storage::sha256::Sha256::new());
        }
        while r.next_unit()? != Unit::Header {}
        r.meta = r.decoder.meta.clone().expect("set by the header unit");
        if let Some(name_index) = name_index {
            if name_index != r.meta.index {
                return Err(SnapshotFileError::Damaged {
                    path: r.path,
                    offset: LAST_INDEX_OFFSET as u64,
                    damage: Damage::NameMismatch {
                        name_index,
                        header_index: r.meta.index,
                    },
                });
            }
        }
        Ok(r)
    }

    /// The header's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The file's length in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }

    /// The summary, once the whole file was read and checked (`read` returned `Ok(0)`).
    pub fn summary(&self) -> Option<SnapshotSummary> {
        if self.done {
            self.decoder.summary()
        } else {
            None
        }
    }

    /// Reads and checks the next unit into `buf`.
    fn next_unit(&mut self) -> Result<Unit, SnapshotFileError> {
        let need = self.decoder.need();
        let at = self.decoder.offset;
        let remaining = self.file_len.saturating_sub(at);
        if need as u64 > remaining {
            return Err(SnapshotFileError::Damaged {
                path: self.path.clone(),
                offset: self.file_len,
                damage: Damage::Truncated {
                    len: self.file_len,
                    unit: self.decoder.expected_unit(),
                    needed: at + need as u64,
                },
            });
        }
        self.buf.resize(need, 0);
        self.file
            .read_exact_at(at, &mut self.buf)
            .map_err(io_err(&self.path, "read"))?;
        if let Some(digest) = &mut self.digest {
            digest.update(&self.buf);
        }
        let unit = self.decoder.take(&self.buf).map_err(|(offset, damage)| {
            SnapshotFileError::Damaged {
                path: self.path.clone(),
                offset,
                damage,
            }
        })?;
        if unit == Unit::Trailer && self.decoder.offset != self.file_len {
            if let Some(digest) = self.digest.take() {
                if self.file_len - self.decoder.offset == saved_suffix_bytes(self.decoder.offset) {
                    self.check_saved_suffix(digest)?;
                    return Ok(unit);
                }
            }
            return Err(SnapshotFileError::Damaged {
                path: self.path.clone(),
                offset: self.decoder.offset,
                damage: Damage::TrailingBytes {
                    bytes: self.file_len - self.decoder.offset,
                },
            });
        }
        Ok(unit)
    }

    /// Checks what follows the trailer of a saved snapshot: zero padding, then the SHA-256 of
    /// every byte before the digest (`digest` has seen the snapshot file's bytes).
    fn check_saved_suffix(
        &mut self,
        mut digest: crate::storage::sha256::Sha256,
    ) -> Result<(), SnapshotFileError> {
        let at = self.decoder.offset;
        let padding = saved_padding_bytes(at) as usize;
        let mut suffix = vec![0u8; padding + SAVED_DIGEST_BYTES];
        self.file
            .read_exact_at(at, &mut suffix)
            .map_err(io_err(&self.path, "read"))?;
        let damaged = |offset, damage| SnapshotFileError::Damaged {
            path: self.path.clone(),
            offset,
            damage,
        };
        if let Some(i) = suffix[..padding].iter().position(|b| *b != 0) {
            let at = at + i as u64;
            return Err(damaged(at, Damage::SavedPadding { at }));
        }
        digest.update(&suffix[..padding]);
        let computed = digest.finish();
        let stored = &suffix[padding..];
        if computed[..] != *stored {
            return Err(damaged(
                at + padding as u64,
                Damage::SavedDigest {
                    stored: crate::storage::sha256::hex(stored),
                    computed: crate::storage::sha256::hex(&computed),
                },
            ));
        }
        Ok(())
    }

    /// Moves to the next verified chunk; false at the (verified) end.
    fn advance(&mut self) -> Result<bool, SnapshotFileError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.payload_len = 0;
        self.served = 0;
        while !self.done {
            match self.next_unit() {
                Ok(Unit::Payload) => {
                    self.payload_len = self.buf.len();
                    return Ok(true);
                }
                Ok(Unit::Trailer) => self.done = true,
                Ok(_) => {}
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(false)
    }

    /// Reads and checks the rest of the file without handing out its bytes.
    fn check_to_end(&mut self) -> Result<SnapshotSummary, SnapshotFileError> {
        while self.advance()? {}
        Ok(self.summary().expect("done after the walk"))
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.served == self.payload_len {
            if self.done && self.failed.is_none() {
                return Ok(0);
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.payload_len - self.served);
        out[..n].copy_from_slice(&self.buf[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

/// Reads and checks the whole file at `path` (header, every chunk, trailer, nothing after it).
///
/// # Errors
/// I/O errors and every [`Damage`], with the file and the offset.
pub fn verify(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotSummary, SnapshotFileError> {
    SnapshotReader::open(vfs, path)?.check_to_end()
}

/// The length in bytes of the file at `path` (what a transfer ships).
///
/// # Errors
/// I/O errors.
pub fn snapshot_file_len(vfs: &dyn Vfs, path: &Path) -> Result<u64, SnapshotFileError> {
    Ok(vfs
        .open_read(path)
        .map_err(io_err(path, "open"))?
        .len_bytes())
}

/// Up to `max_len` bytes (at most [`RANGE_BYTES_MAX`]) of the file at `path` from `offset`,
/// verbatim: a piece of an InstallSnapshot transfer. Empty at the end of the file.
///
/// # Errors
/// I/O errors; [`SnapshotFileError::OutOfRange`] if `offset` lies past the end.
pub fn read_file_range(
    vfs: &dyn Vfs,
    path: &Path,
    offset: u64,
    max_len: usize,
) -> Result<Vec<u8>, SnapshotFileError> {
    let file = vfs.open_read(path).map_err(io_err(path, "open"))?;
    let len = file.len_bytes();
    if offset > len {
        return Err(SnapshotFileError::OutOfRange {
            path: path.to_path_buf(),
            offset,
            len,
        });
    }
    let n = (len - offset).min(max_len.min(RANGE_BYTES_MAX) as u64) as usize;
    let mut buf = vec![0u8; n];
    file.read_exact_at(offset, &mut buf)
        .map_err(io_err(path, "read"))?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------------

/// Receives a snapshot file shipped verbatim in pieces (InstallSnapshot) into
/// `snapshot_<index>.snap.recv`, checking the header, the chunk framing and every CRC as the
/// bytes arrive, and renames it into place when complete ([`SnapshotReceiver::finish`]).
///
/// Only whole, checked units reach the file: the header, then each chunk (header and bytes),
/// then the end marker with the trailer. The bytes of the unit in progress wait in memory (at
/// most one chunk). A piece must start at [`SnapshotReceiver::received_bytes`]; a bad unit is
/// refused at once and dropped with whatever followed it in its piece, so the transfer resumes
/// at `received_bytes()`, the start of that unit.
pub struct SnapshotReceiver {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    tmp_path: PathBuf,
    final_path: PathBuf,
    expected_index: LogIndex,
    expected_term: Term,
    file: Option<Box<dyn AppendFile>>,
    decoder: Decoder,
    /// The decoder as it stood after the last unit that reached the file.
    checkpoint: Decoder,
    /// Bytes received since the checkpoint (not yet in the file).
    pending: Vec<u8>,
    /// Where the unit in progress starts in `pending`.
    unit_start: usize,
    /// Bytes in the file.
    written: u64,
    poisoned: bool,
    renamed: bool,
}

impl SnapshotReceiver {
    /// Starts receiving the snapshot of `index` and `term` into `dir` (replacing a stale
    /// `.snap.recv` file of that index).
    ///
    /// # Errors
    /// [`SnapshotFileError::InvalidMeta`] for index or term 0; I/O errors.
    pub fn create(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        index: LogIndex,
        term: Term,
    ) -> Result<SnapshotReceiver, SnapshotFileError> {
        let tmp_path = dir.join(snapshot_receive_name(index));
        if index.0 == 0 || term.0 == 0 {
            return Err(SnapshotFileError::InvalidMeta {
                path: tmp_path,
                reason: format!("index {index} term {term}: both must be >= 1"),
            });
        }
        let file = create_fresh(&*vfs, &tmp_path)?;
        Ok(SnapshotReceiver {
            vfs,
            dir: dir.to_path_buf(),
            final_path: dir.join(snapshot_file_name(index)),
            tmp_path,
            expected_index: index,
            expected_term: term,
            file: Some(file),
            decoder: Decoder::new(),
            checkpoint: Decoder::new(),
            pending: Vec::new(),
            unit_start: 0,
            written: 0,
            poisoned: false,
            renamed: false,
        })
    }

    /// Bytes accepted so far: where the next piece must start.
    pub fn received_bytes(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// The header's metadata, once the header arrived.
    pub fn meta(&self) -> Option<&SnapshotMeta> {
        self.checkpoint.meta.as_ref()
    }

    /// Whether the whole file (trailer included) arrived and checked out.
    pub fn is_complete(&self) -> bool {
        self.decoder.stage == Stage::Done
    }

    /// Accepts the piece `bytes` at file offset `offset`.
    ///
    /// # Errors
    /// - [`SnapshotFileError::OutOfOrder`] if `offset` is not [`Self::received_bytes`] (nothing
    ///   is taken; the error names the offset to resume from);
    /// - [`SnapshotFileError::Damaged`] (a bad header, chunk, marker or trailer, or bytes after
    ///   the trailer) or [`SnapshotFileError::WrongSnapshot`] (the header is another
    ///   snapshot's): the bad unit and the rest of the piece are dropped, the bytes before it
    ///   are kept, and the transfer may resume at `received_bytes()`;
    /// - I/O errors, after which the receiver is poisoned.
    pub fn accept(&mut self, offset: u64, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        if self.poisoned {
            return Err(SnapshotFileError::Poisoned {
                path: self.tmp_path.clone(),
            });
        }
        let received = self.received_bytes();
        if offset != received {
            return Err(SnapshotFileError::OutOfOrder {
                path: self.tmp_path.clone(),
                offset,
                received,
            });
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.decoder.stage == Stage::Done {
                return Err(SnapshotFileError::Damaged {
                    path: self.tmp_path.clone(),
                    offset: self.received_bytes(),
                    damage: Damage::TrailingBytes {
                        bytes: rest.len() as u64,
                    },
                });
            }
            let have = self.pending.len() - self.unit_start;
            let n = (self.decoder.need() - have).min(rest.len());
            self.pending.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.pending.len() - self.unit_start < self.decoder.need() {
                continue;
            }
            if let Err(e) = self.take_unit() {
                self.decoder = self.checkpoint.clone();
                self.pending.clear();
                self.unit_start = 0;
                return Err(e);
            }
            self.unit_start = self.pending.len();
            if self.decoder.at_boundary() {
                self.commit()?;
            }
        }
        Ok(())
    }

    fn take_unit(&mut self) -> Result<(), SnapshotFileError> {
        let unit = self
            .decoder
            .take(&self.pending[self.unit_start..])
            .map_err(|(offset, damage)| SnapshotFileError::Damaged {
                path: self.tmp_path.clone(),
                offset,
                damage,
            })?;
        if unit == Unit::Header {
            let meta = self.decoder.meta.as_ref().expect("set by the header unit");
            if meta.index != self.expected_index || meta.term != self.expected_term {
                return Err(SnapshotFileError::WrongSnapshot {
                    path: self.tmp_path.clone(),
                    expected_index: self.expected_index,
                    expected_term: self.expected_term,
                    found_index: meta.index,
                    found_term: meta.term,
                });
            }
        }
        Ok(())
    }

    /// Appends the checked bytes since the last checkpoint to the file.
    fn commit(&mut self) -> Result<(), SnapshotFileError> {
        let file = self.file.as_mut().expect("the file is open until finish");
        if let Err(e) = file.append(&self.pending) {
            self.poisoned = true;
            return Err(io_err(&self.tmp_path, "append")(e));
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        self.unit_start = 0;
        self.checkpoint = self.decoder.clone();
        Ok(())
    }

    /// Puts the complete file in place: fdatasync, rename to `snapshot_<index>.snap`, directory
    /// fsync. Returns the final path; the snapshot is durable when this returns.
    ///
    /// # Errors
    /// [`SnapshotFileError::Incomplete`] before the trailer arrived (the receiver is dropped with
    /// its file: start again); I/O errors as [`SnapshotWriter::finish`].
    pub fn finish(mut self) -> Result<PathBuf, SnapshotFileError> {
        if self.poisoned {
            return Err(SnapshotFileError::Poisoned {
                path: self.tmp_path.clone(),
            });
        }
        if self.decoder.stage != Stage::Done {
            return Err(SnapshotFileError::Incomplete {
                path: self.tmp_path.clone(),
                received: self.received_bytes(),
                missing: self.decoder.expected_unit(),
            });
        }
        let mut file = self.file.take().expect("the file is open until finish");
        if let Err(e) = file.sync_data() {
            self.poisoned = true;
            return Err(io_err(&self.tmp_path, "fdatasync")(e));
        }
        drop(file);
        put_in_place(
            &*self.vfs,
            &self.dir,
            &self.tmp_path,
            &self.final_path,
            &mut self.renamed,
        )?;
        Ok(self.final_path.clone())
    }
}

impl Drop for SnapshotReceiver {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort, as for the writer.
            self.file = None;
            let _ = self.vfs.remove(&self.tmp_path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The directory
// ---------------------------------------------------------------------------------------------

/// The snapshots in `dir` (canonical names only), oldest first.
///
/// # Errors
/// I/O errors listing the directory.
pub fn list_snapshots(
    vfs: &dyn Vfs,
    dir: &Path,
) -> Result<Vec<(LogIndex, PathBuf)>, SnapshotFileError> {
    let names = vfs.list_dir(dir).map_err(io_err(dir, "list directory"))?;
    let mut found: Vec<(LogIndex, PathBuf)> = names
        .iter()
        .filter_map(|n| parse_snapshot_file_name(n).map(|i| (i, dir.join(n))))
        .collect();
    found.sort_by_key(|(i, _)| *i);
    Ok(found)
}

/// Removes every temporary snapshot file in `dir` (what an interrupted write or transfer left),
/// durably (one directory fsync after the removals). Returns what it removed. Run it when no
/// writer or receiver is active (at startup).
///
/// # Errors
/// I/O errors.
pub fn remove_temp_files(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<PathBuf>, SnapshotFileError> {
    let names = vfs.list_dir(dir).map_err(io_err(dir, "list directory"))?;
    let mut removed = Vec::new();
    for name in names.iter().filter(|n| is_snapshot_temp_name(n)) {
        let path = dir.join(name);
        vfs.remove(&path).map_err(io_err(&path, "remove"))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        vfs.sync_dir(dir).map_err(io_err(dir, "fsync directory"))?;
    }
    Ok(removed)
}

/// A snapshot that checked out.
#[derive(Clone, Debug)]
pub struct ValidSnapshot {
    pub path: PathBuf,
    pub summary: SnapshotSummary,
}

/// A snapshot that did not check out, and why.
#[derive(Clone, Debug)]
pub struct DamagedSnapshot {
    pub index: LogIndex,
    pub path: PathBuf,
    pub error: SnapshotFileError,
}

/// What [`newest_valid`] found.
#[derive(Clone, Debug)]
pub struct NewestSnapshot {
    /// The newest snapshot that checked out, if any.
    pub chosen: Option<ValidSnapshot>,
    /// The snapshots newer than the chosen one that did not check out, newest first.
    pub damaged: Vec<DamagedSnapshot>,
}

/// Picks the snapshot recovery uses: verifies the snapshots of `dir` fully, newest first, and
/// stops at the first that checks out. The ones passed over are returned with their errors
/// (damage or a failed read): the caller decides whether to go on without them. Older snapshots
/// than the chosen one are not read.
///
/// # Errors
/// I/O errors listing the directory.
pub fn newest_valid(vfs: &dyn Vfs, dir: &Path) -> Result<NewestSnapshot, SnapshotFileError> {
    let mut damaged = Vec::new();
    for (index, path) in list_snapshots(vfs, dir)?.into_iter().rev() {
        match verify(vfs, &path) {
            Ok(summary) => {
                return Ok(NewestSnapshot {
                    chosen: Some(ValidSnapshot { path, summary }),
                    damaged,
                })
            }
            Err(error) => damaged.push(DamagedSnapshot { index, path, error }),
        }
    }
    Ok(NewestSnapshot {
        chosen: None,
        damaged,
    })
}

/// Removes every snapshot of `dir` but the newest `keep`, oldest first, then fsyncs the
/// directory: durable when this returns. Returns what it removed. A crash in between leaves a
/// suffix of the snapshots. Call it right after a snapshot was finished (which proves the newest
/// complete): it does not read the files, and would remove an older valid snapshot behind a
/// damaged newer one.
///
/// # Errors
/// I/O errors.
///
/// # Panics
/// If `keep` is 0: removing every snapshot is never what recovery wants once the log was
/// compacted behind one.
pub fn prune(vfs: &dyn Vfs, dir: &Path, keep: usize) -> Result<Vec<PathBuf>, SnapshotFileError> {
    assert!(keep >= 1, "prune must keep at least one snapshot");
    let all = list_snapshots(vfs, dir)?;
    let remove = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, path) in all.into_iter().take(remove) {
        vfs.remove(&path).map_err(io_err(&path, "remove"))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        vfs.sync_dir(dir).map_err(io_err(dir, "fsync directory"))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file::SimFs;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(3),
            cluster_id: 0xabc,
            payload_kind: PAYLOAD_KIND_OPAQUE,
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![NodeId(9)],
        }
    }

    fn disk() -> (SimFs, Arc<dyn Vfs>, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d/node_1");
        fs.create_dir_all(&dir).unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(fs.clone());
        (fs, vfs, dir)
    }

    fn write(vfs: &Arc<dyn Vfs>, dir: &Path, m: &SnapshotMeta, payload: &[u8]) -> PathBuf {
        let mut w = SnapshotWriter::create(Arc::clone(vfs), dir, m).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn names_are_canonical_and_numeric() {
        assert_eq!(
            snapshot_file_name(LogIndex(42)),
            "snapshot_00000000000000000042.snap"
        );
        assert_eq!(
            snapshot_file_name(LogIndex(u64::MAX)),
            "snapshot_18446744073709551615.snap"
        );
        for i in [1, 42, 999_999, u64::MAX] {
            let name = snapshot_file_name(LogIndex(i));
            assert_eq!(parse_snapshot_file_name(&name), Some(LogIndex(i)));
            assert!(is_snapshot_temp_name(&snapshot_temp_name(LogIndex(i))));
            assert!(is_snapshot_temp_name(&snapshot_receive_name(LogIndex(i))));
            assert!(!is_snapshot_temp_name(&name));
            assert_eq!(
                parse_snapshot_file_name(&snapshot_temp_name(LogIndex(i))),
                None
            );
        }
        for bad in [
            "snapshot_00000000000000000000.snap",
            "snapshot_0000000000000000042.snap",
            "snapshot_000000000000000000042.snap",
            "snapshot_+0000000000000000042.snap",
            "snapshot_00000000000000000042.SNAP",
            "snapshot_00000000000000000042.snap.bak",
            "snapshot_99999999999999999999.snap",
            "snapshot_.snap",
            "segment_000001.log",
        ] {
            assert_eq!(parse_snapshot_file_name(bad), None, "{bad}");
            assert!(!is_snapshot_temp_name(&format!("{bad}.tmp")), "{bad}.tmp");
        }
    }

    /// The bytes are where docs/FORMAT.md says they are.
    #[test]
    fn header_and_trailer_have_the_documented_layout() {
        let m = meta(7);
        let h = encode_header(&m);
        assert_eq!(h.len(), 56 + 4 * 4);
        assert_eq!(&h[0..8], b"RRLSNAP1");
        assert_eq!(u32_at(&h, 8), Some(1));
        assert_eq!(u32_at(&h, 12), Some(h.len() as u32));
        assert_eq!(u64_at(&h, 16), Some(0xabc));
        assert_eq!(u64_at(&h, 24), Some(7));
        assert_eq!(u64_at(&h, 32), Some(3));
        assert_eq!(u32_at(&h, 40), Some(PAYLOAD_KIND_OPAQUE));
        assert_eq!(u32_at(&h, 44), Some(3));
        assert_eq!(u32_at(&h, 48), Some(1));
        assert_eq!(u32_at(&h, 56), Some(3));
        assert_eq!(u32_at(&h, 60), Some(1), "learner count");
        assert_eq!(u32_at(&h, 64), Some(9));
        assert_eq!(u32_at(&h, 68), Some(crc32c::crc32c(&h[..68])));
        let e = encode_end(5, 0x1234, 2);
        assert_eq!(&e[..8], &[0; 8], "end marker");
        assert_eq!(u64_at(&e, 8), Some(5));
        assert_eq!(u32_at(&e, 16), Some(0x1234));
        assert_eq!(u32_at(&e, 20), Some(2));
        assert_eq!(u32_at(&e, 24), Some(crc32c::crc32c(&e[8..24])));
        let mut d = Decoder::new();
        assert_eq!(d.take(&h[..16]), Ok(Unit::HeaderStart));
        assert_eq!(d.take(&h[16..]), Ok(Unit::Header));
        assert_eq!(d.meta, Some(m));
    }

    #[test]
    fn metadata_is_checked_on_write() {
        let (_fs, vfs, dir) = disk();
        let cases: Vec<(&str, SnapshotMeta)> = vec![
            (
                "index is 0",
                SnapshotMeta {
                    index: LogIndex(0),
                    ..meta(1)
                },
            ),
            (
                "term is 0",
                SnapshotMeta {
                    term: Term(0),
                    ..meta(1)
                },
            ),
            (
                "unknown payload kind 2",
                SnapshotMeta {
                    payload_kind: 2,
                    ..meta(1)
                },
            ),
            (
                "no voter",
                SnapshotMeta {
                    voters: vec![],
                    ..meta(1)
                },
            ),
            (
                "member id 0",
                SnapshotMeta {
                    learners: vec![NodeId(0)],
                    ..meta(1)
                },
            ),
            (
                "member 2 is listed twice",
                SnapshotMeta {
                    learners: vec![NodeId(2)],
                    ..meta(1)
                },
            ),
            (
                "1025 members",
                SnapshotMeta {
                    voters: (1..=1025).map(NodeId).collect(),
                    learners: vec![],
                    ..meta(1)
                },
            ),
        ];
        for (want, m) in cases {
            let e = SnapshotWriter::create(Arc::clone(&vfs), &dir, &m)
                .err()
                .unwrap();
            assert!(
                matches!(&e, SnapshotFileError::InvalidMeta { reason, .. } if reason.contains(want)),
                "{want}: {e}"
            );
        }
        let most = SnapshotMeta {
            voters: (1..=1024).map(NodeId).collect(),
            learners: vec![],
            ..meta(1)
        };
        let p = write(&vfs, &dir, &most, b"x");
        assert_eq!(verify(&*vfs, &p).unwrap().meta, most);
    }

    /// A header whose CRC is right but whose counts disagree with its length, and lengths out of
    /// bounds, are refused before anything is allocated from them.
    #[test]
    fn implausible_lengths_are_refused() {
        let mut h = encode_header(&meta(1));
        h[44..48].copy_from_slice(&1000u32.to_le_bytes());
        let crc_at = h.len() - 4;
        let crc = crc32c::crc32c(&h[..crc_at]);
        h[crc_at..].copy_from_slice(&crc.to_le_bytes());
        let mut d = Decoder::new();
        d.take(&h[..16]).unwrap();
        assert!(matches!(
            d.take(&h[16..]),
            Err((44, Damage::HeaderLayout { .. }))
        ));

        let mut start = encode_header(&meta(1))[..16].to_vec();
        start[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Decoder::new().take(&start),
            Err((12, Damage::HeaderLength { len: u32::MAX }))
        ));

        let (fs, vfs, dir) = disk();
        let p = write(&vfs, &dir, &meta(1), b"abc");
        let header_len = encode_header(&meta(1)).len();
        fs.edit_file(&p, |b| {
            b[header_len..header_len + 4].copy_from_slice(&(CHUNK_MAX as u32 + 1).to_le_bytes())
        });
        let e = verify(&*vfs, &p).unwrap_err();
        assert!(
            matches!(&e, SnapshotFileError::Damaged { offset, damage: Damage::ChunkLength { chunk: 1, .. }, .. } if *offset == header_len as u64),
            "{e}"
        );
        fs.edit_file(&p, |b| {
            b[header_len..header_len + 4].copy_from_slice(&(CHUNK_MAX as u32).to_le_bytes())
        });
        let e = verify(&*vfs, &p).unwrap_err();
        assert!(
            matches!(e.damage(), Some(Damage::Truncated { .. })),
            "a length within the limit but past the file's end: {e}"
        );
    }

    #[test]
    fn the_writer_cuts_chunks_and_flush_ends_one() {
        let (_fs, vfs, dir) = disk();
        let payload: Vec<u8> = (0..3 * CHUNK_TARGET_BYTES + 1)
            .map(|i| (i * 7) as u8)
            .collect();
        let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(5)).unwrap();
        w.write_all(&payload[..10]).unwrap();
        w.flush().unwrap();
        w.flush().unwrap(); // nothing buffered: no empty chunk
        w.write_all(&payload[10..]).unwrap();
        assert_eq!(w.payload_bytes(), payload.len() as u64);
        let p = w.finish().unwrap();
        let s = verify(&*vfs, &p).unwrap();
        assert_eq!(s.chunk_count, 4, "10 bytes, two full chunks, the rest");
        assert_eq!(s.payload_bytes, payload.len() as u64);
        assert_eq!(s.payload_crc, crc32c::crc32c(&payload));
        let mut back = Vec::new();
        SnapshotReader::open(&*vfs, &p)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == payload);
    }

    #[test]
    fn end_marker_with_a_checksum_and_a_name_that_disagrees_are_damage() {
        let (fs, vfs, dir) = disk();
        let p = write(&vfs, &dir, &meta(4), b"");
        let header_len = encode_header(&meta(4)).len();
        fs.edit_file(&p, |b| b[header_len + 4] = 1);
        assert!(matches!(
            verify(&*vfs, &p).unwrap_err().damage(),
            Some(Damage::EndMarker { crc: 1 })
        ));
        fs.edit_file(&p, |b| b[header_len + 4] = 0);
        verify(&*vfs, &p).unwrap();
        let other = dir.join(snapshot_file_name(LogIndex(5)));
        fs.rename(&p, &other).unwrap();
        assert!(matches!(
            verify(&*vfs, &other).unwrap_err().damage(),
            Some(Damage::NameMismatch {
                name_index: LogIndex(5),
                header_index: LogIndex(4)
            })
        ));
        // Another name (a copy for inspection) is not held to the index.
        let copy = dir.join("copy.snap");
        fs.rename(&other, &copy).unwrap();
        verify(&*vfs, &copy).unwrap();
    }

    /// A failed fdatasync poisons the writer: no final name, no retry, the temporary file goes.
    #[test]
    fn a_failed_sync_never_puts_the_file_in_place() {
        let (fs, vfs, dir) = disk();
        let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(3)).unwrap();
        w.write_all(b"payload").unwrap();
        fs.fail_next_syncs(1);
        let e = w.finish().unwrap_err();
        assert!(
            matches!(
                &e,
                SnapshotFileError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{e}"
        );
        assert!(fs.paths().is_empty(), "{:?}", fs.paths());
    }

    #[test]
    fn an_unfinished_writer_or_receiver_removes_its_file() {
        let (fs, vfs, dir) = disk();
        let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(3)).unwrap();
        w.write_all(b"abc").unwrap();
        assert_eq!(fs.paths(), vec![dir.join(snapshot_temp_name(LogIndex(3)))]);
        drop(w);
        assert!(fs.paths().is_empty());
        let r = SnapshotReceiver::create(Arc::clone(&vfs), &dir, LogIndex(3), Term(3)).unwrap();
        assert_eq!(
            fs.paths(),
            vec![dir.join(snapshot_receive_name(LogIndex(3)))]
        );
        drop(r);
        assert!(fs.paths().is_empty());
    }

    /// The reader hands out a chunk only after its CRC checked out, and repeats an error.
    #[test]
    fn the_reader_hands_out_no_byte_of_a_bad_chunk() {
        let (fs, vfs, dir) = disk();
        let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(3)).unwrap();
        w.write_all(b"first chunk").unwrap();
        w.flush().unwrap();
        w.write_all(b"second chunk").unwrap();
        let p = w.finish().unwrap();
        let len = fs.read_file(&p).unwrap().len();
        // The last byte of the second chunk's payload.
        fs.flip_bit(&p, (len - 28 - 1) as u64, 0);
        let mut r = SnapshotReader::open(&*vfs, &p).unwrap();
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first chunk");
        for _ in 0..2 {
            let e = r.read(&mut buf).unwrap_err();
            let inner = SnapshotFileError::from_io(&e).expect("wraps the snapshot error");
            assert!(
                matches!(inner.damage(), Some(Damage::ChunkChecksum { chunk: 2, .. })),
                "{inner}"
            );
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        assert!(r.summary().is_none());
    }

    /// docs/FORMAT.md, "Saved snapshot": a snapshot file, zero padding to a multiple of 512 bytes
    /// and a SHA-256, under any name but a canonical one.
    #[test]
    fn a_saved_snapshot_verifies_and_its_suffix_is_checked() {
        use crate::storage::sha256::Sha256;
        use crate::storage::uring::UringVfs;

        let tmp = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let path = write(&vfs, tmp.path(), &meta(7), &payload);
        let file = std::fs::read(&path).unwrap();
        let mut saved = file.clone();
        saved.resize(
            file.len() + saved_padding_bytes(file.len() as u64) as usize,
            0,
        );
        let mut digest = Sha256::new();
        digest.update(&saved);
        saved.extend_from_slice(&digest.finish());
        assert_eq!(
            saved.len() as u64 % SAVED_ALIGN_BYTES,
            32,
            "what etcdctl checks"
        );
        assert_eq!(
            saved.len() as u64,
            file.len() as u64 + saved_suffix_bytes(file.len() as u64)
        );

        let at = |name: &str, bytes: &[u8]| {
            let p = tmp.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let good = at("backup.db", &saved);
        let summary = verify(&*vfs, &good).expect("a saved snapshot verifies");
        assert_eq!(
            summary.file_bytes,
            file.len() as u64,
            "the snapshot file's own bytes"
        );
        let mut read = Vec::new();
        SnapshotReader::open(&*vfs, &good)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, payload);

        let damage_of = |p: &Path| match verify(&*vfs, p) {
            Err(SnapshotFileError::Damaged { damage, offset, .. }) => (damage, offset),
            other => panic!("expected damage, got {other:?}"),
        };
        let mut bad_digest = saved.clone();
        *bad_digest.last_mut().unwrap() ^= 1;
        assert!(matches!(
            damage_of(&at("bad-digest.db", &bad_digest)),
            (Damage::SavedDigest { .. }, o) if o == saved.len() as u64 - 32
        ));
        if saved_padding_bytes(file.len() as u64) > 0 {
            let mut bad_padding = saved.clone();
            bad_padding[file.len()] = 1;
            assert!(matches!(
                damage_of(&at("bad-padding.db", &bad_padding)),
                (Damage::SavedPadding { at }, _) if at == file.len() as u64
            ));
        }
        // A payload byte flipped: the chunk CRC finds it before the digest is looked at.
        let mut bad_chunk = saved.clone();
        bad_chunk[200] ^= 1;
        assert!(matches!(
            damage_of(&at("bad-chunk.db", &bad_chunk)),
            (Damage::ChunkChecksum { .. }, _)
        ));
        // Under a node directory's name, nothing may follow the trailer.
        let canonical = at(&snapshot_file_name(LogIndex(7)), &saved);
        assert!(matches!(
            damage_of(&canonical),
            (Damage::TrailingBytes { .. }, _)
        ));
        // Other trailing bytes stay trailing bytes.
        let mut extra = file.clone();
        extra.extend_from_slice(&[0; 5]);
        assert!(matches!(
            damage_of(&at("extra.db", &extra)),
            (Damage::TrailingBytes { bytes: 5 }, _)
        ));
    }

    /// A snapshot that does not fit the disk (ENOSPC halfway through its payload) fails with
    /// that error and leaves nothing behind: its temporary file is removed and the snapshot
    /// before it stays the newest valid one. Once space is back, the next attempt succeeds.
    #[test]
    fn a_snapshot_on_a_full_disk_fails_cleanly_and_keeps_the_old_one() {
        let (fs, vfs, dir) = disk();
        let old = write(&vfs, &dir, &meta(5), &[7u8; 1000]);
        fs.set_capacity_bytes(Some(fs.used_bytes() + (64 << 10)));
        let failed = (|| -> Result<(), String> {
            let mut w = SnapshotWriter::create(Arc::clone(&vfs), &dir, &meta(9))
                .map_err(|e| e.to_string())?;
            w.write_all(&vec![8u8; 1 << 20])
                .map_err(|e| e.to_string())?;
            w.finish().map(|_| ()).map_err(|e| e.to_string())
        })();
        let e = failed.expect_err("1 MiB does not fit 64 KiB");
        assert!(
            e.contains("No space left on device"),
            "the error says why: {e}"
        );
        assert_eq!(fs.paths(), vec![old.clone()], "no temporary file is left");
        let newest = newest_valid(&*vfs, &dir).unwrap();
        assert_eq!(newest.chosen.map(|c| c.path), Some(old));
        fs.set_capacity_bytes(None);
        let new = write(&vfs, &dir, &meta(9), &vec![8u8; 1 << 20]);
        let newest = newest_valid(&*vfs, &dir).unwrap();
        assert_eq!(newest.chosen.map(|c| c.path), Some(new));
    }
}

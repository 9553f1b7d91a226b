//! The bytes of a log segment: the segment header, the record frame, and segment file naming.
//!
//! This module owns the on-disk layout and nothing else: it encodes into and decodes from byte
//! slices the caller provides, never touches a file, and never allocates on the append or read
//! path. `docs/FORMAT.md` is the authoritative description; the diagrams below repeat it and the
//! `const` assertions at the end of the constants section tie the numbers to the prose.
//!
//! All integers are little-endian. Checksums are CRC32C (Castagnoli, hardware accelerated).
//!
//! # Segment header (64 bytes, at offset 0 of every segment file)
//!
//! ```text
//!  0      4        8            16            24                32     40          48          56         60    64
//!  +------+--------+------------+-------------+-----------------+------+-----------+-----------+----------+-----+
//!  |magic |version | base_index | entry_count | append_position | salt | prev_term | dirty_end | flags    | crc |
//!  | u32  | u32    | u64        | u64         | u64             | u64  | u64       | u64       | u32      | u32 |
//!  +------+--------+------------+-------------+-----------------+------+-----------+-----------+----------+-----+
//! ```
//! The seed's fields come first, in the seed's order. `crc` is CRC32C over bytes `[0, 60)`.
//! `prev_term` is the term of entry `base_index - 1` (0 for base 1), so the term of the last
//! compacted entry survives deleting whole segments. `dirty_end` is 0 (clean) or an offset
//! `>= append_position`: bytes in `[append_position, dirty_end)` may still hold frames cut by a
//! truncation and must be zeroed (durably) before the segment is scanned. `flags` bit 0
//! ([`HEADER_FLAG_RECYCLED`]) says the file is a recycled segment: past the valid frames it holds
//! stale frames of its previous life (another salt), not zeros; other bits must be zero.
//! The header is a *hint* that never claims more than is durable (see FORMAT.md, "Operations").
//!
//! # Record frame (8-byte aligned; the first starts at offset 64, each next one where the last ends)
//!
//! ```text
//!  0        4       8       16      24                  32    33         40         40+n   pad
//!  +--------+-------+-------+-------+-------------------+-----+----------+----------+------+
//!  | length | crc   | term  | index | batch_start_index | type| reserved | payload  | 0..7 |
//!  | u32    | u32   | u64   | u64   | u64               | u8  | 7 zero   | n bytes  | zero |
//!  +--------+-------+-------+-------+-------------------+-----+----------+----------+------+
//! ```
//! `length` = 40 + n (header plus payload, before padding); a length word of 0 means "end of
//! log", so zero-filled (preallocated) space reads as empty. The frame occupies `length` rounded
//! up to a multiple of [`FRAME_ALIGN`].
//!
//! `crc` is CRC32C over `salt ‖ base_index ‖ frame[0..4) ‖ frame[8..40+n)`: the segment's salt
//! and base index (so a frame left over from a previous life of a recycled file, or copied from
//! another segment, never validates), the length word (so a damaged length cannot point at a
//! range that happens to checksum), and every byte that identifies the entry (term, index,
//! batch start, type, reserved bytes, payload). The salt/base-index part is computed once per
//! segment ([`FrameSeed`]).
//!
//! # Invariants
//! - Every length read from disk is bounded by [`ENTRY_PAYLOAD_MAX`] and by the bytes available
//!   before it is used to index or allocate anything.
//! - Unknown entry types, non-zero reserved bytes and unknown versions are reported, never
//!   skipped: a reader of this version cannot know what they mean.
//! - Segment file names are canonical: one base index has exactly one name.

use crate::types::{EntryType, LogIndex, Term};

// ----------------------------------------------------------------------------------------------
// Constants
// ----------------------------------------------------------------------------------------------

/// "RAFT" read as a big-endian word; stored little-endian like every integer (bytes `54 46 41 52`).
pub const SEGMENT_MAGIC: u32 = 0x5241_4654;
/// The segment format version this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_SIZE: usize = 64;

/// Header field offsets (see the module diagram).
pub const HEADER_MAGIC_OFFSET: usize = 0;
pub const HEADER_VERSION_OFFSET: usize = 4;
pub const HEADER_BASE_INDEX_OFFSET: usize = 8;
pub const HEADER_ENTRY_COUNT_OFFSET: usize = 16;
pub const HEADER_APPEND_POSITION_OFFSET: usize = 24;
pub const HEADER_SALT_OFFSET: usize = 32;
pub const HEADER_PREV_TERM_OFFSET: usize = 40;
pub const HEADER_DIRTY_END_OFFSET: usize = 48;
pub const HEADER_FLAGS_OFFSET: usize = 56;
/// Header flag: the file is a recycled segment (its bytes past the valid frames are stale frames
/// of an earlier life, which never validate under this life's salt, rather than zeros).
pub const HEADER_FLAG_RECYCLED: u32 = 1;
/// Every flag this version knows; a header with another bit set is rejected.
pub const HEADER_FLAGS_KNOWN: u32 = HEADER_FLAG_RECYCLED;
pub const HEADER_CRC_OFFSET: usize = 60;

/// Every frame starts at a multiple of this, so a forward search for a valid frame can step by
/// it, and every u64 in a frame header is naturally aligned in an mmap.
pub const FRAME_ALIGN: usize = 8;
/// Size of a record frame's fixed part; the payload follows it.
pub const FRAME_HEADER_SIZE: usize = 40;

/// Frame field offsets (see the module diagram).
pub const FRAME_LENGTH_OFFSET: usize = 0;
pub const FRAME_CRC_OFFSET: usize = 4;
pub const FRAME_TERM_OFFSET: usize = 8;
pub const FRAME_INDEX_OFFSET: usize = 16;
pub const FRAME_BATCH_START_OFFSET: usize = 24;
pub const FRAME_TYPE_OFFSET: usize = 32;
pub const FRAME_RESERVED_OFFSET: usize = 33;
pub const FRAME_PAYLOAD_OFFSET: usize = 40;

/// The largest payload one entry may carry (16 MiB). A segment may impose a smaller bound (its
/// capacity); a length word beyond this is invalid before anything is allocated.
pub const ENTRY_PAYLOAD_MAX: usize = 16 << 20;

/// The smallest segment this format allows: a header plus one frame with a 4 KiB payload.
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 64 << 10;
/// The largest segment: offsets inside a segment are `u32`, and a segment's size is a multiple of
/// [`FRAME_ALIGN`], so the largest multiple of 8 that fits a `u32` (4 GiB - 8 bytes).
pub const SEGMENT_SIZE_MAX_BYTES: u64 = u32::MAX as u64 & !(FRAME_ALIGN as u64 - 1);
/// Default segment size (the seed's 64 MiB).
pub const SEGMENT_SIZE_DEFAULT_BYTES: u64 = 64 << 20;

/// Checks a segment size against this format: a multiple of 8 in
/// `[SEGMENT_SIZE_MIN_BYTES, SEGMENT_SIZE_MAX_BYTES]`. The config check and the log's own open
/// both call it, so a size the config accepts is one the log opens.
///
/// # Errors
/// A sentence naming the size and the rule it breaks.
pub fn check_segment_size(bytes: u64) -> Result<(), String> {
    if !(SEGMENT_SIZE_MIN_BYTES..=SEGMENT_SIZE_MAX_BYTES).contains(&bytes) {
        return Err(format!(
            "{bytes} bytes is outside [{SEGMENT_SIZE_MIN_BYTES}, {SEGMENT_SIZE_MAX_BYTES}]"
        ));
    }
    if !bytes.is_multiple_of(FRAME_ALIGN as u64) {
        return Err(format!("{bytes} bytes is not a multiple of {FRAME_ALIGN}"));
    }
    Ok(())
}

/// The largest payload one entry may carry in a log of `segment_size_bytes` segments: what fits
/// an empty segment (its frame, padding included, after the header), at most
/// [`ENTRY_PAYLOAD_MAX`]. Every size limit on client input derives from this one function: the
/// consensus core refuses larger proposals, the etcd API and the Operator service refuse larger
/// requests before they are proposed, and the transport refuses larger entries from peers. So no
/// client request can reach a durable write that must fail.
pub fn entry_payload_max_bytes(segment_size_bytes: u64) -> usize {
    let room = segment_size_bytes.saturating_sub(SEGMENT_HEADER_SIZE as u64);
    // frame_padded_len(p) <= room  <=>  40 + p, rounded up to 8, <= room.
    let by_segment = (room & !(FRAME_ALIGN as u64 - 1)).saturating_sub(FRAME_HEADER_SIZE as u64);
    by_segment.min(ENTRY_PAYLOAD_MAX as u64) as usize
}

/// The persistent Raft state's file name inside a node directory (see `state.rs`).
pub const STATE_FILE_NAME: &str = "raft_state.meta";

const SEGMENT_FILE_PREFIX: &str = "segment_";
const SEGMENT_FILE_SUFFIX: &str = ".log";
const SEGMENT_FILE_DIGITS_MIN: usize = 6;

const _: () = {
    // Header: the seed's five fields in the seed's order, then salt, reserved, checksum last.
    assert!(HEADER_MAGIC_OFFSET == 0);
    assert!(HEADER_VERSION_OFFSET == HEADER_MAGIC_OFFSET + 4);
    assert!(HEADER_BASE_INDEX_OFFSET == HEADER_VERSION_OFFSET + 4);
    assert!(HEADER_ENTRY_COUNT_OFFSET == HEADER_BASE_INDEX_OFFSET + 8);
    assert!(HEADER_APPEND_POSITION_OFFSET == HEADER_ENTRY_COUNT_OFFSET + 8);
    assert!(HEADER_SALT_OFFSET == HEADER_APPEND_POSITION_OFFSET + 8);
    assert!(HEADER_PREV_TERM_OFFSET == HEADER_SALT_OFFSET + 8);
    assert!(HEADER_DIRTY_END_OFFSET == HEADER_PREV_TERM_OFFSET + 8);
    assert!(HEADER_FLAGS_OFFSET == HEADER_DIRTY_END_OFFSET + 8);
    assert!(HEADER_CRC_OFFSET == SEGMENT_HEADER_SIZE - 4);
    assert!(SEGMENT_HEADER_SIZE == 64);
    // Frames start 8-aligned right after the header.
    assert!(SEGMENT_HEADER_SIZE.is_multiple_of(FRAME_ALIGN));
    assert!(FRAME_ALIGN.is_power_of_two());
    // Frame: length, crc, then the three u64 (naturally aligned), type, reserved, payload.
    assert!(FRAME_LENGTH_OFFSET == 0);
    assert!(FRAME_CRC_OFFSET == 4);
    assert!(FRAME_TERM_OFFSET == 8);
    assert!(FRAME_INDEX_OFFSET == FRAME_TERM_OFFSET + 8);
    assert!(FRAME_BATCH_START_OFFSET == FRAME_INDEX_OFFSET + 8);
    assert!(FRAME_TYPE_OFFSET == FRAME_BATCH_START_OFFSET + 8);
    assert!(FRAME_RESERVED_OFFSET == FRAME_TYPE_OFFSET + 1);
    assert!(FRAME_PAYLOAD_OFFSET == FRAME_RESERVED_OFFSET + 7);
    assert!(FRAME_HEADER_SIZE == FRAME_PAYLOAD_OFFSET);
    assert!(FRAME_HEADER_SIZE.is_multiple_of(FRAME_ALIGN));
    // The length word is a u32 and never 0 for a real frame.
    assert!(FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX <= u32::MAX as usize);
    assert!(SEGMENT_SIZE_MIN_BYTES as usize >= SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE + 4096);
    assert!(SEGMENT_SIZE_DEFAULT_BYTES.is_multiple_of(FRAME_ALIGN as u64));
};

// ----------------------------------------------------------------------------------------------
// Little-endian helpers (bounds are checked by the callers; these panic only on programmer error)
// ----------------------------------------------------------------------------------------------

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Rounds `len` up to the next multiple of [`FRAME_ALIGN`].
pub const fn align_up(len: usize) -> usize {
    (len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

// ----------------------------------------------------------------------------------------------
// Segment header
// ----------------------------------------------------------------------------------------------

/// Why a segment header does not decode. Each variant carries the values found, so the caller
/// (which knows the file) can report exactly what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment header is {len} bytes, need {SEGMENT_HEADER_SIZE}")]
    TooShort { len: usize },
    #[error("bad segment magic {found:#010x} (expected {SEGMENT_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported segment version {found} (this build reads version {SEGMENT_VERSION})")]
    BadVersion { found: u32 },
    #[error("segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error(
        "segment header has unknown flags {flags:#x} (this build knows {HEADER_FLAGS_KNOWN:#x})"
    )]
    UnknownFlags { flags: u32 },
    #[error("segment header base index is 0 (the first log index is 1)")]
    ZeroBaseIndex,
    #[error(
        "segment header append position {append_position} (dirty end {dirty_end}) is implausible for {entry_count} entries"
    )]
    BadAppendPosition {
        append_position: u64,
        dirty_end: u64,
        entry_count: u64,
    },
    #[error(
        "segment header append position {append_position} lies beyond the file's {file_len} bytes"
    )]
    BeyondFile { append_position: u64, file_len: u64 },
}

/// The decoded segment header. See the module docs for the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Index of the first entry this segment holds (or will hold).
    pub base_index: LogIndex,
    /// Entries the header vouches for: all of them are durable. The open segment may hold more
    /// (found by scanning from `append_position`).
    pub entry_count: u64,
    /// Byte offset just after the last counted entry's frame (padding included).
    pub append_position: u64,
    /// A value unique to this life of the file, mixed into every frame's CRC.
    pub salt: u64,
    /// The term of entry `base_index - 1` (0 when `base_index` is 1).
    pub prev_term: Term,
    /// 0 when clean; otherwise `[append_position, dirty_end)` may hold stale frames left by a
    /// truncation that must be zeroed before the segment is scanned or appended to.
    pub dirty_end: u64,
    /// The file is a recycled segment: past its valid frames lie stale frames of an earlier life
    /// (never zeros to rely on), which recovery leaves alone (FORMAT.md, "Recycling").
    pub recycled: bool,
}

impl SegmentHeader {
    /// The header of a freshly created (or recycled) segment: no entries yet.
    pub fn new_empty(base_index: LogIndex, prev_term: Term, salt: u64) -> SegmentHeader {
        assert!(
            base_index.0 >= 1,
            "segment base index must be >= 1, got {base_index}"
        );
        SegmentHeader {
            base_index,
            entry_count: 0,
            append_position: SEGMENT_HEADER_SIZE as u64,
            salt,
            prev_term,
            dirty_end: 0,
            recycled: false,
        }
    }

    /// The byte range a truncation left to be zeroed, if any.
    pub fn dirty_range(&self) -> Option<std::ops::Range<u64>> {
        (self.dirty_end > self.append_position).then_some(self.append_position..self.dirty_end)
    }

    /// The last index the header vouches for, `base_index - 1` if it counts no entry (the seed's
    /// `latest_index = base_index + entry_count - 1`).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.base_index.0 + self.entry_count - 1)
    }

    /// The CRC seed every frame of this segment is checksummed with.
    pub fn frame_seed(&self) -> FrameSeed {
        FrameSeed::new(self.salt, self.base_index)
    }

    /// Encodes the header, checksum last.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut bytes = [0u8; SEGMENT_HEADER_SIZE];
        put_u32(&mut bytes, HEADER_MAGIC_OFFSET, SEGMENT_MAGIC);
        put_u32(&mut bytes, HEADER_VERSION_OFFSET, SEGMENT_VERSION);
        put_u64(&mut bytes, HEADER_BASE_INDEX_OFFSET, self.base_index.0);
        put_u64(&mut bytes, HEADER_ENTRY_COUNT_OFFSET, self.entry_count);
        put_u64(
            &mut bytes,
            HEADER_APPEND_POSITION_OFFSET,
            self.append_position,
        );
        put_u64(&mut bytes, HEADER_SALT_OFFSET, self.salt);
        put_u64(&mut bytes, HEADER_PREV_TERM_OFFSET, self.prev_term.0);
        put_u64(&mut bytes, HEADER_DIRTY_END_OFFSET, self.dirty_end);
        let flags = if self.recycled {
            HEADER_FLAG_RECYCLED
        } else {
            0
        };
        put_u32(&mut bytes, HEADER_FLAGS_OFFSET, flags);
        let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        put_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        bytes
    }

    /// Decodes and validates a header: magic, version, checksum, flags, and that the
    /// counts are self-consistent (a count of 0 sits at the header's end; `n` entries need at
    /// least `n` minimal frames). Checking the position against the file's length is
    /// [`SegmentHeader::check_file_len`], since only the caller knows the length.
    ///
    /// # Errors
    /// The first check that fails, in the order above (magic first, so a file that is not a
    /// segment at all is named as such rather than as a checksum failure).
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < SEGMENT_HEADER_SIZE {
            return Err(HeaderError::TooShort { len: bytes.len() });
        }
        let bytes = &bytes[..SEGMENT_HEADER_SIZE];
        let magic = get_u32(bytes, HEADER_MAGIC_OFFSET);
        if magic != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let version = get_u32(bytes, HEADER_VERSION_OFFSET);
        if version != SEGMENT_VERSION {
            return Err(HeaderError::BadVersion { found: version });
        }
        let stored = get_u32(bytes, HEADER_CRC_OFFSET);
        let computed = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(HeaderError::BadChecksum { stored, computed });
        }
        let flags = get_u32(bytes, HEADER_FLAGS_OFFSET);
        if flags & !HEADER_FLAGS_KNOWN != 0 {
            return Err(HeaderError::UnknownFlags { flags });
        }
        let header = SegmentHeader {
            base_index: LogIndex(get_u64(bytes, HEADER_BASE_INDEX_OFFSET)),
            entry_count: get_u64(bytes, HEADER_ENTRY_COUNT_OFFSET),
            append_position: get_u64(bytes, HEADER_APPEND_POSITION_OFFSET),
            salt: get_u64(bytes, HEADER_SALT_OFFSET),
            prev_term: Term(get_u64(bytes, HEADER_PREV_TERM_OFFSET)),
            dirty_end: get_u64(bytes, HEADER_DIRTY_END_OFFSET),
            recycled: flags & HEADER_FLAG_RECYCLED != 0,
        };
        if header.base_index.0 == 0 {
            return Err(HeaderError::ZeroBaseIndex);
        }
        let first_frame = SEGMENT_HEADER_SIZE as u64;
        let plausible = header.append_position.is_multiple_of(FRAME_ALIGN as u64)
            && header
                .entry_count
                .checked_mul(FRAME_HEADER_SIZE as u64)
                .and_then(|min| min.checked_add(first_frame))
                .is_some_and(|min| header.append_position >= min)
            && (header.entry_count != 0 || header.append_position == first_frame)
            && header
                .base_index
                .0
                .checked_add(header.entry_count)
                .is_some()
            && (header.dirty_end == 0
                || (header.dirty_end >= header.append_position
                    && header.dirty_end.is_multiple_of(FRAME_ALIGN as u64)));
        if !plausible {
            return Err(HeaderError::BadAppendPosition {
                append_position: header.append_position,
                dirty_end: header.dirty_end,
                entry_count: header.entry_count,
            });
        }
        Ok(header)
    }

    /// Checks that the header's append position lies inside a file of `file_len` bytes.
    ///
    /// # Errors
    /// [`HeaderError::BeyondFile`] if it does not.
    pub fn check_file_len(&self, file_len: u64) -> Result<(), HeaderError> {
        if self.append_position > file_len {
            return Err(HeaderError::BeyondFile {
                append_position: self.append_position,
                file_len,
            });
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Record frame
// ----------------------------------------------------------------------------------------------

/// The per-segment part of every frame's CRC: CRC32C over `salt ‖ base_index`, computed once when
/// a segment is opened and continued over each frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSeed(u32);

impl FrameSeed {
    pub fn new(salt: u64, base_index: LogIndex) -> FrameSeed {
        let mut bytes = [0u8; 16];
        put_u64(&mut bytes, 0, salt);
        put_u64(&mut bytes, 8, base_index.0);
        FrameSeed(crc32c::crc32c(&bytes))
    }

    /// The CRC of a frame whose bytes are `frame` (at least `length` bytes; the CRC field itself
    /// is skipped).
    fn frame_crc(self, frame: &[u8], length: usize) -> u32 {
        let crc = crc32c::crc32c_append(self.0, &frame[FRAME_LENGTH_OFFSET..FRAME_CRC_OFFSET]);
        crc32c::crc32c_append(crc, &frame[FRAME_TERM_OFFSET..length])
    }
}

/// The identifying fields of one frame (everything but the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFields {
    pub term: Term,
    pub index: LogIndex,
    /// Index of the first entry of the append batch this frame was written in: recovery uses it
    /// to tell a torn last batch from damage to an earlier, acknowledged one (FORMAT.md).
    pub batch_start_index: LogIndex,
    pub entry_type: EntryType,
}

/// A validated frame, borrowing its payload from the caller's bytes (the mmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<'a> {
    pub term: Term,
    pub index: LogIndex,
    pub batch_start_index: LogIndex,
    pub entry_type: EntryType,
    pub payload: &'a [u8],
    /// Bytes the frame occupies, padding included: the next frame starts this far on.
    pub padded_len: usize,
}

impl FrameView<'_> {
    pub fn fields(&self) -> FrameFields {
        FrameFields {
            term: self.term,
            index: self.index,
            batch_start_index: self.batch_start_index,
            entry_type: self.entry_type,
        }
    }
}

/// Why the bytes at a frame position are not a valid frame. (A zero length word is not an
/// error: it is the end of the log, `Ok(None)` from [`decode_frame`].)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length} is outside [{FRAME_HEADER_SIZE}, {}]", FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX)]
    BadLength { length: u32 },
    #[error(
        "frame of {padded_len} bytes (padded) runs past the {available} bytes left in the segment"
    )]
    Truncated { padded_len: usize, available: usize },
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unknown entry type {value}")]
    BadType { value: u8 },
    #[error("frame reserved bytes are not zero")]
    NonZeroReserved,
    #[error("frame padding bytes are not zero")]
    NonZeroPadding,
}

/// Bytes a frame with a `payload_len`-byte payload occupies, padding included.
pub const fn frame_padded_len(payload_len: usize) -> usize {
    align_up(FRAME_HEADER_SIZE + payload_len)
}

/// Encodes one frame into `dst`, which must be exactly [`frame_padded_len`]`(payload.len())`
/// bytes (the caller's reusable buffer or a slice of the mmap): header, payload, zero padding.
///
/// # Panics
/// If `payload` exceeds [`ENTRY_PAYLOAD_MAX`] (the log checks entries before encoding them) or
/// `dst` has the wrong length: both are programmer errors.
pub fn encode_frame_into(dst: &mut [u8], seed: FrameSeed, fields: FrameFields, payload: &[u8]) {
    assert!(
        payload.len() <= ENTRY_PAYLOAD_MAX,
        "payload of {} bytes exceeds ENTRY_PAYLOAD_MAX {ENTRY_PAYLOAD_MAX}",
        payload.len()
    );
    let length = FRAME_HEADER_SIZE + payload.len();
    assert_eq!(
        dst.len(),
        align_up(length),
        "frame buffer is {} bytes, frame needs {}",
        dst.len(),
        align_up(length)
    );
    // `length` fits a u32: ENTRY_PAYLOAD_MAX is checked above and by a const assertion.
    put_u32(dst, FRAME_LENGTH_OFFSET, length as u32);
    put_u64(dst, FRAME_TERM_OFFSET, fields.term.0);
    put_u64(dst, FRAME_INDEX_OFFSET, fields.index.0);
    put_u64(dst, FRAME_BATCH_START_OFFSET, fields.batch_start_index.0);
    dst[FRAME_TYPE_OFFSET] = fields.entry_type as u8;
    dst[FRAME_RESERVED_OFFSET..FRAME_PAYLOAD_OFFSET].fill(0);
    dst[FRAME_PAYLOAD_OFFSET..length].copy_from_slice(payload);
    dst[length..].fill(0);
    let crc = seed.frame_crc(dst, length);
    put_u32(dst, FRAME_CRC_OFFSET, crc);
}

/// Appends one encoded frame to `out` (a buffer the caller reuses across batches, so the append
/// path allocates only when the buffer grows). Returns the bytes appended (the padded length).
///
/// # Panics
/// As [`encode_frame_into`].
pub fn encode_frame(
    out: &mut Vec<u8>,
    seed: FrameSeed,
    fields: FrameFields,
    payload: &[u8],
) -> usize {
    assert!(
        payload.len() <= ENTRY_PAYLOAD_MAX,
        "payload of {} bytes exceeds ENTRY_PAYLOAD_MAX {ENTRY_PAYLOAD_MAX}",
        payload.len()
    );
    let start = out.len();
    let length = FRAME_HEADER_SIZE + payload.len();
    let padded = align_up(length);
    out.reserve(padded);
    // Built by appending rather than by zero-filling `padded` bytes and overwriting them: for
    // big payloads the zero-fill was a second pass over the whole frame (a memset per entry).
    let mut header = [0u8; FRAME_HEADER_SIZE];
    // `length` fits a u32: ENTRY_PAYLOAD_MAX is checked above and by a const assertion.
    put_u32(&mut header, FRAME_LENGTH_OFFSET, length as u32);
    put_u64(&mut header, FRAME_TERM_OFFSET, fields.term.0);
    put_u64(&mut header, FRAME_INDEX_OFFSET, fields.index.0);
    put_u64(
        &mut header,
        FRAME_BATCH_START_OFFSET,
        fields.batch_start_index.0,
    );
    header[FRAME_TYPE_OFFSET] = fields.entry_type as u8;
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0u8; FRAME_ALIGN][..padded - length]);
    let crc = seed.frame_crc(&out[start..], length);
    put_u32(&mut out[start..], FRAME_CRC_OFFSET, crc);
    padded
}

/// Decodes the frame at the start of `bytes`, which runs from the frame's position to the end of
/// the segment's readable bytes (so a length pointing past the segment is detected here).
///
/// Returns `Ok(None)` at the end of the log: a zero length word, or fewer than 4 bytes left.
/// Index continuity is the caller's check: this function knows nothing about neighbours.
///
/// # Errors
/// The first problem found, checked in the order: length bounds, room in the segment, CRC,
/// type, reserved bytes, padding bytes. Nothing is allocated, whatever the length word says.
pub fn decode_frame(bytes: &[u8], seed: FrameSeed) -> Result<Option<FrameView<'_>>, FrameError> {
    if bytes.len() < FRAME_CRC_OFFSET {
        return Ok(None);
    }
    let length_word = get_u32(bytes, FRAME_LENGTH_OFFSET);
    if length_word == 0 {
        return Ok(None);
    }
    let length = length_word as usize;
    if !(FRAME_HEADER_SIZE..=FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX).contains(&length) {
        return Err(FrameError::BadLength {
            length: length_word,
        });
    }
    let padded_len = align_up(length);
    if padded_len > bytes.len() {
        return Err(FrameError::Truncated {
            padded_len,
            available: bytes.len(),
        });
    }
    let stored = get_u32(bytes, FRAME_CRC_OFFSET);
    let computed = seed.frame_crc(bytes, length);
    if stored != computed {
        return Err(FrameError::BadCrc { stored, computed });
    }
    let type_byte = bytes[FRAME_TYPE_OFFSET];
    let entry_type =
        EntryType::from_u8(type_byte).ok_or(FrameError::BadType { value: type_byte })?;
    if bytes[FRAME_RESERVED_OFFSET..FRAME_PAYLOAD_OFFSET]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(FrameError::NonZeroReserved);
    }
    // The padding is not covered by the CRC (it is never read), but it is always written as
    // zero: a non-zero padding byte means the bytes were damaged, so say so.
    if bytes[length..padded_len].iter().any(|&b| b != 0) {
        return Err(FrameError::NonZeroPadding);
    }
    Ok(Some(FrameView {
        term: Term(get_u64(bytes, FRAME_TERM_OFFSET)),
        index: LogIndex(get_u64(bytes, FRAME_INDEX_OFFSET)),
        batch_start_index: LogIndex(get_u64(bytes, FRAME_BATCH_START_OFFSET)),
        entry_type,
        payload: &bytes[FRAME_PAYLOAD_OFFSET..length],
        padded_len,
    }))
}

/// The length word at the start of `bytes`, without validating anything (0 if fewer than 4
/// bytes). Recovery uses it to look past a bad frame at its stated length.
pub fn peek_frame_length(bytes: &[u8]) -> u32 {
    if bytes.len() < 4 {
        return 0;
    }
    get_u32(bytes, FRAME_LENGTH_OFFSET)
}

// ----------------------------------------------------------------------------------------------
// File naming
// ----------------------------------------------------------------------------------------------

/// The file name of the segment whose first index is `base_index`:
/// `segment_<base index, zero-padded to at least 6 digits>.log`.
pub fn segment_file_name(base_index: LogIndex) -> String {
    format!(
        "{SEGMENT_FILE_PREFIX}{:0width$}{SEGMENT_FILE_SUFFIX}",
        base_index.0,
        width = SEGMENT_FILE_DIGITS_MIN
    )
}

/// Parses a segment file name back to its base index. Only canonical names are accepted (the
/// exact string [`segment_file_name`] produces, base index >= 1), so `segment_0000001.log` next to
/// `segment_000001.log` cannot make two files claim one base index. Anything else, including
/// temporary and backup files, is `None`. Callers sort by the number, never by the string.
pub fn parse_segment_file_name(name: &str) -> Option<LogIndex> {
    let digits = name
        .strip_prefix(SEGMENT_FILE_PREFIX)?
        .strip_suffix(SEGMENT_FILE_SUFFIX)?;
    if digits.len() < SEGMENT_FILE_DIGITS_MIN || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base: u64 = digits.parse().ok()?;
    if base == 0 || segment_file_name(LogIndex(base)) != name {
        return None;
    }
    Some(LogIndex(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(index: u64) -> FrameFields {
        FrameFields {
            term: Term(3),
            index: LogIndex(index),
            batch_start_index: LogIndex(index),
            entry_type: EntryType::Normal,
        }
    }

    #[test]
    fn header_round_trips_and_has_documented_layout() {
        let header = SegmentHeader {
            base_index: LogIndex(1000),
            entry_count: 2,
            append_position: 64 + 48 + 48,
            salt: 0xdead_beef_0123_4567,
            prev_term: Term(6),
            dirty_end: 256,
            recycled: false,
        };
        let bytes = header.encode();
        assert_eq!(
            &bytes[0..4],
            &[0x54, 0x46, 0x41, 0x52],
            "magic is 'TFAR' little-endian"
        );
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &1000u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &160u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0xdead_beef_0123_4567u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &6u64.to_le_bytes());
        assert_eq!(&bytes[48..56], &256u64.to_le_bytes());
        assert!(bytes[56..60].iter().all(|&b| b == 0));
        let recycled = SegmentHeader {
            recycled: true,
            ..header
        };
        let rbytes = recycled.encode();
        assert_eq!(&rbytes[56..60], &HEADER_FLAG_RECYCLED.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&rbytes), Ok(recycled));
        assert_eq!(&bytes[60..64], &crc32c::crc32c(&bytes[..60]).to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(header.last_index(), LogIndex(1001));
        assert_eq!(
            SegmentHeader::new_empty(LogIndex(7), Term(2), 1).last_index(),
            LogIndex(6)
        );
    }

    #[test]
    fn header_rejects_each_kind_of_damage() {
        let good = SegmentHeader::new_empty(LogIndex(1), Term(0), 42).encode();
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut bad = good;
        bad[4] = 2;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::BadVersion { found: 2 })
        );
        for byte in 8..64 {
            let mut bad = good;
            bad[byte] ^= 0x10;
            assert!(
                matches!(
                    SegmentHeader::decode(&bad),
                    Err(HeaderError::BadChecksum { .. })
                ),
                "flip in byte {byte} must fail the checksum"
            );
        }
        assert_eq!(
            SegmentHeader::decode(&good[..63]),
            Err(HeaderError::TooShort { len: 63 })
        );
        // Valid checksum but inconsistent counts: 3 entries cannot fit at the header's end.
        let odd = SegmentHeader {
            base_index: LogIndex(1),
            entry_count: 3,
            append_position: 64,
            salt: 0,
            prev_term: Term(0),
            dirty_end: 0,
            recycled: false,
        };
        assert!(matches!(
            SegmentHeader::decode(&odd.encode()),
            Err(HeaderError::BadAppendPosition { .. })
        ));
        let zero_base = SegmentHeader {
            base_index: LogIndex(0),
            ..SegmentHeader::new_empty(LogIndex(1), Term(0), 0)
        };
        assert_eq!(
            SegmentHeader::decode(&zero_base.encode()),
            Err(HeaderError::ZeroBaseIndex)
        );
        // An unknown flag bit (with a valid checksum) is refused: this build cannot know what
        // it means.
        let mut unknown = good;
        unknown[HEADER_FLAGS_OFFSET] = 2;
        let crc = crc32c::crc32c(&unknown[..HEADER_CRC_OFFSET]);
        unknown[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&unknown),
            Err(HeaderError::UnknownFlags { flags: 2 })
        );
        // A dirty end before the append position makes no sense.
        let dirty = SegmentHeader {
            dirty_end: 8,
            ..SegmentHeader::new_empty(LogIndex(1), Term(0), 0)
        };
        assert!(matches!(
            SegmentHeader::decode(&dirty.encode()),
            Err(HeaderError::BadAppendPosition { .. })
        ));
        let header = SegmentHeader::new_empty(LogIndex(1), Term(0), 0);
        assert_eq!(header.dirty_range(), None);
        assert!(header.check_file_len(64).is_ok());
        assert!(header.check_file_len(63).is_err());
    }

    #[test]
    fn frame_round_trips_with_padding() {
        let seed = FrameSeed::new(9, LogIndex(1));
        for len in [0usize, 1, 7, 8, 9, 255, 256, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let mut out = vec![0xaa; 3]; // encode_frame appends after existing bytes
            let n = encode_frame(&mut out, seed, fields(5), &payload);
            assert_eq!(n, frame_padded_len(len));
            assert_eq!(n % FRAME_ALIGN, 0);
            let frame = &out[3..];
            assert!(
                frame[FRAME_HEADER_SIZE + len..].iter().all(|&b| b == 0),
                "padding is zero"
            );
            // The appending encoder and the in-place one produce the same bytes.
            let mut in_place = vec![0xee; n];
            encode_frame_into(&mut in_place, seed, fields(5), &payload);
            assert_eq!(frame, &in_place[..], "payload of {len} bytes");
            let view = decode_frame(frame, seed).unwrap().unwrap();
            assert_eq!(view.payload, &payload[..]);
            assert_eq!(view.fields(), fields(5));
            assert_eq!(view.padded_len, n);
        }
    }

    #[test]
    fn zero_bytes_are_end_of_log() {
        let seed = FrameSeed::new(0, LogIndex(1));
        assert_eq!(decode_frame(&[0u8; 128], seed), Ok(None));
        assert_eq!(decode_frame(&[0u8; 3], seed), Ok(None));
        assert_eq!(decode_frame(&[], seed), Ok(None));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let seed = FrameSeed::new(77, LogIndex(10));
        let mut frame = Vec::new();
        encode_frame(&mut frame, seed, fields(12), b"hello, raft");
        // Every byte of the padded frame, padding included.
        for byte in 0..frame.len() {
            let mut bad = frame.clone();
            bad[byte] ^= 0x01;
            let got = decode_frame(&bad, seed);
            assert!(
                got.is_err() || (byte < 4 && got == Ok(None)),
                "flip in byte {byte} went undetected: {got:?}"
            );
        }
    }

    #[test]
    fn frame_from_another_segment_life_does_not_validate() {
        let old = FrameSeed::new(1, LogIndex(100));
        let mut frame = Vec::new();
        encode_frame(&mut frame, old, fields(100), b"stale");
        assert!(matches!(
            decode_frame(&frame, FrameSeed::new(2, LogIndex(100))),
            Err(FrameError::BadCrc { .. })
        ));
        assert!(matches!(
            decode_frame(&frame, FrameSeed::new(1, LogIndex(101))),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn bad_lengths_and_types_are_named() {
        let seed = FrameSeed::new(0, LogIndex(1));
        let mut bytes = vec![0u8; 64];
        bytes[0..4].copy_from_slice(&39u32.to_le_bytes());
        assert_eq!(
            decode_frame(&bytes, seed),
            Err(FrameError::BadLength { length: 39 })
        );
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&bytes, seed),
            Err(FrameError::BadLength { length: u32::MAX })
        );
        // A plausible length that runs past the end of the segment.
        bytes[0..4].copy_from_slice(&60u32.to_le_bytes());
        assert_eq!(
            decode_frame(&bytes[..56], seed),
            Err(FrameError::Truncated {
                padded_len: 64,
                available: 56
            })
        );
        // An unknown type with a valid CRC (a newer writer, or a bug) is still reported.
        let mut frame = Vec::new();
        encode_frame(&mut frame, seed, fields(1), b"x");
        frame[FRAME_TYPE_OFFSET] = 9;
        let crc = seed.frame_crc(&frame, FRAME_HEADER_SIZE + 1);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_frame(&frame, seed),
            Err(FrameError::BadType { value: 9 })
        );
        assert_eq!(peek_frame_length(&frame), 41);
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding neither panics nor reads outside them, and a frame that
        /// validates re-encodes to exactly the bytes it was decoded from.
        #[test]
        fn decode_is_total_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            salt in proptest::prelude::any::<u64>(),
        ) {
            let seed = FrameSeed::new(salt, LogIndex(1));
            let _ = SegmentHeader::decode(&bytes);
            if let Ok(Some(f)) = decode_frame(&bytes, seed) {
                let mut again = Vec::new();
                encode_frame(&mut again, seed, f.fields(), f.payload);
                proptest::prop_assert_eq!(&again[..], &bytes[..f.padded_len]);
            }
        }

        #[test]
        fn random_frames_round_trip(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            term in proptest::prelude::any::<u64>(),
            index in 1u64..u64::MAX,
            noop in proptest::prelude::any::<bool>(),
            salt in proptest::prelude::any::<u64>(),
        ) {
            let seed = FrameSeed::new(salt, LogIndex(index));
            let fields = FrameFields {
                term: Term(term),
                index: LogIndex(index),
                batch_start_index: LogIndex(index),
                entry_type: if noop { EntryType::NoOp } else { EntryType::Normal },
            };
            let mut out = Vec::new();
            encode_frame(&mut out, seed, fields, &payload);
            // Trailing zeros (preallocated space) after the frame do not change the result.
            out.extend_from_slice(&[0u8; 16]);
            let view = decode_frame(&out, seed).unwrap().unwrap();
            proptest::prop_assert_eq!(view.fields(), fields);
            proptest::prop_assert_eq!(view.payload, &payload[..]);
            proptest::prop_assert_eq!(decode_frame(&out[view.padded_len..], seed), Ok(None));
        }
    }

    #[test]
    fn segment_names_are_canonical_and_numeric() {
        assert_eq!(segment_file_name(LogIndex(1)), "segment_000001.log");
        assert_eq!(segment_file_name(LogIndex(1000)), "segment_001000.log");
        assert_eq!(
            segment_file_name(LogIndex(1_234_567)),
            "segment_1234567.log"
        );
        for base in [1u64, 999_999, 1_000_000, u64::MAX] {
            assert_eq!(
                parse_segment_file_name(&segment_file_name(LogIndex(base))),
                Some(LogIndex(base))
            );
        }
        for bad in [
            "segment_000000.log",
            "segment_00001.log",
            "segment_0000001.log",
            "segment_000001.log.bak",
            "segment_00000a.log",
            "segment_+00001.log",
            "Segment_000001.log",
            "segment_000001.LOG",
            "segment_99999999999999999999.log",
            "raft_state.meta",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad} must be rejected");
        }
        // Numeric, not string, order: 999999 < 1000000 although "segment_999999" sorts after.
        let a = parse_segment_file_name("segment_999999.log").unwrap();
        let b = parse_segment_file_name("segment_1000000.log").unwrap();
        assert!(a < b);
    }
}

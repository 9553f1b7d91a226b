//! One segment file of the log (`LogFileSegment`) and the scan that recovery and `segdump` share.
//!
//! A segment owns one [`LogFile`], its last durably written [`SegmentHeader`], and the byte offset
//! of every entry it holds (built by the recovery scan for the open segment, lazily on the first
//! read for a sealed one, so opening a large log reads no sealed segment).
//!
//! # Invariants
//! - Entries `base_index ..= last_index` sit back to back from offset [`SEGMENT_HEADER_SIZE`] to
//!   `append_position`, indexes consecutive, every frame valid under this segment's [`FrameSeed`].
//! - Between writes, every byte in `[append_position, file end)` is zero or, in a recycled
//!   segment, part of a stale frame of the file's previous life, which never validates under this
//!   life's salt (recovery and truncation zero what they cut, durably, and new segments read as
//!   zero), so the next append never sits in front of a stale frame that would validate and
//!   continue the index sequence.
//! - The durable header never counts an entry that is not durable: it is written when the segment
//!   is created (count 0), sealed, or truncated, and each time after the frames it counts were
//!   synced.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::storage::file::{LogFile, WriteAt};
use crate::storage::format::{
    decode_frame, peek_frame_length, FrameSeed, FrameView, SegmentHeader, ENTRY_PAYLOAD_MAX,
    FRAME_ALIGN, FRAME_BATCH_START_OFFSET, FRAME_HEADER_SIZE, FRAME_INDEX_OFFSET,
    FRAME_TYPE_OFFSET, SEGMENT_HEADER_SIZE,
};
use crate::types::{LogIndex, Term};

// ---------------------------------------------------------------------------------------------
// The scan (pure: bytes in, verdict out)
// ---------------------------------------------------------------------------------------------

/// How recovery classifies the first bad frame of the open segment (docs/FORMAT.md, "Recovery").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The damage lies inside the last, unacknowledged batch: cut it.
    TornTail,
    /// Durable, acknowledged data is damaged: refuse to open.
    Corrupt,
}

/// The first frame that did not check out, and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanProblem {
    pub kind: ProblemKind,
    /// Byte offset of the bad frame in the segment file.
    pub offset: u64,
    /// The index the bad frame should have held.
    pub index: LogIndex,
    /// Why the frame is bad, and for `Corrupt` what proved the data durable.
    pub reason: String,
}

/// What [`scan_segment`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Offset just after the last valid frame: where the next append goes.
    pub valid_end: u64,
    /// The last valid index (`base_index - 1` if the segment holds none).
    pub last_index: LogIndex,
    /// The term of `last_index` (the header's `prev_term` if the segment holds none).
    pub last_term: Term,
    /// Offset of each valid frame: entry `base_index + i` starts at `offsets[i]`.
    pub offsets: Vec<u32>,
    /// `Some` if the valid frames did not end in clean zeros.
    pub problem: Option<ScanProblem>,
    /// End of the bytes recovery must zero: `[valid_end, zero_end)` holds every non-zero byte
    /// after the valid frames (a torn batch, or frames of an interrupted truncation). Equal to
    /// `valid_end` when nothing is to be zeroed.
    pub zero_end: u64,
    /// Frames found (validating or not) in `[valid_end, zero_end)`, for the "dropped" log line.
    pub dropped_entries: u64,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The block size the zero search skips at once (a page).
const ZERO_BLOCK: usize = 4096;

/// Whether `bytes` are all zero; written as an OR-fold so it vectorizes.
fn is_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let tail_zero = words.remainder().iter().all(|&b| b == 0);
    let acc = words.fold(0u64, |acc, w| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        acc | u64::from_ne_bytes(a)
    });
    acc == 0 && tail_zero
}

/// A cheap filter before a CRC: could a frame at `bytes[0..]` be a frame with an index greater
/// than `expected`? Keeps the forward search linear over garbage.
fn could_be_later_frame(bytes: &[u8], expected: LogIndex) -> bool {
    if bytes.len() < FRAME_HEADER_SIZE {
        return false;
    }
    let len = peek_frame_length(bytes) as usize;
    if !(FRAME_HEADER_SIZE..=FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX).contains(&len)
        || len > bytes.len()
    {
        return false;
    }
    let index = read_u64(bytes, FRAME_INDEX_OFFSET);
    let batch_start = read_u64(bytes, FRAME_BATCH_START_OFFSET);
    index > expected.0 && batch_start <= index && bytes[FRAME_TYPE_OFFSET] <= 1
}

/// Whether the non-zero bytes at the start of `bytes` (where the frame with index `expected`
/// should be) belong to this life of a recycled segment rather than to its previous one: a frame
/// that validates under this life's seed, or one whose index and batch start fit this life (a
/// torn frame of the last batch). A stale frame of the previous life has another salt and an
/// index below this life's base.
fn is_this_life(bytes: &[u8], seed: FrameSeed, expected: LogIndex, base: LogIndex) -> bool {
    if matches!(decode_frame(bytes, seed), Ok(Some(_))) {
        return true;
    }
    if bytes.len() < FRAME_HEADER_SIZE {
        return false;
    }
    let index = read_u64(bytes, FRAME_INDEX_OFFSET);
    let batch_start = read_u64(bytes, FRAME_BATCH_START_OFFSET);
    index == expected.0 && (base.0..=index).contains(&batch_start)
}

/// Scans a segment's frames from its first frame, checking each frame (length, CRC, type,
/// reserved and padding bytes, index = previous + 1, `batch_start_index` inside the segment and
/// not after the index), and decides what the first bad frame means. Pure: `segdump` calls it
/// too.
///
/// - If the header is dirty (an interrupted truncation), the log ends at its `append_position`:
///   the frames vouched for must all be there; the dirty range is to be zeroed, not judged.
/// - A bad frame before the header's `append_position` is `Corrupt` (the header vouched for it).
/// - Otherwise the rest of the segment is searched in [`FRAME_ALIGN`] steps for a frame that
///   validates with an index beyond the bad one. If one does and its `batch_start_index` is
///   greater than the bad index, the bad frame belonged to an earlier batch, whose fdatasync had
///   completed before the later batch was written: `Corrupt`. Otherwise: `TornTail`.
///
/// A clean end (a zero length word) gets the same search: a durable frame whose length word was
/// zeroed must not pass for the end of the log.
///
/// In a recycled segment (`header.recycled`) the bytes after the valid frames are normally the
/// stale frames of the file's previous life: they end the log like zeros do. Only bytes of this
/// life count as a torn tail (a frame that validates under this life's seed, or a bad frame whose
/// index is the expected one), and only they are to be zeroed.
pub fn scan_segment(bytes: &[u8], header: &SegmentHeader) -> ScanOutcome {
    let seed = header.frame_seed();
    let base = header.base_index;
    let limit = match header.dirty_range() {
        Some(r) => (r.start as usize).min(bytes.len()),
        None => bytes.len(),
    };
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut expected = base;
    let mut last_term = header.prev_term;
    let mut offsets = Vec::new();
    let mut bad_reason: Option<String> = None;
    while pos < limit {
        match decode_frame(&bytes[pos..limit], seed) {
            Ok(None) => break,
            Ok(Some(f)) => {
                let problem = if f.index != expected {
                    Some(format!("index {} where {} was expected", f.index, expected))
                } else if f.batch_start_index > f.index || f.batch_start_index < base {
                    Some(format!(
                        "batch start {} outside [{base}, {}]",
                        f.batch_start_index, f.index
                    ))
                } else if f.term < last_term {
                    Some(format!("term {} after term {last_term}", f.term))
                } else {
                    None
                };
                if let Some(p) = problem {
                    bad_reason = Some(p);
                    break;
                }
                offsets.push(pos as u32);
                last_term = f.term;
                expected = expected.next();
                pos += f.padded_len;
            }
            Err(e) => {
                bad_reason = Some(e.to_string());
                break;
            }
        }
    }
    let valid_end = pos as u64;
    let mut outcome = ScanOutcome {
        valid_end,
        last_index: expected.prev(),
        last_term,
        offsets,
        problem: None,
        zero_end: valid_end,
        dropped_entries: 0,
    };
    if expected.0 <= header.last_index().0 {
        // The header counts this entry: it was durable.
        outcome.problem = Some(ScanProblem {
            kind: ProblemKind::Corrupt,
            offset: valid_end,
            index: expected,
            reason: format!(
                "{} (the header vouches for entries up to {})",
                bad_reason.as_deref().unwrap_or("end of log"),
                header.last_index()
            ),
        });
        return outcome;
    }

    // Look past the end for non-zero bytes and for later frames.
    let search_from = match header.dirty_range() {
        Some(r) => {
            outcome.zero_end = r.end.min(bytes.len() as u64);
            (r.end as usize).min(bytes.len())
        }
        None => pos,
    };
    let mut p = search_from;
    let recycled = header.recycled;
    if recycled && bad_reason.is_some() && !is_this_life(&bytes[pos..limit], seed, expected, base) {
        // A recycled file: past the valid frames lie the stale frames of its previous life
        // (another salt, indexes below this life's base). They are the normal end of the log,
        // not damage, and can never validate: leave them.
        bad_reason = None;
    }
    if bad_reason.is_some() {
        // The bad frame's first word is not zero (or it would have been a clean end).
        outcome.dropped_entries = 1;
        let end = if recycled {
            // Only this life's bytes are zeroed in a recycled file: the torn frame's extent.
            let len = peek_frame_length(&bytes[pos..limit]) as usize;
            if (FRAME_HEADER_SIZE..=FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX).contains(&len) {
                pos + crate::storage::format::align_up(len)
            } else {
                pos + FRAME_ALIGN
            }
        } else {
            p + FRAME_ALIGN
        };
        outcome.zero_end = outcome.zero_end.max((end.min(bytes.len())) as u64);
        p += FRAME_ALIGN;
    }
    let mut corrupt: Option<String> = None;
    while p + FRAME_ALIGN <= bytes.len() {
        // Preallocated space is mostly zeros: skip whole zero blocks quickly.
        if p % ZERO_BLOCK == 0
            && p + ZERO_BLOCK <= bytes.len()
            && is_zero(&bytes[p..p + ZERO_BLOCK])
        {
            p += ZERO_BLOCK;
            continue;
        }
        let word = &bytes[p..p + FRAME_ALIGN];
        if word.iter().all(|&b| b == 0) {
            p += FRAME_ALIGN;
            continue;
        }
        if !recycled {
            // Any non-zero byte of a zero-filled segment is this life's: zero it.
            outcome.zero_end = (p + FRAME_ALIGN) as u64;
        }
        if could_be_later_frame(&bytes[p..], expected) {
            if let Ok(Some(f)) = decode_frame(&bytes[p..], seed) {
                outcome.dropped_entries += 1;
                outcome.zero_end = outcome.zero_end.max((p + f.padded_len) as u64);
                if f.batch_start_index > expected && corrupt.is_none() {
                    corrupt = Some(format!(
                        "a valid frame of a later batch follows at offset {p} (index {}, batch \
                         start {}), so the damaged frame was acknowledged",
                        f.index, f.batch_start_index
                    ));
                }
                p += f.padded_len;
                continue;
            }
        }
        p += FRAME_ALIGN;
    }
    if let Some(tail) = bytes.len().checked_sub(p) {
        if !recycled && tail > 0 && bytes[p..].iter().any(|&b| b != 0) {
            outcome.zero_end = bytes.len() as u64;
        }
    }
    if let Some(why) = corrupt {
        outcome.problem = Some(ScanProblem {
            kind: ProblemKind::Corrupt,
            offset: valid_end,
            index: expected,
            reason: format!(
                "{}; {why}",
                bad_reason.as_deref().unwrap_or("zero length word")
            ),
        });
    } else if bad_reason.is_some() || outcome.zero_end > valid_end {
        outcome.problem = Some(ScanProblem {
            kind: ProblemKind::TornTail,
            offset: valid_end,
            index: expected,
            reason: bad_reason.unwrap_or_else(|| "non-zero bytes after the end of log".into()),
        });
    }
    outcome
}

// ---------------------------------------------------------------------------------------------
// The segment
// ---------------------------------------------------------------------------------------------

/// Why a segment operation failed; the log wraps it with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt at offset {offset} (index {index}): {reason}")]
    Corrupt {
        offset: u64,
        index: LogIndex,
        reason: String,
    },
}

/// One borrowed entry, read through the segment's mapping without copying the payload.
pub type EntryView<'a> = FrameView<'a>;

/// One segment file: see the module docs for what it owns and its invariants.
pub struct LogFileSegment {
    file: Arc<dyn LogFile>,
    /// The header as last written durably.
    header: SegmentHeader,
    seed: FrameSeed,
    /// The last entry present (base - 1 if none).
    last_index: LogIndex,
    /// Where the next frame goes; every byte from here to the file's end is zero (or stale, if recycled).
    append_position: u64,
    /// Offsets of the entries; built lazily for sealed segments.
    offsets: OnceLock<Result<Vec<u32>, (u64, LogIndex, String)>>,
}

impl LogFileSegment {
    /// A segment whose header is trusted (a sealed segment, or one just created): no scan. Its
    /// entry offsets are found on the first read.
    pub fn from_trusted_header(file: Arc<dyn LogFile>, header: SegmentHeader) -> LogFileSegment {
        LogFileSegment {
            seed: header.frame_seed(),
            last_index: header.last_index(),
            append_position: header.append_position,
            offsets: OnceLock::new(),
            file,
            header,
        }
    }

    /// The open segment after recovery: its valid frames are exactly what the scan found, and
    /// the caller has zeroed (durably) everything after them.
    pub fn from_scan(
        file: Arc<dyn LogFile>,
        header: SegmentHeader,
        scan: ScanOutcome,
    ) -> LogFileSegment {
        let offsets = OnceLock::new();
        let _ = offsets.set(Ok(scan.offsets));
        LogFileSegment {
            seed: header.frame_seed(),
            last_index: scan.last_index,
            append_position: scan.valid_end,
            offsets,
            file,
            header,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    /// The segment's file (for a caller that writes staged frames itself).
    pub fn file(&self) -> Arc<dyn LogFile> {
        Arc::clone(&self.file)
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    pub fn base_index(&self) -> LogIndex {
        self.header.base_index
    }

    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    pub fn is_empty(&self) -> bool {
        self.last_index < self.header.base_index
    }

    pub fn entry_count(&self) -> u64 {
        self.last_index.0 + 1 - self.header.base_index.0
    }

    pub fn append_position(&self) -> u64 {
        self.append_position
    }

    pub fn seed(&self) -> FrameSeed {
        self.seed
    }

    pub fn len_bytes(&self) -> u64 {
        self.file.len_bytes()
    }

    /// Bytes still free for frames.
    pub fn free_bytes(&self) -> u64 {
        self.file.len_bytes() - self.append_position
    }

    /// Walks the frames of a trusted segment by their length words (no CRC: reads check it),
    /// checking index continuity and that they end exactly at the header's position.
    fn walk_offsets(&self) -> Result<Vec<u32>, (u64, LogIndex, String)> {
        let end = self.append_position as usize;
        let bytes = self.file.read(0..end);
        let count = self.entry_count() as usize;
        let mut offsets = Vec::with_capacity(count);
        let mut pos = SEGMENT_HEADER_SIZE;
        for i in 0..count {
            let index = LogIndex(self.header.base_index.0 + i as u64);
            if pos + FRAME_HEADER_SIZE > end {
                return Err((
                    pos as u64,
                    index,
                    "frame header past the append position".into(),
                ));
            }
            let len = peek_frame_length(&bytes[pos..]) as usize;
            let padded = crate::storage::format::align_up(len);
            if len < FRAME_HEADER_SIZE || pos + padded > end {
                return Err((pos as u64, index, format!("bad frame length {len}")));
            }
            let found = read_u64(bytes, pos + FRAME_INDEX_OFFSET);
            if found != index.0 {
                return Err((pos as u64, index, format!("frame holds index {found}")));
            }
            offsets.push(pos as u32);
            pos += padded;
        }
        if pos != end {
            return Err((
                pos as u64,
                self.last_index.next(),
                format!("frames end at {pos}, the header says {end}"),
            ));
        }
        Ok(offsets)
    }

    fn offsets(&self) -> Result<&Vec<u32>, SegmentError> {
        match self.offsets.get_or_init(|| self.walk_offsets()) {
            Ok(v) => Ok(v),
            Err((offset, index, reason)) => Err(SegmentError::Corrupt {
                offset: *offset,
                index: *index,
                reason: reason.clone(),
            }),
        }
    }

    fn offsets_mut(&mut self) -> Result<&mut Vec<u32>, SegmentError> {
        self.offsets()?;
        match self.offsets.get_mut() {
            Some(Ok(v)) => Ok(v),
            _ => unreachable!("offsets() just succeeded"),
        }
    }

    /// Reads entry `index` (which must lie in this segment), verifying its CRC.
    pub fn entry(&self, index: LogIndex) -> Result<EntryView<'_>, SegmentError> {
        assert!(
            index >= self.header.base_index && index <= self.last_index,
            "entry {index} outside segment {}..={}",
            self.header.base_index,
            self.last_index
        );
        let offsets = self.offsets()?;
        let at = offsets[(index.0 - self.header.base_index.0) as usize] as usize;
        let bytes = self.file.read(at..self.append_position as usize);
        let corrupt = |reason: String| SegmentError::Corrupt {
            offset: at as u64,
            index,
            reason,
        };
        match decode_frame(bytes, self.seed) {
            Ok(Some(f)) if f.index == index => Ok(f),
            Ok(Some(f)) => Err(corrupt(format!("frame holds index {}", f.index))),
            Ok(None) => Err(corrupt("zero length word".into())),
            Err(e) => Err(corrupt(e.to_string())),
        }
    }

    /// The term of the last entry, or the header's `prev_term` if the segment is empty.
    pub fn last_term(&self) -> Result<Term, SegmentError> {
        if self.is_empty() {
            return Ok(self.header.prev_term);
        }
        Ok(self.entry(self.last_index)?.term)
    }

    /// Writes the header durably.
    pub fn write_header(&mut self, header: SegmentHeader) -> Result<(), SegmentError> {
        assert_eq!(
            header.base_index, self.header.base_index,
            "base index is fixed"
        );
        let bytes = header.encode();
        self.file.write_durable(&[WriteAt {
            offset: 0,
            bytes: &bytes,
        }])?;
        self.header = header;
        Ok(())
    }

    /// Writes `frames` (already encoded with [`Self::seed`], continuing the segment) at the
    /// append position with one durable write; returns after the fdatasync completed. Takes
    /// `&self`: readers may read the published entries meanwhile, and nothing becomes visible
    /// until [`Self::publish_frames`].
    ///
    /// # Panics
    /// If the frames do not fit (a programmer error).
    pub fn write_frames(&self, frames: &[u8]) -> Result<(), SegmentError> {
        assert!(
            frames.len() as u64 <= self.free_bytes(),
            "{} bytes do not fit the {} free bytes of {}",
            frames.len(),
            self.free_bytes(),
            self.path().display()
        );
        self.file.write_durable(&[WriteAt {
            offset: self.append_position,
            bytes: frames,
        }])?;
        Ok(())
    }

    /// Makes frames written by [`Self::write_frames`] visible: entries `first ..`, one per
    /// offset in `frame_offsets` (relative to the written buffer), `frames_len` bytes in all.
    ///
    /// # Panics
    /// If they do not continue the segment (a programmer error).
    pub fn publish_frames(
        &mut self,
        frames_len: usize,
        frame_offsets: &[u32],
        first: LogIndex,
    ) -> Result<(), SegmentError> {
        assert_eq!(
            first,
            self.last_index.next(),
            "append to {} would leave a hole",
            self.path().display()
        );
        let at = self.append_position;
        let offsets = self.offsets_mut()?;
        offsets.extend(frame_offsets.iter().map(|o| o + at as u32));
        self.last_index = LogIndex(first.0 + frame_offsets.len() as u64 - 1);
        self.append_position += frames_len as u64;
        Ok(())
    }

    /// Makes the header vouch for every entry present (before a later segment is created), then
    /// releases the file's write side: a sealed segment is only read from now on.
    pub fn seal(&mut self) -> Result<(), SegmentError> {
        self.write_header(self.sealed_header())?;
        self.file.release_io();
        Ok(())
    }

    /// The header [`Self::seal`] writes: it counts every entry present, with no dirty range.
    /// For a caller that writes it itself (the append engine's rotation, which writes it beside
    /// the next segment's header) and then reports it with [`Self::mark_sealed`].
    pub fn sealed_header(&self) -> SegmentHeader {
        SegmentHeader {
            entry_count: self.entry_count(),
            append_position: self.append_position,
            dirty_end: 0,
            ..self.header
        }
    }

    /// Records that `header` (from [`Self::sealed_header`], nothing appended since) is durable
    /// at offset 0, and releases the write side as [`Self::seal`] does.
    pub fn mark_sealed(&mut self, header: SegmentHeader) {
        assert_eq!(
            header,
            self.sealed_header(),
            "the segment changed while its seal was written"
        );
        self.header = header;
        self.file.release_io();
    }

    /// Zeroes `range` durably.
    pub fn zero_range(&mut self, range: Range<u64>) -> Result<(), SegmentError> {
        if range.is_empty() {
            return Ok(());
        }
        let zeros = vec![0u8; (range.end - range.start) as usize];
        self.file.write_durable(&[WriteAt {
            offset: range.start,
            bytes: &zeros,
        }])?;
        Ok(())
    }

    /// Removes every entry with index >= `from` (`base_index <= from <= last_index + 1`), durably:
    /// 1. the header is written with the new count and position and `dirty_end` = the old end,
    ///    and synced: from now on recovery knows the log ends at the cut;
    /// 2. `[cut, old end)` is zeroed and synced;
    /// 3. the header is written clean (`dirty_end` 0) and synced.
    ///
    /// A crash after 1 leaves a dirty header and recovery finishes step 2; a crash before 1
    /// leaves the old segment. Never a mix where a zeroed frame sits before a stale valid one
    /// that recovery would take for damaged acknowledged data.
    pub fn truncate_from(&mut self, from: LogIndex) -> Result<(), SegmentError> {
        assert!(
            from >= self.header.base_index && from <= self.last_index.next(),
            "truncate_from({from}) outside segment {}..={}",
            self.header.base_index,
            self.last_index
        );
        if from > self.last_index {
            return Ok(());
        }
        let cut = self.offsets()?[(from.0 - self.header.base_index.0) as usize] as u64;
        let old_end = self.append_position;
        let count = from.0 - self.header.base_index.0;
        let dirty = SegmentHeader {
            entry_count: count,
            append_position: cut,
            dirty_end: old_end,
            ..self.header
        };
        self.write_header(dirty)?;
        self.last_index = from.prev();
        self.append_position = cut;
        self.offsets_mut()?.truncate(count as usize);
        self.zero_range(cut..old_end)?;
        self.write_header(SegmentHeader {
            dirty_end: 0,
            ..dirty
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::{encode_frame, FrameFields};
    use crate::types::EntryType;

    fn build(header: &SegmentHeader, batches: &[(u64, u64)], len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[..SEGMENT_HEADER_SIZE].copy_from_slice(&header.encode());
        let mut out = Vec::new();
        for &(start, end) in batches {
            for i in start..=end {
                encode_frame(
                    &mut out,
                    header.frame_seed(),
                    FrameFields {
                        term: Term(1),
                        index: LogIndex(i),
                        batch_start_index: LogIndex(start),
                        entry_type: EntryType::Normal,
                    },
                    &[i as u8; 20],
                );
            }
        }
        bytes[SEGMENT_HEADER_SIZE..SEGMENT_HEADER_SIZE + out.len()].copy_from_slice(&out);
        bytes
    }

    #[test]
    fn clean_segment_scans_without_problem() {
        let h = SegmentHeader::new_empty(LogIndex(1), Term(0), 5);
        let b = build(&h, &[(1, 3), (4, 4)], 4096);
        let s = scan_segment(&b, &h);
        assert_eq!(s.problem, None);
        assert_eq!(s.last_index, LogIndex(4));
        assert_eq!(s.offsets.len(), 4);
        assert_eq!(s.zero_end, s.valid_end);
    }

    #[test]
    fn damage_in_last_batch_is_torn_and_in_earlier_batch_is_corrupt() {
        let h = SegmentHeader::new_empty(LogIndex(1), Term(0), 5);
        let b = build(&h, &[(1, 3), (4, 6)], 4096);
        let s = scan_segment(&b, &h);
        let off = s.offsets[4] as usize; // entry 5, last batch
        let mut torn = b.clone();
        torn[off + 50] ^= 1;
        let t = scan_segment(&torn, &h);
        assert_eq!(
            t.problem.as_ref().map(|p| p.kind),
            Some(ProblemKind::TornTail)
        );
        assert_eq!(t.last_index, LogIndex(4));
        assert!(t.zero_end >= s.valid_end);
        let off = s.offsets[1] as usize; // entry 2, first batch
        let mut bad = b.clone();
        bad[off + 50] ^= 1;
        let c = scan_segment(&bad, &h);
        assert_eq!(
            c.problem.as_ref().map(|p| p.kind),
            Some(ProblemKind::Corrupt)
        );
        assert_eq!(c.problem.unwrap().index, LogIndex(2));
        // A zeroed length word of an acknowledged frame is not the end of the log either.
        let mut zeroed = b.clone();
        zeroed[off..off + 4].fill(0);
        let z = scan_segment(&zeroed, &h);
        assert_eq!(z.problem.map(|p| p.kind), Some(ProblemKind::Corrupt));
    }
}

//! Walking a segment's frames for display: decode as far as possible and, past damage, keep
//! looking for frames that still validate, so `show` can print everything that is there.
//!
//! This is a viewer, not a judge: whether damage is a torn tail or corruption is decided by the
//! library's `scan_segment` (see `model.rs`). The frame decoding itself is the library's
//! `decode_frame`.

use rust_raft_log::storage::format::{
    decode_frame, peek_frame_length, FrameError, FrameSeed, ENTRY_PAYLOAD_MAX, FRAME_ALIGN,
    FRAME_BATCH_START_OFFSET, FRAME_HEADER_SIZE, FRAME_INDEX_OFFSET, FRAME_TERM_OFFSET,
    FRAME_TYPE_OFFSET, SEGMENT_HEADER_SIZE,
};
use rust_raft_log::types::EntryType;

/// The fields of a frame whose length word is plausible, read without validating them.
#[derive(Clone, Copy, Debug)]
pub struct RawFields {
    pub length: u32,
    pub term: u64,
    pub index: u64,
    pub batch_start: u64,
    pub type_byte: u8,
}

/// One thing found while walking a segment.
#[derive(Debug)]
pub enum Item<'a> {
    /// A frame that validates (CRC, type, reserved, padding).
    Frame {
        offset: u64,
        length: u32,
        term: u64,
        index: u64,
        batch_start: u64,
        entry_type: EntryType,
        payload: &'a [u8],
    },
    /// Bytes at `offset` that are not a valid frame; `raw` if the length word was plausible.
    Bad {
        offset: u64,
        error: FrameError,
        raw: Option<RawFields>,
    },
    /// Bytes skipped while looking for the next valid frame after damage.
    Skipped { offset: u64, bytes: u64 },
    /// Non-zero bytes after a zero length word (the log looked ended, but is not empty beyond).
    NonZeroAfterEnd { offset: u64 },
    /// The clean end of the log: from here on every byte is zero.
    End { offset: u64 },
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

fn raw_fields(bytes: &[u8]) -> Option<RawFields> {
    let length = peek_frame_length(bytes);
    let len = length as usize;
    if bytes.len() < FRAME_HEADER_SIZE
        || !(FRAME_HEADER_SIZE..=FRAME_HEADER_SIZE + ENTRY_PAYLOAD_MAX).contains(&len)
    {
        return None;
    }
    Some(RawFields {
        length,
        term: u64_at(bytes, FRAME_TERM_OFFSET),
        index: u64_at(bytes, FRAME_INDEX_OFFSET),
        batch_start: u64_at(bytes, FRAME_BATCH_START_OFFSET),
        type_byte: bytes[FRAME_TYPE_OFFSET],
    })
}

/// A cheap test before a CRC while searching past damage: a plausible length that fits and a
/// known type byte. Keeps the search linear over garbage.
fn worth_decoding(bytes: &[u8]) -> bool {
    match raw_fields(bytes) {
        Some(r) => (r.length as usize) <= bytes.len() && r.type_byte <= 1,
        None => false,
    }
}

/// Walks all frames of a segment's `bytes` (the whole file) under `seed`.
pub fn walk(bytes: &[u8], seed: FrameSeed) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    let mut pos = SEGMENT_HEADER_SIZE;
    loop {
        if pos >= bytes.len() {
            items.push(Item::End {
                offset: bytes.len() as u64,
            });
            return items;
        }
        match decode_frame(&bytes[pos..], seed) {
            Ok(Some(f)) => {
                items.push(Item::Frame {
                    offset: pos as u64,
                    length: (FRAME_HEADER_SIZE + f.payload.len()) as u32,
                    term: f.term.0,
                    index: f.index.0,
                    batch_start: f.batch_start_index.0,
                    entry_type: f.entry_type,
                    payload: f.payload,
                });
                pos += f.padded_len;
            }
            Ok(None) => {
                // Zero length word: the end, unless something non-zero follows.
                let rest = &bytes[pos..];
                match rest.iter().position(|&b| b != 0) {
                    None => {
                        items.push(Item::End { offset: pos as u64 });
                        return items;
                    }
                    Some(first) => {
                        let at = pos + first / FRAME_ALIGN * FRAME_ALIGN;
                        items.push(Item::NonZeroAfterEnd { offset: at as u64 });
                        match resync_frames(bytes, at, seed) {
                            Some(next) => {
                                if next > at {
                                    items.push(Item::Skipped {
                                        offset: at as u64,
                                        bytes: (next - at) as u64,
                                    });
                                }
                                pos = next;
                            }
                            None => {
                                items.push(Item::Skipped {
                                    offset: at as u64,
                                    bytes: (bytes.len() - at) as u64,
                                });
                                items.push(Item::End {
                                    offset: bytes.len() as u64,
                                });
                                return items;
                            }
                        }
                    }
                }
            }
            Err(error) => {
                items.push(Item::Bad {
                    offset: pos as u64,
                    raw: raw_fields(&bytes[pos..]),
                    error,
                });
                let from = pos + FRAME_ALIGN;
                match resync_frames(bytes, from, seed) {
                    Some(next) => {
                        if next > from {
                            items.push(Item::Skipped {
                                offset: from as u64,
                                bytes: (next - from) as u64,
                            });
                        }
                        pos = next;
                    }
                    None => {
                        if from < bytes.len() && bytes[from..].iter().any(|&b| b != 0) {
                            items.push(Item::Skipped {
                                offset: from as u64,
                                bytes: (bytes.len() - from) as u64,
                            });
                        }
                        items.push(Item::End {
                            offset: bytes.len() as u64,
                        });
                        return items;
                    }
                }
            }
        }
    }
}

/// The next 8-aligned position at or after `from` where a frame validates under `seed`.
fn resync_frames(bytes: &[u8], from: usize, seed: FrameSeed) -> Option<usize> {
    let mut p = from;
    while p + FRAME_HEADER_SIZE <= bytes.len() {
        if worth_decoding(&bytes[p..]) {
            if let Ok(Some(_)) = decode_frame(&bytes[p..], seed) {
                return Some(p);
            }
        }
        p += FRAME_ALIGN;
    }
    None
}

/// A short, printable preview of a payload: text in quotes if it is printable ASCII, else hex.
pub fn preview(payload: &[u8], max: usize) -> String {
    let shown = &payload[..payload.len().min(max)];
    let more = if payload.len() > max { "…" } else { "" };
    if shown.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        format!("\"{}\"{more}", String::from_utf8_lossy(shown))
    } else {
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}

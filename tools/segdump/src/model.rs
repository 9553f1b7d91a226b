//! Loading a log directory and judging it: which segments exist, what each header says, what
//! the library's recovery scan ([`scan_segment`]) concludes about each segment's frames, and where
//! the valid log ends. `verify` prints the problems; `repair` acts on the cut point.
//!
//! The frame-level decision (valid frame, torn tail or corruption) is never made here: it is the
//! library's `scan_segment`, the same function `RaftLog::open` uses, so the tool and the engine
//! cannot disagree about a segment. This module adds only the directory-level rules that
//! docs/FORMAT.md states (canonical names, header base = name base, index and term continuity
//! between segments, sealed segments fully counted by their headers).

use std::fmt;
use std::path::{Path, PathBuf};

use rust_raft_log::storage::format::{parse_segment_file_name, HeaderError, SegmentHeader};
use rust_raft_log::storage::segment::{scan_segment, ProblemKind, ScanOutcome};
use rust_raft_log::types::{LogIndex, Term};

/// An I/O failure while reading the directory: exit code 2.
#[derive(Debug)]
pub struct IoFailure {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: std::io::Error,
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.op, self.source)
    }
}

/// One segment file, read whole.
pub struct Segment {
    pub path: PathBuf,
    pub name_base: LogIndex,
    pub bytes: Vec<u8>,
    pub header: Result<SegmentHeader, HeaderError>,
    /// The library's scan, when the header decoded.
    pub scan: Option<ScanOutcome>,
}

impl Segment {
    pub fn load(path: &Path, name_base: LogIndex) -> Result<Segment, IoFailure> {
        let bytes = std::fs::read(path).map_err(|source| IoFailure {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        let header = SegmentHeader::decode(&bytes)
            .and_then(|h| h.check_file_len(bytes.len() as u64).map(|()| h));
        let scan = header.as_ref().ok().map(|h| scan_segment(&bytes, h));
        Ok(Segment {
            path: path.to_path_buf(),
            name_base,
            bytes,
            header,
            scan,
        })
    }

    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// What kind of problem, for the message and for `repair`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemClass {
    /// The last segment ends in an unacknowledged, torn batch (RaftLog::open would cut it).
    TornTail,
    /// Acknowledged data is damaged (RaftLog::open refuses).
    Corrupt,
    /// A header that does not decode, or disagrees with its file name.
    BadHeader,
    /// Segments do not continue each other (index gap/overlap).
    Discontinuity,
    /// A header's `prev_term` disagrees with the previous segment's last term (a header fix).
    PrevTerm,
    /// The last segment's header records a truncation whose cut range was not zeroed yet
    /// (`dirty_end`); `RaftLog::open` finishes it.
    UnfinishedTruncation,
}

impl fmt::Display for ProblemClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemClass::TornTail => "torn tail",
            ProblemClass::Corrupt => "corrupt",
            ProblemClass::BadHeader => "bad header",
            ProblemClass::Discontinuity => "discontinuity",
            ProblemClass::PrevTerm => "wrong prev_term",
            ProblemClass::UnfinishedTruncation => "unfinished truncation",
        })
    }
}

/// One problem, with the file and byte offset it is at.
#[derive(Clone, Debug)]
pub struct Problem {
    pub file: PathBuf,
    pub offset: u64,
    pub index: Option<LogIndex>,
    pub class: ProblemClass,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} offset {}", self.file.display(), self.offset)?;
        if let Some(i) = self.index {
            write!(f, " index {i}")?;
        }
        write!(f, ": {}: {}", self.class, self.message)
    }
}

/// Where the valid log ends, if it does not end cleanly at the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Keep segment `segment` up to byte `valid_end` (entries up to `last_index`), zero
    /// `[valid_end, zero_end)`, rewrite its header; remove every later segment.
    InSegment {
        segment: usize,
        valid_end: u64,
        zero_end: u64,
        last_index: LogIndex,
    },
    /// Remove segment `segment` and every later one (its header cannot be trusted, or it does
    /// not continue the previous segment).
    FromSegment { segment: usize },
}

/// The end (8-aligned, at most the file's length) of the last non-zero byte at or after `from`:
/// a cut must zero everything after the kept frames, not only what the scan looked at (the scan
/// stops early in a segment whose header vouches for the damaged frame).
fn nonzero_end(bytes: &[u8], from: u64) -> u64 {
    let from = (from as usize).min(bytes.len());
    match bytes[from..].iter().rposition(|&b| b != 0) {
        Some(last) => (((from + last + 1) as u64).div_ceil(8) * 8).min(bytes.len() as u64),
        None => from as u64,
    }
}

/// A whole directory, judged.
pub struct DirCheck {
    pub dir: PathBuf,
    pub segments: Vec<Segment>,
    /// Files named like segments but not canonically (ignored by the log; reported as notes).
    pub ignored: Vec<String>,
    pub problems: Vec<Problem>,
    /// The first point where the valid log ends early (`None`: nothing to cut).
    pub cut: Option<Cut>,
    /// Header `prev_term` fixes: (segment, correct prev_term).
    pub prev_term_fixes: Vec<(usize, Term)>,
}

/// The segment files of `dir`, sorted by base index (numerically), plus the names that look like
/// segments but are not canonical.
/// Segment files found in a directory: `(base index, path)` in index order, and the names that
/// look like segments but are not canonical.
pub type Listing = (Vec<(LogIndex, PathBuf)>, Vec<String>);

pub fn list_segments(dir: &Path) -> Result<Listing, IoFailure> {
    let io = |op| {
        move |source| IoFailure {
            path: dir.to_path_buf(),
            op,
            source,
        }
    };
    let mut found = Vec::new();
    let mut ignored = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list directory"))? {
        let entry = entry.map_err(io("list directory"))?;
        if !entry.file_type().map_err(io("stat"))?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match parse_segment_file_name(&name) {
            Some(base) => found.push((base, entry.path())),
            None if name.starts_with("segment_") => ignored.push(name),
            None => {}
        }
    }
    found.sort_by_key(|(base, _)| *base);
    ignored.sort();
    Ok((found, ignored))
}

impl DirCheck {
    /// Reads and judges every segment of `dir`.
    pub fn load(dir: &Path) -> Result<DirCheck, IoFailure> {
        let (files, ignored) = list_segments(dir)?;
        let mut segments = Vec::with_capacity(files.len());
        for (base, path) in files {
            segments.push(Segment::load(&path, base)?);
        }
        let mut check = DirCheck {
            dir: dir.to_path_buf(),
            segments,
            ignored,
            problems: Vec::new(),
            cut: None,
            prev_term_fixes: Vec::new(),
        };
        check.judge();
        Ok(check)
    }

    fn problem(
        &mut self,
        seg: usize,
        offset: u64,
        index: Option<LogIndex>,
        class: ProblemClass,
        message: String,
    ) {
        self.problems.push(Problem {
            file: self.segments[seg].path.clone(),
            offset,
            index,
            class,
            message,
        });
    }

    fn set_cut(&mut self, cut: Cut) {
        if self.cut.is_none() {
            self.cut = Some(cut);
        }
    }

    fn judge(&mut self) {
        let count = self.segments.len();
        // (last index, last term) of the previous segment that was judged usable.
        let mut previous: Option<(LogIndex, Term)> = None;
        for k in 0..count {
            let is_last = k + 1 == count;
            let name_base = self.segments[k].name_base;
            let header = match &self.segments[k].header {
                Ok(h) => *h,
                Err(e) => {
                    let msg = e.to_string();
                    self.problem(k, 0, Some(name_base), ProblemClass::BadHeader, msg);
                    self.set_cut(Cut::FromSegment { segment: k });
                    return;
                }
            };
            if header.base_index != name_base {
                let msg = format!(
                    "header base index {} does not match the file name's {name_base}",
                    header.base_index
                );
                self.problem(k, 8, Some(name_base), ProblemClass::BadHeader, msg);
                self.set_cut(Cut::FromSegment { segment: k });
                return;
            }
            if let Some((prev_last, prev_term)) = previous {
                if header.base_index != prev_last.next() {
                    let msg = format!(
                        "base index {} does not continue the previous segment, which ends at {prev_last}",
                        header.base_index
                    );
                    self.problem(
                        k,
                        8,
                        Some(header.base_index),
                        ProblemClass::Discontinuity,
                        msg,
                    );
                    self.set_cut(Cut::FromSegment { segment: k });
                    return;
                }
                if header.prev_term != prev_term {
                    let msg = format!(
                        "header prev_term {} but the previous segment's last term is {prev_term}",
                        header.prev_term
                    );
                    self.problem(k, 40, Some(header.base_index), ProblemClass::PrevTerm, msg);
                    self.prev_term_fixes.push((k, prev_term));
                }
            }
            let Some(scan) = self.segments[k].scan.clone() else {
                unreachable!("a decoded header always has a scan")
            };
            if let Some(p) = &scan.problem {
                let class = match (p.kind, is_last) {
                    (ProblemKind::TornTail, true) if header.dirty_range().is_some() => {
                        ProblemClass::UnfinishedTruncation
                    }
                    (ProblemKind::TornTail, true) => ProblemClass::TornTail,
                    // A sealed segment was fully synced before a later one was created: any
                    // damage in it is damage to acknowledged data.
                    _ => ProblemClass::Corrupt,
                };
                let mut msg = p.reason.clone();
                if let (Some(r), ProblemClass::UnfinishedTruncation) = (header.dirty_range(), class)
                {
                    msg = format!(
                        "bytes [{}, {}) cut by a truncation are not zeroed yet ({msg})",
                        r.start, r.end
                    );
                }
                if !is_last {
                    msg.push_str(" (in a sealed segment)");
                }
                self.problem(k, p.offset, Some(p.index), class, msg);
                // In a recycled segment the stale frames of the earlier life never validate:
                // only what the scan attributes to this life needs zeroing.
                let zero_end = if header.recycled {
                    scan.zero_end
                } else {
                    nonzero_end(&self.segments[k].bytes, scan.valid_end)
                }
                .max(scan.zero_end)
                .max(scan.valid_end);
                self.set_cut(Cut::InSegment {
                    segment: k,
                    valid_end: scan.valid_end,
                    zero_end,
                    last_index: scan.last_index,
                });
                return;
            }
            if !is_last && scan.last_index != header.last_index() {
                // `seal` makes the header count every frame before the next segment exists.
                let msg = format!(
                    "sealed segment's header counts entries up to {} but its frames end at {}",
                    header.last_index(),
                    scan.last_index
                );
                self.problem(
                    k,
                    scan.valid_end,
                    Some(scan.last_index.next()),
                    ProblemClass::Corrupt,
                    msg,
                );
                let zero_end = if header.recycled {
                    scan.zero_end.max(scan.valid_end)
                } else {
                    nonzero_end(&self.segments[k].bytes, scan.valid_end)
                };
                self.set_cut(Cut::InSegment {
                    segment: k,
                    valid_end: scan.valid_end,
                    zero_end,
                    last_index: scan.last_index,
                });
                return;
            }
            previous = Some((scan.last_index, scan.last_term));
        }
    }

    /// The index range `first ..= last` of entries that validate before the cut (or in all).
    pub fn valid_range(&self) -> Option<(LogIndex, LogIndex)> {
        let first = self.segments.first()?.header.as_ref().ok()?.base_index;
        let last = match &self.cut {
            Some(Cut::FromSegment { segment: 0 }) => return None,
            Some(Cut::FromSegment { segment }) => {
                self.segments[segment - 1].scan.as_ref()?.last_index
            }
            Some(Cut::InSegment { last_index, .. }) => *last_index,
            None => self.segments.last()?.scan.as_ref()?.last_index,
        };
        Some((first, last))
    }
}

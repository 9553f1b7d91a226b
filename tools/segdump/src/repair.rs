//! `segdump repair`: cut the log where it stops being valid, fix headers, say exactly what changed.
//!
//! The plan comes from [`DirCheck`] (which uses the library's scan). Execution order is chosen so
//! that a crash in the middle of a repair leaves a directory that `RaftLog::open` or a second
//! `repair` can still handle: later segments are removed first (highest base index first, then the
//! directory is synced), then the cut segment's tail is zeroed and synced, and only then is its
//! header rewritten and synced (a header never counts bytes that are not in place).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rust_raft_log::storage::format::SegmentHeader;

use crate::model::{Cut, DirCheck, Segment};
use crate::walk::{walk, Item};

/// Options of a repair run.
pub struct RepairOptions {
    pub dry_run: bool,
    pub backup: bool,
}

/// One change to the directory.
enum Action {
    /// Remove segment `segment` (whole file).
    Remove { segment: usize },
    /// Zero `[from, to)` of segment `segment`.
    Zero { segment: usize, from: u64, to: u64 },
    /// Rewrite segment `segment`'s header.
    Header {
        segment: usize,
        header: SegmentHeader,
    },
}

fn describe_entries(seg: &Segment, from_offset: u64) -> String {
    let Ok(header) = &seg.header else {
        return "header unreadable, entries unknown".into();
    };
    let mut lo = u64::MAX;
    let mut hi = 0;
    let mut n = 0u64;
    for item in walk(&seg.bytes, header.frame_seed()) {
        if let Item::Frame { offset, index, .. } = item {
            if offset >= from_offset {
                lo = lo.min(index);
                hi = hi.max(index);
                n += 1;
            }
        }
    }
    if n == 0 {
        "no frame that still validates".into()
    } else {
        format!("{n} frame(s) that still validate, indexes {lo}..={hi}")
    }
}

fn plan(check: &DirCheck) -> (Vec<Action>, Vec<String>) {
    let mut actions = Vec::new();
    let mut lines = Vec::new();
    let first_removed = match &check.cut {
        None => check.segments.len(),
        Some(Cut::FromSegment { segment }) => *segment,
        Some(Cut::InSegment { segment, .. }) => segment + 1,
    };
    for k in (first_removed..check.segments.len()).rev() {
        let seg = &check.segments[k];
        lines.push(format!(
            "remove {} ({} bytes; {})",
            seg.path.display(),
            seg.bytes.len(),
            describe_entries(seg, 0)
        ));
        actions.push(Action::Remove { segment: k });
    }
    if let Some(Cut::InSegment {
        segment,
        valid_end,
        zero_end,
        last_index,
    }) = &check.cut
    {
        let seg = &check.segments[*segment];
        let header = match &seg.header {
            Ok(h) => *h,
            Err(_) => unreachable!("a cut inside a segment needs its header"),
        };
        let kept = last_index.0 + 1 - header.base_index.0;
        if zero_end > valid_end {
            lines.push(format!(
                "cut {} at offset {valid_end}: zero bytes [{valid_end}, {zero_end}) ({} bytes; {}); keep entries up to {last_index}",
                seg.path.display(),
                zero_end - valid_end,
                describe_entries(seg, *valid_end),
            ));
            actions.push(Action::Zero {
                segment: *segment,
                from: *valid_end,
                to: *zero_end,
            });
        }
        let new_header = SegmentHeader {
            entry_count: kept,
            append_position: *valid_end,
            dirty_end: 0,
            ..header
        };
        if new_header != header {
            lines.push(format!(
                "rewrite header of {}: entry_count {} -> {}, append_position {} -> {}, dirty_end {} -> 0",
                seg.path.display(),
                header.entry_count,
                kept,
                header.append_position,
                valid_end,
                header.dirty_end
            ));
            actions.push(Action::Header {
                segment: *segment,
                header: new_header,
            });
        }
    }
    for &(k, term) in &check.prev_term_fixes {
        if k >= first_removed {
            continue;
        }
        let seg = &check.segments[k];
        if let Ok(h) = &seg.header {
            lines.push(format!(
                "rewrite header of {}: prev_term {} -> {term}",
                seg.path.display(),
                h.prev_term
            ));
            actions.push(Action::Header {
                segment: k,
                header: SegmentHeader {
                    prev_term: term,
                    ..*h
                },
            });
        }
    }
    (actions, lines)
}

fn io_ctx(path: &Path, op: &str) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{}: {op}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(dir, "fsync directory"))
}

fn backup_dir(dir: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dir.join(format!("segdump-backup-{secs}-{}", std::process::id()))
}

/// Plans and (unless `dry_run`) performs the repair of `check.dir`. Prints every action.
/// Returns whether anything was (or would be) changed.
///
/// # Errors
/// Any I/O error, with the path and the operation.
pub fn repair(check: &DirCheck, opts: &RepairOptions) -> io::Result<bool> {
    for p in &check.problems {
        println!("problem: {p}");
    }
    let (actions, lines) = plan(check);
    if actions.is_empty() {
        println!("repair: nothing to do");
        return Ok(false);
    }
    let verb = if opts.dry_run { "would " } else { "" };
    for line in &lines {
        println!("repair: {verb}{line}");
    }
    if let Some((first, last)) = check.valid_range() {
        println!("repair: {verb}keep entries {first}..={last}");
    } else {
        println!("repair: {verb}keep no entries");
    }
    if opts.dry_run {
        println!("repair: dry run, nothing changed");
        return Ok(true);
    }

    let backup = opts.backup.then(|| backup_dir(&check.dir));
    if let Some(b) = &backup {
        std::fs::create_dir(b).map_err(io_ctx(b, "create backup directory"))?;
        let mut backed_up = std::collections::BTreeSet::new();
        for a in &actions {
            let k = match a {
                Action::Remove { segment } => *segment,
                Action::Zero { segment, .. } | Action::Header { segment, .. } => *segment,
            };
            if !backed_up.insert(k) {
                continue;
            }
            let from = &check.segments[k].path;
            let to = b.join(check.segments[k].file_name());
            std::fs::copy(from, &to).map_err(io_ctx(from, "back up"))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io_ctx(&to, "fsync backup"))?;
            println!("backup: {} -> {}", from.display(), to.display());
        }
        sync_dir(b)?;
    }

    let mut removed_any = false;
    for a in &actions {
        if let Action::Remove { segment } = a {
            let path = &check.segments[*segment].path;
            std::fs::remove_file(path).map_err(io_ctx(path, "remove"))?;
            removed_any = true;
        }
    }
    if removed_any {
        sync_dir(&check.dir)?;
    }
    for a in &actions {
        if let Action::Zero { segment, from, to } = a {
            let path = &check.segments[*segment].path;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_ctx(path, "open"))?;
            let zeros = vec![0u8; (to - from) as usize];
            f.write_all_at(&zeros, *from)
                .map_err(io_ctx(path, "write zeros"))?;
            f.sync_data().map_err(io_ctx(path, "fdatasync"))?;
        }
    }
    for a in &actions {
        if let Action::Header { segment, header } = a {
            let path = &check.segments[*segment].path;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_ctx(path, "open"))?;
            f.write_all_at(&header.encode(), 0)
                .map_err(io_ctx(path, "write header"))?;
            f.sync_data().map_err(io_ctx(path, "fdatasync"))?;
        }
    }
    println!("repair: done");
    Ok(true)
}

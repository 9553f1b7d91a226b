//! `segdump`: inspect, verify and repair rust-raft-log segments and state files; inspect, verify
//! and restore snapshot files.
//!
//! Read-only unless `repair` or `snapshot restore` is run (`snapshot restore` only creates a new
//! node directory, never writes into one that holds anything). Every decode goes through the library's own format code
//! (`rust_raft_log::storage::format`, `state`, `snapshot`) and the library's recovery scan
//! (`rust_raft_log::storage::segment::scan_segment`), so segdump and `RaftLog::open` agree.
//!
//! Exit codes: 0 clean / done, 1 problems found (verify, state, repair that found problems it
//! fixed is still 0), 2 usage or I/O error. See README.md.

mod model;
mod repair;
mod snapshot;
mod walk;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rust_raft_log::storage::format::{parse_segment_file_name, SegmentHeader};
use rust_raft_log::storage::state::{StateFileView, StateRecord};
use rust_raft_log::types::LogIndex;

use crate::model::{DirCheck, IoFailure, Segment};
use crate::walk::{preview, walk, Item};

#[derive(Parser)]
#[command(
    name = "segdump",
    version,
    about = "Inspect, verify and repair rust-raft-log segments and state files; inspect, verify and restore snapshot files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print segment headers and one line per entry.
    Show {
        /// A node directory (every segment, in index order) or one segment file.
        path: PathBuf,
        /// Only entries with index >= FROM.
        #[arg(long)]
        from: Option<u64>,
        /// Only entries with index <= TO.
        #[arg(long)]
        to: Option<u64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Payload bytes shown in the preview.
        #[arg(long, default_value_t = 16)]
        preview_bytes: usize,
    },
    /// Check every header, frame and the index continuity across segments.
    /// Exit 0 clean, 1 problems found, 2 usage or I/O error.
    Verify {
        /// A node directory.
        dir: PathBuf,
    },
    /// Cut a torn or corrupt tail and fix headers; prints exactly what it changes.
    Repair {
        /// A node directory.
        dir: PathBuf,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not keep a backup copy of the files changed or removed.
        #[arg(long)]
        no_backup: bool,
    },
    /// Decode a raft_state.meta file (both slots, and which one is current).
    State {
        /// The raft_state.meta file.
        file: PathBuf,
        /// One JSON object per slot instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or verify a snapshot file (snapshot_<index>.snap).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Print the header (index, term, cluster, payload kind, members), the chunk count and the
    /// payload size. Exit 1 if the file is damaged.
    Show {
        /// A snapshot file.
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every byte: header, every chunk's checksum, end marker, trailer, nothing after it.
    /// Exit 0 clean, 1 problem found, 2 usage or I/O error.
    Verify {
        /// A snapshot file.
        file: PathBuf,
    },
    /// Create node N's data directory of a NEW cluster from a snapshot file (e.g. one saved with
    /// `etcdctl snapshot save`): `<log_directory>/node_<N>` of the config (a relative
    /// log_directory is taken from the current directory, as the node does), which must not exist
    /// or be empty. Run it once per member, then start the members normally.
    /// Exit 0 done, 1 the file is damaged or not a key-value snapshot, 2 refused (directory not
    /// empty, unknown node, bad config) or I/O error.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new cluster's config file.
        #[arg(long)]
        config: PathBuf,
        /// The member whose directory to create.
        #[arg(long)]
        node_id: u32,
    },
}

const EXIT_PROBLEMS: u8 = 1;
const EXIT_USAGE_OR_IO: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Show {
            path,
            from,
            to,
            json,
            preview_bytes,
        } => show(&path, from, to, json, preview_bytes),
        Command::Verify { dir } => verify(&dir),
        Command::Repair {
            dir,
            dry_run,
            no_backup,
        } => repair_cmd(&dir, dry_run, !no_backup),
        Command::State { file, json } => state(&file, json),
        Command::Snapshot { command } => match command {
            SnapshotCommand::Show { file, json } => snapshot::show(&file, json),
            SnapshotCommand::Verify { file } => snapshot::verify_cmd(&file),
            SnapshotCommand::Restore {
                file,
                config,
                node_id,
            } => snapshot::restore_cmd(&file, &config, node_id),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Flush what was printed before the error so the two do not interleave oddly.
            let _ = std::io::stdout().flush();
            eprintln!("segdump: {e}");
            ExitCode::from(EXIT_USAGE_OR_IO)
        }
    }
}

/// Errors that end the run with exit code 2.
#[derive(Debug)]
enum CliError {
    Io(IoFailure),
    Usage(String),
    Repair(std::io::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Io(e) => write!(f, "{e}"),
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Repair(e) => write!(f, "repair failed: {e}"),
        }
    }
}

impl From<IoFailure> for CliError {
    fn from(e: IoFailure) -> CliError {
        CliError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON (hand-written: flat objects of strings and numbers only)
// ---------------------------------------------------------------------------------------------

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value already encoded.
enum J {
    S(String),
    N(u64),
}

fn json_obj(fields: &[(&str, J)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                J::S(s) => json_str(s),
                J::N(n) => n.to_string(),
            };
            format!("{}:{v}", json_str(k))
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

// ---------------------------------------------------------------------------------------------
// show
// ---------------------------------------------------------------------------------------------

fn show(
    path: &Path,
    from: Option<u64>,
    to: Option<u64>,
    json: bool,
    preview_bytes: usize,
) -> Result<u8, CliError> {
    let meta = std::fs::metadata(path).map_err(|source| IoFailure {
        path: path.to_path_buf(),
        op: "stat",
        source,
    })?;
    let files: Vec<(LogIndex, PathBuf)> = if meta.is_dir() {
        let (files, ignored) = model::list_segments(path)?;
        for name in ignored {
            if json {
                println!(
                    "{}",
                    json_obj(&[("kind", J::S("ignored".into())), ("file", J::S(name))])
                );
            } else {
                println!("note: {name} is not a canonical segment name; the log ignores it");
            }
        }
        files
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = parse_segment_file_name(&name).unwrap_or(LogIndex(0));
        vec![(base, path.to_path_buf())]
    };
    let lo = from.unwrap_or(0);
    let hi = to.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (base, file) in files {
        let seg = Segment::load(&file, base)?;
        show_segment(&mut out, &seg, lo, hi, json, preview_bytes).map_err(|source| {
            CliError::Io(IoFailure {
                path: PathBuf::from("<stdout>"),
                op: "write",
                source,
            })
        })?;
    }
    out.flush().map_err(|source| {
        CliError::Io(IoFailure {
            path: PathBuf::from("<stdout>"),
            op: "write",
            source,
        })
    })?;
    Ok(0)
}

fn header_json(file: &str, h: &SegmentHeader, len: u64) -> String {
    json_obj(&[
        ("kind", J::S("segment".into())),
        ("file", J::S(file.into())),
        ("base_index", J::N(h.base_index.0)),
        ("entry_count", J::N(h.entry_count)),
        ("append_position", J::N(h.append_position)),
        ("salt", J::N(h.salt)),
        ("prev_term", J::N(h.prev_term.0)),
        ("dirty_end", J::N(h.dirty_end)),
        ("recycled", J::N(u64::from(h.recycled))),
        ("file_len", J::N(len)),
    ])
}

fn show_segment(
    out: &mut impl Write,
    seg: &Segment,
    lo: u64,
    hi: u64,
    json: bool,
    preview_bytes: usize,
) -> std::io::Result<()> {
    let file = seg.path.display().to_string();
    let len = seg.bytes.len() as u64;
    let header = match &seg.header {
        Ok(h) => *h,
        Err(e) => {
            if json {
                writeln!(
                    out,
                    "{}",
                    json_obj(&[
                        ("kind", J::S("segment".into())),
                        ("file", J::S(file)),
                        ("file_len", J::N(len)),
                        ("error", J::S(e.to_string())),
                    ])
                )?;
            } else {
                writeln!(out, "== {file}: {len} bytes: header unreadable: {e}")?;
            }
            return Ok(());
        }
    };
    if json {
        writeln!(out, "{}", header_json(&file, &header, len))?;
    } else {
        writeln!(
            out,
            "== {file}: {len} bytes: base_index {} entry_count {} append_position {} salt {:#018x} prev_term {} dirty_end {}{}",
            header.base_index,
            header.entry_count,
            header.append_position,
            header.salt,
            header.prev_term,
            header.dirty_end,
            if header.recycled {
                " recycled (stale frames of an earlier life follow the end of log)"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "{:>12} {:>8} {:>6} {:>8} {:>12} {:>12} {:>5}  payload",
            "index", "term", "type", "length", "offset", "batch_start", "crc"
        )?;
    }
    for item in walk(&seg.bytes, header.frame_seed()) {
        match item {
            Item::Frame {
                offset,
                length,
                term,
                index,
                batch_start,
                entry_type,
                payload,
            } => {
                if index < lo || index > hi {
                    continue;
                }
                let type_name = format!("{entry_type:?}");
                if json {
                    writeln!(
                        out,
                        "{}",
                        json_obj(&[
                            ("kind", J::S("entry".into())),
                            ("file", J::S(file.clone())),
                            ("offset", J::N(offset)),
                            ("index", J::N(index)),
                            ("term", J::N(term)),
                            ("type", J::S(type_name)),
                            ("length", J::N(length.into())),
                            ("payload_len", J::N(payload.len() as u64)),
                            ("batch_start", J::N(batch_start)),
                            ("crc", J::S("ok".into())),
                            ("preview", J::S(preview(payload, preview_bytes))),
                        ])
                    )?;
                } else {
                    writeln!(
                        out,
                        "{index:>12} {term:>8} {type_name:>6} {length:>8} {offset:>12} {batch_start:>12} {:>5}  {}",
                        "ok",
                        preview(payload, preview_bytes)
                    )?;
                }
            }
            Item::Bad { offset, error, raw } => {
                if json {
                    let mut fields = vec![
                        ("kind", J::S("bad_frame".into())),
                        ("file", J::S(file.clone())),
                        ("offset", J::N(offset)),
                        ("error", J::S(error.to_string())),
                    ];
                    if let Some(r) = raw {
                        fields.push(("raw_index", J::N(r.index)));
                        fields.push(("raw_term", J::N(r.term)));
                        fields.push(("raw_length", J::N(r.length.into())));
                        fields.push(("raw_type", J::N(r.type_byte.into())));
                    }
                    writeln!(out, "{}", json_obj(&fields))?;
                } else {
                    match raw {
                        Some(r) => writeln!(
                            out,
                            "{:>12} {:>8} {:>6} {:>8} {offset:>12} {:>12} {:>5}  {error}",
                            r.index, r.term, r.type_byte, r.length, r.batch_start, "BAD"
                        )?,
                        None => writeln!(
                            out,
                            "{:>12} {:>8} {:>6} {:>8} {offset:>12} {:>12} {:>5}  {error}",
                            "?", "?", "?", "?", "?", "BAD"
                        )?,
                    }
                }
            }
            Item::Skipped { offset, bytes } => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json_obj(&[
                            ("kind", J::S("skipped".into())),
                            ("file", J::S(file.clone())),
                            ("offset", J::N(offset)),
                            ("bytes", J::N(bytes)),
                        ])
                    )?;
                } else {
                    writeln!(
                        out,
                        "-- skipped {bytes} bytes at offset {offset} (no valid frame)"
                    )?;
                }
            }
            Item::NonZeroAfterEnd { offset } => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json_obj(&[
                            ("kind", J::S("nonzero_after_end".into())),
                            ("file", J::S(file.clone())),
                            ("offset", J::N(offset)),
                        ])
                    )?;
                } else {
                    writeln!(
                        out,
                        "-- non-zero bytes at offset {offset} after the end of log"
                    )?;
                }
            }
            Item::End { offset } => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json_obj(&[
                            ("kind", J::S("end".into())),
                            ("file", J::S(file.clone())),
                            ("offset", J::N(offset)),
                        ])
                    )?;
                } else {
                    writeln!(out, "-- end of log at offset {offset}")?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify, repair
// ---------------------------------------------------------------------------------------------

fn require_dir(dir: &Path) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: not a directory (verify and repair take a node directory)",
            dir.display()
        )));
    }
    Ok(())
}

fn verify(dir: &Path) -> Result<u8, CliError> {
    require_dir(dir)?;
    let check = DirCheck::load(dir)?;
    for name in &check.ignored {
        println!("note: {name} is not a canonical segment name; the log ignores it");
    }
    for seg in &check.segments {
        let name = seg.path.display();
        match (&seg.header, &seg.scan) {
            (Ok(h), Some(scan)) => {
                let entries = scan.last_index.0 + 1 - h.base_index.0;
                println!(
                    "segment {name}: base {} entries {} (header counts {}), {} of {} bytes used",
                    h.base_index,
                    entries,
                    h.entry_count,
                    scan.valid_end,
                    seg.bytes.len()
                );
            }
            _ => println!("segment {name}: header unreadable"),
        }
    }
    for p in &check.problems {
        println!("PROBLEM {p}");
    }
    let range = match check.valid_range() {
        Some((first, last)) if last >= first => format!("entries {first}..={last}"),
        _ => "no entries".into(),
    };
    if check.problems.is_empty() {
        println!(
            "verify: clean: {} segment(s), {range}",
            check.segments.len()
        );
        Ok(0)
    } else {
        println!(
            "verify: {} problem(s) in {} segment(s); valid prefix: {range}; `segdump repair --dry-run {}` shows the fix",
            check.problems.len(),
            check.segments.len(),
            dir.display()
        );
        Ok(EXIT_PROBLEMS)
    }
}

fn repair_cmd(dir: &Path, dry_run: bool, backup: bool) -> Result<u8, CliError> {
    require_dir(dir)?;
    let check = DirCheck::load(dir)?;
    repair::repair(&check, &repair::RepairOptions { dry_run, backup }).map_err(CliError::Repair)?;
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// state
// ---------------------------------------------------------------------------------------------

fn record_fields(r: &StateRecord) -> Vec<(&'static str, J)> {
    let s = &r.state;
    vec![
        ("sequence", J::N(r.sequence)),
        ("current_term", J::N(s.current_term.0)),
        ("voted_for", J::N(s.voted_for.map_or(0, |n| n.0.into()))),
        ("commit_index", J::N(s.commit_index.0)),
        ("last_applied", J::N(s.last_applied.0)),
        ("server_state", J::S(format!("{:?}", s.server_state))),
        (
            "cluster_id",
            J::S(format!("{:016x}", s.identity.cluster_id)),
        ),
        ("node_id", J::N(s.identity.node_id.into())),
    ]
}

fn state(file: &Path, json: bool) -> Result<u8, CliError> {
    let bytes = std::fs::read(file).map_err(|source| IoFailure {
        path: file.to_path_buf(),
        op: "read",
        source,
    })?;
    let view = match StateFileView::decode(file, &bytes) {
        Ok(v) => v,
        Err(e) => {
            println!("PROBLEM {e}");
            return Ok(EXIT_PROBLEMS);
        }
    };
    let current = view.current(file);
    let current_slot = current.as_ref().ok().map(|(slot, _)| *slot);
    for (slot, r) in view.slots.iter().enumerate() {
        let is_current = current_slot == Some(slot);
        if json {
            let mut fields = vec![
                ("kind", J::S("slot".into())),
                ("slot", J::N(slot as u64)),
                ("current", J::S(is_current.to_string())),
            ];
            match r {
                Ok(rec) => {
                    fields.push(("status", J::S("valid".into())));
                    fields.extend(record_fields(rec));
                }
                Err(e) => fields.push(("status", J::S(e.to_string()))),
            }
            println!("{}", json_obj(&fields));
        } else {
            match r {
                Ok(rec) => {
                    let s = &rec.state;
                    println!(
                        "slot {slot}: valid{}: sequence {} current_term {} voted_for {} commit_index {} last_applied {} server_state {:?} identity {}",
                        if is_current { " (current)" } else { "" },
                        rec.sequence,
                        s.current_term,
                        s.voted_for.map_or("none".to_string(), |n| n.to_string()),
                        s.commit_index,
                        s.last_applied,
                        s.server_state,
                        if s.identity.is_known() {
                            s.identity.to_string()
                        } else {
                            "none".to_string()
                        }
                    );
                }
                Err(e) => println!("slot {slot}: invalid: {e}"),
            }
        }
    }
    match current {
        Ok(_) => Ok(0),
        Err(e) => {
            println!("PROBLEM {e}");
            Ok(EXIT_PROBLEMS)
        }
    }
}

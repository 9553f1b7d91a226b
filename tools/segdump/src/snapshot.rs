//! `segdump snapshot show|verify FILE`: a snapshot file's header, chunks and payload, judged by
//! the library's own decoder (`rust_raft_log::storage::snapshot`, the one the node's reader, its
//! recovery and its InstallSnapshot receiver run), so segdump and the node cannot disagree about
//! a snapshot. `show` and `verify` are read-only; `restore` creates a new node directory through
//! the library's own restore (`rust_raft_log::node::restore`), the one the tests check against a
//! real cluster.

use std::path::Path;

use rust_raft_log::config::ClusterConfig;
use rust_raft_log::node::restore::{restore_snapshot, RestoreError};
use rust_raft_log::storage::snapshot::{
    verify, SnapshotFileError, SnapshotMeta, SnapshotReader, SnapshotSummary, PAYLOAD_KIND_KV,
    PAYLOAD_KIND_OPAQUE, SAVED_DIGEST_BYTES,
};
use rust_raft_log::storage::uring::UringVfs;

use crate::model::IoFailure;
use crate::{json_obj, CliError, EXIT_PROBLEMS, J};

fn require_file(file: &Path) -> Result<(), CliError> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(CliError::Usage(format!(
            "{}: not a file (snapshot show and verify take one snapshot file)",
            file.display()
        ))),
        Err(source) => Err(CliError::Io(IoFailure {
            path: file.to_path_buf(),
            op: "stat",
            source,
        })),
    }
}

/// An I/O failure is exit code 2; anything else the library reports is a problem in the file.
fn judge(e: SnapshotFileError) -> Result<SnapshotFileError, CliError> {
    match e {
        SnapshotFileError::Io { path, op, source } => Err(CliError::Io(IoFailure {
            path,
            op,
            source: std::io::Error::new(source.kind(), source.to_string()),
        })),
        other => Ok(other),
    }
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        PAYLOAD_KIND_OPAQUE => "opaque",
        PAYLOAD_KIND_KV => "key-value",
        _ => "unknown",
    }
}

fn ids(list: &[rust_raft_log::types::NodeId]) -> String {
    let v: Vec<String> = list.iter().map(|n| n.to_string()).collect();
    v.join(",")
}

fn meta_line(m: &SnapshotMeta) -> String {
    format!(
        "last_index {} last_term {} cluster_id {:016x} payload_kind {} ({}) voters {} learners {}",
        m.index,
        m.term,
        m.cluster_id,
        m.payload_kind,
        kind_name(m.payload_kind),
        ids(&m.voters),
        if m.learners.is_empty() {
            "none".to_string()
        } else {
            ids(&m.learners)
        }
    )
}

fn meta_fields(m: &SnapshotMeta) -> Vec<(&'static str, J)> {
    vec![
        ("last_index", J::N(m.index.0)),
        ("last_term", J::N(m.term.0)),
        ("cluster_id", J::S(format!("{:016x}", m.cluster_id))),
        ("payload_kind", J::N(m.payload_kind.into())),
        ("voters", J::S(ids(&m.voters))),
        ("learners", J::S(ids(&m.learners))),
    ]
}

/// `snapshot show`: the header, then the chunk count and payload size once the whole file
/// checked out; on damage, as much as decoded and `PROBLEM <error>` (exit 1).
pub fn show(file: &Path, json: bool) -> Result<u8, CliError> {
    require_file(file)?;
    let name = file.display().to_string();
    let header = SnapshotReader::open(&UringVfs, file).map(|r| (r.meta().clone(), r.file_bytes()));
    let outcome: Result<SnapshotSummary, SnapshotFileError> = match &header {
        Ok(_) => verify(&UringVfs, file),
        Err(e) => Err(e.clone()),
    };
    let problem = match outcome {
        Ok(ref s) => {
            if json {
                let mut fields = vec![
                    ("kind", J::S("snapshot".into())),
                    ("file", J::S(name)),
                    ("file_len", J::N(s.file_bytes)),
                    ("status", J::S("valid".into())),
                ];
                fields.extend(meta_fields(&s.meta));
                fields.push(("chunk_count", J::N(s.chunk_count.into())));
                fields.push(("payload_bytes", J::N(s.payload_bytes)));
                fields.push(("payload_crc", J::S(format!("{:#010x}", s.payload_crc))));
                println!("{}", json_obj(&fields));
            } else {
                println!("== {name}: {} bytes: {}", s.file_bytes, meta_line(&s.meta));
                println!(
                    "payload: {} bytes in {} chunk(s), crc32c {:#010x}",
                    s.payload_bytes, s.chunk_count, s.payload_crc
                );
                print_saved_suffix(file, s.file_bytes);
            }
            return Ok(0);
        }
        Err(e) => judge(e)?,
    };
    if json {
        let mut fields = vec![("kind", J::S("snapshot".into())), ("file", J::S(name))];
        if let Ok((meta, len)) = &header {
            fields.push(("file_len", J::N(*len)));
            fields.extend(meta_fields(meta));
        }
        fields.push(("status", J::S("damaged".into())));
        fields.push(("error", J::S(problem.to_string())));
        println!("{}", json_obj(&fields));
    } else {
        match &header {
            Ok((meta, len)) => println!("== {name}: {len} bytes: {}", meta_line(meta)),
            Err(_) => println!("== {name}: header unreadable"),
        }
        println!("PROBLEM {problem}");
    }
    Ok(EXIT_PROBLEMS)
}

/// A saved snapshot (docs/FORMAT.md, "Saved snapshot") is longer than its snapshot file: say
/// what follows it (the reader checked it).
fn print_saved_suffix(file: &Path, snapshot_bytes: u64) {
    let len = std::fs::metadata(file).map_or(snapshot_bytes, |m| m.len());
    if len > snapshot_bytes {
        println!(
            "saved snapshot: {} padding byte(s) and a SHA-256 follow the snapshot file, checked",
            len - snapshot_bytes - SAVED_DIGEST_BYTES as u64
        );
    }
}

/// `snapshot verify`: every byte checked; exit 0 clean, 1 problem found (named), 2 I/O error.
pub fn verify_cmd(file: &Path) -> Result<u8, CliError> {
    require_file(file)?;
    match verify(&UringVfs, file) {
        Ok(s) => {
            println!(
                "verify: clean: {}: last_index {} last_term {}, {} payload bytes in {} chunk(s), {} file bytes",
                file.display(),
                s.meta.index,
                s.meta.term,
                s.payload_bytes,
                s.chunk_count,
                s.file_bytes
            );
            print_saved_suffix(file, s.file_bytes);
            Ok(0)
        }
        Err(e) => {
            let problem = judge(e)?;
            println!("PROBLEM {problem}");
            println!("verify: 1 problem in {}", file.display());
            Ok(EXIT_PROBLEMS)
        }
    }
}

/// `snapshot restore`: creates node `node_id`'s directory of the cluster `config` describes from
/// `file`. Exit 0 done, 1 the file is damaged (or holds another payload), 2 refused or I/O error.
pub fn restore_cmd(file: &Path, config: &Path, node_id: u32) -> Result<u8, CliError> {
    require_file(file)?;
    let config = ClusterConfig::load(config).map_err(|e| CliError::Usage(e.to_string()))?;
    let directory = config.node_directory(node_id);
    match restore_snapshot(file, &config, node_id, &directory) {
        Ok(r) => {
            println!(
                "restore: created {} for node {node_id} of cluster {:016x} from {}: snapshot at \
                 last_index {} last_term {}, {} payload bytes (taken in cluster {:016x}); start \
                 the node to serve it",
                r.directory.display(),
                r.cluster_id,
                file.display(),
                r.index,
                r.term,
                r.payload_bytes,
                r.source_cluster_id
            );
            Ok(0)
        }
        Err(e @ (RestoreError::Snapshot { .. } | RestoreError::NotKeyValue { .. })) => {
            println!("PROBLEM {e}");
            println!("restore: nothing written");
            Ok(EXIT_PROBLEMS)
        }
        Err(
            e @ (RestoreError::NotEmpty { .. }
            | RestoreError::NotADirectory { .. }
            | RestoreError::Config(_)),
        ) => Err(CliError::Usage(format!("restore refused: {e}"))),
        // The staging directory beside the node directory may be left; the next run removes it.
        Err(e) => Err(CliError::Usage(format!(
            "restore failed: {e} (the node directory was not created)"
        ))),
    }
}

//! Restoring one node directory of a **new** cluster from a snapshot file (a backup taken with
//! `etcdctl snapshot save`, or any `snapshot_<index>.snap`): what `segdump snapshot restore`
//! runs, once per member of the new cluster.
//!
//! The directory it creates is one the node opens as if it had compacted its log behind that
//! snapshot ([`crate::node::open_storage`]):
//!
//! ```text
//! <log_directory>/node_<N>/
//!   snapshot_<index>.snap   the file's payload, verbatim, under a header naming the NEW cluster
//!                           (cluster id and members of the config); index and term unchanged
//!   segment_<index+1>.log   an empty log that continues right after the snapshot (RaftLog::reset)
//!   raft_state.meta         identity (new cluster id, node N), term = the snapshot's term,
//!                           no vote, commit = the snapshot's index
//!   LOCK                    the log's lock file
//! ```
//!
//! Every member restored from the same file holds the same state at the same index and term, so
//! the new cluster elects a leader among equals and continues the log (and the store's revision)
//! from there.
//!
//! # Invariants
//! - Nothing is written before the file was verified whole (header, every chunk, trailer), and
//!   the payload is verified again chunk by chunk while it is copied (never held in memory).
//! - An existing non-empty directory is never touched: refused, with what it holds.
//! - The directory appears complete or not at all: everything is written and synced in a
//!   staging directory beside it (`.node_<N>.restore`), renamed into place, and the parent
//!   directory fsync'ed. A leftover staging directory (a restore that crashed) is replaced.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ClusterConfig, ConfigError};
use crate::storage::file::Vfs;
use crate::storage::snapshot::{
    verify, SnapshotFileError, SnapshotMeta, SnapshotReader, SnapshotWriter, PAYLOAD_KIND_KV,
};
use crate::storage::state::{Identity, PersistentState, RaftState};
use crate::storage::uring::UringVfs;
use crate::storage::{LogConfig, RaftLog};
use crate::types::{LogIndex, NodeId, Term};

/// What [`restore_snapshot`] created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The new node directory.
    pub directory: PathBuf,
    /// The snapshot file in it.
    pub snapshot: PathBuf,
    pub index: LogIndex,
    pub term: Term,
    pub payload_bytes: u64,
    /// The new cluster's id (the config's), now in the snapshot header and the state file.
    pub cluster_id: u64,
    /// The cluster id the file was taken in.
    pub source_cluster_id: u64,
}

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file is not a complete, undamaged snapshot file.
    #[error("{} is not a usable snapshot file: {error}", .file.display())]
    Snapshot {
        file: PathBuf,
        #[source]
        error: SnapshotFileError,
    },
    /// The file holds another state machine's payload than the node's key-value store.
    #[error(
        "{} holds a payload of kind {kind}, not a key-value store snapshot (kind \
         {PAYLOAD_KIND_KV}): a node cannot restore it",
        .file.display()
    )]
    NotKeyValue { file: PathBuf, kind: u32 },
    /// The node directory exists and holds something: a restore never overwrites data.
    #[error(
        "data directory {} is not empty (it holds {first:?}, {count} entr{}): a restore only \
         creates the directory of a new member; move it away (or choose another log_directory) \
         and run the restore again",
        .directory.display(),
        if *.count == 1 { "y" } else { "ies" }
    )]
    NotEmpty {
        directory: PathBuf,
        first: String,
        count: usize,
    },
    #[error("{} exists and is not a directory", .directory.display())]
    NotADirectory { directory: PathBuf },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Writing the log or the state file failed.
    #[error("writing {}: {source}", .directory.display())]
    Storage {
        directory: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Creates `directory`, node `node_id`'s directory of the cluster `config` describes, from the
/// snapshot `file` (see the module docs for what it holds). `directory` is normally
/// `config.node_directory(node_id)`; it must not exist or be empty.
///
/// # Errors
/// [`RestoreError::Config`] if `node_id` is not in `config`; [`RestoreError::NotEmpty`] /
/// [`RestoreError::NotADirectory`] before anything is read; [`RestoreError::Snapshot`] for a
/// damaged or unreadable file and [`RestoreError::NotKeyValue`] for another payload, before
/// anything is written; I/O and storage errors while writing (the staging directory is then
/// left behind, and removed by the next attempt).
pub fn restore_snapshot(
    file: &Path,
    config: &ClusterConfig,
    node_id: u32,
    directory: &Path,
) -> Result<Restored, RestoreError> {
    config.node(node_id)?;
    check_absent_or_empty(directory)?;
    let snapshot_err = |error| RestoreError::Snapshot {
        file: file.to_path_buf(),
        error,
    };
    let summary = verify(&UringVfs, file).map_err(snapshot_err)?;
    if summary.meta.payload_kind != PAYLOAD_KIND_KV {
        return Err(RestoreError::NotKeyValue {
            file: file.to_path_buf(),
            kind: summary.meta.payload_kind,
        });
    }
    let (index, term) = (summary.meta.index, summary.meta.term);
    let cluster_id = config.cluster_id();

    let name = directory
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("node_{node_id}"));
    let parent = match directory.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent, "create directory"))?;
    let staging = parent.join(format!(".{name}.restore"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(
            &staging,
            "remove an earlier restore's staging directory",
        ))?;
    }
    std::fs::create_dir(&staging).map_err(io_err(&staging, "create directory"))?;

    // 1. The snapshot, under a header naming the new cluster; the payload is streamed through
    //    the reader (each chunk checked again) into the writer.
    let mut voters: Vec<NodeId> = config.nodes.iter().map(|n| n.id()).collect();
    voters.sort_unstable();
    let meta = SnapshotMeta {
        cluster_id,
        voters,
        learners: Vec::new(),
        ..summary.meta.clone()
    };
    let vfs: Arc<dyn Vfs> = Arc::new(UringVfs);
    let mut reader = SnapshotReader::open(&*vfs, file).map_err(snapshot_err)?;
    let mut writer = SnapshotWriter::create(Arc::clone(&vfs), &staging, &meta)
        .map_err(|e| storage(&staging, e))?;
    io::copy(&mut reader, &mut writer).map_err(|e| match SnapshotFileError::from_io(&e) {
        Some(damage) if damage.path() == file => snapshot_err(damage.clone()),
        _ => storage(&staging, e),
    })?;
    let payload_bytes = writer.payload_bytes();
    assert_eq!(
        reader.summary().map(|s| s.payload_bytes),
        Some(payload_bytes),
        "the reader ended (Ok(0)) only after the trailer checked out, and every byte was copied"
    );
    let staged_snapshot = writer.finish().map_err(|e| storage(&staging, e))?;

    // 2. An empty log that continues right after the snapshot.
    let mut log = RaftLog::open(LogConfig {
        segment_size_bytes: config.cluster_settings.log_segment_size,
        ..LogConfig::new(&staging)
    })
    .map_err(|e| storage(&staging, e))?;
    log.reset(index, term).map_err(|e| storage(&staging, e))?;
    drop(log);

    // 3. The state file: this directory's identity, the snapshot's term (no vote in it yet) and
    //    its index as committed (Raft §7: a snapshot holds committed entries only).
    let identity = Identity {
        cluster_id,
        node_id,
    };
    let mut state = RaftState::open_checked(&UringVfs, &staging, identity, None)
        .map_err(|e| storage(&staging, e))?;
    let restored = PersistentState {
        current_term: term,
        voted_for: None,
        commit_index: index,
        last_applied: index,
        identity,
        ..*state.state()
    };
    state.save(restored).map_err(|e| storage(&staging, e))?;
    drop(state);

    // 4. Into place: rename (over an empty directory, if one was there), then make the rename
    //    durable.
    vfs.sync_dir(&staging)
        .map_err(io_err(&staging, "fsync directory"))?;
    std::fs::rename(&staging, directory).map_err(io_err(directory, "rename into place"))?;
    vfs.sync_dir(&parent)
        .map_err(io_err(&parent, "fsync directory"))?;
    let snapshot = directory.join(
        staged_snapshot
            .file_name()
            .expect("the writer names its file"),
    );
    Ok(Restored {
        directory: directory.to_path_buf(),
        snapshot,
        index,
        term,
        payload_bytes,
        cluster_id,
        source_cluster_id: summary.meta.cluster_id,
    })
}

fn storage(
    directory: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> RestoreError {
    RestoreError::Storage {
        directory: directory.to_path_buf(),
        source: source.into(),
    }
}

/// Refuses a directory that exists and holds anything (or is not a directory).
fn check_absent_or_empty(directory: &Path) -> Result<(), RestoreError> {
    let metadata = match std::fs::symlink_metadata(directory) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(directory, "stat")(e)),
    };
    if !metadata.is_dir() {
        return Err(RestoreError::NotADirectory {
            directory: directory.to_path_buf(),
        });
    }
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .map_err(io_err(directory, "list directory"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io_err(directory, "list directory"))?;
    names.sort();
    match names.first() {
        None => Ok(()),
        Some(first) => Err(RestoreError::NotEmpty {
            directory: directory.to_path_buf(),
            first: first.clone(),
            count: names.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp};
    use crate::kv::KvStore;
    use crate::state_machine::Snapshot;
    use crate::storage::snapshot::{newest_valid, PAYLOAD_KIND_OPAQUE};

    const CONFIG: &str = "nodes:
  - node_id: 1
    ip_address: \"127.0.0.1\"
    port: 19001
  - node_id: 2
    ip_address: \"127.0.0.1\"
    port: 19002
  - node_id: 3
    ip_address: \"127.0.0.1\"
    port: 19003
cluster_settings:
  log_directory: \"logs\"
";
    const OLD_CLUSTER: u64 = 0x0123_4567_89ab_cdef;

    fn config() -> ClusterConfig {
        ClusterConfig::from_yaml(CONFIG).expect("config")
    }

    /// A store holding k0..k4 at revisions 2..=6.
    fn store() -> KvStore {
        let mut store = KvStore::new();
        for i in 0..5u64 {
            let op = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    ..PutRequest::default()
                })),
            };
            store.apply(&op).expect("put");
        }
        store
    }

    /// `store()` saved as a snapshot at index 42 term 5 of another cluster, as `backup.db`.
    fn backup(dir: &Path, kind: u32) -> PathBuf {
        let meta = SnapshotMeta {
            index: LogIndex(42),
            term: Term(5),
            cluster_id: OLD_CLUSTER,
            payload_kind: kind,
            voters: vec![NodeId(7), NodeId(8)],
            learners: Vec::new(),
        };
        let mut w = SnapshotWriter::create(Arc::new(UringVfs), dir, &meta).expect("writer");
        Snapshot::snapshot_view(&store())
            .write_to(&mut w)
            .expect("payload");
        let path = w.finish().expect("finish");
        let saved = dir.join("backup.db");
        std::fs::rename(&path, &saved).expect("rename");
        saved
    }

    /// Key, value, create and mod revision, version.
    type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64);

    fn everything(store: &KvStore) -> Vec<Kv> {
        store
            .range(&RangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                ..RangeRequest::default()
            })
            .expect("range")
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    kv.value,
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                )
            })
            .collect()
    }

    #[test]
    fn a_restored_directory_opens_as_the_new_clusters_node_at_the_snapshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = backup(tmp.path(), PAYLOAD_KIND_KV);
        let config = config();
        let directory = tmp.path().join("logs").join("node_2");
        std::fs::create_dir_all(&directory).expect("an empty directory is fine");
        let restored = restore_snapshot(&file, &config, 2, &directory).expect("restore");
        assert_eq!(restored.index, LogIndex(42));
        assert_eq!(restored.term, Term(5));
        assert_eq!(restored.cluster_id, config.cluster_id());
        assert_eq!(restored.source_cluster_id, OLD_CLUSTER);
        assert!(!tmp.path().join("logs").join(".node_2.restore").exists());

        // The snapshot names the new cluster and its members.
        let newest = newest_valid(&UringVfs, &directory).expect("list");
        let chosen = newest.chosen.expect("a valid snapshot");
        assert_eq!(chosen.path, restored.snapshot);
        assert_eq!(chosen.summary.meta.cluster_id, config.cluster_id());
        assert_eq!(
            chosen.summary.meta.voters,
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );

        // What the node's startup does with it: its identity checks, the snapshot it chooses, a
        // log that continues it, the hard state, and the store it restores.
        let crate::node::OpenedStorage {
            snapshot,
            hard_state,
            ..
        } = crate::node::open_storage(&config, NodeId(2), &directory).expect("open");
        let chosen = snapshot.expect("the node chooses the snapshot");
        assert_eq!((chosen.id.index, chosen.id.term), (LogIndex(42), Term(5)));
        assert_eq!(
            hard_state,
            crate::raft::HardState {
                term: Term(5),
                vote: None,
                commit: LogIndex(42)
            }
        );
        let restored_store =
            crate::node::restore_store(&UringVfs, Some(&chosen)).expect("restore the store");
        assert_eq!(everything(&restored_store), everything(&store()));
        assert_eq!(restored_store.revision(), store().revision());

        // Another node of the same cluster: its directory is refused with the wrong identity.
        let err = crate::node::open_storage(&config, NodeId(3), &directory)
            .err()
            .expect("node 3 must not open node 2's directory");
        assert!(err.to_string().contains("node 2"), "{err}");
    }

    #[test]
    fn a_non_empty_directory_a_damaged_file_and_another_payload_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = backup(tmp.path(), PAYLOAD_KIND_KV);
        let config = config();
        let directory = tmp.path().join("logs").join("node_1");

        std::fs::create_dir_all(&directory).expect("dir");
        std::fs::write(directory.join("raft_state.meta"), b"old").expect("write");
        let err = restore_snapshot(&file, &config, 1, &directory).expect_err("not empty");
        assert!(
            matches!(err, RestoreError::NotEmpty { count: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("raft_state.meta"), "{err}");
        assert_eq!(
            std::fs::read(directory.join("raft_state.meta")).expect("read"),
            b"old",
            "nothing touched"
        );
        std::fs::remove_dir_all(&directory).expect("clean");

        let err = restore_snapshot(&file, &config, 9, &directory).expect_err("no node 9");
        assert!(matches!(err, RestoreError::Config(_)), "{err}");

        // A flipped payload byte (the last chunk's last byte, before the end marker and trailer).
        let damaged = tmp.path().join("damaged.db");
        let mut bytes = std::fs::read(&file).expect("read");
        let at = bytes.len() - 8 - 20 - 1;
        bytes[at] ^= 0x40;
        std::fs::write(&damaged, &bytes).expect("write");
        let err = restore_snapshot(&damaged, &config, 1, &directory).expect_err("damaged");
        assert!(matches!(err, RestoreError::Snapshot { .. }), "{err}");
        assert!(!directory.exists(), "nothing written for a damaged file");

        let cut = tmp.path().join("cut.db");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let err = restore_snapshot(&cut, &config, 1, &directory).expect_err("cut");
        assert!(matches!(err, RestoreError::Snapshot { .. }), "{err}");

        let opaque_dir = tmp.path().join("opaque");
        std::fs::create_dir(&opaque_dir).expect("dir");
        let opaque = backup(&opaque_dir, PAYLOAD_KIND_OPAQUE);
        let err = restore_snapshot(&opaque, &config, 1, &directory).expect_err("opaque");
        assert!(matches!(err, RestoreError::NotKeyValue { .. }), "{err}");
        assert!(!directory.exists());
        assert!(!tmp.path().join("logs").join(".node_1.restore").exists());
    }
}

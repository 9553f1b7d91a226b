//! InstallSnapshot over gRPC (Raft §7): the leader streams one snapshot file verbatim, the
//! follower stores it and hands the message to its core only once the file is whole and durable.
//!
//! This module owns the wire side of a transfer; the files are the host's, behind
//! [`SnapshotFiles`] (the node implements it over its data directory with
//! `storage::snapshot`). What it guarantees, and how:
//! - **Nothing is held whole in memory.** The leader reads and sends one chunk of at most
//!   [`CHUNK_BYTES`] at a time, and HTTP/2 flow control holds it back while the follower writes;
//!   the follower appends each verified chunk to its receive file.
//! - **Every chunk is checked on arrival**: its CRC-32C here, its place in the file's framing by
//!   the host's receiver (which refuses a bad chunk at once); the whole file's checksums once the
//!   last chunk arrived.
//! - **A broken stream resumes.** The follower keeps an unfinished transfer; a new stream that
//!   starts elsewhere than where the follower stopped is answered with `resume_offset`, and the
//!   leader starts again from there. Only [`TRANSFER_ATTEMPTS_MAX`] streams in a row that make no
//!   progress end the transfer as failed (the core then re-probes the follower).
//! - **No timer on the whole transfer**: a big snapshot on a slow link is never abandoned for
//!   taking long. Only a chunk that the follower does not take within the RPC timeout ends a stream
//!   (hashicorp/raft#212 and etcd#3292 are what a whole-transfer timeout does). The transfer
//!   therefore needs a channel without a per-call deadline (`Peers` keeps one per peer for
//!   snapshots); the answer to the last chunk is awaited at most [`LAST_CHUNK_ANSWER_WAIT`].
//! - **Progress is what the follower confirmed**, not what the leader sent: chunks sent into a
//!   stream that broke may never have arrived, so the next stream starts where the leader stopped
//!   sending, the follower answers `resume_offset` with what it holds (the last, empty chunk too),
//!   and only a confirmed offset beyond the best one so far counts as progress.
//! - **The size is not needed up front**: the last chunk says so (`done`).
//! - **The configuration comes from the file.** The message handed to the core carries the
//!   configuration the snapshot recorded at its index, read from the durable file's checksummed
//!   header (not from the chunks' wire header, which does not carry it).

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;

use crate::grpc::proto as pb;
use crate::raft::membership::Membership;
use crate::raft::message::{Envelope, InstallSnapshot, Message, SnapshotId};
use crate::storage::snapshot::{self as snapshot_file, SNAPSHOT_HEADER_MAX_BYTES};
use crate::types::{LogIndex, NodeId, Term};

/// Bytes of snapshot file per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Streams in a row that end without moving the transfer forward before it counts as failed.
pub const TRANSFER_ATTEMPTS_MAX: u32 = 5;

/// How long the leader waits for the follower's answer once the last chunk was sent: the follower
/// syncs and renames the whole file, then its core installs it (restoring the state machine).
pub const LAST_CHUNK_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a follower did not take a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptError {
    /// The follower holds this many bytes of the transfer: resume from here.
    ResumeAt(u64),
    /// The bytes are not part of a valid snapshot file (or the disk failed): the transfer is
    /// discarded and starts again from 0.
    Refused(String),
}

/// The host's snapshot files, as the transport uses them. Calls may block (file I/O): the
/// transport makes them on the blocking pool, never on the node's thread.
pub trait SnapshotFiles: Send + Sync + 'static {
    /// Leader: up to `max` bytes of the snapshot file of `snap` from `offset`; empty at its end.
    ///
    /// # Errors
    /// The file is gone (pruned by a newer snapshot) or unreadable.
    fn read(&self, snap: SnapshotId, offset: u64, max: usize) -> Result<Vec<u8>, String>;

    /// Follower: `data` at `offset` of the transfer of `snap` from leader `from`. The last chunk
    /// comes with empty `data`: it must still be refused with `ResumeAt` if `offset` is not what
    /// the follower holds.
    ///
    /// # Errors
    /// See [`AcceptError`].
    fn accept(
        &self,
        from: NodeId,
        snap: SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), AcceptError>;

    /// Follower: the last chunk arrived. Verifies the whole file and makes it durable under its
    /// final name; the transfer is forgotten either way.
    ///
    /// # Errors
    /// What is wrong with the file, or the I/O error.
    fn finish(&self, from: NodeId, snap: SnapshotId) -> Result<(), String>;
}

impl std::fmt::Debug for dyn SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotFiles")
    }
}

/// Runs a blocking call of the host's files on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("snapshot file task failed: {e}")))
}

fn chunk(
    envelope: &Envelope,
    m: &InstallSnapshot,
    offset: u64,
    data: Vec<u8>,
) -> pb::InstallSnapshotChunk {
    pb::InstallSnapshotChunk {
        route: Some(pb::Route {
            from: envelope.from.0,
            to: envelope.to.0,
        }),
        term: m.term.0,
        leader_id: m.leader_id.0,
        last_index: m.snapshot.index.0,
        last_term: m.snapshot.term.0,
        read_seq: m.read_seq,
        offset,
        data_crc32c: crc32c::crc32c(&data),
        done: data.is_empty(),
        data,
    }
}

/// Leader side: delivers the snapshot of `envelope` (an InstallSnapshot) to its recipient and
/// returns the follower's answer (an AppendEntriesResponse envelope).
///
/// # Errors
/// The last stream's status once [`TRANSFER_ATTEMPTS_MAX`] streams in a row made no progress, or
/// the snapshot file could not be read.
pub async fn send_snapshot(
    client: pb::raft_client::RaftClient<Channel>,
    envelope: Envelope,
    files: Arc<dyn SnapshotFiles>,
    chunk_timeout: std::time::Duration,
    cluster_id: Option<u64>,
) -> Result<Envelope, Status> {
    let Message::InstallSnapshot(m) = envelope.msg.clone() else {
        return Err(Status::internal("send_snapshot of another message"));
    };
    let mut offset = 0u64;
    // The furthest offset the follower confirmed holding; a stream that does not move it counts
    // against the transfer.
    let mut confirmed = 0u64;
    let mut streams_without_progress = 0u32;
    loop {
        let outcome = one_stream(
            client.clone(),
            &envelope,
            &m,
            &files,
            &mut offset,
            chunk_timeout,
            cluster_id,
        )
        .await;
        let (failure, progress) = match outcome {
            Ok(Streamed::Answered(answer)) => return Ok(answer),
            Ok(Streamed::ResumeAt(at)) => {
                tracing::info!(to = %envelope.to, at, "resuming a snapshot transfer");
                offset = at;
                let progress = at > confirmed;
                confirmed = confirmed.max(at);
                (
                    Status::aborted("the follower asked to resume elsewhere"),
                    progress,
                )
            }
            // What this stream delivered is unknown until the follower says where to resume.
            Err(status) => (status, false),
        };
        if progress {
            streams_without_progress = 0;
        } else {
            streams_without_progress += 1;
            if streams_without_progress >= TRANSFER_ATTEMPTS_MAX {
                return Err(failure);
            }
            tracing::warn!(to = %envelope.to, offset, "snapshot stream made no progress: {failure}");
            tokio::time::sleep(std::time::Duration::from_millis(
                50 << streams_without_progress.min(4),
            ))
            .await;
        }
    }
}

enum Streamed {
    Answered(Envelope),
    ResumeAt(u64),
}

/// One stream of a transfer, from `*offset`; `*offset` follows what was sent.
async fn one_stream(
    mut client: pb::raft_client::RaftClient<Channel>,
    envelope: &Envelope,
    m: &InstallSnapshot,
    files: &Arc<dyn SnapshotFiles>,
    offset: &mut u64,
    chunk_timeout: std::time::Duration,
    cluster_id: Option<u64>,
) -> Result<Streamed, Status> {
    // Two chunks in the channel: the next is read while the previous one travels.
    let (tx, rx) = mpsc::channel::<pb::InstallSnapshotChunk>(2);
    let call = client.install_snapshot(crate::grpc::gate::peer_request(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        cluster_id,
    ));
    let feed = async {
        loop {
            let (files, snap, at) = (Arc::clone(files), m.snapshot, *offset);
            let data = blocking(move || files.read(snap, at, CHUNK_BYTES))
                .await?
                .map_err(Status::failed_precondition)?;
            let len = data.len() as u64;
            let c = chunk(envelope, m, at, data);
            let done = c.done;
            match tokio::time::timeout(chunk_timeout, tx.send(c)).await {
                Ok(Ok(())) => {}
                // The call ended (its answer says why) or the follower stopped taking chunks.
                Ok(Err(_)) => return Ok::<(), Status>(()),
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the follower took no snapshot chunk within the timeout",
                    ))
                }
            }
            *offset += len;
            if done {
                return Ok(());
            }
        }
    };
    // The call has no deadline (a transfer may take long): the feed bounds each chunk, and the
    // answer after the last one is awaited for LAST_CHUNK_ANSWER_WAIT.
    tokio::pin!(call);
    let answer = tokio::select! {
        answer = &mut call => answer,
        fed = feed => {
            fed?;
            match tokio::time::timeout(LAST_CHUNK_ANSWER_WAIT, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the follower did not answer the snapshot's last chunk in time",
                    ))
                }
            }
        }
    };
    let response = answer?.into_inner();
    match response.outcome {
        Some(pb::install_snapshot_response::Outcome::Answer(a)) => {
            let answer = crate::grpc::convert::decode_append_entries_response(a)
                .map_err(|e| Status::internal(format!("bad InstallSnapshot answer: {e}")))?;
            Ok(Streamed::Answered(answer))
        }
        Some(pb::install_snapshot_response::Outcome::ResumeOffset(at)) => {
            Ok(Streamed::ResumeAt(at))
        }
        None => Err(Status::internal(
            "InstallSnapshot answer without an outcome",
        )),
    }
}

/// The header of a chunk as the core's message.
fn decode_header(c: &pb::InstallSnapshotChunk) -> Result<Envelope, Status> {
    let route = c
        .route
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("InstallSnapshotChunk without a route"))?;
    if route.from != c.leader_id {
        return Err(Status::invalid_argument(format!(
            "InstallSnapshotChunk from {} names leader {}",
            route.from, c.leader_id
        )));
    }
    Ok(Envelope {
        from: NodeId(route.from),
        to: NodeId(route.to),
        msg: Message::InstallSnapshot(InstallSnapshot {
            term: Term(c.term),
            leader_id: NodeId(c.leader_id),
            snapshot: SnapshotId {
                index: LogIndex(c.last_index),
                term: Term(c.last_term),
            },
            // Filled from the received file's header once the file is whole (`receive`).
            membership: Membership::default(),
            read_seq: c.read_seq,
        }),
    })
}

/// What the follower's service does with a stream, up to the core's decision.
pub(crate) enum Received {
    /// The file is whole and durable: hand this message to the core.
    Complete(Envelope),
    /// Tell the leader to resume here.
    ResumeAt(u64),
}

/// Follower side: stores the stream's chunks through `files` until the last one.
///
/// # Errors
/// A malformed or misrouted chunk (INVALID_ARGUMENT / FAILED_PRECONDITION), a refused chunk or
/// file (DATA_LOSS: the leader starts again), a stream that ends before its last chunk.
pub(crate) async fn receive(
    local_id: NodeId,
    files: Arc<dyn SnapshotFiles>,
    mut stream: tonic::Streaming<pb::InstallSnapshotChunk>,
) -> Result<Received, Status> {
    let Some(first) = stream.message().await? else {
        return Err(Status::invalid_argument(
            "an InstallSnapshot stream without a chunk",
        ));
    };
    let envelope = decode_header(&first)?;
    if envelope.to != local_id {
        return Err(Status::failed_precondition(format!(
            "snapshot for node {} reached node {local_id}",
            envelope.to
        )));
    }
    let Message::InstallSnapshot(m) = &envelope.msg else {
        return Err(Status::internal("decoded header is not an InstallSnapshot"));
    };
    let (from, snap) = (envelope.from, m.snapshot);
    let mut next = Some(first);
    while let Some(c) = next.take() {
        if c.last_index != snap.index.0 || c.last_term != snap.term.0 || c.leader_id != from.0 {
            return Err(Status::invalid_argument(
                "an InstallSnapshot stream changed snapshot or leader midway",
            ));
        }
        if crc32c::crc32c(&c.data) != c.data_crc32c {
            return Err(Status::data_loss(format!(
                "snapshot chunk at offset {} fails its CRC-32C",
                c.offset
            )));
        }
        let done = c.done;
        // The last chunk is empty but still names an offset: one that is not what the follower
        // holds means chunks were lost with a broken stream, so it is checked like the others.
        let files_for_chunk = Arc::clone(&files);
        let accepted =
            blocking(move || files_for_chunk.accept(from, snap, c.offset, &c.data)).await?;
        match accepted {
            Ok(()) => {}
            Err(AcceptError::ResumeAt(at)) => return Ok(Received::ResumeAt(at)),
            Err(AcceptError::Refused(why)) => return Err(Status::data_loss(why)),
        }
        if done {
            let files = Arc::clone(&files);
            let membership = blocking(move || {
                files.finish(from, snap)?;
                // The core adopts the configuration the snapshot recorded at its index: read it
                // from the header of the file now durable (checksummed like the rest of it).
                let head = files.read(snap, 0, SNAPSHOT_HEADER_MAX_BYTES)?;
                let meta = snapshot_file::decode_header(&head)?;
                if (meta.index, meta.term) != (snap.index, snap.term) {
                    return Err(format!(
                        "the received file's header names the snapshot at {}@t{}, the transfer \
                         {}@t{}",
                        meta.index, meta.term, snap.index, snap.term
                    ));
                }
                Ok(Membership::new(meta.voters, meta.learners))
            })
            .await?
            .map_err(Status::data_loss)?;
            let mut envelope = envelope;
            if let Message::InstallSnapshot(m) = &mut envelope.msg {
                m.membership = membership;
            }
            return Ok(Received::Complete(envelope));
        }
        next = match stream.message().await? {
            Some(c) => Some(c),
            None => {
                return Err(Status::invalid_argument(
                    "InstallSnapshot stream ended before its last chunk",
                ))
            }
        };
    }
    Err(Status::internal(
        "unreachable end of an InstallSnapshot stream",
    ))
}

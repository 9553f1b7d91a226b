//! The watchers: `--watchers N` watch streams on the workload's key prefix through the etcd v3
//! `Watch` service, each recording every response it gets (events, progress notifications,
//! cancellations) and every (re)connection, for the watch checker ([`crate::checker::watch`]).
//!
//! ```text
//!   watcher i ──Watch "chaos/k", start_revision 1──▶ member i first
//!     stream breaks, ends, or is silent for STREAM_SILENCE_MAX ─▶ the next member, from
//!     start_revision = (highest revision seen in an event or a progress notification) + 1
//!   every PROGRESS_REQUEST_INTERVAL: a progress request on the stream (a bookmark back)
//! ```
//!
//! Invariants the checker relies on:
//! - a watcher's records are in the order it received them, on the run's one clock;
//! - each stream begins with a [`WatchRecord::Connect`] naming its `start_revision`, which is
//!   one above the highest revision the watcher had seen (events and bookmarks alike), or the
//!   compaction revision the members answered (then the skipped range is recorded as such);
//! - the first stream starts at revision 1: the cluster is fresh, so every write of the run is
//!   in a watcher's range;
//! - a watcher stops once it has seen the final revision (`done_at`, set by the runner after the
//!   clients stopped), or when told to give up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rust_raft_log::etcdpb::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use rust_raft_log::etcdpb::mvccpb::event::EventType;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Endpoints;
use crate::workload::{Clock, KEY_PREFIX};

/// How often a watcher asks for a progress notification on its stream.
const PROGRESS_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// A stream that says nothing this long (progress answers come every 500 ms) is dead: a paused
/// member, or a connection the kernel has not noticed is gone.
const STREAM_SILENCE_MAX: Duration = Duration::from_secs(3);
/// How long a watcher waits for a message before it looks at its stop flags again.
const POLL: Duration = Duration::from_millis(250);

/// One event as received: its revision (`mod_revision`), key and value (`None`: a DELETE).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    pub value: Option<String>,
}

/// What happened on a watcher, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchRecord {
    /// A new stream to `node`, created from `start_revision`.
    Connect {
        watcher: u32,
        at: u64,
        node: u32,
        start_revision: i64,
    },
    /// One response with events (all of one or more whole revisions, unless `fragment`).
    Events {
        watcher: u32,
        at: u64,
        header_revision: i64,
        fragment: bool,
        events: Vec<WatchEvent>,
    },
    /// A response without events that is neither `created` nor `canceled`: a progress
    /// notification at `revision` (every event up to it has been sent).
    Progress {
        watcher: u32,
        at: u64,
        revision: i64,
    },
    /// The member cancelled the watcher; `compact_revision > 0`: the history from the stream's
    /// start was compacted away.
    Canceled {
        watcher: u32,
        at: u64,
        compact_revision: i64,
        reason: String,
    },
    /// The stream failed, ended or went silent.
    Broken {
        watcher: u32,
        at: u64,
        reason: String,
    },
}

impl WatchRecord {
    pub fn watcher(&self) -> u32 {
        match self {
            WatchRecord::Connect { watcher, .. }
            | WatchRecord::Events { watcher, .. }
            | WatchRecord::Progress { watcher, .. }
            | WatchRecord::Canceled { watcher, .. }
            | WatchRecord::Broken { watcher, .. } => *watcher,
        }
    }
}

/// What the runner tells the watchers.
#[derive(Clone, Default)]
pub struct WatchControl {
    /// The final revision of the run, once known (0 until then): a watcher stops once it has
    /// seen it.
    pub done_at: Arc<AtomicI64>,
    /// Stop now, whatever was seen.
    pub give_up: Arc<AtomicBool>,
}

/// The end of the key range of a prefix watch (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an address is a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

fn event_of(event: &rust_raft_log::etcdpb::mvccpb::Event) -> WatchEvent {
    let kv = event.kv.clone().unwrap_or_default();
    WatchEvent {
        revision: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (event.r#type != EventType::Delete as i32)
            .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
    }
}

/// One watcher's loop; `endpoints`' index `i` is slot `i + 1` (it moves among the members
/// only, as the clients do). Returns its records.
pub async fn run_watcher(
    id: u32,
    endpoints: Endpoints,
    clock: Clock,
    control: WatchControl,
) -> Vec<WatchRecord> {
    let mut records = Vec::new();
    let mut member = endpoints.member_from(id as usize % endpoints.len());
    // The first revision not seen yet: events and bookmarks both move it.
    let mut next_revision = 1i64;
    // Consecutive streams cancelled for compaction: once every member said so, the watcher
    // jumps to the compaction revision (the range below it is recorded as skipped).
    let mut compacted_in_a_row = 0usize;
    let mut compact_revision = 0i64;
    while !finished(&control, next_revision) {
        if compacted_in_a_row >= endpoints.members().max(1) {
            next_revision = next_revision.max(compact_revision);
            compacted_in_a_row = 0;
        }
        let node = member as u32 + 1;
        records.push(WatchRecord::Connect {
            watcher: id,
            at: clock.now(),
            node,
            start_revision: next_revision,
        });
        let ended = stream(
            id,
            endpoints.addr(member),
            clock,
            &control,
            &mut next_revision,
            &mut records,
        )
        .await;
        match ended {
            StreamEnd::Compacted(r) => {
                compacted_in_a_row += 1;
                compact_revision = r;
            }
            StreamEnd::Broken | StreamEnd::Done => compacted_in_a_row = 0,
        }
        if matches!(ended, StreamEnd::Done) {
            break;
        }
        member = endpoints.next_member(member);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records
}

enum StreamEnd {
    Done,
    Broken,
    Compacted(i64),
}

/// One stream, until it breaks or the watcher is done; moves `next_revision`.
async fn stream(
    id: u32,
    addr: SocketAddr,
    clock: Clock,
    control: &WatchControl,
    next_revision: &mut i64,
    records: &mut Vec<WatchRecord>,
) -> StreamEnd {
    let broken = |records: &mut Vec<WatchRecord>, reason: String| {
        records.push(WatchRecord::Broken {
            watcher: id,
            at: clock.now(),
            reason,
        });
        StreamEnd::Broken
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: KEY_PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(KEY_PREFIX.as_bytes()),
            start_revision: *next_revision,
            progress_notify: true,
            ..WatchCreateRequest::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return broken(records, "request channel closed".into());
    }
    let mut client = WatchClient::new(channel(addr));
    let call = tokio::time::timeout(
        STREAM_SILENCE_MAX,
        client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let mut responses = match call {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return broken(records, crate::workload::reason(&status)),
        Err(_) => return broken(records, "no answer to the watch call".into()),
    };
    let mut last_message = std::time::Instant::now();
    let mut asked_progress = std::time::Instant::now();
    loop {
        if finished(control, *next_revision) {
            return StreamEnd::Done;
        }
        if asked_progress.elapsed() >= PROGRESS_REQUEST_INTERVAL {
            let progress = WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            };
            // A full request channel means the server is not reading: silence will tell.
            let _ = tx.try_send(progress);
            asked_progress = std::time::Instant::now();
        }
        let message = match tokio::time::timeout(POLL, responses.message()).await {
            Err(_) if last_message.elapsed() >= STREAM_SILENCE_MAX => {
                return broken(records, "silent".into())
            }
            Err(_) => continue,
            Ok(Err(status)) => return broken(records, crate::workload::reason(&status)),
            Ok(Ok(None)) => return broken(records, "stream ended".into()),
            Ok(Ok(Some(m))) => m,
        };
        last_message = std::time::Instant::now();
        if let Some(end) = record(id, clock, &message, next_revision, records) {
            return end;
        }
    }
}

/// Whether the watcher has seen the final revision, or was told to give up.
fn finished(control: &WatchControl, next: i64) -> bool {
    let done = control.done_at.load(Ordering::Relaxed);
    control.give_up.load(Ordering::Relaxed) || (done > 0 && next > done)
}

/// Records one response; `Some` when it ends the stream.
fn record(
    id: u32,
    clock: Clock,
    message: &WatchResponse,
    next_revision: &mut i64,
    records: &mut Vec<WatchRecord>,
) -> Option<StreamEnd> {
    let at = clock.now();
    let header_revision = message.header.as_ref().map_or(0, |h| h.revision);
    if message.canceled {
        records.push(WatchRecord::Canceled {
            watcher: id,
            at,
            compact_revision: message.compact_revision,
            reason: message.cancel_reason.clone(),
        });
        return Some(if message.compact_revision > 0 {
            StreamEnd::Compacted(message.compact_revision)
        } else {
            StreamEnd::Broken
        });
    }
    if message.created {
        return None;
    }
    if message.events.is_empty() {
        records.push(WatchRecord::Progress {
            watcher: id,
            at,
            revision: header_revision,
        });
        *next_revision = (*next_revision).max(header_revision + 1);
        return None;
    }
    let events: Vec<WatchEvent> = message.events.iter().map(event_of).collect();
    if let Some(last) = events.iter().map(|e| e.revision).max() {
        *next_revision = (*next_revision).max(last + 1);
    }
    records.push(WatchRecord::Events {
        watcher: id,
        at,
        header_revision,
        fragment: message.fragment,
        events,
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"chaos/k"), b"chaos/l".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}

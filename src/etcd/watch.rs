//! etcd's `Watch` service: the node's watch hub and the bidirectional `Watch/Watch` stream.
//!
//! This module owns every watcher of the node. Any member serves watches from its own applied
//! store (a follower's watchers see a revision when that follower applies it, as in etcd).
//!
//! ```text
//!   event loop: apply ─▶ KvStore::commit ─▶ WatchHub::committed ──try_send──▶ stream channel ─▶ client
//!                                                   │ channel full: the watcher becomes unsynced
//!   stream task: create / cancel / progress,        ▼
//!                catch-up of unsynced watchers ◀── KvStore::history_events (MVCC history)
//! ```
//!
//! A watcher is either **synced** (the hub pushes each committed revision's matching events into
//! the stream's channel, on the applying thread, while the store is locked) or **unsynced** (its
//! stream task sends it events from the store's history, from `next_revision` on, a bounded batch
//! at a time, and moves it to synced once it has reached the store's revision). New watchers
//! start unsynced, so the `created` response always precedes their events. etcd's design
//! (`watchable_store.go`: synced and unsynced watcher groups).
//!
//! Invariants, which give etcd's guarantees (ordered, unique, reliable, atomic, bookmarkable):
//! - `next_revision` is the first revision not yet handed to the channel for this watcher; every
//!   revision below it that touched the watcher's range was sent exactly once, in order.
//! - Only one party sends a watcher's events at a time: the hub while it is synced, its stream
//!   task while it is unsynced. Every change between the two happens with the store locked (hub
//!   lock inside the store lock, always in that order), so no commit falls between them.
//! - A response holds whole revisions: the hub sends one revision per response, a catch-up batch
//!   ends at a revision boundary; only `fragment` splits one, and marks the pieces.
//! - The apply loop never waits for a client: the hub only `try_send`s. A full channel makes
//!   the watcher unsynced at the revision that did not fit; it catches up from history, or is
//!   cancelled with `compact_revision` if that history was compacted meanwhile.
//! - A progress response at revision R (periodic per watcher, or the stream-wide answer to a
//!   progress request, `watch_id` -1) is only sent while the watchers concerned are synced, with
//!   the store locked: every event up to R is already in the channel ahead of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status, Streaming};

use super::server::{lock, EtcdApi, SharedStore};
use crate::etcdpb::etcdserverpb::{
    self as pb, watch_create_request::FilterType, watch_request::RequestUnion, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use crate::etcdpb::mvccpb::{event::EventType, Event};
use crate::kv::{key_in_range, EventSink, KvError, KvStore};
use crate::types::Term;

/// etcd's default progress notification interval (`--experimental-watch-progress-notify-interval`).
pub const PROGRESS_NOTIFY_INTERVAL_DEFAULT: Duration = Duration::from_secs(600);
/// Responses queued per stream before its watchers fall behind (etcd: 128 per stream; larger
/// here because one put reaches every watcher of a stream at once, 100 in the fan-out bench).
pub const STREAM_RESPONSES_MAX_DEFAULT: usize = 1024;
/// Events per catch-up response (a revision is never split, so one may exceed it).
pub const CATCH_UP_EVENTS_MAX_DEFAULT: usize = 1000;
/// The response size above which a watcher that asked for `fragment` gets pieces (etcd: its
/// `--max-request-bytes`, 1.5 MiB by default).
pub const FRAGMENT_BYTES_MAX_DEFAULT: usize = crate::kv::REQUEST_BYTES_MAX_DEFAULT;

/// etcd's texts for refused creates.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// The watch id of a stream-wide progress response (etcd's `InvalidWatchID`).
pub const PROGRESS_WATCH_ID: i64 = -1;

/// Limits and intervals of the watch service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    pub progress_notify_interval: Duration,
    pub stream_responses_max: usize,
    pub catch_up_events_max: usize,
    pub fragment_bytes_max: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_notify_interval: PROGRESS_NOTIFY_INTERVAL_DEFAULT,
            stream_responses_max: STREAM_RESPONSES_MAX_DEFAULT,
            catch_up_events_max: CATCH_UP_EVENTS_MAX_DEFAULT,
            fragment_bytes_max: FRAGMENT_BYTES_MAX_DEFAULT,
        }
    }
}

/// A response on its way to a client, with the watcher's `fragment` choice (splitting happens
/// as it leaves, see [`WatchOutput`]).
struct Outgoing {
    response: WatchResponse,
    fragment: bool,
}

/// One watcher of one stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    progress_notify: bool,
    synced: bool,
    /// The first revision not yet handed to the channel for this watcher.
    next_revision: i64,
    /// Something was sent since the last periodic progress tick (etcd skips the notification
    /// then).
    sent_since_tick: bool,
}

impl Watcher {
    /// The response carrying `events` (already in revision order) that this watcher wants, or
    /// `None` if its range and filters leave none.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|event| {
                let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
                let put = event.r#type == EventType::Put as i32;
                key_in_range(&self.key, &self.range_end, key)
                    && if put { !self.no_put } else { !self.no_delete }
            })
            .map(|event| {
                let mut event = event.clone();
                if !self.prev_kv {
                    event.prev_kv = None;
                }
                event
            })
            .collect()
    }
}

struct StreamState {
    tx: mpsc::Sender<Outgoing>,
    wake: Arc<Notify>,
    watchers: BTreeMap<i64, Watcher>,
    next_watch_id: i64,
    /// A progress request arrived while a watcher was unsynced (or the channel was full): it
    /// is answered once every watcher of the stream is synced (etcd 3.5's deferred progress).
    progress_deferred: bool,
}

impl StreamState {
    fn needs_catch_up(&self) -> bool {
        self.progress_deferred || self.watchers.values().any(|w| !w.synced)
    }
}

#[derive(Default)]
struct HubState {
    streams: HashMap<u64, StreamState>,
    next_stream_id: u64,
}

/// Every watcher of the node, told of each commit by the store (it is the store's
/// [`EventSink`]). See the [module docs](self).
pub struct WatchHub {
    state: Mutex<HubState>,
    /// Synced watchers: the store builds events only while this is nonzero.
    synced: AtomicUsize,
    /// The term for response headers, as last seen by a stream task (the hub runs inside apply,
    /// which does not know the term).
    term: AtomicU64,
    /// The header every response carries (`cluster_id`, `member_id`).
    cluster_id: u64,
    member_id: u64,
}

impl WatchHub {
    pub fn new(cluster_id: u64, member_id: u64) -> WatchHub {
        WatchHub {
            state: Mutex::new(HubState::default()),
            synced: AtomicUsize::new(0),
            term: AtomicU64::new(0),
            cluster_id,
            member_id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves watchers as they were; serving them is still
        // better than stopping the apply loop, which calls in here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.term.load(Ordering::Relaxed),
        })
    }

    fn set_synced(&self, watcher: &mut Watcher, synced: bool) {
        if watcher.synced != synced {
            watcher.synced = synced;
            if synced {
                self.synced.fetch_add(1, Ordering::Relaxed);
            } else {
                self.synced.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Registers a stream; returns its id.
    fn open_stream(&self, tx: mpsc::Sender<Outgoing>, wake: Arc<Notify>) -> u64 {
        let mut state = self.lock();
        let id = state.next_stream_id;
        state.next_stream_id += 1;
        state.streams.insert(
            id,
            StreamState {
                tx,
                wake,
                watchers: BTreeMap::new(),
                next_watch_id: 0,
                progress_deferred: false,
            },
        );
        id
    }

    fn close_stream(&self, stream: u64) {
        let mut state = self.lock();
        if let Some(removed) = state.streams.remove(&stream) {
            let synced = removed.watchers.values().filter(|w| w.synced).count();
            self.synced.fetch_sub(synced, Ordering::Relaxed);
        }
    }

    /// Adds a watcher (unsynced: its stream task sends `created` and then catches it up).
    /// Returns its id, or etcd's reason for refusing it. The caller holds the store lock:
    /// `current` is the store's revision.
    fn create(
        &self,
        stream: u64,
        create: &WatchCreateRequest,
        current: i64,
    ) -> Result<i64, &'static str> {
        let mut key = create.key.clone();
        if key.is_empty() {
            // etcd: "\0" is the smallest key.
            key = vec![0];
        }
        let range_end = create.range_end.clone();
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return Err(EMPTY_RANGE);
        }
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&stream) else {
            return Err("rust-raft-log: the watch stream is closed");
        };
        let id = if create.watch_id == 0 {
            // etcd: 0 asks the server to choose; it takes the next id not in use.
            while stream.watchers.contains_key(&stream.next_watch_id) {
                stream.next_watch_id += 1;
            }
            let id = stream.next_watch_id;
            stream.next_watch_id += 1;
            id
        } else if stream.watchers.contains_key(&create.watch_id) {
            return Err(DUPLICATE_ID);
        } else {
            create.watch_id
        };
        let filters = |kind: FilterType| create.filters.contains(&(kind as i32));
        stream.watchers.insert(
            id,
            Watcher {
                key,
                range_end,
                prev_kv: create.prev_kv,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
                fragment: create.fragment,
                progress_notify: create.progress_notify,
                synced: false,
                next_revision: if create.start_revision > 0 {
                    create.start_revision
                } else {
                    current + 1
                },
                sent_since_tick: false,
            },
        );
        stream.wake.notify_one();
        Ok(id)
    }

    /// Removes a watcher; whether it existed.
    fn cancel(&self, stream: u64, watch_id: i64) -> bool {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&stream) else {
            return false;
        };
        match stream.watchers.remove(&watch_id) {
            Some(watcher) => {
                if watcher.synced {
                    self.synced.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    fn needs_catch_up(&self, stream: u64) -> bool {
        self.lock()
            .streams
            .get(&stream)
            .is_some_and(StreamState::needs_catch_up)
    }

    /// A client's progress request: answered now if every watcher of the stream is synced (the
    /// store is locked by the caller, at `current`), else deferred until they are.
    fn request_progress(&self, stream: u64, current: i64) {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&stream) else {
            return;
        };
        if stream.needs_catch_up() {
            stream.progress_deferred = true;
            return;
        }
        let response = WatchResponse {
            header: self.header(current),
            watch_id: PROGRESS_WATCH_ID,
            ..WatchResponse::default()
        };
        let outgoing = Outgoing {
            response,
            fragment: false,
        };
        if stream.tx.try_send(outgoing).is_err() {
            stream.progress_deferred = true;
            stream.wake.notify_one();
        }
    }

    /// The periodic progress notification of every synced `progress_notify` watcher of the
    /// stream that got nothing since the last tick (the caller holds the store lock).
    fn progress_tick(&self, stream: u64, current: i64) {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&stream) else {
            return;
        };
        for (id, watcher) in &mut stream.watchers {
            let quiet = !std::mem::take(&mut watcher.sent_since_tick);
            if watcher.progress_notify && watcher.synced && quiet {
                let response = WatchResponse {
                    header: self.header(current),
                    watch_id: *id,
                    ..WatchResponse::default()
                };
                // A full channel: the client has plenty to read; skip this notification.
                let _ = stream.tx.try_send(Outgoing {
                    response,
                    fragment: false,
                });
            }
        }
    }

    /// One step of the stream's catch-up, with a reserved slot of its channel and the store
    /// locked: the first unsynced watcher gets its next batch from history (or is cancelled
    /// as compacted) and becomes synced if that reached the store's revision; with none left,
    /// a deferred progress request is answered.
    fn catch_up(
        &self,
        stream: u64,
        permit: mpsc::Permit<'_, Outgoing>,
        store: &KvStore,
        events_max: usize,
    ) {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(&stream) else {
            return;
        };
        let current = store.revision();
        let unsynced = stream
            .watchers
            .iter()
            .find(|(_, watcher)| !watcher.synced)
            .map(|(id, _)| *id);
        let Some(id) = unsynced else {
            if std::mem::take(&mut stream.progress_deferred) {
                permit.send(Outgoing {
                    response: WatchResponse {
                        header: self.header(current),
                        watch_id: PROGRESS_WATCH_ID,
                        ..WatchResponse::default()
                    },
                    fragment: false,
                });
            }
            return;
        };
        let watcher = stream
            .watchers
            .get_mut(&id)
            .expect("the id was found above");
        match store.history_events(
            watcher.next_revision - 1,
            current,
            &watcher.key,
            &watcher.range_end,
            events_max,
        ) {
            Ok(batch) => {
                let events = watcher.select(&batch.events);
                watcher.next_revision = watcher.next_revision.max(batch.through + 1);
                if watcher.next_revision > current {
                    self.set_synced(watcher, true);
                }
                if !events.is_empty() {
                    watcher.sent_since_tick = true;
                    permit.send(Outgoing {
                        response: WatchResponse {
                            header: self.header(current),
                            watch_id: id,
                            events,
                            ..WatchResponse::default()
                        },
                        fragment: watcher.fragment,
                    });
                }
            }
            Err(KvError::Compacted) => {
                stream.watchers.remove(&id);
                permit.send(Outgoing {
                    response: WatchResponse {
                        header: self.header(current),
                        watch_id: id,
                        canceled: true,
                        compact_revision: store.compact_revision(),
                        cancel_reason: KvError::Compacted.to_string(),
                        ..WatchResponse::default()
                    },
                    fragment: false,
                });
            }
            Err(other) => {
                // history_events reads at most the current revision: nothing else can fail.
                panic!(
                    "catch-up of watcher {id} from {}: {other}",
                    watcher.next_revision
                );
            }
        }
    }
}

impl EventSink for WatchHub {
    fn wants_events(&self) -> bool {
        self.synced.load(Ordering::Relaxed) > 0
    }

    fn committed(&self, revision: i64, events: Vec<Event>) {
        let mut state = self.lock();
        for stream in state.streams.values_mut() {
            let mut fell_behind = false;
            for (id, watcher) in &mut stream.watchers {
                if !watcher.synced || revision < watcher.next_revision {
                    continue;
                }
                let selected = watcher.select(&events);
                if selected.is_empty() {
                    watcher.next_revision = revision + 1;
                    continue;
                }
                let outgoing = Outgoing {
                    response: WatchResponse {
                        header: self.header(revision),
                        watch_id: *id,
                        events: selected,
                        ..WatchResponse::default()
                    },
                    fragment: watcher.fragment,
                };
                match stream.tx.try_send(outgoing) {
                    Ok(()) => {
                        watcher.next_revision = revision + 1;
                        watcher.sent_since_tick = true;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // The client reads slower than the store changes: this watcher
                        // catches up from history at `revision` (etcd's unsynced watchers).
                        watcher.synced = false;
                        self.synced.fetch_sub(1, Ordering::Relaxed);
                        fell_behind = true;
                    }
                    // The client is gone; its stream task removes the stream.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            if fell_behind {
                stream.wake.notify_one();
            }
        }
    }

    fn replaced(&self, _revision: i64) {
        // Installing a snapshot skipped the revisions in between without events: every synced
        // watcher goes back to catching up from its `next_revision`, from the new history (or
        // is cancelled as compacted if the snapshot's history does not reach back to it).
        let mut state = self.lock();
        for stream in state.streams.values_mut() {
            for watcher in stream.watchers.values_mut() {
                if watcher.synced {
                    watcher.synced = false;
                    self.synced.fetch_sub(1, Ordering::Relaxed);
                }
            }
            stream.wake.notify_one();
        }
    }
}

/// The response stream of one `Watch` call: the channel's responses, each split into fragments
/// when its watcher asked for it and it is larger than the limit.
pub struct WatchOutput {
    rx: mpsc::Receiver<Outgoing>,
    pending: VecDeque<WatchResponse>,
    fragment_bytes_max: usize,
}

impl tokio_stream::Stream for WatchOutput {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(next) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(next)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(outgoing)) => {
                let max = self.fragment_bytes_max;
                let mut pieces = if outgoing.fragment {
                    fragments(outgoing.response, max)
                } else {
                    VecDeque::from([outgoing.response])
                };
                let first = pieces.pop_front();
                self.pending = pieces;
                Poll::Ready(first.map(Ok))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// etcd's `sendFragments`: a response of at least `bytes_max` encoded bytes with two or more
/// events goes out as pieces of whole events, each under the limit unless a single event is
/// larger; every piece but the last has `fragment: true`.
fn fragments(response: WatchResponse, bytes_max: usize) -> VecDeque<WatchResponse> {
    if response.encoded_len() < bytes_max || response.events.len() < 2 {
        return VecDeque::from([response]);
    }
    let mut shell = response.clone();
    shell.events = Vec::new();
    let shell_bytes = shell.encoded_len();
    let mut pieces = VecDeque::new();
    let mut current = shell.clone();
    let mut bytes = shell_bytes;
    for event in response.events {
        // Field 11, length-delimited: one tag byte plus the length's varint.
        let event_bytes = event.encoded_len();
        let framed = 1 + prost::encoding::encoded_len_varint(event_bytes as u64) + event_bytes;
        if !current.events.is_empty() && bytes + framed >= bytes_max {
            current.fragment = true;
            pieces.push_back(std::mem::replace(&mut current, shell.clone()));
            bytes = shell_bytes;
        }
        bytes += framed;
        current.events.push(event);
    }
    current.fragment = false;
    pieces.push_back(current);
    pieces
}

/// etcd's `Watch` service on this node.
#[derive(Clone)]
pub struct WatchService {
    api: EtcdApi,
    hub: Arc<WatchHub>,
    config: WatchConfig,
}

impl WatchService {
    /// The service over `hub`, which must be the sink of the store `api` reads.
    pub fn new(api: EtcdApi, hub: Arc<WatchHub>, config: WatchConfig) -> WatchService {
        WatchService { api, hub, config }
    }

    pub fn server(self) -> pb::watch_server::WatchServer<WatchService> {
        pb::watch_server::WatchServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchOutput;

    /// One stream of many watchers. Served from this member's applied state, never forwarded.
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(self.open(request.into_inner())))
    }
}

impl WatchService {
    /// Opens one watch stream fed by `requests` (gRPC's request stream, or the JSON gateway's
    /// decoded body): the same task serves both.
    pub fn open<S>(&self, requests: S) -> WatchOutput
    where
        S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(self.config.stream_responses_max);
        let wake = Arc::new(Notify::new());
        let stream = self.hub.open_stream(tx.clone(), Arc::clone(&wake));
        tokio::spawn(run_stream(self.clone(), stream, requests, tx, wake));
        WatchOutput {
            rx,
            pending: VecDeque::new(),
            fragment_bytes_max: self.config.fragment_bytes_max,
        }
    }
}

/// A stream's task: reads the client's requests, catches up its unsynced watchers, sends the
/// periodic progress notifications; removes the stream when the client goes away.
async fn run_stream<S>(
    service: WatchService,
    stream: u64,
    mut requests: S,
    tx: mpsc::Sender<Outgoing>,
    wake: Arc<Notify>,
) where
    S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    use tokio_stream::StreamExt;
    let hub = &service.hub;
    let store = service.api.store().clone();
    let mut tick = tokio::time::interval(service.config.progress_notify_interval);
    tick.tick().await; // The first tick is immediate; notifications start one interval in.
    let mut reading = true;
    refresh_term(&service).await;
    loop {
        let catching_up = hub.needs_catch_up(stream);
        tokio::select! {
            request = requests.next(), if reading => match request.transpose() {
                Ok(Some(request)) => {
                    if handle(&service, stream, request, &tx).await.is_err() {
                        break;
                    }
                }
                // The client stopped sending; its watchers keep going (as in etcd).
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!("watch stream {stream} ended: {status}");
                    break;
                }
            },
            permit = tx.reserve(), if catching_up => match permit {
                Ok(permit) => {
                    let store = lock(&store);
                    hub.catch_up(stream, permit, &store, service.config.catch_up_events_max);
                }
                Err(_) => break,
            },
            () = wake.notified() => {}
            _ = tick.tick() => {
                refresh_term(&service).await;
                let store = lock(&store);
                hub.progress_tick(stream, store.revision());
            }
            () = tx.closed() => break,
        }
    }
    hub.close_stream(stream);
}

/// Updates the term the hub puts in headers (from the event loop's status).
async fn refresh_term(service: &WatchService) {
    if let Ok(status) = service.api.node_status().await {
        let Term(term) = status.term;
        service.hub.term.store(term, Ordering::Relaxed);
    }
}

/// One client request. `Err` when the client is gone.
async fn handle(
    service: &WatchService,
    stream: u64,
    request: WatchRequest,
    tx: &mpsc::Sender<Outgoing>,
) -> Result<(), ()> {
    let hub = &service.hub;
    match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            refresh_term(service).await;
            let (created, current) = {
                let store = lock(service.api.store());
                let current = store.revision();
                (hub.create(stream, &create, current), current)
            };
            // The watcher is unsynced, so nothing else sends for it before this.
            let response = match created {
                Ok(id) => WatchResponse {
                    header: hub.header(current),
                    watch_id: id,
                    created: true,
                    ..WatchResponse::default()
                },
                Err(reason) => WatchResponse {
                    header: hub.header(current),
                    watch_id: PROGRESS_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..WatchResponse::default()
                },
            };
            send(tx, response).await
        }
        Some(RequestUnion::CancelRequest(cancel)) => {
            if !hub.cancel(stream, cancel.watch_id) {
                // etcd answers a cancel of an unknown watcher with nothing.
                return Ok(());
            }
            let current = lock(service.api.store()).revision();
            let response = WatchResponse {
                header: hub.header(current),
                watch_id: cancel.watch_id,
                canceled: true,
                ..WatchResponse::default()
            };
            send(tx, response).await
        }
        Some(RequestUnion::ProgressRequest(_)) => {
            refresh_term(service).await;
            let store = lock(service.api.store());
            hub.request_progress(stream, store.revision());
            Ok(())
        }
        None => Ok(()),
    }
}

async fn send(tx: &mpsc::Sender<Outgoing>, response: WatchResponse) -> Result<(), ()> {
    tx.send(Outgoing {
        response,
        fragment: false,
    })
    .await
    .map_err(|_| ())
}

/// Creates the hub of a node's store and makes it the store's sink.
pub fn attach_hub(store: &SharedStore, cluster_id: u64, member_id: u64) -> Arc<WatchHub> {
    let hub = Arc::new(WatchHub::new(cluster_id, member_id));
    let sink: Arc<dyn EventSink> = hub.clone();
    lock(store).set_event_sink(Some(sink));
    hub
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdpb::etcdserverpb::{request_op, PutRequest, RequestOp};
    use crate::etcdpb::mvccpb::KeyValue;

    fn put(store: &mut KvStore, key: &str, value: &str) {
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })),
        };
        store.apply(&op).expect("put");
    }

    /// (revision, key) of every event in the responses.
    fn events_of(responses: &[WatchResponse]) -> Vec<(i64, String)> {
        responses
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                (
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                )
            })
            .collect()
    }

    /// Drains the channel, then runs catch-up steps until the stream needs none (or the channel
    /// is full again); returns what was drained.
    fn drain_and_catch_up(
        hub: &WatchHub,
        stream: u64,
        tx: &mpsc::Sender<Outgoing>,
        rx: &mut mpsc::Receiver<Outgoing>,
        store: &KvStore,
    ) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        loop {
            while let Ok(outgoing) = rx.try_recv() {
                out.push(outgoing.response);
            }
            if !hub.needs_catch_up(stream) {
                return out;
            }
            let permit = tx.try_reserve().expect("the channel was just drained");
            hub.catch_up(stream, permit, store, 3);
        }
    }

    #[test]
    fn a_slow_watcher_falls_behind_without_blocking_and_catches_up_without_gap_or_duplicate() {
        let hub = Arc::new(WatchHub::new(1, 2));
        let mut store = KvStore::with_history_revisions(0);
        let sink: Arc<dyn EventSink> = hub.clone();
        store.set_event_sink(Some(sink));
        // Room for two responses only: the third revision finds the channel full.
        let (tx, mut rx) = mpsc::channel(2);
        let stream = hub.open_stream(tx.clone(), Arc::new(Notify::new()));
        let create = WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..WatchCreateRequest::default()
        };
        let id = hub
            .create(stream, &create, store.revision())
            .expect("create");
        assert!(drain_and_catch_up(&hub, stream, &tx, &mut rx, &store).is_empty());
        assert!(hub.wants_events(), "the watcher is synced");

        // Ten puts while nobody reads: the apply loop never waits; two fit, the rest wait in
        // history. A key outside the range is no event.
        for i in 0..10 {
            put(&mut store, &format!("k{i}"), "v");
            put(&mut store, "zzz", "outside");
        }
        assert!(!hub.wants_events(), "the watcher fell behind");
        assert!(hub.needs_catch_up(stream));
        let mut responses = drain_and_catch_up(&hub, stream, &tx, &mut rx, &store);
        // More writes arrive while it catches up; then it is live again.
        put(&mut store, "k10", "v");
        responses.extend(drain_and_catch_up(&hub, stream, &tx, &mut rx, &store));
        put(&mut store, "k11", "v");
        responses.extend(drain_and_catch_up(&hub, stream, &tx, &mut rx, &store));
        assert!(hub.wants_events(), "synced again");
        let expected: Vec<(i64, String)> = (0..10)
            .map(|i| (2 + 2 * i, format!("k{i}")))
            .chain([(22, "k10".into()), (23, "k11".into())])
            .collect();
        assert_eq!(events_of(&responses), expected);
        assert!(responses.iter().all(|r| r.watch_id == id && !r.canceled));

        // Behind again, and the history it needs is compacted meanwhile: cancelled with the
        // compaction revision, and gone.
        for i in 0..5 {
            put(&mut store, &format!("k{i}"), "again");
        }
        let seen = drain(&mut rx);
        assert_eq!(seen.len(), 2);
        let current = store.revision();
        store.compact(current).expect("compact");
        let rest = drain_and_catch_up(&hub, stream, &tx, &mut rx, &store);
        let last = rest.last().expect("a cancel");
        assert!(last.canceled, "{last:?}");
        assert_eq!(last.compact_revision, current);
        assert_eq!(last.watch_id, id);
        assert!(!hub.needs_catch_up(stream));
        hub.close_stream(stream);
        assert!(!hub.wants_events());
    }

    fn drain(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        while let Ok(outgoing) = rx.try_recv() {
            out.push(outgoing.response);
        }
        out
    }

    #[test]
    fn a_large_response_is_split_into_fragments_of_whole_events() {
        let event = |i: u8| Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: vec![b'k', i],
                value: vec![i; 100],
                ..KeyValue::default()
            }),
            prev_kv: None,
        };
        let response = WatchResponse {
            watch_id: 3,
            events: (0..5).map(event).collect(),
            ..WatchResponse::default()
        };
        let pieces = fragments(response.clone(), 250);
        assert!(pieces.len() >= 3, "{}", pieces.len());
        let flags: Vec<bool> = pieces.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        assert!(pieces
            .iter()
            .all(|p| p.encoded_len() < 250 || p.events.len() == 1));
        let joined: Vec<Event> = pieces.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(joined, response.events);
        // Under the limit, or a single event: one response, unmarked.
        assert_eq!(fragments(response.clone(), 1 << 20).len(), 1);
        let single = WatchResponse {
            events: vec![event(9)],
            ..WatchResponse::default()
        };
        assert_eq!(fragments(single, 10).len(), 1);
    }
}

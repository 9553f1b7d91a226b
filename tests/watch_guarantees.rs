//! etcd's watch guarantees (etcd's `api_guarantees` page) checked on watch streams recorded while
//! the leader is killed (SIGKILL, then restarted) a few times under a write workload.
//!
//! ```text
//!   writer ──Put/DeleteRange/Txn──▶ any member (moves on after an error)
//!   watcher A, B, C ──Watch "w/"──▶ member 1, 2, 3 first; when a stream breaks, the next member,
//!                                   from start_revision = last seen revision + 1
//!   chaos: every ~1.5 s SIGKILL the leader, restart it ~0.7 s later
//! ```
//! Checked per watcher, against the writer's acknowledged writes and against each other:
//! - ordered: revisions strictly increase from one response to the next (events of one
//!   revision stay together), and never go down inside a response;
//! - unique: no (revision, key) twice;
//! - reliable: every acknowledged write under "w/" appears, with its value; and all watchers
//!   saw exactly the same event sequence (they all started at revision 2, before any write);
//! - atomic: the two keys of an acknowledged Txn arrive in one response;
//! - resumable: the reconnects above (a break loses and repeats nothing: unique + reliable);
//! - bookmarkable: after a progress response at R, no event of revision <= R arrives.
//!
//! Every random choice comes from one seed, printed at the start: `WATCH_SEED=<seed>` repeats
//! the workload and the kill schedule (not the machine's timing).

mod process_cluster;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process_cluster::{channel, Cluster, Settings};
use rust_raft_log::etcdpb::etcdserverpb::{
    kv_client::KvClient, request_op::Request as Op, watch_client::WatchClient,
    watch_request::RequestUnion, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use rust_raft_log::etcdpb::mvccpb::event::EventType;

const RUN: Duration = Duration::from_secs(12);
const KILLS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A stream that says nothing this long (progress notifications come every 200 ms) is dead.
const STREAM_SILENCE_MAX: Duration = Duration::from_secs(3);
const PREFIX: &str = "w/";

/// SplitMix64: every random choice of the test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An acknowledged write: its revision and what it did to keys under the prefix.
#[derive(Clone, Debug)]
struct Acked {
    revision: i64,
    /// (key, Some(value)) for a put, (key, None) for a delete; only keys under the prefix.
    changes: Vec<(String, Option<String>)>,
}

/// What a watcher saw: each response's events (revision, key, PUT value or None) or a progress
/// bookmark, in arrival order, plus which member served it.
#[derive(Clone, Debug)]
enum Seen {
    Events {
        member: u32,
        events: Vec<(i64, String, Option<String>)>,
    },
    Progress {
        member: u32,
        revision: i64,
    },
    Reconnect {
        member: u32,
        start_revision: i64,
    },
}

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })),
    }
}

async fn writer(
    addrs: Vec<SocketAddr>,
    seed: u64,
    stop: Arc<Mutex<bool>>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut rng = Rng(seed ^ 0x5752_4954_4552);
    let mut member = 0usize;
    let mut n = 0u64;
    while !*stop.lock().expect("lock") {
        n += 1;
        let mut client = KvClient::new(channel(addrs[member % addrs.len()]));
        let key = format!("{PREFIX}{}", rng.below(6));
        let value = format!("v{n}");
        let choice = rng.below(10);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if choice < 6 {
                let response = client
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: value.clone().into(),
                        ..PutRequest::default()
                    })
                    .await?
                    .into_inner();
                let revision = response.header.map_or(0, |h| h.revision);
                Ok::<_, tonic::Status>(Some(Acked {
                    revision,
                    changes: vec![(key.clone(), Some(value.clone()))],
                }))
            } else if choice < 7 {
                // Outside the prefix: no watcher may see it.
                client
                    .put(PutRequest {
                        key: format!("x/{n}").into(),
                        value: value.clone().into(),
                        ..PutRequest::default()
                    })
                    .await?;
                Ok(None)
            } else if choice < 8 {
                let response = client
                    .delete_range(DeleteRangeRequest {
                        key: key.clone().into(),
                        ..DeleteRangeRequest::default()
                    })
                    .await?
                    .into_inner();
                Ok((response.deleted == 1).then(|| Acked {
                    revision: response.header.map_or(0, |h| h.revision),
                    changes: vec![(key.clone(), None)],
                }))
            } else {
                // Two keys under the prefix and one outside in one revision.
                let other = format!("{PREFIX}t{}", rng.below(3));
                let response = client
                    .txn(TxnRequest {
                        compare: Vec::new(),
                        success: vec![put(&key, &value), put("x/txn", &value), put(&other, &value)],
                        failure: Vec::new(),
                    })
                    .await?
                    .into_inner();
                Ok(Some(Acked {
                    revision: response.header.map_or(0, |h| h.revision),
                    changes: vec![
                        (key.clone(), Some(value.clone())),
                        (other, Some(value.clone())),
                    ],
                }))
            }
        })
        .await;
        match outcome {
            Ok(Ok(Some(write))) => acked.lock().expect("lock").push(write),
            Ok(Ok(None)) => {}
            // Unknown outcome or refused: try another member; the write may or may not exist.
            _ => member += 1,
        }
    }
}

async fn watcher(
    addrs: Vec<SocketAddr>,
    ids: Vec<u32>,
    first: usize,
    done_at: Arc<Mutex<Option<i64>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut member = first;
    // The first revision not seen yet: events and bookmarks both move it.
    let mut next_revision = 2i64;
    loop {
        if let Some(done) = *done_at.lock().expect("lock") {
            if next_revision > done {
                return;
            }
        }
        let index = member % addrs.len();
        member += 1;
        seen.lock().expect("lock").push(Seen::Reconnect {
            member: ids[index],
            start_revision: next_revision,
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: PREFIX.into(),
                range_end: b"w0".to_vec(),
                start_revision: next_revision,
                progress_notify: true,
                ..WatchCreateRequest::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let mut client = WatchClient::new(channel(addrs[index]));
        let call = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let Ok(Ok(stream)) = call else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut asked_progress = Instant::now();
        loop {
            if asked_progress.elapsed() > Duration::from_millis(500) {
                // Stream-wide progress requests too (watch_id -1 answers).
                let progress = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                let _ = tx.try_send(progress);
                asked_progress = Instant::now();
            }
            let message = tokio::time::timeout(STREAM_SILENCE_MAX, stream.message()).await;
            let Ok(Ok(Some(response))) = message else {
                break; // broken, ended or silent: resume elsewhere
            };
            if response.canceled {
                panic!("watcher cancelled: {response:?}");
            }
            if response.created {
                continue;
            }
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            if response.events.is_empty() {
                seen.lock().expect("lock").push(Seen::Progress {
                    member: ids[index],
                    revision,
                });
                next_revision = next_revision.max(revision + 1);
            } else {
                let events: Vec<(i64, String, Option<String>)> = response
                    .events
                    .iter()
                    .map(|event| {
                        let kv = event.kv.clone().unwrap_or_default();
                        let key = String::from_utf8_lossy(&kv.key).into_owned();
                        let value = (event.r#type == EventType::Put as i32)
                            .then(|| String::from_utf8_lossy(&kv.value).into_owned());
                        (kv.mod_revision, key, value)
                    })
                    .collect();
                let last = events.iter().map(|e| e.0).max().unwrap_or(0);
                next_revision = next_revision.max(last + 1);
                seen.lock().expect("lock").push(Seen::Events {
                    member: ids[index],
                    events,
                });
            }
            if let Some(done) = *done_at.lock().expect("lock") {
                if next_revision > done {
                    return;
                }
            }
        }
    }
}

/// The six guarantees for one watcher's record; returns its event sequence.
fn check(
    name: &str,
    seen: &[Seen],
    acked: &[Acked],
    done: i64,
) -> Vec<(i64, String, Option<String>)> {
    let mut sequence: Vec<(i64, String, Option<String>)> = Vec::new();
    let mut bookmark = 1i64;
    let mut response_of: BTreeMap<(i64, String), usize> = BTreeMap::new();
    let mut unique = HashSet::new();
    let mut stream_last = 0i64;
    for (index, item) in seen.iter().enumerate() {
        match item {
            // A new stream may be served by a member that has applied less than the last one:
            // its progress revisions may be lower than events already seen elsewhere.
            Seen::Reconnect { .. } => stream_last = 0,
            Seen::Progress { member, revision } => {
                bookmark = bookmark.max(*revision);
                assert!(
                    stream_last <= *revision,
                    "{name}: progress at {revision} from member {member} after its event at \
                     {stream_last}"
                );
            }
            Seen::Events { member, events } => {
                let mut previous = sequence.last().map_or(0, |e| e.0);
                let first = events[0].0;
                assert!(
                    first > previous,
                    "{name} (ordered): a response from member {member} starts at {first} after \
                     revision {previous}: {events:?}"
                );
                assert!(
                    first > bookmark,
                    "{name} (bookmarkable): event at {first} from member {member} after a \
                     progress notification at {bookmark}"
                );
                for event in events {
                    assert!(event.0 >= previous, "{name} (ordered): {events:?}");
                    previous = event.0;
                    assert!(
                        event.1.starts_with(PREFIX),
                        "{name}: a key outside the watched range: {event:?}"
                    );
                    assert!(
                        unique.insert((event.0, event.1.clone())),
                        "{name} (unique): {event:?} twice"
                    );
                    response_of.insert((event.0, event.1.clone()), index);
                }
                stream_last = previous;
                sequence.extend(events.iter().cloned());
            }
        }
    }
    for write in acked.iter().filter(|w| w.revision <= done) {
        let mut responses = HashSet::new();
        for (key, value) in &write.changes {
            let found = sequence
                .iter()
                .find(|e| e.0 == write.revision && &e.1 == key)
                .unwrap_or_else(|| {
                    panic!("{name} (reliable): acknowledged {write:?} is missing ({key})")
                });
            assert_eq!(&found.2, value, "{name}: {write:?}");
            responses.insert(response_of[&(write.revision, key.clone())]);
        }
        assert_eq!(
            responses.len(),
            1,
            "{name} (atomic): the events of {write:?} came in several responses"
        );
    }
    sequence
}

#[test]
fn watch_streams_keep_etcds_guarantees_while_leaders_are_killed() {
    let seed = std::env::var("WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("watch guarantee test: reproduce the workload with WATCH_SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        extra: "  watch_progress_notify_interval: 200\n".into(),
        ..Settings::default()
    };
    let mut cluster = Cluster::start(dir.path(), 3, settings);
    // The clients run on their own thread and runtime; this thread drives the chaos.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(cluster.wait_for_leader(Duration::from_secs(20)));
    let ids = cluster.ids();
    let addrs: Vec<SocketAddr> = ids.iter().map(|id| cluster.addrs[id]).collect();

    let stop = Arc::new(Mutex::new(false));
    let writer_done = Arc::new(Mutex::new(false));
    let done_at = Arc::new(Mutex::new(None));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let records: Vec<Arc<Mutex<Vec<Seen>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let clients = {
        let (addrs, ids, stop, writer_done) = (
            addrs.clone(),
            ids.clone(),
            stop.clone(),
            writer_done.clone(),
        );
        let (done_at, acked, records) = (done_at.clone(), acked.clone(), records.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let watchers: Vec<_> = records
                    .iter()
                    .enumerate()
                    .map(|(first, record)| {
                        tokio::spawn(watcher(
                            addrs.clone(),
                            ids.clone(),
                            first,
                            done_at.clone(),
                            record.clone(),
                        ))
                    })
                    .collect();
                writer(addrs.clone(), seed, stop, acked).await;
                *writer_done.lock().expect("lock") = true;
                for task in watchers {
                    tokio::time::timeout(Duration::from_secs(60), task)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("a watcher did not catch up (WATCH_SEED={seed})")
                        })
                        .expect("watcher task");
                }
            });
        })
    };

    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = Vec::new();
    while kills.len() < KILLS && started.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        let leader = rt
            .block_on(cluster.wait_for_leader(Duration::from_secs(20)))
            .node_id
            .0;
        cluster.kill(leader);
        kills.push(leader);
        std::thread::sleep(Duration::from_millis(400 + rng.below(600)));
        cluster.spawn(leader);
    }
    while started.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(100));
    }
    *stop.lock().expect("lock") = true;
    while !*writer_done.lock().expect("lock") {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Everything acknowledged is at or below the revision a linearizable read sees now.
    let leader = rt
        .block_on(cluster.wait_for_leader(Duration::from_secs(20)))
        .node_id
        .0;
    let done = rt.block_on(async {
        let mut client = KvClient::new(channel(cluster.addrs[&leader]));
        client
            .range(RangeRequest {
                key: b"w/".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .expect("final read")
            .into_inner()
            .header
            .expect("header")
            .revision
    });
    *done_at.lock().expect("lock") = Some(done);
    if clients.join().is_err() {
        panic!(
            "the client thread failed (WATCH_SEED={seed}); {}",
            cluster.describe()
        );
    }

    let acked = acked.lock().expect("lock").clone();
    let mut sequences = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let seen = record.lock().expect("lock").clone();
        let streams: Vec<(u32, i64)> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Reconnect {
                    member,
                    start_revision,
                } => Some((*member, *start_revision)),
                _ => None,
            })
            .collect();
        let progress = seen
            .iter()
            .filter(|s| matches!(s, Seen::Progress { .. }))
            .count();
        let name = format!("watcher {i} (WATCH_SEED={seed})");
        let sequence = check(&name, &seen, &acked, done);
        println!(
            "watcher {i}: {} events, {progress} progress responses, streams (member, \
             start_revision): {streams:?}",
            sequence.len()
        );
        sequences.push(sequence);
    }
    for (i, sequence) in sequences.iter().enumerate().skip(1) {
        assert_eq!(
            sequence, &sequences[0],
            "watchers 0 and {i} saw different histories (WATCH_SEED={seed})"
        );
    }
    println!(
        "kills of the leader: {kills:?}; {} acknowledged writes under {PREFIX}, final revision \
         {done}",
        acked.len()
    );
    assert_eq!(kills.len(), KILLS);
    assert!(acked.len() > 100, "too few writes to mean anything");
}

//! What one store operation costs, to compare with the node's per-request budget (the store runs
//! on the node's single event-loop thread, so its cost adds to every request's latency).
//!
//! Ignored by default (timing, not correctness). Run:
//! `cargo test --release --lib kv::cost_tests -- --ignored --nocapture`
//! It prints, for each operation, the median and max of 5 rounds of the mean time per operation,
//! next to a baseline measured in the same run: a plain `BTreeMap<Vec<u8>, Vec<u8>>` doing the
//! same insert or lookup (what any ordered in-memory map pays). The workload is the side-by-side
//! benchmark's: 8-byte keys, 256-byte values, 100,000 keys.
//!
//! Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a machine shared
//! with other builds and tests, the time the thread spends descheduled would otherwise land in
//! whichever round it happened in. (Caches and memory bandwidth are still shared.)

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::testing::thread_cpu_ns;

use super::{encode_command, EventSink, KvStore};
use crate::etcdpb::etcdserverpb::{request_op::Request, PutRequest, RangeRequest, RequestOp};
use crate::etcdpb::mvccpb::Event;
use crate::state_machine::StateMachine;
use crate::types::{EntryType, LogEntry, LogIndex, Term};

const KEYS: u64 = 100_000;

/// A sink that wants every revision's events and drops them (the cost of building them).
struct TakesEverything;

impl EventSink for TakesEverything {
    fn wants_events(&self) -> bool {
        true
    }
    fn committed(&self, _revision: i64, events: Vec<Event>) {
        std::hint::black_box(events);
    }
    fn replaced(&self, _revision: i64) {}
}
const OPS_PER_ROUND: u64 = 200_000;
const ROUNDS: usize = 5;

fn key(i: u64) -> Vec<u8> {
    // A multiplicative hash spreads consecutive i over the key space (no sequential-insert luck).
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS)
        .to_be_bytes()
        .to_vec()
}

fn put(i: u64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key(i),
            value: vec![i as u8; 256],
            ..PutRequest::default()
        })),
    }
}

/// Prints the median and max of the rounds; returns the median.
fn report(name: &str, mut per_op_ns: Vec<f64>) -> f64 {
    per_op_ns.sort_by(f64::total_cmp);
    let median = per_op_ns[per_op_ns.len() / 2];
    println!(
        "{name:<44} median {median:>7.0} ns/op   max {:>7.0} ns/op   ({ROUNDS} rounds of {OPS_PER_ROUND})",
        per_op_ns[per_op_ns.len() - 1]
    );
    median
}

fn timed(mut op: impl FnMut(u64)) -> f64 {
    let start = thread_cpu_ns();
    for i in 0..OPS_PER_ROUND {
        op(i);
    }
    (thread_cpu_ns() - start) as f64 / OPS_PER_ROUND as f64
}

#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn cost_of_store_operations() {
    let mut baseline: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..KEYS {
        baseline.insert(key(i), vec![i as u8; 256]);
    }
    let mut rounds = Vec::new();
    for round in 0..ROUNDS as u64 {
        rounds.push(timed(|i| {
            let i = i + round * OPS_PER_ROUND;
            baseline.insert(key(i), vec![i as u8; 256]);
        }));
    }
    let insert_baseline = report("baseline: BTreeMap insert", rounds);
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(timed(|i| {
            let value = baseline.get(&key(i)).cloned();
            assert!(value.is_some());
        }));
    }
    let get_baseline = report("baseline: BTreeMap get + clone value", rounds);
    drop(baseline);

    let mut store = KvStore::new();
    for i in 0..KEYS {
        store.apply(&put(i)).expect("put");
    }
    let mut rounds = Vec::new();
    for round in 0..ROUNDS as u64 {
        rounds.push(timed(|i| {
            store.apply(&put(i + round * OPS_PER_ROUND)).expect("put");
        }));
    }
    let put_median = report("KvStore::apply(put), history 100k revisions", rounds);
    println!(
        "  = {:.1}x the baseline insert",
        put_median / insert_baseline
    );

    let mut rounds = Vec::new();
    let mut index = 0u64;
    for round in 0..ROUNDS as u64 {
        rounds.push(timed(|i| {
            index += 1;
            let entry = LogEntry {
                term: Term(1),
                index: LogIndex(index),
                entry_type: EntryType::Normal,
                payload: encode_command(&put(i + round * OPS_PER_ROUND)),
            };
            let response = StateMachine::apply(&mut store, &entry);
            assert!(response.is_ok());
        }));
    }
    report("encode + StateMachine::apply(put entry)", rounds);

    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(timed(|i| {
            let request = RangeRequest {
                key: key(i),
                ..RangeRequest::default()
            };
            let response = store.range(&request).expect("range");
            assert_eq!(response.kvs.len(), 1);
        }));
    }
    let range_median = report("KvStore::range(single key)", rounds);
    println!("  = {:.1}x the baseline get", range_median / get_baseline);

    // Puts while a snapshot view is alive: each write copies the map nodes on its path that the
    // view still shares (copy on write). A new view every 1,000 puts makes nearly every put the
    // first one in its leaf since the view (the most a put can pay); one view held over a whole
    // round of 200,000 puts (a snapshot being written meanwhile) spreads the copies over it. The
    // views are dropped after the round, untimed: the node drops a view on the thread that wrote
    // it out, and dropping frees the nodes the store no longer shares.
    for (name, every) in [
        ("KvStore::apply(put), a new view every 1,000", 1_000),
        ("KvStore::apply(put), one view per round", OPS_PER_ROUND),
    ] {
        let mut rounds = Vec::new();
        for round in 0..ROUNDS as u64 {
            let mut views = Vec::new();
            rounds.push(timed(|i| {
                if i % every == 0 {
                    views.push(store.snapshot_view());
                }
                store.apply(&put(i + round * OPS_PER_ROUND)).expect("put");
            }));
            drop(views);
        }
        let median = report(name, rounds);
        println!("  = {:.2}x the put without a view", median / put_median);
    }
    // The watch hook in commit (src/kv/events.rs): with the node's hub attached and nobody
    // watching, a commit pays one atomic load; with a sink that takes every event, it also builds
    // the revision's events (key, value and previous value copied). Rounds without and with the
    // idle hub alternate, so that drift on a shared machine hits both alike.
    let hub: Arc<dyn EventSink> = Arc::new(crate::etcd::watch::WatchHub::new(1, 1));
    let mut without = Vec::new();
    let mut idle = Vec::new();
    for round in 0..ROUNDS as u64 {
        store.set_event_sink(None);
        without.push(timed(|i| {
            store.apply(&put(i + round * OPS_PER_ROUND)).expect("put");
        }));
        store.set_event_sink(Some(Arc::clone(&hub)));
        idle.push(timed(|i| {
            store.apply(&put(i + round * OPS_PER_ROUND)).expect("put");
        }));
    }
    let without = report("KvStore::apply(put), no event sink", without);
    let idle = report("KvStore::apply(put), watch hub, nobody watches", idle);
    println!("  = {:.3}x the put without a sink", idle / without);
    store.set_event_sink(Some(Arc::new(TakesEverything)));
    let mut rounds = Vec::new();
    for round in 0..ROUNDS as u64 {
        rounds.push(timed(|i| {
            store.apply(&put(i + round * OPS_PER_ROUND)).expect("put");
        }));
    }
    let taking = report("KvStore::apply(put), a sink takes every event", rounds);
    println!("  = {:.2}x the put without a sink", taking / without);
    store.set_event_sink(None);

    // Writing a snapshot payload (what the snapshot thread spends CPU on before its fdatasync):
    // the whole store serialized with its CRC into a sink, beside a baseline that copies the
    // same number of bytes from one buffer into another freshly allocated one (mostly the page
    // faults of the fresh pages: `cost_of_snapshot_payload` below also prints a copy into pages
    // already written, which is memory bandwidth alone).
    let payload = payload_costs(&store, ROUNDS);
    let (payload_bytes, serialize, copy) = (payload.bytes, payload.serialize, payload.fresh);
    println!(
        "snapshot payload of the whole store: {payload_bytes} bytes, median {:.1} ms CPU \
         ({:.0} MB/s); copying as many bytes: {:.1} ms; = {:.1}x the copy",
        serialize / 1e6,
        payload_bytes as f64 / (serialize / 1e9) / 1e6,
        copy / 1e6,
        serialize / copy
    );

    println!(
        "store: revision {}, {} keys, size_bytes {}",
        store.revision(),
        KEYS,
        store.size_bytes()
    );
}

/// Medians over `rounds` of the thread CPU time (ns) to serialize `store`'s snapshot payload into
/// a sink, and of copying as many bytes into fresh pages and again into those written pages.
struct PayloadCosts {
    bytes: u64,
    serialize: f64,
    fresh: f64,
    touched: f64,
}

fn payload_costs(store: &KvStore, rounds: usize) -> PayloadCosts {
    let view = store.snapshot_view();
    let mut bytes = 0;
    let (mut serialize, mut fresh, mut touched) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = thread_cpu_ns();
        bytes = view.write_to(&mut std::io::sink()).expect("sink");
        serialize.push((thread_cpu_ns() - start) as f64);
        let from = vec![7u8; bytes as usize];
        let mut to = vec![0u8; bytes as usize];
        for into in [&mut fresh, &mut touched] {
            let start = thread_cpu_ns();
            to.copy_from_slice(&from);
            std::hint::black_box(&to);
            into.push((thread_cpu_ns() - start) as f64);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    PayloadCosts {
        bytes,
        serialize: median(serialize),
        fresh: median(fresh),
        touched: median(touched),
    }
}

/// The snapshot serializer alone, on the store the test above ends with (100,000 keys and
/// 100,000 revisions of history: about 58.6 MB of payload), so that it can be profiled and
/// compared between builds without the minute of puts around it:
/// `cargo test --release --lib kv::cost_tests::cost_of_snapshot_payload -- --ignored --nocapture`
///
/// Two baselines from the same run: copying as many bytes into a fresh buffer (whose pages the
/// kernel supplies during the copy: what the test above prints) and into a buffer already
/// written once (memory bandwidth alone). The serializer writes into a sink through its own
/// 64 KiB buffer, so it pays for neither page faults nor the bandwidth of its output.
#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn cost_of_snapshot_payload() {
    const PAYLOAD_ROUNDS: usize = 9;
    let mut store = KvStore::new();
    for i in 0..KEYS + 2 * super::store::HISTORY_REVISIONS_DEFAULT as u64 {
        store.apply(&put(i)).expect("put");
    }
    let payload = payload_costs(&store, PAYLOAD_ROUNDS);
    let payload_bytes = payload.bytes;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // One CRC-32C pass over as many bytes (hot in the cache or not: what a writer pays per pass).
    let bytes = vec![7u8; payload_bytes as usize];
    let mut crc_pass = Vec::new();
    for _ in 0..PAYLOAD_ROUNDS {
        let start = thread_cpu_ns();
        std::hint::black_box(crc32c::crc32c(&bytes));
        crc_pass.push((thread_cpu_ns() - start) as f64);
    }
    println!(
        "one CRC-32C pass over {payload_bytes} bytes: median {:.1} ms CPU",
        median(crc_pass) / 1e6
    );
    let (serialize, fresh, touched) = (payload.serialize, payload.fresh, payload.touched);
    println!(
        "snapshot payload: {payload_bytes} bytes, median of {PAYLOAD_ROUNDS}: {:.1} ms CPU \
         ({:.0} MB/s); copy into fresh pages {:.1} ms ({:.2}x), into written pages {:.1} ms \
         ({:.2}x)",
        serialize / 1e6,
        payload_bytes as f64 / (serialize / 1e9) / 1e6,
        fresh / 1e6,
        serialize / fresh,
        touched / 1e6,
        serialize / touched
    );
}

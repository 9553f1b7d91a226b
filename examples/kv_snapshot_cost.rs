//! `cargo run --release --example kv_snapshot_cost [-- <large key count>]`: what a snapshot of the
//! key-value store costs, and whom.
//!
//! For a store of 10,000 keys and one of 1,000,000 (or the count given), 8-byte keys and 256-byte
//! values (the side-by-side benchmark's shape), it prints:
//! 1. `KvStore::snapshot_view`, the only part the node's event loop pays: p50 and max of 1,001
//!    calls, in ns. It should not grow with the store.
//! 2. Encoding: `KvSnapshotView::write_to` into `io::sink()` and into a file in `$SNAPSHOT_DIR`
//!    (default: the temp dir; page cache, no fsync), in MB/s of payload.
//! 3. Restoring: `KvStore::restore_from` from memory and from that (unbuffered) file, in MB/s.
//! 4. `hash_kv(0)` time.
//! 5. Puts on this thread while another thread writes a view of the store into the sink (the node's
//!    situation), against the same puts with no snapshot running: latency percentiles per put
//!    (HdrHistogram, µs) and the writer's elapsed time. On a machine with fewer free cores than
//!    two the threads also compete for a core, and the figures show it.
//!
//! Times are wall-clock (`Instant`); the puts' thread CPU time is printed beside their wall time,
//! so a put that waited (descheduled, or blocked in the kernel) shows as a wall max without a CPU
//! max. The allocator is mimalloc, as in the node binary.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rust_raft_log::etcdpb::etcdserverpb::{request_op::Request, PutRequest, RequestOp};
use rust_raft_log::kv::KvStore;
use rust_raft_log::testing::thread_cpu_ns;

/// As in the node binary (`src/main.rs`): the store allocates per write.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE_BYTES: usize = 256;
const VIEW_CALLS: usize = 1_001;
const CONCURRENT_PUTS: u64 = 200_000;

fn put(key: u64, value_byte: u8) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.to_be_bytes().to_vec(),
            value: vec![value_byte; VALUE_BYTES],
            ..PutRequest::default()
        })),
    }
}

/// Spreads consecutive `i` over `0..keys` (no sequential-insert luck).
fn spread(i: u64, keys: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys
}

fn build(keys: u64) -> KvStore {
    let mut store = KvStore::new();
    for i in 0..keys {
        store.apply(&put(i, i as u8)).expect("put");
    }
    store
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn view_cost(store: &KvStore) {
    let mut ns = Vec::with_capacity(VIEW_CALLS);
    for _ in 0..VIEW_CALLS {
        let start = Instant::now();
        let view = store.snapshot_view();
        ns.push(start.elapsed().as_nanos() as u64);
        drop(view);
    }
    ns.sort_unstable();
    println!(
        "  snapshot_view: p50 {} ns, max {} ns ({VIEW_CALLS} calls)",
        ns[ns.len() / 2],
        ns[ns.len() - 1]
    );
}

fn encode_and_restore(store: &KvStore, dir: &std::path::Path) -> io::Result<()> {
    let view = store.snapshot_view();
    let start = Instant::now();
    let bytes = view.write_to(&mut io::sink())?;
    let elapsed = start.elapsed();
    println!(
        "  write_to(sink): {:.1} MB in {:.3} s = {:.0} MB/s",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        mb_per_s(bytes, elapsed)
    );
    let path: PathBuf = dir.join(format!("kv_snapshot_cost.{}.snap", std::process::id()));
    let start = Instant::now();
    let mut file = File::create(&path)?;
    let written = view.write_to(&mut file)?;
    drop(file);
    let elapsed = start.elapsed();
    println!(
        "  write_to(file, page cache): {:.3} s = {:.0} MB/s",
        elapsed.as_secs_f64(),
        mb_per_s(written, elapsed)
    );
    let mut in_memory = Vec::with_capacity(written as usize);
    view.write_to(&mut in_memory)?;
    // Each restore builds a whole store; the first one also takes fresh pages from the kernel,
    // so the memory restore runs first and last.
    let mut restored = None;
    for (source, label) in [
        (0, "restore_from(memory)"),
        (1, "restore_from(file, page cache)"),
        (2, "restore_from(BufReader<file>)"),
        (0, "restore_from(memory), again"),
    ] {
        drop(restored.take());
        let start = Instant::now();
        let store = match source {
            0 => KvStore::restore_from(&mut in_memory.as_slice()),
            1 => KvStore::restore_from(&mut File::open(&path)?),
            _ => KvStore::restore_from(&mut BufReader::new(File::open(&path)?)),
        }
        .expect("restore");
        let elapsed = start.elapsed();
        println!(
            "  {label}: {:.3} s = {:.0} MB/s",
            elapsed.as_secs_f64(),
            mb_per_s(written, elapsed)
        );
        assert_eq!(store.revision(), view.revision());
        restored = Some(store);
    }
    drop(in_memory);
    let restored = restored.expect("restored");
    std::fs::remove_file(&path)?;
    let start = Instant::now();
    let hash = restored.hash_kv(0).expect("hash");
    println!(
        "  hash_kv(0): {:.3} s (hash {:#010x} at revision {})",
        start.elapsed().as_secs_f64(),
        hash.hash,
        hash.revision
    );
    assert_eq!(store.hash_kv(0), Ok(hash));
    Ok(())
}

/// Times `CONCURRENT_PUTS` puts, one by one; with `snapshot`, a thread writes a view taken just
/// before the first put into `io::sink()` meanwhile (and drops it there, as the node would).
fn puts_during_snapshot(store: &mut KvStore, keys: u64, snapshot: bool) {
    let writer = snapshot.then(|| {
        let view = store.snapshot_view();
        thread::spawn(move || {
            let start = Instant::now();
            let bytes = view.write_to(&mut io::sink()).expect("write");
            drop(view);
            (bytes, start.elapsed())
        })
    });
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let mut cpu_ns = Histogram::<u64>::new(3).expect("histogram");
    let mut during = 0u64;
    let start = Instant::now();
    for i in 0..CONCURRENT_PUTS {
        let op = put(spread(i, keys), (i % 251) as u8);
        let put_start = Instant::now();
        let cpu_start = thread_cpu_ns();
        store.apply(&op).expect("put");
        let cpu = thread_cpu_ns() - cpu_start;
        latency_ns
            .record(put_start.elapsed().as_nanos() as u64)
            .expect("record");
        cpu_ns.record(cpu).expect("record");
        if writer.as_ref().is_some_and(|writer| !writer.is_finished()) {
            during += 1;
        }
    }
    let elapsed = start.elapsed();
    let label = if snapshot {
        "puts while a thread writes a snapshot"
    } else {
        "puts, no snapshot"
    };
    let us = |histogram: &Histogram<u64>| {
        format!(
            "p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1}",
            histogram.value_at_quantile(0.5) as f64 / 1e3,
            histogram.value_at_quantile(0.99) as f64 / 1e3,
            histogram.value_at_quantile(0.999) as f64 / 1e3,
            histogram.max() as f64 / 1e3,
        )
    };
    println!(
        "  {label}: {CONCURRENT_PUTS} in {:.3} s; per put µs wall {}; cpu {}",
        elapsed.as_secs_f64(),
        us(&latency_ns),
        us(&cpu_ns),
    );
    if let Some(writer) = writer {
        let (bytes, written_in) = writer.join().expect("writer thread");
        println!(
            "    the writer: {:.1} MB in {:.3} s; {during} of the puts ran while it wrote",
            bytes as f64 / 1e6,
            written_in.as_secs_f64()
        );
    }
}

fn main() -> io::Result<()> {
    let large: u64 = match std::env::args().nth(1) {
        Some(arg) => match arg.parse() {
            Ok(count) => count,
            Err(_) => {
                eprintln!(
                    "usage: cargo run --release --example kv_snapshot_cost [-- <large key count>]\n\
                     (the one argument is a number of keys; got {arg:?})"
                );
                std::process::exit(2);
            }
        },
        None => 1_000_000,
    };
    let dir = std::env::var_os("SNAPSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    for keys in [10_000, large] {
        let start = Instant::now();
        let mut store = build(keys);
        println!(
            "{keys} keys, {VALUE_BYTES}-byte values (built in {:.1} s; size_bytes {})",
            start.elapsed().as_secs_f64(),
            store.size_bytes()
        );
        view_cost(&store);
        encode_and_restore(&store, &dir)?;
        // Baseline and snapshot runs alternate so that outside load hits both alike.
        for snapshot in [false, true, false, true] {
            puts_during_snapshot(&mut store, keys, snapshot);
        }
    }
    Ok(())
}

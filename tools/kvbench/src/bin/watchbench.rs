//! `watchbench`: watch fan-out. Many watchers on one prefix, puts at a fixed rate under it;
//! how late each event reaches each watcher, and what the servers pay per delivered event.
//!
//! In one run against a cluster (`--endpoints`; the leader found with Maintenance.Status):
//! 1. Opens `--streams` Watch streams, spread round-robin over the members (`--watch-on all`, as
//!    clients balancing over the endpoints would) or over the followers only
//!    (`--watch-on followers`), and creates `--watchers` watchers on the prefix, evenly spread
//!    over the streams; waits until every one is created.
//! 2. Puts at `--put-rate`/s (open loop, to the leader; [`kvbench::paced`]) for a warm-up of
//!    `--warmup` seconds (not recorded), then for `--seconds`. Each put's key carries its
//!    sequence number, and the moment it was acknowledged is logged by that number.
//! 3. Waits until every watcher has received every measured put's event (or `--drain` seconds).
//!
//! Delivery latency = event received at a watcher - its put acknowledged to the putter (0 when
//! the event arrived first, which a watcher on the leader can see; counted in `early`). CPU per
//! event = user+system of `--pids` (/proc) from the first measured put to the end of the drain,
//! divided by the events delivered for the measured puts; CPU per put = the same CPU divided by
//! the measured puts (with few watchers, what the puts alone cost). `missing` = watchers × measured puts -
//! delivered: must be 0. Prints a summary and a `watchbench-result key=value ...` line
//! (`benches/compare_watch.sh`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kvbench::load::{connect, find_leader};
use kvbench::paced::{
    cpu_us, endpoint_url, main_with, parse_pids, puts, seq_of_key, AckLog, PutLoad,
};
use kvbench::report::{latency_histogram, Percentiles};
use rust_raft_log::etcdpb::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
    WatchCreateRequest, WatchRequest,
};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WatchOn {
    /// Streams round-robin over every member (leader included).
    All,
    /// Streams round-robin over the followers.
    Followers,
}

#[derive(Parser, Debug)]
#[command(about = "Watch fan-out: event delivery latency and server CPU per delivered event")]
struct Args {
    /// Comma-separated endpoints (http://host:port or host:port).
    #[arg(long)]
    endpoints: String,
    /// Comma-separated server pids whose CPU is measured.
    #[arg(long, default_value = "")]
    pids: String,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Where the watch streams connect.
    #[arg(long, value_enum, default_value_t = WatchOn::All)]
    watch_on: WatchOn,
    /// Puts per second (open loop).
    #[arg(long, default_value_t = 1000)]
    put_rate: u64,
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Warm-up (not recorded), seconds.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Measured puts, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Longest wait for the last events after the last put, seconds.
    #[arg(long, default_value_t = 20)]
    drain: u64,
}

const PREFIX: &[u8] = b"wb/";

/// What every stream's reader shares with the main task.
struct Shared {
    acks: Arc<AckLog>,
    /// Events of puts with a sequence number from here on are measured (u64::MAX: none yet).
    measure_from: AtomicU64,
    created: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicBool,
}

/// One stream's measurements (locked only by its reader, and by main at the end).
struct StreamStats {
    hist: Histogram<u64>,
    /// Events that arrived before their put's acknowledgement was logged: (seq, received).
    pending: Vec<(u64, Instant)>,
}

async fn watch_stream(
    channel: Channel,
    watchers: usize,
    shared: Arc<Shared>,
    stats: Arc<Mutex<StreamStats>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(watchers.max(1));
    let mut range_end = PREFIX.to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    // The creates go in before the call is awaited: grpc-go sends the response headers with its
    // first answer, and the call does not return before the headers.
    for _ in 0..watchers {
        let create = WatchCreateRequest {
            key: PREFIX.to_vec(),
            range_end: range_end.clone(),
            ..WatchCreateRequest::default()
        };
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        if tx.send(request).await.is_err() {
            return;
        }
    }
    let mut client = WatchClient::new(channel);
    let mut responses = match client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            eprintln!("watch stream refused: {status}");
            shared.failed.store(true, Ordering::Relaxed);
            return;
        }
    };
    loop {
        match responses.message().await {
            Ok(Some(answer)) => {
                let received = Instant::now();
                if answer.created {
                    shared.created.fetch_add(1, Ordering::Relaxed);
                }
                if answer.canceled {
                    eprintln!(
                        "watcher {} cancelled: {} (compact revision {})",
                        answer.watch_id, answer.cancel_reason, answer.compact_revision
                    );
                    shared.failed.store(true, Ordering::Relaxed);
                }
                let from = shared.measure_from.load(Ordering::Relaxed);
                let mut measured = 0;
                let Ok(mut stats) = stats.lock() else {
                    return;
                };
                for event in &answer.events {
                    let Some(seq) = event.kv.as_ref().and_then(|kv| seq_of_key(PREFIX, &kv.key))
                    else {
                        continue;
                    };
                    if seq < from {
                        continue;
                    }
                    measured += 1;
                    match shared.acks.get(seq) {
                        Some(ack) => {
                            let us = received.saturating_duration_since(ack).as_micros() as u64;
                            let _ = stats.hist.record(us.max(1));
                        }
                        None => stats.pending.push((seq, received)),
                    }
                }
                drop(stats);
                if measured > 0 {
                    shared.delivered.fetch_add(measured, Ordering::Relaxed);
                }
            }
            Ok(None) => return,
            Err(status) => {
                eprintln!("watch stream failed: {status}");
                shared.failed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let endpoints: Vec<String> = args.endpoints.split(',').map(endpoint_url).collect();
    let pids = parse_pids(&args.pids)?;
    let timeout = Duration::from_secs(5);
    let leader = find_leader(&endpoints, Duration::from_secs(30), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let watch_targets: Vec<String> = match args.watch_on {
        WatchOn::All => endpoints.clone(),
        WatchOn::Followers => endpoints
            .iter()
            .filter(|e| **e != leader.endpoint)
            .cloned()
            .collect(),
    };
    if watch_targets.is_empty() {
        return Err("no endpoint to watch on".into());
    }
    println!(
        "leader: {}; watch streams on: {}",
        leader.endpoint,
        watch_targets.join(", ")
    );
    let put_channel = connect(&leader.endpoint, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let kv = KvClient::new(put_channel);

    let total_puts = (args.put_rate * (args.warmup + args.seconds + 1)) as usize;
    let acks = Arc::new(AckLog::new(total_puts));
    let shared = Arc::new(Shared {
        acks: Arc::clone(&acks),
        measure_from: AtomicU64::new(u64::MAX),
        created: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });

    // 1. The watchers, one connection per stream (as separate clients would have).
    let streams = args.streams.max(1);
    let mut all_stats = Vec::new();
    let mut readers = Vec::new();
    for s in 0..streams {
        let watchers = args.watchers / streams + usize::from(s < args.watchers % streams);
        let channel = connect(&watch_targets[s % watch_targets.len()], timeout)
            .await
            .map_err(|e| e.to_string())?;
        let stats = Arc::new(Mutex::new(StreamStats {
            hist: latency_histogram(),
            pending: Vec::new(),
        }));
        all_stats.push(Arc::clone(&stats));
        readers.push(tokio::spawn(watch_stream(
            channel,
            watchers,
            Arc::clone(&shared),
            stats,
        )));
    }
    let created_by = Instant::now() + Duration::from_secs(30);
    while shared.created.load(Ordering::Relaxed) < args.watchers as u64 {
        if Instant::now() > created_by || shared.failed.load(Ordering::Relaxed) {
            return Err(format!(
                "only {} of {} watchers created",
                shared.created.load(Ordering::Relaxed),
                args.watchers
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{} watchers created over {streams} streams", args.watchers);

    // 2. Warm-up, then the measured puts.
    let load = PutLoad::new(
        std::str::from_utf8(PREFIX).unwrap_or("wb/"),
        0,
        args.value_size,
        Some(acks),
    );
    puts(
        kv.clone(),
        args.put_rate,
        Duration::from_secs(args.warmup),
        Arc::clone(&load),
    )
    .await;
    load.reset_stats();
    let first = load.next_seq();
    shared.measure_from.store(first, Ordering::Relaxed);
    let cpu_before = cpu_us(&pids);
    let wall = Instant::now();
    puts(
        kv.clone(),
        args.put_rate,
        Duration::from_secs(args.seconds),
        Arc::clone(&load),
    )
    .await;
    let put_secs = wall.elapsed().as_secs_f64();
    let measured_puts = load.next_seq() - first;
    let put_errors = load.errors.load(Ordering::Relaxed);
    let acked_puts = measured_puts - put_errors;

    // 3. Drain.
    let expected = acked_puts * args.watchers as u64;
    let drain_by = Instant::now() + Duration::from_secs(args.drain);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = cpu_us(&pids) - cpu_before;
    let elapsed = wall.elapsed().as_secs_f64();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }

    let mut hist = latency_histogram();
    let mut early = 0u64;
    for stats in &all_stats {
        let Ok(stats) = stats.lock() else { continue };
        let _ = hist.add(&stats.hist);
        for (seq, received) in &stats.pending {
            let us = shared.acks.get(*seq).map_or(0, |ack| {
                received.saturating_duration_since(ack).as_micros() as u64
            });
            early += 1;
            let _ = hist.record(us.max(1));
        }
    }
    let latency = Percentiles::of(&hist);
    let (put, _) = load.percentiles();
    let cpu_per_event = if delivered > 0 {
        cpu as f64 / delivered as f64
    } else {
        0.0
    };
    // The same CPU per measured put: with few watchers it is the cost of the puts themselves
    // (consensus, durable writes, the put RPC), the baseline the fan-out adds to.
    let cpu_per_put = if measured_puts > 0 {
        cpu as f64 / measured_puts as f64
    } else {
        0.0
    };
    let missing = expected.saturating_sub(delivered);
    let failed = shared.failed.load(Ordering::Relaxed);
    println!(
        "{measured_puts} puts in {put_secs:.1} s (p99 {} µs, {put_errors} errors); {delivered} events \
         delivered to {} watchers ({missing} missing, {early} before the put's ack) in {elapsed:.1} s",
        put.p99_us, args.watchers
    );
    println!(
        "delivery latency p50 {} µs, p99 {} µs, max {} µs; servers {:.0} ms CPU, {cpu_per_event:.2} µs per event",
        latency.p50_us,
        latency.p99_us,
        latency.max_us,
        cpu as f64 / 1000.0
    );
    println!(
        "watchbench-result watchers={} streams={streams} puts={measured_puts} events={delivered} \
         missing={missing} early={early} p50_us={} p99_us={} max_us={} cpu_us={cpu} \
         cpu_us_per_event={cpu_per_event:.3} cpu_us_per_put={cpu_per_put:.1} seconds={elapsed:.2} \
         put_p99_us={} put_errors={put_errors} stream_failures={}",
        args.watchers,
        latency.p50_us,
        latency.p99_us,
        latency.max_us,
        put.p99_us,
        u8::from(failed)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with(run(Args::parse()))
}

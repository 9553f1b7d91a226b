//! `leasebench`: the cost of keeping many etcd leases alive, and what it does to puts.
//!
//! Against the leader of a cluster (found with Maintenance.Status, as kvbench does), in one run:
//! 1. **Baseline:** puts at a fixed rate (`--put-rate`, open loop: latency from each put's due
//!    time, so a stall is not hidden) for `--seconds`, nothing else; the servers' CPU (user+system
//!    of `--pids`, from /proc) over that window.
//! 2. Grants `--leases` leases of `--ttl` seconds (64 at a time).
//! 3. **Keep-alive:** the same puts, plus every lease refreshed every `ttl/3` seconds (etcd's
//!    client library's period), evenly spread over `--streams` LeaseKeepAlive streams; after a
//!    warm-up of one period, `--seconds` are measured.
//!
//! 4. The same puts alone again, once the keep-alive streams are closed.
//!
//! CPU per keep-alive = (CPU/s of phase 3 - mean CPU/s of phases 1 and 4) / keep-alives answered
//! per second in phase 3, so the puts' own cost is taken out (and a drift over the run cancels). An answer with TTL 0 means a lease was lost: counted in
//! `lost`, which must stay 0. Prints a human summary and one `leasebench-result key=value ...`
//! line for scripts (`benches/compare_leases.sh`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvbench::load::{connect, find_leader};
use kvbench::paced::{cpu_us, endpoint_url, main_with, parse_pids, puts, PutLoad};
use rust_raft_log::etcdpb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Keep many etcd leases alive; measure server CPU per keep-alive and put latency")]
struct Args {
    /// Comma-separated endpoints (http://host:port or host:port); the leader is used.
    #[arg(long)]
    endpoints: String,
    /// Comma-separated server pids whose CPU is measured.
    #[arg(long, default_value = "")]
    pids: String,
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    /// Lease TTL in seconds; each lease is refreshed every ttl/3 s.
    #[arg(long, default_value_t = 30)]
    ttl: i64,
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Puts per second in both phases.
    #[arg(long, default_value_t = 200)]
    put_rate: u64,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

struct KeepAliveCounts {
    answered: AtomicU64,
    lost: AtomicU64,
    failed: AtomicU64,
    /// Counting starts once this is set (after the warm-up).
    measuring: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}

/// One keep-alive stream: sends the IDs of `ids` in turn, each once per `period`, and counts the
/// answers.
async fn keep_alive_stream(
    channel: Channel,
    ids: Vec<i64>,
    period: Duration,
    counts: Arc<KeepAliveCounts>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1024);
    // The first request goes in before the call is awaited: etcd (grpc-go) sends the response
    // headers with its first answer, and the call does not return before the headers.
    let Some(first) = ids.first() else {
        return;
    };
    if tx.send(LeaseKeepAliveRequest { id: *first }).await.is_err() {
        return;
    }
    let mut client = LeaseClient::new(channel);
    let mut responses = match client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            eprintln!("keep-alive stream refused: {status}");
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let reader_counts = Arc::clone(&counts);
    let reader = tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(answer)) => {
                    if reader_counts.measuring.load(Ordering::Relaxed) {
                        reader_counts.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    if answer.ttl <= 0 {
                        reader_counts.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    if !reader_counts.stop.load(Ordering::Relaxed) {
                        eprintln!("keep-alive stream failed: {status}");
                        reader_counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
    let gap = period / u32::try_from(ids.len().max(1)).unwrap_or(u32::MAX);
    let mut due = tokio::time::Instant::now() + gap;
    'outer: loop {
        for id in ids.iter().skip(1).chain(ids.first()) {
            if counts.stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            tokio::time::sleep_until(due).await;
            if tx.send(LeaseKeepAliveRequest { id: *id }).await.is_err() {
                break 'outer;
            }
            due += gap;
        }
    }
    drop(tx);
    let _ = reader.await;
}

/// The puts of both phases: 1,000 keys under `lb/`, 256-byte values.
fn new_put_load() -> Arc<PutLoad> {
    PutLoad::new("lb/", 1000, 256, None)
}

async fn run(args: Args) -> Result<(), String> {
    let endpoints: Vec<String> = args.endpoints.split(',').map(endpoint_url).collect();
    let pids = parse_pids(&args.pids)?;
    let timeout = Duration::from_secs(5);
    let leader = find_leader(&endpoints, Duration::from_secs(30), timeout)
        .await
        .map_err(|e| e.to_string())?;
    println!("leader: {}", leader.endpoint);
    let channel = connect(&leader.endpoint, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let lease_channel = connect(&leader.endpoint, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let length = Duration::from_secs(args.seconds);
    let kv = KvClient::new(channel.clone());

    // Warm-up (not recorded): a cluster that just elected its leader is still connecting.
    puts(
        kv.clone(),
        args.put_rate,
        Duration::from_secs(3),
        new_put_load(),
    )
    .await;

    // 1. Baseline: puts alone.
    let baseline = new_put_load();
    let cpu_before = cpu_us(&pids);
    let wall = Instant::now();
    puts(kv.clone(), args.put_rate, length, Arc::clone(&baseline)).await;
    let baseline_cpu_us = cpu_us(&pids) - cpu_before;
    let baseline_secs = wall.elapsed().as_secs_f64();

    // 2. Grant the leases, 64 at a time.
    let granted = Instant::now();
    let mut ids = Vec::with_capacity(args.leases);
    for chunk in (0..args.leases).collect::<Vec<_>>().chunks(64) {
        let mut grants = Vec::new();
        for _ in chunk {
            let mut client = LeaseClient::new(lease_channel.clone());
            let ttl = args.ttl;
            grants.push(tokio::spawn(async move {
                client.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await
            }));
        }
        for grant in grants {
            let answer = grant
                .await
                .map_err(|e| e.to_string())?
                .map_err(|s| format!("lease grant failed: {s}"))?;
            ids.push(answer.into_inner().id);
        }
    }
    println!(
        "granted {} leases of {} s in {:.1} s",
        ids.len(),
        args.ttl,
        granted.elapsed().as_secs_f64()
    );

    // 3. Keep-alives and puts.
    let period = Duration::from_secs_f64(args.ttl as f64 / 3.0);
    let counts = Arc::new(KeepAliveCounts {
        answered: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        measuring: std::sync::atomic::AtomicBool::new(false),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let streams = args.streams.max(1);
    let per_stream = ids.len().div_ceil(streams);
    let mut keepers = Vec::new();
    for share in ids.chunks(per_stream.max(1)) {
        keepers.push(tokio::spawn(keep_alive_stream(
            lease_channel.clone(),
            share.to_vec(),
            period,
            Arc::clone(&counts),
        )));
    }
    tokio::time::sleep(period).await; // warm-up: one full round of keep-alives
    let loaded = new_put_load();
    counts.measuring.store(true, Ordering::Relaxed);
    let cpu_before = cpu_us(&pids);
    let wall = Instant::now();
    puts(kv.clone(), args.put_rate, length, Arc::clone(&loaded)).await;
    let loaded_cpu_us = cpu_us(&pids) - cpu_before;
    let loaded_secs = wall.elapsed().as_secs_f64();
    counts.measuring.store(false, Ordering::Relaxed);
    let answered = counts.answered.load(Ordering::Relaxed);
    counts.stop.store(true, Ordering::Relaxed);
    for keeper in keepers {
        keeper.abort();
    }

    // 4. Puts alone again: the baseline CPU is the mean of the windows before and after, so a
    //    drift of the servers' own cost (or of the machine's other load) over the run does not
    //    land on the keep-alives. One window alone gave negative costs on a shared machine.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = new_put_load();
    let cpu_before = cpu_us(&pids);
    let wall = Instant::now();
    puts(kv.clone(), args.put_rate, length, Arc::clone(&after)).await;
    let after_cpu_us = cpu_us(&pids) - cpu_before;
    let after_secs = wall.elapsed().as_secs_f64();

    let (base, base_n) = baseline.percentiles();
    let (load, load_n) = loaded.percentiles();
    // CPU per second in each phase, so the two windows' slightly different lengths cancel.
    let before_rate = baseline_cpu_us as f64 / baseline_secs;
    let after_rate = after_cpu_us as f64 / after_secs;
    let base_rate = (before_rate + after_rate) / 2.0;
    let load_rate = loaded_cpu_us as f64 / loaded_secs;
    let keepalives_per_sec = answered as f64 / loaded_secs;
    let cpu_per_keepalive = if keepalives_per_sec > 0.0 {
        (load_rate - base_rate) / keepalives_per_sec
    } else {
        0.0
    };
    println!(
        "baseline: {base_n} puts, p50 {} µs, p99 {} µs, max {} µs, servers {before_rate:.0} µs \
         CPU/s before the keep-alives, {after_rate:.0} after (mean {base_rate:.0})",
        base.p50_us, base.p99_us, base.max_us
    );
    println!(
        "with keep-alives: {answered} keep-alives ({keepalives_per_sec:.0}/s), {load_n} puts, \
         p50 {} µs, p99 {} µs, max {} µs, servers {:.0} µs CPU/s; {:.1} µs CPU per keep-alive",
        load.p50_us, load.p99_us, load.max_us, load_rate, cpu_per_keepalive
    );
    let lost = counts.lost.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let put_errors = baseline.errors.load(Ordering::Relaxed)
        + loaded.errors.load(Ordering::Relaxed)
        + after.errors.load(Ordering::Relaxed);
    println!(
        "leasebench-result leases={} keepalives={answered} keepalives_per_sec={keepalives_per_sec:.1} \
         cpu_us_per_keepalive={cpu_per_keepalive:.2} base_put_p50_us={} base_put_p99_us={} \
         put_p50_us={} put_p99_us={} put_max_us={} base_cpu_us_per_sec={base_rate:.0} \
         base_cpu_us_per_sec_before={before_rate:.0} base_cpu_us_per_sec_after={after_rate:.0} \
         cpu_us_per_sec={load_rate:.0} lost={lost} stream_failures={failed} put_errors={put_errors}",
        ids.len(),
        base.p50_us,
        base.p99_us,
        load.p50_us,
        load.p99_us,
        load.max_us
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with(run(Args::parse()))
}

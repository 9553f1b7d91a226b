//! `chaos`: one run of the chaos runner (see the crate docs and README's "Chaos runs").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use chaos::cluster::Flavor;
use chaos::faults::FaultKind;
use chaos::report;
use chaos::run::{self, RunPlan};
use chaos::workload::WorkloadPlan;

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "Real processes, real faults, a linearizability verdict (rust-raft-log or etcd)",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which server: rust-raft-log or etcd.
    #[arg(long, default_value = "rust-raft-log")]
    flavor: String,
    /// The server binary (default: rust-raft-log next to this program, or `etcd` on PATH).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Members (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Dormant slots beyond --nodes: an address and a data directory each, not started and not
    /// in the config file, for the `grow` fault to add members into (rust-raft-log only).
    #[arg(long, default_value_t = 0)]
    spare: u32,
    /// Concurrent clients (one request in flight each).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Keys the clients share.
    #[arg(long, default_value_t = 8)]
    keys: u32,
    /// Length of the faulty phase, seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds between fault beginnings.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Seconds each fault lasts (down, paused or partitioned).
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// Comma-separated faults, applied in turn: kill-leader, kill-random, kill-minority, kill-all,
    /// pause-leader, partition, one-way-from-leader, isolate-leader; or `all` (those eight).
    /// Storage faults, named on their own (each puts the data directories on its own file
    /// system): power-loss (lossyfs; needs root and /dev/fuse) or disk-full (a tmpfs per node;
    /// needs root), combinable with the eight but not with each other. Planned, named on its
    /// own: restart-leader (SIGTERM, the node hands leadership over and exits; restarted when the
    /// fault ends), to compare with kill-leader (`write_pause_*` in the result line).
    /// Membership, named on their own (rust-raft-log only): replace-member (remove a random node
    /// through the Cluster API, wipe it, add a fresh member as a learner at its address, start
    /// it with --join, promote it once in sync); grow (the same learner-then-promote on a
    /// dormant --spare slot: one more voter); shrink (remove the leader, or on every second
    /// shrink a random follower, never below --nodes; it must exit by itself with status 78;
    /// its slot becomes dormant). E.g. grow,grow,replace-member,shrink,shrink --spare 2.
    #[arg(long, default_value = "kill-leader")]
    faults: String,
    /// Seed of the workload and the fault targets (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Client-side deadline per request, seconds.
    #[arg(long, default_value_t = 5.0)]
    request_timeout: f64,
    /// Where the nodes' data, their output and the history go (default: a new directory in /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run on 127.0.0.1 without network namespaces (no partitions).
    #[arg(long)]
    loopback: bool,
    /// Watch streams on the workload's key prefix, checked against etcd's watch guarantees
    /// (0: none).
    #[arg(long, default_value_t = 3)]
    watchers: u32,
    /// Extra `cluster_settings` lines for rust-raft-log (e.g. "  snapshot_entries: 2000\n").
    #[arg(long, default_value = "")]
    settings: String,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check a saved history (a run's history.jsonl) again; exit 0 if linearizable, 1 if not,
    /// 3 if the search ran out of budget, 2 if the file cannot be read.
    Check {
        file: PathBuf,
        /// Configurations each key's search may explore (about 64 bytes each).
        #[arg(long, default_value_t = chaos::checker::Limits::default().states_max)]
        states_max: u64,
        /// The run's watches.jsonl: also check the watch guarantees against the history (the
        /// final revision is the highest the history's answers carry); exit 1 on an anomaly.
        #[arg(long)]
        watches: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Check {
        file,
        states_max,
        watches,
    }) = &args.command
    {
        return check_file(file, *states_max, watches.as_deref());
    }
    match plan(&args) {
        Ok(plan) => execute(plan),
        Err(message) => {
            eprintln!("chaos: {message}");
            ExitCode::from(2)
        }
    }
}

fn plan(args: &Args) -> Result<RunPlan, String> {
    let faults: Vec<FaultKind> = if args.faults == "all" {
        FaultKind::ALL.to_vec()
    } else if args.faults.is_empty() || args.faults == "none" {
        Vec::new()
    } else {
        args.faults
            .split(',')
            .map(|name| {
                FaultKind::parse(name.trim()).ok_or_else(|| format!("unknown fault {name:?}"))
            })
            .collect::<Result<_, _>>()?
    };
    chaos::faults::disk_model_for(&faults)?;
    if !(1..=9).contains(&args.nodes) {
        return Err(format!("--nodes {} (1 to 9)", args.nodes));
    }
    if args.spare > 9 {
        return Err(format!("--spare {} (0 to 9)", args.spare));
    }
    if args.clients == 0 || args.keys == 0 {
        return Err("--clients and --keys must be at least 1".into());
    }
    let seconds = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!("--{name} {v}: a positive number of seconds"))
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let flavor = match args.flavor.as_str() {
        "rust-raft-log" => Flavor::RustRaftLog {
            binary: match &args.binary {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .map_err(|e| format!("cannot find this program: {e}"))?
                    .with_file_name("rust-raft-log"),
            },
            extra: settings(args, &faults),
        },
        "etcd" => Flavor::Etcd {
            binary: args.binary.clone().unwrap_or_else(|| PathBuf::from("etcd")),
        },
        other => return Err(format!("--flavor {other:?}: rust-raft-log or etcd")),
    };
    let namespaces = !args.loopback;
    if namespaces && !run::namespaces_available() {
        return Err(
            "network namespaces need root, `ip` and `nft` (apt nftables); use --loopback \
             without partition faults"
                .into(),
        );
    }
    Ok(RunPlan {
        flavor,
        nodes: args.nodes,
        workload: WorkloadPlan {
            clients: args.clients,
            keys: args.keys,
            request_timeout: seconds("request-timeout", args.request_timeout)?,
            seed,
        },
        duration: Duration::from_secs(args.duration),
        interval: seconds("interval", args.interval)?,
        hold: seconds("hold", args.hold)?,
        faults,
        dir: args.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("chaos-{seed}-{}", std::process::id()))
        }),
        namespaces,
        watchers: args.watchers,
        spare: args.spare,
    })
}

/// The extra `cluster_settings` lines: `--settings`, plus, for a disk-full run that does not set
/// it, 256 KiB log segments, so that the open segment runs out within a fault's hold and the
/// node really refuses writes (with 64 MiB segments a full disk is only felt minutes later).
fn settings(args: &Args, faults: &[FaultKind]) -> String {
    let mut extra = args.settings.replace("\\n", "\n");
    if faults.contains(&FaultKind::DiskFull) && !extra.contains("log_segment_size") {
        if !extra.is_empty() && !extra.ends_with('\n') {
            extra.push('\n');
        }
        extra.push_str("  log_segment_size: 262144\n");
    }
    extra
}

fn check_file(
    file: &std::path::Path,
    states_max: u64,
    watches: Option<&std::path::Path>,
) -> ExitCode {
    let history = match report::load_history(file) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("chaos check: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let limits = chaos::checker::Limits {
        states_max,
        ..chaos::checker::Limits::default()
    };
    let verdict = chaos::checker::check_with(&history, limits);
    println!("checker: {verdict}");
    if let Some(path) = watches {
        let records = match report::load_watches(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("chaos check: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let final_revision = history.iter().filter_map(|o| o.revision).max().unwrap_or(0);
        let watch = chaos::checker::watch::check(&history, &records, final_revision);
        println!("watch checker: {watch}");
        if !watch.passed() {
            println!("watches: {}", path.display());
            return ExitCode::from(1);
        }
    }
    if verdict.is_linearizable() {
        ExitCode::SUCCESS
    } else if verdict.is_violation() {
        // The seed is in the run's directory name (chaos-SEED-PID) and its chaos-result line.
        println!("history: {}", file.display());
        ExitCode::from(1)
    } else {
        ExitCode::from(3)
    }
}

fn execute(plan: RunPlan) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "chaos: seed {} | {} x{} | {} clients, {} keys | {} s, a fault every {:?} for {:?}: {} | {}",
        plan.workload.seed,
        plan.flavor.name(),
        plan.nodes,
        plan.workload.clients,
        plan.workload.keys,
        plan.duration.as_secs(),
        plan.interval,
        plan.hold,
        plan.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        plan.dir.display()
    );
    match runtime.block_on(run::run(plan)) {
        Ok(report) => {
            print!("{}", report::render(&report));
            if let Err(e) = report::save_history(&report) {
                eprintln!("chaos: cannot save the history: {e}");
            }
            if let Err(e) = report::save_watches(&report) {
                eprintln!("chaos: cannot save the watch records: {e}");
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::from(2)
        }
    }
}

//! The `kvbench` binary: parse and validate the flags, run on a tokio multi-thread runtime.
//! Exit codes: 0 the run completed (failed requests are counted in its output), 1 the run could
//! not be made (no connection, no leader, histogram not written) or, in probe mode
//! (`--wait-revision`), the endpoint did not serve the revision in time, 2 bad arguments.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use kvbench::args::Args;

fn main() -> ExitCode {
    // Like any command-line tool, stop quietly when the reader of stdout goes away
    // (`kvbench ... | head`) instead of panicking on EPIPE. Rust ignores SIGPIPE by default.
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    let clock_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let plan = match args.plan(clock_seed) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = plan.threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if plan.wait_revision.is_some() {
        return if runtime.block_on(kvbench::wait(plan)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match runtime.block_on(kvbench::run(plan)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

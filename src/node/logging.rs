//! Tracing setup for the binary.
//!
//! Output goes to stdout (the seed's startup lines are ordinary output; `Error: ...` lines for
//! failed startups go to stderr from `main`). The filter comes from `RUST_LOG`, default `info`, so
//! heartbeat and vote chatter (logged at debug) stays out of the default output;
//! `RUST_LOG=debug` shows it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init_tracing() {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((spec, e.to_string()))),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only for a terminal: node_<id>.out files and test captures stay plain.
        .with_ansi(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stdout)
        .try_init()
        .is_ok();
    if let (true, Some((spec, error))) = (installed, bad_filter) {
        // A typo in RUST_LOG must not silently hide output: say what happened.
        tracing::warn!(%spec, %error, "RUST_LOG is not a valid filter; using {DEFAULT_FILTER:?}");
    }
}

//! How long the checker takes on a generated linearizable history (default: 100,000 operations,
//! 8 clients, 8 keys, 5% of writes indeterminate, about one request in flight per key), and on
//! the same history with one stale read planted near its end.
//!
//! `cargo run --release -p chaos --example checker_bench -- [OPERATIONS] [SEED] [INDET_PER_MILLE]`

use std::time::Instant;

use chaos::checker::{self, synth};
use chaos::history::{Call, Ret};

fn main() {
    let mut args = std::env::args().skip(1);
    let operations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000usize);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(1u64);
    let mut shape = synth::Shape::bench(operations, seed);
    if let Some(per_mille) = args.next().and_then(|a| a.parse().ok()) {
        shape.indeterminate_per_mille = per_mille;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let made = Instant::now();
    let mut history = synth::linearizable(&shape);
    println!(
        "generated {} operations (seed {seed}) in {:.3} s; {cores} cores",
        history.len(),
        made.elapsed().as_secs_f64()
    );
    let verdict = checker::check(&history);
    println!("linearizable history: {verdict}");
    // For comparing other checkers on the same input: the history as a run saves it.
    if let Some(path) = std::env::var_os("CHECKER_BENCH_SAVE") {
        let lines: Vec<String> = history
            .iter()
            .filter_map(|o| serde_json::to_string(o).ok())
            .collect();
        if let Err(e) = std::fs::write(&path, lines.join("\n") + "\n") {
            eprintln!("cannot save the history: {e}");
        }
    }

    // Plant a stale read: the last read of key 0 returns the first value ever written to it.
    let first = history.iter().find_map(|o| match (o.key, o.call, o.ret) {
        (0, Call::Put(v), Some(Ret::Put)) => Some(v),
        _ => None,
    });
    let last_read = history
        .iter()
        .rposition(|o| o.key == 0 && o.call == Call::Get && o.ret.is_some());
    if let (Some(v), Some(i)) = (first, last_read) {
        history[i].ret = Some(Ret::Get(Some(v)));
        let verdict = checker::check(&history);
        println!("with a stale read planted: {verdict}");
    }
}

#!/usr/bin/env bash
# Single-proposer commit latency of several node builds, interleaved in one session, so that a
# noisy shared machine disturbs every build alike (compare medians across rounds, not one run).
#
# Usage: tools/propose_ab.sh ROUNDS NAME=/path/to/rust-raft-log [NAME=/path ...]
# Example (before/after a change):
#   git stash; cargo build --release; cp target/release/rust-raft-log /tmp/before; git stash pop
#   cargo build --release; cp target/release/rust-raft-log /tmp/after
#   tools/propose_ab.sh 5 before=/tmp/before after=/tmp/after
#
# Each round runs `cargo bench --bench propose` in quick mode with one proposer against a fresh
# 3-node cluster of each build (RAFT_NODE_BIN, see tests/process_cluster/mod.rs) and prints one
# line per build: commit p50 (µs), the same run's raw 4 KiB write + fdatasync p50 (appending, one
# writer and three at once), the paired measurement (commit p50, raw p50, ratio), the Status round
# trip p50 and the 1-minute load average. At the end:
# the median commit p50 of each build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
shift
cargo bench --bench propose --no-run >/dev/null 2>&1
bench=$(ls -t target/release/deps/propose-* | grep -v '\.d$' | head -1)
declare -A results
for round in $(seq "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*}
        bin=${spec#*=}
        out=$(RAFT_NODE_BIN=$bin BENCH_QUICK=1 BENCH_ONLY=throughput BENCH_PROPOSERS=1 "$bench" --bench 2>&1)
        p50=$(grep -oE 'single proposer commit p50 [0-9]+' <<<"$out" | awk '{print $5}')
        base=$(grep -oE 'appending p50 [0-9]+' <<<"$out" | head -1 | awk '{print $3}')
        par=$(grep -oE 'appending p50 [0-9]+' <<<"$out" | tail -1 | awk '{print $3}')
        status=$(grep -oE 'no disk\): p50 [0-9]+' <<<"$out" | awk '{print $4}')
        paired=$(grep -oE 'commit p50 [0-9]+ µs \(p90 [0-9]+, [0-9]+ proposals\), raw p50 [0-9]+ µs \(p90 [0-9]+\): [0-9.]+x' <<<"$out" | awk '{print "commit " $3 " µs, raw " $11 " µs: " $15}')
        echo "round $round $name: commit p50 ${p50:-?} µs; raw fdatasync p50 ${base:-?} µs (3 writers ${par:-?}); paired ${paired:-?}; Status RTT p50 ${status:-?} µs; load $(cut -d' ' -f1 /proc/loadavg)"
        results[$name]="${results[$name]:-} ${p50:-}"
    done
done
for spec in "$@"; do
    name=${spec%%=*}
    median=$(tr ' ' '\n' <<<"${results[$name]}" | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
    echo "$name: median commit p50 over $rounds rounds: $median µs (rounds:${results[$name]})"
done

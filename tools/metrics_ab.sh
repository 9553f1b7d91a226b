#!/usr/bin/env bash
# Propose throughput with metrics on vs off, interleaved in one session, so that a noisy shared
# machine disturbs both alike (compare medians across rounds, not one run).
#
# Usage: tools/metrics_ab.sh ROUNDS [PROPOSERS]      (default PROPOSERS: 16)
#
# Each round runs `cargo bench --bench propose` in quick mode (BENCH_ONLY=throughput, the stream
# transport, PROPOSERS concurrent proposers) against a fresh 3-node cluster twice: once with
# BENCH_METRICS=0 (no metrics listener: nothing recorded) and once with BENCH_METRICS=1 (every
# node records and serves /metrics; nobody scrapes, so this is the recording cost alone). The
# order alternates between rounds. At the end: each side's median committed/s and p50, and the
# ratio of the medians (on / off).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
proposers=${2:-16}
cargo bench --bench propose --no-run >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
bench=$(ls -t "$target"/release/deps/propose-* | grep -v '\.d$' | head -1)
declare -A rates p50s
for round in $(seq "$rounds"); do
    if ((round % 2)); then order="0 1"; else order="1 0"; fi
    for m in $order; do
        out=$(BENCH_METRICS=$m BENCH_QUICK=1 BENCH_ONLY=throughput BENCH_PROPOSERS=$proposers \
            BENCH_TRANSPORT=stream "$bench" --bench 2>&1)
        line=$(grep -E "^\| $proposers \| ProposeStream \|" <<<"$out" | head -1 || true)
        rate=$(awk -F'|' '{gsub(/ /,"",$4); print $4}' <<<"$line")
        p50=$(awk -F'|' '{gsub(/ /,"",$5); print $5}' <<<"$line")
        name=$([[ $m == 1 ]] && echo on || echo off)
        echo "round $round metrics $name: ${rate:-?} committed/s, p50 ${p50:-?} µs; load $(cut -d' ' -f1 /proc/loadavg)"
        # A run that committed nothing (an election storm on an overloaded machine) measures the
        # machine, not the metrics: reported above, left out of the medians.
        if [[ -n "$rate" && "$rate" != 0 ]]; then
            rates[$name]="${rates[$name]:-} $rate"
            p50s[$name]="${p50s[$name]:-} ${p50:-}"
        fi
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for name in off on; do
    echo "metrics $name: median $(median "${rates[$name]}") committed/s (rounds:${rates[$name]}), median p50 $(median "${p50s[$name]}") µs"
done
awk -v on="$(median "${rates[on]}")" -v off="$(median "${rates[off]}")" \
    'BEGIN { printf "ratio of medians, on / off: %.3f\n", on / off }'

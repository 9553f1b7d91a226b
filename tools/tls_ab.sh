#!/usr/bin/env bash
# Propose throughput with TLS (BENCH_TLS=1) and in plaintext, interleaved in one session, so that
# a noisy shared machine disturbs both alike: each round runs `cargo bench --bench propose` in
# quick mode (throughput only) once per mode, against a fresh 3-node cluster each time.
#
# Usage: tools/tls_ab.sh ROUNDS [PROPOSER_COUNTS]   (default counts: 1,16,128)
# Prints one line per round, mode and row (proposers, client RPC, committed/s, p50 µs), then per
# row the median committed/s of each mode and the ratio of medians (TLS / plaintext).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
counts=${2:-1,16,128}
cargo bench --bench propose --no-run >/dev/null 2>&1
bench=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/propose-* | grep -v '\.d$' | head -1)
declare -A rates
rows=()
for round in $(seq "$rounds"); do
    for mode in plain tls; do
        flag=0
        [ "$mode" = tls ] && flag=1
        out=$(BENCH_TLS=$flag BENCH_QUICK=1 BENCH_ONLY=throughput BENCH_PROPOSERS=$counts "$bench" --bench 2>&1)
        grep -q "transport: $([ $flag = 1 ] && echo TLS || echo plaintext)" <<<"$out" || { echo "$out"; exit 1; }
        # Table rows: | proposers | client RPC | committed/s | p50 | ...
        while IFS='|' read -r _ n rpc rate p50 _; do
            n=$(xargs <<<"$n"); rpc=$(xargs <<<"$rpc"); rate=$(xargs <<<"$rate"); p50=$(xargs <<<"$p50")
            key="$n $rpc"
            [[ " ${rows[*]:-} " == *" $n/$rpc "* ]] || rows+=("$n/$rpc")
            rates["$mode|$key"]="${rates["$mode|$key"]:-} $rate"
            echo "round $round $mode: $n proposers, $rpc: $rate committed/s, p50 $p50 µs; load $(cut -d' ' -f1 /proc/loadavg)"
        done < <(grep -E '^\| [0-9]+ \| Propose' <<<"$out")
    done
done
# A row with 0 committed/s is a run whose proposers failed (seen under heavy outside load):
# left out of the median, and counted.
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | grep -v '^0$' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
failed() { tr ' ' '\n' <<<"$1" | grep -c '^0$' || true; }
echo
echo "| proposers | client RPC | plaintext committed/s (median) | TLS committed/s (median) | TLS / plaintext | failed runs (plain, TLS) |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    n=${row%%/*}; rpc=${row#*/}
    p=$(median "${rates["plain|$n $rpc"]}")
    t=$(median "${rates["tls|$n $rpc"]}")
    echo "| $n | $rpc | $p | $t | $(awk -v t="$t" -v p="$p" 'BEGIN {printf "%.2f", t / p}') | $(failed "${rates["plain|$n $rpc"]}"), $(failed "${rates["tls|$n $rpc"]}") |"
done

#!/usr/bin/env bash
# benches/compare_watch.sh: watch fan-out (issue 14), rust-raft-log beside etcd, in one run.
#
#   benches/compare_watch.sh [--write]
#
# For each round and each system (the order alternating from round to round), starts a fresh
# 3-member cluster on 127.0.0.1 (benches/lib/clusters.sh: etcd is Debian's `etcd-server` with
# default flags), runs `watchbench` (tools/kvbench/src/bin/watchbench.rs) against it, and stops it.
# watchbench opens STREAMS Watch streams spread round-robin over the three members (WATCH_ON=all:
# as clients balancing over the endpoints would; WATCH_ON=followers puts them on the followers
# only), creates WATCHERS watchers on one prefix over them, puts at PUT_RATE/s (open loop, to the
# leader) under that prefix, and measures:
#   - delivery latency: event received at a watcher - its put acknowledged (p50, p99, max);
#   - server CPU per delivered event: user+system of the three server processes (/proc) from the
#     first measured put until every event was delivered, / events delivered;
#   - missing events (must be 0), put p99;
#   - server CPU per put, and the same again in a second run on a fresh cluster with only
#     BASE_WATCHERS watchers (the puts' own cost: consensus, durable writes, the put RPC), so the
#     table can say what the fan-out adds per delivered event beyond the puts it delivers.
# A row of the table is the median over the rounds (missing events and failures: the sum).
# Everything started is stopped on exit (trap).
#
# --write puts the table into BENCHMARKS.md between `<!-- compare_watch.sh: begin -->` and
# `<!-- compare_watch.sh: end -->` (appended at the end the first time).
#
# Environment: ROUNDS (3), WATCHERS (1000), STREAMS (10), PUT_RATE (1000), MEASURE_SECONDS (10),
# WATCH_ON (all), VALUE_SIZE (32), BASE_WATCHERS (10; 0 skips the puts-only run), OURS_ETCD_TIMING=1 (rust-raft-log with etcd's heartbeat 100 ms and
# election timeout 1000 ms instead of its 50 ms / 150-500 ms: benches/lib/clusters.sh), PORT_BASE (default: the first free block of 10 ports from
# 32000), KEEP_WORKDIR=1.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
WRITE=0
[[ ${1:-} == --write ]] && WRITE=1
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'; exit 0; }

ROUNDS=${ROUNDS:-3}
WATCHERS=${WATCHERS:-1000}
STREAMS=${STREAMS:-10}
PUT_RATE=${PUT_RATE:-1000}
MEASURE_SECONDS=${MEASURE_SECONDS:-10}
WATCH_ON=${WATCH_ON:-all}
VALUE_SIZE=${VALUE_SIZE:-32}
BASE_WATCHERS=${BASE_WATCHERS:-10}
((BASE_WATCHERS < WATCHERS)) || { echo "Error: BASE_WATCHERS ($BASE_WATCHERS) must be below WATCHERS ($WATCHERS); 0 skips the puts-only run" >&2; exit 2; }
ETCD_BIN=${ETCD_BIN:-etcd}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WATCHBENCH=$TARGET_DIR/release/watchbench
NODE_BIN=$TARGET_DIR/release/rust-raft-log

command -v "$ETCD_BIN" >/dev/null || { echo "Error: $ETCD_BIN not found: apt-get install -y etcd-server" >&2; exit 1; }
echo "building (release): watchbench and rust-raft-log..."
cargo build --release --quiet -p kvbench -p rust-raft-log

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/compare-watch.XXXXXX")
CLUSTER_TAG=compare-watch
# shellcheck source=benches/lib/clusters.sh
source "$REPO/benches/lib/clusters.sh"

RESULTS=$WORK/results.txt
: >"$RESULTS"
# run_watchbench SYSTEM WATCHERS OUT: one watchbench run on a fresh cluster of SYSTEM.
run_watchbench() {
    local sys=$1 watchers=$2 out=$3 pids
    if [[ $sys == etcd ]]; then start_etcd; else start_ours; fi
    pids=$(IFS=,; echo "${PIDS[*]}")
    "$WATCHBENCH" --endpoints "$ENDPOINTS" --pids "$pids" --watchers "$watchers" \
        --streams "$STREAMS" --watch-on "$WATCH_ON" --put-rate "$PUT_RATE" \
        --seconds "$MEASURE_SECONDS" --value-size "$VALUE_SIZE" >"$out" 2>&1 || {
        echo "Error: watchbench failed against $(name_of "$sys"):" >&2
        cat "$out" >&2
        exit 1
    }
    stop_all
}
measure() {
    local sys=$1 round=$2 out line base_per_put=n/a
    out=$WORK/watchbench-$sys-$round.out
    run_watchbench "$sys" "$WATCHERS" "$out"
    line=$(grep '^watchbench-result ' "$out")
    kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    if ((BASE_WATCHERS > 0)); then
        run_watchbench "$sys" "$BASE_WATCHERS" "$WORK/watchbench-$sys-$round-base.out"
        base_per_put=$(sed -n 's/.* cpu_us_per_put=\([^ ]*\).*/\1/p' "$WORK/watchbench-$sys-$round-base.out")
    fi
    echo "$sys $(kv p50_us) $(kv p99_us) $(kv max_us) $(kv cpu_us_per_event) $(kv events) $(kv put_p99_us) $(kv missing) $(kv stream_failures) $(kv put_errors) $(cut -d' ' -f1 /proc/loadavg) $(kv cpu_us_per_put) $base_per_put" >>"$RESULTS"
    printf '  %-16s round %d: delivery p50 %s µs, p99 %s µs, max %s µs; %s µs CPU per event; CPU per put %s µs (%s with %s watchers); %s events, %s missing; load %s\n' \
        "$(name_of "$sys")" "$round" "$(kv p50_us)" "$(kv p99_us)" "$(kv max_us)" \
        "$(kv cpu_us_per_event)" "$(kv cpu_us_per_put)" "$base_per_put" "$BASE_WATCHERS" \
        "$(kv events)" "$(kv missing)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT+=" (with uncommitted changes)"
echo "machine: $MACHINE; load average at start: $START_LOAD"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="etcd ours"; else order="ours etcd"; fi
    for sys in $order; do measure "$sys" "$round"; done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

TIMING="rust-raft-log with its default timing (heartbeat 50 ms, election timeout 150-500 ms)"
[[ ${OURS_ETCD_TIMING:-0} == 1 ]] && TIMING="rust-raft-log with etcd's timing (heartbeat 100 ms, election timeout 1000-2000 ms)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
TABLE=$(
    echo "$WATCHERS watchers on one prefix over $STREAMS Watch streams (streams on: $WATCH_ON members, round-robin), puts of $VALUE_SIZE-byte values at $PUT_RATE/s (open loop, to the leader) for $MEASURE_SECONDS s; $TIMING; median of $ROUNDS rounds, each on a fresh 3-member cluster, order alternating. Commit $COMMIT; $MACHINE; load average $START_LOAD at start, $END_LOAD at the end."
    echo
    echo "| system | delivery p50 / p99 / max (ms) | server CPU per delivered event (µs) | events delivered (median) | put p99 (ms) | missing events, stream failures, put errors |"
    echo "|---|---|---|---|---|---|"
    for sys in etcd ours; do
        printf '| %s | %s / %s / %s | %s | %s | %s | %s, %s, %s |\n' "$(name_of "$sys")" \
            "$(ms "$(median "$sys" 2)")" "$(ms "$(median "$sys" 3)")" "$(ms "$(median "$sys" 4)")" \
            "$(median "$sys" 5)" "$(median "$sys" 6)" "$(ms "$(median "$sys" 7)")" \
            "$(total "$sys" 8)" "$(total "$sys" 9)" "$(total "$sys" 10)"
    done
    echo
    echo "rust-raft-log / etcd: delivery p99 $(ratio "$(median ours 3)" "$(median etcd 3)") (target ≤ 0.5×), CPU per event $(ratio "$(median ours 5)" "$(median etcd 5)") (target ≤ 0.5×)."
    echo
    if ((BASE_WATCHERS > 0)); then
        echo "What the puts cost apart from the fan-out: server CPU per measured put, in this run ($WATCHERS watchers) and in a run of the same puts on a fresh cluster with $BASE_WATCHERS watchers (one per round and system, right after); the fan-out's CPU per delivered event is the difference ÷ the $((WATCHERS - BASE_WATCHERS)) extra events per put (negative: the busier servers spent less on the same puts)."
        echo
        echo "| system | CPU per put, $BASE_WATCHERS watchers (µs) | CPU per put, $WATCHERS watchers (µs) | the fan-out's CPU per delivered event (µs) |"
        echo "|---|---:|---:|---:|"
        for sys in etcd ours; do
            printf '| %s | %s | %s | %s |\n' "$(name_of "$sys")" "$(median "$sys" 13)" "$(median "$sys" 12)" \
                "$(awk -v a="$(median "$sys" 12)" -v b="$(median "$sys" 13)" -v n=$((WATCHERS - BASE_WATCHERS)) 'BEGIN { printf "%.3f", (a - b) / n }')"
        done
        echo
        echo "rust-raft-log / etcd: CPU per put with $BASE_WATCHERS watchers $(ratio "$(median ours 13)" "$(median etcd 13)")."
        echo
    fi
    echo "Each round (1-minute load average after the round):"
    echo
    awk -v base="$BASE_WATCHERS" '{ printf "- %s: p50 %.2f ms, p99 %.2f ms, max %.2f ms, %s µs CPU per event, %s events, %s missing; CPU per put %s µs (%s with %s watchers); load %s\n", ($1 == "ours" ? "rust-raft-log" : "etcd"), $2 / 1000, $3 / 1000, $4 / 1000, $5, $6, $8, $12, $13, base, $11 }' "$RESULTS"
)
echo
echo "$TABLE"
if [[ $WRITE == 1 ]]; then
    printf '%s\n' "$TABLE" >"$WORK/table.md"
    write_section '<!-- compare_watch.sh: begin -->' '<!-- compare_watch.sh: end -->' \
        'Watch fan-out: 1,000 watchers beside etcd (issue 14)' benches/compare_watch.sh "$WORK/table.md"
fi

#!/usr/bin/env bash
# benches/compare_leases.sh: keeping 10,000 leases alive, rust-raft-log beside etcd, in one run.
#
#   benches/compare_leases.sh [--write]
#
# For each round and each system (the order alternating from round to round), starts a fresh
# 3-member cluster on 127.0.0.1 (benches/lib/clusters.sh: etcd is Debian's `etcd-server` with
# default flags but names, ports, data directories and cluster flags; rust-raft-log: the release
# build with a generated config), runs `leasebench` (tools/kvbench/src/bin/leasebench.rs) against
# its leader, and stops it. leasebench measures, in one run:
#   1. puts alone at PUT_RATE/s (open loop) for PHASE_SECONDS: put latency and the servers' CPU;
#   2. grants LEASES leases of TTL seconds;
#   3. the same puts while every lease is refreshed every TTL/3 s (etcd's client period) over
#      STREAMS LeaseKeepAlive streams: put latency, and the servers' CPU per keep-alive
#      ((CPU/s of 3 - mean CPU/s of 1 and 4) / keep-alives per second; user+system of the three
#      server processes, from /proc);
#   4. the puts alone again (a second baseline, so a drift over the run cancels).
# A row of the table is the median over the rounds (lost leases and failures: the sum).
# Everything started is stopped on exit (trap).
#
# --write puts the table into BENCHMARKS.md between `<!-- compare_leases.sh: begin -->` and
# `<!-- compare_leases.sh: end -->` (appended at the end the first time).
#
# Environment: ROUNDS (3), LEASES (10000), TTL (30), STREAMS (10), PUT_RATE (200), PHASE_SECONDS (10),
# PORT_BASE (default: the first free block of 10 ports from 32000), KEEP_WORKDIR=1.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
WRITE=0
[[ ${1:-} == --write ]] && WRITE=1
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'; exit 0; }

ROUNDS=${ROUNDS:-3}
LEASES=${LEASES:-10000}
TTL=${TTL:-30}
STREAMS=${STREAMS:-10}
PUT_RATE=${PUT_RATE:-200}
PHASE_SECONDS=${PHASE_SECONDS:-10}
ETCD_BIN=${ETCD_BIN:-etcd}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
LEASEBENCH=$TARGET_DIR/release/leasebench
NODE_BIN=$TARGET_DIR/release/rust-raft-log

command -v "$ETCD_BIN" >/dev/null || { echo "Error: $ETCD_BIN not found: apt-get install -y etcd-server" >&2; exit 1; }
echo "building (release): leasebench and rust-raft-log..."
cargo build --release --quiet -p kvbench -p rust-raft-log

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/compare-leases.XXXXXX")
CLUSTER_TAG=compare-leases
# shellcheck source=benches/lib/clusters.sh
source "$REPO/benches/lib/clusters.sh"

RESULTS=$WORK/results.txt
: >"$RESULTS"
measure() {
    local sys=$1 round=$2 out line
    out=$WORK/leasebench-$sys-$round.out
    if [[ $sys == etcd ]]; then start_etcd; else start_ours; fi
    local pids
    pids=$(IFS=,; echo "${PIDS[*]}")
    "$LEASEBENCH" --endpoints "$ENDPOINTS" --pids "$pids" --leases "$LEASES" --ttl "$TTL" \
        --streams "$STREAMS" --put-rate "$PUT_RATE" --seconds "$PHASE_SECONDS" >"$out" 2>&1 || {
        echo "Error: leasebench failed against $(name_of "$sys"):" >&2
        cat "$out" >&2
        exit 1
    }
    stop_all
    line=$(grep '^leasebench-result ' "$out")
    kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    echo "$sys $(kv keepalives_per_sec) $(kv cpu_us_per_keepalive) $(kv base_put_p50_us) $(kv base_put_p99_us) $(kv put_p50_us) $(kv put_p99_us) $(kv lost) $(kv stream_failures) $(kv put_errors)" >>"$RESULTS"
    printf '  %-16s round %d: %s keep-alives/s, %s µs CPU per keep-alive, put p99 %s µs alone, %s µs with keep-alives, lost %s\n' \
        "$(name_of "$sys")" "$round" "$(kv keepalives_per_sec)" "$(kv cpu_us_per_keepalive)" \
        "$(kv base_put_p99_us)" "$(kv put_p99_us)" "$(kv lost)"
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

TABLE=$(
    echo "Keeping $LEASES leases alive (TTL $TTL s, refreshed every TTL/3 over $STREAMS streams to the leader) with $PUT_RATE puts/s; median of $ROUNDS rounds, each on a fresh 3-member cluster. Commit $COMMIT; $MACHINE; load average $START_LOAD at start, $END_LOAD at the end."
    echo
    echo "| system | keep-alives/s | server CPU per keep-alive (µs) | put p50 / p99 alone (ms) | put p50 / p99 with keep-alives (ms) | leases lost | stream failures, put errors |"
    echo "|---|---|---|---|---|---|---|"
    for sys in etcd ours; do
        printf '| %s | %s | %s | %s / %s | %s / %s | %s | %s, %s |\n' "$(name_of "$sys")" \
            "$(median "$sys" 2)" "$(median "$sys" 3)" "$(ms "$(median "$sys" 4)")" "$(ms "$(median "$sys" 5)")" \
            "$(ms "$(median "$sys" 6)")" "$(ms "$(median "$sys" 7)")" "$(total "$sys" 8)" "$(total "$sys" 9)" "$(total "$sys" 10)"
    done
)
echo
echo "$TABLE"
if [[ $WRITE == 1 ]]; then
    printf '%s\n' "$TABLE" >"$WORK/table.md"
    write_section '<!-- compare_leases.sh: begin -->' '<!-- compare_leases.sh: end -->' \
        'Keep-alives: 10,000 leases beside etcd' benches/compare_leases.sh "$WORK/table.md"
fi

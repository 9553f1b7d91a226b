#!/usr/bin/env bash
# benches/compare_leases.sh: keeping 10,000 leases alive, rust-raft-log beside etcd, in one run.
#
#   benches/compare_leases.sh [--write]
#
# For each round and each system (the order alternating from round to round), starts a fresh
# 3-member cluster on 127.0.0.1 (etcd: Debian's `etcd-server` with default flags but names, ports,
# data directories and cluster flags, as benches/compare_etcd.sh does; rust-raft-log: the release
# build with a generated config), runs `leasebench` (tools/kvbench/src/bin/leasebench.rs) against
# its leader, and stops it. leasebench measures, in one run:
#   1. puts alone at PUT_RATE/s (open loop) for PHASE_SECONDS: put latency and the servers' CPU;
#   2. grants LEASES leases of TTL seconds;
#   3. the same puts while every lease is refreshed every TTL/3 s (etcd's client period) over
#      STREAMS LeaseKeepAlive streams: put latency, and the servers' CPU per keep-alive
#      ((CPU/s of 3 - CPU/s of 1) / keep-alives per second; user+system of the three server
#      processes, from /proc).
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
PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        echo "work directory (logs, data) kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
if [[ -z ${PORT_BASE:-} ]]; then
    for base in $(seq 32000 100 39900); do
        ok=1
        for p in $(seq "$base" $((base + 9))); do port_free "$p" || { ok=0; break; }; done
        if [[ $ok == 1 ]]; then PORT_BASE=$base; break; fi
    done
fi
[[ -n ${PORT_BASE:-} ]] || { echo "Error: no free port block found" >&2; exit 1; }

ENDPOINTS=""
start_etcd() {
    local cluster="" i v unset_etcd_vars=()
    for v in $(compgen -e | grep '^ETCD_' || true); do unset_etcd_vars+=(-u "$v"); done
    for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT_BASE + 3 + i))"; done
    rm -rf "$WORK/etcd"
    mkdir -p "$WORK/etcd"
    # One token per cluster (not per member): a fresh cluster each time.
    local token="compare-leases-$$-$RANDOM"
    ENDPOINTS=""
    for i in 1 2 3; do
        local client=$((PORT_BASE + i)) peer=$((PORT_BASE + 3 + i))
        env "${unset_etcd_vars[@]}" "$ETCD_BIN" \
            --name "m$i" --data-dir "$WORK/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:$client" \
            --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" --initial-cluster-token "$token" \
            --initial-cluster-state new >>"$WORK/etcd-m$i.log" 2>&1 &
        PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$client"
    done
}
start_ours() {
    local config=$WORK/cluster.yaml i
    rm -rf "$WORK/raft"
    {
        echo "nodes:"
        for i in 1 2 3; do
            printf '  - node_id: %d\n    ip_address: "127.0.0.1"\n    port: %d\n' "$i" $((PORT_BASE + 6 + i))
        done
        echo "cluster_settings:"
        echo "  log_directory: \"$WORK/raft\""
    } >"$config"
    ENDPOINTS=""
    for i in 1 2 3; do
        RUST_LOG=info "$NODE_BIN" --node-id "$i" --config "$config" >>"$WORK/ours-n$i.log" 2>&1 &
        PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((PORT_BASE + 6 + i))"
    done
}
name_of() { if [[ $1 == etcd ]]; then echo "etcd $("$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"; else echo "rust-raft-log"; fi; }

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

MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), Linux $(uname -r)"
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT+=" (with uncommitted changes)"
echo "machine: $MACHINE; load average at start: $START_LOAD"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="etcd ours"; else order="ours etcd"; fi
    for sys in $order; do measure "$sys" "$round"; done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# Median of column $2 for system $1 (sum for the counters).
median() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$RESULTS" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
total() { awk -v s="$1" -v c="$2" '$1 == s { t += $c } END { print t + 0 }' "$RESULTS"; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
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
    begin='<!-- compare_leases.sh: begin -->'
    end='<!-- compare_leases.sh: end -->'
    if ! grep -qF "$begin" BENCHMARKS.md; then
        printf '\n## Keep-alives: 10,000 leases beside etcd\n\n%s\n%s\n' "$begin" "$end" >>BENCHMARKS.md
    fi
    printf '%s\n' "$TABLE" >"$WORK/table.md"
    awk -v b="$begin" -v e="$end" -v f="$WORK/table.md" '
        $0 == b { print; print "Measured with `benches/compare_leases.sh`:"; print ""; while ((getline line < f) > 0) print line; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }' BENCHMARKS.md >"$WORK/BENCHMARKS.md" && mv "$WORK/BENCHMARKS.md" BENCHMARKS.md
    echo "BENCHMARKS.md updated"
fi

#!/usr/bin/env bash
# tools/stall_ab.sh: issue 18's stall repro, old binary against new, interleaved.
#
#   tools/stall_ab.sh BIN_A BIN_B
#
# For each of ROUNDS rounds, and for each binary in turn (the order alternating from round to
# round), starts a fresh 3-node cluster of that binary on 127.0.0.1 (ports from PORT_BASE) with
# a small segment (SEGMENT_BYTES, default 4 MiB, so that segments rotate every few seconds under
# load), runs RUNS back-to-back closed-loop put runs of RUN_SECONDS against the leader with
# kvbench (CLIENTS clients, 8-byte keys, 256-byte values, one connection per 10 clients), and
# prints per run: throughput, p99, p99.9, max, errors, the three servers' CPU per put, and how
# many segment files the three nodes created during the run (rotations; the first run counts
# each node's first segment). The node logs are searched for elections after the first.
# RAFT_TIMELINE_DIR, when set, makes the nodes record their latency timeline there
# (src/timeline.rs), one subdirectory per binary and round.
#
# At the end, one summary line per binary: the median over all its runs of each figure and the
# largest max, and the ratio B/A; plus the load average at start and end. Everything started is
# stopped on exit.
#
# Environment: ROUNDS (3), RUNS (3), RUN_SECONDS (10), CLIENTS (16), SEGMENT_BYTES (4194304),
# SNAPSHOT_ENTRIES (unset: the default), PORT_BASE (32100), KVBENCH (target/release/kvbench),
# KEEP_DATA (1: keep each cluster's data directory; by default only logs and outputs are kept).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN_A=${1:?usage: tools/stall_ab.sh BIN_A BIN_B}
BIN_B=${2:?usage: tools/stall_ab.sh BIN_A BIN_B}
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-3}
RUN_SECONDS=${RUN_SECONDS:-10}
CLIENTS=${CLIENTS:-16}
SEGMENT_BYTES=${SEGMENT_BYTES:-4194304}
PORT_BASE=${PORT_BASE:-32100}
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
KVBENCH=${KVBENCH:-$TARGET_DIR/release/kvbench}
CONNS=$(((CLIENTS + 9) / 10))

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/stall-ab.XXXXXX")
# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
PIDS=()
stop_cluster() {
    [[ ${#PIDS[@]} -gt 0 ]] && stop_pids "${PIDS[@]}"
    PIDS=()
}
trap 'stop_cluster; echo "work directory: $WORK" >&2' EXIT

RESULTS=$WORK/results.txt
: >"$RESULTS"
echo "machine: $(nproc) cores, Linux $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "A=$BIN_A B=$BIN_B rounds=$ROUNDS runs=$RUNS x ${RUN_SECONDS}s clients=$CLIENTS segment=$SEGMENT_BYTES"

one_round() {
    local label=$1 bin=$2 round=$3 dir=$WORK/$1-$3 i settings
    mkdir -p "$dir"
    settings=("log_segment_size: $SEGMENT_BYTES")
    [[ -n ${SNAPSHOT_ENTRIES:-} ]] && settings+=("snapshot_entries: $SNAPSHOT_ENTRIES")
    write_ours_config "$dir/cluster.yaml" "$dir/raft" "$PORT_BASE" "${settings[@]}"
    for i in 1 2 3; do
        if [[ -n ${RAFT_TIMELINE_DIR:-} ]]; then
            RAFT_TIMELINE=$RAFT_TIMELINE_DIR/$label-$round RUST_LOG=info \
                "$bin" --node-id "$i" --config "$dir/cluster.yaml" >"$dir/n$i.log" 2>&1 &
        else
            RUST_LOG=info "$bin" --node-id "$i" --config "$dir/cluster.yaml" >"$dir/n$i.log" 2>&1 &
        fi
        PIDS+=($!)
    done
    local eps="127.0.0.1:$((PORT_BASE + 1)),127.0.0.1:$((PORT_BASE + 2)),127.0.0.1:$((PORT_BASE + 3))"
    local run out line rotations load
    for run in $(seq "$RUNS"); do
        out=$dir/run$run.out
        find "$dir/raft" -name 'segment_*.log' 2>/dev/null | sort >"$dir/segs.before" || true
        load=$(cut -d' ' -f1 /proc/loadavg)
        ticks=$(cpu_ticks "${PIDS[@]}")
        "$KVBENCH" --endpoints "$eps" --target leader --leader-wait 30 --op put --clients "$CLIENTS" \
            --conns "$CONNS" --duration "$RUN_SECONDS" --warmup 0 --key-size 8 --val-size 256 \
            --key-space 1000 --keys seq --timeline >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
        find "$dir/raft" -name 'segment_*.log' 2>/dev/null | sort >"$dir/segs.after" || true
        # Segments created during the run (compaction removes old ones meanwhile, so the count
        # alone would hide a rotation).
        rotations=$(comm -13 "$dir/segs.before" "$dir/segs.after" | wc -l)
        ticks=$(($(cpu_ticks "${PIDS[@]}") - ticks))
        line=$(grep '^kvbench-result ' "$out")
        kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
        # The three servers' CPU (user + system, /proc) per acknowledged put over the run.
        cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$(kv ok)" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
        echo "$label $round $run $(kv ops_per_sec) $(kv p99_us) $(kv p999_us) $(kv max_us) $(kv errors) $rotations $load $cpu" >>"$RESULTS"
        printf '  %s round %d run %d: %8.1f ok/s p99 %6.2f ms p99.9 %6.2f ms max %7.2f ms errors %s, segments created %d (3 nodes), server CPU %s µs/put, load %s\n' \
            "$label" "$round" "$run" "$(kv ops_per_sec)" "$(awk -v v="$(kv p99_us)" 'BEGIN{print v/1000}')" \
            "$(awk -v v="$(kv p999_us)" 'BEGIN{print v/1000}')" "$(awk -v v="$(kv max_us)" 'BEGIN{print v/1000}')" \
            "$(kv errors)" "$rotations" "$cpu" "$load"
    done
    stop_cluster
    # The logs and outputs stay; the nodes' data (preallocated 64 MiB segments) would fill the
    # disk over a few A/Bs.
    [[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$dir/raft"
    # An election after the first one (term > 1) means a node timed out during the runs.
    local elections
    elections=$(grep -hc 'became leader\|Became leader\|👑' "$dir"/n*.log 2>/dev/null | paste -sd+ | bc || echo "?")
    echo "  $label round $round: leader elections logged: $elections (1 is the first election)"
    echo "$label $round elections $elections" >>"$WORK/elections.txt"
}

for round in $(seq "$ROUNDS"); do
    if ((round % 2 == 1)); then
        one_round A "$BIN_A" "$round"
        one_round B "$BIN_B" "$round"
    else
        one_round B "$BIN_B" "$round"
        one_round A "$BIN_A" "$round"
    fi
done

summary() {
    awk -v L="$1" '$1 == L { n++; ops[n] = $4; p99[n] = $5; p999[n] = $6; mx[n] = $7; if ($7 > big) big = $7; err += $8; rot += $9; cpu[n] = $11 }
        function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        END { printf "%s %.1f %.3f %.3f %.3f %.3f %d %d %.1f\n", L, med(ops, n), med(p99, n) / 1000, med(p999, n) / 1000, med(mx, n) / 1000, big / 1000, err, rot, med(cpu, n) }' "$RESULTS"
}
SA=$(summary A)
SB=$(summary B)
echo
echo "median over runs: label ok/s p99_ms p99.9_ms max_ms(median) max_ms(largest) errors segments_created server_cpu_us_per_put"
echo "$SA"
echo "$SB"
read -r _ a1 a2 a3 a4 a5 _ _ a6 <<<"$SA"
read -r _ b1 b2 b3 b4 b5 _ _ b6 <<<"$SB"
awk -v a1="$a1" -v a2="$a2" -v a3="$a3" -v a4="$a4" -v a5="$a5" -v a6="$a6" -v b1="$b1" -v b2="$b2" -v b3="$b3" -v b4="$b4" -v b5="$b5" -v b6="$b6" \
    'BEGIN { printf "B/A: ok/s %.2fx p99 %.2fx p99.9 %.2fx max(median) %.2fx max(largest) %.2fx server CPU per put %.2fx\n", b1/a1, b2/a2, b3/a3, b4/a4, b5/a5, (a6 > 0 ? b6/a6 : 0) }'
cat "$WORK/elections.txt"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

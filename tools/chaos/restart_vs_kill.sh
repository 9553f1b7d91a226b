#!/usr/bin/env bash
# A planned leader restart (SIGTERM: the leader hands leadership over, then exits) against a crash
# of the leader (SIGKILL: the followers wait out an election timeout), for rust-raft-log and etcd,
# with the runner's own workload. Prints a Markdown table (BENCHMARKS.md, "Write pause during a
# planned leader restart").
#
#   sudo tools/chaos/restart_vs_kill.sh [FAULTS] [SEED]       (defaults: 30 of each, seed 20261206)
#
# Each run: 3 nodes, 8 clients, 3 watchers, the leader restarted or killed every 10 s and started
# again 3 s later. A fault's write pause is the longest time between two successive answered
# writes (any client, any member) that ends in its window (tools/chaos/src/report.rs,
# `write_pauses`); the table gives their median, 90th percentile and largest over the run's
# faults. FLAVORS and KINDS narrow the runs. Needs root, ip, nft, etcd (unless FLAVORS leaves it
# out) and a release build:
#   cargo build --release -p rust-raft-log -p chaos --bins
# Run directories stay under $CHAOS_DIR (default /tmp/chaos-restart).
set -euo pipefail

cd "$(dirname "$0")/../.."
FAULTS=${1:-30}
SEED=${2:-20261206}
BIN=${CARGO_TARGET_DIR:-./target}/release
OUT=${CHAOS_DIR:-/tmp/chaos-restart}
FLAVORS=${FLAVORS:-"rust-raft-log etcd"}
KINDS=${KINDS:-"restart-leader kill-leader"}
# Faults begin at 10, 20, ... s and the last must end (3 s) before the run does.
DURATION=$((FAULTS * 10 + 5))

for tool in chaos rust-raft-log; do
    if [[ ! -x "$BIN/$tool" ]]; then
        echo "missing $BIN/$tool: cargo build --release -p rust-raft-log -p chaos --bins" >&2
        exit 2
    fi
done
mkdir -p "$OUT"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| flavor | fault | faults | write pause median | p90 | max | failed per fault | answered | verdict |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
status=0
for flavor in $FLAVORS; do
    for kind in $KINDS; do
        dir="$OUT/$flavor-$kind"
        rm -rf "$dir"
        log="$OUT/$flavor-$kind.out"
        if "$BIN/chaos" --flavor "$flavor" --faults "$kind" --duration "$DURATION" --interval 10 \
            --hold 3 --seed "$SEED" --dir "$dir" >"$log" 2>&1; then :; else status=1; fi
        result=$(grep '^chaos-result ' "$log" || echo "chaos-result verdict=NO-RESULT")
        field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
        # Every fault's pause in ms, sorted: the median and the 90th percentile (nearest rank).
        pauses=$(sed -n 's/.*longest write pause \([0-9.]*\) ms$/\1/p' "$log" | sort -g)
        n=$(wc -l <<<"$pauses")
        pick() { sed -n "$1p" <<<"$pauses"; }
        median=$(pick $(((n + 1) / 2)))
        p90=$(pick $(((n * 9 + 9) / 10)))
        echo "| $flavor | $kind | $(field faults) | $median ms | $p90 ms | $(field write_pause_max_ms) ms | $(field failed_per_fault) | $(field answered) | $(field verdict) |"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status

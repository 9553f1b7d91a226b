#!/usr/bin/env bash
# Runs the chaos runner once per fault kind, one after another, and prints a Markdown table row per
# run (docs/TESTING.md, "Each fault kind for 10 minutes").
#
#   sudo tools/chaos/each_kind.sh [SECONDS] [SEED]      (defaults: 600 s each, seed 20261206)
#
# Each run: 3 nodes, 8 clients, a fault every 10 s held 3 s (disk-full: held 6 s, so that the open
# segment runs out). Needs root, ip, nft, /dev/fuse (power-loss) and a release build of
# rust-raft-log, chaos and lossyfs:
#   cargo build --release -p rust-raft-log -p chaos -p lossyfs --bins
# The run directories (data, node output, history.jsonl) stay under $CHAOS_DIR (default
# /tmp/chaos-each) for a look afterwards.
set -euo pipefail

cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-600}
SEED=${2:-20261206}
BIN=${CARGO_TARGET_DIR:-./target}/release
OUT=${CHAOS_DIR:-/tmp/chaos-each}
KINDS=${KINDS:-"kill-leader kill-random kill-minority kill-all pause-leader partition one-way-from-leader isolate-leader power-loss disk-full"}

for tool in chaos rust-raft-log lossyfs; do
    if [[ ! -x "$BIN/$tool" ]]; then
        echo "missing $BIN/$tool: cargo build --release -p rust-raft-log -p chaos -p lossyfs --bins" >&2
        exit 2
    fi
done
mkdir -p "$OUT"
echo "| kind | seconds | faults | answered | failed | failed per fault | NOSPACE | operations checked | checker | findings | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
status=0
for kind in $KINDS; do
    hold=3
    [[ $kind == disk-full ]] && hold=6
    dir="$OUT/$kind"
    rm -rf "$dir"
    log="$OUT/$kind.out"
    if "$BIN/chaos" --faults "$kind" --duration "$SECONDS_EACH" --interval 10 --hold "$hold" \
        --seed "$SEED" --dir "$dir" >"$log" 2>&1; then :; else status=1; fi
    result=$(grep '^chaos-result ' "$log" || echo "chaos-result verdict=NO-RESULT")
    checker=$(grep '^checker: ' "$log" | sed 's/^checker: //' || true)
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
    ops=$(sed -n 's/.*: \([0-9]*\) operations.*/\1/p' <<<"$checker")
    took=$(sed -n 's/.*configurations, \(.*\)$/\1/p' <<<"$checker")
    echo "| $kind | $(field seconds) | $(field faults) | $(field answered) | $(field failed) | $(field failed_per_fault) | $(field nospace) | $ops | $took | $(field findings) | $(field verdict) |"
done
exit $status

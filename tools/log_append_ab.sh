#!/usr/bin/env bash
# Interleaved A/B of the storage engine's group commit: two builds of the log_append bench
# binary (`cargo bench --bench log_append --no-run`, copied aside before and after a change),
# run alternately cell by cell so that load from other processes hits both alike. Each run prints
# ours and the write+fdatasync baseline measured in the same process; this script keeps their
# ratios, our CPU per entry and context switches per fdatasync, the io_uring floor's rate ratio
# (binaries from 16bfa61 on measure it; `BENCH_FLOOR=0` skips it), and prints per-build medians.
#
# Usage: tools/log_append_ab.sh ROUNDS OLD_BIN NEW_BIN [CELLS...]
#   CELLS default: 256x64 65536x8 256x1. BENCH_SECS (default 2) is passed through.
set -euo pipefail
rounds=$1
declare -A bin=([old]=$2 [new]=$3)
shift 3
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(256x64 65536x8 256x1)
secs=${BENCH_SECS:-2}
# shellcheck source=benches/lib/ab.sh
source "$(dirname "$0")/../benches/lib/ab.sh"
for round in $(seq "$rounds"); do
    for cell in "${cells[@]}"; do
        for build in old new; do
            out=$(BENCH_ONLY=$cell BENCH_SECS=$secs "${bin[$build]}" --bench 2>&1)
            ratio=$(grep -oE 'entries/s [0-9.]+x, p99 [0-9.]+x' <<<"$out" | tr -d 'x,' | awk '{print $2, $4}' || true)
            cpu=$(grep -E '^ours' <<<"$out" | grep -oE 'CPU µs/entry [0-9.]+' | awk '{print $3}' || true)
            user=$(grep -E '^ours' <<<"$out" | grep -oE '\(user [0-9.]+\)' | tr -d '()' | awk '{print $2}' || true)
            sw=$(grep -E '^ours' <<<"$out" | grep -oE 'context switches/fdatasync [0-9.]+' | awk '{print $3}' || true)
            # The io_uring floor (epoll wait, as the engine waits), when the binary measures it.
            floor=$(grep -E '^uring floor \(epoll\)' <<<"$out" | grep -oE 'floor/baseline: entries/s [0-9.]+' | awk '{print $3}' || true)
            bcpu=$(grep -E '^baseline' <<<"$out" | grep -oE 'CPU µs/entry [0-9.]+' | awk '{print $3}' || true)
            echo "round $round $build $cell: rate ${ratio% *}x p99 ${ratio#* }x; CPU µs/entry ours $cpu (user $user) baseline $bcpu; switches/fdatasync $sw; io_uring floor rate ${floor:-(not measured)}x; load $(cut -d' ' -f1 /proc/loadavg)"
            ab_record "$build $cell rate-ratio" "${ratio% *}"
            ab_record "$build $cell p99-ratio" "${ratio#* }"
            ab_record "$build $cell cpu-us" "$cpu"
            ab_record "$build $cell user-us" "$user"
            ab_record "$build $cell base-cpu-us" "$bcpu"
            ab_record "$build $cell switches" "$sw"
            [ -z "$floor" ] || ab_record "$build $cell floor-rate-ratio" "$floor"
        done
    done
done
ab_summary "$rounds"

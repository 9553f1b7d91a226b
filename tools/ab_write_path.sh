#!/usr/bin/env bash
# Before/after comparison of the write path, interleaved in one session so that a noisy shared
# machine disturbs both builds alike: the storage engine (`cargo bench --bench log_append`,
# BENCH_ONLY cells) and the node (`cargo bench --bench propose`, throughput rows).
#
# Usage: tools/ab_write_path.sh ROUNDS OLD_TREE
#   OLD_TREE: a checkout of the "before" commit with `cargo build --release --benches --bins`
#   done (e.g. `git worktree add /tmp/old <commit>`). Its log_append bench runs with
#   BENCH_NODE=1 (before issue 11 that mode drove the node's own write path, `node::disk`); this
#   tree's log_append always does (the append engine).
#
# Per round and per build: log_append cells 256x1, 256x64 and 65536x8 (each prints ours and the
# raw write+fdatasync baseline measured in the same process, and their ratio), then the propose
# bench with 1 and 128 proposers against a 3-node cluster of that build's node binary (the bench
# harness is this tree's for both builds, so only the nodes differ). At the end: the median over
# the rounds of each figure, per build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
old_tree=$2
cargo build --release --bins >/dev/null 2>&1
cargo bench --bench log_append --no-run >/dev/null 2>&1
cargo bench --bench propose --no-run >/dev/null 2>&1
newest() { ls -t "$1"/target/release/deps/"$2"-* | grep -v '\.d$' | head -1; }
new_la=$(newest . log_append)
old_la=$(newest "$old_tree" log_append)
propose=$(newest . propose)
declare -A bin=([old]="$old_tree/target/release/rust-raft-log" [new]="$PWD/target/release/rust-raft-log")
declare -A la=([old]="$old_la" [new]="$new_la")
# shellcheck source=benches/lib/ab.sh
source benches/lib/ab.sh
for round in $(seq "$rounds"); do
    for build in old new; do
        for cell in 256x1 256x64 65536x8; do
            out=$(BENCH_NODE=1 BENCH_ONLY=$cell BENCH_SECS=1.5 "${la[$build]}" --bench 2>&1)
            ratio=$(grep -oE 'entries/s [0-9.]+x, p99 [0-9.]+x' <<<"$out" | tr -d 'x,' | awk '{print $2, $4}' || true)
            rate=$(grep -E '^ours' <<<"$out" | grep -oE '\(µs\): +[0-9]+' | awk '{print $2}' || true)
            echo "round $round $build log_append $cell: ours/baseline entries/s, p99 = ${ratio:-?}; ours ${rate:-?} entries/s; load $(cut -d' ' -f1 /proc/loadavg)"
            ab_record "$build la $cell rate-ratio" "${ratio%% *}"
            ab_record "$build la $cell p99-ratio" "${ratio##* }"
            ab_record "$build la $cell entries-per-s" "$rate"
        done
        out=$(RAFT_NODE_BIN=${bin[$build]} BENCH_QUICK=1 BENCH_ONLY=throughput BENCH_PROPOSERS=1,128 "$propose" --bench 2>&1)
        one=$(grep -E '^\| 1 \| Propose \|' <<<"$out" | awk -F'|' '{gsub(/ /,"",$4); gsub(/ /,"",$5); print $4, $5}' || true)
        many=$(grep -E '^\| 128 \| Propose \|' <<<"$out" | awk -F'|' '{gsub(/ /,"",$4); print $4}' || true)
        many_s=$(grep -E '^\| 128 \| ProposeStream \|' <<<"$out" | awk -F'|' '{gsub(/ /,"",$4); print $4}' || true)
        echo "round $round $build propose: 1 proposer ${one% *}/s p50 ${one#* } µs; 128 Propose ${many}/s; 128 ProposeStream ${many_s}/s; load $(cut -d' ' -f1 /proc/loadavg)"
        ab_record "$build propose 1 p50-us" "${one#* }"
        ab_record "$build propose 1 per-s" "${one% *}"
        ab_record "$build propose 128 per-s" "$many"
        ab_record "$build propose 128-stream per-s" "$many_s"
    done
done
ab_summary "$rounds"

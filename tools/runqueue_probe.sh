#!/usr/bin/env bash
# tools/runqueue_probe.sh: is a node's thread waiting for the disk, or for a CPU? (issue 18)
#
#   tools/runqueue_probe.sh [BIN]      (default: target/release/rust-raft-log)
#
# Starts a 3-node cluster of BIN on 127.0.0.1 (ports PORT_BASE+1..3, default 32200; default
# settings), runs CLIENTS (16) closed-loop put clients against the leader with kvbench for
# RUN_SECONDS (20), and meanwhile samples every ~2 ms the main thread of each node (the one thread
# that runs the gRPC server, the event loop and the append engine): its
# /proc/PID/task/PID/schedstat (time on a CPU, time runnable but waiting for one) and, when it
# is not running, its state and kernel stack (in D state it waits for I/O in the kernel). Prints
# per node: the share of the wall time on a CPU and waiting for one, the largest runqueue wait
# accumulated inside any 100 ms, the 50 ms windows with >= 30 ms of runqueue wait, and the
# kernel stacks seen while not running (counted). Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BIN=${1:-$TARGET_DIR/release/rust-raft-log}
KVBENCH=${KVBENCH:-$TARGET_DIR/release/kvbench}
PORT_BASE=${PORT_BASE:-32200}
CLIENTS=${CLIENTS:-16}
SECONDS_RUN=${RUN_SECONDS:-20}
mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/runqueue-probe.XXXXXX")
# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
PIDS=()
cleanup() {
    [[ ${#PIDS[@]} -gt 0 ]] && stop_pids "${PIDS[@]}"
    echo "work directory: $WORK" >&2
}
trap cleanup EXIT
write_ours_config "$WORK/cluster.yaml" "$WORK/raft" "$PORT_BASE"
for i in 1 2 3; do
    RUST_LOG=info "$BIN" --node-id "$i" --config "$WORK/cluster.yaml" >"$WORK/n$i.log" 2>&1 &
    PIDS+=($!)
done
echo "machine: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 2
"$KVBENCH" --endpoints "127.0.0.1:$((PORT_BASE + 1)),127.0.0.1:$((PORT_BASE + 2)),127.0.0.1:$((PORT_BASE + 3))" \
    --target leader --leader-wait 30 --op put --clients "$CLIENTS" --conns $(((CLIENTS + 9) / 10)) \
    --duration "$SECONDS_RUN" --warmup 0 --key-size 8 --val-size 256 --key-space 1000 --keys seq \
    >"$WORK/kvbench.out" 2>&1 &
KV=$!
end=$((SECONDS + SECONDS_RUN))
while ((SECONDS < end)); do
    for p in "${PIDS[@]}"; do
        t=/proc/$p/task/$p
        read -r run wait _ <"$t/schedstat" || continue
        state=$(cut -d' ' -f3 "$t/stat")
        stack=-
        [[ $state != R ]] && stack=$(sed 's/^\[<0>\] //; s/+0x.*//' "$t/stack" 2>/dev/null | head -3 | paste -sd'<' || echo -)
        echo "$(date +%s%N) $p $run $wait $state $stack"
    done
    sleep 0.002
done >"$WORK/samples.txt"
wait "$KV" || true
grep '^kvbench-result' "$WORK/kvbench.out" || cat "$WORK/kvbench.out"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/samples.txt" <<'EOF'
import collections
import sys

rows = collections.defaultdict(list)
stacks = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 6:
        continue
    rows[f[1]].append((int(f[0]), int(f[2]), int(f[3])))
    if f[4] != "R":
        stacks[f[1]][f"{f[4]} {f[5]}"] += 1
for pid, r in rows.items():
    r.sort()
    span = (r[-1][0] - r[0][0]) / 1e9
    cpu = (r[-1][1] - r[0][1]) / 1e9
    wait = (r[-1][2] - r[0][2]) / 1e9
    worst, j = 0, 0
    for i in range(len(r)):
        while r[i][0] - r[j][0] > 100e6:
            j += 1
        worst = max(worst, r[i][2] - r[j][2])
    windows, j, last = 0, 0, -1
    for i in range(len(r)):
        while r[i][0] - r[j][0] > 50e6:
            j += 1
        if r[i][2] - r[j][2] >= 30e6 and r[j][0] > last:
            windows += 1
            last = r[i][0]
    print(f"node pid {pid}: {span:.1f} s sampled; main thread on a CPU {cpu:.2f} s ({cpu / span * 100:.0f}%), "
          f"runnable but waiting for a CPU {wait:.2f} s ({wait / span * 100:.0f}%); largest runqueue wait "
          f"inside 100 ms: {worst / 1e6:.1f} ms; 50 ms windows with >= 30 ms of it: {windows}")
    for s, n in stacks[pid].most_common(4):
        print(f"    not running, {n} samples: {s}")
EOF

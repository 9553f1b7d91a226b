#!/usr/bin/env bash
# tools/cpu_profile.sh: where the servers' CPU per put goes at a given load (issue 18).
#
#   tools/cpu_profile.sh [BIN]
#
# Starts a fresh 3-node cluster of BIN (default target/release/rust-raft-log) on 127.0.0.1
# (ports from PORT_BASE), runs one closed-loop put run of RUN_SECONDS against the leader with
# kvbench (CLIENTS clients, 8-byte keys, 256-byte values, key numbers 0-999 in sequence, one
# connection per 10 clients: compare_etcd.sh's put cell), and from the middle of the run records
# PERF_SECONDS of the leader and of one follower at once with `perf record --call-graph dwarf`.
# Each process's CPU (user + system, /proc) over the whole run divided by the acknowledged puts
# gives its µs per put; tools/cpu_split.py divides that among the layers by the samples.
#
# Prints the kvbench result, each process's µs per put, the two splits, and one line
#   cpu-profile-result clients=N servers_us_per_put=... leader_us_per_put=... followers_us_per_put=...
#     http2_grpc=... runtime_sockets=... ours=...
# where the last three are µs per put over the three servers (the other follower counted as the
# recorded one). Needs `perf` (Debian: linux-perf) and a release build. Everything started is
# stopped on exit; the work directory (perf data, logs; not the nodes' data) is printed and kept.
#
# Environment: CLIENTS (100), RUN_SECONDS (16), PERF_SECONDS (5), PERF_HZ (499), SEGMENT_BYTES
# (67108864), PORT_BASE (32600), KVBENCH (target/release/kvbench), METRICS (1: every node records
# metrics and serves them on its metrics_address, PORT_BASE+10+i; nobody scrapes).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BIN=${1:-$TARGET_DIR/release/rust-raft-log}
KVBENCH=${KVBENCH:-$TARGET_DIR/release/kvbench}
CLIENTS=${CLIENTS:-100}
RUN_SECONDS=${RUN_SECONDS:-16}
PERF_SECONDS=${PERF_SECONDS:-5}
PERF_HZ=${PERF_HZ:-499}
SEGMENT_BYTES=${SEGMENT_BYTES:-67108864}
PORT_BASE=${PORT_BASE:-32600}
CONNS=$(((CLIENTS + 9) / 10))
command -v perf >/dev/null || { echo "Error: perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
[[ -x $BIN && -x $KVBENCH ]] || { echo "Error: build first: cargo build --release -p rust-raft-log -p kvbench" >&2; exit 1; }
if ((PERF_SECONDS + 4 > RUN_SECONDS)); then
    echo "Error: RUN_SECONDS ($RUN_SECONDS) must exceed PERF_SECONDS ($PERF_SECONDS) by 4 s or more" >&2
    exit 1
fi

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/cpu-profile.XXXXXX")
# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
PIDS=()
# The perf data, logs and outputs stay; the nodes' data directory (preallocated segments) goes.
trap '[[ ${#PIDS[@]} -gt 0 ]] && stop_pids "${PIDS[@]}"; rm -rf "$WORK/raft"; echo "work directory: $WORK"' EXIT

echo "machine: $(nproc) cores, Linux $(uname -r); load average at start: $(load_avg)"
write_ours_config "$WORK/cluster.yaml" "$WORK/raft" "$PORT_BASE" "log_segment_size: $SEGMENT_BYTES"
if [[ ${METRICS:-0} == 1 ]]; then
    # Each node records metrics and serves /metrics on PORT_BASE+10+i (nobody scrapes it).
    for i in 1 2 3; do
        sed -i "s/^    port: $((PORT_BASE + i))\$/&\n    metrics_address: \"127.0.0.1:$((PORT_BASE + 10 + i))\"/" "$WORK/cluster.yaml"
    done
    grep -c metrics_address "$WORK/cluster.yaml" | grep -qx 3 || { echo "Error: could not add metrics_address" >&2; exit 1; }
fi
for i in 1 2 3; do
    RUST_LOG=info "$BIN" --node-id "$i" --config "$WORK/cluster.yaml" >"$WORK/n$i.log" 2>&1 &
    PIDS+=($!)
done
EPS="127.0.0.1:$((PORT_BASE + 1)),127.0.0.1:$((PORT_BASE + 2)),127.0.0.1:$((PORT_BASE + 3))"

# The leader: the node that logged its election (kvbench waits for one too).
leader=""
for _ in $(seq 300); do
    leader=$(grep -l 'became leader\|Became leader\|👑' "$WORK"/n*.log 2>/dev/null | head -1 | sed 's/.*n\([0-9]\)\.log/\1/') || true
    [[ -n $leader ]] && break
    sleep 0.1
done
[[ -n $leader ]] || { echo "Error: no leader within 30 s; logs in $WORK" >&2; exit 1; }
follower=$((leader % 3 + 1))
other=$((follower % 3 + 1))
LEADER_PID=${PIDS[$((leader - 1))]}
FOLLOWER_PID=${PIDS[$((follower - 1))]}
OTHER_PID=${PIDS[$((other - 1))]}
echo "leader: node $leader (pid $LEADER_PID); recorded follower: node $follower (pid $FOLLOWER_PID)"

t_leader=$(cpu_ticks "$LEADER_PID")
t_follower=$(cpu_ticks "$FOLLOWER_PID")
t_other=$(cpu_ticks "$OTHER_PID")
"$KVBENCH" --endpoints "$EPS" --target leader --leader-wait 30 --op put --clients "$CLIENTS" \
    --conns "$CONNS" --duration "$RUN_SECONDS" --warmup 0 --key-size 8 --val-size 256 \
    --key-space 1000 --keys seq >"$WORK/kvbench.out" 2>&1 &
KV=$!
sleep $(((RUN_SECONDS - PERF_SECONDS) / 2))
perf record -q -F "$PERF_HZ" --call-graph dwarf,16384 -p "$LEADER_PID" -o "$WORK/leader.data" -- sleep "$PERF_SECONDS" &
P1=$!
perf record -q -F "$PERF_HZ" --call-graph dwarf,16384 -p "$FOLLOWER_PID" -o "$WORK/follower.data" -- sleep "$PERF_SECONDS" &
P2=$!
wait "$P1" "$P2"
wait "$KV" || { cat "$WORK/kvbench.out" >&2; exit 1; }
t_leader=$(($(cpu_ticks "$LEADER_PID") - t_leader))
t_follower=$(($(cpu_ticks "$FOLLOWER_PID") - t_follower))
t_other=$(($(cpu_ticks "$OTHER_PID") - t_other))
line=$(grep '^kvbench-result ' "$WORK/kvbench.out")
echo "$line"
ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
per_put() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }'; }
us_leader=$(per_put "$t_leader")
us_follower=$(per_put "$t_follower")
us_other=$(per_put "$t_other")
echo "CPU per put: leader $us_leader µs, recorded follower $us_follower µs, other follower $us_other µs"

for who in leader follower; do
    perf script -i "$WORK/$who.data" -F comm,tid,ip,sym 2>/dev/null >"$WORK/$who.txt"
done
tools/cpu_split.py "$WORK/leader.txt" "$us_leader" leader | tee "$WORK/leader.split"
tools/cpu_split.py "$WORK/follower.txt" "$us_follower" follower | tee "$WORK/follower.split"

# Over the three servers: the leader's split plus the recorded follower's, scaled to both
# followers' CPU.
field() { sed -n "s/^cpu-split-result $1 .*$2=\([0-9.]*\).*/\1/p" "$WORK/$1.split"; }
awk -v c="$CLIENTS" -v l="$us_leader" -v f="$us_follower" -v o="$us_other" \
    -v lh="$(field leader HTTP2_and_gRPC)" -v lr="$(field leader runtime_and_sockets)" -v lo="$(field leader ours)" \
    -v fh="$(field follower HTTP2_and_gRPC)" -v fr="$(field follower runtime_and_sockets)" -v fo="$(field follower ours)" \
    'BEGIN { k = (f > 0 ? (f + o) / f : 0)
        printf "cpu-profile-result clients=%d servers_us_per_put=%.1f leader_us_per_put=%.1f followers_us_per_put=%.1f http2_grpc=%.1f runtime_sockets=%.1f ours=%.1f\n",
            c, l + f + o, l, f + o, lh + k * fh, lr + k * fr, lo + k * fo }'
echo "load average at end: $(load_avg)"

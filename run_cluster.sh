#!/usr/bin/env bash
# Starts every node of a cluster config on this machine and waits for a leader.
#
#   ./run_cluster.sh [config.yaml]        (default: cluster_config.yaml)
#
# Builds in release, starts each node in the background with its output in
# <log_directory>/node_<id>.out, prints the pids, waits until some node logs "👑" (won an election)
# and prints which, then keeps running until Ctrl-C, which stops all nodes (SIGTERM, then SIGKILL
# after 5 s). If a node exits on its own (say you kill -9 the leader to watch a failover), the script
# shows the end of its output and the command that restarts it, and keeps the others running.
set -euo pipefail

cd "$(dirname "$0")"
CONFIG=${1:-cluster_config.yaml}
LEADER_WAIT_SECONDS=${LEADER_WAIT_SECONDS:-30}
BIN=${CARGO_TARGET_DIR:-./target}/release/rust-raft-log

if [[ ! -f "$CONFIG" ]]; then
    echo "Error: Configuration file not found: $CONFIG" >&2
    exit 1
fi

# The node ids and the log directory, read from the YAML (the binary validates it properly).
mapfile -t NODE_IDS < <(sed -n 's/^[[:space:]-]*node_id:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$CONFIG")
LOG_DIR=$(sed -n 's/^[[:space:]]*log_directory:[[:space:]]*"\{0,1\}\([^"#]*\)"\{0,1\}.*/\1/p' "$CONFIG" | head -n 1)
LOG_DIR=${LOG_DIR:-./raft_logs}
LOG_DIR=${LOG_DIR%"${LOG_DIR##*[![:space:]]}"}
if [[ ${#NODE_IDS[@]} -eq 0 ]]; then
    echo "Error: no node_id entries found in $CONFIG" >&2
    exit 1
fi

echo "🔨 Building (release)..."
cargo build --release --quiet

mkdir -p "$LOG_DIR"
declare -A PIDS=()

stop_all() {
    trap - INT TERM EXIT
    echo
    echo "🛑 Stopping ${#PIDS[@]} node(s)..."
    for id in "${!PIDS[@]}"; do
        kill -TERM "${PIDS[$id]}" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for id in "${!PIDS[@]}"; do
            kill -0 "${PIDS[$id]}" 2>/dev/null && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for id in "${!PIDS[@]}"; do
        if kill -0 "${PIDS[$id]}" 2>/dev/null; then
            echo "   node $id (pid ${PIDS[$id]}) did not stop in 5 s: SIGKILL"
            kill -KILL "${PIDS[$id]}" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    echo "   done. Output is in $LOG_DIR/node_<id>.out"
}
trap 'stop_all; exit 130' INT TERM
trap 'stop_all' EXIT

for id in "${NODE_IDS[@]}"; do
    out="$LOG_DIR/node_$id.out"
    "$BIN" --node-id "$id" --config "$CONFIG" >"$out" 2>&1 &
    PIDS[$id]=$!
    echo "🚀 node $id: pid ${PIDS[$id]}, output in $out"
done

check_alive() {
    for id in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$id]}" 2>/dev/null; then
            echo "❌ node $id (pid ${PIDS[$id]}) exited; the end of its output:" >&2
            tail -n 20 "$LOG_DIR/node_$id.out" >&2
            unset "PIDS[$id]"
            return 1
        fi
    done
}

echo "⏳ Waiting up to ${LEADER_WAIT_SECONDS} s for a leader..."
leader=""
deadline=$((SECONDS + LEADER_WAIT_SECONDS))
while [[ -z "$leader" ]]; do
    check_alive || exit 1
    for id in "${NODE_IDS[@]}"; do
        if grep -q "👑" "$LOG_DIR/node_$id.out" 2>/dev/null; then
            leader=$id
        fi
    done
    if [[ -z "$leader" && $SECONDS -ge $deadline ]]; then
        echo "❌ no leader after ${LEADER_WAIT_SECONDS} s" >&2
        exit 1
    fi
    [[ -z "$leader" ]] && sleep 0.1
done
echo "👑 node $leader is the leader. Ctrl-C stops the cluster."
# Every node serves the etcd v3 API on its address (README: "etcdctl against the local cluster").
ENDPOINTS=$(sed -n 's/^[[:space:]-]*ip_address:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\)"\{0,1\}.*/\1/p' "$CONFIG" |
    paste -d: - <(sed -n 's/^[[:space:]-]*port:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$CONFIG") | paste -sd, -)
echo "🔑 etcd API: ETCDCTL_API=3 etcdctl --endpoints=$ENDPOINTS put hello world"

# After the first leader: a node that dies is reported (the others keep running, so a failover can
# be watched in their output); the script ends when Ctrl-C is pressed or no node it started is left.
while [[ ${#PIDS[@]} -gt 0 ]]; do
    if ! check_alive; then
        echo "   restart it with: $BIN --node-id <id> --config $CONFIG >>$LOG_DIR/node_<id>.out 2>&1 &" >&2
        continue
    fi
    sleep 1
done
echo "❌ every node has exited" >&2
exit 1

#!/usr/bin/env bash
# Starts every node of a cluster config on this machine, waits for a leader, and owns the nodes
# until it is stopped.
#
#   ./run_cluster.sh [config.yaml]              start every node; Ctrl-C stops them all
#   ./run_cluster.sh restart <id> [config.yaml] start node <id> again (after it exited or was killed)
#   ./run_cluster.sh stop [config.yaml]         stop every node this script started or restarted
#   ./run_cluster.sh status [config.yaml]       which nodes run, with their pids
#
# (default config: cluster_config.yaml). Each node's output is appended to
# <log_directory>/node_<id>.out; its pid is kept in <log_directory>/run_cluster/node_<id>.pid, so
# that every invocation (a restart from another terminal included) knows the same nodes: Ctrl-C
# in the starting terminal, or `stop`, stops each one with a pid file, whoever started it (SIGTERM,
# then SIGKILL after 5 s). A pid file only counts while its process is this config's node (checked
# in /proc), so a stale one is ignored. Starting while nodes of the config still run refuses and
# says which, without touching their output. If a node exits on its own (say you kill -9 the
# leader to watch a failover), the starting terminal shows the end of its output and the command
# that restarts it.
set -euo pipefail

cd "$(dirname "$0")"
COMMAND=start
RESTART_ID=""
case "${1:-}" in
    restart)
        RESTART_ID=${2:-}
        if [[ ! "$RESTART_ID" =~ ^[0-9]+$ ]]; then
            echo "usage: $0 restart <node id> [config.yaml]" >&2
            exit 2
        fi
        COMMAND=restart
        shift 2
        ;;
    stop | status)
        COMMAND=$1
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac
CONFIG=${1:-cluster_config.yaml}
LEADER_WAIT_SECONDS=${LEADER_WAIT_SECONDS:-30}
# RUN_CLUSTER_BIN: run that binary and do not build (tests/run_cluster_script.rs).
BIN=${RUN_CLUSTER_BIN:-${CARGO_TARGET_DIR:-./target}/release/rust-raft-log}

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
# Paths the nodes are started with are relative to this directory; the pid files and the checks
# below use the same spelling.
PID_DIR="$LOG_DIR/run_cluster"

pid_file() { echo "$PID_DIR/node_$1.pid"; }

# The pid of node $1 if it runs (its pid file names a live rust-raft-log with --node-id $1 and
# this config); nothing otherwise.
node_pid() {
    local file pid cmdline
    file=$(pid_file "$1")
    [[ -f "$file" ]] || return 0
    pid=$(<"$file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
    if [[ "$cmdline" == *rust-raft-log*"--node-id $1 --config $CONFIG"* ]]; then
        echo "$pid"
    fi
}

running_nodes() {
    local id pid
    for id in "${NODE_IDS[@]}"; do
        pid=$(node_pid "$id")
        [[ -n "$pid" ]] && echo "$id $pid"
    done
    return 0
}

# Starts node $1 in the background, output appended, pid recorded.
start_node() {
    local id=$1 out="$LOG_DIR/node_$1.out"
    mkdir -p "$PID_DIR"
    echo "=== $(date -u +%FT%TZ) run_cluster.sh starts node $id" >>"$out"
    nohup "$BIN" --node-id "$id" --config "$CONFIG" >>"$out" 2>&1 &
    echo $! >"$(pid_file "$id")"
    echo "🚀 node $id: pid $!, output in $out"
}

# Stops every node with a live pid file: SIGTERM, then SIGKILL after 5 s.
stop_nodes() {
    local running id pid
    mapfile -t running < <(running_nodes)
    echo "🛑 Stopping ${#running[@]} node(s)..."
    for entry in "${running[@]}"; do
        kill -TERM "${entry#* }" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        [[ -z "$(running_nodes)" ]] && break
        sleep 0.1
    done
    while read -r id pid; do
        [[ -z "${id:-}" ]] && continue
        echo "   node $id (pid $pid) did not stop in 5 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done < <(running_nodes)
    rm -f "$PID_DIR"/node_*.pid
    echo "   done. Output is in $LOG_DIR/node_<id>.out"
}

restart_command() { echo "$0 restart $1 $CONFIG"; }

case $COMMAND in
    stop)
        stop_nodes
        exit 0
        ;;
    status)
        for id in "${NODE_IDS[@]}"; do
            pid=$(node_pid "$id")
            if [[ -n "$pid" ]]; then
                echo "node $id: running, pid $pid"
            else
                echo "node $id: not running"
            fi
        done
        exit 0
        ;;
    restart)
        if [[ ! " ${NODE_IDS[*]} " == *" $RESTART_ID "* ]]; then
            echo "Error: Node ID $RESTART_ID not found in $CONFIG" >&2
            exit 1
        fi
        pid=$(node_pid "$RESTART_ID")
        if [[ -n "$pid" ]]; then
            echo "node $RESTART_ID is still running (pid $pid); stop it first (kill $pid)" >&2
            exit 1
        fi
        if [[ ! -x "$BIN" ]]; then
            echo "Error: $BIN is not built; run $0 $CONFIG first" >&2
            exit 1
        fi
        start_node "$RESTART_ID"
        echo "   the terminal running '$0 $CONFIG' (or '$0 stop $CONFIG') stops it with the others"
        exit 0
        ;;
esac

mapfile -t STILL < <(running_nodes)
if [[ ${#STILL[@]} -gt 0 ]]; then
    echo "Error: ${#STILL[@]} node(s) of $CONFIG are still running from an earlier run:" >&2
    for entry in "${STILL[@]}"; do
        echo "   node ${entry% *}: pid ${entry#* }" >&2
    done
    echo "Stop them with: $0 stop $CONFIG   (their output in $LOG_DIR is left as it is)" >&2
    exit 1
fi

if [[ -z "${RUN_CLUSTER_BIN:-}" ]]; then
    echo "🔨 Building (release)..."
    cargo build --release --quiet
fi

mkdir -p "$LOG_DIR"
trap 'echo; stop_nodes; exit 130' INT TERM
trap 'stop_nodes' EXIT

for id in "${NODE_IDS[@]}"; do
    start_node "$id"
done

# Reports each node that stopped running since the last call, once (a node restarted meanwhile
# runs again and is watched again).
declare -A REPORTED=()
report_exits() {
    local id pid
    for id in "${NODE_IDS[@]}"; do
        pid=$(node_pid "$id")
        if [[ -n "$pid" ]]; then
            unset "REPORTED[$id]"
        elif [[ -z "${REPORTED[$id]:-}" ]]; then
            REPORTED[$id]=1
            echo "❌ node $id exited; the end of its output:" >&2
            tail -n 20 "$LOG_DIR/node_$id.out" >&2
            echo "   restart it with: $(restart_command "$id")" >&2
        fi
    done
}

echo "⏳ Waiting up to ${LEADER_WAIT_SECONDS} s for a leader..."
leader=""
deadline=$((SECONDS + LEADER_WAIT_SECONDS))
while [[ -z "$leader" ]]; do
    if [[ -z "$(running_nodes)" ]]; then
        report_exits
        echo "❌ every node has exited" >&2
        exit 1
    fi
    for id in "${NODE_IDS[@]}"; do
        if grep -q "👑" "$LOG_DIR/node_$id.out" 2>/dev/null; then
            leader=$id
        fi
    done
    if [[ -z "$leader" && $SECONDS -ge $deadline ]]; then
        report_exits
        echo "❌ no leader after ${LEADER_WAIT_SECONDS} s" >&2
        exit 1
    fi
    [[ -z "$leader" ]] && sleep 0.1
done
echo "👑 node $leader is the leader. Ctrl-C (or '$0 stop $CONFIG') stops the cluster."
# Every node serves the etcd v3 API on its address (README: "etcdctl against the local cluster").
ENDPOINTS=$(sed -n 's/^[[:space:]-]*ip_address:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\)"\{0,1\}.*/\1/p' "$CONFIG" |
    paste -d: - <(sed -n 's/^[[:space:]-]*port:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$CONFIG") | paste -sd, -)
echo "🔑 etcd API: ETCDCTL_API=3 etcdctl --endpoints=$ENDPOINTS put hello world"
METRICS=$(sed -n 's/^[[:space:]-]*metrics_address:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\)"\{0,1\}.*/\1/p' "$CONFIG" | head -n 1)
[[ -n "$METRICS" ]] && echo "📈 metrics and health: curl http://$METRICS/metrics, curl http://$METRICS/health"

# After the first leader: a node that dies is reported (the others keep running, so a failover can
# be watched in their output) and may be restarted from another terminal; the script ends on
# Ctrl-C, on `stop` (no pid file left), or when no node is left running.
while true; do
    report_exits
    if [[ -z "$(running_nodes)" ]]; then
        if ! ls "$PID_DIR"/node_*.pid >/dev/null 2>&1; then
            echo "the nodes were stopped ('$0 stop')"
            exit 0
        fi
        echo "❌ every node has exited" >&2
        exit 1
    fi
    sleep 1
done

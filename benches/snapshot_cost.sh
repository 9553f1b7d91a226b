#!/usr/bin/env bash
# benches/snapshot_cost.sh: what snapshots cost a client, and what they save at a restart.
#
#   benches/snapshot_cost.sh [--write] [--only latency|restart]
#
# Real node processes (the release build), 3-node clusters on 127.0.0.1 only, configs generated in
# a temporary directory under target/tmp (data directories on the same disk). Load and probes are
# `kvbench` (tools/kvbench), every load request to the leader's endpoint. Two measurements:
#
# 1. Put latency while snapshots are taken, against the same without snapshots. Two clusters run
#    side by side: "on" (snapshot_entries LAT_SNAPSHOT_ENTRIES) and "off" (snapshot_entries 0).
#    Each is preloaded with PRELOAD_KEYS keys of VAL_SIZE bytes (so every snapshot of "on" carries
#    that whole state), then closed-loop puts of random keys over the preloaded key space are
#    measured at each CLIENT_COUNTS (connections: one per 10 clients). The cells are interleaved:
#    every (clients) cell runs against one cluster then the other, the order alternating from
#    cell to cell and round to round, for ROUNDS rounds, so machine noise hits both alike. A row
#    is the median over the rounds of each percentile (max: the largest). The snapshots that
#    completed inside each measured window are counted from the nodes' `📸 Snapshot at index`
#    lines (timestamps between the end of the warm-up and the end of the run), with their
#    durations, to show that snapshots really were taken while the latency was measured.
#
# 2. Restart time. Two fresh clusters: "on" (the default snapshot settings) and "off"
#    (snapshot_entries 0). Both receive puts to RESTART_KEYS keys until each count of
#    RESTART_PUTS (cumulative: the second count adds the difference). At each count, one
#    follower is stopped (SIGTERM, waited for) and restarted, RESTART_REPEATS times per cluster
#    (clusters alternating), while the cluster is idle. From the spawn (bash $EPOCHREALTIME), the
#    script measures (a) the node's `✅ Raft node created successfully` log line (its timestamp),
#    (b) the first serializable Range on the restarted node whose revision is the one the leader
#    answered before the stop (it has caught up and serves from its own store), (c) the first
#    linearizable Range that succeeds on it after (b). (b) and (c) come from
#    `kvbench --wait-revision`, started right after the spawn and probing every PROBE_MS ms.
#    A row is the median over the repeats; the restore time and the log the node opened come from
#    its log lines (`📸 Restored the snapshot ... in M ms`, `log opened first=.. last=..`).
#
# The machine, the load average and the git commit are printed with the tables. Everything
# started is stopped on exit (trap), whatever happens.
#
# --write puts the result into BENCHMARKS.md between the markers
# `<!-- snapshot_cost.sh: begin -->` and `<!-- snapshot_cost.sh: end -->` (appended at the end of
# the file the first time); text outside the markers is kept.
#
# Environment: ROUNDS (3), RUN_SECONDS per latency measurement (10), WARMUP_SECONDS (1),
# CLIENT_COUNTS ("16 100"), PRELOAD_KEYS (100000), VAL_SIZE (256), LAT_SNAPSHOT_ENTRIES (10000:
# the "on" cluster's snapshot_entries in measurement 1), LAT_SNAPSHOT_LOG_PERCENT (default: the
# node's own, 50; a number is written as the "on" cluster's snapshot_log_percent, 0 turning the
# size rule off, as before it existed), RESTART_PUTS ("100000 1000000"),
# RESTART_KEYS (10000), RESTART_REPEATS (3), PROBE_MS (5), RESTART_WAIT_MAX (300 s: a restarted
# node that does not serve by then fails the run), LOAD_CLIENTS (100) and LOAD_CONNS (10) for the
# preloads, OURS_RUST_LOG (the nodes' RUST_LOG, default info), PORT_BASE (default: the first free
# block of 10 ports from 26000: below Linux's ephemeral range, 32768-60999, where the outgoing
# connections of nodes started a moment earlier can take a port between the check and the bind),
# KEEP_WORKDIR=1 keeps the data directories and logs (the logs and kvbench outputs are kept anyway
# when something failed), NODE_BIN (and KVBENCH) to run given binaries instead of building this
# checkout (an A/B of two builds, one run each; the table then names the binary, not the commit).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

WRITE=0
ONLY=both
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write) WRITE=1 ;;
        --only)
            shift
            ONLY=${1:-}
            [[ $ONLY == latency || $ONLY == restart ]] || {
                echo "Error: --only latency|restart" >&2
                exit 2
            }
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'
            exit 0
            ;;
        *) echo "Error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ $WRITE == 1 && $ONLY != both ]]; then
    echo "Error: --write needs both measurements (not --only)" >&2
    exit 2
fi

ROUNDS=${ROUNDS:-3}
RUN_SECONDS=${RUN_SECONDS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-1}
CLIENT_COUNTS=${CLIENT_COUNTS:-"16 100"}
PRELOAD_KEYS=${PRELOAD_KEYS:-100000}
KEY_SIZE=8
VAL_SIZE=${VAL_SIZE:-256}
LAT_SNAPSHOT_ENTRIES=${LAT_SNAPSHOT_ENTRIES:-10000}
LAT_SNAPSHOT_LOG_PERCENT=${LAT_SNAPSHOT_LOG_PERCENT:-default}
LAT_PERCENT_SHOWN=$LAT_SNAPSHOT_LOG_PERCENT
[[ $LAT_PERCENT_SHOWN == default ]] && LAT_PERCENT_SHOWN="50 (the default)"
RESTART_PUTS=${RESTART_PUTS:-"100000 1000000"}
RESTART_KEYS=${RESTART_KEYS:-10000}
RESTART_REPEATS=${RESTART_REPEATS:-3}
PROBE_MS=${PROBE_MS:-5}
RESTART_WAIT_MAX=${RESTART_WAIT_MAX:-300}
LOAD_CLIENTS=${LOAD_CLIENTS:-100}
LOAD_CONNS=${LOAD_CONNS:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [[ -n ${NODE_BIN:-} ]]; then
    # A given node binary (an A/B of two builds): used as it is, nothing is built.
    KVBENCH=${KVBENCH:-$TARGET_DIR/release/kvbench}
    [[ -x $NODE_BIN && -x $KVBENCH ]] || { echo "NODE_BIN=$NODE_BIN or KVBENCH=$KVBENCH is not an executable" >&2; exit 2; }
else
    KVBENCH=$TARGET_DIR/release/kvbench
    NODE_BIN=$TARGET_DIR/release/rust-raft-log
    echo "building (release): kvbench and rust-raft-log..."
    cargo build --release --quiet -p kvbench -p rust-raft-log
fi

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/snapshot-cost.XXXXXX")
# Node processes by "cluster.node" (e.g. lat-on.2); every one is a child of this shell.
declare -A PIDS=()
HAD_ERRORS=0
# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
stop_all() {
    [[ ${#PIDS[@]} -gt 0 ]] && stop_pids "${PIDS[@]}"
    PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    # kvbench runs in the foreground; a probe interrupted by a signal is stopped with its job.
    local job
    for job in $(jobs -p); do kill -TERM "$job" 2>/dev/null || true; done
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        echo "work directory (logs, data) kept: $WORK" >&2
    elif [[ $HAD_ERRORS == 1 ]]; then
        find "$WORK" -mindepth 2 -maxdepth 2 -name raft -type d -exec rm -rf {} +
        echo "some requests failed: node logs and kvbench outputs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -n ${PORT_BASE:-} ]] || PORT_BASE=$(free_port_block 26000)

# $EPOCHREALTIME (seconds with a fraction, the locale's decimal point) → Unix microseconds.
now_us() { local t=${EPOCHREALTIME/[^0-9]/}; echo "$((10#$t))"; }
# A node log line's leading RFC 3339 UTC timestamp → Unix microseconds ("-" if none).
log_ts_us() {
    TZ=UTC awk '{ if (split($1, a, /[-T:Z]/) < 6) { print "-"; exit }
                  printf "%.0f\n", (mktime(a[1] " " a[2] " " a[3] " " a[4] " " a[5] " 0") + a[6]) * 1e6; exit }'
}

# ---- clusters ----------------------------------------------------------------------------------
# Cluster "on" uses ports PORT_BASE+1..3, "off" PORT_BASE+4..6 (the two measurements run one after
# the other, each with its own pair of clusters and data directories).
port_of() { # CONFIG NODE
    local off=0
    [[ $1 == off ]] && off=3
    echo $((PORT_BASE + off + $2))
}
endpoints_of() { # CONFIG
    echo "127.0.0.1:$(port_of "$1" 1),127.0.0.1:$(port_of "$1" 2),127.0.0.1:$(port_of "$1" 3)"
}

# start_cluster NAME CONFIG SNAPSHOT_ENTRIES|default [SNAPSHOT_LOG_PERCENT|default]: NAME is the
# directory under $WORK.
start_cluster() {
    local name=$1 cfg=$2 entries=$3 percent=${4:-default} dir=$WORK/$1 i settings=()
    mkdir -p "$dir"
    [[ $entries != default ]] && settings=("snapshot_entries: $entries")
    [[ $percent != default ]] && settings+=("snapshot_log_percent: $percent")
    write_ours_config "$dir/cluster.yaml" "$dir/raft" $(($(port_of "$cfg" 1) - 1)) "${settings[@]}"
    for i in 1 2 3; do spawn_node "$name" "$i" "$dir/n$i.log"; done
}
spawn_node() { # NAME NODE LOGFILE
    RUST_LOG=${OURS_RUST_LOG:-info} "$NODE_BIN" --node-id "$2" --config "$WORK/$1/cluster.yaml" >"$3" 2>&1 &
    PIDS[$1.$2]=$!
}
stop_cluster() {
    local name=$1 i pids=()
    for i in 1 2 3; do
        [[ -n ${PIDS[$name.$i]:-} ]] && pids+=("${PIDS[$name.$i]}") && unset "PIDS[$name.$i]"
    done
    [[ ${#pids[@]} -gt 0 ]] && stop_pids "${pids[@]}"
    return 0
}
check_alive() {
    local name=$1 i
    for i in 1 2 3; do
        if ! kill -0 "${PIDS[$name.$i]}" 2>/dev/null; then
            echo "Error: node $i of $name (pid ${PIDS[$name.$i]}) exited; its log:" >&2
            tail -n 5 "$WORK/$name"/n"$i"*.log >&2
            exit 1
        fi
    done
}

# leader_node CONFIG: the node number (1..3) of the leader, found by kvbench (Maintenance.Status).
leader_node() {
    local cfg=$1 out=$WORK/leader.out port i
    "$KVBENCH" --endpoints "$(endpoints_of "$cfg")" --target leader --leader-wait 30 \
        --op range --consistency s --total 1 >"$out" 2>&1 || {
        echo "Error: no leader in cluster $cfg:" >&2
        cat "$out" >&2
        exit 1
    }
    port=$(sed -n 's/.* to http:\/\/127\.0\.0\.1:\([0-9]*\) (the leader.*/\1/p' "$out")
    for i in 1 2 3; do [[ $(port_of "$cfg" "$i") == "$port" ]] && { echo "$i"; return; }; done
    echo "Error: the leader's port $port is none of cluster $cfg's" >&2
    exit 1
}

# preload NAME CONFIG COUNT KEYS: COUNT puts of keys 0..KEYS-1 in sequence (and around again).
preload() {
    local name=$1 cfg=$2 count=$3 keys=$4 out
    out=$WORK/$name/preload-$count.out
    check_alive "$name"
    "$KVBENCH" --endpoints "$(endpoints_of "$cfg")" --target leader --leader-wait 30 \
        --op put --keys seq --key-space "$keys" --total "$count" --clients "$LOAD_CLIENTS" \
        --conns "$LOAD_CONNS" --key-size $KEY_SIZE --val-size "$VAL_SIZE" >"$out" 2>&1 || {
        echo "Error: kvbench failed preloading $name:" >&2
        cat "$out" >&2
        exit 1
    }
    local line errors
    line=$(grep '^kvbench-result ' "$out")
    errors=$(sed -n 's/.* errors=\([^ ]*\).*/\1/p' <<<"$line")
    printf '  %s: %d puts over %d keys, %s ok/s, errors %s\n' "$name" "$count" "$keys" \
        "$(sed -n 's/.* ops_per_sec=\([^ ]*\).*/\1/p' <<<"$line")" "$errors"
    if [[ $errors != 0 ]]; then
        echo "Error: the preload of $name had failed puts:" >&2
        grep '^errors: ' "$out" >&2 || true
        exit 1
    fi
}

# snapshots_between NAME NODE FROM_US TO_US: "COUNT DURATIONS_MS_COMMA_SEPARATED BYTES" of the
# `📸 Snapshot at index` lines of the node's first log whose timestamp is in [FROM_US, TO_US].
snapshots_between() {
    TZ=UTC awk -v from="$3" -v to="$4" '
        /📸 Snapshot at index/ {
            if (split($1, a, /[-T:Z]/) < 6) next
            t = (mktime(a[1] " " a[2] " " a[3] " " a[4] " " a[5] " 0") + a[6]) * 1e6
            if (t < from || t > to) next
            n++
            ms = $0; sub(/ ms;.*/, "", ms); sub(/.* in /, "", ms)
            by = $0; sub(/ payload bytes.*/, "", by); sub(/.*: /, "", by)
            d = d (d == "" ? "" : ",") ms
        }
        END { printf "%d %s %s\n", n, (d == "" ? "-" : d), (by == "" ? "-" : by) }' "$WORK/$1/n$2.log"
}

# µs → ms: 3 decimals for request latencies (ms), 1 for restart times (ms1).
ms() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.3f", v / 1000 }'; }
ms1() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.1f", v / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
# stat FILE COLUMN median|max|sum CONDITION: over the rows of FILE where the awk CONDITION holds.
stat() {
    awk "($4) && \$$2 != \"-\" { print \$$2 }" "$1" | sort -g | awk -v how="$3" '
        { v[NR] = $1; s += $1 }
        END {
            if (NR == 0) { print "-"; exit }
            if (how == "max") print v[NR]
            else if (how == "sum") print s
            else if (NR % 2) print v[(NR + 1) / 2]
            else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# ---- measurement 1: put latency with and without snapshots ------------------------------------
LAT=$WORK/latency.txt
: >"$LAT"

# measure_latency CONFIG CLIENTS ROUND: one kvbench run against lat-CONFIG; one line to $LAT.
measure_latency() {
    local cfg=$1 clients=$2 round=$3 name=lat-$1 out conns t0 t1 load leader
    out=$WORK/$name/put-$clients-$round.out
    conns=$(((clients + 9) / 10))
    check_alive "$name"
    leader=$(leader_node "$cfg")
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(now_us)
    "$KVBENCH" --endpoints "$(endpoints_of "$cfg")" --target leader --leader-wait 30 \
        --op put --keys random --key-space "$PRELOAD_KEYS" --clients "$clients" --conns "$conns" \
        --duration "$RUN_SECONDS" --warmup "$WARMUP_SECONDS" --key-size $KEY_SIZE \
        --val-size "$VAL_SIZE" --timeline >"$out" 2>&1 || {
        echo "Error: kvbench failed against $name:" >&2
        cat "$out" >&2
        exit 1
    }
    t1=$(now_us)
    # Give a snapshot finishing at the very end its log line before the logs are read.
    sleep 0.2
    local line kv_ ok errors ops p50 p99 p999 max
    line=$(grep '^kvbench-result ' "$out")
    kv_() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    ok=$(kv_ ok) errors=$(kv_ errors) ops=$(kv_ ops_per_sec) p50=$(kv_ p50_us)
    p99=$(kv_ p99_us) p999=$(kv_ p999_us) max=$(kv_ max_us)
    # The measured window starts after the warm-up (kvbench's connect time, a few ms, is inside).
    local from=$((t0 + ${WARMUP_SECONDS%.*} * 1000000)) i snaps=0 leader_snaps=0 durations="" bytes=-
    local s_n s_d s_b
    for i in 1 2 3; do
        read -r s_n s_d s_b <<<"$(snapshots_between "$name" "$i" "$from" "$t1")"
        snaps=$((snaps + s_n))
        [[ $i == "$leader" ]] && leader_snaps=$s_n
        if [[ $s_d != - ]]; then
            durations+="${durations:+,}$s_d"
            bytes=$s_b
        fi
    done
    local d_med d_max
    d_med=$(tr ',' '\n' <<<"${durations:--}" | awk '$1 != "-"' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }')
    d_max=$(tr ',' '\n' <<<"${durations:--}" | awk '$1 != "-"' | sort -g | awk '{ m = $1 } END { print (NR ? m : "-") }')
    # 1 config 2 clients 3 round 4 ops 5 p50 6 p99 7 p999 8 max 9 errors 10 snapshots (3 nodes)
    # 11 leader's snapshots 12 median snapshot ms 13 max snapshot ms 14 payload bytes 15 load
    echo "$cfg $clients $round $ops $p50 $p99 $p999 $max $errors $snaps $leader_snaps $d_med $d_max $bytes $load" >>"$LAT"
    printf '  snapshots %-3s %3d clients, round %d: %8.1f ok/s, p50 %7.3f ms, p99 %7.3f ms, p99.9 %7.3f ms, max %7.3f ms, errors %s; snapshots in the window: %d (leader %d), ms %s; load %s\n' \
        "$cfg" "$clients" "$round" "$ops" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" \
        "$(ms "$max")" "$errors" "$snaps" "$leader_snaps" "${durations:--}" "$load"
    if [[ $errors != 0 ]]; then
        HAD_ERRORS=1
        grep '^errors: ' "$out" | sed 's/^/      /' || true
    fi
}

run_latency() {
    echo
    echo "== measurement 1: put latency, snapshots on (snapshot_entries $LAT_SNAPSHOT_ENTRIES, snapshot_log_percent $LAT_PERCENT_SHOWN) vs off =="
    start_cluster lat-on on "$LAT_SNAPSHOT_ENTRIES" "$LAT_SNAPSHOT_LOG_PERCENT"
    start_cluster lat-off off 0
    leader_node on >/dev/null
    leader_node off >/dev/null
    echo "preloading $PRELOAD_KEYS keys of $VAL_SIZE bytes into each cluster..."
    preload lat-on on "$PRELOAD_KEYS" "$PRELOAD_KEYS"
    preload lat-off off "$PRELOAD_KEYS" "$PRELOAD_KEYS"
    local cell=0 round clients cfg
    for round in $(seq "$ROUNDS"); do
        for clients in $CLIENT_COUNTS; do
            local order=(on off)
            (((cell + round) % 2 == 1)) && order=(off on)
            for cfg in "${order[@]}"; do measure_latency "$cfg" "$clients" "$round"; done
            cell=$((cell + 1))
        done
    done
    stop_cluster lat-on
    stop_cluster lat-off
}

# ---- measurement 2: restart time --------------------------------------------------------------
RST=$WORK/restart.txt
: >"$RST"

# restart_once CONFIG PUTS REPEAT: stop a follower of rst-CONFIG, restart it, time it.
restart_once() {
    local cfg=$1 puts=$2 rep=$3 name=rst-$1 leader node out probe rev t_stop t_down t0
    check_alive "$name"
    leader=$(leader_node "$cfg")
    node=$((leader % 3 + 1))
    # The revision the cluster has before the stop (a linearizable read at the leader).
    out=$WORK/$name/revision-$puts-$rep.out
    "$KVBENCH" --endpoints "127.0.0.1:$(port_of "$cfg" "$leader")" --wait-revision 0 \
        --duration 30 >"$out" 2>&1 || {
        echo "Error: the leader of $name did not answer a range:" >&2
        cat "$out" >&2
        exit 1
    }
    rev=$(sed -n 's/^kvbench-wait .* linearizable_revision=\([0-9]*\).*/\1/p' "$out")
    # SIGTERM and wait for the exit, polling every 10 ms (SIGKILL after 30 s, reported).
    local pid=${PIDS[$name.$node]} waited=0
    t_stop=$(now_us)
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.01
        waited=$((waited + 1))
        if [[ $waited -ge 3000 ]]; then
            echo "  warning: node $node of $name still running 30 s after SIGTERM; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait "$pid" 2>/dev/null || true
    t_down=$(now_us)
    local log=$WORK/$name/n$node.restart-$puts-$rep.log
    probe=$WORK/$name/probe-$puts-$rep.out
    t0=$(now_us)
    spawn_node "$name" "$node" "$log"
    "$KVBENCH" --endpoints "127.0.0.1:$(port_of "$cfg" "$node")" --wait-revision "$rev" \
        --probe-interval-ms "$PROBE_MS" --duration "$RESTART_WAIT_MAX" --timeout 5 >"$probe" 2>&1 || {
        echo "Error: node $node of $name did not serve revision $rev within $RESTART_WAIT_MAX s:" >&2
        cat "$probe" >&2
        tail -n 5 "$log" >&2
        exit 1
    }
    local line created t_s t_l restore opened first last
    line=$(grep '^kvbench-wait ' "$probe")
    t_s=$(sed -n 's/.* serializable_unix_us=\([0-9]*\).*/\1/p' <<<"$line")
    t_l=$(sed -n 's/.* linearizable_unix_us=\([0-9]*\).*/\1/p' <<<"$line")
    created=$({ grep -m1 '✅ Raft node created successfully' "$log" || true; } | log_ts_us)
    [[ -z $created ]] && created=-
    restore=$(sed -n 's/.*📸 Restored the snapshot at index [0-9]* (term [0-9]*) in \([0-9]*\) ms.*/\1/p' "$log" | head -n 1)
    opened=$(grep -m1 'log opened' "$log" || true)
    first=$(sed -n 's/.*first=\([0-9]*\).*/\1/p' <<<"$opened")
    last=$(sed -n 's/.*last=\([0-9]*\).*/\1/p' <<<"$opened")
    local a b c stop_ms du_mb
    a=$([[ $created == - ]] && echo - || echo $((created - t0)))
    b=$((t_s - t0))
    c=$((t_l - t0))
    stop_ms=$(((t_down - t_stop) / 1000))
    du_mb=$(du -sm "$WORK/$name/raft/node_$node" 2>/dev/null | cut -f1)
    # 1 config 2 puts 3 repeat 4 (a) µs 5 (b) µs 6 (c) µs 7 restore ms 8 log first 9 log last
    # 10 revision 11 stop ms 12 node directory MiB 13 node
    echo "$cfg $puts $rep $a $b $c ${restore:--} ${first:--} ${last:--} $rev $stop_ms ${du_mb:--} $node" >>"$RST"
    printf '  snapshots %-3s %8d puts, restart %d of node %d: created %s ms, serializable at revision %s %s ms, linearizable %s ms; restore %s ms, log opened %s..%s, stop took %d ms, node dir %s MiB\n' \
        "$cfg" "$puts" "$rep" "$node" "$(ms1 "$a")" "$rev" "$(ms1 "$b")" "$(ms1 "$c")" "${restore:--}" \
        "${first:--}" "${last:--}" "$stop_ms" "${du_mb:--}"
}

run_restart() {
    echo
    echo "== measurement 2: restart time after puts to $RESTART_KEYS keys, snapshots on (defaults) vs off =="
    start_cluster rst-on on default
    start_cluster rst-off off 0
    leader_node on >/dev/null
    leader_node off >/dev/null
    local loaded=0 puts rep cfg cell=0
    for puts in $RESTART_PUTS; do
        echo "loading to $puts puts..."
        preload rst-on on $((puts - loaded)) "$RESTART_KEYS"
        preload rst-off off $((puts - loaded)) "$RESTART_KEYS"
        loaded=$puts
        for rep in $(seq "$RESTART_REPEATS"); do
            local order=(on off)
            (((cell + rep) % 2 == 1)) && order=(off on)
            for cfg in "${order[@]}"; do restart_once "$cfg" "$puts" "$rep"; done
        done
        cell=$((cell + 1))
    done
    stop_cluster rst-on
    stop_cluster rst-off
}

# ---- run ---------------------------------------------------------------------------------------
START_LOAD=$(load_avg)
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ $NODE_BIN == "$TARGET_DIR/release/rust-raft-log" ]] || COMMIT="$COMMIT checkout, node binary $NODE_BIN"
git diff --quiet HEAD 2>/dev/null || COMMIT+=" (with uncommitted changes)"
DISK=$(findmnt -no SOURCE,FSTYPE -T "$WORK" | tr -s ' ')
MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r); data directories on $DISK"
echo "machine: $MACHINE"
echo "load average at start: $START_LOAD"
echo "work directory: $WORK; ports $PORT_BASE..$((PORT_BASE + 9)) on 127.0.0.1"
T_BEGIN=$(now_us)

[[ $ONLY != restart ]] && run_latency
[[ $ONLY != latency ]] && run_restart
END_LOAD=$(load_avg)
ELAPSED_S=$((($(now_us) - T_BEGIN) / 1000000))

# ---- tables ------------------------------------------------------------------------------------
SECTION=$WORK/section.md
{
    echo "Command: \`benches/snapshot_cost.sh\` ($START_DATE; commit $COMMIT; ROUNDS=$ROUNDS RUN_SECONDS=$RUN_SECONDS WARMUP_SECONDS=$WARMUP_SECONDS PRELOAD_KEYS=$PRELOAD_KEYS VAL_SIZE=$VAL_SIZE LAT_SNAPSHOT_ENTRIES=$LAT_SNAPSHOT_ENTRIES LAT_SNAPSHOT_LOG_PERCENT=$LAT_SNAPSHOT_LOG_PERCENT RESTART_PUTS=\"$RESTART_PUTS\" RESTART_KEYS=$RESTART_KEYS RESTART_REPEATS=$RESTART_REPEATS PROBE_MS=$PROBE_MS; ${ELAPSED_S} s in all)"
    echo
    echo "Machine: $MACHINE. Load average at start: $START_LOAD; at end: $END_LOAD."
} >"$SECTION"

if [[ $ONLY != restart ]]; then
    {
        echo
        echo "**Put latency with snapshots on (snapshot_entries $LAT_SNAPSHOT_ENTRIES, snapshot_log_percent $LAT_PERCENT_SHOWN) and off (snapshot_entries 0).** 3-node clusters of the release build on 127.0.0.1, default settings otherwise; each preloaded with $PRELOAD_KEYS keys of $VAL_SIZE bytes (${KEY_SIZE}-byte keys), so each snapshot carries that whole state; then closed-loop puts of random keys over them, from \`kvbench\` on the same 2 cores, to the leader, one HTTP/2 connection per 10 clients; ${WARMUP_SECONDS} s warm-up, ${RUN_SECONDS} s measured; $ROUNDS rounds, the two clusters interleaved (order alternating). Percentiles: median over the rounds; max: the largest. Snapshots: those whose \`📸 Snapshot at index\` line (logged when the snapshot is durable and the log compacted) falls inside a measured window, summed over the three nodes, per round (the leader's in brackets), with the median and largest duration the line reports."
        echo
        echo "| clients | snapshots | ok/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | snapshots in the window per round: 3 nodes (leader) | snapshot ms median / max | load 1m per round |"
        echo "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|"
    } >>"$SECTION"
    CHECKS=""
    for clients in $CLIENT_COUNTS; do
        declare -A P99=()
        for cfg in on off; do
            cond="\$1 == \"$cfg\" && \$2 == $clients"
            ops=$(stat "$LAT" 4 median "$cond")
            p50=$(stat "$LAT" 5 median "$cond")
            p99=$(stat "$LAT" 6 median "$cond")
            p999=$(stat "$LAT" 7 median "$cond")
            max=$(stat "$LAT" 8 max "$cond")
            errors=$(stat "$LAT" 9 sum "$cond")
            snaps=$(awk "$cond { printf \"%s%s (%s)\", sep, \$10, \$11; sep = \", \" }" "$LAT")
            d_med=$(stat "$LAT" 12 median "$cond")
            d_max=$(stat "$LAT" 13 max "$cond")
            loads=$(awk "$cond { printf \"%s%s\", sep, \$15; sep = \" \" }" "$LAT")
            P99[$cfg]=$p99
            if [[ $cfg == on ]]; then
                label="on ($LAT_SNAPSHOT_ENTRIES, ${LAT_PERCENT_SHOWN%% *} %)"
                dur="$d_med / $d_max"
            else
                label="off"
                dur="-"
            fi
            printf '| %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$clients" "$label" \
                "$ops" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$(ms "$max")" "$errors" "$snaps" \
                "$dur" "$loads" >>"$SECTION"
        done
        r=$(ratio "${P99[on]}" "${P99[off]}")
        verdict=$(awk -v v="$r" 'BEGIN { if (v == "-") print "n/a"; else print (v <= 1.5) ? "PASS" : "MISS" }')
        printf '| %d | **p99 on ÷ off** | | | **%s×** | | | | | | |\n' "$clients" "$r" >>"$SECTION"
        CHECKS+="- $clients clients: put p99 with snapshots ÷ without: ${r}× (target <= 1.5×): **$verdict**"$'\n'
    done
    {
        echo
        echo "Target (issue 12), from this table:"
        echo
        printf '%s' "$CHECKS"
    } >>"$SECTION"
fi

if [[ $ONLY != latency ]]; then
    {
        echo
        echo "**Restart of a follower.** Two 3-node clusters: snapshots on (the default settings: snapshot_entries 10000, snapshot_catchup_entries 5000, snapshot_log_percent 50) and off (snapshot_entries 0); puts of ${VAL_SIZE}-byte values to $RESTART_KEYS keys in sequence, to the leader ($LOAD_CLIENTS clients), up to each count; then, on the idle cluster, a follower is stopped (SIGTERM, waited for) and restarted, $RESTART_REPEATS times per cluster and count (clusters alternating). Times from the spawn: (a) the node's \`✅ Raft node created successfully\` line (its log timestamp); (b) the first serializable Range on that node answering the revision the leader answered before the stop; (c) the first linearizable Range on it after (b) (\`kvbench --wait-revision\`, probing every $PROBE_MS ms). Medians over the restarts; the restore time is the node's \`📸 Restored the snapshot ... in M ms\` line, the log is what its \`log opened\` line reports (entries = last − first + 1), the directory size is the restarted node's after the restart."
        echo
        echo "| puts | snapshots | (a) node created ms | (b) serializable at the revision ms | (c) linearizable ms | (b) per restart ms | restore ms | log opened (entries) | node dir MiB | revision |"
        echo "|---:|---|---:|---:|---:|---|---:|---|---:|---:|"
    } >>"$SECTION"
    declare -A B=()
    for puts in $RESTART_PUTS; do
        for cfg in on off; do
            cond="\$1 == \"$cfg\" && \$2 == $puts"
            a=$(stat "$RST" 4 median "$cond")
            b=$(stat "$RST" 5 median "$cond")
            c=$(stat "$RST" 6 median "$cond")
            each=$(awk "$cond { printf \"%s%.0f\", sep, \$5 / 1000; sep = \", \" }" "$RST")
            restore=$(stat "$RST" 7 median "$cond")
            first=$(awk "$cond { print \$8; exit }" "$RST")
            last=$(awk "$cond { print \$9; exit }" "$RST")
            entries=$(awk -v f="$first" -v l="$last" 'BEGIN { if (f == "-" || l == "-") print "-"; else print l - f + 1 }')
            du_mb=$(stat "$RST" 12 median "$cond")
            rev=$(awk "$cond { print \$10; exit }" "$RST")
            B[$cfg.$puts]=$b
            label=$([[ $cfg == on ]] && echo "on (defaults)" || echo "off")
            printf '| %d | %s | %s | %s | %s | %s | %s | %s..%s (%s) | %s | %s |\n' "$puts" "$label" \
                "$(ms1 "$a")" "$(ms1 "$b")" "$(ms1 "$c")" "$each" "$restore" "$first" "$last" "$entries" \
                "$du_mb" "$rev" >>"$SECTION"
        done
    done
    {
        echo
        echo "Targets (issue 12), from this table:"
        echo
        for puts in $RESTART_PUTS; do
            v=$(awk -v b="${B[on.$puts]}" 'BEGIN { if (b == "-") print "n/a"; else print (b < 1000000) ? "PASS" : "MISS" }')
            echo "- snapshots on, $puts puts: serving (b) in $(ms1 "${B[on.$puts]}") ms (target < 1000 ms): **$v**"
        done
        read -r -a counts <<<"$RESTART_PUTS"
        if [[ ${#counts[@]} -ge 2 ]]; then
            lo=${counts[0]} hi=${counts[${#counts[@]} - 1]}
            r=$(ratio "${B[on.$hi]}" "${B[on.$lo]}")
            v=$(awk -v v="$r" 'BEGIN { if (v == "-") print "n/a"; else print (v <= 2) ? "PASS" : "MISS" }')
            echo "- snapshots on, (b) at $hi puts ÷ at $lo puts: ${r}× (target <= 2×): **$v**"
            echo "- snapshots off, for contrast: (b) at $hi puts ÷ at $lo puts: $(ratio "${B[off.$hi]}" "${B[off.$lo]}")×; off ÷ on at $hi puts: $(ratio "${B[off.$hi]}" "${B[on.$hi]}")×"
        fi
    } >>"$SECTION"
fi

echo
cat "$SECTION"

if [[ $WRITE == 1 ]]; then
    BEGIN='<!-- snapshot_cost.sh: begin -->'
    END='<!-- snapshot_cost.sh: end -->'
    NEW=$WORK/BENCHMARKS.md
    if grep -qF "$BEGIN" BENCHMARKS.md; then
        awk -v b="$BEGIN" -v e="$END" -v f="$SECTION" '
            $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
            $0 == e { skip = 0 }
            !skip { print }' BENCHMARKS.md >"$NEW"
    else
        {
            cat BENCHMARKS.md
            echo
            echo "## Snapshot cost: \`benches/snapshot_cost.sh\`"
            echo
            echo "$BEGIN"
            cat "$SECTION"
            echo "$END"
        } >"$NEW"
    fi
    cp "$NEW" BENCHMARKS.md
    echo "BENCHMARKS.md updated"
fi

#!/usr/bin/env bash
# benches/patroni_failover.sh: PostgreSQL failover under Patroni with rust-raft-log as its DCS,
# beside a 3-member etcd 3.4 (Debian's etcd-server, default flags), in one run.
#
#   benches/patroni_failover.sh            (root: Patroni runs as postgres)
#
# For each system: a fresh 3-member cluster on 127.0.0.1, two PostgreSQL 15 instances each run by
# Patroni 3.0.2 (etcd3 backend, the JSON gateway; ttl 10, loop_wait 2, retry_timeout 4, as
# tests/patroni/failover.sh), then KILLS rounds of: SIGKILL the primary's Patroni and postmaster,
# time until the other instance accepts an INSERT (polled every 100 ms with psql), restart the
# killed Patroni and wait until it streams again as a replica. Prints the median and max per
# system and their ratio (rust-raft-log / etcd). Everything started is SIGKILLed on exit.
#
# Environment: KILLS (10), SYSTEMS ("rust-raft-log etcd").
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
NODE_BIN=$TARGET_DIR/release/rust-raft-log
PG_BIN=/usr/lib/postgresql/15/bin
KILLS=${KILLS:-10}
SYSTEMS=${SYSTEMS:-"rust-raft-log etcd"}
TTL=10 LOOP_WAIT=2 RETRY_TIMEOUT=4
command -v etcd >/dev/null || { echo "Error: etcd not found: apt-get install -y etcd-server" >&2; exit 1; }
[[ -x /usr/bin/patroni ]] || { echo "Error: apt-get install -y patroni postgresql-15" >&2; exit 1; }
cargo build --release --quiet --bin rust-raft-log

WORK=$(mktemp -d /tmp/patroni-bench.XXXXXX); chmod 755 "$WORK"
PIDS=()
stop_all() { # setpriv execs: each pid in PIDS is the process itself
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for d in "$WORK"/*/pg/data*; do [[ -f $d/postmaster.pid ]] && kill -KILL "$(head -1 "$d/postmaster.pid")" 2>/dev/null; done
    wait 2>/dev/null; PIDS=()
}
trap 'stop_all; echo "work directory: $WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# shellcheck source=tests/patroni/lib.sh
source "$REPO/tests/patroni/lib.sh"

declare -A PG_PORT API_PORT PATRONI_PID
run_system() { # system -> prints one "ms" per kill on fd 3
    local sys=$1 dir="$WORK/$1" hosts="" i
    PATRONI_DIR=$dir
    mkdir -p "$dir/pg"; chown postgres:postgres "$dir/pg"; chmod 700 "$dir/pg"
    local c1 c2 c3; c1=$(free_port); c2=$(free_port); c3=$(free_port)
    hosts="127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3"
    if [[ $sys == etcd ]]; then
        local p1 p2 p3 v unset_etcd_vars=(); p1=$(free_port); p2=$(free_port); p3=$(free_port)
        for v in $(compgen -e | grep '^ETCD_' || true); do unset_etcd_vars+=(-u "$v"); done
        local cluster="m1=http://127.0.0.1:$p1,m2=http://127.0.0.1:$p2,m3=http://127.0.0.1:$p3"
        local -a cs=("$c1" "$c2" "$c3") ps=("$p1" "$p2" "$p3")
        for i in 0 1 2; do
            env "${unset_etcd_vars[@]}" etcd --name "m$((i+1))" --data-dir "$dir/etcd$i" \
                --listen-client-urls "http://127.0.0.1:${cs[$i]}" --advertise-client-urls "http://127.0.0.1:${cs[$i]}" \
                --listen-peer-urls "http://127.0.0.1:${ps[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ps[$i]}" \
                --initial-cluster "$cluster" --initial-cluster-token "pb-$$" --initial-cluster-state new >>"$dir/etcd$i.log" 2>&1 &
            PIDS+=($!)
        done
    else
        printf 'nodes:\n  - {node_id: 1, ip_address: "127.0.0.1", port: %s}\n  - {node_id: 2, ip_address: "127.0.0.1", port: %s}\n  - {node_id: 3, ip_address: "127.0.0.1", port: %s}\ncluster_settings:\n  log_directory: "raft_logs"\n  log_segment_size: 1048576\n' "$c1" "$c2" "$c3" >"$dir/cluster.yaml"
        for i in 1 2 3; do
            (cd "$dir" && RUST_LOG=info exec "$NODE_BIN" --node-id "$i" --config cluster.yaml >>"node$i.out" 2>&1) &
            PIDS+=($!)
        done
    fi
    sleep 3
    local m
    for m in pg1 pg2; do
        PG_PORT[$m]=$(free_port); API_PORT[$m]=$(free_port)
        patroni_config bench "$m" "$hosts"
    done
    healthy() { local l; l=$(member_with_role Leader); [[ -n $l && -n $(member_with_role Replica) ]] && [[ $(psql_at "$l" "select count(*) from pg_stat_replication where state='streaming'") == 1 ]]; }
    wait_healthy() { local t; for t in $(seq 600); do healthy && return 0; sleep 0.2; done; return 1; }
    start_patroni pg1; sleep 3; start_patroni pg2
    wait_healthy || { echo "$sys: never healthy" >&2; return 1; }
    psql_at "$(member_with_role Leader)" "create table if not exists t(x int)" >/dev/null
    local k primary replica pm t0 ms
    for k in $(seq "$KILLS"); do
        primary=$(member_with_role Leader); [[ $primary == pg1 ]] && replica=pg2 || replica=pg1
        pm=$(head -1 "$dir/pg/data_$primary/postmaster.pid")
        t0=$(date +%s%N)
        kill -KILL "${PATRONI_PID[$primary]}" "$pm"
        until [[ $(psql_at "$replica" "insert into t values ($k) returning x") == "$k"* ]]; do
            sleep 0.1
            (( $(date +%s%N) - t0 > 60000000000 )) && { echo "$sys: kill $k: no new primary in 60 s" >&2; return 1; }
        done
        ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        echo "$sys kill $k: $primary killed, $replica accepts writes after $ms ms" >&2
        echo "$ms" >&3
        start_patroni "$primary"
        wait_healthy || { echo "$sys: $primary did not rejoin" >&2; return 1; }
    done
    stop_all
}

stats() { sort -n | awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%d %d %d\n", NR, m, a[NR]}'; }
echo "machine: $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A MED MAX N
for sys in $SYSTEMS; do
    run_system "$sys" 3>"$WORK/$sys.ms" || exit 1
    read -r N[$sys] MED[$sys] MAX[$sys] < <(stats <"$WORK/$sys.ms")
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| DCS | kills | kill → new primary accepts writes, median | max |\n|---|---|---|---|\n'
for sys in $SYSTEMS; do printf '| %s | %s | %s ms | %s ms |\n' "$sys" "${N[$sys]}" "${MED[$sys]}" "${MAX[$sys]}"; done
if [[ -n ${MED[etcd]:-} && -n ${MED[rust-raft-log]:-} ]]; then
    awk -v a="${MED[rust-raft-log]}" -v b="${MED[etcd]}" -v c="${MAX[rust-raft-log]}" -v d="${MAX[etcd]}" \
        'BEGIN {printf "rust-raft-log / etcd: median %.2f, max %.2f\n", a/b, c/d}'
fi

#!/usr/bin/env bash
# tests/patroni/failover.sh: Patroni 3.0.2 (Debian's `patroni`) runs two PostgreSQL 15 instances
# with its etcd3 backend (etcd's JSON gateway) against a 3-node rust-raft-log cluster on 127.0.0.1.
#
#   tests/patroni/failover.sh            (.ci/run runs it; needs root: Patroni runs as `postgres`)
#
# Scenarios, each asserted on what patronictl / psql print:
#   1. bootstrap: `patronictl list` shows a Leader and a Replica, and the replica streams;
#   2. failover: SIGKILL the primary's Patroni and postmaster; the replica is promoted within
#      ttl + loop_wait (+ 5 s of slack for a loaded 2-core machine) and a row written there reads back;
#   3. DCS failover: SIGKILL the rust-raft-log leader; the primary is not demoted (same Leader,
#      same timeline) and still takes writes;
#   4. switchover: `patronictl switchover --force` moves the primary to the other member.
# Without patroni or PostgreSQL, or without root, it prints why and exits 0, except under CI=true.
# Everything started is SIGKILLed on exit (trap), by pid. Ends with `N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
NODE_BIN=${NODE_BIN:-$TARGET_DIR/release/rust-raft-log}   # tests/patroni_failover.rs passes its build
PG_BIN=/usr/lib/postgresql/15/bin
TTL=10 LOOP_WAIT=2 RETRY_TIMEOUT=4   # Patroni's rule: loop_wait + 2 * retry_timeout <= ttl

skip() {
    if [[ ${CI:-} == true ]]; then echo "FAIL: $1 (CI=true: this test must run)"; echo "0 passed, 1 failed"; exit 1; fi
    echo "skipped: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0
}
[[ -x /usr/bin/patroni && -x $PG_BIN/postgres ]] || skip "patroni or postgresql-15 not installed (apt-get install -y patroni postgresql-15)"
[[ $(id -u) == 0 ]] || skip "not root: Patroni and PostgreSQL run as the postgres user"
[[ -x $NODE_BIN ]] || cargo build --release --quiet --bin rust-raft-log

WORK=$(mktemp -d /tmp/patroni-test.XXXXXX)
chmod 755 "$WORK"
PATRONI_DIR=$WORK
# shellcheck source=tests/patroni/lib.sh
source tests/patroni/lib.sh  # the working directory is the repository (cd above)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for d in "$WORK"/pg/data*; do [[ -f $d/postmaster.pid ]] && kill -KILL "$(head -1 "$d/postmaster.pid")" 2>/dev/null; done
    wait 2>/dev/null
    if [[ $rc -ne 0 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Ports: one block that is free now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
R1=$(free_port) R2=$(free_port) R3=$(free_port)
PG1=$(free_port) PG2=$(free_port) API1=$(free_port) API2=$(free_port)
declare -A RAFT_PORT=([1]=$R1 [2]=$R2 [3]=$R3)

cat > "$WORK/cluster.yaml" <<YAML
nodes:
  - {node_id: 1, ip_address: "127.0.0.1", port: $R1}
  - {node_id: 2, ip_address: "127.0.0.1", port: $R2}
  - {node_id: 3, ip_address: "127.0.0.1", port: $R3}
cluster_settings:
  log_directory: "raft_logs"
  log_segment_size: 1048576
  election_timeout_range: {min: 150, max: 500}
  heartbeat_interval: 50
YAML
declare -A NODE_PID
start_node() {
    (cd "$WORK" && RUST_LOG=info exec "$NODE_BIN" --node-id "$1" --config cluster.yaml >>"node$1.out" 2>&1) &
    NODE_PID[$1]=$!; PIDS+=($!)
}
for n in 1 2 3; do start_node $n; done

mkdir -p "$WORK/pg"; chown postgres:postgres "$WORK/pg"; chmod 700 "$WORK/pg"
declare -A PG_PORT=([pg1]=$PG1 [pg2]=$PG2) API_PORT=([pg1]=$API1 [pg2]=$API2) PATRONI_PID
for m in pg1 pg2; do patroni_config itest "$m" "127.0.0.1:$R1,127.0.0.1:$R2,127.0.0.1:$R3"; done
timeline_of() { ctl_list | awk -F'|' -v m="$1" '{gsub(/ /,"",$2); gsub(/ /,"",$6)} $2==m {print $6}'; }
other() { [[ $1 == pg1 ]] && echo pg2 || echo pg1; }

PASSED=0 FAILED=0
check() { # name, condition already evaluated as $2 (0 = ok), detail
    if [[ $2 == 0 ]]; then echo "ok: $1"; PASSED=$((PASSED + 1)); else echo "FAILED: $1: $3"; FAILED=$((FAILED + 1)); fi
}
wait_for() { # seconds, command...: polls every 0.2 s
    local until=$(( $(date +%s%N) + $1 * 1000000000 )); shift
    while (( $(date +%s%N) < until )); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1
}
has_leader_and_streaming_replica() {
    local l r; l=$(member_with_role Leader); r=$(member_with_role Replica)
    [[ -n $l && -n $r ]] && [[ $(psql_at "$l" "select count(*) from pg_stat_replication where state='streaming'") == 1 ]]
}
end() { echo "patroni: $PASSED passed, $FAILED failed"; [[ $FAILED == 0 ]]; exit $?; }

# 1. Bootstrap.
start_patroni pg1; sleep 3; start_patroni pg2
wait_for 90 has_leader_and_streaming_replica; rc=$?
check "bootstrap: patronictl list shows a Leader and a streaming Replica" $rc "$(ctl_list; tail -n 20 "$WORK"/pg*.log)"
[[ $rc == 0 ]] || end
ctl_list
PRIMARY=$(member_with_role Leader); REPLICA=$(other "$PRIMARY")
psql_at "$PRIMARY" "create table t(x int); insert into t values (1)" >/dev/null

# 2. Failover: SIGKILL the primary's Patroni and postmaster.
POSTMASTER=$(head -1 "$WORK/pg/data_$PRIMARY/postmaster.pid")
T0=$(date +%s%N)
kill -KILL "${PATRONI_PID[$PRIMARY]}" "$POSTMASTER"
writable() { [[ $(psql_at "$REPLICA" "insert into t values (2) returning x") == "2"* ]]; }
wait_for $((TTL + LOOP_WAIT + 5)) writable; rc=$?
ELAPSED_MS=$(( ($(date +%s%N) - T0) / 1000000 ))
check "failover: $REPLICA promoted and took a write ${ELAPSED_MS} ms after the kill (bound $((TTL + LOOP_WAIT)) s + 5 s slack)" $rc "$(ctl_list; tail -n 20 "$WORK/$REPLICA.log")"
ROWS=$(psql_at "$REPLICA" "select string_agg(x::text, ',' order by x) from t")
[[ $ROWS == "1,2" ]]; check "failover: the row written to the new primary reads back (t = $ROWS)" $? "$ROWS"
# Bring the old primary back as a replica (pg_rewind) for the next scenarios.
start_patroni "$PRIMARY"
wait_for 90 has_leader_and_streaming_replica; rc=$?
check "failover: the old primary rejoins as a streaming replica" $rc "$(ctl_list)"
PRIMARY=$(member_with_role Leader); REPLICA=$(other "$PRIMARY")

# 3. DCS failover: SIGKILL the rust-raft-log leader (the node that calls itself leader in /v3/maintenance/status).
TL_BEFORE=$(timeline_of "$PRIMARY")
LEADER_NODE=""
for n in 1 2 3; do
    s=$(curl -s -m 2 -X POST "127.0.0.1:${RAFT_PORT[$n]}/v3/maintenance/status" -d '{}')
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d.get("leader")==d["header"]["member_id"] else 1)' "$s" 2>/dev/null && LEADER_NODE=$n
done
[[ -n $LEADER_NODE ]]; check "DCS failover: found the rust-raft-log leader (node $LEADER_NODE)" $? ""
kill -KILL "${NODE_PID[$LEADER_NODE]}"
sleep $((TTL + 2 * LOOP_WAIT))
grep -q "demot" "$WORK/$PRIMARY.log"; demoted=$?
[[ $demoted != 0 && $(member_with_role Leader) == "$PRIMARY" && $(timeline_of "$PRIMARY") == "$TL_BEFORE" ]]
check "DCS failover: $PRIMARY is still the Leader on timeline $TL_BEFORE $((TTL + 2 * LOOP_WAIT)) s after the raft leader's SIGKILL, never demoted" $? "$(ctl_list; grep -i demot "$WORK/$PRIMARY.log")"
[[ $(psql_at "$PRIMARY" "insert into t values (3) returning x") == "3"* ]]
check "DCS failover: the primary still takes writes" $? ""
start_node "$LEADER_NODE"

# 4. Switchover on request.
OUT=$(as_pg /usr/bin/patronictl -c "$WORK/pg1.yml" switchover --leader "$PRIMARY" --candidate "$REPLICA" --force 2>&1)
echo "$OUT" | tail -n 3
new_leader_is_replica() { [[ $(member_with_role Leader) == "$REPLICA" ]] && [[ $(psql_at "$REPLICA" "insert into t values (4) returning x") == "4"* ]]; }
wait_for 60 new_leader_is_replica; rc=$?
check "switchover: patronictl switchover --force moved the Leader to $REPLICA, which takes writes" $rc "$OUT $(ctl_list)"
ctl_list
end

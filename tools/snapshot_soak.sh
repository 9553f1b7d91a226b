#!/usr/bin/env bash
# tools/snapshot_soak.sh: a long run that shows a node's disk use stays bounded (issue 12).
#
#   tools/snapshot_soak.sh
#
# Starts a 3-node rust-raft-log cluster of real processes on 127.0.0.1 (release build, a config
# generated in a temporary directory under target/tmp, default snapshot settings), kills one
# follower with SIGKILL, writes FIRST_PUTS puts over KEYS keys with kvbench through the leader,
# restarts the follower (its next entry was compacted away, so it must catch up through
# InstallSnapshot), then writes the rest of TOTAL_PUTS. Every COMPACT_EVERY puts it compacts the
# key-value history with `etcdctl compaction` (what etcd operators do with auto-compaction: without
# it the store, and so every snapshot, keeps every version ever written). During the run it samples
# every node directory's size (du) once a second.
#
# At the end it checks, and exits non-zero if one fails:
#   - the restarted follower logged "📸 Installed the leader's snapshot";
#   - `etcdctl endpoint hashkv --cluster` shows one hash (asked again for up to 30 s while a
#     member applies the last entries);
#   - after a graceful stop, `segdump verify` is clean on every node directory;
#   - no directory ever exceeded the bound
#       (2 + pool + ceil(span_bytes / segment)) segments + 2 snapshots + 1 MiB
#     where pool = 2 recycled segment files, 2 = the open segment and the prepared next one,
#     span_bytes = the log between two snapshots plus snapshot_catchup_entries entries, of
#     ENTRY_BYTES_MAX bytes each (the most the log holds between two compactions); between two
#     snapshots lie snapshot_entries entries or, if more, those whose payloads (VAL_SIZE bytes or
#     more each) add up to snapshot_log_percent of a snapshot; a snapshot is the largest file
#     seen (all three are the default config's: 10000, 5000, 50).
#
# Environment: TOTAL_PUTS (1000000), FIRST_PUTS (200000), KEYS (64), VAL_SIZE (256), CLIENTS (64),
# SEGMENT_BYTES (16777216; the default config's is 64 MiB, smaller here so the run rotates and
# recycles many segments), COMPACT_EVERY (100000; 0 never), PORT_BASE (first free block of 10
# ports from 33000), KEEP_WORKDIR=1 keeps the directory. Everything started is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
TOTAL_PUTS=${TOTAL_PUTS:-1000000}
FIRST_PUTS=${FIRST_PUTS:-200000}
KEYS=${KEYS:-64}
VAL_SIZE=${VAL_SIZE:-256}
CLIENTS=${CLIENTS:-64}
SEGMENT_BYTES=${SEGMENT_BYTES:-16777216}
COMPACT_EVERY=${COMPACT_EVERY:-100000}
SNAPSHOT_ENTRIES=10000
CATCHUP_ENTRIES=5000
SNAPSHOT_LOG_PERCENT=50
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
NODE_BIN=$TARGET_DIR/release/rust-raft-log
KVBENCH=$TARGET_DIR/release/kvbench
SEGDUMP=$TARGET_DIR/release/segdump

command -v etcdctl >/dev/null || { echo "Error: etcdctl not found: apt-get install -y etcd-client" >&2; exit 1; }
echo "building (release): rust-raft-log, kvbench, segdump..."
cargo build --release --quiet -p rust-raft-log -p kvbench -p segdump

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/snapshot-soak.XXXXXX")
declare -A PIDS=()
SAMPLER=

stop_node() {
    local id=$1 signal=${2:-TERM} pid=${PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    kill -"$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$id]"
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null || true
    for id in "${!PIDS[@]}"; do stop_node "$id"; done
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
[[ -n ${PORT_BASE:-} ]] || PORT_BASE=$(free_port_block 33000)
ENDPOINTS="127.0.0.1:$PORT_BASE,127.0.0.1:$((PORT_BASE + 1)),127.0.0.1:$((PORT_BASE + 2))"

# Node i listens on PORT_BASE + i - 1.
write_ours_config "$WORK/cluster.yaml" "$WORK/raft_logs" $((PORT_BASE - 1)) \
    "log_segment_size: $SEGMENT_BYTES" "snapshot_entries: $SNAPSHOT_ENTRIES" \
    "snapshot_catchup_entries: $CATCHUP_ENTRIES"

start_node() {
    local id=$1
    "$NODE_BIN" --node-id "$id" --config "$WORK/cluster.yaml" >>"$WORK/node_$id.out" 2>&1 &
    PIDS[$id]=$!
}
# The leader's endpoint, from `endpoint status`.
leader_endpoint() {
    etcdctl --endpoints="$ENDPOINTS" endpoint status 2>/dev/null | awk -F', ' '$5 == "true" { print $1 }' || true
}
wait_leader() {
    for _ in $(seq 300); do
        local l
        l=$(leader_endpoint)
        [[ -n $l ]] && { echo "$l"; return 0; }
        sleep 0.1
    done
    echo "Error: no leader within 30 s" >&2
    return 1
}
node_of_endpoint() { echo $(( ${1##*:} - PORT_BASE + 1 )); }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "settings: $TOTAL_PUTS puts over $KEYS keys, $VAL_SIZE-byte values, $CLIENTS clients; segments $SEGMENT_BYTES bytes; snapshot_entries $SNAPSHOT_ENTRIES, catch-up $CATCHUP_ENTRIES, snapshot_log_percent $SNAPSHOT_LOG_PERCENT; compaction every $COMPACT_EVERY puts"
for id in 1 2 3; do start_node "$id"; done
LEADER=$(wait_leader)
LEADER_ID=$(node_of_endpoint "$LEADER")
VICTIM=$(( LEADER_ID % 3 + 1 ))
echo "leader: node $LEADER_ID; killing follower node $VICTIM (SIGKILL) for the first $FIRST_PUTS puts"
stop_node "$VICTIM" KILL

# Disk use of every node directory, once a second: "<node> <bytes>" lines.
(
    while true; do
        for id in 1 2 3; do
            d="$WORK/raft_logs/node_$id"
            [[ -d $d ]] && echo "$id $(du -sb "$d" 2>/dev/null | cut -f1)"
        done
        sleep 1
    done
) >"$WORK/du.samples" &
SAMPLER=$!

put_batch() {
    local count=$1
    "$KVBENCH" --endpoints "$ENDPOINTS" --op put --clients "$CLIENTS" --conns 4 --total "$count" \
        --keys seq --key-space "$KEYS" --val-size "$VAL_SIZE" --timeout 10 >"$WORK/kvbench.last" 2>&1 \
        || { cat "$WORK/kvbench.last" >&2; return 1; }
    grep '^requests:' "$WORK/kvbench.last"
    if grep -q '^requests: .* [1-9][0-9]* errors' "$WORK/kvbench.last"; then
        echo "kvbench reported errors:" >&2
        cat "$WORK/kvbench.last" >&2
        return 1
    fi
}
compact_now() {
    local rev
    # A member that is down makes `endpoint status` fail: the others still answer.
    rev=$(etcdctl --endpoints="$ENDPOINTS" endpoint status -w json 2>/dev/null |
        grep -o '"revision":[0-9]*' | cut -d: -f2 | sort -n | tail -1 || true)
    [[ -n $rev ]] || { echo "Error: no member answered endpoint status" >&2; return 1; }
    etcdctl --endpoints="$ENDPOINTS" compaction "$rev" >/dev/null
    echo "compacted the key-value history at revision $rev"
}
run_puts() {
    local remaining=$1 step
    while [[ $remaining -gt 0 ]]; do
        step=$remaining
        [[ $COMPACT_EVERY -gt 0 && $step -gt $COMPACT_EVERY ]] && step=$COMPACT_EVERY
        put_batch "$step"
        [[ $COMPACT_EVERY -gt 0 ]] && compact_now
        remaining=$((remaining - step))
    done
}

run_puts "$FIRST_PUTS"
echo "restarting node $VICTIM"
start_node "$VICTIM"
run_puts $((TOTAL_PUTS - FIRST_PUTS))

FAILED=0
if grep -q "📸 Installed the leader's snapshot" "$WORK/node_$VICTIM.out"; then
    echo "node $VICTIM: $(grep -o "📸 Installed the leader's snapshot.*" "$WORK/node_$VICTIM.out" | head -1)"
else
    echo "FAIL: node $VICTIM never installed a snapshot" >&2
    FAILED=1
fi
HASHES=
for _ in $(seq 60); do
    HASHES=$(etcdctl --endpoints="$ENDPOINTS" endpoint hashkv --cluster 2>&1 || true)
    [[ $(awk -F', ' 'NF == 2 { print $2 }' <<<"$HASHES" | sort -u | wc -l) == 1 &&
        $(grep -c ', ' <<<"$HASHES") == 3 ]] && break
    sleep 0.5
done
echo "etcdctl endpoint hashkv --cluster:"
sed 's/^/  /' <<<"$HASHES"
if [[ $(awk -F', ' 'NF == 2 { print $2 }' <<<"$HASHES" | sort -u | wc -l) != 1 ]]; then
    echo "FAIL: the members do not show one hash" >&2
    FAILED=1
fi

kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
for id in 1 2 3; do stop_node "$id"; done
for id in 1 2 3; do
    d="$WORK/raft_logs/node_$id"
    if "$SEGDUMP" verify "$d" >"$WORK/verify_$id.out" 2>&1; then
        echo "segdump verify node_$id: clean ($(tail -1 "$WORK/verify_$id.out"))"
    else
        echo "FAIL: segdump verify node_$id:" >&2
        cat "$WORK/verify_$id.out" >&2
        FAILED=1
    fi
done

# The bound, from the largest snapshot file and entry seen.
SNAP_MAX=$(find "$WORK/raft_logs" -name 'snapshot_*.snap' -printf '%s\n' | sort -n | tail -1)
SNAP_MAX=${SNAP_MAX:-0}
ENTRY_BYTES_MAX=$(( VAL_SIZE + 200 )) # value, key, request encoding and log framing
BETWEEN=$(( SNAP_MAX * SNAPSHOT_LOG_PERCENT / 100 / VAL_SIZE + 1 ))
(( BETWEEN < SNAPSHOT_ENTRIES )) && BETWEEN=$SNAPSHOT_ENTRIES
SPAN=$(( (BETWEEN + CATCHUP_ENTRIES) * ENTRY_BYTES_MAX ))
SPAN_SEGMENTS=$(( (SPAN + SEGMENT_BYTES - 1) / SEGMENT_BYTES ))
BOUND=$(( (2 + 2 + SPAN_SEGMENTS) * SEGMENT_BYTES + 2 * SNAP_MAX + (1 << 20) ))
echo "log between two snapshots: at most $BETWEEN entries; span: ($BETWEEN + $CATCHUP_ENTRIES) x $ENTRY_BYTES_MAX bytes = $SPAN bytes"
echo "bound: (2 open/prepared + 2 pool + $SPAN_SEGMENTS span) x $SEGMENT_BYTES + 2 x $SNAP_MAX (largest snapshot) + 1 MiB = $BOUND bytes"
for id in 1 2 3; do
    max=$(awk -v n="$id" '$1 == n && $2 > m { m = $2 } END { print m + 0 }' "$WORK/du.samples")
    samples=$(awk -v n="$id" '$1 == n' "$WORK/du.samples" | wc -l)
    final=$(du -sb "$WORK/raft_logs/node_$id" | cut -f1)
    [[ $final -gt $max ]] && max=$final
    echo "node_$id: largest of $samples samples and the end $max bytes ($((max * 100 / BOUND))% of the bound), at the end $final bytes"
    [[ $max -le $BOUND ]] || { echo "FAIL: node_$id exceeded the bound" >&2; FAILED=1; }
done
echo "snapshots taken (node logs): $(cat "$WORK"/node_*.out | grep -c '📸 Snapshot at index')"
[[ $FAILED == 0 ]] && echo "PASS" || { echo "FAIL" >&2; exit 1; }

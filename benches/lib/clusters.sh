# benches/lib/clusters.sh: fresh 3-member clusters on 127.0.0.1 for the side-by-side benches
# (sourced by benches/compare_leases.sh and benches/compare_watch.sh; not run on its own).
#
# The sourcing script sets, before sourcing: WORK (a directory for data and logs), ETCD_BIN,
# NODE_BIN (the rust-raft-log release binary), CLUSTER_TAG (names the etcd cluster token), and
# runs under `set -euo pipefail`. This file then:
# - picks PORT_BASE (unless set): the first free block of 10 ports from 32000; etcd uses
#   PORT_BASE+1..3 (clients) and +4..6 (peers), rust-raft-log PORT_BASE+7..9;
# - defines start_etcd / start_ours (each starts a fresh cluster, appends the pids to PIDS and sets
#   ENDPOINTS to its comma-separated host:port list), stop_all (benches/lib/procs.sh's stop_pids),
#   name_of SYSTEM, and MACHINE (cores, CPU, kernel);
# - installs an EXIT trap that stops everything started and removes WORK (kept if KEEP_WORKDIR=1
#   or on failure).
# etcd runs with its default flags but names, ports, data directories and cluster flags, as in
# benches/compare_etcd.sh; rust-raft-log with a generated config, RUST_LOG=info (OURS_ETCD_TIMING=1:
# with etcd's heartbeat and election timeout instead of the node's defaults).

# shellcheck source=benches/lib/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

PIDS=()
ENDPOINTS=""
stop_all() {
    [[ ${#PIDS[@]} -gt 0 ]] && stop_pids "${PIDS[@]}"
    PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        echo "work directory (logs, data) kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -n ${PORT_BASE:-} ]] || PORT_BASE=$(free_port_block 32000)

start_etcd() {
    local cluster="" i v unset_etcd_vars=()
    for v in $(compgen -e | grep '^ETCD_' || true); do unset_etcd_vars+=(-u "$v"); done
    for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT_BASE + 3 + i))"; done
    rm -rf "$WORK/etcd"
    mkdir -p "$WORK/etcd"
    # One token per cluster (not per member): a fresh cluster each time.
    local token="$CLUSTER_TAG-$$-$RANDOM"
    ENDPOINTS=""
    for i in 1 2 3; do
        local client=$((PORT_BASE + i)) peer=$((PORT_BASE + 3 + i))
        env "${unset_etcd_vars[@]}" "$ETCD_BIN" \
            --name "m$i" --data-dir "$WORK/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:$client" \
            --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" --initial-cluster-token "$token" \
            --initial-cluster-state new >>"$WORK/etcd-m$i.log" 2>&1 &
        PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$client"
    done
}
start_ours() {
    local config=$WORK/cluster.yaml i timing=()
    rm -rf "$WORK/raft"
    # OURS_ETCD_TIMING=1: etcd's default timing (heartbeat 100 ms, election 1000 ms; ours picks
    # each timeout in [min, max]) instead of the node's defaults (50 ms, 150-500 ms), to tell an
    # overloaded machine's spurious elections apart from the work itself.
    if [[ ${OURS_ETCD_TIMING:-0} == 1 ]]; then
        timing=("election_timeout_range: { min: 1000, max: 2000 }" "heartbeat_interval: 100")
    fi
    write_ours_config "$config" "$WORK/raft" $((PORT_BASE + 6)) "${timing[@]}"
    ENDPOINTS=""
    for i in 1 2 3; do
        RUST_LOG=info "$NODE_BIN" --node-id "$i" --config "$config" >>"$WORK/ours-n$i.log" 2>&1 &
        PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((PORT_BASE + 6 + i))"
    done
}
name_of() { if [[ $1 == etcd ]]; then echo "etcd $("$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"; else echo "rust-raft-log"; fi; }
MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), Linux $(uname -r)"

# Median of column $2 for system $1 in the results file $RESULTS; total: the sum.
median() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$RESULTS" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
total() { awk -v s="$1" -v c="$2" '$1 == s { t += $c } END { print t + 0 }' "$RESULTS"; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }

# write_section BEGIN_MARK END_MARK HEADING SCRIPT TABLE_FILE: replaces what is between the marks
# in BENCHMARKS.md by "Measured with `SCRIPT`:" and the table (appends a section the first time).
write_section() {
    local begin=$1 end=$2 heading=$3 script=$4 table=$5
    if ! grep -qF "$begin" BENCHMARKS.md; then
        printf '\n## %s\n\n%s\n%s\n' "$heading" "$begin" "$end" >>BENCHMARKS.md
    fi
    awk -v b="$begin" -v e="$end" -v f="$table" -v s="$script" '
        $0 == b { print; print "Measured with `" s "`:"; print ""; while ((getline line < f) > 0) print line; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }' BENCHMARKS.md >"$WORK/BENCHMARKS.md" && mv "$WORK/BENCHMARKS.md" BENCHMARKS.md
    echo "BENCHMARKS.md updated"
}

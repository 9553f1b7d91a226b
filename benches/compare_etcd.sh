#!/usr/bin/env bash
# benches/compare_etcd.sh: rust-raft-log against etcd, with the same client, in the same run.
#
#   benches/compare_etcd.sh [--write] [--only etcd|ours]
#
# Starts a 3-member etcd (Debian's `etcd-server`: default flags except names, ports, data
# directories and the cluster flags, so fdatasync is on) and a 3-node rust-raft-log cluster (the
# release build unless NODE_PROFILE says otherwise, a config generated in a temporary directory),
# both on 127.0.0.1 only, with their data directories side by side on the same disk (under
# target/tmp). Then it runs the same load against each with `kvbench` (tools/kvbench): 8-byte
# keys, 256-byte values; puts, then linearizable ranges over the keys the puts wrote; 1, 16 and
# 100 clients (connections: 1, 2, 10), closed loop; plus one cell of puts at a fixed offered rate
# (open loop, FIXED_RATE below).
# Every request goes to the leader's endpoint, for both systems (kvbench finds it with
# Maintenance.Status), so neither pays a follower's forwarding hop.
#
# The two systems are interleaved: every cell (op, clients) runs against one system then the
# other, the order alternating from cell to cell and round to round, for ROUNDS rounds, so that
# machine noise (other builds on this shared 2-core machine) hits both alike. A row of the table
# is the median over the rounds of each figure (max: the largest), beside the server CPU per
# request (user+system of the three server processes, from /proc/PID/stat). The machine and the
# load average are printed. Everything started is stopped on exit (trap), whatever happens.
#
# --write puts the result into BENCHMARKS.md between the markers
# `<!-- compare_etcd.sh: begin -->` and `<!-- compare_etcd.sh: end -->` (appended at the end of the
# file the first time).
#
# Environment: ROUNDS (default 3), RUN_SECONDS per measurement (5), WARMUP_SECONDS (1),
# CLIENT_COUNTS ("1 16 100"), KEY_SPACE (1000; the first put cell must write at least this many
# keys, or ranges find missing keys, which kvbench reports as `ranges answered with no key`),
# FIXED_RATE (3000 requests/s; 0 leaves the cell out) and FIXED_RATE_CLIENTS (100): one more put
# cell at a fixed offered rate that both systems sustain, latency measured from each request's due
# time (no coordinated omission), CONNS (fixed connection count; default one per 10 clients),
# OURS_RUST_LOG (the nodes' RUST_LOG, default info), NODE_PROFILE (the cargo profile the node is
# built and run with: release, the default, or production, the build docs/OPERATIONS.md installs;
# kvbench is always the release build), PORT_BASE (default: the first free block of
# 10 ports from 31000), KEEP_WORKDIR=1 keeps the data directories and logs (logs and kvbench
# outputs are kept anyway when a request failed).
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
            [[ $ONLY == etcd || $ONLY == ours ]] || { echo "Error: --only etcd|ours" >&2; exit 2; }
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'
            exit 0
            ;;
        *) echo "Error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROUNDS=${ROUNDS:-3}
RUN_SECONDS=${RUN_SECONDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-1}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 16 100"}
KEY_SPACE=${KEY_SPACE:-1000}
FIXED_RATE=${FIXED_RATE:-3000}
FIXED_RATE_CLIENTS=${FIXED_RATE_CLIENTS:-100}
KEY_SIZE=8
VAL_SIZE=256
ETCD_BIN=${ETCD_BIN:-etcd}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
KVBENCH=$TARGET_DIR/release/kvbench
NODE_PROFILE=${NODE_PROFILE:-release}
[[ $NODE_PROFILE == release || $NODE_PROFILE == production ]] ||
    { echo "Error: NODE_PROFILE must be release or production, not $NODE_PROFILE" >&2; exit 2; }
NODE_BIN=$TARGET_DIR/$NODE_PROFILE/rust-raft-log

SYSTEMS=()
[[ $ONLY != ours ]] && SYSTEMS+=(etcd)
[[ $ONLY != etcd ]] && SYSTEMS+=(ours)

if [[ " ${SYSTEMS[*]} " == *" etcd "* ]] && ! command -v "$ETCD_BIN" >/dev/null; then
    echo "Error: $ETCD_BIN not found: apt-get install -y etcd-server etcd-client" >&2
    exit 1
fi

echo "building (release): kvbench; ($NODE_PROFILE): rust-raft-log..."
cargo build --release --quiet -p kvbench
cargo build --profile "$NODE_PROFILE" --quiet -p rust-raft-log

mkdir -p "$TARGET_DIR/tmp"
WORK=$(mktemp -d "$TARGET_DIR/tmp/compare-etcd.XXXXXX")
# shellcheck source=benches/lib/procs.sh
source benches/lib/procs.sh
declare -A PIDS=()
HAD_ERRORS=0

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
    elif [[ $HAD_ERRORS == 1 ]]; then
        # Failed requests are in the table; keep what explains them (server logs, kvbench
        # outputs), not the data directories.
        rm -rf "$WORK/etcd" "$WORK/raft"
        echo "some requests failed: server logs and kvbench outputs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ten consecutive free ports: etcd clients +1..+3, etcd peers +4..+6, ours +7..+9.
[[ -n ${PORT_BASE:-} ]] || PORT_BASE=$(free_port_block 31000)

# ---- the clusters ----------------------------------------------------------------------------
ETCD_ENDPOINTS=""
OURS_ENDPOINTS=""
ETCD_PIDS=()
OURS_PIDS=()

start_etcd() {
    # Default etcd flags: nothing but identity, addresses and cluster membership. Any ETCD_*
    # variable in the environment would change them, so none is passed on.
    local cluster="" i v unset_etcd_vars=()
    for v in $(compgen -e | grep '^ETCD_' || true); do unset_etcd_vars+=(-u "$v"); done
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT_BASE + 3 + i))"
    done
    for i in 1 2 3; do
        local client=$((PORT_BASE + i)) peer=$((PORT_BASE + 3 + i))
        mkdir -p "$WORK/etcd"
        env "${unset_etcd_vars[@]}" "$ETCD_BIN" \
            --name "m$i" --data-dir "$WORK/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:$client" \
            --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" --initial-cluster-token "compare-etcd-$$" \
            --initial-cluster-state new >"$WORK/etcd-m$i.log" 2>&1 &
        PIDS[etcd$i]=$!
        ETCD_PIDS+=($!)
        ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:$client"
    done
}

start_ours() {
    local config=$WORK/cluster.yaml i
    write_ours_config "$config" "$WORK/raft" $((PORT_BASE + 6))
    for i in 1 2 3; do
        # info: startup and elections only (heartbeats and votes are debug), as etcd logs by default.
        RUST_LOG=${OURS_RUST_LOG:-info} "$NODE_BIN" --node-id "$i" --config "$config" >"$WORK/ours-n$i.log" 2>&1 &
        PIDS[ours$i]=$!
        OURS_PIDS+=($!)
        OURS_ENDPOINTS+="${OURS_ENDPOINTS:+,}127.0.0.1:$((PORT_BASE + 6 + i))"
    done
}

endpoints_of() { if [[ $1 == etcd ]]; then echo "$ETCD_ENDPOINTS"; else echo "$OURS_ENDPOINTS"; fi; }
pids_of() { if [[ $1 == etcd ]]; then echo "${ETCD_PIDS[*]}"; else echo "${OURS_PIDS[*]}"; fi; }
name_of() { if [[ $1 == etcd ]]; then echo "etcd 3.4"; else echo "rust-raft-log"; fi; }

check_alive() {
    local sys=$1 pid
    for pid in $(pids_of "$sys"); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "Error: a $(name_of "$sys") server (pid $pid) exited; logs in $WORK:" >&2
            tail -n 5 "$WORK"/"$sys"-*.log >&2
            exit 1
        fi
    done
}

# ---- the measurements ----------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"

# One HTTP/2 connection per 10 clients, as in etcd's published benchmarks (--conns=100
# --clients=1000); CONNS overrides it. Fewer connections cost both the client and the servers less
# CPU per request (h2 batches frames of many streams into one write).
conns_for() {
    local c=$((($1 + 9) / 10))
    [[ -n ${CONNS:-} ]] && c=$CONNS
    echo $((c < $1 ? c : $1))
}

# measure SYSTEM OP CLIENTS ROUND: one kvbench run; appends one line to $RESULTS.
measure() {
    local sys=$1 op=$2 clients=$3 round=$4 out load pid
    local -a pids before after eps
    read -r -a pids <<<"$(pids_of "$sys")"
    check_alive "$sys"
    local keys=random kv_op=$op
    local -a rate_args=()
    [[ $op == put || $op == putrate ]] && keys=seq
    if [[ $op == putrate ]]; then
        kv_op=put
        rate_args=(--rate "$FIXED_RATE")
    fi
    out=$WORK/kvbench-$sys-$op-$clients-$round.out
    load=$(cut -d' ' -f1 /proc/loadavg)
    local elections_before
    elections_before=$(elections_of "$sys")
    for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    "$KVBENCH" --endpoints "$(endpoints_of "$sys")" --target leader --leader-wait 30 \
        --op "$kv_op" "${rate_args[@]}" --consistency l --clients "$clients" \
        --conns "$(conns_for "$clients")" \
        --duration "$RUN_SECONDS" --warmup "$WARMUP_SECONDS" \
        --key-size $KEY_SIZE --val-size $VAL_SIZE --key-space "$KEY_SPACE" --keys $keys \
        --hist-out "$out.hgrm" >"$out" 2>&1 || {
        echo "Error: kvbench failed against $(name_of "$sys"):" >&2
        cat "$out" >&2
        exit 1
    }
    for pid in "${pids[@]}"; do after+=("$(cpu_ticks "$pid")"); done
    local elections
    elections=$(($(elections_of "$sys") - elections_before))
    local line
    line=$(grep '^kvbench-result ' "$out")
    local ok errors ops p50 p90 p99 p999 max ccpu empty
    kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    ok=$(kv ok) errors=$(kv errors) ops=$(kv ops_per_sec) p50=$(kv p50_us) p90=$(kv p90_us)
    p99=$(kv p99_us) p999=$(kv p999_us) max=$(kv max_us) ccpu=$(kv client_cpu_us_per_op)
    empty=$(kv ranges_empty)
    # Server CPU per request: all three processes, and the leader's alone (the endpoint kvbench
    # named as the leader is the i-th of the system's endpoints, started as its i-th pid).
    local i ticks=0 leader_ticks=0 leader_port scpu lcpu
    leader_port=$(sed -n 's/.* to http:\/\/127\.0\.0\.1:\([0-9]*\) (the leader.*/\1/p' "$out")
    IFS=, read -r -a eps <<<"$(endpoints_of "$sys")"
    for i in "${!pids[@]}"; do
        ticks=$((ticks + after[i] - before[i]))
        [[ ${eps[i]} == "127.0.0.1:$leader_port" ]] && leader_ticks=$((after[i] - before[i]))
    done
    per_op() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "0" }'; }
    scpu=$(per_op "$ticks")
    lcpu=$(per_op "$leader_ticks")
    echo "$sys $op $clients $round $ops $p50 $p90 $p99 $p999 $max $errors $scpu $ccpu $empty $load $lcpu $elections" >>"$RESULTS"
    printf '  %-13s %-5s %3d clients, round %d: %9.1f ok/s, p50 %7.3f ms, p99 %7.3f ms, errors %s, server CPU %s µs/op (leader %s), client %s, elections %s, load %s\n' \
        "$(name_of "$sys")" "$op" "$clients" "$round" "$ops" \
        "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" \
        "$errors" "$scpu" "$lcpu" "$ccpu" "$elections" "$load"
    if [[ $errors != 0 ]]; then
        HAD_ERRORS=1
        grep '^errors: ' "$out" | sed 's/^/      /'
    fi
    if [[ $op == range && $empty != 0 ]]; then
        echo "      warning: $empty ranges found no key (KEY_SPACE larger than the keys written?)"
    fi
}

# Leader elections a system's cluster has held so far: the distinct terms in which a leader was
# elected, from the server logs (ours: the "👑 Won election" line, logged once by the winner, with
# its term; etcd: "elected leader ... at term N", logged by every member that learns of it).
elections_of() {
    if [[ $1 == ours ]]; then
        cat "$WORK"/ours-n*.log 2>/dev/null | grep -a 'Won election' | grep -ao 'term=[0-9]*' | sort -u | wc -l
    else
        cat "$WORK"/etcd-m*.log 2>/dev/null | grep -a 'elected leader' | grep -ao 'at term [0-9]*' | sort -u | wc -l
    fi
}

# ---- run -------------------------------------------------------------------------------------
START_LOAD=$(load_avg)
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT+=" (with uncommitted changes)"
DISK=$(findmnt -no SOURCE,FSTYPE -T "$WORK" | tr -s ' ')
MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r); data directories on $DISK"
ETCD_VERSION=$("$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: //p' || true)

echo "machine: $MACHINE"
echo "load average at start: $START_LOAD"
echo "work directory: $WORK; ports $PORT_BASE..$((PORT_BASE + 9)) on 127.0.0.1"
for sys in "${SYSTEMS[@]}"; do "start_$sys"; done
for sys in "${SYSTEMS[@]}"; do
    # One put through the whole path proves the cluster has a leader and serves the KV API.
    if ! "$KVBENCH" --endpoints "$(endpoints_of "$sys")" --target leader --leader-wait 30 \
        --op put --total 1 >"$WORK/smoke-$sys.out" 2>&1; then
        echo "Error: $(name_of "$sys") did not answer a put:" >&2
        cat "$WORK/smoke-$sys.out" >&2
        tail -n 5 "$WORK"/"$sys"-*.log >&2
        exit 1
    fi
    echo "$(name_of "$sys"): $(grep -o 'to [^;]*leader[^)]*)' "$WORK/smoke-$sys.out")"
done

# The cells of a round, in order: closed-loop puts, the fixed-rate puts, then ranges over the keys
# the puts wrote.
CELLS=()
for clients in $CLIENT_COUNTS; do CELLS+=("put:$clients"); done
[[ $FIXED_RATE != 0 ]] && CELLS+=("putrate:$FIXED_RATE_CLIENTS")
for clients in $CLIENT_COUNTS; do CELLS+=("range:$clients"); done

cell=0
for round in $(seq "$ROUNDS"); do
    for spec in "${CELLS[@]}"; do
        op=${spec%%:*} clients=${spec##*:}
        {
            order=("${SYSTEMS[@]}")
            if [[ ${#SYSTEMS[@]} == 2 && $(((cell + round) % 2)) == 1 ]]; then
                order=("${SYSTEMS[1]}" "${SYSTEMS[0]}")
            fi
            for sys in "${order[@]}"; do measure "$sys" "$op" "$clients" "$round"; done
            cell=$((cell + 1))
        }
    done
done
END_LOAD=$(load_avg)

# ---- the table -----------------------------------------------------------------------------
# Field numbers in $RESULTS: 1 sys 2 op 3 clients 4 round 5 ops 6 p50 7 p90 8 p99 9 p999 10 max
# 11 errors 12 server CPU 13 client CPU 14 empty ranges 15 load 16 leader CPU 17 elections.
median() { # median of column $1 for system $2, op $3, clients $4
    awk -v c="$1" -v s="$2" -v o="$3" -v n="$4" '$1 == s && $2 == o && $3 == n { print $c }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
largest() {
    awk -v c="$1" -v s="$2" -v o="$3" -v n="$4" '$1 == s && $2 == o && $3 == n { print $c }' "$RESULTS" | sort -g | tail -n 1
}
total() {
    awk -v c="$1" -v s="$2" -v o="$3" -v n="$4" '$1 == s && $2 == o && $3 == n { t += $c } END { print t + 0 }' "$RESULTS"
}
loads() {
    awk -v s="$1" -v o="$2" -v n="$3" '$1 == s && $2 == o && $3 == n { printf "%s%s", sep, $15; sep = " " }' "$RESULTS"
}
ms() { awk -v v="$1" 'BEGIN { printf "%.3f", v / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

TABLE=$WORK/table.md
CHECKS=$WORK/checks.md
{
    echo "| op | clients | system | ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU µs/op: 3 nodes (leader) | client CPU µs/op | load 1m per round |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
} >"$TABLE"
: >"$CHECKS"
declare -A FIG=()
for spec in "${CELLS[@]}"; do
    op=${spec%%:*} clients=${spec##*:}
    label=$op
    [[ $op == range ]] && label="range (linearizable)"
    [[ $op == putrate ]] && label="put at $FIXED_RATE/s offered (open loop)"
    {
        for sys in "${SYSTEMS[@]}"; do
            ops=$(median 5 "$sys" "$op" "$clients")
            p50=$(median 6 "$sys" "$op" "$clients")
            p90=$(median 7 "$sys" "$op" "$clients")
            p99=$(median 8 "$sys" "$op" "$clients")
            p999=$(median 9 "$sys" "$op" "$clients")
            max=$(largest 10 "$sys" "$op" "$clients")
            errors=$(total 11 "$sys" "$op" "$clients")
            scpu=$(median 12 "$sys" "$op" "$clients")
            ccpu=$(median 13 "$sys" "$op" "$clients")
            lcpu=$(median 16 "$sys" "$op" "$clients")
            FIG[$sys.$op.$clients.ops]=$ops
            FIG[$sys.$op.$clients.p50]=$p50
            FIG[$sys.$op.$clients.p90]=$p90
            FIG[$sys.$op.$clients.p99]=$p99
            FIG[$sys.$op.$clients.p999]=$p999
            FIG[$sys.$op.$clients.max]=$max
            FIG[$sys.$op.$clients.scpu]=$scpu
            printf '| %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$label" "$clients" "$(name_of "$sys")" "$ops" "$(ms "$p50")" "$(ms "$p90")" \
                "$(ms "$p99")" "$(ms "$p999")" "$(ms "$max")" "$errors" "$scpu ($lcpu)" "$ccpu" \
                "$(loads "$sys" "$op" "$clients")" >>"$TABLE"
        done
        if [[ ${#SYSTEMS[@]} == 2 ]]; then
            r() { ratio "${FIG[ours.$op.$clients.$1]}" "${FIG[etcd.$op.$clients.$1]}"; }
            printf '| %s | %d | **ours ÷ etcd** | **%s×** | %s× | %s× | %s× | %s× | %s× | | %s× | | |\n' \
                "$label" "$clients" "$(r ops)" "$(r p50)" "$(r p90)" "$(r p99)" "$(r p999)" \
                "$(r max)" "$(r scpu)" >>"$TABLE"
        fi
    }
done

# check DESCRIPTION VALUE OP TARGET: VALUE OP TARGET in awk, e.g. check "..." 4.2 ">=" 4
check() {
    local verdict
    if [[ $2 == - ]]; then
        verdict="n/a"
    else
        verdict=$(awk -v v="$2" -v t="$4" -v o="$3" 'BEGIN { ok = (o == ">=") ? v >= t : v <= t; print ok ? "PASS" : "MISS" }')
    fi
    echo "- $1: $2× (target $3 $4×): **$verdict**" >>"$CHECKS"
}
if [[ ${#SYSTEMS[@]} == 2 ]]; then
    has() { [[ " $CLIENT_COUNTS " == *" $1 "* ]]; }
    rr() { ratio "${FIG[ours.$1.$2.$3]}" "${FIG[etcd.$1.$2.$3]}"; }
    if has 100; then
        check "100 clients, put throughput ours ÷ etcd" "$(rr put 100 ops)" ">=" 4
        check "100 clients, put p99 ours ÷ etcd" "$(rr put 100 p99)" "<=" 0.5
    fi
    has 1 && check "1 client, put p50 ours ÷ etcd" "$(rr put 1 p50)" "<=" 0.5
    # Throughput as a system's capacity: at the most clients (with one client it is only the
    # inverse of the latency, which the p50 target covers).
    peak=$(tr ' ' '\n' <<<"$CLIENT_COUNTS" | grep . | sort -n | tail -n 1)
    check "$peak clients, linearizable range throughput ours ÷ etcd" "$(rr range "$peak" ops)" ">=" 2
fi

# Issue 18: no election during any run (warm-up included).
for sys in "${SYSTEMS[@]}"; do
    n=$(awk -v s="$sys" '$1 == s { t += $17 } END { print t + 0 }' "$RESULTS")
    verdict=PASS
    [[ $n == 0 ]] || verdict=MISS
    echo "- $(name_of "$sys"): elections during the measured runs (warm-up included): $n (target 0): **$verdict**" >>"$CHECKS"
done

CONNS_DESC="ceil(clients/10)"
[[ -n ${CONNS:-} ]] && CONNS_DESC="min($CONNS, clients)"
SETUP="Setup: $(name_of etcd) ($ETCD_VERSION, Debian etcd-server, default flags: heartbeat 100 ms, election 1000 ms, fdatasync on) and rust-raft-log (commit $COMMIT, $NODE_PROFILE build, default cluster_settings), 3 members each, every process on 127.0.0.1 of this machine, data directories side by side under target/tmp. Load: \`kvbench\` (tools/kvbench, tonic, tokio multi-thread runtime) on the same 2 cores, every request to the leader's endpoint (found with Maintenance.Status); closed loop, except the \"put at N/s offered\" row (open loop: $FIXED_RATE_CLIENTS clients share a fixed schedule of requests, each latency measured from the request's due time, so a stall counts against every request due during it); ${KEY_SIZE}-byte keys, ${VAL_SIZE}-byte values; puts write key numbers 0 to $((KEY_SPACE - 1)) in sequence (and around again), ranges read one random key of those (linearizable, etcd's default); connections = $CONNS_DESC; ${WARMUP_SECONDS} s warm-up then ${RUN_SECONDS} s measured per run; $ROUNDS rounds, systems interleaved (order alternating). Each figure is the median over the rounds (max: the largest); server CPU is user+system of the three server processes per successful request (in brackets: the leader's alone), client CPU that of kvbench (which shares the 2 cores with the servers)."

{
    echo "Command: \`benches/compare_etcd.sh\` ($START_DATE; ROUNDS=$ROUNDS RUN_SECONDS=$RUN_SECONDS WARMUP_SECONDS=$WARMUP_SECONDS)"
    echo
    echo "Machine: $MACHINE. Load average at start: $START_LOAD; at end: $END_LOAD."
    echo
    echo "$SETUP"
    echo
    cat "$TABLE"
    if [[ -s $CHECKS ]]; then
        echo
        echo "Targets (issues 5 and 18), from this table:"
        echo
        cat "$CHECKS"
    fi
} >"$WORK/section.md"

echo
cat "$WORK/section.md"

if [[ $WRITE == 1 ]]; then
    if [[ ${#SYSTEMS[@]} != 2 ]]; then
        echo "Error: --write needs both systems (not --only)" >&2
        exit 1
    fi
    BEGIN='<!-- compare_etcd.sh: begin (generated; edit the script, not this block) -->'
    END='<!-- compare_etcd.sh: end -->'
    NEW=$WORK/BENCHMARKS.md
    if grep -qF "$BEGIN" BENCHMARKS.md; then
        awk -v b="$BEGIN" -v e="$END" -v f="$WORK/section.md" '
            $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
            $0 == e { skip = 0 }
            !skip { print }' BENCHMARKS.md >"$NEW"
    else
        {
            cat BENCHMARKS.md
            echo
            echo "## rust-raft-log vs etcd: \`benches/compare_etcd.sh\`"
            echo
            echo "$BEGIN"
            cat "$WORK/section.md"
            echo "$END"
        } >"$NEW"
    fi
    cp "$NEW" BENCHMARKS.md
    echo "BENCHMARKS.md updated"
fi

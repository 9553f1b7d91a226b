# benches/lib/procs.sh: process and cluster plumbing shared by the benchmark and A/B scripts
# (benches/*.sh, benches/lib/clusters.sh, tools/stall_ab.sh, tools/runqueue_probe.sh); sourced,
# not run on its own. Defines functions only: sourcing it starts, traps and changes nothing.
#
# - stop_pids PID...: SIGTERM, up to 10 s for them to exit (a node finishes its in-flight writes;
#   a leader hands over first), then SIGKILL; reaps them.
# - free_port_block FROM: the first block of 10 free TCP ports at FROM, FROM+100, ... (below
#   FROM+4000), printed as its first port; fails with an error if there is none.
# - write_ours_config FILE LOG_DIR PORT [SETTING...]: a 3-node rust-raft-log cluster_config.yaml
#   on 127.0.0.1, node i listening on PORT+i, each SETTING a `key: value` line of
#   cluster_settings after log_directory.
# - load_avg: the 1, 5 and 15 minute load averages. cpu_ticks PID...: their user + system clock
#   ticks, summed (CLK_TCK per second).

stop_pids() {
    local pid alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
free_port_block() {
    local base p ok
    for base in $(seq "$1" 100 $(($1 + 3900))); do
        ok=1
        for p in $(seq "$base" $((base + 9))); do port_free "$p" || { ok=0; break; }; done
        if [[ $ok == 1 ]]; then echo "$base"; return 0; fi
    done
    echo "Error: no free block of 10 ports from $1" >&2
    return 1
}

write_ours_config() {
    local file=$1 log_dir=$2 port=$3 i setting
    shift 3
    {
        echo "nodes:"
        for i in 1 2 3; do
            printf '  - node_id: %d\n    ip_address: "127.0.0.1"\n    port: %d\n' "$i" $((port + i))
        done
        echo "cluster_settings:"
        echo "  log_directory: \"$log_dir\""
        for setting in "$@"; do echo "  $setting"; done
    } >"$file"
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
cpu_ticks() {
    local total=0 pid stat f
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # The fields after the command name (which may hold spaces) start at field 3; utime and
        # stime are fields 14 and 15.
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

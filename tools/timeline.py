#!/usr/bin/env python3
"""Where a single proposer's commit latency goes, from the nodes' latency timelines.

Usage: RAFT_TIMELINE=/tmp/tl BENCH_QUICK=1 BENCH_ONLY=throughput BENCH_PROPOSERS=1 \
           cargo bench --bench propose
       python3 tools/timeline.py /tmp/tl

Each node writes `timeline-<pid>.tsv` (ns of CLOCK_MONOTONIC, event, log index; see
src/timeline.rs). The leader is the file with `propose_rpc_in` events (send the proposals to the
leader). For every index the leader submitted for writing and answered, the script takes the first occurrence of each event for that index in each file
and prints the median (and p90) time of each step since the leader's `propose_rpc_in` that
preceded it. Only meaningful with one proposer (events of one proposal do not interleave with
another's).
"""
import collections
import glob
import os
import statistics
import sys


def load(path):
    by_index = collections.defaultdict(dict)
    rpc_in = []
    for line in open(path):
        t, what, index = line.split("\t")
        t, index = int(t), int(index)
        if what == "propose_rpc_in":
            rpc_in.append(t)
            continue
        by_index[index].setdefault(what, t)
    return by_index, rpc_in


def main():
    files = sorted(glob.glob(os.path.join(sys.argv[1], "timeline-*.tsv")))
    nodes = [load(f) for f in files]
    if not nodes or not any(n[1] for n in nodes):
        sys.exit("no node received a Propose RPC")
    # The node that received the most Propose RPCs (a follower may get a few before the
    # proposer learns who leads).
    leader = max(nodes, key=lambda n: len(n[1]))
    followers = [n for n in nodes if n is not leader]
    import bisect

    rpc_in = sorted(leader[1])
    steps = collections.defaultdict(list)
    for index, ev in leader[0].items():
        # The leader's first write submission of the index stands for its proposal.
        if "persist_submit" not in ev or "propose_rpc_out" not in ev:
            continue
        i = bisect.bisect_right(rpc_in, ev["persist_submit"]) - 1
        if i < 0:
            continue
        t0 = rpc_in[i]
        if ev["persist_submit"] - t0 > 5_000_000:
            continue
        for what, t in ev.items():
            steps["L " + what].append(t - t0)
        # The follower whose ack came first decided the commit; show both.
        acks = []
        for k, f in enumerate(followers):
            fev = f[0].get(index)
            if not fev:
                continue
            acks.append((fev.get("f_ack_out", 1 << 62), k, fev))
        acks.sort()
        for rank, (_, k, fev) in enumerate(acks):
            for what, t in fev.items():
                steps[f"F{rank + 1} " + what].append(t - t0)
    rows = [(statistics.median(v), k, v) for k, v in steps.items()]
    rows.sort()
    print(f"{len(steps.get('L propose_rpc_out', []))} proposals; µs since the leader's handler got Propose")
    print(f"{'event':28} {'p50':>8} {'p90':>8} {'n':>6}")
    for med, k, v in rows:
        v = sorted(v)
        p90 = v[int(len(v) * 0.9)]
        print(f"{k:28} {med / 1000:8.1f} {p90 / 1000:8.1f} {len(v):6}")


if __name__ == "__main__":
    main()

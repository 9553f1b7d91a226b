#!/usr/bin/env python3
"""Where one group commit cycle of the append engine goes, from the bench's latency timeline.

Usage: RAFT_TIMELINE=/tmp/tl BENCH_ONLY=256x64 BENCH_SECS=2 BENCH_BASELINE=0 BENCH_ROUNDS=1 \\
           <log_append bench binary> --bench
       python3 tools/append_phases.py /tmp/tl

The engine marks, per group: `write_start` (the group taken, before it is encoded),
`write_submitted` (its write handed to io_uring), `write_reaped` (the completion reaped),
`write_done` (published), `outcomes_sent` (every batch's future completed); each appender's
`persist_submit` marks its next batch. A cycle runs from one `write_start` to the next. Only the
measured run is read: the cycles after the last pause of more than 50 ms between two groups (the
bench reopens the log between its warm-up runs). Keep BENCH_SECS at 2 or less at 256x64: the
timeline keeps at most 2^20 events per engine, and later ones are dropped.

Prints the mean, p50 and p90 of each phase in µs. The phases between `write_reaped` and the next
`write_submitted` are the engine thread's turnaround: nothing is on the disk meanwhile.
"""
import glob
import os
import statistics
import sys

PHASES = [
    ("encode + submit", "write_start", "write_submitted"),
    ("disk + wake-up", "write_submitted", "write_reaped"),
    ("publish", "write_reaped", "write_done"),
    ("complete the batches", "write_done", "outcomes_sent"),
    ("to the first appender", "outcomes_sent", "first_persist"),
    ("appenders", "first_persist", "last_persist"),
    ("to the engine", "last_persist", "next_start"),
]


def cycles(path):
    events = []
    with open(path) as f:
        for line in f:
            t, what, _ = line.rstrip("\n").split("\t")
            events.append((int(t), what))
    events.sort()
    out, cur = [], None
    for t, what in events:
        if what == "write_start":
            if cur is not None and "outcomes_sent" in cur:
                cur["next_start"] = t
                out.append(cur)
            cur = {"write_start": t}
        elif cur is None:
            continue
        elif what == "persist_submit":
            # Only the persists after the batches were completed start the next group.
            if "outcomes_sent" in cur:
                cur.setdefault("first_persist", t)
                cur["last_persist"] = t
        elif what in ("write_submitted", "write_reaped", "write_done", "outcomes_sent"):
            cur.setdefault(what, t)
    keys = {k for _, a, b in PHASES for k in (a, b)}
    out = [c for c in out if keys <= c.keys()]
    starts = [c["write_start"] for c in out]
    cut = max([i + 1 for i in range(len(starts) - 1) if starts[i + 1] - starts[i] > 50_000_000] or [0])
    return out[cut:]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = glob.glob(os.path.join(sys.argv[1], "timeline-*.tsv"))
    if not files:
        sys.exit(f"no timeline-*.tsv in {sys.argv[1]}")
    cs = cycles(max(files, key=os.path.getsize))
    if not cs:
        sys.exit("no complete cycle (was the bench built with the phase marks?)")
    total = 0.0
    print(f"{len(cs)} cycles; µs per cycle:")
    for name, a, b in PHASES:
        d = sorted((c[b] - c[a]) / 1000 for c in cs)
        mean = statistics.mean(d)
        total += mean
        print(f"  {name:<22} mean {mean:7.1f}  p50 {d[len(d) // 2]:7.1f}  p90 {d[int(len(d) * 0.9)]:7.1f}")
    print(f"  {'cycle':<22} mean {total:7.1f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""tools/stall_attrib.py: where the stalls of a loaded cluster came from (issue 18).

    tools/stall_attrib.py TIMELINE_DIR [--slow-ms 20]

Reads the `timeline-<pid>.tsv` files the nodes wrote (RAFT_TIMELINE=TIMELINE_DIR, see
src/timeline.rs; tools/stall_ab.sh sets it with RAFT_TIMELINE_DIR), one per process, and prints:

- per process: its role changes, rotations (`rotate_start` -> `rotate_done`, on the append
  path), background preparations of the next segment (`prepare_start` -> `prepare_done`, with
  how: 0 zero-filled, 1 zero-filled at a pace, 2 fallocated, 3 fallocated and cached),
  preparations made inline at a
  rotation (`prepare_inline`), durable writes (`write_start` -> `write_done`: write +
  fdatasync, p50/p99/max; and those during the preparations that followed a rotation against
  those more than 1 s away from them), late ticks (`tick_late_us`) and long Ready drains
  (`drain_slow_us`), each with how the loop's thread spent the time where the binary marks it
  (`*_cpu_us`, `*_runq_us`: running, waiting for a core, and the rest asleep or blocked; a
  late tick's figures cover the time since the loop's previous turn ended), snapshots being written on their own thread (`snapshot_start` ->
  `snapshot_done`) and the log compactions that follow them on the loop's thread
  (`compact_start` -> `compact_done`);
- the leader's writes grouped by how many processes were writing a snapshot during each (0, 1,
  2, 3: latency percentiles of each group);
- on the leader (the process that answered the etcd writes, `kv_write_us`: each write's latency
  inside the server): every stall, i.e. the writes slower than --slow-ms merged where they
  overlap in time, with what overlapped it in any process: a rotation (or one that ended up to
  5 ms before), a segment preparation, a snapshot being written, a log compaction (or one that
  ended up to 5 ms before), a durable write at least half as long as the worst
  request, a tick served late by at least a quarter of it, a long Ready drain, a role change
  (election) in the 300 ms before or during it, and, where tools/steal_probe.py ran beside the
  nodes (TIMELINE_DIR/steal.tsv), time the hypervisor took this VM's CPUs away (steal) from
  the start of the stall to 20 ms after its end (the kernel counts steal in 10 ms ticks), and
  its pinned sleepers that woke late by at least a quarter of the stall without waiting on a run
  queue (the CPU itself was held: no guest code ran on it);
  then a tally of the episodes by cause.
"""
import glob
import os
import sys
from collections import defaultdict

# `Prepare` as a number (src/storage/file.rs; binaries before the paced fill had no 1 and numbered
# the fallocated kinds 1 and 2).
HOW = {0: "zero-filled", 1: "paced zero-fill", 2: "fallocated", 3: "fallocated+cached"}


def load(path):
    ev = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                ev.append((int(parts[0]), parts[1], int(parts[2])))
    ev.sort()
    return ev


def intervals(ev, start, done, key_by_index=True):
    """(t0, t1, key) pairs from matching start/done marks (by index, or in order)."""
    out = []
    open_ = {}
    pending = []
    for t, what, idx in ev:
        if what == start:
            if key_by_index:
                open_[idx] = t
            else:
                pending.append((t, idx))
        elif what == done:
            if key_by_index:
                t0 = open_.pop(idx, None)
                if t0 is not None:
                    out.append((t0, t, idx))
            elif pending:
                t0, i0 = pending.pop(0)
                out.append((t0, t, i0))
    return out


def with_sched(ev, what):
    """[t, µs, cpu µs or None, runq µs or None] for each `what` mark, with the `<prefix>_cpu_us`
    and `<prefix>_runq_us` marks the loop writes right after it."""
    prefix = what[: -len("_us")] if what == "tick_late_us" else "drain"
    out = []
    for t, w, i in ev:
        if w == what:
            out.append([t, i, None, None])
        elif out and w == prefix + "_cpu_us":
            out[-1][2] = i
        elif out and w == prefix + "_runq_us":
            out[-1][3] = i
    return out


def how_spent(lost_us, cpu, runq):
    """Which part of `lost_us` the thread spent where: 'running' (the loop or another task of its
    runtime), 'waiting for a core', 'asleep/blocked', or None for binaries without the marks."""
    if cpu is None or runq is None:
        return None
    if cpu >= lost_us / 2:
        return "running"
    if runq >= lost_us / 2:
        return "waiting for a core"
    if cpu + runq >= lost_us / 2:
        return "running and waiting"
    return "asleep/blocked"


def spent_text(cpu, runq):
    return "" if cpu is None or runq is None else f" (on a CPU {cpu / 1000:.1f}, waiting for one {runq / 1000:.1f} ms)"


def spent_tally(marks):
    """', of which N running, ...' over marks that carry the thread's figures."""
    kinds = defaultdict(int)
    for _, i, cpu, runq in marks:
        how = how_spent(i, cpu, runq)
        if how:
            kinds[how] += 1
    if not kinds:
        return ""
    return "; the thread meanwhile: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def pct(xs, p):
    if not xs:
        return 0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    slow_ms = 20.0
    if "--slow-ms" in args:
        i = args.index("--slow-ms")
        slow_ms = float(args[i + 1])
        del args[i : i + 2]
    files = sorted(glob.glob(os.path.join(args[0], "timeline-*.tsv")))
    if not files:
        print(f"no timeline-*.tsv in {args[0]}")
        sys.exit(1)
    procs = {}
    for f in files:
        pid = os.path.basename(f)[len("timeline-") : -len(".tsv")]
        procs[pid] = load(f)
    steal_path = os.path.join(args[0], "steal.tsv")
    steal = load(steal_path) if os.path.exists(steal_path) else None
    t_zero = min(ev[0][0] for ev in procs.values() if ev)
    ms = lambda t: (t - t_zero) / 1e6

    info = {}
    for pid, ev in procs.items():
        writes = intervals(ev, "write_start", "write_done")
        rot = intervals(ev, "rotate_start", "rotate_done")
        prep = intervals(ev, "prepare_start", "prepare_done", key_by_index=False)
        inline = [(t, i) for t, w, i in ev if w == "prepare_inline"]
        late_s = with_sched(ev, "tick_late_us")
        drain_s = with_sched(ev, "drain_slow_us")
        late = [(t, i) for t, i, _, _ in late_s]
        drain = [(t, i) for t, i, _, _ in drain_s]
        roles = [(t, w, i) for t, w, i in ev if w.startswith("role_")]
        snap = intervals(ev, "snapshot_start", "snapshot_done")
        compact = intervals(ev, "compact_start", "compact_done")
        answers = [(t, i) for t, w, i in ev if w == "kv_write_us"]
        info[pid] = dict(writes=writes, rot=rot, prep=prep, inline=inline, late=late,
                         drain=drain, roles=roles, answers=answers, snap=snap, compact=compact,
                         late_s=late_s, drain_s=drain_s)
        wd = [(b - a) / 1e6 for a, b, _ in writes]
        print(f"process {pid}: {len(answers)} writes answered; roles: "
              + (", ".join(f"{w[5:]}@{ms(t):.0f}ms(term {i})" for t, w, i in roles) or "-"))
        print(f"  durable writes: {len(wd)}, ms p50 {pct(wd, .5):.2f} p99 {pct(wd, .99):.2f} "
              f"p99.9 {pct(wd, .999):.2f} max {max(wd, default=0):.2f}")
        for a, b, idx in rot:
            print(f"  rotation at {ms(a):.0f} ms (after index {idx}): {(b - a) / 1e6:.2f} ms on the append path")
        for a, b, how in prep:
            print(f"  preparation {HOW.get(how, how)} {ms(a):.0f}-{ms(b):.0f} ms ({(b - a) / 1e6:.0f} ms)")
        # The appends during the background preparations that followed a rotation (the first
        # one, at startup, overlaps the cluster's start) against those more than 1 s away.
        later = prep[1:]
        if later:
            near = lambda t, pad: any(p0 - pad <= t <= p1 + pad for p0, p1, _ in later)
            during = [(b - a) / 1e6 for a, b, _ in writes if near(a, 0)]
            away = [(b - a) / 1e6 for a, b, _ in writes if not near(a, 1_000_000_000)]
            prep_s = sum(p1 - p0 for p0, p1, _ in later) / 1e9
            away_s = (ev[-1][0] - ev[0][0]) / 1e9 - sum(p1 - p0 + 2e9 for p0, p1, _ in later) / 1e9
            print(f"  durable writes during the preparations after a rotation ({prep_s:.2f} s): "
                  f"{len(during) / max(prep_s, 1e-9):.0f}/s, ms p50 {pct(during, .5):.2f} "
                  f"p99 {pct(during, .99):.2f} max {max(during, default=0):.2f}; more than 1 s "
                  f"away from them: {len(away) / max(away_s, 1e-9):.0f}/s, ms p50 "
                  f"{pct(away, .5):.2f} p99 {pct(away, .99):.2f} max {max(away, default=0):.2f}")
        for t, how in inline:
            print(f"  preparation made INLINE at {ms(t):.0f} ms ({HOW.get(how, how)})")
        if late:
            print(f"  late ticks (>= 2 ms): {len(late)}, worst {max(i for _, i in late) / 1000:.1f} ms"
                  + spent_tally(late_s))
        if rot:
            # A tick marked at t, late by i µs, was due at t - i: it waited through a rotation if
            # that interval overlaps one (a rotation that blocks the thread delays the ticks due
            # during it until it ends).
            rd = [(b - a) / 1e6 for a, b, _ in rot]
            hit = [i for t, i in late if any(a < t and t - i * 1000 < b for a, b, _ in rot)]
            print(f"  rotations: {len(rot)}, ms p50 {pct(rd, .5):.2f} max {max(rd):.2f}; late ticks "
                  f"(>= 2 ms) that were due during one: {len(hit)}"
                  + (f", worst {max(hit) / 1000:.1f} ms" if hit else ""))
            # Binaries that await the rotation (issue 18) mark where the two header syncs end;
            # later ones also when the rename's directory fsync, which then runs beside the first
            # write into the new segment (after `rotate_done`), completed.
            mid = {i: t for t, w, i in ev if w == "rotate_headers_done"}
            dsync = {i: t for t, w, i in ev if w == "rotate_dir_synced"}
            split = [((mid[i] - a) / 1e6, (b - mid[i]) / 1e6) for a, b, i in rot if i in mid]
            if split:
                hd = [h for h, _ in split]
                rn = [r for _, r in split]
                what = "rename" if dsync else "rename + directory fsync"
                print(f"    of which seal + next header (in parallel): ms p50 {pct(hd, .5):.2f} max "
                      f"{max(hd):.2f}; {what}: ms p50 {pct(rn, .5):.2f} max {max(rn):.2f}")
            ds = [(dsync[i] - b) / 1e6 for a, b, i in rot if i in dsync]
            if ds:
                print(f"    then the directory fsync beside the first write: ms p50 {pct(ds, .5):.2f} "
                      f"max {max(ds):.2f} after rotate_done")
        if drain:
            print(f"  long Ready drains (>= 2 ms): {len(drain)}, worst {max(i for _, i in drain) / 1000:.1f} ms"
                  + spent_tally(drain_s))
        if snap:
            sd = [(b - a) / 1e6 for a, b, _ in snap]
            cd = [(b - a) / 1e6 for a, b, _ in compact]
            print(f"  snapshots written: {len(sd)}, ms p50 {pct(sd, .5):.0f} max {max(sd):.0f}; "
                  f"log compactions after them (on the loop's thread): ms p50 {pct(cd, .5):.2f} "
                  f"max {max(cd, default=0):.2f}")

    if steal is not None:
        t_end = max(ev[-1][0] for ev in procs.values() if ev)
        during = [(t, w, i) for t, w, i in steal if t_zero <= t <= t_end]
        per_cpu = defaultdict(int)
        for _, w, i in during:
            if w.startswith("steal_"):
                per_cpu[w[len("steal_"):]] += i
        print(f"steal (tools/steal_probe.py): {sum(per_cpu.values())} ms over the run"
              + "".join(f", {c} {v} ms" for c, v in sorted(per_cpu.items())))
        late = [(w[len("sleeper_late_"):], i) for _, w, i in during if w.startswith("sleeper_late_")]
        if late:
            print(f"pinned sleepers woke >= 2 ms late {len(late)} times, worst "
                  + ", ".join(f"{c} {max(i for cc, i in late if cc == c) / 1000:.1f} ms"
                              for c in sorted({c for c, _ in late})))

    leader = max(info, key=lambda p: len(info[p]["answers"]))
    ans = info[leader]["answers"]  # (answered at, latency µs)
    lat = sorted(l for _, l in ans)
    print(f"\nleader: process {leader}; {len(ans)} writes answered, ms p50 {pct(lat, .5) / 1000:.2f} "
          f"p99 {pct(lat, .99) / 1000:.2f} p99.9 {pct(lat, .999) / 1000:.2f} max {max(lat, default=0) / 1000:.2f}")
    # The leader's writes by how many processes were writing a snapshot at some moment of each
    # write (members that snapshot at the same index share the disk, or each slow its own).
    snaps = [(a, b, pid) for pid in info for a, b, _ in info[pid]["snap"]]
    if snaps:
        by_count = defaultdict(list)
        for t, l in ans:
            a = t - l * 1000
            by_count[len({p for s0, s1, p in snaps if s0 < t and s1 > a})].append(l / 1000)
        print("leader's writes by processes writing a snapshot meanwhile: " + "; ".join(
            f"{k}: {len(v)} writes, ms p50 {pct(v, .5):.2f} p99 {pct(v, .99):.2f} "
            f"p99.9 {pct(v, .999):.2f} max {max(v):.2f}" for k, v in sorted(by_count.items())))
    print(f"stalls: writes slower than {slow_ms} ms, merged where they overlap, with what overlapped them:")
    episodes = []
    for t, l in sorted(ans, key=lambda x: x[0] - x[1] * 1000):
        if l / 1000 < slow_ms:
            continue
        a, b = t - l * 1000, t
        if episodes and a <= episodes[-1][1]:
            e = episodes[-1]
            episodes[-1] = (e[0], max(e[1], b), max(e[2], l), e[3] + 1)
        else:
            episodes.append((a, b, l, 1))
    tally = defaultdict(int)
    for a, b, worst, n in episodes:
        causes = []
        kinds = set()
        for pid, d in info.items():
            who = "leader" if pid == leader else f"follower {pid}"
            for r0, r1, _ in d["rot"]:
                if r0 < b and r1 > a - 5_000_000:
                    causes.append(f"{who}: rotation {(r1 - r0) / 1e6:.1f} ms at {ms(r0):.0f}")
                    kinds.add("rotation")
            for p0, p1, how in d["prep"]:
                if p0 < b and p1 > a:
                    causes.append(f"{who}: {HOW.get(how, how)} preparation running")
                    kinds.add("preparation")
            for s0, s1, idx in d["snap"]:
                if s0 < b and s1 > a:
                    causes.append(f"{who}: snapshot at index {idx} being written")
                    kinds.add("snapshot write")
            for c0, c1, _ in d["compact"]:
                if c0 < b and c1 > a - 5_000_000:
                    causes.append(f"{who}: log compaction {(c1 - c0) / 1e6:.1f} ms at {ms(c0):.0f}")
                    kinds.add("log compaction")
            for t, how in d["inline"]:
                if a - 5_000_000 <= t <= b:
                    causes.append(f"{who}: inline preparation ({HOW.get(how, how)})")
                    kinds.add("preparation")
            slow = [(w1 - w0) / 1e6 for w0, w1, _ in d["writes"] if w0 < b and w1 > a]
            if slow and max(slow) >= worst / 2000:
                causes.append(f"{who}: durable write of {max(slow):.1f} ms")
                kinds.add("slow fdatasync")
            lt = [x for x in d["late_s"] if a <= x[0] <= b + 2_000_000]
            if lt and max(x[1] for x in lt) >= worst / 4:
                _, i, cpu, runq = max(lt, key=lambda x: x[1])
                causes.append(f"{who}: tick {i / 1000:.1f} ms late" + spent_text(cpu, runq))
                how = how_spent(i, cpu, runq)
                kinds.add("loop not running (late tick)" + (f": {how}" if how else ""))
            dr = [x for x in d["drain_s"] if a <= x[0] <= b + 2_000_000]
            if dr:
                _, i, cpu, runq = max(dr, key=lambda x: x[1])
                causes.append(f"{who}: Ready drain of {i / 1000:.1f} ms" + spent_text(cpu, runq))
                how = how_spent(i, cpu, runq)
                kinds.add("long Ready drain" + (f": {how}" if how else ""))
            for t, w, term in d["roles"]:
                if a - 300_000_000 <= t <= b and w != "role_follower":
                    causes.append(f"{who}: became {w[5:]} (term {term}) at {ms(t):.0f}")
                    kinds.add("election")
        if steal is not None:
            st = [(t, w, i) for t, w, i in steal if w.startswith("steal_") and a <= t <= b + 20_000_000]
            if st:
                causes.append("vCPU steal " + ", ".join(f"{w[len('steal_'):]} {i} ms at {ms(t):.0f}" for t, w, i in st))
                kinds.add("vCPU steal (the hypervisor)")
            # A pinned sleeper that woke late is marked when it woke: its sleep overlaps the
            # stall if it ended after the stall began and began before the stall ended.
            held = {}
            for k, (t, w, i) in enumerate(steal):
                if w.startswith("sleeper_late_") and t >= a and t - i * 1000 <= b and i >= (b - a) / 4000:
                    runq = steal[k + 1][2] if k + 1 < len(steal) and steal[k + 1][1].startswith("sleeper_runq_") else None
                    cpu = w[len("sleeper_late_"):]
                    if runq is not None and runq < i / 4:
                        held[cpu] = max(held.get(cpu, 0), i)
            if held:
                causes.append("pinned sleeper woke late without waiting for the CPU: "
                              + ", ".join(f"{c} {v / 1000:.1f} ms" for c, v in sorted(held.items())))
                ncpu = len({w[len("sleeper_late_"):] for _, w, _ in steal if w.startswith("sleeper_late_")})
                kinds.add("every vCPU held (no guest code ran)" if len(held) >= max(ncpu, 2)
                          else "a vCPU held (no guest code ran on it)")
        for k in kinds or {"nothing marked"}:
            tally[k] += 1
        print(f"  {ms(a):9.0f}-{ms(b):.0f} ms: {n} writes, worst {worst / 1000:.1f} ms; "
              + ("; ".join(causes) or "nothing marked overlaps"))
    if not episodes:
        print("  none")
    print("episodes by overlapping cause (one episode may count under several): "
          + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()

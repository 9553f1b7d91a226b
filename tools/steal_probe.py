#!/usr/bin/env python3
"""tools/steal_probe.py: when this VM's CPUs did not run anything of ours, for stall_attrib.py.

    tools/steal_probe.py TIMELINE_DIR [--every-ms 1]   (stop it with SIGTERM or SIGINT)

Writes TIMELINE_DIR/steal.tsv in the layout and clock of the nodes' timeline files
(src/timeline.rs: `<CLOCK_MONOTONIC ns>\t<what>\t<value>`), so tools/stall_attrib.py can put
them side by side:

- `steal_cpu<N>\t<ms>`: the CPU's steal counter in /proc/stat moved by that much since the last
  poll (time the hypervisor ran something else while this CPU had work). The kernel counts it
  in USER_HZ ticks (10 ms), so a few ms may show as 0 or 10.
- `sleeper_late_cpu<N>\t<µs>` then `sleeper_runq_cpu<N>\t<µs>`: a process pinned to CPU N that
  only sleeps --every-ms at a time woke this late (>= 2 ms), and this much of it was spent
  runnable, waiting for the CPU (/proc/thread-self/schedstat). Late with no run-queue wait means
  the CPU did not run the sleeper's timer at all: the whole vCPU was held (by the hypervisor, or
  an exit to it that did not return), which steal time does not always count.

Costs about 1-3% of a core at the default period (two sleepers and the steal poll).
"""
import os
import signal
import sys
import time


def steal_ms():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                # user nice system idle iowait irq softirq steal ...
                out[fields[0]] = int(fields[8]) * 1000 // os.sysconf("SC_CLK_TCK")
    return out


def runq_ns(f):
    f.seek(0)
    return int(f.read().split()[1])


def sleeper(cpu, every, path):
    """Sleeps `every` s at a time on CPU `cpu` and writes each wake-up >= 2 ms late."""
    os.sched_setaffinity(0, {cpu})
    stat = open("/proc/thread-self/schedstat")
    with open(path, "a") as out:
        while True:
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            q0 = runq_ns(stat)
            time.sleep(every)
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            late = (now - before) // 1000 - int(every * 1e6)
            if late >= 2000:
                waited = (runq_ns(stat) - q0) // 1000
                out.write(f"{now}\tsleeper_late_cpu{cpu}\t{late}\n{now}\tsleeper_runq_cpu{cpu}\t{waited}\n")
                out.flush()


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__)
        sys.exit(2)
    every = 0.001
    if "--every-ms" in args:
        i = args.index("--every-ms")
        every = float(args[i + 1]) / 1000
        del args[i : i + 2]
    os.makedirs(args[0], exist_ok=True)
    path = os.path.join(args[0], "steal.tsv")
    children = []
    for cpu in sorted(os.sched_getaffinity(0)):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            sleeper(cpu, every, path)
            os._exit(0)
        children.append(pid)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    last = steal_ms()
    with open(path, "a") as out:
        while not stop:
            time.sleep(0.002)
            now = steal_ms()
            t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            changed = [(cpu, ms - last[cpu]) for cpu, ms in now.items() if ms != last.get(cpu, ms)]
            for cpu, ms in changed:
                out.write(f"{t}\tsteal_{cpu}\t{ms}\n")
            if changed:
                out.flush()
            last = now
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()

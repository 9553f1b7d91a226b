#!/usr/bin/env python3
"""tools/cpu_split.py: where a node's CPU per put goes, by layer (issue 18).

    tools/cpu_split.py SCRIPT_TXT US_PER_PUT [LABEL]

SCRIPT_TXT is `perf script -F comm,tid,ip,sym` of a `perf record --call-graph dwarf` of one
node process (tools/cpu_profile.sh makes both); US_PER_PUT is that process's CPU (user +
system) per acknowledged put over the same load. Every sample of the process's threads is given
to one layer: the innermost frame of the stack that belongs to a crate, skipping the standard
library, the allocator, `bytes` and the C library (their time is their caller's), so that a
`memmove` inside the KV store counts as the store and a kernel sample counts as the user code
that made the system call. Prints, per layer, its share of the samples and that share of
US_PER_PUT; then the three sums that matter for the CPU target: the HTTP/2 and gRPC stack, the
runtime and sockets, and rust-raft-log's own code.

Samples of io_uring's kernel workers (`iou-wrk-*`: the log's writes and fdatasyncs, the block
layer under them) are a layer of their own. A sample whose stack has no crate frame at all (interrupts, or the unwinder lost it) is
counted as "unknown".
"""
import re
import sys
from collections import Counter

# (layer, group, pattern on the frame's path); the first match wins.
LAYERS = [
    ("KV store (apply, compaction, snapshots)", "ours", r"^rust_raft_log::kv::"),
    ("Raft core and driver", "ours", r"^rust_raft_log::(raft|driver)::"),
    ("log: engine, CRC32C, submissions", "ours", r"^(rust_raft_log::storage::|io_uring::|crc32c::|tokio_uring::)"),
    ("metrics (recording)", "ours", r"^(prometheus_client::|rust_raft_log::metrics::|rust_raft_log::grpc::front::(HandledCounter|CountedBody))"),
    ("etcd API handlers", "ours", r"^rust_raft_log::etcd::"),
    ("gRPC glue of ours (server, peers, conversions)", "ours", r"^rust_raft_log::grpc::"),
    ("node loop and the rest of ours", "ours", r"^rust_raft_log::"),
    ("protobuf (prost)", "HTTP/2 and gRPC", r"^(prost|tonic_prost|rust_raft_log::etcdpb)"),
    ("h2", "HTTP/2 and gRPC", r"^h2::"),
    ("hyper", "HTTP/2 and gRPC", r"^hyper(_util)?::"),
    ("tonic", "HTTP/2 and gRPC", r"^tonic::"),
    ("axum and tower (routing, layers)", "HTTP/2 and gRPC", r"^(axum|axum_core|tower|tower_layer|tower_service)::"),
    ("http types (headers, URIs, bodies)", "HTTP/2 and gRPC", r"^(http|http_body|http_body_util|httparse|matchit|percent_encoding)::"),
    ("socket reads and writes, epoll (mio, std::net)", "runtime and sockets", r"^(mio::|std::net::)"),
    ("tokio (tasks, channels, timers)", "runtime and sockets", r"^(tokio|tokio_util|tokio_stream|futures_util|futures_core|atomic_waker)::"),
    ("persistent map (imbl)", "ours", r"^(imbl|imbl_sized_chunks|archery)::"),
]
COMPILED = [(name, group, re.compile(pattern)) for name, group, pattern in LAYERS]
# Frames whose time belongs to their caller.
PASS_THROUGH = re.compile(
    r"^(core::|alloc::|std::(?!net)|_?mi_|mi_|__mem|__vdso|bytes::|__libc|__GI|_int_|malloc$|free$|"
    r"cfree$|syscall$|__rustc::|hashbrown::|slab::|indexmap::)"
)


def frame_path(symbol):
    """The path of a frame's function without generics: `<A as B>::f` gives `A`."""
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol.strip())
    if symbol.startswith("<"):
        match = re.match(r"[<&]*(?:mut |dyn )?([^ <>]+)", symbol)
        return match.group(1) if match else symbol
    return symbol.split("<")[0]


def samples(path):
    """Yields each sample's thread name and frames, leaf first."""
    frames = None
    comm = ""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if frames is not None:
                    yield comm, frames
                frames = None
                continue
            if line[0] in " \t":
                if frames is not None:
                    parts = line.strip().split(" ", 1)
                    frames.append(parts[1] if len(parts) > 1 else "?")
            else:
                comm = line.split()[0]
                frames = []
    if frames is not None:
        yield comm, frames


def layer_of(comm, frames):
    # io_uring's kernel workers run the log's writes and fdatasyncs (kernel frames only).
    if comm.startswith("iou-"):
        return "log: io_uring's kernel workers (write, fdatasync, block layer)", "ours"
    for symbol in frames:
        path = frame_path(symbol)
        if "::" not in path or PASS_THROUGH.search(path):
            continue
        for name, group, pattern in COMPILED:
            if pattern.search(path):
                return name, group
        return "other crates (" + path.split("::")[0] + ")", "other"
    return "unknown (no crate frame)", "other"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    us_per_put = float(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else sys.argv[1]
    layers = Counter()
    groups = Counter()
    total = 0
    for comm, frames in samples(sys.argv[1]):
        name, group = layer_of(comm, frames)
        layers[name] += 1
        groups[group] += 1
        total += 1
    if total == 0:
        sys.exit(f"{sys.argv[1]}: no samples")
    print(f"{label}: {total} samples, {us_per_put:.1f} µs of CPU per put")
    for name, count in layers.most_common():
        share = count / total
        print(f"  {100 * share:5.1f} %  {us_per_put * share:6.2f} µs/put  {name}")
    print("  by group:")
    for group in ("HTTP/2 and gRPC", "runtime and sockets", "ours", "other"):
        share = groups[group] / total
        print(f"  {100 * share:5.1f} %  {us_per_put * share:6.2f} µs/put  {group}")
    print(
        "cpu-split-result "
        + label
        + " "
        + " ".join(
            f"{g.replace(' ', '_').replace('/', '')}={us_per_put * groups[g] / total:.2f}"
            for g in ("HTTP/2 and gRPC", "runtime and sockets", "ours", "other")
        )
    )


if __name__ == "__main__":
    main()

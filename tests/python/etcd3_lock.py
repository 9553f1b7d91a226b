"""Locks through Python's `etcd3` client (0.12.0) against a rust-raft-log cluster.

Run by tests/python_etcd3.rs with two endpoints, `host:port` of a follower and of the leader.
Prints one line per step; the Rust test checks them.
"""
import sys

import etcd3


def client(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=15)


follower, leader = client(sys.argv[1]), client(sys.argv[2])

# A lock: the second holder waits until the first releases it.
first = follower.lock("pylock", ttl=10)
print("first_acquired", first.acquire(timeout=5))
second = leader.lock("pylock", ttl=10)
print("second_while_held", second.acquire(timeout=1))
first.release()
print("second_after_release", second.acquire(timeout=10))
print("second_holds", second.is_acquired())
second.release()
print("done")

"""Watches and locks through Python's `etcd3` client (0.12.0) against a rust-raft-log cluster.

Run by tests/python_etcd3.rs with two endpoints, `host:port` of a follower and of the leader.
Prints one line per step; the Rust test checks them.
"""
import sys
import threading

import etcd3


def client(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=15)


follower, leader = client(sys.argv[1]), client(sys.argv[2])

# A prefix watch on the follower sees the leader's put and delete, in order.
events = []
seen_two = threading.Event()


def on_events(response):
    for event in response.events:
        events.append("%s %s %s" % (type(event).__name__, event.key.decode(), event.value.decode()))
    if len(events) >= 2:
        seen_two.set()


watch_id = follower.add_watch_prefix_callback("pyw/", on_events)
leader.put("pyw/a", "1")
leader.delete("pyw/a")
print("watched", seen_two.wait(15), events)
follower.cancel_watch(watch_id)

# History: a watch from an old revision replays what happened since.
revision = leader.put("pyh/k", "old").header.revision
leader.put("pyh/k", "new")
iterator, cancel = follower.watch("pyh/k", start_revision=revision)
replayed = []
for event in iterator:
    replayed.append(event.value.decode())
    if len(replayed) == 2:
        cancel()
print("replayed", replayed)

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

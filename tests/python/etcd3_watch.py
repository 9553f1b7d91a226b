"""Python's etcd3 client (PyPI etcd3 0.12.0) watching a rust-raft-log cluster.

Run by tests/python_etcd3.rs (in its virtualenv): argv = watched member host:port, writing member host:port.
Prints one line per event seen, revisions relative to the first write, then "done".
"""
import sys
import threading
import time

import etcd3
from etcd3 import events


def client(address):
    host, port = address.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=10)


def show(event, start):
    kind = "PUT" if isinstance(event, events.PutEvent) else "DELETE"
    return "%s %s %s +%d" % (
        kind,
        event.key.decode(),
        event.value.decode(),
        event.mod_revision - start,
    )


def main():
    watched, writing = client(sys.argv[1]), client(sys.argv[2])
    start = writing.put("py/start", "0").header.revision

    callback_lines = []
    callback_done = threading.Event()

    def callback(response):
        for event in response.events:
            callback_lines.append(show(event, start))
        if len(callback_lines) >= 2:
            callback_done.set()

    watch_id = watched.add_watch_callback("py/k", callback)
    # History replay: from the first write on, then live.
    iterator, cancel = watched.watch_prefix("py/", start_revision=start)
    iterator_lines = []

    def read():
        for event in iterator:
            iterator_lines.append(show(event, start))
            if len(iterator_lines) == 5:
                cancel()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)
    writing.put("py/a", "1")
    writing.put("py/k", "v")
    writing.delete("py/a")
    writing.put("other", "x")
    writing.put("py/k", "w")
    reader.join(timeout=20)
    callback_done.wait(timeout=20)
    watched.cancel_watch(watch_id)
    for line in iterator_lines:
        print("iterator " + line)
    for line in callback_lines:
        print("callback " + line)
    print("done")
    sys.stdout.flush()


main()

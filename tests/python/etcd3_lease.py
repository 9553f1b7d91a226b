"""Leases through Python's `etcd3` client (0.12.0) against a rust-raft-log cluster.

Run by tests/python_etcd3.rs with two endpoints, `host:port` of a follower and of the leader.
Prints one line per step; the Rust test checks them. Locks and watches come with the Watch
service.
"""
import sys

import etcd3
import grpc


def client(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=15)


follower, leader = client(sys.argv[1]), client(sys.argv[2])

lease = follower.lease(30)
print("granted", lease.id > 0, lease.ttl)
follower.put("py/leased", "v1", lease=lease)
follower.put("py/also", "v2", lease=lease.id)
value, meta = leader.get("py/leased")
print("get", value.decode(), meta.lease_id == lease.id)
refreshed = lease.refresh()
print("refresh", refreshed[0].ID == lease.id, refreshed[0].TTL)
print("granted_ttl", lease.granted_ttl)
print("remaining_in_range", 25 <= lease.remaining_ttl <= 30)
print("keys", sorted(key.decode() for key in lease.keys))
leader_view = leader.get_lease_info(lease.id)
print("leader_info", leader_view.grantedTTL, sorted(k.decode() for k in leader_view.keys))
lease.revoke()
print("after_revoke", leader.get("py/leased")[0], follower.get("py/also")[0])
print("ttl_after_revoke", follower.get_lease_info(lease.id).TTL)
print("missing_refresh", list(follower.refresh_lease(lease.id))[0].TTL)
try:
    follower.revoke_lease(lease.id)
    print("revoke_missing", "no error")
except grpc.RpcError as error:  # etcd3 0.12 passes NOT_FOUND through as grpc's own error
    print("revoke_missing", error.code().name, error.details())
chosen = leader.lease(40, lease_id=0x1234)
print("chosen_id", hex(chosen.id), chosen.ttl)
try:
    follower.lease(40, lease_id=0x1234)
    print("duplicate", "no error")
except etcd3.exceptions.PreconditionFailedError:  # FAILED_PRECONDITION, etcd's code for it
    print("duplicate", "PreconditionFailedError")
chosen.revoke()
print("done")

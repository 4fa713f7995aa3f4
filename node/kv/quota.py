"""etcd's backend quota: what a request costs, and the NOSPACE error.

The costs are etcd's (server/storage/quota.go): a put costs its key and value
plus 256 bytes of metadata, a txn the larger of its two branches' puts, a
lease grant 64 bytes; anything else (reads, deletes, compaction) costs nothing
and is never refused for space.
"""

from __future__ import annotations

from typing import Any

from node.pb import rpc_pb2

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024  # etcd's default when --quota-backend-bytes is 0
LEASE_OVERHEAD = 64
KV_OVERHEAD = 256


def effective_quota(flag: int) -> int:
    """--quota-backend-bytes as etcd reads it: 0 is the 2 GiB default, negative disables (-1)."""
    if flag == 0:
        return DEFAULT_QUOTA_BYTES
    return -1 if flag < 0 else flag


def cost_put(r: rpc_pb2.PutRequest) -> int:
    return KV_OVERHEAD + len(r.key) + len(r.value)


def _cost_op(op: Any) -> int:
    which = op.WhichOneof("request")
    if which == "request_put":
        return cost_put(op.request_put)
    if which == "request_txn":
        return cost_txn(op.request_txn)
    return 0


def cost_txn(t: rpc_pb2.TxnRequest) -> int:
    return max(sum(_cost_op(op) for op in t.success), sum(_cost_op(op) for op in t.failure))


def cost(req: Any) -> int:
    if isinstance(req, rpc_pb2.PutRequest):
        return cost_put(req)
    if isinstance(req, rpc_pb2.TxnRequest):
        return cost_txn(req)
    if isinstance(req, rpc_pb2.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0

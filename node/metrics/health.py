"""etcd 3.4's /health rule: unhealthy with any alarm, without a leader, or when a quorum read fails in 1 s."""

from __future__ import annotations

import json

from node.errors import EtcdError
from node.kv import KVStateMachine
from node.server.raftnode import RaftNode

HEALTH_READ_TIMEOUT_S = 1.0


def body(ok: bool) -> str:
    return json.dumps({"health": "true" if ok else "false"}, separators=(",", ":"))


async def check(node: RaftNode, sm: KVStateMachine) -> tuple[bool, str]:
    """etcd answers with a quorum GET; ours is a ReadIndex barrier: both need a leader and a majority."""
    if sm.alarms or node.removed or not node.has_leader():
        return False, body(False)
    try:
        await node.read_barrier(HEALTH_READ_TIMEOUT_S)
    except (EtcdError, TimeoutError):  # no quorum in time is "not healthy", never an HTTP error
        return False, body(False)
    return True, body(True)

"""Lease expiry, decided by the leader alone and carried out through the log.

Deadlines live only in the leader's memory (monotonic clock). A new leader
gives every lease a full TTL from the moment it takes over, so a leader
change never expires a lease early (it may extend it, as etcd's does). When a
deadline passes, the leader proposes a LeaseRevoke; every node applies it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from node.errors import EtcdError
from node.kv.apply import OP_LEASE_REVOKE, KVStateMachine, encode
from node.kv.auth import ROOT, AuthInfo
from node.pb import rpc_pb2
from node.server.raftnode import RaftNode

log = logging.getLogger("quorumlab.lessor")


class Lessor:
    def __init__(self, node: RaftNode, sm: KVStateMachine, check_interval: float = 0.25) -> None:
        self.node = node
        self.sm = sm
        self.deadlines: dict[int, float] = {}
        self.revoking: set[int] = set()
        self.check_interval = check_interval
        self._task: asyncio.Task[None] | None = None
        sm.on_lease_granted.append(self._granted)
        sm.on_lease_revoked.append(self._revoked)
        node.on_leader_change.append(self._leader_changed)

    def is_leader(self) -> bool:
        return self.node.lead == self.node.member_id and self.node.lead != 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._expire_loop(), name="lessor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _granted(self, lease_id: int | None) -> None:
        now = time.monotonic()
        if lease_id is None:  # a snapshot was restored
            self.deadlines = {i: now + ls.ttl for i, ls in self.sm.leases.items()}
        elif lease_id in self.sm.leases:
            self.deadlines[lease_id] = now + self.sm.leases[lease_id].ttl

    def _revoked(self, lease_id: int) -> None:
        self.deadlines.pop(lease_id, None)
        self.revoking.discard(lease_id)

    def _leader_changed(self, old: int, new: int) -> None:
        if new == self.node.member_id:
            now = time.monotonic()
            self.deadlines = {i: now + ls.ttl for i, ls in self.sm.leases.items()}
            self.revoking.clear()

    def keep_alive(self, lease_id: int) -> int:
        """Leader only: renew and return the TTL, or 0 when the lease is gone."""
        ls = self.sm.leases.get(lease_id)
        if ls is None or lease_id in self.revoking:
            return 0
        self.deadlines[lease_id] = time.monotonic() + ls.ttl
        return ls.ttl

    def remaining(self, lease_id: int) -> int:
        """Leader only: whole seconds left, truncated as etcd does; -1 when the lease does not exist."""
        if lease_id not in self.sm.leases:
            return -1
        left = self.deadlines.get(lease_id, time.monotonic()) - time.monotonic()
        return max(0, int(left))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            if not self.is_leader():
                continue
            now = time.monotonic()
            for lid, dl in list(self.deadlines.items()):
                if dl <= now and lid not in self.revoking and lid in self.sm.leases:
                    self.revoking.add(lid)
                    asyncio.get_running_loop().create_task(self._revoke(lid))

    async def _revoke(self, lease_id: int) -> None:
        try:
            # as etcd's WithRoot: an expiry is the cluster's own act, checked as root's
            auth = self.sm.auth
            ai = AuthInfo(ROOT, auth.revision) if auth.enabled else None
            await self.node.propose(encode(OP_LEASE_REVOKE, rpc_pb2.LeaseRevokeRequest(ID=lease_id), ai))
            log.info("lease %x expired and was revoked", lease_id)
        except EtcdError as e:
            log.info("revoking expired lease %x failed (%s); will retry", lease_id, e)
            self.revoking.discard(lease_id)

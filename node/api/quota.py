"""etcd's space quota and NOSPACE alarm, plus the same alarm for a full disk.

Before proposing a request that costs space (put, txn with puts, lease grant), a member
checks its own db size against --quota-backend-bytes; over it, the member proposes Alarm
ACTIVATE NOSPACE for itself and fails the request with etcd's error, as etcd's quota KV
server does. While any NOSPACE alarm is active such requests are refused here and, for
determinism, also at apply (node/kv/apply.py). A full disk (ENOSPC from the WAL) raises the
same alarm: the request that hit it cannot be acknowledged and the next ones are refused
until the alarm is disarmed and the node has room for its reserve again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from node.api.pb import rpc_pb2
from node.kv import KVError
from node.kv.apply import OP_ALARM, KVStateMachine, encode
from node.kv.quota import ERR_NO_SPACE, cost, effective_quota
from node.server.raftnode import NodeError, RaftNode

log = logging.getLogger("quorumlab.quota")

RETRY_S = 0.5


class SpaceGuard:
    def __init__(self, node: RaftNode, sm: KVStateMachine, quota_flag: int = 0) -> None:
        self.node = node
        self.sm = sm
        self.quota = effective_quota(quota_flag)  # -1: no quota
        self._raising: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        node.on_disk_full.append(self._disk_full)
        sm.on_alarm.append(self._alarm_applied)

    def check(self, req: Any) -> None:
        """Raise etcd's NOSPACE error if req costs space and there is none (see module doc)."""
        c = cost(req)
        if c == 0:
            return
        if self.node.disk_full:
            self.raise_alarm()
            raise KVError(ERR_NO_SPACE, "RESOURCE_EXHAUSTED")
        if self.sm.nospace():
            raise KVError(ERR_NO_SPACE, "RESOURCE_EXHAUSTED")
        if self.quota >= 0 and self.sm.db_size() + c >= self.quota:
            log.warning(
                "%s: request exceeds the backend quota (%d + %d >= %d bytes); raising NOSPACE",
                self.node.cfg.name,
                self.sm.db_size(),
                c,
                self.quota,
            )
            self.raise_alarm()
            raise KVError(ERR_NO_SPACE, "RESOURCE_EXHAUSTED")

    def active(self) -> bool:
        return (self.node.member_id, int(rpc_pb2.NOSPACE)) in self.sm.alarms

    def raise_alarm(self) -> None:
        """Propose Alarm ACTIVATE NOSPACE for this member in the background, retrying until it is
        applied or the node stops; never waits on the caller's path."""
        if self.active() or (self._raising is not None and not self._raising.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to do
            self._raising = asyncio.get_running_loop().create_task(self._raise(), name="nospace-alarm")

    async def _raise(self) -> None:
        req = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.node.member_id, alarm=rpc_pb2.NOSPACE
        )
        while not self.node.stopped.is_set() and not self.active():
            try:
                await self.node.propose(encode(OP_ALARM, req), timeout=5.0)
            except (NodeError, KVError) as e:
                log.info("%s: raising the NOSPACE alarm failed (%s); retrying", self.node.cfg.name, e)
                await asyncio.sleep(RETRY_S)
        if self.active():
            log.warning("%s: alarm NOSPACE raised for member %x", self.node.cfg.name, self.node.member_id)

    def _disk_full(self) -> None:
        log.error(
            "%s: disk full: raising the NOSPACE alarm; writes are refused until it is disarmed", self.node.cfg.name
        )
        self.raise_alarm()

    def _alarm_applied(self, r: rpc_pb2.AlarmRequest) -> None:
        # called inside apply: only schedule work here
        if r.action != rpc_pb2.AlarmRequest.DEACTIVATE or not self.node.disk_full:
            return
        if r.alarm not in (rpc_pb2.NOSPACE, rpc_pb2.NONE) or self.active():
            return
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(self._after_disarm())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after_disarm(self) -> None:
        if not self.node.disk_full or self.active():
            return
        if await self.node.try_clear_disk_full():
            log.info("%s: NOSPACE disarmed and the disk has room again: accepting writes", self.node.cfg.name)
        else:
            log.warning("%s: NOSPACE disarmed but the disk is still full: raising it again", self.node.cfg.name)
            self.raise_alarm()

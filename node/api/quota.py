"""etcd's space quota and NOSPACE alarm, plus the same alarm for a full disk.

Before proposing a request that costs space (put, txn with puts, lease grant), a member
checks its own db size against --quota-backend-bytes; over it, the member proposes Alarm
ACTIVATE NOSPACE for itself, waits for it to be applied (one shared proposal, at most the
request timeout) and then fails the request with etcd's error, as etcd's quotaAlarmer does.
While any NOSPACE alarm is active such requests are refused here and, for determinism, also
at apply (node/kv/apply.py). A full disk (ENOSPC from the WAL or a snapshot) raises the same
alarm: the request that hit it cannot be acknowledged and the next ones are refused until the
alarm is disarmed and the disk really has room again (see RaftNode.try_clear_disk_full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from node.errors import EtcdError, Reason
from node.kv.apply import OP_ALARM, KVStateMachine, encode
from node.kv.quota import cost, effective_quota
from node.pb import rpc_pb2
from node.server.raftnode import RaftNode

log = logging.getLogger("quorumlab.quota")

RETRY_S = 0.5


class SpaceGuard:
    def __init__(self, node: RaftNode, sm: KVStateMachine, quota_flag: int = 0) -> None:
        self.node = node
        self.sm = sm
        self.quota = effective_quota(quota_flag)  # -1: no quota
        self._proposing: asyncio.Task[None] | None = None  # the one in-flight ACTIVATE proposal
        self._retrying: asyncio.Task[None] | None = None  # the disk-full hook's retry loop
        self._tasks: set[asyncio.Task[None]] = set()
        node.on_disk_full.append(self._disk_full)
        sm.on_alarm.append(self._alarm_applied)

    async def admit(self, req: Any) -> None:
        """Raise etcd's NOSPACE error if req costs space and there is none (see module doc).

        As etcd's quotaAlarmer, the error is returned only after the member's Alarm ACTIVATE
        went through Raft (or the request timeout passed): a client that is told "database
        space exceeded" and then runs `alarm list` sees the alarm."""
        why = self._refusal(req)
        if why is None:
            return
        if why:
            await self.raise_alarm_and_wait()
        raise EtcdError(Reason.NO_SPACE)

    def _refusal(self, req: Any) -> bool | None:
        """None: admit req; False: refuse, an alarm is already active; True: refuse and raise ours."""
        c = cost(req)
        if c == 0:
            return None
        if self.node.disk_full:
            return not self.active()
        if self.sm.nospace():
            return False
        if self.quota >= 0 and self.sm.db_size() + c >= self.quota:
            if not self.active():
                log.warning(
                    "%s: request exceeds the backend quota (%d + %d >= %d bytes); raising NOSPACE",
                    self.node.cfg.name,
                    self.sm.db_size(),
                    c,
                    self.quota,
                )
            return not self.active()
        return None

    def active(self) -> bool:
        return (self.node.member_id, int(rpc_pb2.NOSPACE)) in self.sm.alarms

    def _start_raise(self) -> asyncio.Task[None] | None:
        """The shared in-flight ACTIVATE proposal, started if there is none; None once active
        (or outside a running loop). Concurrent refusals all wait on this one proposal."""
        if self.active():
            return None
        if self._proposing is None or self._proposing.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._proposing = loop.create_task(self._propose_once(), name="nospace-alarm")
            self._proposing.add_done_callback(_retrieve)
        return self._proposing

    async def raise_alarm_and_wait(self) -> None:
        """Wait (at most the request timeout) for this member's NOSPACE alarm to be applied here.
        A failure is logged, not raised: the caller refuses its request either way, as etcd."""
        task = self._start_raise()
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.node.cfg.request_timeout)
        except TimeoutError:
            log.warning("%s: the NOSPACE alarm was not applied within the request timeout", self.node.cfg.name)
        except Exception as e:  # noqa: BLE001 - logged by _propose_once too; refuse anyway
            log.info("%s: raising the NOSPACE alarm failed: %s", self.node.cfg.name, e)

    async def _propose_once(self) -> None:
        req = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.node.member_id, alarm=rpc_pb2.NOSPACE
        )
        await self.node.propose(encode(OP_ALARM, req), timeout=self.node.cfg.request_timeout)
        if self.active():
            log.warning("%s: alarm NOSPACE raised for member %x", self.node.cfg.name, self.node.member_id)

    def raise_alarm(self) -> None:
        """Raise NOSPACE in the background, retrying until it is applied or the node stops (the
        disk-full hook: nobody waits there, and a full disk must not stay unannounced)."""
        if self.active() or (self._retrying is not None and not self._retrying.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to do
            self._retrying = asyncio.get_running_loop().create_task(self._raise(), name="nospace-alarm-retry")

    async def _raise(self) -> None:
        while not self.node.stopped.is_set() and not self.active():
            task = self._start_raise()
            if task is None:
                break
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure is retried; the task must not die silently
                log.info("%s: raising the NOSPACE alarm failed (%s); retrying", self.node.cfg.name, e)
                await asyncio.sleep(RETRY_S)

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
        # try_clear_disk_full is serialized in the node: a second disarm waits for the first
        if not self.node.disk_full or self.active():
            return
        try:
            cleared = await self.node.try_clear_disk_full()
        except Exception:
            log.exception("%s: checking the disk after the NOSPACE disarm failed", self.node.cfg.name)
            cleared = False
        if cleared:
            log.info("%s: NOSPACE disarmed and the disk has room again: accepting writes", self.node.cfg.name)
        elif self.node.disk_full:
            log.warning("%s: NOSPACE disarmed but the disk is still full: raising it again", self.node.cfg.name)
            self.raise_alarm()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Every waiter may have timed out: read the outcome so a failure is not reported as lost."""
    if not task.cancelled():
        task.exception()

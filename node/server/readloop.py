"""Linearizable reads in rounds: one ReadIndex serves every read that arrived before it was sent.

etcd's linearizableReadLoop does the same. A ReadIndex per read costs a heartbeat to every
follower and an answer from each (and, on a follower, a forwarded request to the leader): at
3,000 reads/s that was most of the Raft traffic. Here at most one round is in flight; reads
that arrive meanwhile wait for the next round, never the current one: the current round's
read index may predate a write such a reader already saw acknowledged (that would be a stale
read). A round's request is resent every `retry_s`, and at once when the leader changes, because a
request forwarded to the leader can be lost (the answer to any copy is valid: all were sent after
every reader of the round arrived). Each copy has a context of its own: on the leader, a late
heartbeat answer for an earlier copy would otherwise confirm a later copy, and with it every read
queued before that copy, without any answer sent after those reads (etcd-io/etcd#20418).

The Raft loop resolves rounds directly (`resolve`, `fail`), without a future of its own in
between: each extra future is one more event-loop turn on every read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from node.errors import EtcdError, Reason


class ReadRounds:
    def __init__(self, send: Callable[[bytes], None], retry_s: float, timeout_s: Callable[[], float]) -> None:
        """send(ctx): post a ReadIndex with this context to the Raft loop; the loop answers with
        resolve(ctx, index), or fail(ctx, reason) when Raft drops it."""
        self._send = send
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._next: list[asyncio.Future[int]] = []  # readers waiting for the next round
        self._ctx: bytes | None = None  # the round in flight (its first context) ...
        self._ctxs: set[bytes] = set()  # ... every context it was sent with ...
        self._readers: list[asyncio.Future[int]] = []  # ... and its readers
        self._timers: tuple[asyncio.TimerHandle, ...] = ()
        self.rounds = 0  # rounds sent (status and tests)
        self.closed: Reason | None = None

    def join(self) -> asyncio.Future[int]:
        """A future for the read index of the next round that starts after this call."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.closed is not None:
            fut.set_exception(EtcdError(self.closed))
            return fut
        self._next.append(fut)
        if self._ctx is None:
            self._start()
        return fut

    def resolve(self, ctx: bytes, index: int) -> None:
        """Raft confirmed the round with this context at `index` (a ReadState)."""
        if ctx in self._ctxs:
            self._end(index, None)

    def fail(self, ctx: bytes, why: Reason) -> None:
        if ctx in self._ctxs:
            self._end(0, why)

    def leader_changed(self) -> None:
        """A new leader: the old one dropped the round when it stepped down, so send it again now."""
        if self._ctx is not None:
            self._resend(self._ctx)

    def fail_current(self, why: Reason) -> None:
        """The leader is gone: the round in flight cannot be answered any more."""
        if self._ctx is not None:
            self._end(0, why)

    def close(self, why: Reason) -> None:
        """The node stops: every reader fails now, and later ones at once."""
        self.closed = why
        waiting, self._next = self._next, []
        self.fail_current(why)
        for f in waiting:
            if not f.done():
                f.set_exception(EtcdError(why))

    def _start(self) -> None:
        readers = [f for f in self._next if not f.done()]  # a reader that gave up is not waited for
        self._next = []
        if not readers:
            return
        loop = asyncio.get_running_loop()
        ctx = os.urandom(8)
        self._ctx, self._ctxs, self._readers = ctx, {ctx}, readers
        self.rounds += 1
        self._timers = (
            loop.call_later(self._retry_s, self._resend, ctx),
            loop.call_later(self._timeout_s(), self.fail, ctx, Reason.TIMEOUT),
        )
        self._send(ctx)

    def _resend(self, ctx: bytes) -> None:
        if self._ctx != ctx:
            return
        copy = os.urandom(8)  # never the same context twice (see the module's docstring)
        self._ctxs.add(copy)
        self._send(copy)
        self._timers[0].cancel()
        retry = asyncio.get_running_loop().call_later(self._retry_s, self._resend, ctx)
        self._timers = (retry, *self._timers[1:])

    def _end(self, index: int, why: Reason | None) -> None:
        for t in self._timers:
            t.cancel()
        readers, self._readers, self._ctx, self._ctxs, self._timers = self._readers, [], None, set(), ()
        for r in readers:
            if r.done():
                continue
            if why is None:
                r.set_result(index)
            else:
                r.set_exception(EtcdError(why))
        if self._next and self.closed is None:
            self._start()

"""Requests waiting for the Raft loop: etcd's pkg/wait (by request id) and wait.WaitTime (by index).

A client coroutine registers a future and posts its proposal or ReadIndex to the loop; the
loop resolves the future when the entry is applied (or the read state arrives). Only the
loop resolves, and a waiter that gives up (timeout) just forgets its key, so an entry
applied after the timeout finds nobody waiting and changes nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Wait(Generic[K, T]):
    """Futures keyed by request id."""

    def __init__(self) -> None:
        self._futs: dict[K, asyncio.Future[T]] = {}

    def register(self, key: K, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[T]:
        """loop: the caller's running loop if it has it at hand (get_running_loop() is a getpid() syscall)."""
        fut: asyncio.Future[T] = (loop or asyncio.get_running_loop()).create_future()
        self._futs[key] = fut
        return fut

    def __len__(self) -> int:
        return len(self._futs)

    def forget(self, key: K) -> None:
        """The waiter gave up: a later trigger for this key is ignored."""
        self._futs.pop(key, None)

    def trigger(self, key: K, result: T) -> None:
        fut = self._futs.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def fail(self, key: K, exc: BaseException) -> None:
        fut = self._futs.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def fail_all(self, exc: Callable[[], BaseException]) -> None:
        """Every waiter gets a fresh exception (the node stops, or the leader is gone)."""
        futs, self._futs = list(self._futs.values()), {}
        for fut in futs:
            if not fut.done():
                fut.set_exception(exc())


class WaitApplied:
    """Futures resolved once the applied index reaches theirs."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()  # ties: a future is never compared

    def register(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (index, next(self._seq), fut))
        return fut

    def trigger(self, applied: int) -> None:
        h = self._heap
        while h and h[0][0] <= applied:
            _, _, fut = heapq.heappop(h)
            if not fut.done():
                fut.set_result(None)

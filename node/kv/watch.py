"""Watchers over the MVCC store: replay from history, then live events, strictly in revision order.

Catch-up and registration happen in one synchronous step on the event loop,
so no revision can slip between the replay and the live feed. Each watch
stream has a bounded outbox; a watcher whose client cannot keep up is
cancelled with a reason instead of stalling the apply loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from .mvcc import DELETE, PUT, Event, MVCCStore, in_range

NOPUT, NODELETE = 0, 1
OUTBOX_LIMIT = 4096
REASON_SLOW = "etcdserver: watcher is too slow to keep up"


@dataclass(eq=False)  # identity semantics: watchers live in sets
class Watcher:
    id: int
    key: bytes
    range_end: bytes
    prev_kv: bool
    filters: frozenset[int]
    progress_notify: bool
    next_rev: int  # the first revision this watcher has not seen yet
    stream: WatchStream

    def wants(self, e: Event) -> bool:
        if e.type == PUT and NOPUT in self.filters:
            return False
        if e.type == DELETE and NODELETE in self.filters:
            return False
        return in_range(e.kv.key, self.key, self.range_end)


@dataclass
class Batch:
    """What one WatchResponse carries; the API layer turns it into protobuf."""

    watch_id: int
    revision: int
    events: list[Event]
    prev_kv: bool = False
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


class WatchStream:
    def __init__(self, hub: WatchHub, send: Callable[[Batch], bool]) -> None:
        self.hub = hub
        self._send = send  # returns False when the outbox is full
        self.watchers: dict[int, Watcher] = {}
        self._ids = itertools.count(0)

    def send(self, b: Batch) -> bool:
        return self._send(b)

    def create(
        self,
        key: bytes,
        range_end: bytes,
        start_rev: int,
        prev_kv: bool = False,
        filters: frozenset[int] = frozenset(),
        progress_notify: bool = False,
        watch_id: int = -1,
    ) -> Watcher | None:
        store = self.hub.store
        if watch_id <= 0:
            wid = next(self._ids)
            while wid in self.watchers:
                wid = next(self._ids)
        else:
            wid = watch_id
            if wid in self.watchers:
                self.send(
                    Batch(
                        wid,
                        store.revision,
                        [],
                        created=True,
                        canceled=True,
                        cancel_reason="etcdserver: duplicate watch ID provided on the WatchStream",
                    )
                )
                return None
        cur = store.revision
        start = start_rev if start_rev > 0 else cur + 1
        w = Watcher(wid, key, range_end, prev_kv, filters, progress_notify, start, self)
        self.send(Batch(wid, cur, [], created=True))
        if start_rev > 0 and start_rev < store.compact_revision:
            self.send(
                Batch(
                    wid,
                    cur,
                    [],
                    canceled=True,
                    compact_revision=store.compact_revision,
                    cancel_reason="etcdserver: mvcc: required revision has been compacted",
                )
            )
            return None
        self.watchers[wid] = w
        if start <= cur:
            for rev, evs in store.events_since(start):
                mine = [e for e in evs if w.wants(e)]
                if mine and not self.send(Batch(wid, rev, mine, prev_kv=prev_kv)):
                    self._drop_slow(w)
                    return None
            w.next_rev = cur + 1
        self.hub.watchers.add(w)
        return w

    def cancel(self, wid: int, reason: str = "") -> bool:
        w = self.watchers.pop(wid, None)
        if w is None:
            return False
        self.hub.watchers.discard(w)
        self.send(Batch(wid, self.hub.store.revision, [], canceled=True, cancel_reason=reason))
        return True

    def _drop_slow(self, w: Watcher) -> None:
        self.watchers.pop(w.id, None)
        self.hub.watchers.discard(w)
        # the outbox is full: this cancel notice is the one message allowed past the limit
        self._send(Batch(w.id, self.hub.store.revision, [], canceled=True, cancel_reason=REASON_SLOW))

    def close(self) -> None:
        for w in self.watchers.values():
            self.hub.watchers.discard(w)
        self.watchers.clear()


class WatchHub:
    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.watchers: set[Watcher] = set()
        store.listeners.append(self._on_commit)

    def _on_commit(self, rev: int, events: list[Event]) -> None:
        for w in list(self.watchers):
            if w.next_rev > rev:
                continue
            mine = [e for e in events if w.wants(e)]
            w.next_rev = rev + 1
            if mine and not w.stream.send(Batch(w.id, rev, mine, prev_kv=w.prev_kv)):
                w.stream._drop_slow(w)

    def progress(self) -> int:
        return self.store.revision

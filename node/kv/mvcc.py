"""etcd's multi-version key-value semantics, in memory, rebuilt from snapshot + log.

Every write transaction that changes something gets the next main revision;
each key keeps its versions (mod revision, create revision, version, value,
lease) until compaction, so reads at a past revision and watches from a past
revision are served from here. Deletions are tombstones until compacted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sortedcontainers import SortedDict

ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"


class KVError(Exception):
    """A request that fails as a whole (nothing applied); code is the gRPC status name."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True, frozen=True)
class KV:
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int


@dataclass(slots=True, frozen=True)
class Event:
    type: int  # 0 PUT, 1 DELETE
    kv: KV  # for DELETE: key and mod_revision only, as etcd sends
    prev_kv: KV | None


PUT, DELETE = 0, 1


class _Versions:
    """One key's history: parallel lists sorted by mod revision; value None is a tombstone."""

    __slots__ = ("mods", "vals")

    def __init__(self) -> None:
        self.mods: list[int] = []
        self.vals: list[KV | None] = []

    def at(self, rev: int) -> KV | None:
        i = bisect.bisect_right(self.mods, rev) - 1
        return self.vals[i] if i >= 0 else None

    def latest(self) -> KV | None:
        return self.vals[-1] if self.vals else None


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's interval rules: empty end = single key, end b'\\0' = every key >= start."""
    if not end:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


class MVCCStore:
    def __init__(self) -> None:
        self.revision = 1  # etcd starts at revision 1 with an empty store
        self.compact_revision = 0
        self.keys: SortedDict = SortedDict()  # bytes -> _Versions
        self.history: list[tuple[int, list[Event]]] = []  # (revision, events) since compaction
        self.listeners: list[Callable[[int, list[Event]], None]] = []

    # -- reads ---------------------------------------------------------------------
    def check_rev(self, rev: int) -> int:
        if rev <= 0:
            return self.revision
        if rev > self.revision:
            raise KVError(ERR_FUTURE_REV, "OUT_OF_RANGE")
        if rev < self.compact_revision:
            raise KVError(ERR_COMPACTED, "OUT_OF_RANGE")
        return rev

    def _iter_keys(self, start: bytes, end: bytes) -> Iterator[bytes]:
        if not end:
            if start in self.keys:
                yield start
            return
        if end == b"\x00":
            yield from self.keys.irange(minimum=start)
            return
        yield from self.keys.irange(minimum=start, maximum=end, inclusive=(True, False))

    def range(self, start: bytes, end: bytes, rev: int = 0) -> list[KV]:
        """Live key-values in [start, end) at revision rev (0 = current), sorted by key."""
        rev = self.check_rev(rev)
        out = []
        for k in self._iter_keys(start, end):
            kv = self.keys[k].at(rev)
            if kv is not None:
                out.append(kv)
        return out

    def get(self, key: bytes) -> KV | None:
        v = self.keys.get(key)
        return v.latest() if v is not None else None

    # -- writes ----------------------------------------------------------------------
    def begin(self) -> WriteTxn:
        return WriteTxn(self)

    def _commit(self, rev: int, events: list[Event]) -> None:
        self.revision = rev
        self.history.append((rev, events))
        for cb in list(self.listeners):
            cb(rev, events)

    def events_since(self, rev: int) -> list[tuple[int, list[Event]]]:
        i = bisect.bisect_left(self.history, rev, key=lambda x: x[0])
        return self.history[i:]

    def compact(self, rev: int) -> None:
        if rev <= self.compact_revision:
            raise KVError(ERR_COMPACTED, "OUT_OF_RANGE")
        if rev > self.revision:
            raise KVError(ERR_FUTURE_REV, "OUT_OF_RANGE")
        for k in list(self.keys):
            v = self.keys[k]
            i = bisect.bisect_right(v.mods, rev) - 1  # latest version at or before rev
            if i < 0:
                continue
            keep_from = i if v.vals[i] is not None else i + 1
            if keep_from > 0:
                del v.mods[:keep_from]
                del v.vals[:keep_from]
            if not v.mods:
                del self.keys[k]
        self.compact_revision = rev
        # like etcd: the revision compacted at keeps its live versions (so a watch from it still
        # sees those puts) but loses its tombstones
        j = bisect.bisect_left(self.history, rev, key=lambda x: x[0])
        del self.history[:j]
        if self.history and self.history[0][0] == rev:
            puts = [e for e in self.history[0][1] if e.type == PUT]
            if puts:
                self.history[0] = (rev, puts)
            else:
                del self.history[0]

    # -- snapshot --------------------------------------------------------------------
    def dump(self) -> list[object]:
        keys = []
        for k, v in self.keys.items():
            keys.append(
                [
                    k,
                    v.mods,
                    [None if kv is None else [kv.create_revision, kv.version, kv.value, kv.lease] for kv in v.vals],
                ]
            )
        hist = [[rev, [[e.type, _kv_wire(e.kv), _kv_wire(e.prev_kv)] for e in evs]] for rev, evs in self.history]
        return [self.revision, self.compact_revision, keys, hist]

    def load(self, blob: list[object]) -> None:
        rev, crev, keys, hist = blob
        assert isinstance(rev, int) and isinstance(crev, int)
        assert isinstance(keys, list) and isinstance(hist, list)
        self.revision, self.compact_revision = rev, crev
        self.keys = SortedDict()
        for k, mods, vals in keys:
            v = _Versions()
            v.mods = list(mods)
            v.vals = [None if x is None else KV(k, x[0], m, x[1], x[2], x[3]) for m, x in zip(mods, vals, strict=True)]
            self.keys[k] = v
        self.history = [
            (r, [Event(t, _kv_unwire(kv), _kv_unwire(p) if p else None) for t, kv, p in evs]) for r, evs in hist
        ]


def _kv_wire(kv: KV | None) -> list[object] | None:
    if kv is None:
        return None
    return [kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease]


def _kv_unwire(v: list[object]) -> KV:
    key, c, m, ver, val, lease = v
    return KV(bytes(key), int(c), int(m), int(ver), bytes(val), int(lease))  # type: ignore[call-overload, arg-type]


class WriteTxn:
    """All writes of one applied request share one new revision; reads see earlier writes."""

    def __init__(self, store: MVCCStore) -> None:
        self.s = store
        self.rev = store.revision + 1
        self.events: list[Event] = []
        self.changed: dict[bytes, KV | None] = {}

    def get(self, key: bytes) -> KV | None:
        if key in self.changed:
            return self.changed[key]
        return self.s.get(key)

    def range(self, start: bytes, end: bytes, rev: int = 0) -> list[KV]:
        if rev > 0 and rev <= self.s.revision:
            return self.s.range(start, end, rev)
        base = {kv.key: kv for kv in self.s.range(start, end)}
        for k, kv in self.changed.items():
            if in_range(k, start, end):
                if kv is None:
                    base.pop(k, None)
                else:
                    base[k] = kv
        return [base[k] for k in sorted(base)]

    def put(self, key: bytes, value: bytes, lease: int) -> tuple[KV, KV | None]:
        prev = self.get(key)
        if prev is not None:
            kv = KV(key, prev.create_revision, self.rev, prev.version + 1, value, lease)
        else:
            kv = KV(key, self.rev, self.rev, 1, value, lease)
        self.changed[key] = kv
        self.events.append(Event(PUT, kv, prev))
        return kv, prev

    def delete(self, start: bytes, end: bytes) -> list[KV]:
        gone = self.range(start, end)
        for kv in gone:
            self.changed[kv.key] = None
            self.events.append(Event(DELETE, KV(kv.key, 0, self.rev, 0, b"", 0), kv))
        return gone

    def end(self) -> int:
        """Commit: returns the store revision after this transaction."""
        if not self.changed:
            return self.s.revision
        for k, kv in self.changed.items():
            v = self.s.keys.get(k)
            if v is None:
                v = _Versions()
                self.s.keys[k] = v
            if v.mods and v.mods[-1] == self.rev:
                v.vals[-1] = kv
            else:
                v.mods.append(self.rev)
                v.vals.append(kv)
        self.s._commit(self.rev, self.events)
        return self.rev

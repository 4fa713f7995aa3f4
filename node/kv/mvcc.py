"""etcd's multi-version key-value semantics, in memory, rebuilt from snapshot + log.

Every write transaction that changes something gets the next main revision;
each key keeps its versions (mod revision, create revision, version, value,
lease) until compaction, so reads at a past revision and watches from a past
revision are served from here. Deletions are tombstones until compacted.

Compaction is logical first (the compact revision moves at apply, so every
member refuses the same reads) and physical later, in small steps off the
apply path (`trim_step`), never below a revision that a walk in progress
(a snapshot or a large read, see `pinned`) still needs.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import msgpack
from sortedcontainers import SortedDict

from node.errors import EtcdError, Reason

BASE_SIZE = 4096  # what an empty store "weighs" (bbolt's empty file is a few pages)
VERSION_OVERHEAD = 48  # per stored version: revisions, version, lease
WALK_KEYS = 128  # keys visited between clock checks in chunked walks


class StoreReplaced(RuntimeError):
    """A snapshot was restored while a walk was running: the state it was walking is gone."""


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


def version_size(key: bytes, kv: KV | None) -> int:
    """The bytes one stored version counts for in db_size (an estimate of bbolt's cost)."""
    return len(key) + VERSION_OVERHEAD + (len(kv.value) if kv is not None else 0)


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

    def keep_from(self, crev: int) -> int:
        """Index of the first version that compaction at crev keeps: the latest one at or before
        crev if it is live, and everything after it."""
        i = bisect.bisect_right(self.mods, crev) - 1
        if i < 0:
            return 0
        return i if self.vals[i] is not None else i + 1


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
        self.size = BASE_SIZE  # db_size, kept up to date on every change (reading it is O(1))
        self.generation = 0  # bumped when a snapshot replaces the whole state
        self.trimmed = 0  # physical compaction is done up to this revision
        self._pins: dict[int, int] = {}  # revision -> walks in progress that need versions at it
        self._trim_job = 0  # revision the physical compaction in progress trims to (0: none)
        self._trim_cursor: bytes | None = None

    # -- reads ---------------------------------------------------------------------
    def check_rev(self, rev: int) -> int:
        if rev <= 0:
            return self.revision
        if rev > self.revision:
            raise EtcdError(Reason.FUTURE_REV)
        if rev < self.compact_revision:
            raise EtcdError(Reason.COMPACTED)
        return rev

    def _iter_keys(self, start: bytes, end: bytes, after: bytes | None = None) -> Iterator[bytes]:
        if not end:
            if start in self.keys and after is None:
                yield start
            return
        lo, inc = (start, True) if after is None or after < start else (after, False)
        if end == b"\x00":
            yield from self.keys.irange(minimum=lo, inclusive=(inc, False))
            return
        yield from self.keys.irange(minimum=lo, maximum=end, inclusive=(inc, False))

    def range(self, start: bytes, end: bytes, rev: int = 0) -> list[KV]:
        """Live key-values in [start, end) at revision rev (0 = current), sorted by key."""
        rev = self.check_rev(rev)
        out = []
        for k in self._iter_keys(start, end):
            kv = self.keys[k].at(rev)
            if kv is not None:
                out.append(kv)
        return out

    def range_chunk(
        self, start: bytes, end: bytes, rev: int, after: bytes | None, n: int
    ) -> tuple[list[KV], bytes | None]:
        """Up to n keys of [start, end) after key `after`, read at rev; returns them and the key to
        continue after (None when there are no more). Re-enters the sorted keys each call, so writes between
        calls are harmless; the caller pins rev so physical compaction keeps what it reads."""
        out = []
        last = None
        seen = 0
        for k in islice(self._iter_keys(start, end, after), n):
            last, seen = k, seen + 1
            kv = self.keys[k].at(rev)
            if kv is not None:
                out.append(kv)
        return out, (last if seen == n else None)

    def get(self, key: bytes) -> KV | None:
        v = self.keys.get(key)
        return v.latest() if v is not None else None

    @contextlib.contextmanager
    def pinned(self, rev: int) -> Iterator[None]:
        """Keep every version needed to read at rev (or compacted at rev) while the block runs."""
        self._pins[rev] = self._pins.get(rev, 0) + 1
        try:
            yield
        finally:
            n = self._pins[rev] - 1
            if n:
                self._pins[rev] = n
            else:
                del self._pins[rev]

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
        out = self.history[i:]
        c = self.compact_revision
        if out and out[0][0] == c and any(e.type == DELETE for e in out[0][1]):
            # compacted at c but not trimmed yet: the revision compacted at keeps its puts only
            puts = [e for e in out[0][1] if e.type == PUT]
            out = ([(c, puts)] if puts else []) + out[1:]
        return out

    def compact(self, rev: int) -> None:
        """Logical compaction (at apply, deterministic): reads below rev are refused from now on.
        The versions are dropped later by trim_step."""
        if rev <= self.compact_revision:
            raise EtcdError(Reason.COMPACTED)
        if rev > self.revision:
            raise EtcdError(Reason.FUTURE_REV)
        self.compact_revision = rev

    def trim_pending(self) -> bool:
        return self.trimmed < self.compact_revision

    def trimming(self) -> bool:
        """A physical compaction job is under way (False while waiting for walks to finish)."""
        return self._trim_job != 0

    def trim_step(self, budget_s: float) -> bool:
        """Physical compaction, for about budget_s seconds; True while work remains.

        A job trims to a fixed revision: the compact revision, but never above a pinned revision
        (a walk in progress). New pins are always at or above the compact revision, so a job once
        started never removes anything a walk needs."""
        if self._trim_job == 0:
            target = self.compact_revision
            if self._pins:
                target = min(target, min(self._pins))
            if target <= self.trimmed:
                return self.trim_pending()  # waiting for a walk to finish
            self._trim_job, self._trim_cursor = target, None
            self._trim_history(target)
        deadline = time.perf_counter() + budget_s
        target = self._trim_job
        while True:
            chunk = list(islice(self.keys.irange(minimum=self._trim_cursor, inclusive=(False, True)), WALK_KEYS))
            for k in chunk:
                v = self.keys[k]
                j = v.keep_from(target)
                if j:
                    self.size -= sum(version_size(k, kv) for kv in v.vals[:j])
                    del v.mods[:j]
                    del v.vals[:j]
                    if not v.mods:
                        del self.keys[k]
            if len(chunk) < WALK_KEYS:
                self.trimmed, self._trim_job, self._trim_cursor = target, 0, None
                return self.trim_pending()
            self._trim_cursor = chunk[-1]
            if time.perf_counter() >= deadline:
                return True

    def _trim_history(self, rev: int) -> None:
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

    def trim_all(self) -> None:
        """Physical compaction in one go (no event loop: tests, tools)."""
        while self.trim_step(float("inf")):
            if self._trim_job == 0 and self._pins and min(self._pins) <= self.trimmed:
                return  # pinned by a walk: nothing more can go now

    # -- snapshot --------------------------------------------------------------------
    def walk(self) -> StoreWalk:
        """Start collecting the compacted state as of now; see StoreWalk."""
        return StoreWalk(self)

    def load(self, blob: object) -> None:
        """Replace the whole state from StoreWalk.parts()' format (a map) or the older list format."""
        self.generation += 1
        self.keys = SortedDict()
        self._trim_job, self._trim_cursor = 0, None
        if isinstance(blob, dict):
            self._load_v2(blob)
        else:
            self._load_v1(blob)
        self.trimmed = self.compact_revision
        self.size = BASE_SIZE + sum(version_size(k, kv) for k, v in self.keys.items() for kv in v.vals)

    def _load_v1(self, blob: object) -> None:
        assert isinstance(blob, list)
        rev, crev, keys, hist = blob
        assert isinstance(rev, int) and isinstance(crev, int)
        assert isinstance(keys, list) and isinstance(hist, list)
        self.revision, self.compact_revision = rev, crev
        for k, mods, vals in keys:
            v = _Versions()
            v.mods = list(mods)
            v.vals = [None if x is None else KV(k, x[0], m, x[1], x[2], x[3]) for m, x in zip(mods, vals, strict=True)]
            self.keys[k] = v
        self.history = [
            (r, [Event(t, _kv_unwire(kv), _kv_unwire(p) if p else None) for t, kv, p in evs]) for r, evs in hist
        ]

    def _load_v2(self, blob: dict[str, object]) -> None:
        rev, crev, keys, order = blob["rev"], blob["crev"], blob["keys"], blob["order"]
        assert isinstance(rev, int) and isinstance(crev, int)
        assert isinstance(keys, list) and isinstance(order, list)
        self.revision, self.compact_revision = rev, crev
        by_rev: dict[int, list[Event]] = {}
        for k, mods, vals in keys:
            v = _Versions()
            v.mods = list(mods)
            v.vals = [None if x is None else KV(k, x[0], m, x[1], x[2], x[3]) for m, x in zip(mods, vals, strict=True)]
            self.keys[k] = v
            # the watch history is not stored: every version at or after crev is one event
            prev: KV | None = None
            for m, kv in zip(v.mods, v.vals, strict=True):
                if m >= crev:
                    ev = Event(PUT, kv, prev) if kv is not None else Event(DELETE, KV(k, 0, m, 0, b"", 0), prev)
                    by_rev.setdefault(m, []).append(ev)
                prev = kv
        for r, ks in order:  # revisions with several events: the order the request wrote them in
            evs = by_rev.get(r)
            if evs is not None:
                pos = {key: i for i, key in enumerate(ks)}
                evs.sort(key=lambda e: pos.get(e.kv.key, len(pos)))
        self.history = sorted(by_rev.items())


class StoreWalk:
    """The store's compacted state as of the moment the walk starts, collected in chunks.

    Writes may be applied between steps: each step re-enters the sorted keys after the last key
    it packed, keeps only versions at or before the starting revision, and the walk pins the
    starting compact revision so physical compaction cannot drop a version it has yet to reach.
    Every chunk is packed as it is read, so the result is plain bytes (nothing shared with the
    live store).
    """

    def __init__(self, store: MVCCStore) -> None:
        self.s = store
        self.rev = store.revision
        self.crev = store.compact_revision
        self.gen = store.generation
        self._pin = store.pinned(self.crev)
        self._pin.__enter__()
        self._packer = msgpack.Packer()
        self._pieces: list[bytes] = []
        self._nkeys = 0
        self._cursor: bytes | None = None
        self._keys_done = False
        self._hrev = self.crev - 1  # history revisions up to this one are done
        self._order: list[bytes] = []  # packed (revision, keys) pairs, packed as they are read
        self._closed = False

    def __del__(self) -> None:
        self.close()  # a walk dropped unfinished must not hold compaction back forever

    def close(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            self._pin.__exit__(None, None, None)

    def step(self, budget_s: float) -> bool:
        """Walk for about budget_s seconds; True when the walk is complete."""
        s = self.s
        if s.generation != self.gen:
            raise StoreReplaced("the store was replaced by a snapshot during the walk")
        deadline = time.perf_counter() + budget_s
        pack = self._packer.pack
        while not self._keys_done:
            for n, k in enumerate(s.keys.irange(minimum=self._cursor, inclusive=(False, True)), 1):
                self._cursor = k
                v = s.keys[k]
                lo, hi = v.keep_from(self.crev), bisect.bisect_right(v.mods, self.rev)
                if lo < hi:
                    self._pieces.append(
                        pack(
                            (
                                k,
                                v.mods[lo:hi],
                                [
                                    None if kv is None else (kv.create_revision, kv.version, kv.value, kv.lease)
                                    for kv in v.vals[lo:hi]
                                ],
                            )
                        )
                    )
                    self._nkeys += 1
                if n >= WALK_KEYS:
                    break
            else:
                self._keys_done = True
            if time.perf_counter() >= deadline:
                return False
        hist = s.history
        while self._hrev < self.rev:  # the order of events within a revision (the rest is in the keys)
            i = bisect.bisect_right(hist, self._hrev, key=lambda x: x[0])
            chunk = hist[i : i + WALK_KEYS * 8]
            if not chunk or chunk[0][0] > self.rev:
                self._hrev = self.rev
                break
            for r, evs in chunk:
                if r > self.rev:
                    break
                self._hrev = r
                if len(evs) > 1:  # nearly every revision is one put: nothing to order, nothing to build
                    keys = tuple(e.kv.key for e in evs if r > self.crev or e.type == PUT)
                    if len(keys) > 1:
                        self._order.append(pack((r, keys)))
                if time.perf_counter() >= deadline and r < self.rev:  # a revision may hold many events
                    return False
        self.close()
        return True

    def parts(self) -> list[bytes]:
        """The store's snapshot format, a map {v, rev, crev, keys, order}, as pieces to join (off the loop)."""
        p = self._packer
        head = (
            p.pack_map_header(5)
            + p.pack("v")
            + p.pack(2)
            + p.pack("rev")
            + p.pack(self.rev)
            + p.pack("crev")
            + p.pack(self.crev)
            + p.pack("keys")
            + p.pack_array_header(self._nkeys)
        )
        tail = p.pack("order") + p.pack_array_header(len(self._order))
        return [head, *self._pieces, tail, *self._order]


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
                self.s.size -= version_size(k, v.vals[-1])
                v.vals[-1] = kv
            else:
                v.mods.append(self.rev)
                v.vals.append(kv)
            self.s.size += version_size(k, kv)
        self.s._commit(self.rev, self.events)
        return self.rev

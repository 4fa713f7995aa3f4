"""The search for one register's linearization (Wing & Gong, Lowe's memo), pruned for real histories.

Works on compact rows, not Ops, so a worker process receives little and imports nothing of ours.
Four sound reductions keep the common hard case (one register, many concurrent writers, unique
values) near-linear where the plain search is exponential:

* a read or a failed compare-and-set that holds in the current state is linearized at once:
  it changes nothing, so doing it now never blocks an order that doing it later would allow;
* a write that would overwrite a value still owed to a pending read, when nothing left can write
  that value again, is never tried (a read of v pins v's write before it and the next write after);
* writes of values nobody reads are interchangeable: only the one due first is tried;
* the memo key is a 128-bit Zobrist hash of the linearized set plus the state, and a state that no
  pending operation can tell apart from another (nobody reads or compares it) is one state.

The hash makes a false "seen" possible in principle (odds about n²/2¹²⁸ for n entries).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from dataclasses import dataclass, field

PUT, GET, CAS = 0, 1, 2
# a row: (kind, value, expect, succeeded, ok, invoke, ret); ok False = unknown outcome (info)
Row = tuple[int, str | None, str | None, bool, bool, float, float]
DEAD = ("<a value no pending operation reads>",)  # canonical state: not a str, never equal to a value


@dataclass
class Outcome:
    verdict: str  # valid | invalid | unknown
    explored: int = 0
    culprit: int = -1  # row index of the operation no order could place
    prefix: list[int] = field(default_factory=list)  # the longest linearized order found (row indexes)
    reason: str = ""  # why unknown


class _Frame:
    """One choice point: the reads done greedily on arrival, the writes to try, which one is in place."""

    __slots__ = ("before", "cands", "chosen", "done", "next")

    def __init__(self, done: list[int], cands: list[int], before: str | None) -> None:
        self.done, self.cands, self.before = done, cands, before
        self.next, self.chosen = 0, -1


def make_row(
    kind: str,
    value: str | None,
    expect: str | None,
    succeeded: bool | None,
    ok: bool,
    invoke: float,
    complete: float | None,
) -> Row:
    code = {"put": PUT, "get": GET, "cas": CAS}[kind]
    ret = complete if (ok and complete is not None) else math.inf
    return (code, value, expect, bool(succeeded), ok, invoke, ret)


def _may_write(row: Row) -> bool:
    """A put, or a cas that succeeded or may have (unknown outcome): it may set the register to its value."""
    kind, _v, _e, succeeded, ok, _i, _r = row
    return kind == PUT or (kind == CAS and (succeeded or not ok))


def _precheck(rows: list[Row]) -> int:
    """A read of a value never written, or only written after the read ended: -1 if none."""
    first_write: dict[str | None, float] = {}
    for row in rows:
        if _may_write(row):
            first_write[row[1]] = min(first_write.get(row[1], math.inf), row[5])
    for i, (kind, value, expect, succ, ok, _inv, ret) in enumerate(rows):
        if not ok:
            continue
        seen = value if kind == GET else expect if (kind == CAS and succ) else None
        if (kind == GET or (kind == CAS and succ)) and seen is not None and first_write.get(seen, math.inf) > ret:
            return i
    return _definitely_stale(rows)


def _definitely_stale(rows: list[Row]) -> int:
    """A read of a value written once, when another write began after that one ended and ended before the read.

    The register held the value only until the next write, so no order explains the read: found in
    O(n log n), it names the stale read itself rather than wherever the search would give up."""
    writers: dict[str | None, list[int]] = {}
    certain: list[tuple[float, float]] = []  # (invoke, return) of writes that surely took effect
    for i, (kind, value, _e, succ, ok, inv, ret) in enumerate(rows):
        if kind == PUT or (kind == CAS and (succ or not ok)):
            writers.setdefault(value, []).append(i)
            if ok:
                certain.append((inv, ret))
    certain.sort()
    invs = [c[0] for c in certain]
    soonest = [math.inf] * (len(certain) + 1)  # soonest[j]: earliest return among writes invoked at invs[j] or later
    for j in range(len(certain) - 1, -1, -1):
        soonest[j] = min(soonest[j + 1], certain[j][1])
    for i, (kind, value, expect, succ, ok, inv, _ret) in enumerate(rows):
        if not ok or not (kind == GET or (kind == CAS and succ)):
            continue
        seen = value if kind == GET else expect
        w = writers.get(seen, [])
        if seen is None and not w:
            written_at = -math.inf  # the initial state
        elif len(w) == 1 and rows[w[0]][4]:
            written_at = rows[w[0]][6]
        else:
            continue
        if soonest[bisect.bisect_right(invs, written_at)] < inv:
            return i
    return -1


def search(rows: list[Row], deadline: float, max_memo: int = 1_000_000, prechecks: bool = True) -> Outcome:
    """Is this register history linearizable? Stops at the deadline or when the memo is full.

    `prechecks=False` leaves even the obvious anomalies to the search (for tests and benchmarks)."""
    n = len(rows)
    if n == 0:
        return Outcome("valid")
    bad = _precheck(rows) if prechecks else -1
    if bad >= 0:
        return Outcome("invalid", 0, bad)
    events = sorted([(r[5], 0, i) for i, r in enumerate(rows)] + [(r[6], 1, i) for i, r in enumerate(rows)])
    size = len(events)
    isret = [e[1] for e in events]
    evi = [e[2] for e in events]
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    call_pos, ret_pos = [0] * n, [0] * n
    for pos, (_, r, i) in enumerate(events):
        (ret_pos if r else call_pos)[i] = pos
    head = 0

    def unlink(p: int) -> None:
        nonlocal head
        a, b = prv[p], nxt[p]
        if a >= 0:
            nxt[a] = b
        else:
            head = b
        if b < size:
            prv[b] = a

    def relink(p: int) -> None:
        nonlocal head
        a, b = prv[p], nxt[p]
        if a >= 0:
            nxt[a] = p
        else:
            head = p
        if b < size:
            prv[b] = p

    # per value, over the operations not yet linearized:
    care: dict[str | None, int] = {}  # ... that read or compare it (the state is observable)
    need: dict[str | None, int] = {}  # ... that must see it (ok reads, ok successful cas)
    wleft: dict[str | None, int] = {}  # ... that may still write it
    greedy = [False] * n
    for i, (kind, value, expect, succ, ok, _inv, _ret) in enumerate(rows):
        if kind == GET:
            care[value] = care.get(value, 0) + 1
            need[value] = need.get(value, 0) + 1
            greedy[i] = True
        elif kind == CAS:
            care[expect] = care.get(expect, 0) + 1
            if ok and succ:
                need[expect] = need.get(expect, 0) + 1
            if succ or not ok:
                wleft[value] = wleft.get(value, 0) + 1
            greedy[i] = ok and not succ
        else:
            wleft[value] = wleft.get(value, 0) + 1
    rng = random.Random(0x5A17)
    zob = [rng.getrandbits(128) for _ in range(n)]
    ok_left = sum(1 for r in rows if r[4])

    state: str | None = None
    zh = 0
    order: list[int] = []

    def counts(i: int, d: int) -> None:
        kind, value, expect, succ, ok, _inv, _ret = rows[i]
        if kind == GET:
            care[value] += d
            need[value] += d
        elif kind == CAS:
            care[expect] += d
            if ok and succ:
                need[expect] += d
            if succ or not ok:
                wleft[value] += d
        else:
            wleft[value] += d

    def lin(i: int, new_state: str | None) -> None:
        nonlocal state, zh, ok_left
        unlink(call_pos[i])
        unlink(ret_pos[i])
        counts(i, -1)
        zh ^= zob[i]
        ok_left -= rows[i][4]
        order.append(i)
        state = new_state

    def unlin(i: int, old_state: str | None) -> None:
        nonlocal state, zh, ok_left
        order.pop()
        ok_left += rows[i][4]
        zh ^= zob[i]
        counts(i, 1)
        relink(ret_pos[i])
        relink(call_pos[i])
        state = old_state

    def step(i: int, s: str | None) -> tuple[bool, str | None]:
        kind, value, expect, succ, ok, _inv, _ret = rows[i]
        if kind == PUT:
            return True, value
        if kind == GET:
            return value == s, s
        if not ok:
            return True, (value if s == expect else s)
        if succ:
            return s == expect, value
        return s != expect, s

    def closure() -> list[int]:
        """Linearize every callable read / failed cas that holds now."""
        done: list[int] = []
        p = head
        while p < size and not isret[p]:
            i = evi[p]
            if greedy[i] and step(i, state)[0]:
                lin(i, state)
                done.append(i)
                p = head
            else:
                p = nxt[p]
        return done

    def candidates() -> list[int]:
        out: list[int] = []
        blind, blind_ret = -1, math.inf
        p = head
        s = state
        owed = need.get(s, 0) > 0 and wleft.get(s, 0) == 0
        while p < size and not isret[p]:
            i = evi[p]
            p = nxt[p]
            if greedy[i]:
                continue
            ok, ns = step(i, s)
            if not ok or (ns == s and not rows[i][4]):  # an unknown op that changes nothing: place it last
                continue
            if ns != s and owed:
                kind, _v, expect, succ, _ok, _inv, _ret = rows[i]
                if not (kind == CAS and succ and expect == s and need[s] == 1):
                    continue  # would destroy a value a pending read still needs
            if rows[i][0] == PUT and care.get(rows[i][1], 0) == 0:
                if rows[i][6] < blind_ret or blind < 0:
                    blind, blind_ret = i, rows[i][6]
                continue
            out.append(i)
        if blind >= 0:
            out.append(blind)
        out.sort(key=lambda i: rows[i][6])
        return out

    def first_return() -> int:
        p = head
        while p < size and not isret[p]:
            p = nxt[p]
        return evi[p] if p < size else -1

    memo: set[tuple[int, object]] = set()
    frames: list[_Frame] = []
    best_len, culprit, owed_at = -1, -1, None
    best_prefix: list[int] = []

    def push() -> bool:
        done = closure()
        if ok_left == 0:
            return True
        frames.append(_Frame(done, candidates(), state))
        return False

    if push():
        return Outcome("valid", 0, prefix=order.copy())
    explored = 0
    while frames:
        explored += 1
        if explored & 0xFF == 0 and time.monotonic() > deadline:
            return Outcome("unknown", explored, culprit, best_prefix, "time budget exhausted")
        f = frames[-1]
        before = f.before
        if f.chosen != -1:
            unlin(f.chosen, before)
            f.chosen = -1
        cands = f.cands
        advanced = False
        while f.next < len(cands):
            i = cands[f.next]
            f.next += 1
            lin(i, step(i, before)[1])
            key = (zh, state if care.get(state, 0) > 0 else DEAD)
            if key in memo:
                unlin(i, before)
                continue
            memo.add(key)
            if len(memo) > max_memo:
                why = f"search memo exceeded {max_memo:,} entries (about {max_memo * 200 // 2**20} MiB)"
                return Outcome("unknown", explored, culprit, best_prefix, why)
            f.chosen = i
            if push():
                return Outcome("valid", explored, prefix=order.copy())
            advanced = True
            break
        if advanced:
            continue
        if len(order) > best_len:
            best_len, culprit, best_prefix, owed_at = len(order), first_return(), order.copy(), state
        for i in reversed(f.done):
            unlin(i, state)
        frames.pop()
    return Outcome("invalid", explored, _blame(rows, culprit, best_prefix, owed_at), best_prefix)


def _blame(rows: list[Row], first: int, prefix: list[int], state: object) -> int:
    """The op to name at the deepest dead end: the one due first, unless the state was owed.

    A state owed to a pending read (nothing left can write it again) blocks every write, so the
    op due first is only a victim: the latest of those owed reads is the likely culprit (a stale read)."""
    placed = set(prefix)
    pending = [i for i in range(len(rows)) if i not in placed]
    if any(rows[i][1] == state and _may_write(rows[i]) for i in pending):
        return first
    owed = [
        i
        for i in pending
        if rows[i][4]
        and ((rows[i][0] == GET and rows[i][1] == state) or (rows[i][0] == CAS and rows[i][3] and rows[i][2] == state))
    ]
    return max(owed, key=lambda i: rows[i][5]) if owed else first

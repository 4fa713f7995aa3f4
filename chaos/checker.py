"""Linearizability of a key-value history, checked per key.

A key-value store is linearizable iff each key, as a register, is (Herlihy &
Wing's locality; porcupine's P-compositionality), so the history is split by
key and each part is searched with Wing & Gong's algorithm plus Lowe's
memoisation of (linearized set, state) pairs, as porcupine does.

* ``fail`` operations never happened and are dropped.
* ``info`` (unknown outcome) writes get an infinite return time: they may
  take effect at any point after their invocation, or never (linearizing
  them last is the same as never). ``info`` reads tell nothing and are dropped.
* A time budget makes the answer ``unknown`` instead of running forever.

On failure the report names the first operation no linearization could
place, with the operations around it, and classifies it (stale read, read of
a value never written, lost write).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .history import FAIL, INFO, OK, Op

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"


@dataclass
class KeyResult:
    key: str
    verdict: str
    ops: int
    explored: int = 0
    culprit: Op | None = None
    kind: str = ""  # stale read | never-written value | lost write | ...
    window: list[Op] = field(default_factory=list)

    def explain(self) -> str:
        if self.verdict != INVALID or self.culprit is None:
            return f"key {self.key}: {self.verdict} ({self.ops} operations)"
        lines = [
            f"key {self.key}: NOT linearizable — {self.kind}",
            f"  cannot place: {self.culprit.describe()}",
            "  operations around it:",
        ]
        lines += [f"    {op.describe()}" for op in self.window]
        return "\n".join(lines)


@dataclass
class Result:
    verdict: str
    keys: list[KeyResult]
    seconds: float
    ops: int
    lost_writes: list[Op] = field(default_factory=list)

    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict == INVALID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "operations": self.ops,
            "keys": len(self.keys),
            "seconds": round(self.seconds, 3),
            "invalid_keys": [k.key for k in self.failures()],
            "unknown_keys": [k.key for k in self.keys if k.verdict == UNKNOWN],
            "lost_writes": [op.describe() for op in self.lost_writes],
            "explanations": [k.explain() for k in self.failures()],
        }

    def summary(self) -> str:
        head = f"{self.verdict.upper()}: {self.ops} operations on {len(self.keys)} keys checked in {self.seconds:.2f}s"
        parts = [head]
        if self.lost_writes:
            parts.append(f"{len(self.lost_writes)} acknowledged write(s) lost, e.g. {self.lost_writes[0].describe()}")
        parts += [k.explain() for k in self.failures()[:3]]
        unknown = [k.key for k in self.keys if k.verdict == UNKNOWN]
        if unknown:
            parts.append(f"undecided within the time budget: {', '.join(unknown[:5])}")
        return "\n".join(parts)


def _step(op: Op, state: str | None) -> tuple[bool, str | None]:
    """Register semantics: may op take effect in this state, and what state follows?"""
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return op.value == state, state
    # cas
    matches = state == op.expect
    if op.outcome == INFO:  # unknown: applied iff it matched (placing it last = never)
        return True, op.value if matches else state
    if op.succeeded:
        return matches, op.value if matches else state
    return not matches, state


def check_key(key: str, ops: list[Op], deadline: float) -> KeyResult:
    hist = [op for op in ops if op.outcome != FAIL and not (op.outcome == INFO and op.kind == "get")]
    n = len(hist)
    if n == 0:
        return KeyResult(key, VALID, 0)
    # events: (time, is_return, index); a call sorts before a return at the same time
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(hist):
        ret = op.complete if (op.outcome == OK and op.complete is not None) else math.inf
        events.append((op.invoke, 0, i))
        events.append((ret, 1, i))
    events.sort()
    # doubly linked list over events
    size = len(events)
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    head_next = 0  # index of the first live event (size = end)
    call_pos = [0] * n
    ret_pos = [0] * n
    for pos, (_, is_ret, i) in enumerate(events):
        if is_ret:
            ret_pos[i] = pos
        else:
            call_pos[i] = pos

    def unlink(p: int) -> None:
        nonlocal head_next
        a, b = prv[p], nxt[p]
        if a >= 0:
            nxt[a] = b
        else:
            head_next = b
        if b < size:
            prv[b] = a

    def relink(p: int) -> None:
        nonlocal head_next
        a, b = prv[p], nxt[p]
        if a >= 0:
            nxt[a] = p
        else:
            head_next = p
        if b < size:
            prv[b] = p

    state: str | None = None
    linearized = 0  # bitset of op indexes
    stack: list[tuple[int, str | None]] = []  # (op index, state before)
    cache: set[tuple[int, str | None]] = set()
    cur = head_next
    explored = 0
    best_depth, best_culprit = -1, 0
    while head_next < size:
        explored += 1
        if explored & 0x3FF == 0 and time.monotonic() > deadline:
            return KeyResult(key, UNKNOWN, n, explored)
        _, is_ret, i = events[cur]
        if not is_ret:
            ok, new_state = _step(hist[i], state)
            if ok:
                key_c = (linearized | (1 << i), new_state)
                if key_c not in cache:
                    cache.add(key_c)
                    stack.append((i, state))
                    state = new_state
                    linearized |= 1 << i
                    unlink(call_pos[i])
                    unlink(ret_pos[i])
                    cur = head_next
                    continue
            cur = nxt[cur]
            if cur >= size:  # only calls after this: cannot happen (returns end every op)
                return KeyResult(key, INVALID, n, explored)
            continue
        # a return of an op we could not linearize before it: backtrack
        if len(stack) > best_depth:
            best_depth, best_culprit = len(stack), i
        if not stack:
            return _invalid(key, hist, best_culprit, explored)
        j, prev_state = stack.pop()
        state = prev_state
        linearized &= ~(1 << j)
        relink(ret_pos[j])
        relink(call_pos[j])
        cur = nxt[call_pos[j]]
    return KeyResult(key, VALID, n, explored)


def _invalid(key: str, hist: list[Op], culprit_idx: int, explored: int) -> KeyResult:
    culprit = hist[culprit_idx]
    kind = "no order of these operations explains the results"
    if culprit.kind == "get":
        written = {op.value for op in hist if op.kind in ("put", "cas")}
        if culprit.value is not None and culprit.value not in written:
            kind = "read of a value never written"
        else:
            newer = [
                op
                for op in hist
                if op.kind == "put"
                and op.outcome == OK
                and op.complete is not None
                and op.complete < culprit.invoke
                and op.value != culprit.value
            ]
            if newer:
                kind = f"stale read: {newer[-1].value!r} had been acknowledged before this read began"
    elif culprit.kind == "cas":
        kind = "compare-and-set result contradicts every possible order"
    near = sorted(hist, key=lambda o: o.invoke)
    pos = near.index(culprit)
    window = near[max(0, pos - 6) : pos + 4]
    return KeyResult(key, INVALID, len(hist), explored, culprit, kind, window)


def lost_writes(ops: list[Op], final: dict[str, str | None]) -> list[Op]:
    """Acknowledged puts of unique keys (written once) whose key is absent from the final read."""
    counts: dict[str, int] = defaultdict(int)
    for op in ops:
        if op.kind in ("put", "cas"):
            counts[op.key] += 1
    return [
        op
        for op in ops
        if op.kind == "put" and op.outcome == OK and counts[op.key] == 1 and final.get(op.key) != op.value
    ]


def check(ops: list[Op], budget_s: float = 30.0, final: dict[str, str | None] | None = None) -> Result:
    t0 = time.monotonic()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    deadline = t0 + budget_s
    results = [check_key(k, v, deadline) for k, v in sorted(by_key.items(), key=lambda kv: -len(kv[1]))]
    lost = lost_writes(ops, final) if final is not None else []
    if any(r.verdict == INVALID for r in results) or lost:
        verdict = INVALID
    elif any(r.verdict == UNKNOWN for r in results):
        verdict = UNKNOWN
    else:
        verdict = VALID
    return Result(verdict, results, time.monotonic() - t0, len(ops), lost)

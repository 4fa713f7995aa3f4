"""Linearizability of a key-value history, checked per key.

A key-value store is linearizable iff each key, as a register, is (Herlihy &
Wing's locality; porcupine's P-compositionality), so the history is split by
key and each part is searched (chaos.check.search: Wing & Gong plus Lowe's
memo, pruned with what unique written values pin down), on all cores for
large histories (chaos.check.pool).

* ``fail`` operations never happened and are dropped.
* ``info`` (unknown outcome) writes get an infinite return time: they may
  take effect at any point after their invocation, or never (linearizing
  them last is the same as never). ``info`` reads tell nothing and are dropped.
* A time budget (overall and per key) and a bound on the search memo make
  the answer ``unknown``, naming the key and the reason, instead of running
  forever or exhausting memory. The first invalid key ends the check.

On failure the report names the first operation no linearization could
place, with the operations around it, and classifies it (stale read, read of
a value never written, lost write); ``draw_anomaly`` draws it.
"""

from __future__ import annotations

import time
from collections import defaultdict

from .check.draw import draw_anomaly
from .check.model import INVALID, UNKNOWN, VALID, KeyResult, Result, relevant, rows_of
from .check.pool import PROBE_S, run_inline, run_pool
from .check.search import Outcome, search
from .history import OK, Op

__all__ = [
    "INVALID",
    "UNKNOWN",
    "VALID",
    "KeyResult",
    "Result",
    "check",
    "check_key",
    "draw_anomaly",
    "lost_writes",
]

DEFAULT_MAX_MEMO = 1_000_000  # memo entries per key (~200 B each): ~200 MiB per worker at most


def _key_result(key: str, hist: list[Op], out: Outcome, took: float) -> KeyResult:
    if out.verdict != INVALID:
        return KeyResult(key, out.verdict, len(hist), out.explored, reason=out.reason, seconds=took)
    prefix = [hist[i] for i in out.prefix]
    culprit = hist[out.culprit] if out.culprit >= 0 else max(hist, key=lambda o: o.invoke)
    kr = _explain(key, hist, culprit, out.explored)
    kr.prefix, kr.seconds = prefix, took
    return kr


def _explain(key: str, hist: list[Op], culprit: Op, explored: int) -> KeyResult:
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
                last = max(newer, key=lambda o: o.complete or 0.0)
                kind = f"stale read: {last.value!r} had been acknowledged before this read began"
            elif culprit.value is not None and all(
                op.invoke > (culprit.complete or 0.0) for op in hist if op.kind != "get" and op.value == culprit.value
            ):
                kind = "read of a value written only after the read ended"
    elif culprit.kind == "cas":
        kind = "compare-and-set result contradicts every possible order"
    near = sorted(hist, key=lambda o: o.invoke)
    pos = near.index(culprit)
    window = near[max(0, pos - 6) : pos + 4]
    return KeyResult(key, INVALID, len(hist), explored, culprit, kind, window)


def check_key(key: str, ops: list[Op], deadline: float, max_memo: int = DEFAULT_MAX_MEMO) -> KeyResult:
    """One key, in this process, until the monotonic deadline."""
    hist = relevant(ops)
    t0 = time.monotonic()
    return _key_result(key, hist, search(rows_of(hist), deadline, max_memo), time.monotonic() - t0)


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


def check(
    ops: list[Op],
    budget_s: float = 30.0,
    final: dict[str, str | None] | None = None,
    *,
    key_budget_s: float | None = None,
    max_memo: int = DEFAULT_MAX_MEMO,
    workers: int | None = None,
) -> Result:
    """Check every key; `workers=1` keeps it in this process (so does a small history)."""
    t0 = time.monotonic()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    hists = {k: relevant(v) for k, v in by_key.items()}
    deadline = t0 + budget_s
    results: dict[str, KeyResult] = {}

    def done(key: str, out: Outcome, took: float) -> bool:
        results[key] = _key_result(key, hists[key], out, took)
        return out.verdict == INVALID

    tasks = [(k, rows_of(h)) for k, h in hists.items()]
    per_key = budget_s if key_budget_s is None else min(key_budget_s, budget_s)
    if workers == 1 or len(tasks) < 2:
        run_inline(tasks, deadline, per_key, max_memo, done)
    elif rest := run_inline(tasks, deadline, per_key, max_memo, done, probe_s=PROBE_S):
        run_pool(rest, deadline, per_key, max_memo, done, workers)
    for k, h in hists.items():
        if k not in results:
            results[k] = KeyResult(k, UNKNOWN, len(h), reason="not checked: another key was found invalid first")
    keys = sorted(results.values(), key=lambda r: -r.ops)
    lost = lost_writes(ops, final) if final is not None else []
    if any(r.verdict == INVALID for r in keys) or lost:
        verdict = INVALID
    elif any(r.verdict == UNKNOWN for r in keys):
        verdict = UNKNOWN
    else:
        verdict = VALID
    return Result(verdict, keys, time.monotonic() - t0, len(ops), lost)

"""Running the per-key searches: in this process for small histories, else on all cores.

Keys are independent (locality), so they go to worker processes ('forkserver': no copy of the
caller's threads or event loop), largest first. The first invalid key ends the check: the workers
are terminated, not left to run out their budgets. A worker that dies (killed, out of memory)
leaves its key unknown with the reason, never a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable

from .search import Outcome, Row, search

# each key is first tried here for this long (all keys together for twice that): easy histories
# never pay a pool's start-up (~0.3 s); the keys still undecided go to the pool
PROBE_S = 0.5

Done = Callable[[str, Outcome, float], bool]  # called per finished key; True = stop now


def _deadline(overall: float, key_budget_s: float) -> float:
    return min(overall, time.monotonic() + key_budget_s)


def run_inline(
    tasks: list[tuple[str, list[Row]]],
    deadline: float,
    key_budget_s: float,
    max_memo: int,
    done: Done,
    probe_s: float | None = None,
) -> list[tuple[str, list[Row]]]:
    """Smallest keys first, each with its own budget: a hard key cannot starve a quick invalid one.

    With `probe_s`, each key gets only that long (and all of them twice that): the keys left
    undecided are returned, for the pool, instead of being reported."""
    rest: list[tuple[str, list[Row]]] = []
    t_start = time.monotonic()
    for n, (key, rows) in enumerate(ordered := sorted(tasks, key=lambda t: len(t[1]))):
        t0 = time.monotonic()
        if probe_s is not None and t0 - t_start > 2 * probe_s:
            return rest + ordered[n:]
        if t0 > deadline:
            done(key, Outcome("unknown", reason="time budget exhausted before this key"), 0.0)
            continue
        until = _deadline(deadline, key_budget_s if probe_s is None else min(key_budget_s, probe_s))
        out = search(rows, until, max_memo)
        if probe_s is not None and out.verdict == "unknown" and out.reason.startswith("time"):
            rest.append((key, rows))
        elif done(key, out, time.monotonic() - t0):
            return []
    return rest


def _worker(tasks: mp.Queue, results: mp.Queue, deadline: float, key_budget_s: float, max_memo: int) -> None:
    while (task := tasks.get()) is not None:
        key, rows = task
        t0 = time.monotonic()
        out = search(rows, _deadline(deadline, key_budget_s), max_memo)
        results.put((key, out, time.monotonic() - t0))


def run_pool(
    tasks: list[tuple[str, list[Row]]],
    deadline: float,
    key_budget_s: float,
    max_memo: int,
    done: Done,
    workers: int | None = None,
) -> None:
    ctx = mp.get_context("forkserver")
    n = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    task_q: mp.Queue = ctx.Queue()
    res_q: mp.Queue = ctx.Queue()
    for t in sorted(tasks, key=lambda t: -len(t[1])):
        task_q.put(t)
    for _ in range(n):
        task_q.put(None)
    args = (task_q, res_q, deadline, key_budget_s, max_memo)
    procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(n)]
    pending = {k for k, _ in tasks}
    try:
        for p in procs:
            p.start()
        while pending:
            try:
                key, out, took = res_q.get(timeout=0.1)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) or time.monotonic() > deadline + 5:
                    break
                continue
            pending.discard(key)
            if done(key, out, took):
                return
        for key in sorted(pending):
            done(key, Outcome("unknown", reason="its worker process died or overran the budget"), 0.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (task_q, res_q):
            q.cancel_join_thread()
            q.close()

"""Linearizability checker speed on generated valid histories, each also corrupted two ways.

python -m bench.checker_speed [--quick]

Corruptions: one read of a value never written, and one definitely stale read (a value overwritten
by a put acknowledged before the read began); both are caught by O(n log n) prechecks, so the
stale read is also timed through the search alone, on its key. The single-register cases
(16 writers, unique values) are the hard ones for Wing & Gong.
Each check is [verdict, wall s, CPU s]. Peak memory is this process's and its workers' maximum
resident set so far (it only grows).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

from chaos.check.model import relevant, rows_of
from chaos.check.search import search
from chaos.checker import check
from tests.test_checker import generate
from tests.test_checker_search import _stale

CASES = (
    (10_000, 16, 8),
    (50_000, 16, 8),
    (200_000, 16, 8),
    (10_000, 16, 3),
    (2_000, 16, 1),
    (10_000, 16, 1),
    (50_000, 16, 1),
)


def _peak_mib() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) // 1024


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(h: list[Any]) -> tuple[str, float, float]:
    """Verdict, wall seconds, CPU seconds (workers included: on a busy machine wall time lies)."""
    t0, c0 = time.monotonic(), _cpu()
    r = check(h, budget_s=60)
    return r.verdict, round(time.monotonic() - t0, 3), round(_cpu() - c0, 3)


def main() -> None:
    quick = "--quick" in sys.argv
    out = []
    for n_ops, clients, keys in CASES:
        if quick and n_ops > 10_000:
            continue
        h = generate(n_ops, clients, keys, seed=1)
        row: dict[str, Any] = {"ops": n_ops, "clients": clients, "keys": keys}
        row["valid"] = _timed(h)
        bad = _stale(h)
        row["stale_read"] = _timed(h) if bad else ("-", 0.0, 0.0)
        if bad is not None:  # the same, found by the search instead of the O(n log n) precheck
            rows = rows_of(relevant([o for o in h if o.key == bad.key]))
            t0, c0 = time.monotonic(), _cpu()
            v = search(rows, t0 + 60, prechecks=False).verdict
            row["stale_read_by_search_1_key"] = (v, round(time.monotonic() - t0, 3), round(_cpu() - c0, 3))
        if bad is not None:
            bad.value = "never-written"
        row["never_written"] = _timed(h)
        row["peak_mib"] = _peak_mib()
        out.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

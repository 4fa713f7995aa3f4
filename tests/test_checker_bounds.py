"""The checker's limits: per-key and overall budgets, the memo bound, the first invalid key, large histories."""

from __future__ import annotations

import multiprocessing
import time

import pytest

import chaos.checker
from chaos.checker import INVALID, UNKNOWN, VALID, check
from chaos.history import OK, Op
from tests.test_checker import generate


def hard_key(key: str, k: int) -> list[Op]:
    """k concurrent writes, each read once meanwhile, then a contradiction only the end reveals.

    Every order of the writes must be tried before the answer (invalid) is known: 2^k states,
    even for the pruned search. k=16 takes seconds; k=24 far longer than any test waits."""
    ops: list[Op] = []
    for c in range(1, k + 1):
        ops.append(Op(len(ops), c, "put", key, f"v{c}", outcome=OK, invoke=0, complete=100))
        ops.append(Op(len(ops), 100 + c, "get", key, f"v{c}", outcome=OK, invoke=0.5, complete=99))
    ops.append(Op(len(ops), 0, "get", key, f"v{k}", outcome=OK, invoke=101, complete=102))
    ops.append(Op(len(ops), 0, "cas", key, "z", f"v{k}", False, OK, 103, 104))
    return ops


def small_invalid(key: str) -> list[Op]:
    return [
        Op(900, 1, "put", key, "1", outcome=OK, invoke=0, complete=1),
        Op(901, 1, "put", key, "2", outcome=OK, invoke=2, complete=3),
        Op(902, 2, "get", key, "1", outcome=OK, invoke=4, complete=5),  # stale
    ]


def test_first_invalid_key_ends_the_check() -> None:
    # key a alone would need minutes; b alone is invalid at once: together, b's verdict must win fast
    h = hard_key("a", 24) + small_invalid("b")
    t0 = time.monotonic()
    r = check(h, budget_s=20)
    took = time.monotonic() - t0
    assert r.verdict == INVALID, r.summary()
    assert [k.key for k in r.failures()] == ["b"]
    assert took < 5, f"took {took:.1f}s: the hard key held the check up"


def test_first_invalid_key_wins_on_the_pool_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # both keys outlast the in-process probe, so both go to worker processes; the invalid one must stop
    # the other's worker (terminated, not left running out its budget)
    monkeypatch.setattr(chaos.checker, "PROBE_S", 0.05)
    h = hard_key("a", 24) + hard_key("c", 12)
    t0 = time.monotonic()
    r = check(h, budget_s=20)
    took = time.monotonic() - t0
    assert r.verdict == INVALID and [k.key for k in r.failures()] == ["c"], r.summary()
    assert took < 8, f"took {took:.1f}s: the pool did not stop at the first invalid key"
    a = next(k for k in r.keys if k.key == "a")
    assert a.verdict == UNKNOWN and a.reason.startswith("not checked")
    assert multiprocessing.active_children() == []


def test_per_key_budget() -> None:
    # one hard key must not use the whole budget: it is unknown after its own share, the other key decided
    h = hard_key("a", 24) + generate(300, 4, 1, seed=2)
    t0 = time.monotonic()
    r = check(h, budget_s=30, key_budget_s=0.5, workers=1)
    took = time.monotonic() - t0
    a = next(k for k in r.keys if k.key == "a")
    assert r.verdict == UNKNOWN and a.verdict == UNKNOWN and "time budget" in a.reason
    assert next(k for k in r.keys if k.key == "k0").verdict == VALID
    assert took < 3, f"took {took:.1f}s for a 0.5 s per-key budget"
    assert "key a (time budget" in r.summary()


def test_memo_bound_gives_unknown_naming_the_key() -> None:
    r = check(hard_key("big/one", 16), budget_s=30, max_memo=5_000)
    assert r.verdict == UNKNOWN
    (k,) = r.keys
    assert k.key == "big/one" and "memo" in k.reason and "5,000" in k.reason
    assert "key big/one" in r.summary() and "memo" in r.summary()
    assert r.to_dict()["unknown_reasons"] == {"big/one": k.reason}


def test_overall_budget() -> None:
    t0 = time.monotonic()
    r = check(hard_key("a", 24), budget_s=0.5)
    assert r.verdict == UNKNOWN and time.monotonic() - t0 < 2


def test_large_multi_key_history_is_valid() -> None:
    h = generate(50_000, 16, 8, seed=11)
    r = check(h, budget_s=60)
    assert r.verdict == VALID, r.summary()
    assert r.ops == 50_000 and len(r.keys) == 8

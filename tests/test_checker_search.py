"""The pruned register search against a brute force on tiny histories, and a sequential model's property.

The search's shortcuts (greedy reads, owed-value pruning, blind-write symmetry, the hashed memo)
are only worth having if they never change a verdict: every tiny history is also decided by
trying every order, and the two must agree.
"""

from __future__ import annotations

import math
import time
from itertools import combinations, permutations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chaos.check.model import relevant, rows_of
from chaos.check.search import search
from chaos.checker import INVALID, VALID, check
from chaos.history import FAIL, INFO, OK, Op
from tests.test_checker import generate


def _ret(o: Op) -> float:
    return o.complete if (o.outcome == OK and o.complete is not None) else math.inf


def _legal(order: tuple[Op, ...]) -> bool:
    for i, a in enumerate(order):
        if any(_ret(b) < a.invoke for b in order[i + 1 :]):
            return False
    state: str | None = None
    for o in order:
        if o.kind == "put":
            state = o.value
        elif o.kind == "get":
            if o.value != state:
                return False
        elif o.outcome != OK:
            state = o.value if state == o.expect else state
        elif o.succeeded:
            if state != o.expect:
                return False
            state = o.value
        elif state == o.expect:
            return False
    return True


def brute_force(hist: list[Op]) -> bool:
    """Linearizable iff some order of the ok ops plus some subset of the unknown ones is legal."""
    ops = [o for o in hist if o.outcome != FAIL and not (o.outcome == INFO and o.kind == "get")]
    must = [o for o in ops if o.outcome == OK]
    maybe = [o for o in ops if o.outcome != OK]
    for r in range(len(maybe) + 1):
        for extra in combinations(maybe, r):
            if any(_legal(p) for p in permutations(must + list(extra))):
                return True
    return False


VALS = ["a", "b", "c"]


@st.composite
def tiny_history(draw: st.DrawFn) -> list[Op]:
    ops = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "put", "get", "get", "cas"]))
        outcome = draw(st.sampled_from([OK, OK, OK, OK, INFO, FAIL]))
        t0 = draw(st.integers(0, 6))
        t1 = None if outcome == INFO else t0 + draw(st.integers(0, 4))
        value = draw(st.sampled_from([None, *VALS] if kind == "get" else VALS))
        expect = draw(st.sampled_from([None, "a", "b"])) if kind == "cas" else None
        succeeded = draw(st.booleans()) if kind == "cas" and outcome == OK else None
        ops.append(Op(i, draw(st.integers(0, 3)), kind, "x", value, expect, succeeded, outcome, t0, t1))
    return ops


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_history())
def test_search_agrees_with_trying_every_order(h: list[Op]) -> None:
    want = VALID if brute_force(h) else INVALID
    got = check(h, budget_s=10, workers=1)
    assert got.verdict == want, "\n".join(o.describe() for o in h) + "\n" + got.summary()


def _stale(h: list[Op]) -> Op | None:
    """Make one read definitely stale: it returns a value overwritten by a put acknowledged before it began."""
    puts = [o for o in h if o.kind == "put"]
    for r in reversed(h):
        if r.kind != "get":
            continue
        for w2 in puts:
            if w2.key != r.key or w2.complete is None or w2.complete >= r.invoke:
                continue
            w1 = next((w for w in puts if w.key == r.key and w.complete is not None and w.complete < w2.invoke), None)
            if w1 is not None:
                r.value = w1.value
                return r
    return None


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 600),
    clients=st.integers(1, 16),
    keys=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    cas=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_a_sequential_model_is_valid_and_one_stale_read_is_not(
    n: int, clients: int, keys: int, seed: int, cas: float
) -> None:
    h = generate(n, clients, keys, seed, cas=cas)
    assert check(h, budget_s=20, workers=1).verdict == VALID
    bad = _stale(h)
    assume(bad is not None)
    r = check(h, budget_s=20, workers=1)
    assert r.verdict == INVALID
    assert r.failures()[0].key == bad.key  # type: ignore[union-attr]
    assert r.failures()[0].culprit is bad
    # the search alone must find it too (the precheck above names it without searching)
    rows = rows_of(relevant([o for o in h if o.key == bad.key]))  # type: ignore[union-attr]
    assert search(rows, time.monotonic() + 20, prechecks=False).verdict == INVALID


@settings(max_examples=15, deadline=None)
@given(n=st.integers(50, 800), values=st.integers(2, 4), seed=st.integers(0, 2**32))
def test_repeated_values_stay_valid(n: int, values: int, seed: int) -> None:
    # values written more than once: the owed-value pruning must not fire
    assert check(generate(n, 8, 1, seed, values=values, cas=0.2), budget_s=20, workers=1).verdict == VALID


def test_hot_register_16_writers_valid_and_stale() -> None:
    h = generate(10_000, 16, 1, seed=5)
    r = check(h, budget_s=30)
    assert r.verdict == VALID and r.seconds < 10, r.summary()
    bad = _stale(h)
    assert bad is not None
    r = check(h, budget_s=30)
    assert r.verdict == INVALID and r.failures()[0].culprit is bad
    assert r.seconds < 10
    t0 = time.monotonic()
    assert search(rows_of(relevant(h)), t0 + 30, prechecks=False).verdict == INVALID
    assert time.monotonic() - t0 < 10

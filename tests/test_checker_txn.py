"""The append checker (chaos.elle): each transaction anomaly, hand-made, comes back under its name;
a large valid history from a serial model is valid, fast; unknown outcomes are handled both ways."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from chaos.elle import INVALID, VALID, _Checker, check_append
from chaos.elle_cycles import UNCLASSIFIED, Work, sccs
from chaos.history import FAIL, INFO, OK, FinalRead, Op

_ids = iter(range(10**9))


def T(*mops: Any, at: tuple[float, float | None] = (0.0, 100.0), outcome: str = OK) -> Op:
    """A transaction; mops like ("r", "x", [1, 2]) or ("append", "x", 3). Default: all concurrent."""
    inv, comp = at
    return Op(next(_ids), 0, "txn", "", outcome=outcome, invoke=inv, complete=comp, mops=[list(m) for m in mops])


def final(**lists: list[int]) -> FinalRead:
    return FinalRead(1000, {k: (",".join(map(str, v)), 1) for k, v in lists.items()})


def names(ops: list[Op], fin: FinalRead | None = None) -> set[str]:
    return {a.name for a in check_append(ops, fin).anomalies}


def test_g0_write_cycle() -> None:
    ops = [T(("append", "x", 1), ("append", "y", 2)), T(("append", "x", 3), ("append", "y", 4))]
    assert names(ops, final(x=[1, 3], y=[4, 2])) == {"G0"}
    assert names(ops, final(x=[1, 3], y=[2, 4])) == set()


def test_g1a_aborted_read() -> None:
    ops = [T(("append", "x", 1), outcome=FAIL), T(("r", "x", [1]))]
    assert "G1a" in names(ops)


def test_g1b_intermediate_read() -> None:
    ops = [T(("append", "x", 1), ("append", "x", 2)), T(("r", "x", [1]))]
    assert "G1b" in names(ops, final(x=[1, 2]))


def test_g1c_circular_information_flow() -> None:
    ops = [T(("append", "x", 1), ("r", "y", [2])), T(("append", "y", 2), ("r", "x", [1]))]
    assert names(ops) == {"G1c"}


def test_g_single_read_skew() -> None:
    ops = [T(("r", "x", [2]), ("r", "y", [])), T(("append", "x", 2), ("append", "y", 3))]
    res = check_append(ops)
    assert [a.name for a in res.anomalies] == ["G-single"]
    assert sorted(k for _, _, k in res.anomalies[0].edges) == ["rw", "wr"]


def test_g2_write_skew() -> None:
    ops = [T(("r", "x", []), ("append", "y", 1)), T(("r", "y", []), ("append", "x", 2))]
    assert names(ops, final(x=[2], y=[1])) == {"G2"}


def test_lost_update() -> None:
    ops = [T(("r", "x", []), ("append", "x", 1)), T(("r", "x", []), ("append", "x", 2))]
    assert "lost-update" in names(ops, final(x=[1, 2]))


def test_stale_read_is_a_real_time_cycle() -> None:
    ops = [T(("append", "x", 1), at=(0, 1)), T(("r", "x", []), at=(2, 3))]
    assert names(ops) == {"G-single-realtime"}
    # the same two, overlapping in time: serializable in either order's real time
    assert names([T(("append", "x", 5), at=(0, 2)), T(("r", "x", []), at=(1, 3))]) == set()


def test_lost_write_against_the_final_read() -> None:
    ops = [T(("append", "x", 1), at=(0, 1)), T(("append", "x", 2), at=(2, 3))]
    assert names(ops, final(x=[1])) == {"lost-write"}


def test_incompatible_orders_and_garbage() -> None:
    ops = [T(("append", "x", 1)), T(("append", "x", 2)), T(("r", "x", [1, 2])), T(("r", "x", [2]))]
    assert "incompatible-order" in names(ops)
    assert "garbage-read" in names([T(("r", "x", [9]))])
    assert "duplicate-elements" in names([T(("append", "x", 1)), T(("r", "x", [1, 1]))])


def test_unknown_outcomes_may_or_may_not_have_happened() -> None:
    # an unknown append that was read took effect; one never read did not need to
    seen = [T(("append", "x", 1), at=(0, None), outcome=INFO), T(("r", "x", [1]), at=(5, 6))]
    assert names(seen, final(x=[1])) == set()
    unseen = [T(("append", "x", 1), at=(0, None), outcome=INFO), T(("r", "x", []), at=(5, 6))]
    assert names(unseen, final(x=[])) == set()
    # but once it was read, a later read that misses it is stale
    stale = [*seen, T(("r", "x", []), at=(7, 8))]
    assert names(stale) == {"G-single-realtime"}


def test_an_unknown_transaction_seen_in_part_is_not_atomic() -> None:
    # its append to x was read, so it took effect: its append to y must be there too
    torn = T(("append", "x", 1), ("append", "y", 2), at=(0, None), outcome=INFO)
    assert names([torn], final(x=[1], y=[])) == {"lost-write"}
    assert names([torn], final(x=[1], y=[2])) == set()
    assert names([torn], final(x=[], y=[])) == set()  # never took effect: fine
    # without a final read: a later read sees x=[1] and y=[], like the acknowledged read skew
    later = T(("r", "x", [1]), ("r", "y", []), at=(50, 60))
    assert names([torn, later]) == {"G-single"}
    whole = T(("r", "x", [1]), ("r", "y", [2]), at=(50, 60))
    assert names([torn, whole], final(x=[1], y=[2])) == set()


def serial_history(
    n: int, keys: int = 200, clients: int = 16, seed: int = 1, torn: bool = False
) -> tuple[list[Op], FinalRead]:
    """A serial model of the store run by concurrent clients, as the workload drives it.

    An acknowledged transaction takes effect at a point inside its [invoke, complete]; a failed one
    never; an unknown one maybe never, maybe at once, maybe a few transactions later (a proposal
    committed after its client gave up) — and then only if the keys it read are unchanged since,
    as the workload's mod_revision guard demands. Now and then the load pauses, so what came
    before is over. `torn`: the unknown transactions that take effect on two or more keys apply
    the appends of their first key only (a history that is not atomic: invalid)."""
    rng = random.Random(seed)
    state: dict[str, list[int]] = {}
    version: dict[str, int] = {}  # key -> how many times it changed (the mod_revision guard)
    late: list[tuple[int, dict[str, int], list[list[Any]]]] = []  # (due at, versions read, mops)
    ops: list[Op] = []
    val = 0
    t = 0.0

    def apply(appends: list[list[Any]], part: bool = False) -> None:
        for m in appends:
            if not part or m[1] == appends[0][1]:
                state.setdefault(m[1], []).append(m[2])
                version[m[1]] = version.get(m[1], 0) + 1

    for i in range(n):
        t += 1.0 if rng.random() > 0.01 else 3.0 * clients  # a pause: everything before has completed
        for due in [x for x in late if x[0] <= i]:
            late.remove(due)
            if all(version.get(k, 0) == v for k, v in due[1].items()):
                apply(due[2], torn)
        mops: list[list[Any]] = []
        mine: dict[str, list[int]] = {}
        for _ in range(rng.randint(1, 4)):
            k = f"k{rng.randrange(keys)}"
            lst = mine.setdefault(k, list(state.get(k, [])))
            if rng.random() < 0.5:
                mops.append(["r", k, list(lst)])
            else:
                val += 1
                lst.append(val)
                mops.append(["append", k, val])
        r = rng.random()
        outcome = OK if r < 0.9 else INFO if r < 0.95 else FAIL
        appends = [m for m in mops if m[0] == "append"]
        if outcome == OK:
            apply(appends)
        elif outcome == INFO and appends:
            when = rng.random()
            if when < 0.4:
                apply(appends, torn)
            elif when < 0.7:
                late.append((i + rng.randint(1, 5), {k: version.get(k, 0) for k in mine}, appends))
        if outcome != OK:
            for m in mops:
                if m[0] == "r":
                    m[2] = None
        # the effect was at t; invoke earlier and complete later, overlapping neighbours
        inv = t - rng.uniform(0, clients)
        comp = t + rng.uniform(0, clients) if outcome != INFO else None
        ops.append(Op(i, i % clients, "txn", "", outcome=outcome, invoke=inv, complete=comp, mops=mops))
    return ops, FinalRead(n, {k: (",".join(map(str, v)), 1) for k, v in state.items()})


def test_a_serial_model_is_valid_and_one_corrupted_read_is_not() -> None:
    for seed in range(5):
        ops, fin = serial_history(2000, keys=20, clients=8, seed=seed)
        res = check_append(ops, fin)
        assert res.verdict == VALID, res.summary()
        # a late read of a long list loses its second half: appends long completed, so a stale read
        bad = next(
            o for o in reversed(ops) if o.outcome == OK and any(m[0] == "r" and len(m[2]) > 8 for m in o.mops or [])
        )
        m = next(m for m in bad.mops or [] if m[0] == "r" and len(m[2]) > 8)
        m[2] = m[2][: len(m[2]) // 2]
        assert check_append(ops, fin).verdict == "invalid"


def test_the_model_with_unknown_transactions_applied_in_part_is_invalid() -> None:
    for seed in range(5):
        ops, fin = serial_history(2000, keys=20, clients=8, seed=seed, torn=True)
        assert check_append(ops, fin).verdict == INVALID, seed


def _stale_read(n: int) -> tuple[list[Op], FinalRead]:
    """A serial history in which one late read of a long list lost all but its first two elements."""
    ops, fin = serial_history(n, keys=20, clients=16, seed=3)
    bad = next(
        o for o in reversed(ops) if o.outcome == OK and any(m[0] == "r" and len(m[2]) > 20 for m in o.mops or [])
    )
    m = next(m for m in bad.mops or [] if m[0] == "r" and len(m[2]) > 20)
    m[2] = m[2][:2]
    return ops, fin


def test_a_large_cycle_is_named_exactly() -> None:
    # the stale read's rw edge closes a cycle with ww/wr/rt edges only: a G-single, however many
    # rw edges the component holds (a search bounded by a number of tries named it G2-realtime)
    ops, fin = _stale_read(5000)
    assert names(ops, fin) == {"G-single-realtime"}


def test_the_time_budget_holds_while_naming_cycles() -> None:
    ops, fin = _stale_read(5000)
    t = time.monotonic()
    res = check_append(ops, fin, budget_s=1.0)
    took = time.monotonic() - t
    assert res.verdict == INVALID
    assert took < 3.0, f"budget 1 s, took {took:.1f}s"


def test_what_was_found_before_the_budget_ran_out_is_kept() -> None:
    aborted_read = [T(("append", "x", 1), outcome=FAIL), T(("r", "x", [1]))]
    res = check_append(aborted_read, budget_s=0)
    assert res.verdict == INVALID and [a.name for a in res.anomalies] == ["G1a"] and "budget" in res.note
    assert check_append([T(("append", "x", 1))], budget_s=0).verdict == "unknown"


def test_a_cycle_left_when_time_runs_out_is_reported_unnamed() -> None:
    read_skew = [T(("r", "x", [2]), ("r", "y", [])), T(("append", "x", 2), ("append", "y", 3))]
    c = _Checker(read_skew, None, Work(float("inf")))
    live = c._index()
    c._reads(live)
    c._version_orders()
    nodes, adj = c._graph(live)
    comps = sccs(adj, c.work)
    c.work.deadline, c.work.left = 0.0, 0  # out of time at the first edge the naming looks at
    c._name_cycles(nodes, adj, comps)
    assert [a.name for a in c.anomalies] == [UNCLASSIFIED]
    assert sorted(k for _, _, k in c.anomalies[0].edges) == ["rw", "wr"]


@pytest.mark.parametrize("n", [50_000])
def test_large_valid_history_is_valid_fast(n: int) -> None:
    ops, fin = serial_history(n)
    t = time.monotonic()
    res = check_append(ops, fin, budget_s=60)
    took = time.monotonic() - t
    assert res.verdict == VALID, res.summary()
    assert took < 10, f"{n} ops took {took:.1f}s"

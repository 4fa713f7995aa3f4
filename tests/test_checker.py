"""The linearizability checker on hand-made histories, and on a large generated valid one."""

from __future__ import annotations

import random
import time
from pathlib import Path

from chaos.checker import INVALID, UNKNOWN, VALID, check
from chaos.history import FAIL, INFO, OK, Op, load, save

_ids = iter(range(1_000_000))


def op(
    client: int,
    kind: str,
    key: str,
    value: str | None,
    t0: float,
    t1: float | None,
    outcome: str = OK,
    expect: str | None = None,
    succeeded: bool | None = None,
) -> Op:
    return Op(next(_ids), client, kind, key, value, expect, succeeded, outcome, t0, t1)


def test_sequential_history_is_valid() -> None:
    h = [
        op(1, "put", "x", "1", 0, 1),
        op(1, "get", "x", "1", 2, 3),
        op(2, "put", "x", "2", 4, 5),
        op(2, "get", "x", "2", 6, 7),
    ]
    assert check(h).verdict == VALID


def test_concurrent_read_may_see_either_value() -> None:
    h = [
        op(1, "put", "x", "1", 0, 1),
        op(1, "put", "x", "2", 2, 6),
        op(2, "get", "x", "1", 3, 4),
        op(3, "get", "x", "2", 4, 5),
    ]
    assert check(h).verdict == VALID


def test_stale_read_is_invalid_and_named() -> None:
    h = [op(1, "put", "x", "1", 0, 1), op(1, "put", "x", "2", 2, 3), op(2, "get", "x", "1", 4, 5)]
    r = check(h)
    assert r.verdict == INVALID
    assert "stale read" in r.failures()[0].kind and "'2'" in r.failures()[0].kind
    assert "get(x) = '1'" in r.summary()


def test_read_of_never_written_value() -> None:
    h = [op(1, "put", "x", "1", 0, 1), op(2, "get", "x", "7", 2, 3)]
    r = check(h)
    assert r.verdict == INVALID and r.failures()[0].kind == "read of a value never written"


def test_lost_acknowledged_write() -> None:
    # an acknowledged put of a unique key is missing from the final read
    h = [op(1, "put", "u/1", "a", 0, 1), op(2, "put", "u/2", "b", 0, 1)]
    r = check(h, final={"u/1": "a", "u/2": None})
    assert r.verdict == INVALID and len(r.lost_writes) == 1 and r.lost_writes[0].key == "u/2"
    # and as a register: a read after the ack that sees nothing is not linearizable
    h2 = [op(1, "put", "x", "1", 0, 1), op(2, "get", "x", None, 2, 3)]
    assert check(h2).verdict == INVALID


def test_unknown_outcome_write_may_appear_late_or_never() -> None:
    late = [
        op(1, "put", "x", "1", 0, 1),
        op(2, "put", "x", "2", 2, None, INFO),
        op(3, "get", "x", "1", 3, 4),
        op(3, "get", "x", "2", 10, 11),
    ]
    assert check(late).verdict == VALID
    never = [op(1, "put", "x", "1", 0, 1), op(2, "put", "x", "2", 2, None, INFO), op(3, "get", "x", "1", 10, 11)]
    assert check(never).verdict == VALID
    # but a value read before its (unknown) write was even invoked is impossible
    early = [op(1, "put", "x", "1", 0, 1), op(3, "get", "x", "2", 2, 3), op(2, "put", "x", "2", 5, None, INFO)]
    assert check(early).verdict == INVALID


def test_failed_operations_never_happened() -> None:
    h = [op(1, "put", "x", "1", 0, 1), op(2, "put", "x", "2", 2, 3, FAIL), op(3, "get", "x", "1", 4, 5)]
    assert check(h).verdict == VALID
    h.append(op(3, "get", "x", "2", 6, 7))
    assert check(h).verdict == INVALID


def test_compare_and_set() -> None:
    ok = [
        op(1, "put", "x", "1", 0, 1),
        op(2, "cas", "x", "2", 2, 3, expect="1", succeeded=True),
        op(3, "cas", "x", "3", 4, 5, expect="1", succeeded=False),
        op(3, "get", "x", "2", 6, 7),
    ]
    assert check(ok).verdict == VALID
    bad = [
        op(1, "put", "x", "1", 0, 1),
        op(2, "cas", "x", "2", 2, 3, expect="1", succeeded=True),
        op(3, "cas", "x", "3", 4, 5, expect="1", succeeded=True),
    ]
    assert check(bad).verdict == INVALID
    absent = [op(1, "cas", "y", "a", 0, 1, expect=None, succeeded=True), op(2, "get", "y", "a", 2, 3)]
    assert check(absent).verdict == VALID


def generate(n_ops: int, clients: int, keys: int, seed: int, *, values: int = 0, cas: float = 0.1) -> list[Op]:
    """A linearizable history: a simulated register store with real concurrency and lag.

    Written values are unique unless `values` > 0 (then drawn from that many)."""
    rng = random.Random(seed)
    store: dict[str, str | None] = {}
    ops: list[Op] = []
    t = [0.0] * clients
    pending: list[tuple[float, int, Op]] = []
    for i in range(n_ops):
        c = i % clients
        start = t[c] + rng.random() * 0.002
        lin = start + rng.random() * 0.004  # the moment it takes effect
        end = lin + rng.random() * 0.004
        t[c] = end
        k = f"k{rng.randrange(keys)}"
        r = rng.random()
        new = f"x{rng.randrange(values)}" if values else f"v{i}"
        if r < 0.5 - cas / 2:
            o = Op(i, c, "put", k, new, invoke=start, complete=end, outcome=OK)
        elif r < 1 - cas:
            o = Op(i, c, "get", k, invoke=start, complete=end, outcome=OK)
        else:
            old = f"x{rng.randrange(values)}" if values else f"v{rng.randrange(max(1, i))}"
            o = Op(i, c, "cas", k, new, expect=old, invoke=start, complete=end, outcome=OK)
        pending.append((lin, i, o))
    for _lin, _, o in sorted(pending):
        if o.kind == "put":
            store[o.key] = o.value
        elif o.kind == "get":
            o.value = store.get(o.key)
        else:
            o.succeeded = store.get(o.key) == o.expect
            if o.succeeded:
                store[o.key] = o.value
        ops.append(o)
    return sorted(ops, key=lambda o: o.invoke)


def test_large_generated_history_is_decided_quickly() -> None:
    h = generate(10_000, 16, 8, seed=3)
    t0 = time.monotonic()
    r = check(h, budget_s=60)
    took = time.monotonic() - t0
    assert r.verdict == VALID, r.summary()
    print(f"\nchecker: 10,000 ops, 16 clients, 8 keys: {took:.2f}s")
    # corrupt one read: the checker must notice
    bad = next(o for o in reversed(h) if o.kind == "get" and o.value is not None)
    bad.value = "v-never"
    assert check(h, budget_s=60).verdict == INVALID


def test_budget_answers_unknown() -> None:
    # many concurrent writes with no reads to pin the order, then an impossible read: exponential search
    h = [op(c, "put", "x", f"v{c}", 0, 100) for c in range(40)]
    h.append(op(99, "get", "x", "nope", 101, 102))
    r = check(h, budget_s=0.2)
    assert r.verdict in (UNKNOWN, INVALID)


def test_history_roundtrip(tmp_path: Path) -> None:
    h = [op(1, "put", "x", "1", 0, 1), op(2, "get", "x", None, 2, None, INFO)]
    save(h, tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl") == h


def test_unknown_outcome_cas_may_take_effect_late() -> None:
    # the cas cannot match when invoked; it matches after put b, and only its write explains the read of c
    h = [
        op(1, "put", "x", "a", 0, 1),
        op(2, "cas", "x", "c", 0, None, INFO, expect="b"),
        op(1, "put", "x", "b", 2, 3),
        op(3, "get", "x", "c", 4, 5),
    ]
    assert check(h).verdict == VALID
    # without the unknown cas nothing could have written c
    assert check([o for o in h if o.kind != "cas"]).verdict == INVALID


def test_failed_cas_tells_the_order_of_concurrent_writes() -> None:
    # u and v written concurrently; a later cas expecting v did not match, so v was written first
    h = [
        op(1, "put", "x", "u", 0, 1),
        op(2, "put", "x", "v", 0, 1.5),  # due later: the search tries u first, then must try v first too
        op(3, "cas", "x", "w", 2, 3, expect="v", succeeded=False),
    ]
    assert check(h).verdict == VALID
    h.append(op(3, "get", "x", "v", 4, 5))  # ... yet the register still holds v: no order explains both
    r = check(h)
    assert r.verdict == INVALID

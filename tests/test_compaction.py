"""Compaction and snapshots: the state machine's snapshot is the state at the call although
applies continue, snapshots hold the compacted state only, and etcd's auto-compaction flags
(revision and periodic modes) compact a real node's history."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest

from node.client import ClientError
from node.kv import KVStateMachine
from node.kv import apply as kv_apply
from node.kv.apply import OP_COMPACT, OP_DELETE, OP_PUT, OP_TXN, encode
from node.kv.mvcc import StoreReplaced
from node.kv.retention import Retention, RetentionError, go_duration, parse_retention
from node.pb import rpc_pb2
from tests.procs import NodeProcs

# etcd's exact texts (the spec: not imported from the code under test)
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"

Make = Callable[..., NodeProcs]


class Applier:
    """Feeds entries to a state machine with consecutive indexes, as the Raft node does."""

    def __init__(self, sm: KVStateMachine) -> None:
        self.sm = sm
        self.index = 0

    def __call__(self, op: int, msg: object) -> object:
        self.index += 1
        return self.sm.apply(self.index, encode(op, msg))

    def put(self, k: bytes, v: bytes) -> None:
        self(OP_PUT, rpc_pb2.PutRequest(key=k, value=v))


def _loaded(n_keys: int = 1500) -> tuple[KVStateMachine, Applier]:
    sm = KVStateMachine()
    ap = Applier(sm)
    rng = random.Random(7)
    for i in range(n_keys):
        ap.put(b"k%05d" % i, b"v0-%d" % i)
    for i in range(0, n_keys, 3):
        ap.put(b"k%05d" % i, b"v1-%d" % i)
    for i in range(0, n_keys, 7):
        ap(OP_DELETE, rpc_pb2.DeleteRangeRequest(key=b"k%05d" % i))
    # multi-key txns: the order of events within a revision must survive the snapshot
    for _ in range(20):
        a, b = rng.sample(range(n_keys), 2)
        t = rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k%05d" % b, value=b"tb")),
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k%05d" % a, value=b"ta")),
            ]
        )
        ap(OP_TXN, t)
    ap(OP_COMPACT, rpc_pb2.CompactionRequest(revision=sm.store.revision - 200))
    return sm, ap


def _state(sm: KVStateMachine) -> tuple[object, ...]:
    s = sm.store
    crev = s.compact_revision
    return (
        s.revision,
        crev,
        s.range(b"\x00", b"\x00"),
        s.events_since(crev + 1),
        sm.hash_kv(0),
        sorted((i, ls.ttl, sorted(ls.keys)) for i, ls in sm.leases.items()),
        sorted(sm.alarms),
        sm.consistent_index,
    )


async def test_snapshot_async_is_the_state_at_the_call_while_applies_continue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kv_apply, "STEP_BUDGET_S", 0.0)  # yield after every chunk of keys
    sm, ap = _loaded()
    expected = await sm.snapshot_async()  # the state at the call: nothing applies while it runs
    steps = 0
    applied_during = 0
    task = asyncio.get_running_loop().create_task(sm.snapshot_async())
    rng = random.Random(1)
    while not task.done():
        steps += 1
        # between the walk's chunks: overwrite keys before and after its cursor, add keys, delete
        # keys, grant a lease, compact further (the walk must still see the older versions)
        for _ in range(5):
            ap.put(b"k%05d" % rng.randrange(1500), b"late")
            ap.put(b"new%05d" % rng.randrange(100000), b"late")
        ap(OP_DELETE, rpc_pb2.DeleteRangeRequest(key=b"k%05d" % rng.randrange(1500)))
        if steps == 3:
            ap(OP_COMPACT, rpc_pb2.CompactionRequest(revision=sm.store.revision - 5))
            sm.store.trim_all()  # as fast as physical compaction could be: it must wait for the walk
            ap(kv_apply.OP_LEASE_GRANT, rpc_pb2.LeaseGrantRequest(ID=42, TTL=60))
        applied_during += 1
        await asyncio.sleep(0)
    got = task.result()
    assert steps > 5 and applied_during > 5, "the walk should have yielded between chunks"
    assert got == expected
    # and it restores to the same state as a synchronous snapshot
    a, b = KVStateMachine(), KVStateMachine()
    a.restore(got)
    b.restore(expected)
    assert _state(a) == _state(b)
    # the compaction applied during the walk is carried out once the walk is done
    for _ in range(200):
        if not sm.store.trim_pending():
            break
        await asyncio.sleep(0.01)
    assert not sm.store.trim_pending()


async def test_restore_during_snapshot_walk_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_apply, "STEP_BUDGET_S", 0.0)
    sm, _ = _loaded(600)
    other, _ = _loaded(10)
    blob = await other.snapshot_async()
    task = asyncio.get_running_loop().create_task(sm.snapshot_async())
    await asyncio.sleep(0)
    sm.restore(blob)
    with pytest.raises(StoreReplaced):
        await task


async def test_snapshot_holds_the_compacted_state_only_and_restores_old_format() -> None:
    sm = KVStateMachine()
    ap = Applier(sm)
    for i in range(300):
        ap.put(b"key%d" % (i % 10), b"x" * 200)
    before = await sm.snapshot_async()
    size_before = sm.db_size()
    ap(OP_COMPACT, rpc_pb2.CompactionRequest(revision=sm.store.revision))
    assert sm.store.trim_pending()  # on a loop, versions are dropped later, in steps
    after = await sm.snapshot_async()  # ...but the snapshot already holds only what compaction keeps
    assert len(after) < len(before) / 10
    r = KVStateMachine()
    r.restore(after)
    for _ in range(100):
        if not sm.store.trim_pending():
            break
        await asyncio.sleep(0.01)
    assert _state(r) == _state(sm)
    assert sm.db_size() < size_before / 10  # the counter follows physical compaction
    assert r.db_size() == sm.db_size()
    # a snapshot written by the previous release (a list, with the whole history) still restores
    old = KVStateMachine()
    import msgpack

    store = [
        sm.store.revision,
        0,
        [[b"a", [2, 3], [[2, 1, b"x", 0], [2, 2, b"y", 0]]]],
        [[2, [[0, [b"a", 2, 2, 1, b"x", 0], None]]], [3, [[0, [b"a", 2, 3, 2, b"y", 0], [b"a", 2, 2, 1, b"x", 0]]]]],
    ]
    old.restore(msgpack.packb([store, [[7, 30]], [[1, 1]], 9]))
    assert [kv.value for kv in old.store.range(b"a", b"")] == [b"y"]
    assert old.store.range(b"a", b"", 2)[0].value == b"x"
    assert 7 in old.leases and old.nospace() and old.consistent_index == 9
    assert len(old.store.events_since(2)) == 2


# -- the flags' values (node/kv/retention.py, shared by the node and the orchestrator) --------------


def test_parse_retention_as_etcd() -> None:
    P = parse_retention
    assert P("periodic", "1") == Retention("periodic", seconds=3600.0)  # a bare integer is hours
    assert P("revision", "1000") == Retention("revision", revisions=1000)
    assert P("periodic", "1h30m") == Retention("periodic", seconds=5400.0)
    assert P("periodic", " 90s ") == Retention("periodic", seconds=90.0)
    assert P("periodic", "1.5h").seconds == 5400.0
    assert P("periodic", ".5m").seconds == 30.0
    assert P("periodic", "250ms").seconds == 0.25
    assert P("periodic", "1m0.5s").seconds == 60.5
    assert not P("periodic", "0").enabled and not P("revision", "0").enabled
    assert P("periodic", "1s").enabled and P("revision", "1").enabled
    assert go_duration("2h") == 7200.0 and go_duration("") is None and go_duration("h") is None
    bad = [
        ("daily", "1", "--auto-compaction-mode must be periodic or revision"),
        ("periodic", "", "is not a number or a duration"),
        ("periodic", "1d", "is not a number or a duration"),
        ("periodic", "-1h", "is not a number or a duration"),
        ("periodic", "1h 30m", "is not a number or a duration"),
        ("periodic", "h1", "is not a number or a duration"),
        ("periodic", "\u00b2", "is not a number or a duration"),  # isdigit() but not a number
        ("revision", "5m", "revision mode takes a count of revisions"),
    ]
    for mode, value, msg in bad:
        with pytest.raises(RetentionError) as e:
            P(mode, value)
        assert msg in str(e.value) and "\n" not in str(e.value), (mode, value)


# -- auto-compaction on real nodes ------------------------------------------------------------------


async def _put_until_compacted(c: NodeProcs, deadline_s: float) -> tuple[int, int, float]:
    """Put for a while; returns (first revision written, compact revision seen, how long before it
    was seen the compact revision had been written)."""
    first, crev, age = 0, 0, 0.0
    written: list[tuple[float, int]] = []
    ep = c.endpoint("n1")
    async with c.client_for(["n1"]) as cl:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            rev = (await cl.put(b"ac", b"v%d" % time.monotonic_ns())).header.revision
            written.append((time.monotonic(), rev))
            first = first or rev
            crev = int((await cl.admin_status(ep))["compact_revision"])
            if crev > first:
                age = time.monotonic() - max(t for t, r in written if r <= crev)
                break
            await asyncio.sleep(0.02)
    return first, crev, age


async def test_auto_compaction_revision_mode(node_cluster: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUORUMLAB_COMPACTION_CHECK_INTERVAL", "0.3")
    c = node_cluster(1, extra=["--auto-compaction-mode", "revision", "--auto-compaction-retention", "20"])
    c.start_all()
    await c.wait_leader()
    first, crev, _ = await _put_until_compacted(c, 10.0)
    assert crev > first, "the leader should have compacted the history"
    st = (await c.statuses())["n1"]
    # revision mode keeps `retention` revisions: the compact revision trails the head by about that much
    assert int(st["revision"]) - crev >= 20
    async with c.client_for(["n1"]) as cl:
        with pytest.raises(ClientError) as ei:
            await cl.get(b"ac", revision=first)
        assert ERR_COMPACTED in str(ei.value)


async def test_auto_compaction_periodic_mode(node_cluster: Make) -> None:
    c = node_cluster(1, extra=["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"])
    c.start_all()
    await c.wait_leader()
    first, crev, age = await _put_until_compacted(c, 12.0)
    assert crev > first, "periodic compaction should have run within a few retention periods"
    # etcd compacts to the revision it sampled `retention` ago: younger history is kept
    assert age >= 1.5, f"compacted to a revision written only {age:.2f}s earlier"
    async with c.client_for(["n1"]) as cl:
        with pytest.raises(ClientError) as ei:
            await cl.get(b"ac", revision=first)
        assert ERR_COMPACTED in str(ei.value)

"""hypothesis stateful test: our KV state machine against a plain-Python model of etcd's semantics.

Random put / delete / txn / compact / past-revision reads / watches; every
response, revision and watch event must agree with the model.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.errors import EtcdError
from node.kv import KVStateMachine, WatchHub, WatchStream, reads
from node.kv.apply import OP_COMPACT, OP_DELETE, OP_PUT, OP_TXN, encode
from node.pb import rpc_pb2

# etcd's exact texts (the spec: not imported from the code under test)
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"

KEYS = [b"a", b"ab", b"b", b"ba", b"c"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"zz"])


@dataclass(frozen=True)
class MKV:
    value: bytes
    create: int
    mod: int
    version: int


class Model:
    def __init__(self) -> None:
        self.rev = 1
        self.compacted = 0
        self.states: dict[int, dict[bytes, MKV]] = {1: {}}
        self.events: list[tuple[int, int, bytes, bytes]] = []  # rev, type, key, value

    @property
    def cur(self) -> dict[bytes, MKV]:
        return self.states[self.rev]

    def write(self, changes: list[tuple[bytes, bytes | None]]) -> int:
        if not changes:
            return self.rev
        new = dict(self.cur)
        rev = self.rev + 1
        for k, v in changes:
            if v is None:
                new.pop(k, None)
                self.events.append((rev, 1, k, b""))
            else:
                old = new.get(k)
                new[k] = MKV(v, old.create if old else rev, rev, (old.version + 1) if old else 1)
                self.events.append((rev, 0, k, v))
        self.rev = rev
        self.states[rev] = new
        return rev


def in_range(k: bytes, start: bytes, end: bytes) -> bool:
    return k == start if not end else start <= k < end


# The production read path (node/kv/reads.py) as the API serves it: chunked, assembled as wire bytes.
def read_range(loop: asyncio.AbstractEventLoop, sm: KVStateMachine, r: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
    out = loop.run_until_complete(reads.read_range(sm, r))
    return rpc_pb2.RangeResponse.FromString(b"".join(out.parts(rpc_pb2.ResponseHeader(revision=out.revision))))


def read_txn(loop: asyncio.AbstractEventLoop, sm: KVStateMachine, t: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    out = loop.run_until_complete(reads.read_txn(sm, t))
    return rpc_pb2.TxnResponse.FromString(b"".join(out.parts(rpc_pb2.ResponseHeader(revision=out.revision))))


class KVMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sm = KVStateMachine()
        self.m = Model()
        self.index = 0
        self.hub = WatchHub(self.sm.store)
        self.got: list[tuple[int, int, bytes, bytes]] = []

        def send(b):  # type: ignore[no-untyped-def]
            for e in b.events:
                self.got.append((b.revision, e.type, e.kv.key, e.kv.value))
            return True

        self.stream = WatchStream(self.hub, send)
        self.stream.create(b"\x00", b"\x00", 1)  # every key, from the first revision
        self.loop = asyncio.new_event_loop()  # reads and snapshots are coroutines

    def teardown(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def apply(self, op: int, req: object) -> object:
        self.index += 1
        return self.sm.apply(self.index, encode(op, req))

    @rule(k=keys, v=values)
    def put(self, k: bytes, v: bytes) -> None:
        prev = self.m.cur.get(k)
        r = self.apply(OP_PUT, rpc_pb2.PutRequest(key=k, value=v, prev_kv=True))
        rev = self.m.write([(k, v)])
        assert isinstance(r, rpc_pb2.PutResponse)
        assert r.header.revision == rev
        assert r.HasField("prev_kv") == (prev is not None)
        if prev is not None:
            assert (r.prev_kv.value, r.prev_kv.mod_revision) == (prev.value, prev.mod)

    @rule(k=keys, prefix=st.booleans())
    def delete(self, k: bytes, prefix: bool) -> None:
        end = k[:-1] + bytes([k[-1] + 1]) if prefix else b""
        gone = sorted(x for x in self.m.cur if in_range(x, k, end))
        r = self.apply(OP_DELETE, rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=True))
        rev = self.m.write([(x, None) for x in gone])
        assert isinstance(r, rpc_pb2.DeleteRangeResponse)
        assert r.deleted == len(gone) and [kv.key for kv in r.prev_kvs] == gone
        assert r.header.revision == rev

    @rule(k=keys, expect=values, v=values, k2=keys)
    def txn(self, k: bytes, expect: bytes, v: bytes, k2: bytes) -> None:
        cur = self.m.cur.get(k)
        ok = cur is not None and cur.value == expect
        cmp = rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=expect)
        succ = [
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v)),
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k)),
        ]
        fail = [rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k2))]
        r = self.apply(OP_TXN, rpc_pb2.TxnRequest(compare=[cmp], success=succ, failure=fail))
        assert isinstance(r, rpc_pb2.TxnResponse)
        assert r.succeeded == ok
        if ok:
            rev = self.m.write([(k, v)])
            # a read inside the txn sees the txn's own write
            assert r.responses[1].response_range.kvs[0].value == v
        else:
            rev = self.m.write([(k2, None)] if k2 in self.m.cur else [])
        assert r.header.revision == rev

    @rule(k=keys)
    def version_compare_on_missing_key(self, k: bytes) -> None:
        # etcd: for a missing key, VERSION/CREATE/MOD compare against 0
        cmp = rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=0)
        r = read_txn(self.loop, self.sm, rpc_pb2.TxnRequest(compare=[cmp]))
        assert r.succeeded == (k not in self.m.cur)

    @rule(back=st.integers(0, 6))
    def compact(self, back: int) -> None:
        rev = self.m.rev - back
        r = self.apply(OP_COMPACT, rpc_pb2.CompactionRequest(revision=rev))
        if rev <= self.m.compacted:
            assert isinstance(r, EtcdError) and str(r) == ERR_COMPACTED
            return
        assert isinstance(r, rpc_pb2.CompactionResponse)
        self.m.compacted = rev

    @rule(k=keys, back=st.integers(-1, 8), limit=st.integers(0, 3), prefix=st.booleans())
    def range(self, k: bytes, back: int, limit: int, prefix: bool) -> None:
        rev = self.m.rev - back if back >= 0 else self.m.rev + 1
        end = b"\x00" if prefix else b""
        if rev <= 0:
            rev = 0  # etcd: revision <= 0 means the current one
        req = rpc_pb2.RangeRequest(key=k, range_end=end, revision=rev, limit=limit)
        if rev > self.m.rev:
            try:
                read_range(self.loop, self.sm, req)
            except EtcdError as e:
                assert str(e) == ERR_FUTURE_REV
                return
            raise AssertionError("future revision accepted")
        if 0 < rev < self.m.compacted:
            try:
                read_range(self.loop, self.sm, req)
            except EtcdError as e:
                assert str(e) == ERR_COMPACTED
                return
            raise AssertionError("compacted revision accepted")
        state = self.m.states[rev or self.m.rev]
        expect = sorted((x, y) for x, y in state.items() if (x >= k if prefix else x == k))
        r = read_range(self.loop, self.sm, req)
        assert r.count == len(expect)
        want = expect[:limit] if limit else expect
        assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs] == [
            (x, y.value, y.create, y.mod, y.version) for x, y in want
        ]
        assert r.more == (bool(limit) and len(expect) > limit)
        assert r.header.revision == self.m.rev

    @precondition(lambda self: self.m.rev > 1)
    @rule(back=st.integers(0, 5))
    def watch_from_past(self, back: int) -> None:
        start = max(1, self.m.rev - back)
        got: list[tuple[int, int, bytes]] = []

        def send(b):  # type: ignore[no-untyped-def]
            got.extend((b.revision, e.type, e.kv.key) for e in b.events)
            if b.canceled:
                got.append((-1, b.compact_revision, b""))
            return True

        ws = WatchStream(self.hub, send)
        ws.create(b"\x00", b"\x00", start)
        ws.close()
        if start < self.m.compacted:
            assert got == [(-1, self.m.compacted, b"")]
        else:
            # at the compacted revision itself only puts survive (etcd drops its tombstones)
            assert got == [
                (r, t, k) for r, t, k, _ in self.m.events if r >= start and not (r == self.m.compacted and t == 1)
            ]

    @invariant()
    def live_watch_saw_every_event_in_order(self) -> None:
        assert self.got == self.m.events

    @invariant()
    def snapshot_roundtrip(self) -> None:
        if self.index % 7 == 3:
            other = KVStateMachine()
            other.restore(self.loop.run_until_complete(self.sm.snapshot_async()))
            assert other.store.revision == self.sm.store.revision
            assert other.store.range(b"\x00", b"\x00") == self.sm.store.range(b"\x00", b"\x00")
            # the watch history is rebuilt from the versions, in each request's own order
            crev = self.sm.store.compact_revision
            assert other.store.compact_revision == crev
            assert other.store.events_since(crev + 1) == self.sm.store.events_since(crev + 1)
            # at the compact revision itself the previous versions are gone (etcd has no prev_kv there either)
            assert [(r, [(e.type, e.kv) for e in evs]) for r, evs in other.store.events_since(crev)] == [
                (r, [(e.type, e.kv) for e in evs]) for r, evs in self.sm.store.events_since(crev)
            ]
            assert other.hash_kv(0) == self.sm.hash_kv(0)


KVMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_kv_against_model = KVMachine.TestCase


# -- chunked reads (node/kv/reads.py) give exactly the replies of the same reads inside an applied
# -- Txn (the other production read path: a Range in a Txn must answer as a plain Range) -----------


def _chunked_store() -> KVStateMachine:
    sm = KVStateMachine()
    idx = 0
    for i in range(1200):  # several chunks of keys
        idx += 1
        sm.apply(idx, encode(OP_PUT, rpc_pb2.PutRequest(key=b"k%04d" % i, value=b"v%d" % (i * 7 % 13))))
    for i in range(0, 1200, 5):
        idx += 1
        sm.apply(idx, encode(OP_PUT, rpc_pb2.PutRequest(key=b"k%04d" % i, value=b"w%d" % (i % 11))))
    for i in range(0, 1200, 9):
        idx += 1
        sm.apply(idx, encode(OP_DELETE, rpc_pb2.DeleteRangeRequest(key=b"k%04d" % i)))
    return sm


def _applied_txn(sm: KVStateMachine, t: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    """t applied through the log path (read-only, so nothing changes but the applied index)."""
    rev = sm.store.revision
    resp = sm.apply(sm.consistent_index + 1, encode(OP_TXN, t))
    assert isinstance(resp, rpc_pb2.TxnResponse) and sm.store.revision == rev
    return resp


def _range_requests() -> list[rpc_pb2.RangeRequest]:
    R = rpc_pb2.RangeRequest
    out = [
        R(key=b"k", range_end=b"l"),
        R(key=b"\x00", range_end=b"\x00"),
        R(key=b"k0100", range_end=b"\x00", limit=300),
        R(key=b"k0005"),
        R(key=b"k0009"),  # deleted
        R(key=b"k", range_end=b"l", revision=1500),  # a past revision
        R(key=b"k", range_end=b"l", keys_only=True),
        R(key=b"k", range_end=b"l", count_only=True),
        R(key=b"k", range_end=b"l", min_mod_revision=1300, max_create_revision=900),
        R(key=b"k", range_end=b"l", min_create_revision=50, max_mod_revision=1250),
    ]
    for target in (R.KEY, R.VERSION, R.CREATE, R.MOD, R.VALUE):
        for order in (R.NONE, R.ASCEND, R.DESCEND):
            out.append(R(key=b"k", range_end=b"l", sort_target=target, sort_order=order, limit=700))
    return out


def test_chunked_range_matches_range_in_txn() -> None:
    sm = _chunked_store()
    loop = asyncio.new_event_loop()
    try:
        got_all = [read_range(loop, sm, r) for r in _range_requests()]
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    for r, got in zip(_range_requests(), got_all, strict=True):
        applied = _applied_txn(sm, rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=r)]))
        want = applied.responses[0].response_range
        if r.sort_order == r.NONE or r.sort_target == r.KEY:
            assert got == want, r
        else:  # ties in the sort key may come in any order, as etcd's
            assert (got.count, got.more, len(got.kvs)) == (want.count, want.more, len(want.kvs)), r
            key = {r.VERSION: "version", r.CREATE: "create_revision", r.MOD: "mod_revision", r.VALUE: "value"}
            f = key[r.sort_target]
            assert [getattr(kv, f) for kv in got.kvs] == [getattr(kv, f) for kv in want.kvs], r
            assert sorted(kv.key for kv in got.kvs) == sorted(kv.key for kv in want.kvs) or r.limit, r


def test_chunked_read_txn_matches_applied_txn() -> None:
    sm = _chunked_store()
    ranges = [rpc_pb2.RequestOp(request_range=r) for r in _range_requests()[:10]]
    cmp_true = rpc_pb2.Compare(key=b"k0001", target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=1)
    cmp_false = rpc_pb2.Compare(key=b"k0000", target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=9)
    nested = rpc_pb2.TxnRequest(compare=[cmp_false], success=ranges[:2], failure=ranges[2:5])
    for t in (
        rpc_pb2.TxnRequest(compare=[cmp_true], success=ranges, failure=ranges[:1]),
        rpc_pb2.TxnRequest(
            compare=[cmp_false], success=ranges, failure=[*ranges[5:], rpc_pb2.RequestOp(request_txn=nested)]
        ),
        rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_txn=nested), *ranges[:3]]),
        rpc_pb2.TxnRequest(),
    ):
        out = asyncio.run(reads.read_txn(sm, t))
        got = rpc_pb2.TxnResponse.FromString(b"".join(out.parts(rpc_pb2.ResponseHeader(revision=sm.store.revision))))
        want = _applied_txn(sm, t)

        def etcd_headers(resp: rpc_pb2.TxnResponse) -> None:
            for op in resp.responses:  # etcd: a nested txn's header is present and empty
                if op.WhichOneof("response") == "response_txn":
                    op.response_txn.header.SetInParent()
                    etcd_headers(op.response_txn)

        etcd_headers(want)
        assert got == want


# -- big reads and snapshots hold the loop only in short steps ----------------------------------------
# CPU time of this thread between two turns of a ticker task: what a step cost the event loop. It does
# not count time spent waiting for a CPU, so unlike wall-clock stalls it does not depend on the load
# of the machine. The old blocking Range (and the old synchronous snapshot) held the loop for the
# whole read: ~70 ms of CPU for this store, ~180 ms for 51k keys.
MAX_STEP_CPU_S = 0.02


def _big_store(n: int = 40_000) -> KVStateMachine:
    sm = KVStateMachine()
    for t in range(n // 128):
        ops = [
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"big/%05d" % (t * 128 + i), value=b"v" * 200))
            for i in range(128)
        ]
        sm.apply(t + 1, encode(OP_TXN, rpc_pb2.TxnRequest(success=ops)))
    return sm


async def _max_step_cpu(make: Callable[[], Coroutine[Any, Any, object]]) -> tuple[float, int]:
    last, worst, turns = time.thread_time(), 0.0, 0
    task = asyncio.get_running_loop().create_task(make())
    while not task.done():
        await asyncio.sleep(0)
        now = time.thread_time()
        worst, last, turns = max(worst, now - last), now, turns + 1
    task.result()
    return worst, turns


def test_big_reads_and_snapshots_hold_the_loop_in_short_steps() -> None:
    sm = _big_store()
    R = rpc_pb2.RangeRequest
    whole = R(key=b"big/", range_end=b"big0")
    by_value = R(key=b"big/", range_end=b"big0", sort_target=R.VALUE, sort_order=R.DESCEND)
    txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=whole)] * 2)
    cases: list[tuple[str, Callable[[], Coroutine[Any, Any, object]]]] = [
        ("range", lambda: reads.read_range(sm, whole)),
        ("sorted range", lambda: reads.read_range(sm, by_value)),
        ("read-only txn", lambda: reads.read_txn(sm, txn)),
        ("snapshot", sm.snapshot_async),  # its call fixes the state: counted too
    ]
    loop = asyncio.new_event_loop()
    gc.collect()
    gc.disable()  # a full collection of this big heap would be a pause of the interpreter, not of a step
    try:
        for name, make in cases:
            worst, turns = loop.run_until_complete(_max_step_cpu(make))
            assert worst < MAX_STEP_CPU_S, f"{name}: one step held the loop for {worst * 1000:.0f} ms of CPU"
            assert turns > 10, f"{name}: done in {turns} turns of the loop"
    finally:
        gc.enable()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

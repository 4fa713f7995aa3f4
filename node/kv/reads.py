"""Large reads that never hold the event loop for more than a couple of milliseconds.

A Range (or a read-only Txn) is read at a fixed revision in chunks of keys, yielding to the
loop between them (the revision is pinned, so physical compaction keeps what it reads), and
its reply is serialized chunk by chunk into protobuf wire bytes: a message's wire form is the
concatenation of its fields' wire forms, so a RangeResponse is its header, count and more
fields followed by one piece per chunk of key-values. The gRPC layer sends the bytes as they are.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from node.pb import rpc_pb2

from .apply import STEP_BUDGET_S, KVStateMachine, sort_key, to_pb
from .mvcc import KV, StoreReplaced

KEYS_PER_CHUNK = 256
INLINE_SORT = 2000  # sort larger results on a worker thread (the key function is Python code)


@dataclass
class RangeOut:
    revision: int  # the store revision the read saw (the header's)
    count: int
    more: bool
    kvs: list[bytes]  # RangeResponse wire pieces that carry only `kvs`

    def parts(self, header: rpc_pb2.ResponseHeader) -> list[bytes]:
        head = rpc_pb2.RangeResponse(header=header, count=self.count, more=self.more).SerializeToString()
        return [head, *self.kvs]


@dataclass
class TxnOut:
    revision: int
    succeeded: bool
    ops: list[RangeOut | TxnOut] = field(default_factory=list)

    def parts(self, header: rpc_pb2.ResponseHeader) -> list[bytes]:
        """TxnResponse wire pieces. As etcd's: a nested txn's header is empty and a range's header
        carries only the revision."""
        out = [rpc_pb2.TxnResponse(header=header, succeeded=self.succeeded).SerializeToString()]
        range_header = rpc_pb2.ResponseHeader(revision=self.revision)
        for op in self.ops:
            body = op.parts(range_header if isinstance(op, RangeOut) else rpc_pb2.ResponseHeader())
            # ResponseOp: response_range is field 1, response_txn field 4 (length-delimited)
            item = [_key(1 if isinstance(op, RangeOut) else 4), _varint(_size(body)), *body]
            out += [_key(3), _varint(_size(item)), *item]  # TxnResponse.responses is field 3
        return out


def _size(parts: list[bytes]) -> int:
    return sum(len(p) for p in parts)


def _key(field_no: int) -> bytes:
    return _varint(field_no << 3 | 2)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Clock:
    """Yields to the loop once the current step has used its budget."""

    def __init__(self, sm: KVStateMachine) -> None:
        self.sm = sm
        self.gen = sm.store.generation
        self.t0 = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self.t0 >= STEP_BUDGET_S:
            await asyncio.sleep(0)
            if self.sm.store.generation != self.gen:
                raise StoreReplaced("the store was replaced by a snapshot during the read")
            self.t0 = time.perf_counter()


async def _range(sm: KVStateMachine, r: rpc_pb2.RangeRequest, rev: int, header_rev: int, clock: _Clock) -> RangeOut:
    """Read r at rev (already checked and pinned by the caller), in chunks."""
    s = sm.store
    kvs: list[KV] = []
    after: bytes | None = None
    lo_mod, hi_mod, lo_create, hi_create = (
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    )
    filtered = lo_mod or hi_mod or lo_create or hi_create
    while True:
        chunk, after = s.range_chunk(r.key, r.range_end, rev, after, KEYS_PER_CHUNK)
        if filtered:
            chunk = [
                kv
                for kv in chunk
                if (not lo_mod or kv.mod_revision >= lo_mod)
                and (not hi_mod or kv.mod_revision <= hi_mod)
                and (not lo_create or kv.create_revision >= lo_create)
                and (not hi_create or kv.create_revision <= hi_create)
            ]
        kvs.extend(chunk)
        if after is None:
            break
        await clock.tick()
    order, target = r.sort_order, r.sort_target
    if order == rpc_pb2.RangeRequest.NONE and target != rpc_pb2.RangeRequest.KEY:
        order = rpc_pb2.RangeRequest.ASCEND
    if target == rpc_pb2.RangeRequest.KEY:
        if order == rpc_pb2.RangeRequest.DESCEND:
            kvs.reverse()  # already in key order
    elif order != rpc_pb2.RangeRequest.NONE:
        rev_order = order == rpc_pb2.RangeRequest.DESCEND
        if len(kvs) > INLINE_SORT:  # our own list of immutable key-values: safe on a thread
            kvs = await asyncio.to_thread(sorted, kvs, key=sort_key(target), reverse=rev_order)
        else:
            kvs = sorted(kvs, key=sort_key(target), reverse=rev_order)
    out = RangeOut(header_rev, len(kvs), False, [])
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[: r.limit]
        out.more = True
    if not r.count_only:
        for i in range(0, len(kvs), KEYS_PER_CHUNK):
            msg = rpc_pb2.RangeResponse(kvs=[to_pb(kv, r.keys_only) for kv in kvs[i : i + KEYS_PER_CHUNK]])
            out.kvs.append(msg.SerializeToString())
            await clock.tick()
    return out


async def read_range(sm: KVStateMachine, r: rpc_pb2.RangeRequest) -> RangeOut:
    """A Range at the revision current when called (or r.revision), read without blocking the loop."""
    while True:
        s = sm.store
        cur = s.revision
        rev = s.check_rev(r.revision)
        try:
            with s.pinned(rev):
                return await _range(sm, r, rev, cur, _Clock(sm))
        except StoreReplaced:
            continue  # a follower installed a snapshot meanwhile: read the new state


def _plan(sm: KVStateMachine, t: rpc_pb2.TxnRequest, cur: int, revs: list[int]) -> list[Any]:
    """Evaluate the compares now (synchronously, at the current revision) and pick each range's
    revision: returns [succeeded, [(range request, rev) | nested plan, ...]]."""
    txn = sm.store.begin()  # nothing is written
    ok = all(sm._compare(txn, c) for c in t.compare)
    ops: list[Any] = []
    for op in t.success if ok else t.failure:
        which = op.WhichOneof("request")
        if which == "request_range":
            rev = sm.store.check_rev(op.request_range.revision)
            revs.append(rev)
            ops.append((op.request_range, rev))
        elif which == "request_txn":
            ops.append(_plan(sm, op.request_txn, cur, revs))
    return [ok, ops]


async def _run_plan(sm: KVStateMachine, plan: list[Any], cur: int, clock: _Clock) -> TxnOut:
    ok, ops = plan
    out = TxnOut(cur, ok)
    for op in ops:
        if isinstance(op, tuple):
            out.ops.append(await _range(sm, op[0], op[1], cur, clock))
        else:
            out.ops.append(await _run_plan(sm, op, cur, clock))
    return out


async def read_txn(sm: KVStateMachine, t: rpc_pb2.TxnRequest) -> TxnOut:
    """A read-only Txn: compares and ranges all see the revision current when called."""
    while True:
        s = sm.store
        cur = s.revision
        revs = [cur]
        plan = _plan(sm, t, cur, revs)
        try:
            with s.pinned(min(revs)):
                return await _run_plan(sm, plan, cur, _Clock(sm))
        except StoreReplaced:
            continue

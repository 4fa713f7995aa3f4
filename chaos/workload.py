"""A background workload that records a history, of one of two kinds, and optionally watch streams.

* ``register``: put / get / compare-and-set on hot keys plus unique keys (checked by chaos.checker).
* ``append``: transactions over list-valued keys ``a/N`` (checked by chaos.elle). Each transaction
  reads every key it touches in one read-only Txn (one revision), then commits its appends in ONE
  Txn guarded by ``mod_revision`` compares on all those keys: if any changed, nothing is written
  and it retries. Committed, it is serializable at its commit revision; appended values are unique.
* ``watch``: one watch stream per node on the workload's keys (chaos.watcher; checked by
  chaos.watchcheck).

Each client is pinned to one node (so a partition affects the clients on its
side), issues one operation at a time, and records invoke and completion.
Errors are classified conservatively: only a refusal that certainly happened
before the request was proposed is ``fail``; a timeout or a broken connection
mid-request is ``info`` — the write may still be applied later.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

from node.client import Client, ClientError, ClientTLS, Reason
from node.pb import rpc_pb2

from .history import APPEND, FAIL, INFO, OK, REGISTER, FinalRead, MicroOp, Op, WatchRecord, parse_list
from .watcher import Watcher, compact_revision

# refused before proposing: nothing was applied. (STOPPED and LEADER_CHANGED are NOT here: a
# stopping node fails proposals that may already be committed; nor is any timeout, nor a text
# the client does not know, UNKNOWN.)
_CERTAIN_FAIL = frozenset(
    {
        Reason.UNREACHABLE,  # never reached the server (node.client decides which errors say so)
        Reason.NO_LEADER,
        Reason.NOT_LEADER,
        Reason.TOO_MANY_REQUESTS,
        Reason.KEY_NOT_PROVIDED,
        Reason.REQUEST_TOO_LARGE,
        Reason.NO_SPACE,  # NOSPACE: refused before proposing, or applied as a refusal by every member
    }
)


def classify(e: ClientError, is_write: bool) -> str:
    if not is_write:
        return FAIL  # a read that failed changed nothing
    return FAIL if e.reason in _CERTAIN_FAIL else INFO


class _Phase(Exception):
    """A transaction's read or write failed: which one decides whether its outcome is unknown."""

    def __init__(self, err: ClientError, is_write: bool) -> None:
        super().__init__(str(err))
        self.err, self.is_write = err, is_write


@dataclass
class Sample:
    t: float
    latency: float
    ok: bool
    kind: str


@dataclass
class Workload:
    endpoints: dict[str, str]  # node name -> host:port
    clients: int = 8
    hot_keys: int = 3
    timeout: float = 1.0
    rate: float = 0.0  # per-client ops/s; 0 = as fast as possible
    seed: int = 0
    t0: float = field(default_factory=time.monotonic)
    tls: ClientTLS | None = None  # the cluster's (Cluster.tls) when its client ports speak TLS
    kind: str = REGISTER  # register | append
    watch: bool = False  # keep a watch stream open on every node
    guard: bool = True  # append: the mod_revision compares (off only to show the checker catches it)
    history: list[Op] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    watch_log: list[WatchRecord] = field(default_factory=list)
    final_kvs: FinalRead | None = None

    def __post_init__(self) -> None:
        self._ids = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random(self.seed)
        self._unique = itertools.count()
        self._values = itertools.count(1)  # append: every appended value is unique in the run

    @property
    def prefix(self) -> str:
        """The keys the transactions / hot registers live under (what the watches cover)."""
        return "a/" if self.kind == APPEND else "hot/"

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def start_watches(self, attempts: int = 20) -> None:
        """Open one stream per node from the current revision + 1, before any write is issued."""
        if not self.watch:
            return
        rev = 0
        async with Client(list(self.endpoints.values()), timeout=3.0, tls=self.tls) as cl:
            for _ in range(attempts):
                try:
                    rev = (await cl.get(self.prefix, prefix=True, keys_only=True)).header.revision
                    break
                except ClientError:
                    await asyncio.sleep(0.25)
        w = Watcher(self.endpoints, self.prefix, self.watch_log, self.tls, self.t0, self._stop)
        self._tasks += w.start(rev + 1)

    def start(self) -> None:
        names = sorted(self.endpoints)
        for c in range(self.clients):
            node = names[c % len(names)]
            self._tasks.append(asyncio.get_running_loop().create_task(self._client(c, node)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, cid: int, node: str) -> None:
        rng = random.Random(self.seed * 1000 + cid)
        async with Client([self.endpoints[node]], timeout=self.timeout, tls=self.tls) as cl:
            while not self._stop.is_set():
                ok = await self._one(cl, cid, node, rng)
                if not ok:
                    await asyncio.sleep(0.05)  # a down or leaderless node: retry, but do not spin
                elif self.rate:
                    await asyncio.sleep(rng.expovariate(self.rate))

    async def _one(self, cl: Client, cid: int, node: str, rng: random.Random) -> bool:
        if self.kind == APPEND:
            return await self._txn(cl, cid, node, rng)
        r = rng.random()
        oid = next(self._ids)
        if r < 0.15:
            key = f"u/{cid}/{next(self._unique)}"  # written once: checked for loss at the end
            op = Op(oid, cid, "put", key, value=f"{cid}-{oid}", node=node)
        else:
            key = f"hot/{rng.randrange(self.hot_keys)}"
            if r < 0.45:
                op = Op(oid, cid, "put", key, value=f"{cid}-{oid}", node=node)
            elif r < 0.85:
                op = Op(oid, cid, "get", key, node=node)
            else:
                expect = rng.choice([None, *[op.value for op in self.history[-20:] if op.key == key and op.value]])
                op = Op(oid, cid, "cas", key, value=f"{cid}-{oid}", expect=expect, node=node)
        op.invoke = self.now()
        self.history.append(op)
        try:
            if op.kind == "put":
                resp = await cl.put(op.key, op.value or "")
                op.revision = resp.header.revision
            elif op.kind == "get":
                g = await cl.get(op.key)
                op.value = g.kvs[0].value.decode() if g.kvs else None
                op.revision = g.header.revision
            else:
                op.succeeded = await cl.cas(
                    op.key, op.expect.encode() if op.expect is not None else None, (op.value or "").encode()
                )
            op.outcome = OK
            op.complete = self.now()
        except ClientError as e:
            op.outcome = classify(e, op.kind != "get")
            op.error = str(e)[:200]
            op.complete = self.now() if op.outcome == FAIL else None
            if op.kind == "get":
                op.value = None
        self.samples.append(Sample(op.invoke, (op.complete or self.now()) - op.invoke, op.outcome == OK, op.kind))
        return op.outcome == OK

    # -- append: list-valued keys, one guarded Txn per transaction --------------------------------
    def _plan(self, rng: random.Random) -> list[MicroOp]:
        mops: list[MicroOp] = []
        for _ in range(rng.randint(1, 4)):
            key = f"a/{rng.randrange(self.hot_keys)}"
            if rng.random() < 0.5:
                mops.append(["r", key, None])
            else:
                mops.append(["append", key, next(self._values)])
        return mops

    async def _txn(self, cl: Client, cid: int, node: str, rng: random.Random) -> bool:
        op = Op(next(self._ids), cid, "txn", "", node=node, mops=self._plan(rng))
        op.invoke = self.now()
        self.history.append(op)
        try:
            for _ in range(5):  # a compare that failed wrote nothing: read again and retry
                done = await self._txn_once(cl, op)
                if done:
                    op.outcome = OK
                    break
            else:
                op.outcome, op.error = FAIL, "mod_revision compare failed 5 times"
            op.complete = self.now()
        except _Phase as p:
            op.outcome = classify(p.err, p.is_write)
            op.error = str(p.err)[:200]
            op.complete = self.now() if op.outcome == FAIL else None
        if op.outcome != OK:
            for m in op.mops or []:
                if m[0] == "r":
                    m[2] = None  # what a transaction that did not (certainly) happen read tells nothing
        self.samples.append(Sample(op.invoke, (op.complete or self.now()) - op.invoke, op.outcome == OK, "txn"))
        return op.outcome == OK

    async def _txn_once(self, cl: Client, op: Op) -> bool:
        """Read every key of the transaction at one revision, then commit iff none has changed since."""
        keys = sorted({m[1] for m in op.mops or []})
        read = rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k.encode())) for k in keys]
        )
        try:
            r = await cl.txn(read)
        except ClientError as e:
            raise _Phase(e, is_write=False) from None
        lists: dict[str, list[int]] = {}
        mods: dict[str, int] = {}
        for k, resp in zip(keys, r.responses, strict=True):
            kvs = resp.response_range.kvs
            lists[k] = parse_list(kvs[0].value.decode()) if kvs else []
            mods[k] = kvs[0].mod_revision if kvs else 0
        state = {k: list(v) for k, v in lists.items()}
        for m in op.mops or []:
            if m[0] == "r":
                m[2] = list(state[m[1]])
            else:
                state[m[1]].append(m[2])
        written = [k for k in keys if state[k] != lists[k]]
        if not written:
            op.revision = r.header.revision
            return True
        cmp = [
            rpc_pb2.Compare(
                key=k.encode(), target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=mods[k]
            )
            for k in keys
        ]
        puts = [
            rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=k.encode(), value=",".join(map(str, state[k])).encode())
            )
            for k in written
        ]
        try:
            w = await cl.txn(rpc_pb2.TxnRequest(compare=cmp if self.guard else [], success=puts))
        except ClientError as e:
            raise _Phase(e, is_write=True) from None
        if w.succeeded:
            op.revision = w.header.revision
        return bool(w.succeeded)

    async def final_read(self, endpoints: list[str], attempts: int = 20) -> dict[str, str | None] | None:
        """Read every key after healing (kept in final_kvs); the unique keys' values, None if no answer."""
        keys = {op.key for op in self.history if op.key.startswith("u/")}
        async with Client(endpoints, timeout=3.0, tls=self.tls) as cl:
            for _ in range(attempts):
                try:
                    r = await cl.get("", prefix=True)
                    got = {kv.key.decode(): kv.value.decode() for kv in r.kvs}
                    self.final_kvs = FinalRead(
                        r.header.revision,
                        {kv.key.decode(): (kv.value.decode(), kv.mod_revision) for kv in r.kvs},
                        (await compact_revision(endpoints, self.tls) or 0) if self.watch else 0,
                    )
                    return {k: got.get(k) for k in keys}
                except ClientError:
                    await asyncio.sleep(0.5)
        return None

    def stats(self) -> dict[str, float]:
        ok = [s for s in self.samples if s.ok]
        lat = sorted(s.latency for s in ok)
        dur = max(self.now(), 1e-9)
        return {
            "operations": len(self.history),
            "ok": len(ok),
            "fail": sum(1 for o in self.history if o.outcome == FAIL),
            "info": sum(1 for o in self.history if o.outcome == INFO),
            "ops_per_s": round(len(ok) / dur, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else 0.0,
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2) if lat else 0.0,
        }

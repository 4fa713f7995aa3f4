"""A background workload that records a history: put / get / compare-and-set on hot keys plus unique keys.

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

from .history import FAIL, INFO, OK, Op

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
    history: list[Op] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random(self.seed)
        self._unique = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.t0

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

    async def final_read(self, endpoints: list[str], attempts: int = 20) -> dict[str, str | None] | None:
        """Read every unique key after healing; None if the cluster never answered."""
        keys = {op.key for op in self.history if op.key.startswith("u/")}
        async with Client(endpoints, timeout=3.0, tls=self.tls) as cl:
            for _ in range(attempts):
                try:
                    r = await cl.get("u/", prefix=True)
                    got = {kv.key.decode(): kv.value.decode() for kv in r.kvs}
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

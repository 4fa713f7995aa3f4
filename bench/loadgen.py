"""The load generator: etcd v3 gRPC calls from asyncio + grpc.aio, spread over worker processes.

One Python process tops out near one core of gRPC work, which is less than etcd can serve, so
`run_load` starts --procs workers (`python -m bench.loadgen`), each with a few shared channels and
its share of the clients. Workers wait for a common start time (so connecting is not measured),
run for a fixed duration, and write one JSON line (counts and latencies in µs) to stdout: no
pickling, nothing but JSON crosses a pipe. The parent merges them.

Ops: put, get (linearizable), sget (serializable), txn (compare the value, then put, else get).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPS = ("put", "get", "sget", "txn")
KEYSPACE = 1000
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, not one shared per target
]
REPO = Path(__file__).resolve().parent.parent


@dataclass
class LoadResult:
    """Merged outcome of one load phase: counts, wall seconds, and every latency in µs."""

    op: str
    clients: int
    ops: int = 0
    errors: int = 0
    seconds: float = 0.0
    lat_us: list[int] = field(default_factory=list)
    first_error: str = ""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def pct_ms(self, p: float) -> float:
        """The p-th percentile latency in ms (nearest rank), nan with no samples."""
        if not self.lat_us:
            return float("nan")
        s = sorted(self.lat_us)
        return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000.0

    def summary(self) -> dict[str, Any]:
        s = sorted(self.lat_us)

        def at(p: float) -> float:
            return round(s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000.0, 3) if s else float("nan")

        return {
            "op": self.op,
            "clients": self.clients,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": at(50),
            "p90_ms": at(90),
            "p99_ms": at(99),
            "max_ms": round(s[-1] / 1000.0, 3) if s else float("nan"),
            "first_error": self.first_error,
        }


def key_of(i: int) -> bytes:
    return b"bench/k%06d" % (i % KEYSPACE)


async def _worker_async(
    endpoints: list[str], op: str, clients: int, seconds: float, size: int, seed: int, start_at: float
) -> dict[str, Any]:
    import grpc

    from node.pb import rpc_pb2, rpc_pb2_grpc

    value = (os.urandom(size // 2 + 1).hex().encode())[:size]
    nchan = max(1, min(clients, 2 * len(endpoints)))
    chans = [grpc.aio.insecure_channel(endpoints[i % len(endpoints)], options=CHANNEL_OPTIONS) for i in range(nchan)]
    stubs = [rpc_pb2_grpc.KVStub(ch) for ch in chans]
    for ch in chans:
        await asyncio.wait_for(ch.channel_ready(), 10)
    lat: list[int] = []
    errors = 0
    first_error = ""
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    t_start = time.perf_counter()
    stop = t_start + seconds

    def request(k: bytes) -> tuple[Any, Any]:
        if op == "put":
            return "Put", rpc_pb2.PutRequest(key=k, value=value)
        if op in ("get", "sget"):
            return "Range", rpc_pb2.RangeRequest(key=k, serializable=op == "sget")
        cmp = rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=value)
        return "Txn", rpc_pb2.TxnRequest(
            compare=[cmp],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))],
        )

    # requests are built once per key, so the loop measures the call, not protobuf construction
    reqs = [request(key_of(i)) for i in range(KEYSPACE)]

    async def client(i: int) -> None:
        nonlocal errors, first_error
        stub = stubs[i % len(stubs)]
        calls = {name: getattr(stub, name) for name in ("Put", "Range", "Txn")}
        k = (seed * 7919 + i * 131) % KEYSPACE
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= stop:
                return
            name, req = reqs[k]
            k = (k + 1) % KEYSPACE
            try:
                await calls[name](req, timeout=10)
            except grpc.aio.AioRpcError as e:
                errors += 1
                if not first_error:
                    first_error = f"{e.code().name}: {e.details()}"
                await asyncio.sleep(0.01)
                continue
            lat.append(int((perf() - t0) * 1e6))

    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.perf_counter() - t_start
    for ch in chans:
        await ch.close()
    return {"ops": len(lat), "errors": errors, "seconds": took, "lat_us": lat, "first_error": first_error}


def procs_for(clients: int, procs: int) -> int:
    """Never more worker processes than clients."""
    return max(1, min(procs, clients))


async def run_load_async(
    endpoints: list[str], op: str, clients: int, seconds: float, size: int = 256, procs: int = 2
) -> LoadResult:
    """Run one phase across worker processes and merge their JSON; a worker that fails raises RuntimeError.

    Cancelled (Ctrl-C), it kills its workers before returning.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: one of {', '.join(OPS)}")
    n = procs_for(clients, procs)
    shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
    start_at = time.time() + 0.6 + 0.15 * n  # room to import grpc and connect before the clock starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    workers: list[asyncio.subprocess.Process] = []
    out = LoadResult(op=op, clients=clients)
    try:
        for i, share in enumerate(shares):
            arg = json.dumps([endpoints, op, share, seconds, size, i, start_at])
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    arg,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=REPO,
                )
            )
        results = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), seconds + 60)
        for w, (so, se) in zip(workers, results, strict=True):
            if w.returncode != 0:
                tail = se.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"load worker exited {w.returncode}: {tail[0]}")
            part = json.loads(so)
            out.ops += part["ops"]
            out.errors += part["errors"]
            out.seconds = max(out.seconds, part["seconds"])
            out.lat_us.extend(part["lat_us"])
            out.first_error = out.first_error or part["first_error"]
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    return out


def run_load(
    endpoints: list[str], op: str, clients: int, seconds: float, size: int = 256, procs: int = 2
) -> LoadResult:
    """`run_load_async` for callers without an event loop."""
    return asyncio.run(run_load_async(endpoints, op, clients, seconds, size, procs))


def _main() -> None:
    """Worker entry: one JSON argument in, one JSON line out."""
    if len(sys.argv) == 2 and sys.argv[1].startswith("["):
        endpoints, op, clients, seconds, size, seed, start_at = json.loads(sys.argv[1])
        res = asyncio.run(_worker_async(endpoints, op, clients, seconds, size, seed, start_at))
        sys.stdout.write(json.dumps(res))
        return
    ap = argparse.ArgumentParser(description="drive an etcd v3 endpoint list and print the summary")
    ap.add_argument("--endpoints", required=True, help="host:port,host:port")
    ap.add_argument("--op", choices=OPS, default="put")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    r = run_load(a.endpoints.split(","), a.op, a.clients, a.seconds, a.value_size, a.procs)
    print(json.dumps(r.summary()))


if __name__ == "__main__":
    _main()

"""Put and linearizable-get throughput and latency: quorumlab vs real etcd, one load tool, one run.

Each operation is an etcd v3 gRPC call from our async client (the same tool for
both engines): --clients concurrent requests in flight, --value-size bytes,
--seconds per phase, spread over --procs load processes. Puts are committed
proposals (fsync'd on a quorum before the reply).

    python -m bench.kvload --clients 64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import time
from typing import Any

from node.client import Client, ClientError, ClientTLS

from .common import cluster, pct


async def _load(
    endpoints: list[str], op: str, clients: int, seconds: float, size: int, seed: int, tls: ClientTLS | None
) -> dict[str, Any]:
    value = os.urandom(size // 2).hex().encode()[:size]
    lat: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    conns = [Client([endpoints[i % len(endpoints)]], timeout=5.0, tls=tls) for i in range(min(clients, 8))]

    async def worker(i: int) -> None:
        nonlocal errors
        c = conns[i % len(conns)]
        k = 0
        while time.monotonic() < stop_at:
            key = f"bench/{seed}/{i}/{k % 100}"
            t0 = time.perf_counter()
            try:
                if op == "put":
                    await c.put(key, value)
                else:
                    await c.get(key)
                lat.append(time.perf_counter() - t0)
            except ClientError:
                errors += 1
            k += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    el = time.monotonic() - t0
    for c in conns:
        await c.close()
    return {"ops": len(lat), "seconds": el, "lat": lat, "errors": errors}


def _proc(args: tuple[list[str], str, int, float, int, int, ClientTLS | None]) -> dict[str, Any]:
    return asyncio.run(_load(*args))


def run_phase(
    endpoints: list[str], op: str, clients: int, seconds: float, size: int, procs: int, tls: ClientTLS | None = None
) -> dict[str, Any]:
    per = max(1, clients // procs)
    jobs = [(endpoints, op, per, seconds, size, i, tls) for i in range(procs)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.map(_proc, jobs)
    lat = [x for p in parts for x in p["lat"]]
    ops = sum(p["ops"] for p in parts)
    secs = max(p["seconds"] for p in parts)
    return {
        "ops_per_s": round(ops / secs, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "errors": sum(p["errors"] for p in parts),
    }


async def bench_engine(engine: str, a: argparse.Namespace) -> dict[str, Any]:
    async with cluster(engine, 3, tls=a.tls) as c:
        eps = [c.st.nodes[n].endpoint for n in c.st.live_names()]
        tls = c.tls
        # prime the keys the get phase reads
        run_phase(eps, "put", a.clients, 1.0, a.value_size, a.procs, tls)
        out = {}
        for op in ("put", "get"):
            out[op] = await asyncio.to_thread(run_phase, eps, op, a.clients, a.seconds, a.value_size, a.procs, tls)
        return out


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "clients": a.clients,
        "value_size": a.value_size,
        "seconds": a.seconds,
        "procs": a.procs,
        "tls": a.tls,
        "cpus": os.cpu_count(),
    }
    engines = ["builtin"] + (["etcd"] if shutil.which("etcd") and not a.builtin_only else [])
    for e in engines:
        res[e] = await bench_engine(e, a)
    if "etcd" in res:
        res["ratio_builtin_over_etcd"] = {
            op: round(res["builtin"][op]["ops_per_s"] / res["etcd"][op]["ops_per_s"], 3) for op in ("put", "get")
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--builtin-only", action="store_true")
    ap.add_argument("--tls", action="store_true", help="client ports speak TLS (as `orchestrate up --tls`)")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(a)), indent=2))


if __name__ == "__main__":
    main()

"""`orchestrate bench`: ours beside real etcd, same settings, same load generator, A B A B.

For each node count, one throwaway cluster per engine (same ClusterConfig, free ports, a temporary
state root) stays up while every (op, clients) cell runs `rounds` times per engine, alternating
engines, so drift in a shared machine's load lands on both. Medians per engine, ratios ours/etcd
computed from those medians. Then failover after kill -9 of the leader (median of rounds,
alternating), `up` → writable (the real CLI in a subprocess, alternating), and per-node RSS and
CPU sampled around each load phase.

Engine `floor` (bench/floor.py, opt-in): per node a bare grpc.aio server answering constants, the
most any Python grpc.aio node could serve here; its cells run in the same alternation and its
cpu/op is counted the same way, so builtin/floor says how much of our cost is gRPC in Python
itself. It has no leader and no `up`: failover and up → writable skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from node.client import ClientError
from orchestrator.cluster import Cluster

from .common import cluster
from .floor import FloorCluster, floor_cluster
from .loadgen import OPS, run_load_async
from .profile import record, top

ENGINES = ("builtin", "etcd")  # the default
ALL_ENGINES = (*ENGINES, "floor")
CLUSTERED = ENGINES  # engines with a leader to kill and an `up` to time
FLOOR_NOTE = "floor: bare grpc.aio servers answering constants (no Raft, no storage); no failover or up → writable"
Target = Cluster | FloorCluster
REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchOptions:
    engines: tuple[str, ...] = ENGINES
    nodes: tuple[int, ...] = (1, 3)
    ops: tuple[str, ...] = OPS
    clients: tuple[int, ...] = (1, 16, 64, 256)
    seconds: float = 5.0
    rounds: int = 2  # load phases per engine per cell (A B A B = 2)
    procs: int = 2
    value_size: int = 256
    failover_rounds: int = 5
    up_rounds: int = 3
    up_nodes: int = 3
    profile: Path | None = None  # py-spy stacks of our leader during the heaviest put cell


@dataclass
class Progress:
    """Steps done out of the total, reported through a callback (a bar on a tty, lines otherwise)."""

    total: int
    say: Callable[[int, int, str], None]
    done: int = 0

    def step(self, what: str) -> None:
        self.say(self.done, self.total, what)

    def advance(self) -> None:
        self.done += 1


@dataclass
class NodeUsage:
    """CPU seconds and RSS of one node process, sampled before and after a phase."""

    cpu_s: float = 0.0
    rss_mb: float = 0.0


@dataclass
class Sample:
    engine: str
    nodes: int
    op: str
    clients: int
    summary: dict[str, Any]
    cpu_pct: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)


def _endpoints(c: Target) -> list[str]:
    if isinstance(c, FloorCluster):
        return list(c.endpoints)
    return [c.st.nodes[x].endpoint for x in c.st.live_names()]


def _procs(c: Target) -> dict[str, psutil.Process]:
    if isinstance(c, FloorCluster):
        return c.procs()
    out = {}
    for name in c.st.live_names():
        pid = c.st.nodes[name].pid
        with contextlib.suppress(psutil.Error):
            out[name] = psutil.Process(pid)
    return out


def _usage(ps: dict[str, psutil.Process]) -> dict[str, NodeUsage]:
    out = {}
    for name, p in ps.items():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[name] = NodeUsage(t.user + t.system, p.memory_info().rss / 2**20)
    return out


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and a == a and b == b else None


async def _leader_pid(c: Cluster) -> tuple[str, int]:
    view = await c.view(usage=False)
    return view.leader, c.st.nodes[view.leader].pid if view.leader else 0


async def _load_cell(
    c: Target, engine: str, n: int, op: str, clients: int, o: BenchOptions, prof: Path | None
) -> Sample:
    eps = _endpoints(c)
    ps = _procs(c)
    before = _usage(ps)
    spy = None
    if prof is not None and isinstance(c, Cluster):
        _, pid = await _leader_pid(c)
        spy = record(pid, o.seconds, prof) if pid else None
    t0 = time.monotonic()
    res = await run_load_async(eps, op, clients, o.seconds, o.value_size, o.procs)
    wall = time.monotonic() - t0
    after = _usage(ps)
    if spy is not None:
        await asyncio.to_thread(spy.wait, 30)
    s = Sample(engine, n, op, clients, res.summary())
    cpu_s = 0.0
    for name, u in after.items():
        b = before.get(name, NodeUsage())
        cpu_s += u.cpu_s - b.cpu_s
        s.cpu_pct[name] = round(100 * (u.cpu_s - b.cpu_s) / wall, 1)
        s.rss_mb[name] = round(u.rss_mb, 1)
    # CPU time of all nodes per operation: what a busy shared machine distorts least
    s.summary["cpu_ms_per_op"] = round(1000 * cpu_s / res.ops, 4) if res.ops else float("nan")
    return s


async def _failover_once(c: Cluster) -> float:
    """Seconds from SIGKILL of the leader to the first write acknowledged through a survivor."""
    view = await c.view(usage=False)
    old = view.leader
    survivors = [x for x in c.st.live_names() if x != old]
    client = c.client(survivors, timeout=0.5)
    t0 = time.monotonic()
    c.kill_node(old)
    took = float("nan")
    try:
        while time.monotonic() - t0 < 30:
            try:
                await client.put("bench/failover", str(t0))
                took = time.monotonic() - t0
                break
            except ClientError:
                await asyncio.sleep(0.01)
    finally:
        await client.close()
        c.start_node(old)
        await c.wait_ready(60)
    await asyncio.sleep(1.0)  # let the restarted member catch up before the next kill
    return took


async def _up_once(engine: str, nodes: int) -> float:
    """`orchestrate up` as a user runs it (a fresh interpreter), until it returns: writable."""
    from orchestrator.ports import port_block

    with tempfile.TemporaryDirectory(prefix="qlbench-up-") as root:
        base = [sys.executable, "-m", "orchestrator", "--root", root, "--name", "up"]
        args = ["up", "--nodes", str(nodes), "--engine", engine, "-q"]
        args += ["--client-port", str(port_block(nodes)), "--peer-port", str(port_block(nodes))]
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *base, *args, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            took = time.monotonic() - t0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            # synchronous on purpose: it must finish even while this task is being cancelled (Ctrl-C)
            subprocess.run([*base, "down", "--purge"], cwd=REPO, capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"`orchestrate up --engine {engine}` failed: {err.decode(errors='replace')[-300:]}")
        return took


@contextlib.asynccontextmanager
async def _clusters(engines: tuple[str, ...], n: int, value_size: int) -> AsyncIterator[dict[str, Target]]:
    """One throwaway cluster per engine (floor: N bare servers), all torn down on exit, whatever happens."""
    async with contextlib.AsyncExitStack() as stack:
        out: dict[str, Target] = {}
        for e in engines:
            if e == "floor":
                out[e] = await stack.enter_async_context(floor_cluster(n, value_size))
            else:
                out[e] = await stack.enter_async_context(cluster(e, n))
        yield out


def _total_steps(o: BenchOptions) -> int:
    cells = len(o.nodes) * len(o.ops) * len(o.clients) * o.rounds * len(o.engines)
    clustered = len([e for e in o.engines if e in CLUSTERED])
    fail = o.failover_rounds * clustered if max(o.nodes) >= 3 else 0
    return cells + fail + o.up_rounds * clustered + len(o.nodes)


async def run_bench(o: BenchOptions, say: Callable[[int, int, str], None]) -> dict[str, Any]:
    """Every phase; returns the result document (samples, medians, ratios, failover, up, usage)."""
    prog = Progress(_total_steps(o), say)
    samples: list[Sample] = []
    failover: dict[str, list[float]] = {e: [] for e in o.engines}
    up: dict[str, list[float]] = {e: [] for e in o.engines}
    heavy = ("put", max(o.clients), max(o.nodes))
    clustered = [e for e in o.engines if e in CLUSTERED]
    for n in o.nodes:
        prog.step(f"starting {'+'.join(o.engines)} ({n} node{'s' if n > 1 else ''})")
        async with _clusters(o.engines, n, o.value_size) as cs:
            prog.advance()
            if any(op != "put" for op in o.ops):  # reads and txns find their keys
                for e, c in cs.items():
                    if e != "floor":  # constant answers need no keys
                        await run_load_async(_endpoints(c), "put", 64, 1.0, o.value_size, o.procs)
            for op in o.ops:
                for clients in o.clients:
                    for r in range(o.rounds):
                        for e in o.engines:
                            prog.step(f"{e} {n}n {op} x{clients} (round {r + 1}/{o.rounds})")
                            prof = None
                            if o.profile and e == "builtin" and (op, clients, n) == heavy and r == 0:
                                prof = o.profile
                            samples.append(await _load_cell(cs[e], e, n, op, clients, o, prof))
                            prog.advance()
            if n == max(o.nodes) and n >= 3:
                for r in range(o.failover_rounds):
                    for e in clustered:
                        c = cs[e]
                        assert isinstance(c, Cluster)
                        prog.step(f"{e} failover after kill -9 ({r + 1}/{o.failover_rounds})")
                        failover[e].append(await _failover_once(c))
                        prog.advance()
    for r in range(o.up_rounds):
        for e in clustered:
            prog.step(f"{e} up → writable, {o.up_nodes} nodes ({r + 1}/{o.up_rounds})")
            up[e].append(await _up_once(e, o.up_nodes))
            prog.advance()
    return summarise(o, samples, failover, up)


def summarise(
    o: BenchOptions, samples: list[Sample], failover: dict[str, list[float]], up: dict[str, list[float]]
) -> dict[str, Any]:
    cells: list[dict[str, Any]] = []
    for n in o.nodes:
        for op in o.ops:
            for clients in o.clients:
                cell: dict[str, Any] = {"nodes": n, "op": op, "clients": clients}
                for e in o.engines:
                    mine = [s for s in samples if (s.engine, s.nodes, s.op, s.clients) == (e, n, op, clients)]
                    if not mine:
                        continue
                    med = {
                        k: _median([float(s.summary[k]) for s in mine])
                        for k in ("ops_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_ms_per_op")
                    }
                    cell[e] = {
                        **{k: round(v, 3) for k, v in med.items()},
                        "ops": sum(s.summary["ops"] for s in mine),
                        "errors": sum(s.summary["errors"] for s in mine),
                        "first_error": next((s.summary["first_error"] for s in mine if s.summary["first_error"]), ""),
                        "rounds": [s.summary for s in mine],
                        "cpu_pct": {
                            k: _median([s.cpu_pct.get(k, float("nan")) for s in mine]) for k in mine[0].cpu_pct
                        },
                        "rss_mb": {k: max(s.rss_mb.get(k, 0.0) for s in mine) for k in mine[0].rss_mb},
                    }
                for key, other in (("ratio", "etcd"), ("ratio_floor", "floor")):
                    if "builtin" in cell and other in cell:  # builtin / other, from the medians shown
                        cell[key] = {
                            k: _ratio(cell["builtin"][k], cell[other][k])
                            for k in ("ops_per_s", "p99_ms", "cpu_ms_per_op")
                        }
                cells.append(cell)
    usage: dict[str, Any] = {}
    for e in o.engines:
        for n in o.nodes:
            mine = [s for s in samples if s.engine == e and s.nodes == n]
            if mine:
                usage.setdefault(e, {})[str(n)] = {
                    "rss_mb_max": max(max(s.rss_mb.values(), default=0.0) for s in mine),
                    "cpu_pct_median_per_node": round(_median([v for s in mine for v in s.cpu_pct.values()]), 1),
                }
    doc: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
        "cells": cells,
        "failover_s": _timing(failover),
        "up_s": _timing(up),
        "usage": usage,
    }
    if "floor" in o.engines:
        doc["notes"] = [FLOOR_NOTE]
    if o.profile and o.profile.exists():
        doc["profile"] = {"stacks": str(o.profile), **top(o.profile, 15)}
    return doc


def _timing(xs: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        e: {"median": round(_median(v), 3), "samples": [round(x, 3) for x in v]} for e, v in xs.items() if v
    }
    if "builtin" in out and "etcd" in out:
        out["ratio"] = _ratio(out["builtin"]["median"], out["etcd"]["median"])
    return out

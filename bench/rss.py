"""`python -m bench.rss`: where a node's memory goes, ours beside real etcd (issue #13's RSS target).

For each engine (A B A B over --rounds): a fresh cluster with `orchestrate up`'s defaults (revision
compaction keeping 10000), every node's RSS idle after `up`, then its peak (sampled every 0.2 s)
during a bounded put load and its RSS a few seconds after; medians over rounds and ours/etcd.
CPU seconds of the nodes per put are printed beside it, so a memory saving that costs CPU shows.

`--breakdown` explains our idle figure instead: RSS after each heavy import in a fresh interpreter
(bare Python, grpc, protobufs, the API, metrics, the whole node), and for a live idle node its
threads, glibc malloc arenas, anonymous vs file-backed memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

from bench.common import cluster, median
from bench.loadgen import run_load_async
from orchestrator.cluster import Cluster

ENGINES = ("builtin", "etcd")
MB = 2**20


@dataclass
class Round:
    """One engine's figures in one round, per node (MB) plus the load's outcome."""

    engine: str
    idle: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    ops: int = 0
    cpu_ms_per_op: float = float("nan")
    threads: dict[str, int] = field(default_factory=dict)


def _procs(c: Cluster) -> dict[str, psutil.Process]:
    out = {}
    for name in c.st.live_names():
        with contextlib.suppress(psutil.Error):
            out[name] = psutil.Process(c.st.nodes[name].pid)
    return out


def _rss(ps: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in ps.items():
        with contextlib.suppress(psutil.Error):
            out[name] = p.memory_info().rss / MB
    return out


def _cpu(ps: dict[str, psutil.Process]) -> float:
    total = 0.0
    for p in ps.values():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def one_round(
    engine: str, nodes: int, clients: int, seconds: float, settle: float, detail: bool = False
) -> Round:
    """Up a fresh cluster, sample idle, peak under put load, and end RSS; always torn down."""
    r = Round(engine)
    async with cluster(engine, nodes) as c:
        ps = _procs(c)
        await asyncio.sleep(settle)
        r.idle = _rss(ps)
        for name, p in ps.items():
            with contextlib.suppress(psutil.Error):
                r.threads[name] = p.num_threads()
        eps = [c.st.nodes[x].endpoint for x in c.st.live_names()]
        cpu0 = _cpu(ps)
        load = asyncio.create_task(run_load_async(eps, "put", clients, seconds))
        r.peak = dict(r.idle)
        while not load.done():
            for name, mb in _rss(ps).items():
                r.peak[name] = max(r.peak.get(name, 0.0), mb)
            await asyncio.wait({load}, timeout=0.2)
        res = load.result()
        cpu = _cpu(ps) - cpu0
        r.ops = res.ops
        r.cpu_ms_per_op = 1000 * cpu / res.ops if res.ops else float("nan")
        await asyncio.sleep(settle)
        r.end = _rss(ps)
        if detail and engine == "builtin":
            for name, p in ps.items():
                with contextlib.suppress(psutil.Error, OSError):
                    d = node_breakdown(p.pid)
                    print(f"  {name} after load: " + "  ".join(f"{k} {v:.1f}" for k, v in d.items()), file=sys.stderr)
        for name, mb in r.end.items():
            r.peak[name] = max(r.peak.get(name, 0.0), mb)
    return r


def summarize(rounds: list[Round]) -> dict[str, dict[str, float]]:
    """Per engine: medians over rounds of the per-node median and max (MB), puts and cpu ms/op."""
    out: dict[str, dict[str, float]] = {}
    for engine in ENGINES:
        mine = [r for r in rounds if r.engine == engine]
        if not mine:
            continue
        row: dict[str, float] = {}
        for what in ("idle", "peak", "end"):
            vals = [getattr(r, what) for r in mine]
            row[f"{what}_med"] = round(median([median(list(v.values())) for v in vals if v]), 1)
            row[f"{what}_max"] = round(median([max(v.values()) for v in vals if v]), 1)
        row["puts"] = median([float(r.ops) for r in mine])
        row["cpu_ms_per_op"] = round(median([r.cpu_ms_per_op for r in mine]), 4)
        row["threads"] = median([median([float(t) for t in r.threads.values()]) for r in mine if r.threads])
        out[engine] = row
    return out


def print_table(s: dict[str, dict[str, float]]) -> None:
    cols = ["idle_med", "idle_max", "peak_med", "peak_max", "end_med", "end_max", "puts", "cpu_ms_per_op", "threads"]
    print(f"{'MB per node':<14}" + "".join(f"{c:>14}" for c in cols))
    for engine, row in s.items():
        print(f"{engine:<14}" + "".join(f"{row.get(c, float('nan')):>14.4g}" for c in cols))
    if "builtin" in s and "etcd" in s:
        a, b = s["builtin"], s["etcd"]
        print(f"{'ours/etcd':<14}" + "".join(f"{a[c] / b[c] if b.get(c) else float('nan'):>14.3f}" for c in cols))


# --- breakdown of our idle RSS ---------------------------------------------------------------

_PROBE = r"""
import importlib, json, sys, threading
def mem():
    d = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'RssAnon', 'RssFile'):
            d[k] = int(v.split()[0]) / 1024
    return d
out = [['python', mem()]]
for m in sys.argv[1:]:
    importlib.import_module(m)
    out.append([m, mem()])
print(json.dumps(out))
"""

STEPS = ["grpc", "google.protobuf", "node.pb.rpc_pb2", "node.kv", "node.api.server", "node.metrics", "node.__main__"]


def import_breakdown() -> list[tuple[str, dict[str, float]]]:
    """RSS (MB) after each heavy import in turn, in one fresh interpreter as the node imports them."""
    cp = subprocess.run([sys.executable, "-c", _PROBE, *STEPS], capture_output=True, text=True, check=True)
    return [(m, d) for m, d in json.loads(cp.stdout)]


@dataclass
class Region:
    lo: int
    hi: int
    perm: str
    name: str
    rss_kb: int = 0


def _regions(pid: int) -> list[Region]:
    out: list[Region] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                out.append(Region(lo, hi, head[1], head[5] if len(head) > 5 else ""))
            elif head[0] == "Rss:" and out:
                out[-1].rss_kb = int(head[1])
    return out


def _arena_starts(regions: list[Region]) -> set[int]:
    """Indexes of glibc's thread arenas: 64 MiB-aligned anonymous reservations whose rw part and
    ---p guard sum to 64 MiB."""
    arena = 64 * MB
    out = set()
    for i, r in enumerate(regions):
        if r.name or r.perm != "rw-p" or r.lo % arena:
            continue
        size = r.hi - r.lo
        nxt = regions[i + 1] if i + 1 < len(regions) else None
        if nxt is not None and nxt.lo == r.hi and nxt.perm == "---p" and not nxt.name:
            size += nxt.hi - nxt.lo
        if size == arena:
            out.add(i)
    return out


def arenas(pid: int) -> tuple[int, float]:
    """glibc malloc arenas besides the main heap: their count and resident MB."""
    regions = _regions(pid)
    idx = _arena_starts(regions)
    return len(idx), sum(regions[i].rss_kb for i in idx) / 1024


def node_breakdown(pid: int) -> dict[str, float]:
    """A live node's RSS split: anonymous vs file-backed, threads, malloc arenas and their RSS."""
    d: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                d[k] = int(v.split()[0]) / (1024 if k != "Threads" else 1)
    regions = _regions(pid)
    idx = _arena_starts(regions)
    d["arenas"] = len(idx)
    d["arena_rss"] = sum(regions[i].rss_kb for i in idx) / 1024
    d["heap_rss"] = sum(r.rss_kb for r in regions if r.name == "[heap]") / 1024  # main arena (brk)
    # pymalloc's arenas, large mallocs (mmap) and thread stacks: unnamed, not a thread arena
    d["other_anon_rss"] = sum(r.rss_kb for i, r in enumerate(regions) if not r.name and i not in idx) / 1024
    return d


async def breakdown(nodes: int) -> None:
    print("RSS after each import (MB, one fresh interpreter, cumulative):")
    for m, d in import_breakdown():
        print(f"  {m:<20} rss {d['VmRSS']:6.1f}  anon {d['RssAnon']:6.1f}  file {d['RssFile']:6.1f}")
    async with cluster("builtin", nodes) as c:
        await asyncio.sleep(2)
        print("idle nodes after up (MB):")
        for name, p in _procs(c).items():
            print(f"  {name}: " + "  ".join(f"{k} {v:.1f}" for k, v in node_breakdown(p.pid).items()))


async def amain(a: argparse.Namespace) -> None:
    if a.breakdown:
        await breakdown(a.nodes)
        return
    rounds: list[Round] = []
    for i in range(a.rounds):
        for engine in a.engines:
            r = await one_round(engine, a.nodes, a.clients, a.seconds, a.settle, a.detail)
            rounds.append(r)
            print(
                f"round {i + 1} {engine}: idle {_fmt(r.idle)} peak {_fmt(r.peak)} end {_fmt(r.end)} "
                f"puts {r.ops} cpu {r.cpu_ms_per_op:.3f} ms/op threads {sorted(r.threads.values())}",
                file=sys.stderr,
                flush=True,
            )
    s = summarize(rounds)
    if a.json:
        print(json.dumps({"summary": s, "rounds": [r.__dict__ for r in rounds]}, indent=1))
    else:
        print_table(s)


def _fmt(d: dict[str, float]) -> str:
    return "/".join(f"{v:.0f}" for v in d.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds; medians over them")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=15.0, help="put load duration")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before and after the load")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--breakdown", action="store_true", help="explain our idle RSS instead")
    ap.add_argument("--detail", action="store_true", help="also split our nodes' RSS after the load")
    ap.add_argument("--json", action="store_true")
    t0 = time.monotonic()
    asyncio.run(amain(ap.parse_args(argv)))
    print(f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

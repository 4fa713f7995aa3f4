"""Soak: leader changes, event-loop stalls, memory and disk of a 3-node cluster under a long mixed load.

The figures issue #9 asks for, measured the same way on old and new code:
--clients concurrent puts (values of --value-min..--value-max bytes over --keys
keys under one prefix), every --read-every seconds --readers concurrent
linearizable full-prefix Range requests, and a probe sending a tiny
serializable Range to each node every --probe-every seconds (its latency is an
outside view of event-loop stalls that needs no new status keys). Every
--sample-every seconds each node's Admin status (term, leader, leader_changes,
any loop_stall_* keys), RSS and data-dir size are recorded, with the load
average.

The cluster is started with this checkout's own `orchestrator.cli` (its
launcher puts this checkout on the nodes' PYTHONPATH, checked and reported) in
a temporary state dir, and always torn down with `down --purge`.

    python -m bench.soak --duration 600 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psutil

from node.client import Client, ClientError
from orchestrator.state import StateDir

from .common import median, pct

REPO = Path(__file__).resolve().parent.parent
PREFIX = "soak/"
PROBE_KEY = b"soak-probe"  # outside PREFIX: the probe reads one absent key
START_DELAY = 4.0  # seconds for the spawned load processes to import grpc and connect


class SoakError(Exception):
    """A failure to report in one line (cluster did not start, a load process died)."""


# -- small helpers ------------------------------------------------------------------------------------
def port_base(n: int, avoid: set[int]) -> int:
    """A base port with n consecutive free ports on 127.0.0.1, away from etcd's 2379-2480 and `avoid`."""
    for _ in range(500):
        base = random.randrange(30000, 60000 - n)
        block = range(base, base + n)
        if avoid.intersection(block):
            continue
        ok = True
        for p in block:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SoakError(f"no block of {n} free ports in 30000-60000")


def err_class(e: ClientError) -> str:
    """Group errors by gRPC code and message, with numbers masked so ids and indexes do not split a class."""
    code = e.code.name if isinstance(e.code, grpc.StatusCode) else "UNKNOWN"
    msg = re.sub(r"\d+", "N", str(e))[:70]
    return f"{code}: {msg}"


def git_info(repo: Path) -> dict[str, Any]:
    """The commit measured, and whether tracked files differ from it (untracked files such as soak.py do not count)."""

    def git(*args: str) -> str:
        r = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or "unknown",
        "subject": git("log", "-1", "--format=%s")[:100],
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "repo": str(repo),
    }


def dir_bytes(path: str) -> int:
    """Disk space used under path, as `du` counts it (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def summary(xs: list[float], scale: float = 1.0, nd: int = 1) -> dict[str, float]:
    if not xs:
        return {}
    return {
        "p50": round(pct(xs, 50) * scale, nd),
        "p99": round(pct(xs, 99) * scale, nd),
        "max": round(max(xs) * scale, nd),
    }


# -- the cluster, through this checkout's own CLI ------------------------------------------------------
class Orchestrate:
    """`python -m orchestrator.cli` of this checkout, on a config and state dir of our own."""

    def __init__(self, tmp: Path, name: str, client_port: int, peer_port: int) -> None:
        self.tmp, self.name = tmp, name
        self.root = tmp / "state"
        self.config = tmp / "cluster.yaml"
        self.client_port, self.peer_port = client_port, peer_port
        self.config.write_text(
            f"name: {name}\nnodes: 3\nengine: builtin\nnetwork: local\n"
            f"ports:\n  client: {client_port}\n  peer: {peer_port}\ndata_dir: {self.root}\n"
        )
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.env.pop("QUORUMLAB_HOME", None)

    def secret(self) -> bytes | None:
        """The cluster secret `orchestrate up` wrote: Admin status needs it."""
        return StateDir(self.root, self.name).secret()  # the same permission and format checks as orchestrate

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "--config",
            str(self.config),
            "--root",
            str(self.root),
            "--name",
            self.name,
            *args,
        ]
        return subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def up(self) -> None:
        r = self.run(
            "up",
            "--nodes",
            "3",
            "--client-port",
            str(self.client_port),
            "--peer-port",
            str(self.peer_port),
            "--timeout",
            "60",
            "--quiet",
            timeout=120,
        )
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-6:]
            raise SoakError(f"`orchestrate up` failed (exit {r.returncode}): " + " | ".join(last))

    def down(self) -> str:
        try:
            r = self.run("down", "--purge", timeout=180)
        except subprocess.TimeoutExpired:
            return "down --purge timed out"
        lines = (r.stdout.strip() or r.stderr.strip()).splitlines()
        return f"exit {r.returncode}: {lines[-1] if lines else ''}"

    def state(self) -> dict[str, Any]:
        """The state file, read as JSON so a changed dataclass in another checkout does not matter."""
        out: dict[str, Any] = json.loads((self.root / self.name / "state.json").read_text())
        return out

    def nodes(self) -> dict[str, dict[str, Any]]:
        """name -> endpoint, pid and data dir (from the node's own command line: where it really writes)."""
        out: dict[str, dict[str, Any]] = {}
        for name, rec in self.state()["nodes"].items():
            if rec.get("desired") == "removed":
                continue
            d: dict[str, Any] = {"endpoint": f"{rec['address']}:{rec['client_port']}", "pid": rec.get("pid", 0)}
            d["data_dir"] = str(self.root / self.name / "data" / name)
            with contextlib.suppress(psutil.Error, ValueError, IndexError):
                p = psutil.Process(d["pid"])
                cmd = p.cmdline()
                dd = cmd[cmd.index("--data-dir") + 1]
                d["data_dir"] = dd if os.path.isabs(dd) else os.path.join(p.cwd(), dd)
            out[name] = d
        return out

    def copy_logs(self, dest: Path) -> None:
        src = self.root / self.name / "logs"
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                shutil.copy2(f, dest / f.name)


def node_code_roots(nodes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Which checkout each node process imports `node` from, resolved with that process's own python, cwd and env.

    The launcher's PYTHONPATH, the node's cwd and an editable install all play a part; asking the same interpreter
    in the same surroundings settles it, whichever way a checkout arranges them.
    """
    out = {}
    for name, d in nodes.items():
        try:
            p = psutil.Process(d["pid"])
            r = subprocess.run(
                [p.exe(), "-c", "import node; print(node.__file__)"],
                cwd=p.cwd(),
                env=p.environ(),
                capture_output=True,
                text=True,
                timeout=30,
            )
            out[name] = str(Path(r.stdout.strip()).parent.parent) if r.returncode == 0 else f"? ({r.stderr[-200:]})"
        except (psutil.Error, OSError, subprocess.TimeoutExpired) as e:
            out[name] = f"? ({e})"
    return out


# -- load processes (spawned: their event loops and CPU stay out of the probe's way) -------------------
def _quiet_child() -> None:
    """Ctrl-C reaches the whole process group: the parent terminates us, so do not print tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _puts(a: dict[str, Any], seed: int, end: Any) -> dict[str, Any]:
    rnd = random.Random(seed)
    eps: list[str] = a["endpoints"]
    blob = os.urandom(a["value_max"]).hex().encode()
    conns = [Client([eps[(seed + i) % len(eps)]], timeout=a["put_timeout"]) for i in range(min(a["clients"], 8))]
    start_at = a["start_at"]
    buckets: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    lat: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))

    async def worker(i: int) -> None:
        c = conns[i % len(conns)]
        while time.monotonic() < end.value:
            key = f"{PREFIX}{rnd.randrange(a['keys']):06d}"
            size = rnd.randint(a["value_min"], a["value_max"])
            off = rnd.randrange(len(blob) - size + 1)
            t0 = time.monotonic()
            try:
                await c.put(key, blob[off : off + size])
            except ClientError as e:
                errors[err_class(e)] += 1
                if e.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    await asyncio.sleep(0.05)  # fast refusals (no leader) must not turn into a busy loop
                continue
            t1 = time.monotonic()
            lat.append(t1 - t0)
            buckets[int((t1 - start_at) // 10)] += 1

    await asyncio.gather(*(worker(i) for i in range(a["clients"])))
    for c in conns:
        await c.close()
    return {"acked": len(lat), "buckets": dict(buckets), "errors": dict(errors), "lat": lat}


async def _reads(a: dict[str, Any], end: Any) -> dict[str, Any]:
    eps: list[str] = a["endpoints"]
    clients = [Client([ep], timeout=a["read_timeout"]) for ep in eps]
    start_at, every = a["start_at"], a["read_every"]
    lat: list[float] = []
    errors: Counter[str] = Counter()
    sizes: list[int] = []
    keys: list[int] = []
    batches = late = 0
    batch_secs: list[float] = []

    async def one(c: Client) -> None:
        t0 = time.monotonic()
        try:
            r = await c.get(PREFIX, prefix=True)
        except ClientError as e:
            errors[err_class(e)] += 1
            return
        lat.append(time.monotonic() - t0)
        sizes.append(r.ByteSize())
        keys.append(len(r.kvs))

    next_t = start_at + every / 2
    while True:
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        t0 = time.monotonic()
        if t0 >= end.value:
            break
        await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(a["readers"])))
        batches += 1
        batch_secs.append(time.monotonic() - t0)
        next_t += every
        while next_t < time.monotonic():  # a batch longer than the period: the next starts when it ends
            next_t += every
            late += 1
    for c in clients:
        await c.close()
    return {
        "batches": batches,
        "late_ticks": late,
        "lat": lat,
        "errors": dict(errors),
        "bytes": sizes,
        "keys": keys,
        "batch_secs": batch_secs,
    }


async def _probe(a: dict[str, Any], end: Any) -> dict[str, Any]:
    eps: list[str] = a["endpoints"]
    names: list[str] = a["names"]
    clients = {ep: Client([ep], timeout=a["probe_timeout"]) for ep in eps}
    start_at, every = a["start_at"], a["probe_every"]
    lat: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, Counter[str]] = {n: Counter() for n in names}
    slow: list[tuple[float, float, str]] = []  # (t since load start, latency s, node) of probes over 200 ms
    per_sec: dict[str, dict[int, float]] = {n: {} for n in names}  # node -> second -> worst latency sent then
    tasks: set[asyncio.Task[None]] = set()

    async def one(name: str, ep: str) -> None:
        t0 = time.monotonic()
        try:
            await clients[ep].get(PROBE_KEY, serializable=True)
        except ClientError as e:
            errors[name][err_class(e)] += 1
        dt = time.monotonic() - t0  # a timeout counts with its full wait: the node did not answer
        lat[name].append(dt)
        sec = int(t0 - start_at)
        per_sec[name][sec] = max(dt, per_sec[name].get(sec, 0.0))
        if dt > 0.2:
            slow.append((t0 - start_at, dt, name))

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    next_t = start_at
    while time.monotonic() < end.value:
        for name, ep in zip(names, eps, strict=True):
            t = asyncio.create_task(one(name, ep))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        next_t += every
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)
    for c in clients.values():
        await c.close()
    timeline = {n: [round(v.get(i, 0.0) * 1000) for i in range(max(v, default=-1) + 1)] for n, v in per_sec.items()}
    return {"lat": lat, "errors": {n: dict(c) for n, c in errors.items()}, "slow": slow, "timeline_ms": timeline}


def stall_episodes(slow: list[tuple[float, float, str]], min_s: float = 0.5) -> list[dict[str, Any]]:
    """Merge each node's overlapping slow probes (sent at t, answered at t + latency) into one unresponsive spell.

    A 3 s stall shows as ~30 slow probes; merged it is one episode of ~3 s, which is what lines up with a leader
    change or a snapshot in the node's log.
    """
    out: list[dict[str, Any]] = []
    for node in sorted({n for _, _, n in slow}):
        spans = sorted((t, t + dt) for t, dt, n in slow if n == node and dt >= min_s)
        cur: list[float] = []
        for a, b in spans:
            if cur and a <= cur[1]:
                cur[1] = max(cur[1], b)
            else:
                if cur:
                    out.append({"node": node, "t": round(cur[0], 1), "s": round(cur[1] - cur[0], 2)})
                cur = [a, b]
        if cur:
            out.append({"node": node, "t": round(cur[0], 1), "s": round(cur[1] - cur[0], 2)})
    return sorted(out, key=lambda e: e["t"])


def _child(kind: str, a: dict[str, Any], seed: int, end: Any, q: Any) -> None:
    """One load process; `end` is a shared double (monotonic clock) the parent lowers to stop the load early."""
    _quiet_child()
    try:
        if kind == "puts":
            res = asyncio.run(_puts(a, seed, end))
        elif kind == "reads":
            res = asyncio.run(_reads(a, end))
        else:
            res = asyncio.run(_probe(a, end))
        q.put((kind, seed, res))
    except BaseException as e:  # noqa: BLE001 - report anything, never leave the parent waiting for a result
        q.put((kind, seed, {"crashed": f"{type(e).__name__}: {e}"}))


# -- sampling ---------------------------------------------------------------------------------------
async def sample(orch: Orchestrate, t_rel: float) -> dict[str, Any]:
    """One snapshot of every node: Admin status fields we track, RSS, data-dir size; and the load average."""
    nodes = orch.nodes()
    out: dict[str, Any] = {"t": round(t_rel, 1), "loadavg": os.getloadavg()[0], "nodes": {}}

    async def one(name: str, d: dict[str, Any]) -> None:
        s: dict[str, Any] = {}
        async with Client([d["endpoint"]], timeout=2.0, secret=orch.secret()) as c:
            try:
                st = await c.admin_status(d["endpoint"], timeout=2.0)
                for k in ("role", "term", "leader", "leader_changes", "applied", "snapshot_index", "last_index"):
                    s[k] = st.get(k)
                s.update({k: v for k, v in st.items() if k.startswith("loop_stall_")})
            except ClientError as e:
                s["error"] = err_class(e)
        try:
            s["rss"] = psutil.Process(d["pid"]).memory_info().rss
        except psutil.Error:
            s["rss"] = None
        s["data_bytes"] = await asyncio.to_thread(dir_bytes, d["data_dir"])
        out["nodes"][name] = s

    await asyncio.gather(*(one(n, d) for n, d in nodes.items()))
    return out


async def prefill(endpoints: list[str], a: argparse.Namespace) -> tuple[int, float, int]:
    """Write every key once so each prefix read covers the whole keyspace from the first second."""
    conns = [Client([endpoints[i % len(endpoints)]], timeout=a.put_timeout) for i in range(8)]
    blob = os.urandom(a.value_max).hex().encode()
    todo = iter(range(a.keys))
    errors = 0
    t0 = time.monotonic()

    async def worker(i: int) -> None:
        nonlocal errors
        c = conns[i % len(conns)]
        for k in todo:
            size = random.randint(a.value_min, a.value_max)
            for _ in range(5):
                try:
                    await c.put(f"{PREFIX}{k:06d}", blob[:size])
                    break
                except ClientError:
                    errors += 1
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(worker(i) for i in range(a.clients)))
    for c in conns:
        await c.close()
    return a.keys, time.monotonic() - t0, errors


# -- the run ------------------------------------------------------------------------------------------
async def run(a: argparse.Namespace, orch: Orchestrate, say: Any) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    t_load: list[float] = []  # when the load starts; samples before it get a negative t

    def rel(t: float) -> float:
        return t - t_load[0] if t_load else -1.0

    stop = asyncio.Event()
    ctx = mp.get_context("spawn")
    end = ctx.RawValue("d", 0.0)  # the load's end on the monotonic clock, shared with the load processes
    aborted: list[str] = []

    def guard(smp: dict[str, Any]) -> None:
        """Stop the load early rather than exhaust a machine others share (old code grows without bound)."""
        why = ""
        for n, v in smp.get("nodes", {}).items():
            if (v.get("rss") or 0) > a.max_rss_mb * 2**20:
                why = f"{n} RSS {v['rss'] / 2**20:.0f} MB > --max-rss-mb {a.max_rss_mb}"
        free = shutil.disk_usage(orch.root).free
        if free < a.min_free_disk_mb * 2**20:
            why = f"free disk {free / 2**20:.0f} MB < --min-free-disk-mb {a.min_free_disk_mb}"
        avail = psutil.virtual_memory().available
        if avail < a.min_free_mem_mb * 2**20:
            why = f"available memory {avail / 2**20:.0f} MB < --min-free-mem-mb {a.min_free_mem_mb}"
        if why and not aborted and t_load and time.monotonic() < end.value:
            aborted.append(f"at t={smp['t']}s: {why}")
            end.value = time.monotonic()
            say(f"stopping the load early: {why}")

    async def sampler() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                samples.append(await sample(orch, rel(t)))
                guard(samples[-1])
            except Exception as e:  # noqa: BLE001 - a failed sample must not end the run; it is kept as a note
                samples.append({"t": round(rel(t), 1), "error": repr(e), "nodes": {}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, a.sample_every - (time.monotonic() - t)))

    nodes = orch.nodes()
    names = sorted(nodes)
    eps = [nodes[n]["endpoint"] for n in names]
    roots = node_code_roots(nodes)
    where = ", ".join(f"{n} {nodes[n]['endpoint']} pid {nodes[n]['pid']}" for n in names)
    say(f"cluster up: {where}")
    say(f"nodes import from: {sorted(set(roots.values()))}")
    if any(os.path.realpath(r) != os.path.realpath(REPO) for r in roots.values()):
        raise SoakError(f"nodes do not run this checkout ({REPO}): {roots}")

    samples.append({**await sample(orch, -1.0), "mark": "up"})  # before the prefill competes for our loop
    samp_task = asyncio.create_task(sampler())
    pre: dict[str, Any] = {}
    q = ctx.Queue()
    procs: list[Any] = []
    results: dict[str, list[dict[str, Any]]] = {"puts": [], "reads": [], "probe": []}
    try:
        if not a.no_prefill:
            say(f"prefill: {a.keys} keys ...")
            n, secs, errs = await prefill(eps, a)
            pre = {"keys": n, "seconds": round(secs, 1), "errors": errs}
            say(f"prefill: {n} keys in {secs:.1f}s ({errs} retried errors)")
        start_at = time.monotonic() + START_DELAY
        end.value = start_at + a.duration
        t_load.append(start_at)
        shared = {"endpoints": eps, "names": names, "start_at": start_at, **vars(a)}
        shared["clients"] = a.clients // a.procs
        jobs: list[tuple[str, int]] = [("puts", i) for i in range(a.procs)] + [("reads", 0), ("probe", 0)]
        for kind, seed in jobs:
            args = dict(shared)
            if kind == "puts" and seed == a.procs - 1:
                args["clients"] = a.clients - shared["clients"] * (a.procs - 1)
            p = ctx.Process(target=_child, args=(kind, args, seed + 1, end, q), daemon=True)
            p.start()
            procs.append(p)
        say(
            f"load: {a.clients} put clients, {a.readers} prefix reads every {a.read_every}s, "
            f"probe every {a.probe_every * 1000:.0f}ms, for {a.duration:.0f}s"
        )
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        samples.append({**await sample(orch, 0.0), "mark": "load_start"})
        deadline = end.value + max(a.read_timeout, a.put_timeout, a.probe_timeout) + 60
        last_say = 0.0
        while sum(len(v) for v in results.values()) < len(jobs):
            try:
                kind, _seed, res = await asyncio.to_thread(q.get, True, 1.0)
                results[kind].append(res)
            except queue.Empty:
                now = time.monotonic()
                if now > deadline:
                    raise SoakError("a load process did not report in time") from None
                if now - last_say >= 30 and now < end.value:
                    last_say = now
                    say(progress_line(samples, now - start_at))
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and q.empty():
                    raise SoakError(f"a load process died (exit {dead[0].exitcode})") from None
        samples.append({**await sample(orch, time.monotonic() - start_at), "mark": "end"})
        duration = min(a.duration, end.value - start_at)
    finally:
        stop.set()
        with contextlib.suppress(BaseException):
            await samp_task
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
    for kind, rs in results.items():
        for r in rs:
            if "crashed" in r:
                raise SoakError(f"the {kind} process crashed: {r['crashed']}")
    samples.sort(key=lambda x: x["t"])
    return report(a, duration, aborted[0] if aborted else "", names, roots, pre, samples, results)


def progress_line(samples: list[dict[str, Any]], t: float) -> str:
    last = samples[-1] if samples else {"nodes": {}}
    bits = []
    for n, s in sorted(last.get("nodes", {}).items()):
        rss = f"{s['rss'] / 2**20:.0f}MB" if s.get("rss") else "-"
        bits.append(f"{n} {s.get('role', '?')} t{s.get('term', '?')} rss {rss} data {s['data_bytes'] / 2**20:.0f}MB")
    return f"t={t:.0f}s load {last.get('loadavg', 0):.2f} | " + " | ".join(bits)


# -- report -------------------------------------------------------------------------------------------
def report(
    a: argparse.Namespace,
    duration: float,
    aborted: str,
    names: list[str],
    roots: dict[str, str],
    pre: dict[str, Any],
    samples: list[dict[str, Any]],
    results: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    puts = results["puts"]
    acked = sum(p["acked"] for p in puts)
    buckets: Counter[int] = Counter()
    for p in puts:
        buckets.update({int(k): v for k, v in p["buckets"].items()})
    full = int(duration // 10)
    rates = [buckets.get(b, 0) / 10 for b in range(full)]
    put_err: Counter[str] = Counter()
    for p in puts:
        put_err.update(p["errors"])
    put_lat = [x for p in puts for x in p["lat"]]
    by_code: Counter[str] = Counter()
    for k, v in put_err.items():
        by_code[k.split(":", 1)[0]] += v

    rd = results["reads"][0]
    pr = results["probe"][0]
    run_samples = [s for s in samples if s["t"] >= 0 and s.get("nodes")]
    base = next((s for s in samples if s.get("mark") == "load_start"), run_samples[0] if run_samples else {})

    def terms(s: dict[str, Any]) -> int:
        return max((v.get("term") or 0 for v in s.get("nodes", {}).values()), default=0)

    # terms only grow: take the highest seen up to load start and overall (a stalled node answers nothing)
    term_start = max((terms(s) for s in samples if s["t"] <= base.get("t", 0)), default=0)
    term_end = max((terms(s) for s in samples), default=0)

    up = next((s for s in samples if s.get("mark") == "up"), samples[0] if samples else {})
    episodes = stall_episodes([(t, dt, n) for t, dt, n in pr["slow"]])
    per_node: dict[str, Any] = {}
    lc_total = 0
    for n in names:
        series = [s["nodes"][n] for s in run_samples if n in s.get("nodes", {})]
        at_load = base.get("nodes", {}).get(n, {})
        rss = [x["rss"] for x in series if x.get("rss")]
        data = [x["data_bytes"] for x in series]
        first = up.get("nodes", {}).get(n, {})
        lc0 = next((x["leader_changes"] for x in [at_load, *series] if x.get("leader_changes") is not None), None)
        lc1 = next((x["leader_changes"] for x in reversed(series) if x.get("leader_changes") is not None), None)
        lc = max(0, lc1 - lc0) if lc0 is not None and lc1 is not None else None
        lc_total += lc or 0
        # over the load only (the 60 s window of loop_stall_max_ms may reach back into the prefill by a sample)
        stall_keys = sorted({k for x in series for k in x if k.startswith("loop_stall_")})
        stall = {k: max(x[k] for x in series if isinstance(x.get(k), int | float)) for k in stall_keys}
        mb = 2**20
        per_node[n] = {
            "code_root": roots.get(n, ""),
            "leader_changes": lc,
            "probe_ms": summary(pr["lat"][n], 1000, 1),
            "probe_over_100ms": sum(1 for x in pr["lat"][n] if x > 0.1),
            "probe_over_1s": sum(1 for x in pr["lat"][n] if x > 1.0),
            "probe_count": len(pr["lat"][n]),
            "stalls_over_1s": sum(1 for e in episodes if e["node"] == n and e["s"] >= 1.0),
            "longest_stall_s": max((e["s"] for e in episodes if e["node"] == n), default=0.0),
            "probe_errors": pr["errors"][n],
            "loop_stall_reported": stall,
            # start: just after `up`; at_load: after the prefill, when the timed load begins; the rest over the load
            "rss_mb": {
                "start": round((first.get("rss") or 0) / mb, 1),
                "at_load": round((at_load.get("rss") or 0) / mb, 1),
                "median": round(median([float(x) for x in rss]) / mb, 1),
                "max": round(max(rss) / mb, 1),
                "end": round(rss[-1] / mb, 1),
            }
            if rss
            else {},
            "data_mb": {
                "start": round(first.get("data_bytes", 0) / mb, 1),
                "at_load": round(at_load.get("data_bytes", 0) / mb, 1),
                "max": round(max(data) / mb, 1),
                "end": round(data[-1] / mb, 1),
            }
            if data
            else {},
            "status_errors": sum(1 for x in series if "error" in x),
        }
    # leader as seen by the sampler: transitions between samples
    seen: list[dict[str, Any]] = []
    prev: tuple[int, str] | None = None
    for s in run_samples:
        if not any("term" in v and v["term"] is not None for v in s["nodes"].values()):
            continue  # nobody answered this sample: no information, not "no leader"
        leads = [(v.get("term") or 0, n) for n, v in s["nodes"].items() if v.get("role") == "leader"]
        cur = max(leads) if leads else (terms(s), "")
        if prev is not None and cur != prev:
            seen.append({"t": s["t"], "term": cur[0], "leader": cur[1] or "none"})
        prev = cur
    loads = [s["loadavg"] for s in run_samples if "loadavg" in s]
    stall_max = [
        v.get("loop_stall_max_ms", v.get("loop_stall_max_total_ms"))
        for v in (pn["loop_stall_reported"] for pn in per_node.values())
    ]
    stall_vals = [float(x) for x in stall_max if isinstance(x, int | float)]
    return {
        "bench": "soak",
        "git": git_info(REPO),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "params": {k: v for k, v in vars(a).items() if k not in ("json", "logs")},
        "prefill": pre,
        "duration_s": round(duration, 1),
        "aborted": aborted,
        "puts": {
            "acked": acked,
            "rate_median_per_s": round(median(rates), 1),
            "rate_overall_per_s": round(acked / duration, 1),
            "rate_min_10s_per_s": round(min(rates), 1) if rates else None,
            "latency_ms": summary(put_lat, 1000, 1),
            "deadline_exceeded": by_code.get("DEADLINE_EXCEEDED", 0),
            "errors_by_code": dict(by_code),
            "errors_by_class": dict(put_err.most_common()),
        },
        "reads": {
            "batches": rd["batches"],
            "late_ticks": rd["late_ticks"],
            "ok": len(rd["lat"]),
            "latency_s": summary(rd["lat"], 1, 2),
            "batch_s": summary(rd["batch_secs"], 1, 2),
            "reply_mb_median": round(median([float(x) for x in rd["bytes"]]) / 2**20, 1) if rd["bytes"] else 0,
            "keys_median": median([float(x) for x in rd["keys"]]) if rd["keys"] else 0,
            "errors_by_class": rd["errors"],
        },
        "leader": {
            "term_start": term_start,
            "term_end": term_end,
            "term_delta": term_end - term_start,
            "leader_changes_sum": lc_total,
            "transitions_seen": seen,
        },
        "loop_stall_max_ms": max(stall_vals) if stall_vals else None,
        "stall_episodes": episodes,
        "probe_timeline_ms": pr["timeline_ms"],
        "loadavg_1m": {"median": round(median(loads), 2), "max": round(max(loads), 2)} if loads else {},
        "nodes": per_node,
        "samples": samples,
    }


def render(r: dict[str, Any]) -> str:
    g, p, rd, ld = r["git"], r["puts"], r["reads"], r["leader"]
    out = [
        f"soak of {g['commit'][:12]}{' (dirty)' if g['dirty'] else ''} {g['subject']!r} at {g['repo']}",
        f"  {r['duration_s']:.0f}s, {r['params']['clients']} put clients over {r['params']['keys']} keys, "
        f"{r['params']['readers']} prefix reads every {r['params']['read_every']}s; {r['cpus']} cpus, "
        f"load avg median {r['loadavg_1m'].get('median')} max {r['loadavg_1m'].get('max')}",
    ]
    if r["aborted"]:
        out.append(f"  LOAD STOPPED EARLY {r['aborted']} (figures cover {r['duration_s']}s)")
    if r["prefill"]:
        out.append(f"  prefill: {r['prefill']['keys']} keys in {r['prefill']['seconds']}s")
    out += [
        f"puts: {p['acked']} acked, median {p['rate_median_per_s']}/s (overall {p['rate_overall_per_s']}/s, "
        f"worst 10s {p['rate_min_10s_per_s']}/s), latency ms {p['latency_ms']}",
        f"  DEADLINE_EXCEEDED {p['deadline_exceeded']}; errors by code {p['errors_by_code'] or 'none'}",
    ]
    out += [f"    {v:6d}  {k}" for k, v in list(p["errors_by_class"].items())[:8]]
    out += [
        f"prefix reads: {rd['ok']} ok in {rd['batches']} batches ({rd['late_ticks']} ticks late), "
        f"~{rd['reply_mb_median']} MB / {rd['keys_median']:.0f} keys each, latency s {rd['latency_s']}",
    ]
    out += [f"    {v:6d}  {k}" for k, v in list(rd["errors_by_class"].items())[:6]]
    out += [
        f"leader: term {ld['term_start']} -> {ld['term_end']} (delta {ld['term_delta']}), "
        f"sum of leader_changes {ld['leader_changes_sum']}, {len(ld['transitions_seen'])} leader transitions seen "
        "by the sampler: "
        + (", ".join(f"t={x['t']}s {x['leader']}@{x['term']}" for x in ld["transitions_seen"][:12]) or "none")
        + (" ..." if len(ld["transitions_seen"]) > 12 else ""),
        "max loop stall reported: "
        + (f"{r['loop_stall_max_ms']} ms" if r["loop_stall_max_ms"] is not None else "n/a (nodes do not report it)"),
    ]
    cap = f"(cap {r['params']['probe_timeout'] * 1000:.0f})"
    cols = [
        "NODE",
        f"PROBE p50/p99/max ms {cap}",
        ">100ms",
        "SPELLS>1s",
        "LONGEST s",
        "LC",
        "RSS MB start/load/med/max/end",
        "DATA MB start/load/max/end",
        "LOOP STALL",
    ]
    rows = []
    for n, v in r["nodes"].items():
        pm, rs, dm = v["probe_ms"], v["rss_mb"], v["data_mb"]
        st = v["loop_stall_reported"]
        rows.append(
            [
                n,
                f"{pm.get('p50')}/{pm.get('p99')}/{pm.get('max')}",
                str(v["probe_over_100ms"]),
                str(v["stalls_over_1s"]),
                str(v["longest_stall_s"]),
                str(v["leader_changes"]),
                f"{rs.get('start')}/{rs.get('at_load')}/{rs.get('median')}/{rs.get('max')}/{rs.get('end')}",
                f"{dm.get('start')}/{dm.get('at_load')}/{dm.get('max')}/{dm.get('end')}",
                " ".join(f"{k.removeprefix('loop_stall_')}={x}" for k, x in st.items()) or "-",
            ]
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    eps = r["stall_episodes"]
    if eps:
        longest = sorted(eps, key=lambda e: -e["s"])[:10]
        out.append(
            f"unresponsive spells >= 0.5 s seen by the probe: {len(eps)}; longest: "
            + ", ".join(f"{e['node']} {e['s']}s@{e['t']}s" for e in longest)
        )
    return "\n".join(out)


# -- entry point ------------------------------------------------------------------------------------
def _positive(kind: type[int] | type[float]) -> Any:
    def conv(v: str) -> int | float:
        try:
            x = kind(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}") from None
        if x <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
        return x

    return conv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    pi, pf = _positive(int), _positive(float)
    ap.add_argument("--duration", type=pf, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--clients", type=pi, default=64, help="concurrent put clients (default 64)")
    ap.add_argument("--procs", type=pi, default=1, help="processes the put clients are spread over (default 1)")
    ap.add_argument("--keys", type=pi, default=20000, help="keys under the prefix (default 20000)")
    ap.add_argument("--value-min", type=pi, default=512, help="smallest value in bytes (default 512)")
    ap.add_argument("--value-max", type=pi, default=1024, help="largest value in bytes (default 1024)")
    ap.add_argument("--read-every", type=pf, default=5.0, help="seconds between prefix-read batches (default 5)")
    ap.add_argument("--readers", type=pi, default=6, help="concurrent full-prefix reads per batch (default 6)")
    ap.add_argument("--probe-every", type=pf, default=0.1, help="seconds between probes of each node (default 0.1)")
    ap.add_argument("--sample-every", type=pf, default=5.0, help="seconds between status samples (default 5)")
    ap.add_argument("--put-timeout", type=pf, default=5.0, help="per-put deadline in seconds (default 5)")
    ap.add_argument("--read-timeout", type=pf, default=60.0, help="per-prefix-read deadline in seconds (default 60)")
    ap.add_argument("--probe-timeout", type=pf, default=15.0, help="per-probe deadline in seconds (default 15)")
    ap.add_argument("--max-rss-mb", type=pi, default=4096, help="stop the load early past this RSS per node")
    ap.add_argument("--min-free-disk-mb", type=pi, default=8192, help="stop the load early below this free disk")
    ap.add_argument("--min-free-mem-mb", type=pi, default=3072, help="stop the load early below this free memory")
    ap.add_argument("--no-prefill", action="store_true", help="do not write every key once before the load")
    ap.add_argument("--json", metavar="FILE", help="also write the full report (with every sample) here")
    ap.add_argument("--logs", metavar="DIR", help="copy the nodes' logs here before the cluster is purged")
    a = ap.parse_args(argv)
    if a.value_min > a.value_max:
        ap.error(f"--value-min {a.value_min} is larger than --value-max {a.value_max}")
    if a.procs > a.clients:
        ap.error(f"--procs {a.procs} is more than --clients {a.clients}")
    if a.json:
        d = Path(a.json).resolve().parent
        if not d.is_dir():
            ap.error(f"--json {a.json}: directory {d} does not exist")
    return a


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """So `kill PID` tears the cluster down like Ctrl-C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="qlsoak-"))
    orch: Orchestrate | None = None
    rc = 0
    with _sigterm_as_interrupt():
        try:
            cp = port_base(3, set())
            pp = port_base(3, set(range(cp, cp + 3)))
            orch = Orchestrate(tmp, f"soak-{os.getpid()}", cp, pp)
            say(f"starting 3 nodes of {REPO} (client ports {cp}+, peer ports {pp}+, state in {orch.root})")
            orch.up()
            res = asyncio.run(run(a, orch, say))
            text = render(res)
            print(text, flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=1))
                say(f"wrote {a.json}")
        except SoakError as e:
            print(f"soak: {e}", file=sys.stderr)
            rc = 1
        except KeyboardInterrupt:
            print("soak: interrupted; stopping the cluster", file=sys.stderr)
            rc = 130
        finally:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave nodes running
            try:
                if orch is not None:
                    if a.logs:
                        with contextlib.suppress(OSError):
                            orch.copy_logs(Path(a.logs))
                    say(f"down --purge: {orch.down()}")
                shutil.rmtree(tmp, ignore_errors=True)
            finally:
                signal.signal(signal.SIGINT, old)
    return rc


if __name__ == "__main__":
    sys.exit(main())

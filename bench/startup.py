"""`python -m bench.startup`: where `orchestrate up` spends its time, phase by phase.

Runs `orchestrate up` as a user does (a fresh interpreter, a throwaway --root, free ports) and splits
its wall time with real timestamps: the CLI's interpreter start and imports (PYTHONPROFILEIMPORTTIME,
which the nodes inherit, so each node's log holds its own import table), each node's process start
time, the times its log gives for peer and client ports listening and for the first leader, and the
send time the orchestrator's own writability probe carries as its value (`quorumlab/up`). Medians over
rounds; every cluster is purged even when a round fails. `--no-importtime` runs without the import
tables (a clean wall time, for A/B comparisons of cuts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from orchestrator.cluster import Cluster
from orchestrator.ports import port_block

REPO = Path(__file__).resolve().parent.parent
NAME = "up"
ROUND_TIMEOUT_S = 120.0

# (key, what it covers); each is a duration in ms and the keys in order sum to the wall time
PHASES: list[tuple[str, str]] = [
    ("cli_imports", "CLI: interpreter start + imports (-X importtime total)"),
    ("cli_prepare", "CLI: config, state, port checks until the first node is spawned"),
    ("spawn_spread", "CLI: first to last node spawned"),
    ("node_imports", "node (slowest): interpreter start + imports, from spawn"),
    ("node_peer_up", "node (slowest): WAL open, peer port listening, after its imports"),
    ("node_grpc_up", "node (slowest): gRPC client port listening, after its peer port"),
    ("election", "cluster: last node serving -> first leader known"),
    ("poll_lag", "CLI: leader known -> first write sent (its polling)"),
    ("writes", "CLI: first -> last write sent (one per client port)"),
    ("finish", "CLI: last write sent -> `up` returned (ack, member ids, final view, exit)"),
]

_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class NodeTimes:
    """One node's marks, in seconds since the epoch (imports_s is a duration)."""

    spawned: float
    imports_s: float | None = None
    peer_up: float | None = None
    grpc_up: float | None = None
    leader_known: float | None = None


@dataclass
class Round:
    t0: float  # when `orchestrate up` was spawned (epoch seconds)
    wall_s: float
    phases: dict[str, float] = field(default_factory=dict)  # ms
    cpu: dict[str, float] = field(default_factory=dict)  # ms of CPU until `up` returned: cli, nodes (their sum)
    nodes: dict[str, NodeTimes] = field(default_factory=dict)


def _cpu_ms(pid: int) -> float:
    """CPU a process has used so far (0 when it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return (t.user + t.system) * 1000


def import_total_s(text: str) -> float | None:
    """Sum of the top-level cumulative times of a -X importtime table (None: no table)."""
    total, seen = 0, False
    for m in _IMPORT.finditer(text):
        seen = True
        if len(m.group(3)) == 1:  # one space after the bar: imported by the script, not by a module
            total += int(m.group(2))
    return total / 1e6 if seen else None


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_node_log(text: str, spawned: float) -> NodeTimes:
    """A node's marks from its log: the last start in it (the log appends)."""
    text = text.rsplit("\n=== ", 1)[-1]
    nt = NodeTimes(spawned, imports_s=import_total_s(text))
    for line in text.splitlines():
        t = _stamp(line)
        if t is None:
            continue
        if nt.peer_up is None and " started; peer " in line:
            nt.peer_up = t
        elif nt.grpc_up is None and " serving clients on " in line:
            nt.grpc_up = t
        elif nt.leader_known is None and ("leader is now" in line or "became leader" in line):
            nt.leader_known = t
    return nt


async def _probe_sends(c: Cluster) -> tuple[float, float]:
    """(first, last) send time of the writability probe: the value each put carried."""
    async with c.client() as cl:
        latest = await cl.get("quorumlab/up")
        kv = latest.kvs[0]
        first = await cl.get("quorumlab/up", revision=kv.create_revision)
        return float(first.kvs[0].value), float(kv.value)


def phases_of(
    t0: float, t_end: float, cli_imports: float, nodes: dict[str, NodeTimes], probe: tuple[float, float]
) -> dict[str, float]:
    """The phase durations (ms) of one round from its marks; they add up to the wall time."""
    spawns = sorted(n.spawned for n in nodes.values())
    imported = max(n.spawned + (n.imports_s or 0.0) for n in nodes.values())
    peer = max(n.peer_up or imported for n in nodes.values())
    grpc = max(n.grpc_up or peer for n in nodes.values())
    leader = min((n.leader_known for n in nodes.values() if n.leader_known), default=grpc)
    leader = max(leader, grpc)  # a leader before the last node serves: no election wait of its own
    marks = [t0, t0 + cli_imports, spawns[0], spawns[-1], imported, peer, grpc, leader, probe[0], probe[1], t_end]
    for i in range(1, len(marks)):  # clocks of 10 ms (process start) and 1 ms (logs): keep it monotonic
        marks[i] = max(marks[i], marks[i - 1])
    return {k: (marks[i + 1] - marks[i]) * 1000 for i, (k, _) in enumerate(PHASES)}


def run_round(nodes: int, importtime: bool, engine: str = "builtin") -> Round:
    """One `orchestrate up` in a fresh interpreter and a throwaway root; always purged."""
    with tempfile.TemporaryDirectory(prefix="qlbench-startup-") as root:
        base = [sys.executable, "-m", "orchestrator", "--root", root, "--name", NAME]
        args = ["up", "--nodes", str(nodes), "--engine", engine, "-q"]
        args += ["--client-port", str(port_block(nodes)), "--peer-port", str(port_block(nodes))]
        env = dict(os.environ)
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        # a user's python caches bytecode: without it every round recompiles what has no .pyc yet
        # (~100 ms of the CLI's start in a checkout run with PYTHONDONTWRITEBYTECODE=1)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if importtime:
            env["PYTHONPROFILEIMPORTTIME"] = "1"
        try:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.time()
            proc = subprocess.Popen([*base, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # process start times come from boot time + jiffies, and boot time is whole seconds:
            # the CLI's own start time against t0 gives the offset to correct the nodes' by
            try:
                skew = psutil.Process(proc.pid).create_time() - t0
            except psutil.Error:
                skew = 0.0
            try:
                _, err = proc.communicate(timeout=ROUND_TIMEOUT_S)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
            t_end = time.time()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI, reaped; its nodes run on
            cli_cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
            if proc.returncode != 0:
                tail = err.decode(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"`orchestrate up` exited {proc.returncode}: " + " / ".join(tail))
            c = Cluster(Path(root), NAME)
            st = c.st
            marks = {
                n: parse_node_log(c.dir.log_file(n).read_text(errors="replace"), st.nodes[n].create_time - skew)
                for n in st.live_names()
            }
            cpu = {"cli": cli_cpu, "nodes": sum(_cpu_ms(st.nodes[n].pid) for n in st.live_names())}
            probe = asyncio.run(_probe_sends(c))
            cli_imports = import_total_s(err.decode(errors="replace")) or 0.0
            return Round(t0, t_end - t0, phases_of(t0, t_end, cli_imports, marks, probe), cpu, marks)
        finally:
            subprocess.run([*base, "down", "--purge"], cwd=REPO, env=env, capture_output=True, timeout=120)


def summarise(rounds: list[Round]) -> dict[str, float]:
    out = {k: statistics.median(r.phases[k] for r in rounds) for k, _ in PHASES}
    out["wall"] = statistics.median(r.wall_s * 1000 for r in rounds)
    for k in ("cli", "nodes"):
        out[f"{k}_cpu"] = statistics.median(r.cpu[k] for r in rounds)
    return out


def render(med: dict[str, float], rounds: int, nodes: int, importtime: bool) -> str:
    lines = [
        f"orchestrate up --nodes {nodes}: median of {rounds} round(s), ms" + ("" if importtime else " (no importtime)")
    ]
    for k, what in PHASES:
        lines.append(f"  {k:<13} {med[k]:7.0f}  {what}")
    lines.append(f"  {'sum':<13} {sum(med[k] for k, _ in PHASES):7.0f}  (medians of each phase)")
    lines.append(f"  {'wall':<13} {med['wall']:7.0f}  median wall time, spawn -> `up` returned")
    lines.append(f"  {'cli_cpu':<13} {med['cli_cpu']:7.0f}  CPU of the `orchestrate up` process")
    lines.append(f"  {'nodes_cpu':<13} {med['nodes_cpu']:7.0f}  CPU of all its nodes until `up` returned")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (bytecode caches, page cache)")
    ap.add_argument("--no-importtime", dest="importtime", action="store_false", help="clean wall time only")
    ap.add_argument("-w", "--write-out", choices=["table", "json"], default="table")
    a = ap.parse_args(argv)
    for _ in range(a.warmup):  # writes the bytecode caches; not counted
        run_round(a.nodes, a.importtime)
    rounds = [run_round(a.nodes, a.importtime) for _ in range(a.rounds)]
    med = summarise(rounds)
    if a.write_out == "json":
        print(
            json.dumps(
                {
                    "nodes": a.nodes,
                    "importtime": a.importtime,
                    "median_ms": med,
                    "rounds": [
                        r.phases | {"wall": r.wall_s * 1000} | {f"{k}_cpu": v for k, v in r.cpu.items()} for r in rounds
                    ],
                },
                indent=2,
            )
        )
    else:
        print(render(med, a.rounds, a.nodes, a.importtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())

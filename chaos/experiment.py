"""Scripted experiments: a cluster, a background workload, steps, expectations, checks, a report.

An experiment is YAML (see chaos/experiments/). Steps::

    - wait_for: leader            # optional within: seconds
    - sleep: 2
    - kill|stop|start|pause|resume|restart: TARGET   # name, leader, follower, random, minority, ...
    - partition: [[n1, n2, n3], [n4, n5, n6]]        # or {sizes: [4, 2]} (the leader lands in the first)
    - isolate: leader
    - bridge: n3
    - drop: {from: n1, to: n2}
    - loss: {probability: 0.3, nodes: all}
    - delay: {ms: 100, nodes: leader}
    - heal: {}
    - add: n7 / remove: n7
    - expect: {writable: true|false|quorum, at: cluster|each-side|NODE, within: 5}
    - expect: {leaders: 1, within: 5}
    - kill_until_unwritable: {}   # the quorum table: kill nodes one by one, probing writes
    - repeat: {times: 3, steps: [...]}

``cluster.nodes`` may be a list of sizes: the steps then run once per size.
Every expectation records what was measured beside what was expected.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from node.client import Client, ClientError
from orchestrator.cluster import Cluster
from orchestrator.config import ClusterConfig
from orchestrator.ports import port_block
from orchestrator.quorum import fault_tolerance, quorum

from .checker import INVALID, UNKNOWN, VALID, check
from .faults import Chaos, FaultError
from .history import save
from .workload import Workload

BUILTIN_DIR = Path(__file__).resolve().parent / "experiments"
STEP_KINDS = ("wait_for", "sleep", "kill", "stop", "start", "pause", "resume", "restart", "partition", "isolate",
              "bridge", "drop", "loss", "delay", "heal", "add", "remove", "expect", "kill_until_unwritable",
              "repeat", "move_leader")  # fmt: skip
TOP_KEYS = ("name", "description", "claim", "cluster", "workload", "steps", "checks")


class ExperimentError(Exception):
    pass


@dataclass
class Expectation:
    t: float
    what: str
    expected: Any
    measured: Any
    passed: bool
    size: int
    took: float = 0.0


@dataclass
class RunResult:
    name: str
    claim: str
    sizes: list[int]
    expectations: list[Expectation] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    report_dir: str = ""
    verdict: str = VALID

    @property
    def exit_code(self) -> int:
        return {VALID: 0, INVALID: 1, UNKNOWN: 2}[self.verdict]


def list_builtin() -> list[tuple[str, str]]:
    out = []
    for p in sorted(BUILTIN_DIR.glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        out.append((p.stem, d.get("description", "")))
    return out


def load(ref: str) -> dict[str, Any]:
    p = Path(ref)
    if not p.exists():
        p = BUILTIN_DIR / f"{ref}.yaml"
    if not p.exists():
        names = ", ".join(n for n, _ in list_builtin())
        raise ExperimentError(f"no experiment {ref!r} (a YAML file, or one of: {names})")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ExperimentError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ExperimentError(f"{p}: expected a mapping at the top")
    for k in d:
        if k not in TOP_KEYS:
            raise ExperimentError(f"{p}: unknown key {k!r}; known: {', '.join(TOP_KEYS)}")
    _validate_steps(p, d.get("steps") or [])
    d.setdefault("name", p.stem)
    return d


def _validate_steps(p: Path, steps: list[Any]) -> None:
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or len(s) != 1:
            raise ExperimentError(f"{p}: step {i + 1}: expected one 'kind: argument' per step, got {s!r}")
        (kind,) = s
        if kind not in STEP_KINDS:
            raise ExperimentError(f"{p}: step {i + 1}: unknown step {kind!r}; known: {', '.join(STEP_KINDS)}")
        if kind == "repeat":
            _validate_steps(p, (s[kind] or {}).get("steps", []))
        if kind == "expect":
            arg = s[kind]
            bad = [k for k in (arg or {}) if k not in ("writable", "leaders", "at", "within")]
            if not isinstance(arg, dict) or bad or not ({"writable", "leaders"} & set(arg)):
                raise ExperimentError(
                    f"{p}: step {i + 1}: expect takes writable or leaders, plus at and within; got {arg!r}"
                    + (" (YAML reads a bare `on:` key as true: say at:)" if True in (arg or {}) else "")
                )


class Runner:
    def __init__(self, spec: dict[str, Any], root: Path, reports: Path, *, engine: str | None = None,
                 net: str | None = None, heartbeat_ms: int = 50, election_ms: int = 500, seed: int | None = None,
                 progress: Any = None) -> None:  # fmt: skip
        self.spec = spec
        self.root = root
        self.reports = reports
        cl = spec.get("cluster") or {}
        self.engine = engine or cl.get("engine", "builtin")
        self.net = net or cl.get("net", "local")
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.say = progress or (lambda s: None)
        nodes = cl.get("nodes", 3)
        self.sizes = list(nodes) if isinstance(nodes, list) else [int(nodes)]
        self.t0 = time.monotonic()
        self.result = RunResult(spec["name"], spec.get("claim", ""), self.sizes)
        self.chaos: Chaos | None = None
        self.cluster: Cluster | None = None
        self.size = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> RunResult:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = self.reports / f"{stamp}-{self.spec['name']}"
        out.mkdir(parents=True, exist_ok=True)
        self.result.report_dir = str(out)
        histories = []
        wl_cfg = self.spec.get("workload") or {}
        for size in self.sizes:
            self.size = size
            name = f"exp-{self.spec['name']}-{size}"[:30].rstrip("-")
            cfg = replace(ClusterConfig(), name=name, engine=self.engine, network=self.net,
                          client_port=port_block(size + 4), peer_port=port_block(size + 4),
                          heartbeat_ms=self.heartbeat_ms, election_ms=self.election_ms).with_nodes(size)  # fmt: skip
            c = Cluster(self.root, name)
            c.create(cfg)
            self.cluster = c
            self.say(f"N={size}: starting {size} {self.engine} nodes ({self.net} network)")
            wl: Workload | None = None
            try:
                await c.up(60)
                self.chaos = Chaos(c, t0=self.t0)
                self.chaos.log("note", f"cluster of {size} up", size=size)
                clients = int(wl_cfg.get("clients", 0))
                if clients:
                    eps = {n: c.st.nodes[n].endpoint for n in c.st.live_names()}
                    wl = Workload(eps, clients=clients, hot_keys=int(wl_cfg.get("hot_keys", 3)),
                                  timeout=float(wl_cfg.get("timeout", 1.0)), rate=float(wl_cfg.get("rate", 0)),
                                  seed=self.seed, t0=self.t0)  # fmt: skip
                    wl.start()
                await self._steps(self.spec.get("steps") or [])
            finally:
                if self.chaos is not None:
                    try:
                        await self.chaos.heal()
                        for n in c.st.live_names():
                            if c.launcher.state(c.st.nodes[n]) == "stopped":
                                c.start_node(n)
                    except Exception as e:  # noqa: BLE001 - the teardown must go on
                        self.say(f"heal failed: {e}")
                if wl is not None:
                    await wl.stop()
                    self.say("workload stopped; reading the final state")
                    eps_all = [c.st.nodes[n].endpoint for n in c.st.live_names()]
                    try:
                        await c.wait_ready(30)
                    except Exception as e:  # noqa: BLE001 - reported as an unknown verdict below
                        self.say(f"cluster did not recover: {e}")
                    final = await wl.final_read(eps_all)
                    histories.append((size, wl, final))
                if self.chaos is not None:
                    self.result.events += [dict(ev.__dict__, size=size) for ev in self.chaos.events]
                c.down(purge=True)
        self._check(histories, out)
        self.result.seconds = round(self.now(), 2)
        if any(not e.passed for e in self.result.expectations) or self.result.check.get("verdict") == INVALID:
            self.result.verdict = INVALID
        elif self.result.check.get("verdict") == UNKNOWN:
            self.result.verdict = UNKNOWN
        self._write(out, histories)
        return self.result

    def _check(self, histories: list[tuple[int, Workload, dict[str, str | None] | None]], out: Path) -> None:
        checks = self.spec.get("checks") or (["linearizable"] if histories else [])
        if not histories or "linearizable" not in checks:
            return
        merged: dict[str, Any] = {"verdict": VALID, "per_size": []}
        for size, wl, final in histories:
            res = check(wl.history, budget_s=60.0, final=final)
            d = res.to_dict()
            d["size"] = size
            if final is None:
                d["verdict"] = UNKNOWN
                d["note"] = "the cluster never answered the final read"
            merged["per_size"].append(d)
            if d["verdict"] == INVALID or (d["verdict"] == UNKNOWN and merged["verdict"] == VALID):
                merged["verdict"] = d["verdict"]
            self.result.workload[str(size)] = wl.stats()
            self.say(res.summary().splitlines()[0])
        self.result.check = merged

    # -- steps --------------------------------------------------------------------------------------
    async def _steps(self, steps: list[dict[str, Any]]) -> None:
        for s in steps:
            ((kind, arg),) = s.items()
            self.say(f"N={self.size} t={self.now():5.1f}s: {kind} {arg if arg not in (None, {}) else ''}".rstrip())
            try:
                await self._step(kind, arg)
            except FaultError as e:
                raise ExperimentError(f"step {kind}: {e}") from None

    async def _step(self, kind: str, arg: Any) -> None:
        ch, c = self.chaos, self.cluster
        assert ch is not None and c is not None
        if kind == "wait_for":
            await self._wait_leader(float((arg or {}).get("within", 15)) if isinstance(arg, dict) else 15.0)
        elif kind == "sleep":
            await asyncio.sleep(float(arg))
        elif kind in ("kill", "stop", "start", "pause", "resume", "restart"):
            await ch.process(kind, arg)
        elif kind == "partition":
            await ch.partition(await self._groups(arg))
        elif kind == "isolate":
            await ch.isolate(arg)
        elif kind == "bridge":
            await ch.bridge(arg)
        elif kind == "drop":
            await ch.drop(arg["from"], arg["to"])
        elif kind == "loss":
            await ch.loss(float(arg["probability"]), arg.get("nodes", "all"))
        elif kind == "delay":
            await ch.delay(float(arg["ms"]), arg.get("nodes", "all"))
        elif kind == "heal":
            await ch.heal()
        elif kind == "move_leader":
            target = (await ch.resolve(arg))[0]
            await c.move_leader(target)
            ch.log("note", f"moved leadership to {target}")
        elif kind == "add":
            await c.add(arg, voter=False, timeout=30)
            ch.log("membership", f"added {arg}")
        elif kind == "remove":
            name = (await ch.resolve(arg))[0]
            await c.remove(name, timeout=30)
            ch.log("membership", f"removed {name}")
        elif kind == "expect":
            await self._expect(arg)
        elif kind == "kill_until_unwritable":
            await self._kill_until_unwritable()
        elif kind == "repeat":
            times = arg.get("times", 1)
            n = self.size if times == "nodes" else int(times)
            for _ in range(n):
                await self._steps(arg.get("steps") or [])

    async def _groups(self, arg: Any) -> list[list[str]]:
        assert self.cluster is not None
        if isinstance(arg, list):
            return [list(g) for g in arg]
        sizes = arg["sizes"]
        view = await self.cluster.view(usage=False)
        names = sorted(self.cluster.st.live_names(), key=lambda n: (n != view.leader, n))
        groups, i = [], 0
        for k in sizes:
            groups.append(names[i : i + k])
            i += k
        return groups

    async def _wait_leader(self, within: float) -> None:
        assert self.cluster is not None and self.chaos is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            v = await self.cluster.view(usage=False)
            if v.leader and v.has_quorum:
                self.chaos.log("leader", f"leader {v.leader} (term {v.term})", leader=v.leader, term=v.term)
                return
            await asyncio.sleep(0.1)
        raise ExperimentError(f"no leader within {within}s")

    async def probe(self, nodes: list[str], timeout: float = 1.0) -> tuple[bool, float]:
        """Can a write be acknowledged through any of these nodes? (and how long it took)"""
        assert self.cluster is not None
        t0 = time.monotonic()
        running = [n for n in nodes if self.cluster.launcher.state(self.cluster.st.nodes[n]) == "running"]

        async def one(n: str) -> bool:
            assert self.cluster is not None
            async with Client([self.cluster.st.nodes[n].endpoint], timeout=timeout) as cl:
                try:
                    await cl.put(f"probe/{n}", f"{time.time()}")
                    return True
                except ClientError:
                    return False

        results = await asyncio.gather(*(one(n) for n in running))
        return any(results), time.monotonic() - t0

    async def _expect(self, arg: dict[str, Any]) -> None:
        assert self.cluster is not None and self.chaos is not None
        within = float(arg.get("within", 5))
        on = arg.get("at", "cluster")
        deadline = time.monotonic() + within
        if "leaders" in arg:
            want = int(arg["leaders"])
            measured = -1
            while True:
                v = await self.cluster.view(usage=False)
                measured = sum(1 for x in v.nodes if x.role == "leader" and x.state == "running")
                if measured == want or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            self._record(f"leaders == {want}", want, measured, measured == want, within)
            return
        want_w = arg.get("writable")
        sides = await self._sides(on)
        for side in sides:
            expected = want_w
            if want_w == "quorum":
                v = await self.cluster.view(usage=False)
                alive = [
                    n
                    for n in side
                    if n in v.voters and self.cluster.launcher.state(self.cluster.st.nodes[n]) == "running"
                ]
                expected = len(alive) >= v.quorum
            t_start = time.monotonic()
            # positive expectations may take time to come true; negative ones must hold throughout
            while True:
                ok, _ = await self.probe(side, timeout=min(1.0, within))
                if ok == expected and expected:
                    break
                if ok and not expected:
                    break
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            what = f"{'+'.join(side)} writable"
            self._record(what, expected, ok, ok == expected, time.monotonic() - t_start)

    async def _sides(self, on: Any) -> list[list[str]]:
        assert self.cluster is not None and self.chaos is not None
        names = self.cluster.st.live_names()
        if on == "each-side":
            groups = self.chaos.groups or [names]
            return [g for g in groups if g]
        if on == "cluster":
            return [names]
        return [await self.chaos.resolve(on)]

    def _record(self, what: str, expected: Any, measured: Any, passed: bool, took: float) -> None:
        assert self.chaos is not None
        e = Expectation(round(self.now(), 3), what, expected, measured, passed, self.size, round(took, 3))
        self.result.expectations.append(e)
        self.chaos.log("expect", f"{what}: expected {expected}, measured {measured} — {'ok' if passed else 'FAILED'}",
                       passed=passed)  # fmt: skip
        self.say(f"  expect {what}: expected {expected}, measured {measured} {'✓' if passed else '✗'}")

    async def _kill_until_unwritable(self) -> None:
        """The quorum table: kill one node at a time, probing writes after each."""
        assert self.cluster is not None and self.chaos is not None
        n = self.size
        row: dict[str, Any] = {"n": n, "quorum": quorum(n), "fault_tolerance": fault_tolerance(n), "probes": []}
        stopped_after = None
        for down in range(n):
            expected = n - down >= quorum(n)
            # a new election may be needed after the last kill: give it a few election timeouts
            ok, took = False, 0.0
            deadline = time.monotonic() + (6 * self.election_ms / 1000 if expected else 2.0)
            while True:
                ok, took = await self.probe(self.cluster.st.live_names(), timeout=1.0)
                if ok or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            row["probes"].append({"down": down, "writable": ok, "expected": expected})
            self._record(f"N={n}, {down} down: writable", expected, ok, ok == expected, took)
            if not ok and stopped_after is None:
                stopped_after = down
            if down < n - 1:
                v = await self.cluster.view(usage=False)
                victims = [x.name for x in v.nodes if x.state == "running" and x.name != v.leader] or [v.leader]
                await self.chaos.process("kill", victims[-1])
        row["writes_stopped_after_killing"] = stopped_after if stopped_after is not None else n
        row["measured_fault_tolerance"] = (stopped_after if stopped_after is not None else n) - 1
        self.result.tables.append(row)

    # -- report --------------------------------------------------------------------------------------
    def _write(self, out: Path, histories: list[tuple[int, Workload, dict[str, str | None] | None]]) -> None:
        for size, wl, _ in histories:
            save(wl.history, out / (f"history-{size}.jsonl" if len(self.sizes) > 1 else "history.jsonl"))
        r = self.result
        verdict = {
            "name": r.name,
            "claim": r.claim,
            "verdict": r.verdict,
            "engine": self.engine,
            "net": self.net,
            "sizes": r.sizes,
            "seed": self.seed,
            "seconds": r.seconds,
            "expectations": [e.__dict__ for e in r.expectations],
            "quorum_table": r.tables,
            "linearizability": r.check,
            "workload": r.workload,
        }
        (out / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str))
        (out / "events.json").write_text(json.dumps(r.events, indent=2, default=str))
        try:
            from .report import plot

            plot(out / "timeline.png", histories, r.events, r.name)
        except ImportError as e:
            (out / "timeline.txt").write_text(f"no picture: {e}\n")


def summary(r: RunResult) -> str:
    lines = [f"experiment {r.name}: {r.verdict.upper()} in {r.seconds:.1f}s   (report: {r.report_dir})"]
    if r.claim:
        lines.append(f"  claim: {r.claim}")
    for e in r.expectations:
        mark = "✓" if e.passed else "✗"
        lines.append(f"  {mark} N={e.size} t={e.t:6.1f}s {e.what}: expected {e.expected}, measured {e.measured}")
    for row in r.tables:
        lines.append(
            f"  N={row['n']}: quorum {row['quorum']}, fault tolerance {row['fault_tolerance']}; writes stopped "
            f"after killing {row['writes_stopped_after_killing']} (measured tolerance "
            f"{row['measured_fault_tolerance']})"
        )
    if r.check:
        for d in r.check.get("per_size", []):
            lost = len(d.get("lost_writes", []))
            lines.append(f"  history N={d['size']}: {d['verdict']} — {d['operations']} operations, "
                         f"{lost} lost acknowledged writes, checked in {d['seconds']}s")  # fmt: skip
            lines += [f"    {x}" for x in d.get("explanations", [])[:2]]
    for size, st in r.workload.items():
        lines.append(f"  workload N={size}: {st['ok']} ok, {st['fail']} failed, {st['info']} unknown; "
                     f"{st['ops_per_s']} ops/s, p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms")  # fmt: skip
    return "\n".join(lines)

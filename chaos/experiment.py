"""Scripted experiments: a cluster, a background workload, steps, expectations, checks, a report.

An experiment is YAML (see chaos/experiments/) with the keys in `TOP_KEYS`. Its steps, and what
each kind of step takes and does, are in chaos/steps.py. ``cluster.nodes`` may be a list of sizes:
the steps then run once per size, each on a fresh cluster.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cluster import Cluster
from orchestrator.config import ClusterConfig
from orchestrator.ports import port_block

from .checker import INVALID, UNKNOWN, VALID, check
from .faults import Chaos
from .history import save
from .steps import Expectation, ExperimentError, Stage, run_steps, validate_steps
from .workload import Workload

BUILTIN_DIR = Path(__file__).resolve().parent / "experiments"
TOP_KEYS = ("name", "description", "claim", "cluster", "workload", "steps", "checks")


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
    validate_steps(p, d.get("steps") or [])
    d.setdefault("name", p.stem)
    return d


class Runner:
    def __init__(
        self,
        spec: dict[str, Any],
        root: Path,
        reports: Path,
        *,
        engine: str | None = None,
        net: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        seed: int | None = None,
        progress: Any = None,
    ) -> None:
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
            self.chaos = None  # a size that fails to come up must not heal or re-log the previous size's faults
            name = f"exp-{self.spec['name']}-{size}"[:30].rstrip("-")
            base = replace(
                ClusterConfig(),
                name=name,
                engine=self.engine,
                network=self.net,
                client_port=port_block(size + 4),
                peer_port=port_block(size + 4),
                heartbeat_ms=self.heartbeat_ms,
                election_ms=self.election_ms,
            )
            cfg = base.with_nodes(size)
            c = Cluster(self.root, name)
            c.create(cfg)
            self.say(f"N={size}: starting {size} {self.engine} nodes ({self.net} network)")
            wl: Workload | None = None
            try:
                await c.up(60)
                self.chaos = Chaos(c, t0=self.t0)
                self.chaos.log("note", f"cluster of {size} up", size=size)
                clients = int(wl_cfg.get("clients", 0))
                if clients:
                    eps = {n: c.st.nodes[n].endpoint for n in c.st.live_names()}
                    wl = Workload(
                        eps,
                        clients=clients,
                        hot_keys=int(wl_cfg.get("hot_keys", 3)),
                        timeout=float(wl_cfg.get("timeout", 1.0)),
                        rate=float(wl_cfg.get("rate", 0)),
                        seed=self.seed,
                        t0=self.t0,
                        tls=c.tls,
                    )
                    wl.start()
                stage = Stage(
                    cluster=c,
                    chaos=self.chaos,
                    size=size,
                    election_ms=self.election_ms,
                    t0=self.t0,
                    say=self.say,
                    expectations=self.result.expectations,
                    tables=self.result.tables,
                )
                await run_steps(stage, self.spec.get("steps") or [])
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
            head = f"  history N={d['size']}: {d['verdict']} — {d['operations']} operations"
            lines.append(f"{head}, {lost} lost acknowledged writes, checked in {d['seconds']}s")
            lines += [f"    {x}" for x in d.get("explanations", [])[:2]]
    for size, st in r.workload.items():
        counts = f"{st['ok']} ok, {st['fail']} failed, {st['info']} unknown"
        rates = f"{st['ops_per_s']} ops/s, p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms"
        lines.append(f"  workload N={size}: {counts}; {rates}")
    return "\n".join(lines)

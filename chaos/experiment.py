"""Scripted experiments: a cluster, a background workload, steps, expectations, checks, a report.

An experiment is YAML (see chaos/experiments/) with the keys in `TOP_KEYS`. Its steps, and what
each kind of step takes and does, are in chaos/steps.py. ``cluster.nodes`` may be a list of sizes:
the steps then run once per size, each on a fresh cluster.

``workload`` is a mapping (clients, hot_keys, timeout, rate, kind, watch) or just a kind:
``kind: register`` (put/get/cas, checked for linearizability) or ``kind: append`` (multi-key
transactions, checked for strict serializability by chaos.elle); ``watch: true`` keeps a watch
stream per node and checks it with chaos.watchcheck. The verdict combines every check: any
INVALID is INVALID, else any UNKNOWN is UNKNOWN.
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
from orchestrator.config import ClusterConfig, Host
from orchestrator.ports import port_block

from .checker import INVALID, UNKNOWN, VALID, check, draw_anomaly
from .elle import check_append
from .faults import Chaos
from .history import APPEND, REGISTER, FinalRead, Op, WatchRecord, save
from .steps import Expectation, ExperimentError, Stage, run_steps, validate_steps
from .watchcheck import check_watches
from .workload import Workload

BUILTIN_DIR = Path(__file__).resolve().parent / "experiments"
TOP_KEYS = ("name", "description", "claim", "cluster", "workload", "steps", "checks")
# guard: false drops the append workload's mod_revision compares: a broken client, for showing what
# the checker finds (lost updates) — never what a real run should use
WORKLOAD_KEYS = ("clients", "hot_keys", "timeout", "rate", "kind", "watch", "guard")
KINDS = (REGISTER, APPEND)
CHECKS = ("linearizable", "strict-serializable", "watch")


def combine(verdicts: list[str]) -> str:
    """Any INVALID is INVALID; else any UNKNOWN is UNKNOWN; else VALID."""
    return INVALID if INVALID in verdicts else UNKNOWN if UNKNOWN in verdicts else VALID


def workload_config(p: Path | str, raw: Any) -> dict[str, Any]:
    """The `workload:` value as a mapping, checked: a bare kind means that kind with 4 clients."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"kind": raw, "clients": 4}
    if not isinstance(raw, dict):
        raise ExperimentError(f"{p}: workload: expected a mapping or one of {', '.join(KINDS)}")
    for k in raw:
        if k not in WORKLOAD_KEYS:
            raise ExperimentError(f"{p}: workload: unknown key {k!r}; known: {', '.join(WORKLOAD_KEYS)}")
    if raw.get("kind", REGISTER) not in KINDS:
        raise ExperimentError(f"{p}: workload: kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
    return dict(raw)


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
    d["workload"] = workload_config(p, d.get("workload"))
    for c in d.get("checks") or []:
        if c not in CHECKS:
            raise ExperimentError(f"{p}: checks: unknown check {c!r}; known: {', '.join(CHECKS)}")
    if "watch" in (d.get("checks") or []):  # the watch check needs the streams: open them
        if not d["workload"].get("clients"):
            raise ExperimentError(f"{p}: checks: watch needs a workload (workload: {{clients: N}})")
        if d["workload"].get("watch") is False:
            raise ExperimentError(f"{p}: checks: watch, but workload.watch is false")
        d["workload"]["watch"] = True
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
        hosts: tuple[Host, ...] = (),
    ) -> None:
        """hosts: cluster.yaml's hosts; remote ones put each fresh cluster there (and so turn TLS on)."""
        self.spec = spec
        self.hosts = hosts
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
            if any(h.remote for h in self.hosts):
                base = replace(base, hosts=self.hosts, tls=True)
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
                        kind=str(wl_cfg.get("kind", REGISTER)),
                        watch=bool(wl_cfg.get("watch", False)) or "watch" in (self.spec.get("checks") or []),
                        guard=bool(wl_cfg.get("guard", True)),
                    )
                    await wl.start_watches()
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
        if not histories or not set(checks) & set(CHECKS):
            return
        merged: dict[str, Any] = {"verdict": VALID, "per_size": []}
        for size, wl, final in histories:
            multi = len(self.sizes) > 1
            d = check_recorded(wl.history, wl.final_kvs, final, wl.watch_log, wl.kind, wl.watch, budget_s=60.0)
            d["size"] = size
            if final is None:  # nothing to check lost writes against: at best unknown, INVALID stays
                d["verdict"] = combine([d["verdict"], UNKNOWN])
                d["note"] = "the cluster never answered the final read"
            d["pictures"] = [str(p) for p in draw(d, wl.history, out / (f"anomalies-{size}" if multi else "anomalies"))]
            merged["per_size"].append(d)
            merged["verdict"] = combine([merged["verdict"], d["verdict"]])
            self.result.workload[str(size)] = wl.stats()
            self.say(f"N={size}: {d['verdict']} ({d['checker']}, {d['operations']} operations)")
        self.result.check = merged

    # -- report --------------------------------------------------------------------------------------
    def _write(self, out: Path, histories: list[tuple[int, Workload, dict[str, str | None] | None]]) -> None:
        for size, wl, _ in histories:
            name = f"history-{size}.jsonl" if len(self.sizes) > 1 else "history.jsonl"
            save(wl.history, out / name, wl.watch_log, wl.final_kvs)
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
            if d.get("checker") == "elle":
                found = ", ".join(f"{k} x{v}" for k, v in d.get("anomalies", {}).items()) or "no anomalies"
                lines.append(f"{head} ({d['transactions']} transactions): {found}, checked in {d['seconds']}s")
            else:
                lines.append(f"{head}, {lost} lost acknowledged writes, checked in {d['seconds']}s")
            lines += [f"    {x}" for x in d.get("explanations", [])[:2]]
            w = d.get("watch")
            if w:
                bad = ", ".join(f"{k} x{v}" for k, v in w["violations"].items()) or "no violations"
                lines.append(
                    f"  watches N={d['size']}: {w['verdict']} — {w['events']} events on {w['streams']} streams, {bad}"
                )
                lines += [f"    {x}" for x in w.get("explanations", [])[:2]]
            lines += [f"    picture: {p}" for p in d.get("pictures", [])[:3]]
    for size, st in r.workload.items():
        counts = f"{st['ok']} ok, {st['fail']} failed, {st['info']} unknown"
        rates = f"{st['ops_per_s']} ops/s, p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms"
        lines.append(f"  workload N={size}: {counts}; {rates}")
    return "\n".join(lines)


def check_recorded(
    ops: list[Op],
    final_kvs: FinalRead | None,
    final_values: dict[str, str | None] | None,
    watch: list[WatchRecord],
    kind: str,
    watches: bool,
    budget_s: float,
) -> dict[str, Any]:
    """Every check a recorded run calls for, as one dict: the history checker of its kind (register:
    linearizability, append: strict serializability) and, with watch records, the watch checker."""
    if kind == APPEND:
        res_a = check_append(ops, final_kvs, budget_s=budget_s)
        d = res_a.to_dict()
        d["_anomalies"] = res_a.anomalies
    else:
        res_r = check(ops, budget_s=budget_s, final=final_values)
        d = res_r.to_dict()
        d["checker"] = "linearizability"
        d["_result"] = res_r
    verdicts = [d["verdict"]]
    d["history_verdict"] = d["verdict"]
    if watches and watch:
        w = check_watches(watch, ops, final_kvs, prefix="a/" if kind == APPEND else "hot/")
        d["watch"] = w.to_dict()
        verdicts.append(w.verdict)
    elif watches:  # asked for, yet no stream recorded anything: not checked is not valid
        d["watch"] = {
            "checker": "watch",
            "verdict": UNKNOWN,
            "streams": 0,
            "events": 0,
            "violations": {},
            "explanations": ["no watch stream recorded anything"],
        }
        verdicts.append(UNKNOWN)
    d["verdict"] = combine(verdicts)
    return d


def draw(d: dict[str, Any], ops: list[Op], folder: Path) -> list[Path]:
    """The anomaly pictures of one checked history (none when it is valid); pops the live objects."""
    anomalies = d.pop("_anomalies", None)
    result = d.pop("_result", None)
    try:
        if anomalies:
            from .report import draw_cycles

            return draw_cycles(anomalies, folder)
        if result is not None and result.verdict == INVALID:
            return draw_anomaly(result, ops, folder)
    except (ImportError, OSError) as e:
        d["picture_error"] = str(e)
    return []

"""Experiment step kinds: each is one `StepKind` entry in `KINDS` that names it, checks it, runs it.

A step is a one-key mapping ``kind: argument`` in an experiment's YAML::

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
    - move_leader: n2
    - expect: {writable: true|false|quorum, at: cluster|each-side|NODE, within: 5}
    - expect: {leaders: 1, within: 5}
    - kill_until_unwritable: {}   # the quorum table: kill nodes one by one, probing writes
    - repeat: {times: 3, steps: [...]}   # times: nodes = once per cluster member

The loader checks every step with `validate_steps` before a cluster starts, so a typo costs a
second rather than a run; the runner runs them with `run_steps`. Both look kinds up in `KINDS`
only, so adding a kind is one entry there. Every expectation records what was measured beside
what was expected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.client import Client, ClientError
from orchestrator.cluster import Cluster
from orchestrator.quorum import fault_tolerance, quorum

from .faults import Chaos, FaultError


class ExperimentError(Exception):
    """An experiment that cannot be loaded, or a step that could not be carried out."""


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
class Stage:
    """What steps act on for one cluster size, and where their measurements go (the run's result)."""

    cluster: Cluster
    chaos: Chaos
    size: int
    election_ms: int
    t0: float  # the run's start: every time in the report counts from it
    say: Callable[[str], None]
    expectations: list[Expectation]
    tables: list[dict[str, Any]]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, what: str, expected: Any, measured: Any, passed: bool, took: float) -> None:
        e = Expectation(round(self.now(), 3), what, expected, measured, passed, self.size, round(took, 3))
        self.expectations.append(e)
        verdict = "ok" if passed else "FAILED"
        self.chaos.log("expect", f"{what}: expected {expected}, measured {measured} — {verdict}", passed=passed)
        self.say(f"  expect {what}: expected {expected}, measured {measured} {'✓' if passed else '✗'}")

    async def probe(self, nodes: list[str], timeout: float = 1.0) -> tuple[bool, float]:
        """Can a write be acknowledged through any of these nodes? (and how long it took)"""
        t0 = time.monotonic()
        running = [n for n in nodes if self.cluster.launcher.state(self.cluster.st.nodes[n]) == "running"]

        async def one(n: str) -> bool:
            async with Client([self.cluster.st.nodes[n].endpoint], timeout=timeout, tls=self.cluster.tls) as cl:
                try:
                    await cl.put(f"probe/{n}", f"{time.time()}")
                    return True
                except ClientError:
                    return False

        results = await asyncio.gather(*(one(n) for n in running))
        return any(results), time.monotonic() - t0


Run = Callable[[Stage, Any], Awaitable[None]]


@dataclass(frozen=True)
class StepKind:
    """One step kind. `check` says what is wrong with an argument (None: nothing); `nested` gives the
    steps an argument contains, which are validated as steps in their own right."""

    name: str
    run: Run
    check: Callable[[Any], str | None] | None = None
    nested: Callable[[Any], list[Any]] | None = None


# -- running ----------------------------------------------------------------------------------------
async def run_steps(st: Stage, steps: list[dict[str, Any]]) -> None:
    for s in steps:
        ((kind, arg),) = s.items()
        shown = arg if arg not in (None, {}) else ""
        st.say(f"N={st.size} t={st.now():5.1f}s: {kind} {shown}".rstrip())
        if kind not in KINDS:
            raise ExperimentError(f"unknown step {kind!r}; known: {', '.join(KINDS)}")
        try:
            await KINDS[kind].run(st, arg)
        except FaultError as e:
            raise ExperimentError(f"step {kind}: {e}") from None


async def _wait_for(st: Stage, arg: Any) -> None:
    within = float((arg or {}).get("within", 15)) if isinstance(arg, dict) else 15.0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        v = await st.cluster.view(usage=False)
        if v.leader and v.has_quorum:
            st.chaos.log("leader", f"leader {v.leader} (term {v.term})", leader=v.leader, term=v.term)
            return
        await asyncio.sleep(0.1)
    raise ExperimentError(f"no leader within {within}s")


async def _sleep(st: Stage, arg: Any) -> None:
    await asyncio.sleep(float(arg))


def _process(verb: str) -> Run:
    """kill, stop, start, pause, resume, restart: the same call with a different verb."""

    async def run(st: Stage, arg: Any) -> None:
        await st.chaos.process(verb, arg)

    return run


async def _partition(st: Stage, arg: Any) -> None:
    if isinstance(arg, list):
        groups = [list(g) for g in arg]
    else:  # {sizes: [...]}: the leader lands in the first group
        view = await st.cluster.view(usage=False)
        names = sorted(st.cluster.st.live_names(), key=lambda n: (n != view.leader, n))
        groups, i = [], 0
        for k in arg["sizes"]:
            groups.append(names[i : i + k])
            i += k
    await st.chaos.partition(groups)


async def _isolate(st: Stage, arg: Any) -> None:
    await st.chaos.isolate(arg)


async def _bridge(st: Stage, arg: Any) -> None:
    await st.chaos.bridge(arg)


async def _drop(st: Stage, arg: Any) -> None:
    await st.chaos.drop(arg["from"], arg["to"])


async def _loss(st: Stage, arg: Any) -> None:
    await st.chaos.loss(float(arg["probability"]), arg.get("nodes", "all"))


async def _delay(st: Stage, arg: Any) -> None:
    await st.chaos.delay(float(arg["ms"]), arg.get("nodes", "all"))


async def _heal(st: Stage, arg: Any) -> None:
    await st.chaos.heal()


async def _add(st: Stage, arg: Any) -> None:
    await st.cluster.add(arg, voter=False, timeout=30)
    st.chaos.log("membership", f"added {arg}")


async def _remove(st: Stage, arg: Any) -> None:
    name = (await st.chaos.resolve(arg))[0]
    await st.cluster.remove(name, timeout=30)
    st.chaos.log("membership", f"removed {name}")


async def _move_leader(st: Stage, arg: Any) -> None:
    target = (await st.chaos.resolve(arg))[0]
    await st.cluster.move_leader(target)
    st.chaos.log("note", f"moved leadership to {target}")


def _check_expect(arg: Any) -> str | None:
    bad = [k for k in (arg or {}) if k not in ("writable", "leaders", "at", "within")]
    if isinstance(arg, dict) and not bad and {"writable", "leaders"} & set(arg):
        return None
    hint = " (YAML reads a bare `on:` key as true: say at:)" if True in (arg or {}) else ""
    return f"expect takes writable or leaders, plus at and within; got {arg!r}{hint}"


async def _expect(st: Stage, arg: Any) -> None:
    within = float(arg.get("within", 5))
    deadline = time.monotonic() + within
    if "leaders" in arg:
        want = int(arg["leaders"])
        measured = -1
        while True:
            v = await st.cluster.view(usage=False)
            measured = sum(1 for x in v.nodes if x.role == "leader" and x.state == "running")
            if measured == want or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        st.record(f"leaders == {want}", want, measured, measured == want, within)
        return
    want_w = arg.get("writable")
    for side in await _sides(st, arg.get("at", "cluster")):
        expected = want_w
        if want_w == "quorum":
            v = await st.cluster.view(usage=False)
            alive = [
                n for n in side if n in v.voters and st.cluster.launcher.state(st.cluster.st.nodes[n]) == "running"
            ]
            expected = len(alive) >= v.quorum
        t_start = time.monotonic()
        # positive expectations may take time to come true; negative ones must hold throughout
        while True:
            ok, _ = await st.probe(side, timeout=min(1.0, within))
            if ok == expected and expected:
                break
            if ok and not expected:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        st.record(f"{'+'.join(side)} writable", expected, ok, ok == expected, time.monotonic() - t_start)


async def _sides(st: Stage, at: Any) -> list[list[str]]:
    """The groups of nodes an expectation probes separately."""
    names = st.cluster.st.live_names()
    if at == "each-side":
        groups = st.chaos.groups or [names]
        return [g for g in groups if g]
    if at == "cluster":
        return [names]
    return [await st.chaos.resolve(at)]


async def _kill_until_unwritable(st: Stage, arg: Any) -> None:
    """The quorum table: kill one node at a time, probing writes after each."""
    n = st.size
    row: dict[str, Any] = {"n": n, "quorum": quorum(n), "fault_tolerance": fault_tolerance(n), "probes": []}
    stopped_after = None
    for down in range(n):
        expected = n - down >= quorum(n)
        # a new election may be needed after the last kill: give it a few election timeouts
        ok, took = False, 0.0
        deadline = time.monotonic() + (6 * st.election_ms / 1000 if expected else 2.0)
        while True:
            ok, took = await st.probe(st.cluster.st.live_names(), timeout=1.0)
            if ok or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        row["probes"].append({"down": down, "writable": ok, "expected": expected})
        st.record(f"N={n}, {down} down: writable", expected, ok, ok == expected, took)
        if not ok and stopped_after is None:
            stopped_after = down
        if down < n - 1:
            v = await st.cluster.view(usage=False)
            victims = [x.name for x in v.nodes if x.state == "running" and x.name != v.leader] or [v.leader]
            await st.chaos.process("kill", victims[-1])
    row["writes_stopped_after_killing"] = stopped_after if stopped_after is not None else n
    row["measured_fault_tolerance"] = (stopped_after if stopped_after is not None else n) - 1
    st.tables.append(row)


async def _repeat(st: Stage, arg: Any) -> None:
    times = arg.get("times", 1)
    for _ in range(st.size if times == "nodes" else int(times)):
        await run_steps(st, arg.get("steps") or [])


def _repeat_steps(arg: Any) -> list[Any]:
    return (arg or {}).get("steps", [])


# -- the registry: the order is the order the loader lists them in an error -------------------------
KINDS: dict[str, StepKind] = {
    k.name: k
    for k in (
        StepKind("wait_for", _wait_for),
        StepKind("sleep", _sleep),
        *(StepKind(verb, _process(verb)) for verb in ("kill", "stop", "start", "pause", "resume", "restart")),
        StepKind("partition", _partition),
        StepKind("isolate", _isolate),
        StepKind("bridge", _bridge),
        StepKind("drop", _drop),
        StepKind("loss", _loss),
        StepKind("delay", _delay),
        StepKind("heal", _heal),
        StepKind("add", _add),
        StepKind("remove", _remove),
        StepKind("expect", _expect, check=_check_expect),
        StepKind("kill_until_unwritable", _kill_until_unwritable),
        StepKind("repeat", _repeat, nested=_repeat_steps),
        StepKind("move_leader", _move_leader),
    )
}


# -- validating -------------------------------------------------------------------------------------
def validate_steps(p: Path, steps: list[Any]) -> None:
    """Refuse a file whose steps cannot run, naming the file and the step (counted within its list)."""
    for i, s in enumerate(steps):
        where = f"{p}: step {i + 1}"
        if not isinstance(s, dict) or len(s) != 1:
            raise ExperimentError(f"{where}: expected one 'kind: argument' per step, got {s!r}")
        ((name, arg),) = s.items()
        kind = KINDS.get(name)
        if kind is None:
            raise ExperimentError(f"{where}: unknown step {name!r}; known: {', '.join(KINDS)}")
        if kind.nested is not None:
            validate_steps(p, kind.nested(arg))
        if kind.check is not None and (problem := kind.check(arg)) is not None:
            raise ExperimentError(f"{where}: {problem}")

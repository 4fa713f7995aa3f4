"""The fault vocabulary: each fault applies and undoes itself and is logged with timestamps.

Targets are names or live roles (leader, follower(s), minority, majority,
random), resolved when the fault is applied. Network faults are kept as a set
of active rules and re-sent whole to the backend, so several network faults
can overlap and each undo removes exactly its own rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator import targets
from orchestrator.cluster import Cluster, ClusterView, OrchestrateError
from orchestrator.state import ChaosState
from orchestrator.targets import ROLE_TARGETS

from .net import Backend, NetRule, backend_for

__all__ = ["ROLE_TARGETS", "Chaos", "Event", "FaultError"]


class FaultError(Exception):
    pass


@dataclass
class Event:
    t: float  # seconds since the run started (monotonic)
    kind: str  # fault | heal | note | leader | expect | membership
    what: str
    data: dict[str, Any] = field(default_factory=dict)


class Chaos:
    """Applies faults to one cluster and remembers what is active."""

    def __init__(self, cluster: Cluster, backend: Backend | None = None, t0: float | None = None) -> None:
        self.c = cluster
        self._backend = backend
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.events: list[Event] = []
        self.rules: dict[str, list[NetRule]] = {}  # fault id -> its rules
        self.groups: list[list[str]] = []  # the current partition, for the dashboard and expectations
        self._ids = 0

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> Chaos:
        """The chaos state saved with the cluster, so CLI calls and the dashboard share it."""
        ch = cls(cluster)
        saved = cluster.st.chaos
        ch.rules = {fid: list(rules) for fid, rules in saved.rules.items()}
        ch.groups = [list(g) for g in saved.groups]
        ch._ids = saved.next_id
        return ch

    def save(self) -> None:
        self.c.st.chaos = ChaosState(
            {fid: list(rules) for fid, rules in self.rules.items()}, [list(g) for g in self.groups], self._ids
        )
        self.c.save()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = backend_for(self.c)
        return self._backend

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, kind: str, what: str, **data: Any) -> Event:
        ev = Event(round(self.now(), 3), kind, what, data)
        self.events.append(ev)
        return ev

    # -- targets -------------------------------------------------------------------------------
    async def resolve(self, target: str | list[str], view: ClusterView | None = None) -> list[str]:
        """Names, or a role (orchestrator/targets.py) resolved against `view` or a fresh one."""

        async def current() -> ClusterView:
            return view or await self.c.view(usage=False)

        try:
            return await targets.resolve(target, self.c.st.live_names(), current)
        except targets.TargetError as e:
            raise FaultError(str(e)) from None

    # -- process faults ----------------------------------------------------------------------------
    async def process(self, verb: str, target: str | list[str]) -> list[str]:
        names = await self.resolve(target)
        fn = {
            "kill": self.c.kill_node,
            "stop": self.c.stop_node,
            "start": self.c.start_node,
            "pause": self.c.pause_node,
            "resume": self.c.resume_node,
            "restart": self.c.restart_node,
        }[verb]
        done = []
        skip = {
            "start": ("running", "paused"),
            "resume": ("running", "stopped"),
            "kill": ("stopped",),
            "stop": ("stopped",),
            "pause": ("paused", "stopped"),
        }.get(verb, ())
        for n in names:
            if self.c.launcher.state(self.c.st.nodes[n]) in skip:
                continue  # already there: "start all" starts only what is stopped
            try:
                fn(n)
                done.append(n)
            except OrchestrateError as e:
                raise FaultError(str(e)) from None
        self.log(
            "fault" if verb in ("kill", "stop", "pause") else "heal", f"{verb} {', '.join(done)}", verb=verb, nodes=done
        )
        if verb in ("start", "restart") and self.rules:
            await self._push()  # a restarted node comes back with an empty rule table
        return done

    # -- network faults --------------------------------------------------------------------------------
    async def _push(self) -> None:
        await self.backend.apply([r for rules in self.rules.values() for r in rules])

    def _new_id(self, kind: str) -> str:
        self._ids += 1
        return f"{kind}-{self._ids}"

    async def partition(self, groups: list[list[str]]) -> str:
        names = self.c.st.live_names()
        named = {n for g in groups for n in g}
        for n in named:
            self.c.record(n)
        rest = [n for n in names if n not in named]
        full = [list(g) for g in groups] + [[n] for n in rest]  # nodes not named form their own group
        where = {n: i for i, g in enumerate(full) for n in g}
        rules = [NetRule(a, b, "drop") for a in names for b in names if a != b and where[a] != where[b]]
        fid = self._new_id("partition")
        self.rules[fid] = rules
        await self._push()
        self.groups = full
        self.log("fault", "partition " + " | ".join(",".join(g) for g in full), id=fid, groups=full)
        return fid

    async def isolate(self, target: str) -> str:
        (node,) = (await self.resolve(target))[:1]
        others = [n for n in self.c.st.live_names() if n != node]
        return await self.partition([[node], others])

    async def bridge(self, middle: str) -> str:
        """Two halves that cannot see each other but both reach one middle node."""
        (mid,) = (await self.resolve(middle))[:1]
        rest = [n for n in self.c.st.live_names() if n != mid]
        a, b = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        rules = [NetRule(x, y, "drop") for x in a for y in b] + [NetRule(y, x, "drop") for x in a for y in b]
        fid = self._new_id("bridge")
        self.rules[fid] = rules
        await self._push()
        self.groups = [[*a, mid], [*b, mid]]
        self.log("fault", f"bridge {','.join(a)} <-> {mid} <-> {','.join(b)}", id=fid)
        return fid

    async def drop(self, src: str, dst: str) -> str:
        s, d = (await self.resolve(src))[0], (await self.resolve(dst))[0]
        fid = self._new_id("drop")
        self.rules[fid] = [NetRule(s, d, "drop")]
        await self._push()
        self.log("fault", f"drop {s} -> {d} (one way)", id=fid)
        return fid

    async def loss(self, probability: float, nodes: str | list[str] = "all") -> str:
        if not 0 < probability <= 1:
            raise FaultError(f"loss probability must be in (0, 1], got {probability}")
        targets = await self.resolve(nodes)
        names = self.c.st.live_names()
        rules = [NetRule(a, b, "loss", probability) for a in targets for b in names if a != b]
        fid = self._new_id("loss")
        self.rules[fid] = rules
        await self._push()
        self.log("fault", f"packet loss {probability:.0%} from {','.join(targets)}", id=fid)
        return fid

    async def delay(self, ms: float, nodes: str | list[str] = "all") -> str:
        targets = await self.resolve(nodes)
        names = self.c.st.live_names()
        rules = [NetRule(a, b, "delay", 1.0, ms) for a in targets for b in names if a != b]
        fid = self._new_id("delay")
        self.rules[fid] = rules
        await self._push()
        self.log("fault", f"added latency {ms:.0f} ms from {','.join(targets)}", id=fid)
        return fid

    async def undo(self, fid: str) -> None:
        if self.rules.pop(fid, None) is not None:
            await self._push()
            if fid.startswith(("partition", "bridge")):
                self.groups = []
            self.log("heal", f"undo {fid}", id=fid)

    async def heal(self) -> None:
        """Remove every network fault and resume every paused node."""
        self.rules.clear()
        self.groups = []
        await self.backend.clear()
        for n in self.c.st.live_names():
            if self.c.launcher.state(self.c.st.nodes[n]) == "paused":
                self.c.resume_node(n)
        self.log("heal", "heal: network restored, paused nodes resumed")

"""What the dashboard shows, computed from cluster views without any UI (so it is testable).

`Tracker` turns successive ClusterViews into events (elections, leader
changes, nodes going down or up, membership changes) and `QuorumPanel` into
the numbers the seed notes talk about, plus whether a real probe write works.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from orchestrator.cluster import ClusterView
from orchestrator.quorum import explain, fault_tolerance, quorum


@dataclass
class QuorumPanel:
    n: int
    quorum: int
    fault_tolerance: int
    alive: int
    in_contact: int
    can_lose: int
    leader: str
    writable: bool | None  # None: not probed yet
    probe_ms: float
    reason: str
    warnings: list[str]

    def lines(self) -> list[str]:
        state = "…probing" if self.writable is None else ("WRITABLE" if self.writable else "NOT WRITABLE")
        out = [
            f"voting members N   {self.n}",
            f"quorum N/2+1       {self.quorum}",
            f"fault tolerance    {self.fault_tolerance}",
            f"members alive      {self.alive}",
            f"in contact w/ lead {self.in_contact}",
            f"can lose           {self.can_lose} more",
            f"leader             {self.leader or 'NONE'}",
            f"{state}" + (f"  ({self.probe_ms:.0f} ms probe)" if self.writable else ""),
        ]
        if self.reason:
            out.append(f"why: {self.reason}")
        out += [f"! {w}" for w in self.warnings]
        return out


def panel(
    view: ClusterView, writable: bool | None, probe_ms: float, election_ms: int, groups: list[list[str]]
) -> QuorumPanel:
    n = view.n
    alive = [v for v in view.nodes if v.name in view.voters and v.state == "running" and v.role]
    leader = next((v for v in view.nodes if v.name == view.leader), None)
    if leader is not None and leader.peers:
        peers = leader.peers
        fresh = [name for name, p in peers.items() if p.get("active") and p.get("last_contact_ms", 1e9) < election_ms]
        in_contact = 1 + sum(1 for name in fresh if name in view.voters)
    else:
        in_contact = sum(1 for v in alive if v.leader == view.leader) if view.leader else 0
    reason = ""
    if writable is False or not view.leader:
        if not view.leader:
            if groups:
                reason = "no leader: no side of the partition has a quorum"
            else:
                reason = f"no leader: only {len(alive)} of {n} voters answer, {quorum(n)} needed"
        elif in_contact < quorum(n):
            reason = (
                f"leader {view.leader} reaches only {in_contact} of the {quorum(n)} voters it needs (minority side)"
            )
        else:
            reason = "the probe write did not complete in time"
    warns = explain(n)[1:]
    return QuorumPanel(
        n=n,
        quorum=quorum(n),
        fault_tolerance=fault_tolerance(n),
        alive=len(alive),
        in_contact=in_contact,
        can_lose=max(0, in_contact - quorum(n)) if view.leader else 0,
        leader=view.leader,
        writable=writable,
        probe_ms=probe_ms,
        reason=reason,
        warnings=warns,
    )


@dataclass
class Event:
    t: float
    text: str
    kind: str = "info"  # info | leader | fault | heal | error | membership

    def render(self) -> str:
        return f"{time.strftime('%H:%M:%S', time.localtime(self.t))}  {self.text}"


@dataclass
class Tracker:
    """Diffs successive views into events."""

    last: ClusterView | None = None
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=500))

    def add(self, text: str, kind: str = "info") -> Event:
        ev = Event(time.time(), text, kind)
        self.events.append(ev)
        return ev

    def update(self, view: ClusterView) -> list[Event]:
        out: list[Event] = []
        prev = self.last
        self.last = view
        if prev is None:
            first = f"watching {view.name} ({view.engine}): {view.n} voters, leader {view.leader or 'none'}"
            out.append(self.add(f"{first} (term {view.term})", "leader"))
            return out
        if view.leader != prev.leader:
            if view.leader:
                out.append(
                    self.add(f"leader is now {view.leader} (term {view.term}); was {prev.leader or 'none'}", "leader")
                )
            else:
                out.append(self.add(f"no leader (was {prev.leader}, term {prev.term})", "error"))
        elif view.term > prev.term and view.leader:
            out.append(self.add(f"election: {view.leader} re-elected, term {view.term}", "leader"))
        before = {v.name: v for v in prev.nodes}
        for v in view.nodes:
            b = before.get(v.name)
            if b is None:
                out.append(self.add(f"{v.name} joined", "membership"))
            elif b.state != v.state:
                kind = "fault" if v.state in ("stopped", "paused", "unreachable") else "heal"
                out.append(self.add(f"{v.name}: {b.state} → {v.state}", kind))
        for name in before.keys() - {v.name for v in view.nodes}:
            out.append(self.add(f"{name} left the cluster", "membership"))
        if set(view.voters) != set(prev.voters) and prev.voters:
            out.append(self.add(f"voters now {', '.join(view.voters)} (quorum {view.quorum})", "membership"))
        return out


@dataclass
class Series:
    """A bounded time series for the sparklines (one point per tick)."""

    size: int = 120
    values: deque[float] = field(default_factory=deque)

    def push(self, v: float) -> None:
        self.values.append(v)
        while len(self.values) > self.size:
            self.values.popleft()

    def data(self) -> list[float]:
        return list(self.values) or [0.0]

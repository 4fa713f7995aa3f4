"""What `status` reports: one NodeView per member, one ClusterView for the cluster.

Every field is typed. The fields only some engines report (a builtin node's voters, peers and
fault rules; etcd's revision) are None when the engine did not report them, and `to_dict`
leaves them out then, so `status --json` shows exactly what was reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from .quorum import explain, fault_tolerance, quorum


class RaftDetail(TypedDict, total=False):
    """A builtin node's log and timers for the dashboard's log view (Admin status "raft")."""

    log_first: int  # index of log_terms[0]; entries before it are in the snapshot
    log_terms: list[int]  # the terms of the last entries, oldest first
    election_elapsed_ms: float  # time since the last heartbeat heard (follower) or the campaign start
    election_timeout_ms: float  # this node's current randomized election timeout
    msgs_sent: dict[str, int]  # Raft messages sent to each peer (by name) since start
    msgs_recv: dict[str, int]  # ... and received from each


class PeerStatus(TypedDict, total=False):
    """The leader's view of one peer, as a builtin node's Admin status reports it (node/api/admin_service.py)."""

    id: str
    match: int
    next: int
    state: str
    active: bool
    last_contact_ms: float
    learner: bool
    connected: bool


# Reported by some engines only: absent from to_dict() when None, in this order after the common fields.
_OPTIONAL = ("loop_stall_max_ms", "loop_stall_p99_ms", "alarms", "fsync_p99_ms", "peer_rtt_ms")
_REPORTED = ("voters", "learners", "last_index", "revision", "peers", "fault_rules", "raft")


@dataclass
class NodeView:
    name: str
    state: str  # running | stopped | paused | unreachable | removed
    role: str = ""
    term: int = 0
    leader: str = ""
    commit: int = 0
    applied: int = 0
    pid: int = 0
    client_url: str = ""
    metrics_url: str = ""  # etcd's --listen-metrics-urls: /metrics and /health ('' for an older state file)
    member_id: str = ""
    cpu: float = 0.0
    rss: int = 0
    learner: bool = False
    error: str = ""
    cluster_id: str = ""
    problem: str = ""  # disagrees with the state file: another cluster, or another membership
    loop_stall_max_ms: float | None = None  # None: the engine does not report it (real etcd)
    loop_stall_p99_ms: float | None = None
    alarms: list[str] | None = None
    # What the node (or, for etcd, the member list) reports; None: not reported.
    voters: list[str] | None = None
    learners: list[str] | None = None
    last_index: int | None = None
    revision: int | None = None
    peers: dict[str, PeerStatus] | None = None
    fault_rules: list[dict[str, Any]] | None = None
    raft: RaftDetail | None = None
    # from the node's /metrics (None: not scraped): WAL fsync p99 and the median peer round trip
    fsync_p99_ms: float | None = None
    peer_rtt_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in _REPORTED}
        for k in _OPTIONAL:
            if d[k] is None:
                del d[k]  # gracefully absent when the engine does not report it
        d.update({k: getattr(self, k) for k in _REPORTED if getattr(self, k) is not None})
        return d


@dataclass
class ClusterView:
    name: str
    engine: str
    nodes: list[NodeView]
    voters: list[str]  # the configured voters (state file): the quorum arithmetic uses these
    leader: str
    term: int
    leader_voters: list[str] = field(default_factory=list)  # the voters the leader reports
    warnings: list[str] = field(default_factory=list)
    prometheus_url: str = ""  # the Prometheus `up --prometheus` started ('' when none runs)

    @property
    def n(self) -> int:
        return len(self.voters)

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    @property
    def fault_tolerance(self) -> int:
        return fault_tolerance(self.n)

    @property
    def live_voters(self) -> list[str]:
        return [
            v.name
            for v in self.nodes
            if v.name in self.voters and v.state == "running" and v.role and not v.problem.startswith("cluster")
        ]

    @property
    def has_quorum(self) -> bool:
        """A leader exists and a quorum of voters are up and agree on it."""
        if not self.leader:
            return False
        agree = [v for v in self.nodes if v.name in self.voters and v.leader == self.leader and v.state == "running"]
        return len(agree) >= self.quorum

    def can_lose(self) -> int:
        return max(0, len(self.live_voters) - self.quorum) if self.has_quorum else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "leader": self.leader,
            "term": self.term,
            "voters": self.voters,
            "leader_voters": self.leader_voters,
            "warnings": self.warnings,
            "prometheus_url": self.prometheus_url,
            "n": self.n,
            "quorum": self.quorum,
            "fault_tolerance": self.fault_tolerance,
            "live_voters": self.live_voters,
            "has_quorum": self.has_quorum,
            "can_lose": self.can_lose(),
            "notes": explain(self.n)[1:],
            "nodes": [v.to_dict() for v in self.nodes],
        }

"""The two engines behind one `Engine` protocol: a node's command line and how to read its status.

`builtin` runs our node (`python -m node`) and reads its Admin status; `etcd` runs a real etcd
binary from PATH with the equivalent flags and reads etcd's Maintenance.Status, so every verb,
chaos fault and the dashboard work on either. `Cluster` asks `engine_for(st.engine)` and never
branches on the engine's name.

TLS is one switch, `ClusterState.tls`: it makes the client and peer URLs https and the engine's
`tls_flags` give both ports certificates from the cluster's CA (orchestrator/pki.py), with client
and peer certificates required.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from node.client import Client, ClientError, Reason
from node.pb import rpc_pb2

from .state import ClusterState, NodeRecord
from .views import NodeView, RaftDetail

if TYPE_CHECKING:  # cryptography, imported by pki, is only needed for a TLS cluster
    from .pki import ClusterPKI


class EngineError(Exception):
    pass


def initial_cluster(st: ClusterState, names: list[str]) -> str:
    return ",".join(f"{n}={peer_url(st, st.nodes[n])}" for n in names)


def _scheme(st: ClusterState) -> str:
    return "https" if st.tls else "http"


def peer_url(st: ClusterState, rec: NodeRecord) -> str:
    """The node's peer URL: https in a TLS cluster (member ids derive from it, so every member agrees)."""
    return f"{_scheme(st)}://{rec.address}:{rec.peer_port}"


def client_url(st: ClusterState, rec: NodeRecord) -> str:
    return f"{_scheme(st)}://{rec.address}:{rec.client_port}"


def _tls_files(st: ClusterState, rec: NodeRecord, pki: ClusterPKI) -> list[str]:
    """etcd's client and peer TLS flags for rec, certificates made on first use: both ports need our CA's
    certificates from whoever connects (clients and peers alike)."""
    cert, key = pki.ensure_server(rec.name, [rec.address, rec.host], [peer_url(st, rec)])
    ca = str(pki.ca_cert)
    return [
        *_flags(
            ("--cert-file", str(cert)),
            ("--key-file", str(key)),
            ("--trusted-ca-file", ca),
            ("--peer-cert-file", str(cert)),
            ("--peer-key-file", str(key)),
            ("--peer-trusted-ca-file", ca),
        ),
        *("--client-cert-auth", "--peer-client-cert-auth"),
    ]


class Engine(Protocol):
    name: str
    # The node's status lists the voters it sees: each node's membership can be checked against the
    # state file. Otherwise (etcd) the cluster asks for the member list once.
    reports_membership: bool
    # The node keeps fault rule tables of its own (node/faults.py, set over the Admin API): chaos's
    # local backend and its latency need them.
    fault_rules: bool
    # The node takes --peer-auth-file (the cluster secret): peers authenticate and Admin needs the
    # credential. Real etcd cannot use it.
    peer_auth: bool

    def command(
        self, st: ClusterState, rec: NodeRecord, data_dir: Path, cluster_state: str, members: list[str], python: str
    ) -> list[str]:
        """The node's command line (an absolute data dir; members: the --initial-cluster)."""
        ...

    def tls_flags(self, st: ClusterState, rec: NodeRecord, pki: ClusterPKI) -> list[str]:
        """What a node of a TLS cluster (st.tls) adds to its command line: client and peer certificates."""
        ...

    async def status(self, c: Client, rec: NodeRecord, v: NodeView, ids: dict[str, str]) -> None:
        """Fill v from the node's status (ids: member id -> name); raises ClientError when it does not answer."""
        ...

    async def ping(self, c: Client, rec: NodeRecord) -> None:
        """Returns once the node answers on its client port; raises ClientError otherwise."""
        ...


def _flags(*pairs: tuple[str, str]) -> list[str]:
    """Flag/value pairs flattened into argv: one pair a line, so the lines read like the command."""
    return [x for pair in pairs for x in pair]


def _identity(rec: NodeRecord, data_dir: Path) -> list[str]:
    if not data_dir.is_absolute():
        raise EngineError(f"a node's data dir must be an absolute path, not {data_dir}")
    return _flags(("--name", rec.name), ("--data-dir", str(data_dir)))


def _cluster_flags(st: ClusterState, members: list[str], cluster_state: str) -> list[str]:
    """The flags both engines take under etcd's names."""
    return _flags(
        ("--initial-cluster", initial_cluster(st, members)),
        ("--initial-cluster-state", cluster_state),
        ("--initial-cluster-token", st.token),
        ("--heartbeat-interval", str(st.heartbeat_ms)),
        ("--election-timeout", str(st.election_ms)),
        ("--snapshot-count", str(st.snapshot_count)),
    )


def _metrics(rec: NodeRecord) -> list[str]:
    """etcd's --listen-metrics-urls (/metrics and /health in plain http, both engines); none in old state files."""
    return _flags(("--listen-metrics-urls", rec.metrics_url)) if rec.metrics_port else []


def _limits(st: ClusterState) -> list[str]:
    return _flags(
        ("--auto-compaction-mode", st.compaction_mode),
        ("--auto-compaction-retention", st.compaction_retention),
        ("--quota-backend-bytes", str(st.quota_backend_bytes)),
    )


class BuiltinEngine:
    """Our node: `python -m node`; status from the Admin service.

    Fault injection is on unless the cluster says `fault_injection: false` (chaos, experiments and
    the dashboard's keys need it): safe, because every Admin call needs the cluster's credential
    (--peer-auth-file)."""

    name = "builtin"
    reports_membership = True
    fault_rules = True
    peer_auth = True

    def command(
        self, st: ClusterState, rec: NodeRecord, data_dir: Path, cluster_state: str, members: list[str], python: str
    ) -> list[str]:
        return [
            *(python, "-m", "node"),
            *_identity(rec, data_dir),
            *_flags(
                ("--listen-client", client_url(st, rec) if st.tls else rec.endpoint),
                ("--listen-peer", peer_url(st, rec)),
            ),
            *_metrics(rec),
            *_cluster_flags(st, members, cluster_state),
            *_flags(("--log-level", st.log_level)),
            *_limits(st),
            *(["--enable-fault-injection"] if st.fault_injection else []),
        ]

    def tls_flags(self, st: ClusterState, rec: NodeRecord, pki: ClusterPKI) -> list[str]:
        # the orchestrator's client certificate is an Admin credential on its own (no token needed)
        from .pki import ADMIN_CN

        return [*_tls_files(st, rec, pki), "--admin-cert-cn", ADMIN_CN]

    async def status(self, c: Client, rec: NodeRecord, v: NodeView, ids: dict[str, str]) -> None:
        try:
            s = await c.admin_status(rec.endpoint, timeout=0.8)
        except ClientError as e:
            if e.reason not in (Reason.ADMIN_UNAUTHENTICATED, Reason.ADMIN_DENIED):
                raise
            # not our credential: a node of another cluster at this address; etcd's public Status names it
            await _public_status(c, rec, v, ids)
            return
        v.role, v.term, v.leader = s["role"], s["term"], s["leader"]
        v.commit, v.applied, v.member_id = s["commit"], s["applied"], s["id"]
        v.cluster_id = s.get("cluster_id", "")
        v.learner = rec.name in s.get("learners", [])
        v.loop_stall_max_ms = s.get("loop_stall_max_ms")
        v.loop_stall_p99_ms = s.get("loop_stall_p99_ms")
        alarms = s.get("alarms")
        v.alarms = [str(a) for a in alarms] if isinstance(alarms, list) else None
        v.voters = s.get("voters", [])
        v.learners = s.get("learners", [])
        v.last_index = s.get("last_index", 0)
        v.revision = s.get("revision", 0)
        v.peers = s.get("peers", {})
        v.fault_rules = s.get("fault_rules") or []
        raft = s.get("raft")
        v.raft = cast(RaftDetail, raft) if isinstance(raft, dict) else None  # the dashboard's log view

    async def ping(self, c: Client, rec: NodeRecord) -> None:
        await c.admin_status(rec.endpoint, timeout=1.0)


async def _public_status(c: Client, rec: NodeRecord, v: NodeView, ids: dict[str, str]) -> rpc_pb2.StatusResponse:
    """What etcd's Maintenance.Status tells anyone: ids, term, indexes, role and leader."""
    s = await c.status(rec.endpoint)
    v.member_id = f"{s.header.member_id:x}"
    v.cluster_id = f"{s.header.cluster_id:x}"
    v.term, v.commit, v.applied = s.raftTerm, s.raftIndex, s.raftAppliedIndex
    v.role = "leader" if s.leader == s.header.member_id else ("follower" if s.leader else "no-leader")
    v.leader = ids.get(f"{s.leader:x}", f"{s.leader:x}") if s.leader else ""
    v.learner = s.isLearner
    v.revision = s.header.revision
    return s


class EtcdEngine:
    """A real etcd binary from PATH; status from etcd's Maintenance.Status (no voter list in it)."""

    name = "etcd"
    reports_membership = False
    fault_rules = False
    peer_auth = False

    def command(
        self, st: ClusterState, rec: NodeRecord, data_dir: Path, cluster_state: str, members: list[str], python: str
    ) -> list[str]:
        identity = _identity(rec, data_dir)  # before looking for etcd: a relative data dir is our bug
        level = {"warning": "warn"}.get(st.log_level, st.log_level)
        return [
            etcd_binary(),
            *identity,
            *_flags(
                ("--listen-client-urls", client_url(st, rec)),
                ("--advertise-client-urls", client_url(st, rec)),
                ("--listen-peer-urls", peer_url(st, rec)),
                ("--initial-advertise-peer-urls", peer_url(st, rec)),
            ),
            *_metrics(rec),
            *_cluster_flags(st, members, cluster_state),
            *_limits(st),
            *_flags(("--logger", "zap"), ("--log-level", level)),
        ]

    def tls_flags(self, st: ClusterState, rec: NodeRecord, pki: ClusterPKI) -> list[str]:
        return _tls_files(st, rec, pki)

    async def status(self, c: Client, rec: NodeRecord, v: NodeView, ids: dict[str, str]) -> None:
        s = await _public_status(c, rec, v, ids)
        # etcd lists active alarms in Status.errors ("memberID:… alarm:NOSPACE")
        v.alarms = sorted({e.rsplit("alarm:", 1)[-1] for e in s.errors if "alarm:" in e})
        if rec.member_id != v.member_id:
            rec.member_id = v.member_id

    async def ping(self, c: Client, rec: NodeRecord) -> None:
        await c.status(rec.endpoint)


ENGINES: dict[str, Engine] = {"builtin": BuiltinEngine(), "etcd": EtcdEngine()}


def engine_for(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}") from None


def command(
    st: ClusterState,
    rec: NodeRecord,
    data_dir: Path,
    cluster_state: str,
    members: list[str],
    python: str = sys.executable,
) -> list[str]:
    """The command line that starts `rec` on the cluster's engine."""
    return engine_for(st.engine).command(st, rec, data_dir, cluster_state, members, python)


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise EngineError(
            "engine 'etcd' needs an etcd binary on PATH (Debian: apt-get install etcd-server; "
            "scripts/setup.sh installs it)"
        )
    return path

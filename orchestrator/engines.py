"""Command lines for the two engines, generated from the same cluster state.

`builtin` runs our node (`python -m node`); `etcd` runs a real etcd binary from
PATH with the equivalent flags, so every verb, chaos fault and the dashboard
work on either.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .state import ClusterState, NodeRecord


class EngineError(Exception):
    pass


def initial_cluster(st: ClusterState, names: list[str]) -> str:
    return ",".join(f"{n}={st.nodes[n].peer_url}" for n in names)


def command(
    st: ClusterState,
    rec: NodeRecord,
    data_dir: Path,
    cluster_state: str,
    members: list[str],
    python: str = sys.executable,
) -> list[str]:
    ic = initial_cluster(st, members)
    if st.engine == "builtin":
        return [
            python, "-m", "node",
            "--name", rec.name,
            "--data-dir", str(data_dir),
            "--listen-client", rec.endpoint,
            "--listen-peer", f"{rec.address}:{rec.peer_port}",
            "--initial-cluster", ic,
            "--initial-cluster-state", cluster_state,
            "--initial-cluster-token", st.token,
            "--heartbeat-interval", str(st.heartbeat_ms),
            "--election-timeout", str(st.election_ms),
            "--snapshot-count", str(st.snapshot_count),
            "--log-level", st.log_level,
            "--enable-fault-injection",
        ]  # fmt: skip
    if st.engine == "etcd":
        etcd = etcd_binary()
        level = {"warning": "warn"}.get(st.log_level, st.log_level)
        return [
            etcd,
            "--name", rec.name,
            "--data-dir", str(data_dir),
            "--listen-client-urls", rec.client_url,
            "--advertise-client-urls", rec.client_url,
            "--listen-peer-urls", rec.peer_url,
            "--initial-advertise-peer-urls", rec.peer_url,
            "--initial-cluster", ic,
            "--initial-cluster-state", cluster_state,
            "--initial-cluster-token", st.token,
            "--heartbeat-interval", str(st.heartbeat_ms),
            "--election-timeout", str(st.election_ms),
            "--snapshot-count", str(st.snapshot_count),
            "--logger", "zap",
            "--log-level", level,
        ]  # fmt: skip
    raise EngineError(f"unknown engine {st.engine!r}")


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise EngineError(
            "engine 'etcd' needs an etcd binary on PATH (Debian: apt-get install etcd-server; "
            "scripts/setup.sh installs it)"
        )
    return path

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
    if not data_dir.is_absolute():
        raise EngineError(f"a node's data dir must be an absolute path, not {data_dir}")
    ic = initial_cluster(st, members)
    # etcd's flag names for both engines (the builtin node takes the same ones)
    limits = [
        "--auto-compaction-mode", st.compaction_mode,
        "--auto-compaction-retention", st.compaction_retention,
        "--quota-backend-bytes", str(st.quota_backend_bytes),
    ]  # fmt: skip
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
            *limits,
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
            *limits,
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

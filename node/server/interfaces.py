"""The driver's seams: its config, the state machine and storage it drives, and its startup error.

Kept apart from raftnode.py so the driver's helpers (snapshotter, membership) can name them
without importing the driver itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.raft import Ready, Snapshot
from node.storage import Meta

from .members import normalize_url
from .peer_tls import PeerTLS


class ConfigError(Exception):
    """The member cannot start with this configuration or data dir (not a request error: see node.errors)."""


class StateMachine(Protocol):
    def apply(self, index: int, payload: bytes) -> Any: ...
    async def snapshot_async(self) -> bytes:
        """The state as of the call, built without holding the event loop for more than a few ms."""
        ...

    def restore(self, data: bytes) -> None: ...


class NodeStorage(Protocol):
    """What the driver needs from a data dir (node.storage.DiskStorage; tests record calls)."""

    def persist(self, rd: Ready) -> None: ...
    def save_snapshot(self, snap: Snapshot, release_before: int) -> None: ...
    def reserve_space(self, nbytes: int) -> bool: ...
    def release_reserve(self) -> int: ...
    def write_meta(self, meta: Meta) -> None: ...
    def close(self) -> None: ...


@dataclass
class NodeConfig:
    name: str
    data_dir: Path
    listen_peer: str
    listen_client: str
    initial_cluster: dict[str, str]
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "quorumlab"
    advertise_peer: str = ""
    advertise_client: str = ""
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 10_000
    snapshot_catchup_entries: int = 5_000
    reserve_bytes: int = 8 << 20  # ballast file freed when the disk fills, so the alarm can be recorded
    # a full disk counts as usable again only with this much free besides the reserve: without
    # it the first write after the disarm would fill it again
    disk_free_margin: int = 1 << 20
    enable_fault_injection: bool = False
    # the cluster secret (--peer-auth-file): peers and Admin callers must prove they know it; None = open
    peer_secret: bytes | None = None
    # peer TLS (--peer-cert-file ...): the https:// listener and the dialer of https:// peers; None = plaintext
    peer_tls: PeerTLS | None = None
    metrics_url: str = ""  # where /metrics is served once listening (--listen-metrics-urls); "" = nowhere
    snapshot_limit: int = 4 << 30  # an incoming snapshot bigger than this closes its connection
    request_timeout: float = 5.0
    pre_vote: bool = True
    fast_failover: bool = True
    seed: int | None = None

    def peer_url(self) -> str:
        return normalize_url(self.advertise_peer or self.listen_peer)

    def client_url(self) -> str:
        return normalize_url(self.advertise_client or self.listen_client)

"""The state directory of one cluster (.quorumlab/<name>/): who runs where, written atomically.

Separate `orchestrate` invocations share it, the way ccm and mlaunch do: one
`up`, then any shell can `status`, `kill n2`, `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_COMPACTION_MODE, DEFAULT_COMPACTION_RETENTION, DEFAULT_QUOTA_BACKEND_BYTES


@dataclass
class NodeRecord:
    name: str
    client_port: int
    peer_port: int
    host: str = "localhost"
    address: str = "127.0.0.1"
    pid: int = 0
    create_time: float = 0.0  # psutil's, to tell our process from a recycled pid
    member_id: str = ""
    desired: str = "running"  # running | stopped | paused | removed (what we last asked for)
    netns: str = ""
    learner: bool = False  # added as a learner and not promoted yet: not counted among the voters

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"


@dataclass
class ClusterState:
    name: str
    engine: str
    network: str
    token: str
    heartbeat_ms: int
    election_ms: int
    snapshot_count: int
    log_level: str
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    cluster_id: str = ""  # hex, recorded once every member agreed on it; a node reporting another is flagged
    compaction_mode: str = DEFAULT_COMPACTION_MODE
    compaction_retention: str = DEFAULT_COMPACTION_RETENTION
    quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    created: float = 0.0
    config_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def live_names(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.desired != "removed"]

    def voter_names(self) -> list[str]:
        """The configured voters: the quorum arithmetic is computed from these, not from what a node says."""
        return [n for n, r in self.nodes.items() if r.desired != "removed" and not r.learner]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        d = json.loads(text)
        nodes = {k: NodeRecord(**v) for k, v in d.pop("nodes").items()}
        return cls(nodes=nodes, **d)


class StateDir:
    """`<root>/<name>/`: state.json, data/<node>/, logs/<node>.log; always absolute paths."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(os.path.abspath(root))
        self.path = self.root / name
        self.file = self.path / "state.json"
        self.made_root = False  # this process created the root (so a purge may remove it when empty)
        self.made_path = False

    def data_dir(self, node: str) -> Path:
        return self.path / "data" / node

    def log_file(self, node: str) -> Path:
        return self.path / "logs" / f"{node}.log"

    def exists(self) -> bool:
        return self.file.exists()

    def ensure(self) -> None:
        if not self.root.exists():
            self.made_root = True
        if not self.path.exists():
            self.made_path = True
        self.path.mkdir(parents=True, exist_ok=True)

    def load(self) -> ClusterState:
        return ClusterState.from_json(self.file.read_text())

    def save(self, st: ClusterState) -> None:
        self.ensure()
        if self.made_root:
            st.extra["made_root"] = True
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(st.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    @contextlib.contextmanager
    def lock(self, create: bool = False) -> Iterator[None]:
        """Serialize orchestrate invocations that change this cluster.

        The lock is a flock on the state directory itself, so no lock file is ever left behind;
        without `create` a cluster directory that does not exist is not made just to be locked.
        """
        if create:
            self.ensure()
        elif not self.path.is_dir():
            yield
            return
        while True:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same or not create:
                break
            os.close(fd)  # the directory was purged and re-made while we waited: lock the new one
            self.ensure()
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def remove_if_empty(self) -> list[str]:
        """Remove the cluster directory (and a root this process made) when nothing is left in them."""
        removed = []
        for p, ours in ((self.path / "logs", True), (self.path / "data", True), (self.path, True),
                        (self.root, self.made_root)):  # fmt: skip
            if ours and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
                removed.append(str(p))
        return removed

    @staticmethod
    def clusters(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())

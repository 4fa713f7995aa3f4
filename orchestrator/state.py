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
    created: float = 0.0
    config_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def live_names(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.desired != "removed"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        d = json.loads(text)
        nodes = {k: NodeRecord(**v) for k, v in d.pop("nodes").items()}
        return cls(nodes=nodes, **d)


class StateDir:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.path = root / name
        self.file = self.path / "state.json"

    def data_dir(self, node: str) -> Path:
        return self.path / "data" / node

    def log_file(self, node: str) -> Path:
        return self.path / "logs" / f"{node}.log"

    def exists(self) -> bool:
        return self.file.exists()

    def load(self) -> ClusterState:
        return ClusterState.from_json(self.file.read_text())

    def save(self, st: ClusterState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(st.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize orchestrate invocations that change this cluster."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def clusters(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())

"""The state directory of one cluster (.quorumlab/<name>/): who runs where, written atomically.

Separate `orchestrate` invocations share it, the way ccm and mlaunch do: one
`up`, then any shell can `status`, `kill n2`, `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.client import ClientTLS
from node.secret import load_secret, write_secret

from .config import DEFAULT_COMPACTION_MODE, DEFAULT_COMPACTION_RETENTION, DEFAULT_QUOTA_BACKEND_BYTES, Host

if TYPE_CHECKING:
    from .pki import ClusterPKI


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
    tls: bool = False  # its client port speaks TLS (a cluster made with `up --tls`)
    metrics_port: int = 0  # etcd's --listen-metrics-urls (/metrics, /health); 0: none (older state files)

    @property
    def metrics_url(self) -> str:
        """Plain http on either engine, as etcd serves a separate --listen-metrics-urls; '' without one."""
        return f"http://{self.address}:{self.metrics_port}" if self.metrics_port else ""

    @property
    def metrics_addr(self) -> str:
        return f"{self.address}:{self.metrics_port}" if self.metrics_port else ""

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """What `member add` announces: https when the cluster's peers speak TLS (as engines.peer_url)."""
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.peer_port}"


@dataclass(frozen=True)
class NetRule:
    """One network fault rule (src -> dst), as chaos saves it here and its backends enforce it."""

    src: str
    dst: str
    action: str  # drop | loss | delay
    probability: float = 1.0
    delay_ms: float = 0.0

    def to_admin(self) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "action": self.action,
            "probability": self.probability,
            "delay_ms": self.delay_ms,
            "jitter_ms": 0.0,
        }


@dataclass
class NetnsPlacement:
    """Where a `--net netns` cluster's namespaces live (orchestrator/netns.py names them from these)."""

    tag: str
    subnet: int


@dataclass
class PrometheusRecord:
    """The Prometheus `up --prometheus` started for this cluster (always on this machine)."""

    port: int
    pid: int = 0
    create_time: float = 0.0
    address: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass
class ChaosState:
    """The active network faults, saved so separate `orchestrate chaos` calls and the dashboard combine."""

    rules: dict[str, list[NetRule]] = field(default_factory=dict)  # fault id -> its rules
    groups: list[list[str]] = field(default_factory=list)  # the current partition
    next_id: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChaosState:
        rules = {fid: [NetRule(**r) for r in rs] for fid, rs in d.get("rules", {}).items()}
        return cls(rules, [list(g) for g in d.get("groups", [])], int(d.get("next_id", 0)))


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
    fault_injection: bool = True  # builtin nodes start with --enable-fault-injection (older state files: on)
    tls: bool = False  # client ports speak TLS with certificates from <state>/tls (orchestrator/pki.py)
    created: float = 0.0
    config_source: str = ""
    netns: NetnsPlacement | None = None  # set when the cluster runs with --net netns
    chaos: ChaosState = field(default_factory=ChaosState)
    made_root: bool = False  # its first save created the root directory (a purge may remove it when empty)
    # remote hosts (orchestrator/remote.py): how to reach each, the python that runs nodes there (set by
    # the deploy), and the hosts where chaos may have left iptables rules in our chain (removed on heal/down)
    hosts: dict[str, Host] = field(default_factory=dict)
    host_python: dict[str, str] = field(default_factory=dict)
    fw_hosts: list[str] = field(default_factory=list)
    metrics_port: int = 0  # ports.metrics: node i's metrics port is base + i; 0: free ports picked per node
    prometheus: bool = False  # `up` starts Prometheus (and regenerates its scrape config on add/remove)
    prom: PrometheusRecord | None = None  # the running Prometheus, if any

    @property
    def remote(self) -> bool:
        return bool(self.hosts)

    def live_names(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.desired != "removed"]

    def voter_names(self) -> list[str]:
        """The configured voters: the quorum arithmetic is computed from these, not from what a node says."""
        return [n for n, r in self.nodes.items() if r.desired != "removed" and not r.learner]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        """Also reads what earlier versions wrote: netns, chaos and made_root inside an `extra` dict."""
        d = json.loads(text)
        nodes = {k: NodeRecord(**v) for k, v in d.pop("nodes").items()}
        old = d.pop("extra", None) or {}
        netns = d.pop("netns", None) or old.get("netns")
        chaos = d.pop("chaos", None) or old.get("chaos") or {}
        made_root = bool(d.pop("made_root", False) or old.get("made_root"))
        hosts = {k: Host(**v) for k, v in d.pop("hosts", {}).items()}
        prom = d.pop("prom", None)
        return cls(
            prom=PrometheusRecord(**prom) if prom else None,
            hosts=hosts,
            nodes=nodes,
            netns=NetnsPlacement(str(netns["tag"]), int(netns["subnet"])) if netns else None,
            chaos=ChaosState.from_dict(chaos),
            made_root=made_root,
            **d,
        )


# What a node writes in its data dir: the builtin engine's (node/storage/disk.py) and etcd's member/.
NODE_FILES = ("member.json", "member.json.tmp", "reserve.bin", "reserve.bin.tmp")
NODE_DIRS = ("wal", "snap", "member")
NODE_MARKS = ("member.json", "wal", "snap", "reserve.bin", "member")
# What `up --prometheus` writes under <state>/prometheus/ (orchestrator/cluster.py).
PROM_ENTRIES = ("prometheus.yml", "prometheus.yml.tmp", "prometheus.log", "data")
# The first line the launcher writes to a node's log (orchestrator/launcher.py LocalLauncher.start).
LOG_HEADER = re.compile(rb"\n=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d starting: ")


def _is_node_log(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return LOG_HEADER.match(f.read(64)) is not None
    except OSError:
        return False


def _remove(p: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a directory tree."""
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p)


def _rmdir_if_empty(p: Path) -> None:
    if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
        p.rmdir()


def _leaves(top: Path) -> list[Path]:
    """What is left under top: files, symlinks and empty directories (what kept it from going)."""
    out = []
    for p in sorted(top.rglob("*")):
        if p.is_symlink() or not p.is_dir() or not any(p.iterdir()):
            out.append(p)
    return out


class StateDir:
    """`<root>/<name>/`: state.json, data/<node>/, logs/<node>.log; always absolute paths."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(os.path.abspath(root))
        self.path = self.root / name
        self.file = self.path / "state.json"
        # the cluster secret (node/secret.py), mode 0600: members prove they know it to each other
        # and the orchestrator, chaos and the dashboard send a token derived from it to Admin
        self.secret_file = self.path / "peer.secret"
        self._pki: ClusterPKI | None = None
        self.made_root = False  # this process created the root (so a purge may remove it when empty)
        self.made_path = False

    @property
    def pki(self) -> ClusterPKI:
        """`up --tls`: the cluster's CA, node and client certificates (keys 0600).

        Imported on first use: cryptography is ~20 ms of every `orchestrate` start, and only TLS
        clusters (and purges) need it."""
        if self._pki is None:
            from .pki import ClusterPKI

            self._pki = ClusterPKI(self.path / "tls")
        return self._pki

    def data_dir(self, node: str) -> Path:
        return self.path / "data" / node

    def log_file(self, node: str) -> Path:
        return self.path / "logs" / f"{node}.log"

    @property
    def prom_dir(self) -> Path:
        """Prometheus' scrape config, log and TSDB (`up --prometheus`)."""
        return self.path / "prometheus"

    def remove_prometheus(self) -> bool:
        """Delete what `up --prometheus` wrote (config, log, TSDB) and nothing else; True if anything went."""
        d = self.prom_dir
        if not d.is_dir() or d.is_symlink():
            return False
        gone = False
        for entry in PROM_ENTRIES:
            p = d / entry
            if p.exists() or p.is_symlink():
                _remove(p)
                gone = True
        _rmdir_if_empty(d)
        return gone

    def exists(self) -> bool:
        return self.file.exists()

    def ensure_secret(self) -> Path:
        """The secret file, created (0600) the first time a member that can use it starts."""
        self.ensure()
        if not self.secret_file.exists():
            with contextlib.suppress(FileExistsError):  # another invocation made it first: use theirs
                write_secret(self.secret_file)
        return self.secret_file

    def secret(self) -> bytes | None:
        """The cluster secret for Admin calls; None for a cluster without one (etcd, or made before it existed)."""
        if not self.secret_file.exists():
            return None
        return load_secret(self.secret_file)  # SecretError when unusable (say, chmod'ed open)

    def client_tls(self) -> ClientTLS | None:
        """What the orchestrator, chaos and the dashboard connect with; None for a plaintext cluster."""
        if not self.pki.exists():
            return None
        cert, key = self.pki.ensure_client()
        return ClientTLS.from_files(self.pki.ca_cert, cert, key)

    def remove_tls(self) -> None:
        for p in self.pki.files():
            p.unlink(missing_ok=True)
        _rmdir_if_empty(self.pki.dir)

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
            st.made_root = True
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
        without `create` a cluster directory that does not exist is not made just to be locked. A
        directory purged (and perhaps re-made) while we waited is never held: with `create` the new
        one is locked, without it the caller proceeds with no directory, as if it had been missing.
        """
        if create:
            self.ensure()
        fd: int | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                if not create:
                    break  # nothing to lock: the caller sees no cluster here
                self.ensure()
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # purged (and maybe re-made) while we waited: that inode is not the cluster's
            fd = None
            if create:
                self.ensure()
        try:
            yield
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def looks_like_cluster(self) -> bool:
        """Without a state file: does anything here look like what a cluster writes (node data, node logs)?"""
        return self.exists() or bool(
            self._node_dirs(set()) or self._logs(set()) or self._tmp_files() or (self.prom_dir / "data").is_dir()
        )

    def purge(self, nodes: set[str], made_root: bool) -> tuple[str, list[Path]]:
        """Delete exactly what a cluster writes here, then the directories left empty.

        Known layout only: state.json and its temp files, data/<node>/ entries of a node (a named node's,
        or a dir that looks like one), node logs. Anything else (a user's file) is kept, so a wrong
        --root/--name never empties a directory that was not the cluster's. Returns a description of
        what went and the paths kept.
        """
        dirs, logs = self._node_dirs(nodes), self._logs(nodes)
        for d in dirs:
            for entry in (*NODE_FILES, *NODE_DIRS):
                _remove(d / entry)
            _rmdir_if_empty(d)
        for log in logs:
            log.unlink(missing_ok=True)
        for tmp in self._tmp_files():
            tmp.unlink(missing_ok=True)
        had_state = self.exists()
        self.file.unlink(missing_ok=True)
        self.secret_file.unlink(missing_ok=True)
        self.remove_tls()
        prom = self.remove_prometheus()
        for d in (self.path / "data", self.path / "logs", self.path):
            _rmdir_if_empty(d)
        if made_root:
            _rmdir_if_empty(self.root)
        what = ", ".join(
            ["state"] * had_state
            + [f"data of {', '.join(d.name for d in dirs) or 'no node'}"]
            + [f"{len(logs)} log file{'s' * (len(logs) != 1)}"]
            + ["Prometheus' data"] * prom
        )
        kept = _leaves(self.path) if self.path.exists() else []
        return what, kept

    def _node_dirs(self, nodes: set[str]) -> list[Path]:
        data = self.path / "data"
        if not data.is_dir() or data.is_symlink():
            return []
        return sorted(
            d
            for d in data.iterdir()
            if d.is_dir() and not d.is_symlink() and (d.name in nodes or any((d / e).exists() for e in NODE_MARKS))
        )

    def _logs(self, nodes: set[str]) -> list[Path]:
        """logs/<node>.log of the named nodes, and any log that starts with the launcher's header."""
        logs = self.path / "logs"
        if not logs.is_dir() or logs.is_symlink():
            return []
        return sorted(
            p for p in logs.glob("*.log") if p.is_file() and not p.is_symlink() and (p.stem in nodes or _is_node_log(p))
        )

    def _tmp_files(self) -> list[Path]:
        return sorted(p for p in self.path.glob(".state-*.tmp") if p.is_file()) if self.path.is_dir() else []

    def remove_if_empty(self) -> list[str]:
        """Remove the cluster directory (and a root this process made) when nothing is left in them."""
        removed = []
        for p, ours in (
            (self.path / "logs", True),
            (self.path / "data", True),
            (self.path, True),
            (self.root, self.made_root),
        ):
            if ours and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
                removed.append(str(p))
        return removed

    @staticmethod
    def clusters(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())

"""cluster.yaml: load, validate (file, line, field, what was expected), apply flag overrides.

We walk PyYAML's node tree rather than the loaded dict so every error can name
the line it came from; unknown keys are rejected with a did-you-mean.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ENGINES = ("builtin", "etcd")
NETWORKS = ("local", "netns")
LOG_LEVELS = ("debug", "info", "warning", "error")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MAX_NODES = 99


class ConfigError(Exception):
    """A cluster definition that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Host:
    name: str  # "localhost" or an SSH destination like user@host
    address: str = "127.0.0.1"  # where its nodes listen and are reached
    port: int = 22
    python: str = "python3"
    workdir: str = "~/quorumlab"

    @property
    def local(self) -> bool:
        return self.name in ("localhost", "127.0.0.1", "local")


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "quorumlab"
    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    engine: str = "builtin"
    network: str = "local"
    hosts: tuple[Host, ...] = (Host("localhost"),)
    client_port: int = 2379
    peer_port: int = 12380
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 10_000
    data_dir: str = ".quorumlab"
    log_level: str = "info"
    source: str = "<defaults>"

    def node_index(self, name: str) -> int:
        return self.nodes.index(name)

    def client_port_of(self, name: str) -> int:
        return self.client_port + self.node_index(name)

    def peer_port_of(self, name: str) -> int:
        return self.peer_port + self.node_index(name)

    def host_of(self, name: str) -> Host:
        return self.hosts[self.node_index(name) % len(self.hosts)]

    def with_nodes(self, n: int | list[str]) -> ClusterConfig:
        names = tuple(n) if isinstance(n, list) else tuple(f"n{i}" for i in range(1, n + 1))
        cfg = replace(self, nodes=names)
        check_ports(cfg, self.source)
        return cfg


def _err(src: str, node: yaml.Node | None, fieldname: str, msg: str) -> ConfigError:
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    where = f" {fieldname}:" if fieldname else ""
    return ConfigError(f"{src}{line}:{where} {msg}")


def _scalar(src: str, node: yaml.Node, fieldname: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise _err(src, node, fieldname, f"expected a single value, got a {_kind(node)}")
    return yaml.safe_load(yaml.serialize(node))


def _kind(node: yaml.Node) -> str:
    return {"MappingNode": "mapping", "SequenceNode": "list", "ScalarNode": "value"}.get(type(node).__name__, "node")


def _int(src: str, node: yaml.Node, fieldname: str, lo: int, hi: int) -> int:
    v = _scalar(src, node, fieldname)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(src, node, fieldname, f"expected an integer in {lo}..{hi}, got {v!r}")
    if not lo <= v <= hi:
        raise _err(src, node, fieldname, f"expected an integer in {lo}..{hi}, got {v}")
    return v


def _choice(src: str, node: yaml.Node, fieldname: str, choices: tuple[str, ...]) -> str:
    v = _scalar(src, node, fieldname)
    if v not in choices:
        hint = difflib.get_close_matches(str(v), choices, 1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise _err(src, node, fieldname, f"expected one of {', '.join(choices)}, got {v!r}{extra}")
    return str(v)


def _mapping(src: str, node: yaml.Node, fieldname: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise _err(src, node, fieldname, f"expected a mapping, got a {_kind(node)}")
    out: dict[str, yaml.Node] = {}
    for k, v in node.value:
        key = _scalar(src, k, fieldname)
        full = f"{fieldname}.{key}" if fieldname else str(key)
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, 1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
            raise _err(src, k, full, f"unknown key{extra}")
        if key in out:
            raise _err(src, k, full, "given twice")
        out[str(key)] = v
    return out


TOP_KEYS = (
    "name",
    "nodes",
    "engine",
    "network",
    "hosts",
    "ports",
    "timeouts",
    "snapshot_count",
    "data_dir",
    "log_level",
)


def parse(text: str, src: str = "cluster.yaml") -> ClusterConfig:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{src}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if root is None:
        return ClusterConfig(source=src)
    top = _mapping(src, root, "", TOP_KEYS)
    kw: dict[str, Any] = {"source": src}
    if "name" in top:
        v = _scalar(src, top["name"], "name")
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise _err(src, top["name"], "name", f"expected a lowercase name like 'lab1' (a-z, 0-9, -), got {v!r}")
        kw["name"] = v
    if "nodes" in top:
        kw["nodes"] = _nodes(src, top["nodes"])
    if "engine" in top:
        kw["engine"] = _choice(src, top["engine"], "engine", ENGINES)
    if "network" in top:
        kw["network"] = _choice(src, top["network"], "network", NETWORKS)
    if "log_level" in top:
        kw["log_level"] = _choice(src, top["log_level"], "log_level", LOG_LEVELS)
    if "data_dir" in top:
        v = _scalar(src, top["data_dir"], "data_dir")
        if not isinstance(v, str) or not v:
            raise _err(src, top["data_dir"], "data_dir", f"expected a directory path, got {v!r}")
        kw["data_dir"] = v
    if "snapshot_count" in top:
        kw["snapshot_count"] = _int(src, top["snapshot_count"], "snapshot_count", 10, 10_000_000)
    if "ports" in top:
        ports = _mapping(src, top["ports"], "ports", ("client", "peer"))
        if "client" in ports:
            kw["client_port"] = _int(src, ports["client"], "ports.client", 1024, 65000)
        if "peer" in ports:
            kw["peer_port"] = _int(src, ports["peer"], "ports.peer", 1024, 65000)
    if "timeouts" in top:
        t = _mapping(src, top["timeouts"], "timeouts", ("heartbeat_ms", "election_ms"))
        if "heartbeat_ms" in t:
            kw["heartbeat_ms"] = _int(src, t["heartbeat_ms"], "timeouts.heartbeat_ms", 10, 10_000)
        if "election_ms" in t:
            kw["election_ms"] = _int(src, t["election_ms"], "timeouts.election_ms", 20, 100_000)
    if "hosts" in top:
        kw["hosts"] = _hosts(src, top["hosts"])
    cfg = ClusterConfig(**kw)
    if cfg.election_ms < 2 * cfg.heartbeat_ms:
        node = top.get("timeouts")
        raise _err(
            src,
            node,
            "timeouts",
            f"election_ms ({cfg.election_ms}) must be at least twice heartbeat_ms "
            f"({cfg.heartbeat_ms}); etcd recommends 10x",
        )
    check_ports(cfg, src, top.get("ports"))
    return cfg


def _nodes(src: str, node: yaml.Node) -> tuple[str, ...]:
    if isinstance(node, yaml.SequenceNode):
        names: list[str] = []
        for item in node.value:
            v = _scalar(src, item, "nodes")
            if not isinstance(v, str) or not NAME_RE.match(v):
                raise _err(src, item, "nodes", f"expected node names like n1 (a-z, 0-9, -), got {v!r}")
            if v in names:
                raise _err(src, item, "nodes", f"node {v!r} listed twice")
            names.append(v)
        if not names:
            raise _err(src, node, "nodes", "expected at least one node")
        if len(names) > MAX_NODES:
            raise _err(src, node, "nodes", f"at most {MAX_NODES} nodes")
        return tuple(names)
    n = _scalar(src, node, "nodes")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NODES:
        raise _err(src, node, "nodes", f"expected a node count 1..{MAX_NODES} or a list of names, got {n!r}")
    return tuple(f"n{i}" for i in range(1, n + 1))


def _hosts(src: str, node: yaml.Node) -> tuple[Host, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise _err(src, node, "hosts", "expected a non-empty list of hosts")
    out = []
    for item in node.value:
        if isinstance(item, yaml.ScalarNode):
            name = _scalar(src, item, "hosts")
            if not isinstance(name, str):
                raise _err(src, item, "hosts", f"expected a host name, got {name!r}")
            out.append(Host(name, "127.0.0.1" if name in ("localhost", "local") else name.split("@")[-1]))
            continue
        h = _mapping(src, item, "hosts[]", ("name", "address", "port", "python", "workdir"))
        if "name" not in h:
            raise _err(src, item, "hosts[].name", "every host needs a name (an SSH destination or localhost)")
        kw: dict[str, Any] = {"name": str(_scalar(src, h["name"], "hosts[].name"))}
        kw["address"] = (
            str(_scalar(src, h["address"], "hosts[].address"))
            if "address" in h
            else ("127.0.0.1" if kw["name"] in ("localhost", "local") else kw["name"].split("@")[-1])
        )
        if "port" in h:
            kw["port"] = _int(src, h["port"], "hosts[].port", 1, 65535)
        for k in ("python", "workdir"):
            if k in h:
                kw[k] = str(_scalar(src, h[k], f"hosts[].{k}"))
        out.append(Host(**kw))
    return tuple(out)


def check_ports(cfg: ClusterConfig, src: str, node: yaml.Node | None = None) -> None:
    n = len(cfg.nodes)
    c0, c1 = cfg.client_port, cfg.client_port + n - 1
    p0, p1 = cfg.peer_port, cfg.peer_port + n - 1
    if c1 > 65535 or p1 > 65535:
        raise _err(src, node, "ports", f"{n} nodes do not fit below port 65535")
    if c0 <= p1 and p0 <= c1:
        raise _err(
            src,
            node,
            "ports",
            f"client ports {c0}-{c1} overlap peer ports {p0}-{p1}; move ports.peer out of the client range",
        )


def load(path: Path | None) -> ClusterConfig:
    """Load a cluster definition; None means ./cluster.yaml if present, else the defaults."""
    if path is None:
        default = Path("cluster.yaml")
        if not default.exists():
            return ClusterConfig()
        path = default
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(text, str(path))

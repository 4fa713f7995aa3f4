"""cluster.yaml: load, validate (file, line, field, what was expected), apply flag overrides.

We walk PyYAML's node tree rather than the loaded dict so every error can name
the line it came from; unknown keys are rejected with a did-you-mean.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from node.kv.retention import MODES, RetentionError, parse_retention

ENGINES = ("builtin", "etcd")
NETWORKS = ("local", "netns")
LOG_LEVELS = ("debug", "info", "warning", "error")
COMPACTION_MODES = MODES
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MAX_NODES = 99


class ConfigError(Exception):
    """A cluster definition that cannot be used; the message says where and why."""


class FieldError(ValueError):
    """One field's value is wrong; `index` points at the bad item of a list (for the YAML line)."""

    def __init__(self, msg: str, index: int | None = None) -> None:
        super().__init__(msg)
        self.index = index


@dataclass(frozen=True)
class Host:
    """Where nodes run: this machine (a loopback address) or a remote host reached over SSH.

    A remote host's nodes listen on its address; the orchestrator logs in as `user` with `key`,
    installs quorumlab into a venv under `work_dir` with `python` (or, with deploy false, runs
    `python` as given: an install path that already has quorumlab), and runs iptables with sudo
    when `sudo` is true.
    """

    name: str  # "localhost" or the remote host's name in cluster.yaml
    address: str = "127.0.0.1"  # where its nodes listen and are reached
    user: str = "root"
    port: int = 22
    key: str = ""  # private key file ("" = ssh's default keys and agent)
    python: str = "python3"
    work_dir: str = ".quorumlab-remote"  # relative = under the user's home on the host
    sudo: bool = False
    deploy: bool = True

    @property
    def remote(self) -> bool:
        return self.name not in LOCAL_HOSTS or not self.address.startswith("127.")

    @property
    def ssh_target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


# Revision mode keeping the last 10000 revisions: the history (and so each node's memory, snapshots
# and data dir) stays bounded under any long load, while watchers and `get --rev` still reach back
# 10000 changes. etcd's own default is no compaction at all, which grows without bound.
DEFAULT_COMPACTION_MODE = "revision"
DEFAULT_COMPACTION_RETENTION = "10000"
DEFAULT_PERIODIC_RETENTION = "1h"  # when mode is periodic and no retention is given
# The NOSPACE alarm fires past this many bytes of keyspace (etcd's --quota-backend-bytes; 0 = the
# engine's default of 2 GiB). 256 MiB caps the in-memory store of each node of a lab cluster.
DEFAULT_QUOTA_BACKEND_BYTES = 256 << 20
MAX_QUOTA_BACKEND_BYTES = 8 << 30


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "quorumlab"
    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    engine: str = "builtin"
    network: str = "local"
    hosts: tuple[Host, ...] = (Host("localhost"),)
    placement: tuple[tuple[str, str], ...] = ()  # (node, host) for nodes that name their host
    client_port: int = 2379
    peer_port: int = 12380
    # first metrics port (etcd's --listen-metrics-urls; node i gets +i); 0: free ports picked at `up`
    metrics_port: int = 0
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 10_000
    data_dir: str = ".quorumlab"
    log_level: str = "info"
    compaction_mode: str = DEFAULT_COMPACTION_MODE
    compaction_retention: str = ""  # "" = the mode's default (10000 revisions, or 1h when periodic)
    quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    # builtin nodes serve the fault-rule API (chaos, experiments, the dashboard's fault keys); every
    # Admin call needs the cluster's credential either way
    fault_injection: bool = True
    # client ports speak TLS (etcd's --cert-file ... --client-cert-auth) with certificates `up` makes
    tls: bool = False
    # `up` also starts a real Prometheus (Debian's `prometheus`) scraping every node's metrics URL
    prometheus: bool = False
    source: str = "<defaults>"

    @property
    def retention(self) -> str:
        """The retention handed to the nodes (etcd's --auto-compaction-retention)."""
        if self.compaction_retention:
            return self.compaction_retention
        return DEFAULT_PERIODIC_RETENTION if self.compaction_mode == "periodic" else DEFAULT_COMPACTION_RETENTION

    def node_index(self, name: str) -> int:
        return self.nodes.index(name)

    def client_port_of(self, name: str) -> int:
        return self.client_port + self.node_index(name)

    def peer_port_of(self, name: str) -> int:
        return self.peer_port + self.node_index(name)

    def metrics_port_of(self, name: str) -> int:
        """The node's metrics port when ports.metrics is set; 0: the orchestrator picks one at `up`."""
        return self.metrics_port + self.node_index(name) if self.metrics_port else 0

    def host_of(self, name: str) -> Host:
        placed = dict(self.placement)
        if name in placed:
            return next(h for h in self.hosts if h.name == placed[name])
        return self.hosts[self.node_index(name) % len(self.hosts)]

    @property
    def remote(self) -> bool:
        """Nodes run on other hosts over SSH (then client and peer TLS are on)."""
        return any(h.remote for h in self.hosts)

    def with_nodes(self, n: int | list[str]) -> ClusterConfig:
        try:
            names = v_nodes(n)
        except FieldError as e:
            raise ConfigError(f"{self.source}: nodes: {e}") from None
        cfg = replace(self, nodes=names, placement=tuple(p for p in self.placement if p[0] in names))
        check_ports(cfg, self.source)
        return cfg


# -- one validator per field: cluster.yaml and the command-line flags both call these ---------------
def _int_in(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FieldError(f"expected an integer in {lo}..{hi}, got {v!r}")
    if not lo <= v <= hi:
        raise FieldError(f"expected an integer in {lo}..{hi}, got {v}")
    return v


def _one_of(v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        hint = difflib.get_close_matches(str(v), choices, 1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise FieldError(f"expected one of {', '.join(choices)}, got {v!r}{extra}")
    return str(v)


def v_name(v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.match(v):
        raise FieldError(f"expected a lowercase name like 'lab1' (a-z, 0-9, -), got {v!r}")
    return v


def v_node_names(names: list[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(names):
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise FieldError(f"expected node names like n1 (a-z, 0-9, -), got {v!r}", i)
        if v in out:
            raise FieldError(f"node {v!r} listed twice", i)
        out.append(v)
    if not out:
        raise FieldError("expected at least one node")
    if len(out) > MAX_NODES:
        raise FieldError(f"at most {MAX_NODES} nodes")
    return tuple(out)


def v_nodes(v: Any) -> tuple[str, ...]:
    """A count (n1..nN) or a list of names."""
    if isinstance(v, list | tuple):
        return v_node_names(list(v))
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_NODES:
        raise FieldError(f"expected a node count 1..{MAX_NODES} or a list of names, got {v!r}")
    return tuple(f"n{i}" for i in range(1, v + 1))


def v_engine(v: Any) -> str:
    return _one_of(v, ENGINES)


def v_network(v: Any) -> str:
    return _one_of(v, NETWORKS)


def v_log_level(v: Any) -> str:
    return _one_of(v, LOG_LEVELS)


def v_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldError(f"expected true or false, got {v!r}")
    return v


v_fault_injection = v_bool
v_tls = v_bool
v_prometheus = v_bool


def v_data_dir(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise FieldError(f"expected a directory path, got {v!r}")
    return v


def v_snapshot_count(v: Any) -> int:
    return _int_in(v, 10, 10_000_000)


def v_port(v: Any) -> int:
    return _int_in(v, 1024, 65000)


def v_heartbeat_ms(v: Any) -> int:
    return _int_in(v, 10, 10_000)


def v_election_ms(v: Any) -> int:
    return _int_in(v, 20, 100_000)


def v_compaction_mode(v: Any) -> str:
    return _one_of(v, COMPACTION_MODES)


def v_compaction_retention(v: Any) -> str:
    """etcd's --auto-compaction-retention: revisions to keep, or (periodic) a duration like 1h / 30m.

    The form is checked by the node's own parser (node.kv.retention), so both accept the same values;
    cross_check then applies the mode (revision mode takes only a count)."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    if isinstance(v, str):
        try:
            parse_retention("periodic", v)  # the most permissive mode: any count or duration
        except RetentionError:
            pass
        else:
            return v.strip()
    raise FieldError(f"expected a revision count (e.g. 10000) or a duration (e.g. 1h, 30m; 0 = off), got {v!r}")


_SIZE_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def v_quota_backend_bytes(v: Any) -> int:
    """etcd's --quota-backend-bytes: bytes (or 256MiB, 2GiB), 0 for the engine's default of 2 GiB."""
    n: int | None = None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := _SIZE_RE.match(v.strip())):
        n = int(m.group(1)) * _UNITS[m.group(2) or ""]
    if n is None or not 0 <= n <= MAX_QUOTA_BACKEND_BYTES:
        raise FieldError(
            f"expected a size in bytes up to 8GiB (e.g. 268435456 or 256MiB; 0 = the engine's default), got {v!r}"
        )
    return n


@dataclass(frozen=True)
class Field:
    attr: str  # ClusterConfig attribute
    key: str  # cluster.yaml key (dotted for nested ones)
    flag: str  # `orchestrate up` flag
    check: Callable[[Any], Any]


FIELDS = {
    f.attr: f
    for f in (
        Field("name", "name", "--name", v_name),
        Field("nodes", "nodes", "--nodes", v_nodes),
        Field("engine", "engine", "--engine", v_engine),
        Field("network", "network", "--net", v_network),
        Field("log_level", "log_level", "--log-level", v_log_level),
        Field("data_dir", "data_dir", "--root", v_data_dir),
        Field("snapshot_count", "snapshot_count", "--snapshot-count", v_snapshot_count),
        Field("client_port", "ports.client", "--client-port", v_port),
        Field("peer_port", "ports.peer", "--peer-port", v_port),
        Field("metrics_port", "ports.metrics", "--metrics-port", v_port),
        Field("heartbeat_ms", "timeouts.heartbeat_ms", "--heartbeat-ms", v_heartbeat_ms),
        Field("election_ms", "timeouts.election_ms", "--election-ms", v_election_ms),
        Field("compaction_mode", "compaction.mode", "--auto-compaction-mode", v_compaction_mode),
        Field("compaction_retention", "compaction.retention", "--auto-compaction-retention", v_compaction_retention),
        Field("quota_backend_bytes", "quota_backend_bytes", "--quota-backend-bytes", v_quota_backend_bytes),
        Field("fault_injection", "fault_injection", "--no-fault-injection", v_fault_injection),
        Field("tls", "tls", "--tls", v_tls),
        Field("prometheus", "prometheus", "--prometheus", v_prometheus),
    )
}


def cross_check(cfg: ClusterConfig) -> tuple[str, str] | None:
    """Rules between fields: (the attribute to blame, the message), or None when consistent."""
    if cfg.election_ms < 2 * cfg.heartbeat_ms:
        return "election_ms", (
            f"election_ms ({cfg.election_ms}) must be at least twice heartbeat_ms "
            f"({cfg.heartbeat_ms}); etcd recommends 10x"
        )
    try:
        parse_retention(cfg.compaction_mode, cfg.retention)
    except RetentionError:
        return "compaction_retention", (
            f"with compaction mode revision the retention is a revision count (e.g. 10000), got {cfg.retention!r}"
        )
    return _ports_problem(cfg)


def _ports_problem(cfg: ClusterConfig) -> tuple[str, str] | None:
    n = len(cfg.nodes)
    c0, c1 = cfg.client_port, cfg.client_port + n - 1
    p0, p1 = cfg.peer_port, cfg.peer_port + n - 1
    if c1 > 65535 or p1 > 65535:
        return "ports", f"{n} nodes do not fit below port 65535"
    if c0 <= p1 and p0 <= c1:
        return "ports", f"client ports {c0}-{c1} overlap peer ports {p0}-{p1}; move ports.peer out of the client range"
    if cfg.metrics_port:
        m0, m1 = cfg.metrics_port, cfg.metrics_port + n - 1
        if m1 > 65535:
            return "ports", f"{n} metrics ports do not fit below port 65535"
        for kind, a, b in (("client", c0, c1), ("peer", p0, p1)):
            if m0 <= b and a <= m1:
                return "ports", f"metrics ports {m0}-{m1} overlap {kind} ports {a}-{b}; move ports.metrics"
    return None


def _coerce(raw: str) -> Any:
    """A flag's text as YAML would have typed it: integers become ints, everything else stays text."""
    return int(raw) if re.fullmatch(r"[+-]?\d+", raw.strip()) else raw


def nodes_from_flag(raw: str) -> Any:
    """`--nodes 5` is a count, `--nodes a,b,c` a list of names (`--nodes ,` an empty list)."""
    v = _coerce(raw)
    if isinstance(v, int):
        return v
    return [x.strip() for x in raw.split(",") if x.strip()]


def from_flag(attr: str, raw: str) -> Any:
    """A flag's text checked by the field's validator (the one cluster.yaml uses); FieldError if bad."""
    return FIELDS[attr].check(nodes_from_flag(raw) if attr == "nodes" else _coerce(raw))


def flag_type(attr: str) -> Callable[[str], Any]:
    """An argparse `type=` for a field: the same validator and message as the YAML key."""

    def convert(raw: str) -> Any:
        try:
            return from_flag(attr, raw)
        except FieldError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = attr
    return convert


def apply_flags(cfg: ClusterConfig, flags: dict[str, Any]) -> ClusterConfig:
    """Override fields from the command line (text or values from flag_type), checked like cluster.yaml."""
    over: dict[str, Any] = {}
    for attr, raw in flags.items():
        if raw is None:
            continue
        f = FIELDS[attr]
        try:
            over[attr] = from_flag(attr, raw) if isinstance(raw, str) else f.check(raw)
        except FieldError as e:
            raise ConfigError(f"{f.flag}: {e}") from None
    if not over:
        return cfg
    cfg = replace(cfg, **over)
    bad = cross_check(cfg)
    if bad is not None:
        attr, msg = bad
        where = {"ports": "--client-port/--peer-port/--metrics-port", "election_ms": "--election-ms/--heartbeat-ms"}
        raise ConfigError(f"{where.get(attr) or FIELDS[attr].flag}: {msg}")
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
    try:
        return _int_in(_scalar(src, node, fieldname), lo, hi)
    except FieldError as e:
        raise _err(src, node, fieldname, str(e)) from None


def _field(src: str, node: yaml.Node, attr: str) -> Any:
    f = FIELDS[attr]
    try:
        return f.check(_scalar(src, node, f.key))
    except FieldError as e:
        raise _err(src, node, f.key, str(e)) from None


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
    "compaction",
    "quota_backend_bytes",
    "fault_injection",
    "tls",
    "prometheus",
    "data_dir",
    "log_level",
)


def parse(text: str, src: str = "cluster.yaml") -> ClusterConfig:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or getattr(e, "reason", None) or e
        raise ConfigError(f"{src}{line}: not valid YAML: {' '.join(str(why).split())}") from None
    if root is None:
        return ClusterConfig(source=src)
    top = _mapping(src, root, "", TOP_KEYS)
    kw: dict[str, Any] = {"source": src}
    top_fields = ("name", "engine", "network", "log_level", "data_dir", "snapshot_count", "quota_backend_bytes")
    for attr in (*top_fields, "fault_injection", "tls", "prometheus"):
        if FIELDS[attr].key in top:
            kw[attr] = _field(src, top[FIELDS[attr].key], attr)
    placed_at: dict[str, yaml.Node] = {}
    if "nodes" in top:
        kw["nodes"], placement, placed_at = _nodes(src, top["nodes"])
        kw["placement"] = tuple(placement)
    sections = {
        "ports": ("client_port", "peer_port", "metrics_port"),
        "timeouts": ("heartbeat_ms", "election_ms"),
        "compaction": ("compaction_mode", "compaction_retention"),
    }
    for section, attrs in sections.items():
        if section in top:
            sub = _mapping(src, top[section], section, tuple(FIELDS[a].key.split(".")[1] for a in attrs))
            for a in attrs:
                k = FIELDS[a].key.split(".")[1]
                if k in sub:
                    kw[a] = _field(src, sub[k], a)
    if "hosts" in top:
        kw["hosts"] = _hosts(src, top["hosts"])
    hosts: tuple[Host, ...] = kw.get("hosts", ClusterConfig.hosts)
    for node, host in kw.get("placement", ()):
        if host not in {h.name for h in hosts}:
            raise _err(src, placed_at[node], "nodes[].host", f"{node}: no host named {host!r} in hosts:")
    if any(h.remote for h in hosts):
        if "tls" in top and kw.get("tls") is False:
            raise _err(src, top["tls"], "tls", "nodes on remote hosts talk over the network: TLS stays on")
        if kw.get("network") == "netns":
            raise _err(src, top["network"], "network", "remote hosts use iptables over SSH; leave network: local")
        kw["tls"] = True
    cfg = ClusterConfig(**kw)
    bad = cross_check(cfg)
    if bad is not None:
        attr, msg = bad
        key = attr if attr == "ports" else FIELDS[attr].key.split(".")[0]
        raise _err(src, top.get(key), key if attr != "compaction_retention" else "compaction.retention", msg)
    return cfg


def _nodes(src: str, node: yaml.Node) -> tuple[tuple[str, ...], list[tuple[str, str]], dict[str, yaml.Node]]:
    """Node names, and (node, host) for items written `{name: n1, host: h1}`, with where each was."""
    placement: list[tuple[str, str]] = []
    at: dict[str, yaml.Node] = {}
    if isinstance(node, yaml.SequenceNode):
        items = []
        for item in node.value:
            if isinstance(item, yaml.MappingNode):
                m = _mapping(src, item, "nodes[]", ("name", "host"))
                if "name" not in m:
                    raise _err(src, item, "nodes[].name", "a node written as a mapping needs a name")
                name = _scalar(src, m["name"], "nodes[].name")
                if "host" in m:
                    host = _scalar(src, m["host"], "nodes[].host")
                    if not isinstance(host, str):
                        raise _err(src, m["host"], "nodes[].host", f"expected a host name, got {host!r}")
                    placement.append((str(name), host))
                    at[str(name)] = m["host"]
                items.append(name)
            else:
                items.append(_scalar(src, item, "nodes"))
        try:
            return v_node_names(items), placement, at
        except FieldError as e:
            bad = node.value[e.index] if e.index is not None else node
            raise _err(src, bad, "nodes", str(e)) from None
    try:
        return v_nodes(_scalar(src, node, "nodes")), placement, at
    except FieldError as e:
        raise _err(src, node, "nodes", str(e)) from None


LOCAL_HOSTS = ("localhost", "local", "127.0.0.1")


HOST_KEYS = ("name", "address", "user", "port", "key", "python", "work_dir", "sudo", "deploy")
_ADDR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# paths the orchestrator puts into shell commands on a host: nothing a shell would expand
_PATH_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_./+-]+$")


def _host_text(src: str, h: dict[str, yaml.Node], key: str, check: Callable[[str], bool], what: str) -> str:
    v = _scalar(src, h[key], f"hosts[].{key}")
    if not isinstance(v, str) or not v or not check(v):
        raise _err(src, h[key], f"hosts[].{key}", f"expected {what}, got {v!r}")
    return v


def _remote_host(src: str, item: yaml.Node, h: dict[str, yaml.Node], name: str) -> Host:
    """A remote host's fields, each checked where it was written."""
    if "address" not in h:
        raise _err(src, item, "hosts[].address", f"{name}: a remote host needs an address (IP or DNS name)")
    kw: dict[str, Any] = {
        "address": _host_text(src, h, "address", _ADDR_RE.match, "an IP address or DNS name"),  # type: ignore[arg-type]
    }
    if "user" in h:
        kw["user"] = _host_text(src, h, "user", _USER_RE.match, "a login name")  # type: ignore[arg-type]
    if "port" in h:
        kw["port"] = _int(src, h["port"], "hosts[].port", 1, 65535)
    if "key" in h:
        key = _host_text(src, h, "key", lambda v: True, "a private key file")
        path = Path(key).expanduser()
        if not path.is_file():
            raise _err(src, h["key"], "hosts[].key", f"{name}: key file {key} does not exist on this machine")
        kw["key"] = str(path.resolve())
    if "python" in h:
        kw["python"] = _host_text(src, h, "python", lambda v: " " not in v, "a python command or path")
    if "work_dir" in h:
        what = "a directory path of letters, digits and _ . / + - (relative = in the home)"
        kw["work_dir"] = _host_text(src, h, "work_dir", _PATH_RE.match, what)  # type: ignore[arg-type]
    for key in ("sudo", "deploy"):
        if key in h:
            try:
                kw[key] = v_bool(_scalar(src, h[key], f"hosts[].{key}"))
            except FieldError as e:
                raise _err(src, h[key], f"hosts[].{key}", str(e)) from None
    return Host(name, **kw)


def _hosts(src: str, node: yaml.Node) -> tuple[Host, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise _err(src, node, "hosts", "expected a non-empty list of hosts")
    out: list[Host] = []
    for item in node.value:
        if isinstance(item, yaml.ScalarNode):
            name = _scalar(src, item, "hosts")
            if not isinstance(name, str):
                raise _err(src, item, "hosts", f"expected a host name, got {name!r}")
            if name not in LOCAL_HOSTS:
                raise _err(src, item, "hosts", f"{name!r}: a remote host is a mapping with name, address, user, key")
            host = Host(name)
        else:
            h = _mapping(src, item, "hosts[]", HOST_KEYS)
            if "name" not in h:
                raise _err(src, item, "hosts[].name", "every host needs a name (localhost, or one for a remote host)")
            name = _host_text(src, h, "name", NAME_RE.match, "a lowercase host name like h1")  # type: ignore[arg-type]
            address = str(_scalar(src, h["address"], "hosts[].address")) if "address" in h else "127.0.0.1"
            if name in LOCAL_HOSTS:
                if not address.startswith("127."):
                    raise _err(
                        src,
                        h.get("address", item),
                        "hosts[].address",
                        f"expected a loopback address (127.x.y.z), got {address!r}",
                    )
                host = Host(name, address)
            else:
                host = _remote_host(src, item, h, name)
        if host.name in {x.name for x in out}:
            raise _err(src, item, "hosts[].name", f"host {host.name!r} listed twice")
        out.append(host)
    if any(h.remote for h in out) and not all(h.remote for h in out):
        raise _err(src, node, "hosts", "mixing localhost with remote hosts: remote nodes cannot reach 127.0.0.1")
    return tuple(out)


def check_ports(cfg: ClusterConfig, src: str, node: yaml.Node | None = None) -> None:
    bad = _ports_problem(cfg)
    if bad is not None:
        raise _err(src, node, bad[0], bad[1])


def load(path: Path | None) -> ClusterConfig:
    """Load a cluster definition; None means ./cluster.yaml if present, else the defaults."""
    if path is None:
        default = Path("cluster.yaml")
        if not default.exists():
            return ClusterConfig()
        path = default
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    return parse(text, str(path))

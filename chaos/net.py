"""Network fault backends behind one interface.

* ``local`` — no privileges: the nodes' own rule tables (node/faults.py),
  installed over the Admin API and enforced in each node's peer transport.
  Only our builtin engine has them.
* ``netns`` — root: every node lives in its own network namespace with its
  own address on a bridge (placed by orchestrator/netns.py); partitions and
  loss are real iptables rules inside the namespaces (INPUT and OUTPUT, by peer
  address). Works for both engines.
  Latency needs tc netem, which some kernels lack: then it is refused with a
  clear message and the local backend can add it instead (builtin engine).

A backend receives the complete desired rule set every time (set semantics),
so applying and undoing faults is idempotent and a crash leaves nothing that
`heal` or `orchestrate chaos cleanup` cannot remove.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from node.client import ClientError
from orchestrator import remote_fw
from orchestrator.cluster import Cluster
from orchestrator.netns import NetError, list_ns, netns_available, run
from orchestrator.remote import RemoteError
from orchestrator.state import NetRule  # saved with the cluster's state; kept importable from here

__all__ = [
    "Backend",
    "LocalBackend",
    "NetRule",
    "NetnsBackend",
    "RemoteBackend",
    "backend_for",
    "cleanup_all",
    "netdevs",
    "remove_netdevs",
]


class Backend(Protocol):
    name: str

    async def apply(self, rules: list[NetRule]) -> None: ...
    async def clear(self) -> None: ...


class LocalBackend:
    """Rule tables inside our nodes; every node gets the full set and enforces its own pairs."""

    name = "local"

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        if not cluster.engine.fault_rules:
            raise NetError(
                "the local network backend needs quorumlab's own nodes (engine builtin); for real etcd use "
                "--net netns (root): partitions become iptables rules in network namespaces"
            )
        if not cluster.st.fault_injection:
            raise NetError(
                f"cluster {cluster.st.name!r} was started without fault injection (fault_injection: false); "
                "start it with fault injection on (the default) for the local network backend"
            )

    async def apply(self, rules: list[NetRule]) -> None:
        payload = [r.to_admin() for r in rules]
        names = [n for n in self.c.st.live_names() if self.c.launcher.state(self.c.st.nodes[n]) == "running"]
        async with self.c.client(names, timeout=2.0) as cl:
            results = await asyncio.gather(
                *(cl.set_faults(self.c.st.nodes[n].endpoint, payload) for n in names), return_exceptions=True
            )
        failed = [f"{n}: {r}" for n, r in zip(names, results, strict=True) if isinstance(r, ClientError)]
        if failed and len(failed) == len(names):
            raise NetError("could not install fault rules on any node: " + "; ".join(failed))
        # a node that is down now gets the rules when the next fault or heal is applied

    async def clear(self) -> None:
        await self.apply([])


def netdevs(prefix: str = "ql-") -> set[str]:
    """quorumlab's namespaces (ql-…) and bridges (qlb-…) on this machine."""
    found = {ns for ns in list_ns() if ns.startswith(prefix)}
    r = run(["ip", "-o", "link", "show", "type", "bridge"], check=False)
    for line in r.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("qlb-"):
            found.add(name)
    return found


def remove_netdevs(names: set[str]) -> list[str]:
    """Delete exactly these namespaces and bridges (idempotent); returns what was named."""
    for name in sorted(names):
        if name.startswith("qlb-"):
            run(["ip", "link", "del", name], check=False)
        else:
            run(["ip", "netns", "del", name], check=False)
    return sorted(names)


def cleanup_all(prefix: str = "ql-") -> list[str]:
    """Remove every quorumlab namespace and bridge on this machine (idempotent): `chaos cleanup`."""
    return remove_netdevs(netdevs(prefix))


class NetnsBackend:
    """Real iptables DROP rules (and statistic-match loss) inside each node's namespace."""

    name = "netns"
    CHAIN = "QUORUMLAB"

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        why = netns_available()
        if why:
            raise NetError(why)
        for n in cluster.st.live_names():
            if not cluster.st.nodes[n].netns:
                raise NetError(f"node {n} does not run in a network namespace; start the cluster with --net netns")
        self._local_delays = False

    def _ns_of(self, name: str) -> str:
        return self.c.st.nodes[name].netns

    def _addr(self, name: str) -> str:
        return self.c.st.nodes[name].address

    async def apply(self, rules: list[NetRule]) -> None:
        delays = [r for r in rules if r.action == "delay"]
        await asyncio.to_thread(self._apply_sync, [r for r in rules if r.action != "delay"])
        # iptables cannot delay; tc netem could but is missing on some kernels. Our own nodes
        # can add latency in their transport, so latency falls back to the local backend there.
        if delays and not (self.c.engine.fault_rules and self.c.st.fault_injection):
            raise NetError(
                "added latency needs tc netem inside the namespaces (missing on this kernel) or quorumlab's "
                "own nodes (engine builtin), which delay messages in their transport"
            )
        if delays or self._local_delays:
            await LocalBackend(self.c).apply(delays)
            self._local_delays = bool(delays)

    def _apply_sync(self, rules: list[NetRule]) -> None:
        names = self.c.st.live_names()
        for n in names:
            ns = self._ns_of(n)
            ex = ["ip", "netns", "exec", ns, "iptables"]
            if run([*ex, "-n", "-L", self.CHAIN], check=False).returncode != 0:
                run([*ex, "-N", self.CHAIN])
                run([*ex, "-I", "INPUT", "-j", self.CHAIN])
                run([*ex, "-I", "OUTPUT", "-j", self.CHAIN])
            run([*ex, "-F", self.CHAIN])
            for r in rules:
                peers = [p for p in names if p != n]
                for p in peers:
                    if r.src in ("*", n) and r.dst in ("*", p):
                        run([*ex, "-A", self.CHAIN, "-d", self._addr(p), *self._target(r)])  # n sends to p
                    if r.src in ("*", p) and r.dst in ("*", n):
                        run([*ex, "-A", self.CHAIN, "-s", self._addr(p), *self._target(r)])  # n receives from p

    @staticmethod
    def _target(r: NetRule) -> list[str]:
        if r.action == "loss":
            return ["-m", "statistic", "--mode", "random", "--probability", f"{r.probability:.4f}", "-j", "DROP"]
        return ["-j", "DROP"]

    async def clear(self) -> None:
        await self.apply([])


class RemoteBackend(NetnsBackend):
    """iptables DROP rules on remote hosts over SSH, in the cluster's own chain (orchestrator/remote_fw.py).

    Rules match peer addresses, so they separate hosts: nodes sharing a host (and its address) cannot
    be cut off from each other, and a fault that would need it is refused.
    """

    name = "remote"

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        if cluster.remote is None:
            raise NetError("the remote network backend is for clusters on remote hosts")
        self._local_delays = False

    def _apply_sync(self, rules: list[NetRule]) -> None:
        st = self.c.st
        names = st.live_names()
        by_host: dict[str, list[list[str]]] = {st.nodes[n].host: [] for n in names}
        for r in rules:
            for a in names:
                for b in names:
                    if a != b and r.src in ("*", a) and r.dst in ("*", b) and self._addr(a) == self._addr(b):
                        raise NetError(f"{a} and {b} share host {st.nodes[a].host}: iptables cannot cut them apart")
        for n in names:
            host = by_host[st.nodes[n].host]
            for r in rules:
                for p in (p for p in names if p != n):
                    if r.src in ("*", n) and r.dst in ("*", p):
                        host.append(["-d", self._addr(p), *self._target(r)])  # n sends to p
                    if r.src in ("*", p) and r.dst in ("*", n):
                        host.append(["-s", self._addr(p), *self._target(r)])  # n receives from p
        rl = self.c.remote
        assert rl is not None
        chain = remote_fw.chain_name(st)
        if rules and set(by_host) - set(st.fw_hosts):  # recorded before any rule exists: a crash leaves a trace
            st.fw_hosts = sorted(set(st.fw_hosts) | set(by_host))
            self.c.save()
        for h in st.fw_hosts:
            by_host.setdefault(h, [])  # a host that once held rules but has no live node now: flushed too
        try:
            for h, hrules in by_host.items():
                if hrules or h in st.fw_hosts:
                    remote_fw.apply(rl.conn(h), chain, _unique(hrules))
        except RemoteError as e:
            raise NetError(str(e)) from None


def _unique(rules: list[list[str]]) -> list[list[str]]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for r in rules:
        if tuple(r) not in seen:
            seen.add(tuple(r))
            out.append(r)
    return out


def backend_for(cluster: Cluster) -> Backend:
    if cluster.remote is not None:
        return RemoteBackend(cluster)
    if cluster.st.network == "netns":
        return NetnsBackend(cluster)
    return LocalBackend(cluster)

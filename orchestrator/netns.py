"""Network-namespace placement: where a `--net netns` cluster's nodes live.

Every node gets its own namespace (ql-<tag>-<index>) with one address on a
bridge (qlb-<tag>, 10.231.<subnet>.0/24). The orchestrator creates and removes
this layout when it starts and stops a cluster; chaos/net.py builds its
iptables fault backend on top of it. It lives here, below chaos, so that the
orchestrator never imports the fault layer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path


class NetError(Exception):
    pass


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ip/iptables command; a failure raises NetError with its message unless check is off."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise NetError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def netns_available() -> str | None:
    """None when namespaces and iptables can be used; otherwise the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, iptables)"
    return None


def netns_identity(state_path: Path) -> tuple[str, int]:
    """A short tag and a /24 for this cluster's namespaces, stable for its state directory."""
    h = hashlib.sha1(str(state_path.resolve()).encode()).hexdigest()
    return h[:6], 1 + int(h[6:10], 16) % 250


def list_ns() -> list[str]:
    """Names of all network namespaces on this machine."""
    r = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


class Netns:
    """Namespaces, veths and a bridge for one cluster: ql-<tag>-<node>, qlb-<tag>, 10.231.<k>.0/24.

    The addresses belong to test hosts this cluster created inside its own
    namespaces; nothing is routed beyond the bridge.
    """

    SUBNET_BASE = "10.231"

    def __init__(self, tag: str, subnet: int, prefix: str = "ql", subnet_base: str = SUBNET_BASE) -> None:
        """prefix names the namespaces (<prefix>-<tag>-i), bridge (<prefix>b-<tag>) and veths: the SSH
        test hosts use their own so chaos cleanup (which removes every ql-*) never touches them."""
        if len(tag) > 6 or not tag.isalnum():
            raise NetError(f"netns tag {tag!r} must be 1-6 alphanumerics")
        if len(prefix) > 3 or not prefix.isalpha():
            raise NetError(f"netns prefix {prefix!r} must be 1-3 letters")
        self.tag = tag
        self.subnet = subnet
        self.prefix = prefix
        self.SUBNET_BASE = subnet_base
        self.bridge = f"{prefix}b-{tag}"

    def ns(self, node_index: int) -> str:
        return f"{self.prefix}-{self.tag}-{node_index}"

    def address(self, node_index: int) -> str:
        return f"{self.SUBNET_BASE}.{self.subnet}.{node_index + 1}"

    def gateway(self) -> str:
        return f"{self.SUBNET_BASE}.{self.subnet}.254"

    def create(self, count: int) -> None:
        why = netns_available()
        if why:
            raise NetError(why)
        if run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway()}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        for i in range(count):
            self.add_host(i)

    def add_host(self, i: int) -> None:
        ns, veth = self.ns(i), f"{self.prefix}v-{self.tag}-{i}"
        if run(["ip", "netns", "pids", ns], check=False).returncode == 0 and ns in list_ns():
            return
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        ex = ["ip", "netns", "exec", ns]
        run([*ex, "ip", "addr", "add", f"{self.address(i)}/24", "dev", "eth0"])
        run([*ex, "ip", "link", "set", "eth0", "up"])
        run([*ex, "ip", "link", "set", "lo", "up"])

    def destroy(self) -> list[str]:
        removed = []
        for ns in list_ns():
            if ns.startswith(f"{self.prefix}-{self.tag}-"):
                run(["ip", "netns", "del", ns], check=False)
                removed.append(ns)
        if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
            run(["ip", "link", "del", self.bridge], check=False)
            removed.append(self.bridge)
        return removed

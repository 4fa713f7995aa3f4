"""iptables rules on remote hosts, in a chain of the cluster's own (QL-<hash of its token>).

The chain is hooked into INPUT and OUTPUT once and flushed and refilled with the complete rule set on
every change (set semantics, one SSH command per host), so heal is an empty set and removal is
unhooking and deleting the chain. The hosts that may hold rules are recorded in the state file
(ClusterState.fw_hosts) before any rule is sent, so `down` and `chaos cleanup` remove them even
after an orchestrator crashed. Lives below chaos so that `down` can clean up without importing it.
"""

from __future__ import annotations

import hashlib
import shlex

from .remote import HostConn, RemoteError
from .state import ClusterState


def chain_name(st: ClusterState) -> str:
    return "QL-" + hashlib.sha1(st.token.encode()).hexdigest()[:10]


def _sudo_hint(c: HostConn, err: str) -> str:
    if c.host.sudo and ("password" in err or "sudo" in err):
        return (
            f"; user {c.host.user} needs passwordless sudo for iptables there (sudoers: NOPASSWD), "
            "or log in as root with sudo: false"
        )
    if "Permission denied" in err or "you must be root" in err:
        return f"; user {c.host.user} cannot run iptables: set hosts[].sudo: true (passwordless sudo) or use root"
    return ""


def _run(c: HostConn, script: str, what: str) -> None:
    code, out, err = c.run(script, timeout=30, sudo=True)
    if code != 0:
        msg = (err or out).strip()[-300:]
        raise RemoteError(f"host {c.host.name}: {what} failed: {msg}{_sudo_hint(c, msg)}")


def apply(c: HostConn, chain: str, rules: list[list[str]]) -> None:
    """Make the chain hold exactly `rules` (iptables arguments after `-A chain`)."""
    lines = [
        f"iptables -w -n -L {chain} >/dev/null 2>&1 || iptables -w -N {chain}",
        f"iptables -w -C INPUT -j {chain} 2>/dev/null || iptables -w -I INPUT -j {chain}",
        f"iptables -w -C OUTPUT -j {chain} 2>/dev/null || iptables -w -I OUTPUT -j {chain}",
        f"iptables -w -F {chain}",
        *(f"iptables -w -A {chain} " + " ".join(shlex.quote(a) for a in r) for r in rules),
    ]
    _run(c, " && ".join(f"{{ {ln}; }}" for ln in lines), f"setting {len(rules)} iptables rules in {chain}")


def remove(c: HostConn, chain: str) -> None:
    """Unhook and delete the chain (nothing there is fine)."""
    script = (
        f"while iptables -w -D INPUT -j {chain} 2>/dev/null; do :; done; "
        f"while iptables -w -D OUTPUT -j {chain} 2>/dev/null; do :; done; "
        f"iptables -w -F {chain} 2>/dev/null; iptables -w -X {chain} 2>/dev/null; "
        f"! iptables -w -n -L {chain} >/dev/null 2>&1"
    )
    _run(c, script, f"removing iptables chain {chain}")


def listed(c: HostConn, chain: str) -> list[str]:
    """The chain's rules as `iptables -S` prints them (empty when it does not exist)."""
    code, out, _ = c.run(f"iptables -w -S {chain} 2>/dev/null", timeout=20, sudo=True)
    return out.splitlines() if code == 0 else []

"""Three (or N) SSH hosts for tests: network namespaces on a bridge, each with its own sshd.

Every host is a namespace `qs-<tag>-<i>` with an address 10.232.<k>.<i+1> on a bridge `qsb-<tag>`
reachable from this (root) namespace, and runs Debian's `/usr/sbin/sshd -D` with a config, host key
and authorized user key made here. The tag is unique per run (pid + random), so neither a parallel
test run nor chaos's own `ql-*` namespaces clash with it. `close()` kills the sshds, deletes the
namespaces and the bridge and removes every file, even after a failed test.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.netns import NetError, Netns, list_ns, run

SSHD = "/usr/sbin/sshd"


def sshd_missing() -> str | None:
    """None when the harness can run here; otherwise why not (the reason names sshd/netns for conftest)."""
    if os.geteuid() != 0:
        return "SSH test hosts need root (network namespaces, sshd)"
    for tool, pkg in ((SSHD, "openssh-server"), ("ssh-keygen", "openssh-client"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: {pkg}; needed for the sshd network namespace hosts)"
    return None


@dataclass
class TestHost:
    name: str
    address: str
    ns: str
    sshd: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    work_dir: Path = field(default_factory=Path)

    def accepted(self) -> int:
        """SSH sessions this host's sshd accepted so far (from its log)."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey")
        except OSError:
            return 0


class SshHosts:
    """The hosts, their user key (`key`) and a `hosts:` block for cluster.yaml (`yaml_hosts`)."""

    def __init__(self, n: int = 3) -> None:
        self.tag = f"{os.getpid() % 1000:03d}{random.randrange(1000):03d}"
        self.net = Netns(self.tag, 1 + int(self.tag) % 250, prefix="qs", subnet_base="10.232")
        self.dir = Path(tempfile.mkdtemp(prefix=f"qlssh-{self.tag}-"))
        self.key = self.dir / "id_user"
        self.hosts = [
            TestHost(f"h{i + 1}", self.net.address(i), self.net.ns(i), work_dir=self.dir / f"h{i + 1}" / "work")
            for i in range(n)
        ]

    def start(self) -> SshHosts:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.key), "-C", "quorumlab-test"], check=True, capture_output=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.net.create(len(self.hosts))
        for h in self.hosts:
            d = self.dir / h.name
            d.mkdir(mode=0o700)
            h.work_dir.mkdir(mode=0o700)
            subprocess.run([*keygen, "-f", str(d / "host_key")], check=True, capture_output=True)
            shutil.copy(self.key.with_suffix(".pub"), d / "authorized_keys")
            (d / "sshd_config").write_text(
                "\n".join(
                    [
                        f"ListenAddress {h.address}",
                        "Port 22",
                        f"HostKey {d / 'host_key'}",
                        f"PidFile {d / 'sshd.pid'}",
                        f"AuthorizedKeysFile {d / 'authorized_keys'}",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "UseDNS no",
                        "StrictModes no",
                        "MaxStartups 100",
                        "MaxSessions 100",
                        "LogLevel VERBOSE",
                        "Subsystem sftp internal-sftp",
                        "",
                    ]
                )
            )
            h.log = d / "sshd.log"
            h.sshd = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(h.log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        for h in self.hosts:
            self._wait_listening(h)

    def _wait_listening(self, h: TestHost, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert h.sshd is not None
            if h.sshd.poll() is not None:
                err = h.sshd.stderr.read().decode(errors="replace") if h.sshd.stderr else ""
                log = h.log.read_text(errors="replace") if h.log.exists() else ""
                raise NetError(f"sshd on {h.name} exited: {err.strip()} {log.strip()}")
            with contextlib.suppress(OSError), socket.create_connection((h.address, 22), timeout=0.5):
                return
            time.sleep(0.1)
        raise NetError(f"sshd on {h.name} ({h.address}:22) not listening after {timeout}s")

    def yaml_hosts(self, python: str = "", deploy: bool = True) -> str:
        """The `hosts:` section of a cluster.yaml naming these hosts (root, our key, own work dirs)."""
        lines = ["hosts:"]
        for h in self.hosts:
            lines += [
                f"  - name: {h.name}",
                f"    address: {h.address}",
                "    user: root",
                f"    key: {self.key}",
                f"    work_dir: {h.work_dir}",
            ]
            if python:
                lines.append(f"    python: {python}")
            if not deploy:
                lines.append("    deploy: false")
        return "\n".join(lines) + "\n"

    def accepted(self) -> int:
        return sum(h.accepted() for h in self.hosts)

    def pids_in(self, h: TestHost) -> list[int]:
        r = run(["ip", "netns", "pids", h.ns], check=False)
        return [int(x) for x in r.stdout.split()]

    def close(self) -> None:
        """Kill every process in the namespaces (sshd, stray nodes), delete them, the bridge and files."""
        for h in self.hosts:
            if h.ns in list_ns():
                for pid in self.pids_in(h):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if h.sshd is not None:
                with contextlib.suppress(ProcessLookupError):
                    h.sshd.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.sshd.wait(5)
                if h.sshd.stderr:
                    h.sshd.stderr.close()
        self.net.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Namespaces or the bridge of this run still present (a test asserts none after close)."""
        left = [ns for ns in list_ns() if ns.startswith(f"qs-{self.tag}-")]
        if run(["ip", "link", "show", self.net.bridge], check=False).returncode == 0:
            left.append(self.net.bridge)
        return left


@contextlib.contextmanager
def ssh_hosts(n: int = 3) -> Iterator[SshHosts]:
    hosts = SshHosts(n).start()
    try:
        yield hosts
    finally:
        hosts.close()

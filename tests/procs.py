"""Real node processes on 127.0.0.1 for tests: free ports, start/kill/restart, guaranteed cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node.client import Client, ClientError
from orchestrator.ports import free_ports, port_block

REPO = Path(__file__).resolve().parent.parent
# ports are reserved with a cross-process lock held for the life of the test process (see orchestrator.ports)
free_port_block = port_block


class NodeProcs:
    """A cluster of `python -m node` processes; always call close() (the fixture does)."""

    def __init__(
        self,
        base: Path,
        n: int,
        *,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        token: str = "test",
        extra: list[str] | None = None,
        secret: bytes | None = None,
        metrics: bool = False,
    ) -> None:
        """secret: started with --peer-auth-file holding it (a 0600 file in base); Admin calls send it.
        metrics: each node also serves /metrics, /health and /version on a port of its own (`metrics_port`)."""
        self.base = base
        self.secret = secret
        self.secret_file = base / "peer.secret"
        self.names = [f"n{i}" for i in range(1, n + 1)]
        ports = free_ports(3 * n if metrics else 2 * n)
        self.client = {name: ports[i] for i, name in enumerate(self.names)}
        self.peer = {name: ports[n + i] for i, name in enumerate(self.names)}
        self.metrics_port = {name: ports[2 * n + i] for i, name in enumerate(self.names)} if metrics else {}
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.token = token
        self.extra = extra or []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(f"{nm}=127.0.0.1:{self.peer[nm]}" for nm in self.names)

    def endpoint(self, name: str) -> str:
        return f"127.0.0.1:{self.client[name]}"

    def endpoints(self, names: list[str] | None = None) -> list[str]:
        return [self.endpoint(n) for n in (names or self.names)]

    def args(self, name: str, state: str = "new", initial: str | None = None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "node",
            "--name",
            name,
            "--data-dir",
            str(self.base / name),
            "--listen-client",
            self.endpoint(name),
            "--listen-peer",
            f"127.0.0.1:{self.peer[name]}",
            "--initial-cluster",
            initial or self.initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--enable-fault-injection",
            *(["--peer-auth-file", str(self.secret_file)] if self.secret is not None else []),
            *(["--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port[name]}"] if self.metrics_port else []),
            *self.extra,
        ]

    def start(self, name: str, state: str = "new", initial: str | None = None, extra: list[str] | None = None) -> None:
        if self.secret is not None and not self.secret_file.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.secret)
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        self.procs[name] = subprocess.Popen(
            self.args(name, state, initial) + (extra or []),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        log.close()

    def start_all(self) -> None:
        for n in self.names:
            self.start(n)

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(timeout=15)

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGCONT)
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=10)

    # -- async helpers -------------------------------------------------------------------
    def client_for(self, names: list[str] | None = None, timeout: float = 3.0) -> Client:
        return Client(self.endpoints(names), timeout=timeout, secret=self.secret)

    async def statuses(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        async with Client(self.endpoints(), timeout=1.0, secret=self.secret) as c:
            for n in names or self.names:
                if not self.alive(n):
                    continue
                with contextlib.suppress(ClientError):
                    out[n] = await c.admin_status(self.endpoint(n))
        return out

    async def wait_leader(
        self, timeout: float = 15.0, among: list[str] | None = None, exclude: str | None = None
    ) -> str:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = await self.statuses(among)
            last = st
            leaders = {s["name"] for s in st.values() if s["role"] == "leader"}
            views = {s["leader"] for s in st.values()}
            if len(leaders) == 1 and views == leaders and exclude not in leaders:
                return leaders.pop()
            await asyncio.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout}s: { ({k: v['role'] for k, v in last.items()}) }")

    async def wait_applied(self, names: list[str], index: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await self.statuses(names)
            if all(n in st and st[n]["applied"] >= index for n in names):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not all of {names} applied {index}")


class EtcdProcs(NodeProcs):
    """The same cluster shape, but real etcd binaries (Debian's etcd-server)."""

    def args(self, name: str, state: str = "new", initial: str | None = None) -> list[str]:
        cu, pu = f"http://{self.endpoint(name)}", f"http://127.0.0.1:{self.peer[name]}"
        ic = initial or ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        return [
            "etcd",
            "--name",
            name,
            "--data-dir",
            str(self.base / name),
            "--listen-client-urls",
            cu,
            "--advertise-client-urls",
            cu,
            "--listen-peer-urls",
            pu,
            "--initial-advertise-peer-urls",
            pu,
            "--initial-cluster",
            ic,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--logger",
            "zap",
            "--log-level",
            "warn",
            *(["--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port[name]}"] if self.metrics_port else []),
        ]

    async def wait_leader(
        self, timeout: float = 15.0, among: list[str] | None = None, exclude: str | None = None
    ) -> str:
        deadline = time.monotonic() + timeout
        names = among or self.names
        async with Client(self.endpoints(names), timeout=1.0) as c:
            while time.monotonic() < deadline:
                for n in names:
                    with contextlib.suppress(ClientError):
                        s = await c.status(self.endpoint(n))
                        if s.leader and s.leader == s.header.member_id and n != exclude:
                            return n
                await asyncio.sleep(0.1)
        raise AssertionError("etcd elected no leader")

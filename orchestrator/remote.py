"""Nodes on remote hosts over SSH (fabric): the same interface as LocalLauncher.

One fabric `Connection` per host, opened on first use and kept for the whole command (and the
dashboard's lifetime); `connections_opened` counts them. A node starts detached (setsid nohup) with
its pid file and log under the host's work dir; it is identified by pid *and* its start time in
clock ticks since boot (/proc/<pid>/stat field 22), checked in the same shell command that sends a
signal, so a recycled pid is never signalled. Process state is read for all of a host's nodes in
one command, cached briefly, so a status poll costs one exec per host on the kept connection.

Layout on a host: <work_dir>/venv (the deployed quorumlab), <work_dir>/<cluster>/{data,logs,run,files}.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Host
from .state import NodeRecord

CACHE_S = 0.3  # a status poll reads every node's state: one probe per host serves them all


class RemoteError(OSError):
    """A remote host failed; the message names the host, the command and what to fix.

    An OSError, so every verb's handler of I/O failures prints its one line (no traceback)."""


@dataclass
class ProcInfo:
    start: int  # clock ticks since boot
    state: str  # ps state letter: R S D T Z ...
    cpu_ticks: int
    rss_pages: int


def _probe_script(pids: list[int]) -> str:
    """Per pid: `pid start state utime+stime rss` from /proc (the comm field may hold spaces)."""
    return (
        f"for p in {' '.join(str(p) for p in pids)}; do "
        "s=$(cat /proc/$p/stat 2>/dev/null) || continue; s=${s##*) }; "
        "set -- $s; echo $p ${20} $1 $(( ${12} + ${13} )) ${22}; done; getconf CLK_TCK; "
        "echo U $(cut -d' ' -f1 /proc/uptime)"
    )


class HostConn:
    """One SSH connection to one host; `run` returns (status, stdout, stderr)."""

    def __init__(self, host: Host, on_open: Callable[[], None]) -> None:
        self.host = host
        self._conn: Any = None
        self._on_open = on_open
        self._lock = threading.Lock()
        self.work_dir = host.work_dir

    def _what(self) -> str:
        return f"host {self.host.name} ({self.host.ssh_target})"

    def connect(self) -> Any:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            import fabric  # slow to import: only clusters with remote hosts pay for it
            import paramiko

            kw: dict[str, Any] = {"banner_timeout": 10, "auth_timeout": 10}
            if self.host.key:
                kw.update(key_filename=self.host.key, look_for_keys=False, allow_agent=False)
            conn = fabric.Connection(
                self.host.address, user=self.host.user, port=self.host.port, connect_timeout=5, connect_kwargs=kw
            )
            key = f" with key {self.host.key}" if self.host.key else ""
            try:
                conn.open()
            except paramiko.AuthenticationException:
                raise RemoteError(
                    f"{self._what()}: SSH login refused{key}: put the matching public key in "
                    f"~{self.host.user}/.ssh/authorized_keys there, or fix hosts[].key / hosts[].user"
                ) from None
            except (OSError, paramiko.SSHException) as e:
                why = (
                    "no answer within 5s"
                    if isinstance(e, socket.timeout | TimeoutError)
                    else getattr(e, "strerror", None) or str(e) or type(e).__name__
                )
                raise RemoteError(
                    f"{self._what()}: cannot reach its SSH server: {why}; check hosts[].address/port and that "
                    "sshd runs there"
                ) from None
            self._conn = conn
            self._on_open()
            if not self.work_dir.startswith("/"):
                home = self._exec("cd && pwd", 10)[1].strip()
                self.work_dir = f"{home}/{self.work_dir}"
            return conn

    def _exec(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        import paramiko

        client = self._conn.client
        try:
            _, out, err = client.exec_command(cmd, timeout=timeout)
            o = out.read().decode(errors="replace")
            e = err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), o, e
        except (OSError, EOFError, paramiko.SSHException) as e:
            broken, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # its socket and thread go now, not with the process
                broken.close()
            why = f"no answer within {timeout:g}s" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
            raise RemoteError(f"{self._what()}: the SSH connection broke running `{cmd[:80]}`: {why}") from None

    def run(self, cmd: str, timeout: float = 30.0, check: bool = False, sudo: bool = False) -> tuple[int, str, str]:
        """Run a shell command; check: a non-zero status is a RemoteError naming the host, command and stderr."""
        self.connect()
        if sudo and self.host.sudo:
            cmd = f"sudo -n sh -c {shlex.quote(cmd)}"
        r = self._exec(cmd, timeout)
        if check and r[0] != 0:
            raise RemoteError(f"{self._what()}: `{cmd[:160]}` failed (status {r[0]}): {(r[2] or r[1]).strip()[-400:]}")
        return r

    def put(self, local: Path, remote: str, mode: int = 0o600) -> None:
        conn = self.connect()
        try:
            sftp = conn.sftp()
            sftp.put(str(local), remote)
            sftp.chmod(remote, mode)
        except OSError as e:
            raise RemoteError(f"{self._what()}: cannot upload {local} to {remote}: {e}") from None

    def stream(self, cmd: str) -> Iterator[str]:
        """Lines of a long-running command's output (tail -F) until the caller stops iterating."""
        self.connect()
        chan = self._conn.client.get_transport().open_session()
        try:
            chan.exec_command(cmd)
            f = chan.makefile("r")
            for line in f:
                yield line if isinstance(line, str) else line.decode(errors="replace")
        finally:
            chan.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


class RemoteNode:
    """What `process()` returns for a node alive on its host (truthy; pid and host for messages)."""

    def __init__(self, host: str, pid: int) -> None:
        self.host, self.pid = host, pid


class RemoteLauncher:
    def __init__(self, hosts: dict[str, Host], cluster: str) -> None:
        self.hosts = hosts
        self.cluster = cluster
        self.connections_opened = 0
        self._conns: dict[str, HostConn] = {}
        self._probe: dict[str, tuple[float, dict[int, ProcInfo], int]] = {}
        self._pids: dict[str, set[int]] = {}
        self._cpu: dict[tuple[str, int], tuple[float, int]] = {}
        self._uploaded: dict[tuple[str, str], float] = {}
        self._uptime: dict[str, tuple[float, float]] = {}  # host -> (when read here, its uptime then)

    # -- connections and paths -----------------------------------------------------------------
    def conn(self, host: str) -> HostConn:
        c = self._conns.get(host)
        if c is None:
            if host not in self.hosts:
                raise RemoteError(f"no host named {host!r} in this cluster's state")
            c = self._conns[host] = HostConn(self.hosts[host], self._opened)
        return c

    def _opened(self) -> None:
        self.connections_opened += 1

    def cluster_dir(self, host: str) -> str:
        c = self.conn(host)
        c.connect()
        return f"{c.work_dir}/{self.cluster}"

    def node_paths(self, rec: NodeRecord) -> tuple[str, str, str]:
        """(data dir, log file, pid file) of rec on its host."""
        d = self.cluster_dir(rec.host)
        return f"{d}/data/{rec.name}", f"{d}/logs/{rec.name}.log", f"{d}/run/{rec.name}.pid"

    def close(self) -> None:
        for c in self._conns.values():
            c.close()

    # -- start ---------------------------------------------------------------------------------
    def start(
        self, cmd: list[str], log: Path, cwd: Path, netns: str = "", rec: NodeRecord | None = None
    ) -> tuple[int, float]:
        """Start rec's node detached on its host; local paths under the state dir become the host's.

        Files the command names (the peer secret, certificates) are uploaded 0600 first.
        """
        if rec is None:
            raise RemoteError("a remote start needs the node's record")
        c = self.conn(rec.host)
        data, rlog, pidf = self.node_paths(rec)
        local_state = cwd.parent.parent  # <state>/data/<node>
        base = self.cluster_dir(rec.host)
        q = shlex.quote
        c.run(f"mkdir -p -m 700 {q(data)} {q(base + '/logs')} {q(base + '/run')} {q(base + '/files')}", check=True)
        args = []
        for a in cmd:
            if a == str(cwd):
                a = data
            elif a.startswith(str(local_state) + "/"):
                p = Path(a)
                if p.is_file():
                    remote = f"{base}/files/{p.parent.name}-{p.name}"
                    self._upload(rec.host, p, remote)
                    a = remote
                else:
                    a = base + a[len(str(local_state)) :]
            args.append(a)
        line = " ".join(shlex.quote(a) for a in args)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        script = (
            f"cd {q(data)} || exit 1; printf '\\n=== {stamp} starting: %s\\n' {q(line)} >> {q(rlog)}; "
            f"PYTHONUNBUFFERED=1 setsid nohup {line} >> {q(rlog)} 2>&1 < /dev/null & "
            f"p=$!; echo $p > {q(pidf)}; s=$(cat /proc/$p/stat) && s=${{s##*) }} && set -- $s && echo $p ${{20}}"
        )
        _, out, err = c.run(script, timeout=30, check=True)
        try:
            pid, start = (int(x) for x in out.split()[:2])
        except ValueError:
            raise RemoteError(
                f"host {rec.host}: starting {rec.name} printed no pid: {out.strip()} {err.strip()}"
            ) from None
        self._pids.setdefault(rec.host, set()).add(pid)
        self._probe.pop(rec.host, None)
        return pid, float(start)

    def _upload(self, host: str, local: Path, remote: str) -> None:
        mtime = local.stat().st_mtime
        if self._uploaded.get((host, remote)) == mtime:
            return
        self.conn(host).put(local, remote, 0o600)
        self._uploaded[(host, remote)] = mtime

    # -- state ---------------------------------------------------------------------------------
    def _info(self, rec: NodeRecord) -> ProcInfo | None:
        if not rec.pid:
            return None
        pids = self._pids.setdefault(rec.host, set())
        pids.add(rec.pid)
        t, infos, _ = self._probe.get(rec.host, (0.0, {}, 100))
        if time.monotonic() - t > CACHE_S or (rec.pid not in infos and time.monotonic() - t > 0.05):
            _, out, _ = self.conn(rec.host).run(_probe_script(sorted(pids)), timeout=10)
            lines = out.split("\n")
            infos = {}
            hz = 100
            for ln in lines:
                f = ln.split()
                if len(f) == 5:
                    infos[int(f[0])] = ProcInfo(int(f[1]), f[2], int(f[3]), int(f[4]))
                elif len(f) == 1 and f[0].isdigit():
                    hz = int(f[0])
                elif len(f) == 2 and f[0] == "U":
                    self._uptime[rec.host] = (time.monotonic(), float(f[1]))
            self._probe[rec.host] = (time.monotonic(), infos, hz)
            pids.intersection_update(infos)  # forget pids that are gone: the probe stays as long as the cluster
            pids.add(rec.pid)
        info = infos.get(rec.pid)
        if info is None or (rec.create_time and info.start != int(rec.create_time)) or info.state in ("Z", "X"):
            return None
        return info

    def process(self, rec: NodeRecord) -> RemoteNode | None:
        return RemoteNode(rec.host, rec.pid) if self._info(rec) is not None else None

    def exit_code(self, rec: NodeRecord) -> int | None:
        return None  # not our child: its status is not kept (its log says why it ended)

    def state(self, rec: NodeRecord) -> str:
        info = self._info(rec)
        if info is None:
            return "stopped"
        return "paused" if info.state in ("T", "t") else "running"

    def signal(self, rec: NodeRecord, sig: int) -> bool:
        """Signal rec's pid only if the process there still has rec's start time (one shell command)."""
        if not rec.pid:
            return False
        start = int(rec.create_time)
        script = (
            f"s=$(cat /proc/{rec.pid}/stat 2>/dev/null) || exit 3; s=${{s##*) }}; set -- $s; "
            f'[ "${{20}}" = "{start}" ] || exit 4; kill -{int(sig)} {rec.pid}'
        )
        code, _, _ = self.conn(rec.host).run(script, timeout=10)
        self._probe.pop(rec.host, None)
        return code == 0

    def wait_gone(self, rec: NodeRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._probe.pop(rec.host, None)
            if self.process(rec) is None:
                return True
            time.sleep(0.1)
        self._probe.pop(rec.host, None)
        return self.process(rec) is None

    def stop(self, rec: NodeRecord, timeout: float = 10.0) -> None:
        import signal as sg

        if self.state(rec) == "paused":
            self.signal(rec, sg.SIGCONT)
        if self.signal(rec, sg.SIGTERM) and not self.wait_gone(rec, timeout):
            self.kill(rec)

    def kill(self, rec: NodeRecord) -> None:
        import signal as sg

        self.signal(rec, sg.SIGKILL)
        self.wait_gone(rec, 5.0)

    def usage(self, rec: NodeRecord) -> tuple[float, int]:
        """(CPU % since the last call, RSS bytes) from the same probe as state: no extra SSH command."""
        info = self._info(rec)
        if info is None:
            return 0.0, 0
        hz = self._probe.get(rec.host, (0.0, {}, 100))[2]
        now = time.monotonic()
        last = self._cpu.get((rec.host, rec.pid))
        self._cpu[(rec.host, rec.pid)] = (now, info.cpu_ticks)
        cpu = 0.0
        if last is not None and now > last[0]:
            cpu = 100.0 * (info.cpu_ticks - last[1]) / hz / (now - last[0])
        elif rec.host in self._uptime:  # a first look (one-shot status): the average over its lifetime
            read, up = self._uptime[rec.host]
            age = up + (now - read) - info.start / hz
            cpu = 100.0 * info.cpu_ticks / hz / age if age > 0 else 0.0
        return max(cpu, 0.0), info.rss_pages * 4096

    # -- logs ------------------------------------------------------------------------------------
    def log_tail(self, rec: NodeRecord, n: int) -> list[str]:
        _, log, _ = self.node_paths(rec)
        _, out, _ = self.conn(rec.host).run(f"tail -n {int(n)} {shlex.quote(log)} 2>/dev/null", timeout=15)
        return out.splitlines()

    def follow(self, rec: NodeRecord) -> Iterator[str]:
        _, log, _ = self.node_paths(rec)
        return self.conn(rec.host).stream(f"tail -n 0 -F {shlex.quote(log)}")

    # -- cleanup ---------------------------------------------------------------------------------
    def purge(self, host: str, nodes: list[str]) -> str:
        """Remove the cluster's data, logs, pid files and uploaded secrets on a host; what went."""
        d = self.cluster_dir(host)
        self.conn(host).run(f"rm -rf {shlex.quote(d)}", timeout=60, check=True)
        return f"{host}:{d}"


def env_note() -> str:
    """Where the deploy cache lives on this machine (shown by errors that mention it)."""
    return os.path.expanduser("~/.cache/quorumlab")
